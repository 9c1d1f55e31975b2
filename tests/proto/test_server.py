"""Server kinds and applications: what a SYN (with data) meets at the far end (docs/protocols.md 4.3, 5, 8.6)."""

import random
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from mpsim.proto.events import FallbackReason, FellBackToTcp, MptcpNegotiated
from mpsim.proto.harness import Harness
from mpsim.proto.host import Host
from mpsim.proto.middlebox import (
    IcmpUnreachable,
    IcmpUnreachableCode,
    Nat,
    SegmentClass,
    SegmentClassifier,
    StripOptions,
)
from mpsim.proto.mptcp import MptcpClientExtension, MptcpPolicy
from mpsim.proto.server import (
    RequestServed,
    ResponderApp,
    ServerHost,
    ServerKind,
    SinkApp,
    response_payload,
)
from mpsim.proto.tcp import (
    Closed,
    DataReceived,
    Established,
    PeerClosed,
    ResetReceived,
    SynDataMode,
    TcpExtension,
    TcpPolicy,
    TcpState,
)
from mpsim.proto.tfo import TfoClient
from mpsim.wire.options import TcpOptionKind

C = IPv4Address("192.0.2.1")
S = IPv4Address("198.51.100.1")
ROUTER = IPv4Address("198.51.100.254")
ONE_WAY_S = 0.01
SIGNAL = b"\x01\x02SIGNAL"


class Client:
    """Sends ``requests`` (one after the other as soon as established), records events and data."""

    def __init__(self, *requests):
        self.requests = requests
        self.events = []
        self.data = bytearray()

    def on_tcp_event(self, host, conn, event, now):
        self.events.append((round(now, 6), event))
        if isinstance(event, Established):
            for request in self.requests:
                conn.send(request, now)
        elif isinstance(event, DataReceived):
            self.data += event.data
        elif isinstance(event, PeerClosed) and conn.state is TcpState.CLOSE_WAIT:
            conn.close(now)

    def of(self, kind):
        return [e for _, e in self.events if isinstance(e, kind)]


def setup(kind, app=None, client_policy=None, server_address=S, forward=(), backward=(), **server_args):
    harness = Harness()
    client = harness.add("client", Host("client", {"eth0": C}, rng=random.Random(1), policy=client_policy))
    server = harness.add("server", ServerHost("server", server_address, kind, rng=random.Random(2),
                                              app=app if app is not None else SinkApp(), **server_args))
    harness.link("client", "eth0", "server", "eth0", ONE_WAY_S, a_to_b=list(forward), b_to_a=list(backward))
    return harness, client, server


# --- legacy servers and SYN data ------------------------------------------------------------------


def test_legacy_drop_acks_isn_plus_one_and_the_application_never_sees_syn_data():
    harness, client, server = setup(ServerKind.LEGACY_DROP,
                                    client_policy=TcpPolicy(resend_unacked_syn_data=False))
    app = Client(b"GET /\n")
    conn = client.open(app, C, S, 80, 0.0, syn_payload=SIGNAL)
    harness.run(1.0)
    assert app.of(Established) == [Established(syn_data_acked_bytes=0)]
    assert conn.synack.ack == (conn.iss + 1) % 2**32
    assert server.app.stream() == b"GET /\n"


def test_legacy_drop_with_a_linux_tfo_client_gets_the_syn_data_resent_as_data():
    # The 2016 hazard, drop variant: the client's stack re-sends what the SYN-ACK did not ACK.
    harness, client, server = setup(ServerKind.LEGACY_DROP)
    client.open(Client(b"GET /\n"), C, S, 80, 0.0, syn_payload=SIGNAL)
    harness.run(1.0)
    assert server.app.stream() == SIGNAL + b"GET /\n"


def test_legacy_queue_acks_syn_data_and_delivers_it_only_once_established():
    harness, client, server = setup(ServerKind.LEGACY_QUEUE)
    app = Client(b"GET /\n")
    client.open(app, C, S, 80, 0.0, syn_payload=SIGNAL)
    harness.run(1.5 * ONE_WAY_S)  # the SYN has arrived, the third ACK has not
    (conn,) = server.connections.values()
    assert conn.state is TcpState.SYN_RECEIVED and server.app.stream() == b""
    harness.run(1.0)
    assert app.of(Established) == [Established(syn_data_acked_bytes=len(SIGNAL))]
    # The signalling bytes became application data, ahead of the request.
    assert server.app.stream() == SIGNAL + b"GET /\n"


def test_legacy_kinds_refuse_protocol_hooks():
    with pytest.raises(ValueError):
        ServerHost("s", S, ServerKind.LEGACY_DROP, rng=random.Random(1), extensions=lambda syn, now: ())


