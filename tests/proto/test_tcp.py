"""The TCP connection machine (mpsim.proto.tcp): handshake options, SYN data, timers, RST, FIN.

Two styles: hand-made segments fed to one :class:`TcpConnection` where the exact bytes matter,
and two hosts on the deterministic harness (198.18.0.0/15 benchmark addresses, 50 ms one way)
where timing matters. Linux behaviour cited from google/packetdrill is tagged with the script.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.harness import Harness, drop_matching
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.seqnum import seq_add
from mpsim.proto.tcp import (
    CloseReason,
    Closed,
    DataReceived,
    Established,
    PeerClosed,
    ResetReceived,
    SynDataMode,
    SynRetransmissionReceived,
    TcpConnection,
    TcpExtension,
    TcpPolicy,
    TcpState,
    TimedOut,
    reset_for,
)
from mpsim.wire.options import (
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    Timestamps,
    UnknownOption,
    WindowScale,
    option_space_bytes,
)
from mpsim.wire.mptcp import Dss
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, encode_packet

CLIENT_ADDR = IPv4Address("198.18.0.1")
SERVER_ADDR = IPv4Address("198.18.0.2")
CLIENT_PORT, SERVER_PORT = 40000, 80
CLIENT_ISS, SERVER_ISS = 1000, 5000
ONE_WAY_S = 0.05  # so every RTT is 0.1 s
ACK, SYN, RST, FIN, PSH = TcpFlags.ACK, TcpFlags.SYN, TcpFlags.RST, TcpFlags.FIN, TcpFlags.PSH
LINUX_SYN_OPTIONS = (MaximumSegmentSize(1460), SackPermitted(), Timestamps(0, 0), NoOperation(), WindowScale(7))


# --- hand-made segments ------------------------------------------------------------------------


def to_client(seq: int, ack: int, flags: TcpFlags, payload: bytes = b"", options: tuple = (),
              window: int = 65535) -> IpPacket:
    return IpPacket(SERVER_ADDR, CLIENT_ADDR, TcpSegment(SERVER_PORT, CLIENT_PORT, seq, ack, flags, window,
                                                         options, payload))


def to_server(seq: int, ack: int, flags: TcpFlags, payload: bytes = b"", options: tuple = (),
              window: int = 65535) -> IpPacket:
    return IpPacket(CLIENT_ADDR, SERVER_ADDR, TcpSegment(CLIENT_PORT, SERVER_PORT, seq, ack, flags, window,
                                                         options, payload))


def client_conn(policy: TcpPolicy = TcpPolicy(), now: float = 0.0, syn_payload: bytes = b"") -> TcpConnection:
    return TcpConnection.active(CLIENT_ADDR, CLIENT_PORT, SERVER_ADDR, SERVER_PORT, iss=CLIENT_ISS, policy=policy,
                                now=now, syn_payload=syn_payload)


def established_client(policy: TcpPolicy = TcpPolicy()) -> TcpConnection:
    """A client past the handshake with a peer that offered no options; outputs drained."""
    conn = client_conn(policy)
    conn.receive(to_client(SERVER_ISS, CLIENT_ISS + 1, SYN | ACK, options=(MaximumSegmentSize(1460),)), 0.1)
    conn.pull_packets(), conn.pull_events()
    assert conn.state is TcpState.ESTABLISHED
    return conn


def server_conn(syn: IpPacket, policy: TcpPolicy = TcpPolicy(), **kwargs) -> TcpConnection:
    return TcpConnection.passive(syn, iss=SERVER_ISS, policy=policy, now=0.0, **kwargs)


def plain_syn(seq: int = CLIENT_ISS, payload: bytes = b"", options: tuple = (MaximumSegmentSize(1460),)) -> IpPacket:
    return to_server(seq, 0, SYN, payload, options)


def segments(conn: TcpConnection) -> list[TcpSegment]:
    return [p.segment for p in conn.pull_packets()]


# --- two hosts on the harness ------------------------------------------------------------------


@dataclass
class App:
    """A connection owner that records events and runs scripted reactions to them."""

    reactions: dict = field(default_factory=dict)  # event type -> callable(host, conn, now)
    log: list = field(default_factory=list)  # (time, event)
    received: bytearray = field(default_factory=bytearray)
    conn: TcpConnection | None = None

    def on_tcp_event(self, host, conn, event, now):
        self.conn = conn
        self.log.append((round(now, 9), event))  # so that 0.05 + 1.0 compares equal to 1.05
        if isinstance(event, DataReceived):
            self.received += event.data
        reaction = self.reactions.get(type(event))
        if reaction is not None:
            reaction(host, conn, now)

    def kinds(self) -> list[type]:
        return [type(e) for _, e in self.log]

    def times(self, kind: type) -> list[float]:
        return [t for t, e in self.log if isinstance(e, kind)]

    def events(self, kind: type) -> list:
        return [e for _, e in self.log if isinstance(e, kind)]


@dataclass
class Listener:
    app: App
    mode: SynDataMode = SynDataMode.DROP
    withhold: bool = False

    def on_syn(self, host, packet, now):
        return Acceptance(self.app, self.mode, self.withhold)


@dataclass
class Net:
    harness: Harness
    client: Host
    server: Host
    client_app: App
    server_app: App

    def connect(self, syn_payload: bytes = b"", **kwargs) -> TcpConnection:
        return self.client.open(self.client_app, CLIENT_ADDR, SERVER_ADDR, SERVER_PORT, self.harness.now,
                                syn_payload=syn_payload, **kwargs)

    def act(self, host: Host, conn: TcpConnection, command: str, *args) -> None:
        """Run a command on a connection at the harness's current time, then flush its outputs."""
        now = self.harness.now
        if command == "send_synack":
            conn.send_synack(now, *args)
        else:
            getattr(conn, command)(*args, now)
        host.collect(conn, now)

    def c2s(self) -> list:
        return self.harness.hops[("client", "eth0")].filters

    def s2c(self) -> list:
        return self.harness.hops[("server", "eth0")].filters

    def sent(self, src: str, *, dropped: bool | None = None) -> list:
        """(time, segment) for each packet ``src`` put on the link (drops at send time, the rest on arrival)."""
        return [(round(d.time_s - (0 if d.dropped else ONE_WAY_S), 9), d.packet.segment) for d in self.harness.log
                if d.src == src and (dropped is None or d.dropped == dropped)]


