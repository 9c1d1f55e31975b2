"""MPTCP negotiation extensions: packetdrill-like handshakes, fallbacks, Linux timing, counters.

Two hosts on a harness link (one-way delay 10 ms); the server listens with a fresh
MptcpServerExtension per SYN. Taps record every segment as its sender emitted it (before any
middlebox filter), so the byte-level assertions see what the machines wrote. The cases follow
multipath-tcp/packetdrill gtests/net/mptcp (docs/protocols.md 7.1) and Linux net/mptcp (section 6).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from ipaddress import IPv4Address
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason, FellBackToTcp, MptcpNegotiated
from mpsim.proto.harness import Harness
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.mptcp import (
    TRANSITIONS,
    MptcpBlackholeState,
    MptcpClientExtension,
    MptcpMib,
    MptcpPolicy,
    MptcpServerExtension,
    MptcpState,
    dss_checksum,
)
from mpsim.proto.tcp import Closed, CloseReason, DataReceived, Established, SynDataMode, TcpState
from mpsim.wire.mptcp import Dss, MpCapable, MpCapableFlags, MpFail, MpFastclose, key_idsn, key_token
from mpsim.wire.options import TcpOptionKind
from mpsim.wire.segment import TcpFlags

CLIENT_ADDR = IPv4Address("198.18.0.1")
SERVER_ADDR = IPv4Address("198.18.1.1")
PORT = 443
DELAY_S = 0.01
RTT_S = 2 * DELAY_S
F = MpCapableFlags


# --- fixtures: owners, listener, filters --------------------------------------------------------


class App:
    """An owner that records events, sends ``data`` once established and closes on request."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.conn = None
        self.events: list = []
        self.received = bytearray()

    def on_tcp_event(self, host, conn, event, now):
        self.conn = conn
        self.events.append((now, event))
        if isinstance(event, DataReceived):
            self.received += event.data
        if isinstance(event, Established) and self.data:
            conn.send(self.data, now)


class MptcpListener:
    """A Host listener whose Acceptance carries a fresh MptcpServerExtension."""

    def __init__(self, policy: MptcpPolicy | None = None, data: bytes = b"",
                 syn_data_mode: SynDataMode = SynDataMode.DROP) -> None:
        self.policy, self.data, self.syn_data_mode = policy, data, syn_data_mode
        self.extensions: list[MptcpServerExtension] = []
        self.apps: list[App] = []

    def on_syn(self, host, packet, now):
        ext = MptcpServerExtension(rng=host.rng, mib=host.mib, policy=self.policy)
        app = App(self.data)
        self.extensions.append(ext)
        self.apps.append(app)
        return Acceptance(owner=app, syn_data_mode=self.syn_data_mode, extensions=(ext,))


def is_pure_ack(seg) -> bool:
    return not seg.payload and not seg.flags & (TcpFlags.SYN | TcpFlags.FIN | TcpFlags.RST)


def is_data(seg) -> bool:
    return bool(seg.payload) and not seg.flags & TcpFlags.SYN


def is_syn(seg) -> bool:
    return bool(seg.flags & TcpFlags.SYN) and not seg.flags & TcpFlags.ACK


def is_synack(seg) -> bool:
    return bool(seg.flags & TcpFlags.SYN) and bool(seg.flags & TcpFlags.ACK)


def mptcp_options(seg) -> list:
    return [o for o in seg.options if o.kind == TcpOptionKind.MPTCP]


def find(seg, option_type):
    return next((o for o in seg.options if isinstance(o, option_type)), None)


def rewrite(select, change):
    """A middlebox: segments ``select`` picks get their options replaced by ``change(options)``."""
    def packet_filter(packet, now):
        seg = packet.segment
        if not select(seg):
            return [packet]
        return [dataclasses.replace(packet, segment=dataclasses.replace(seg, options=tuple(change(seg.options))))]
    return packet_filter


def strip_mptcp(select):
    return rewrite(select, lambda options: [o for o in options if o.kind != TcpOptionKind.MPTCP])


def replace_mpc(select, **changes):
    """Rewrite the MP_CAPABLE of the segments ``select`` picks (a field-mangling middlebox or a
    crafted peer, like packetdrill's scripted side)."""
    return rewrite(select, lambda options: [dataclasses.replace(o, **changes) if isinstance(o, MpCapable) else o
                                            for o in options])


def drop(select):
    return lambda packet, now: [] if select(packet.segment) else [packet]


def first_only(select):
    """``select``, but only for the first segment it matches."""
    seen = []

    def once(seg):
        if select(seg) and not seen:
            seen.append(seg)
            return True
        return False
    return once


class Net:
    """Client and server hosts, the harness, and taps of what each host sent."""

    def __init__(self, *, c2s=(), s2c=(), server_policy=None, server_data=b"", seed=1,
                 syn_data_mode=SynDataMode.DROP):
        self.harness = Harness()
        self.client = Host("client", {"eth0": CLIENT_ADDR}, rng=Random(seed))
        self.server = Host("server", {"eth0": SERVER_ADDR}, rng=Random(seed + 1000))
        self.listener = MptcpListener(server_policy, server_data, syn_data_mode)
        self.server.listen(PORT, self.listener)
        self.sent: dict[str, list] = {"client": [], "server": []}
        self.harness.add("client", self.client)
        self.harness.add("server", self.server)
        self.harness.link("client", "eth0", "server", "eth0", DELAY_S,
                          a_to_b=[self._tap("client"), *c2s], b_to_a=[self._tap("server"), *s2c])

    def _tap(self, name):
        def tap(packet, now):
            self.sent[name].append((now, packet.segment))
            return [packet]
        return tap

    def connect(self, *, data=b"", policy=None, blackhole=None, at_s=None, syn_payload=b""):
        if at_s is not None:
            self.harness.run(at_s)
        ext = MptcpClientExtension(rng=self.client.rng, mib=self.client.mib, policy=policy, blackhole=blackhole)
        app = App(data)
        conn = self.client.open(app, CLIENT_ADDR, SERVER_ADDR, PORT, self.harness.now, extensions=(ext,),
                                syn_payload=syn_payload)
        app.conn = conn
        return ext, app

    def run(self, until_s):
        self.harness.run(until_s)

    def segments(self, name, select=lambda seg: True):
        return [seg for _, seg in self.sent[name] if select(seg)]

    @property
    def server_ext(self) -> MptcpServerExtension:
        return self.listener.extensions[-1]

    @property
    def server_app(self) -> App:
        return self.listener.apps[-1]


