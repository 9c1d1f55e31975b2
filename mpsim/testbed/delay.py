"""The testbed's own delay line, for kernels without netem: a transparent two-port forwarder.

    python -m mpsim.testbed.delay --port-a c0 --port-b s0 --delay-s 0.02 [--jitter-s 0.001]
        [--loss bernoulli:0.01 | --loss ge:P_GOOD_TO_BAD,P_BAD_TO_GOOD,LOSS_GOOD,LOSS_BAD]
        [--seed N] [--loss-seeds UP,DOWN] [--loss-tcp-only] [--loss-held] [--stats FILE]
        [--queue-packets N]

It runs in a namespace of its own that holds two veth ends with no addresses, ``port-a`` and
``port-b``, spliced into one testbed path (docs/testbed.md). Every Ethernet frame that arrives on
one port (ARP and IPv6 included: the line is an L2 wire, invisible to IP) is read from an AF_PACKET
socket with the kernel's receive timestamp (SO_TIMESTAMPNS), held until that timestamp plus the
delay, and written unchanged to the other port. Both directions get the same delay, jitter and
loss model, with independent random streams.

- **Delay** counts from the kernel's receive timestamp, not from when Python got to the frame, so
  the forwarder's own latency only matters when it exceeds the delay. Sleeps use select() with the
  timer slack at 1 us (prctl), asking to wake early by a running mean of how late past wake-ups
  were (60-80 us after a 10-50 ms sleep in this VM: an idle vCPU takes that long to resume); with
  ``--realtime`` (the testbed's default as root) the process runs SCHED_FIFO, so other work on the
  machine does not delay the wake-up.
- **Jitter**: each frame's delay is ``delay_s`` plus a uniform draw in [-jitter_s, +jitter_s]
  (netem's default distribution), clamped at 0, and never earlier than the frame before it in the
  same direction: jitter never reorders (netem's does, unless rate-limited).
- **Loss** (decided on arrival, so a lost frame takes no queue room): ``bernoulli:P`` and
  ``ge:...``, the same definitions as the model's loss models (mpsim/sim/loss.py: ``Bernoulli``,
  ``GilbertElliott``, per packet, the chain starting in its stationary state): both are built on
  :mod:`mpsim.proto.loss`, the layer the simulator and the testbed share (docs/design.md), and
  tests/testbed checks that both make identical decisions from one random stream. Each direction
  draws from its own generator: ``random.Random("<seed>:loss.ab")`` (and ``...ba``) by default, or
  ``random.Random(UP)`` / ``random.Random(DOWN)`` with ``--loss-seeds UP,DOWN`` (a to b is up):
  the kernel world passes the seeds of the model's link directions of that path and run index,
  so both worlds take their losses from one stream (docs/kernel-world.md, "Loss: one stream for
  both worlds").
- ``--loss-tcp-only``: draw (and lose) only TCP frames over IPv4 or IPv6, the packets the model
  has; ARP, neighbour discovery, ICMP (the delay check's pings) and everything else pass undrawn
  and unharmed, so the n-th TCP packet of a direction meets the n-th draw in both worlds.
- ``--loss-held``: no frame is drawn or lost until SIGUSR2 arms the loss (the statistics, written on
  the next turn of the loop, then say ``"loss_armed": true``), so the testbed's bring-up probes take no
  draw meant for the workload.
- **Bounded**: at most ``--queue-packets`` frames held per direction (default 100 000: 50 ms at
  about 24 Gbit/s of full frames); beyond that a frame is dropped and counted.

Statistics (frames in, forwarded, lost, overflowed, and the lateness of each send against its due
time: min, median, p99, max) are written as JSON to ``--stats`` on SIGUSR1 and at exit (SIGTERM or
SIGINT), together with the process's CPU seconds. The first line on stdout is ``ready`` once both
sockets are bound. Linux only, as root (CAP_NET_RAW).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import errno
import json
import math
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from mpsim.proto.loss import BernoulliLoss, GilbertElliottLoss

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20+: the socket does not see frames sent on its interface
PACKET_OUTGOING = 4          # sll_pkttype of a frame this host sent
ETH_HEADER_BYTES = 14
ETHERTYPE_IPV4 = b"\x08\x00"
ETHERTYPE_IPV6 = b"\x86\xdd"
IPPROTO_TCP = 6
IPV4_PROTOCOL_OFFSET = ETH_HEADER_BYTES + 9   # RFC 791: the protocol byte of the IPv4 header
IPV6_NEXT_HEADER_OFFSET = ETH_HEADER_BYTES + 6  # RFC 8200: the next-header byte of the fixed header
MAX_SEED = 2**64 - 1        # the model's seeds are 64-bit (mpsim/sim/seeds.py)
SO_TIMESTAMPNS = 35          # SCM_TIMESTAMPNS: struct timespec of the receive time (CLOCK_REALTIME)
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
PR_SET_TIMERSLACK = 29
MAX_FRAME_BYTES = 65_535
RCVBUF_BYTES = 8 << 20      # room for bursts while the loop sends (the kernel doubles it)
SNDBUF_BYTES = 16 << 20     # a sent frame is charged here until the far end's shaper queue frees it
DEFAULT_QUEUE_PACKETS = 100_000
BATCH = 256                 # frames read per socket and wake-up before the queues are served again
IDLE_WAKE_S = 0.5           # longest sleep with nothing queued (signals are handled at once anyway)
INITIAL_WAKE_MARGIN_S = 50e-6  # select() wake-up lateness to expect until measured
MAX_WAKE_MARGIN_S = 500e-6     # never plan on more than this (a long stall is not the norm)
SEND_EARLY_S = 5e-6            # a frame this close to due goes now rather than after another sleep
SEND_RETRY_S = 0.01            # how long a frame the far side has no room for is retried, then dropped
LATENESS_BUCKET_S = 5e-6    # lateness histogram resolution
LATENESS_BUCKETS = 4000     # up to 20 ms; later sends land in the last bucket (the max is exact)


class DelayLineError(ValueError):
    """A bad delay-line argument; the message names it."""


def parse_loss(text: str | None, rng: random.Random) -> BernoulliLoss | GilbertElliottLoss | None:
    """``bernoulli:P`` or ``ge:P_GOOD_TO_BAD,P_BAD_TO_GOOD[,LOSS_GOOD[,LOSS_BAD]]`` (defaults 0 and 1,
    the Gilbert model), or None for no loss."""
    if not text:
        return None
    kind, _, args = text.partition(":")
    try:
        values = [float(v) for v in args.split(",")] if args else []
    except ValueError:
        raise DelayLineError(f"--loss {text!r}: the parameters must be numbers") from None
    try:
        if kind == "bernoulli" and len(values) == 1:
            return BernoulliLoss(values[0], rng)
        if kind == "ge" and 2 <= len(values) <= 4:
            values += [0.0, 1.0][len(values) - 2:]
            return GilbertElliottLoss(*values, rng=rng)
    except ValueError as err:
        raise DelayLineError(f"--loss {text!r}: {err}") from None
    raise DelayLineError(f"--loss {text!r}: expected bernoulli:P or ge:P_GOOD_TO_BAD,P_BAD_TO_GOOD[,LOSS_GOOD"
                         "[,LOSS_BAD]]")


def is_tcp_frame(frame: bytes) -> bool:
    """True for an Ethernet frame carrying TCP over IPv4, or over IPv6 with TCP right after the
    fixed header (the testbed's packets have no extension headers); False for ARP, ICMP, ND, ...."""
    kind = frame[12:14]
    if kind == ETHERTYPE_IPV4:
        return len(frame) > IPV4_PROTOCOL_OFFSET and frame[IPV4_PROTOCOL_OFFSET] == IPPROTO_TCP
    if kind == ETHERTYPE_IPV6:
        return len(frame) > IPV6_NEXT_HEADER_OFFSET and frame[IPV6_NEXT_HEADER_OFFSET] == IPPROTO_TCP
    return False


def parse_loss_seeds(text: str | None) -> tuple[int, int] | None:
    """``UP,DOWN`` (two integers 0..2**64-1) for ``--loss-seeds``, or None."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        seeds = tuple(int(part) for part in parts)
    except ValueError:
        seeds = ()
    if len(seeds) != 2 or not all(0 <= seed <= MAX_SEED for seed in seeds):
        raise DelayLineError(f"--loss-seeds {text!r}: expected UP,DOWN, two integers 0..{MAX_SEED}")
    return seeds[0], seeds[1]


def loss_rngs(seed: int, loss_seeds: tuple[int, int] | None) -> tuple[random.Random, random.Random]:
    """The loss generators of the two directions (a to b, b to a): from ``loss_seeds`` (up, down)
    as the model seeds its links' loss (``random.Random(derive_seed(...))``), else from ``seed``."""
    if loss_seeds is not None:
        return random.Random(loss_seeds[0]), random.Random(loss_seeds[1])
    return random.Random(f"{seed}:loss.ab"), random.Random(f"{seed}:loss.ba")


def loss_argument(spec: Any) -> str | None:
    """The ``--loss`` text for a Gilbert-Elliott tuple (p_good_to_bad, p_bad_to_good, loss_good,
    loss_bad) as PathSpec carries it, or None."""
    if not spec:
        return None
    return "ge:" + ",".join(repr(float(v)) for v in spec)


class Lateness:
    """Send time minus due time, as a bounded histogram (5 us buckets) plus the exact extremes."""

    def __init__(self) -> None:
        self.counts = [0] * LATENESS_BUCKETS
        self.n, self.total_s, self.min_s, self.max_s = 0, 0.0, math.inf, -math.inf

    def add(self, late_s: float) -> None:
        """late_s < 0 (up to SEND_EARLY_S early) counts in the first bucket; min and mean keep the sign."""
        self.n += 1
        self.total_s += late_s
        self.min_s = min(self.min_s, late_s)
        self.max_s = max(self.max_s, late_s)
        self.counts[min(LATENESS_BUCKETS - 1, max(0, int(late_s / LATENESS_BUCKET_S)))] += 1

    def quantile(self, q: float) -> float | None:
        """Upper edge of the bucket holding quantile q (so at most 5 us pessimistic)."""
        if not self.n:
            return None
        rank, seen = math.ceil(q * self.n), 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(self.max_s, (index + 1) * LATENESS_BUCKET_S)
        return self.max_s

    def as_dict(self) -> dict[str, Any]:
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "min_s": self.min_s, "mean_s": self.total_s / self.n, "median_s": self.quantile(0.5),
                "p99_s": self.quantile(0.99), "max_s": self.max_s}


