"""Benchmark 1, the fast path: bulk uploads client -> server through the converter (relay ``splice``,
``copy``, ``auto``), beside the kernel path without a proxy (MPTCP end to end, and TCP end to end:
the converter namespace then only routes) and a peer relay (a plain TCP copy relay made MPTCP by
``mptcpize run``, as socat would be). Unshaped veths (CPU-bound, noisy: interleaved rounds,
min/median/max, ratios computed per round, relay CPU seconds per GB with the relay pinned off the
receive-softirq CPU) and shaped (two 50 Mbit/s paths, where the MPTCP aggregation shows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpsim.bench.kernel.config import PEER_LIMIT_S, QUEUE_S, ROUTES, SHAPED_RATE_BPS, SINK_PORTS, Scale
from mpsim.bench.kernel.measure import fmt, ratios, summary
from mpsim.bench.kernel.services import Services, new_testbed, testbed_facts, upload


def _fast_session(paths: Sequence[Any], configs: Sequence[str], rounds: int, size_of: Callable[[str], int],
                  log_dir: Path, progress: Callable[[str], None], label: str) -> tuple[list[dict], dict]:
    runs = rounds * len(configs) + 8
    lifetime_s = PEER_LIMIT_S * runs
    with new_testbed(paths) as tb:
        services = Services(tb, log_dir)
        services.start_sinks(runs, lifetime_s)
        for mode in sorted({ROUTES[c].relay for c in configs} - {None, "peer"}):
            services.start_daemon(mode)
        if any(ROUTES[c].relay == "peer" for c in configs):
            services.start_relay(SINK_PORTS["tcp"], runs, lifetime_s)
        rows = []
        for round_index in range(rounds):
            order = list(configs) if round_index % 2 == 0 else list(reversed(configs))  # no fixed position
            for config in order:
                row = upload(tb, services, config, size_of(config), log_dir) | {"round": round_index, "session": label}
                rows.append(row)
                progress(f"{label} round {round_index + 1}/{rounds} {config}: {row['goodput_bps'] / 1e6:.0f} Mbit/s, "
                         f"relay {fmt(row['relay_cpu_s_per_gb'], '.2f')} CPU s/GB, machine busy before "
                         f"{fmt(row['background_busy_cpus'], '.2f')} CPUs, "
                         f"hash {'ok' if row['hash_ok'] else 'MISMATCH'}")
        facts = testbed_facts(tb) | {"daemon_counters": services.daemon_counters()}
    return rows, facts


def _fast_summary(rows: list[dict], configs: Sequence[str], session: str) -> list[dict]:
    out = []
    for config in configs:
        mine = [r for r in rows if r["route"] == config and r["session"] == session]
        out.append({
            "session": session, "route": config, "runs": len(mine),
            "goodput_mbps": summary([r["goodput_bps"] / 1e6 for r in mine]),
            "ratio_to_direct_mptcp": ratios([r for r in rows if r["session"] == session], config, "direct-mptcp"),
            "ratio_to_direct_tcp": ratios([r for r in rows if r["session"] == session], config, "direct-tcp"),
            "relay_cpu_s_per_gb": summary([r["relay_cpu_s_per_gb"] for r in mine]),
            "system_cpu_s_per_gb": summary([r["system_cpu_s_per_gb"] for r in mine]),
            "system_cpu_net_s_per_gb": summary([r["system_cpu_net_s_per_gb"] for r in mine]),
            "softirq_cpu_s_per_gb": summary([r["softirq_cpu_s_per_gb"] for r in mine]),
            "background_busy_cpus": summary([r["background_busy_cpus"] for r in mine]),
            "endpoints_cpu_s_per_gb": summary([r["client_cpu_s_per_gb"] + r["server_cpu_s_per_gb"] for r in mine]),
            "subflows": sorted({r["subflows"] for r in mine}),
            "hashes_ok": all(r["hash_ok"] for r in mine),
        })
    return out


def fastpath(scale: Scale, log_dir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    from mpsim.testbed import PathSpec

    rows, testbeds = [], {}
    unshaped, facts = _fast_session([PathSpec(), PathSpec()], scale.fast_configs, scale.fast_rounds,
                                    lambda _config: scale.fast_bytes, log_dir, progress, "unshaped")
    rows += unshaped
    testbeds["unshaped"] = facts
    shaped_paths = [PathSpec(rate_bps=SHAPED_RATE_BPS, queue_s=QUEUE_S)] * 2

    def shaped_bytes(config: str) -> int:  # about shaped_s at the configuration's ceiling
        paths = 1 if ROUTES[config].client_proto == "tcp" else 2
        return int(paths * SHAPED_RATE_BPS * 1420 / 1514 / 8 * scale.shaped_s)

    shaped, facts = _fast_session(shaped_paths, scale.shaped_configs, scale.shaped_rounds, shaped_bytes, log_dir,
                                  progress, "shaped 2 x 50 Mbit/s")
    rows += shaped
    testbeds["shaped"] = facts
    return {"rows": rows, "testbeds": testbeds,
            "summary": _fast_summary(rows, scale.fast_configs, "unshaped")
            + _fast_summary(rows, scale.shaped_configs, "shaped 2 x 50 Mbit/s"),
            "hashes_ok": all(r["hash_ok"] for r in rows)}

