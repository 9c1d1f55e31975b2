"""Middleboxes on transfer segments: a proto middlebox policy applied to :mod:`mpsim.sim.transfer`'s
light segments (docs/sim.md, "Middleboxes on transfers").

A :class:`LightFilter` wraps one direction's filter of a built box (:class:`mpsim.proto.middlebox.BuiltBox`).
Negotiation packets (``IpPacket``, ICMP) go to the policy as before. A light segment the policy
could change is converted with :meth:`Segment.to_ip_packet`, run through the policy, and what comes
out is mapped back onto light segments:

* unchanged (the very packet given) -> the same light segment, no copy;
* dropped -> dropped;
* the MPTCP option removed (DSS, MP_JOIN, MP_TCPRST) -> a copy marked ``mptcp=False``, so its
  receiver sees no option (RFC 8684 3.7 then decides, in the transfer);
* split -> one light segment per part, each with its part of the sequence space, DSN and payload;
* coalesced (:meth:`LightFilter.process` on a batch) -> one segment covering the parts; it keeps
  the first part's DSN (as the wire segment keeps the first DSS mapping) and is read as mapping
  the parts whose DSNs follow on (Linux maps a whole TSO skb with one DSS, so such merges lose
  nothing); parts after a DSN gap have no mapping on the wire and become a segment of their own
  without MPTCP option (:func:`_unmapped_tail`), which RFC 8684 3.7 handling then resets;
* sequence numbers, ACKs, SACK blocks, addresses or ports rewritten -> mapped back as the
  segment's receiver would read them: a box that shifts a flow's numbers and shifts them back on
  the way in (``seq-rewrite``), or translates addresses and back (``nat``), leaves the light
  segments as they were; a box that does so inconsistently delivers the shifted numbers.

The two filters of one box share a :class:`WireView`: what the up side learned (a flow's sequence
offset from its SYN, its translated address) is applied when the down side builds the wire form
of the reply, so that a two-way box sees on the way back what it would see on a real wire. A
flow whose first packet reaches a two-way box in the down direction (the negotiated subflow of a
download: its SYN crossed the box during the negotiation) is first announced to the box's up side
by a pure ACK of the client's, converted and not sent, as the negotiation's packets would have
(that ACK counts in the box's ``hits``).

Cheap when nothing can happen: a policy is classified once by what it can act on
(:func:`interest_of`) and a light segment is converted only if it is in that set: a box that acts
on SYNs, RSTs or data never converts a pure ACK. ``conversions`` counts the segments converted.
Unknown policy types are asked about every segment.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from operator import attrgetter
from dataclasses import replace
from typing import Any

from mpsim.proto.middlebox import (PASS, BuiltBox, Chain, Coalesce, DropMpCapableSyns, DropSegments,
                                   DropUnknownOptionSyns, MirrorMpCapable, Policy, RewritePayload,
                                   SegmentClass, SplitSegments, StripOptions, StripPayload, _Side)
from mpsim.sim.transfer import FLAG_ACK, FLAG_RST, FLAG_SYN, Segment
from mpsim.wire.options import Sack, TcpOptionKind
from mpsim.wire.segment import IpPacket, TcpFlags

_MASK = 0xFFFFFFFF


class Interest(enum.IntFlag):
    """What kinds of light segment a policy may act on."""

    NONE = 0
    CONTROL = 1  # SYN, SYN-ACK, RST and a join's third and fourth ACK
    DATA = 2  # segments with payload
    ACK = 4  # pure ACKs
    ALL = CONTROL | DATA | ACK


#: Option kinds a light segment may carry (Segment.to_ip_packet).
_LIGHT_KINDS = frozenset({TcpOptionKind.NOP, TcpOptionKind.TIMESTAMPS, TcpOptionKind.SACK, TcpOptionKind.MPTCP,
                          TcpOptionKind.MSS, TcpOptionKind.SACK_PERMITTED, TcpOptionKind.WINDOW_SCALE})


def _class_interest(classes: Iterable[SegmentClass]) -> Interest:
    interest = Interest.NONE
    for segment_class in classes:
        if segment_class in (SegmentClass.ANY, SegmentClass.FIN):
            return Interest.ALL
        interest |= Interest.DATA if segment_class is SegmentClass.DATA else Interest.CONTROL
    return interest


def interest_of(policy: Any) -> Interest:
    """What ``policy`` may change among light segments, from its type and parameters."""
    if type(policy) is Policy or policy is PASS:
        return Interest.NONE
    if isinstance(policy, Chain):
        interest = Interest.NONE
        for member in policy.policies:
            interest |= interest_of(member.forward) | interest_of(member.backward)
        return interest
    if isinstance(policy, _Side):
        owner = policy._owner
        if isinstance(owner, MirrorMpCapable):
            return Interest.CONTROL
        return Interest.ALL  # Nat, SequenceRewriter: every packet of a flow
    if isinstance(policy, StripOptions):
        if not policy.kinds & _LIGHT_KINDS:
            return Interest.NONE
        return _class_interest(policy.classes)
    if isinstance(policy, DropSegments):
        return _class_interest({policy.segment_class})
    if isinstance(policy, (DropUnknownOptionSyns, DropMpCapableSyns)):
        return Interest.CONTROL
    if isinstance(policy, (StripPayload, RewritePayload)):
        return _class_interest(policy.classes) & (Interest.DATA | Interest.CONTROL)
    if isinstance(policy, (SplitSegments, Coalesce)):
        return Interest.DATA
    return Interest.ALL


def _is_control(segment: Segment) -> bool:
    return bool(segment.flags & (FLAG_SYN | FLAG_RST)) or hasattr(segment.dst_endpoint, "join_listener")


def _signed32(value: int) -> int:
    value &= _MASK
    return value - (1 << 32) if value >= 1 << 31 else value


class WireView:
    """What the up side of one box did to each flow (keyed by the light flow going up): the
    sequence offset its SYN got (``seq``) and the address and port it was given (``src``)."""

    def __init__(self) -> None:
        self.seq_offset: dict[tuple, int] = {}
        self.src: dict[tuple, tuple] = {}
        self.announced: set[tuple] = set()


def _flow(packet: IpPacket) -> tuple:
    return (packet.src, packet.segment.src_port, packet.dst, packet.segment.dst_port)


class LightFilter:
    """One direction (``"up"``: client to network, ``"down"``) of a box, for light segments too
    (module doc). Has ``accepts_light_segments`` so that a :class:`~mpsim.sim.link.LinkDirection`
    hands it light segments."""

    accepts_light_segments = True

    def __init__(self, policy: Any, side: str = "up", view: WireView | None = None, peer: Any = None) -> None:
        if side not in ("up", "down"):
            raise ValueError(f"LightFilter side must be 'up' or 'down', got {side!r}")
        self.policy = policy
        self.side = side
        self.view = view if view is not None else WireView()
        self.peer = peer  # the box's other direction (a LightFilter), for announcing flows
        self.interest = interest_of(policy)
        self.two_way = isinstance(policy, _Side) and not isinstance(policy._owner, MirrorMpCapable)
        self.conversions = 0

    @property
    def name(self) -> str:
        return getattr(self.policy, "name", type(self.policy).__name__)

    @property
    def hits(self) -> int:
        return getattr(self.policy, "hits", 0)

    def __repr__(self) -> str:
        return f"<LightFilter {self.side} {self.name}>"

    def _wants(self, segment: Segment) -> bool:
        interest = self.interest
        if not interest:
            return False
        if interest == Interest.ALL:
            return True
        if _is_control(segment):
            return bool(interest & Interest.CONTROL)
        return bool(interest & (Interest.DATA if segment.payload_bytes else Interest.ACK))

    def __call__(self, packet: Any, now: float) -> list:
        if not isinstance(packet, Segment):
            return self.policy(packet, now)
        if not self._wants(packet):
            return [packet]
        return self.process([packet], now)

    def process(self, packets: list, now: float) -> list:
        """A batch (several light segments may merge, :class:`Coalesce`)."""
        wires: list = []
        sources: dict[int, Segment] = {}
        self._reverse: dict[int, tuple] = {}  # down side: wire id -> the light flow it answers
        for packet in packets:
            if isinstance(packet, Segment) and self._wants(packet):
                wire = self._to_wire(packet, now)
                sources[id(wire)] = packet
                wires.append(wire)
            else:
                wires.append(packet)
        policy = self.policy
        outs = policy.process(wires, now) if hasattr(policy, "process") else \
            [out for wire in wires for out in policy(wire, now)]
        result: list = []
        for out in outs:
            source = sources.get(id(out))
            if source is not None:
                result.append(source)  # unchanged: the very packet given
            elif isinstance(out, IpPacket) and sources:
                mapped = self._from_wire(out, sources, wires)
                if mapped is not None:
                    result += _unmapped_tail(mapped, sources.values())
            else:
                result.append(out)
        return result

    # --- light -> wire ---------------------------------------------------------------------------

    def _to_wire(self, segment: Segment, now: float) -> IpPacket:
        self.conversions += 1
        wire = segment.to_ip_packet()
        if self.side == "down":
            reverse = (wire.dst, wire.segment.dst_port, wire.src, wire.segment.src_port)
            if self.two_way and self.peer is not None and reverse not in self.view.announced:
                self.view.announced.add(reverse)
                if reverse not in self.view.src and reverse not in self.view.seq_offset:
                    self.peer.announce(segment, now)
            wire = self._as_on_the_wire(wire, reverse)
            self._reverse[id(wire)] = reverse
        return wire

    def _as_on_the_wire(self, wire: IpPacket, reverse: tuple) -> IpPacket:
        """A reply as the box would see it: to the translated address, acknowledging numbers in
        the space the flow's SYN was shifted into."""
        view = self.view
        src = view.src.get(reverse)
        offset = view.seq_offset.get(reverse, 0)
        if src is None and not offset:
            return wire
        seg = wire.segment
        changes: dict = {}
        if offset:
            changes["ack"] = (seg.ack + offset) & _MASK
            changes["options"] = tuple(Sack(tuple(((a + offset) & _MASK, (b + offset) & _MASK) for a, b in o.blocks))
                                       if isinstance(o, Sack) else o for o in seg.options)
        if src is not None:
            changes["dst_port"] = src[1]
        seg = replace(seg, **changes)
        return replace(wire, dst=src[0] if src is not None else wire.dst, segment=seg)

    def announce(self, reply: Segment, now: float) -> None:
        """Show the box's up side a pure ACK of the flow ``reply`` belongs to (module doc)."""
        wire = reply.to_ip_packet()
        seg = wire.segment
        ack = replace(seg, src_port=seg.dst_port, dst_port=seg.src_port, seq=seg.ack, ack=seg.seq,
                      flags=TcpFlags.ACK, payload=b"", options=seg.options[:3])
        probe = replace(wire, src=wire.dst, dst=wire.src, segment=ack)
        for out in self.policy(probe, now):
            if isinstance(out, IpPacket):
                self._learn(probe, out)

    # --- wire -> light ---------------------------------------------------------------------------

    def _learn(self, wire_in: IpPacket, out: IpPacket) -> None:
        flow = _flow(wire_in)
        self.view.announced.add(flow)
        if (out.src, out.segment.src_port) != (wire_in.src, wire_in.segment.src_port):
            self.view.src[flow] = (out.src, out.segment.src_port)
        if wire_in.segment.flags & FLAG_SYN and not wire_in.segment.flags & FLAG_ACK:
            delta = _signed32(out.segment.seq - wire_in.segment.seq)
            if delta:
                self.view.seq_offset[flow] = delta
            else:
                self.view.seq_offset.pop(flow, None)

    def _from_wire(self, out: IpPacket, sources: dict, wires: list) -> Segment | None:
        """The light segment ``out`` stands for: the source with the same flow and the nearest
        sequence number, changed as ``out`` is."""
        candidates = [(wire, sources[id(wire)]) for wire in wires if id(wire) in sources and _flow(wire) == _flow(out)]
        if not candidates:  # the box translated an address or port
            candidates = [(wire, sources[id(wire)]) for wire in wires if id(wire) in sources]
        if not candidates:
            return None
        seg = out.segment
        wire, source = min(candidates, key=lambda c: abs(_signed32(seg.seq - c[0].segment.seq)))
        if self.side == "up":
            self._learn(wire, out)
        copy = Segment(source.size_bytes, source.dst_endpoint, source.subflow_id, source.seq, source.payload_bytes,
                       source.ack, source.sack_blocks, source.dsn, source.data_ack, source.window_bytes, int(seg.flags),
                       source.sent_s, source.payload, any(o.kind == TcpOptionKind.MPTCP for o in seg.options))
        copy.size_bytes = out.length_bytes
        if hasattr(source, "hop"):  # stamped by a route (mpsim.sim.route): the copy goes on along it
            copy.route, copy.hop, copy.flow = source.route, source.hop, getattr(source, "flow", None)
        if getattr(source, "join_option", None) is not None:  # a join's MP_JOIN/MP_TCPRST, as the box left it:
            option = next((o for o in seg.options if o.kind == TcpOptionKind.MPTCP), None)  # the peer checks it
            if option is not None:
                copy.join_option = option
        if source.flags & FLAG_SYN:
            return copy  # handshake numbers are not modelled (seq and ack 0)
        # Sequence numbers as the receiver reads them: what the box left relative to what it
        # did to the flow's SYN (a consistent rewriter: no change).
        offset = self.view.seq_offset.get(_flow(wire), 0) if self.side == "up" else 0
        shift = _signed32(seg.seq - wire.segment.seq - offset) if self.side == "up" else \
            _signed32(seg.seq - wire.segment.seq)
        copy.seq = source.seq + shift
        if seg.payload != wire.segment.payload or shift:
            copy.payload_bytes = len(seg.payload)
            copy.dsn = source.dsn + shift
            if source.payload is not None:
                copy.payload = memoryview(seg.payload)
        back = 0
        if self.side == "down":  # acknowledgements of the reverse flow, as its sender reads them
            back = _signed32(seg.ack - wire.segment.ack)
            back += self.view.seq_offset.get(self._reverse.get(id(wire)), 0)
        if back:
            copy.ack = source.ack + back
            if source.sack_blocks:
                copy.sack_blocks = tuple((left + back, right + back) for left, right in source.sack_blocks)
        return copy