def send(net: Net, app: App, data: bytes, host=None):
    app.conn.send(data, net.harness.now)
    (host or net.client).collect(app.conn, net.harness.now)


# --- the v1 handshake (packetdrill mp_capable/v1_mp_capable_connect_no_cs, _bind_no_cs) -----------


def test_v1_handshake_bytes_keys_tokens_and_counters():
    net = Net()
    client, app = net.connect()
    net.run(1.0)
    server = net.server_ext
    syn, synack, third_ack = net.segments("client", is_syn)[0], net.segments("server", is_synack)[0], \
        net.segments("client", is_pure_ack)[0]
    assert [o.encode() for o in mptcp_options(syn)] == [bytes.fromhex("1e040101")]
    server_key = server.local_key.to_bytes(8, "big")
    assert [o.encode() for o in mptcp_options(synack)] == [bytes.fromhex("1e0c0101") + server_key]
    assert [o.encode() for o in mptcp_options(third_ack)] == [
        bytes.fromhex("1e140101") + client.local_key.to_bytes(8, "big") + server_key]
    assert client.negotiated and server.negotiated
    assert (client.fallback_reason, server.fallback_reason) == (None, None)
    assert client.peer_key == server.local_key and server.peer_key == client.local_key
    assert client.peer_token == key_token(server.local_key) and server.peer_idsn == key_idsn(client.local_key)
    assert client.pull_events() == [MptcpNegotiated(app.conn.four_tuple, version=1, checksums=False)]
    assert net.client.mib == {"MPCapableSYNTX": 1, "MPCapableSYNACKRX": 1}
    assert net.server.mib == {"MPCapableSYNRX": 1, "MPCapableACKRX": 1}


def test_keys_come_from_the_rng_given():
    keys = [MptcpClientExtension(rng=Random(7), mib=Counter()).local_key for _ in range(2)]
    assert keys[0] == keys[1] == Random(7).getrandbits(64)


def test_checksum_flag_is_requested_and_adopted_by_the_listener():
    net = Net()
    client, _ = net.connect(policy=MptcpPolicy(checksums=True))
    net.run(1.0)
    assert mptcp_options(net.segments("client", is_syn)[0])[0].encode() == bytes.fromhex("1e040181")
    assert mptcp_options(net.segments("server", is_synack)[0])[0].flags == F.A | F.H
    assert client.checksums and net.server_ext.checksums


# --- the listener refuses a SYN MP_CAPABLE (packetdrill v1_bind_tcpfallback_flagB/flagH/wrongver) --


@pytest.mark.parametrize("changes, reason", [
    ({"flags": F.B | F.H}, FallbackReason.MPTCP_OPTION_INVALID),
    ({"flags": F(0)}, FallbackReason.MPTCP_OPTION_INVALID),
    ({"version": 0, "sender_key": 0x1122334455667788}, FallbackReason.MPTCP_VERSION_UNSUPPORTED),
])
def test_v1_listener_answers_an_invalid_syn_mpc_without_mpc(changes, reason):
    net = Net(c2s=[replace_mpc(is_syn, **changes)])
    client, app = net.connect(data=b"hello")
    net.run(1.0)
    assert mptcp_options(net.segments("server", is_synack)[0]) == []
    assert net.server_ext.fallback_reason is reason and not net.server_ext.negotiated
    assert client.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_SYNACK
    assert not any(mptcp_options(s) for s in net.segments("client", is_data) + net.segments("server"))
    assert net.server_app.received == b"hello"
    assert "MPCapableSYNRX" not in net.server.mib  # Linux ignores such an option silently
    assert net.client.mib[MptcpMib.MPCapableFallbackSYNACK] == 1


def test_v1_listener_answers_a_higher_version_with_v1():
    net = Net(c2s=[replace_mpc(is_syn, version=2)])
    client, _ = net.connect()
    net.run(1.0)
    assert mptcp_options(net.segments("server", is_synack)[0])[0].version == 1
    assert client.negotiated and net.server_ext.negotiated and net.server_ext.version == 1


def test_plain_syn_gets_a_plain_synack_and_no_fallback_reason():
    net = Net(c2s=[strip_mptcp(is_syn)])
    client, _ = net.connect()
    net.run(1.0)
    assert net.server_ext.state is MptcpState.PLAIN and net.server_ext.fallback_reason is None
    assert mptcp_options(net.segments("server", is_synack)[0]) == []
    assert client.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_SYNACK


# --- the client refuses a SYN-ACK (packetdrill v1_connect_tcpfallback_flagB/flagH/wrongver) --------


