"""Parameter sweeps: a scenario run for every point of a grid of ``--set`` values, times N seeds.

``mpsim sweep SCENARIO --grid KEY=V1,V2 --grid KEY=START:STOP:STEP --seeds N --out DIR`` takes
the cartesian product of the grid's values; each combination (a *grid point*) runs once per seed
index, and each such run (a *point*) is a whole ``mpsim run``: the same loader with the sweep's
``--set`` overrides, the grid point's values as further overrides, and a ``--seed`` of its own.

**Grid values** are read like ``--set`` values (a TOML value, else a string); commas separate
values, except inside brackets, braces and quotes, so a list value is written as a TOML list
and a lone name becomes a one-item list as with ``--set``
(``--grid 'paths.dsl.middleboxes=[],strip-mptcp,["strip-mptcp", "drop-rst"]'``). An item
``START:STOP:STEP`` is a numeric range: START, START+STEP, START+2*STEP, ... while not past
STOP, so STOP is excluded unless it lands exactly on a step (``0:1:0.25`` gives 0, 0.25, 0.5,
0.75, 1; ``0:1:0.3`` gives 0, 0.3, 0.6, 0.9; ``10:0:-5`` gives 10, 5, 0). The values are computed
in decimal as START + i*STEP, so ``0.1:0.3:0.1`` gives exactly 0.1, 0.2, 0.3 and not
0.30000000000000004; integers throughout give integers. Every key and value is validated against
the scenario schema before anything runs, and so is every combination of them when there are at
most :data:`WARN_POINTS` (a few ms each); in a bigger grid a combination that does not load
(``duration_s`` shorter than a transfer's start) fails as its points run.

**Seeds.** Point (grid index g, seed index s) runs with the root seed
``derive_seed(sweep root seed, g, "sweep.seed<s>")`` (:mod:`mpsim.sim.seeds`), cut to 63 bits so
that it is an int64 everywhere (a uint64 column concatenated with int64 ones turns into floats
in pandas). Every component of the run then derives its own seed from that one as in any run,
so ``mpsim run SCENARIO --set ... --set <grid values> --seed <seed>`` replays one point alone.
Each point's seed differs from every other's: grid points do not share random numbers (the
variants of one scenario still do, within a point).

**Files** in ``--out DIR``::

    sweep.json                  what the sweep is (scenario text, overrides, grid, root seed) and its hash
    points/<point-id>.parquet   one per finished point: its records, or its error (type, message, traceback)
    connections.parquet         every point's connection records, beside its grid values, seed and point id
    transfers.parquet           the same for bulk transfers
    points.parquet              one row per point: grid values, seed, status, error, run time
    summary.parquet             per grid point and variant: mean, median, 95% t-interval over seeds
    manifest.json               versions, git revision, scenario text, grid, seeds, machine, sessions
    (with --csv, the four tables as CSV too)

**Resuming.** Each finished point is written atomically (a temporary name, then ``os.replace``).
Running the same command again runs only the points whose file is missing (``--retry-failed``:
and those that failed), then rebuilds the tables from the point files; a finished point is never
recomputed or rewritten. ``sweep.json`` holds a hash of the scenario text, the ``--set``
overrides, the grid, the root seed and the variants: a different one in the same DIR is refused.
The seed count is not in the hash: ``--seeds 5`` after ``--seeds 3`` adds seeds 3 and 4. A lock
file keeps two sweeps from working in one DIR at once.

**Big sweeps.** A sweep that will run more than :data:`WARN_POINTS` points says so (with the
count) before it starts, and once the first points (at least :data:`ESTIMATE_AFTER_POINTS`, and
one per worker) have finished, a sweep whose estimated time left exceeds :data:`WARN_SECONDS`
says so once. Neither stops it: Ctrl-C does, and the same command resumes.

**Where points run.** A local process pool over every core by default (``forkserver`` context:
no ``fork`` of a parent holding threads); ``--dask ADDRESS`` sends the points to a
dask.distributed scheduler (its workers need the same mpsim installed), ``--dask local`` starts a
LocalCluster and closes it. Both run :func:`run_point` on the same tasks and get the same rows.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime
import decimal
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mpsim import __version__
from mpsim.errors import MpsimError
from mpsim.experiment import results, scenario
from mpsim.provenance import git_revision, machine_facts
from mpsim.sim.seeds import derive_seed

#: More points than this to run gets a warning with the count before the sweep starts.
WARN_POINTS = 1000
#: An estimated time left above this (after the first points) gets a warning once.
WARN_SECONDS = 3600.0
#: Points that must have finished (and at least one per worker) before the time left is estimated.
ESTIMATE_AFTER_POINTS = 3
#: The longest range or value list one --grid may give (a typo such as 0:1e6:1 should not plan for hours).
MAX_AXIS_VALUES = 100_000
#: Seeds are cut to 63 bits: int64 in Parquet, pandas and every JSON reader.
SEED_MASK = (1 << 63) - 1
#: Columns every table gets before the records' own (the grid's keys go between point_id and seed_index).
POINT_COLUMNS = ("point_id", "seed_index", "seed")
#: The metrics of the summary table; plots accept these and any numeric column of the record tables.
SUMMARY_METRICS = ("setup_time_s", "first_byte_time_s", "fallback_rate", "goodput_bps")
#: Metrics that are shares of requests with an outcome, per point (no per-record value exists).
OUTCOME_RATES = {"fallback_rate": "fallback_tcp", "failure_rate": "failed"}
#: Record columns that identify rows rather than measure anything (not offered as metrics).
_IDENTIFIERS = {"run", "request_id", "transfer_id", "seed", "seed_index"}
CONFIDENCE = 0.95
RECORD_TABLES = ("connections", "transfers")
SUMMARY_COLUMNS = ("metric", "seeds", "records", "mean", "median", "ci_low", "ci_high")
_TEMP_SUFFIX = ".partial"
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


class SweepError(MpsimError):
    """A sweep that cannot start or go on, for a reason the user can fix: printed as one line."""


# --- the grid ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=...``: the key, each value as text (what --set gets) and as the tables show it."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]  # bool, int, float or str per value: a column of the result tables


_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"\s*({_NUMBER})\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*")
_INTEGER = re.compile(r"[+-]?\d+")


def split_values(text: str) -> list[str]:
    """``a,b,[c, d],{x = 1, y = 2},"e,f"`` to its top-level items: commas inside brackets, braces
    and quotes belong to the value (TOML lists, inline tables, strings)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return items


