"""The Python API for notebooks and scripts, exported from the package top level (docs/api.md)::

    import mpsim

    scenario = mpsim.load("default", set={"runs": 2, "client.scheme": "convert"}, seed=7)
    run = mpsim.run(scenario)                       # or mpsim.run("default", set=...)
    run.connections, run.transfers                  # pandas DataFrames
    sweep = mpsim.sweep("default", grid={"paths.lte.delay_s": [0.01, 0.03]}, seeds=3,
                        set={"runs": 1}, out="out/lte")
    mpsim.summarize(sweep)                          # mean and 95% interval per grid point and variant
    mpsim.plot(sweep, x="paths.lte.delay_s", y="setup_time_s", hue="variant", ax=ax)
    mpsim.open_results("out/lte")                   # a finished sweep's or run's --out directory

Everything here is the command line's own code (``mpsim run``, ``mpsim sweep``, ``mpsim plot``)
behind plain Python arguments: overrides as a dict of dotted keys to Python values (written as
TOML, exactly as ``--set KEY=VALUE`` reads them), grids as a dict of keys to value lists.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mpsim.errors import MpsimError
from mpsim.experiment import analysis, plots, results, scenario
from mpsim.experiment import sweep as sweeps

Overrides = Mapping[str, Any] | Sequence[str] | None


class ApiError(MpsimError, ValueError):
    """An argument the API cannot use (a value with no TOML form, a failed sweep point)."""


def toml_value(value: Any) -> str:
    """A Python value as the TOML text ``--set`` reads: numbers, booleans, strings, lists, dicts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(f"{value!r}: scenario values are finite numbers")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ApiError(f"{value!r}: no TOML form (expected a number, boolean, string, list or dict)")


