"""The MP_JOIN handshake of further subflows (RFC 8684 3.2 as Linux 6.x runs it; mpsim/sim/transfer.py
``_Join``), its failures behind middleboxes, and RFC 8684 3.7 on data without DSS. Times are worked
by hand: a direction delivers a packet ``size x 8 / rate + delay`` after it is offered."""

from __future__ import annotations

import hashlib
import random

import pytest
import simpy

from mpsim.proto.catalogue import MIDDLEBOXES
from mpsim.proto.middlebox import PASS, BuiltBox, Site, StripOptions, SegmentClass, both_ways
from mpsim.proto.tcp import TcpPolicy
from mpsim.sim.light_filter import wrap_box
from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import (FLAG_ACK, FLAG_RST, FLAG_SYN, JOIN_FOURTH_ACK_BYTES, JOIN_SYN_BYTES,
                                JOIN_SYNACK_BYTES, JOIN_THIRD_ACK_BYTES, BulkTransfer)
from mpsim.wire.segment import decode_packet, encode_packet
from mpsim.wire.mptcp import MpJoinAck, MpJoinSyn, MpJoinSynAck

MIB = 2**20


class Tap:
    """Keeps (time, kind, packet) of what a direction offers and delivers."""

    record_packets = True

    def __init__(self):
        self.records = []

    def packet(self, time_s, direction, kind, packet, packet_id, reason=None):
        self.records.append((time_s, kind, packet))

    def sent(self):
        return [(t, p) for t, k, p in self.records if k == "sent"]


def direction(env, name, delay_s, rate_bps, loss=None):
    d = LinkDirection(env, name, delay_s=delay_s, rate_bps=rate_bps, loss=loss)
    d.trace = Tap()
    return d


def place(box: BuiltBox, up: LinkDirection, down: LinkDirection) -> None:
    box = wrap_box(box)
    up.filters = [box.up] if box.up is not PASS else []
    down.filters = [box.down] if box.down is not PASS else []


def two_paths(env, *, b_forward_s=0.02, b_backward_s=0.03, b_rate_bps=8e6, loss=None):
    a = (direction(env, "a.f", 0.01, 10e6), direction(env, "a.b", 0.01, 10e6))
    b = (direction(env, "b.f", b_forward_s, b_rate_bps, loss), direction(env, "b.b", b_backward_s, b_rate_bps))
    return [a, b]


def first_data_s(d: LinkDirection) -> float:
    return next(t for t, p in d.trace.sent() if p.payload_bytes)


def test_upload_join_times_worked_by_hand():
    # Path b: 20 ms out, 30 ms back, 8 Mbit/s; the path manager opens it at 0.1 s. SYN (72 B:
    # 72 us) arrives at 0.100 + 0.000072 + 0.020 = 0.120072; SYN-ACK (76 B) back at
    # 0.120072 + 0.000076 + 0.030 = 0.150148; third ACK (76 B) in at 0.170224; the fourth ACK
    # (64 B) back at 0.170224 + 0.000064 + 0.030 = 0.200288, when the client may send data.
    env = simpy.Environment()
    paths = two_paths(env)
    transfer = BulkTransfer(env, paths, 4 * MIB, mptcp=True, join_delay_s=0.1)
    env.run(until=transfer.done)
    join = transfer.joins[1]
    assert join.syn_times_s == [pytest.approx(0.1)]
    assert join.synack_s == pytest.approx(0.150148, abs=1e-9)
    assert join.third_ack_s == pytest.approx(0.170224, abs=1e-9)
    assert join.fourth_ack_s == pytest.approx(0.200288, abs=1e-9)
    # The connection-level receive window (auto-tuned: growing from tcp_rmem[1]'s) has room at
    # that instant: path a's receiver ACKs every segment that grows its rcv_ssthresh
    # (tcp_grow_window's quick ACK), so the window runs ahead of the data; the new subflow sends at
    # once. (Without those ACKs the window was used up and it waited for the next ACK on path a.)
    assert first_data_s(paths[1][0]) == pytest.approx(0.200288, abs=1e-9)
    record = transfer.result()
    assert record.subflow_joined == (True, True)
    assert record.subflow_join_s[1] == pytest.approx(0.200288, abs=1e-9)
    # sizes as Linux sends them
    kinds = [(p.flags, p.size_bytes) for _, p in paths[1][0].trace.sent() if not p.payload_bytes][:2]
    assert kinds == [(FLAG_SYN, JOIN_SYN_BYTES), (FLAG_ACK, JOIN_THIRD_ACK_BYTES)]
    back = [(p.flags, p.size_bytes) for _, p in paths[1][1].trace.sent()][:2]
    assert back == [(FLAG_SYN | FLAG_ACK, JOIN_SYNACK_BYTES), (FLAG_ACK, JOIN_FOURTH_ACK_BYTES)]


