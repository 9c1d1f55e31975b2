"""Middlebox policies (docs/protocols.md 8.6): each on hand-made packets, then in a client-server run."""

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest

from mpsim.proto.events import FallbackReason, FellBackToTcp
from mpsim.proto.harness import Harness
from mpsim.proto.host import Host
from mpsim.proto.middlebox import (
    PASS,
    Chain,
    Coalesce,
    DropSegments,
    DropUnknownOptionSyns,
    IcmpUnreachable,
    IcmpUnreachableCode,
    MirrorMpCapable,
    Nat,
    RewritePayload,
    SegmentClass,
    SegmentClassifier,
    SequenceRewriter,
    SplitSegments,
    StripMode,
    StripOptions,
    StripPayload,
    drop_rsts,
    drop_syns_with_data,
    segment_classes,
)
from mpsim.proto.mptcp import MptcpClientExtension
from mpsim.proto.server import ResponderApp, ServerHost, ServerKind, SinkApp, response_payload
from mpsim.proto.tcp import (
    Closed,
    DataReceived,
    Established,
    PeerClosed,
    ResetReceived,
    TcpExtension,
    TcpPolicy,
    TcpState,
    Unreachable,
)
from mpsim.wire.mptcp import MpCapable, MpCapableFlags
from mpsim.wire.options import (
    Experimental,
    MaximumSegmentSize,
    NoOperation,
    Sack,
    SackPermitted,
    TcpOptionKind,
    Timestamps,
    WindowScale,
)
from mpsim.wire.segment import (
    IpPacket,
    TcpFlags,
    TcpSegment,
    decode_packet,
    encode_packet,
    encode_segment,
    tcp_checksum,
)

C = IPv4Address("192.0.2.1")
S = IPv4Address("198.51.100.1")
PUBLIC = IPv4Address("203.0.113.9")
PUBLIC_2 = IPv4Address("203.0.113.10")
ACK, SYN, FIN, RST, PSH = TcpFlags.ACK, TcpFlags.SYN, TcpFlags.FIN, TcpFlags.RST, TcpFlags.PSH
MPC_SYN = MpCapable(1, MpCapableFlags.H)  # v1 SYN form: 1e 04 01 01


def packet(flags, seq=1000, ack=0, payload=b"", options=(), src=C, dst=S, sport=40000, dport=80):
    return IpPacket(src, dst, TcpSegment(sport, dport, seq, ack, flags, 65535, tuple(options), payload))


def reply(flags, seq=5000, ack=0, payload=b"", options=()):
    return packet(flags, seq, ack, payload, options, src=S, dst=C, sport=80, dport=40000)


def with_checksum(tcp_hex: str, src=C, dst=S) -> bytes:
    """The TCP bytes written out in ``tcp_hex`` (checksum field zero), with the checksum filled in."""
    raw = bytes.fromhex(tcp_hex.replace(" ", ""))
    return raw[:16] + tcp_checksum(src, dst, raw).to_bytes(2, "big") + raw[18:]


def run(policy, packets, now=0.0):
    return [out for p in packets for out in policy(p, now)]


class FixedRng:
    """An rng whose random bits are chosen by the test, so rewritten bytes can be written out."""

    def __init__(self, *values):
        self.values = list(values)

    def getrandbits(self, k):
        return self.values.pop(0)

    def random(self):
        return 0.5


# --- classification --------------------------------------------------------------------------


def test_segment_classes_of_each_kind():
    assert segment_classes(packet(SYN).segment) == {SegmentClass.SYN, SegmentClass.ANY}
    assert segment_classes(reply(SYN | ACK).segment) == {SegmentClass.SYN_ACK, SegmentClass.ANY}
    assert segment_classes(packet(ACK | FIN, payload=b"x").segment) == {SegmentClass.DATA, SegmentClass.FIN,
                                                                        SegmentClass.ANY}
    assert segment_classes(packet(RST | ACK).segment) == {SegmentClass.RST, SegmentClass.ANY}
    # SYN data is the SYN's, not DATA: "strip data options" must not touch the SYN.
    assert SegmentClass.DATA not in segment_classes(packet(SYN, payload=b"x").segment)


