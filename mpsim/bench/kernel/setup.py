"""Benchmark 2, connection setup and idle memory: connections per second through the converter and
setup latency (median, p90), against direct connects and the peer relay; kernel memory per idle
connection (slab deltas, /proc/slabinfo, machine-wide) and the daemon's RSS per connection.

The converter runs twice: one process (``converter-auto``) and ``--workers N`` with N = the
machine's CPUs (``converter-auto-workers``, never pinned: its workers are meant to spread). The
single-process relays (the converter, the mptcpize relay, the minimal relay) run unpinned,
pinned to RELAY_CPU, or both side by side in the same interleaved rounds (``--relay-cpu``;
:data:`mpsim.bench.kernel.config.RELAY_PLACEMENTS`); every row records its placement and the CPUs
its relay was allowed after the round. One sequential client cannot show what more workers give,
so a second table runs N churn clients at once against direct MPTCP and both converters
("parallel").
``minimal-relay`` is the ceiling a Python converter could reach here: the fewest system calls a
Convert relay makes, without the converter's checks (:func:`mpsim.bench.kernel.peer.bare_convert`)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import os

from mpsim.bench.kernel.config import (CONVERT_TIMEOUT_S, ECHO_PORTS, PEER_LIMIT_S, RELAY_PLACEMENTS, ROUTES, Route,
                                       Scale)
from mpsim.bench.kernel.measure import (meminfo_bytes, percentile, process_cpu_s, ratios, rss_bytes, slab_bytes,
                                        summary)
from mpsim.bench.kernel.services import (Peer, Services, cpus_allowed, daemon_command,
                                         new_testbed, peer_argv, place_relay, testbed_facts)


WORKERS_ROUTE = "converter-auto-workers"
WORKERS_PORT = 6005
WORKERS = max(2, os.cpu_count() or 1)
PARALLEL_ROUTES = ("direct-mptcp", "converter-auto", WORKERS_ROUTE)
#: The ceiling of a Python converter: peer.bare_convert, the fewest system calls a Convert relay
#: makes, without any of the converter's checks (placed like every single-process relay).
MINIMAL_ROUTE = "minimal-relay"
MINIMAL_PORT = 6006
_EXTRA_PORTS = {WORKERS_ROUTE: WORKERS_PORT, MINIMAL_ROUTE: MINIMAL_PORT}


def _route(config: str) -> Route:
    return ROUTES["converter-auto"] if config in _EXTRA_PORTS else ROUTES[config]


def _target(tb: Any, services: Services, config: str) -> tuple[str, str]:
    if config in _EXTRA_PORTS:
        return f"{tb.addresses.converter[0]}:{_EXTRA_PORTS[config]}", f"{tb.addresses.server}:{ECHO_PORTS['tcp']}"
    return services.target(ROUTES[config], ECHO_PORTS)


def _start_workers(tb: Any, log_dir: Path) -> Peer:
    """The converter with --workers N (not pinned to the relay CPU: its workers are meant to spread)."""
    command, env = daemon_command()
    argv = [*command, "--listen", f"{tb.addresses.converter[0]}:{WORKERS_PORT}",
            "--allow", "198.18.0.0/15", "--relay", "auto", "--quiet", "--connect-timeout", "10",
            "--workers", str(WORKERS)]
    daemon = Peer(tb, "converter", argv, log_dir, "converter-workers", env=env)
    daemon.wait_log("event=listening")
    return daemon


def _start_minimal(tb: Any, log_dir: Path, lifetime_s: float) -> Peer:
    argv = peer_argv("bare-convert", f"{tb.addresses.converter[0]}:{MINIMAL_PORT}", lifetime_s)
    return Peer(tb, "converter", argv, log_dir, "minimal-relay").expect_ready()


def _churn_clients(tb: Any, services: Services, config: str, count: int, log_dir: Path, clients: int = 1) -> dict:
    """``clients`` churn programs at once, ``count`` connections each; their results merged."""
    route = _route(config)
    target, dest = _target(tb, services, config)
    peers = [Peer(tb, "client", peer_argv("churn", route.kind, route.client_proto, target, dest, count,
                                          CONVERT_TIMEOUT_S), log_dir, f"churn-{i}") for i in range(clients)]
    results = [peer.json(PEER_LIMIT_S + 20, "churn result") for peer in peers]
    for peer in peers:
        peer.proc.wait(timeout=10)
    merged = {key: sum((r[key] for r in results), []) for key in ("setup_s", "total_s", "errors")}
    return merged | {"connections": sum(r["connections"] for r in results),
                     "wall_s": max(r["wall_s"] for r in results), "cpu_s": sum(r["cpu_s"] for r in results),
                     "error_count": sum(r["error_count"] for r in results),
                     "fallbacks": sum(r["fallbacks"] for r in results)}


def _relay_pids(services: Services, config: str, workers: Peer | None, minimal: Peer | None = None) -> list[int]:
    """The processes that relay ``config``'s connections: the daemon, the peer relay, the minimal
    relay, or the --workers supervisor and its workers; none for a direct route."""
    if config == MINIMAL_ROUTE:
        return [minimal.proc.pid] if minimal is not None else []
    if config == WORKERS_ROUTE:
        if workers is None:
            return []
        try:
            with open(f"/proc/{workers.proc.pid}/task/{workers.proc.pid}/children") as f:
                return [workers.proc.pid, *map(int, f.read().split())]
        except OSError:
            return [workers.proc.pid]
    relay = services.relay_process(ROUTES[config])
    return [relay.proc.pid] if relay is not None else []


def _relay_cpu_s(pids: list[int]) -> float:
    """CPU seconds the relay processes have used: a single-threaded process's from
    /proc/PID/schedstat (nanoseconds: a quick round's few hundred conversions are a few ticks of
    /proc/PID/stat), a threaded one's (the mptcpize relay, a thread per connection, whose exited
    threads only /proc/PID/stat still counts) from utime + stime."""
    total = 0.0
    for pid in pids:
        if len(os.listdir(f"/proc/{pid}/task")) == 1:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        else:
            total += process_cpu_s(pid)
    return total


def _placements(config: str, choice: str) -> tuple[str | None, ...]:
    """The relay placements ``config`` runs in: none for a direct route, always unpinned for the
    --workers converter (its workers are meant to spread), the ``--relay-cpu`` choice otherwise."""
    if _route(config).relay is None:
        return (None,)
    if config == WORKERS_ROUTE:
        return ("unpinned",)
    return ("pinned", "unpinned") if choice == "both" else (choice,)


def _variant(config: str, placement: str | None) -> str:
    return config if placement is None else f"{config} {placement}"


def _churn(tb: Any, services: Services, config: str, count: int, log_dir: Path, clients: int = 1,
           workers: Peer | None = None, minimal: Peer | None = None,
           placement: str | None = None) -> dict[str, Any]:
    pids = _relay_pids(services, config, workers, minimal)
    if placement is not None and config != WORKERS_ROUTE:
        for pid in pids:
            place_relay(pid, placement == "pinned")
    cpu0 = _relay_cpu_s(pids)
    result = _churn_clients(tb, services, config, count, log_dir, clients)
    relay_cpu_s = _relay_cpu_s(pids) - cpu0 if pids else None
    return {"route": config, "relay_placement": placement, "variant": _variant(config, placement),
            # what the placement set, read back after the round (the threads the relay made meanwhile
            # inherit the main thread's mask)
            "relay_cpus_allowed": cpus_allowed(pids[0]) if pids else None, "clients": clients,
            "connections": result["connections"], "errors": result["error_count"],
            "error_examples": result["errors"], "fallbacks": result["fallbacks"],
            "connections_per_s": result["connections"] / result["wall_s"],
            "setup_us": [round(1e6 * t, 1) for t in result["setup_s"]],
            "connection_us": [round(1e6 * t, 1) for t in result["total_s"]],
            "client_cpu_ms_per_conn": 1e3 * result["cpu_s"] / max(1, result["connections"]),
            # the relay's (daemon's, workers', peer relay's) CPU per connection: the load-insensitive
            # measure of its per-connection path (the wall rate also waits for the scheduler)
            "relay_cpu_us_per_conn": 1e6 * relay_cpu_s / max(1, result["connections"]) if relay_cpu_s is not None
            else None}


def _churn_summary(rows: list[dict], variants: Sequence[tuple[str, str | None]]) -> list[dict]:
    """Per route and relay placement: connections/s over rounds, the rate ratio to direct MPTCP per
    round, and the setup latency percentiles of every connection of every round."""
    out = []
    for config, placement in variants:
        variant = _variant(config, placement)
        mine = [r for r in rows if r["variant"] == variant]
        setups = [t / 1e3 for r in mine for t in r["setup_us"]]
        totals = [t / 1e3 for r in mine for t in r["connection_us"]]
        out.append({"route": config, "relay_placement": placement, "variant": variant, "rounds": len(mine),
                    "connections": sum(r["connections"] for r in mine),
                    "errors": sum(r["errors"] for r in mine), "fallbacks": sum(r["fallbacks"] for r in mine),
                    "connections_per_s": summary([r["connections_per_s"] for r in mine]),
                    "rate_ratio_to_direct_mptcp": ratios(rows, variant, "direct-mptcp", "connections_per_s",
                                                         "variant"),
                    "relay_cpu_us_per_conn": summary([r["relay_cpu_us_per_conn"] for r in mine
                                                      if r.get("relay_cpu_us_per_conn") is not None]),
                    "client_cpu_us_per_conn": summary([1e3 * r["client_cpu_ms_per_conn"] for r in mine]),
                    "setup_median_ms": statistics.median(setups) if setups else None,
                    "setup_p90_ms": percentile(setups, 0.9), "connection_median_ms":
                        statistics.median(totals) if totals else None,
                    "clients": mine[0]["clients"] if mine else None})
    return out


def _sockets_in_use(tb: Any, role: str) -> dict[str, int]:
    from mpsim.testbed.probe import run_command

    text = run_command(["cat", "/proc/net/protocols"], ns=tb.ns[role]).stdout
    return {line.split()[0]: int(line.split()[2]) for line in text.splitlines()[1:]
            if line.split() and line.split()[0] in ("TCP", "MPTCP")}


def _idle_memory(tb: Any, services: Services, config: str, count: int, log_dir: Path) -> dict[str, Any]:
    """Slab bytes (machine-wide) and the relay's RSS with ``count`` idle connections, per connection."""
    route = ROUTES[config]
    target, dest = services.target(route, ECHO_PORTS)
    relay = services.relay_process(route)
    time.sleep(0.3)
    slab0, mem0 = slab_bytes(), meminfo_bytes()
    rss0 = rss_bytes(relay.proc.pid) if relay else None
    sockets0 = _sockets_in_use(tb, "converter")
    argv = peer_argv("hold", route.kind, route.client_proto, target, dest, count, CONVERT_TIMEOUT_S)
    holder = Peer(tb, "client", argv, log_dir, "hold", stdin=True)
    held = holder.json(PEER_LIMIT_S + 20, "held line")
    time.sleep(0.5)
    slab1, mem1 = slab_bytes(), meminfo_bytes()
    rss1 = rss_bytes(relay.proc.pid) if relay else None
    sockets1 = _sockets_in_use(tb, "converter")
    holder.tell("close")
    holder.json(30, "closed line")
    holder.proc.wait(timeout=10)
    time.sleep(0.5)
    slab2 = sum(slab_bytes().values())
    n = max(1, held["held"])
    deltas = {name: slab1.get(name, 0) - slab0.get(name, 0) for name in set(slab0) | set(slab1)}
    top = sorted(((v, k) for k, v in deltas.items() if v), reverse=True)[:8]
    held_bytes, before_bytes = sum(slab1.values()), sum(slab0.values())
    return {"route": config, "connections": held["held"], "errors": held["errors"],
            "client_subflows": held["subflows"],
            "slab_bytes_per_conn": (held_bytes - before_bytes) / n,
            # against the mean of before and after the close: takes out a drift of the machine's other
            # slab use that is linear in time (TIME-WAIT remnants, about 0.3 KB each, stay in "after")
            "slab_bytes_per_conn_drift_corrected": (held_bytes - (before_bytes + slab2) / 2) / n,
            "slab_meminfo_bytes_per_conn": (mem1["Slab"] - mem0["Slab"]) / n,
            "relay_rss_bytes_per_conn": (rss1 - rss0) / n if relay else None,
            "converter_ns_sockets_per_conn": {k: (sockets1[k] - sockets0.get(k, 0)) / n for k in sockets1},
            "top_slab_caches_bytes_per_conn": {k: v / n for v, k in top}}


