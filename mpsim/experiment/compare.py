"""One scenario, two worlds: ``mpsim compare`` (docs/kernel-world.md, "Comparing").

The scenario runs in the simulator (:func:`mpsim.experiment.results.run`) and in the kernel
(:func:`mpsim.experiment.kernel_world.run_kernel`) for the same run indices; the connections are
matched by (variant, run, request_id), the transfers by (variant, run, transfer_id). Per variant
and metric the report gives the model's value, the kernel's (median, and its spread over the run
indices: min to max) and the error:

* ``outcome``: the fraction of requests whose outcome agrees; anything below 1 fails the comparison
  (the outcomes must agree exactly, whatever the tolerances).
* ``fallback_reason``: the fraction that agrees (reported; the kernel's reason is read from its
  counters, see mpsim/live/client_host.py).
* ``syns``, ``rsts``, ``ports``: the largest absolute difference per request.
* ``setup_rtts``, ``first_byte_rtts``, ``goodput``: the relative error of the kernel's median
  against the model's median, |kernel - model| / model.
* ``goodput_paired`` (variants under random loss whose kernel runs drew the model's loss streams,
  docs/kernel-world.md "Loss: one stream for both worlds"): per transfer matched by run index, the
  ratio kernel / model of the two goodputs with the same loss draws; the kernel column holds the
  median ratio and its min-max, the model column 1 (the reference), the error |median - 1|.

The kernel side can be a recording of earlier kernel runs (``--kernel-from``, :func:`recorded_kernel`):
the tables ``mpsim compare --out`` and ``mpsim run --on kernel --out`` write as ``kernel_runs.json``,
reused only for the same variants built from the same values and the same run indices, so the
model side can follow model changes without running the kernel again.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsim.experiment import kernel_world, results
from mpsim.experiment.scenario import LoadedScenario

RELATIVE = ("setup_rtts", "first_byte_rtts", "goodput", "goodput_paired")
ABSOLUTE = ("syns", "rsts", "ports")
METRICS = ("outcome", "fallback_reason", *ABSOLUTE, *RELATIVE)
_COUNT_COLUMN = {"syns": "syns_sent", "rsts": "rsts_sent", "ports": "source_ports_used"}


#: One-way forwarding latency per line kind of the kernel world's testbed (seconds, each direction),
#: for kernel runs recorded before each run measured its own (docs/kernel-world.md, "The path as
#: built"): medians of ``python benchmarks/path_latency.py`` on this machine
#: (benchmarks/results/path_latency.md: round trips 0, 10, 40 and 100 ms). Measured, not fitted to
#: the report: the calibration runs a lone request, not the report's scenarios.
CALIBRATED_PATH_LATENCY_S = {
    "access, delay line": 0.000108,  # 0.082 at 40 ms RTT, 0.131 at 100 ms: the line's wake-ups
    "access, no delay line": 0.000006,
    "server, delay line": 0.000044,
    "server, no delay line": 0.000016,
}


def line_kinds(scenario: Any) -> dict[str, str]:
    """{line: kind} of the kernel world's build of ``scenario``: each access path and the server link,
    with or without a delay line (a path gets one for a delay or Gilbert-Elliott loss, the server
    link for a delay: mpsim/experiment/kernel_world.py)."""
    from mpsim.experiment.simulation import SERVER_LINE

    out = {}
    for name, p in scenario.paths.items():
        line = bool(p.delay_s) or (p.loss or {}).get("model") == "gilbert_elliott"
        out[name] = f"access, {'delay line' if line else 'no delay line'}"
    out[SERVER_LINE] = f"server, {'delay line' if scenario.server.delay_s else 'no delay line'}"
    return out


def model_path_latency(scenario: Any, measured: dict | None) -> dict[str, tuple[float, float]]:
    """The model's ``path_latency_s`` for one kernel run of ``scenario``: each line's measured one-way
    latency (``kernel_world.measure_path_latency``, the same each way: the echo measures round trips),
    or, for a line the run did not measure (a recording made before the measurement), the calibrated
    constant of its kind (:data:`CALIBRATED_PATH_LATENCY_S`)."""
    lines = (measured or {}).get("lines", {})
    out = {}
    for line, kind in line_kinds(scenario).items():
        one_way = lines.get(line, {}).get("one_way_s")
        value = CALIBRATED_PATH_LATENCY_S[kind] if one_way is None else float(one_way)
        out[line] = (value, value)
    return out


def parse_tolerances(items: Sequence[str]) -> dict[str, float]:
    """``METRIC=VALUE`` items; a clear error for an unknown metric or a bad value."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in RELATIVE + ABSOLUTE:
            raise ValueError(f"--tolerance {item!r}: expected METRIC=VALUE with METRIC one of "
                             f"{', '.join(RELATIVE + ABSOLUTE)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--tolerance {item!r}: {value!r} is not a number") from None
        if out[name] < 0 or not math.isfinite(out[name]):
            raise ValueError(f"--tolerance {item!r}: expected a finite value >= 0")
    return out


