"""Kernel benchmarks: the live RFC 8803 converter on the namespace testbed, and the model against it.

``mpsim bench kernel fastpath|setup|model|all [--quick] [--out DIR]`` (root only; docs/kernel-bench.md
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
* **model**: the same scenario in the SimPy model and in the testbed: goodput over a grid of path
  rates x loss rates (both paths, MPTCP through the converter; plain TCP on one path as the
  control that separates TCP from MPTCP and relay effects), and the middlebox rules (strip
  MPTCP on SYN, drop MP_CAPABLE SYNs, drop SYNs with data): negotiation outcome, setup time, SYN
  and RST counts (nftables counters on the client's output, SYN times from tshark when installed),
  MPTcpExt counters against the model host's MIB; a CSV/Markdown table and a PNG plot.

Every transfer's bytes are checked by SHA-256 at the receiver against the sender's stream (a
seeded 1 MiB block repeated); CUBIC is pinned and the buffer maxima set in every namespace; the
testbed's facts (kernel, sysctls, MPTcpExt counters before and after) go with every result. Peer
programs run in the namespaces from :data:`PEER` (stdlib only, plus :mod:`mpsim.live.client` for
the Convert client); every socket operation and every loop in them is bounded in count and time,
and every process is killed by its process group when its testbed closes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mpsim import __version__
from mpsim.bench import write_json_and_markdown
from mpsim.errors import MpsimError

GB = 1e9  # CPU seconds per GB: per 10^9 payload bytes
MIB = 1 << 20
BLOCK_BYTES = MIB
BLOCK_SEED = 8803
PEER_LIMIT_S = 120.0  # bound on every socket operation and loop of a peer program
CONVERT_TIMEOUT_S = 15.0  # the live client's bound on one Convert exchange (then: direct TCP)
SINK_PORTS = {"tcp": 5001, "mptcp": 5002}
ECHO_PORTS = {"tcp": 7001, "mptcp": 7002}
CONVERTER_PORTS = {"splice": 6001, "copy": 6002, "auto": 6003}
RELAY_PORT = 6004
L2_FACTOR = 1500 / 1514  # tbf counts 1514-byte frames for 1500-byte IP packets (docs/testbed.md)
SHAPED_RATE_BPS = 50_000_000
QUEUE_S = 0.05  # the testbed's default tbf queue, as time at rate
#: Sysctls recorded besides the testbed's: what changes SYN timing, loss recovery and buffers.
EXTRA_SYSCTLS = ("net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_no_metrics_save", "net.ipv4.tcp_recovery",
                 "net.ipv4.tcp_early_retrans", "net.ipv4.tcp_adv_win_scale", "net.ipv4.tcp_thin_linear_timeouts")
#: Every testbed: CUBIC pinned (Testbed default), 16 MiB buffer maxima, TFO for the Convert SYN,
#: and no route metrics cache, so that one run's ssthresh never seeds the next.
TESTBED_SYSCTLS = {"net.ipv4.tcp_no_metrics_save": "1"}
BENCHMARKS = ("fastpath", "setup", "model")


class BenchError(MpsimError):
    """A benchmark step failed; the message says which, with the peer's stderr."""


@dataclass(frozen=True)
class Scale:
    """How much each benchmark does (``full``, ``quick``, and ``smoke`` for the test suite)."""

    name: str
    fast_bytes: int  # one unshaped upload
    fast_rounds: int  # interleaved rounds over the configurations
    fast_configs: tuple[str, ...]
    shaped_s: float  # a shaped upload lasts about this long at its configuration's ceiling
    shaped_rounds: int
    shaped_configs: tuple[str, ...]
    churn_conns: int  # sequential connections per configuration and round
    churn_rounds: int
    churn_configs: tuple[str, ...]
    idle_conns: int  # idle connections held at once per memory measurement
    memory_rounds: int
    memory_configs: tuple[str, ...]
    grid_rates_bps: tuple[int, ...]
    grid_losses: tuple[float, ...]
    grid_s: float  # a grid upload lasts about this long at the aggregate ceiling
    grid_reps: int  # kernel uploads per grid point (the model runs as many seeds)
    middleboxes: tuple[str, ...]


ALL_FAST = ("direct-tcp", "direct-mptcp", "converter-splice", "converter-copy", "converter-auto", "peer-relay")
PROXY_COMPARISON = ("direct-tcp", "direct-mptcp", "converter-auto", "peer-relay")
MEMORY_ROUTES = ("direct-tcp", "direct-mptcp", "converter-splice", "converter-copy", "peer-relay")
ALL_MIDDLEBOXES = ("none", "strip_mptcp_syn", "drop_mp_capable_syn", "drop_syn_data")
GRID = {"grid_rates_bps": (10_000_000, 50_000_000), "grid_losses": (0.0, 0.005, 0.02)}
SCALES = {
    "full": Scale("full", fast_bytes=512 * MIB, fast_rounds=7, fast_configs=ALL_FAST,
                  shaped_s=3.0, shaped_rounds=3, shaped_configs=PROXY_COMPARISON,
                  churn_conns=400, churn_rounds=3, churn_configs=PROXY_COMPARISON,
                  idle_conns=500, memory_rounds=3, memory_configs=MEMORY_ROUTES,
                  **GRID, grid_s=4.0, grid_reps=2, middleboxes=ALL_MIDDLEBOXES),
    "quick": Scale("quick", fast_bytes=96 * MIB, fast_rounds=3, fast_configs=ALL_FAST,
                   shaped_s=1.5, shaped_rounds=1, shaped_configs=PROXY_COMPARISON,
                   churn_conns=100, churn_rounds=2, churn_configs=PROXY_COMPARISON,
                   idle_conns=200, memory_rounds=1, memory_configs=MEMORY_ROUTES,
                   **GRID, grid_s=1.5, grid_reps=1, middleboxes=ALL_MIDDLEBOXES),
    # the test suite's: every code path once, in about 15 s
    "smoke": Scale("smoke", fast_bytes=8 * MIB, fast_rounds=1, fast_configs=("direct-mptcp", "converter-auto",
                                                                             "peer-relay"),
                   shaped_s=0.5, shaped_rounds=1, shaped_configs=("converter-auto",),
                   churn_conns=10, churn_rounds=1, churn_configs=("direct-mptcp", "converter-auto"),
                   idle_conns=10, memory_rounds=1, memory_configs=("converter-copy",),
                   grid_rates_bps=(50_000_000,), grid_losses=(0.0,), grid_s=0.5, grid_reps=1,
                   middleboxes=("strip_mptcp_syn",)),
}


@dataclass(frozen=True)
class Route:
    """How a client reaches the server: ``direct`` (connect to ``target``) or ``convert`` (ask the
    converter at ``target``); the client's and the server's socket protocol; who relays."""

    kind: str
    client_proto: str
    server_proto: str
    relay: str | None  # "splice" / "copy" / "auto" (the daemon), "peer" (mptcpize relay), None


ROUTES = {
    "direct-tcp": Route("direct", "tcp", "tcp", None),
    "direct-mptcp": Route("direct", "mptcp", "mptcp", None),
    "converter-splice": Route("convert", "mptcp", "tcp", "splice"),
    "converter-copy": Route("convert", "mptcp", "tcp", "copy"),
    "converter-auto": Route("convert", "mptcp", "tcp", "auto"),
    "peer-relay": Route("direct", "mptcp", "tcp", "peer"),
}


# --- the peer programs (run inside the namespaces) ------------------------------------------------