class Direction:
    """One direction of the line: frames read from ``rx``, held, written to ``tx``."""

    def __init__(self, name: str, rx: Any, tx: Any, loss: Any, jitter_rng: random.Random,
                 queue_packets: int, *, loss_tcp_only: bool = False, loss_armed: bool = True) -> None:
        self.name, self.rx, self.tx, self.loss, self.rng = name, rx, tx, loss, jitter_rng
        self.loss_tcp_only, self.loss_armed = loss_tcp_only, loss_armed
        self.drawn = 0
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queue_packets = queue_packets
        self.last_due = 0.0
        self.frames_in = self.forwarded = self.lost = self.overflow = self.send_errors = self.send_retries = 0
        self.bytes_forwarded = 0
        self.send_error_kinds: collections.Counter[str] = collections.Counter()
        self.lateness = Lateness()

    def stats(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "forwarded": self.forwarded, "bytes_forwarded": self.bytes_forwarded,
                "drawn": self.drawn, "lost": self.lost, "overflow": self.overflow, "send_errors": self.send_errors,
                "send_retries": self.send_retries, "send_error_kinds": dict(self.send_error_kinds),
                "queued": len(self.queue), "lateness": self.lateness.as_dict()}

    def loses(self, frame: bytes) -> bool:
        """The loss decision for one arriving frame: a draw from this direction's stream, unless
        the loss is held or (with ``loss_tcp_only``) the frame is not TCP, which then passes undrawn."""
        if self.loss is None or not self.loss_armed or (self.loss_tcp_only and not is_tcp_frame(frame)):
            return False
        self.drawn += 1
        if self.loss.lost():
            self.lost += 1
            return True
        return False


