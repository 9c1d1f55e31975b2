"""The testbed and the programs the benchmarks run in it: peers (:mod:`mpsim.bench.kernel.peer` in a
namespace, JSON lines on stdout), the server programs, the converter daemons, the peer relay, and one
upload measured end to end. Every process runs in its own session and is killed by process group
when its testbed closes."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpsim.bench.kernel.config import (BLOCK_SEED, CONVERT_TIMEOUT_S, CONVERTER_PORTS, ECHO_PORTS, EXTRA_SYSCTLS, GB,
                                       PEER_LIMIT_S, RELAY_PORT, ROUTES, SINK_PORTS, TESTBED_SYSCTLS, BenchError,
                                       Route)
from mpsim.bench.kernel.measure import expected_sha256, process_cpu_s, system_busy_s, system_cpu_s


class Peer:
    """A process in a testbed namespace (``tb.popen``: its own session, killed with the testbed):
    JSON lines read from stdout within deadlines, stderr kept in a file for error messages."""

    def __init__(self, tb: Any, role: str, argv: list[str], log_dir: Path, name: str, *, stdin: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = tb.popen(role, argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=log, env=env)
        self._buffer = b""

    def stderr_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def line(self, timeout_s: float) -> str | None:
        """The next stdout line, or None at the deadline or at EOF."""
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        for _ in range(100_000):
            if b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                return line.decode()
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        return None

    def json(self, timeout_s: float, what: str) -> Any:
        line = self.line(timeout_s)
        if line is None:
            raise BenchError(f"{self.name}: no {what} within {timeout_s} s (exit {self.proc.poll()}): "
                             f"{self.stderr_tail()}")
        value = json.loads(line)
        if isinstance(value, dict) and "failed" in value:
            raise BenchError(f"{self.name}: {value['failed']} {self.stderr_tail(500)}")
        return value

    def expect_ready(self, timeout_s: float = 15.0) -> Peer:
        if self.json(timeout_s, "ready line") != "ready":
            raise BenchError(f"{self.name}: unexpected first line")
        return self

    def tell(self, text: str = "go") -> None:
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()

    def wait_log(self, word: str, timeout_s: float = 15.0) -> str:
        """The first stderr line holding ``word`` (the daemon logs there)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if word in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchError(f"{self.name}: no {word!r} within {timeout_s} s: {self.stderr_tail()}")

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM the process group and wait (bounded); the testbed kills what is left."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            return self.proc.wait(timeout=timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            return self.proc.poll()


#: The modules ``make fast`` compiles that the daemon's per-connection path runs (the Makefile's
#: FAST_MODULES of mpsim.live and the sessions they drive).
_DAEMON_COMPILED = ("mpsim/live/converter", "mpsim/live/relay", "mpsim/live/sockets", "mpsim/proto/convert",
                    "mpsim/proto/relay")


def daemon_package(parent: Path | None = None) -> tuple[str, str]:
    """Where the converter daemons import mpsim from, and what that is in words for the report:
    the compiled build (``make fast``: ``build/fast`` beside the package, docs/sim.md
    "Performance") when it is present and current, else the bench's own (pure Python) package.
    A build whose daemon sources (mpsim/live and the layers it imports: proto, wire, the package's
    top-level modules) differ from the package's is stale and not used: its daemon would run other
    code than the one measured. ``parent``: the directory holding the package (default: the bench's)."""
    import mpsim
    import mpsim.live.converter

    if parent is None:
        parent = Path(mpsim.__file__).resolve().parents[1]
        if mpsim.live.converter.__file__.endswith(".so"):
            return str(parent), f"compiled (the bench's own package, {parent.name})"
    fast = parent / "build" / "fast"
    if not all(list((fast / path).parent.glob(Path(path).name + ".*.so")) for path in _DAEMON_COMPILED):
        return str(parent), "pure Python (no compiled build: `make fast` builds one)"
    sources = [*(parent / "mpsim").glob("*.py"),
               *(source for layer in ("live", "proto", "wire") for source in (parent / "mpsim" / layer).rglob("*.py"))]
    stale = [source for source in sources
             if not (fast / source.relative_to(parent)).is_file()
             or (fast / source.relative_to(parent)).read_bytes() != source.read_bytes()]
    if stale:
        return str(parent), f"pure Python (build/fast is stale, {len(stale)} files differ: `make fast` again)"
    return str(fast), "compiled (build/fast, mypyc)"