PEER = r'''
import hashlib, json, os, random, resource, select, selectors, socket, sys, threading, time
IPPROTO_MPTCP, SOL_MPTCP, MPTCP_INFO = 262, 284, 1
LIMIT_S = __LIMIT_S__
_print_lock = threading.Lock()


def out(obj):
    with _print_lock:
        print(json.dumps(obj), flush=True)


def cpu_s(who=resource.RUSAGE_SELF):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def endpoint(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def stream(proto):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if proto == "mptcp" else 0)
    s.settimeout(LIMIT_S)
    return s


def listener(proto, address, backlog=1024):
    s = stream(proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(endpoint(address))
    s.listen(backlog)
    return s


def mptcp_subflows(s):
    """Subflows of an MPTCP connection (the initial one included); 0 for TCP or a fallback."""
    if s.proto != IPPROTO_MPTCP:
        return 0
    try:
        raw = s.getsockopt(SOL_MPTCP, MPTCP_INFO, 96)
    except OSError:
        return 0
    return 0 if int.from_bytes(raw[8:12], "little") & 1 else raw[0] + 1  # MPTCP_INFO_FLAG_FALLBACK


def wait_stdin(timeout_s):
    if select.select([sys.stdin], [], [], timeout_s)[0]:
        sys.stdin.readline()


def connect(kind, proto, target, dest, timeout_s):
    """(socket, facts). direct: connect to target. convert: ask the converter at target for dest;
    when the exchange fails, fall back to plain TCP to dest (the model's FallbackTarget.DIRECT_TCP)."""
    from mpsim.live.client import ConvertError, convert_open
    start = time.monotonic()
    if kind == "direct":
        s = stream(proto)
        s.connect(endpoint(target))
        return s, {"setup_s": time.monotonic() - start, "via_converter": False, "convert_error": None}
    try:
        c = convert_open(target, dest, mptcp=proto == "mptcp", timeout_s=timeout_s)
        c.sock.settimeout(LIMIT_S)
        return c.sock, {"setup_s": time.monotonic() - start, "via_converter": True, "convert_error": None}
    except (ConvertError, OSError) as err:
        error = f"{type(err).__name__}: {err}"
    s = stream("tcp")
    s.connect(endpoint(dest))
    return s, {"setup_s": time.monotonic() - start, "via_converter": False, "convert_error": error}


def sink(proto, address, count, lifetime_s):
    """Accept up to count connections (a thread each); hash what arrives until EOF; one JSON line each."""
    srv, end = listener(proto, address), time.monotonic() + float(lifetime_s)

    def serve(conn, peer):
        conn.settimeout(LIMIT_S)
        buf = bytearray(1 << 18)
        view, cpu0, digest = memoryview(buf), cpu_s(resource.RUSAGE_THREAD), hashlib.sha256()
        total, first_bytes, first_s, last_s, error = 0, 0, None, None, None
        deadline = time.monotonic() + LIMIT_S
        try:
            while time.monotonic() < deadline:
                n = conn.recv_into(buf)
                if not n:
                    break
                last_s = time.monotonic()
                if first_s is None:
                    first_s, first_bytes = last_s, n
                total += n
                digest.update(view[:n])
        except OSError as err:
            error = f"{type(err).__name__}: {err}"
        conn.close()
        span_s = last_s - first_s if first_s is not None else 0.0
        out({"bytes": total, "sha256": digest.hexdigest(), "peer": f"{peer[0]}:{peer[1]}", "span_s": span_s,
             "goodput_bps": (total - first_bytes) * 8 / span_s if span_s > 0 else None,
             "cpu_s": cpu_s(resource.RUSAGE_THREAD) - cpu0, "error": error})

    out("ready")
    for _ in range(int(count)):
        srv.settimeout(max(0.1, end - time.monotonic()))
        try:
            conn, peer = srv.accept()
        except socket.timeout:
            break
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


def send(kind, proto, target, dest, size, seed, timeout_s):
    """One upload of size bytes (the seeded block repeated); waits for "go" on stdin once connected
    (the caller samples CPU counters around the transfer only), then for the server's EOF."""
    block = memoryview(random.Random(int(seed)).randbytes(1 << 20))
    size = int(size)
    s, facts = connect(kind, proto, target, dest, float(timeout_s))
    out({"connected": True, **facts})
    wait_stdin(LIMIT_S)
    start, cpu0 = time.monotonic(), cpu_s()
    for offset in range(0, size, len(block)):
        s.sendall(block[:min(len(block), size - offset)])
    subflows = mptcp_subflows(s)
    s.shutdown(socket.SHUT_WR)
    for _ in range(1000):  # the server's EOF: every byte arrived
        if not s.recv(65536):
            break
    s.close()
    out({"done": True, "sent_bytes": size, "send_s": time.monotonic() - start, "subflows": subflows,
         "cpu_s": cpu_s() - cpu0, **facts})


def echo(proto, address, lifetime_s):
    """Echo every connection until its EOF (any number at once), for lifetime_s at most."""
    srv, end = listener(proto, address), time.monotonic() + float(lifetime_s)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    out("ready")
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.5):
            if key.fileobj is srv:
                for _ in range(64):
                    try:
                        conn, _peer = srv.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
                if data:
                    conn.setblocking(True)
                    conn.settimeout(LIMIT_S)
                    conn.sendall(data)
                    conn.setblocking(False)
                    continue
            except OSError:
                pass
            sel.unregister(conn)
            conn.close()


def echo_once(s, message):
    s.sendall(message)
    got = b""
    for _ in range(100):
        chunk = s.recv(len(message) - len(got))
        got += chunk
        if not chunk or len(got) == len(message):
            break
    if got != message:
        raise OSError(f"the echo ({len(got)} bytes) is not what was sent")


def churn(kind, proto, target, dest, count, timeout_s):
    """count connections one after the other: set up, echo 100 bytes, close."""
    import mpsim.live.client  # imported before the clock starts
    message, setups, totals, fallbacks, errors = b"x" * 100, [], [], 0, []
    cpu0, start = cpu_s(), time.monotonic()
    for _ in range(int(count)):
        if time.monotonic() - start > LIMIT_S:
            break
        t0 = time.monotonic()
        try:
            s, facts = connect(kind, proto, target, dest, float(timeout_s))
            t1 = time.monotonic()
            echo_once(s, message)
            s.close()
        except OSError as err:
            errors.append(f"{type(err).__name__}: {err}")
            continue
        if facts["convert_error"] is not None:
            fallbacks += 1
            errors.append(f"fell back to direct TCP after {t1 - t0:.3f} s: {facts['convert_error']}")
        setups.append(t1 - t0)
        totals.append(time.monotonic() - t0)
    out({"done": True, "connections": len(setups), "wall_s": time.monotonic() - start, "setup_s": setups,
         "total_s": totals, "fallbacks": fallbacks, "errors": errors[:5], "error_count": len(errors) - fallbacks,
         "cpu_s": cpu_s() - cpu0})


def hold(kind, proto, target, dest, count, timeout_s):
    """Open count connections (each echoes 100 bytes once), report, keep them idle until a line on
    stdin (or LIMIT_S), then close them all."""
    import resource as r
    soft, hard = r.getrlimit(r.RLIMIT_NOFILE)
    r.setrlimit(r.RLIMIT_NOFILE, (min(hard, max(soft, 2 * int(count) + 64)), hard))
    socks, errors = [], 0
    for _ in range(int(count)):
        try:
            s, _facts = connect(kind, proto, target, dest, float(timeout_s))
            echo_once(s, b"y" * 100)
            socks.append(s)
        except OSError:
            errors += 1
    time.sleep(0.2)  # late MP_JOINs
    out({"held": len(socks), "errors": errors, "subflows": sum(mptcp_subflows(s) for s in socks)})
    wait_stdin(LIMIT_S)
    for s in socks:
        s.close()
    out({"closed": len(socks)})


def relay(listen, upstream, count, lifetime_s):
    """A plain TCP port-forwarding copy relay (socat-like), a thread per direction; run under
    `mptcpize run`, its sockets are MPTCP sockets."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(endpoint(listen))
    srv.listen(1024)
    end = time.monotonic() + float(lifetime_s)

    def pump(a, b):
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        try:
            for _ in range(1 << 30):
                n = a.recv_into(buf)
                if not n:
                    break
                b.sendall(view[:n])
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    out("ready")
    for _ in range(int(count)):
        srv.settimeout(max(0.1, end - time.monotonic()))
        try:
            a, _peer = srv.accept()
        except socket.timeout:
            break
        a.settimeout(LIMIT_S)
        b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        b.settimeout(LIMIT_S)
        try:
            b.connect(endpoint(upstream))
        except OSError:
            a.close()
            continue
        for x, y in ((a, b), (b, a)):
            threading.Thread(target=pump, args=(x, y), daemon=True).start()


def rtt(destination, count):
    """Minimum and median time of a TCP connect to a closed port (SYN out, RST back)."""
    samples = []
    for _ in range(int(count)):
        s = socket.socket()
        s.settimeout(2)
        t0 = time.monotonic()
        try:
            s.connect((destination, 9))
        except ConnectionRefusedError:
            samples.append(time.monotonic() - t0)
        except OSError:
            pass
        s.close()
    samples.sort()
    out({"rtt_min_s": samples[0], "rtt_median_s": samples[len(samples) // 2], "samples": len(samples)})


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        modes = {"sink": sink, "send": send, "echo": echo, "churn": churn, "hold": hold, "relay": relay, "rtt": rtt}
        modes[mode](*args)
    except Exception as err:
        out({"failed": f"{type(err).__name__}: {err}"})
        sys.exit(1)
'''