def test_download_join_the_server_sends_on_the_third_ack():
    # The client (the receiver) joins: SYN on the ACK path (30 ms) at 0.1 s arrives 0.130072,
    # SYN-ACK (20 ms) at 0.150148, third ACK (30 ms) at 0.180224: the server, the listener, is
    # fully established then and sends its first data at once.
    env = simpy.Environment()
    paths = two_paths(env)
    transfer = BulkTransfer(env, paths, 4 * MIB, mptcp=True, join_delay_s=0.1, joins_from="receiver")
    env.run(until=transfer.done)
    join = transfer.joins[1]
    assert join.synack_s == pytest.approx(0.150148, abs=1e-9)
    assert join.third_ack_s == pytest.approx(0.180224, abs=1e-9)
    # As above, the receive window has room then: the server sends at once.
    assert first_data_s(paths[1][0]) == pytest.approx(0.180224, abs=1e-9)
    assert transfer.result().subflow_joined == (True, True)


def test_join_segments_decode_as_mp_join():
    env = simpy.Environment()
    paths = two_paths(env)
    transfer = BulkTransfer(env, paths, MIB, mptcp=True)
    env.run(until=transfer.done)
    out = [p for _, p in paths[1][0].trace.sent() if not p.payload_bytes][:2]
    back = [p for _, p in paths[1][1].trace.sent()][:1]
    options = [decode_packet(encode_packet(p.to_ip_packet())).segment.options for p in (out[0], back[0], out[1])]
    assert [type(o[-1]) for o in options] == [MpJoinSyn, MpJoinSynAck, MpJoinAck]
    assert [len(encode_packet(p.to_ip_packet())) for p in (out[0], back[0], out[1])] == [72, 76, 76]


def test_join_captures_carry_tokens_and_hmacs_that_verify_from_the_keys():
    # RFC 8684 3.1/3.2, checked the way Wireshark checks a capture: the SYN names the token of the
    # server's key; the SYN-ACK's truncated HMAC and the third ACK's HMAC recompute from the two
    # keys and the nonces the capture shows (computed here with hashlib/hmac, not mpsim.wire).
    import hmac as hmac_module

    client_key, server_key = 0x0102030405060708, 0x1112131415161718
    env = simpy.Environment()
    paths = two_paths(env)
    transfer = BulkTransfer(env, paths, MIB, mptcp=True, mptcp_keys=(client_key, server_key))
    env.run(until=transfer.done)
    wire = lambda p: decode_packet(encode_packet(p.to_ip_packet())).segment.options[-1]
    syn, third = [wire(p) for _, p in paths[1][0].trace.sent() if not p.payload_bytes][:2]
    synack = wire(paths[1][1].trace.sent()[0][1])
    k_a, k_b = client_key.to_bytes(8, "big"), server_key.to_bytes(8, "big")
    assert syn.receiver_token == int.from_bytes(hashlib.sha256(k_b).digest()[:4], "big") == 0xCCAD45AC
    r_a, r_b = syn.sender_random.to_bytes(4, "big"), synack.sender_random.to_bytes(4, "big")
    assert r_a != bytes(4) and r_b != bytes(4)
    assert synack.sender_truncated_hmac == hmac_module.new(k_b + k_a, r_b + r_a, hashlib.sha256).digest()[:8]
    assert third.sender_hmac == hmac_module.new(k_a + k_b, r_a + r_b, hashlib.sha256).digest()[:20]


def test_join_nonces_are_the_same_for_the_same_transfer_and_differ_between_subflows():
    def nonces(name):
        env = simpy.Environment()
        paths = two_paths(env) + [(direction(env, "c.f", 0.01, 10e6), direction(env, "c.b", 0.01, 10e6))]
        transfer = BulkTransfer(env, paths, MIB, mptcp=True, name=name)
        env.run(until=transfer.done)
        return [(j.client.nonce, j.server.nonce) for j in transfer.joins[1:]]

    first = nonces("t")
    assert first == nonces("t") and first != nonces("u")
    assert len({n for pair in first for n in pair}) == 4


class DropFirstSyn:
    def __init__(self):
        self.dropped = 0

    def drops(self, packet, now):
        if packet.flags & FLAG_SYN and not self.dropped:
            self.dropped += 1
            return True
        return False


def test_lost_join_syn_is_retransmitted_after_the_initial_rto():
    env = simpy.Environment()
    paths = two_paths(env, loss=DropFirstSyn())
    transfer = BulkTransfer(env, paths, 16 * MIB, mptcp=True)
    env.run(until=transfer.done)
    join = transfer.joins[1]
    assert join.syn_times_s == [0.0, pytest.approx(1.0)]
    assert join.joined_s == pytest.approx(1.0 + 0.100288, abs=1e-9)  # 1 s + the 2 RTTs worked above
    # with tcp_syn_linear_timeouts the schedule is the policy's (the same first RTO)
    assert TcpPolicy(syn_linear_timeouts=4).syn_rto_s(1) == TcpPolicy().syn_rto_s(0) == 1.0


