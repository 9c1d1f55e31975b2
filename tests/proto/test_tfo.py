"""TCP Fast Open (RFC 7413) client and server, run against each other in the harness.

The flows follow RFC 7413 Fig. 1 and google/packetdrill gtests/net/tcp/fastopen (docs/protocols.md
7.2): cookie-req-timeout, syn-data-timeout, syn-data-only-syn-acked, cookie-less-sendto,
fallback-exp-opt, and the Linux SYN-loss back-off (docs/protocols.md 4.3).
"""

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.proto.harness import Harness, Hop
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.tcp import Closed, DataReceived, Established, SynDataMode, TcpPolicy, TcpState, TimedOut
from mpsim.proto.tfo import (
    COOKIE_BYTES,
    TfoClient,
    TfoPolicy,
    TfoServer,
    TfoServerMode,
    TfoSynKind,
    fast_open_option,
    find_fast_open,
)
from mpsim.wire.options import Experimental, FastOpen, MaximumSegmentSize, TcpOptionKind, encode_options
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

CLIENT_IP = IPv4Address("198.18.0.1")
CLIENT_IP_2 = IPv4Address("198.18.0.2")
SERVER_IP = IPv4Address("198.19.0.1")
SERVER_IP_2 = IPv4Address("198.19.0.2")
CLIENT_IP6 = IPv6Address("2001:db8::1")
SERVER_IP6 = IPv6Address("2001:db8:1::1")
ONE_WAY_S = 0.125  # exact in binary, so times add up exactly
RTT_S = 2 * ONE_WAY_S
REQUEST = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


# --- a client, a TFO server and a path between them ----------------------------------------------


class Recorder:
    """A client connection owner that keeps every event with its time."""

    def __init__(self):
        self.events = []

    def on_tcp_event(self, host, conn, event, now):
        self.events.append((now, event))

    def times(self, kind):
        return [t for t, e in self.events if isinstance(e, kind)]


class TfoApp:
    """A listener whose Acceptance is built from TfoServer.decide, and the owner of what it accepts."""

    def __init__(self, tfo_server):
        self.tfo_server = tfo_server
        self.data = []  # (time, local port, bytes)

    def on_syn(self, host, packet, now):
        verdict = self.tfo_server.decide(packet)
        return Acceptance(self, syn_data_mode=verdict.syn_data_mode, extensions=(self.tfo_server.extension(verdict),))

    def on_tcp_event(self, host, conn, event, now):
        if isinstance(event, DataReceived):
            self.data.append((now, conn.remote_port, event.data))

    def received(self, client_port):
        return [(t, d) for t, p, d in self.data if p == client_port]


class Net:
    """Client and server hosts; every client interface reaches the server's first one and back."""

    def __init__(self, policy=TfoPolicy(), mode=TfoServerMode.COOKIE_REQUIRED, c2s=(), s2c=(),
                 client_ips=(CLIENT_IP,), server_ips=(SERVER_IP,), max_pending=4096, tcp_policy=None, seed=7):
        rng = random.Random(seed)
        self.client = Host("client", {f"eth{i}": a for i, a in enumerate(client_ips)}, rng=rng, policy=tcp_policy)
        self.server = Host("server", {f"eth{i}": a for i, a in enumerate(server_ips)}, rng=rng)
        self.tfo = TfoClient(policy, mib=self.client.mib)
        self.tfo_server = TfoServer(rng, mode=mode, max_pending=max_pending, mib=self.server.mib)
        self.app = TfoApp(self.tfo_server)
        for port in (80, 8080):
            self.server.listen(port, self.app)
        self.h = Harness()
        self.h.add("client", self.client)
        self.h.add("server", self.server)
        for port in self.client.interfaces:
            self.h.hops[("client", port)] = Hop("server", "eth0", ONE_WAY_S, list(c2s))
        for port in self.server.interfaces:
            self.h.hops[("server", port)] = Hop("client", "eth0", ONE_WAY_S, list(s2c))

    def connect(self, app_data=REQUEST, port=80, client_ip=CLIENT_IP, server_ip=SERVER_IP, at_s=None):
        if at_s is not None:
            self.h.run(at_s)
        owner = Recorder()
        conn, ext = self.tfo.connect(self.client, owner, client_ip, server_ip, port, self.h.now, app_data)
        return conn, ext, owner

    def run(self, duration_s=5.0):
        self.h.run(self.h.now + duration_s)

    def segments(self, conn, src="client"):
        """(time, segment, dropped) of one connection, from ``src``, in the order logged."""
        return [(d.time_s, d.packet.segment, d.dropped) for d in self.h.log
                if d.src == src and conn.local_port in (d.packet.segment.src_port, d.packet.segment.dst_port)]

    def syns(self, conn):
        return [(t, s, dropped) for t, s, dropped in self.segments(conn) if s.flags & TcpFlags.SYN]

    def synack(self, conn):
        """The first SYN-ACK the client got."""
        return next(s for _, s, dropped in self.segments(conn, "server") if s.flags & TcpFlags.SYN and not dropped)