# --- processes, counters and measurements on the machine -------------------------------------------


class Peer:
    """A process in a testbed namespace (``tb.popen``: its own session, killed with the testbed):
    JSON lines read from stdout within deadlines, stderr kept in a file for error messages."""

    def __init__(self, tb: Any, role: str, argv: list[str], log_dir: Path, name: str, *, stdin: bool = False) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = tb.popen(role, argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=log)
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


def peer_argv(mode: str, *args: object) -> list[str]:
    return [sys.executable, "-c", PEER.replace("__LIMIT_S__", repr(PEER_LIMIT_S)), mode, *map(str, args)]


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process and its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu_s() -> tuple[float, float]:
    """(busy, softirq) CPU seconds of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, values[6] / tick


def system_busy_s() -> float:
    return system_cpu_s()[0]


#: The CPU the relays (daemons, peer relay) are pinned to: not the one rps_cpus sends every veth's
#: receive processing to (CPU 0). With tick-based CPU accounting (no CONFIG_IRQ_TIME_ACCOUNTING) a
#: softirq is charged to whichever task it interrupts, so an unpinned relay's /proc/PID/stat swings
#: with the CPU the scheduler happens to give it; pinned, it is the relay's own work, and the
#: machine's softirq time is reported on its own.
RELAY_CPU = 1 if (os.cpu_count() or 1) >= 2 else None


def pin_relay(peer: Peer) -> None:
    if RELAY_CPU is not None:
        os.sched_setaffinity(peer.proc.pid, {RELAY_CPU})


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def slab_bytes() -> dict[str, int]:
    """Bytes in use per slab cache (active objects x object size), machine-wide."""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f.readlines()[2:]:
            name, active, _total, size = line.split()[:4]
            out[name] = int(active) * int(size)
    return out


def meminfo_bytes() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        rows = (line.split() for line in f)
        return {r[0].rstrip(":"): int(r[1]) * 1024 for r in rows if r[0].rstrip(":") in ("Slab", "SUnreclaim")}


def summary(values: Sequence[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


_digests: dict[int, str] = {}


def expected_sha256(size_bytes: int) -> str:
    """SHA-256 of what a sender of ``size_bytes`` sends (the seeded block, repeated)."""
    if size_bytes not in _digests:
        block = memoryview(random.Random(BLOCK_SEED).randbytes(BLOCK_BYTES))
        digest = hashlib.sha256()
        for offset in range(0, size_bytes, BLOCK_BYTES):
            digest.update(block[:min(BLOCK_BYTES, size_bytes - offset)])
        _digests[size_bytes] = digest.hexdigest()
    return _digests[size_bytes]


def machine() -> dict[str, Any]:
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_average": os.getloadavg()}


def not_root_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the kernel benchmarks need Linux network namespaces"
    if os.geteuid() != 0:
        return "the kernel benchmarks need root (network namespaces, qdiscs, netfilter)"
    return None


# --- the testbed and its services ------------------------------------------------------------------


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
        argv = [sys.executable, "-m", "mpsim.live.converter", "--listen",
                f"{self.tb.addresses.converter[0]}:{CONVERTER_PORTS[mode]}", "--allow", "198.18.0.0/15",
                "--relay", mode, "--quiet", "--connect-timeout", "10"]
        daemon = Peer(self.tb, "converter", argv, self.log_dir, f"converter-{mode}")
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


# --- benchmark 1: the fast path ---------------------------------------------------------------------


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
                         f"relay {_fmt(row['relay_cpu_s_per_gb'], '.2f')} CPU s/GB, machine busy before "
                         f"{_fmt(row['background_busy_cpus'], '.2f')} CPUs, "
                         f"hash {'ok' if row['hash_ok'] else 'MISMATCH'}")
        facts = testbed_facts(tb) | {"daemon_counters": services.daemon_counters()}
    return rows, facts


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratios(rows: list[dict], config: str, baseline: str, key: str = "goodput_bps") -> dict:
    by_round = {}
    for row in rows:
        by_round.setdefault((row["session"], row["round"]), {})[row["route"]] = row[key]
    ratios = [r[config] / r[baseline] for r in by_round.values() if r.get(config) and r.get(baseline)]
    return summary(ratios)


def _fast_summary(rows: list[dict], configs: Sequence[str], session: str) -> list[dict]:
    out = []
    for config in configs:
        mine = [r for r in rows if r["route"] == config and r["session"] == session]
        out.append({
            "session": session, "route": config, "runs": len(mine),
            "goodput_mbps": summary([r["goodput_bps"] / 1e6 for r in mine]),
            "ratio_to_direct_mptcp": _ratios([r for r in rows if r["session"] == session], config, "direct-mptcp"),
            "ratio_to_direct_tcp": _ratios([r for r in rows if r["session"] == session], config, "direct-tcp"),
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


# --- benchmark 2: connection setup and idle memory ---------------------------------------------------


def _churn(tb: Any, services: Services, config: str, count: int, log_dir: Path) -> dict[str, Any]:
    route = ROUTES[config]
    target, dest = services.target(route, ECHO_PORTS)
    client = Peer(tb, "client", peer_argv("churn", route.kind, route.client_proto, target, dest, count,
                                          CONVERT_TIMEOUT_S), log_dir, "churn")
    result = client.json(PEER_LIMIT_S + 20, "churn result")
    client.proc.wait(timeout=10)
    return {"route": config, "connections": result["connections"], "errors": result["error_count"],
            "error_examples": result["errors"], "fallbacks": result["fallbacks"],
            "connections_per_s": result["connections"] / result["wall_s"],
            "setup_us": [round(1e6 * t, 1) for t in result["setup_s"]],
            "connection_us": [round(1e6 * t, 1) for t in result["total_s"]],
            "client_cpu_ms_per_conn": 1e3 * result["cpu_s"] / max(1, result["connections"])}


def _churn_summary(rows: list[dict], configs: Sequence[str]) -> list[dict]:
    """Per route: connections/s over rounds, the rate ratio to direct MPTCP per round, and the setup
    latency percentiles of every connection of every round."""
    out = []
    for config in configs:
        mine = [r for r in rows if r["route"] == config]
        setups = [t / 1e3 for r in mine for t in r["setup_us"]]
        totals = [t / 1e3 for r in mine for t in r["connection_us"]]
        out.append({"route": config, "rounds": len(mine), "connections": sum(r["connections"] for r in mine),
                    "errors": sum(r["errors"] for r in mine), "fallbacks": sum(r["fallbacks"] for r in mine),
                    "connections_per_s": summary([r["connections_per_s"] for r in mine]),
                    "rate_ratio_to_direct_mptcp": _ratios(rows, config, "direct-mptcp", "connections_per_s"),
                    "setup_median_ms": statistics.median(setups) if setups else None,
                    "setup_p90_ms": percentile(setups, 0.9), "connection_median_ms":
                        statistics.median(totals) if totals else None})
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


def setup(scale: Scale, log_dir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    from mpsim.testbed import PathSpec

    configs = sorted(set(scale.churn_configs) | set(scale.memory_configs), key=list(ROUTES).index)
    churn_rows, memory_rows = [], []
    with new_testbed([PathSpec(), PathSpec()]) as tb:
        services = Services(tb, log_dir)
        lifetime_s = 900.0
        services.start_echo(lifetime_s)
        for mode in sorted({ROUTES[c].relay for c in configs} - {None, "peer"}):
            services.start_daemon(mode)
        if any(ROUTES[c].relay == "peer" for c in configs):
            services.start_relay(ECHO_PORTS["tcp"], 100_000, lifetime_s)
        for round_index in range(scale.churn_rounds):
            order = scale.churn_configs if round_index % 2 == 0 else scale.churn_configs[::-1]
            for config in order:
                row = _churn(tb, services, config, scale.churn_conns, log_dir) | {"round": round_index,
                                                                                  "session": "churn"}
                churn_rows.append(row)
                progress(f"setup round {round_index + 1}/{scale.churn_rounds} {config}: "
                         f"{row['connections_per_s']:.0f} connections/s, setup median "
                         f"{statistics.median(row['setup_us'] or [math.nan]) / 1e3:.2f} ms")
        for round_index in range(scale.memory_rounds):
            for config in scale.memory_configs:
                row = _idle_memory(tb, services, config, scale.idle_conns, log_dir) | {"round": round_index}
                memory_rows.append(row)
                progress(f"idle memory round {round_index + 1}/{scale.memory_rounds} {config}: "
                         f"{row['slab_bytes_per_conn'] / 1e3:.1f} KB slab per connection")
        facts = testbed_facts(tb) | {"daemon_counters": services.daemon_counters()}
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
    return {"churn_rows": churn_rows, "churn": _churn_summary(churn_rows, scale.churn_configs),
            "memory_rows": memory_rows, "memory": memory_summary, "testbeds": {"setup": facts},
            "hashes_ok": not any(r["errors"] for r in churn_rows + memory_rows)}


# --- benchmark 3: the model against the kernel ---------------------------------------------------------


def kernel_policy_values(sysctls: dict[str, str]) -> dict[str, int]:
    """The Linux knobs the model's policies copy, from the client namespace's sysctls (per-namespace
    values: a new namespace starts from the kernel's defaults, not from the root namespace's)."""
    names = {"syn_retrans_before_tcp_fallback": "net.mptcp.syn_retrans_before_tcp_fallback",
             "tcp_syn_retries": "net.ipv4.tcp_syn_retries",
             "tcp_syn_linear_timeouts": "net.ipv4.tcp_syn_linear_timeouts",
             "blackhole_timeout_s": "net.mptcp.blackhole_timeout"}
    return {knob: int(sysctls[name]) for knob, name in names.items() if sysctls.get(name, "").isdigit()}


class _LossAfterQueue:
    """One direction of a testbed path in the model: tbf's drop-tail queue and rate, then the
    nftables loss rule (it runs after the shaper, so a lost packet has used the link), then the
    propagation delay. Quacks like a LinkDirection for BulkTransfer (``send``, ``deliver``)."""

    def __init__(self, env: Any, name: str, rate_bps: float, queue_bytes: int, delay_s: float, loss_prob: float,
                 rng: Any) -> None:
        from mpsim.sim.link import LinkDirection
        from mpsim.sim.loss import Bernoulli

        self.shaper = LinkDirection(env, f"{name}.tbf", delay_s=0.0, rate_bps=rate_bps, queue_limit_bytes=queue_bytes,
                                    deliver=self._shaped)
        self.rest = LinkDirection(env, f"{name}.loss", delay_s=delay_s,
                                  loss=Bernoulli(loss_prob, rng) if loss_prob else None)

    def send(self, packet: Any) -> bool:
        return self.shaper.send(packet)

    def _shaped(self, packet: Any) -> None:
        self.rest.send(packet)

    @property
    def deliver(self) -> Any:
        return self.rest.deliver

    @deliver.setter
    def deliver(self, function: Any) -> None:
        self.rest.deliver = function

    def counters(self) -> dict[str, int]:
        return {"queue_drops": self.shaper.counters.packets_dropped_queue,
                "loss_drops": self.rest.counters.packets_dropped_loss, "sent": self.rest.counters.packets_sent}


@dataclass(frozen=True)
class ModelSettings:
    """How a testbed configuration maps onto the model (recorded with the results)."""

    one_way_delay_s: float  # half the testbed's measured base RTT: veth has no propagation delay
    buffer_bytes: int = 8 * MIB  # 16 MiB tcp_rmem/tcp_wmem of truesize, about half of it payload
    rate_factor: float = L2_FACTOR  # tbf's L2 rate -> the model's IP-level rate
    queue_s: float = QUEUE_S


def model_goodput(settings: ModelSettings, rate_bps: float, loss_prob: float, size_bytes: int, *, mptcp: bool,
                  seed: int) -> dict[str, Any]:
    """The model's upload of size_bytes over the testbed's two paths (or path 0 alone for TCP):
    tbf rate and queue, loss after the queue on both directions, CUBIC, the kernel's buffers."""
    import simpy

    from mpsim.sim.seeds import component_rng
    from mpsim.sim.transfer import BulkTransfer

    env = simpy.Environment()
    model_rate = rate_bps * settings.rate_factor
    queue_bytes = int(rate_bps / 8 * settings.queue_s * settings.rate_factor)
    paths = []
    for index in range(2 if mptcp else 1):
        paths.append(tuple(_LossAfterQueue(env, f"path{index}.{d}", model_rate, queue_bytes, settings.one_way_delay_s,
                                           loss_prob, component_rng(seed, 0, f"loss.path{index}.{d}"))
                           for d in ("up", "down")))
    transfer = BulkTransfer(env, paths, size_bytes, cc="cubic", mptcp=mptcp, snd_buf_bytes=settings.buffer_bytes,
                            rcv_buf_bytes=settings.buffer_bytes)
    env.run(until=env.any_of([transfer.done, env.timeout(600)]))
    record = transfer.result()
    counters = [p.counters() for pair in paths for p in pair]
    return {"goodput_bps": record.goodput_bps, "completed": record.completed, "retransmissions": record.retransmissions,
            "subflow_bytes": record.subflow_bytes,
            "timeouts": record.timeouts, "fast_recoveries": record.fast_recoveries, "subflows": record.subflows,
            "queue_drops": sum(c["queue_drops"] for c in counters),
            "loss_rate": sum(c["loss_drops"] for c in counters) / max(1, sum(c["sent"] for c in counters))}


