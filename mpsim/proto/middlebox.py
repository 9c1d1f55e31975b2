"""Middlebox policies: what the path between client, converter and server does to TCP segments.

Each policy is a sans-I/O packet filter (docs/protocols.md 8.6): ``policy(packet, now)`` returns the
packets that continue down the path (an empty list: dropped). The same objects serve as the
harness's per-hop ``PacketFilter`` and, later, as the SimPy links' middlebox stage. State (flow
tables, counters) lives inside the policy; randomness comes only from an ``rng`` passed in.

Policies see one direction. A box that must see both (sequence-number rewriting, NAT, option
mirroring) is a two-way policy: its ``.forward`` and ``.backward`` filters share one state, and
go on the two hops of a link (``forward`` on the initiator-to-responder hop). Every policy has
``.forward`` (itself) and ``.backward`` (a pass-through) too, so any box is placed the same way::

    harness.link("client", "eth0", "server", "eth0", 0.01, a_to_b=[box.forward], b_to_a=[box.backward])

Segments are targeted by :class:`SegmentClass`; the third ACK cannot be told from the segment
alone, so a :class:`SegmentClassifier` remembers, per flow, whether the SYN has passed.

Every box a scenario, the simulator, the truth table or the testbed can name is registered at the
bottom of this module in :data:`mpsim.proto.catalogue.MIDDLEBOXES`, one name each, with a factory
that builds a fresh :class:`BuiltBox` (a filter per direction) from an ``rng`` and a :class:`Site`
(docs/design.md section 10).

Every policy has a ``name`` (a label of its parameters, for traces and tests), a one-line
``description`` and a ``hits`` counter (packets it changed or dropped). Packets that are not TCP
(an :class:`IcmpUnreachable` travelling back) pass through untouched, except through :class:`Nat`
and :class:`SequenceRewriter`, which fix up the quoted packet as real boxes do.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, NamedTuple

from mpsim.proto.catalogue import MIDDLEBOXES
from mpsim.proto.seqnum import seq_add
from mpsim.proto.tcp import Rng
from mpsim.wire.errors import InvalidValueError, OptionSpaceError
from mpsim.wire.mptcp import MpCapable
from mpsim.wire.options import EndOfOptionList, NoOperation, Sack, TcpOptionKind
from mpsim.wire.segment import IpAddress, IpPacket, TcpFlags, TcpSegment

#: A flow as seen in one direction: (src address, src port, dst address, dst port).
FlowKey = tuple[IpAddress, int, IpAddress, int]


def flow_of(packet: IpPacket) -> FlowKey:
    return (packet.src, packet.segment.src_port, packet.dst, packet.segment.dst_port)


def reverse_flow(flow: FlowKey) -> FlowKey:
    return (flow[2], flow[3], flow[0], flow[1])


# --- ICMP ---------------------------------------------------------------------------------------


class IcmpUnreachableCode(enum.IntEnum):
    """ICMPv4 Destination Unreachable codes (RFC 792, RFC 1812 section 5.2.7.1)."""

    NET_UNREACHABLE = 0
    HOST_UNREACHABLE = 1
    PROTOCOL_UNREACHABLE = 2
    PORT_UNREACHABLE = 3
    FRAGMENTATION_NEEDED = 4
    ADMIN_PROHIBITED = 13


#: RFC 1122 4.2.3.9: these codes are hard errors (abort the connection); the others are soft
#: (keep retransmitting). Linux aborts a connection in SYN-SENT on either kind.
HARD_ERROR_CODES = frozenset({IcmpUnreachableCode.PROTOCOL_UNREACHABLE, IcmpUnreachableCode.PORT_UNREACHABLE,
                              IcmpUnreachableCode.FRAGMENTATION_NEEDED})


@dataclass(frozen=True, slots=True)
class IcmpUnreachable:
    """An ICMP Destination Unreachable quoting ``original``; it travels back to ``original.src``.

    Not an :class:`IpPacket`: hosts hand it to :meth:`mpsim.proto.host.Host.on_icmp` instead of
    demultiplexing it. ``reporter`` is the router that sent it (None: the original destination).
    """

    original: IpPacket
    code: int
    reporter: IpAddress | None = None

    @property
    def src(self) -> IpAddress:
        return self.reporter if self.reporter is not None else self.original.dst

    @property
    def dst(self) -> IpAddress:
        return self.original.src

    @property
    def hard(self) -> bool:
        return self.code in HARD_ERROR_CODES


# --- segment classes ------------------------------------------------------------------------


class SegmentClass(enum.Enum):
    """What a policy targets. A segment may be in several classes (data with FIN; a third ACK with data)."""

    SYN = "syn"  # SYN without ACK
    SYN_ACK = "syn_ack"
    THIRD_ACK = "third_ack"  # the initiator's first ACK after its SYN (needs flow state)
    DATA = "data"  # a non-SYN segment with payload (SYN data is a SYN's business)
    RST = "rst"
    FIN = "fin"
    ANY = "any"


def segment_classes(segment: TcpSegment, *, third_ack: bool = False) -> frozenset[SegmentClass]:
    """The classes of one segment. Whether it is the third ACK is not in the segment: the caller
    says so (see :class:`SegmentClassifier`)."""
    flags = segment.flags
    classes = {SegmentClass.ANY}
    if flags & TcpFlags.RST:
        classes.add(SegmentClass.RST)
    elif flags & TcpFlags.SYN:
        classes.add(SegmentClass.SYN_ACK if flags & TcpFlags.ACK else SegmentClass.SYN)
    else:
        if segment.payload:
            classes.add(SegmentClass.DATA)
        if flags & TcpFlags.FIN:
            classes.add(SegmentClass.FIN)
        if third_ack:
            classes.add(SegmentClass.THIRD_ACK)
    return frozenset(classes)


class SegmentClassifier:
    """Classifies the packets of one direction, remembering per flow whether the third ACK passed.

    The third ACK is the first ACK-bearing non-SYN segment an initiator sends after its SYN: it
    can only follow the SYN-ACK, so one direction suffices. A flow whose SYN this classifier did
    not see (the box came up mid-connection) has no third ACK. Non-TCP items have no class.
    """

    def __init__(self) -> None:
        self._awaiting_third_ack: set[FlowKey] = set()

    def classify(self, packet: Any) -> frozenset[SegmentClass]:
        if not isinstance(packet, IpPacket):
            return frozenset()
        seg, flow = packet.segment, flow_of(packet)
        flags = seg.flags
        third_ack = False
        if flags & TcpFlags.RST:
            self._awaiting_third_ack.discard(flow)
        elif flags & TcpFlags.SYN:
            if not flags & TcpFlags.ACK:
                self._awaiting_third_ack.add(flow)
        elif flags & TcpFlags.ACK and flow in self._awaiting_third_ack:
            self._awaiting_third_ack.discard(flow)
            third_ack = True
        return segment_classes(seg, third_ack=third_ack)


def _label(items: Iterable[Any]) -> str:
    return ",".join(sorted(str(getattr(i, "value", i)) for i in items))


def _with_segment(packet: IpPacket, **changes: Any) -> IpPacket:
    return replace(packet, segment=replace(packet.segment, **changes))


# --- the policy protocol ----------------------------------------------------------------------


class Policy:
    """A one-direction packet filter. Subclasses override :meth:`apply` (one packet in, a list
    out) or, to see several packets at once, :meth:`process`."""

    name = "pass"
    description = "passes every packet unchanged"
    hits = 0  # packets changed or dropped (an instance attribute once a policy acts)

    def __call__(self, packet: Any, now: float) -> list:
        return self.process([packet], now)

    def process(self, packets: list, now: float) -> list:
        return [out for packet in packets for out in self.apply(packet, now)]

    def apply(self, packet: Any, now: float) -> list:
        return [packet]

    @property
    def forward(self) -> Policy:
        return self

    @property
    def backward(self) -> Policy:
        return PASS

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


PASS = Policy()


class _Side(Policy):
    """One direction of a two-way policy; its hits are counted on the owner."""

    def __init__(self, owner: Any, apply: Callable[[Any, float], list], direction: str) -> None:
        self._owner, self._apply, self._direction = owner, apply, direction

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self._owner.name}.{self._direction}"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"{self._owner.description} ({self._direction} side)"

    @property
    def hits(self) -> int:  # type: ignore[override]
        return self._owner.hits

    def apply(self, packet: Any, now: float) -> list:
        return self._apply(packet, now)


class Chain(Policy):
    """Policies applied in order; a packet dropped by one never reaches the next.

    ``chain(packet, now)`` and ``chain.forward`` run every member's forward side; ``chain.backward``
    runs the backward sides in reverse order (the packet meets the boxes the other way round).
    The whole list produced by one member goes to the next, so :class:`Coalesce` can merge the
    halves a :class:`SplitSegments` before it made.
    """

    def __init__(self, *policies: Any) -> None:
        self.policies = policies

    @property
    def name(self) -> str:  # type: ignore[override]
        return "+".join(p.name for p in self.policies) or "pass"

    @property
    def description(self) -> str:  # type: ignore[override]
        return "; ".join(p.description for p in self.policies) or PASS.description

    @property
    def hits(self) -> int:  # type: ignore[override]
        return sum(p.hits for p in self.policies)

    def process(self, packets: list, now: float) -> list:
        for policy in self.policies:
            packets = policy.forward.process(packets, now)
        return packets

    @property
    def backward(self) -> Policy:
        return Chain(*(p.backward for p in reversed(self.policies)))


# --- options --------------------------------------------------------------------------------


class StripMode(enum.Enum):
    """How a box removes an option; both happen in practice."""

    NOP = "nop"  # overwrite it with NOPs in place: header length and checksum-neutral layout kept
    REMOVE = "remove"  # delete it and re-pad: the header shrinks (boxes that re-serialise the header)


@dataclass(eq=False, repr=False)
class StripOptions(Policy):
    """Removes options of the given kinds from segments of the given classes (docs/protocols.md 8.6 item 1)."""

    kinds: frozenset[int]
    classes: frozenset[SegmentClass] = frozenset({SegmentClass.ANY})
    mode: StripMode = StripMode.REMOVE
    _classifier: SegmentClassifier = field(default_factory=SegmentClassifier, init=False)

    def __post_init__(self) -> None:
        self.kinds = frozenset(int(k) for k in self.kinds)
        self.classes = frozenset(self.classes)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"strip-opt{_label(self.kinds)}-{_label(self.classes)}-{self.mode.value}"

    @property
    def description(self) -> str:  # type: ignore[override]
        how = "overwrites with NOPs" if self.mode is StripMode.NOP else "removes (header shrinks)"
        return f"{how} option kinds {_label(self.kinds)} on {_label(self.classes)} segments"

    def apply(self, packet: Any, now: float) -> list:
        if not self._classifier.classify(packet) & self.classes:
            return [packet]
        seg = packet.segment
        if not any(o.kind in self.kinds for o in seg.options):
            return [packet]
        self.hits += 1
        if self.mode is StripMode.NOP:
            # Same length, so any odd padding after an EOL still ends on a word boundary.
            options = tuple(kept for o in seg.options
                            for kept in ((NoOperation(),) * len(o.encode()) if o.kind in self.kinds else (o,)))
            return [_with_segment(packet, options=options)]
        options = tuple(o for o in seg.options if o.kind not in self.kinds)
        return [_with_segment(packet, options=options, option_padding=b"")]


#: Option kinds every firewall lets through on a SYN: what Linux, Windows and macOS send by default.
BASIC_OPTION_KINDS = frozenset({TcpOptionKind.EOL, TcpOptionKind.NOP, TcpOptionKind.MSS, TcpOptionKind.WINDOW_SCALE,
                                TcpOptionKind.SACK_PERMITTED, TcpOptionKind.TIMESTAMPS})


@dataclass(eq=False, repr=False)
class DropUnknownOptionSyns(Policy):
    """Drops SYNs carrying any option kind outside ``known_kinds`` (docs/protocols.md 8.6 item 2)."""

    known_kinds: frozenset[int] = BASIC_OPTION_KINDS
    classes: frozenset[SegmentClass] = frozenset({SegmentClass.SYN})

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"drop-unknown-opt-{_label(self.classes)}"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"drops {_label(self.classes)} segments with options outside kinds {_label(self.known_kinds)}"

    def apply(self, packet: Any, now: float) -> list:
        if not isinstance(packet, IpPacket) or not segment_classes(packet.segment) & self.classes:
            return [packet]
        if all(o.kind in self.known_kinds for o in packet.segment.options):
            return [packet]
        self.hits += 1
        return []


@dataclass(eq=False, repr=False)
class MirrorMpCapable:
    """A two-way box that copies the MP_CAPABLE of a SYN into the SYN-ACK coming back, when the
    SYN-ACK has no MPTCP option: a legacy server then looks MPTCP-capable.

    With ``rng`` a v1 SYN's key-less option is completed with a random key (a valid SYN-ACK form);
    without it the option is copied verbatim, which a v1 client must treat as invalid (RFC 8684
    3.1: no key) and a v0 client accepts (its own key comes back). What follows when accepted:
    the client's third ACK carries MP_CAPABLE to a server that ignores it, its data goes out with
    DSS mappings and comes back ACKed without a DSS Data ACK, and the client falls back with an
    infinite mapping (RFC 8684 3.7, ``FallbackReason.DSS_MISSING``). A SYN-ACK without room for
    the option passes unchanged (counted in ``no_room``).
    """

    rng: Rng | None = None
    _syn_options: dict[FlowKey, MpCapable] = field(default_factory=dict, init=False)
    no_room: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)
    name = "mirror-mp-capable"
    description = "copies a SYN's MP_CAPABLE into the SYN-ACK of a server that sent none"

    def __post_init__(self) -> None:
        self.forward = _Side(self, self._forward, "forward")
        self.backward = _Side(self, self._backward, "backward")

    def _forward(self, packet: Any, now: float) -> list:
        if isinstance(packet, IpPacket) and segment_classes(packet.segment) & {SegmentClass.SYN}:
            mpc = next((o for o in packet.segment.options if isinstance(o, MpCapable)), None)
            if mpc is not None:
                self._syn_options[flow_of(packet)] = mpc
        return [packet]

    def _backward(self, packet: Any, now: float) -> list:
        if not isinstance(packet, IpPacket) or not segment_classes(packet.segment) & {SegmentClass.SYN_ACK}:
            return [packet]
        seg = packet.segment
        mpc = self._syn_options.get(reverse_flow(flow_of(packet)))
        if mpc is None or any(o.kind == TcpOptionKind.MPTCP for o in seg.options):
            return [packet]
        if mpc.sender_key is None and self.rng is not None:
            mpc = MpCapable(mpc.version, mpc.flags, sender_key=self.rng.getrandbits(64))
        options = seg.options
        if options and isinstance(options[-1], EndOfOptionList):
            options = options[:-1]
        try:
            mirrored = _with_segment(packet, options=options + (mpc,), option_padding=b"")
        except OptionSpaceError:
            self.no_room += 1
            return [packet]
        self.hits += 1
        return [mirrored]


# --- drops ----------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class DropSegments(Policy):
    """Drops a scripted set of segments: every segment of a class, or only its n-th occurrences.

    ``occurrences`` are 1-based indices among the segments that match (class and, when given,
    ``with_payload``); None drops every match. Examples: the first SYN-ACK
    (``DropSegments(SegmentClass.SYN_ACK, frozenset({1}))``), every SYN with data
    (``DropSegments(SegmentClass.SYN, with_payload=True)``), every RST (``DropSegments(SegmentClass.RST)``).
    """

    segment_class: SegmentClass
    occurrences: frozenset[int] | None = None
    with_payload: bool | None = None
    seen: int = field(default=0, init=False)
    _classifier: SegmentClassifier = field(default_factory=SegmentClassifier, init=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        data = {None: "", True: "+data", False: "-nodata"}[self.with_payload]
        which = "" if self.occurrences is None else "#" + _label(self.occurrences)
        return f"drop-{self.segment_class.value}{data}{which}"

    @property
    def description(self) -> str:  # type: ignore[override]
        which = "every" if self.occurrences is None else f"occurrence(s) {_label(self.occurrences)} of"
        data = {None: "", True: " carrying data", False: " without data"}[self.with_payload]
        return f"drops {which} {self.segment_class.value} segment{data}"

    def apply(self, packet: Any, now: float) -> list:
        if self.segment_class not in self._classifier.classify(packet):
            return [packet]
        if self.with_payload is not None and bool(packet.segment.payload) is not self.with_payload:
            return [packet]
        self.seen += 1
        if self.occurrences is not None and self.seen not in self.occurrences:
            return [packet]
        self.hits += 1
        return []


def drop_syns_with_data() -> DropSegments:
    """The 6% of paths in the TFO studies that drop SYNs carrying data (docs/protocols.md 4.2)."""
    return DropSegments(SegmentClass.SYN, with_payload=True)


def drop_rsts() -> DropSegments:
    """A lost RST: the peer keeps its state (docs/protocols.md 8.6 item 7)."""
    return DropSegments(SegmentClass.RST)


# --- payload ---------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class StripPayload(Policy):
    """Delivers segments of the given classes without their payload, fixing up nothing
    (docs/protocols.md 8.6 items 3 and 4).

    On a SYN this is exactly the observed behaviour: the server sees a plain SYN, its SYN-ACK
    ACKs ISN+1, and the client learns that its SYN data was not taken. On a SYN-ACK the client
    ACKs only the server's ISN+1 and the server retransmits the data later. On data segments the
    receiver sees an empty segment and the sender retransmits until it gives up: a stall.
    """

    classes: frozenset[SegmentClass] = frozenset({SegmentClass.SYN})
    _classifier: SegmentClassifier = field(default_factory=SegmentClassifier, init=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"strip-payload-{_label(self.classes)}"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"removes the payload of {_label(self.classes)} segments (no sequence fix-up)"

    def apply(self, packet: Any, now: float) -> list:
        if not self._classifier.classify(packet) & self.classes or not packet.segment.payload:
            return [packet]
        self.hits += 1
        return [_with_segment(packet, payload=b"")]


@dataclass(eq=False, repr=False)
class RewritePayload(Policy):
    """An ALG: replaces every occurrence of ``pattern`` by ``replacement`` inside each payload.

    Patterns split across two segments are missed, as by many real ALGs. A replacement of another
    length changes the sequence space without any fix-up of later sequence or ACK numbers (a
    broken ALG): on a SYN the SYN-ACK then ACKs a length the client never sent.
    """

    pattern: bytes
    replacement: bytes
    classes: frozenset[SegmentClass] = frozenset({SegmentClass.ANY})
    _classifier: SegmentClassifier = field(default_factory=SegmentClassifier, init=False)

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("RewritePayload needs a non-empty pattern")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"rewrite-payload-{_label(self.classes)}"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"replaces {self.pattern!r} by {self.replacement!r} in {_label(self.classes)} payloads"

    def apply(self, packet: Any, now: float) -> list:
        if not self._classifier.classify(packet) & self.classes or self.pattern not in packet.segment.payload:
            return [packet]
        self.hits += 1
        return [_with_segment(packet, payload=packet.segment.payload.replace(self.pattern, self.replacement))]


@dataclass(eq=False, repr=False)
class SplitSegments(Policy):
    """Splits each data segment of two bytes or more in two (``first_bytes`` in the first part,
    default half). Both parts carry the original options (as TSO does with a DSS); PSH and FIN
    stay on the second part."""

    first_bytes: int | None = None

    name = "split"
    description = "splits every data segment into two"

    def apply(self, packet: Any, now: float) -> list:
        if not isinstance(packet, IpPacket) or SegmentClass.DATA not in segment_classes(packet.segment):
            return [packet]
        seg = packet.segment
        if len(seg.payload) < 2:
            return [packet]
        cut = min(max(self.first_bytes or len(seg.payload) // 2, 1), len(seg.payload) - 1)
        self.hits += 1
        head = _with_segment(packet, payload=seg.payload[:cut], flags=seg.flags & ~(TcpFlags.FIN | TcpFlags.PSH))
        tail = _with_segment(packet, seq=seq_add(seg.seq, cut), payload=seg.payload[cut:])
        return [head, tail]


@dataclass(eq=False, repr=False)
class Coalesce(Policy):
    """Merges consecutive, contiguous data segments of one flow that pass in the same batch.

    Holding a segment to wait for the next would need a timer, which a packet filter does not
    have, so only segments handed over together merge: the list :meth:`process` receives (the
    SimPy link serving a burst, or a :class:`Chain` after :class:`SplitSegments`). Called one
    packet at a time, as by the harness, it has nothing to merge. The merged segment keeps the
    first one's options (a second DSS mapping is lost, as with real coalescing), the later ACK
    and window, and the union of the flags.
    """

    name = "coalesce"
    description = "merges contiguous data segments of a flow that pass together"

    def process(self, packets: list, now: float) -> list:
        merged: list = []
        for packet in packets:
            if merged and _contiguous_data(merged[-1], packet):
                first = merged[-1].segment
                try:
                    merged[-1] = _with_segment(merged[-1], payload=first.payload + packet.segment.payload,
                                               ack=packet.segment.ack, window=packet.segment.window,
                                               flags=first.flags | packet.segment.flags)
                    self.hits += 1
                    continue
                except InvalidValueError:  # too long for one IP packet: leave them apart
                    pass
            merged.append(packet)
        return merged


def _contiguous_data(first: Any, second: Any) -> bool:
    if not (isinstance(first, IpPacket) and isinstance(second, IpPacket)) or flow_of(first) != flow_of(second):
        return False
    a, b = first.segment, second.segment
    return (SegmentClass.DATA in segment_classes(a) and SegmentClass.DATA in segment_classes(b)
            and not a.flags & TcpFlags.FIN and seq_add(a.seq, len(a.payload)) == b.seq)


# --- two-way rewriters ---------------------------------------------------------------------------


def _shift_sack(option: Any, delta: int) -> Any:
    if not isinstance(option, Sack):
        return option
    return Sack(tuple((seq_add(left, delta), seq_add(right, delta)) for left, right in option.blocks))


class SequenceRewriter:
    """Per-flow ISN randomisation, as firewalls do (Cisco ASA "sequence number randomization",
    pf "modulate state"): the initiator's sequence numbers get a random per-flow offset on the
    ``forward`` side; on the ``backward`` side the ACK numbers and SACK blocks (which refer to the
    initiator's sequence space) have it removed, and so does the sequence number an ICMP error
    quotes. The responder's sequence space is left alone. A flow whose SYN did not pass is not
    touched; a SYN with a new ISN on a known 4-tuple (a new incarnation) gets a new offset.
    """

    name = "seq-rewrite"
    description = "adds a random per-flow offset to the initiator's sequence numbers, undone on ACKs"

    def __init__(self, rng: Rng) -> None:
        self.rng = rng
        self._flows: dict[FlowKey, tuple[int, int]] = {}  # forward flow -> (ISN seen, offset)
        self.hits = 0
        self.forward = _Side(self, self._forward, "forward")
        self.backward = _Side(self, self._backward, "backward")

    def offset_of(self, flow: FlowKey) -> int | None:
        """The offset applied to ``flow`` (forward direction), or None if it is not rewritten."""
        entry = self._flows.get(flow)
        return None if entry is None else entry[1]

    def _forward(self, packet: Any, now: float) -> list:
        if not isinstance(packet, IpPacket):
            return [packet]
        seg, flow = packet.segment, flow_of(packet)
        if SegmentClass.SYN in segment_classes(seg):
            known = self._flows.get(flow)
            if known is None or known[0] != seg.seq:
                self._flows[flow] = (seg.seq, self.rng.getrandbits(32))
        offset = self.offset_of(flow)
        if offset is None:
            return [packet]
        self.hits += 1
        return [_with_segment(packet, seq=seq_add(seg.seq, offset))]

    def _backward(self, packet: Any, now: float) -> list:
        if isinstance(packet, IcmpUnreachable):
            offset = self.offset_of(flow_of(packet.original))
            if offset is None:
                return [packet]
            original = _with_segment(packet.original, seq=seq_add(packet.original.segment.seq, -offset))
            return [replace(packet, original=original)]
        seg = packet.segment
        offset = self.offset_of(reverse_flow(flow_of(packet)))
        if offset is None:
            return [packet]
        self.hits += 1
        ack = seq_add(seg.ack, -offset) if seg.flags & TcpFlags.ACK else seg.ack
        return [_with_segment(packet, ack=ack, options=tuple(_shift_sack(o, -offset) for o in seg.options))]


@dataclass
class _Mapping:
    public_addr: IPv4Address | IPv6Address
    public_port: int
    last_used_s: float


class Nat:
    """A NAPT with an endpoint-independent mapping (RFC 4787 / RFC 5382): NAT44 with IPv4 public
    addresses, with IPv6 ones the same translation of IPv6 packets (NAPT66, as Linux's ``ip6 nat``
    masquerade does; a scenario with ``ip_version = 6`` builds this one).

    ``forward`` is the inside-to-outside side: the source (address, port) is mapped to a public
    address and port, allocated in order from ``ports``. ``backward`` maps the destination back,
    and drops what matches no live mapping (unsolicited inbound). With ``paired`` (RFC 4787
    REQ-2) an inside host always gets the same public address; without it every new mapping takes
    the next address of the pool (an address-changing CGN, docs/protocols.md 8.6 item 9, which breaks
    TFO cookies bound to the client address). A mapping idle for ``mapping_timeout_s`` expires.
    Addresses inside payloads and options (Convert TLVs, ADD_ADDR) are not translated, as by real
    NATs without an ALG. ICMP errors coming back are mapped through their quoted packet.
    Packets of the other IP version than the public addresses pass untouched.
    """

    name = "nat"
    description = "NAPT: rewrites inside source address and port, maps replies back"

    def __init__(self, public_addrs: Iterable[IPv4Address | IPv6Address], *, ports: tuple[int, int] = (1024, 65535),
                 paired: bool = True, mapping_timeout_s: float | None = None) -> None:
        self.public_addrs = tuple(public_addrs)
        if not self.public_addrs or not (all(isinstance(a, IPv4Address) for a in self.public_addrs)
                                         or all(isinstance(a, IPv6Address) for a in self.public_addrs)):
            raise ValueError("Nat needs at least one public address, all IPv4Address or all IPv6Address")
        self.version = self.public_addrs[0].version
        if not 1 <= ports[0] <= ports[1] <= 65535:
            raise ValueError(f"bad NAT port range {ports}")
        self.ports = ports
        self.paired = paired
        self.mapping_timeout_s = mapping_timeout_s
        self._by_inside: dict[tuple[IpAddress, int], _Mapping] = {}
        self._by_outside: dict[tuple[IpAddress, int], tuple[IpAddress, int]] = {}
        self._pairs: dict[IpAddress, IpAddress] = {}
        self._next_addr = 0
        self._next_port = {addr: ports[0] for addr in self.public_addrs}
        self.hits = 0
        self.dropped_inbound = 0
        self.dropped_exhausted = 0
        self.forward = _Side(self, self._forward, "forward")
        self.backward = _Side(self, self._backward, "backward")

    def mapping_of(self, inside_addr: IpAddress, inside_port: int, now: float) -> tuple[IpAddress, int] | None:
        """The live public (address, port) of an inside endpoint, or None."""
        mapping = self._live((inside_addr, inside_port), now)
        return None if mapping is None else (mapping.public_addr, mapping.public_port)

    def _live(self, inside: tuple[IpAddress, int], now: float) -> _Mapping | None:
        mapping = self._by_inside.get(inside)
        if mapping is not None and self.mapping_timeout_s is not None \
                and now - mapping.last_used_s > self.mapping_timeout_s:
            del self._by_inside[inside]
            del self._by_outside[(mapping.public_addr, mapping.public_port)]
            return None
        return mapping

    def _pick_address(self, inside_addr: IpAddress) -> IpAddress:
        if self.paired and inside_addr in self._pairs:
            return self._pairs[inside_addr]
        addr = self.public_addrs[self._next_addr % len(self.public_addrs)]
        self._next_addr += 1
        self._pairs.setdefault(inside_addr, addr)
        return addr

    def _allocate(self, inside: tuple[IpAddress, int], now: float) -> _Mapping | None:
        addr = self._pick_address(inside[0])
        low, high = self.ports
        for _ in range(high - low + 1):
            port = self._next_port[addr]
            self._next_port[addr] = low + (port - low + 1) % (high - low + 1)
            holder = self._by_outside.get((addr, port))
            if holder is None or self._live(holder, now) is None:
                mapping = _Mapping(addr, port, now)
                self._by_inside[inside] = mapping
                self._by_outside[(addr, port)] = inside
                return mapping
        return None

    def _forward(self, packet: Any, now: float) -> list:
        if not isinstance(packet, IpPacket) or packet.src.version != self.version:
            return [packet]
        inside = (packet.src, packet.segment.src_port)
        mapping = self._live(inside, now) or self._allocate(inside, now)
        if mapping is None:
            self.dropped_exhausted += 1
            return []
        mapping.last_used_s = now
        self.hits += 1
        return [replace(packet, src=mapping.public_addr,
                        segment=replace(packet.segment, src_port=mapping.public_port))]

    def _inside_of(self, public: tuple[IpAddress, int], now: float) -> tuple[_Mapping, tuple] | None:
        inside = self._by_outside.get(public)  # type: ignore[arg-type]
        mapping = None if inside is None else self._live(inside, now)
        return None if mapping is None else (mapping, inside)

    def _backward(self, packet: Any, now: float) -> list:
        if isinstance(packet, IcmpUnreachable):
            quoted = packet.original  # our own translated packet: its source is the public side
            found = self._inside_of((quoted.src, quoted.segment.src_port), now)
            if found is None:
                self.dropped_inbound += 1
                return []
            inside = found[1]
            original = replace(quoted, src=inside[0], segment=replace(quoted.segment, src_port=inside[1]))
            return [replace(packet, original=original)]
        if not isinstance(packet, IpPacket) or packet.dst.version != self.version:
            return [packet]
        found = self._inside_of((packet.dst, packet.segment.dst_port), now)
        if found is None:
            self.dropped_inbound += 1
            return []
        mapping, inside = found
        mapping.last_used_s = now
        self.hits += 1
        return [replace(packet, dst=inside[0], segment=replace(packet.segment, dst_port=inside[1]))]


@dataclass(eq=False, repr=False)
class DropMpCapableSyns(Policy):
    """Drops SYNs (without ACK) carrying MP_CAPABLE; MP_JOIN SYNs pass. What the kernel testbed's
    nft rule ``tcp flags & (syn|ack) == syn tcp option mptcp subtype 0 drop`` does."""

    name = "drop-mp-capable-syn"
    description = "drops SYNs carrying MP_CAPABLE (MP_JOIN SYNs pass)"

    def apply(self, packet: Any, now: float) -> list:
        if isinstance(packet, IpPacket) and SegmentClass.SYN in segment_classes(packet.segment) \
                and any(isinstance(o, MpCapable) for o in packet.segment.options):
            self.hits += 1
            return []
        return [packet]


# --- the catalogue: every box above under one name (mpsim/proto/catalogue.py MIDDLEBOXES) ----------


class BuiltBox(NamedTuple):
    """A middlebox placed on an access link: its filter per direction (``up``: client to network,
    ``down``: back; :data:`PASS` where it does nothing) and the policy objects whose ``hits``
    count what it did (a two-way box is one object with two sides)."""

    up: Any
    down: Any
    policies: tuple


@dataclass(frozen=True, slots=True)
class Site:
    """What a box may need to know about the access network it sits on: the client's prefix, an
    IPv4 or an IPv6 network (a NAT takes its public addresses from it, so that replies still route
    to the access link)."""

    client_network: IPv4Network | IPv6Network = IPv4Network("198.18.0.0/24")


@dataclass(frozen=True, slots=True)
class MiddleboxEntry:
    """A middlebox by name: ``factory(rng, site, **params)`` builds a fresh :class:`BuiltBox`
    (new flow state, new counters) at every attachment. ``parameters`` names the optional
    keyword parameters it takes; a scenario uses the defaults."""

    name: str
    description: str
    factory: Callable[..., BuiltBox]
    parameters: tuple[str, ...] = ()

    def build(self, rng: Rng, site: Site | None = None, **params: Any) -> BuiltBox:
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            takes = ", ".join(self.parameters) or "none"
            raise ValueError(f"middlebox {self.name!r} takes no parameter {unknown[0]!r} (its parameters: {takes})")
        return self.factory(rng, site if site is not None else Site(), **params)


def register_middlebox(name: str, description: str, factory: Callable[..., BuiltBox],
                       parameters: tuple[str, ...] = ()) -> MiddleboxEntry:
    """Register a box under ``name`` in :data:`mpsim.proto.catalogue.MIDDLEBOXES` (a module of
    its own does this at import: docs/design.md section 10)."""
    return MIDDLEBOXES.register(name, MiddleboxEntry(name, description, factory, parameters))


def up_only(policy: Policy) -> BuiltBox:
    """A one-way box on the client's outgoing direction."""
    return BuiltBox(policy, PASS, (policy,))


def down_only(policy: Policy) -> BuiltBox:
    """A one-way box on the direction towards the client."""
    return BuiltBox(PASS, policy, (policy,))


def both_ways(make: Callable[[], Policy]) -> BuiltBox:
    """The same kind of box in each direction, with a state of its own per direction."""
    up, down = make(), make()
    return BuiltBox(up, down, (up, down))


def two_way(box: Any) -> BuiltBox:
    """A box that sees both directions through one state (its ``forward`` side goes up)."""
    return BuiltBox(box.forward, box.backward, (box,))


#: Option kinds a TFO-stripping box removes: kind 34, and the experimental kind 254 older TFO
#: stacks use (nothing else here uses it).
TFO_OPTION_KINDS = frozenset({TcpOptionKind.TFO, TcpOptionKind.EXPERIMENTAL_2})
#: Which host of the client's prefix a NAT uses as its public address (the client is host 1).
NAT_PUBLIC_HOST = 200


def _alg(rng: Rng, site: Site, pattern: bytes | None = None, replacement: bytes | None = None) -> BuiltBox:
    # Default: a NAT ALG that rewrites the client's address written in ASCII (FTP PORT, SIP) into
    # the public one: a longer string, so the sequence space shifts with no fix-up when it hits.
    inside, public = site.client_network[1], site.client_network[NAT_PUBLIC_HOST]
    return up_only(RewritePayload(pattern if pattern is not None else str(inside).encode(),
                                  replacement if replacement is not None else str(public).encode()))


for _name, _description, _factory, *_parameters in (
    ("strip-mptcp", "removes MPTCP options from every segment, both ways",
     lambda rng, site: both_ways(lambda: StripOptions({TcpOptionKind.MPTCP})), ()),
    ("strip-mptcp-synack", "removes MPTCP options from SYN-ACKs",
     lambda rng, site: down_only(StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN_ACK})), ()),
    ("strip-mptcp-syn", "overwrites MPTCP options in SYNs with NOPs (as TCPOPTSTRIP does)",
     lambda rng, site: up_only(StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN}, mode=StripMode.NOP)),
     ()),
    ("drop-unknown-option-syns", "drops SYNs carrying options it does not know (MPTCP)",
     lambda rng, site: up_only(DropUnknownOptionSyns(BASIC_OPTION_KINDS)), ()),
    ("drop-mp-capable-syn", DropMpCapableSyns.description, lambda rng, site: up_only(DropMpCapableSyns()), ()),
    ("drop-syn-data", "drops SYNs that carry data", lambda rng, site: up_only(drop_syns_with_data()), ()),
    ("drop-syn-data-or-unknown-options", "drops SYNs that carry data or options it does not know",
     lambda rng, site: up_only(Chain(DropUnknownOptionSyns(), drop_syns_with_data())), ()),
    ("strip-syn-payload", "delivers SYNs without their data",
     lambda rng, site: up_only(StripPayload({SegmentClass.SYN})), ()),
    ("strip-tfo", "removes TFO options (kinds 34 and 254) from every segment, both ways",
     lambda rng, site: both_ways(lambda: StripOptions(TFO_OPTION_KINDS)), ()),
    ("drop-rst", "drops the RSTs the client sends", lambda rng, site: up_only(drop_rsts()), ()),
    ("drop-rst-both-ways", "drops RSTs both ways", lambda rng, site: both_ways(drop_rsts), ()),
    ("seq-rewrite", "shifts sequence numbers by a random offset per flow (and back)",
     lambda rng, site: two_way(SequenceRewriter(rng)), ()),
    ("nat", "translates the client's address and port (a CGN)",
     lambda rng, site: two_way(Nat([site.client_network[NAT_PUBLIC_HOST]])), ()),
    ("nat-address-changing", "a CGN that gives every new mapping the next of two public addresses",
     lambda rng, site: two_way(Nat([site.client_network[NAT_PUBLIC_HOST], site.client_network[NAT_PUBLIC_HOST + 1]],
                                   paired=False)), ()),
    ("split-data", "splits every data segment in two, both ways", lambda rng, site: both_ways(SplitSegments), ()),
    ("coalesce", "merges contiguous data segments that pass together, both ways",
     lambda rng, site: both_ways(Coalesce), ()),
    ("alg", "rewrites the client's address written in the payload into a longer public one (no fix-up)",
     _alg, ("pattern", "replacement")),
    ("mirror-mp-capable", "copies the SYN's MP_CAPABLE into a SYN-ACK that has none (with a key)",
     lambda rng, site: two_way(MirrorMpCapable(rng)), ()),
):
    register_middlebox(_name, _description, _factory, *_parameters)
