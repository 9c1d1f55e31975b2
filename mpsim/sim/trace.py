"""Traces of a simulation: machine events, packets per link direction, pcap files, ladder diagrams.

A :class:`Trace` collects two kinds of records, in simulated-time order:

* :class:`EventRecord` ``(time_s, node, event)``: every event a node's machine reported;
* :class:`PacketRecord`: when ``record_packets`` is on, every packet a link direction saw, with
  what happened to it (``sent``: offered by the sending node; ``delivered``: arrived at the
  receiving node; ``dropped`` with the reason ``filter``, ``loss`` or ``queue``).

Records hold the packet objects themselves (immutable), so traces cost no encoding until a
capture is asked for. Captures carry raw IP packets (``LINKTYPE_RAW``): ``IpPacket``\\ s encoded
with :func:`mpsim.wire.segment.encode_packet`, ICMP unreachable messages encoded here, light
transfer packets only if they offer ``to_ip_packet()``. Two forms: a classic pcap of one link or
node (:meth:`Trace.pcap_bytes`), and a pcapng with one named interface per link
(:meth:`Trace.pcapng_bytes`; :meth:`Trace.capture_files` groups a run's links into files:
docs/wireshark.md).

Ladder diagrams (:func:`ladder_text`, :func:`ladder_figure`) show one connection across chosen
nodes, as in the RFC figures: a column per node, an arrow per hop from the send to the arrival
time, labelled with flags, sequence and acknowledgment numbers relative to each side's ISN, the
options (MPC, TFO, MP_CONVERT, ...), the Convert TLVs of a payload and its length.

Simplifications: a connection is followed by its 4-tuple, so a NAT or a converter (which opens a
second connection) ends it; the ladder then shows the hops that kept the 4-tuple. ICMP errors
quoting the connection are shown; they are encoded with their quoted bytes (RFC 792's header + 8
bytes for IPv4), but ICMPv6 codes are mapped from the ICMPv4 ones (see :func:`icmp_bytes`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, NamedTuple

from mpsim.proto.middlebox import FlowKey, IcmpUnreachable, IcmpUnreachableCode, flow_of, reverse_flow
from mpsim.wire.convert import ErrorTlv, parse_convert_prefix
from mpsim.wire.errors import WireError
from mpsim.wire.mp_convert import mp_convert_from_option
from mpsim.wire.mptcp import MpCapable
from mpsim.wire.options import FastOpen
from mpsim.wire.pcap import PcapngInterface, pcap_file_bytes, pcapng_file_bytes
from mpsim.wire.segment import IpPacket, TcpFlags, encode_packet, internet_checksum
from mpsim.wire.syn_payload import decode_syn_payload


class EventRecord(NamedTuple):
    time_s: float
    node: str
    event: Any


class PacketRecord(NamedTuple):
    """One thing that happened to a packet on a link direction.

    ``link`` and ``direction`` ("forward": a to b, "backward") name the direction; ``src`` and
    ``dst`` are its nodes (None for a direction outside a :class:`~mpsim.sim.link.Link`);
    ``packet_id`` numbers the packets offered to the direction, so a ``sent`` record and its
    ``delivered`` or ``dropped`` records share one.
    """

    time_s: float
    link: str
    direction: str
    src: str | None
    dst: str | None
    kind: str  # "sent", "delivered", "dropped"
    packet: Any
    packet_id: int
    reason: str | None = None  # for "dropped": "filter", "loss", "queue"


class Trace:
    """Events always; packets when ``record_packets`` (they cost memory in long transfers)."""

    def __init__(self, *, record_packets: bool = False) -> None:
        self.record_packets = record_packets
        self.events: list[EventRecord] = []
        self.packets: list[PacketRecord] = []

    # --- recording (called by nodes and links) -------------------------------------------------

    def event(self, time_s: float, node: str, event: Any) -> None:
        self.events.append(EventRecord(time_s, node, event))

    def packet(self, time_s: float, direction: Any, kind: str, packet: Any, packet_id: int,
               reason: str | None = None) -> None:
        self.packets.append(PacketRecord(time_s, direction.link_name, direction.label, direction.src_node,
                                         direction.dst_node, kind, packet, packet_id, reason))

    # --- queries -----------------------------------------------------------------------------

    def events_of(self, node: str, kind: type | None = None) -> list[Any]:
        """The events ``node`` reported, optionally only those of type ``kind``."""
        return [r.event for r in self.events if r.node == node and (kind is None or isinstance(r.event, kind))]

    def packets_at(self, name: str, *, point: str = "sent") -> list[tuple[float, Any]]:
        """``(time_s, packet)`` as a capture at ``name`` would see them.

        A node name: what the node sent (when it left) and what reached it (when it arrived),
        on all its links. A link name: both directions, at ``point`` "sent" (as offered by the
        sending node, before filters and loss) or "delivered" (as they arrived).
        """
        if point not in ("sent", "delivered"):
            raise ValueError(f"point must be 'sent' or 'delivered', got {point!r}")
        links = {r.link for r in self.packets}
        nodes = {n for r in self.packets for n in (r.src, r.dst) if n is not None}
        if name in links and name in nodes:
            raise ValueError(f"{name!r} names both a link and a node; rename one")
        if name in links:
            return [(r.time_s, r.packet) for r in self.packets if r.link == name and r.kind == point]
        if name in nodes:
            return [(r.time_s, r.packet) for r in self.packets
                    if (r.kind == "sent" and r.src == name) or (r.kind == "delivered" and r.dst == name)]
        known = ", ".join(sorted(links | nodes)) or "none (was record_packets on?)"
        raise KeyError(f"no link or node named {name!r} in the trace (known: {known})")

    def pcap_bytes(self, name: str, *, point: str = "sent") -> bytes:
        """A pcap file (raw IP) of the packets at link or node ``name`` (see :meth:`packets_at`)."""
        records = []
        for time_s, packet in self.packets_at(name, point=point):
            data = packet_bytes(packet)
            if data is not None:
                records.append((time_s, data))
        return pcap_file_bytes(records)

    def write_pcap(self, path: str | Path, name: str, *, point: str = "sent") -> Path:
        path = Path(path)
        path.write_bytes(self.pcap_bytes(name, point=point))
        return path

    def pcapng_bytes(self, links: Sequence[str], *, point: str = "sent", comment: str = "") -> bytes:
        """A pcapng file of the packets on ``links`` (link or lone-direction names), one named
        interface per link in the given order (``frame.interface_name`` in Wireshark, its nodes
        as the description), both directions at ``point`` ("sent" or "delivered"), in time order;
        ``comment``: the file's own note (the section's opt_comment), e.g. how it is simplified."""
        if point not in ("sent", "delivered"):
            raise ValueError(f"point must be 'sent' or 'delivered', got {point!r}")
        if isinstance(links, str) or not links:
            raise ValueError(f"links must be a non-empty sequence of link names, got {links!r}")
        known = {r.link for r in self.packets}
        for name in links:
            if name not in known:
                listing = ", ".join(sorted(known)) or "none (was record_packets on?)"
                raise KeyError(f"no packets on a link named {name!r} in the trace (links with packets: {listing})")
        index = {name: i for i, name in enumerate(links)}
        descriptions = {}
        for record in self.packets:
            if record.link in index and record.src is not None and record.direction == "forward":
                descriptions.setdefault(record.link, f"{record.src} <-> {record.dst}")
        interfaces = [PcapngInterface(name, description=descriptions.get(name, "")) for name in links]
        records = []
        for record in self.packets:  # already in simulated-time order
            if record.link in index and record.kind == point:
                data = packet_bytes(record.packet)
                if data is not None:
                    records.append((index[record.link], record.time_s, data))
        return pcapng_file_bytes(interfaces, records, comment=comment)

    def capture_files(self, links: Iterable[str]) -> dict[str, list[str]]:
        """How ``links`` go into capture files: file stem -> the links (interfaces) it holds.

        A link that carried no packet gets no file. A :class:`~mpsim.sim.link.Link` gets a file
        of its own (both directions on one interface), and so does a direction that names its
        link and nodes without a Link object (a household's own access line, ``path.NAME.hH``).
        Lone directions (no source node, e.g. ``x.down`` and ``x.up`` of a test's transfer) are
        grouped by their name without its last part, so that a transfer's data and its ACKs
        share a file, one interface per direction.
        """
        lone = {r.link for r in self.packets if r.src is None}
        used = {r.link for r in self.packets}
        files: dict[str, list[str]] = {}
        for name in links:
            if name not in used:
                continue
            stem = name.rsplit(".", 1)[0] if name in lone and "." in name else name
            files.setdefault(stem, []).append(name)
        return files


# --- bytes for pcap ---------------------------------------------------------------------------

# ICMPv6 Destination Unreachable codes (RFC 4443 3.1) for the ICMPv4 codes the model uses.
_ICMPV6_CODES = {
    IcmpUnreachableCode.NET_UNREACHABLE: 0,  # no route to destination
    IcmpUnreachableCode.HOST_UNREACHABLE: 3,  # address unreachable
    IcmpUnreachableCode.PROTOCOL_UNREACHABLE: 4,  # nearest: port unreachable
    IcmpUnreachableCode.PORT_UNREACHABLE: 4,
    IcmpUnreachableCode.ADMIN_PROHIBITED: 1,
}
_ICMPV4_DEST_UNREACHABLE = 3
_ICMPV6_DEST_UNREACHABLE = 1
_ICMPV6_PACKET_TOO_BIG = 2
_PROTOCOL_ICMP = 1
_NEXT_HEADER_ICMPV6 = 58


def icmp_bytes(message: IcmpUnreachable) -> bytes:
    """The ICMP Destination Unreachable packet, IP header included, quoting the original.

    IPv4 (RFC 792): the quoted IP header and 8 bytes of its data, ``code`` as is. IPv6 (RFC
    4443): as much of the original as fits in 1280 bytes; ICMPv4 codes map to the nearest
    ICMPv6 code, and "fragmentation needed" becomes Packet Too Big (MTU 1280). Sizes agree with
    :func:`mpsim.sim.link.packet_size_bytes`.
    """
    original = encode_packet(message.original)
    src, dst = message.src, message.dst
    if dst.version == 4:
        quoted = original[: (original[0] & 0xF) * 4 + 8]
        body = struct.pack("!BBHI", _ICMPV4_DEST_UNREACHABLE, message.code, 0, 0) + quoted
        body = body[:2] + internet_checksum(body).to_bytes(2, "big") + body[4:]
        total = 20 + len(body)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, _PROTOCOL_ICMP, 0, src.packed, dst.packed)
        header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
        return header + body
    quoted = original[: 1280 - 48]
    if message.code == IcmpUnreachableCode.FRAGMENTATION_NEEDED:
        icmp_type, code, rest = _ICMPV6_PACKET_TOO_BIG, 0, 1280
    else:
        icmp_type, code, rest = _ICMPV6_DEST_UNREACHABLE, _ICMPV6_CODES.get(message.code, 0), 0
    body = struct.pack("!BBHI", icmp_type, code, 0, rest) + quoted
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(body), _NEXT_HEADER_ICMPV6)
    body = body[:2] + internet_checksum(pseudo + body).to_bytes(2, "big") + body[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), _NEXT_HEADER_ICMPV6, 64, src.packed, dst.packed)
    return header + body


def packet_bytes(packet: Any) -> bytes | None:
    """The wire bytes of a traced packet, or None for a light packet that cannot give an IpPacket."""
    if isinstance(packet, IpPacket):
        return encode_packet(packet)
    if isinstance(packet, IcmpUnreachable):
        return icmp_bytes(packet)
    to_ip_packet = getattr(packet, "to_ip_packet", None)
    return encode_packet(to_ip_packet()) if to_ip_packet is not None else None


# --- ladder diagrams ------------------------------------------------------------------------------

_FLAG_ORDER = (TcpFlags.SYN, TcpFlags.RST, TcpFlags.FIN, TcpFlags.PSH, TcpFlags.ACK)
_FLAG_NAMES = {TcpFlags.SYN: "SYN", TcpFlags.RST: "RST", TcpFlags.FIN: "FIN", TcpFlags.PSH: "PSH",
               TcpFlags.ACK: "ACK"}
_OPTION_LABELS = {"mss": "MSS", "window_scale": "WS", "sack_permitted": "SACK_PERM", "sack": "SACK",
                  "timestamps": "TS", "dss": "DSS", "mp_join_syn": "MP_JOIN", "mp_join_syn_ack": "MP_JOIN",
                  "mp_join_ack": "MP_JOIN", "add_addr": "ADD_ADDR", "remove_addr": "REMOVE_ADDR",
                  "mp_prio": "MP_PRIO", "mp_fail": "MP_FAIL", "mp_fastclose": "MP_FASTCLOSE",
                  "mp_tcprst": "MP_TCPRST", "mp_experimental": "MP_EXP", "experimental": "EXP"}
_SKIPPED_OPTIONS = {"nop", "eol"}


@dataclass(frozen=True, slots=True)
class LadderRow:
    """One hop of one packet: from ``src`` at ``sent_s`` to ``dst`` at ``arrived_s`` (None:
    dropped on the way, for ``drop_reason``)."""

    sent_s: float
    arrived_s: float | None
    src: str
    dst: str
    label: str
    drop_reason: str | None = None


def _option_label(option: Any) -> str | None:
    name = getattr(option, "name", type(option).__name__)
    if name in _SKIPPED_OPTIONS:
        return None
    if isinstance(option, MpCapable):
        return "MPC" if option.version == 1 else f"MPCv{option.version}"
    if isinstance(option, FastOpen):
        return "TFO" if option.cookie else "TFO(req)"
    try:
        if mp_convert_from_option(option) is not None:
            return "MP_CONVERT"
    except WireError:
        return "MP_CONVERT(bad)"
    return _OPTION_LABELS.get(name, name.upper())


def _payload_label(payload: bytes, stream_start: bool, syn: bool) -> str:
    """``len=N``, with the signalling found at the start of a stream: Convert TLVs or EOL options."""
    if stream_start:
        try:
            message, used_bytes = parse_convert_prefix(payload)
        except WireError:
            pass
        else:
            tlvs = ",".join(f"Error({tlv.code})" if isinstance(tlv, ErrorTlv) else tlv.name.title().replace("_", "")
                            for tlv in message.tlvs)
            rest = f" +{len(payload) - used_bytes}" if len(payload) > used_bytes else ""
            return f"len={len(payload)} [Convert {tlvs}{rest}]" if tlvs else f"len={len(payload)} [Convert{rest}]"
        if syn:
            try:
                signal = decode_syn_payload(payload)
            except WireError:
                pass
            else:
                names = ",".join(label for o in signal.options if (label := _option_label(o)) is not None)
                return f"len={len(payload)} [{names} EOL +{len(signal.data)}]"
    return f"len={len(payload)}"


class _Connection:
    """The ISNs of both sides, learned from the SYN and SYN-ACK as they pass."""

    def __init__(self, flow: FlowKey) -> None:
        self.flow = flow  # the initiator's direction
        self.isn: dict[FlowKey, int] = {}

    def label(self, packet: Any) -> str:
        if isinstance(packet, IcmpUnreachable):
            return f"ICMP unreachable code {int(packet.code)}"
        seg = packet.segment
        direction = flow_of(packet)
        if seg.flags & TcpFlags.SYN and direction not in self.isn:
            self.isn[direction] = seg.seq
        flags = "+".join(_FLAG_NAMES[f] for f in _FLAG_ORDER if seg.flags & f) or "none"
        own, peer = self.isn.get(direction), self.isn.get(reverse_flow(direction))
        seq = seg.seq if own is None else (seg.seq - own) % 2**32
        parts = [flags, f"seq={seq}"]
        if seg.flags & TcpFlags.ACK:
            parts.append(f"ack={seg.ack if peer is None else (seg.ack - peer) % 2**32}")
        options = [label for o in seg.options if (label := _option_label(o)) is not None]
        if options:
            parts.append("<" + ",".join(options) + ">")
        if seg.payload:
            stream_start = own is not None and (seg.seq - own) % 2**32 == (0 if seg.flags & TcpFlags.SYN else 1)
            parts.append(_payload_label(seg.payload, stream_start, bool(seg.flags & TcpFlags.SYN)))
        return " ".join(parts)


def _as_flow(flow: Sequence[Any]) -> FlowKey:
    if len(flow) != 4:
        raise ValueError(f"a flow is (src address, src port, dst address, dst port), got {flow!r}")
    return (ip_address(flow[0]), int(flow[1]), ip_address(flow[2]), int(flow[3]))


def _syn_flows(trace: Trace) -> list[FlowKey]:
    flows: list[FlowKey] = []
    for record in trace.packets:
        packet = record.packet
        if record.kind == "sent" and isinstance(packet, IpPacket):
            flags = packet.segment.flags
            if flags & TcpFlags.SYN and not flags & TcpFlags.ACK and flow_of(packet) not in flows:
                flows.append(flow_of(packet))
    return flows


def resolve_flow(trace: Trace, flow: int | Sequence[Any]) -> FlowKey:
    """The initiator's 4-tuple of ``flow``: a 4-tuple in either direction (addresses as
    ``ipaddress`` objects or strings), or n for the flow of the n-th distinct SYN (from 1)."""
    flows = _syn_flows(trace)
    if isinstance(flow, int):
        if not 1 <= flow <= len(flows):
            raise ValueError(f"flow {flow}: the trace has {len(flows)} connections (numbered from 1)")
        return flows[flow - 1]
    key = _as_flow(flow)
    return reverse_flow(key) if reverse_flow(key) in flows and key not in flows else key


def ladder_rows(trace: Trace, flow: int | Sequence[Any], nodes: Sequence[str]) -> list[LadderRow]:
    """The hops of one connection between ``nodes``, in the order they were sent."""
    key = resolve_flow(trace, flow)
    both = {key, reverse_flow(key)}
    connection = _Connection(key)
    wanted = set(nodes)

    def in_flow(packet: Any) -> bool:
        if isinstance(packet, IpPacket):
            return flow_of(packet) in both
        return isinstance(packet, IcmpUnreachable) and flow_of(packet.original) in both

    outcomes: dict[tuple[str, str, int], list[PacketRecord]] = {}
    for record in trace.packets:
        if record.kind != "sent":
            outcomes.setdefault((record.link, record.direction, record.packet_id), []).append(record)
    rows = []
    for record in trace.packets:
        if record.kind != "sent" or record.src not in wanted or record.dst not in wanted or not in_flow(record.packet):
            continue
        label = connection.label(record.packet)
        results = outcomes.get((record.link, record.direction, record.packet_id), [])
        if not results:  # still in flight when the trace ended
            rows.append(LadderRow(record.time_s, None, record.src, record.dst, label, "in flight"))
        for result in results:
            # A middlebox changed it on the way: show what was sent and what arrived.
            shown = label if result.packet == record.packet else f"{label} => {connection.label(result.packet)}"
            if result.kind == "delivered":
                rows.append(LadderRow(record.time_s, result.time_s, record.src, record.dst, shown))
            else:
                rows.append(LadderRow(record.time_s, None, record.src, record.dst, label, result.reason))
    return rows


def ladder_text(trace: Trace, flow: int | Sequence[Any], nodes: Sequence[str], *, column_width: int = 16) -> str:
    """The ladder diagram of one connection as text: send time (ms), one column per node, then
    the label and the arrival time. A dropped packet's arrow ends in ``X`` halfway."""
    if len(nodes) < 2:
        raise ValueError("a ladder needs at least two nodes")
    rows = ladder_rows(trace, flow, nodes)
    key = resolve_flow(trace, flow)
    position = {name: i * column_width for i, name in enumerate(nodes)}
    width = position[nodes[-1]] + 1
    header = "".join(name[: column_width - 1].ljust(column_width) for name in nodes)
    lines = [f"connection {key[0]}:{key[1]} -> {key[2]}:{key[3]}", f"{'time_ms':>10}  {header.rstrip()}"]
    for row in rows:
        cells = [" "] * width
        for x in position.values():
            cells[x] = "|"
        start, end = position[row.src], position[row.dst]
        step = 1 if end > start else -1
        stop = end if row.arrived_s is not None else start + (end - start) // 2
        for x in range(start + step, stop, step):
            cells[x] = "-"
        if row.arrived_s is not None:
            cells[end - step] = ">" if step > 0 else "<"
            note = f"(at {row.arrived_s * 1e3:.3f})"
        else:
            cells[stop] = "X"
            note = f"(dropped: {row.drop_reason})"
        lines.append(f"{row.sent_s * 1e3:10.3f}  {''.join(cells)}  {row.label} {note}")
    return "\n".join(lines)


def ladder_figure(trace: Trace, flow: int | Sequence[Any], nodes: Sequence[str], ax: Any = None, *,
                  to_scale: bool = False) -> Any:
    """The ladder diagram of one connection drawn with matplotlib; returns the axes.

    A vertical line per node; each hop is a slanted arrow from its sender's line at the send
    time to its receiver's line at the arrival time, labelled along the arrow; a drop ends in a
    red ``x`` halfway. ``to_scale`` True: time (ms) runs down the y axis. False: as in the RFC
    figures, each hop gets a row of its own (send time printed at the left), which keeps
    simultaneous packets apart and a long timeout from squashing the rest.
    """
    rows = ladder_rows(trace, flow, nodes)
    if ax is None:
        # An Agg canvas of its own, not pyplot: no window, and the caller's pyplot backend and
        # current figure stay as they were.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(2.8 * len(nodes) + 2.5, 1.5 + (0.35 if to_scale else 0.5) * max(len(rows), 4)))
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
    x_of = {name: float(i) for i, name in enumerate(nodes)}
    # A drop has no arrival: its arrow stops halfway, as if the hop took what delivered ones did.
    transit_s = {(r.src, r.dst): r.arrived_s - r.sent_s for r in rows if r.arrived_s is not None}
    spans = []  # (y at send, y at arrival or at the drop)
    for index, row in enumerate(rows):
        if not to_scale:
            spans.append((float(index), index + (0.75 if row.arrived_s is not None else 0.375)))
        elif row.arrived_s is not None:
            spans.append((row.sent_s * 1e3, row.arrived_s * 1e3))
        else:
            spans.append((row.sent_s * 1e3, (row.sent_s + transit_s.get((row.src, row.dst), 0.0) / 2) * 1e3))
    top = min((y for span in spans for y in span), default=0.0)
    bottom = max((y for span in spans for y in span), default=1.0)
    margin = max(bottom - top, 1.0) * 0.05
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_ylim(bottom + margin, top - 2 * margin)
    for name, x in x_of.items():
        ax.plot([x, x], [top - margin, bottom + margin], color="0.3", linewidth=1.2)
        ax.text(x, top - 1.2 * margin, name, ha="center", va="bottom", fontweight="bold")
    ax.figure.canvas.draw()  # fixes the transforms, so labels can follow the arrows' angles
    # Packets sent at one instant share a start point: spread their labels along the arrows.
    label_at = (0.5, 0.3, 0.7, 0.2, 0.8)
    same_instant: dict[tuple[str, float], int] = {}
    for row, (y0, y1) in zip(rows, spans):
        x0 = x_of[row.src]
        if row.arrived_s is not None:
            x1 = x_of[row.dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "-|>", "color": "tab:blue", "linewidth": 1.0})
            colour = "black"
        else:
            x1 = x0 + (x_of[row.dst] - x0) / 2
            ax.plot([x0, x1], [y0, y1], color="tab:red", linewidth=1.0)
            ax.plot([x1], [y1], marker="x", color="tab:red", markersize=9)
            colour = "tab:red"
        key = (row.src, row.sent_s)
        fraction = label_at[same_instant.get(key, 0) % len(label_at)] if to_scale else 0.5
        same_instant[key] = same_instant.get(key, 0) + 1
        (px0, py0), (px1, py1) = ax.transData.transform([(x0, y0), (x1, y1)])
        angle_deg = math.degrees(math.atan2(py1 - py0, px1 - px0))
        if angle_deg > 90 or angle_deg < -90:
            angle_deg += 180  # never upside down
        ax.text(x0 + (x1 - x0) * fraction, y0 + (y1 - y0) * fraction, row.label, rotation=angle_deg,
                rotation_mode="anchor", ha="center", va="bottom", fontsize=7, color=colour)
        if not to_scale:
            ax.text(-0.55, y0, f"{row.sent_s * 1e3:.3f}", fontsize=7, va="center", color="0.4")
    ax.set_xticks([])
    if to_scale:
        ax.set_ylabel("time (ms)")
    else:
        ax.set_yticks([])
        ax.spines["left"].set_visible(False)
        ax.text(-0.55, top - 1.2 * margin, "sent (ms)", fontsize=7, va="bottom", color="0.4")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return ax


def flows_in(trace: Trace) -> list[FlowKey]:
    """Every connection of the trace, by its initiator's 4-tuple, in the order of their first SYN."""
    return _syn_flows(trace)