def is_syn(packet):
    flags = packet.segment.flags
    return bool(flags & TcpFlags.SYN) and not flags & TcpFlags.ACK


def drop_syn_data(packet, now):
    """The 6% of paths that drop SYNs carrying data (docs/protocols.md 4.2)."""
    return [] if is_syn(packet) and packet.segment.payload else [packet]


def drop_syns_before(until_s):
    return lambda packet, now: [] if is_syn(packet) and now < until_s else [packet]


def strip_kind_34(packet, now):
    """A middlebox that removes option kind 34 from SYNs (but lets kind 254 through)."""
    if not is_syn(packet):
        return [packet]
    options = tuple(o for o in packet.segment.options if not isinstance(o, FastOpen))
    return [replace(packet, segment=replace(packet.segment, options=options))]


def strip_fast_open(packet, now):
    """A middlebox that removes both Fast Open encodings from SYNs."""
    if not is_syn(packet):
        return [packet]
    options = tuple(o for o in packet.segment.options if not isinstance(o, FastOpen | Experimental))
    return [replace(packet, segment=replace(packet.segment, options=options))]


def add_cookie_to_synacks(cookie):
    """A server that hands out a cookie nobody asked for (packetdrill cookie-less-sendto.pkt)."""
    def add(packet, now):
        seg = packet.segment
        if seg.flags & TcpFlags.SYN and seg.flags & TcpFlags.ACK:
            return [replace(packet, segment=replace(seg, options=seg.options + (FastOpen(cookie),)))]
        return [packet]
    return add


def seed_entry(tfo, client_ip, server_ip, **fields):
    """Put a cache entry in a given state, as earlier connections would have left it."""
    entry = tfo.cache.entry(client_ip, server_ip)
    for name, value in fields.items():
        setattr(entry, name, value)
    return entry


def with_cookie(net, client_ip=CLIENT_IP, server_ip=SERVER_IP):
    """Run one connection that fetches a cookie; returns the cookie the client cached."""
    net.connect(client_ip=client_ip, server_ip=server_ip)
    net.run(2.0)
    return net.tfo.cache.get(client_ip, server_ip).cookie


# --- RFC 7413 Fig. 1: cookie request, then data in the SYN ----------------------------------------


def test_first_connection_requests_a_cookie_second_sends_data_in_the_syn():
    net = Net()
    conn1, ext1, owner1 = net.connect()
    assert ext1.plan.kind is TfoSynKind.COOKIE_REQUEST
    net.run(2.0)
    (_, syn, _), = net.syns(conn1)
    assert syn.payload == b""
    assert b"\x22\x02\x01\x01" in encode_options(syn.options)  # the empty option 22 02, NOP NOP as Linux
    cookie = net.tfo_server.cookie_for(CLIENT_IP)
    assert find_fast_open(net.synack(conn1)) == (cookie, False)
    assert net.tfo.cache.get(CLIENT_IP, SERVER_IP).cookie == cookie
    # Without a cookie the request goes after the handshake: at the server 1.5 RTT after the start.
    assert net.app.received(conn1.local_port) == [(3 * ONE_WAY_S, REQUEST)]

    conn2, ext2, owner2 = net.connect(at_s=10.0)
    assert ext2.plan.kind is TfoSynKind.COOKIE
    net.run(2.0)
    (_, syn, _), = net.syns(conn2)
    assert syn.payload == REQUEST and find_fast_open(syn) == (cookie, False)
    synack = net.synack(conn2)
    assert synack.ack == (conn2.iss + 1 + len(REQUEST)) % 2**32
    assert find_fast_open(synack) is None  # a valid cookie is not sent back
    # Delivered as the SYN arrives, half an RTT after the start, before the handshake completes.
    assert net.app.received(conn2.local_port) == [(10.0 + ONE_WAY_S, REQUEST)]
    assert [e for e in owner2.events if isinstance(e[1], Established)] == [
        (10.0 + RTT_S, Established(syn_data_acked_bytes=len(REQUEST)))]
    assert not [s for _, s, _ in net.segments(conn2) if s.payload and not s.flags & TcpFlags.SYN]
    assert ext2.outcome.syn_data_acked_bytes == len(REQUEST) and not ext2.outcome.syn_drop_suspected
    assert net.client.mib["TCPFastOpenActive"] == 1 and net.client.mib["TCPFastOpenActiveFail"] == 0
    assert net.server.mib["TCPFastOpenCookieReqd"] == 1 and net.server.mib["TCPFastOpenPassive"] == 1