def test_third_ack_is_the_first_ack_after_the_syn_of_that_flow():
    classifier = SegmentClassifier()
    other_flow = packet(ACK, sport=40001)
    classes = [classifier.classify(p) for p in
               (packet(ACK), packet(SYN), other_flow, packet(ACK, seq=1001), packet(ACK, seq=1001, payload=b"x"))]
    assert [SegmentClass.THIRD_ACK in c for c in classes] == [False, False, False, True, False]
    assert classifier.classify(IcmpUnreachable(packet(SYN), 1)) == frozenset()


# --- option stripping: exact bytes ------------------------------------------------------------

SYN_OPTIONS = (MaximumSegmentSize(1460), SackPermitted(), Timestamps(1, 0), NoOperation(), WindowScale(7), MPC_SYN)
#           ports     seq      ack      off/flags window  csum urg
SYN_HEADER = "9c40 0050 01020304 00000000 {off}002 ffff 0000 0000"
LINUX_OPTIONS = "020405b4 0402 080a 00000001 00000000 01 030307"


def test_syn_with_mp_capable_bytes():
    syn = packet(SYN, seq=0x01020304, options=SYN_OPTIONS)
    assert encode_segment(syn.segment, C, S) == with_checksum(SYN_HEADER.format(off="b") + LINUX_OPTIONS + "1e040101")


def test_strip_with_nops_keeps_the_header_length():
    strip = StripOptions({TcpOptionKind.MPTCP}, mode=StripMode.NOP)
    (out,) = strip(packet(SYN, seq=0x01020304, options=SYN_OPTIONS), 0.0)
    assert encode_segment(out.segment, C, S) == with_checksum(SYN_HEADER.format(off="b") + LINUX_OPTIONS + "01010101")
    assert strip.hits == 1


def test_strip_and_shrink_removes_four_bytes():
    strip = StripOptions({TcpOptionKind.MPTCP}, mode=StripMode.REMOVE)
    (out,) = strip(packet(SYN, seq=0x01020304, options=SYN_OPTIONS), 0.0)
    assert encode_segment(out.segment, C, S) == with_checksum(SYN_HEADER.format(off="a") + LINUX_OPTIONS)


def test_strip_targets_only_the_chosen_classes():
    strip = StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.THIRD_ACK})
    mpc_ack = MpCapable(1, MpCapableFlags.H, sender_key=1, receiver_key=2)
    syn, third, data = packet(SYN, options=[MPC_SYN]), packet(ACK, 1001, options=[mpc_ack]), \
        packet(ACK, 1001, payload=b"x", options=[mpc_ack])
    assert run(strip, [syn, third, data]) == [syn, replace(third, segment=replace(third.segment, options=())), data]
    assert strip.hits == 1


def test_strip_passes_packets_without_the_option_unchanged():
    strip = StripOptions({TcpOptionKind.MPTCP})
    plain = packet(SYN, options=SYN_OPTIONS[:-1])
    assert strip(plain, 0.0) == [plain] and strip.hits == 0


# --- drops --------------------------------------------------------------------------------


def test_drop_unknown_option_syns():
    box = DropUnknownOptionSyns()
    mpc_syn, plain_syn = packet(SYN, options=SYN_OPTIONS), packet(SYN, options=SYN_OPTIONS[:-1])
    mpc_synack = reply(SYN | ACK, options=[MpCapable(1, MpCapableFlags.H, sender_key=7)])
    assert run(box, [mpc_syn, plain_syn, mpc_synack]) == [plain_syn, mpc_synack]
    assert DropUnknownOptionSyns(box.known_kinds | {TcpOptionKind.MPTCP})(mpc_syn, 0.0) == [mpc_syn]