def make_net(policy: TcpPolicy = TcpPolicy(), server_policy: TcpPolicy | None = None, *,
             mode: SynDataMode = SynDataMode.DROP, withhold: bool = False, seed: int = 1) -> Net:
    harness = Harness()
    rng = random.Random(seed)
    client = harness.add("client", Host("client", {"eth0": CLIENT_ADDR}, rng=rng, policy=policy))
    server = harness.add("server", Host("server", {"eth0": SERVER_ADDR}, rng=rng, policy=server_policy or policy))
    harness.link("client", "eth0", "server", "eth0", ONE_WAY_S)
    client_app, server_app = App(), App()
    server.listen(SERVER_PORT, Listener(server_app, mode, withhold))
    return Net(harness, client, server, client_app, server_app)


def is_flag(flag: TcpFlags):
    return lambda packet: bool(packet.segment.flags & flag)


def is_data(packet: IpPacket) -> bool:
    return bool(packet.segment.payload)


# --- handshake options ---------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "expected", "size_bytes"), [
    (TcpPolicy(), LINUX_SYN_OPTIONS, 20),
    (TcpPolicy(timestamps=False),
     (MaximumSegmentSize(1460), NoOperation(), NoOperation(), SackPermitted(), NoOperation(), WindowScale(7)), 12),
    (TcpPolicy(sack_permitted=False),
     (MaximumSegmentSize(1460), NoOperation(), NoOperation(), Timestamps(0, 0), NoOperation(), WindowScale(7)), 20),
    (TcpPolicy(timestamps=False, sack_permitted=False, window_scale_shift=None), (MaximumSegmentSize(1460),), 4),
])
def test_syn_options_follow_the_linux_layout(policy, expected, size_bytes):
    [syn] = segments(client_conn(policy))
    assert syn.flags == SYN and syn.seq == CLIENT_ISS and syn.ack == 0
    assert syn.options == expected
    assert option_space_bytes(syn.options) == size_bytes


def test_syn_timestamp_is_a_millisecond_clock():
    [syn] = segments(client_conn(now=2.5))
    assert syn.options[2] == Timestamps(2500, 0)


_MSS = MaximumSegmentSize(1460)


@pytest.mark.parametrize(("offered", "expected"), [
    ((_MSS,), (_MSS,)),
    ((_MSS, NoOperation(), NoOperation(), SackPermitted()), (_MSS, NoOperation(), NoOperation(), SackPermitted())),
    ((_MSS, NoOperation(), WindowScale(2)), (_MSS, NoOperation(), WindowScale(7))),
    ((_MSS, NoOperation(), NoOperation(), Timestamps(77, 0)),
     (_MSS, NoOperation(), NoOperation(), Timestamps(0, 77))),
    ((_MSS, SackPermitted(), Timestamps(77, 0), NoOperation(), WindowScale(2)),
     (_MSS, SackPermitted(), Timestamps(0, 77), NoOperation(), WindowScale(7))),
    ((_MSS, NoOperation(), NoOperation(), SackPermitted(), NoOperation(), WindowScale(2)),
     (_MSS, NoOperation(), NoOperation(), SackPermitted(), NoOperation(), WindowScale(7))),
])
def test_synack_mirrors_what_the_syn_offered(offered, expected):
    server = server_conn(plain_syn(options=offered))
    [synack] = segments(server)
    assert synack.flags == SYN | ACK and synack.seq == SERVER_ISS and synack.ack == CLIENT_ISS + 1
    assert synack.options == expected  # TSecr echoes the SYN's TSval


def test_synack_offers_nothing_our_policy_disables():
    syn = plain_syn(options=(_MSS, SackPermitted(), Timestamps(77, 0), NoOperation(), WindowScale(2)))
    [synack] = segments(server_conn(syn, TcpPolicy(timestamps=False, sack_permitted=False, window_scale_shift=None)))
    assert synack.options == (_MSS,)


@pytest.mark.parametrize(("peer_scales", "window_field", "peer_window_bytes"), [
    (True, (65535 * 4) >> 7, 1000 << 2),  # both sent WS: our field is scaled, theirs too
    (False, 65535, 1000),  # one side only: no scaling in either direction (RFC 7323 2.2)
])
def test_window_scaling_needs_both_sides(peer_scales, window_field, peer_window_bytes):
    conn = client_conn()
    options = (_MSS, NoOperation(), WindowScale(2)) if peer_scales else (_MSS,)
    conn.receive(to_client(SERVER_ISS, CLIENT_ISS + 1, SYN | ACK, options=options), 0.1)
    conn.pull_packets()
    conn.receive(to_client(SERVER_ISS + 1, CLIENT_ISS + 1, ACK, b"x", window=1000), 0.2)
    [ack] = segments(conn)
    assert ack.window == window_field
    assert conn.peer_window_bytes == peer_window_bytes


def test_passive_side_without_window_scaling_ignores_the_peers_shift():
    """Regression: a server not scaling still applied the client's shift to the client's windows."""
    server = server_conn(plain_syn(options=(_MSS, NoOperation(), WindowScale(5))), TcpPolicy(window_scale_shift=None))
    server.receive(to_server(CLIENT_ISS + 1, SERVER_ISS + 1, ACK, window=1000), 0.1)
    assert server.peer_window_bytes == 1000


@pytest.mark.parametrize(("client_policy", "peer_mss", "segment_bytes"), [
    (TcpPolicy(), 1460, 1448),  # Timestamps take 12 bytes of every segment, as on Linux
    (TcpPolicy(timestamps=False), 1460, 1460),
    (TcpPolicy(), 536, 524),
    (TcpPolicy(timestamps=False), 20, 48),  # a tiny MSS is raised to Linux's tcp_min_snd_mss
])
def test_segment_size_follows_mss_and_options(client_policy, peer_mss, segment_bytes):
    conn = client_conn(client_policy)
    ts = (NoOperation(), NoOperation(), Timestamps(1, 0))
    conn.receive(to_client(SERVER_ISS, CLIENT_ISS + 1, SYN | ACK, options=(MaximumSegmentSize(peer_mss),) + ts), 0.1)
    conn.pull_packets()
    conn.send(bytes(5000), 0.2)
    sizes = [len(s.payload) for s in segments(conn)]
    assert sizes[0] == segment_bytes and sum(sizes) == 5000