def test_invalid_cookie_data_is_resent_after_the_handshake_and_the_new_cookie_replaces_the_old():
    # packetdrill client/syn-data-only-syn-acked.pkt, with the server side of RFC 7413 4.2.2.
    net = Net()
    old = with_cookie(net)
    rng = random.Random(99)
    net.tfo_server.rotate_key(rng)
    net.tfo_server.rotate_key(rng)  # two rotations: the old key is gone
    conn, ext, owner = net.connect(at_s=10.0)
    net.run(2.0)
    synack = net.synack(conn)
    assert synack.ack == (conn.iss + 1) % 2**32  # the SYN only
    new = net.tfo_server.cookie_for(CLIENT_IP)
    assert new != old and find_fast_open(synack) == (new, False)
    assert net.tfo.cache.get(CLIENT_IP, SERVER_IP).cookie == new
    first_after_syn = next(s for _, s, _ in net.segments(conn) if not s.flags & TcpFlags.SYN)
    assert (first_after_syn.seq, first_after_syn.payload) == ((conn.iss + 1) % 2**32, REQUEST)
    assert net.app.received(conn.local_port) == [(10.0 + 3 * ONE_WAY_S, REQUEST)]
    assert ext.outcome.syn_data_acked_bytes == 0 and not ext.outcome.syn_drop_suspected
    assert net.client.mib["TCPFastOpenActiveFail"] == 1
    assert net.server.mib["TCPFastOpenPassiveFail"] == 1
    assert net.tfo.cache.get(CLIENT_IP, SERVER_IP).syn_loss == 0  # answered at once: no path problem
    conn2, ext2, _ = net.connect(at_s=20.0)
    net.run(2.0)
    assert net.app.received(conn2.local_port) == [(20.0 + ONE_WAY_S, REQUEST)]


def test_cookie_of_the_previous_key_is_accepted_and_replaced():
    net = Net()
    old = with_cookie(net)
    net.tfo_server.rotate_key(random.Random(5))
    conn, ext, _ = net.connect(at_s=10.0)
    net.run(2.0)
    new = net.tfo_server.cookie_for(CLIENT_IP)
    assert net.app.received(conn.local_port) == [(10.0 + ONE_WAY_S, REQUEST)]
    assert find_fast_open(net.synack(conn)) == (new, False) and new != old
    assert net.tfo.cache.get(CLIENT_IP, SERVER_IP).cookie == new
    assert net.server.mib["TCPFastOpenPassiveAltKey"] == 1


# --- losses: retransmission without option and data, syn_loss, back-off ---------------------------


def test_dropped_syn_data_retransmits_plain_syn_records_loss_and_backs_off():
    # packetdrill client/syn-data-timeout.pkt, then Linux's per-destination back-off.
    net = Net(c2s=[drop_syn_data])
    with_cookie(net)  # the cookie request carries no data, so it passes
    entry = net.tfo.cache.get(CLIENT_IP, SERVER_IP)

    conn, ext, owner = net.connect(at_s=10.0)
    net.run(5.0)
    (t0, syn0, dropped0), (t1, syn1, dropped1) = net.syns(conn)
    assert (t0, dropped0, syn0.payload == REQUEST, find_fast_open(syn0) is not None) == (10.0, True, True, True)
    assert (t1, dropped1, syn1.payload, find_fast_open(syn1)) == (11.0 + ONE_WAY_S, False, b"", None)
    synack_at_s = 11.0 + RTT_S
    assert net.app.received(conn.local_port) == [(synack_at_s + ONE_WAY_S, REQUEST)]  # sent with the ACK
    assert ext.outcome.syn_drop_suspected
    assert (entry.syn_loss, entry.last_syn_loss_s) == (1, synack_at_s)
    assert net.client.mib["TCPFastOpenActiveFail"] == 1

    # One loss does not back off (syn_loss > 1 is needed); the second does.
    conn2, ext2, _ = net.connect(at_s=20.0)
    assert ext2.plan.kind is TfoSynKind.COOKIE
    net.run(5.0)
    second_loss_s = 21.0 + RTT_S
    assert (entry.syn_loss, entry.last_syn_loss_s) == (2, second_loss_s)

    backoff_end_s = second_loss_s + (60.0 * 2**2)
    conn3, ext3, owner3 = net.connect(at_s=30.0)
    assert (ext3.plan.kind, ext3.plan.until_s, ext3.plan.option, ext3.plan.syn_payload) == (
        TfoSynKind.BACKED_OFF, backoff_end_s, None, b"")
    net.run(5.0)
    ((_, syn, _),) = net.syns(conn3)  # one plain SYN: no retransmission, one RTT to set up
    assert syn.payload == b"" and find_fast_open(syn) is None
    assert owner3.times(Established) == [30.0 + RTT_S]
    assert net.app.received(conn3.local_port) == [(30.0 + 3 * ONE_WAY_S, REQUEST)]
    assert entry.syn_loss == 2  # a plain SYN leaves the TFO cache alone

    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, backoff_end_s - 0.001, REQUEST).kind is TfoSynKind.BACKED_OFF
    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, backoff_end_s, REQUEST).kind is TfoSynKind.COOKIE
    net.connect(at_s=backoff_end_s)
    net.run(5.0)
    assert entry.syn_loss == 3  # dropped again: now 60 s << 3
    third_loss_s = backoff_end_s + 1.0 + RTT_S
    assert net.tfo.backed_off_until_s(CLIENT_IP, SERVER_IP, third_loss_s) == third_loss_s + 480.0


