"""Plots of sweep results. Each function takes a DataFrame and a matplotlib ``ax`` and returns the
``ax`` (docs/design.md section 6), so a notebook and ``mpsim plot`` draw with the same code; none
imports pyplot, so the caller chooses the backend (the CLI uses Agg).

* :func:`line`, :func:`bar` and :func:`heatmap` draw a summary table
  (:func:`mpsim.experiment.sweep.summarize`: grid keys, ``variant``, then ``metric``, ``seeds``,
  ``mean``, ``ci_low``, ``ci_high`` ...): the mean of metric ``y`` against grid key ``x``, with
  the 95% confidence interval over seeds as error bars (none with one seed);
* :func:`cdf` draws the values themselves (:func:`mpsim.experiment.sweep.metric_samples`): the
  empirical distribution of ``y``, one curve per value of ``x``.

``hue`` splits the data into series (a colour each; the vertical axis of a heatmap). Any other
grouping column with more than one value splits the series too (its values join the labels),
so that no plot averages over something the caller did not choose; a heatmap, which has one
value per cell, refuses instead and names the column.

Example (a notebook)::

    tables, keys = sweep.load_tables(Path("results/sweep"))
    summary = sweep.summarize(tables, keys)
    fig, ax = plt.subplots()
    plots.line(summary, x="paths.dsl.delay_s", y="setup_time_s", hue="variant", ax=ax)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mpsim.errors import MpsimError

#: Columns of a summary table that are statistics, not grouping keys.
SUMMARY_FIELDS = frozenset({"metric", "seeds", "records", "mean", "median", "ci_low", "ci_high"})
#: Columns of a samples table that are not grouping keys.
SAMPLE_FIELDS = frozenset({"point_id", "seed_index", "seed", "metric", "value"})


class PlotError(MpsimError, ValueError):
    """A plot that cannot be drawn from this table (a column or metric it does not have)."""


def _select(frame: pd.DataFrame, y: str, fields: frozenset[str], x: str, hue: str | None
            ) -> tuple[pd.DataFrame, list[str]]:
    """The rows of metric ``y`` and the grouping columns other than ``x`` and ``hue`` that vary."""
    needed = {"metric", "value"} if fields is SAMPLE_FIELDS else {"metric", "mean", "ci_low", "ci_high"}
    missing = needed - set(frame.columns)
    if missing:
        kind = "samples (sweep.metric_samples)" if fields is SAMPLE_FIELDS else "summary (sweep.summarize)"
        raise PlotError(f"the table is not a {kind}: it lacks {', '.join(sorted(missing))}")
    groups = [c for c in frame.columns if c not in fields]
    for option, column in (("x", x), ("hue", hue)):
        if column is not None and column not in groups:
            raise PlotError(f"{option}={column!r}: no such column; available: {', '.join(groups) or 'none'}")
    if hue is not None and hue == x:
        raise PlotError(f"hue={hue!r} is also x: choose another column (or none)")
    metrics = list(dict.fromkeys(frame["metric"]))
    if y not in metrics:
        raise PlotError(f"y={y!r}: the table has no such metric; it has {', '.join(map(str, metrics)) or 'none'}")
    part = frame[frame["metric"] == y]
    others = [c for c in groups if c not in (x, hue) and part[c].nunique(dropna=False) > 1]
    return part, others


def _order(values: pd.Series) -> list[Any]:
    """Distinct values: sorted when they are numbers, else in the order of the table (the grid's)."""
    distinct = list(dict.fromkeys(values))
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return sorted(distinct)
    return distinct


def _series(part: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per combination of ``keys``; one unlabelled series without keys."""
    if not keys:
        return [("", part)]
    out = []
    for key, rows in part.groupby(list(keys), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = str(key[0]) if len(keys) == 1 else ", ".join(f"{k}={v}" for k, v in zip(keys, key))
        out.append((label, rows))
    return out


def _errors(rows: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars from the interval; NaN (one seed) draws none."""
    mean = rows["mean"].to_numpy(float)
    return np.vstack([mean - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - mean])


def _legend(ax: Any, title: str | None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if any(labels):
        ax.legend(title=title, fontsize="small", title_fontsize="small")


def line(summary: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any) -> Any:
    """The mean of ``y`` against ``x`` (numbers on a numeric axis, anything else as categories),
    a line per ``hue`` value, with confidence-interval error bars."""
    part, others = _select(summary, y, SUMMARY_FIELDS, x, hue)
    keys = [k for k in (hue, *others) if k is not None]
    xs = _order(part[x])
    numeric = pd.api.types.is_numeric_dtype(part[x]) and not pd.api.types.is_bool_dtype(part[x])
    position = {value: (value if numeric else i) for i, value in enumerate(xs)}
    for label, rows in _series(part, keys):
        rows = rows.assign(_position=rows[x].map(position)).sort_values("_position")
        ax.errorbar(rows["_position"], rows["mean"], yerr=_errors(rows), marker="o", capsize=3, label=label or None)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, 95% CI)")
    ax.grid(True, alpha=0.3)
    _legend(ax, ", ".join(keys) if len(keys) == 1 else None)
    return ax


def bar(summary: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any) -> Any:
    """Grouped bars: a group per ``x`` value, a bar per ``hue`` value, confidence-interval error bars."""
    part, others = _select(summary, y, SUMMARY_FIELDS, x, hue)
    keys = [k for k in (hue, *others) if k is not None]
    xs = _order(part[x])
    series = _series(part, keys)
    width = 0.8 / len(series)
    for i, (label, rows) in enumerate(series):
        rows = rows.set_index(x).reindex(xs)  # a missing combination leaves a gap, not a shifted bar
        positions = np.arange(len(xs)) - 0.4 + width * (i + 0.5)
        ax.bar(positions, rows["mean"], width, yerr=_errors(rows), capsize=3, label=label or None)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, 95% CI)")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax, ", ".join(keys) if len(keys) == 1 else None)
    return ax


def heatmap(summary: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any) -> Any:
    """The mean of ``y`` per (``x``, ``hue``) cell: ``x`` across, ``hue`` up, the value in colour
    and written in each cell."""
    if hue is None:
        raise PlotError("a heatmap needs hue: the column on its vertical axis")
    part, others = _select(summary, y, SUMMARY_FIELDS, x, hue)
    if others:
        varying = ", ".join(f"{c} ({', '.join(map(str, dict.fromkeys(part[c])))})" for c in others)
        raise PlotError(f"a heatmap shows one value per cell, but the table also varies in {varying}: keep one "
                        "value of it (mpsim plot --where KEY=VALUE) or choose it as x or hue")
    xs, hs = _order(part[x]), _order(part[hue])
    grid = part.pivot_table(index=hue, columns=x, values="mean", aggfunc="first", dropna=False)
    values = grid.reindex(index=hs, columns=xs).to_numpy(float)
    image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(hs)), [str(v) for v in hs])
    ax.set_xlabel(x)
    ax.set_ylabel(hue)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (row, column), value in np.ndenumerate(values):
        if math.isfinite(value):  # dark text on the light end of the colour map, light on the dark end
            ax.text(column, row, f"{value:.3g}", ha="center", va="center", fontsize="small",
                    color="black" if value > middle else "white")
    ax.figure.colorbar(image, ax=ax, label=f"{y} (mean)")
    return ax


def cdf(samples: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any) -> Any:
    """The empirical distribution of ``y`` (every value: each record's, or each point's for a
    rate), a curve per value of ``x`` (and of ``hue``)."""
    part, others = _select(samples, y, SAMPLE_FIELDS, x, hue)
    keys = [k for k in (x, hue, *others) if k is not None]
    for label, rows in _series(part, keys):
        values = np.sort(rows["value"].to_numpy(float))
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                    label=f"{label} (n={values.size})")
    ax.set_xlabel(y)
    ax.set_ylabel("fraction of values <= x")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    _legend(ax, ", ".join(keys) if len(keys) == 1 else None)
    return ax


#: ``mpsim plot --kind``: the function, and whether it draws the summary or the samples.
KINDS: dict[str, tuple[Callable[..., Any], str]] = {
    "line": (line, "summary"),
    "bar": (bar, "summary"),
    "heatmap": (heatmap, "summary"),
    "cdf": (cdf, "samples"),
}