# --- SYN data in the three modes -----------------------------------------------------------------


def test_syn_data_dropped_then_resent_with_the_handshake_ack():
    """packetdrill client/syn-data-only-syn-acked.pkt: the SYN-ACK ACKs ISN+1 only; the client
    sends the SYN data again in the first segment after it, not after a separate pure ACK."""
    net = make_net(mode=SynDataMode.DROP)
    conn = net.connect(b"hello" * 20)
    net.harness.run(1.0)
    syn, data = [s for _, s in net.sent("client")][:2]
    synack = [s for _, s in net.sent("server")][0]
    assert syn.payload == b"hello" * 20
    assert synack.ack == seq_add(syn.seq, 1)  # only the SYN
    assert data.seq == seq_add(syn.seq, 1) and data.payload == b"hello" * 20 and data.flags == ACK | PSH
    assert net.client_app.events(Established) == [Established(syn_data_acked_bytes=0)]
    assert net.server_app.kinds() == [Established, DataReceived] and net.server_app.received == b"hello" * 20
    assert net.server_app.times(DataReceived) == [0.15]
    assert conn.bytes_sent == 100 and conn.retransmissions == 1  # sent twice, counted once


def test_syn_data_given_up_when_policy_says_so():
    net = make_net(TcpPolicy(resend_unacked_syn_data=False), mode=SynDataMode.DROP)
    net.connect(b"hello")
    net.harness.run(1.0)
    after_syn = [s for _, s in net.sent("client")][1:]
    assert [(s.flags, s.payload) for s in after_syn] == [(ACK, b"")]
    assert net.server_app.received == b""


def test_syn_data_queued_is_acked_at_once_and_delivered_once_established():
    net = make_net(mode=SynDataMode.QUEUE)
    net.connect(b"hello")
    net.harness.run(1.0)
    syn = net.sent("client")[0][1]
    synack = net.sent("server")[0][1]
    assert synack.ack == seq_add(syn.seq, 6)
    assert net.client_app.events(Established) == [Established(syn_data_acked_bytes=5)]
    assert net.server_app.log == [(0.15, Established(0)), (0.15, DataReceived(b"hello"))]
    assert [s.payload for _, s in net.sent("client")] == [b"hello", b""]  # nothing sent twice


def test_syn_data_accepted_is_delivered_before_the_handshake_ends():
    net = make_net(mode=SynDataMode.ACCEPT)
    net.connect(b"hello")
    net.harness.run(1.0)
    assert net.server_app.log == [(0.05, DataReceived(b"hello")), (0.15, Established(0))]
    assert net.client_app.events(Established) == [Established(syn_data_acked_bytes=5)]


def test_withheld_synack_goes_out_with_a_payload():
    net = make_net(withhold=True)
    net.connect()
    net.harness.run(0.5)
    [server] = net.server.connections.values()
    assert server.state is TcpState.SYN_RECEIVED and net.sent("server") == []
    net.act(net.server, server, "send", b" and more")  # queued behind the SYN-ACK payload
    net.act(net.server, server, "send_synack", b"reply")
    net.harness.run(2.0)
    synack = net.sent("server")[0][1]
    assert synack.flags == SYN | ACK and synack.payload == b"reply"
    assert net.client_app.log[:2] == [(0.55, Established(0)), (0.55, DataReceived(b"reply"))]
    assert net.client_app.received == b"reply and more"
    assert server.bytes_sent == 14 and server.retransmissions == 0


def test_peer_syn_retransmission_is_reported_while_the_synack_is_withheld():
    net = make_net(withhold=True)
    net.connect()
    net.harness.run(1.5)
    assert net.server_app.log == [(1.05, SynRetransmissionReceived())]


def test_synack_payload_the_ack_does_not_cover_is_resent_as_data():
    server = server_conn(plain_syn(), withhold_synack=True)
    server.send_synack(0.0, b"reply")
    segments(server)
    server.receive(to_server(CLIENT_ISS + 1, SERVER_ISS + 1, ACK), 0.1)  # the SYN-ACK's data was lost
    assert segments(server) == [] and server.get_timer() == pytest.approx(0.1 + server.rto_s)
    server.handle_timer(server.get_timer())
    [resent] = segments(server)
    assert (resent.seq, resent.payload) == (SERVER_ISS + 1, b"reply")


def test_data_queued_in_syn_received_goes_out_intact():
    """Regression: the ACK of the SYN used to be counted as one byte of queued data."""
    server = server_conn(plain_syn())
    server.send(b"hello", 0.0)
    segments(server)
    server.receive(to_server(CLIENT_ISS + 1, SERVER_ISS + 1, ACK), 0.1)
    [data] = segments(server)
    assert (data.seq, data.payload) == (SERVER_ISS + 1, b"hello")


# --- SYN and SYN-ACK retransmission ----------------------------------------------------------------


def test_syn_retransmissions_at_linux_times_then_failure():
    net = make_net()
    net.c2s().append(drop_matching(is_flag(SYN)))
    conn = net.connect(b"data")
    net.harness.run(500.0)
    syns = net.sent("client", dropped=True)
    assert [t for t, _ in syns] == [0, 1, 3, 7, 15, 31, 63]
    assert [s.payload for _, s in syns] == [b"data"] + [b""] * 6  # RFC 7413 4.2.2, Linux
    assert net.client_app.log == [(127, TimedOut("syn")), (127, Closed(CloseReason.TIMED_OUT))]
    assert conn.syns_sent == 7 and conn.retransmissions == 6


def test_retransmitted_syn_carries_data_when_asked():
    net = make_net(TcpPolicy(retransmit_syn_data=True))
    net.c2s().append(drop_matching(is_flag(SYN), count=1))
    net.connect(b"data")
    net.harness.run(5.0)
    assert [s.payload for _, s in net.sent("client")][:2] == [b"data", b"data"]


def test_late_synack_may_ack_the_data_of_the_first_syn():
    """The first SYN was slow, not lost: its SYN-ACK ACKs the data although the retransmitted SYN
    had none. Regression: SND.NXT went back to ISS+1 and the SYN-ACK drew a RST."""
    conn = client_conn(syn_payload=b"hello")
    segments(conn)
    conn.handle_timer(1.0)
    [retransmitted] = segments(conn)
    assert retransmitted.payload == b""
    conn.receive(to_client(SERVER_ISS, CLIENT_ISS + 6, SYN | ACK, options=(_MSS,)), 1.5)
    assert conn.pull_events() == [Established(syn_data_acked_bytes=5)]
    assert [(s.flags, s.payload) for s in segments(conn)] == [(ACK, b"")]


