"""The host (mpsim.proto.host): demultiplexing, listeners, RSTs for strays, TIME-WAIT reopening,
and the port allocator that never reuses a 4-tuple the peer may still hold.

Two hosts on the deterministic harness, 198.18.0.0/15 addresses, 50 ms one way (RTT 0.1 s).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.harness import Harness, drop_matching
from mpsim.proto.host import Acceptance, Host, PortAllocator
from mpsim.proto.seqnum import seq_add
from mpsim.proto.tcp import (
    CloseReason,
    Closed,
    Established,
    PeerClosed,
    ResetReceived,
    TcpPolicy,
    TcpState,
)
from mpsim.wire.options import MaximumSegmentSize, Timestamps
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

CLIENT_ADDR = IPv4Address("198.18.0.1")
SERVER_ADDR = IPv4Address("198.18.0.2")
SERVER_PORT = 80
ONE_WAY_S = 0.05
ACK, SYN, RST, FIN = TcpFlags.ACK, TcpFlags.SYN, TcpFlags.RST, TcpFlags.FIN


@dataclass
class App:
    """Records (time, connection, event); closes when the peer does if asked to."""

    close_on_peer_close: bool = False
    log: list = field(default_factory=list)

    def on_tcp_event(self, host, conn, event, now):
        self.log.append((round(now, 9), conn, event))
        if isinstance(event, PeerClosed) and self.close_on_peer_close:
            conn.close(now)

    def times(self, kind: type, conn=None) -> list[float]:
        return [t for t, c, e in self.log if isinstance(e, kind) and (conn is None or c is conn)]

    def events(self, conn) -> list:
        return [e for _, c, e in self.log if c is conn]


@dataclass
class Listener:
    app: App
    accept: bool = True

    def on_syn(self, host, packet, now):
        return Acceptance(self.app) if self.accept else None


@dataclass
class Net:
    harness: Harness
    client: Host
    server: Host
    client_app: App
    server_app: App

    def connect(self, remote_port: int = SERVER_PORT, **kwargs):
        return self.client.open(self.client_app, CLIENT_ADDR, SERVER_ADDR, remote_port, self.harness.now, **kwargs)

    def server_conn(self, client_conn):
        return self.server.connections[(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, client_conn.local_port)]

    def c2s(self) -> list:
        return self.harness.hops[("client", "eth0")].filters

    def sent(self, src: str) -> list:
        return [d.packet.segment for d in self.harness.log if d.src == src]


def make_net(policy: TcpPolicy = TcpPolicy(), seed: int = 1, server_closes: bool = False) -> Net:
    harness = Harness()
    rng = random.Random(seed)
    client = harness.add("client", Host("client", {"eth0": CLIENT_ADDR}, rng=rng, policy=policy))
    server = harness.add("server", Host("server", {"eth0": SERVER_ADDR}, rng=rng, policy=policy))
    harness.link("client", "eth0", "server", "eth0", ONE_WAY_S)
    client_app, server_app = App(), App(close_on_peer_close=server_closes)
    server.listen(SERVER_PORT, Listener(server_app))
    return Net(harness, client, server, client_app, server_app)


# --- demultiplexing and RSTs for segments that match nothing ----------------------------------------


@pytest.mark.parametrize("remote_port", [81, 82])  # 81: a listener that refuses; 82: no listener
def test_refused_connection_gets_rst_and_its_pair_is_quarantined(remote_port):
    net = make_net()
    net.server.listen(81, Listener(net.server_app, accept=False))
    conn = net.connect(remote_port)
    net.harness.run(1.0)
    assert net.client_app.events(conn) == [ResetReceived(refused=True), Closed(CloseReason.RESET_RECEIVED)]
    [rst] = net.sent("server")
    assert (rst.flags, rst.ack) == (RST | ACK, seq_add(conn.iss, 1))
    assert net.server.rsts_for_unknown == 1 and not net.server.connections
    assert net.client.ports.is_quarantined(conn.four_tuple, 60.0)
    assert not net.client.ports.is_quarantined(conn.four_tuple, 60.1)  # 0.1 + time_wait_s


def test_stray_ack_draws_rst_even_on_a_listening_port():
    net = make_net()
    stray = IpPacket(CLIENT_ADDR, SERVER_ADDR, TcpSegment(40000, SERVER_PORT, 7, 1234, ACK, 100, (), b"x"))
    net.server.receive("eth0", stray, 0.0)
    [out] = net.server.outgoing(0.0)
    assert (out.port, out.packet.segment.flags, out.packet.segment.seq) == ("eth0", RST, 1234)
    assert net.server_app.log == [] and not net.server.connections  # the listener saw nothing


def test_packets_for_other_addresses_are_ignored():
    net = make_net()
    elsewhere = IpPacket(CLIENT_ADDR, IPv4Address("198.18.0.99"), TcpSegment(40000, SERVER_PORT, 7, 0, SYN, 100))
    net.server.receive("eth0", elsewhere, 0.0)
    assert net.server.outgoing(0.0) == [] and net.server.rsts_for_unknown == 0


def test_connection_for_is_the_4_tuple_lookup_whatever_the_address_objects():
    # The lookup by ports takes a connection only for the packet's very address objects; equal
    # addresses built anew, another peer on the same ports, a dropped connection: the 4-tuple decides.
    net = make_net()
    other_addr = IPv4Address("198.18.0.3")
    net.server.interfaces["eth1"] = other_addr
    conn = net.connect()
    net.harness.run(0.2)
    server_conn = net.server_conn(conn)

    def packet(src, dst, src_port=conn.local_port, dst_port=SERVER_PORT):
        return IpPacket(src, dst, TcpSegment(src_port, dst_port, 1, 0, ACK, 100))

    def lookup(p):
        seg = p.segment
        return net.server.connections.get((p.dst, seg.dst_port, p.src, seg.src_port))

    rebuilt = [IPv4Address(str(CLIENT_ADDR)), IPv4Address(str(SERVER_ADDR))]
    assert rebuilt[0] is not CLIENT_ADDR
    cases = [packet(CLIENT_ADDR, SERVER_ADDR), packet(*rebuilt), packet(other_addr, SERVER_ADDR),
             packet(CLIENT_ADDR, other_addr), packet(CLIENT_ADDR, SERVER_ADDR, src_port=conn.local_port + 1)]
    for p in cases + cases[::-1]:  # every order of hits and misses
        assert net.server.connection_for(p) is lookup(p)
    assert net.server.connection_for(cases[1]) is server_conn
    # A second connection on the same ports from another address of the client: both found.
    net.client.interfaces["eth1"] = other_addr
    second = net.client.open(net.client_app, other_addr, SERVER_ADDR, SERVER_PORT, net.harness.now,
                             local_port=conn.local_port)
    net.harness.link("client", "eth1", "server", "eth1", ONE_WAY_S)
    net.harness.run(0.5)
    assert second.state is TcpState.ESTABLISHED
    for p in cases + cases[::-1]:
        assert net.server.connection_for(p) is lookup(p)
    assert net.server.connection_for(cases[2]) is not server_conn is net.server.connection_for(cases[0])
    net.server._drop(server_conn)
    assert net.server.connection_for(cases[0]) is None and net.server.connection_for(cases[2]) is not None


def test_open_refuses_foreign_address_and_busy_pair():
    net = make_net()
    with pytest.raises(LocalProtocolError):
        net.client.open(net.client_app, IPv4Address("198.18.0.77"), SERVER_ADDR, SERVER_PORT, 0.0)
    conn = net.connect()
    with pytest.raises(LocalProtocolError):
        net.connect(local_port=conn.local_port)
    with pytest.raises(LocalProtocolError):
        net.server.listen(SERVER_PORT, Listener(net.server_app))


def test_abort_of_an_unknown_connection_does_nothing():
    net = make_net()
    conn = net.connect()
    net.client.abort(conn, 0.0)  # sends nothing: still in SYN-SENT
    net.client.abort(conn, 0.0)  # already gone
    assert net.client_app.events(conn) == [Closed(CloseReason.ABORTED)]


# --- the lost RST of the seed discussion ------------------------------------------------------------


def test_lost_rst_then_same_four_tuple_costs_one_syn_timeout():
    """The client aborts, its RST is lost, the server stays ESTABLISHED. A new SYN on the same
    4-tuple draws a challenge ACK (RFC 5961 4.2), the client answers it with a RST that resets the
    server, and the SYN retransmitted 1 s later succeeds. A fresh port avoids that second."""
    net = make_net()
    net.c2s().append(drop_matching(lambda p: bool(p.segment.flags & RST), count=1))
    old = net.connect()
    net.harness.run(1.0)
    server_old = net.server_conn(old)
    net.client.abort(old, 1.0)
    net.harness.run(2.0)
    assert server_old.state is TcpState.ESTABLISHED  # the RST never arrived
    assert net.client.ports.is_quarantined(old.four_tuple, 2.0)

    again = net.connect(local_port=old.local_port)  # forced: the allocator would never do this
    net.harness.run(10.0)
    challenge = [s for s in net.sent("server") if s.flags == ACK][-1]
    assert (challenge.seq, challenge.ack) == (server_old.snd_nxt, server_old.rcv_nxt)
    client_rst = [s for s in net.sent("client") if s.flags & RST][-1]
    assert client_rst.seq == server_old.rcv_nxt  # exactly RCV.NXT: the server accepts it
    assert net.server_app.events(server_old)[-2:] == [ResetReceived(refused=False), Closed(CloseReason.RESET_RECEIVED)]
    assert net.server_app.times(Closed, server_old) == [2.15]
    assert net.client_app.times(Established, again) == [3.1]
    collision_cost_s = net.client_app.times(Established, again)[0] - 2.0

    fresh_net = make_net()
    fresh_net.harness.run(2.0)
    fresh = fresh_net.connect()
    fresh_net.harness.run(10.0)
    fresh_cost_s = fresh_net.client_app.times(Established, fresh)[0] - 2.0
    assert collision_cost_s - fresh_cost_s == pytest.approx(1.0)  # the initial SYN RTO
    assert net.client.ports.allocated == 1 and fresh_net.client.ports.allocated == 1


def test_allocator_skips_the_quarantined_pair_after_a_lost_rst():
    net = make_net()
    net.client.ports = PortAllocator(random.Random(0), low=50000, high=50001)
    net.c2s().append(drop_matching(lambda p: bool(p.segment.flags & RST), count=1))
    old = net.connect()
    net.harness.run(1.0)
    net.client.abort(old, 1.0)
    net.harness.run(2.0)
    retry = net.connect()
    net.harness.run(3.0)
    assert retry.local_port != old.local_port
    assert net.client_app.times(Established, retry) == [2.1]  # no collision, no extra second
    with pytest.raises(LocalProtocolError):
        net.connect()  # the only other port is the quarantined pair
    net.harness.run(61.0)  # aborted at 1.0, quarantined for time_wait_s
    assert net.connect().local_port == old.local_port


# --- the port allocator ------------------------------------------------------------------------------


def test_ports_in_use_in_time_wait_or_quarantined_are_not_reused_until_free():
    net = make_net(server_closes=True)
    net.client.ports = PortAllocator(random.Random(0), low=50000, high=50002)
    a, b = net.connect(), net.connect()
    assert a.local_port != b.local_port  # a is in use
    net.harness.run(1.0)
    a.close(1.0)
    net.client.collect(a, 1.0)
    net.harness.run(2.0)
    assert a.state is TcpState.TIME_WAIT  # until 61.1
    net.client.abort(b, 2.0)  # quarantined until 62.0
    net.harness.run(3.0)
    c = net.connect()
    assert c.local_port not in (a.local_port, b.local_port)
    with pytest.raises(LocalProtocolError):
        net.connect()  # all three pairs are taken
    net.harness.run(61.05)
    with pytest.raises(LocalProtocolError):
        net.connect()  # still in TIME-WAIT
    net.harness.run(61.2)
    assert net.client_app.events(a)[-1] == Closed(CloseReason.TIME_WAIT_EXPIRED)
    assert net.connect().local_port == a.local_port
    with pytest.raises(LocalProtocolError):
        net.connect()  # b's pair is quarantined a little longer
    net.harness.run(62.0)
    assert net.connect().local_port == b.local_port
    assert net.client.ports.allocated == 5


@pytest.mark.parametrize("ending", ["reset", "timeout"])
def test_reset_and_timed_out_pairs_are_quarantined_for_time_wait(ending):
    net = make_net(TcpPolicy(syn_retries=0, time_wait_s=30.0))
    if ending == "timeout":
        net.c2s().append(drop_matching(lambda p: True))
    conn = net.connect(82 if ending == "reset" else SERVER_PORT)  # nobody listens on 82
    net.harness.run(5.0)
    closed_at_s = net.client_app.times(Closed, conn)[0]
    assert net.client.ports.is_quarantined(conn.four_tuple, closed_at_s + 29.9)
    assert not net.client.ports.is_quarantined(conn.four_tuple, closed_at_s + 30.0)


def test_clean_close_without_time_wait_frees_the_pair_at_once():
    net = make_net()
    conn = net.connect()
    net.harness.run(1.0)
    server_conn = net.server_conn(conn)
    net.client_app.close_on_peer_close = True
    server_conn.close(1.0)
    net.server.collect(server_conn, 1.0)
    net.harness.run(2.0)
    assert net.client_app.events(conn)[-1] == Closed(CloseReason.LAST_ACK)
    assert not net.client.ports.is_quarantined(conn.four_tuple, 2.0)


def test_allocator_walks_the_range_from_a_seeded_offset():
    ports = PortAllocator(random.Random(5), low=40000, high=40009)
    picked = [ports.allocate(CLIENT_ADDR, SERVER_ADDR, 80, 0.0, {}) for _ in range(12)]
    assert picked[1:10] == [40000 + (picked[0] - 40000 + i) % 10 for i in range(1, 10)]  # consecutive, wrapping
    assert picked[10] == picked[0]  # nothing held: the walk comes round again
    again = PortAllocator(random.Random(5), low=40000, high=40009)
    assert [again.allocate(CLIENT_ADDR, SERVER_ADDR, 80, 0.0, {}) for _ in range(12)] == picked  # seeded
    assert ports.allocated == 12


def test_the_same_local_port_serves_another_destination():
    ports = PortAllocator(random.Random(0), low=40000, high=40000)
    ports.quarantine((CLIENT_ADDR, 40000, SERVER_ADDR, 80), 100.0)
    assert ports.allocate(CLIENT_ADDR, SERVER_ADDR, 443, 1.0, {}) == 40000
    with pytest.raises(LocalProtocolError):
        ports.allocate(CLIENT_ADDR, SERVER_ADDR, 80, 1.0, {})
    assert ports.allocate(CLIENT_ADDR, SERVER_ADDR, 80, 100.0, {}) == 40000  # the quarantine has ended


def test_quarantine_is_extended_never_shortened():
    ports = PortAllocator(random.Random(0))
    pair = (CLIENT_ADDR, 40000, SERVER_ADDR, 80)
    ports.quarantine(pair, 50.0)
    ports.quarantine(pair, 20.0)
    assert ports.is_quarantined(pair, 49.0)
    ports.quarantine(pair, 70.0)
    assert ports.is_quarantined(pair, 69.0) and not ports.is_quarantined(pair, 70.0)


def test_expired_quarantine_entries_are_swept():
    ports = PortAllocator(random.Random(0), low=40000, high=40000)
    for i in range(2000):
        ports.quarantine((CLIENT_ADDR, 40000, SERVER_ADDR, 1000 + i), 10.0)
    ports.allocate(CLIENT_ADDR, SERVER_ADDR, 80, 11.0, {})
    assert len(ports._quarantine) == 0


def test_allocator_refuses_a_bad_range():
    with pytest.raises(ValueError):
        PortAllocator(random.Random(0), low=5000, high=4000)


# --- TIME-WAIT reopened by a new SYN (RFC 1122 4.2.2.13, RFC 6191) -----------------------------------


def _server_in_time_wait(policy: TcpPolicy) -> tuple[Net, object, object]:
    """The server closes first, so the server holds TIME-WAIT; the client's side is gone."""
    net = make_net(policy)
    net.client_app.close_on_peer_close = True
    client = net.connect()
    net.harness.run(1.0)
    server = net.server_conn(client)
    server.close(1.0)
    net.server.collect(server, 1.0)
    net.harness.run(2.0)
    assert server.state is TcpState.TIME_WAIT and not net.client.connections
    return net, client, server


