"""Simulated links: one :class:`LinkDirection` per direction, two of them make a :class:`Link`.

A packet offered to a direction goes through, in order:

1. the middlebox **filters** (``(packet, now) -> list[packet]``, e.g. the policies of
   :mod:`mpsim.proto.middlebox`), for ``IpPacket``\\ s and ICMP messages, and for light transfer
   segments those with ``accepts_light_segments`` (:mod:`mpsim.sim.light_filter`);
2. the **loss** model (:mod:`mpsim.sim.loss`);
3. a **drop-tail queue** bounded in packets or bytes;
4. **serialization** at ``rate_bps``: ``size_bytes * 8 / rate_bps`` seconds, first in first out,
   the link busy until the last bit of the previous packet has left;
5. **propagation**: arrival = departure + ``delay_s`` (+ a uniform draw in ``[0, jitter_s)``);
6. **delivery** to the ``deliver`` callback (the receiving node's port), at the arrival time.

A direction may instead shape as Linux's token bucket filter does (``burst_bytes``, net/sched/
sch_tbf.c, Linux 6.18; :meth:`LinkDirection._depart_tbf`): a packet leaves as soon as the bucket
holds its length, and the bucket refills at ``rate_bps`` up to ``burst_bytes``, full at the start;
the device behind the qdisc takes no time (a veth or an IFB), so after an idle spell up to
``burst_bytes`` pass at once. ``framing_bytes`` is what the shaper counts beyond the IP length
(14: the Ethernet header, which tbf charges on the veth and the IFB), for the rate, the bucket and
the queue alike. The kernel world shapes its paths this way (``mpsim compare`` gives the model the
same shaper: docs/kernel-world.md).

Simplifications: the queue is computed, not simulated: each accepted packet's departure time is
known when it is offered (``max(now, busy_until) + size * 8 / rate``), so a direction costs one
SimPy event per delivered packet and no process. The packet being serialized does not count
towards the queue limit (as in Linux qdiscs and ns-3, where it has left the queue for the
device). Jitter is drawn per packet, independently, so packets may be **reordered** and may
arrive closer together than the rate allows; ``jitter_s = 0`` keeps the order. No link-layer
framing: a packet occupies its IP length on the wire. An infinite rate (``rate_bps=None``)
never queues. Packet sizes: see :func:`packet_size_bytes`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Protocol

import simpy
from simpy.events import NORMAL, Event

from mpsim.proto.middlebox import IcmpUnreachable
from mpsim.sim.loss import LossModel, NoLoss
from mpsim.wire.segment import IPV4_HEADER_MIN_BYTES, IPV6_HEADER_BYTES, IpPacket

#: A middlebox stage: the packets that continue (none: dropped). Same shape as the harness's.
PacketFilter = Callable[[Any, float], list]

ICMP_HEADER_BYTES = 8
#: RFC 792: an ICMPv4 error quotes the original IP header and its first 64 bits of data.
ICMPV4_QUOTED_DATA_BYTES = 8
#: RFC 4443 2.4(c): an ICMPv6 error quotes as much of the original as fits in the minimum MTU.
IPV6_MIN_MTU_BYTES = 1280

#: Types whose instances carry their link size in ``size_bytes`` and are never IpPackets: the
#: light segments of :mod:`mpsim.sim.transfer` register themselves here (that module imports
#: this one, not the other way round).
LIGHT_PACKET_TYPES: set[type] = set()
#: ``deliver`` callbacks that only pass a light segment on along its route
#: (``segment.route.arrived``): :func:`mpsim.sim.route.forward_segment` registers itself. A
#: direction that delivers to one moves the segment on itself, passing the arrival time.
LIGHT_FORWARDERS: set[Callable[[Any], None]] = set()


def packet_size_bytes(packet: Any) -> int:
    """The bytes ``packet`` occupies on a link.

    * ``IpPacket``: its exact encoded length (``len(encode_packet(packet))``, worked out when the
      packet was built): IPv4 20 + options or IPv6 40, TCP 20 + options padded to 4, the payload.
    * ``IcmpUnreachable``: IPv4 20 + ICMP 8 + the quoted IP header + 8 bytes of it (56 bytes for
      an original without IP options, RFC 792; Linux would quote up to 576 bytes in all);
      IPv6 40 + 8 + as much of the original as fits in 1280 bytes (RFC 4443).
    * anything else: its ``size_bytes`` attribute (the light packets of :mod:`mpsim.sim.transfer`).
    """
    if isinstance(packet, IpPacket):
        return packet.length_bytes
    if isinstance(packet, IcmpUnreachable):
        original = packet.original
        if original.src.version == 4:
            quoted = IPV4_HEADER_MIN_BYTES + len(original.ipv4_options) + ICMPV4_QUOTED_DATA_BYTES
            return IPV4_HEADER_MIN_BYTES + ICMP_HEADER_BYTES + quoted
        room = IPV6_MIN_MTU_BYTES - IPV6_HEADER_BYTES - ICMP_HEADER_BYTES
        return IPV6_HEADER_BYTES + ICMP_HEADER_BYTES + min(packet_size_bytes(original), room)
    return packet.size_bytes


class DueCall(Event):
    """An event that is a success from birth, processed ``delay_s`` from now at ``priority``.

    SimPy's public API makes events that are born triggered only at NORMAL priority
    (``env.timeout``; ``succeed()`` also schedules at NORMAL, for now). A chosen priority needs an
    event subclass that is triggered when created, which is how SimPy's own ``Timeout`` and
    ``Initialize`` are written: this subclass declares the outcome of all its instances (a
    success with value None) as class attributes, sets only the public ``env`` and ``callbacks``,
    and schedules itself with the public ``env.schedule``. Nothing sets SimPy's private fields.
    """

    _ok = True
    _value = None

    def __init__(self, env: simpy.Environment, delay_s: float, priority: int,
                 callback: Callable[[Event], None]) -> None:
        # What Event.__init__ does, inlined as Timeout does (one of these per delivered packet).
        self.env = env
        self.callbacks = [callback]
        env.schedule(self, priority, delay_s)


class LightArrival(Event):
    """The arrival of a light segment sent by :meth:`LinkDirection.send_light_at`: a success
    from birth, like :class:`DueCall`, that carries the segment (``packet``, ``packet_id``) and
    its due time (``due_s``) to the direction's one bound callback, so no ``partial`` is made per
    segment and hop. Built without ``__init__`` (see there).

    Once processed, its direction arms it again for a later segment (new callbacks, a new
    ``env.schedule``) instead of making another event: no one else ever holds one (nothing
    yields on it or waits for it), and SimPy's ``step`` is done with an event once its
    callbacks have run (it reads the class's ``_ok`` only). Scheduling is unchanged, so the
    order of events is too."""

    __slots__ = ("packet", "packet_id", "due_s")  # (env and callbacks: the instance dict, as any Event)
    _ok = True
    _value = None


_new_event = object.__new__  # an Event is a plain object (no __new__ of its own)


def schedule_call(env: simpy.Environment, delay_s: float, callback: Callable[[Event], None],
                  priority: int = NORMAL) -> Event:
    """Run ``callback(event)`` after ``delay_s`` simulated seconds, without a SimPy process.

    At equal times, lower priorities run first (SimPy's own events use URGENT 0 and NORMAL 1);
    among equal priorities, the order of scheduling. At NORMAL this pushes the same
    ``(time, priority, sequence)`` entry onto SimPy's queue as ``env.timeout(delay_s)`` would.
    """
    if delay_s < 0:
        raise ValueError(f"schedule_call: delay_s must be >= 0, got {delay_s}")
    return DueCall(env, delay_s, priority, callback)


class PacketTracer(Protocol):
    """What a direction needs from a trace (see :class:`mpsim.sim.trace.Trace`)."""

    record_packets: bool

    def packet(self, time_s: float, direction: LinkDirection, kind: str, packet: Any, packet_id: int,
               reason: str | None = None) -> None: ...


@dataclass(slots=True)
class LinkCounters:
    """Packets and bytes per fate. ``sent``: offered by the sending node; a filter that splits
    one packet makes ``delivered`` exceed ``sent``. ``dropped_filter`` counts offered packets of
    which the filters let nothing through."""

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_delivered: int = 0
    bytes_delivered: int = 0
    packets_dropped_filter: int = 0
    bytes_dropped_filter: int = 0
    packets_dropped_loss: int = 0
    bytes_dropped_loss: int = 0
    packets_dropped_queue: int = 0
    bytes_dropped_queue: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DropReason:
    """Why a direction dropped a packet (the ``reason`` of a trace record)."""

    FILTER = "filter"
    LOSS = "loss"
    QUEUE = "queue"


class LinkDirection:
    """One direction of a link: filters -> loss -> drop-tail queue -> serialization -> delay.

    ``send(packet)`` offers a packet at ``env.now``; ``deliver(packet)`` is called at its arrival
    (a :class:`Link` sets it to the receiving node's port). ``rng`` drives the jitter only; the
    loss model has its own. ``counters`` holds the totals; ``trace`` (set directly or by
    :class:`Link`) records every packet when its ``record_packets`` is on.
    """

    def __init__(self, env: simpy.Environment, name: str, *, delay_s: float, rate_bps: float | None = None,
                 queue_limit_bytes: int | None = None, queue_limit_packets: int | None = None,
                 jitter_s: float = 0.0, rng: Any = None, loss: LossModel | None = None,
                 filters: Iterable[PacketFilter] = (), deliver: Callable[[Any], None] | None = None,
                 trace: PacketTracer | None = None, burst_bytes: int | None = None, framing_bytes: int = 0) -> None:
        if not delay_s >= 0:
            raise ValueError(f"{name}: delay_s must be >= 0, got {delay_s!r}")
        if rate_bps is not None and not rate_bps > 0:
            raise ValueError(f"{name}: rate_bps must be > 0 (None: infinite), got {rate_bps!r}")
        if queue_limit_bytes is not None and queue_limit_packets is not None:
            raise ValueError(f"{name}: give queue_limit_bytes or queue_limit_packets, not both")
        for field_name, limit in (("queue_limit_bytes", queue_limit_bytes),
                                  ("queue_limit_packets", queue_limit_packets)):
            if limit is not None and (type(limit) is not int or limit < 0):
                raise ValueError(f"{name}: {field_name} must be an int >= 0 (None: unbounded), got {limit!r}")
        if not jitter_s >= 0:
            raise ValueError(f"{name}: jitter_s must be >= 0, got {jitter_s!r}")
        if jitter_s > 0 and rng is None:
            raise ValueError(f"{name}: jitter_s > 0 needs an rng of its own (see mpsim.sim.seeds)")
        if type(framing_bytes) is not int or framing_bytes < 0:
            raise ValueError(f"{name}: framing_bytes must be an int >= 0, got {framing_bytes!r}")
        if burst_bytes is not None:
            if rate_bps is None:
                raise ValueError(f"{name}: burst_bytes needs a rate_bps (a token bucket refills at the rate)")
            if type(burst_bytes) is not int or burst_bytes < 1:
                raise ValueError(f"{name}: burst_bytes must be an int >= 1 (None: no token bucket), got {burst_bytes!r}")
        self.env = env
        self.name = name
        self.delay_s = float(delay_s)
        self.rate_bps = None if rate_bps is None else float(rate_bps)
        self.queue_limit_bytes = queue_limit_bytes
        self.queue_limit_packets = queue_limit_packets
        self.jitter_s = float(jitter_s)
        self.rng = rng
        self.loss = loss if loss is not None else NoLoss()
        self.filters = list(filters)  # the property below also keeps the light-segment subset
        self.deliver = deliver
        self.trace = trace
        self.counters = LinkCounters()
        # Where the direction sits, for traces: set by Link; a lone direction is its own link.
        self.link_name = name
        self.label = "forward"
        self.src_node: str | None = None
        self.dst_node: str | None = None
        self.dst_port: str | None = None  # the port of dst_node it arrives on (set by Link)
        self.busy_until_s = 0.0  # when the last bit of the last accepted packet leaves
        self._waiting: deque[tuple[float, int]] = deque()  # (start of serialization, size) of queued packets
        self._waiting_bytes = 0
        self._ids = itertools.count(1)
        self.framing_bytes = framing_bytes
        self.burst_bytes = burst_bytes
        if burst_bytes is not None:
            # the bucket in bytes at the instant tokens_s; sch_tbf's tbf_change fills it
            self._tokens_bytes = float(burst_bytes)
            self._tokens_s = 0.0
            self._depart = self._depart_tbf  # type: ignore[method-assign]
        elif framing_bytes:
            self._depart = self._depart_framed  # type: ignore[method-assign]
        self._light_arrived = self._arrive_light  # bound once: the callback of every LightArrival
        self._spare_arrivals: list[LightArrival] = []  # processed ones, to be armed again (send_light_at)
        #: A ``deliver`` known to pass light segments on along their route, as the LIGHT_FORWARDERS
        #: do: a node's port that says so (set by Link). Replacing ``deliver`` ends it.
        self.light_forwarder: Callable[[Any], None] | None = None

    def __repr__(self) -> str:
        return f"<LinkDirection {self.name}>"

    @property
    def filters(self) -> list:
        """The middlebox filters. Negotiation packets go through all of them; the light segments of
        :mod:`mpsim.sim.transfer` only through those with ``accepts_light_segments``
        (:class:`mpsim.sim.light_filter.LightFilter`)."""
        return self._filters

    @filters.setter
    def filters(self, filters: Iterable[PacketFilter]) -> None:
        self._filters = list(filters)
        self._light_filters = [f for f in self._filters if getattr(f, "accepts_light_segments", False)]

    # --- the queue ------------------------------------------------------------------------------

    def _dequeue_started(self, now: float) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            self._waiting_bytes -= waiting.popleft()[1]

    def queued_packets(self) -> int:
        """Packets waiting for the link at ``env.now`` (the one being serialized excluded)."""
        self._dequeue_started(self.env.now)
        return len(self._waiting)

    def queued_bytes(self) -> int:
        self._dequeue_started(self.env.now)
        return self._waiting_bytes

    # --- packets ----------------------------------------------------------------------------------

    def send(self, packet: Any) -> bool:
        """Offer ``packet`` at ``env.now``; True if it (or a packet a filter made of it) will arrive."""
        now = self.env.now
        trace = self.trace
        if type(packet) in LIGHT_PACKET_TYPES and not self._light_filters and type(self.loss) is NoLoss \
                and (trace is None or not trace.record_packets):
            # The bulk of all packets: a transfer's light segment on a direction with nothing that
            # filters, drops at random or records it (the same conditions send_light_at checks).
            return self.send_light_at(packet, now)
        if type(packet) is IpPacket and not self._filters and type(self.loss) is NoLoss \
                and (trace is None or not trace.record_packets):
            # A negotiating machine's packet on such a direction: the same short path (a separate
            # branch, so that the light segments' test above stays what it was).
            return self._send_unfiltered(packet, packet.length_bytes, now)
        size_bytes = packet_size_bytes(packet)
        counters = self.counters
        counters.packets_sent += 1
        counters.bytes_sent += size_bytes
        packet_id = next(self._ids)
        recording = trace is not None and trace.record_packets
        if recording:
            trace.packet(now, self, "sent", packet, packet_id)
        packets = [packet]
        filters = self._filters
        if filters and (isinstance(packet, (IpPacket, IcmpUnreachable)) or self._light_filters):
            for packet_filter in filters if isinstance(packet, (IpPacket, IcmpUnreachable)) else self._light_filters:
                packets = [out for p in packets for out in packet_filter(p, now)]
            if not packets:
                counters.packets_dropped_filter += 1
                counters.bytes_dropped_filter += size_bytes
                if recording:
                    trace.packet(now, self, "dropped", packet, packet_id, DropReason.FILTER)
                return False
        accepted = False
        loss = self.loss
        lossy = type(loss) is not NoLoss  # NoLoss.drops is always False: not asked, per packet
        for out in packets:
            out_bytes = size_bytes if out is packet else packet_size_bytes(out)
            if lossy and loss.drops(out, now):
                counters.packets_dropped_loss += 1
                counters.bytes_dropped_loss += out_bytes
                if recording:
                    trace.packet(now, self, "dropped", out, packet_id, DropReason.LOSS)
                continue
            arrival_s = self._depart(now, out_bytes)
            if arrival_s is None:
                counters.packets_dropped_queue += 1
                counters.bytes_dropped_queue += out_bytes
                if recording:
                    trace.packet(now, self, "dropped", out, packet_id, DropReason.QUEUE)
                continue
            arrival_s += self.delay_s
            if self.jitter_s:
                arrival_s += self.rng.random() * self.jitter_s
            # arrival_s >= now by construction: DueCall directly (schedule_call checks the delay)
            DueCall(self.env, arrival_s - now, NORMAL, partial(self._arrive, out, out_bytes, packet_id))
            accepted = True
        return accepted

    def send_light_at(self, segment: Any, now: float) -> bool:
        """:meth:`send` for a transfer's light segment, ``now`` being ``env.now`` (a route passes
        on the time its segment arrived: reading ``env.now``, a property, costs a Python call).

        On a direction with nothing that filters, drops at random or records, the steps of
        :meth:`send` without their tests and without DueCall's constructor: every bulk segment
        takes this path once per hop, so each call saved here is one per segment and hop. The
        departure stays :meth:`_depart`'s (called, not copied: a direction may shape otherwise
        with a ``_depart`` of its own), and the event is scheduled as DueCall schedules it, so
        times and the order of events stay bit for bit. Anything else goes through :meth:`send`."""
        trace = self.trace
        if self._light_filters or type(self.loss) is not NoLoss or (trace is not None and trace.record_packets):
            return self.send(segment)
        size_bytes = segment.size_bytes
        counters = self.counters
        counters.packets_sent += 1
        counters.bytes_sent += size_bytes
        packet_id = next(self._ids)
        arrival_s = self._depart(now, size_bytes)
        if arrival_s is None:
            counters.packets_dropped_queue += 1
            counters.bytes_dropped_queue += size_bytes
            return False
        arrival_s += self.delay_s
        if self.jitter_s:
            arrival_s += self.rng.random() * self.jitter_s
        delay_s = arrival_s - now
        # A LightArrival that has been processed is armed again (its callbacks, as Event.__init__
        # sets them); else one is made without a constructor call (a Python __init__ called from
        # C costs more than the stores). Then env.schedule as for any event; due_s is SimPy's own
        # sum (env.now + delay).
        env = self.env
        spare = self._spare_arrivals
        if spare:
            event = spare.pop()
        else:
            event = _new_event(LightArrival)
            event.env = env
        event.callbacks = [self._light_arrived]
        event.packet = segment
        event.packet_id = packet_id
        event.due_s = now + delay_s
        env.schedule(event, NORMAL, delay_s)
        return True

    def _send_unfiltered(self, packet: Any, size_bytes: int, now: float) -> bool:
        """The light segments' short path of :meth:`send`, for a packet nothing filters, drops at
        random or records."""
        counters = self.counters
        counters.packets_sent += 1
        counters.bytes_sent += size_bytes
        packet_id = next(self._ids)
        arrival_s = self._depart(now, size_bytes)
        if arrival_s is None:
            counters.packets_dropped_queue += 1
            counters.bytes_dropped_queue += size_bytes
            return False
        arrival_s += self.delay_s
        if self.jitter_s:
            arrival_s += self.rng.random() * self.jitter_s
        DueCall(self.env, arrival_s - now, NORMAL, partial(self._arrive, packet, size_bytes, packet_id))
        return True

    def _depart(self, now: float, size_bytes: int) -> float | None:
        """When the packet's last bit leaves, or None if the queue is full (drop-tail)."""
        if self.rate_bps is None:
            return now
        start_s = self.busy_until_s if self.busy_until_s > now else now
        if start_s > now:  # the link is busy: the packet waits in the queue
            waiting = self._waiting
            while waiting and waiting[0][0] <= now:  # _dequeue_started, inlined (once per queued packet)
                self._waiting_bytes -= waiting.popleft()[1]
            if self.queue_limit_packets is not None and len(self._waiting) >= self.queue_limit_packets:
                return None
            if self.queue_limit_bytes is not None and self._waiting_bytes + size_bytes > self.queue_limit_bytes:
                return None
            self._waiting.append((start_s, size_bytes))
            self._waiting_bytes += size_bytes
        self.busy_until_s = start_s + size_bytes * 8 / self.rate_bps
        return self.busy_until_s

    def _depart_framed(self, now: float, size_bytes: int) -> float | None:
        """:meth:`_depart` with the shaper counting ``framing_bytes`` more per packet."""
        return LinkDirection._depart(self, now, size_bytes + self.framing_bytes)

    def _depart_tbf(self, now: float, size_bytes: int) -> float | None:
        """When the packet leaves a token bucket filter (net/sched/sch_tbf.c ``tbf_dequeue``, Linux
        6.18), or None if its queue is full: first in first out, it leaves once the bucket holds
        its framed length (the bucket grows at the rate, at most to ``burst_bytes``) and takes
        those tokens; the device behind it adds no time. The queue (tbf's child bfifo) holds the
        packets not yet gone, limited in framed bytes."""
        size_bytes += self.framing_bytes
        start_s = self.busy_until_s if self.busy_until_s > now else now  # after the one before
        if self._waiting:  # tbf_enqueue: the child queue's limit, over the packets not yet gone
            self._dequeue_started(now)
        if self.queue_limit_packets is not None and len(self._waiting) >= self.queue_limit_packets:
            return None
        if self.queue_limit_bytes is not None and self._waiting_bytes + size_bytes > self.queue_limit_bytes:
            return None
        bytes_per_s = self.rate_bps / 8  # type: ignore[operator]
        tokens = self._tokens_bytes + (start_s - self._tokens_s) * bytes_per_s
        if tokens > self.burst_bytes:  # type: ignore[operator]
            tokens = float(self.burst_bytes)  # type: ignore[arg-type]
        if tokens >= size_bytes:
            depart_s = start_s
            tokens -= size_bytes
        else:  # it waits for the tokens it lacks
            depart_s = start_s + (size_bytes - tokens) / bytes_per_s
            tokens = 0.0
        self._tokens_bytes, self._tokens_s = tokens, depart_s
        if depart_s > now:
            self._waiting.append((depart_s, size_bytes))
            self._waiting_bytes += size_bytes
        self.busy_until_s = depart_s
        return depart_s
    def _arrive_light(self, event: LightArrival) -> None:
        """:meth:`_arrive` for a segment sent by :meth:`send_light_at`: a segment on its route
        moves on with the arrival time (``env.now``) at hand."""
        packet = event.packet
        now = event.due_s
        counters = self.counters
        counters.packets_delivered += 1
        counters.bytes_delivered += packet.size_bytes
        trace = self.trace
        if trace is not None and trace.record_packets:
            trace.packet(now, self, "delivered", packet, event.packet_id)
        event.packet = None
        self._spare_arrivals.append(event)  # read out and processed: free for a later segment
        deliver = self.deliver
        if deliver is None:
            raise RuntimeError(f"link direction {self.name!r} delivered a packet but is connected to nothing")
        if deliver is self.light_forwarder or deliver in LIGHT_FORWARDERS:
            packet.route.arrived_at(packet, now)
        else:
            deliver(packet)

    def _arrive(self, packet: Any, size_bytes: int, packet_id: int, _event: Event) -> None:
        self.counters.packets_delivered += 1
        self.counters.bytes_delivered += size_bytes
        trace = self.trace
        if trace is not None and trace.record_packets:
            trace.packet(self.env.now, self, "delivered", packet, packet_id)
        if self.deliver is None:
            raise RuntimeError(f"link direction {self.name!r} delivered a packet but is connected to nothing")
        self.deliver(packet)


class LinkEnd(Protocol):
    """What a :class:`Link` connects: a :class:`~mpsim.sim.node.SimNode` or anything alike."""

    name: str

    def attach(self, port: str, direction: LinkDirection) -> None: ...

    def receive(self, port: str, packet: Any) -> None: ...


class Link:
    """Two directions between ``a_node``'s ``a_port`` and ``b_node``'s ``b_port``.

    ``forward`` carries a -> b, ``backward`` b -> a. The link names both directions for traces
    (``name``, default ``"a:a_port-b:b_port"``) and gives them ``trace`` (default the a-node's
    trace, else the b-node's) unless they have one already.
    """

    def __init__(self, env: simpy.Environment, a_node: LinkEnd, a_port: str, b_node: LinkEnd, b_port: str, *,
                 forward: LinkDirection, backward: LinkDirection, name: str | None = None,
                 trace: PacketTracer | None = None) -> None:
        if forward is backward:
            raise ValueError("forward and backward must be two LinkDirection objects")
        self.env = env
        self.name = name or f"{a_node.name}:{a_port}-{b_node.name}:{b_port}"
        self.forward, self.backward = forward, backward
        if trace is None:
            trace = getattr(a_node, "trace", None)
        if trace is None:
            trace = getattr(b_node, "trace", None)
        for direction, label, src, dst, dst_port in ((forward, "forward", a_node, b_node, b_port),
                                                     (backward, "backward", b_node, a_node, a_port)):
            if direction.deliver is not None:
                raise ValueError(f"link direction {direction.name!r} is already connected")
            direction.link_name, direction.label = self.name, label
            direction.src_node, direction.dst_node, direction.dst_port = src.name, dst.name, dst_port
            direction.deliver = partial(dst.receive, dst_port)
            if getattr(dst, "forwards_light_segments", False):  # a SimNode: the direction moves them on itself
                direction.light_forwarder = direction.deliver
            if direction.trace is None:
                direction.trace = trace
        a_node.attach(a_port, forward)
        b_node.attach(b_port, backward)

    def __repr__(self) -> str:
        return f"<Link {self.name}>"