def test_synack_retransmissions_then_failure():
    net = make_net()
    net.c2s().append(drop_matching(lambda p: not p.segment.flags & SYN))  # the handshake ACK never arrives
    net.connect()
    net.harness.run(500.0)
    assert [t for t, s in net.sent("server") if s.flags & SYN] == [0.05, 1.05, 3.05, 7.05, 15.05, 31.05]
    assert net.server_app.log == [(63.05, TimedOut("synack")), (63.05, Closed(CloseReason.TIMED_OUT))]


def test_retransmitted_syn_is_answered_at_once_without_moving_the_synack_timer():
    server = server_conn(plain_syn())
    segments(server)
    server.receive(plain_syn(), 0.6)
    [synack] = segments(server)
    assert synack.flags == SYN | ACK and server.get_timer() == 1.0 and server.retransmissions == 1


# --- data: RTO estimation and back-off ---------------------------------------------------------------


def test_rto_follows_rfc6298_then_backs_off():
    net = make_net()
    conn = net.connect()
    net.harness.run(0.5)
    # First sample 0.1 s (SYN to SYN-ACK): SRTT 0.1, RTTVAR 0.05, RTO 0.1 + 4 * 0.05.
    assert conn.srtt_s == pytest.approx(0.1) and conn.rto_s == pytest.approx(0.3)
    expected_rto_s = [0.25, 0.2125, 0.2]  # RTTVAR shrinks by 3/4 per equal sample; 0.184 is below min_rto_s
    for second, rto_s in enumerate(expected_rto_s, start=1):
        net.harness.run(float(second))
        net.act(net.client, conn, "send", b"x")
        net.harness.run(second + 0.5)
        assert conn.rto_s == pytest.approx(rto_s)
    net.c2s().append(drop_matching(is_data, count=3))
    net.act(net.client, conn, "send", b"lost")
    net.harness.run(10.0)
    times = [t for t, s in net.sent("client") if s.payload == b"lost"]
    assert times == pytest.approx([3.5, 3.7, 4.1, 4.9])  # RTO 0.2, doubled each time
    assert net.server_app.received == b"xxxlost"


def test_rto_is_three_seconds_when_the_handshake_gave_no_sample():
    """RFC 6298 5.7 (Linux TCP_TIMEOUT_FALLBACK): the SYN was retransmitted, so no RTT sample."""
    net = make_net()
    net.c2s().append(drop_matching(is_flag(SYN), count=1))
    conn = net.connect()
    net.harness.run(1.5)
    assert conn.srtt_s is None and conn.rto_s == 3.0
    net.c2s().append(drop_matching(is_data, count=1))
    net.act(net.client, conn, "send", b"x")
    net.harness.run(10.0)
    assert [t for t, s in net.sent("client") if s.payload] == [1.5, 4.5]


def test_data_retransmissions_run_out():
    net = make_net(TcpPolicy(data_retries=2))
    conn = net.connect()
    net.harness.run(0.5)
    net.c2s().append(drop_matching(is_data))
    net.act(net.client, conn, "send", b"x")
    net.harness.run(10.0)
    assert [t for t, s in net.sent("client") if s.payload] == pytest.approx([0.5, 0.8, 1.4])
    assert net.client_app.log[-2:] == [(pytest.approx(2.6), TimedOut("data")),
                                       (pytest.approx(2.6), Closed(CloseReason.TIMED_OUT))]


def test_bulk_transfer_survives_loss_in_both_directions():
    net = make_net()
    net.c2s().append(drop_matching(lambda p: len(p.segment.payload) > 0 and p.segment.seq % 3 == 0, count=5))
    net.s2c().append(drop_matching(lambda p: p.segment.flags == ACK, count=5))
    conn = net.connect()
    blob = bytes(random.Random(3).getrandbits(8) for _ in range(50_000))
    net.harness.run(0.5)
    net.act(net.client, conn, "send", blob)
    net.harness.run(100.0)
    assert net.server_app.received == blob and conn.bytes_sent == len(blob)


def test_timeout_resends_only_what_the_window_let_out():
    """Regression: the retransmission took a full MSS, beyond SND.NXT; the peer's ACK of those
    bytes then looked like an ACK of unsent data and the transfer hung."""
    small = TcpPolicy(receive_window_bytes=1000, window_scale_shift=None)
    net, client, server = _established_net(TcpPolicy(), server_policy=small)
    net.c2s().append(drop_matching(is_data, count=1))
    blob = bytes(range(256)) * 12
    net.act(net.client, client, "send", blob)
    net.harness.run(30.0)
    assert [len(s.payload) for _, s in net.sent("client") if s.payload][:2] == [1000, 1000]
    assert net.server_app.received == blob


# --- RST rules ---------------------------------------------------------------------------------


def test_syn_sent_accepts_only_a_rst_that_acks_the_syn():
    conn = client_conn()
    segments(conn)
    conn.receive(to_client(0, 0, RST), 0.1)  # no ACK: dropped (RFC 9293 3.10.7.3)
    conn.receive(to_client(0, CLIENT_ISS, RST | ACK), 0.1)  # ACK does not cover the SYN: dropped
    assert conn.state is TcpState.SYN_SENT and segments(conn) == [] and conn.pull_events() == []
    conn.receive(to_client(0, CLIENT_ISS + 1, RST | ACK), 0.1)
    assert conn.pull_events() == [ResetReceived(refused=True), Closed(CloseReason.RESET_RECEIVED)]
    assert conn.state is TcpState.CLOSED and conn.get_timer() is None


@pytest.mark.parametrize("bad_ack", [CLIENT_ISS, CLIENT_ISS + 2, CLIENT_ISS - 500])
def test_syn_sent_answers_an_unacceptable_ack_with_a_rst(bad_ack):
    conn = client_conn()
    segments(conn)
    conn.receive(to_client(SERVER_ISS, bad_ack, SYN | ACK), 0.1)
    [rst] = segments(conn)
    assert (rst.flags, rst.seq) == (RST, bad_ack)
    assert conn.state is TcpState.SYN_SENT