def _drop_mp_capable_syns() -> Any:
    """The testbed's nft rule `tcp flags & (syn|ack) == syn tcp option mptcp subtype 0 drop` as a
    model middlebox policy (the scenario layer has no such box)."""
    from mpsim.proto.middlebox import Policy, SegmentClass, segment_classes
    from mpsim.wire.mptcp import MpCapable
    from mpsim.wire.segment import IpPacket

    class DropMpCapableSyns(Policy):
        name = "drop-mp-capable-syn"
        description = "drops SYNs (without ACK) carrying MP_CAPABLE"

        def apply(self, packet: Any, now: float) -> list:
            if isinstance(packet, IpPacket) and SegmentClass.SYN in segment_classes(packet.segment) \
                    and any(isinstance(o, MpCapable) for o in packet.segment.options):
                self.hits += 1
                return []
            return [packet]

    return DropMpCapableSyns()


def model_filters(middlebox: str) -> list[Any]:
    """The model policies equal to a testbed Middlebox field (applied on path 0, both directions)."""
    from mpsim.proto.middlebox import SegmentClass, StripMode, StripOptions, drop_syns_with_data
    from mpsim.wire.options import TcpOptionKind

    if middlebox == "strip_mptcp_syn":  # TCPOPTSTRIP: the option's bytes become NOPs
        return [StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN}, mode=StripMode.NOP)]
    if middlebox == "drop_mp_capable_syn":
        return [_drop_mp_capable_syns()]
    if middlebox == "drop_syn_data":
        return [drop_syns_with_data()]
    return []