@pytest.mark.parametrize("changes, reason", [
    (None, FallbackReason.MP_CAPABLE_MISSING_SYNACK),  # stripped
    ({"flags": F.B | F.H}, FallbackReason.MPTCP_OPTION_INVALID),
    ({"flags": F(0)}, FallbackReason.MPTCP_OPTION_INVALID),
    ({"flags": F.G | F.H}, FallbackReason.MPTCP_OPTION_INVALID),  # not exactly one crypto bit
    ({"version": 0}, FallbackReason.MPTCP_VERSION_UNSUPPORTED),
])
def test_client_falls_back_on_a_bad_or_missing_synack_mpc(changes, reason):
    middlebox = strip_mptcp(is_synack) if changes is None else replace_mpc(is_synack, **changes)
    net = Net(s2c=[middlebox], server_data=b"from server")
    client, app = net.connect(data=b"from client")
    net.run(1.0)
    assert client.fallback_reason is reason and not client.negotiated
    assert mptcp_options(net.segments("client", lambda s: not is_syn(s))[0]) == []  # third packet plain
    assert not any(mptcp_options(s) for s in net.segments("client", lambda s: not is_syn(s)))
    assert net.server_ext.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_ACK
    assert not any(mptcp_options(s) for s in net.segments("server", lambda s: not is_synack(s)))
    assert (net.server_app.received, app.received) == (b"from client", b"from server")
    assert net.client.mib[MptcpMib.MPCapableFallbackSYNACK] == 1
    assert net.server.mib[MptcpMib.MPCapableFallbackACK] == 1
    assert client.pull_events() == [FellBackToTcp(app.conn.four_tuple, reason)]


# --- the third ACK decides (packetdrill v1_bind_tcpfallback_*_3rd_ack) ------------------------------


@pytest.mark.parametrize("changes, reason", [
    (None, FallbackReason.MP_CAPABLE_MISSING_ACK),
    ({"flags": F.B | F.H}, FallbackReason.MPTCP_OPTION_INVALID),
    ({"flags": F(0)}, FallbackReason.MPTCP_OPTION_INVALID),
    ({"version": 0}, FallbackReason.MPTCP_VERSION_UNSUPPORTED),
    ({"receiver_key": 1}, FallbackReason.MPTCP_OPTION_INVALID),  # a key we never sent
])
def test_server_falls_back_when_the_third_ack_lacks_a_valid_mpc(changes, reason):
    third_ack = first_only(is_pure_ack)
    middlebox = strip_mptcp(third_ack) if changes is None else replace_mpc(third_ack, **changes)
    net = Net(c2s=[middlebox])
    client, app = net.connect()
    net.run(1.0)
    assert net.server_ext.fallback_reason is reason
    assert net.server.mib == {"MPCapableSYNRX": 1, "MPCapableFallbackACK": 1}
    # The client still believes in MPTCP until its first data is ACKed without a DSS.
    assert client.negotiated
    send(net, app, b"x" * 100)
    net.run(2.0)
    assert client.fallback_reason is FallbackReason.DSS_MISSING
    send(net, app, b"y" * 10)  # the infinite mapping rides on the next segment
    net.run(3.0)
    assert net.server_app.received == b"x" * 100 + b"y" * 10
    assert net.client.mib[MptcpMib.MPCapableDataFallback] == 1 and net.client.mib[MptcpMib.InfiniteMapTx] == 1
    assert find(net.segments("client", is_data)[-1], Dss).is_infinite_mapping
    assert MptcpMib.InfiniteMapRx not in net.server.mib  # already plain TCP: no DSS parsing
    assert not any(mptcp_options(s) for s in net.segments("server", lambda s: not is_synack(s)))


def test_lost_third_ack_is_replaced_by_the_mpc_on_the_first_data():
    net = Net(c2s=[drop(first_only(is_pure_ack))])
    client, app = net.connect()
    net.run(0.5)
    send(net, app, b"data")
    net.run(2.0)
    assert client.negotiated and net.server_ext.negotiated
    assert net.server.mib[MptcpMib.MPCapableACKRX] == 1


# --- data: MP_CAPABLE with data-level length, then DSS (packetdrill dss/mpc_with_data_client) -------


@pytest.mark.parametrize("checksums", [False, True])
def test_first_data_carries_both_keys_and_length_then_dss(checksums):
    net = Net()
    client, app = net.connect(policy=MptcpPolicy(checksums=checksums))
    net.run(0.5)
    send(net, app, b"hello")
    net.run(1.0)
    send(net, app, b"world!")
    net.run(2.0)
    server = net.server_ext
    first, second = net.segments("client", is_data)
    (mpc,) = mptcp_options(first)
    assert isinstance(mpc, MpCapable) and len(mpc.encode()) == (24 if checksums else 22)
    assert (mpc.sender_key, mpc.receiver_key, mpc.data_level_length_bytes) == (client.local_key, server.local_key, 5)
    assert mpc.checksum == (dss_checksum(client.local_idsn + 1, 1, 5, b"hello") if checksums else None)
    ack = find(net.segments("server", is_pure_ack)[0], Dss)
    assert ack.data_ack == client.local_idsn + 1 + 5 and ack.data_ack_64_bit and ack.dsn is None
    (dss,) = mptcp_options(second)
    assert (dss.dsn, dss.ssn, dss.data_level_length_bytes) == (client.local_idsn + 6, 6, 6) and dss.dsn_64_bit
    assert dss.data_ack == server.local_idsn + 1
    assert (dss.checksum is not None) is checksums
    # Confirmed by the server's DSS: the client's next pure ACK carries a DSS, not MP_CAPABLE.
    send(net, net.server_app, b"reply", host=net.server)
    net.run(3.0)
    assert isinstance(mptcp_options(net.segments("client", is_pure_ack)[-1])[0], Dss)
    assert client.negotiated and server.negotiated and net.server_app.received == b"helloworld!"
    assert net.client.mib[MptcpMib.MPCapableDataFallback] == 0


def test_server_sends_first_with_dss_mapping():
    net = Net(server_data=b"banner")
    client, app = net.connect()
    net.run(1.0)
    server = net.server_ext
    (dss,) = mptcp_options(net.segments("server", is_data)[0])
    assert (dss.dsn, dss.ssn, dss.data_level_length_bytes) == (server.local_idsn + 1, 1, 6)
    assert dss.data_ack == client.local_idsn + 1
    assert app.received == b"banner" and client.negotiated and server.negotiated