def test_successful_tfo_exchange_resets_syn_loss():
    net = Net()
    with_cookie(net)
    entry = seed_entry(net.tfo, CLIENT_IP, SERVER_IP, syn_loss=1, last_syn_loss_s=3.0)
    conn, _, _ = net.connect(at_s=10.0)
    net.run(2.0)
    assert entry.syn_loss == 0


def test_retransmitted_cookie_request_carries_no_option():
    # packetdrill client/cookie-req-timeout.pkt
    net = Net(c2s=[drop_syns_before(0.5)])
    conn, ext, _ = net.connect()
    net.run(3.0)
    (_, syn0, dropped0), (_, syn1, dropped1) = net.syns(conn)
    assert dropped0 and find_fast_open(syn0) == (b"", False)
    assert not dropped1 and find_fast_open(syn1) is None
    entry = net.tfo.cache.get(CLIENT_IP, SERVER_IP)
    assert entry.cookie == b"" and entry.syn_loss == 0
    assert entry.try_experimental == 0  # an answer to a plain retransmission says nothing about kind 34


def test_syn_timeouts_are_losses_even_for_a_cookieless_client():
    # tcp_write_timeout: the second and later SYN timeouts of a TFO SYN each record a loss, and
    # the back-off precedes the cookie-less check, so a Convert client is backed off too.
    tcp = TcpPolicy(syn_retries=3)  # SYNs at 0, 1, 3, 7; gives up at 15
    net = Net(TfoPolicy(cookieless=True), TfoServerMode.COOKIELESS, c2s=[drop_syns_before(20.0)], tcp_policy=tcp)
    conn, ext, owner = net.connect()
    assert ext.plan.kind is TfoSynKind.COOKIELESS
    net.run(20.0)
    assert [type(e) for _, e in owner.events] == [TimedOut, Closed]
    entry = net.tfo.cache.get(CLIENT_IP, SERVER_IP)
    assert (entry.syn_loss, entry.last_syn_loss_s) == (2, 7.0)
    conn2, ext2, _ = net.connect(at_s=30.0)
    assert (ext2.plan.kind, ext2.plan.until_s, ext2.plan.syn_payload) == (TfoSynKind.BACKED_OFF, 247.0, b"")
    net.run(2.0)
    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, 247.0, REQUEST).kind is TfoSynKind.COOKIELESS
    conn3, ext3, _ = net.connect(at_s=247.0)
    net.run(2.0)
    assert net.app.received(conn3.local_port) == [(247.0 + ONE_WAY_S, REQUEST)]
    assert entry.syn_loss == 0  # any SYN-ACK to a TFO SYN that is not a suspected drop resets it


def test_backoff_can_be_switched_off():
    net = Net(TfoPolicy(syn_loss_backoff_base_s=None))
    seed_entry(net.tfo, CLIENT_IP, SERVER_IP, cookie=b"\x01" * 8, syn_loss=9, last_syn_loss_s=0.0)
    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, 1.0, REQUEST).kind is TfoSynKind.COOKIE


# --- cookie-less mode (tcp_fastopen = 5, the Convert client) --------------------------------------


