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
0.30000000000000004; integers throughout give integers. Every key and value (in an axis of more
than :data:`~mpsim.experiment.sweep.plan.CHECK_AXIS_VALUES` values: its ends and its extremes) is
validated against the scenario schema before anything runs, and so is every combination of them
when there are at most :data:`~mpsim.experiment.sweep.plan.CHECK_COMBINATIONS` (a few ms each); in
a bigger grid a value or combination that does not load (``duration_s`` shorter than a
transfer's start) fails as its points run.

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
    summary.parquet             per grid point and variant: mean, median, 95% interval over seeds (mpsim.experiment.analysis)
    manifest.json               versions, git revision, scenario text, grid, seeds, machine, sessions
    (with --csv, the four tables as CSV too)

**Resuming.** Each finished point is written atomically (a temporary name, then ``os.replace``).
Running the same command again runs only the points whose file is missing (``--retry-failed``:
and those that failed), then rebuilds the tables from the point files; a finished point is never
recomputed or rewritten. ``sweep.json`` holds a hash of the scenario text, the ``--set``
overrides, the grid, the root seed and the variants: a different one in the same DIR is refused.
The seed count is not in the hash: ``--seeds 5`` after ``--seeds 3`` adds seeds 3 and 4. A lock
file keeps two sweeps from working in one DIR at once. Each point file holds its own point id and
seed; a file that does not match the plan's for its name (copied over another) is refused.

**Big sweeps.** The size (grid points x seeds) is computed from the axis lengths before anything
is built; more than :data:`~mpsim.experiment.sweep.plan.MAX_POINTS` is refused. A sweep that will run more than :data:`~mpsim.experiment.sweep.orchestrate.WARN_POINTS` points says so (with the
count) before it starts, and once the first points (at least :data:`~mpsim.experiment.sweep.orchestrate.ESTIMATE_AFTER_POINTS`, and
one per worker) have finished, a sweep whose estimated time left exceeds :data:`~mpsim.experiment.sweep.orchestrate.WARN_SECONDS`
says so once. Neither stops it: Ctrl-C does, and the same command resumes.

**Where points run.** A local process pool over every core by default (``forkserver`` context:
no ``fork`` of a parent holding threads); ``--dask ADDRESS`` sends the points to a
dask.distributed scheduler (its workers need the same mpsim installed), ``--dask local`` starts a
LocalCluster and closes it. Both run :func:`run_point` on the same tasks and get the same rows.
``--on kernel`` (root): :func:`run_kernel_point` runs each point as ``mpsim run --on kernel`` with
its seed, one after another in this process (:func:`kernel_executor`: the points share the
machine's kernel, and Ctrl-C reaches the testbed, which removes its namespaces); ``--workers`` > 1
and ``--dask`` are refused. Every grid point's variants are checked against what the kernel can
build before anything runs. The world (and ``--proxy-cmd``) are in a kernel sweep's hash and in
the manifest (docs/kernel-world.md, "Sweeps on the kernel").

**Modules.** :mod:`.grid` (the ``--grid`` grammar), :mod:`.plan` (points and seeds, validation),
:mod:`.store` (the directory: point files, lock, manifest, tables), :mod:`.executors` (the local
pool, Dask, and :func:`run_point`), :mod:`.progress`, :mod:`.orchestrate` (:func:`run_sweep`).
The statistics and the metrics are :mod:`mpsim.experiment.analysis`, shared with the plots and
the notebooks (re-exported here for callers of the old single module).
"""

from mpsim.experiment.analysis import (CONFIDENCE, OUTCOME_RATES, POINT_COLUMNS, RECORD_TABLES, SUMMARY_COLUMNS,
                                       SUMMARY_METRICS, confidence_interval, format_summary, load_tables,
                                       metric_names, metric_samples, summarize)
from mpsim.experiment.sweep import executors, grid, orchestrate, plan, progress, store
from mpsim.experiment.sweep.executors import (SerialExecutor, dask_executor, default_workers, kernel_executor,
                                               local_executor, run_kernel_point, run_point)
from mpsim.experiment.sweep.grid import MAX_AXIS_VALUES, GridAxis, SweepError, expand_range, parse_grid, split_values
from mpsim.experiment.sweep.orchestrate import (EXIT_INTERRUPTED, SweepReport, WorkerLost, machine, run_sweep,
                                                write_tables)
from mpsim.experiment.sweep.plan import (MAX_POINTS, SEED_MASK, WORLDS, Point, PointOutcome, PointTask, SweepPlan,
                                         check_kernel_buildable, plan_sweep, point_seed)
from mpsim.experiment.sweep.progress import Progress, format_duration
from mpsim.experiment.sweep.store import SweepDir, load_plan_record, read_point, read_points, write_point

__all__ = [
    "CONFIDENCE", "EXIT_INTERRUPTED", "MAX_AXIS_VALUES", "MAX_POINTS", "OUTCOME_RATES", "POINT_COLUMNS",
    "RECORD_TABLES", "SEED_MASK", "SUMMARY_COLUMNS", "SUMMARY_METRICS", "WORLDS", "GridAxis", "Point",
    "PointOutcome", "PointTask", "Progress", "SerialExecutor", "SweepDir", "SweepError", "SweepPlan",
    "SweepReport", "WorkerLost", "check_kernel_buildable", "confidence_interval", "dask_executor",
    "default_workers", "executors", "expand_range", "format_duration", "format_summary", "grid",
    "kernel_executor", "load_plan_record", "load_tables", "local_executor", "machine", "metric_names",
    "metric_samples", "orchestrate", "parse_grid", "plan", "plan_sweep", "point_seed", "progress", "read_point",
    "read_points", "run_kernel_point", "run_point", "run_sweep", "split_values", "store", "summarize",
    "write_point", "write_tables",
]