@pytest.mark.parametrize("mode, tcp_offset, mapped_syn_bytes", [(SynDataMode.ACCEPT, 21, 0), (SynDataMode.DROP, 1, 20)])
def test_syn_data_lies_outside_the_data_sequence_space(mode, tcp_offset, mapped_syn_bytes):
    # RFC 8684 appendix B.2, Figs. 19 and 20: TCP sequence 21 is subflow sequence 1 when the
    # listener took the 20 SYN bytes; when it dropped them, they are resent inside the DSN space.
    net = Net(syn_data_mode=mode)
    client, app = net.connect(syn_payload=b"s" * 20)
    net.run(0.5)
    send(net, app, b"after")
    net.run(1.0)
    first = net.segments("client", is_data)[0]
    (mpc,) = mptcp_options(first)  # the first mapped data: MP_CAPABLE with length, ssn 1 implied
    assert isinstance(mpc, MpCapable) and seq_offset(first.seq, app.conn.iss) == tcp_offset
    assert mpc.data_level_length_bytes == len(first.payload) == (20 if mapped_syn_bytes else 5)
    ack = find(net.segments("server", is_pure_ack)[-1], Dss)
    assert ack.data_ack == client.local_idsn + 1 + mapped_syn_bytes + len(b"after")
    assert net.server_app.received == b"s" * 20 + b"after" and client.negotiated and net.server_ext.negotiated


def seq_offset(seq: int, iss: int) -> int:
    return (seq - iss) % (1 << 32)


# --- data ACKed without DSS: infinite mapping (RFC 8684 3.7) ----------------------------------------


def test_data_acked_without_dss_sends_one_infinite_mapping_then_no_options():
    net = Net(s2c=[strip_mptcp(lambda s: not s.flags & TcpFlags.SYN)])
    client, app = net.connect()
    net.run(0.5)
    send(net, app, b"a" * 10)
    net.run(1.0)
    assert client.fallback_reason is FallbackReason.DSS_MISSING
    send(net, app, b"b" * 20)
    send(net, app, b"c" * 30)
    net.run(2.0)
    later = net.segments("client", is_data)[1:]
    infinite = find(later[0], Dss)
    assert infinite.is_infinite_mapping and infinite.dsn == client.local_idsn + 1 and infinite.ssn == 1
    assert mptcp_options(later[0]) == [infinite] and all(not mptcp_options(s) for s in later[1:])
    assert net.server_ext.fallback_reason is FallbackReason.DSS_MISSING
    assert net.client.mib[MptcpMib.InfiniteMapTx] == 1 and net.server.mib[MptcpMib.InfiniteMapRx] == 1
    assert net.server_app.received == b"a" * 10 + b"b" * 20 + b"c" * 30


def test_data_without_mapping_makes_the_receiver_fall_back_too():
    net = Net(c2s=[strip_mptcp(is_data)])
    client, app = net.connect()
    net.run(0.5)
    send(net, app, b"payload")
    net.run(1.0)
    assert net.server_ext.fallback_reason is FallbackReason.DSS_MISSING
    assert client.fallback_reason is FallbackReason.DSS_MISSING
    assert net.server.mib[MptcpMib.MPCapableDataFallback] == net.client.mib[MptcpMib.MPCapableDataFallback] == 1


# --- MP_FAIL on a checksum failure (RFC 8684 3.7, single subflow) -----------------------------------


def corrupt_first_data():
    """A middlebox that rewrites the payload of the first client data segment (an ALG) but leaves
    the options: only the DSS checksum can notice."""
    once = first_only(is_data)

    def packet_filter(packet, now):
        seg = packet.segment
        if not once(seg):
            return [packet]
        return [dataclasses.replace(packet, segment=dataclasses.replace(seg, payload=seg.payload.upper()))]
    return packet_filter


@pytest.mark.parametrize("checksums", [True, False])
def test_bad_checksum_draws_mp_fail_and_both_revert_to_tcp(checksums):
    net = Net(c2s=[corrupt_first_data()])
    client, app = net.connect(policy=MptcpPolicy(checksums=checksums))
    net.run(0.5)
    send(net, app, b"hello")
    net.run(1.0)
    send(net, app, b" again")
    net.run(2.0)
    server = net.server_ext
    if not checksums:  # nothing can notice: the corruption goes through as MPTCP data
        assert client.negotiated and server.negotiated and net.server_app.received == b"HELLO again"
        return
    fail = find(net.segments("server", is_pure_ack)[0], MpFail)
    assert fail is not None and fail.dsn == client.local_idsn + 1
    assert server.fallback_reason is client.fallback_reason is FallbackReason.CHECKSUM_FAILURE
    answer = net.segments("client", is_data)[1]
    assert find(answer, MpFail) is not None and find(answer, Dss).is_infinite_mapping
    assert net.client.mib == {"MPCapableSYNTX": 1, "MPCapableSYNACKRX": 1, "MPFailRx": 1, "MPFailTx": 1,
                              "InfiniteMapTx": 1}
    assert net.server.mib == {"MPCapableSYNRX": 1, "MPCapableACKRX": 1, "DataCsumErr": 1, "MPFailTx": 1,
                              "MPFailRx": 1, "InfiniteMapRx": 1}
    # Answered: the server's later ACKs carry no MPTCP option at all.
    assert not mptcp_options(net.segments("server", is_pure_ack)[-1])
    assert net.server_app.received == b"HELLO again"  # the infinite mapping makes it plain TCP data


# --- a transfer carried outside the machine, then DATA_FIN (RFC 8684 3.3.3) ---------------------------


def is_fin(seg) -> bool:
    return bool(seg.flags & TcpFlags.FIN)


def _carried(net, client, app, *, data_fin: bool):
    """After the banner, 1000 more bytes of the server's stream went outside the machines, 600 of
    them on this subflow (the rest on joined subflows): both ends count them."""
    net.run(1.0)
    server_conn = net.server_app.conn
    server_conn.carry_stream(600, 0)
    net.server_ext.carry_data(600, 1000, 0, 0)
    app.conn.carry_stream(0, 600)
    client.carry_data(0, 0, 600, 1000)
    client.data_fin_on_close = net.server_ext.data_fin_on_close = data_fin
    return server_conn