def _in_state(state: TcpState) -> TcpConnection:
    """A client in a synchronized state, its RCV.NXT at SERVER_ISS + 1 (or + 2 after a FIN)."""
    conn = established_client()
    if state is TcpState.FIN_WAIT_1:
        conn.close(0.2)
    elif state is TcpState.CLOSE_WAIT:
        conn.receive(to_client(SERVER_ISS + 1, CLIENT_ISS + 1, FIN | ACK), 0.2)
    segments(conn), conn.pull_events()
    assert conn.state is state
    return conn


@pytest.mark.parametrize("state", [TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.CLOSE_WAIT])
def test_synchronized_rst_exact_resets_inexact_challenges_outside_ignored(state):
    """RFC 5961 3.2, as folded into RFC 9293."""
    conn = _in_state(state)
    rcv_nxt = conn.rcv_nxt
    window = conn.policy.receive_window_bytes
    for outside in (seq_add(rcv_nxt, -1), seq_add(rcv_nxt, window), seq_add(rcv_nxt, 1 << 31)):
        conn.receive(to_client(outside, 0, RST), 1.0)
    assert segments(conn) == [] and conn.state is state
    conn.receive(to_client(seq_add(rcv_nxt, window - 1), 0, RST), 1.0)
    [challenge] = segments(conn)
    assert (challenge.flags, challenge.seq, challenge.ack) == (ACK, conn.snd_nxt, rcv_nxt)
    assert conn.state is state and conn.pull_events() == []
    conn.receive(to_client(rcv_nxt, 0, RST), 1.0)
    assert conn.pull_events() == [ResetReceived(refused=False), Closed(CloseReason.RESET_RECEIVED)]
    assert segments(conn) == [] and conn.state is TcpState.CLOSED


def test_syn_on_established_connection_draws_a_challenge_ack():
    """RFC 5961 4.2: whatever its sequence number, a SYN never resets a synchronized connection."""
    conn = established_client()
    for seq in (SERVER_ISS + 1, SERVER_ISS + 100, 12345678):
        conn.receive(to_client(seq, 0, SYN), 1.0)
        [challenge] = segments(conn)
        assert (challenge.flags, challenge.seq, challenge.ack) == (ACK, CLIENT_ISS + 1, SERVER_ISS + 1)
    assert conn.state is TcpState.ESTABLISHED and conn.pull_events() == []


def test_syn_received_resets_on_an_in_window_rst():
    server = server_conn(plain_syn())
    segments(server)
    server.receive(to_server(CLIENT_ISS + 1, 0, RST), 0.1)
    assert server.pull_events() == [ResetReceived(refused=False), Closed(CloseReason.RESET_RECEIVED)]


def test_syn_received_answers_a_bad_ack_with_a_rst():
    server = server_conn(plain_syn())
    segments(server)
    server.receive(to_server(CLIENT_ISS + 1, SERVER_ISS + 7, ACK), 0.1)
    [rst] = segments(server)
    assert (rst.flags, rst.seq) == (RST, SERVER_ISS + 7) and server.state is TcpState.SYN_RECEIVED


def test_abort_sends_rst_at_snd_nxt():
    conn = established_client()
    conn.send(b"abc", 0.5)
    segments(conn)
    conn.abort(0.6)
    [rst] = segments(conn)
    assert (rst.flags, rst.seq) == (RST, CLIENT_ISS + 4)
    assert conn.pull_events() == [Closed(CloseReason.ABORTED)] and conn.get_timer() is None


@pytest.mark.parametrize(("segment", "expected"), [
    # With ACK: <SEQ=SEG.ACK><CTL=RST>
    (TcpSegment(CLIENT_PORT, SERVER_PORT, 10, 20, ACK, 100, (), b"12345"), (20, 0, RST)),
    (TcpSegment(CLIENT_PORT, SERVER_PORT, 10, 20, ACK | FIN, 100), (20, 0, RST)),
    # Without ACK: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; SYN and FIN count in SEG.LEN
    (TcpSegment(CLIENT_PORT, SERVER_PORT, 10, 0, SYN, 100, (), b"1234567"), (0, 18, RST | ACK)),
    (TcpSegment(CLIENT_PORT, SERVER_PORT, 0xFFFFFFFF, 0, SYN, 100), (0, 0, RST | ACK)),
    (TcpSegment(CLIENT_PORT, SERVER_PORT, 10, 0, FIN, 100), (0, 11, RST | ACK)),
])
def test_reset_for_a_closed_port(segment, expected):
    """RFC 9293 3.10.7.1."""
    rst = reset_for(IpPacket(CLIENT_ADDR, SERVER_ADDR, segment))
    assert (rst.src, rst.dst) == (SERVER_ADDR, CLIENT_ADDR)
    assert (rst.segment.src_port, rst.segment.dst_port) == (SERVER_PORT, CLIENT_PORT)
    assert (rst.segment.seq, rst.segment.ack, rst.segment.flags) == expected


def test_no_reset_for_a_reset():
    assert reset_for(IpPacket(CLIENT_ADDR, SERVER_ADDR, TcpSegment(1, 2, 3, 4, RST | ACK, 0))) is None


# --- FIN in every order, TIME-WAIT -----------------------------------------------------------------


def _established_net(policy: TcpPolicy = TcpPolicy(), **kwargs) -> tuple[Net, TcpConnection, TcpConnection]:
    net = make_net(policy, **kwargs)
    client = net.connect()
    net.harness.run(0.5)
    [server] = net.server.connections.values()
    return net, client, server


def test_active_close():
    net, client, server = _established_net()
    net.harness.run(1.0)
    net.act(net.client, client, "close")
    net.harness.run(1.2)
    assert (client.state, server.state) == (TcpState.FIN_WAIT_2, TcpState.CLOSE_WAIT)
    net.harness.run(2.0)
    net.act(net.server, server, "close")
    net.harness.run(3.0)
    assert client.state is TcpState.TIME_WAIT
    assert net.server_app.log[-2:] == [(1.05, PeerClosed()), (2.1, Closed(CloseReason.LAST_ACK))]
    net.harness.run(62.0)
    assert client.state is TcpState.TIME_WAIT
    net.harness.run(63.0)
    assert net.client_app.log[-2:] == [(2.05, PeerClosed()), (62.05, Closed(CloseReason.TIME_WAIT_EXPIRED))]