def test_drop_nth_occurrence_of_a_class():
    box = DropSegments(SegmentClass.SYN_ACK, frozenset({1, 3}))
    synacks = [reply(SYN | ACK, ack=1001 + i) for i in range(4)]
    assert run(box, [packet(SYN)] + synacks) == [packet(SYN), synacks[1], synacks[3]]
    assert box.name == "drop-syn_ack#1,3"


def test_drop_syns_with_data_and_rsts():
    box = drop_syns_with_data()
    assert run(box, [packet(SYN, payload=b"hi"), packet(SYN)]) == [packet(SYN)]
    rsts = drop_rsts()
    assert run(rsts, [packet(RST), packet(RST | ACK), packet(ACK)]) == [packet(ACK)]


# --- payload ------------------------------------------------------------------------------


def test_strip_syn_payload_keeps_the_sequence_number():
    box = StripPayload()
    data = packet(ACK, 1001, payload=b"keep")
    assert run(box, [packet(SYN, payload=b"signal"), data]) == [packet(SYN), data]


def test_rewrite_payload_replaces_every_occurrence():
    box = RewritePayload(b"10.0.0.1", b"192.0.2.99", classes={SegmentClass.DATA})
    out = run(box, [packet(ACK, payload=b"PORT 10.0.0.1,10.0.0.1"), packet(SYN, payload=b"10.0.0.1")])
    assert [p.segment.payload for p in out] == [b"PORT 192.0.2.99,192.0.2.99", b"10.0.0.1"]


def test_split_gives_two_contiguous_segments_with_psh_fin_on_the_tail():
    ts = Timestamps(5, 6)
    box = SplitSegments(first_bytes=3)
    head, tail = box(packet(ACK | PSH | FIN, 1001, 7, b"abcdefg", [ts]), 0.0)
    assert (head.segment.seq, head.segment.payload, head.segment.flags) == (1001, b"abc", ACK)
    assert (tail.segment.seq, tail.segment.payload, tail.segment.flags) == (1004, b"defg", ACK | PSH | FIN)
    assert head.segment.options == tail.segment.options == (ts,)
    one_byte, syn = packet(ACK, payload=b"a"), packet(SYN, payload=b"abcd")
    assert run(box, [one_byte, syn]) == [one_byte, syn]


def test_coalesce_merges_contiguous_segments_of_one_batch_only():
    first, second = packet(ACK, 1001, 7, b"abc"), packet(ACK | PSH, 1004, 9, b"def")
    gap = packet(ACK, 1010, 9, b"zz")
    merged = Coalesce().process([first, second, gap], 0.0)
    assert merged == [packet(ACK | PSH, 1001, 9, b"abcdef"), gap]
    # One packet per call, as the harness calls filters: nothing to merge with.
    assert run(Coalesce(), [first, second]) == [first, second]


def test_split_then_coalesce_in_a_chain_restores_the_segment():
    original = packet(ACK | PSH, 1001, 7, b"abcdefgh")
    chain = Chain(SplitSegments(), Coalesce())
    assert chain(original, 0.0) == [original]
    assert chain.name == "split+coalesce" and chain.hits == 2


# --- sequence rewriting -----------------------------------------------------------------------

OFFSET = 0x10000000


def test_seq_rewrite_forward_bytes():
    box = SequenceRewriter(FixedRng(OFFSET))
    (out,) = box.forward(packet(SYN, seq=0x01020304), 0.0)
    assert encode_segment(out.segment, C, S) == with_checksum("9c40 0050 11020304 00000000 5002 ffff 0000 0000")
    assert box.offset_of((C, 40000, S, 80)) == OFFSET