def test_a_data_fin_after_bytes_carried_on_other_subflows():
    # Hand-worked: the server's stream is the 6-byte banner (DSN idsn+1 .. idsn+6), then 1000
    # carried bytes (idsn+7 .. idsn+1006): its DATA_FIN is DSN idsn+1007 with SSN 0 and length 1
    # (3.3.3: a DATA_FIN on a segment without data); its FIN takes TCP sequence number
    # ISN + 1 + 6 + 600 (only 600 of the bytes were on this subflow). The client's Data ACK
    # then covers the DATA_FIN (idsn+1008), and its own DATA_FIN is DSN client idsn + 1 (it sent
    # nothing), acknowledged as client idsn + 2.
    net = Net(server_data=b"banner")
    client, app = net.connect()
    server_conn = _carried(net, client, app, data_fin=True)
    server = net.server_ext
    server_conn.close(net.harness.now)
    net.server.collect(server_conn, net.harness.now)
    net.run(2.0)
    (fin,) = net.segments("server", is_fin)
    (dss,) = mptcp_options(fin)
    assert seq_offset(fin.seq, server_conn.iss) == 1 + 6 + 600
    assert (dss.data_fin, dss.dsn, dss.ssn, dss.data_level_length_bytes) == (True, server.local_idsn + 1007, 0, 1)
    assert dss.data_ack == client.local_idsn + 1
    ack = find(net.segments("client", is_pure_ack)[-1], Dss)
    assert ack.data_ack == server.local_idsn + 1008 and app.conn.state is TcpState.CLOSE_WAIT
    app.conn.close(net.harness.now)
    net.client.collect(app.conn, net.harness.now)
    net.run(3.0)
    (client_fin,) = net.segments("client", is_fin)
    client_dss = find(client_fin, Dss)
    assert (client_dss.data_fin, client_dss.dsn, client_dss.ssn, client_dss.data_level_length_bytes) == \
        (True, client.local_idsn + 1, 0, 1)
    assert client_dss.data_ack == server.local_idsn + 1008
    assert find(net.segments("server", is_pure_ack)[-1], Dss).data_ack == client.local_idsn + 2
    assert (server_conn.state, app.conn.state) == (TcpState.TIME_WAIT, TcpState.CLOSED)
    assert client.negotiated and server.negotiated


def test_a_data_fin_after_data_sent_again_on_the_subflow():
    # Reinjection: 1000 data-level bytes, but 1200 bytes of this subflow's sequence space (200
    # of them sent again here after another subflow failed). The FIN takes TCP sequence number
    # ISN + 1 + 6 + 1200; the DATA_FIN still DSN idsn + 1 + 6 + 1000.
    net = Net(server_data=b"banner")
    client, app = net.connect()
    net.run(1.0)
    server_conn = net.server_app.conn
    server_conn.carry_stream(1200, 0)
    net.server_ext.carry_data(1200, 1000, 0, 0)
    app.conn.carry_stream(0, 1200)
    client.carry_data(0, 0, 1200, 1000)
    net.server_ext.data_fin_on_close = client.data_fin_on_close = True
    server_conn.close(net.harness.now)
    net.server.collect(server_conn, net.harness.now)
    net.run(2.0)
    (fin,) = net.segments("server", is_fin)
    dss = find(fin, Dss)
    assert seq_offset(fin.seq, server_conn.iss) == 1 + 6 + 1200
    assert (dss.data_fin, dss.dsn) == (True, net.server_ext.local_idsn + 1007)
    assert find(net.segments("client", is_pure_ack)[-1], Dss).data_ack == net.server_ext.local_idsn + 1008
    with pytest.raises(ValueError):
        client.carry_data(-1, 0, 0, 0)


def test_without_data_fin_on_close_a_fin_carries_only_the_data_ack():
    # Connections that carry no transfer close as before: no DATA_FIN, the Data ACK alone.
    net = Net(server_data=b"banner")
    client, app = net.connect()
    server_conn = _carried(net, client, app, data_fin=False)
    server_conn.close(net.harness.now)
    net.server.collect(server_conn, net.harness.now)
    net.run(2.0)
    (fin,) = net.segments("server", is_fin)
    (dss,) = mptcp_options(fin)
    assert dss.dsn is None and not dss.data_fin and dss.data_ack == client.local_idsn + 1
    assert find(net.segments("client", is_pure_ack)[-1], Dss).data_ack == net.server_ext.local_idsn + 1007


# --- MP_FASTCLOSE (packetdrill fastclose/receive_fastclose_with_ack) --------------------------------


@pytest.mark.parametrize("right_key", [True, False])
def test_fastclose_with_the_right_key_resets_and_a_wrong_key_is_ignored(right_key):
    def flip_key(options):
        return [MpFastclose(o.receiver_key ^ 1) if isinstance(o, MpFastclose) else o for o in options]
    wrong_key = rewrite(lambda s: find(s, MpFastclose) is not None, flip_key)
    net = Net(c2s=[] if right_key else [wrong_key], server_data=b"hi")
    client, app = net.connect()
    net.run(0.5)
    client.send_fastclose(app.conn, net.harness.now)
    net.client.collect(app.conn, net.harness.now)
    net.run(1.0)
    (fastclose,) = mptcp_options(net.segments("client", is_pure_ack)[-1])
    assert fastclose == MpFastclose(net.server_ext.local_key)
    assert net.client.mib[MptcpMib.MPFastcloseTx] == 1
    server_closed = [e for _, e in net.server_app.events if isinstance(e, Closed)]
    client_closed = [e for _, e in app.events if isinstance(e, Closed)]
    if right_key:
        assert net.server_ext.fastclose_received and net.server.mib[MptcpMib.MPFastcloseRx] == 1
        assert server_closed == [Closed(CloseReason.ABORTED)]
        assert client_closed == [Closed(CloseReason.RESET_RECEIVED)]
    else:
        assert not net.server_ext.fastclose_received and MptcpMib.MPFastcloseRx not in net.server.mib
        assert server_closed == client_closed == [] and net.server_app.conn.state is TcpState.ESTABLISHED


