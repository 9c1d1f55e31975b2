"""The MP_JOIN handshake machines (mpsim/proto/join.py; RFC 8684 3.2 as Linux 6.x runs it).

Vectors are built by hand from RFC 8684 3.1 (token: the most significant 32 bits of SHA-256 of
the 8-byte key) and 3.2 (SYN-ACK: the leftmost 64 bits of HMAC-SHA256 keyed Key_B || Key_A over
R_B || R_A; third ACK: the leftmost 160 bits of HMAC-SHA256 keyed Key_A || Key_B over R_A || R_B),
with Key_A = 01..08, Key_B = 11..18, R_A = 01020304, R_B = 05060708; the digests were computed
with ``openssl dgst -sha256 [-mac HMAC -macopt hexkey:...]`` on those bytes, not with mpsim.
"""

from __future__ import annotations

import pytest

from mpsim.proto.join import (JoinFailed, JoinInitiator, JoinKeys, JoinListener, JoinSegmentKind,
                              SubflowFullyEstablished)
from mpsim.proto.tcp import TcpPolicy
from mpsim.wire.mptcp import MpJoinAck, MpJoinSynAck, MpTcpRst

KEY_A = 0x0102030405060708
KEY_B = 0x1112131415161718
R_A = 0x01020304
R_B = 0x05060708
#: SHA-256(11 12 13 14 15 16 17 18) = ccad45ac 0b2662a9 ...: Key_B's token.
TOKEN_B = 0xCCAD45AC
#: HMAC-SHA256(key 1112..18 0102..08, msg 05060708 01020304) = 65ee0968 33f661d9 2fc5b275 ...
SYNACK_HMAC = bytes.fromhex("65ee096833f661d9")
#: HMAC-SHA256(key 0102..08 1112..18, msg 01020304 05060708) = 24bdde08 ... 241ac0f2 9084bb04 ...
THIRD_ACK_HMAC = bytes.fromhex("24bdde08dfc55c9b4185e1b56b2f89db241ac0f2")


class Fixed:
    """An rng that hands out the given 32-bit values in turn."""

    def __init__(self, *values: int) -> None:
        self.values = list(values)

    def getrandbits(self, k: int) -> int:
        assert k == 32
        return self.values.pop(0)

    def random(self) -> float:  # not used by the machines
        raise AssertionError("no float draws expected")


def pair(policy: TcpPolicy | None = None) -> tuple[JoinInitiator, JoinListener]:
    keys = JoinKeys(KEY_A, KEY_B)
    return JoinInitiator(keys, 2, policy or TcpPolicy(), Fixed(R_A)), JoinListener(keys, 2, Fixed(R_B))


def one(machine):
    segments = machine.pull_segments()
    assert len(segments) == 1, segments
    return segments[0]


def test_handshake_carries_the_rfc_values_and_times_the_sides():
    client, server = pair()
    client.start(0.0)
    syn = one(client)
    assert syn.kind is JoinSegmentKind.SYN
    assert (syn.option.receiver_token, syn.option.sender_random, syn.option.address_id) == (TOKEN_B, R_A, 2)
    # RFC 8684 3.2 figure 5: kind 30, length 12, subtype 1 / B 0, address ID, token, nonce
    assert syn.option.encode() == bytes.fromhex("1e0c1002" "ccad45ac" "01020304")
    assert client.get_timer() == pytest.approx(1.0)  # the initial SYN RTO

    server.receive_syn(syn.option, 0.05)
    synack = one(server)
    assert synack.kind is JoinSegmentKind.SYNACK
    assert synack.option == MpJoinSynAck(2, SYNACK_HMAC, R_B)

    client.receive_synack(synack.option, 0.1)
    third = one(client)
    assert third.kind is JoinSegmentKind.THIRD_ACK and third.option == MpJoinAck(THIRD_ACK_HMAC)
    assert client.state == "pre_established" and client.get_timer() == pytest.approx(0.3)  # 2 x RTT 0.1
    assert client.pull_events() == []  # no data before the fourth ACK

    server.receive_ack(third.option, 0.15)
    assert one(server).kind is JoinSegmentKind.FOURTH_ACK
    assert server.pull_events() == [SubflowFullyEstablished(0.15, pytest.approx(0.1))]

    client.receive_ack(True, 0.2)
    assert client.pull_events() == [SubflowFullyEstablished(0.2, pytest.approx(0.1))]
    assert client.state == "joined" and client.get_timer() is None