def test_seq_rewrite_backward_bytes_ack_and_sack_blocks():
    box = SequenceRewriter(FixedRng(OFFSET))
    box.forward(packet(SYN, seq=0x01020304), 0.0)
    synack = reply(SYN | ACK, seq=0x0A000000, ack=0x11020305)
    (out,) = box.backward(synack, 0.0)
    assert encode_segment(out.segment, S, C) == with_checksum(
        "0050 9c40 0a000000 01020305 5012 ffff 0000 0000", src=S, dst=C)
    sack = reply(ACK, seq=0x0A000001, ack=0x11020305, options=[NoOperation(), NoOperation(),
                                                               Sack(((0x11020400, 0x11020500),))])
    (out,) = box.backward(sack, 0.0)
    assert encode_segment(out.segment, S, C) == with_checksum(
        "0050 9c40 0a000001 01020305 8010 ffff 0000 0000 0101 050a 01020400 01020500", src=S, dst=C)


def test_seq_rewrite_keeps_offset_for_retransmitted_syn_and_renews_it_for_a_new_isn():
    box = SequenceRewriter(FixedRng(OFFSET, 0x20))
    box.forward(packet(SYN, seq=1), 0.0)
    assert box.forward(packet(SYN, seq=1), 1.0)[0].segment.seq == 1 + OFFSET
    assert box.forward(packet(SYN, seq=99), 2.0)[0].segment.seq == 99 + 0x20


def test_seq_rewrite_leaves_unknown_flows_rst_without_ack_and_fixes_icmp_quotes():
    box = SequenceRewriter(FixedRng(OFFSET))
    mid_flow = packet(ACK, 5, 6)
    assert box.forward(mid_flow, 0.0) == [mid_flow]
    (syn_out,) = box.forward(packet(SYN, seq=7), 0.0)
    rst = reply(RST, seq=5000, ack=123)
    assert box.backward(rst, 0.0) == [rst]  # no ACK flag: the ack field means nothing
    (icmp,) = box.backward(IcmpUnreachable(syn_out, IcmpUnreachableCode.HOST_UNREACHABLE), 0.0)
    assert icmp.original == packet(SYN, seq=7)


# --- NAT ---------------------------------------------------------------------------------


def test_nat_rewrites_source_out_and_destination_back():
    nat = Nat([PUBLIC], ports=(5000, 5009))
    (out,) = nat.forward(packet(SYN, payload=b"x"), 0.0)
    raw = encode_packet(out)
    assert raw[12:16] == PUBLIC.packed and raw[16:20] == S.packed and raw[20:22] == (5000).to_bytes(2, "big")
    assert decode_packet(raw) == out  # checksums recomputed and valid
    (back,) = nat.backward(IpPacket(S, PUBLIC, replace(reply(SYN | ACK, ack=1002).segment, dst_port=5000)), 0.0)
    raw = encode_packet(back)
    assert raw[16:20] == C.packed and raw[22:24] == (40000).to_bytes(2, "big")
    assert back == reply(SYN | ACK, ack=1002)


def test_nat_drops_unsolicited_inbound_and_maps_ports_per_endpoint():
    nat = Nat([PUBLIC], ports=(5000, 5009))
    inbound = IpPacket(S, PUBLIC, TcpSegment(80, 5000, 1, 0, SYN, 100))
    assert nat.backward(inbound, 0.0) == [] and nat.dropped_inbound == 1
    first = nat.forward(packet(SYN), 0.0)[0].segment.src_port
    again = nat.forward(packet(ACK, 1001), 0.1)[0].segment.src_port
    other = nat.forward(packet(SYN, sport=40001), 0.2)[0].segment.src_port
    assert (first, again, other) == (5000, 5000, 5001)


def test_nat_pools_paired_or_not():
    paired, unpaired = Nat([PUBLIC, PUBLIC_2]), Nat([PUBLIC, PUBLIC_2], paired=False)
    flows = [packet(SYN, sport=40000 + i) for i in range(2)]
    assert [paired.forward(p, 0.0)[0].src for p in flows] == [PUBLIC, PUBLIC]
    assert [unpaired.forward(p, 0.0)[0].src for p in flows] == [PUBLIC, PUBLIC_2]


