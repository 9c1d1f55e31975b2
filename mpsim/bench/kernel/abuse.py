"""Benchmark 4, abuse: good clients of the converter while it is attacked (docs/live-converter.md,
"Operating it safely").

On a fresh testbed, the converter (``--relay auto``, default limits) serves sequential good
clients (set up, echo 100 bytes, close) once without and once during an attack from the same
client address (a realm behind one NAT): slow clients (a Convert header, then a byte every 0.5 s),
garbage SYNs, clients that ask for forbidden destinations (the converter's own addresses) and
reset at once, and a raw SYN flood (:mod:`mpsim.bench.kernel.attacker`). Reported: the good
clients' success rate (a fallback to direct TCP counts as a failure) and setup p50/p90 with and
without the attack, the daemon's descriptors and RSS before, during and after, its counters, and
the SYNs the converter's namespace sent to its own addresses (an nftables counter on the output
hook: must be 0).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpsim.bench.kernel.config import CONVERT_TIMEOUT_S, CONVERTER_PORTS, ECHO_PORTS, PEER_LIMIT_S, BenchError, Scale
from mpsim.bench.kernel.measure import percentile, rss_bytes
from mpsim.bench.kernel.services import Peer, Services, new_testbed, peer_argv, testbed_facts

#: Attack sizes per scale: slow clients, garbage clients (per batch, ten batches a second),
#: resetting clients per second, raw SYNs per second, good clients per phase.
ATTACKS = {"full": (1000, 500, 200, 2000, 300), "quick": (1000, 500, 200, 2000, 100),
           "smoke": (50, 20, 20, 200, 20)}
NFT_TABLE = "mpsim_abuse"
_SETTLE_LIMIT_S = 30.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _sample(pid: int) -> dict[str, int]:
    return {"fds": _fds(pid), "rss_bytes": rss_bytes(pid)}


def _good_clients(tb: Any, target: str, dest: str, count: int, log_dir: Path) -> dict[str, Any]:
    client = Peer(tb, "client", peer_argv("churn", "convert", "mptcp", target, dest, count, CONVERT_TIMEOUT_S),
                  log_dir, "good-clients")
    started = time.monotonic()
    result = client.json(PEER_LIMIT_S + 20, "churn result")
    client.proc.wait(timeout=10)
    served = result["connections"] - result["fallbacks"]
    setups = result["setup_s"]
    return {"attempted": count, "served": served, "success_rate": served / count,
            "fallbacks": result["fallbacks"], "errors": result["error_count"], "error_examples": result["errors"],
            "setup_p50_s": statistics.median(setups) if setups else None, "setup_p90_s": percentile(setups, 0.9),
            "connections_per_s": result["connections"] / result["wall_s"], "wall_s": time.monotonic() - started}


def _forbidden_syn_counter(tb: Any, addresses: list[str]) -> None:
    from mpsim.testbed.probe import run_command

    local = ", ".join(addresses + ["127.0.0.0/8", "0.0.0.0/8"])
    rules = (f"table inet {NFT_TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n"
             f"  ip daddr {{ {local} }} tcp flags & (syn | ack) == syn counter\n }}\n}}\n")
    run_command(["nft", "-f", "-"], ns=tb.ns["converter"], input_text=rules)


def _forbidden_syns(tb: Any) -> int:
    from mpsim.testbed.probe import run_command

    text = run_command(["nft", "list", "table", "inet", NFT_TABLE], ns=tb.ns["converter"]).stdout
    for line in text.splitlines():
        if "counter packets" in line:
            return int(line.split("counter packets")[1].split()[0])
    raise BenchError(f"no counter in the nftables table {NFT_TABLE}: {text}")


def abuse(scale: Scale, log_dir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    from mpsim.testbed import PathSpec

    slow, garbage, resetting_per_s, syn_pps, good = ATTACKS.get(scale.name, ATTACKS["quick"])
    with new_testbed([PathSpec(), PathSpec()]) as tb:
        services = Services(tb, log_dir)
        services.start_echo(900.0)
        daemon = services.start_daemon("auto")
        a = tb.addresses
        port = CONVERTER_PORTS["auto"]
        target, dest = f"{a.converter[0]}:{port}", f"{a.server}:{ECHO_PORTS['tcp']}"
        own = sorted({*a.converter, a.converter_server_side})
        _forbidden_syn_counter(tb, own)
        pid = daemon.proc.pid
        time.sleep(0.3)
        before = _sample(pid)
        quiet = _good_clients(tb, target, dest, good, log_dir)
        progress(f"abuse: without attack {quiet['served']}/{good} served, setup p90 "
                 f"{1e3 * (quiet['setup_p90_s'] or 0):.2f} ms")
        forbidden = ",".join([f"{own[0]}:{port}", f"{own[-1]}:{port}", f"{a.converter[0]}:22", "127.0.0.1:80"])
        argv = [sys.executable, "-m", "mpsim.bench.kernel.attacker", f"{a.converter[0]}:{port}", slow, garbage,
                resetting_per_s, syn_pps, forbidden, PEER_LIMIT_S + 60]  # outlasts the good clients' churn
        attacker = Peer(tb, "client", [str(x) for x in argv], log_dir, "attacker", stdin=True).expect_ready()
        time.sleep(2.0)  # the attack under way: slow clients connected, pools full
        during = [_sample(pid)]
        attacked = _good_clients(tb, target, dest, good, log_dir)
        during.append(_sample(pid))
        try:
            attacker.tell("stop")
        except BrokenPipeError:
            pass  # it ended already; its summary line is there either way
        attack = attacker.json(60, "attack summary")
        attacker.proc.wait(timeout=10)
        progress(f"abuse: under attack {attacked['served']}/{good} served, setup p90 "
                 f"{1e3 * (attacked['setup_p90_s'] or 0):.2f} ms; daemon fds {before['fds']} -> "
                 f"{max(d['fds'] for d in during)}")
        deadline = time.monotonic() + _SETTLE_LIMIT_S
        while _fds(pid) > before["fds"] and time.monotonic() < deadline:
            time.sleep(0.2)
        after = _sample(pid) | {"settle_s": _SETTLE_LIMIT_S - max(0.0, deadline - time.monotonic())}
        forbidden_syns = _forbidden_syns(tb)
        facts = testbed_facts(tb) | {"daemon_counters": services.daemon_counters()}
    return {"attack": {"slow_clients": slow, "garbage_clients_per_batch": garbage, "garbage_batches_per_s": 10,
                       "resetting_clients_per_s": resetting_per_s, "syn_flood_pps": syn_pps,
                       "forbidden_destinations": forbidden.split(","), "done": attack},
            "good_clients": {"without_attack": quiet, "under_attack": attacked},
            "daemon": {"before": before, "during": during, "after": after},
            "forbidden_syns": forbidden_syns, "load_average_after": os.getloadavg(),
            "testbeds": {"abuse": facts},
            "hashes_ok": (attacked["success_rate"] == 1.0 and quiet["success_rate"] == 1.0 and forbidden_syns == 0
                          and after["fds"] <= before["fds"])}