def expand_range(text: str) -> list[str] | None:
    """``START:STOP:STEP`` to its values as text (see the module doc), or None if ``text`` is not one."""
    match = _RANGE.fullmatch(text)
    if match is None:
        return None
    start, stop, step = (decimal.Decimal(part) for part in match.groups())
    integers = all(_INTEGER.fullmatch(part) for part in match.groups())
    if step == 0:
        raise SweepError(f"range {text.strip()}: STEP must not be 0")
    if (stop - start) * step < 0:
        raise SweepError(f"range {text.strip()}: no values (a STEP of {match.group(3)} never goes from "
                         f"{match.group(1)} to {match.group(2)})")
    out = []
    for i in itertools.count():
        value = start + i * step  # exact in decimal: no error accumulates over the steps
        if (value - stop) * step > 0:
            break
        if len(out) == MAX_AXIS_VALUES:
            raise SweepError(f"range {text.strip()}: more than {MAX_AXIS_VALUES} values")
        out.append(str(int(value)) if integers else repr(float(value)))
    return out


def parse_grid(text: str) -> GridAxis:
    """One ``--grid KEY=V1,V2,...`` (items may be ``START:STOP:STEP`` ranges) to its axis."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not raw.strip():
        raise SweepError(f"--grid {text}: expected KEY=V1,V2,... or KEY=START:STOP:STEP, "
                         "e.g. --grid paths.dsl.delay_s=0.01,0.02")
    texts: list[str] = []
    for item in split_values(raw):
        if not item:
            raise SweepError(f"--grid {text}: an empty value (two commas, or one at an end)")
        texts.extend(expand_range(item) or [item])
    if len(texts) > MAX_AXIS_VALUES:
        raise SweepError(f"--grid {key}: more than {MAX_AXIS_VALUES} values")
    parsed = [scenario.parse_override(f"{key}={t}")[1] for t in texts]  # exactly as --set reads them
    seen: dict[str, str] = {}
    for t, value in zip(texts, parsed):
        canonical = json.dumps(value, sort_keys=True)
        if canonical in seen:
            raise SweepError(f"--grid {key}: the value {t} is given twice"
                             + (f" (as {seen[canonical]} too)" if seen[canonical] != t else ""))
        seen[canonical] = t
    return GridAxis(key, tuple(texts), tuple(_column_values(texts, parsed)))


def _column_values(texts: list[str], parsed: list[Any]) -> list[Any]:
    """The values as a table column holds them: one type per column (numbers as floats if any is
    one), and the text as written for lists, tables and mixed types."""
    kinds = {bool if isinstance(v, bool) else (int, float) if isinstance(v, (int, float)) else type(v)
             for v in parsed}
    if kinds == {(int, float)}:
        return [float(v) for v in parsed] if any(isinstance(v, float) for v in parsed) else parsed
    if len(kinds) == 1 and kinds <= {bool, str}:
        return parsed
    return list(texts)


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One run of the sweep: a grid point (index and values) and a seed index, with its seed."""

    point_id: str
    grid_index: int
    seed_index: int
    seed: int
    overrides: tuple[str, ...]  # the grid point's KEY=VALUE, applied after the sweep's --set
    values: tuple[tuple[str, Any], ...]  # (key, column value) per axis


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to run a point: everything by value, so remote workers need no files."""

    point_id: str
    scenario_text: str
    scenario_name: str
    scenario_source: str
    overrides: tuple[str, ...]  # the sweep's --set, the grid point's values, then seed=<the point's seed>
    variants: tuple[str, ...]  # () = every variant


@dataclass(frozen=True)
class PointOutcome:
    """A finished point: its two record tables, or the error it raised."""

    point_id: str
    connections: pd.DataFrame | None
    transfers: pd.DataFrame | None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    elapsed_s: float | None = None


def point_seed(root_seed: int, grid_index: int, seed_index: int) -> int:
    """The root seed of point (grid_index, seed_index) of a sweep seeded with ``root_seed``."""
    return derive_seed(root_seed, grid_index, f"sweep.seed{seed_index}") & SEED_MASK


@dataclass
class SweepPlan:
    """A validated sweep: the scenario as loaded with the --set overrides, the grid, the seeds."""

    loaded: scenario.LoadedScenario
    axes: tuple[GridAxis, ...]
    seeds: int
    root_seed: int
    variants: tuple[str, ...]
    points: list[Point] = field(default_factory=list)

    @property
    def grid_keys(self) -> list[str]:
        return [axis.key for axis in self.axes]

    @property
    def grid_points(self) -> int:
        return math.prod(len(axis.texts) for axis in self.axes)

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps the same one (the seed count is not in it: more seeds extend a sweep)."""
        return {"scenario": {"name": self.loaded.name, "text": self.loaded.text},
                "overrides": list(self.loaded.overrides), "root_seed": self.root_seed,
                "grid": [{"key": axis.key, "values": list(axis.texts)} for axis in self.axes],
                "variants": list(self.variants)}

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode("utf-8")).hexdigest()

    def task(self, point: Point) -> PointTask:
        loaded = self.loaded
        return PointTask(point.point_id, loaded.text, loaded.name, loaded.source,
                         (*loaded.overrides, *point.overrides, f"seed={point.seed}"), self.variants)


