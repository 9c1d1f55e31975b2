"""Result tables as the CLI, the plots and the notebooks read them: loading (a sweep's directory,
a single run's ``--out`` directory, several of them side by side), filtering (``--where``),
metrics, statistics over seeds and the summary text. One module, so that ``mpsim plot``, ``mpsim
sweep``'s summary and a notebook compute the same numbers.

**Statistics.** The seeds (in a single run's directory: the run indices) are the independent
replicates. Per grid point, variant and metric the summary holds the mean over seeds of each
seed's mean, their median, and a 95% interval that respects what the value can be:

* a share of requests (``fallback_rate``, ``failure_rate``, a boolean column) gets the **Wilson
  score interval** of the reported share with every request of every seed counted as one
  Bernoulli trial (the pooled share when the seeds have as many requests; this treats the requests
  as independent, which the requests of one run are only approximately: they share paths and
  middleboxes). It stays within [0, 1], holds the share, and is defined with one seed;
* any other metric gets the **Student-t interval** of the mean of the per-seed means, clipped to
  the metric's valid range (:func:`valid_range`: times, rates, byte counts and counts are never
  negative); NaN with one seed.

The ``interval`` column names the method (``wilson``, ``t``, ``t clipped``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mpsim.errors import MpsimError

#: Columns every table gets before the records' own (the grid's keys go between point_id and seed_index).
POINT_COLUMNS = ("point_id", "seed_index", "seed")
#: The metrics of the summary table; plots accept these and any numeric column of the record tables.
SUMMARY_METRICS = ("setup_time_s", "first_byte_time_s", "fallback_rate", "goodput_bps")
#: Metrics that are shares of requests with an outcome, per point (no per-record value exists).
OUTCOME_RATES = {"fallback_rate": "fallback_tcp", "failure_rate": "failed"}
#: Record columns that identify rows rather than measure anything (not offered as metrics).
IDENTIFIERS = frozenset({"run", "request_id", "transfer_id", "seed", "seed_index"})
CONFIDENCE = 0.95
RECORD_TABLES = ("connections", "transfers")
SUMMARY_COLUMNS = ("metric", "seeds", "records", "mean", "median", "ci_low", "ci_high", "interval")
#: The column that names the directory of each row when several are compared.
SOURCE = "source"
#: How the text and the plots show a metric, by the unit its name ends with: (factor, unit).
DISPLAY_UNITS = {"_s": (1e3, "ms"), "_bps": (1e-6, "Mbit/s"), "_rate": (100.0, "%"), "_bytes": (1.0, "bytes")}


class AnalysisError(MpsimError):
    """Tables that cannot give what was asked (a metric, a filter, a directory): one line."""


# --- loading -------------------------------------------------------------------------------------


def load_tables(root: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The record tables (connections, transfers) of a finished sweep's directory, with its grid
    keys; or of a single ``mpsim run --out`` directory, where each run index is a replicate (its
    ``seed_index``) and there are no grid keys."""
    root = Path(root)
    if not (root / "sweep.json").exists() and (root / "connections.csv").exists():
        return _load_run(root), []
    record = read_sweep_record(root)
    keys = [axis["key"] for axis in record.get("grid", [])]
    tables = {}
    for name in RECORD_TABLES:
        path = root / f"{name}.parquet"
        if not path.exists():
            raise AnalysisError(f"{root}: no {path.name}; the sweep has not finished (run the same mpsim sweep "
                                "command again to finish it and build the tables)")
        tables[name] = pd.read_parquet(path)
    return tables, keys


def read_sweep_record(root: Path) -> dict[str, Any]:
    """DIR/sweep.json of a sweep directory: what the sweep is (its grid's keys, its scenario)."""
    path = Path(root) / "sweep.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnalysisError(f"{root}: no sweep here (no sweep.json); run mpsim sweep ... --out {root} first, or "
                            "give a directory of mpsim run --out") from None
    except (OSError, ValueError) as err:
        raise AnalysisError(f"{path}: unreadable ({err})") from None


def _load_run(root: Path) -> dict[str, pd.DataFrame]:
    try:
        seed = json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("root_seed")
    except (OSError, ValueError):
        seed = None
    tables = {}
    for name in RECORD_TABLES:
        path = root / f"{name}.csv"
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            frame = pd.DataFrame(columns=["variant", "run"])
        except OSError as err:
            raise AnalysisError(f"{path}: {err.strerror or err}") from None
        front = pd.DataFrame({"point_id": "run", "seed_index": frame["run"], "seed": seed}, index=frame.index)
        tables[name] = pd.concat([front, frame], axis=1)
    return tables