def daemon_command() -> tuple[list[str], dict[str, str]]:
    """(argv prefix, environment) of a converter daemon: ``python -P -m mpsim.live.serve`` with
    :func:`daemon_package` first on PYTHONPATH (``-P``: the working directory, which ``-m`` puts
    first, must not shadow it)."""
    package, _label = DAEMON_PACKAGE
    path = os.pathsep.join(p for p in (package, os.environ.get("PYTHONPATH")) if p)
    return [sys.executable, "-P", "-m", "mpsim.live.serve"], {**os.environ, "PYTHONPATH": path}


DAEMON_PACKAGE = daemon_package()


def peer_argv(mode: str, *args: object) -> list[str]:
    """The command line of a peer program (:mod:`mpsim.bench.kernel.peer`) in ``mode``."""
    return [sys.executable, "-m", "mpsim.bench.kernel.peer", mode, *map(str, args)]



#: The CPU the relays (daemons, peer relay) are pinned to: not the one rps_cpus sends every veth's
#: receive processing to (CPU 0). With tick-based CPU accounting (no CONFIG_IRQ_TIME_ACCOUNTING) a
#: softirq is charged to whichever task it interrupts, so an unpinned relay's /proc/PID/stat swings
#: with the CPU the scheduler happens to give it; pinned, it is the relay's own work, and the
#: machine's softirq time is reported on its own.
RELAY_CPU = 1 if (os.cpu_count() or 1) >= 2 else None




def place_relay(pid: int, pinned: bool) -> None:
    """Pin every thread of ``pid`` to RELAY_CPU, or let them run on every CPU. Per thread: a threaded
    relay's existing threads keep their own mask; new threads inherit their creator's."""
    cpus = {RELAY_CPU} if pinned and RELAY_CPU is not None else os.sched_getaffinity(0)  # the bench's own CPUs
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:  # a connection thread that ended meanwhile
            pass


def cpus_allowed(pid: int) -> list[int]:
    """The CPUs ``pid``'s main thread may run on (what a placement actually set)."""
    return sorted(os.sched_getaffinity(pid))


def pin_relay(peer: Peer) -> None:
    if RELAY_CPU is not None:
        place_relay(peer.proc.pid, True)




def new_testbed(paths: Sequence[Any]) -> Any:
    from mpsim.testbed import Testbed

    return Testbed(paths=list(paths), tfo=True, cc="cubic", sysctls=TESTBED_SYSCTLS)


def testbed_facts(tb: Any) -> dict[str, Any]:
    """tb.facts() without what every testbed of the run shares (kept once at the top), with the
    MPTcpExt counters before and after in full and every other counter as a delta."""
    from mpsim.testbed import counter_delta
    from mpsim.testbed.probe import read_sysctls

    facts = tb.facts()
    shared = ("kernel", "capabilities", "cannot_emulate", "counters_at_start", "counters_now")
    out = {k: v for k, v in facts.items() if k not in shared}
    start, now = facts["counters_at_start"], facts["counters_now"]
    mptcp = lambda counters: {k: v for k, v in counters.items() if k.startswith("MPTcpExt.")}  # noqa: E731
    out["mptcp_counters_before"] = {role: mptcp(counters) for role, counters in start.items()}
    out["mptcp_counters_after"] = {role: mptcp(counters) for role, counters in now.items()}
    out["counter_deltas"] = {r: counter_delta(start[r], now[r]) for r in now}
    for role, ns in tb.ns.items():
        out["sysctls"][role].update(read_sysctls(ns, EXTRA_SYSCTLS))
    return out