def plan_sweep(scenario_name: str, grid: Sequence[str], *, seeds: int = 1, root_seed: int | None = None,
               overrides: Sequence[str] = (), variants: Sequence[str] = ()) -> SweepPlan:
    """Load and validate a sweep: the scenario with ``overrides``, every grid key and value alone,
    then every combination; raises SweepError or ScenarioError naming what is wrong."""
    if type(seeds) is not int or seeds < 1:
        raise SweepError(f"--seeds {seeds}: expected an integer >= 1")
    if root_seed is not None and (type(root_seed) is not int or root_seed < 0):
        raise SweepError(f"--seed {root_seed}: expected an integer >= 0")
    loaded = scenario.load(scenario_name, overrides)
    for name in variants:
        if name not in loaded.variants:
            raise SweepError(f"--variant {name}: scenario {loaded.name} has variants {', '.join(loaded.variants)}")
    axes = tuple(parse_grid(text) for text in grid)
    set_keys = {text.partition("=")[0].strip() for text in overrides}
    seen: set[str] = set()
    for axis in axes:
        if axis.key == "seed":
            raise SweepError("--grid seed: the sweep derives each point's seed; give the root seed with --seed "
                             "and the number of seeds per grid point with --seeds")
        if axis.key in seen:
            raise SweepError(f"--grid {axis.key}: the key is given twice; list all its values in one --grid")
        if axis.key in set_keys:
            raise SweepError(f"--grid {axis.key}: the key is also given by --set; drop one of them")
        seen.add(axis.key)
        for text in axis.texts:  # key and value alone first: the error names this --grid
            _check_load(loaded, [f"{axis.key}={text}"], f"--grid {axis.key}={text}")
    plan = SweepPlan(loaded, axes, seeds, loaded.base.seed if root_seed is None else root_seed, tuple(variants))
    width = max(3, len(str(plan.grid_points - 1)))
    combinations = list(itertools.product(*(range(len(axis.texts)) for axis in axes)))
    for grid_index, combination in enumerate(combinations):
        point_overrides = tuple(f"{axis.key}={axis.texts[i]}" for axis, i in zip(axes, combination))
        # Keys that are fine alone may clash (duration_s and the times within it); a load takes a few ms.
        if len(axes) > 1 and len(combinations) <= WARN_POINTS:
            _check_load(loaded, list(point_overrides), "--grid point " + " ".join(point_overrides))
        values = tuple((axis.key, axis.values[i]) for axis, i in zip(axes, combination))
        for seed_index in range(seeds):
            plan.points.append(Point(f"g{grid_index:0{width}d}-s{seed_index:03d}", grid_index, seed_index,
                                     point_seed(plan.root_seed, grid_index, seed_index), point_overrides, values))
    return plan