def test_fastclose_needs_an_mptcp_connection():
    net = Net(s2c=[strip_mptcp(is_synack)])
    client, app = net.connect()
    net.run(0.5)
    with pytest.raises(LocalProtocolError):
        client.send_fastclose(app.conn, net.harness.now)


# --- Linux timing: MP_CAPABLE SYN drops, blackhole back-off (net/mptcp/ctrl.c) ----------------------


def has_mpc(seg) -> bool:
    return find(seg, MpCapable) is not None


def syn_times(net, start_s=0.0):
    return [(round(t, 6), has_mpc(seg)) for t, seg in net.sent["client"] if is_syn(seg) and t >= start_s]


def test_mpc_syns_dropped_plain_syn_at_7s_then_blackhole_backoff_and_reprobe():
    blackhole = MptcpBlackholeState()
    dropper_on = [True]
    net = Net(c2s=[lambda p, now: [] if dropper_on[0] and is_syn(p.segment) and has_mpc(p.segment) else [p]])
    client, app = net.connect(blackhole=blackhole)
    net.run(10.0)
    assert syn_times(net) == [(0.0, True), (1.0, True), (3.0, True), (7.0, False)]
    established = [t for t, e in app.events if isinstance(e, Established)]
    assert established == [pytest.approx(7.0 + RTT_S)]
    assert client.fallback_reason is FallbackReason.MP_CAPABLE_SYN_DROPPED
    assert net.server_ext.state is MptcpState.PLAIN
    assert (blackhole.times, blackhole.stamp_s) == (1, pytest.approx(7.0 + RTT_S))
    assert net.client.mib == {"MPCapableSYNTX": 1, "MPCapableSYNTXDrop": 1, "Blackhole": 1}

    # Within the back-off the next connection goes plain at once.
    second, app2 = net.connect(blackhole=blackhole, at_s=100.0)
    net.run(101.0)
    assert syn_times(net, 100.0) == [(100.0, False)]
    assert second.fallback_reason is FallbackReason.MPTCP_BLACKHOLE_BACKOFF
    assert [t for t, e in app2.events if isinstance(e, Established)] == [pytest.approx(100.0 + RTT_S)]
    assert net.client.mib[MptcpMib.MPCapableSYNTXDisabled] == 1

    # Just before 3600 s after the stamp: still plain; after it: MP_CAPABLE again (path now clean).
    net.connect(blackhole=blackhole, at_s=7.0 + RTT_S + 3599.0)
    dropper_on[0] = False
    third, _ = net.connect(blackhole=blackhole, at_s=7.0 + RTT_S + 3600.5)
    net.run(3700.0)
    assert [mpc for _, mpc in syn_times(net, 3000.0)] == [False, True]
    assert third.negotiated and blackhole.times == 0  # a success resets the back-off


def test_blackhole_not_recorded_when_the_plain_syn_needed_a_retransmission_too():
    # Linux clears mpc_drop at the timeout after the first plain SYN: only its answer is evidence.
    blackhole = MptcpBlackholeState()
    plain_drop = first_only(lambda s: is_syn(s) and not has_mpc(s))
    net = Net(c2s=[drop(lambda s: is_syn(s) and has_mpc(s)), drop(plain_drop)])
    client, app = net.connect(blackhole=blackhole)
    net.run(20.0)
    assert syn_times(net) == [(0.0, True), (1.0, True), (3.0, True), (7.0, False), (15.0, False)]
    assert app.conn.state is TcpState.ESTABLISHED
    assert blackhole.times == 0 and MptcpMib.Blackhole not in net.client.mib


@pytest.mark.parametrize("limit, mpc_syns", [(0, 1), (1, 2), (2, 3), (None, 7)])
def test_syn_retrans_before_tcp_fallback(limit, mpc_syns):
    net = Net(c2s=[drop(is_syn)])  # every SYN lost: all 7 go out (tcp_syn_retries 6)
    net.connect(policy=MptcpPolicy(syn_retrans_before_tcp_fallback=limit))
    net.run(200.0)
    assert syn_times(net) == [(t, i < mpc_syns) for i, t in enumerate([0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0])]
    assert net.client.mib[MptcpMib.MPCapableSYNTXDrop] == (0 if limit is None else 1)


def test_mpc_synack_after_the_early_fallback_is_ignored():
    # RTT 3 s > the 1 s RTO: the answer to the MP_CAPABLE SYN arrives after the plain SYN went out.
    net = Net()
    net.harness.hops[("client", "eth0")].delay_s = net.harness.hops[("server", "eth0")].delay_s = 1.5
    client, app = net.connect(policy=MptcpPolicy(syn_retrans_before_tcp_fallback=0))
    net.run(10.0)
    assert has_mpc(net.segments("server", is_synack)[0])
    assert client.fallback_reason is FallbackReason.MP_CAPABLE_SYN_DROPPED and not client.negotiated
    assert net.server_ext.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_ACK
    assert MptcpMib.Blackhole in net.client.mib  # the plain SYN was answered without another timeout


def test_blackhole_backoff_doubles_up_to_the_cap():
    state = MptcpBlackholeState()
    assert not state.should_disable(0.0) and state.disabled_until_s() is None
    periods = []
    for _ in range(9):
        state.record_blackhole(1000.0)
        periods.append(state.disabled_until_s() - 1000.0)
    assert periods == [3600.0 * m for m in (1, 2, 4, 8, 16, 32, 64, 64, 64)]
    assert state.should_disable(1000.0 + 64 * 3600.0 - 0.001) and not state.should_disable(1000.0 + 64 * 3600.0)
    off = MptcpBlackholeState(MptcpPolicy(blackhole_timeout_s=0))
    off.record_blackhole(0.0)
    assert not off.should_disable(1.0)