def _syn(client, seq: int, options: tuple = (MaximumSegmentSize(1460),)) -> IpPacket:
    return IpPacket(CLIENT_ADDR, SERVER_ADDR, TcpSegment(client.local_port, SERVER_PORT, seq, 0, SYN, 65535, options))


def test_time_wait_reopened_by_a_higher_sequence_number():
    net, client, server = _server_in_time_wait(TcpPolicy(timestamps=False))
    seq = seq_add(server.rcv_nxt, 100_000)
    net.server.receive("eth0", _syn(client, seq), 2.0)
    [synack] = [t.packet.segment for t in net.server.outgoing(2.0)]
    assert (synack.flags, synack.ack) == (SYN | ACK, seq_add(seq, 1))
    fresh = net.server.connections[server.four_tuple]
    assert fresh is not server and fresh.state is TcpState.SYN_RECEIVED
    assert net.server_app.events(server)[-1] == Closed(CloseReason.REOPENED)  # the owner hears of it


def test_time_wait_answers_a_lower_sequence_number_with_an_ack():
    net, client, server = _server_in_time_wait(TcpPolicy(timestamps=False))
    net.server.receive("eth0", _syn(client, seq_add(server.rcv_nxt, -100_000)), 2.0)
    [ack] = [t.packet.segment for t in net.server.outgoing(2.0)]
    assert (ack.flags, ack.seq, ack.ack) == (ACK, server.snd_nxt, server.rcv_nxt)
    assert net.server.connections[server.four_tuple] is server and server.state is TcpState.TIME_WAIT


