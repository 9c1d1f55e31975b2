"""Traces: pcap files that read back and dissect, ladder diagrams as text and as a figure."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import pytest
import simpy

from mpsim.proto.client import ClientHost, ClientPolicy, Request
from mpsim.proto.middlebox import DropSegments, IcmpUnreachable, SegmentClass, StripOptions
from mpsim.proto.server import ResponderApp, ServerHost, ServerKind
from mpsim.sim.link import Link, LinkDirection
from mpsim.sim.node import SimNode
from mpsim.sim.trace import Trace, icmp_bytes, ladder_figure, ladder_rows, ladder_text, resolve_flow
from mpsim.wire.convert import ConnectTlv, ConvertMessage, ErrorTlv, encode_convert
from mpsim.wire.mptcp import MpCapable, MpCapableFlags
from mpsim.wire.options import FastOpen, MaximumSegmentSize, TcpOptionKind
from mpsim.wire.pcap import read_pcap, read_pcapng
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, decode_packet, encode_packet

CLIENT, SERVER = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")


def _run(scheme: str = "mptcp", server_kind: ServerKind = ServerKind.MPTCP_V1, down_filters=(),
         up_filters=()) -> tuple[Trace, ClientHost]:
    env = simpy.Environment()
    trace = Trace(record_packets=True)
    client = ClientHost("client", {"eth0": CLIENT}, rng=random.Random(1), policy=ClientPolicy(scheme=scheme))
    server = ServerHost("server", SERVER, server_kind, rng=random.Random(2), app=ResponderApp(2000))
    a, b = SimNode(env, "client", client, trace), SimNode(env, "server", server, trace)
    Link(env, a, "eth0", b, "eth0", name="wire",
         forward=LinkDirection(env, "up", delay_s=0.010, rate_bps=10e6, filters=list(up_filters)),
         backward=LinkDirection(env, "down", delay_s=0.010, rate_bps=10e6, filters=list(down_filters)))
    a.call(lambda now: client.connect(Request(SERVER, 80, 100, 2000), now))
    env.run(until=120)
    return trace, client


# --- pcap -------------------------------------------------------------------------------------


def test_node_pcap_reads_back_as_the_packets_sent_and_received():
    trace, _ = _run()
    records = read_pcap(trace.pcap_bytes("client"))
    expected = [(r.time_s, r.packet) for r in trace.packets
                if (r.kind == "sent" and r.src == "client") or (r.kind == "delivered" and r.dst == "client")]
    assert len(records) == len(expected) > 6
    for (time_s, data), (expected_s, packet) in zip(records, expected):
        assert time_s == pytest.approx(expected_s, abs=1e-6)
        assert data == encode_packet(packet)
        decode_packet(data)  # checksums verify


def test_link_pcap_at_each_point():
    middlebox = StripOptions({TcpOptionKind.MPTCP})
    trace, _ = _run(up_filters=[middlebox])
    sent = [decode_packet(data) for _, data in read_pcap(trace.pcap_bytes("wire"))]
    arrived = [decode_packet(data) for _, data in read_pcap(trace.pcap_bytes("wire", point="delivered"))]
    assert len(sent) == len(arrived)
    syn_sent, syn_arrived = sent[0], arrived[0]
    assert any(isinstance(o, MpCapable) for o in syn_sent.segment.options)  # as the client sent it
    assert not any(isinstance(o, MpCapable) for o in syn_arrived.segment.options)  # as the server got it


def test_unknown_names_and_disabled_packet_records():
    trace, _ = _run()
    with pytest.raises(KeyError, match="'nowhere'.*known: client, server, wire"):
        trace.pcap_bytes("nowhere")
    with pytest.raises(KeyError, match="record_packets"):
        Trace().pcap_bytes("client")


def test_light_packets_are_skipped_unless_they_convert(tmp_path):
    @dataclass(frozen=True)
    class Light:
        size_bytes: int

    @dataclass(frozen=True)
    class Convertible:
        size_bytes: int = 40

        def to_ip_packet(self):
            return IpPacket(CLIENT, SERVER, TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5))

    env = simpy.Environment()
    trace = Trace(record_packets=True)
    direction = LinkDirection(env, "bulk", delay_s=0.001, deliver=lambda p: None, trace=trace)
    direction.send(Light(1500))
    direction.send(Convertible())
    env.run()
    path = trace.write_pcap(tmp_path / "bulk.pcap", "bulk")
    (record,) = read_pcap(path.read_bytes())
    assert decode_packet(record[1]) == Convertible().to_ip_packet()


def _tshark(path, *args) -> list[str]:
    result = subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_tshark_sees_the_mptcp_options(tmp_path):
    if shutil.which("tshark") is None:
        print("SKIP reason: tshark is not installed")
        pytest.skip("tshark is not installed")
    trace, client = _run()
    assert client.finished[0].outcome == "mptcp"
    path = trace.write_pcap(tmp_path / "mptcp.pcap", "client")
    mptcp_lines = _tshark(path, "-Y", "mptcp")
    assert len(mptcp_lines) == len(_tshark(path)) > 6  # every segment of an MPTCP connection
    subtypes = _tshark(path, "-Y", "mptcp", "-T", "fields", "-e", "tcp.flags.str", "-e", "tcp.options.mptcp.subtype")
    assert subtypes[0].split("\t")[1] == "0"  # the SYN: MP_CAPABLE
    assert any(line.split("\t")[1] == "2" for line in subtypes)  # DSS on data


def test_tshark_dissects_icmp(tmp_path):
    if shutil.which("tshark") is None:
        print("SKIP reason: tshark is not installed")
        pytest.skip("tshark is not installed")
    syn = IpPacket(CLIENT, SERVER, TcpSegment(40000, 80, 7, 0, TcpFlags.SYN, 1000, (MaximumSegmentSize(1460),)))
    syn6 = IpPacket(IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2"), syn.segment)
    env = simpy.Environment()
    trace = Trace(record_packets=True)
    direction = LinkDirection(env, "icmp", delay_s=0.0, deliver=lambda p: None, trace=trace)
    direction.send(IcmpUnreachable(syn, 1, reporter=IPv4Address("198.18.9.1")))
    direction.send(IcmpUnreachable(syn6, 3))
    env.run()
    path = trace.write_pcap(tmp_path / "icmp.pcap", "icmp")
    lines = _tshark(path, "-T", "fields", "-e", "icmp.type", "-e", "icmp.code", "-e", "icmpv6.type",
                    "-e", "icmpv6.code", "-e", "tcp.srcport", "-e", "_ws.expert")
    assert [line.split("\t")[:5] for line in lines] == [["3", "1", "", "", "40000"], ["", "", "1", "4", "40000"]]
    assert not any("checksum" in line.lower() and "bad" in line.lower() for line in lines)
    assert len(icmp_bytes(IcmpUnreachable(syn, 1))) == 56


# --- ladders ----------------------------------------------------------------------------------


def test_ladder_text_of_an_mptcp_handshake():
    trace, _ = _run()
    lines = ladder_text(trace, 1, ["client", "server"]).splitlines()
    flow = resolve_flow(trace, 1)
    assert lines[0] == f"connection {CLIENT}:{flow[1]} -> {SERVER}:80"
    assert lines[1] == "   time_ms  client          server"
    # The 64-byte SYN takes 51.2 us at 10 Mbit/s, then 10 ms; the 72-byte SYN-ACK 57.6 us.
    assert lines[2] == ("     0.000  |-------------->|  SYN seq=0 <MSS,SACK_PERM,TS,WS,MPC> (at 10.051)")
    assert lines[3] == "    10.051  |<--------------|  SYN+ACK seq=0 ack=1 <MSS,SACK_PERM,TS,WS,MPC> (at 20.109)"
    # The request rides on the third ACK, with the MP_CAPABLE data form.
    assert lines[4] == "    20.109  |-------------->|  PSH+ACK seq=1 ack=1 <TS,MPC> len=100 (at 30.250)"
    assert any("<TS,DSS> len=1448" in line for line in lines)


def test_ladder_marks_drops_and_middlebox_changes():
    trace, client = _run(down_filters=[DropSegments(SegmentClass.SYN_ACK, frozenset({1}))],
                         up_filters=[StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN})])
    text = ladder_text(trace, (SERVER, 80, CLIENT, resolve_flow(trace, 1)[1]), ["client", "server"])  # reversed 4-tuple
    lines = text.splitlines()
    # The link carries the stripped SYN: 60 bytes, 48 us.
    assert lines[2].endswith("SYN seq=0 <MSS,SACK_PERM,TS,WS,MPC> => SYN seq=0 <MSS,SACK_PERM,TS,WS> (at 10.048)")
    assert lines[3] == "    10.048  |       X-------|  SYN+ACK seq=0 ack=1 <MSS,SACK_PERM,TS,WS> (dropped: filter)"
    assert lines[4].startswith("  1000.000  |-------------->|  SYN seq=0")  # the SYN retransmission, 1 s later
    assert client.finished[0].outcome == "fallback_tcp"


def _hop_trace(packets: list[tuple[bool, IpPacket]]) -> Trace:
    """Packets exchanged over one link between two stand-in nodes (True: a -> b)."""

    class End:
        def __init__(self, name):
            self.name, self.trace = name, None

        def attach(self, port, direction):
            self.direction = direction

        def receive(self, port, packet):
            pass

    env = simpy.Environment()
    trace = Trace(record_packets=True)
    a, b = End("client"), End("converter")
    Link(env, a, "p", b, "q", trace=trace, forward=LinkDirection(env, "f", delay_s=0.01),
         backward=LinkDirection(env, "b", delay_s=0.01))
    for index, (forward, packet) in enumerate(packets):
        env.run(until=index * 0.02 + 0.001)
        (a if forward else b).direction.send(packet)
    env.run()
    return trace


def test_ladder_labels_convert_tlvs_tfo_and_relative_numbers():
    convert = encode_convert(ConvertMessage((ConnectTlv(443, SERVER),)))
    error = encode_convert(ConvertMessage((ErrorTlv(97, 1),)))
    c2s = (CLIENT, 40000, SERVER, 5124)

    def seg(forward, flags, seq, ack, payload=b"", options=()):
        src, sport, dst, dport = c2s if forward else (c2s[2], c2s[3], c2s[0], c2s[1])
        return forward, IpPacket(src, dst, TcpSegment(sport, dport, seq, ack, flags, 1000, options, payload))

    client_isn = 2**32 - 10  # both sides' numbers wrap past 2**32 during the exchange
    request_end = (client_isn + 1 + len(convert) + 5) % 2**32
    trace = _hop_trace([
        seg(True, TcpFlags.SYN, client_isn, 0, convert + b"GET /", (FastOpen(b""), MpCapable(1, MpCapableFlags.H))),
        seg(False, TcpFlags.SYN | TcpFlags.ACK, 2**32 - 5, request_end, options=(FastOpen(bytes(8)),)),
        seg(False, TcpFlags.ACK | TcpFlags.PSH, 2**32 - 4, request_end, error),
        seg(True, TcpFlags.RST | TcpFlags.ACK, request_end, 4),  # acks the reply: 2**32 - 4 + 8
    ])
    lines = ladder_text(trace, c2s, ["client", "converter"], column_width=12).splitlines()
    assert lines[1] == "   time_ms  client      converter"
    assert lines[2] == ("     1.000  |---------->|  SYN seq=0 <TFO(req),MPC> len=29 [Convert Connect +5] (at 11.000)")
    assert lines[3] == "    21.000  |<----------|  SYN+ACK seq=0 ack=30 <TFO> (at 31.000)"  # ISN wraps past 2**32
    assert lines[4] == "    41.000  |<----------|  PSH+ACK seq=1 ack=30 len=8 [Convert Error(97)] (at 51.000)"
    assert lines[5] == "    61.000  |---------->|  RST+ACK seq=30 ack=9 (at 71.000)"


def test_flows_are_numbered_from_one():
    trace, _ = _run()
    with pytest.raises(ValueError, match="numbered from 1"):
        ladder_rows(trace, 0, ["client", "server"])
    with pytest.raises(ValueError, match="numbered from 1"):
        ladder_rows(trace, 2, ["client", "server"])


def test_ladder_figure_is_drawn_and_saved(tmp_path):
    trace, _ = _run(down_filters=[DropSegments(SegmentClass.SYN_ACK, frozenset({1}))])
    for to_scale in (True, False):
        ax = ladder_figure(trace, 1, ["client", "server"], to_scale=to_scale)
        rows = ladder_rows(trace, 1, ["client", "server"])
        arrows = [a for a in ax.texts if getattr(a, "arrow_patch", None) is not None]
        assert len(arrows) == sum(r.arrived_s is not None for r in rows)
        labels = [t.get_text() for t in ax.texts]
        assert "client" in labels and any(label.startswith("SYN seq=0") for label in labels)
        path = tmp_path / f"ladder-{to_scale}.png"
        ax.figure.savefig(path, dpi=80)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_ladder_across_a_router_with_an_icmp_answer():
    from mpsim.proto.harness import Router

    env = simpy.Environment()
    trace = Trace(record_packets=True)
    far = IPv4Address("198.18.3.9")
    client = ClientHost("client", {"eth0": CLIENT}, rng=random.Random(1), policy=ClientPolicy(scheme="plain"))
    last_hop = ServerHost("last-hop", IPv4Address("198.18.3.1"), ServerKind.UNREACHABLE, rng=random.Random(2))
    router = Router({"east": ["198.18.3.0/24"], "west": ["198.18.0.0/24"]})
    nodes = [SimNode(env, name, machine, trace) for name, machine in
             (("client", client), ("router", router), ("last-hop", last_hop))]
    Link(env, nodes[0], "eth0", nodes[1], "west", forward=LinkDirection(env, "a", delay_s=0.005),
         backward=LinkDirection(env, "b", delay_s=0.005))
    Link(env, nodes[1], "east", nodes[2], "eth0", forward=LinkDirection(env, "c", delay_s=0.010),
         backward=LinkDirection(env, "d", delay_s=0.010))
    nodes[0].call(lambda now: client.connect(Request(far, 80), now))
    env.run(until=10)
    lines = ladder_text(trace, 1, ["client", "router", "last-hop"], column_width=10).splitlines()
    assert lines[2:] == [
        "     0.000  |-------->|         |  SYN seq=0 <MSS,SACK_PERM,TS,WS> (at 5.000)",
        "     5.000  |         |-------->|  SYN seq=0 <MSS,SACK_PERM,TS,WS> (at 15.000)",
        "    15.000  |         |<--------|  ICMP unreachable code 1 (at 25.000)",
        "    25.000  |<--------|         |  ICMP unreachable code 1 (at 30.000)",
    ]
    assert client.finished[0].outcome == "failed"
    # The two end columns alone: only hops between them count, and there are none.
    assert ladder_rows(trace, 1, ["client", "last-hop"]) == []


# --- pcapng captures -------------------------------------------------------------------------------


def _transfer_trace(size_bytes: int = 30_000) -> Trace:
    from mpsim.sim.transfer import BulkTransfer

    env = simpy.Environment()
    trace = Trace(record_packets=True)
    down = LinkDirection(env, "transfer.dsl.down", delay_s=0.01, rate_bps=10e6, trace=trace)
    up = LinkDirection(env, "transfer.dsl.up", delay_s=0.01, rate_bps=10e6, trace=trace)
    BulkTransfer(env, [(down, up)], size_bytes, rcv_buf_bytes=1_000_000)
    env.run(until=10)
    return trace


def test_capture_files_group_transfer_directions_and_skip_empty_links():
    trace, _ = _run()
    assert trace.capture_files(["wire", "idle"]) == {"wire": ["wire"]}  # "idle" carried nothing: no file
    transfer = _transfer_trace()
    assert transfer.capture_files(["transfer.dsl.down", "transfer.dsl.up"]) == {
        "transfer.dsl": ["transfer.dsl.down", "transfer.dsl.up"]}


def test_pcapng_names_one_interface_per_link():
    trace, _ = _run()
    interfaces, records = read_pcapng(trace.pcapng_bytes(["wire"]))
    assert [(i.interface_name, i.description) for i in interfaces] == [("wire", "client <-> server")]
    assert [(t, decode_packet(d)) for _, t, d in records] == [
        (t, decode_packet(d)) for t, d in read_pcap(trace.pcap_bytes("wire"))]
    with pytest.raises(KeyError, match="no packets on a link named 'idle'"):
        trace.pcapng_bytes(["idle"])


def test_transfer_data_segments_advertise_the_senders_buffer():
    # Each side's window is its free receive window scaled by 2**7: the data sender receives
    # nothing, so its window stays its idle buffer's first offer (tcp_rmem[1] 131072 x 128/256 =
    # 65536 less one 1448-byte MSS: 64088, field 500); before, data segments advertised 0. The
    # receiver's is at most its 1 MB buffer's window at scaling_ratio 160: 625000.
    transfer = _transfer_trace()
    interfaces, records = read_pcapng(transfer.pcapng_bytes(["transfer.dsl.down", "transfer.dsl.up"]))
    data = [decode_packet(d).segment for i, _, d in records if interfaces[i].interface_name == "transfer.dsl.down"]
    acks = [decode_packet(d).segment for i, _, d in records if interfaces[i].interface_name == "transfer.dsl.up"]
    assert data and all(s.payload and s.window == 64088 >> 7 == 500 for s in data)
    assert acks and all(0 < s.window <= 1_000_000 * 160 // 256 >> 7 for s in acks)


def test_pcapng_is_the_same_bytes_for_the_same_run():
    assert _run()[0].pcapng_bytes(["wire"]) == _run()[0].pcapng_bytes(["wire"])
    assert _transfer_trace().pcapng_bytes(["transfer.dsl.down", "transfer.dsl.up"]) == \
        _transfer_trace().pcapng_bytes(["transfer.dsl.down", "transfer.dsl.up"])