def _check_load(loaded: scenario.LoadedScenario, extra: list[str], source: str) -> None:
    # The scenario with the sweep's --set alone has loaded: whatever fails now is the grid's doing.
    try:
        scenario.load_text(loaded.text, name=loaded.name, source=loaded.source,
                           overrides=(*loaded.overrides, *extra), path=loaded.path)
    except scenario.ScenarioError as err:
        variant = re.search(r" \(variant [^)]*\)$", err.source)
        where = source + (variant.group(0) if variant else "")
        raise SweepError(f"{where}: {err.key}: {err.message}" if err.key else f"{where}: {err.message}") from None


# --- one point (this runs in the workers) ------------------------------------------------------------


def run_point(task: PointTask) -> PointOutcome:
    """Run one point exactly as ``mpsim run`` would: load the text with the overrides, run every
    variant and run index. An exception becomes the outcome's error; the sweep goes on."""
    started = time.perf_counter()
    try:
        loaded = scenario.load_text(task.scenario_text, name=task.scenario_name, source=task.scenario_source,
                                    overrides=task.overrides)
        outcome = results.run(loaded, variants=list(task.variants) or None)
        return PointOutcome(task.point_id, outcome.connections, outcome.transfers,
                            elapsed_s=time.perf_counter() - started)
    except Exception as err:  # noqa: BLE001 - any failure of a point is recorded, not fatal
        return PointOutcome(task.point_id, None, None, type(err).__name__, str(err), traceback.format_exc(),
                            time.perf_counter() - started)


# --- point files ---------------------------------------------------------------------------------


def _nested(frame: pd.DataFrame | None, columns: Sequence[str]) -> pa.Array:
    """A whole table as one list-of-struct value (one Parquet file holds both record tables)."""
    frame = pd.DataFrame(columns=list(columns)) if frame is None else frame
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    return pa.ListArray.from_arrays(pa.array([0, batch.num_rows], pa.int32()), batch.to_struct_array())


def _unnested(table: pa.Table, column: str) -> pa.Table:
    return pa.Table.from_struct_array(table.column(column).combine_chunks().flatten())


def _write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary name, flushed to disk, then rename: readers (and a resumed sweep)
    see the whole file or none of it, even after a kill or a power cut."""
    temp = path.with_name(f".{path.name}.{os.getpid()}{_TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def write_point(path: Path, point: Point, outcome: PointOutcome) -> None:
    """One point's file: a single row with the point, its grid values, its error, and both record
    tables nested (so the file is the unit that a resumed sweep trusts)."""
    table = pa.table({
        "point_id": [point.point_id], "grid_index": [point.grid_index], "seed_index": [point.seed_index],
        "seed": pa.array([point.seed], pa.int64()),
        "grid": [json.dumps(dict(point.values))],
        "error_type": pa.array([outcome.error_type], pa.string()),
        "error_message": pa.array([outcome.error_message], pa.string()),
        "traceback": pa.array([outcome.traceback], pa.string()),
        "elapsed_s": pa.array([outcome.elapsed_s], pa.float64()),
        "connections": _nested(outcome.connections, results.CONNECTION_COLUMNS),
        "transfers": _nested(outcome.transfers, results.TRANSFER_COLUMNS),
    })
    _write_atomically(path, lambda handle: pq.write_table(table, handle))


def read_point(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A point file (atomic writes leave none half-written; a file damaged otherwise is named)."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise SweepError(f"{path}: unreadable point file ({err}); delete it to run the point again") from None


def _point_error(path: Path) -> str | None:
    """The error type recorded in a point file (None: the point ran)."""
    return read_point(path, ["error_type"]).column(0)[0].as_py()


# --- the sweep directory ---------------------------------------------------------------------------


class SweepDir:
    """``--out DIR``: its plan file, point files, lock and tables."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.points = root / "points"
        self.plan_file = root / "sweep.json"
        self.manifest_file = root / "manifest.json"

    def point_file(self, point_id: str) -> Path:
        return self.points / f"{point_id}.parquet"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold DIR/.lock: one sweep at a time works in a directory (the kernel frees it if we die)."""
        try:
            self.points.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / ".lock", "a+")
        except OSError as err:
            raise SweepError(f"--out {self.root}: {err.strerror or err}") from None
        try:
            if fcntl is not None:  # POSIX; elsewhere two sweeps in one directory are not caught
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise SweepError(f"--out {self.root}: another sweep is running in this directory") from None
            for stale in self.points.glob(f".*{_TEMP_SUFFIX}"):  # from a sweep that was killed mid-write
                stale.unlink()
            yield
        finally:
            handle.close()

    def check_or_record(self, plan: SweepPlan) -> None:
        """Refuse a directory holding another sweep; record this one's identity in a new directory."""
        record = {"identity_hash": plan.identity_hash(), **plan.identity()}
        if self.plan_file.exists():
            try:
                previous = json.loads(self.plan_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise SweepError(f"{self.plan_file}: unreadable ({err}); is DIR a sweep's directory?") from None
            if previous.get("identity_hash") != record["identity_hash"]:
                changed = [name for name in ("scenario", "overrides", "grid", "root_seed", "variants")
                           if previous.get(name) != record[name]]
                raise SweepError(f"--out {self.root}: holds a different sweep (its {', '.join(changed) or 'plan'} "
                                 "differ); use another directory, or delete this one to start again")
            return
        if any(self.points.iterdir()):
            raise SweepError(f"--out {self.root}: has point files but no sweep.json; use another directory")
        text = json.dumps(record, indent=1) + "\n"
        _write_atomically(self.plan_file, lambda handle: handle.write(text.encode("utf-8")))


def load_plan_record(root: Path) -> dict[str, Any]:
    """DIR/sweep.json of a sweep directory (what plots read to know the grid's keys)."""
    path = root / "sweep.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{root}: no sweep here (no sweep.json); run mpsim sweep ... --out {root} first") from None
    except (OSError, ValueError) as err:
        raise SweepError(f"{path}: unreadable ({err})") from None