def test_cookieless_client_sends_data_without_option_and_ignores_an_unsolicited_cookie():
    # packetdrill client/cookie-less-sendto.pkt against a 0x200-like server (basic-cookie-not-reqd.pkt)
    net = Net(TfoPolicy(cookieless=True), TfoServerMode.COOKIELESS, s2c=[add_cookie_to_synacks(b"\xaa" * 8)])
    conn, ext, owner = net.connect()
    net.run(2.0)
    ((_, syn, _),) = net.syns(conn)
    assert syn.payload == REQUEST and find_fast_open(syn) is None
    assert not [o for o in syn.options if isinstance(o, Experimental)]
    assert find_fast_open(net.synack(conn)) == (b"\xaa" * 8, False)  # it was there ...
    assert net.tfo.cache.get(CLIENT_IP, SERVER_IP).cookie == b""  # ... and was not cached
    assert net.app.received(conn.local_port) == [(ONE_WAY_S, REQUEST)]
    assert net.client.mib["TCPFastOpenActive"] == 1
    assert net.server.mib["TCPFastOpenPassive"] == 1 and net.server.mib["TCPFastOpenCookieReqd"] == 0


@pytest.mark.parametrize("mode", [TfoServerMode.COOKIE_REQUIRED, TfoServerMode.DISABLED])
def test_cookieless_data_to_a_server_that_wants_cookies_is_resent_after_the_handshake(mode):
    net = Net(TfoPolicy(cookieless=True), mode)
    conn, ext, _ = net.connect()
    net.run(2.0)
    assert net.synack(conn).ack == (conn.iss + 1) % 2**32
    assert find_fast_open(net.synack(conn)) is None
    assert net.app.received(conn.local_port) == [(3 * ONE_WAY_S, REQUEST)]
    assert net.client.mib["TCPFastOpenActiveFail"] == 1
    assert sum(net.server.mib.values()) == 0  # no TFO counters: no option, and the data was not taken


def test_client_disabled_sends_plain_syns():
    net = Net(TfoPolicy(client_enabled=False))
    conn, ext, _ = net.connect()
    net.run(2.0)
    ((_, syn, _),) = net.syns(conn)
    assert ext.plan.kind is TfoSynKind.PLAIN and syn.payload == b"" and find_fast_open(syn) is None
    assert len(net.tfo.cache) == 0 and sum(net.client.mib.values()) == 0


# --- what the cache is keyed by, and its lifetime -----------------------------------------------


def test_cookie_is_per_server_address_not_per_port():
    net = Net(server_ips=(SERVER_IP, SERVER_IP_2))
    with_cookie(net)  # port 80
    conn, ext, _ = net.connect(port=8080, at_s=10.0)
    assert ext.plan.kind is TfoSynKind.COOKIE
    net.run(2.0)
    assert net.app.received(conn.local_port) == [(10.0 + ONE_WAY_S, REQUEST)]
    _, other, _ = net.connect(server_ip=SERVER_IP_2, at_s=20.0)
    assert other.plan.kind is TfoSynKind.COOKIE_REQUEST


def test_cookie_is_per_client_address_because_the_server_binds_it_there():
    net = Net(client_ips=(CLIENT_IP, CLIENT_IP_2))
    cookie = with_cookie(net)
    _, ext, _ = net.connect(client_ip=CLIENT_IP_2, at_s=10.0)
    assert ext.plan.kind is TfoSynKind.COOKIE_REQUEST
    assert not net.tfo_server.is_valid(CLIENT_IP_2, cookie)  # using it from there would fail


def test_reboot_clears_the_cache():
    net = Net()
    with_cookie(net)
    net.tfo.cache.clear()
    assert len(net.tfo.cache) == 0
    _, ext, _ = net.connect(at_s=10.0)
    assert ext.plan.kind is TfoSynKind.COOKIE_REQUEST


# --- how much data fits into the SYN ----------------------------------------------------------------


@pytest.mark.parametrize(("client_ip", "server_ip", "default_bytes", "cap_bytes"), [
    (CLIENT_IP, SERVER_IP, 536, 1460), (CLIENT_IP6, SERVER_IP6, 1220, 1440)])
def test_syn_data_is_limited_to_the_default_then_the_cached_mss(client_ip, server_ip, default_bytes, cap_bytes):
    tfo = TfoClient(TfoPolicy(cookieless=True))
    big = bytes(range(256)) * 40
    assert tfo.plan_syn(client_ip, server_ip, 0.0, big).syn_payload == big[:default_bytes]
    tfo.cache.entry(client_ip, server_ip).mss_bytes = 1000
    assert len(tfo.plan_syn(client_ip, server_ip, 0.0, big).syn_payload) == 1000
    tfo.cache.entry(client_ip, server_ip).mss_bytes = 9000
    assert len(tfo.plan_syn(client_ip, server_ip, 0.0, big).syn_payload) == cap_bytes
    assert tfo.plan_syn(client_ip, server_ip, 0.0, b"abc").syn_payload == b"abc"