# --- TFO and MPTCP kinds take their hooks from their modules -----------------------------------------


class Marker(TcpExtension):
    """Stands in for an MPTCP/TFO extension: records that the listener attached it."""

    def __init__(self, syn):
        self.syn = syn


def test_protocol_hooks_must_fit_the_kind():
    with pytest.raises(ValueError):  # TFO hooks come in pairs: per-SYN data mode and extensions
        ServerHost("s", S, ServerKind.TFO, rng=random.Random(1), extensions=lambda syn, now: ())
    with pytest.raises(ValueError):
        ServerHost("s", S, ServerKind.MPTCP_V0, rng=random.Random(1), mptcp_policy=MptcpPolicy(version=1))


def mptcp_client(client, version=1):
    return MptcpClientExtension(rng=random.Random(7), mib=client.mib, policy=MptcpPolicy(version=version))


@pytest.mark.parametrize("version", [1, 0])
def test_mptcp_server_negotiates_its_own_version(version):
    kind = ServerKind.MPTCP_V1 if version == 1 else ServerKind.MPTCP_V0
    harness, client, server = setup(kind, app=ResponderApp(3000))
    ext = mptcp_client(client, version)
    client_app = Client(b"GET /\n")
    client.open(client_app, C, S, 80, 0.0, extensions=(ext,))
    harness.run(1.0)
    assert ext.negotiated and ext.version == version
    server_facts = [e for e in harness.events_of("server") if isinstance(e, (MptcpNegotiated, RequestServed))]
    assert [type(e) for e in server_facts] == [MptcpNegotiated, RequestServed]
    assert server_facts[0].version == version
    assert bytes(client_app.data) == response_payload(3000)


def test_mptcp_server_reports_a_fallback_seen_on_a_pure_ack():
    # A box strips MPTCP options from the client's later pure ACKs only: the server sees its
    # response ACKed without a Data ACK, on a segment that raises no TCP event at all.
    classifier = SegmentClassifier()

    def strip_from_later_pure_acks(packet, now):
        if classifier.classify(packet) != {SegmentClass.ANY}:
            return [packet]
        return [replace(packet, segment=replace(packet.segment, options=()))]

    harness, client, server = setup(ServerKind.MPTCP_V1, app=ResponderApp(3000),
                                    forward=[strip_from_later_pure_acks])
    client.open(Client(b"GET /\n"), C, S, 80, 0.0, extensions=(mptcp_client(client),))
    harness.run(1.0)
    ((time_s, _, fact),) = [(t, n, e) for t, n, e in harness.events if n == "server" and isinstance(e, FellBackToTcp)]
    assert fact.reason is FallbackReason.DSS_MISSING and time_s == pytest.approx(5 * ONE_WAY_S)


def test_mptcp_server_facts_precede_the_applications_reaction_to_the_same_segment():
    # The request arrives without a DSS (stripped on data): the fallback and the response are
    # both caused by that one segment; the trace must read cause first.
    harness, client, server = setup(ServerKind.MPTCP_V1, app=ResponderApp(100),
                                    forward=[StripOptions({TcpOptionKind.MPTCP}, {SegmentClass.DATA})])
    client.open(Client(b"GET /\n"), C, S, 80, 0.0, extensions=(mptcp_client(client),))
    harness.run(1.0)
    facts = [e for e in harness.events_of("server") if isinstance(e, (FellBackToTcp, RequestServed))]
    assert [type(e) for e in facts] == [FellBackToTcp, RequestServed]


def test_mptcp_v0_only_server_ignores_a_v1_syn_which_looks_like_stripping():
    harness, client, server = setup(ServerKind.MPTCP_V0, app=ResponderApp(100))
    ext = mptcp_client(client, version=1)
    client_app = Client(b"GET /\n")
    client.open(client_app, C, S, 80, 0.0, extensions=(ext,))
    harness.run(1.0)
    assert ext.fallback_reason is FallbackReason.MP_CAPABLE_MISSING_SYNACK
    assert [f.reason for f in harness.events_of("server", FellBackToTcp)] == [FallbackReason.MPTCP_VERSION_UNSUPPORTED]
    assert bytes(client_app.data) == response_payload(100)  # plain TCP works


def test_tfo_server_issues_a_cookie_then_accepts_syn_data_before_the_handshake_ends():
    harness, client, server = setup(ServerKind.TFO)
    tfo = TfoClient(mib=client.mib)
    tfo.connect(client, Client(), C, S, 80, 0.0, app_data=b"first")
    harness.run(1.0)
    assert tfo.cache.get(C, S).cookie == server.tfo_server.cookie_for(C)
    conn, _ = tfo.connect(client, Client(), C, S, 80, harness.now, app_data=b"second")
    harness.run(harness.now + 1.5 * ONE_WAY_S)  # the SYN has arrived, the third ACK has not
    (fast_opened,) = [c for c in server.connections.values() if c.state is TcpState.SYN_RECEIVED]
    assert server.app.stream(fast_opened.four_tuple) == b"second"  # TFO: delivered at once
    harness.run(3.0)
    assert conn.syn_data_acked_bytes == len(b"second") and server.mib["TCPFastOpenPassive"] == 1