@pytest.mark.parametrize(("ts_value_delta", "reopens"), [(+1, True), (0, False), (-1, False)])
def test_time_wait_reopened_by_a_newer_timestamp_despite_a_lower_sequence_number(ts_value_delta, reopens):
    """Newer than the last TSval the server saw (the client's last ACK), not just the SYN's."""
    net, client, server = _server_in_time_wait(TcpPolicy())
    last_ts_value = [o for o in net.sent("client")[-1].options if isinstance(o, Timestamps)][0].ts_value
    assert last_ts_value > 1000  # sent after t = 1 s, so well above the SYN's TSval
    ts_value = last_ts_value + ts_value_delta
    syn = _syn(client, seq_add(server.rcv_nxt, -100_000), (MaximumSegmentSize(1460), Timestamps(ts_value, 0)))
    net.server.receive("eth0", syn, 2.0)
    [answer] = [t.packet.segment for t in net.server.outgoing(2.0)]
    assert answer.flags == (SYN | ACK if reopens else ACK)
    assert (net.server.connections[server.four_tuple] is server) is not reopens


def test_time_wait_without_a_listener_is_not_reopened():
    """The active closer's TIME-WAIT (a client's ephemeral port) answers any SYN with an ACK."""
    net = make_net(server_closes=True)
    conn = net.connect()
    net.harness.run(1.0)
    conn.close(1.0)
    net.client.collect(conn, 1.0)
    net.harness.run(2.0)
    assert conn.state is TcpState.TIME_WAIT
    syn = IpPacket(SERVER_ADDR, CLIENT_ADDR, TcpSegment(SERVER_PORT, conn.local_port, seq_add(conn.rcv_nxt, 10), 0,
                                                        SYN, 65535))
    net.client.receive("eth0", syn, 2.0)
    [ack] = [t.packet.segment for t in net.client.outgoing(2.0)]
    assert ack.flags == ACK and net.client.connections[conn.four_tuple] is conn


