"""Kernel benchmarks: the live RFC 8803 converter on the namespace testbed, and the model against it.

``mpsim bench kernel fastpath|setup|model|abuse|all [--quick] [--out DIR]`` (root only; docs/kernel-bench.md
has the method, the recorded figures and every disagreement between model and kernel explained).

* **fastpath**: bulk uploads client -> server through the converter (relay ``splice``, ``copy``,
  ``auto``), beside the kernel path without a proxy (MPTCP end to end, and TCP end to end: the
  converter namespace then only routes) and a *peer relay* (a plain TCP copy relay in Python made
  MPTCP by ``mptcpize run``, as socat would be). Unshaped veths (CPU-bound, noisy: interleaved
  rounds, min/median/max, goodput ratio to direct computed per round, relay CPU seconds per GB
  from /proc/PID/stat with the relay pinned off the receive-softirq CPU, and the whole machine's
  busy and softirq time from /proc/stat) and shaped (two 50 Mbit/s paths, where the MPTCP
  aggregation shows).
* **setup**: connections per second through the converter and setup latency (median, p90),
  against direct connects and the peer relay; kernel memory per idle connection (slab deltas,
  /proc/slabinfo, machine-wide) and the daemon's RSS per connection.
* **abuse** (:mod:`~mpsim.bench.kernel.abuse`): good clients' success rate and setup p50/p90 with and
  without an attack (slow, garbage, resetting and forbidden-destination clients and a SYN flood),
  the daemon's descriptors and RSS before, during and after, SYNs sent to its own addresses.
* **model**: the same scenario in the SimPy model and in the testbed: goodput over a grid of path
  rates x loss rates (both paths, MPTCP through the converter; plain TCP on one path as the
  control that separates TCP from MPTCP and relay effects), and the middlebox rules (strip
  MPTCP on SYN, drop MP_CAPABLE SYNs, drop SYNs with data): negotiation outcome, setup time, SYN
  and RST counts (nftables counters on the client's output, SYN times from tshark when installed),
  MPTcpExt counters against the model host's MIB; a CSV/Markdown table and a PNG plot.

Every transfer's bytes are checked by SHA-256 at the receiver against the sender's stream (a
seeded 1 MiB block repeated); CUBIC is pinned and the buffer maxima set in every namespace; the
testbed's facts (kernel, sysctls, MPTcpExt counters before and after) and the machine's
(:func:`mpsim.provenance.machine_facts`) go with every result. Peer programs run in the namespaces
as ``python -m mpsim.bench.kernel.peer`` (stdlib only, plus :mod:`mpsim.live.client` for the
Convert client); every socket operation and every loop in them is bounded in count and time, and
every process is killed by its process group when its testbed closes.

Modules: :mod:`~mpsim.bench.kernel.config` (scales, routes, ports), :mod:`~mpsim.bench.kernel.peer`
(the programs in the namespaces), :mod:`~mpsim.bench.kernel.measure` (/proc readers, summaries),
:mod:`~mpsim.bench.kernel.services` (the testbed, its processes, one upload),
:mod:`~mpsim.bench.kernel.fastpath`, :mod:`~mpsim.bench.kernel.setup`, :mod:`~mpsim.bench.kernel.model`
(one per benchmark) and :mod:`~mpsim.bench.kernel.report` (JSON, CSV, Markdown, PNG).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpsim import __version__
from mpsim.bench.kernel.config import (BENCHMARKS, BLOCK_SEED, GB, MIB, RELAY_PLACEMENTS, ROUTES, SCALES,
                                       TESTBED_SYSCTLS, BenchError, Route, Scale)
from mpsim.bench.kernel.measure import not_root_reason
from mpsim.provenance import git_revision, machine_facts

__all__ = ["BENCHMARKS", "ROUTES", "SCALES", "BenchError", "ModelSettings", "Route", "Scale", "csv_rows", "main",
           "markdown", "model_goodput", "model_negotiation", "not_root_reason", "plot_model", "run",
           "write_results"]

#: Names this package offers from its submodules, imported on first use: every peer program
#: (``python -m mpsim.bench.kernel.peer``) imports this package first, and should not pay for the
#: simulator and the testbed it never uses.
_LAZY = {"ModelSettings": "model", "model_goodput": "model", "model_negotiation": "model",
         "model_vs_kernel": "model", "csv_rows": "report", "markdown": "report", "plot_model": "report",
         "write_results": "report", "RELAY_CPU": "services", "shared_facts": "services"}
#: The function of each benchmark: (module, name).
_BENCHMARK_FUNCTIONS = {"fastpath": ("fastpath", "fastpath"), "setup": ("setup", "setup"),
                        "model": ("model", "model_vs_kernel"), "abuse": ("abuse", "abuse")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(name: str, scale: Scale, progress: Callable[[str], None] = lambda line: None,
        relay_cpu: str | None = None) -> dict[str, Any]:
    """One benchmark at one scale; the JSON-able result (facts included). ``relay_cpu`` (setup
    only): the single-process relays' placement, one of services.RELAY_PLACEMENTS."""
    from mpsim.bench.kernel import services
    from mpsim.bench.kernel.services import RELAY_CPU, shared_facts
    from mpsim.testbed import cleanup_stale

    module, function = _BENCHMARK_FUNCTIONS[name]
    benchmark = getattr(importlib.import_module(f"{__name__}.{module}"), function)

    cleanup_stale("mps")  # leftovers of killed earlier runs; live parallel testbeds are kept
    started, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mpsim-bench-kernel-") as scratch:
        options = {"relay_cpu": relay_cpu} if relay_cpu is not None else {}
        if options and name != "setup":
            raise ValueError("relay_cpu goes with the setup benchmark")
        result = benchmark(scale, Path(scratch), progress, **options)
    return {"benchmark": f"kernel-{name}", "mpsim_version": __version__, "git": git_revision(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "scale": dataclasses.asdict(scale), "machine": machine_facts() | {"load_average_before": load_before},
            "wall_s": time.monotonic() - started, **shared_facts(), "proxy_cmd": services.PROXY_CMD,
            "daemon_build": services.DAEMON_PACKAGE[1] if services.PROXY_CMD is None else "none (--proxy-cmd)",
            "settings": {"congestion_control": "cubic", "tcp_buffer_max_bytes": 16 * MIB, "relay_cpu": RELAY_CPU,
                         "testbed_sysctls": TESTBED_SYSCTLS, "block_seed": BLOCK_SEED, "gb_bytes": GB},
            **result}


def main(argv: Sequence[str] | None = None, *, prog: str = "mpsim bench kernel") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Kernel benchmarks of the live converter and of the "
                                     "model against the kernel, on the namespace testbed (root only).")
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs (about 3 minutes for all)")
    parser.add_argument("--out", type=Path, help="write kernel_<benchmark>.json/.csv/.md (and .png) here")
    parser.add_argument("--scale", choices=list(SCALES), help=argparse.SUPPRESS)  # smoke: the test suite's
    parser.add_argument("--proxy-cmd", metavar="COMMAND",
                        help="fastpath, setup: run this proxy in the converter namespace in place of the live "
                             "converter ({listen} {allow} {addr} {port} filled in)")
    parser.add_argument("--relay-cpu", choices=RELAY_PLACEMENTS,
                        help="setup: run the single-process relays (converter, mptcpize relay, minimal relay) "
                             "pinned to one CPU away from the receive processing and unpinned side by side in "
                             "the same rounds (both, the default), or only one way")
    args = parser.parse_args(argv)
    if args.relay_cpu is not None and args.benchmark != "setup":
        parser.error("--relay-cpu goes with setup")
    if args.proxy_cmd is not None and args.benchmark not in ("fastpath", "setup"):
        parser.error("--proxy-cmd goes with fastpath or setup")
    if args.proxy_cmd is not None:  # a bad command is named before a testbed is built
        from mpsim.experiment.kernel_world import proxy_cmd_problems

        problems = proxy_cmd_problems(args.proxy_cmd)
        if problems:
            parser.error(problems[0])
    from mpsim.bench.kernel import services
    from mpsim.bench.kernel.report import markdown, write_results

    services.PROXY_CMD = args.proxy_cmd

    reason = not_root_reason()
    if reason:
        print(f"{prog}: {reason}; run it as root (e.g. sudo {sys.executable} -m mpsim bench kernel ...)",
              file=sys.stderr)
        return 2
    scale = SCALES[args.scale or ("quick" if args.quick else "full")]
    names = BENCHMARKS if args.benchmark == "all" else (args.benchmark,)
    ok = True
    for name in names:
        result = run(name, scale, progress=lambda line: print(line, file=sys.stderr, flush=True),
                     relay_cpu=args.relay_cpu)
        print(markdown(result))
        ok &= result["hashes_ok"]
        if args.out is not None:
            for path in write_results(result, args.out):
                print(f"written: {path}")
    return 0 if ok else 1