def test_nat_mapping_expires_after_idle_timeout():
    nat = Nat([PUBLIC], ports=(5000, 5009), mapping_timeout_s=30.0)
    nat.forward(packet(SYN), 0.0)
    late_reply = IpPacket(S, PUBLIC, TcpSegment(80, 5000, 1, 1001, SYN | ACK, 100))
    assert nat.backward(late_reply, 29.0) != []
    assert nat.backward(late_reply, 60.0) == []
    assert nat.mapping_of(C, 40000, 60.0) is None
    assert nat.forward(packet(ACK, 1001), 61.0)[0].segment.src_port == 5001


def test_nat_translates_icmp_quotes_and_ignores_ipv6():
    nat = Nat([PUBLIC])
    (out,) = nat.forward(packet(SYN), 0.0)
    (icmp,) = nat.backward(IcmpUnreachable(out, IcmpUnreachableCode.HOST_UNREACHABLE, reporter=S), 0.0)
    assert icmp.original == packet(SYN) and icmp.dst == C
    v6 = packet(SYN, src=IPv6Address("2001:db8::1"), dst=IPv6Address("2001:db8::2"))
    assert nat.forward(v6, 0.0) == [v6]
    with pytest.raises(ValueError, match="all IPv4Address or all IPv6Address"):
        Nat([PUBLIC, IPv6Address("2001:db8::9")])


def test_an_ipv6_pool_makes_a_napt66_that_ignores_ipv4():
    nat = Nat([IPv6Address("2001:db8::9")], ports=(5000, 5009))
    v6 = packet(SYN, src=IPv6Address("2001:db8::1"), dst=IPv6Address("2001:db8:1::2"))
    (out,) = nat.forward(v6, 0.0)
    assert (out.src, out.segment.src_port) == (IPv6Address("2001:db8::9"), 5000)
    answer = replace(out, src=out.dst, dst=out.src, segment=replace(out.segment, src_port=out.segment.dst_port,
                                                                     dst_port=5000, flags=SYN | ACK))
    (back,) = nat.backward(answer, 0.0)
    assert (back.dst, back.segment.dst_port) == (IPv6Address("2001:db8::1"), v6.segment.src_port)
    assert nat.forward(packet(SYN), 0.0) == [packet(SYN)]  # IPv4 passes an IPv6 NAT untouched


# --- option mirroring ---------------------------------------------------------------------------


def test_mirror_copies_mp_capable_into_a_synack_without_one():
    box = MirrorMpCapable()
    box.forward(packet(SYN, options=SYN_OPTIONS), 0.0)
    plain_synack = reply(SYN | ACK, ack=1001, options=SYN_OPTIONS[:-1])
    (out,) = box.backward(plain_synack, 0.0)
    assert out.segment.options == SYN_OPTIONS  # verbatim: the 4-byte key-less v1 SYN form
    other_flow = replace(plain_synack, segment=replace(plain_synack.segment, dst_port=40001))
    assert box.backward(other_flow, 0.0) == [other_flow]
    mptcp_synack = reply(SYN | ACK, ack=1001, options=[MpCapable(1, MpCapableFlags.H, sender_key=9)])
    assert box.backward(mptcp_synack, 0.0) == [mptcp_synack]
    assert box.hits == 1


def test_mirror_with_rng_completes_a_v1_key_and_skips_when_no_room():
    box = MirrorMpCapable(FixedRng(0x1122334455667788, 0x99))
    box.forward(packet(SYN, options=[MPC_SYN]), 0.0)
    (out,) = box.backward(reply(SYN | ACK, ack=1001), 0.0)
    assert out.segment.options == (MpCapable(1, MpCapableFlags.H, sender_key=0x1122334455667788),)
    full = reply(SYN | ACK, ack=1001, options=[Experimental(253, bytes(34))])  # 36 of 40 bytes used
    assert box.backward(full, 0.0) == [full] and box.no_room == 1


# --- chains and names -------------------------------------------------------------------------


