"""How a sweep scales: the same ``mpsim sweep`` on one worker, on every core, and on a Dask
LocalCluster with as many workers.

Each configuration runs the real command (``python -m mpsim sweep ...``) in a fresh process and
a fresh directory, so the wall time is what a user waits for: interpreter start, planning,
starting the pool or the cluster, the points, the tables. The configurations are interleaved in
rounds (the machine's other load falls on all of them alike), and the speed-ups are computed per
round (1-worker wall time / the configuration's), reported as min and median over the rounds.

Two rates per run: **end to end** (points / wall seconds of the whole command) and **steady**
(points per second between the first and the last point file written: the pool at work, without
the 2-3 s of interpreter start, pool or cluster start, and table building that every
configuration pays once). A sweep needs about 8 times that fixed cost in serial work for the end
to end speed-up to reach 1.8x on 2 cores, hence the sweep's size.

The sweep: ``default`` with ``runs=3`` and ``duration_s=30``, the LTE delay over 6 values times
16 seeds (96 points of about 0.35 s of simulation each); ``--quick``: 12 points of one run each,
where start-up weighs more (expect lower end-to-end speed-ups). Every configuration must produce
the same connections and transfers tables, checked here. The load average before and after is
recorded: other work on the machine takes cores from the parallel configurations.

Other work on the machine takes cores from the parallel configurations, so each round starts by
measuring the **attainable** speed-up at that moment: a fixed pure-Python loop in one process,
then in W processes at once (W x the time alone / the time together; W on an idle machine). A
speed-up reads against that.

Target: with W workers, at least 0.9 x W times the 1-worker rate (1.8x on 2 cores), end to end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mpsim import __version__
from mpsim.bench import write_json_and_markdown
from mpsim.experiment.sweep import default_workers
from mpsim.provenance import git_revision, machine_facts

SCENARIO = "default"
FULL = {"overrides": ["runs=3", "duration_s=30"], "grid": ["paths.lte.delay_s=0.01:0.06:0.01"], "seeds": 16}
QUICK = {"overrides": ["runs=1", "duration_s=10"], "grid": ["paths.lte.delay_s=0.01:0.06:0.01"], "seeds": 2}
TARGET_EFFICIENCY = 0.9  # speed-up per worker: 1.8x on 2 cores


def configurations(workers: int) -> list[tuple[str, list[str]]]:
    """(name, the sweep options that choose where points run)."""
    return [("local, 1 worker", ["--workers", "1"]),
            (f"local, {workers} workers", ["--workers", str(workers)]),
            (f"dask LocalCluster, {workers} workers", ["--dask", "local", "--workers", str(workers)])]


def sweep_command(spec: dict[str, Any], out_dir: Path, options: Sequence[str]) -> list[str]:
    command = [sys.executable, "-m", "mpsim", "sweep", SCENARIO, "--seeds", str(spec["seeds"]), "--out", str(out_dir)]
    for text in spec["overrides"]:
        command += ["--set", text]
    for text in spec["grid"]:
        command += ["--grid", text]
    return [*command, *options]


_SPIN = "import time\nt = time.perf_counter()\nn = 0\nwhile n < 6_000_000:\n    n += 1\nprint(time.perf_counter() - t)"


def attainable_speedup(workers: int) -> float:
    """W x (a CPU-bound loop's time alone) / (its time with W copies at once): the cores this machine
    gives us now (other processes take the rest)."""
    def spin(copies: int) -> float:
        children = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
                    for _ in range(copies)]
        return statistics.mean(float(child.communicate()[0]) for child in children)

    return workers * spin(1) / spin(workers)


def run_once(spec: dict[str, Any], options: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """One sweep in a child process: its wall time, points, and the time the points themselves took."""
    started = time.perf_counter()
    finished = subprocess.run(sweep_command(spec, out_dir, options), capture_output=True, text=True, timeout=3600)
    wall_s = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"sweep {' '.join(options)} exited with {finished.returncode}: {finished.stderr[-2000:]}")
    points = pd.read_parquet(out_dir / "points.parquet")
    written_s = sorted(path.stat().st_mtime_ns / 1e9 for path in (out_dir / "points").glob("*.parquet"))
    span_s = written_s[-1] - written_s[0]
    return {"wall_s": wall_s, "points": len(points), "points_per_s": len(points) / wall_s,
            "steady_points_per_s": (len(written_s) - 1) / span_s if span_s > 0 else None,
            "point_compute_s": float(points["elapsed_s"].sum())}


def _tables(out_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(out_dir / f"{name}.parquet") for name in ("connections", "transfers")}


def run(*, quick: bool = False, rounds: int = 2, workers: int | None = None, spec: dict[str, Any] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every configuration ``rounds`` times, interleaved; the results as a JSON-able dict. ``spec``
    (overrides, grid, seeds of the ``default`` scenario) replaces FULL or QUICK."""
    spec = spec or (QUICK if quick else FULL)
    workers = workers or default_workers()
    configs = configurations(workers)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    reference: dict[str, pd.DataFrame] | None = None
    identical = True
    load_before = os.getloadavg()
    attainable = []
    with tempfile.TemporaryDirectory(prefix="mpsim-bench-sweep-") as scratch:
        for round_index in range(rounds):
            attainable.append(attainable_speedup(workers))
            if progress is not None:
                progress(f"round {round_index + 1}/{rounds}: attainable speed-up with {workers} processes now: "
                         f"{attainable[-1]:.2f}")
            for number, (name, options) in enumerate(configs):
                out_dir = Path(scratch) / f"r{round_index}-c{number}"
                sample = run_once(spec, options, out_dir)
                samples[name].append(sample)
                tables = _tables(out_dir)
                if reference is None:
                    reference = tables
                else:
                    identical &= all(tables[t].equals(reference[t]) for t in tables)
                if progress is not None:
                    progress(f"round {round_index + 1}/{rounds}: {name}: {sample['points']} points in "
                             f"{sample['wall_s']:.2f} s ({sample['points_per_s']:.2f} points/s)")
    serial = configs[0][0]
    rows = []
    for name, _ in configs:
        pairs = list(zip(samples[serial], samples[name]))
        speedups = [s0["wall_s"] / s["wall_s"] for s0, s in pairs]
        steady = [s["steady_points_per_s"] / s0["steady_points_per_s"] for s0, s in pairs
                  if s["steady_points_per_s"] and s0["steady_points_per_s"]]
        steady_rates = [s["steady_points_per_s"] for s in samples[name] if s["steady_points_per_s"]]
        rows.append({"configuration": name,
                     "points_per_s_median": statistics.median(s["points_per_s"] for s in samples[name]),
                     "wall_s_median": statistics.median(s["wall_s"] for s in samples[name]),
                     "speedup_min": min(speedups), "speedup_median": statistics.median(speedups),
                     # None when every point file was written within one clock tick (a sweep of 1-2 points)
                     "steady_points_per_s_median": statistics.median(steady_rates) if steady_rates else None,
                     "steady_speedup_median": statistics.median(steady) if steady else None})
    target = TARGET_EFFICIENCY * workers
    return {
        "benchmark": "sweep", "mpsim_version": __version__, "git": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts() | {"usable_cpus": default_workers(), "load_average_before": load_before,
                                      "load_average_after": os.getloadavg()},
        "sweep": {"scenario": SCENARIO, **spec, "quick": quick, "points": samples[serial][0]["points"],
                  "command": " ".join(sweep_command(spec, Path("DIR"), ["--workers", "K"])[1:])},
        "workers": workers, "rounds": rounds, "attainable_speedup": attainable, "results": rows,
        "samples": samples,
        "identical_tables": identical,
        # The target is the local pool's; the cluster's start-up (a few seconds) is reported beside it.
        "target": {"speedup": target, "configuration": rows[1]["configuration"],
                   "met": rows[1]["speedup_median"] >= target,
                   "dask_met": rows[2]["speedup_median"] >= target},
    }


def markdown(results: dict[str, Any]) -> str:
    sweep, machine = results["sweep"], results["machine"]
    lines = [
        "# Sweep scaling",
        "",
        f"`{sweep['command']}` ({sweep['points']} points), each configuration in a fresh process, "
        f"{results['rounds']} interleaved rounds; {machine['usable_cpus']} usable CPUs, {machine['platform']}, "
        f"Python {machine['python']}, mpsim {results['mpsim_version']} ({results['date']}).",
        "",
        f"Load average (1 min) {machine['load_average_before'][0]:.1f} before, "
        f"{machine['load_average_after'][0]:.1f} after; attainable speed-up with {results['workers']} processes "
        f"(a CPU-bound loop, per round): {', '.join(f'{a:.2f}' for a in results['attainable_speedup'])}.",
        "",
        "| configuration | points/s end to end | wall s | speed-up end to end (min / median) | "
        "points/s steady | speed-up steady |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["results"]:
        steady = row["steady_speedup_median"]
        lines.append(f"| {row['configuration']} | {row['points_per_s_median']:.2f} | {row['wall_s_median']:.2f} | "
                     f"{row['speedup_min']:.2f} / {row['speedup_median']:.2f} | "
                     f"{_number(row['steady_points_per_s_median'])} | {_number(steady)} |")
    lines += ["", "Medians over the rounds; end to end: the whole command; steady: between the first and the "
                  "last point written."]
    target = results["target"]
    lines += ["", f"Target: at least {target['speedup']:.2f}x end to end with {results['workers']} local workers: "
                  f"{'met' if target['met'] else 'NOT met'} (Dask LocalCluster: "
                  f"{'met' if target['dask_met'] else 'not met'}). Tables identical across configurations: "
                  f"{'yes' if results['identical_tables'] else 'NO'}.", ""]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_results(results: dict[str, Any], out_dir: Path, stem: str = "sweep") -> tuple[Path, Path]:
    """``out_dir/sweep.json`` and ``out_dir/sweep.md``."""
    return write_json_and_markdown(results, markdown(results), out_dir, stem)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small sweep (start-up weighs more)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--workers", type=int, help="workers of the parallel configurations (default: every core)")
    parser.add_argument("--out", type=Path, help="write sweep.json and sweep.md into this directory")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--rounds and --workers must be at least 1")
    results = run(quick=args.quick, rounds=args.rounds, workers=args.workers,
                  progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(results))
    if args.out is not None:
        for path in write_results(results, args.out):
            print(f"written: {path}")
    return 0 if results["identical_tables"] else 1