def test_third_ack_goes_again_after_two_srtt_and_gives_up_after_data_retries():
    client, server = pair(TcpPolicy(data_retries=2))
    client.start(0.0)
    server.receive_syn(one(client).option, 0.05)
    client.receive_synack(one(server).option, 0.1)
    first = one(client)
    for n, due in enumerate((0.3, 0.5), start=1):
        assert client.get_timer() == pytest.approx(due)  # 2 x the handshake's RTT after the last one
        client.handle_timer(due - 0.01)  # early: nothing
        assert client.pull_segments() == []
        client.handle_timer(client.get_timer())
        assert one(client) == first and client.third_ack_retransmissions == n
    assert client.get_timer() == pytest.approx(0.7)
    client.handle_timer(0.7)
    rst = one(client)
    assert rst.kind is JoinSegmentKind.RST and isinstance(rst.option, MpTcpRst)
    assert client.pull_events() == [JoinFailed(0.7, "no fourth ACK", True)]


def test_listener_answers_a_retransmitted_syn_with_the_same_nonce_and_third_ack_again():
    client, server = pair()
    client.start(0.0)
    syn = one(client).option
    server.receive_syn(syn, 0.05)
    first = one(server)
    server.receive_syn(syn, 0.06)  # the SYN again: the same SYN-ACK (no new nonce drawn)
    assert one(server) == first
    client.receive_synack(first.option, 0.1)
    third = one(client).option
    server.receive_ack(third, 0.15)
    one(server)
    server.receive_ack(third, 0.5)  # a retransmitted third ACK: answered again
    assert one(server).kind is JoinSegmentKind.FOURTH_ACK
    assert server.pull_events() == [SubflowFullyEstablished(0.15, pytest.approx(0.09))]  # once, RTT from the latest SYN-ACK


@pytest.mark.parametrize("tamper, reason", [
    (None, "SYN-ACK without MP_JOIN"),
    (MpJoinSynAck(2, bytes(8), R_B), "SYN-ACK with a wrong MP_JOIN HMAC"),
])
def test_initiator_resets_on_a_bad_synack(tamper, reason):
    client, _ = pair()
    client.start(0.0)
    one(client)
    client.receive_synack(tamper, 0.1)
    assert one(client).kind is JoinSegmentKind.RST
    assert client.pull_events() == [JoinFailed(0.1, reason, True)] and client.state == "failed"
    assert client.get_timer() is None


def test_initiator_resets_on_a_fourth_ack_without_dss():
    client, server = pair()
    client.start(0.0)
    server.receive_syn(one(client).option, 0.05)
    client.receive_synack(one(server).option, 0.1)
    one(client)
    client.receive_ack(False, 0.2)
    assert one(client).kind is JoinSegmentKind.RST
    assert client.pull_events() == [JoinFailed(0.2, "fourth ACK without DSS", True)]


@pytest.mark.parametrize("third, reason", [
    (None, "third ACK without MP_JOIN"),
    (MpJoinAck(bytes(20)), "third ACK with a wrong MP_JOIN HMAC"),
])
def test_listener_resets_on_a_bad_third_ack(third, reason):
    client, server = pair()
    client.start(0.0)
    server.receive_syn(one(client).option, 0.05)
    one(server)
    server.receive_ack(third, 0.15)
    assert one(server).kind is JoinSegmentKind.RST
    assert server.pull_events() == [JoinFailed(0.15, reason, True)] and server.state == "closed"


def test_listener_resets_a_syn_with_an_unknown_token():
    _, server = pair()
    server.receive_syn(type(one_syn())(2, TOKEN_B ^ 1, R_A), 0.0)
    assert one(server).kind is JoinSegmentKind.RST
    assert server.pull_events() == [JoinFailed(0.0, "MP_JOIN SYN with an unknown token", True)]


def one_syn():
    client, _ = pair()
    client.start(0.0)
    return one(client).option


def test_a_stripped_syn_is_answered_as_plain_tcp():
    _, server = pair()
    server.receive_syn(None, 0.0)
    server.receive_syn(None, 1.0)
    assert [s.kind for s in server.pull_segments()] == [JoinSegmentKind.PLAIN_SYNACK] * 2
    assert server.plain_syns == 2 and server.state == "plain" and server.nonce is None


def test_syns_follow_the_policy_and_give_up_without_a_reset():
    client, _ = pair(TcpPolicy(syn_retries=2))
    client.start(0.0)
    for due in (1.0, 3.0):
        client.handle_timer(due)
    assert client.syn_times_s == [0.0, 1.0, 3.0] and len(client.pull_segments()) == 3
    client.handle_timer(7.0)
    assert client.pull_segments() == []
    assert client.pull_events() == [JoinFailed(7.0, "no SYN-ACK to 3 SYNs", False)]


def test_bad_input_is_refused_naming_it():
    with pytest.raises(ValueError, match="initiator_key must be a 64-bit"):
        JoinKeys(1 << 64, KEY_B)
    with pytest.raises(ValueError, match="address_id must be an int in 0..255"):
        JoinInitiator(JoinKeys(KEY_A, KEY_B), 256, TcpPolicy(), Fixed(R_A))
    client, _ = pair()
    client.start(0.0)
    with pytest.raises(ValueError, match="already started"):
        client.start(0.1)