def test_chain_backward_runs_two_way_boxes_in_reverse_order():
    nat, seq = Nat([PUBLIC], ports=(5000, 5009)), SequenceRewriter(FixedRng(OFFSET))
    chain = Chain(nat, seq, SplitSegments())
    (out,) = chain.forward(packet(SYN, seq=1), 0.0)
    assert (out.src, out.segment.src_port, out.segment.seq) == (PUBLIC, 5000, 1 + OFFSET)
    synack = IpPacket(S, PUBLIC, TcpSegment(80, 5000, 77, 2 + OFFSET, SYN | ACK, 100))
    # The backward side must undo the sequence offset while the flow still has its public
    # tuple, i.e. before the NAT maps it back.
    (back,) = chain.backward(synack, 0.0)
    assert (back.dst, back.segment.dst_port, back.segment.ack) == (C, 40000, 2)
    assert chain.backward.hits == chain.hits == nat.hits + seq.hits == 4  # a side counts on its box


def test_every_policy_has_a_distinct_name_and_a_description():
    policies = [StripOptions({30}), StripOptions({30}, mode=StripMode.NOP), DropUnknownOptionSyns(),
                drop_syns_with_data(), drop_rsts(), StripPayload(), RewritePayload(b"a", b"b"), SplitSegments(),
                Coalesce(), SequenceRewriter(random.Random(1)), Nat([PUBLIC]), MirrorMpCapable(), PASS]
    names = [p.name for p in policies]
    assert len(set(names)) == len(names)
    assert all(p.description for p in policies)


# --- through the harness: a client and a server with the box on the path ----------------------------

RTT_S = 0.02


class Client:
    """A client application: sends ``request`` once established, records what happens."""

    def __init__(self, request=b"GET /\n"):
        self.request = request
        self.events = []
        self.data = bytearray()

    def on_tcp_event(self, host, conn, event, now):
        self.events.append((round(now, 6), event))
        if isinstance(event, Established) and self.request:
            conn.send(self.request, now)
        elif isinstance(event, DataReceived):
            self.data += event.data
        elif isinstance(event, PeerClosed) and conn.state is TcpState.CLOSE_WAIT:
            conn.close(now)

    def of(self, kind):
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


class AddOptions(TcpExtension):
    """Puts ``options`` on the SYN (only on the first ``syn_attempts`` SYNs, like Linux's MPC SYNs)."""

    def __init__(self, *options, syn_attempts=99):
        self.options, self.syn_attempts = options, syn_attempts

    def syn_options(self, conn, retransmission):
        return self.options if retransmission < self.syn_attempts else ()


def setup(forward=(), backward=(), kind=ServerKind.LEGACY_DROP, app=None, client_policy=None):
    harness = Harness()
    client = harness.add("client", Host("client", {"eth0": C}, rng=random.Random(1), policy=client_policy))
    server = harness.add("server", ServerHost("server", S, kind, rng=random.Random(2),
                                              app=app if app is not None else ResponderApp(100)))
    harness.link("client", "eth0", "server", "eth0", RTT_S / 2, a_to_b=list(forward), b_to_a=list(backward))
    return harness, client, server


def server_conn(server):
    (conn,) = server.connections.values()
    return conn


def test_harness_strip_mpc_on_syn_nop_vs_remove():
    for mode, expected in ((StripMode.NOP, (NoOperation(),) * 4), (StripMode.REMOVE, ())):
        harness, client, server = setup([StripOptions({TcpOptionKind.MPTCP}, {SegmentClass.SYN}, mode)])
        conn = client.open(Client(request=b""), C, S, 80, 0.0, extensions=(AddOptions(MPC_SYN),))
        harness.run(0.015)
        assert conn.syn_options_sent[-1] == MPC_SYN
        assert server_conn(server).syn.options == conn.syn_options_sent[:-1] + expected


