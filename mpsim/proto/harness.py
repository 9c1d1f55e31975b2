"""A deterministic event loop that runs machines against each other without SimPy.

This is the third driver of docs/design.md section 1 (the one tests and the truth table use): a
virtual clock, point-to-point hops with a fixed one-way delay, and optional per-hop packet
filters (a middlebox policy, a scripted loss). Everything is ordered by (time, sequence number),
so the same inputs give the same run. The simulator in mpsim.sim adds rates, queues and random
loss; this harness has none of them on purpose.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any, Protocol

from mpsim.proto.host import Transmit
from mpsim.wire.segment import IpPacket

#: A filter sees each packet entering a hop and returns the packets to deliver (none = dropped).
PacketFilter = Callable[[IpPacket, float], list[IpPacket]]


class Machine(Protocol):
    def receive(self, port: str, packet: IpPacket, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def outgoing(self, now: float) -> list: ...

    def next_event(self) -> Any | None: ...


@dataclass
class Hop:
    """One direction of a link: packets leaving ``src``'s ``src_port`` reach ``dst``'s ``dst_port``."""

    dst: str
    dst_port: str
    delay_s: float
    filters: list[PacketFilter] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A packet that crossed a hop (or was dropped on it), for traces and assertions."""

    time_s: float
    src: str
    dst: str
    packet: IpPacket
    dropped: bool = False


class Harness:
    """Machines by name, hops between their ports, and a virtual clock."""

    def __init__(self) -> None:
        self.machines: dict[str, Machine] = {}
        self.hops: dict[tuple[str, str], Hop] = {}
        self.now = 0.0
        self.log: list[Delivery] = []
        self.events: list[tuple[float, str, Any]] = []
        self._queue: list[tuple[float, int, str, str, str, IpPacket]] = []  # (time, seq, src, dst, dst_port, packet)
        self._seq = 0
        self._filtered = False  # a packet filter ran in the last flush (it may command any machine)

    def add(self, name: str, machine: Machine) -> Machine:
        self.machines[name] = machine
        return machine

    def link(self, a: str, a_port: str, b: str, b_port: str, delay_s: float,
             a_to_b: list[PacketFilter] | None = None, b_to_a: list[PacketFilter] | None = None) -> None:
        """A bidirectional link with the same one-way delay both ways and per-direction filters."""
        self.hops[(a, a_port)] = Hop(b, b_port, delay_s, list(a_to_b or []))
        self.hops[(b, b_port)] = Hop(a, a_port, delay_s, list(b_to_a or []))

    def flush(self) -> None:
        """Move every machine's pending packets onto their hops and collect their events."""
        self._flush()

    def _flush(self) -> list[str]:
        """:meth:`flush`; returns the machines that sent a packet or reported an event."""
        active: list[str] = []
        self._filtered = False
        for name, machine in self.machines.items():
            transmits = machine.outgoing(self.now)
            if transmits:
                active.append(name)
            for transmit in transmits:
                hop = self.hops.get((name, transmit.port))
                if hop is None:
                    raise KeyError(f"{name} sent on port {transmit.port!r}, which is not linked")
                packets = [transmit.packet]
                if hop.filters:
                    self._filtered = True
                for packet_filter in hop.filters:
                    packets = [out for p in packets for out in packet_filter(p, self.now)]
                if not packets:
                    self.log.append(Delivery(self.now, name, hop.dst, transmit.packet, dropped=True))
                for packet in packets:
                    self._seq += 1
                    arrival_s = self.now + hop.delay_s
                    heapq.heappush(self._queue, (arrival_s, self._seq, name, hop.dst, hop.dst_port, packet))
            while (event := machine.next_event()) is not None:
                if not active or active[-1] != name:
                    active.append(name)
                self.events.append((self.now, name, event))
        return active

    def run(self, until_s: float, max_steps: int = 1_000_000) -> None:
        """Advance the clock, delivering packets and firing timers, up to ``until_s``.

        Each machine's next deadline is asked once at the start and then again only after the
        machine had an input (a packet, its timer) or sent or reported something: a sans-I/O
        machine's deadline changes only then (commands given between runs are seen at the start;
        after a flush in which a packet filter ran, which may command any machine, every machine
        is asked again).
        """
        machines, queue = self.machines, self._queue
        self._flush()
        timers = {name: machine.get_timer() for name, machine in machines.items()}
        for _ in range(max_steps):
            next_timer = None
            for t in timers.values():
                if t is not None and (next_timer is None or t < next_timer):
                    next_timer = t
            next_packet = queue[0][0] if queue else None
            if next_packet is None:
                next_s = next_timer
            else:
                next_s = next_packet if next_timer is None or next_packet <= next_timer else next_timer
            if next_s is None or next_s > until_s:
                self.now = max(self.now, until_s)
                return
            # A deadline a machine left in the past fires late; the clock never runs backwards.
            if next_s > self.now:
                self.now = next_s
            if next_packet is not None and next_packet <= self.now:
                _, _, src, dst, dst_port, packet = heapq.heappop(queue)
                self.log.append(Delivery(self.now, src, dst, packet))
                machines[dst].receive(dst_port, packet, self.now)
                touched = [dst]
            else:
                touched = [name for name, t in timers.items() if t is not None and t <= self.now]
                for name in touched:
                    machines[name].handle_timer(self.now)
            touched += self._flush()
            for name in machines if self._filtered else touched:
                timers[name] = machines[name].get_timer()
        raise RuntimeError(f"harness did not reach t={until_s} within {max_steps} steps")

    def events_of(self, name: str, kind: type | None = None) -> list[Any]:
        """The events machine ``name`` reported, optionally only those of type ``kind``."""
        return [e for _, n, e in self.events if n == name and (kind is None or isinstance(e, kind))]


def drop_matching(predicate: Callable[[IpPacket], bool], count: int | None = None) -> PacketFilter:
    """A filter that drops the packets ``predicate`` selects: all of them, or the first ``count``
    (a scripted loss, e.g. ``drop_matching(lambda p: p.segment.flags & TcpFlags.RST)``)."""
    dropped = 0

    def packet_filter(packet: IpPacket, now: float) -> list[IpPacket]:
        nonlocal dropped
        if predicate(packet) and (count is None or dropped < count):
            dropped += 1
            return []
        return [packet]

    return packet_filter


class Router:
    """A forwarding node for harness topologies: each packet leaves on the port whose networks
    contain its destination (longest prefix first). It forwards IP packets and ICMP messages
    alike (anything with a ``dst``) and drops what no route covers."""

    def __init__(self, routes: dict[str, list[str]]) -> None:
        self.routes = sorted(((ip_network(net), port) for port, nets in routes.items() for net in nets),
                             key=lambda route: -route[0].prefixlen)
        self._out: list[Any] = []
        self.unroutable = 0

    def port_for(self, address: Any) -> str | None:
        """The port a packet for ``address`` leaves by (None: unroutable): the lookup of
        :meth:`receive`, for whoever needs the route without a packet (the simulator's transfer
        routes, mpsim/sim/route.py)."""
        for network, out_port in self.routes:
            if address.version == network.version and address in network:
                return out_port
        return None

    def receive(self, port: str, packet: Any, now: float) -> None:
        for network, out_port in self.routes:
            if packet.dst.version == network.version and packet.dst in network:
                self._out.append(Transmit(out_port, packet))
                return
        self.unroutable += 1

    def outgoing(self, now: float) -> list:
        out, self._out = self._out, []
        return out

    def handle_timer(self, now: float) -> None:
        return None

    def get_timer(self) -> float | None:
        return None

    def next_event(self) -> Any | None:
        return None