@dataclass
class Row:
    variant: str
    metric: str
    model: float | None
    kernel: float | None
    kernel_min: float | None
    kernel_max: float | None
    error: float | None  # outcome/fallback_reason: agreement fraction; counts: max |diff|; else relative
    samples: int
    detail: str = ""


@dataclass
class Report:
    scenario: str
    seeds: int
    rows: list[Row]
    skipped: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    #: Where the kernel side comes from when it was recorded earlier (``--kernel-from``), else "".
    kernel_source: str = ""
    #: What the reader should know about the kernel side (keys the recording predates).
    notes: list[str] = field(default_factory=list)
    #: The kernel runs as a recording (``KernelResults.record``), when they ran now: written by ``write``.
    kernel_record: dict | None = field(default=None, repr=False)

    def text(self) -> str:
        header = ["variant", "metric", "model", "kernel (median)", "kernel min-max", "error", "n"]
        lines = [f"mpsim compare: scenario {self.scenario}, {self.seeds} run index(es) in the model and the kernel"]
        if self.kernel_source:
            lines.append(self.kernel_source)
        lines += [*self.notes, ""]
        table = [[r.variant, r.metric, _show(r.model), _show(r.kernel),
                  "-" if r.kernel_min is None else f"{_show(r.kernel_min)}-{_show(r.kernel_max)}",
                  _error(r), str(r.samples)] for r in self.rows]
        widths = [max(len(x) for x in column) for column in zip(header, *table)]
        for row in (header, *table):
            lines.append("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths))))
        if self.mismatches:
            lines += ["", "Outcomes that disagree (variant run request: model / kernel):",
                      *(f"  {m}" for m in self.mismatches)]
        if self.skipped:
            lines += ["", "Not compared (the kernel cannot build them):", *(f"  {s}" for s in self.skipped)]
        return "\n".join(line.rstrip() for line in lines)

    def check(self, tolerances: dict[str, float]) -> list[str]:
        """One line per failure: outcomes that disagree, and every tolerance exceeded."""
        failures = []
        for r in self.rows:
            if r.metric == "outcome" and r.error is not None and r.error < 1.0:
                failures.append(f"{r.variant}: outcomes agree in {r.error:.0%} of requests (must be 100%)")
            limit = tolerances.get(r.metric)
            if limit is not None and r.error is not None and r.error > limit:
                failures.append(f"{r.variant}: {r.metric} error {_error(r)} exceeds the tolerance {limit:g}")
            if limit is not None and r.error is None and r.samples == 0:
                failures.append(f"{r.variant}: {r.metric} has no values to compare against the tolerance")
        return failures

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "seeds": self.seeds, "rows": [r.__dict__ for r in self.rows],
                "mismatches": self.mismatches, "skipped": self.skipped, "kernel_source": self.kernel_source,
                "notes": self.notes}

    def write(self, out_dir: Path, tolerances: dict[str, float] | None = None) -> list[Path]:
        """compare.csv, compare.json, compare.png (its bands the ``tolerances``) and, when the
        kernel ran now, its recording."""
        import pandas as pd

        out_dir.mkdir(parents=True, exist_ok=True)
        csv, js, png = out_dir / "compare.csv", out_dir / "compare.json", out_dir / "compare.png"
        pd.DataFrame([r.__dict__ for r in self.rows]).to_csv(csv, index=False, lineterminator="\n")
        js.write_text(json.dumps(self.as_dict(), indent=1, allow_nan=False, default=_none) + "\n")
        self.figure(png, tolerances)
        written = [csv, js, png]
        if self.kernel_record is not None:
            written.append(out_dir / kernel_world.RECORD_FILE)
            written[-1].write_text(json.dumps(self.kernel_record, separators=(",", ":"), allow_nan=False) + "\n",
                                   encoding="utf-8")
        return written

    def figure(self, path: Path, tolerances: dict[str, float] | None = None) -> None:
        """The report as a figure (:func:`report_figure`), written to ``path`` (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = report_figure(self, tolerances)
        fig.savefig(path, dpi=120)
        plt.close(fig)


#: The band drawn around the model where no tolerance is given: the reference the benchmark's
#: report counts against for times and loss-free goodput (docs/kernel-world.md, "Comparing").
DEFAULT_BAND = 0.05
_METRIC_TITLES = {"setup_rtts": "setup time", "first_byte_rtts": "first-byte time", "goodput": "goodput",
                  "goodput_paired": "paired goodput"}
_METRIC_UNITS = {"setup_rtts": "RTTs", "first_byte_rtts": "RTTs", "goodput": "Mbit/s",
                 "goodput_paired": "ratio per run"}


def _values_text(r: Row) -> str:
    """model | kernel median (min-max) in the metric's unit, one precision for the row (about four digits)."""
    scale = 1e6 if r.metric == "goodput" else 1.0
    values = [v / scale for v in (r.model, r.kernel, r.kernel_min, r.kernel_max)]
    largest = max(abs(v) for v in values)
    digits = 3 if largest < 10 else 2 if largest < 100 else 1
    model, kernel, low, high = (f"{v:.{digits}f}" for v in values)
    return f"{model} | {kernel} ({low}-{high})"