def load_many(roots: Sequence[Path]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Several directories (sweeps or runs) as one set of tables: with more than one, a ``source``
    column (the directory's name, or its path where names repeat) comes first and is a key."""
    if len(roots) == 1:
        return load_tables(roots[0])
    names = [Path(r).name for r in roots]
    labels = names if len(set(names)) == len(names) else [str(r) for r in roots]
    if len(set(labels)) != len(labels):
        raise AnalysisError(f"a directory is given twice: {', '.join(map(str, roots))}")
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in RECORD_TABLES}
    keys: list[str] = [SOURCE]
    for root, label in zip(roots, labels):
        tables, grid_keys = load_tables(root)
        keys += [k for k in grid_keys if k not in keys]
        for name in RECORD_TABLES:
            frame = tables[name].assign(point_id=label + ":" + tables[name]["point_id"].astype(str))
            frame.insert(0, SOURCE, label)
            parts[name].append(frame)
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}, keys


def scenario_name(root: Path) -> str:
    """The name of the scenario behind a sweep's or a run's directory ("?" when unreadable)."""
    for name in ("sweep.json", "manifest.json"):
        try:
            return str(json.loads((Path(root) / name).read_text(encoding="utf-8"))["scenario"]["name"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return "?"


def where(tables: dict[str, pd.DataFrame], conditions: Sequence[str], columns: Sequence[str]
          ) -> dict[str, pd.DataFrame]:
    """Keep the rows where each ``KEY=VALUE`` holds (KEY one of ``columns``; VALUE read as ``--set``
    reads it, or compared as text)."""
    from mpsim.experiment.scenario import parse_override

    for text in conditions:
        key, eq, raw = text.partition("=")
        key = key.strip()
        if not eq or key not in columns:
            raise AnalysisError(f"--where {text}: expected KEY=VALUE with KEY one of {', '.join(columns)}")
        value = parse_override(f"{key}={raw}")[1]  # a number, a boolean, else the text
        tables = {name: frame[(frame[key] == value) | (frame[key].astype(str) == raw.strip())]
                  if key in frame.columns else frame for name, frame in tables.items()}
        if all(frame.empty for frame in tables.values()):
            raise AnalysisError(f"--where {text}: no rows match")
    return tables


# --- metrics ---------------------------------------------------------------------------------------


def _is_measure(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def metric_names(tables: dict[str, pd.DataFrame], grid_keys: Sequence[str] = ()) -> list[str]:
    """Every metric the tables offer: the outcome rates and each numeric or boolean record column,
    by its name, or as ``connections.<column>`` / ``transfers.<column>`` where both tables have it."""
    names = list(dict.fromkeys([*SUMMARY_METRICS, *OUTCOME_RATES]))
    skip = {*IDENTIFIERS, *POINT_COLUMNS, *grid_keys}
    for table in RECORD_TABLES:
        for column in tables[table].columns:
            if column in skip or not _is_measure(tables[table][column]):
                continue
            shared = any(column in tables[other].columns for other in RECORD_TABLES if other != table)
            name = f"{table}.{column}" if shared else column
            if name not in names:
                names.append(name)
    return names


def _resolve_metric(tables: dict[str, pd.DataFrame], metric: str, grid_keys: Sequence[str]) -> tuple[str, str]:
    """(table, column) of a record metric: ``transfers.goodput_bps``, or a column unique to one table."""
    table, dot, column = metric.partition(".")
    if dot and table in RECORD_TABLES and column in tables[table].columns:
        return table, column
    holders = [name for name in RECORD_TABLES if metric in tables[name].columns]
    if len(holders) == 1 and metric not in IDENTIFIERS and metric not in POINT_COLUMNS:
        return holders[0], metric
    raise AnalysisError(f"unknown metric {metric!r}" + (f" (in both tables: write {holders[0]}.{metric} or "
                                                         f"{holders[1]}.{metric})" if len(holders) > 1 else "")
                        + f"; available: {', '.join(metric_names(tables, grid_keys))}")


def metric_samples(tables: dict[str, pd.DataFrame], metric: str, grid_keys: Sequence[str]) -> pd.DataFrame:
    """The values of ``metric``: one row per record for a record column (rows without a value, such
    as an unfinished transfer's goodput, are left out), one per point and variant for an outcome
    rate. Columns: point_id, the grid keys, variant, seed_index, seed, metric, value (and
    ``trials``, the requests behind a rate)."""
    front = ["point_id", *grid_keys, "variant", "seed_index", "seed"]
    if metric in OUTCOME_RATES:
        conns = tables["connections"]
        rates = conns.assign(value=(conns["outcome"] == OUTCOME_RATES[metric]).astype(float))
        samples = rates.groupby(front, sort=False, dropna=False)["value"].agg(value="mean", trials="size")
        samples = samples.reset_index()
        return samples.assign(metric=metric)[[*front, "metric", "value", "trials"]]
    table, column = _resolve_metric(tables, metric, grid_keys)
    frame = tables[table]
    # A column without any value (goodput in a sweep without transfers) gives no samples, not an error.
    if not _is_measure(frame[column]) and not frame[column].isna().all():
        raise AnalysisError(f"metric {metric!r} is not a number (column {table}.{column} holds "
                            f"{frame[column].dtype}); available: {', '.join(metric_names(tables, grid_keys))}")
    samples = frame[front].assign(value=pd.to_numeric(frame[column], errors="coerce").astype(float))
    samples = samples[samples["value"].notna()]
    return samples.assign(metric=metric)[[*front, "metric", "value"]].reset_index(drop=True)


def is_share(tables: dict[str, pd.DataFrame], metric: str, grid_keys: Sequence[str] = ()) -> bool:
    """Whether ``metric`` is a share of requests: an outcome rate, or a boolean record column."""
    if metric in OUTCOME_RATES:
        return True
    table, column = _resolve_metric(tables, metric, grid_keys)
    return pd.api.types.is_bool_dtype(tables[table][column])


def valid_range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take, from its name: shares in [0, 1]; times (``_s``), rates
    (``_bps``), sizes (``_bytes``, ``bytes``) and counts never negative; anything else unbounded."""
    column = metric.rpartition(".")[2]
    if metric in OUTCOME_RATES or column.endswith("_rate"):
        return 0.0, 1.0
    counts = ("_s", "_bps", "_bytes", "bytes", "_rtts", "_sent", "_used", "attempts", "subflows",
              "retransmissions", "timeouts", "bytes_delivered")
    if column.endswith(counts):
        return 0.0, math.inf
    return -math.inf, math.inf


def display_unit(metric: str) -> tuple[float, str]:
    """(factor, unit) the text and the plots show ``metric`` in: seconds as ms, bit/s as Mbit/s,
    shares as %; (1.0, "") for anything else."""
    column = metric.rpartition(".")[2]
    if metric in OUTCOME_RATES:
        return 100.0, "%"
    for suffix, (factor, unit) in DISPLAY_UNITS.items():
        if column.endswith(suffix):
            return factor, unit
    return 1.0, ""


def display_label(metric: str) -> str:
    """``setup_time_s`` -> ``setup time (ms)``: the metric's name without its unit, then the unit shown."""
    _, unit = display_unit(metric)
    table, dot, column = metric.rpartition(".")
    for suffix in ("_s", "_bps", "_bytes"):
        if column.endswith(suffix) and unit:
            column = column[: -len(suffix)]
            break
    name = (f"{table}." if dot else "") + column.replace("_", " ")
    return f"{name} ({unit})" if unit else name


# --- statistics ----------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    from scipy import stats  # here: workers, which never summarize, need not import it

    return float(stats.norm.ppf((1 + confidence) / 2))


def wilson_interval(successes: float, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a share ``successes / trials`` (Wilson 1927; Agresti & Coull
    1998): within [0, 1], never empty, usable at 0 and at ``trials``, and holding the share itself
    (``successes`` may be fractional: a mean share times the trials); (NaN, NaN) without trials."""
    if trials <= 0 or math.isnan(successes):
        return math.nan, math.nan
    z = _z(confidence)
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def confidence_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                        bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict[str, float]:
    """seeds, mean, median and the Student-t interval of the mean of independent ``values``,
    clipped to ``bounds`` (the values the metric can take)."""
    n = len(values)
    if n == 0:
        return {"seeds": 0, "mean": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean, median = float(pd.Series(values).mean()), float(pd.Series(values).median())
    if n < 2:
        return {"seeds": n, "mean": mean, "median": median, "ci_low": math.nan, "ci_high": math.nan}
    from scipy import stats

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * stats.sem(values))
    low, high = bounds
    return {"seeds": n, "mean": mean, "median": median, "ci_low": max(low, mean - half),
            "ci_high": min(high, mean + half)}


def summarize(tables: dict[str, pd.DataFrame], grid_keys: Sequence[str],
              metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Per grid point, variant and metric: the metric's mean per point (seed), then over the seeds
    their count, mean, median and the 95% interval of the module doc (Wilson for shares, a clipped
    t interval otherwise). ``records`` counts the values behind it (for a share: the requests).
    Every grid point and variant that has records gets a row per metric (seeds 0 and NaN where the
    metric has no value, e.g. goodput without transfers), so that plots show gaps rather than hide them."""
    group = [*grid_keys, "variant"]
    groups = list(dict.fromkeys(itertools.chain.from_iterable(
        tables[name][group].itertuples(index=False, name=None) for name in RECORD_TABLES)))
    rows = []
    for metric in metrics:
        samples = metric_samples(tables, metric, grid_keys)
        share = is_share(tables, metric, grid_keys)
        if "trials" not in samples.columns:  # a record column: each value is one record
            samples = samples.assign(trials=1)
        per_point = samples.groupby([*group, "seed_index"], sort=False).agg(
            mean=("value", "mean"), size=("trials", "sum"))
        found = {key if isinstance(key, tuple) else (key,): part
                 for key, part in per_point.groupby(level=group, sort=False)}
        bounds = (0.0, 1.0) if share else valid_range(metric)
        for key in groups:
            part = found.get(key)
            stats = confidence_interval([] if part is None else part["mean"].to_numpy(), bounds=bounds)
            records = 0 if part is None else int(part["size"].sum())
            if share:
                # The reported share (the mean of the seeds' shares) with every request as a trial:
                # the pooled share when the seeds have as many requests, and always inside its interval.
                stats["ci_low"], stats["ci_high"] = wilson_interval(stats["mean"] * records, records)
                method = "wilson"
            else:
                method = "t clipped" if bounds != (-math.inf, math.inf) else "t"
            rows.append({**dict(zip(group, key)), "metric": metric, "records": records, **stats,
                         "interval": method})
    return pd.DataFrame(rows, columns=[*group, *SUMMARY_COLUMNS])


def format_summary(summary: pd.DataFrame, grid_keys: Sequence[str], *, max_rows: int = 30) -> str:
    """The summary as text: one row per grid point and variant, each metric as its mean and
    [interval], in the units of :func:`display_unit`."""
    if summary.empty:
        return "Summary: no records"
    group = [*grid_keys, "variant"]
    wide: dict[tuple, dict[str, str]] = {}
    for row in summary.to_dict("records"):
        key = tuple(row.get(k) for k in group)
        factor, unit = display_unit(row["metric"])
        label = display_label(row["metric"])
        mean, low, high = (row[name] * factor for name in ("mean", "ci_low", "ci_high"))
        # Three significant digits of the mean, and the interval to the same decimal place.
        decimals = 0 if math.isnan(mean) or mean == 0 else max(0, 2 - math.floor(math.log10(abs(mean))))
        text = "-" if math.isnan(mean) else f"{mean:.{decimals}f}" + \
            ("" if math.isnan(low) or math.isnan(high) else f" [{low:.{decimals}f}, {high:.{decimals}f}]")
        wide.setdefault(key, {"seeds": str(row["seeds"])})[label] = text
    labels = list(dict.fromkeys(label for entry in wide.values() for label in entry if label != "seeds"))
    header = [*group, "seeds", *labels]
    rows = [[*(str(v) for v in key), entry.get("seeds", ""), *(entry.get(label, "-") for label in labels)]
            for key, entry in wide.items()]
    shown = rows[:max_rows]
    widths = [max(len(x) for x in column) for column in zip(header, *shown)]
    lines = ["  ".join(x.ljust(w) if i < len(group) else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
             .rstrip() for r in (header, *shown)]
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more rows in summary.parquet")
    return ("Summary (mean over seeds [95% interval: Wilson for shares of requests, Student t clipped to the "
            "valid range otherwise]):\n" + "\n".join(lines))


__all__ = [
    "AnalysisError", "CONFIDENCE", "OUTCOME_RATES", "RECORD_TABLES", "SUMMARY_COLUMNS", "SUMMARY_METRICS",
    "confidence_interval", "display_label", "display_unit", "format_summary", "is_share", "load_many", "load_tables",
    "metric_names", "metric_samples", "read_sweep_record", "summarize", "valid_range", "where", "wilson_interval",
]