# --- where the points run ------------------------------------------------------------------------------


def _worker_init(parent_pid: int) -> None:
    """In each local worker: leave Ctrl-C to the parent (it stops the pool), and exit if the parent
    dies without stopping the pool (SIGKILL): a worker would otherwise wait on its queue forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    forked_by = os.getppid()  # the forkserver (or the sweep itself): it changes when that process exits

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != forked_by:
                os._exit(1)
            try:
                os.kill(parent_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or the pid is someone else's now)
                os._exit(1)

    threading.Thread(target=watch, name="mpsim-sweep-parent-watch", daemon=True).start()


def default_workers() -> int:
    """The cores this process may use (the affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def local_executor(workers: int) -> Iterator[cf.Executor]:
    """A process pool of ``workers``; on the way out (an error, Ctrl-C) its processes are killed."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":  # imported once in the server, not once per worker
        context.set_forkserver_preload(["mpsim.experiment.sweep"])
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                  initargs=(os.getpid(),))
    finished = False
    try:
        yield pool
        finished = True
    finally:
        if not finished:
            # shutdown() alone would wait for the points in flight; nothing public kills them in 3.11.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    process.kill()
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def dask_executor(address: str, workers: int | None) -> Iterator[tuple[cf.Executor, int]]:
    """An executor on a dask.distributed cluster (``local``: a LocalCluster started here and closed
    on the way out), and how many points it runs at once."""
    import logging

    from distributed import Client, LocalCluster

    cluster = client = None
    try:
        if address == "local":
            cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
        else:
            try:
                client = Client(address, timeout="10s")
            except (OSError, TimeoutError, ValueError) as err:
                raise SweepError(f"--dask {address}: cannot reach the scheduler ({err})") from None
        slots = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
        yield client.get_executor(pure=False), max(1, slots)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


# --- progress ------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Points done, failures and the time left, on a stream (stderr): one line rewritten in place
    on a terminal, a line every ``interval_s`` otherwise (logs, CI)."""

    def __init__(self, total: int, already: int, stream: IO[str] | None, *, interval_s: float = 10.0) -> None:
        self.total, self.done, self.failed = total, already, 0
        self.to_run = total - already
        self.stream, self.interval_s = stream, interval_s
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last_shown = -math.inf
        self.width = 0

    @property
    def ran(self) -> int:
        return self.done - (self.total - self.to_run)

    def time_left_s(self) -> float | None:
        if self.ran == 0:
            return None
        return (time.monotonic() - self.started) / self.ran * (self.total - self.done)

    def line(self) -> str:
        left = self.time_left_s()
        return (f"sweep: {self.done}/{self.total} points, {self.failed} failed, "
                f"{format_duration(time.monotonic() - self.started)} elapsed, "
                + ("done" if self.done >= self.total else "estimating time left" if left is None
                   else f"~{format_duration(left)} left"))

    def update(self, *, done: int = 0, failed: int = 0, final: bool = False) -> None:
        self.done += done
        self.failed += failed
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self.last_shown < (0.2 if self.tty else self.interval_s):
            return
        self.last_shown = now
        text = self.line()
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width) + ("\n" if final else ""))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a warning), not overwritten by the bar."""
        if self.stream is not None:
            self.stream.write(("\r" + " " * self.width + "\r" if self.tty else "") + text + "\n")
            self.stream.flush()
            self.last_shown, self.width = -math.inf, 0  # the bar starts again on the next line


# --- running a sweep -------------------------------------------------------------------------------------


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
    processes); without it, the module's ``run_point`` at call time.
    """
    if workers is not None and workers < 1:
        raise SweepError(f"--workers {workers}: expected an integer >= 1")
    if workers is not None and dask not in (None, "local"):
        raise SweepError("--workers sizes the local pool or --dask local; a scheduler's cluster has its own workers")
    runner = point_runner or run_point
    directory = SweepDir(out_dir)
    report = SweepReport(out_dir, len(plan.points))
    session: dict[str, Any] = {"started": _now(), "executor": "local" if dask is None else f"dask {dask}",
                               "workers": None, "mpsim_version": __version__, "git": git_revision(),
                               "machine": machine()}
    with directory.locked():
        directory.check_or_record(plan)
        to_run, failed_before = [], 0
        for point in plan.points:
            path = directory.point_file(point.point_id)
            if not path.exists():
                to_run.append(point)
            elif _point_error(path) is not None:
                if retry_failed:
                    to_run.append(point)
                else:
                    failed_before += 1
        report.reused = len(plan.points) - len(to_run)
        bar = Progress(len(plan.points), report.reused, progress)
        bar.failed = failed_before
        _warn_about_the_past(directory, session, bar)
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
            _write_manifest(directory, plan, session)
        if not report.interrupted:
            report.tables, report.summary, report.failed = write_tables(plan, directory, csv=csv)
    return report


