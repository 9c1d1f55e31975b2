"""Running a sweep: the points a directory lacks go to an executor, each is written as it
finishes, progress and warnings go to stderr, then the tables and the summary are rebuilt."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime
import json
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa

from mpsim import __version__
from mpsim.experiment import analysis
from mpsim.experiment.sweep.executors import (dask_executor, default_workers, kernel_executor, local_executor,
                                               run_kernel_point, run_point)
from mpsim.experiment.sweep.grid import SweepError
from mpsim.experiment.sweep.plan import Point, PointOutcome, PointTask, SweepPlan
from mpsim.experiment.sweep.progress import Progress, format_duration
from mpsim.experiment.sweep.store import (SweepDir, point_error, previous_sessions, read_points,
                                          write_atomically, write_manifest, write_point)
from mpsim.provenance import git_revision, machine_facts

#: More points than this to run gets a warning with the count before the sweep starts.
WARN_POINTS = 1000
#: An estimated time left above this (after the first points) gets a warning once.
WARN_SECONDS = 3600.0
#: Points that must have finished (and at least one per worker) before the time left is estimated.
ESTIMATE_AFTER_POINTS = 3
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


@dataclass
class SweepReport:
    """What a sweep invocation did."""

    out_dir: Path
    total: int
    ran: int = 0  # points computed by this invocation
    reused: int = 0  # points already in DIR
    failed: int = 0  # points whose file records an error (all of them, not just this invocation's)
    interrupted: bool = False
    tables: dict[str, Path] = field(default_factory=dict)
    summary: pd.DataFrame | None = None


class WorkerLost(SweepError):
    """A local worker process died (killed, out of memory): the points it held are not recorded."""


def run_sweep(plan: SweepPlan, out_dir: Path, *, workers: int | None = None, dask: str | None = None,
              csv: bool = False, retry_failed: bool = False, progress: IO[str] | None = None,
              point_runner: Callable[[PointTask], PointOutcome] | None = None) -> SweepReport:
    """Run the points of ``plan`` that ``out_dir`` lacks, then (unless interrupted) rebuild its tables.

    ``point_runner`` replaces :func:`run_point` (it must be importable by name: workers are other
    processes); without it, the module's ``run_point`` at call time (``run_kernel_point`` for a
    plan in the kernel world, whose points run one after another in this process).
    """
    if workers is not None and workers < 1:
        raise SweepError(f"--workers {workers}: expected an integer >= 1")
    if workers is not None and dask not in (None, "local"):
        raise SweepError("--workers sizes the local pool or --dask local; a scheduler's cluster has its own workers")
    check_executor(plan.world, workers, dask)
    if plan.world == "kernel":
        from mpsim.experiment import kernel_world

        try:
            kernel_world.check_root()  # before the directory is touched
        except kernel_world.KernelWorldError as err:
            raise SweepError(str(err)) from None
    runner = point_runner or (run_kernel_point if plan.world == "kernel" else run_point)
    directory = SweepDir(out_dir)
    report = SweepReport(out_dir, len(plan.points))
    session: dict[str, Any] = {"started": _now(), "executor": "kernel" if plan.world == "kernel" else
                               "local" if dask is None else f"dask {dask}",
                               "workers": None, "mpsim_version": __version__, "git": git_revision(),
                               "machine": machine()}
    with directory.locked():
        directory.check_or_record(plan)
        to_run, failed_before = [], 0
        for point in plan.points:
            path = directory.point_file(point.point_id)
            if not path.exists():
                to_run.append(point)
            elif point_error(path, point) is not None:
                if retry_failed:
                    to_run.append(point)
                else:
                    failed_before += 1
        report.reused = len(plan.points) - len(to_run)
        bar = Progress(len(plan.points), report.reused, progress)
        bar.failed = failed_before
        _warn_about_the_past(directory, session, bar)
        for grid_point, lines in plan.kernel_skipped.items():
            bar.message(f"--skip-unbuildable: grid point {grid_point} leaves out " + "; ".join(lines))
        if len(to_run) > WARN_POINTS:
            bar.message(f"warning: this sweep runs {len(to_run)} points ({plan.grid_points} grid points x "
                        f"{plan.seeds} seeds, {report.reused} already done); Ctrl-C stops it and the same "
                        "command resumes")
        session["status"] = "aborted"  # until it gets further
        try:
            if to_run:
                _run_points(plan, to_run, directory, runner, workers, dask, bar, report, session)
            bar.update(final=True)
            session["status"] = "finished"
        except KeyboardInterrupt:
            report.interrupted = True
            session["status"] = "interrupted"
            bar.message(f"interrupted: {report.ran} points computed now, {report.reused + report.ran} of "
                        f"{report.total} saved in {out_dir}; run the same command to finish")
        finally:
            session.update(ended=_now(), ran=report.ran)
            write_manifest(directory, plan, session, machine())
        if not report.interrupted:
            report.tables, report.summary, report.failed = write_tables(plan, directory, csv=csv)
    return report


def check_executor(world: str, workers: int | None, dask: str | None) -> None:
    """Refuse what cannot run ``world``'s points: the kernel's run one after another (they share
    this machine's kernel), so neither a pool of several workers nor Dask."""
    if world == "kernel" and (dask is not None or (workers is not None and workers > 1)):
        raise SweepError(f"--on kernel runs points one after another (they share this machine's kernel): "
                         f"drop {'--dask' if dask is not None else f'--workers {workers}'}")


def _run_points(plan: SweepPlan, to_run: list[Point], directory: SweepDir,
                runner: Callable[[PointTask], PointOutcome], workers: int | None, dask: str | None,
                bar: Progress, report: SweepReport, session: dict[str, Any]) -> None:
    """Keep the executor busy (a few points queued per slot, not all: a million tasks would sit
    in memory), write each point as it finishes, show progress."""
    with contextlib.ExitStack() as stack:
        queued = 2  # points handed to the executor per slot: none waits for a slot to free
        if plan.world == "kernel":
            executor, slots = stack.enter_context(kernel_executor()), 1
            queued = 1  # each point is written before the next starts: Ctrl-C loses at most the one running
        elif dask is None:
            slots = min(workers or default_workers(), len(to_run))
            executor = stack.enter_context(local_executor(slots))
        else:
            executor, slots = stack.enter_context(dask_executor(dask, workers))
        session["workers"] = slots
        pending, in_flight = deque(to_run), {}
        estimated = False
        while pending or in_flight:
            while pending and len(in_flight) < queued * slots:
                point = pending.popleft()
                in_flight[executor.submit(runner, plan.task(point))] = point
            done, _ = cf.wait(in_flight, timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for future in done:
                point = in_flight.pop(future)
                outcome = _outcome(future, point, [p.point_id for p in in_flight.values()])
                try:
                    write_point(directory.point_file(point.point_id), point, outcome)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
                    # records Parquet cannot hold (a new column of mixed types): the point's failure, not the sweep's
                    outcome = PointOutcome(point.point_id, None, None, type(err).__name__,
                                           f"its records could not be stored: {err}",
                                           "".join(traceback.format_exception(err)), outcome.elapsed_s)
                    write_point(directory.point_file(point.point_id), point, outcome)
                report.ran += 1
                bar.update(done=1, failed=int(outcome.error_type is not None))
            if not estimated and bar.ran >= max(ESTIMATE_AFTER_POINTS, slots):
                estimated = True
                left = bar.time_left_s()
                if left is not None and left > WARN_SECONDS:
                    bar.message(f"warning: at this pace the sweep needs about {format_duration(left)} more "
                                f"({len(pending) + len(in_flight)} points left); Ctrl-C stops it and the same "
                                "command resumes")
            bar.update()


def _outcome(future: cf.Future, point: Point, in_flight: list[str]) -> PointOutcome:
    """The outcome of a finished future; a future that raised (not the point: run_point catches
    that) is recorded as the point's error, except a dead local pool, which stops the sweep."""
    try:
        return future.result()
    except cf.process.BrokenProcessPool:
        lost = ", ".join(sorted([point.point_id, *in_flight]))
        raise WorkerLost(f"a worker process died (killed? out of memory?) while running points {lost}; "
                         "they are not recorded: run the same command to retry them") from None
    except Exception as err:  # noqa: BLE001 - e.g. dask's KilledWorker, a result that did not pickle
        return PointOutcome(point.point_id, None, None, type(err).__name__, str(err),
                            "".join(traceback.format_exception(err)))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    return machine_facts() | {"usable_cpus": default_workers()}



def _warn_about_the_past(directory: SweepDir, session: dict[str, Any], bar: Progress) -> None:
    """Points computed by other code are not recomputed; say so when the revision changed."""
    revisions = {json.dumps(s.get("git")) for s in previous_sessions(directory) if s.get("ran")}
    mine = json.dumps(session["git"])
    if revisions - {mine}:
        bar.message("warning: points in this directory were computed by another mpsim revision "
                    "(see the sessions in manifest.json)")



def write_tables(plan: SweepPlan, directory: SweepDir, *, csv: bool = False
                 ) -> tuple[dict[str, Path], pd.DataFrame, int]:
    """Rebuild the tables from the point files; returns their paths, the summary, the failure count."""
    tables = read_points(plan, directory)
    summary = analysis.summarize(tables, plan.grid_keys)
    tables["summary"] = summary
    written = {}
    for name, frame in tables.items():
        path = directory.root / f"{name}.parquet"
        write_atomically(path, lambda handle, frame=frame: frame.to_parquet(handle, index=False))
        written[name] = path
        if csv:
            path = directory.root / f"{name}.csv"
            write_atomically(path, lambda handle, frame=frame: handle.write(
                frame.to_csv(index=False, lineterminator="\n").encode("utf-8")))
            written[f"{name}.csv"] = path
    return written, summary, int((tables["points"]["status"] == "failed").sum())