def test_ipv6_syn_carries_1220_bytes_then_the_learnt_mss():
    app_data = bytes(range(256)) * 12
    net = Net(TfoPolicy(cookieless=True), TfoServerMode.COOKIELESS, client_ips=(CLIENT_IP6,), server_ips=(SERVER_IP6,))
    conn, ext, _ = net.connect(app_data, client_ip=CLIENT_IP6, server_ip=SERVER_IP6)
    net.run(2.0)
    ((_, syn, _),) = net.syns(conn)
    assert len(syn.payload) == 1220
    assert b"".join(d for _, d in net.app.received(conn.local_port)) == app_data
    # The server's IPv6 MSS: 20 below its IPv4 one (1440 on a 1500-byte MTU).
    assert net.tfo.cache.get(CLIENT_IP6, SERVER_IP6).mss_bytes == net.server.policy.mss_bytes - 20 == 1440
    conn2, _, _ = net.connect(app_data, client_ip=CLIENT_IP6, server_ip=SERVER_IP6, at_s=10.0)
    net.run(2.0)
    ((_, syn2, _),) = net.syns(conn2)
    assert len(syn2.payload) == min(net.server.policy.mss_bytes, 1440)


# --- the kind-254 encoding (packetdrill client/fallback-exp-opt.pkt) ----------------------------------


def test_unanswered_kind_34_request_is_retried_in_the_experimental_encoding():
    net = Net(c2s=[strip_kind_34])
    conn1, ext1, _ = net.connect()
    net.run(2.0)
    assert isinstance(ext1.plan.option, FastOpen) and find_fast_open(net.synack(conn1)) is None
    conn2, ext2, _ = net.connect(at_s=10.0)
    assert ext2.plan.option == Experimental(TcpOptionKind.EXPERIMENTAL_2, b"\xf9\x89")
    net.run(2.0)
    cookie = net.tfo_server.cookie_for(CLIENT_IP)
    assert find_fast_open(net.synack(conn2)) == (cookie, True)  # answered in the form it was asked in
    entry = net.tfo.cache.get(CLIENT_IP, SERVER_IP)
    assert (entry.cookie, entry.cookie_experimental) == (cookie, True)
    conn3, ext3, _ = net.connect(at_s=20.0)
    assert ext3.plan.option == fast_open_option(cookie, experimental=True)
    net.run(2.0)
    assert net.app.received(conn3.local_port) == [(20.0 + ONE_WAY_S, REQUEST)]


def test_experimental_request_unanswered_too_goes_back_to_kind_34_for_good():
    net = Net(c2s=[strip_fast_open])
    kinds = []
    for start_s in (0.0, 10.0, 20.0, 30.0):
        _, ext, _ = net.connect(at_s=start_s)
        kinds.append(type(ext.plan.option))
        net.run(2.0)
    assert kinds == [FastOpen, Experimental, FastOpen, FastOpen]


# --- RFC 7413 4.1.3 cookie-request wait and 4.1.3.1 negative cache (off by default, as in Linux) -------


def test_cookie_request_retry_wait():
    net = Net(TfoPolicy(cookie_request_retry_s=100.0, experimental_fallback=False), TfoServerMode.DISABLED)
    net.connect()
    net.run(2.0)
    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, 50.0).kind is TfoSynKind.BACKED_OFF
    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, 100.0 + RTT_S).kind is TfoSynKind.COOKIE_REQUEST
    assert Net(TfoPolicy(), TfoServerMode.DISABLED).tfo.plan_syn(CLIENT_IP, SERVER_IP, 50.0).kind \
        is TfoSynKind.COOKIE_REQUEST


def test_negative_cache_after_unacked_syn_data():
    net = Net(TfoPolicy(cookieless=True, negative_cache_s=600.0), TfoServerMode.COOKIE_REQUIRED)
    net.connect()
    net.run(2.0)
    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, 300.0, REQUEST).kind is TfoSynKind.BACKED_OFF
    assert net.tfo.plan_syn(CLIENT_IP, SERVER_IP, 600.0 + RTT_S, REQUEST).kind is TfoSynKind.COOKIELESS


# --- the server ---------------------------------------------------------------------------------------


def test_cookie_is_a_keyed_mac_of_the_client_address():
    server = TfoServer(random.Random(1))
    cookie = server.cookie_for(CLIENT_IP)
    assert len(cookie) == COOKIE_BYTES == 8
    assert server.cookie_for(CLIENT_IP) == cookie and server.is_valid(CLIENT_IP, cookie)
    assert not server.is_valid(CLIENT_IP_2, cookie) and server.cookie_for(CLIENT_IP_2) != cookie
    assert not server.is_valid(CLIENT_IP, bytes(8)) and not server.is_valid(CLIENT_IP, cookie[:4])
    assert TfoServer(random.Random(2)).cookie_for(CLIENT_IP) != cookie  # another key
    server.rotate_key(random.Random(3))
    assert server.cookie_for(CLIENT_IP) != cookie and server.is_valid(CLIENT_IP, cookie)
    server.rotate_key(random.Random(4))
    assert not server.is_valid(CLIENT_IP, cookie)