def model_negotiation(settings: ModelSettings, middlebox: str, rate_bps: float,
                      knobs: dict[str, int]) -> dict[str, Any]:
    """The Convert negotiation in the SimPy scenario model, with the kernel's knobs: outcome,
    setup time, SYN and RST counts and times, the client host's MIB."""
    from mpsim.experiment.scenario import (Arrivals, ClientSpec, ConverterSpec, PathSpec, ProxyKind, Scenario,
                                           ServerSpec, WorkloadSpec)
    from mpsim.experiment.simulation import CLIENT, Simulation
    from mpsim.proto.mptcp import MptcpBlackholeState, MptcpPolicy
    from mpsim.proto.relay import ConverterTiming
    from mpsim.wire.segment import IpPacket, TcpFlags

    rate = rate_bps * settings.rate_factor
    path = PathSpec(rate_up_bps=rate, rate_down_bps=rate, delay_s=settings.one_way_delay_s,
                    queue_bytes=int(rate_bps / 8 * settings.queue_s * settings.rate_factor))
    scenario = Scenario(
        description=f"kernel benchmark: Convert through {middlebox}", duration_s=1.0, drain_s=120.0,
        # The live client waits on the kernel's SYN retries (tcp_syn_retries), not on a proxy budget.
        client=ClientSpec(scheme="convert", upstream_mptcp=True, proxy_syn_retries=knobs["tcp_syn_retries"],
                          syn_retries=knobs["tcp_syn_retries"]),
        converter=ConverterSpec(kind=ProxyKind.CONVERT, timing=ConverterTiming.SOCKET, delay_s=0.0),
        server=ServerSpec(delay_s=0.0), paths={"path0": path, "path1": path},
        workload=WorkloadSpec(arrivals=Arrivals.ONE))
    sim = Simulation(scenario, variant="kernel-bench", run_index=0, record_packets=True)
    # The scenario schema has no MPTCP policy: the client takes the kernel's values here.
    sim.client.mptcp_policy = MptcpPolicy(syn_retrans_before_tcp_fallback=knobs["syn_retrans_before_tcp_fallback"],
                                          blackhole_timeout_s=knobs["blackhole_timeout_s"])
    sim.client.mptcp_blackhole = MptcpBlackholeState(sim.client.mptcp_policy)
    # ... and the kernel's SYN schedule (tcp_syn_linear_timeouts: 0, 1, 2, 3 s on this kernel).
    sim.client.policy = replace(sim.client.policy, syn_linear_timeouts=knobs.get("tcp_syn_linear_timeouts", 0))
    network = sim.networks["path0"]
    for policy in model_filters(middlebox):
        network.up.filters.append(policy.forward)
        network.down.filters.append(policy)
    result = sim.run()
    record = result.connections[0]
    syn_times, rsts = [], 0
    for r in sim.trace.packets:
        if r.kind == "sent" and r.src == CLIENT and isinstance(r.packet, IpPacket):
            flags = r.packet.segment.flags
            if flags & TcpFlags.SYN and not flags & TcpFlags.ACK:
                syn_times.append(float(r.time_s))
            rsts += bool(flags & TcpFlags.RST)
    return {"outcome": record["outcome"], "fallback_reason": record["fallback_reason"],
            "via_converter": record["via_proxy"], "mptcp": record["mptcp"], "setup_s": record["setup_time_s"],
            "syns": record["syns_sent"], "rsts": record["rsts_sent"], "rst_packets": rsts,
            "syn_times_s": [round(t - syn_times[0], 4) for t in syn_times],
            "mib": {f"MPTcpExt.{k}": int(v) for k, v in sim.client.mib.items()}}


CLIENT_COUNTERS_NFT = """table ip mpsim_bench {
  counter syn_out { }
  counter syn_join_out { }
  counter rst_out { }
  chain output {
    type filter hook output priority 0; policy accept;
    tcp flags & (syn|ack) == syn tcp option mptcp subtype 1 counter name "syn_join_out"
    tcp flags & (syn|ack) == syn counter name "syn_out"
    tcp flags & rst == rst counter name "rst_out"
  }
}
"""


def _client_packet_counters(tb: Any) -> dict[str, int]:
    from mpsim.testbed.probe import run_command
    from mpsim.testbed.shaping import parse_nft_counters

    text = run_command(["nft", "-j", "list", "counters", "table", "ip", "mpsim_bench"], ns=tb.ns["client"]).stdout
    return {k.removesuffix(".packets"): v for k, v in parse_nft_counters(text).items() if k.endswith(".packets")}


class SynCapture:
    """tshark in the client namespace printing the times of SYNs and RSTs (optional: only when
    tshark is installed); started before and read after a run."""

    def __init__(self, tb: Any, log_dir: Path) -> None:
        self.peer: Peer | None = None
        self.client_addresses = set(tb.addresses.client)
        if shutil.which("tshark") is None:
            return
        argv = ["tshark", "-i", "any", "-l", "-n", "-f", "tcp[tcpflags] & (tcp-syn|tcp-rst) != 0", "-T", "fields",
                "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.flags.syn", "-e", "tcp.flags.ack",
                "-e", "tcp.flags.reset"]
        self.peer = Peer(tb, "client", argv, log_dir, "tshark")
        try:
            self.peer.wait_log("Capturing on", 20)
        except BenchError:
            self.peer.stop()
            self.peer = None

    def times(self) -> dict[str, list[float]] | None:
        if self.peer is None:
            return None
        time.sleep(0.3)
        self.peer.stop()
        syns, rsts = [], []
        for _ in range(10_000):
            line = self.peer.line(0.2)
            if line is None:
                break
            fields = line.split("\t")
            if len(fields) < 5 or fields[1] not in self.client_addresses:
                continue
            t, syn, ack, rst = float(fields[0]), fields[2] in ("1", "True"), fields[3] in ("1", "True"), \
                fields[4] in ("1", "True")
            if syn and not ack:
                syns.append(t)
            if rst:
                rsts.append(t)
        t0 = min(syns) if syns else 0.0
        return {"syn_times_s": [round(t - t0, 4) for t in syns], "rst_times_s": [round(t - t0, 4) for t in rsts]}


def _live_outcome(up: dict[str, Any]) -> str:
    """The model's outcome words for what the live client saw (mpsim.proto.events.Outcome)."""
    if up["received_bytes"] != up["bytes"]:
        return "failed"
    if up["via_converter"]:
        return "converted" if up["subflows"] > 0 else "fallback_tcp"
    return "fallback_tcp"


MPTCP_COMPARED = ("MPTcpExt.MPCapableSYNTX", "MPTcpExt.MPCapableSYNACKRX", "MPTcpExt.MPCapableFallbackSYNACK",
                  "MPTcpExt.MPCapableSYNTXDrop", "MPTcpExt.MPCapableDataFallback", "MPTcpExt.Blackhole",
                  "MPTcpExt.MPCapableSYNTXDisabled")


def _kernel_point(paths: list[Any], transfers: Sequence[tuple[str, int]], reps: int, log_dir: Path, *, capture: bool,
                  measure_rtt: bool = False) -> dict[str, Any]:
    """``reps`` rounds of uploads (route, bytes) on a fresh testbed, the converter with relay auto;
    per upload the client's SYN and RST counts and every namespace's counter deltas."""
    from mpsim.testbed import counter_delta
    from mpsim.testbed.probe import run_command

    with new_testbed(paths) as tb:
        run_command(["nft", "-f", "-"], ns=tb.ns["client"], input_text=CLIENT_COUNTERS_NFT)
        rtt = None
        if measure_rtt:
            probe = Peer(tb, "client", peer_argv("rtt", tb.addresses.server, 50), log_dir, "rtt")
            rtt = probe.json(30, "rtt result")
        services = Services(tb, log_dir)
        services.start_sinks(2 * reps * len(transfers) + 4, PEER_LIMIT_S * (reps * len(transfers) + 2))
        services.start_daemon("auto")
        uploads = []
        for _rep, (route, size_bytes) in ((r, t) for r in range(reps) for t in transfers):
            capture_run = SynCapture(tb, log_dir) if capture else None
            packets0, counters0 = _client_packet_counters(tb), {r: tb.counters(r) for r in tb.ns}
            rx0 = _path_rx_bytes(tb)
            up = upload(tb, services, route, size_bytes, log_dir, sample_cpu=False)
            packets1, rx1 = _client_packet_counters(tb), _path_rx_bytes(tb)
            deltas = {r: counter_delta(counters0[r], tb.counters(r)) for r in tb.ns}
            up |= {"outcome": _live_outcome(up), "syns": packets1["syn_out"] - packets0["syn_out"]
                   - (packets1["syn_join_out"] - packets0["syn_join_out"]),
                   "join_syns": packets1["syn_join_out"] - packets0["syn_join_out"],
                   "rsts": packets1["rst_out"] - packets0["rst_out"], "counter_deltas": deltas,
                   "path_rx_bytes": [b - a for a, b in zip(rx0, rx1)],
                   "capture": capture_run.times() if capture_run else None}
            uploads.append(up)
        facts = testbed_facts(tb) | {"daemon_counters": services.daemon_counters()}
    return {"uploads": uploads, "facts": facts, "rtt": rtt}