def test_hooks_are_asked_per_syn():
    modes = {40000: SynDataMode.ACCEPT}
    harness, client, server = setup(
        ServerKind.TFO, extensions=lambda syn, now: (Marker(syn),),
        syn_data_mode=lambda syn, now: modes.get(syn.segment.src_port, SynDataMode.DROP))
    client.ports._next = 40000
    first = client.open(Client(), C, S, 80, 0.0, syn_payload=b"tfo data")
    second = client.open(Client(), C, S, 80, 0.0, syn_payload=b"tfo data")
    harness.run(1.0)
    acked = {c.local_port: c.syn_data_acked_bytes for c in (first, second)}
    assert acked == {40000: 8, 40001: 0}
    for conn in server.connections.values():
        (marker,) = conn.extensions
        assert marker.syn.segment.src_port == conn.remote_port


# --- applications ------------------------------------------------------------------------------


def test_responder_answers_each_line_and_records_the_request_stream():
    app = ResponderApp(3000)
    harness, client, server = setup(ServerKind.LEGACY_DROP, app=app)
    client_app = Client(b"GET /a\nGET", b" /b\n")
    client.open(client_app, C, S, 80, 0.0)
    harness.run(1.0)
    assert bytes(client_app.data) == response_payload(3000) * 2
    served = harness.events_of("server", RequestServed)
    assert [(e.request_bytes, e.response_bytes) for e in served] == [(7, 3000), (7, 3000)]
    assert app.stream() == b"GET /a\nGET /b\n"


def test_responder_fixed_size_request_and_close_after_response():
    app = ResponderApp(10, request_size_bytes=4, close_after_response=True)
    harness, client, server = setup(ServerKind.LEGACY_DROP, app=app)
    client_app = Client(b"abcdefgh")
    client.open(client_app, C, S, 80, 0.0)
    harness.run(100.0)
    assert bytes(client_app.data) == response_payload(10)  # one answer, then the server closed
    assert len(harness.events_of("server", RequestServed)) == 1
    assert client_app.of(PeerClosed) and [c.reason.value for c in client_app.of(Closed)] == ["last_ack"]


def test_sink_never_answers_and_closes_when_the_client_does():
    harness, client, server = setup(ServerKind.LEGACY_DROP)
    client_app = Client(b"data")
    conn = client.open(client_app, C, S, 80, 0.0)
    harness.run(0.1)
    conn.close(harness.now)
    client.collect(conn, harness.now)
    harness.run(100.0)
    assert server.app.stream() == b"data" and client_app.data == b""
    assert [c.reason.value for c in server.app.closes.values()] == ["last_ack"]


def test_response_payload_is_a_counting_pattern():
    assert response_payload(3) == b"\x00\x01\x02" and response_payload(258)[256:] == b"\x00\x01"


# --- closed and unreachable ------------------------------------------------------------------------


def test_closed_server_resets():
    harness, client, server = setup(ServerKind.CLOSED)
    app = Client()
    client.open(app, C, S, 80, 0.0)
    harness.run(1.0)
    assert app.of(ResetReceived) == [ResetReceived(refused=True)] and server.rsts_for_unknown == 1


def test_unreachable_router_quotes_the_syn_in_icmp():
    harness, client, server = setup(ServerKind.UNREACHABLE, server_address=ROUTER,
                                    icmp_code=IcmpUnreachableCode.PORT_UNREACHABLE)
    client.open(Client(), C, S, 80, 0.0)
    harness.run(0.5)
    (icmp,) = [d.packet for d in harness.log if d.src == "server"]
    assert isinstance(icmp, IcmpUnreachable) and icmp.hard
    assert (icmp.src, icmp.dst, icmp.original.segment.dst_port) == (ROUTER, C, 80)
    assert server.icmp_sent == 1 and client.mib["IcmpInDestUnreachs"] == 1


def test_unreachable_through_nat_the_icmp_reaches_the_inside_client():
    nat = Nat([IPv4Address("203.0.113.9")])
    harness, client, server = setup(ServerKind.UNREACHABLE, server_address=ROUTER,
                                    forward=[nat.forward], backward=[nat.backward])
    client.open(Client(), C, S, 80, 0.0)
    harness.run(0.5)
    assert client.mib["IcmpInDestUnreachs"] == 1