def _run_points(plan: SweepPlan, to_run: list[Point], directory: SweepDir,
                runner: Callable[[PointTask], PointOutcome], workers: int | None, dask: str | None,
                bar: Progress, report: SweepReport, session: dict[str, Any]) -> None:
    """Keep the executor busy (a few points queued per slot, not all: a million tasks would sit
    in memory), write each point as it finishes, show progress."""
    with contextlib.ExitStack() as stack:
        if dask is None:
            slots = min(workers or default_workers(), len(to_run))
            executor = stack.enter_context(local_executor(slots))
        else:
            executor, slots = stack.enter_context(dask_executor(dask, workers))
        session["workers"] = slots
        pending, in_flight = deque(to_run), {}
        estimated = False
        while pending or in_flight:
            while pending and len(in_flight) < 2 * slots:
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


def _previous_sessions(directory: SweepDir) -> list[dict[str, Any]]:
    try:
        return list(json.loads(directory.manifest_file.read_text(encoding="utf-8")).get("sessions", []))
    except (OSError, ValueError):
        return []


def _warn_about_the_past(directory: SweepDir, session: dict[str, Any], bar: Progress) -> None:
    """Points computed by other code are not recomputed; say so when the revision changed."""
    revisions = {json.dumps(s.get("git")) for s in _previous_sessions(directory) if s.get("ran")}
    mine = json.dumps(session["git"])
    if revisions - {mine}:
        bar.message("warning: points in this directory were computed by another mpsim revision "
                    "(see the sessions in manifest.json)")


def _write_manifest(directory: SweepDir, plan: SweepPlan, session: dict[str, Any]) -> None:
    sessions = [*_previous_sessions(directory), session]
    loaded = plan.loaded
    manifest = {
        "mpsim_version": __version__,
        "git": git_revision(),
        "scenario": {"name": loaded.name, "file": loaded.source,
                     "sha256": hashlib.sha256(loaded.text.encode("utf-8")).hexdigest(), "text": loaded.text},
        "overrides": list(loaded.overrides),
        "variants": list(plan.variants) or list(loaded.variants),
        "grid": [{"key": axis.key, "values": list(axis.texts)} for axis in plan.axes],
        "grid_points": plan.grid_points,
        "seeds": {"per_grid_point": plan.seeds, "root_seed": plan.root_seed,
                  "derivation": "derive_seed(root_seed, grid_index, 'sweep.seed<seed_index>') & (2**63 - 1)",
                  "points": {p.point_id: p.seed for p in plan.points}},
        "identity_hash": plan.identity_hash(),
        "started": sessions[0]["started"],
        "ended": session.get("ended"),
        "machine": machine(),
        "sessions": sessions,
        "tables": {name: f"{name}.parquet" for name in (*RECORD_TABLES, "points", "summary")},
    }
    text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
    _write_atomically(directory.manifest_file, lambda handle: handle.write(text.encode("utf-8")))


# --- tables ----------------------------------------------------------------------------------------------