def test_passive_close():
    net, client, server = _established_net()
    net.client_app.reactions[PeerClosed] = lambda host, conn, now: conn.close(now)  # an echo-style client
    net.harness.run(1.0)
    net.act(net.server, server, "close")
    net.harness.run(100.0)
    assert net.client_app.log[-2:] == [(1.05, PeerClosed()), (1.15, Closed(CloseReason.LAST_ACK))]
    assert net.server_app.log[-2:] == [(1.1, PeerClosed()), (61.1, Closed(CloseReason.TIME_WAIT_EXPIRED))]


def test_a_held_close_waits_for_its_release():
    # A simulated transfer runs on the connection outside the machine (docs/sim.md "Routes"):
    # whoever asks for the close meanwhile (the peer's FIN answered by the application), the FIN
    # waits for release_close.
    net, client, server = _established_net()
    net.client_app.reactions[PeerClosed] = lambda host, conn, now: conn.close(now)
    client.hold_close()
    net.harness.run(1.0)
    net.act(net.server, server, "close")
    net.harness.run(2.0)
    assert (client.state, server.state) == (TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_2)  # asked, held
    net.act(net.client, client, "release_close")
    net.harness.run(2.2)
    assert net.client_app.log[-1] == (2.1, Closed(CloseReason.LAST_ACK))
    assert server.state is TcpState.TIME_WAIT


def test_release_without_a_close_asked_sends_nothing():
    conn = established_client()
    conn.hold_close()
    conn.release_close(1.0)
    assert conn.state is TcpState.ESTABLISHED and not conn.pull_packets()


def test_carried_stream_bytes_move_the_fin_and_the_ack():
    # 500 bytes sent and 700 received outside the machine: the FIN takes the number after the
    # 500 (ISN 1000 + SYN + 500 = 1501) and acknowledges the 700 (ISN 5000 + SYN + 700 = 5701).
    conn = established_client()
    conn.carry_stream(500, 700)
    assert (conn.bytes_sent, conn.bytes_received) == (500, 700)
    conn.close(1.0)
    (fin,) = segments(conn)
    assert fin.flags == FIN | ACK and (fin.seq, fin.ack) == (CLIENT_ISS + 1 + 500, SERVER_ISS + 1 + 700)
    # the peer's ACK of the FIN closes it as usual
    conn.receive(to_client(SERVER_ISS + 701, CLIENT_ISS + 502, ACK), 1.1)
    assert conn.state is TcpState.FIN_WAIT_2


def test_carrying_stream_bytes_needs_an_idle_connection():
    conn = established_client()
    conn.send(b"x" * 10, 0.2)  # unacknowledged
    with pytest.raises(LocalProtocolError, match="unacknowledged"):
        conn.carry_stream(100, 0)
    assert not conn.idle
    with pytest.raises(ValueError):
        established_client().carry_stream(-1, 0)


def test_simultaneous_close_goes_through_closing():
    net, client, server = _established_net()
    net.harness.run(1.0)
    net.act(net.client, client, "close")
    net.act(net.server, server, "close")
    net.harness.run(1.07)
    assert client.state is server.state is TcpState.CLOSING
    net.harness.run(1.2)
    assert client.state is server.state is TcpState.TIME_WAIT
    net.harness.run(100.0)
    for app in (net.client_app, net.server_app):
        assert app.log[-2:] == [(1.05, PeerClosed()), (61.1, Closed(CloseReason.TIME_WAIT_EXPIRED))]


def test_time_wait_length_is_policy():
    net, client, server = _established_net(TcpPolicy(time_wait_s=240.0))
    net.server_app.reactions[PeerClosed] = lambda host, conn, now: conn.close(now)
    net.harness.run(1.0)
    net.act(net.client, client, "close")
    net.harness.run(1000.0)
    assert net.client_app.log[-1] == (241.1, Closed(CloseReason.TIME_WAIT_EXPIRED))


def test_fin_retransmission():
    net, client, server = _established_net()
    net.c2s().append(drop_matching(is_flag(FIN), count=2))
    net.harness.run(1.0)
    net.act(net.client, client, "close")
    net.harness.run(5.0)
    assert [t for t, s in net.sent("client") if s.flags & FIN] == pytest.approx([1.0, 1.3, 1.9])  # RTO 0.3 s, doubled
    assert net.server_app.times(PeerClosed) == [pytest.approx(1.95)] and client.state is TcpState.FIN_WAIT_2


def test_retransmitted_fin_restarts_time_wait():
    net, client, server = _established_net()
    net.server_app.reactions[PeerClosed] = lambda host, conn, now: conn.close(now)
    net.c2s().append(drop_matching(lambda p: p.segment.flags == ACK and client.state is TcpState.TIME_WAIT, count=1))
    net.harness.run(1.0)
    net.act(net.client, client, "close")
    net.harness.run(200.0)
    # The server's FIN (1.05) is re-sent after its RTO (0.3 s); the client's TIME-WAIT restarts at 1.4.
    assert [t for t, s in net.sent("server") if s.flags & FIN] == pytest.approx([1.05, 1.35])
    assert net.client_app.log[-1] == (pytest.approx(61.4), Closed(CloseReason.TIME_WAIT_EXPIRED))
    assert net.server_app.log[-1] == (pytest.approx(1.45), Closed(CloseReason.LAST_ACK))


def test_fin_wait_2_times_out_when_the_peer_stays_silent():
    net, client, server = _established_net()
    net.harness.run(1.0)
    net.act(net.client, client, "close")
    net.harness.run(30.0)
    net.act(net.server, server, "send", b"late data")  # restarts the 60 s from the peer's last segment
    net.harness.run(200.0)
    assert net.client_app.log[-3:] == [(30.05, DataReceived(b"late data")), (90.05, TimedOut("fin_wait_2")),
                                       (90.05, Closed(CloseReason.TIMED_OUT))]


def test_fin_wait_2_lasts_forever_without_the_linux_timeout():
    net, client, server = _established_net(TcpPolicy(fin_wait_2_timeout_s=None))
    net.harness.run(1.0)
    net.act(net.client, client, "close")
    net.harness.run(10_000.0)
    assert client.state is TcpState.FIN_WAIT_2 and client.get_timer() is None