def open_port(ifname: str) -> socket.socket:
    """An AF_PACKET socket on ``ifname`` seeing every frame it receives (not those it sends), with
    kernel receive timestamps, non-blocking."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # older kernels: outgoing frames are skipped by their sll_pkttype instead
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF_BYTES),
                               (SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF_BYTES)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, size)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def _timer_slack_1us() -> None:
    """select() wakes up to the timer slack (50 us by default) late; 1 us keeps that out of the delay."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def direction_losses(loss: str | None, seed: int = 1, loss_seeds: tuple[int, int] | None = None) -> tuple[Any, Any]:
    """The loss processes of the two directions (a to b, b to a), each on its own generator
    (:func:`loss_rngs`); (None, None) without ``loss``."""
    parse_loss(loss, random.Random(0))  # a bad argument fails here, named, before any generator is used
    rng_ab, rng_ba = loss_rngs(seed, loss_seeds)
    return parse_loss(loss, rng_ab), parse_loss(loss, rng_ba)


class DelayLine:
    """The forwarder: two ports, two directions, one loop."""

    def __init__(self, port_a: str, port_b: str, delay_s: float, jitter_s: float = 0.0, loss: str | None = None,
                 seed: int = 1, queue_packets: int = DEFAULT_QUEUE_PACKETS, *,
                 loss_seeds: tuple[int, int] | None = None, loss_tcp_only: bool = False,
                 loss_held: bool = False) -> None:
        if not (math.isfinite(delay_s) and 0 <= delay_s <= 10):
            raise DelayLineError(f"--delay-s {delay_s}: expected 0..10 seconds")
        if not (math.isfinite(jitter_s) and 0 <= jitter_s <= delay_s):
            raise DelayLineError(f"--jitter-s {jitter_s}: expected 0..delay_s ({delay_s})")
        if not 1 <= queue_packets <= 10_000_000:
            raise DelayLineError(f"--queue-packets {queue_packets}: expected 1..10000000")
        self.delay_s, self.jitter_s = delay_s, jitter_s
        self.settings = {"port_a": port_a, "port_b": port_b, "delay_s": delay_s, "jitter_s": jitter_s,
                         "loss": loss, "seed": seed, "queue_packets": queue_packets,
                         "loss_seeds": list(loss_seeds) if loss_seeds else None, "loss_tcp_only": loss_tcp_only,
                         "loss_held": loss_held}
        losses = direction_losses(loss, seed, loss_seeds)  # checks the argument before opening anything
        jitter = {name: random.Random(f"{seed}:{name}") for name in ("jitter.ab", "jitter.ba")}
        a, b = open_port(port_a), open_port(port_b)
        self.directions = (Direction("a_to_b", a, b, losses[0], jitter["jitter.ab"], queue_packets,
                                     loss_tcp_only=loss_tcp_only, loss_armed=not loss_held),
                           Direction("b_to_a", b, a, losses[1], jitter["jitter.ba"], queue_packets,
                                     loss_tcp_only=loss_tcp_only, loss_armed=not loss_held))
        self.by_socket = {d.rx: d for d in self.directions}
        self.started = time.time()
        self.wake_margin_s = INITIAL_WAKE_MARGIN_S

    def _read(self, d: Direction) -> None:
        """Up to BATCH frames from d.rx into d.queue, each due at its receive time + delay."""
        cmsg_size = socket.CMSG_SPACE(16)
        for _ in range(BATCH):
            try:
                frame, ancdata, _flags, address = d.rx.recvmsg(MAX_FRAME_BYTES, cmsg_size)
            except (BlockingIOError, InterruptedError):
                return
            if address[2] == PACKET_OUTGOING:
                continue
            received = None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", data[:16])
                    received = seconds + nanoseconds * 1e-9
            if received is None:
                received = time.time()
            d.frames_in += 1
            if d.loses(frame):
                continue
            if len(d.queue) >= d.queue_packets:
                d.overflow += 1
                continue
            hold = self.delay_s
            if self.jitter_s:
                hold = max(0.0, hold + d.rng.uniform(-self.jitter_s, self.jitter_s))
            due = max(received + hold, d.last_due)  # FIFO: jitter never reorders
            d.last_due = due
            d.queue.append((due, frame))

    def _learn_wake_lateness(self, late_s: float) -> None:
        """An exponentially weighted mean of how late select() returns (tens of us here, more in a
        busy VM), so the loop asks to wake that much before a frame is due."""
        late_s = min(MAX_WAKE_MARGIN_S, max(0.0, late_s))
        self.wake_margin_s += (late_s - self.wake_margin_s) / 16

    def _send_due(self, now: float) -> None:
        now += SEND_EARLY_S
        for d in self.directions:
            queue = d.queue
            while queue and queue[0][0] <= now:
                due, frame = queue[0]
                try:
                    d.tx.send(frame)
                except OSError as err:
                    # EAGAIN: our send buffer is full (a sent frame stays charged to this socket while
                    # it waits in the far end's shaper queue); ENOBUFS: the far end's backlog is full.
                    # Keep the frame at the head and retry on the next turn of the loop, bounded in time.
                    if err.errno in (errno.EAGAIN, errno.ENOBUFS) and time.time() - due < SEND_RETRY_S:
                        d.send_retries += 1
                        break
                    d.send_errors += 1
                    d.send_error_kinds[errno.errorcode.get(err.errno, str(err.errno))] += 1
                    queue.popleft()
                    continue
                queue.popleft()
                d.lateness.add(time.time() - due)
                d.forwarded += 1
                d.bytes_forwarded += len(frame)

    def run(self, stats_path: str | None, *, ready: bool = True, run_for_s: float | None = None) -> dict[str, Any]:
        """Forward until SIGTERM/SIGINT (or ``run_for_s``); write stats on SIGUSR1 and at the end."""
        flags = {"stop": False, "dump": False}
        dumps = 0

        def on_stop(_signum, _frame):
            flags["stop"] = True

        def on_dump(_signum, _frame):
            flags["dump"] = True

        def on_arm(_signum, _frame):
            # Armed in the handler itself, between two frames: the next frame read is drawn for.
            for d in self.directions:
                d.loss_armed = True
            flags["dump"] = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGUSR1, on_dump)
        signal.signal(signal.SIGUSR2, on_arm)
        sockets = [d.rx for d in self.directions]
        if ready:
            print("ready", flush=True)
        end = time.time() + run_for_s if run_for_s is not None else math.inf
        while not flags["stop"] and time.time() < end:
            if flags["dump"]:
                flags["dump"] = False
                dumps += 1
                self.write_stats(stats_path, dumps)
            heads = [d.queue[0][0] for d in self.directions if d.queue]
            # Sleep until the head frame is due, minus how late wake-ups have been running.
            timeout = min(heads) - time.time() - self.wake_margin_s if heads else IDLE_WAKE_S
            timeout = max(0.0, min(timeout, IDLE_WAKE_S))
            asleep = time.time()
            try:
                readable = select.select(sockets, [], [], timeout)[0]
            except InterruptedError:
                readable = [None]
            if not readable and timeout > 0:  # woke by the clock: learn how late the kernel woke us
                self._learn_wake_lateness(time.time() - asleep - timeout)
            for s in readable:
                if s is not None:
                    self._read(self.by_socket[s])
            self._send_due(time.time())
        return self.write_stats(stats_path, dumps + 1)

    def stats(self) -> dict[str, Any]:
        cpu = os.times()
        return {"settings": self.settings, "pid": os.getpid(), "wall_s": time.time() - self.started,
                "wake_margin_s": self.wake_margin_s, "loss_armed": all(d.loss_armed for d in self.directions),
                "cpu_s": cpu.user + cpu.system, "directions": {d.name: d.stats() for d in self.directions}}

    def write_stats(self, path: str | None, dumps: int) -> dict[str, Any]:
        stats = self.stats() | {"dumps": dumps}
        if path:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(stats, f)
            os.replace(tmp, path)  # readers never see half a file
        return stats