def read_points(plan: SweepPlan, directory: SweepDir) -> dict[str, pd.DataFrame]:
    """The plan's point files as tables: connections and transfers (each record with its point's
    grid values, seed index, seed and id in front) and points (one row per point, its status).
    Points are in plan order, records in each point's own order, so the tables do not depend on
    which point finished first."""
    keys = plan.grid_keys
    parts: dict[str, list[pa.Table]] = {name: [] for name in RECORD_TABLES}
    rows = []
    for point in plan.points:
        path = directory.point_file(point.point_id)
        if not path.exists():
            continue
        table = read_point(path)
        meta = {name: table.column(name)[0].as_py() for name in
                ("error_type", "error_message", "elapsed_s")}
        head = {"point_id": point.point_id, **dict(point.values), "seed_index": point.seed_index,
                "seed": point.seed}
        for name in RECORD_TABLES:
            records = _unnested(table, name)
            front = {column: pa.array([value] * records.num_rows, pa.int64() if column == "seed" else None)
                     for column, value in head.items()}
            parts[name].append(pa.Table.from_arrays([*front.values(), *records.columns],
                                                    names=[*front, *records.column_names]))
        rows.append({**head, "status": "failed" if meta["error_type"] else "ok", **meta,
                     **{name: parts[name][-1].num_rows for name in RECORD_TABLES}})
    out = {}
    for name, columns in (("connections", results.CONNECTION_COLUMNS), ("transfers", results.TRANSFER_COLUMNS)):
        ordered = ["point_id", *keys, "seed_index", "seed", *columns]
        if parts[name]:
            # permissive: a column that is all null in one point (no fallback reason) takes the others' type
            combined = pa.concat_tables(parts[name], promote_options="permissive")
            out[name] = combined.select(ordered).to_pandas()
        else:
            out[name] = pd.DataFrame(columns=ordered)
    out["points"] = pd.DataFrame(rows, columns=["point_id", *keys, "seed_index", "seed", "status", "error_type",
                                                "error_message", "elapsed_s", *RECORD_TABLES])
    return out


def write_tables(plan: SweepPlan, directory: SweepDir, *, csv: bool = False
                 ) -> tuple[dict[str, Path], pd.DataFrame, int]:
    """Rebuild the tables from the point files; returns their paths, the summary, the failure count."""
    tables = read_points(plan, directory)
    summary = summarize(tables, plan.grid_keys)
    tables["summary"] = summary
    written = {}
    for name, frame in tables.items():
        path = directory.root / f"{name}.parquet"
        _write_atomically(path, lambda handle, frame=frame: frame.to_parquet(handle, index=False))
        written[name] = path
        if csv:
            path = directory.root / f"{name}.csv"
            _write_atomically(path, lambda handle, frame=frame: handle.write(
                frame.to_csv(index=False, lineterminator="\n").encode("utf-8")))
            written[f"{name}.csv"] = path
    return written, summary, int((tables["points"]["status"] == "failed").sum())