@pytest.mark.parametrize("reset_on_success, loopback, reset", [
    (True, False, True), (True, True, False), (False, False, False), (False, True, True)])
def test_blackhole_reset_on_success_models_both_kernels(reset_on_success, loopback, reset):
    state = MptcpBlackholeState(MptcpPolicy(blackhole_reset_on_success=reset_on_success))
    state.record_blackhole(0.0)
    state.record_success(loopback=loopback)
    assert (state.times == 0) is reset


# --- v0 interplay (RFC 8684 3.1) ---------------------------------------------------------------------


def test_v0_only_listener_ignores_a_v1_syn_like_stripping():
    net = Net(server_policy=MptcpPolicy(version=0))
    client, app = net.connect()
    net.run(1.0)
    assert client.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_SYNACK  # indistinguishable
    assert net.server_ext.fallback_reason is FallbackReason.MPTCP_VERSION_UNSUPPORTED
    assert client.retry_policy is None and app.conn.state is TcpState.ESTABLISHED


def test_retry_with_v0_resets_and_the_new_connection_negotiates_v0():
    net = Net(server_policy=MptcpPolicy(version=0))
    first, app = net.connect(policy=MptcpPolicy(retry_with_v0=True), data=b"lost?")
    net.run(1.0)
    assert [e for _, e in app.events if isinstance(e, Closed)] == [Closed(CloseReason.ABORTED)]
    assert first.retry_policy == MptcpPolicy(version=0)
    second, app2 = net.connect(policy=first.retry_policy, data=b"v0 data")
    net.run(2.0)
    assert app2.conn.local_port != app.conn.local_port  # a new 4-tuple
    syn = net.segments("client", is_syn)[-1]
    key = second.local_key.to_bytes(8, "big")
    assert [o.encode() for o in mptcp_options(syn)] == [bytes.fromhex("1e0c0001") + key]  # v0: the key in the SYN
    server = net.server_ext
    assert second.negotiated and server.negotiated and second.version == server.version == 0
    assert second.peer_token == key_token(server.local_key, 0)
    (dss,) = mptcp_options(net.segments("client", is_data)[0])  # v0 has no MP_CAPABLE with data
    assert dss.dsn == key_idsn(second.local_key, 0) + 1
    assert net.server_app.received == b"v0 data"


def test_v0_client_against_a_v1_listener_falls_back():
    net = Net()
    client, _ = net.connect(policy=MptcpPolicy(version=0))
    net.run(1.0)
    assert net.server_ext.fallback_reason is FallbackReason.MPTCP_VERSION_UNSUPPORTED
    assert client.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_SYNACK


# --- the state table --------------------------------------------------------------------------------


def test_fallen_back_and_plain_are_final_and_illegal_moves_are_refused():
    assert TRANSITIONS[MptcpState.FALLEN_BACK] == TRANSITIONS[MptcpState.PLAIN] == frozenset()
    ext = MptcpClientExtension(rng=Random(1), mib=Counter())
    ext._move(MptcpState.FALLEN_BACK)
    for state in MptcpState:
        with pytest.raises(RuntimeError):
            ext._move(state)


def test_policy_rejects_nonsense():
    for bad in ({"version": 2}, {"syn_retrans_before_tcp_fallback": -1}, {"blackhole_timeout_s": -1.0},
                {"blackhole_max_exponent": -1}):
        with pytest.raises(ValueError):
            MptcpPolicy(**bad)


# --- random middlebox interference (hypothesis) ------------------------------------------------------


@given(
    strip_syn=st.booleans(), strip_synack=st.booleans(), strip_ack_c2s=st.booleans(),
    strip_ack_s2c=st.booleans(), strip_data_c2s=st.booleans(), strip_data_s2c=st.booleans(),
    drop_mpc_syns=st.booleans(), checksums=st.booleans(),
    # Silence in one direction matters (the other side's segments must carry the news), so 0 is common.
    client_bytes=st.sampled_from([0, 1, 1000, 5000]), server_bytes=st.sampled_from([0, 1, 1000, 5000]),
    seed=st.integers(0, 2**16),
)
def test_random_option_stripping_ends_negotiated_or_fallen_back_and_data_arrives(
        strip_syn, strip_synack, strip_ack_c2s, strip_ack_s2c, strip_data_c2s, strip_data_s2c,
        drop_mpc_syns, checksums, client_bytes, server_bytes, seed):
    def chosen(*pairs):
        return [strip_mptcp(select) for flag, select in pairs if flag]

    c2s = chosen((strip_syn, is_syn), (strip_ack_c2s, is_pure_ack), (strip_data_c2s, is_data))
    if drop_mpc_syns:
        c2s.append(drop(lambda s: is_syn(s) and has_mpc(s)))
    s2c = chosen((strip_synack, is_synack), (strip_ack_s2c, is_pure_ack), (strip_data_s2c, is_data))
    rng = Random(seed)
    client_data, server_data = rng.randbytes(client_bytes), rng.randbytes(server_bytes)
    net = Net(c2s=c2s, s2c=s2c, server_data=server_data, seed=seed)
    client, app = net.connect(policy=MptcpPolicy(checksums=checksums), data=client_data)
    net.run(30.0)
    assert app.received == server_data and net.server_app.received == client_data
    server = net.server_ext
    # Each side ended negotiated or fallen back (the server also plain), never both.
    assert client.state in (MptcpState.NEGOTIATED, MptcpState.FALLEN_BACK)
    assert server.state in (MptcpState.NEGOTIATED, MptcpState.FALLEN_BACK, MptcpState.PLAIN)
    for ext in (client, server):
        assert (ext.fallback_reason is not None) is (ext.state is MptcpState.FALLEN_BACK)
    app.conn.close(net.harness.now)
    net.client.collect(app.conn, net.harness.now)
    net.server_app.conn.close(net.harness.now)
    net.server.collect(net.server_app.conn, net.harness.now)
    net.run(300.0)
    assert not net.client.connections and not net.server.connections  # every connection ended
    if client_bytes or server_bytes:  # data (or its ACK) tells each side what the other decided
        assert client.negotiated == server.negotiated
    for name, ext in (("client", client), ("server", server)):
        if ext.negotiated:  # an MPTCP receiver never took data that carried no mapping
            arrived = [d.packet.segment for d in net.harness.log if d.dst == name and not d.dropped]
            assert all(find(s, Dss) or find(s, MpCapable) for s in arrived if is_data(s))
    events = client.pull_events()
    assert len([e for e in events if isinstance(e, FellBackToTcp)]) <= 1
    assert all(isinstance(e, (MptcpNegotiated, FellBackToTcp)) for e in events)


