"""The results of running a scenario: tables, a manifest, a readable summary, files.

Tables (pandas DataFrames, docs/design.md section 6), one row per

* ``connections``: connection attempt, i.e. request (the client's ConnectionRecord, with the
  variant, the run index, the networks the client was on when it started, and ``setup_rtts`` /
  ``first_byte_rtts``: the times in client-server round trips over the primary path without
  queueing, 2 x (path delay + server delay));
* ``transfers``: bulk transfer (bytes, duration, goodput, subflows, retransmissions);
* ``counters``: MIB-like counter of a component (hosts' Linux-named MIB counters, the converter's
  own, every link direction's packets and bytes per fate, middlebox hits), long format;
* ``events``: what the machines reported and the scenario's timed events, in time order.

``write(DIR)`` saves them as CSV, with ``results.json`` (the object ``mpsim run --json`` prints)
and ``manifest.json``: the mpsim version, the git revision when there is one, the scenario file's
name, text and SHA-256, the overrides, the root seed and every component's derived seed per run,
and each variant as resolved. Nothing in these files depends on the wall clock or the machine,
so the same scenario and seed give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import pandas as pd
import simpy

from mpsim import __version__
from mpsim.experiment.scenario import LoadedScenario, as_plain
from mpsim.experiment.simulation import CAPTURE_NOTE, RunResult, Simulation
from mpsim.provenance import git_revision, machine_facts

CONNECTION_COLUMNS = (
    "variant", "run", "request_id", "scheme", "outcome", "fallback_reason", "start_s", "setup_time_s", "setup_rtts",
    "first_byte_time_s", "first_byte_rtts", "completion_time_s", "syns_sent", "rsts_sent", "source_ports_used",
    "bytes_sent", "bytes_delivered", "attempts", "via_proxy", "mptcp", "converter_error", "signal_leaked",
    "transfer", "network", "destination", "detail",
)
TRANSFER_COLUMNS = (
    "variant", "run", "transfer_id", "request_id", "scheme", "outcome", "direction", "congestion_control", "paths",
    "subflows", "bytes", "bytes_delivered", "completed", "start_s", "negotiated_s", "duration_s", "goodput_bps",
    "retransmissions", "timeouts", "subflow_bytes", "via_converter",
    # Through a proxy (via_converter): the retransmitted segments of each leg's data sender (the
    # client leg: client to proxy; the server leg: proxy to server); None for a transfer without legs.
    "client_leg_retransmissions", "server_leg_retransmissions",
)
COUNTER_COLUMNS = ("variant", "run", "component", "counter", "value")
EVENT_COLUMNS = ("variant", "run", "time_s", "node", "event", "detail")
TABLES = {"connections": CONNECTION_COLUMNS, "transfers": TRANSFER_COLUMNS, "counters": COUNTER_COLUMNS,
          "events": EVENT_COLUMNS}
OUTCOMES = ("converted", "mptcp", "tcp", "fallback_tcp", "failed")


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither); numpy scalars become Python ones."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _jsonable(value.item())
    return value


@dataclass
class Results:
    """Every run of a loaded scenario (variants x run indices), as tables."""

    loaded: LoadedScenario
    runs: list[RunResult]

    # --- tables ----------------------------------------------------------------------------------

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of ``table`` as dicts in column order (the JSON form keeps None as null)."""
        columns = TABLES[table]
        out = []
        for run in self.runs:
            for row in getattr(run, table):
                full = {"variant": run.variant, "run": run.run_index, **row}
                out.append({c: _jsonable(full.get(c)) for c in columns})
        return out

    def frame(self, table: str) -> pd.DataFrame:
        return pd.DataFrame(self.rows(table), columns=list(TABLES[table]))

    @property
    def connections(self) -> pd.DataFrame:
        return self.frame("connections")

    @property
    def transfers(self) -> pd.DataFrame:
        return self.frame("transfers")

    @property
    def counters(self) -> pd.DataFrame:
        return self.frame("counters")

    @property
    def events(self) -> pd.DataFrame:
        return self.frame("events")

    # --- manifest and JSON -----------------------------------------------------------------------

    def seeds(self) -> list[dict[str, Any]]:
        """Per run index, every component's derived seed (variants share them)."""
        by_run: dict[int, dict[str, int]] = {}
        for run in self.runs:
            by_run.setdefault(run.run_index, {}).update(run.seeds)
        return [{"run": index, "seeds": dict(sorted(seeds.items()))} for index, seeds in sorted(by_run.items())]

    def manifest(self) -> dict[str, Any]:
        loaded = self.loaded
        return {
            "mpsim_version": __version__,
            "git": git_revision(),
            "python": machine_facts()["python"],
            "packages": {"simpy": simpy.__version__, "numpy": numpy.__version__, "pandas": pd.__version__},
            "scenario": {"name": loaded.name, "file": loaded.source,
                         "sha256": hashlib.sha256(loaded.text.encode("utf-8")).hexdigest(), "text": loaded.text},
            "overrides": list(loaded.overrides),
            "root_seed": loaded.base.seed,
            "runs": loaded.base.runs,
            "seeds": self.seeds(),
            "variants": {name: as_plain(scenario) for name, scenario in loaded.variants.items()},
            "tables": {name: f"{name}.csv" for name in TABLES},
        }

    def json_object(self) -> dict[str, Any]:
        """What ``mpsim run --json`` prints: the scenario, the seeds, and the rows of every table
        but the event log."""
        return {"scenario": self.loaded.name, "root_seed": self.loaded.base.seed,
                "overrides": list(self.loaded.overrides), "variants": list(self.loaded.variants),
                "seeds": self.seeds(), "connections": self.rows("connections"), "transfers": self.rows("transfers"),
                "counters": self.rows("counters")}

    def json_text(self) -> str:
        return json.dumps(self.json_object(), indent=1, allow_nan=False) + "\n"

    # --- files -------------------------------------------------------------------------------------

    def write(self, out_dir: Path, *, pcap: bool = False) -> list[Path]:
        """Write the tables (CSV), results.json and manifest.json, and pcapng captures per link when asked."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for table in TABLES:
            path = out_dir / f"{table}.csv"
            self.frame(table).to_csv(path, index=False, lineterminator="\n")
            written.append(path)
        for name, text in (("results.json", self.json_text()),
                           ("manifest.json", json.dumps(self.manifest(), indent=1, allow_nan=False) + "\n")):
            (out_dir / name).write_text(text, encoding="utf-8")
            written.append(out_dir / name)
        if pcap:
            written += self.write_pcaps(out_dir / "pcap")
        return written

    def write_pcaps(self, pcap_dir: Path) -> list[Path]:
        """One pcapng per link that carried packets, named ``<variant>-run<N>-<link>.pcapng``, one
        interface per link direction group (Trace.capture_files; docs/wireshark.md)."""
        pcap_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for run in self.runs:
            if run.trace is None or run.simulation is None:
                continue
            for stem, links in run.trace.capture_files(run.simulation.capture_points()).items():
                path = pcap_dir / f"{run.variant}-run{run.run_index}-{stem}.pcapng"
                path.write_bytes(run.trace.pcapng_bytes(links, comment=CAPTURE_NOTE))
                written.append(path)
        return written

    # --- the summary ------------------------------------------------------------------------------

    def summary(self) -> str:
        loaded, base = self.loaded, self.loaded.base
        runs = f"{base.runs} run{'s' if base.runs != 1 else ''}"
        lines = [f"mpsim {__version__}: scenario {loaded.name} (seed {base.seed}, {runs}"
                 f"{', ' + str(len(loaded.variants)) + ' variants' if len(loaded.variants) > 1 else ''})",
                 "  " + " ".join(loaded.description.split())]
        if loaded.overrides:
            lines.append("  overrides: " + " ".join(loaded.overrides))
        conns = self.connections
        lines += ["", _connections_summary(conns, loaded.variants)]
        reasons = _reasons(conns)
        if reasons:
            lines += ["", "Fallback reasons:", *reasons]
        transfers = self.transfers
        if len(transfers):
            lines += ["", _transfers_summary(transfers)]
        networks = _networks(conns)
        if networks:
            lines += ["", "Networks the requests met (middleboxes per access path):", *networks]
        return "\n".join(lines)


def _ms(series: pd.Series) -> str:
    values = series.dropna()
    if values.empty:
        return "-"
    return f"{values.median() * 1e3:.0f} / {values.quantile(0.9) * 1e3:.0f}"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
             for r in (header, *rows)]
    return "\n".join(line.rstrip() for line in lines)


def _connections_summary(conns: pd.DataFrame, variants: dict) -> str:
    if conns.empty:
        return "Requests: none"
    header = ["variant", "requests", *OUTCOMES, "setup ms (median / p90)", "first byte ms", "RTTs to first byte"]
    rows = []
    for variant in variants:
        part = conns[conns["variant"] == variant]
        if part.empty:
            continue
        counts = part["outcome"].value_counts()
        rtts = part["first_byte_rtts"].dropna()
        rows.append([variant, str(len(part)), *(str(int(counts.get(o, 0))) for o in OUTCOMES),
                     _ms(part["setup_time_s"]), _ms(part["first_byte_time_s"]),
                     "-" if rtts.empty else f"{rtts.median():.2f}"])
    return "Requests (outcomes; times from the request to the path being ready / the first response byte):\n" + \
        _table(header, rows)


def _reasons(conns: pd.DataFrame) -> list[str]:
    if conns.empty:
        return []
    reasons = conns.dropna(subset=["fallback_reason"]).groupby(["variant", "fallback_reason"], sort=False).size()
    lines = []
    for variant in dict.fromkeys(conns["variant"]):  # variants in file order, their reasons by count
        if variant in reasons.index.get_level_values(0):
            part = reasons[variant].sort_values(ascending=False, kind="stable")
            lines.append(f"  {variant}: " + ", ".join(f"{reason} x{count}" for reason, count in part.items()))
    return lines


def _transfers_summary(transfers: pd.DataFrame) -> str:
    header = ["variant", "outcome", "paths", "transfers", "MB", "completed", "duration s (median)",
              "goodput Mbit/s (median, min-max)", "retrans (median)"]
    rows = []
    for (variant, outcome, paths), part in transfers.groupby(["variant", "outcome", "paths"], sort=False):
        done = part[part["completed"].astype(bool)]
        goodput = done["goodput_bps"] / 1e6
        rows.append([variant, outcome, paths or "-", str(len(part)), f"{part['bytes'].median() / 1e6:.2f}",
                     str(len(done)), f"{done['duration_s'].median():.2f}" if len(done) else "-",
                     f"{goodput.median():.1f} ({goodput.min():.1f}-{goodput.max():.1f})" if len(done) else "-",
                     f"{part['retransmissions'].median():.0f}"])
    return "Transfers (converted/mptcp outcome: MPTCP over every path; otherwise TCP on the primary path):\n" + \
        _table(header, rows)


def _networks(conns: pd.DataFrame) -> list[str]:
    if conns.empty:
        return []
    counts = conns.groupby("network", sort=False).size()
    if len(counts) == 1 and all(part.endswith(":clean") for part in counts.index[0].split()):
        return []
    return [f"  {network}: {count} request{'s' if count != 1 else ''}" for network, count in counts.items()]


# --- running -----------------------------------------------------------------------------------------


def run(loaded: LoadedScenario, *, variants: Sequence[str] | None = None, record_packets: bool = False,
        on_simulation_done: Callable[[], None] | None = None, shaper: str = "ideal",
        path_latency: Callable[[str, int], Mapping[str, tuple[float, float]] | None] | None = None) -> Results:
    """Run every variant (or those named) for every run index of a loaded scenario;
    ``on_simulation_done`` is called after each (run index, variant) simulation (progress);
    ``shaper``: how the access links shape (:data:`mpsim.experiment.simulation.SHAPERS`);
    ``path_latency(variant, run_index)``: the lines' forwarding latency of that run
    (``Simulation(path_latency_s=...)``; ``mpsim compare`` gives the kernel run's)."""
    names = list(variants) if variants else list(loaded.variants)
    results = []
    for run_index in range(loaded.base.runs):
        for name in names:
            simulation = Simulation(loaded.variants[name], variant=name, run_index=run_index,
                                    record_packets=record_packets, shaper=shaper,
                                    path_latency_s=path_latency(name, run_index) if path_latency else None)
            result = simulation.run()
            if not record_packets:
                result.trace, result.simulation = None, None  # events are in the rows; keep memory flat
            results.append(result)
            if on_simulation_done is not None:
                on_simulation_done()
    return Results(loaded, results)