def load_tables(root: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """A finished sweep's record tables (connections, transfers) and its grid keys."""
    record = load_plan_record(root)
    keys = [axis["key"] for axis in record.get("grid", [])]
    tables = {}
    for name in RECORD_TABLES:
        path = root / f"{name}.parquet"
        if not path.exists():
            raise SweepError(f"{root}: no {path.name}; the sweep has not finished (run the same mpsim sweep "
                             "command again to finish it and build the tables)")
        tables[name] = pd.read_parquet(path)
    return tables, keys


def _is_measure(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def metric_names(tables: dict[str, pd.DataFrame], grid_keys: Sequence[str] = ()) -> list[str]:
    """Every metric the tables offer: the outcome rates and each numeric or boolean record column,
    by its name, or as ``connections.<column>`` / ``transfers.<column>`` where both tables have it."""
    names = list(dict.fromkeys([*SUMMARY_METRICS, *OUTCOME_RATES]))
    skip = {*_IDENTIFIERS, *POINT_COLUMNS, *grid_keys}
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
    if len(holders) == 1 and metric not in _IDENTIFIERS and metric not in POINT_COLUMNS:
        return holders[0], metric
    raise SweepError(f"unknown metric {metric!r}" + (f" (in both tables: write {holders[0]}.{metric} or "
                                                      f"{holders[1]}.{metric})" if len(holders) > 1 else "")
                     + f"; available: {', '.join(metric_names(tables, grid_keys))}")


def metric_samples(tables: dict[str, pd.DataFrame], metric: str, grid_keys: Sequence[str]) -> pd.DataFrame:
    """The values of ``metric``: one row per record for a record column (rows without a value, such
    as an unfinished transfer's goodput, are left out), one per point and variant for an outcome
    rate. Columns: point_id, the grid keys, variant, seed_index, seed, metric, value."""
    front = ["point_id", *grid_keys, "variant", "seed_index", "seed"]
    if metric in OUTCOME_RATES:
        conns = tables["connections"]
        rates = conns.assign(value=(conns["outcome"] == OUTCOME_RATES[metric]).astype(float))
        samples = rates.groupby(front, sort=False, dropna=False)["value"].mean().reset_index()
    else:
        table, column = _resolve_metric(tables, metric, grid_keys)
        frame = tables[table]
        # A column without any value (goodput in a sweep without transfers) gives no samples, not an error.
        if not _is_measure(frame[column]) and not frame[column].isna().all():
            raise SweepError(f"metric {metric!r} is not a number (column {table}.{column} holds "
                             f"{frame[column].dtype}); available: {', '.join(metric_names(tables, grid_keys))}")
        samples = frame[front].assign(value=pd.to_numeric(frame[column], errors="coerce").astype(float))
        samples = samples[samples["value"].notna()]
    return samples.assign(metric=metric)[[*front, "metric", "value"]].reset_index(drop=True)


def summarize(tables: dict[str, pd.DataFrame], grid_keys: Sequence[str],
              metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Per grid point, variant and metric: the metric's mean per point (seed), then over the seeds
    their count, mean, median and the 95% Student-t confidence interval of the mean (NaN with one
    seed; the seeds are the independent replicates). ``records`` counts the values behind it. Every
    grid point and variant that has records gets a row per metric (seeds 0 and NaN where the metric
    has no value, e.g. goodput without transfers), so that plots show gaps rather than hide them."""
    group = [*grid_keys, "variant"]
    groups = list(dict.fromkeys(itertools.chain.from_iterable(
        tables[name][group].itertuples(index=False, name=None) for name in RECORD_TABLES)))
    rows = []
    for metric in metrics:
        samples = metric_samples(tables, metric, grid_keys)
        per_point = samples.groupby([*group, "seed_index"], sort=False)["value"].agg(["mean", "size"])
        found = {key if isinstance(key, tuple) else (key,): part
                 for key, part in per_point.groupby(level=group, sort=False)}
        for key in groups:
            part = found.get(key)
            rows.append({**dict(zip(group, key)), "metric": metric,
                         "records": 0 if part is None else int(part["size"].sum()),
                         **confidence_interval([] if part is None else part["mean"].to_numpy())})
    return pd.DataFrame(rows, columns=[*group, *SUMMARY_COLUMNS])


def confidence_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """seeds, mean, median and the Student-t interval of the mean of independent ``values``."""
    n = len(values)
    if n == 0:
        return {"seeds": 0, "mean": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean, median = float(pd.Series(values).mean()), float(pd.Series(values).median())
    if n < 2:
        return {"seeds": n, "mean": mean, "median": median, "ci_low": math.nan, "ci_high": math.nan}
    from scipy import stats  # here: workers, which never summarize, need not import it

    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * stats.sem(values))
    return {"seeds": n, "mean": mean, "median": median, "ci_low": mean - half, "ci_high": mean + half}


def format_summary(summary: pd.DataFrame, grid_keys: Sequence[str], *, max_rows: int = 30) -> str:
    """The summary as text: one row per grid point and variant, each metric as mean ± CI half-width."""
    if summary.empty:
        return "Summary: no records"
    group = [*grid_keys, "variant"]
    scale = {"setup_time_s": (1e3, "setup ms"), "first_byte_time_s": (1e3, "first byte ms"),
             "fallback_rate": (100, "fallback %"), "goodput_bps": (1e-6, "goodput Mbit/s")}
    wide: dict[tuple, dict[str, str]] = {}
    for row in summary.to_dict("records"):
        key = tuple(row.get(k) for k in group)
        factor, label = scale.get(row["metric"], (1, row["metric"]))
        mean, half = row["mean"] * factor, (row["ci_high"] - row["mean"]) * factor
        # Three significant digits of the mean, and the interval to the same decimal place.
        decimals = 0 if math.isnan(mean) or mean == 0 else max(0, 2 - math.floor(math.log10(abs(mean))))
        text = "-" if math.isnan(mean) else f"{mean:.{decimals}f}" + \
            ("" if math.isnan(half) else f" ± {half:.{decimals}f}")
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
    return "Summary (mean ± half-width of the 95% confidence interval over seeds):\n" + "\n".join(lines)


__all__ = [
    "GridAxis", "Point", "PointOutcome", "PointTask", "Progress", "SweepError", "SweepPlan", "SweepReport",
    "confidence_interval", "expand_range", "format_summary", "load_tables", "metric_names", "metric_samples",
    "parse_grid", "plan_sweep", "point_seed", "read_points", "run_point", "run_sweep", "split_values",
    "summarize", "write_tables",
]