def shared_facts() -> dict[str, Any]:
    from mpsim.testbed import probe
    from mpsim.testbed.probe import kernel_facts

    caps = probe()
    return {"kernel": kernel_facts(), "capabilities": caps.as_dict(), "cannot_emulate": caps.cannot_emulate()}


#: ``mpsim bench kernel fastpath|setup --proxy-cmd '...'``: a third-party proxy run in place of the
#: live converter for every relay mode ({listen} {allow} {addr} {port} filled in; docs/kernel-world.md).
PROXY_CMD: str | None = None


class Services:
    """The long-running programs of one testbed: server programs, converter daemons, a peer relay."""

    def __init__(self, tb: Any, log_dir: Path) -> None:
        self.tb, self.log_dir = tb, log_dir
        self.daemons: dict[str, Peer] = {}
        self.relay: Peer | None = None
        self.servers: dict[str, Peer] = {}  # per protocol: the sinks, or the echo servers

    def start_sinks(self, count: int, lifetime_s: float) -> None:
        for proto, port in SINK_PORTS.items():
            argv = peer_argv("sink", proto, f"{self.tb.addresses.server}:{port}", count, lifetime_s)
            self.servers[proto] = Peer(self.tb, "server", argv, self.log_dir, f"sink-{proto}").expect_ready()

    def start_echo(self, lifetime_s: float) -> None:
        for proto, port in ECHO_PORTS.items():
            argv = peer_argv("echo", proto, f"{self.tb.addresses.server}:{port}", lifetime_s)
            self.servers[proto] = Peer(self.tb, "server", argv, self.log_dir, f"echo-{proto}").expect_ready()

    def start_daemon(self, mode: str) -> Peer:
        listen = (self.tb.addresses.converter[0], CONVERTER_PORTS[mode])
        if PROXY_CMD is not None:  # bring your own proxy: it stands in for every relay mode
            from mpsim.experiment.kernel_world import fill_proxy_cmd, wait_listening

            daemon = Peer(self.tb, "converter", fill_proxy_cmd(PROXY_CMD, listen, "198.18.0.0/15"), self.log_dir,
                          f"proxy-{mode}")
            wait_listening(self.tb, "client", listen[0], listen[1], 15.0, daemon.proc, daemon.log_path)
            pin_relay(daemon)
            self.daemons[mode] = daemon
            return daemon
        command, env = daemon_command()
        argv = [*command, "--listen", f"{listen[0]}:{listen[1]}", "--allow",
                "198.18.0.0/15", "--relay", mode, "--quiet", "--connect-timeout", "10"]
        daemon = Peer(self.tb, "converter", argv, self.log_dir, f"converter-{mode}", env=env)
        daemon.wait_log("event=listening")
        pin_relay(daemon)
        self.daemons[mode] = daemon
        return daemon

    def start_relay(self, upstream_port: int, count: int, lifetime_s: float) -> Peer:
        if shutil.which("mptcpize") is None:
            raise BenchError("mptcpize is not installed (apt-get install mptcpize): needed for the peer relay")
        argv = ["mptcpize", "run", *peer_argv("relay", f"{self.tb.addresses.converter[0]}:{RELAY_PORT}",
                                              f"{self.tb.addresses.server}:{upstream_port}", count, lifetime_s)]
        self.relay = Peer(self.tb, "converter", argv, self.log_dir, "peer-relay").expect_ready()
        pin_relay(self.relay)  # before any connection: its threads inherit the affinity
        return self.relay

    def relay_process(self, route: Route) -> Peer | None:
        if route.relay == "peer":
            return self.relay
        return self.daemons.get(route.relay) if route.relay else None

    def target(self, route: Route, server_ports: dict[str, int]) -> tuple[str, str]:
        """(where the client connects, the destination a Convert asks for)."""
        a = self.tb.addresses
        dest = f"{a.server}:{server_ports[route.server_proto]}"
        if route.kind == "convert":
            return f"{a.converter[0]}:{CONVERTER_PORTS[route.relay]}", dest
        if route.relay == "peer":
            return f"{a.converter[0]}:{RELAY_PORT}", dest
        return dest, dest

    def daemon_counters(self) -> dict[str, dict[str, str]]:
        """Stop the daemons (SIGTERM) and read the counters line each prints at exit."""
        out = {}
        for mode, daemon in self.daemons.items():
            daemon.stop()
            lines = [line for line in daemon.stderr_tail(20_000).splitlines() if "event=counters" in line]
            out[mode] = dict(kv.split("=", 1) for kv in lines[-1].split() if "=" in kv) if lines else {}
        return out


