"""The converter's CPU: a cost per connection set-up and per byte relayed (docs/sim.md, "The
converter's capacity").

A :class:`Cpu` is ``cores`` identical processors serving jobs first come, first served, each
job on one core from start to end (no preemption, no time slicing). Like a link's queue
(``link.py``) it is computed, not simulated: a job offered at ``now`` starts on the core that
frees first, at ``max(now, that core's free time)``, and ends ``cost_s`` later; only the
callback at the end costs a SimPy event. With one core, N jobs of cost c offered at once end at
c, 2c, ..., Nc.

Two kinds of job use one CPU, so set-ups wait behind relaying and the other way round:

* :meth:`Cpu.gate_setup`: a link direction's delivery to the converter node, where a new
  connection's first SYN waits for a set-up job before the proxy machine sees it (the
  converter's accept, its upstream connect and its bookkeeping, paid before it answers).
* :meth:`Cpu.after`: a job whose end runs a callback; the converter's relay
  (:class:`mpsim.sim.relay.RelayedTransfer`) copies each chunk from one leg to the other as a
  job of ``chunk bytes x cpu_per_byte_s``, one at a time per relayed connection, so one
  connection's relay rate is capped at ``1 / cpu_per_byte_s`` bytes/s of payload, and ``cores``
  of them share the CPU.

Simplified: the cost is per payload byte only (ACKs, headers and packets the kernel handles
without the relay cost nothing); the set-up cost is one job on the first SYN (a retransmitted
SYN costs another); no context-switch, cache or softirq effects beyond what the benchmark's
per-byte figure averages.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import simpy

from mpsim.sim.link import LinkDirection, schedule_call
from mpsim.wire.segment import IpPacket, TcpFlags

#: Defaults from `mpsim bench kernel` on this machine (benchmarks/results/, docs/kernel-bench.md):
#: the converter daemon's (route converter-auto) sequential conversions per second, median of
#: three rounds, 1179/s (kernel_setup.json, churn): a set-up costs at most 1/1179 s of one core
#: (that figure is the whole wall time of a sequential conversion, so it is an upper bound).
DEFAULT_SETUP_S = 1 / 1179
#: The relay's CPU per byte at household rates: converter-auto over two shaped 50 Mbit/s paths,
#: relay CPU 13.08 s/GB median (kernel_fastpath.json; the relay wakes per packet or two). The
#: unshaped bulk figure is 0.45 s/GB (the same route at 2.8 Gbit/s).
DEFAULT_RELAY_CPU_S_PER_GB = 13.08


class Cpu:
    """``cores`` processors, first come first served (see the module doc)."""

    def __init__(self, env: simpy.Environment, cores: int, *, name: str = "cpu") -> None:
        if type(cores) is not int or cores < 1:
            raise ValueError(f"cores must be a positive int, got {cores!r}")
        self.env = env
        self.name = name
        self.cores = cores
        self._free_s = [0.0] * cores  # a heap of the times each core frees
        self.jobs = 0
        self.busy_s = 0.0
        self.wait_s_max = 0.0

    def reserve(self, cost_s: float, not_before_s: float = 0.0) -> float:
        """Run a job of ``cost_s`` offered now (starting no earlier than ``not_before_s``);
        returns when it ends."""
        if not cost_s >= 0:
            raise ValueError(f"cost_s must be >= 0, got {cost_s!r}")
        now = self.env.now
        free_s = heapq.heappop(self._free_s)
        start_s = max(now, free_s, not_before_s)
        end_s = start_s + cost_s
        heapq.heappush(self._free_s, end_s)
        self.jobs += 1
        self.busy_s += cost_s
        self.wait_s_max = max(self.wait_s_max, start_s - now)
        return end_s

    def after(self, cost_s: float, callback: Callable[[], None], not_before_s: float = 0.0) -> float:
        """Run a job, then ``callback()`` at its end; returns the end time."""
        end_s = self.reserve(cost_s, not_before_s)
        schedule_call(self.env, end_s - self.env.now, lambda _event: callback())
        return end_s

    def gate_setup(self, direction: LinkDirection, setup_s: float) -> None:
        """Make a new connection's SYN on ``direction`` (delivering to the converter) wait for a
        set-up job of ``setup_s`` before it is delivered; every other packet passes at once."""
        deliver = direction.deliver
        if deliver is None:
            raise ValueError(f"link direction {direction.name!r} is connected to nothing")

        def gated(packet: Any) -> None:
            if isinstance(packet, IpPacket):
                flags = packet.segment.flags
                if flags & TcpFlags.SYN and not flags & TcpFlags.ACK:
                    self.after(setup_s, lambda: deliver(packet))
                    return
            deliver(packet)

        direction.deliver = gated

    def counters(self) -> dict[str, float]:
        return {"jobs": self.jobs, "busy_us": round(self.busy_s * 1e6), "wait_us_max": round(self.wait_s_max * 1e6)}