def test_harness_unknown_option_syns_dropped_until_mptcp_gives_up():
    box = DropUnknownOptionSyns()
    harness, client, server = setup([box])
    ext = MptcpClientExtension(rng=random.Random(7), mib=client.mib)
    app = Client()
    client.open(app, C, S, 80, 0.0, extensions=(ext,))
    harness.run(20.0)
    # Linux: SYN+MP_CAPABLE at 0, 1 and 3 s die on the path; the plain SYN at 7 s gets through.
    assert box.hits == 3
    assert app.of(Established)[0][0] == pytest.approx(7.0 + RTT_S)
    assert ext.fallback_reason is FallbackReason.MP_CAPABLE_SYN_DROPPED


def test_harness_syn_with_data_dropped_then_plain_syn_retransmitted():
    harness, client, server = setup([drop_syns_with_data()], app=SinkApp())
    app = Client(request=b"")
    client.open(app, C, S, 80, 0.0, syn_payload=b"hello")
    harness.run(10.0)
    assert app.of(Established) == [(pytest.approx(1.0 + RTT_S), Established(syn_data_acked_bytes=0))]
    assert server.app.stream() == b"hello"  # the Linux client re-sends unACKed SYN data as data


def test_harness_stripped_syn_payload_is_not_acked_and_never_reaches_a_queueing_server():
    app_server = SinkApp()
    harness, client, server = setup([StripPayload()], kind=ServerKind.LEGACY_QUEUE, app=app_server,
                                    client_policy=TcpPolicy(resend_unacked_syn_data=False))
    app = Client(request=b"")
    conn = client.open(app, C, S, 80, 0.0, syn_payload=b"SIGNAL")
    harness.run(1.0)
    assert app.of(Established)[0][1] == Established(syn_data_acked_bytes=0)
    assert conn.synack.ack == (conn.iss + 1) % 2**32
    assert app_server.stream() == b""


def test_harness_sequence_rewriting_is_invisible_to_both_ends():
    box = SequenceRewriter(random.Random(3))
    harness, client, server = setup([box.forward], [box.backward], app=ResponderApp(5000, close_after_response=True))
    app = Client()
    conn = client.open(app, C, S, 80, 0.0)
    harness.run(100.0)  # past the server's TIME-WAIT
    offset = box.offset_of(conn.four_tuple[:2] + (S, 80))
    assert offset
    assert server.app.stream() == b"GET /\n" and bytes(app.data) == response_payload(5000)
    assert [e.reason.value for _, e in app.of(Closed)] == ["last_ack"]
    assert conn.snd_una == conn.snd_nxt  # every byte ACKed, through the un-rewriting
    assert [c.reason.value for c in server.app.closes.values()] == ["time_wait_expired"]
    # What the server saw as the client's ISN is the rewritten one.
    assert harness.log[0].packet.segment.seq == (conn.iss + offset) % 2**32


def test_harness_nat_the_server_sees_the_public_address():
    nat = Nat([PUBLIC], ports=(5000, 5009))
    harness, client, server = setup([nat.forward], [nat.backward])
    app = Client()
    client.open(app, C, S, 80, 0.0)
    harness.run(1.0)
    assert list(server.app.received) == [(S, 80, PUBLIC, 5000)]
    assert bytes(app.data) == response_payload(100)


def test_harness_alg_rewrite_reaches_the_application_unless_a_split_hides_the_pattern():
    for split_first, expected in ((False, b"PORT 10.9.9.9\n"), (True, b"PORT 10.0.0.1\n")):
        alg = RewritePayload(b"10.0.0.1", b"10.9.9.9")
        boxes = [SplitSegments(), alg] if split_first else [alg, SplitSegments()]
        harness, client, server = setup(boxes, app=SinkApp())
        client.open(Client(request=b"PORT 10.0.0.1\n"), C, S, 80, 0.0)
        harness.run(1.0)
        assert server.app.stream() == expected
        assert sum(1 for d in harness.log if d.src == "client" and d.packet.segment.payload) == 2