def _overrides(overrides: Overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={toml_value(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return list(overrides)


def load(name_or_file: str | Path, *, set: Overrides = None, seed: int | None = None  # noqa: A002
         ) -> scenario.LoadedScenario:
    """A named scenario (``mpsim scenarios``) or a TOML file, with overrides (``set``: a dict of
    dotted keys to values, or ``--set`` strings) and a root seed; raises ScenarioError naming what
    is wrong. The result's ``base`` is the scenario, ``variants`` its variants by name."""
    texts = _overrides(set) + ([f"seed={seed}"] if seed is not None else [])
    return scenario.load(str(name_or_file), texts)


@dataclass
class RunResults:
    """What :func:`run` returns: the record tables of every run index and variant."""

    scenario: scenario.LoadedScenario
    connections: pd.DataFrame
    transfers: pd.DataFrame
    counters: pd.DataFrame
    events: pd.DataFrame
    raw: results.Results = field(repr=False)

    def tables(self) -> tuple[dict[str, pd.DataFrame], list[str]]:
        """The tables as :mod:`mpsim.experiment.analysis` reads them (each run index a replicate)."""
        front = {"point_id": "run"}
        out = {}
        for name in analysis.RECORD_TABLES:
            frame = getattr(self, name)
            head = pd.DataFrame({**front, "seed_index": frame["run"], "seed": self.scenario.base.seed},
                                index=frame.index)
            out[name] = pd.concat([head, frame], axis=1)
        return out, []

    def summary_text(self) -> str:
        """The summary ``mpsim run`` prints."""
        return self.raw.summary()

    def write(self, out_dir: str | Path, *, pcap: bool = False) -> list[Path]:
        """The files ``mpsim run --out DIR`` writes (``mpsim.plot`` and :func:`open_results` read them)."""
        return self.raw.write(Path(out_dir), pcap=pcap)


def run(scenario_or_name: scenario.LoadedScenario | str | Path = "default", *, set: Overrides = None,  # noqa: A002
        seed: int | None = None, variants: Sequence[str] | None = None, pcap: bool = False) -> RunResults:
    """Run a scenario (loaded, or a name or file loaded with ``set`` and ``seed``) as ``mpsim run``
    does: every variant (or those named) for every run index."""
    loaded = scenario_or_name if isinstance(scenario_or_name, scenario.LoadedScenario) else \
        load(scenario_or_name, set=set, seed=seed)
    if isinstance(scenario_or_name, scenario.LoadedScenario) and (set or seed is not None):
        loaded = scenario.load_text(loaded.text, name=loaded.name, source=loaded.source, path=loaded.path,
                                    overrides=(*loaded.overrides, *_overrides(set),
                                               *([f"seed={seed}"] if seed is not None else [])))
    outcome = results.run(loaded, variants=list(variants) if variants else None, record_packets=pcap)
    return RunResults(loaded, outcome.connections, outcome.transfers, outcome.counters, outcome.events, outcome)


@dataclass
class SweepResults:
    """What :func:`sweep` and :func:`open_results` return: record tables and the grid's keys."""

    connections: pd.DataFrame
    transfers: pd.DataFrame
    keys: list[str]
    points: pd.DataFrame | None = None
    out: Path | None = None

    def tables(self) -> tuple[dict[str, pd.DataFrame], list[str]]:
        return {"connections": self.connections, "transfers": self.transfers}, list(self.keys)


def _grid(grid: Mapping[str, Sequence[Any]] | Sequence[str] | None) -> list[str]:
    if grid is None:
        return []
    if isinstance(grid, Mapping):
        out = []
        for key, values in grid.items():
            if isinstance(values, str):  # "0:1:0.25" or "a,b": the --grid text itself
                out.append(f"{key}={values}")
            else:
                out.append(f"{key}=" + ",".join(toml_value(v) for v in values))
        return out
    return list(grid)


def sweep(scenario_name: str | Path, *, grid: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
          seeds: int = 1, seed: int | None = None, set: Overrides = None,  # noqa: A002
          variants: Sequence[str] = (), out: str | Path | None = None, workers: int | None = None,
          dask: str | None = None, raise_on_failure: bool = True, on: str = "model",
          proxy_cmd: str | None = None, skip_unbuildable: bool = False) -> SweepResults:
    """``mpsim sweep``: the scenario over the product of ``grid`` (a dict of keys to value lists,
    or ``--grid`` strings), ``seeds`` seeds each. ``out``: the directory (resumable, as on the
    command line); None: a temporary one, removed after the tables are read. A failed point
    raises ApiError unless ``raise_on_failure`` is False (its error is then in ``points``).
    ``on="kernel"`` (root) runs every point in the kernel world, one after another, as
    ``mpsim sweep --on kernel`` does (docs/kernel-world.md)."""
    if on not in ("model", "kernel"):
        raise ApiError(f"on={on!r}: expected 'model' or 'kernel'")
    plan = sweeps.plan_sweep(str(scenario_name), _grid(grid), seeds=seeds, root_seed=seed,
                             overrides=_overrides(set), variants=variants, world=on, proxy_cmd=proxy_cmd,
                             skip_unbuildable=skip_unbuildable)
    with tempfile.TemporaryDirectory(prefix="mpsim-sweep-") as tmp:
        directory = Path(out) if out is not None else Path(tmp) / "sweep"
        report = sweeps.run_sweep(plan, directory, workers=workers, dask=dask)
        if report.interrupted:
            raise KeyboardInterrupt
        points = pd.read_parquet(directory / "points.parquet")
        if report.failed and raise_on_failure:
            failed = points[points["status"] == "failed"]
            raise ApiError(f"{report.failed} of {report.total} sweep points failed, e.g. "
                           f"{failed['point_id'].iloc[0]}: {failed['error_type'].iloc[0]}: "
                           f"{failed['error_message'].iloc[0]}")
        tables, keys = analysis.load_tables(directory)
    return SweepResults(tables["connections"], tables["transfers"], keys, points,
                        Path(out) if out is not None else None)


def open_results(*directories: str | Path) -> SweepResults:
    """The record tables of a finished sweep's or run's ``--out`` directory; with several, side by
    side with a ``source`` column (as ``mpsim plot DIR DIR``)."""
    if not directories:
        raise ApiError("open_results: give at least one directory")
    tables, keys = analysis.load_many([Path(d) for d in directories])
    return SweepResults(tables["connections"], tables["transfers"], keys,
                        out=Path(directories[0]) if len(directories) == 1 else None)


Data = Any  # RunResults | SweepResults | (tables, keys), the pair .tables() gives (tables edited by hand)


#: The Student-t interval of a mean over independent replicates (clipped to ``bounds`` if given).
confidence_interval = analysis.confidence_interval
#: The Wilson score interval of a share.
wilson_interval = analysis.wilson_interval


def _tables(data: Data) -> tuple[dict[str, pd.DataFrame], list[str]]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Mapping):
        return dict(data[0]), list(data[1])
    if not isinstance(data, (RunResults, SweepResults)):
        raise ApiError(f"expected the result of mpsim.run, mpsim.sweep or mpsim.open_results, got {type(data).__name__}")
    return data.tables()


def summarize(data: Data, metrics: Sequence[str] = analysis.SUMMARY_METRICS,
              where: Sequence[str] = ()) -> pd.DataFrame:
    """Per grid point, variant and metric: seeds, mean, median and the 95% interval
    (:mod:`mpsim.experiment.analysis`: Wilson for shares, clipped t otherwise)."""
    tables, keys = _tables(data)
    tables = analysis.where(tables, list(where), [*keys, "variant"])
    return analysis.summarize(tables, keys, list(metrics))


def samples(data: Data, metric: str, where: Sequence[str] = ()) -> pd.DataFrame:
    """Every value of ``metric`` (one per record; one per point for a rate), with its keys."""
    tables, keys = _tables(data)
    tables = analysis.where(tables, list(where), [*keys, "variant"])
    return analysis.metric_samples(tables, metric, keys)


def plot(data: Data, *, x: str, y: str, hue: str | None = None, kind: str = "line",
         where: Sequence[str] = (), log: bool = False, ax: Any = None) -> Any:
    """``mpsim plot`` on an axes (a new figure's when ``ax`` is None); returns the axes."""
    if kind not in plots.KINDS:
        raise ApiError(f"kind={kind!r}: expected one of {', '.join(plots.KINDS)}")
    function, data_kind = plots.KINDS[kind]
    table = samples(data, y, where) if data_kind == "samples" else summarize(data, [y], where)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(8, 5))
    return function(table, x=x, y=y, hue=hue, ax=ax, log=log)


__all__ = ["ApiError", "RunResults", "SweepResults", "confidence_interval", "load", "open_results", "plot", "run", "samples",
           "summarize", "sweep", "toml_value", "wilson_interval"]