def read_stats(path: str) -> dict[str, Any] | None:
    """The last statistics a delay line wrote to ``path``, or None before its first write."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def argv(port_a: str, port_b: str, delay_s: float, *, jitter_s: float = 0.0, loss: str | None = None, seed: int = 1,
         stats_path: str | None = None, realtime: bool = True, loss_seeds: tuple[int, int] | None = None,
         loss_tcp_only: bool = False, loss_held: bool = False) -> list[str]:
    """The command line that runs a delay line (with this interpreter)."""
    out = [sys.executable, "-m", "mpsim.testbed.delay", "--port-a", port_a, "--port-b", port_b,
           "--delay-s", repr(float(delay_s)), "--jitter-s", repr(float(jitter_s)), "--seed", str(seed)]
    if loss:
        out += ["--loss", loss]
    if loss_seeds is not None:
        out += ["--loss-seeds", f"{loss_seeds[0]},{loss_seeds[1]}"]
    if loss_tcp_only:
        out.append("--loss-tcp-only")
    if loss_held:
        out.append("--loss-held")
    if stats_path:
        out += ["--stats", stats_path]
    if realtime:
        out.append("--realtime")
    return out


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mpsim.testbed.delay``."""
    parser = argparse.ArgumentParser(prog="python -m mpsim.testbed.delay",
                                     description="Hold every frame between two interfaces for a delay "
                                                 "(docs/testbed.md: the delay line).")
    parser.add_argument("--port-a", required=True, help="one interface (no address needed)")
    parser.add_argument("--port-b", required=True, help="the other interface")
    parser.add_argument("--delay-s", type=float, required=True, help="one-way delay, each direction")
    parser.add_argument("--jitter-s", type=float, default=0.0, help="uniform jitter +-, without reordering")
    parser.add_argument("--loss", help="bernoulli:P or ge:P_GOOD_TO_BAD,P_BAD_TO_GOOD[,LOSS_GOOD[,LOSS_BAD]]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss-seeds", help="UP,DOWN: seed each direction's loss generator with random.Random(N) "
                                             "(a to b is up), as the model seeds its links' loss")
    parser.add_argument("--loss-tcp-only", action="store_true",
                        help="draw and lose only TCP frames (IPv4/IPv6); ARP, ND, ICMP pass undrawn")
    parser.add_argument("--loss-held", action="store_true", help="no loss and no draws until SIGUSR2 arms it")
    parser.add_argument("--queue-packets", type=int, default=DEFAULT_QUEUE_PACKETS)
    parser.add_argument("--stats", help="write statistics (JSON) here on SIGUSR1 and at exit")
    parser.add_argument("--realtime", action="store_true", help="run SCHED_FIFO (root) for punctual wake-ups")
    parser.add_argument("--run-for-s", type=float, help=argparse.SUPPRESS)
    return parser


def main(args: Sequence[str] | None = None) -> int:
    opts = parser().parse_args(args)
    try:
        line = DelayLine(opts.port_a, opts.port_b, opts.delay_s, opts.jitter_s, opts.loss, opts.seed,
                         opts.queue_packets, loss_seeds=parse_loss_seeds(opts.loss_seeds),
                         loss_tcp_only=opts.loss_tcp_only, loss_held=opts.loss_held)
    except (DelayLineError, OSError) as err:
        print(f"delay line: {err}", file=sys.stderr)
        return 2
    _timer_slack_1us()
    if opts.realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except (OSError, AttributeError) as err:
            print(f"delay line: SCHED_FIFO refused ({err}); running with normal priority", file=sys.stderr)
    line.run(opts.stats, run_for_s=opts.run_for_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