def test_harness_dropped_rst_leaves_the_server_connection_in_place():
    for drop in (True, False):
        harness, client, server = setup([drop_rsts()] if drop else [])
        conn = client.open(Client(request=b""), C, S, 80, 0.0)
        harness.run(1.0)
        client.abort(conn, harness.now)
        harness.run(2.0)
        if drop:
            assert server_conn(server).state is TcpState.ESTABLISHED
        else:
            assert not server.connections
            assert [type(e) for e in server.app.closes.values()] == [Closed]


def test_harness_first_synack_dropped_costs_one_syn_timeout():
    harness, client, server = setup(backward=[DropSegments(SegmentClass.SYN_ACK, frozenset({1}))])
    app = Client()
    client.open(app, C, S, 80, 0.0)
    harness.run(5.0)
    assert app.of(Established)[0][0] == pytest.approx(1.0 + RTT_S)


def test_harness_mirror_makes_a_legacy_server_look_mptcp_capable_until_data_flows():
    box = MirrorMpCapable(random.Random(4))
    harness, client, server = setup([box.forward], [box.backward])
    ext = MptcpClientExtension(rng=random.Random(7), mib=client.mib)
    conn = client.open(Client(), C, S, 80, 0.0, extensions=(ext,))
    harness.run(RTT_S)
    (mpc,) = [o for o in conn.synack.options if isinstance(o, MpCapable)]
    assert mpc.sender_key is not None and ext.negotiated and box.hits == 1
    # The request goes out with a DSS, the legacy server ACKs it without one: infinite mapping.
    harness.run(1.0)
    assert ext.fallback_reason is FallbackReason.DSS_MISSING and client.mib["InfiniteMapTx"] == 1
    assert server.app.stream() == b"GET /\n"


@pytest.mark.parametrize("where, client_reason, server_reason", [
    (SegmentClass.SYN, FallbackReason.MP_CAPABLE_MISSING_SYNACK, None),
    (SegmentClass.SYN_ACK, FallbackReason.MP_CAPABLE_MISSING_SYNACK, FallbackReason.MP_CAPABLE_MISSING_ACK),
    (SegmentClass.THIRD_ACK, FallbackReason.DSS_MISSING, FallbackReason.MP_CAPABLE_MISSING_ACK),
    (SegmentClass.DATA, FallbackReason.DSS_MISSING, FallbackReason.DSS_MISSING),
])
def test_harness_mptcp_option_stripped_on_one_segment_class(where, client_reason, server_reason):
    strip = StripOptions({TcpOptionKind.MPTCP}, {where})
    forward, backward = ([], [strip]) if where is SegmentClass.SYN_ACK else ([strip], [])
    harness, client, server = setup(forward, backward, kind=ServerKind.MPTCP_V1, app=ResponderApp(3000))
    ext = MptcpClientExtension(rng=random.Random(7), mib=client.mib)
    app = Client()
    client.open(app, C, S, 80, 0.0, extensions=(ext,))
    harness.run(1.0)
    assert strip.hits >= 1 and ext.fallback_reason is client_reason
    assert [f.reason for f in harness.events_of("server", FellBackToTcp)] == ([server_reason] if server_reason else [])
    assert bytes(app.data) == response_payload(3000)  # whatever the path did, TCP still works


def test_harness_unreachable_server_answers_every_syn_with_icmp():
    harness, client, _ = setup(kind=ServerKind.UNREACHABLE)
    app = Client()
    conn = client.open(app, C, S, 80, 0.0, policy=TcpPolicy(syn_retries=2))
    harness.run(10.0)
    # Linux (tcp_v4_err) ends a connection in SYN-SENT on the first Destination Unreachable.
    assert client.mib["IcmpInDestUnreachs"] == conn.syns_sent == 1
    assert [event for _, event in app.of(Unreachable)] == [Unreachable(IcmpUnreachableCode.HOST_UNREACHABLE)]
    assert client.connections == {}


def test_harness_closed_port_refuses():
    harness, client, _ = setup(kind=ServerKind.CLOSED)
    app = Client()
    client.open(app, C, S, 80, 0.0)
    harness.run(1.0)
    assert app.of(ResetReceived)[0][1] == ResetReceived(refused=True)