def setup(scale: Scale, log_dir: Path, progress: Callable[[str], None],
          relay_cpu: str = RELAY_PLACEMENTS[0]) -> dict[str, Any]:
    """``relay_cpu``: where the single-process relays run, one of RELAY_PLACEMENTS."""
    from mpsim.testbed import PathSpec

    if relay_cpu not in RELAY_PLACEMENTS:
        raise ValueError(f"relay_cpu must be one of {', '.join(RELAY_PLACEMENTS)}, not {relay_cpu!r}")

    configs = sorted(set(scale.churn_configs) | set(scale.memory_configs), key=list(ROUTES).index)
    churn_configs = tuple(scale.churn_configs) + ((WORKERS_ROUTE, MINIMAL_ROUTE) if "converter-auto" in
                                                  scale.churn_configs else ())
    parallel_configs = PARALLEL_ROUTES if WORKERS_ROUTE in churn_configs and "direct-mptcp" in churn_configs else ()
    # with "both", a route's two placements run back to back, their order flipping with the rounds'
    churn_variants = [(c, p) for c in churn_configs for p in _placements(c, relay_cpu)]
    parallel_variants = [(c, p) for c in parallel_configs for p in _placements(c, relay_cpu)]
    churn_rows, memory_rows, parallel_rows = [], [], []
    with new_testbed([PathSpec(), PathSpec()]) as tb:
        services = Services(tb, log_dir)
        lifetime_s = 900.0
        services.start_echo(lifetime_s)
        for mode in sorted({ROUTES[c].relay for c in configs} - {None, "peer"}):
            services.start_daemon(mode)
        if any(ROUTES[c].relay == "peer" for c in configs):
            services.start_relay(ECHO_PORTS["tcp"], 100_000, lifetime_s)
        workers = _start_workers(tb, log_dir) if WORKERS_ROUTE in churn_configs else None
        minimal = _start_minimal(tb, log_dir, lifetime_s) if MINIMAL_ROUTE in churn_configs else None
        for round_index in range(scale.churn_rounds):
            order = churn_variants if round_index % 2 == 0 else churn_variants[::-1]
            for config, placement in order:
                row = _churn(tb, services, config, scale.churn_conns, log_dir, workers=workers, minimal=minimal,
                             placement=placement) | {"round": round_index, "session": "churn"}
                churn_rows.append(row)
                cpu = row["relay_cpu_us_per_conn"]
                progress(f"setup round {round_index + 1}/{scale.churn_rounds} {row['variant']}: "
                         f"{row['connections_per_s']:.0f} connections/s, setup median "
                         f"{statistics.median(row['setup_us'] or [math.nan]) / 1e3:.2f} ms"
                         + (f", relay CPU {cpu:.0f} us per connection" if cpu is not None else ""))
            for config, placement in (parallel_variants if round_index % 2 == 0 else parallel_variants[::-1]):
                row = _churn(tb, services, config, max(1, scale.churn_conns // WORKERS), log_dir, WORKERS,
                             workers=workers, placement=placement) | {"round": round_index, "session": "parallel"}
                parallel_rows.append(row)
                progress(f"setup round {round_index + 1}/{scale.churn_rounds} {row['variant']}, {WORKERS} clients "
                         "at once: "
                         f"{row['connections_per_s']:.0f} connections/s")
        for daemon in [*services.daemons.values(), *([services.relay] if services.relay else [])]:
            place_relay(daemon.proc.pid, relay_cpu == "pinned")  # idle memory: one placement is enough
        for round_index in range(scale.memory_rounds):
            for config in scale.memory_configs:
                row = _idle_memory(tb, services, config, scale.idle_conns, log_dir) | {"round": round_index}
                memory_rows.append(row)
                progress(f"idle memory round {round_index + 1}/{scale.memory_rounds} {config}: "
                         f"{row['slab_bytes_per_conn'] / 1e3:.1f} KB slab per connection")
        worker_counters = None
        if workers is not None:
            workers.stop(15)
            lines = [line for line in workers.stderr_tail(50_000).splitlines() if "event=counters" in line]
            worker_counters = dict(kv.split("=", 1) for kv in lines[-1].split() if "=" in kv) if lines else {}
        facts = testbed_facts(tb) | {"daemon_counters": services.daemon_counters() | (
            {"workers": worker_counters} if worker_counters is not None else {})}
    memory_summary = []
    for config in scale.memory_configs:
        mine = [r for r in memory_rows if r["route"] == config]
        memory_summary.append({"route": config, "rounds": len(mine),
                               "slab_kb_per_conn": summary([r["slab_bytes_per_conn"] / 1e3 for r in mine]),
                               "slab_kb_per_conn_drift_corrected": summary(
                                   [r["slab_bytes_per_conn_drift_corrected"] / 1e3 for r in mine]),
                               "relay_rss_kb_per_conn": summary([r["relay_rss_bytes_per_conn"] / 1e3 for r in mine
                                                                 if r["relay_rss_bytes_per_conn"] is not None])})
    # The endpoints of a relayed connection: the client's MPTCP socket and its two subflows (half of a
    # direct MPTCP connection's slab) and the server's TCP socket (half of a direct TCP one's).
    base = {m["route"]: m["slab_kb_per_conn_drift_corrected"]["median"] for m in memory_summary}
    endpoints = base["direct-mptcp"] / 2 + base["direct-tcp"] / 2 \
        if base.get("direct-mptcp") is not None and base.get("direct-tcp") is not None else None
    for m in memory_summary:
        m["proxy_share_kb_per_conn"] = m["slab_kb_per_conn_drift_corrected"]["median"] - endpoints \
            if endpoints is not None and ROUTES[m["route"]].relay else None
    return {"churn_rows": churn_rows, "churn": _churn_summary(churn_rows, churn_variants),
            "parallel_rows": parallel_rows, "parallel": _churn_summary(parallel_rows, parallel_variants),
            "relay_cpu": relay_cpu,
            "workers": WORKERS, "load_average_after": os.getloadavg(),
            "memory_rows": memory_rows, "memory": memory_summary, "testbeds": {"setup": facts},
            "hashes_ok": not any(r["errors"] for r in churn_rows + memory_rows + parallel_rows)}