def test_join_gives_up_on_the_tcp_policys_schedule():
    class DropSyns:
        def drops(self, packet, now):
            return bool(packet.flags & FLAG_SYN)

    env = simpy.Environment()
    paths = two_paths(env, loss=DropSyns())
    transfer = BulkTransfer(env, paths, 64 * MIB, mptcp=True, syn_policy=TcpPolicy(syn_retries=2))
    env.run(until=transfer.done)
    join = transfer.joins[1]
    assert join.syn_times_s == [0.0, 1.0, 3.0]  # RFC schedule, then give-up at 7 s
    assert join.failure == "no SYN-ACK to 3 SYNs" and transfer.result().subflow_joined == (True, False)


def run_with_box(box: BuiltBox, size_bytes=2 * MIB, on=1, **kwargs):
    env = simpy.Environment()
    paths = two_paths(env)
    place(box, *paths[on])
    data = random.Random(7).randbytes(size_bytes)
    transfer = BulkTransfer(env, paths, size_bytes, mptcp=True, payload=data, **kwargs)
    env.run(until=env.any_of([transfer.done, env.timeout(60)]))
    return transfer, transfer.result(), hashlib.sha256(data).hexdigest()


def test_stripped_mp_join_leaves_the_other_subflow_carrying_everything():
    transfer, record, digest = run_with_box(MIDDLEBOXES.get("strip-mptcp").build(random.Random(1), Site()))
    assert record.completed and record.payload_sha256 == digest
    assert record.subflow_joined == (True, False) and record.subflow_bytes[1] == 0
    assert record.subflow_join_failures[1] == "SYN-ACK without MP_JOIN"
    join = transfer.joins[1]
    assert join.plain_syns == 1  # the server saw a plain SYN and answered it as plain TCP
    # the client reset that plain connection
    assert any(p.flags & FLAG_RST for _, p in transfer.sender.subflows[1].forward.trace.sent())


def test_stripped_mp_join_on_the_synack_only_fails_the_same_way():
    box = MIDDLEBOXES.get("strip-mptcp-synack").build(random.Random(1), Site())
    transfer, record, digest = run_with_box(box)
    assert record.subflow_join_failures[1] == "SYN-ACK without MP_JOIN" and transfer.joins[1].plain_syns == 0
    assert record.payload_sha256 == digest


def test_dss_stripped_from_data_on_a_joined_subflow_resets_it():
    # RFC 8684 3.7: data without a mapping on a joined subflow: the receiver resets the subflow
    # (RST, MP_TCPRST reason 6); what it held is sent again on the first subflow.
    data_only = lambda: StripOptions({30}, classes={SegmentClass.DATA})  # noqa: E731
    transfer, record, digest = run_with_box(both_ways(data_only))
    assert record.completed and record.payload_sha256 == digest
    assert record.subflow_joined[1] is True and record.subflow_resets == 1 and not record.fallback
    assert transfer.sender.subflows[1].closed


def test_dss_stripped_on_the_only_subflow_falls_back():
    env = simpy.Environment()
    path = (direction(env, "f", 0.01, 10e6), direction(env, "b", 0.01, 10e6))
    place(MIDDLEBOXES.get("strip-mptcp").build(random.Random(1), Site()), *path)
    data = random.Random(3).randbytes(MIB)
    transfer = BulkTransfer(env, [path], MIB, mptcp=True, payload=data)
    env.run(until=env.any_of([transfer.done, env.timeout(30)]))
    record = transfer.result()
    assert record.completed and record.fallback and record.payload_sha256 == hashlib.sha256(data).hexdigest()
    assert record.mptcp_retransmit_timeouts == 0
    late = [p for _, p in path[1].trace.sent()][-1]
    assert not late.mptcp  # the fallen-back receiver's ACKs carry no MPTCP option


def test_without_the_handshake_subflows_start_established():
    env = simpy.Environment()
    paths = two_paths(env)
    transfer = BulkTransfer(env, paths, MIB, mptcp=True, join_handshake=False)
    env.run(until=transfer.done)
    assert first_data_s(paths[1][0]) == 0.0 and transfer.joins == [None, None]


@pytest.mark.parametrize("kwargs, match", [
    (dict(join_delay_s=-1), "join_delay_s"),
    (dict(joins_from="server"), "joins_from"),
    (dict(syn_policy="linux"), "syn_policy"),
    (dict(mptcp_keys=(1, 2, 3)), "mptcp_keys must be a \\(client key, server key\\) pair"),
    (dict(mptcp_keys=(1, -2)), "listener_key must be a 64-bit unsigned int"),
])
def test_bad_join_parameters(kwargs, match):
    env = simpy.Environment()
    with pytest.raises(ValueError, match=match):
        BulkTransfer(env, two_paths(env), 1000, mptcp=True, **kwargs)