def _unmapped_tail(merged: Segment, parts: Iterable[Segment]) -> list[Segment]:
    """A coalesced MPTCP segment as its receiver reads it: the wire segment keeps the first
    part's DSS; the model reads it as mapping the parts that follow in DSN as they follow in
    sequence (Linux maps a whole skb, up to 64 KiB, with one DSS that every TSO segment repeats, so
    merging those loses nothing), but the bytes after a DSN gap (another mapping: a burst for
    another subflow in between, a reinjection) have no mapping on the wire: they become a segment
    of their own with ``mptcp=False``, data without a mapping, which the transfer handles as RFC
    8684 3.7 says (Linux: ``get_mapping_status`` -> MAPPING_INVALID, the subflow reset or the
    connection falls back). The two keep the merged packet's bytes: the head its headers, the tail
    its payload only (one packet more on the link, no byte more)."""
    if not merged.mptcp or not merged.payload_bytes or merged.flags & FLAG_SYN:
        return [merged]
    end = merged.seq + merged.payload_bytes
    covered = sorted((part for part in parts if part.dst_endpoint is merged.dst_endpoint
                      and part.subflow_id == merged.subflow_id and merged.seq <= part.seq < end
                      and part.payload_bytes), key=attrgetter("seq"))
    mapped = 0
    for part in covered:
        if part.seq != merged.seq + mapped or part.dsn != merged.dsn + mapped:
            break
        mapped += part.payload_bytes
    if not 0 < mapped < merged.payload_bytes:
        return [merged]
    tail_bytes = merged.payload_bytes - mapped
    first_unmapped = next(part for part in covered if part.seq >= merged.seq + mapped)
    tail = Segment(tail_bytes, merged.dst_endpoint, merged.subflow_id, merged.seq + mapped, tail_bytes, merged.ack,
                   merged.sack_blocks, first_unmapped.dsn + (merged.seq + mapped - first_unmapped.seq),
                   merged.data_ack, merged.window_bytes, merged.flags, merged.sent_s, None, False)
    if hasattr(merged, "hop"):  # stamped by a route: the tail goes on along it too
        tail.route, tail.hop, tail.flow = merged.route, merged.hop, getattr(merged, "flow", None)
    merged.payload_bytes, merged.size_bytes = mapped, merged.size_bytes - tail_bytes
    if merged.payload is not None:
        tail.payload, merged.payload = merged.payload[mapped:], merged.payload[:mapped]
    return [merged, tail]


def wrap_box(box: BuiltBox) -> BuiltBox:
    """The same box with both filters wrapped for light segments, sharing one :class:`WireView`
    (the policies, and so the ``hits`` counted, are the box's own)."""
    view = WireView()
    up = LightFilter(box.up, "up", view) if box.up is not PASS else PASS
    down = LightFilter(box.down, "down", view) if box.down is not PASS else PASS
    if isinstance(up, LightFilter) and isinstance(down, LightFilter):
        down.peer = up
    return BuiltBox(up, down, box.policies)