def syn_packet(option=None, payload=b"", src=CLIENT_IP):
    options = (option,) if option is not None else ()
    return IpPacket(src, SERVER_IP, TcpSegment(40000, 80, 1000, 0, TcpFlags.SYN, 65535, options, payload))


GOOD, BAD = "good", "bad"


@pytest.mark.parametrize(("mode", "option", "payload", "expected_mode", "reply", "counters"), [
    (TfoServerMode.DISABLED, GOOD, b"x", SynDataMode.DROP, False, ()),
    (TfoServerMode.DISABLED, b"", b"", SynDataMode.DROP, False, ()),
    (TfoServerMode.COOKIE_REQUIRED, None, b"", SynDataMode.DROP, False, ()),
    (TfoServerMode.COOKIE_REQUIRED, None, b"x", SynDataMode.DROP, False, ()),  # pure-syn-data.pkt
    (TfoServerMode.COOKIE_REQUIRED, b"", b"", SynDataMode.DROP, True, ("TCPFastOpenCookieReqd",)),
    (TfoServerMode.COOKIE_REQUIRED, b"", b"x", SynDataMode.DROP, True, ("TCPFastOpenCookieReqd",)),
    (TfoServerMode.COOKIE_REQUIRED, GOOD, b"x", SynDataMode.ACCEPT, False, ("TCPFastOpenPassive",)),
    (TfoServerMode.COOKIE_REQUIRED, GOOD, b"", SynDataMode.ACCEPT, False, ("TCPFastOpenPassive",)),
    (TfoServerMode.COOKIE_REQUIRED, BAD, b"x", SynDataMode.DROP, True, ("TCPFastOpenPassiveFail",)),
    (TfoServerMode.COOKIELESS, None, b"x", SynDataMode.ACCEPT, False, ("TCPFastOpenPassive",)),
    (TfoServerMode.COOKIELESS, BAD, b"x", SynDataMode.ACCEPT, False, ("TCPFastOpenPassive",)),
    (TfoServerMode.COOKIELESS, b"", b"", SynDataMode.DROP, True, ("TCPFastOpenCookieReqd",)),
    (TfoServerMode.COOKIELESS, None, b"", SynDataMode.DROP, False, ()),
])
def test_server_decision_table(mode, option, payload, expected_mode, reply, counters):
    server = TfoServer(random.Random(1), mode=mode)
    cookie = {GOOD: server.cookie_for(CLIENT_IP), BAD: b"\x00" * 8}.get(option, option)
    verdict = server.decide(syn_packet(None if option is None else FastOpen(cookie), payload))
    assert verdict.syn_data_mode is expected_mode
    assert verdict.reply_option == (FastOpen(server.cookie_for(CLIENT_IP)) if reply else None)
    assert verdict.counters == counters


def test_server_checks_the_experimental_encoding_and_ignores_other_exids():
    server = TfoServer(random.Random(1))
    cookie = server.cookie_for(CLIENT_IP)
    verdict = server.decide(syn_packet(fast_open_option(cookie, experimental=True), b"x"))
    assert verdict.syn_data_mode is SynDataMode.ACCEPT
    other_exid = Experimental(TcpOptionKind.EXPERIMENTAL_2, b"\x12\x34" + cookie)
    assert server.decide(syn_packet(other_exid, b"x")) == server.decide(syn_packet(None, b"x"))


def test_pending_fast_open_requests_are_limited():
    # The client's ACKs are lost for 2 s: the first Fast Open connection stays in SYN-RECEIVED
    # (RFC 7413 PendingFastOpenRequests), so the second SYN's data is not taken.
    net = Net(max_pending=1)
    with_cookie(net)
    start_s = 10.0
    net.h.hops[("client", "eth0")].filters[:] = [lambda p, now: [] if not is_syn(p) and now < start_s + 2.0 else [p]]
    conn1, _, _ = net.connect(at_s=start_s)
    conn2, ext2, _ = net.connect(at_s=start_s + 0.5)
    net.run(0.1)
    assert net.tfo_server.pending() == 1
    net.run(10.0)
    assert net.app.received(conn1.local_port)[0] == (start_s + ONE_WAY_S, REQUEST)
    assert ext2.outcome.syn_data_acked_bytes == 0 and find_fast_open(net.synack(conn2)) is None
    assert net.server.mib["TCPFastOpenListenOverflow"] == 1
    assert net.tfo_server.pending() == 0  # conn1 got through once the ACKs did
    conn3, _, _ = net.connect(at_s=30.0)
    net.run(2.0)
    assert net.app.received(conn3.local_port) == [(30.0 + ONE_WAY_S, REQUEST)]