def report_figure(report: Report, tolerances: dict[str, float] | None = None) -> Any:
    """One row per variant (top to bottom, in the report's order), so 10 or 40 variants read alike.

    Left: the exact metrics as text (outcome agreement, the largest SYN, RST and port count
    difference per request), red where they fail (an outcome below 100 %, a count beyond its
    tolerance, 0 when none is given). Then one panel per relative metric (setup and first-byte time
    in RTTs, goodput): the model is the zero line, the kernel's median a dot and its min-max over
    the run indices a bar, all as (kernel - model) / model, the error the tolerance applies to;
    the shaded band is the metric's tolerance (``tolerances``, else :data:`DEFAULT_BAND`), a dot
    outside it red. Beyond the axis range a value is drawn at the edge with its number. Beside
    each panel the values themselves: model | kernel median (min-max)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    tolerances = tolerances or {}
    variants = list(dict.fromkeys(r.variant for r in report.rows))
    by_key = {(r.variant, r.metric): r for r in report.rows}
    metrics = [m for m in RELATIVE if any(by_key.get((v, m)) is not None and by_key[(v, m)].kernel is not None
                                          for v in variants)]
    n = max(1, len(variants))
    label_in = min(3.0, 0.9 + 0.055 * max((len(v) for v in variants), default=4))
    widths = [1.9] + [2.6, 1.55] * len(metrics)
    fig_w = label_in + sum(widths) + 0.3
    fig_h = 1.25 + 0.24 * n
    fig = plt.figure(figsize=(fig_w, fig_h))
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, left=label_in / fig_w, right=1 - 0.15 / fig_w,
                            top=1 - 0.85 / fig_h, bottom=0.45 / fig_h, wspace=0.08)
    ys = {v: n - 1 - i for i, v in enumerate(variants)}  # the first variant on top
    axes = [fig.add_subplot(grid[0, i]) for i in range(len(widths))]
    for ax in axes:
        ax.set_ylim(-0.5, n - 0.5)
        ax.set_yticks([])
        for i in range(0, n, 2):  # stripes: a row's panels read across
            ax.axhspan(n - 1 - i - 0.5, n - 1 - i + 0.5, color="0.94", zorder=0, linewidth=0)
    axes[0].set_yticks([ys[v] for v in variants], variants, fontsize=7)
    axes[0].tick_params(axis="y", length=0)

    exact = axes[0]
    exact.set_xlim(0, 1)
    exact.set_xticks([])
    exact.set_title("outcomes agree; max diff per\nrequest: SYNs / RSTs / ports", fontsize=7.5)
    for v in variants:
        parts, bad = [], False
        outcome = by_key.get((v, "outcome"))
        if outcome is not None and outcome.error is not None:
            parts.append(f"{outcome.error:.0%}")
            bad |= outcome.error < 1.0
        for metric in ABSOLUTE:
            r = by_key.get((v, metric))
            if r is None or r.error is None:
                parts.append("-")
                continue
            parts.append(f"{r.error:g}")
            bad |= r.error > tolerances.get(metric, 0.0)
        exact.text(0.04, ys[v], "  ".join(parts[:1]) + "   " + " / ".join(parts[1:]), va="center", fontsize=7,
                   color="tab:red" if bad else "black", family="monospace")

    for index, metric in enumerate(metrics):
        ax, text_ax = axes[1 + 2 * index], axes[2 + 2 * index]
        band = tolerances.get(metric, DEFAULT_BAND)
        rows = [(v, by_key.get((v, metric))) for v in variants]
        extents = [abs(x) for _, r in rows if r is not None and r.model and r.kernel is not None
                   for x in ((r.kernel - r.model) / r.model, (r.kernel_min - r.model) / r.model,
                             (r.kernel_max - r.model) / r.model)]
        # Wide enough for the band and 90 % of the values (an outlier is drawn at the edge, numbered),
        # and never so wide that the band shrinks to a line.
        typical = sorted(extents)[int(0.9 * (len(extents) - 1))] if extents else 0.0
        limit = min(max(2 * band, 0.02, typical * 1.15), max(6 * band, 0.3))
        ax.set_xlim(-limit, limit)
        ax.axvspan(-band, band, color="tab:green", alpha=0.13, linewidth=0, zorder=1)
        ax.axvline(0, color="black", linewidth=0.9, zorder=2)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10], symmetric=True))
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0 if limit >= 0.1 else 1))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{_METRIC_TITLES[metric]}: (kernel - model) / model\nband ±{band:.0%}", fontsize=7.5)
        text_ax.set_xlim(0, 1)
        text_ax.set_xticks([])
        text_ax.set_title(f"model | kernel (min-max)\n{_METRIC_UNITS[metric]}", fontsize=7.5)
        for v, r in rows:
            y = ys[v]
            if r is None or r.kernel is None or r.model is None:
                missing = ("-" if r is None else "none in either world" if r.kernel is None and r.model is None
                           else "no kernel value" if r.kernel is None else "no model value")
                text_ax.text(0.04, y, missing, va="center", fontsize=6.5, color="0.4")
                continue
            text_ax.text(0.04, y, _values_text(r), va="center", fontsize=6.5)
            if not r.model:
                ax.text(0, y, "model 0", va="center", ha="center", fontsize=6.5, color="0.4")
                continue
            low, median, high = ((x - r.model) / r.model for x in (r.kernel_min, r.kernel, r.kernel_max))
            ax.plot([max(low, -limit), min(high, limit)], [y, y], color="0.45", linewidth=3, alpha=0.55,
                    solid_capstyle="butt", zorder=3)
            inside = abs(median) <= band
            color = "tab:blue" if inside else "tab:red"
            if abs(median) > limit:
                edge = 0.96 * (limit if median > 0 else -limit)
                ax.plot([edge], [y], marker=">" if median > 0 else "<", color=color, markersize=6, zorder=4)
                ax.text(edge * 0.93, y, f"{median:+.0%}", ha="right" if median > 0 else "left", va="center",
                        fontsize=6.5, color=color, zorder=5)
            else:
                ax.plot([median], [y], marker="o" if inside else "D", color=color, markersize=4.5, zorder=4)
    for ax in axes[2::2]:
        ax.axis("off")
    handles = [Line2D([], [], color="black", linewidth=0.9, label="model (0)"),
               Line2D([], [], color="0.45", linewidth=3, alpha=0.55, label="kernel min-max"),
               Line2D([], [], color="tab:blue", marker="o", linestyle="", label="kernel median, in band"),
               Line2D([], [], color="tab:red", marker="D", linestyle="", label="outside the band"),
               Patch(color="tab:green", alpha=0.13, label="tolerance band")]
    fig.legend(handles=handles, loc="upper right", ncol=5, fontsize=7, frameon=False,
               bbox_to_anchor=(1 - 0.15 / fig_w, 1 - 0.02 / fig_h))
    fig.text(0.15 / fig_w, 1 - 0.12 / fig_h, f"{report.scenario}: kernel against model, {report.seeds} run "
             f"index(es) per variant", fontsize=9, va="top")
    return fig


def _none(value: Any) -> Any:
    return None


def _show(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1e5:
        return f"{value / 1e6:.2f}M"
    return f"{value:.4g}"


def _error(r: Row) -> str:
    if r.error is None:
        return "-"
    if r.metric in ("outcome", "fallback_reason"):
        return f"{r.error:.0%} agree"
    if r.metric in ABSOLUTE:
        return f"{r.error:g}"
    return f"{r.error:.1%}"


def _reason(value: Any) -> str | None:
    """A fallback reason cell: None, NaN (pandas' empty cell) and "" all mean none."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" else value


def _values(frame: Any, column: str) -> list[float]:
    return [float(v) for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _relative(variant: str, metric: str, model: list[float], kernel: list[float]) -> Row:
    if not model or not kernel:
        return Row(variant, metric, statistics.median(model) if model else None,
                   statistics.median(kernel) if kernel else None, None, None, None, min(len(model), len(kernel)))
    m, k = statistics.median(model), statistics.median(kernel)
    error = abs(k - m) / abs(m) if m else (0.0 if k == 0 else math.inf)
    return Row(variant, metric, m, k, min(kernel), max(kernel), error, len(kernel))


def _paired(variant: str, model: list[dict], kernel: list[dict]) -> Row:
    """kernel / model goodput per transfer, matched by (run, transfer_id): the same loss draws."""
    m = {(r["run"], r["transfer_id"]): r["goodput_bps"] for r in model}
    ratios = []
    for r in kernel:
        mv, kv = m.get((r["run"], r["transfer_id"])), r["goodput_bps"]
        if mv and kv is not None and not (isinstance(kv, float) and math.isnan(kv)):
            ratios.append(float(kv) / float(mv))
    if not ratios:
        return Row(variant, "goodput_paired", 1.0, None, None, None, None, 0)
    median = statistics.median(ratios)
    return Row(variant, "goodput_paired", 1.0, median, min(ratios), max(ratios), abs(median - 1.0), len(ratios),
               "kernel / model per run index, the same loss draws")


def compare_results(model: results.Results, kernel: results.Results, *, skipped: Sequence[str] = (),
                    unpaired: Sequence[str] = ()) -> Report:
    """The report of two finished runs of one loaded scenario. A variant under random loss gets a
    ``goodput_paired`` row unless it is in ``unpaired`` (its kernel runs did not draw the model's
    loss streams: a recording older than that)."""
    mc, kc = model.connections, kernel.connections
    mt, kt = model.transfers, kernel.transfers
    rows, mismatches = [], []
    for variant in dict.fromkeys(kc["variant"]):
        m_rows = {(r["run"], r["request_id"]): r for r in mc[mc["variant"] == variant].to_dict("records")}
        k_rows = {(r["run"], r["request_id"]): r for r in kc[kc["variant"] == variant].to_dict("records")}
        keys = sorted(set(m_rows) | set(k_rows))
        agree = reason = 0
        diffs: dict[str, float] = {name: 0.0 for name in ABSOLUTE}
        counted = 0
        for key in keys:
            m, k = m_rows.get(key), k_rows.get(key)
            if m is None or k is None:
                mismatches.append(f"{variant} run {key[0]} request {key[1]}: "
                                  f"{'missing in the model' if m is None else 'missing in the kernel'}")
                continue
            if m["outcome"] == k["outcome"]:
                agree += 1
            else:
                mismatches.append(f"{variant} run {key[0]} request {key[1]}: {m['outcome']} / {k['outcome']}"
                                  f" ({m['fallback_reason']} / {k['fallback_reason']})")
            reason += _reason(m["fallback_reason"]) == _reason(k["fallback_reason"])
            counted += 1
            for name, column in _COUNT_COLUMN.items():
                if k[column] is not None and not (isinstance(k[column], float) and math.isnan(k[column])):
                    diffs[name] = max(diffs[name], abs(float(m[column]) - float(k[column])))
        n = len(keys)
        rows.append(Row(variant, "outcome", None, None, None, None, agree / n if n else None, n))
        rows.append(Row(variant, "fallback_reason", None, None, None, None, reason / counted if counted else None,
                        counted))
        for name, column in _COUNT_COLUMN.items():
            mv = _values(mc[mc["variant"] == variant], column)
            kv = _values(kc[kc["variant"] == variant], column)
            rows.append(Row(variant, name, statistics.median(mv) if mv else None,
                            statistics.median(kv) if kv else None, min(kv) if kv else None, max(kv) if kv else None,
                            diffs[name] if counted and kv else None, len(kv)))
        for metric in ("setup_rtts", "first_byte_rtts"):
            rows.append(_relative(variant, metric, _values(mc[mc["variant"] == variant], metric),
                                  _values(kc[kc["variant"] == variant], metric)))
        mg = _values(mt[(mt["variant"] == variant)], "goodput_bps") if len(mt) else []
        kg = _values(kt[(kt["variant"] == variant)], "goodput_bps") if len(kt) else []
        if mg or kg:
            rows.append(_relative(variant, "goodput", mg, kg))
            if kernel_world.loss_seeds(model.loaded.variants[variant], 0) and variant not in unpaired:
                rows.append(_paired(variant, mt[mt["variant"] == variant].to_dict("records"),
                                    kt[kt["variant"] == variant].to_dict("records")))
    return Report(model.loaded.name, model.loaded.base.runs, rows, list(skipped), mismatches)


@dataclass
class RecordedKernel:
    """Kernel runs read back from a recording (:func:`recorded_kernel`): the tables compare reads."""

    connections: Any
    transfers: Any
    variants: list[str]
    skipped: list[str]
    source: str  # one line: where, when and at which commit the kernel side was measured
    notes: list[str]
    #: Variants under random loss whose recorded runs drew their losses independently of the model's.
    unpaired: list[str] = field(default_factory=list)
    #: (variant, run index) -> the run's path measurement (``kernel_world.measure_path_latency``);
    #: absent for recordings made before it.
    path_latency: dict[tuple[str, int], dict] = field(default_factory=dict)


def _refuse(path: Path, text: str) -> kernel_world.KernelWorldError:
    return kernel_world.KernelWorldError(f"--kernel-from {path}: {text}")


def _show_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def recorded_kernel(loaded: LoadedScenario, source: Path, *, variants: Sequence[str] | None = None,
                    proxy_cmd: str | None = None, skip_unbuildable: bool = False) -> RecordedKernel:
    """The kernel side of ``loaded`` from a recording (``kernel_runs.json``, or a directory holding
    one), refused in one line (:class:`KernelWorldError`) unless every variant asked for was built
    from the values it has now (``kernel_world.built_values``: the model-only keys aside) with the
    same proxy, and every run index 0..runs-1 is recorded. A key the recording predates (added to
    the scenario schema since) is accepted and named in the notes."""
    import pandas as pd

    from mpsim.provenance import git_revision, short_revision

    path = source / kernel_world.RECORD_FILE if source.is_dir() else source
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise _refuse(path, f"cannot read it: {err.strerror or err}") from None
    except ValueError as err:
        raise _refuse(path, f"not a recording of kernel runs (bad JSON: {err})") from None
    if not isinstance(record, dict) or record.get("format") != 1 or not isinstance(record.get("variants"), dict):
        raise _refuse(path, "not a recording of kernel runs (format 1; mpsim compare --out or mpsim run --on "
                            "kernel --out writes one)")
    if record.get("proxy_cmd") != proxy_cmd:
        raise _refuse(path, f"recorded with --proxy-cmd {record.get('proxy_cmd')!r}, asked with {proxy_cmd!r}")
    names = list(variants) if variants else list(loaded.variants)
    skipped = []
    for name in list(names):
        problems = kernel_world.unbuildable(loaded.variants[name], proxy_cmd=proxy_cmd)
        if problems:
            if not skip_unbuildable:
                raise kernel_world.KernelWorldError(f"cannot build variant {name!r} in the kernel: {problems[0]}")
            skipped += [f"{name}: {line}" for line in problems]
            names.remove(name)
    if not names:
        raise kernel_world.KernelWorldError("no variant can be built in the kernel: " + "; ".join(skipped[:3]))
    runs = loaded.base.runs
    notes, rows, unpaired = [], {table: [] for table in kernel_world.RECORD_TABLES}, []
    path_latency: dict[tuple[str, int], dict] = {}
    unmeasured: list[str] = []
    for name in names:
        entry = record["variants"].get(name)
        if entry is None:
            raise _refuse(path, f"variant {name!r} is not recorded (recorded: {', '.join(record['variants']) or 'none'})")
        now, then = kernel_world.built_values(loaded.variants[name]), entry["built"]
        for key in then:
            if key not in now:
                raise _refuse(path, f"variant {name!r}: the recording has {key} = {_show_value(then[key])}, the "
                                    "scenario has no such key now (run the kernel again)")
            if now[key] != then[key]:
                raise _refuse(path, f"variant {name!r}: {key} is {_show_value(now[key])} here, "
                                    f"{_show_value(then[key])} in the recording (run the kernel again)")
        if kernel_world.loss_seeds(loaded.variants[name], 0) and entry.get("loss_streams") != kernel_world.LOSS_STREAMS:
            notes.append(f"{name}: the recorded kernel runs drew their losses independently of the model's "
                         "(recorded before the delay line drew the model's loss streams)")
            unpaired.append(name)
        if "measured_utc" in entry:  # a variant recorded apart from the rest of its file, and added to it
            notes.append(f"{name}: kernel side recorded {entry['measured_utc']} at mpsim "
                         f"{short_revision(entry.get('git')) or 'an unknown commit'}")
        added = [f"{key} = {_show_value(now[key])}" for key in now if key not in then]
        if added:
            notes.append(f"{name}: keys the recording predates, taken as not changing the kernel: {', '.join(added)}")
        missing = [i for i in range(runs) if str(i) not in entry["runs"]]
        if missing:
            raise _refuse(path, f"variant {name!r}: run index {missing[0]} is not recorded (recorded: "
                                f"{', '.join(sorted(entry['runs'], key=int))}; use --seeds {len(entry['runs'])} or fewer)")
        for i in range(runs):
            for table in kernel_world.RECORD_TABLES:
                rows[table] += entry["runs"][str(i)][table]
            if entry["runs"][str(i)].get("path_latency"):
                path_latency[(name, i)] = entry["runs"][str(i)]["path_latency"]
        if not all((name, i) in path_latency for i in range(runs)):
            unmeasured.append(name)
    if unmeasured:  # one note for the recording, not one per variant
        which = "every variant" if len(unmeasured) == len(names) else ", ".join(unmeasured)
        notes.append(f"No measurement of the paths as built in the recording ({which}: recorded before it); the "
                     "model's lines get the calibrated forwarding latency (CALIBRATED_PATH_LATENCY_S, "
                     "benchmarks/results/path_latency.md).")
    frames = {table: pd.DataFrame(rows[table], columns=record["columns"][table]) for table in rows}
    then = short_revision(record.get("git")) or "an unknown commit"
    now = short_revision(git_revision()) or "an unknown commit"
    recorded = sorted({int(i) for name in names for i in record["variants"][name]["runs"]})
    source_line = (f"Kernel side recorded {record.get('measured_utc', '?')} at mpsim {then} "
                   f"({path}; run indices 0-{runs - 1} of {len(recorded)} recorded), "
                   f"model side run now at mpsim {now}.")
    return RecordedKernel(frames["connections"], frames["transfers"], names,
                          [*record.get("skipped_unbuildable", []), *skipped], source_line, notes, unpaired,
                          path_latency)


def compare(loaded: LoadedScenario, *, variants: Sequence[str] | None = None, proxy_cmd: str | None = None,
            skip_unbuildable: bool = False, progress: Callable[[str], None] | None = None,
            kernel_from: Path | None = None) -> Report:
    """Run ``loaded`` in both worlds and compare (the kernel first refuses what it cannot build);
    with ``kernel_from``, the kernel side is a recording (:func:`recorded_kernel`) and only the model runs."""
    if kernel_from is not None:
        kernel: Any = recorded_kernel(loaded, kernel_from, variants=variants, proxy_cmd=proxy_cmd,
                                      skip_unbuildable=skip_unbuildable)
        built = kernel.variants
        measured = kernel.path_latency
    else:
        kernel = kernel_world.run_kernel(loaded, variants=list(variants) if variants else None,
                                         skip_unbuildable=skip_unbuildable, proxy_cmd=proxy_cmd, progress=progress)
        built = list(dict.fromkeys(r.variant for r in kernel.runs))
        measured = {(r.variant, r.run_index): k.path_latency for r, k in zip(kernel.runs, kernel.kernel)}
    if progress:
        progress("model: " + ", ".join(built))
    # The model's access links shape as the kernel world's tbf qdiscs do, and its lines forward with
    # the latency the kernel run measured on its own (docs/kernel-world.md, "The path as built").
    model = results.run(loaded, variants=built, shaper="tbf",
                        path_latency=lambda variant, run: model_path_latency(loaded.variants[variant],
                                                                             measured.get((variant, run))))
    report = compare_results(model, kernel, skipped=kernel.skipped, unpaired=getattr(kernel, "unpaired", ()))
    if kernel_from is not None:
        report.kernel_source, report.notes = kernel.source, kernel.notes
    else:
        report.kernel_record = kernel.record()
    return report