# --- hooks for hosts that answer for other addresses (a transparent proxy) ----------------------------


class TransparentHost(Host):
    """Answers SYNs to any address on port 80 arriving on "lan"; records what it does not take."""

    def __init__(self, *args, app, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listener = Listener(app)
        self.passed_on: list = []

    def foreign_listener(self, port, packet):
        return self.listener if port == "lan" and packet.segment.dst_port == SERVER_PORT else None

    def not_ours(self, port, packet, now):
        self.passed_on.append(packet)

    def may_open_from(self, local_addr):
        return True

    def route(self, packet):
        return "lan"


def test_a_host_adopts_connections_for_foreign_addresses_through_its_hooks():
    app = App()
    host = TransparentHost("mb", {"lan": IPv4Address("198.18.0.9")}, rng=random.Random(1), app=app)
    far = IPv4Address("198.19.0.80")
    syn = IpPacket(CLIENT_ADDR, far, TcpSegment(40000, SERVER_PORT, 7, 0, SYN, 100))
    host.receive("lan", syn, 0.0)
    [synack] = host.outgoing(0.0)
    assert (synack.packet.src, synack.packet.segment.flags) == (far, SYN | ACK)
    conn = host.connections[(far, SERVER_PORT, CLIENT_ADDR, 40000)]
    assert conn.state is TcpState.SYN_RECEIVED and host.passed_on == []
    # Not the listener's port, or not from "lan": handed to not_ours, never answered with an RST.
    other = IpPacket(CLIENT_ADDR, far, TcpSegment(40001, 443, 9, 0, SYN, 100))
    host.receive("lan", other, 0.0)
    host.receive("wan", IpPacket(CLIENT_ADDR, far, TcpSegment(40002, SERVER_PORT, 9, 0, SYN, 100)), 0.0)
    assert len(host.passed_on) == 2 and host.outgoing(0.0) == [] and host.rsts_for_unknown == 0
    # may_open_from lets it open from an address that is not its own (address preservation).
    opened = host.open(app, CLIENT_ADDR, far, 8080, 0.0, local_port=40003)
    assert opened.four_tuple == (CLIENT_ADDR, 40003, far, 8080)