def _path_rx_bytes(tb: Any) -> list[int]:
    """Bytes the converter received on each path's veth (the uploads' data, framing included)."""
    from mpsim.testbed.probe import run_command

    files = [f"/sys/class/net/path{i}/statistics/rx_bytes" for i in range(len(tb.paths))]
    return [int(v) for v in run_command(["cat", *files], ns=tb.ns["converter"]).stdout.split()]


def _tcp_ext(deltas: dict[str, int], *names: str) -> int:
    return sum(deltas.get(f"TcpExt.{n}", 0) for n in names)


def model_vs_kernel(scale: Scale, log_dir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    from mpsim.testbed import Middlebox, PathSpec

    rows, testbeds = [], {}
    calibration: dict[str, Any] = {}

    def kernel_point(paths: list[Any], transfers: list[tuple[str, int]], reps: int, capture: bool) -> dict[str, Any]:
        point = _kernel_point(paths, transfers, reps, log_dir, capture=capture, measure_rtt=not calibration)
        if not calibration:  # the model's propagation delay: half the base RTT measured in the first testbed
            # (a lone SYN and its RST pass tbf at once on the bucket's tokens: no serialization to take off)
            calibration.update(settings=ModelSettings(one_way_delay_s=point["rtt"]["rtt_min_s"] / 2),
                               base_rtt=point["rtt"], knobs=kernel_policy_values(point["facts"]["sysctls"]["client"]))
        return point

    for rate_bps in scale.grid_rates_bps:
        for loss_prob in scale.grid_losses:
            label = f"{rate_bps / 1e6:g} Mbit/s, loss {loss_prob:.1%}"
            # MPTCP through the converter over both paths, and the control: plain TCP on path 0, no proxy
            transfers = [("converter-auto", int(2 * rate_bps * 1420 / 1514 / 8 * scale.grid_s)),
                         ("direct-tcp", int(rate_bps * 1448 / 1514 / 8 * scale.grid_s))]
            point = kernel_point([PathSpec(rate_bps=rate_bps, loss_prob=loss_prob, queue_s=QUEUE_S)] * 2, transfers,
                                 scale.grid_reps, capture=False)
            settings = calibration["settings"]
            testbeds[label] = point["facts"]
            for index, up in enumerate(point["uploads"]):
                rep, mptcp = index // len(transfers), up["route"] == "converter-auto"
                model = model_goodput(settings, rate_bps, loss_prob, up["bytes"], mptcp=mptcp, seed=rep + 1)
                rows.append(_grid_row(label, rate_bps, loss_prob, rep, up, model, point["facts"]["loss_counters"]))
                progress(f"model {label} {up['route']} rep {rep + 1}: kernel {up['goodput_bps'] / 1e6:.2f} Mbit/s, "
                         f"model {model['goodput_bps'] / 1e6:.2f} Mbit/s ({_pct(rows[-1]['goodput_error'])})")
    for middlebox in scale.middleboxes:
        box = Middlebox(**{middlebox: True}) if middlebox != "none" else None
        paths = [PathSpec(rate_bps=SHAPED_RATE_BPS, queue_s=QUEUE_S, middlebox=box),
                 PathSpec(rate_bps=SHAPED_RATE_BPS, queue_s=QUEUE_S)]
        size_bytes = int(SHAPED_RATE_BPS * 1420 / 1514 / 8 * scale.grid_s)  # scale.grid_s on one path
        point = kernel_point(paths, [("converter-auto", size_bytes)], 1, capture=True)
        settings = calibration["settings"]
        testbeds[f"middlebox {middlebox}"] = point["facts"]
        up = point["uploads"][0]
        negotiation = model_negotiation(settings, middlebox, SHAPED_RATE_BPS, calibration["knobs"])
        multipath = negotiation["outcome"] == "converted"
        model = model_goodput(settings, SHAPED_RATE_BPS, 0.0, size_bytes, mptcp=multipath, seed=1)
        rows.append(_middlebox_row(middlebox, size_bytes, up, negotiation, model))
        progress(f"model middlebox {middlebox}: kernel {rows[-1]['outcome_kernel']} in {up['setup_s']:.4f} s, "
                 f"model {negotiation['outcome']} in {negotiation['setup_s']:.4f} s; goodput "
                 f"{_pct(rows[-1]['goodput_error'])}")
    return {"rows": rows, "testbeds": testbeds, "kernel_knobs": calibration.get("knobs"),
            "base_rtt": calibration.get("base_rtt"),
            "model_settings": dataclasses.asdict(calibration["settings"]) if calibration else None,
            "hashes_ok": all(r["hash_ok"] for r in rows)}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _error(model: float | None, kernel: float | None) -> float | None:
    return (model - kernel) / kernel if model is not None and kernel else None


def _grid_row(label: str, rate_bps: float, loss_prob: float, rep: int, up: dict, model: dict,
              loss: dict) -> dict[str, Any]:
    mptcp = up["route"] == "converter-auto"
    ceiling = 2 * rate_bps * 1420 / 1514 if mptcp else rate_bps * 1448 / 1514
    deltas = up["counter_deltas"]["client"]
    measured_loss = [d["dropped_packets"] / d["seen_packets"] for p in loss.values() for d in p.values()
                     if d["seen_packets"]]
    return {
        "kind": "grid" if mptcp else "grid-tcp", "point": label, "route": up["route"],
        "transfer": "MPTCP via converter, 2 paths" if mptcp else "TCP direct, path 0", "rate_mbps": rate_bps / 1e6,
        "loss_prob": loss_prob, "middlebox": "none", "rep": rep, "bytes": up["bytes"], "hash_ok": up["hash_ok"],
        "goodput_kernel_mbps": up["goodput_bps"] / 1e6, "goodput_model_mbps": model["goodput_bps"] / 1e6,
        "goodput_error": _error(model["goodput_bps"], up["goodput_bps"]),
        "kernel_per_ceiling": up["goodput_bps"] / ceiling, "model_per_ceiling": model["goodput_bps"] / ceiling,
        "outcome_kernel": up["outcome"] if mptcp else "tcp", "outcome_model": None,  # transfers only here
        "subflows_kernel": up["subflows"], "subflows_model": model["subflows"],
        "syns_kernel": up["syns"], "join_syns_kernel": up["join_syns"], "rsts_kernel": up["rsts"],
        "loss_rate_kernel": statistics.mean(measured_loss) if measured_loss else 0.0,
        "loss_rate_model": model["loss_rate"],
        "rto_kernel": _tcp_ext(deltas, "TCPTimeouts"), "rto_model": model["timeouts"],
        "tlp_kernel": _tcp_ext(deltas, "TCPLossProbes"),
        "hystart_exits_kernel": _tcp_ext(deltas, "TCPHystartTrainDetect", "TCPHystartDelayDetect"),
        "path0_share_kernel": up["path_rx_bytes"][0] / max(1, sum(up["path_rx_bytes"])),
        "path0_share_model": model["subflow_bytes"][0] / max(1, sum(model["subflow_bytes"])),
        "mptcp_reinjections_kernel": deltas.get("MPTcpExt.MPTCPRetrans", 0),
        "duplicate_data_kernel": up["counter_deltas"]["converter"].get("MPTcpExt.DuplicateData", 0),
        "syn_retransmissions_kernel": _tcp_ext(deltas, "TCPSynRetrans"),
        "receiver_zero_window_kernel": up["counter_deltas"]["converter"].get("TcpExt.TCPFromZeroWindowAdv", 0),
        "fast_recoveries_kernel": _tcp_ext(deltas, "TCPSackRecovery", "TCPRenoRecovery"),
        "fast_recoveries_model": model["fast_recoveries"], "retransmissions_model": model["retransmissions"],
        "queue_drops_model": model["queue_drops"], "counter_deltas_kernel": up["counter_deltas"],
    }


def _middlebox_row(middlebox: str, size_bytes: int, up: dict, negotiation: dict, model: dict) -> dict[str, Any]:
    deltas = up["counter_deltas"]["client"]
    kernel_counters = {k: deltas.get(k, 0) for k in MPTCP_COMPARED}
    model_counters = {k: negotiation["mib"].get(k, 0) for k in MPTCP_COMPARED}
    capture = up["capture"] or {}
    return {
        "kind": "middlebox", "point": f"middlebox {middlebox}", "route": up["route"],
        "transfer": "through the converter, else TCP direct", "rate_mbps": SHAPED_RATE_BPS / 1e6, "loss_prob": 0.0,
        "middlebox": middlebox, "rep": 0, "bytes": size_bytes, "hash_ok": up["hash_ok"],
        "goodput_kernel_mbps": up["goodput_bps"] / 1e6, "goodput_model_mbps": model["goodput_bps"] / 1e6,
        "goodput_error": _error(model["goodput_bps"], up["goodput_bps"]),
        "outcome_kernel": up["outcome"], "outcome_model": negotiation["outcome"],
        "outcome_agrees": up["outcome"] == negotiation["outcome"],
        "via_converter_kernel": up["via_converter"], "via_converter_model": negotiation["via_converter"],
        "fallback_reason_model": negotiation["fallback_reason"], "convert_error_kernel": up["convert_error"],
        "subflows_kernel": up["subflows"], "subflows_model": model["subflows"],
        "setup_kernel_s": up["setup_s"], "setup_model_s": negotiation["setup_s"],
        "syns_kernel": up["syns"], "syns_model": negotiation["syns"], "join_syns_kernel": up["join_syns"],
        "rsts_kernel": up["rsts"], "rsts_model": negotiation["rsts"],
        "syn_times_kernel_s": capture.get("syn_times_s"), "syn_times_model_s": negotiation["syn_times_s"],
        "fastopen_kernel": {k.removeprefix("TcpExt."): v for k, v in deltas.items() if "FastOpen" in k},
        "mptcp_counters_kernel": kernel_counters, "mptcp_counters_model": model_counters,
        "mptcp_counters_differ": sorted(k.removeprefix("MPTcpExt.") for k in MPTCP_COMPARED
                                        if kernel_counters[k] != model_counters[k]),
        "server_connections_kernel": up["server_connections"], "counter_deltas_kernel": up["counter_deltas"],
    }


# --- results: JSON, CSV, Markdown, PNG ---------------------------------------------------------------


def run(name: str, scale: Scale, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """One benchmark at one scale; the JSON-able result (facts included)."""
    functions = {"fastpath": fastpath, "setup": setup, "model": model_vs_kernel}
    from mpsim.experiment.results import git_revision
    from mpsim.testbed import cleanup_stale

    cleanup_stale("mps")  # leftovers of killed earlier runs; live parallel testbeds are kept
    started, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mpsim-bench-kernel-") as scratch:
        result = functions[name](scale, Path(scratch), progress)
    return {"benchmark": f"kernel-{name}", "mpsim_version": __version__, "git": git_revision(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "scale": dataclasses.asdict(scale), "machine": machine() | {"load_average_before": load_before},
            "wall_s": time.monotonic() - started, **shared_facts(),
            "settings": {"congestion_control": "cubic", "tcp_buffer_max_bytes": 16 * MIB, "relay_cpu": RELAY_CPU,
                         "testbed_sysctls": TESTBED_SYSCTLS, "block_seed": BLOCK_SEED, "gb_bytes": GB},
            **result}


def _cell(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v, spec) for v in value) or "-"
    return str(value)


def _range(stats: dict, spec: str = ".2f") -> str:
    if not stats or stats.get("median") is None:
        return "-"
    return f"{stats['min']:{spec}} / {stats['median']:{spec}} / {stats['max']:{spec}}"


def _header(result: dict, title: str) -> list[str]:
    k, m, git = result["kernel"], result["machine"], result["git"] or {}
    revision = f"{git.get('commit', '?')[:10]}{'-dirty' if git.get('dirty') else ''}" if isinstance(git, dict) else git
    return [f"# {title}", "",
            f"mpsim {result['mpsim_version']} ({revision}), {result['date']}, scale `{result['scale']['name']}`, "
            f"{result['wall_s']:.0f} s. Linux {k['kernel_release']}, {k['cpus']} CPUs, Python {k['python']}; load "
            f"average {m['load_average_before'][0]:.1f} before, {m['load_average'][0]:.1f} after (other work shares "
            f"these cores). CUBIC pinned, tcp_rmem/tcp_wmem maxima 16 MiB, tcp_no_metrics_save=1, TFO 0x207. "
            "Every transfer's SHA-256 checked at the receiver: "
            f"{'all matched' if result['hashes_ok'] else 'MISMATCH'}.",
            ""]


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    align = ["---"] + ["---:"] * (len(columns) - 1)
    return [f"| {' | '.join(columns)} |", f"|{'|'.join(align)}|", *(f"| {' | '.join(r)} |" for r in rows)]


def _fastpath_markdown(result: dict) -> list[str]:
    lines = _header(result, "Kernel fast path: the converter against the direct kernel path and a peer relay")
    lines += ["Uploads client -> server, measured at the receiver; min / median / max over interleaved rounds; ratios "
              "computed per round against the direct runs of the same round. CPU s/GB: CPU seconds per 10^9 bytes. "
              "relay: the daemon's (or peer relay's) /proc/PID/stat, the relay pinned to CPU "
              f"{result['settings']['relay_cpu']} (every veth's receive softirq runs on CPU 0: rps_cpus=1); softirq: "
              "/proc/stat's softirq time, all CPUs (the packet processing of every hop); system: /proc/stat busy "
              "time, all CPUs, raw and net of the background measured just before each run; endpoints: the sender's "
              "and the receiver's own getrusage (the receiver hashes every byte); other load: busy CPUs of the "
              "machine in the 0.25 s before each run (2 = both cores busy with other work).", ""]
    keys = ("ratio_to_direct_mptcp", "ratio_to_direct_tcp", "relay_cpu_s_per_gb", "softirq_cpu_s_per_gb",
            "system_cpu_s_per_gb", "system_cpu_net_s_per_gb", "endpoints_cpu_s_per_gb", "background_busy_cpus")
    rows = [[s["session"], s["route"], str(s["runs"]), _range(s["goodput_mbps"], ".0f"),
             *(_range(s[k]) for k in keys), _cell(s["subflows"])] for s in result["summary"]]
    return lines + _table(["session", "route", "runs", "goodput Mbit/s", "/ direct MPTCP", "/ direct TCP",
                           "relay CPU s/GB", "softirq s/GB", "system CPU s/GB", "system net s/GB",
                           "endpoints CPU s/GB", "other load CPUs", "subflows"], rows)


def _setup_markdown(result: dict) -> list[str]:
    lines = _header(result, "Kernel setup: connection rate, setup latency and idle memory through the converter")
    lines += ["Sequential connections (set up, echo 100 bytes and check it, close) from one client process, "
              f"{result['scale']['churn_conns']} per route and round, routes interleaved; setup = until the path can "
              "carry data (direct: connect(); converter: the Convert reply read). Connections/s and the ratio (per "
              "round) min / median / max; latencies over every connection.", ""]
    lines += _table(["route", "connections", "per s", "/ direct MPTCP", "setup median ms", "setup p90 ms",
                     "connection median ms", "errors"],
                    [[r["route"], str(r["connections"]), _range(r["connections_per_s"], ".0f"),
                      _range(r["rate_ratio_to_direct_mptcp"]), _cell(r["setup_median_ms"], ".3f"),
                      _cell(r["setup_p90_ms"], ".3f"), _cell(r["connection_median_ms"], ".3f"), str(r["errors"])]
                     for r in result["churn"]])
    lines += ["", f"Idle connections ({result['scale']['idle_conns']} held at once, each after one 100-byte echo): "
              "slab bytes in use (/proc/slabinfo, machine-wide: client, relay and server sockets together) per "
              "connection, min / median / max over rounds; drift-corrected: against the mean of before and after the "
              "close. The proxy's share = the route's drift-corrected median minus the endpoints' sockets (half of "
              "direct MPTCP: the client's MPTCP socket and two subflows; half of direct TCP: the server's TCP "
              "socket).", ""]
    return lines + _table(["route", "rounds", "slab KB/conn", "drift-corrected KB/conn", "proxy share KB/conn",
                           "relay RSS KB/conn"],
                          [[m["route"], str(m["rounds"]), _range(m["slab_kb_per_conn"], ".1f"),
                            _range(m["slab_kb_per_conn_drift_corrected"], ".1f"),
                            _cell(m["proxy_share_kb_per_conn"], ".1f"), _range(m["relay_rss_kb_per_conn"], ".1f")]
                           for m in result["memory"]])


def _model_markdown(result: dict) -> list[str]:
    lines = _header(result, "The model against the kernel")
    s, rtt = result["model_settings"], result["base_rtt"]
    lines += [f"Model: one-way delay {s['one_way_delay_s'] * 1e6:.1f} us per path (half the testbed's base RTT: "
              f"{rtt['rtt_min_s'] * 1e6:.0f} us, the shortest of {rtt['samples']} connects to a closed port), rate x "
              f"1500/1514, queue {s['queue_s'] * 1e3:.0f} ms at rate, loss after the queue on both directions, CUBIC, "
              f"buffers {s['buffer_bytes'] // MIB} MiB. Kernel knobs copied: {result['kernel_knobs']}. Error = "
              "(model - kernel) / kernel. Ceiling: rate x 1420/1514 per path for MPTCP (DSS), x 1448/1514 for TCP. "
              "Explanations: docs/kernel-bench.md.", ""]
    grid = sorted((r for r in result["rows"] if r["kind"] != "middlebox"),
                  key=lambda r: r["kind"] == "grid-tcp")  # MPTCP rows first, then the TCP control
    lines += _table(["point", "transfer", "rep", "kernel Mbit/s", "model Mbit/s", "error", "kernel / ceiling",
                     "model / ceiling", "loss kernel", "loss model", "RTOs kernel", "TLPs kernel", "RTOs model",
                     "recoveries kernel", "recoveries model", "path 0 share k / m", "MPTCP reinjections k"],
                    [[r["point"], r["transfer"], str(r["rep"]), f"{r['goodput_kernel_mbps']:.2f}",
                      f"{r['goodput_model_mbps']:.2f}", _pct(r["goodput_error"]), f"{r['kernel_per_ceiling']:.3f}",
                      f"{r['model_per_ceiling']:.3f}", f"{r['loss_rate_kernel']:.2%}", f"{r['loss_rate_model']:.2%}",
                      *(str(r[k]) for k in ("rto_kernel", "tlp_kernel", "rto_model", "fast_recoveries_kernel",
                                            "fast_recoveries_model")),
                      f"{r['path0_share_kernel']:.2f} / {r['path0_share_model']:.2f}",
                      str(r["mptcp_reinjections_kernel"])] for r in grid])
    lines += ["", "Middlebox rules on path 0 (both paths 50 Mbit/s): the client's view (kernel: the live client and "
              "its namespace's counters; model: ClientHost's record and MIB). SYN times: every SYN the client sent "
              "(the kernel's include MP_JOIN), relative to the first.", ""]
    return lines + _table(["middlebox", "outcome kernel / model", "via converter k / m", "setup ms kernel / model",
                           "SYNs k / m", "RSTs k / m", "SYN times s kernel", "SYN times s model", "MPTcpExt differing",
                           "goodput k / m Mbit/s", "error"],
                          [[r["middlebox"], f"{r['outcome_kernel']} / {r['outcome_model']}",
                            f"{r['via_converter_kernel']} / {r['via_converter_model']}",
                            f"{1e3 * r['setup_kernel_s']:.2f} / {1e3 * r['setup_model_s']:.2f}",
                            f"{r['syns_kernel']} (+{r['join_syns_kernel']} join) / {r['syns_model']}",
                            f"{r['rsts_kernel']} / {r['rsts_model']}", _cell(r["syn_times_kernel_s"], ".2f"),
                            _cell(r["syn_times_model_s"], ".2f"), ", ".join(r["mptcp_counters_differ"]) or "none",
                            f"{r['goodput_kernel_mbps']:.1f} / {r['goodput_model_mbps']:.1f}",
                            _pct(r["goodput_error"])] for r in result["rows"] if r["kind"] == "middlebox"])


def markdown(result: dict) -> str:
    write = {"kernel-fastpath": _fastpath_markdown, "kernel-setup": _setup_markdown, "kernel-model": _model_markdown}
    return "\n".join(write[result["benchmark"]](result) + [""])


def csv_rows(result: dict) -> list[dict]:
    if result["benchmark"] == "kernel-fastpath":
        return result["rows"]
    if result["benchmark"] == "kernel-setup":
        churn = [{k: v for k, v in r.items() if not k.endswith("_us")} | {"table": "churn"}
                 for r in result["churn_rows"]]
        return churn + [r | {"table": "memory"} for r in result["memory_rows"]]
    return [{k: v for k, v in r.items() if k != "counter_deltas_kernel"} for r in result["rows"]]


def plot_model(result: dict, path: Path) -> None:
    """Predicted against measured goodput with the y = x line, and the error per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [1, 1.3]})
    styles = {"grid": ("o", "tab:blue", "MPTCP via converter, 2 paths"), "grid-tcp": ("^", "tab:green", "TCP direct"),
              "middlebox": ("s", "tab:orange", "middlebox rules")}
    for kind, (marker, colour, label) in styles.items():
        mine = [r for r in rows if r["kind"] == kind]
        ax.scatter([r["goodput_kernel_mbps"] for r in mine], [r["goodput_model_mbps"] for r in mine], marker=marker,
                   color=colour, label=label)
    top = max([r["goodput_kernel_mbps"] for r in rows] + [r["goodput_model_mbps"] for r in rows]) * 1.08
    ax.plot([0, top], [0, top], color="grey", linewidth=1, label="y = x")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="kernel goodput (Mbit/s)", ylabel="model goodput (Mbit/s)",
           title="Goodput: model against kernel")
    ax.legend()
    labels = [r["point"] if r["kind"] == "middlebox" else
              f"{r['point']}, {'TCP' if r['kind'] == 'grid-tcp' else 'MPTCP'} #{r['rep']}" for r in rows]
    errors = [100 * (r["goodput_error"] or 0.0) for r in rows]
    ax_err.barh(range(len(rows)), errors, color=[styles[r["kind"]][1] for r in rows])
    ax_err.set_yticks(range(len(rows)), labels, fontsize=8)
    ax_err.axvline(0, color="grey", linewidth=1)
    ax_err.invert_yaxis()
    ax_err.set(xlabel="error (model - kernel) / kernel (%)", title="Error per point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(result: dict, out_dir: Path) -> list[Path]:
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / result["benchmark"].replace("-", "_")
    paths = [*write_json_and_markdown(result, markdown(result), out_dir, stem.name), stem.with_suffix(".csv")]
    rows = csv_rows(result)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths[2], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in row.items()})
    if result["benchmark"] == "kernel-model":
        paths.append(stem.with_suffix(".png"))
        plot_model(result, paths[-1])
    return paths


def main(argv: Sequence[str] | None = None, *, prog: str = "mpsim bench kernel") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Kernel benchmarks of the live converter and of the "
                                     "model against the kernel, on the namespace testbed (root only).")
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs (about 3 minutes for all)")
    parser.add_argument("--out", type=Path, help="write kernel_<benchmark>.json/.csv/.md (and .png) here")
    parser.add_argument("--scale", choices=list(SCALES), help=argparse.SUPPRESS)  # smoke: the test suite's
    args = parser.parse_args(argv)
    reason = not_root_reason()
    if reason:
        print(f"{prog}: {reason}; run it as root (e.g. sudo {sys.executable} -m mpsim bench kernel ...)",
              file=sys.stderr)
        return 2
    scale = SCALES[args.scale or ("quick" if args.quick else "full")]
    names = BENCHMARKS if args.benchmark == "all" else (args.benchmark,)
    ok = True
    for name in names:
        result = run(name, scale, progress=lambda line: print(line, file=sys.stderr, flush=True))
        print(markdown(result))
        ok &= result["hashes_ok"]
        if args.out is not None:
            for path in write_results(result, args.out):
                print(f"written: {path}")
    return 0 if ok else 1