def test_retransmitted_synack_carries_no_cookie():
    # The first SYN-ACK (with the cookie) is lost; the client's SYN timer fires and the server
    # answers the retransmitted SYN with a SYN-ACK without the option (RFC 7413 4.2.2).
    first_synack_lost = lambda p, now: [] if p.segment.flags & TcpFlags.SYN and now < 0.5 else [p]  # noqa: E731
    net = Net(s2c=[first_synack_lost])
    conn, _, _ = net.connect()
    net.run(5.0)
    synacks = [s for _, s, _ in net.segments(conn, "server") if s.flags & TcpFlags.SYN]
    assert [find_fast_open(s) is not None for s in synacks][:2] == [True, False]
    assert conn.state is TcpState.ESTABLISHED and net.tfo.cache.get(CLIENT_IP, SERVER_IP).cookie == b""


def test_tfo_server_plugs_into_the_server_host():
    from mpsim.proto.server import ServerHost, ServerKind  # another module's listener, driven by TfoServer

    rng = random.Random(3)
    client = Host("client", {"eth0": CLIENT_IP}, rng=rng)
    tfo_server = TfoServer(rng)
    server = ServerHost("server", SERVER_IP, ServerKind.TFO, rng=rng, syn_data_mode=tfo_server.syn_data_mode,
                        extensions=tfo_server.extensions_for)
    tfo_server.mib = server.mib
    h = Harness()
    h.add("client", client)
    h.add("server", server)
    h.link("client", "eth0", "server", "eth0", ONE_WAY_S)
    tfo = TfoClient(mib=client.mib)
    for start_s in (0.0, 10.0):
        h.run(start_s)
        conn, _ = tfo.connect(client, Recorder(), CLIENT_IP, SERVER_IP, 80, h.now, REQUEST)
        h.run(start_s + 2.0)
        assert server.app.stream(server_tuple(conn)) == REQUEST
    assert client.mib["TCPFastOpenActive"] == 1 and server.mib["TCPFastOpenPassive"] == 1


def server_tuple(conn):
    return (conn.remote_addr, conn.remote_port, conn.local_addr, conn.local_port)


# --- properties -----------------------------------------------------------------------------------------


@given(cookieless=st.booleans(), cookie=st.sampled_from([b"", b"\x01\x02\x03\x04", b"\x05" * 16]),
       mss=st.none() | st.integers(88, 65495), syn_loss=st.integers(0, 12), last_loss_s=st.floats(0, 1e6),
       now=st.floats(0, 1e7), app_data=st.binary(max_size=3000), v6=st.booleans())
def test_plan_invariants(cookieless, cookie, mss, syn_loss, last_loss_s, now, app_data, v6):
    client_ip, server_ip = (CLIENT_IP6, SERVER_IP6) if v6 else (CLIENT_IP, SERVER_IP)
    tfo = TfoClient(TfoPolicy(cookieless=cookieless))
    seed_entry(tfo, client_ip, server_ip, cookie=cookie, mss_bytes=mss, syn_loss=syn_loss, last_syn_loss_s=last_loss_s)
    plan = tfo.plan_syn(client_ip, server_ip, now, app_data)
    limit_bytes = (1220 if v6 else 536) if mss is None else min(mss, 1440 if v6 else 1460)
    assert app_data.startswith(plan.syn_payload) and len(plan.syn_payload) <= limit_bytes
    assert plan.syn_payload + plan.rest(app_data) == app_data
    backed_off = syn_loss > 1 and now < last_loss_s + (60 << syn_loss)  # Linux, written independently
    assert (plan.kind is TfoSynKind.BACKED_OFF) == backed_off
    if backed_off:
        assert plan.option is None and plan.syn_payload == b"" and plan.until_s > now
    elif cookieless:
        assert plan.option is None and plan.syn_payload == app_data[:limit_bytes]
    elif cookie:
        assert plan.option == FastOpen(cookie) and plan.syn_payload == app_data[:limit_bytes]
    else:
        assert plan.option == FastOpen(b"") and plan.syn_payload == b""


@given(st.binary(min_size=0, max_size=20))
def test_find_fast_open_reads_only_valid_encodings(cookie):
    valid = len(cookie) == 0 or (4 <= len(cookie) <= 16 and len(cookie) % 2 == 0)
    options = (Experimental(254, b"\xf9\x89" + cookie), MaximumSegmentSize(1460))
    segment = TcpSegment(1, 2, 0, 0, TcpFlags.SYN, 0, options)
    assert find_fast_open(segment) == ((cookie, True) if valid else None)
