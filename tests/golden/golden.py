"""Golden result tables: every named scenario's whole tables, recorded to compare bit for bit.

``python tests/golden/golden.py --write`` (from the repository root, with mpsim importable)
runs every scenario in ``models/`` (``mpsim scenarios``) at its own settings (seed, runs,
duration: the files as they are) and writes, per scenario, into ``tests/golden/data/``:

* ``NAME.TABLE.csv`` for the tables ``connections``, ``transfers``, ``counters``, ``events``
  (docs/design.md section 6): the rows of every run as the simulation produced them, floats
  written with ``repr`` (the shortest text that reads back to the same double), None as the
  empty field, so two runs agree here exactly when their tables agree bit for bit;
* ``NAME.pcap.sha256``: the SHA-256 of every capture point's pcap (per variant and run) of a
  second run with packets recorded: the bytes anyone can look at, compared without storing them.

``tests/golden/test_golden.py`` recomputes all of this and compares. When a change is meant to
change results (a new default, a fixed model), regenerate on the commit before it with the same
command and review the diff; a change meant to be only faster must leave the files identical.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from pathlib import Path
from typing import Any

from mpsim.experiment import results, scenario

DATA_DIR = Path(__file__).resolve().parent / "data"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _cell(value.item())
    return str(value)


def table_text(outcome: results.Results, table: str) -> str:
    columns = results.TABLES[table]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for run in outcome.runs:
        for row in getattr(run, table):
            full = {"variant": run.variant, "run": run.run_index, **row}
            extra = sorted(set(full) - set(columns))
            if extra:  # a column the table does not declare would be silently left out of the golden
                raise ValueError(f"{outcome.loaded.name}: {table} row has undeclared columns {extra}")
            writer.writerow([_cell(full.get(c)) for c in columns])
    return out.getvalue()


def pcap_digests(loaded: scenario.LoadedScenario) -> str:
    """``variant run capture-point sha256`` lines of a run with packets recorded."""
    outcome = results.run(loaded, record_packets=True)
    lines = []
    for run in outcome.runs:
        seen = {record.link for record in run.trace.packets}
        for name in run.simulation.capture_points():
            data = run.trace.pcap_bytes(name) if name in seen else b""
            lines.append(f"{run.variant} {run.run_index} {name} {hashlib.sha256(data).hexdigest()}")
    return "\n".join(lines) + "\n"


def scenario_files(name: str) -> dict[str, str]:
    """File name -> text of everything recorded for scenario ``name``."""
    loaded = scenario.load(name, [])
    outcome = results.run(loaded)
    files = {f"{name}.{table}.csv": table_text(outcome, table) for table in results.TABLES}
    files[f"{name}.pcap.sha256"] = pcap_digests(loaded)
    return files


def all_files() -> dict[str, str]:
    files: dict[str, str] = {}
    for name in scenario.scenario_names():
        files.update(scenario_files(name))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the goldens into tests/golden/data/")
    parser.add_argument("--dir", type=Path, default=DATA_DIR, help="where to write (default tests/golden/data)")
    args = parser.parse_args(argv)
    files = all_files()
    if not args.write:
        stale = [n for n, text in files.items()
                 if not (args.dir / n).is_file() or (args.dir / n).read_text(encoding="utf-8") != text]
        print("goldens match" if not stale else "differ: " + ", ".join(stale))
        return 1 if stale else 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for old in args.dir.glob("*"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (args.dir / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