def test_close_in_syn_received_sends_fin_after_the_handshake():
    """Regression: the FIN stayed queued forever in ESTABLISHED."""
    server = server_conn(plain_syn())
    server.close(0.0)
    assert server.state is TcpState.SYN_RECEIVED
    segments(server)
    server.receive(to_server(CLIENT_ISS + 1, SERVER_ISS + 1, ACK), 0.1)
    [fin] = segments(server)
    assert (fin.flags, fin.seq) == (FIN | ACK, SERVER_ISS + 1) and server.state is TcpState.FIN_WAIT_1


def test_closing_still_sends_what_the_window_held_back():
    """The peer's FIN arrives while our data waits for window space. Regression: in CLOSING
    nothing more was sent and the connection hung."""
    small = TcpPolicy(receive_window_bytes=1000, window_scale_shift=None)
    net, client, server = _established_net(TcpPolicy(), server_policy=small)
    net.harness.run(1.0)
    blob = bytes(range(256)) * 12
    net.act(net.client, client, "send", blob)
    net.act(net.client, client, "close")
    net.act(net.server, server, "close")
    net.harness.run(100.0)
    assert net.server_app.received == blob
    assert net.client_app.log[-1][1] == Closed(CloseReason.TIME_WAIT_EXPIRED)
    assert net.server_app.log[-1][1] == Closed(CloseReason.TIME_WAIT_EXPIRED)


# --- illegal commands --------------------------------------------------------------------------------


def _closed_client() -> TcpConnection:
    conn = established_client()
    conn.receive(to_client(SERVER_ISS + 1, 0, RST), 0.5)
    conn.pull_events()
    return conn


@pytest.mark.parametrize(("make", "command"), [
    (lambda: _in_state(TcpState.FIN_WAIT_1), lambda c: c.send(b"x", 1.0)),  # send after close
    (lambda: server_conn(plain_syn()), lambda c: c.send_synack(1.0)),  # SYN-ACK not withheld
    (established_client, lambda c: c.send_synack(1.0, b"x")),
    (_closed_client, lambda c: c.send(b"x", 1.0)),
    (_closed_client, lambda c: c.close(1.0)),
])
def test_illegal_commands_raise_and_change_nothing(make, command):
    conn = make()
    segments(conn), conn.pull_events()
    before = (conn.state, conn.snd_una, conn.snd_nxt, conn.rcv_nxt, conn.get_timer())
    with pytest.raises(LocalProtocolError):
        command(conn)
    assert (conn.state, conn.snd_una, conn.snd_nxt, conn.rcv_nxt, conn.get_timer()) == before
    assert segments(conn) == [] and conn.pull_events() == []


def test_abort_on_a_closed_connection_does_nothing():
    conn = _closed_client()
    conn.abort(1.0)
    assert segments(conn) == [] and conn.pull_events() == []


def test_withheld_synack_can_be_sent_once():
    server = server_conn(plain_syn(), withhold_synack=True)
    server.send_synack(0.1)
    with pytest.raises(LocalProtocolError):
        server.send_synack(0.2)


def test_policy_refuses_inconsistent_knobs():
    for kwargs in ({"min_rto_s": 2.0}, {"syn_retries": -1}, {"mss_bytes": 20}, {"time_wait_s": -1.0},
                   {"fin_wait_2_timeout_s": -1.0}, {"unsampled_handshake_rto_s": 0.0}):
        with pytest.raises(ValueError):
            TcpPolicy(**kwargs)


# --- random loss: every connection ends, deadlines never in the past --------------------------------