# --- a lost SYN-ACK after SYN data: Linux never sends the keys (docs/kernel-departures.md 7) -------


def test_linux_after_a_dataless_syn_retransmission_never_sends_the_keys_and_both_fall_back():
    """Hand-worked from the kernel world's capture (docs/kernel-facts.md, "An MPTCP SYN with data
    retransmitted without it"; Linux 6.18 net/mptcp/options.c). One-way delay 10 ms, initial RTO
    1 s. 0 s: SYN with 20 bytes and MP_CAPABLE; the listener takes the data, its SYN-ACK (ack
    ISN+21) is lost. 1 s: the SYN again, no data, MP_CAPABLE. 1.01 s: SYN-ACK again (ack ISN+21).
    1.02 s: the client's third ACK at ISN+21, where Linux's MP_CAPABLE would need ISN+1 (the end of
    the last SYN): a DSS Data ACK of the server's IDSN + 1 instead, no keys. 1.03 s: the listener,
    which took SYN data, falls back on it (MPCapableDataFallback); its 6 bytes go without options
    and the client falls back on them (MPCapableDataFallback): plain TCP, both ends."""
    net = Net(s2c=[drop(first_only(is_synack))], syn_data_mode=SynDataMode.ACCEPT, server_data=b"banner")
    client, app = net.connect(syn_payload=b"s" * 20)
    net.run(2.0)
    syns = net.sent["client"][:2]
    assert [(round(t, 6), len(s.payload), type(find(s, MpCapable))) for t, s in syns] == \
        [(0.0, 20, MpCapable), (1.0, 0, MpCapable)]
    assert app.conn.syn_data_acked_bytes == 20
    third_s, third = next((t, s) for t, s in net.sent["client"] if is_pure_ack(s))
    assert round(third_s, 6) == 1.02 and seq_offset(third.seq, app.conn.iss) == 21
    (dss,) = mptcp_options(third)
    assert isinstance(dss, Dss) and dss.dsn is None and dss.data_ack == key_idsn(client.peer_key, 1) + 1
    assert net.server_ext.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_ACK
    assert net.server.mib[MptcpMib.MPCapableDataFallback] == 1 and net.server.mib[MptcpMib.MPCapableFallbackACK] == 0
    (banner,) = net.segments("server", is_data)
    assert banner.payload == b"banner" and not mptcp_options(banner)
    assert client.fallback_reason is FallbackReason.DSS_MISSING and net.client.mib[MptcpMib.MPCapableDataFallback] == 1
    assert net.server_app.received == b"s" * 20 and app.received == b"banner"


def test_the_rfc_form_sends_the_keys_on_the_third_ack_after_a_dataless_syn_retransmission():
    """The same trace with ``mp_capable_ack="rfc8684"`` (RFC 8684 3.1): the third ACK carries both
    keys, the listener negotiates (MPCapableACKRX) and maps its 6 bytes: MPTCP on both ends."""
    net = Net(s2c=[drop(first_only(is_synack))], syn_data_mode=SynDataMode.ACCEPT, server_data=b"banner")
    client, app = net.connect(syn_payload=b"s" * 20, policy=MptcpPolicy(mp_capable_ack="rfc8684"))
    net.run(2.0)
    third = next(s for _, s in net.sent["client"] if is_pure_ack(s))
    (mpc,) = mptcp_options(third)
    assert isinstance(mpc, MpCapable) and (mpc.sender_key, mpc.receiver_key) == (client.local_key, client.peer_key)
    assert client.negotiated and net.server_ext.negotiated and net.server.mib[MptcpMib.MPCapableACKRX] == 1
    assert find(net.segments("server", is_data)[0], Dss).data_level_length_bytes == 6
    assert app.received == b"banner"


def test_linux_sends_the_keys_when_the_syn_data_went_with_the_answered_syn():
    """Only a data-less SYN last *and* SYN data acknowledged departs: a lost SYN (not SYN-ACK)
    means the retransmission is what the listener answers, acknowledging no data, and the first
    segment after the handshake, at ISN+1 (here the 20 bytes sent again), carries the keys as usual."""
    net = Net(c2s=[drop(first_only(is_syn))], syn_data_mode=SynDataMode.ACCEPT, server_data=b"banner")
    client, app = net.connect(syn_payload=b"s" * 20)
    net.run(3.0)
    assert app.conn.syn_data_acked_bytes == 0
    after = next(s for _, s in net.sent["client"] if not s.flags & TcpFlags.SYN)
    assert seq_offset(after.seq, app.conn.iss) == 1 and isinstance(find(after, MpCapable), MpCapable)
    assert client.negotiated and net.server_ext.negotiated


def test_mp_capable_ack_takes_only_its_two_forms():
    with pytest.raises(ValueError, match="mp_capable_ack must be one of linux, rfc8684, got 'rfc'"):
        MptcpPolicy(mp_capable_ack="rfc")
