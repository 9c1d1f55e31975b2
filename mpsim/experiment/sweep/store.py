"""A sweep's directory: the plan record (``sweep.json``), one atomically written Parquet file per
point, the lock that keeps two sweeps out of one directory, the manifest, and the tables read
back from the point files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
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
from mpsim.experiment import analysis, results
from mpsim.experiment.analysis import RECORD_TABLES
from mpsim.experiment.sweep.grid import SweepError
from mpsim.experiment.sweep.plan import Point, PointOutcome, SweepPlan
from mpsim.provenance import git_revision

_TEMP_SUFFIX = ".partial"


def _nested(frame: pd.DataFrame | None, columns: Sequence[str]) -> pa.Array:
    """A whole table as one list-of-struct value (one Parquet file holds both record tables)."""
    frame = pd.DataFrame(columns=list(columns)) if frame is None else frame
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    return pa.ListArray.from_arrays(pa.array([0, batch.num_rows], pa.int32()), batch.to_struct_array())


def _unnested(table: pa.Table, column: str) -> pa.Table:
    return pa.Table.from_struct_array(table.column(column).combine_chunks().flatten())


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
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
    write_atomically(path, lambda handle: pq.write_table(table, handle))


def read_point(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A point file (atomic writes leave none half-written; a file damaged otherwise is named)."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise SweepError(f"{path}: unreadable point file ({err}); delete it to run the point again") from None


def point_error(path: Path, point: Point) -> str | None:
    """The error type recorded in ``point``'s file (None: the point ran), once the file is known
    to be this point's: a file copied over another point's holds another id or seed."""
    table = read_point(path, ["point_id", "seed", "error_type"])
    check_point_file(path, point, table)
    return table.column("error_type")[0].as_py()


def check_point_file(path: Path, point: Point, table: pa.Table) -> None:
    """Refuse a point file whose own point id and seed are not the plan's for its name."""
    found = (table.column("point_id")[0].as_py(), table.column("seed")[0].as_py())
    if found != (point.point_id, point.seed):
        raise SweepError(f"{path}: holds point {found[0]} with seed {found[1]}, but the plan has point "
                         f"{point.point_id} with seed {point.seed} under this name (a file copied or renamed?); "
                         "delete it to run the point again")


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
                # a sweep.json from before the kernel world has no world: it was the model's
                changed += [name for name, default in (("world", "model"), ("proxy_cmd", None))
                            if previous.get(name, default) != record.get(name, default)]
                raise SweepError(f"--out {self.root}: holds a different sweep (its {', '.join(changed) or 'plan'} "
                                 "differ); use another directory, or delete this one to start again")
            return
        if any(self.points.iterdir()):
            raise SweepError(f"--out {self.root}: has point files but no sweep.json; use another directory")
        text = json.dumps(record, indent=1) + "\n"
        write_atomically(self.plan_file, lambda handle: handle.write(text.encode("utf-8")))


def load_plan_record(root: Path) -> dict[str, Any]:
    """DIR/sweep.json of a sweep directory (:func:`mpsim.experiment.analysis.read_sweep_record`)."""
    try:
        return analysis.read_sweep_record(root)
    except analysis.AnalysisError as err:
        raise SweepError(str(err)) from None


def previous_sessions(directory: SweepDir) -> list[dict[str, Any]]:
    try:
        return list(json.loads(directory.manifest_file.read_text(encoding="utf-8")).get("sessions", []))
    except (OSError, ValueError):
        return []



def write_manifest(directory: SweepDir, plan: SweepPlan, session: dict[str, Any], machine: dict[str, Any]) -> None:
    sessions = [*previous_sessions(directory), session]
    loaded = plan.loaded
    manifest = {
        "mpsim_version": __version__,
        "git": git_revision(),
        "scenario": {"name": loaded.name, "file": loaded.source,
                     "sha256": hashlib.sha256(loaded.text.encode("utf-8")).hexdigest(), "text": loaded.text},
        "overrides": list(loaded.overrides),
        "variants": list(plan.variants) or list(loaded.variants),
        "world": plan.world,
        "grid": [{"key": axis.key, "values": list(axis.texts)} for axis in plan.axes],
        "grid_points": plan.grid_points,
        "seeds": {"per_grid_point": plan.seeds, "root_seed": plan.root_seed,
                  "derivation": "derive_seed(root_seed, grid_index, 'sweep.seed<seed_index>') & (2**63 - 1)",
                  "points": {p.point_id: p.seed for p in plan.points}},
        "identity_hash": plan.identity_hash(),
        "started": sessions[0]["started"],
        "ended": session.get("ended"),
        "machine": machine,
        "sessions": sessions,
        **({"kernel": {"proxy_cmd": plan.proxy_cmd, "skip_unbuildable": plan.skip_unbuildable,
                       "skipped_unbuildable": plan.kernel_skipped, "sysctls": plan.kernel_settings}}
           if plan.world == "kernel" else {}),
        "tables": {name: f"{name}.parquet" for name in (*RECORD_TABLES, "points", "summary")},
    }
    text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
    write_atomically(directory.manifest_file, lambda handle: handle.write(text.encode("utf-8")))


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
        check_point_file(path, point, table)
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