class CheckedHost:
    """A Host whose timer deadline is checked after every input: never in the past."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def _check(self, now: float) -> None:
        for conn in self.host.connections.values():
            deadline = conn.get_timer()
            assert deadline is None or deadline >= now, f"{conn.state.name} deadline {deadline} < now {now}"

    def receive(self, port, packet, now):
        self.host.receive(port, packet, now)
        self._check(now)

    def handle_timer(self, now):
        self.host.handle_timer(now)
        self._check(now)

    def get_timer(self):
        return self.host.get_timer()

    def outgoing(self, now):
        return self.host.outgoing(now)

    def next_event(self):
        return self.host.next_event()


@dataclass
class Recorder:
    """Per-connection events and bytes, with the scripted application behaviour of the test."""

    send_on_established: bytes = b""
    conns: dict = field(default_factory=dict)  # id(conn) -> [conn, events, received]

    def on_tcp_event(self, host, conn, event, now):
        record = self.conns.setdefault(id(conn), [conn, [], bytearray()])
        record[1].append(event)
        if isinstance(event, DataReceived):
            record[2] += event.data
        if isinstance(event, Established):
            if self.send_on_established:
                conn.send(self.send_on_established, now)
            if conn.state is TcpState.ESTABLISHED and host.name == "client":
                conn.close(now)  # the client sends its request and closes at once
        elif isinstance(event, PeerClosed) and host.name == "server":
            conn.close(now)  # the server closes when the client has


# Loss comes in bursts (packets delivered, then packets dropped, repeated): independent coin flips
# rarely drop the 2-4 segments in a row that reach the give-up paths.
_drop_patterns = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 5)), max_size=12).map(
    lambda bursts: [drop for delivered, dropped in bursts for drop in [False] * delivered + [True] * dropped])


@settings(max_examples=400, deadline=None)
@given(drops=_drop_patterns, syn_bytes=st.integers(0, 1000),
       client_bytes=st.integers(0, 20_000), server_bytes=st.integers(0, 6_000),
       mode=st.sampled_from(SynDataMode), retries=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_random_loss_every_connection_ends(drops, syn_bytes, client_bytes, server_bytes, mode, retries, seed):
    """Few retries let short drop patterns reach every give-up path (SYN, SYN-ACK, data, FIN-WAIT-2)."""
    payload_rng = random.Random(seed)
    syn_data = payload_rng.randbytes(syn_bytes)
    client_data, server_data = payload_rng.randbytes(client_bytes), payload_rng.randbytes(server_bytes)
    harness = Harness()
    rng = random.Random(seed)
    policy = TcpPolicy(syn_retries=min(retries, 6), synack_retries=min(retries, 5), data_retries=retries)
    client = Host("client", {"eth0": CLIENT_ADDR}, rng=rng, policy=policy)
    server = Host("server", {"eth0": SERVER_ADDR}, rng=rng, policy=policy)
    harness.add("client", CheckedHost(client))
    harness.add("server", CheckedHost(server))
    pattern = iter(drops)  # one shared script for both directions; the path is clean once it runs out
    lossy = drop_matching(lambda packet: next(pattern, False))
    harness.link("client", "eth0", "server", "eth0", ONE_WAY_S, [lossy], [lossy])
    client_app, server_app = Recorder(client_data), Recorder(server_data)
    server.listen(SERVER_PORT, Listener(server_app, mode))  # type: ignore[arg-type]
    client.open(client_app, CLIENT_ADDR, SERVER_ADDR, SERVER_PORT, 0.0, syn_payload=syn_data)
    harness.run(5000.0)
    # No keepalive: a server whose client gave up waits, idle, for ever. Its application closes it;
    # the FIN meets the client host's RST.
    for host in (client, server):
        for conn in list(host.connections.values()):
            assert conn.state is TcpState.ESTABLISHED and conn.get_timer() is None, conn.state
            conn.close(harness.now)
            host.collect(conn, harness.now)
    harness.run(10_000.0)
    assert not client.connections and not server.connections

    sent = {"client": syn_data + client_data, "server": server_data}
    finals = {}
    for name, app in (("client", client_app), ("server", server_app)):
        for conn, events, received in app.conns.values():
            assert isinstance(events[-1], Closed) and sum(isinstance(e, Closed) for e in events) == 1
            reason = events[-1].reason
            if reason is CloseReason.TIMED_OUT:
                assert isinstance(events[-2], TimedOut)
            elif reason is CloseReason.RESET_RECEIVED:
                assert isinstance(events[-2], ResetReceived)
            elif events[-1].clean:
                assert Established in map(type, events) and PeerClosed in map(type, events)
            other = "server" if name == "client" else "client"
            assert sent[other].startswith(received)  # in order, no duplicates, no gaps
            finals.setdefault(name, []).append((events[-1], received))
            event(f"{name} {reason.value}")  # --hypothesis-show-statistics: which endings were reached
    assert len(finals["client"]) == 1
    (client_closed, client_received), = finals["client"]
    for server_closed, server_received in finals.get("server", []):
        if client_closed.clean and server_closed.clean:
            assert client_received == server_data and server_received == syn_data + client_data


def test_linear_syn_timeouts_as_newer_linux_kernels_do():
    # net.ipv4.tcp_syn_linear_timeouts=4 (the 6.18 testbed kernel). Linux's ip-sysctl.rst: "with an
    # initial RTO of 1 and tcp_syn_linear_timeouts = 4 we would expect SYN RTOs to be: 1, 1, 1, 1,
    # 1, 2, 4, ...". Measured in the testbed: MPC SYNs at 0, 1, 2 s and the plain one at 3 s.
    from mpsim.proto.tcp import TcpConnection, TcpPolicy

    policy = TcpPolicy(syn_linear_timeouts=4, syn_retries=6)
    conn = TcpConnection.active(CLIENT_ADDR, 40000, SERVER_ADDR, 80, iss=1, policy=policy, now=0.0)
    times = [0.0]
    while conn.get_timer() is not None and len(times) < 20:
        now = conn.get_timer()
        conn.handle_timer(now)
        if any(p.segment.flags & TcpFlags.SYN for p in conn.pull_packets()[-1:]):
            times.append(now)
    # Linux adds the linear count to the retry limit (tcp_write_timeout): 6 + 4 = 10 retransmissions,
    # so the exponential part runs on to 67 s (tests/proto/test_tcp_syn_give_up.py has the give-up).
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 11.0, 19.0, 35.0, 67.0]


# --- extension options beside the stamped Timestamps -------------------------------------------


@dataclass
class FixedOptions(TcpExtension):
    """An extension that puts ``extra`` on every segment after the handshake."""

    extra: tuple = ()

    def options_for_segment(self, conn, seq, flags, payload):
        return self.extra


_DSS = Dss(data_ack=5, data_ack_64_bit=True)
_FULL_DSS = Dss(data_ack=5, dsn=9, ssn=1, data_level_length_bytes=10, checksum=7, data_ack_64_bit=True,
                dsn_64_bit=True)  # 28 bytes: with NOP NOP Timestamps exactly the 40 of a header


@pytest.mark.parametrize("extra, expected", [
    ((), lambda ts: (NoOperation(), NoOperation(), ts)),
    ((_DSS,), lambda ts: (NoOperation(), NoOperation(), ts, _DSS)),
    ((_FULL_DSS,), lambda ts: (NoOperation(), NoOperation(), ts, _FULL_DSS)),
    # Too long beside the Timestamps: they go (as Linux does with MPTCP + TFO, RFC 8684 appendix B).
    ((UnknownOption(200, bytes(28)),), lambda ts: (NoOperation(), NoOperation(), UnknownOption(200, bytes(28)))),
    # A Timestamps of the extension's own is stamped too; two options take the general path.
    ((Timestamps(0, 0),), lambda ts: (NoOperation(), NoOperation(), ts, ts)),
    ((_DSS, NoOperation()), lambda ts: (NoOperation(), NoOperation(), ts, _DSS, NoOperation())),
], ids=["none", "dss", "dss-40-bytes", "too-long", "timestamps", "two"])
def test_extension_options_follow_the_stamped_timestamps(extra, expected):
    # The segments' options equal _stamp(_fit_options(base, extra)) in every case, whether the
    # shared stamped base is reused (the one-option fast path) or a new tuple is stamped.
    conn = TcpConnection.active(CLIENT_ADDR, CLIENT_PORT, SERVER_ADDR, SERVER_PORT, iss=CLIENT_ISS,
                                policy=TcpPolicy(), now=0.0, extensions=(FixedOptions(),))
    conn.receive(to_client(SERVER_ISS, CLIENT_ISS + 1, SYN | ACK,
                           options=(MaximumSegmentSize(1460), Timestamps(77, 1))), 0.1)
    conn.pull_packets()
    conn.extensions[0].extra = extra
    for now in (0.2, 0.2, 0.2005, 0.201):  # twice in one tick of the 1 kHz clock, then the next ticks
        conn.send_ack(now)
        (segment,) = segments(conn)
        assert segment.options == expected(Timestamps(int(now * 1000), 77))
        assert IpPacket(CLIENT_ADDR, SERVER_ADDR, segment).length_bytes == len(encode_packet(
            IpPacket(CLIENT_ADDR, SERVER_ADDR, segment)))