def upload(tb: Any, services: Services, route_name: str, size_bytes: int, log_dir: Path, *,
           sample_cpu: bool = True) -> dict[str, Any]:
    """One upload through ``route_name``: setup, then (after CPU snapshots) the transfer; the
    receiver's record checked against the sender's hash; CPU of the relay and of the machine."""
    route = ROUTES[route_name]
    target, dest = services.target(route, SINK_PORTS)
    sink = services.servers[route.server_proto]
    client = Peer(tb, "client", peer_argv("send", route.kind, route.client_proto, target, dest, size_bytes, BLOCK_SEED,
                                          CONVERT_TIMEOUT_S), log_dir, "client", stdin=True)
    connected = client.json(CONVERT_TIMEOUT_S + 10, "connected line")
    relay = services.relay_process(route)
    background_busy_per_s = None
    if sample_cpu:  # what the rest of the machine is doing right now (other work shares these cores)
        b0, t0 = system_busy_s(), time.monotonic()
        time.sleep(0.25)
        background_busy_per_s = (system_busy_s() - b0) / (time.monotonic() - t0)
    relay_cpu0 = process_cpu_s(relay.proc.pid) if relay else None
    (busy0, softirq0), wall0 = system_cpu_s(), time.monotonic()
    client.tell("go")
    done = client.json(PEER_LIMIT_S + 10, "transfer result")
    records = [sink.json(10, "server record")]
    while records[-1]["bytes"] < size_bytes and not records[-1]["error"]:  # a converter's abandoned leg first
        records.append(sink.json(PEER_LIMIT_S, "server record"))
    busy1, softirq1 = system_cpu_s()
    wall_s, busy_s, softirq_s = time.monotonic() - wall0, busy1 - busy0, softirq1 - softirq0
    relay_cpu_s = process_cpu_s(relay.proc.pid) - relay_cpu0 if relay else None
    for _ in range(20):  # more server connections that went nowhere (a late Convert after a fallback)
        line = sink.line(0.05)
        if line is None:
            break
        records.append(json.loads(line))
    client.proc.wait(timeout=10)
    record = max(records, key=lambda r: r["bytes"])
    gigabytes = size_bytes / GB
    return {
        "route": route_name, "bytes": size_bytes, "received_bytes": record["bytes"],
        "hash_ok": record["bytes"] == size_bytes and record["sha256"] == expected_sha256(size_bytes),
        "goodput_bps": record["goodput_bps"], "transfer_wall_s": wall_s, "setup_s": connected["setup_s"],
        "via_converter": connected["via_converter"], "convert_error": connected["convert_error"],
        "subflows": done["subflows"], "relay_cpu_s": relay_cpu_s,
        "relay_cpu_s_per_gb": relay_cpu_s / gigabytes if relay_cpu_s is not None else None,
        "client_cpu_s_per_gb": done["cpu_s"] / gigabytes, "server_cpu_s_per_gb": record["cpu_s"] / gigabytes,
        "system_cpu_s_per_gb": busy_s / gigabytes, "softirq_cpu_s_per_gb": softirq_s / gigabytes,
        "background_busy_cpus": background_busy_per_s,
        "system_cpu_net_s_per_gb": (busy_s - background_busy_per_s * wall_s) / gigabytes
        if background_busy_per_s is not None else None,
        "server_connections": len(records),
    }

