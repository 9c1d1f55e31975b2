"""Plots of sweep results. Each function takes a DataFrame and a matplotlib ``ax`` and returns the
``ax`` (docs/design.md section 6), so a notebook and ``mpsim plot`` draw with the same code; none
imports pyplot, so the caller chooses the backend (the CLI uses Agg).

* :func:`line`, :func:`bar` and :func:`heatmap` draw a summary table
  (:func:`mpsim.experiment.analysis.summarize`: grid keys, ``variant``, then ``metric``, ``seeds``,
  ``mean``, ``ci_low``, ``ci_high`` ...): the mean of metric ``y`` against grid key ``x``, with
  the 95% interval over seeds as error bars (none where it is undefined);
* :func:`cdf` draws the values themselves (:func:`mpsim.experiment.analysis.metric_samples`): the
  empirical distribution of ``y``, one curve per value of ``x``. When one value lies far out
  (the largest more than :data:`OUTLIER_FACTOR` times the 99th percentile), the x axis ends at the
  99th percentile and the plot says so, unless ``log=True`` (a log x axis) is asked for.

The metric is drawn in the unit the text uses (:func:`mpsim.experiment.analysis.display_unit`:
seconds as ms, bit/s as Mbit/s, shares as %) and its axis says so; grid keys are drawn as given
(their names carry their units). ``log=True`` puts the metric's axis on a log scale.
:func:`save_figure` is the one rule for image files (``mpsim plot -o``, ``mpsim ladder --png``):
any of :data:`FIGURE_FORMATS` by the suffix, missing parent folders made.

``hue`` splits the data into series (a colour each; the vertical axis of a heatmap). Any other
grouping column with more than one value splits the series too (its values join the labels),
so that no plot averages over something the caller did not choose; a heatmap, which has one
value per cell, refuses instead and names the column.

Example (a notebook)::

    tables, keys = analysis.load_tables(Path("results/sweep"))
    summary = analysis.summarize(tables, keys)
    fig, ax = plt.subplots()
    plots.line(summary, x="paths.dsl.delay_s", y="setup_time_s", hue="variant", ax=ax)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpsim.errors import MpsimError
from mpsim.experiment.analysis import display_label, display_unit

#: Columns of a summary table that are statistics, not grouping keys.
SUMMARY_FIELDS = frozenset({"metric", "seeds", "records", "mean", "median", "ci_low", "ci_high", "interval"})
#: Columns of a samples table that are not grouping keys.
SAMPLE_FIELDS = frozenset({"point_id", "seed_index", "seed", "metric", "value", "trials"})
#: Image formats by file suffix (those of matplotlib's that need nothing beyond it, e.g. not pgf's LaTeX).
FIGURE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")
#: A CDF whose largest value exceeds this many times its 99th percentile ends at the percentile.
OUTLIER_FACTOR = 10.0


class PlotError(MpsimError, ValueError):
    """A plot that cannot be drawn from this table (a column or metric it does not have)."""


def _select(frame: pd.DataFrame, y: str, fields: frozenset[str], x: str, hue: str | None
            ) -> tuple[pd.DataFrame, list[str]]:
    """The rows of metric ``y`` and the grouping columns other than ``x`` and ``hue`` that vary."""
    needed = {"metric", "value"} if fields is SAMPLE_FIELDS else {"metric", "mean", "ci_low", "ci_high"}
    missing = needed - set(frame.columns)
    if missing:
        kind = "samples (analysis.metric_samples)" if fields is SAMPLE_FIELDS else "summary (analysis.summarize)"
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


def _errors(rows: pd.DataFrame, factor: float = 1.0) -> np.ndarray:
    """Asymmetric error bars from the interval; NaN (one seed) draws none."""
    mean = rows["mean"].to_numpy(float)
    return factor * np.vstack([mean - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - mean])


def _metric_label(y: str, what: str = "") -> str:
    label = display_label(y)
    return f"{label}{', ' + what if what else ''}"


def _legend(ax: Any, title: str | None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if any(labels):
        ax.legend(title=title, fontsize="small", title_fontsize="small")


def line(summary: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any, log: bool = False) -> Any:
    """The mean of ``y`` against ``x`` (numbers on a numeric axis, anything else as categories),
    a line per ``hue`` value, with confidence-interval error bars."""
    part, others = _select(summary, y, SUMMARY_FIELDS, x, hue)
    factor, _ = display_unit(y)
    keys = [k for k in (hue, *others) if k is not None]
    xs = _order(part[x])
    numeric = pd.api.types.is_numeric_dtype(part[x]) and not pd.api.types.is_bool_dtype(part[x])
    position = {value: (value if numeric else i) for i, value in enumerate(xs)}
    for label, rows in _series(part, keys):
        rows = rows.assign(_position=rows[x].map(position)).sort_values("_position")
        ax.errorbar(rows["_position"], rows["mean"] * factor, yerr=_errors(rows, factor), marker="o", capsize=3,
                    label=label or None)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(_metric_label(y, "mean, 95% CI"))
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    _legend(ax, ", ".join(keys) if len(keys) == 1 else None)
    return ax


def bar(summary: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any, log: bool = False) -> Any:
    """Grouped bars: a group per ``x`` value, a bar per ``hue`` value, confidence-interval error bars."""
    part, others = _select(summary, y, SUMMARY_FIELDS, x, hue)
    factor, _ = display_unit(y)
    keys = [k for k in (hue, *others) if k is not None]
    xs = _order(part[x])
    series = _series(part, keys)
    width = 0.8 / len(series)
    for i, (label, rows) in enumerate(series):
        rows = rows.set_index(x).reindex(xs)  # a missing combination leaves a gap, not a shifted bar
        positions = np.arange(len(xs)) - 0.4 + width * (i + 0.5)
        ax.bar(positions, rows["mean"] * factor, width, yerr=_errors(rows, factor), capsize=3, label=label or None)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(_metric_label(y, "mean, 95% CI"))
    if log:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax, ", ".join(keys) if len(keys) == 1 else None)
    return ax


def heatmap(summary: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any, log: bool = False) -> Any:
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
    values = grid.reindex(index=hs, columns=xs).to_numpy(float) * display_unit(y)[0]
    norm = None
    if log:
        from matplotlib.colors import LogNorm

        norm = LogNorm()
    image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis", norm=norm)
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
    ax.figure.colorbar(image, ax=ax, label=_metric_label(y, "mean"))
    return ax


def cdf(samples: pd.DataFrame, *, x: str, y: str, hue: str | None = None, ax: Any, log: bool = False) -> Any:
    """The empirical distribution of ``y`` (every value: each record's, or each point's for a
    rate), a curve per value of ``x`` (and of ``hue``); see the module doc for outliers and ``log``."""
    part, others = _select(samples, y, SAMPLE_FIELDS, x, hue)
    keys = [k for k in (x, hue, *others) if k is not None]
    factor, _ = display_unit(y)
    for label, rows in _series(part, keys):
        values = np.sort(rows["value"].to_numpy(float)) * factor
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                    label=f"{label} (n={values.size})")
    ax.set_xlabel(_metric_label(y))
    ax.set_ylabel("fraction of values <= x")
    ax.set_ylim(0, 1.02)
    every = part["value"].to_numpy(float) * factor
    if log:
        if (every <= 0).any():
            raise PlotError(f"a log axis cannot show {y} values <= 0 (the smallest is {every.min():g})")
        ax.set_xscale("log")
    elif every.size:
        p99, largest = float(np.percentile(every, 99)), float(every.max())
        if p99 > 0 and largest > OUTLIER_FACTOR * p99:
            beyond = int((every > p99).sum())
            ax.set_xlim(min(float(every.min()), 0.0), p99 * 1.05)
            ax.text(0.99, 0.02, f"x axis ends at the 99th percentile ({p99:.3g}): {beyond} value"
                    f"{'s' if beyond != 1 else ''} beyond, up to {largest:.3g} (log=True shows all)",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small")
    ax.grid(True, alpha=0.3)
    _legend(ax, ", ".join(keys) if len(keys) == 1 else None)
    return ax


def figure_formats() -> tuple[str, ...]:
    """The suffixes :func:`save_figure` accepts: :data:`FIGURE_FORMATS` that this matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    return tuple(f for f in FIGURE_FORMATS if f in supported)


def check_figure_path(path: Path, option: str) -> None:
    """Refuse, before any work, a file name whose suffix is not an image format."""
    formats = figure_formats()
    if path.suffix.lower().lstrip(".") not in formats:
        raise PlotError(f"{option} {path}: expected a file name ending in {', '.join('.' + f for f in formats)}")


def save_figure(figure: Any, path: Path, option: str, *, dpi: int = 120) -> Path:
    """Save ``figure`` in the format its suffix names, making missing parent folders; one-line
    :class:`PlotError` naming ``option`` otherwise."""
    check_figure_path(path, option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
    except OSError as err:
        raise PlotError(f"{option} {path}: {err.strerror or err}") from None
    return path


#: ``mpsim plot --kind``: the function, and whether it draws the summary or the samples.
KINDS: dict[str, tuple[Callable[..., Any], str]] = {
    "line": (line, "summary"),
    "bar": (bar, "summary"),
    "heatmap": (heatmap, "summary"),
    "cdf": (cdf, "samples"),
}
