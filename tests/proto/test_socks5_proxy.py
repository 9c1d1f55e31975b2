"""SOCKS5 (RFC 1928): the client exchange, the proxy session, and whole connections through
Socks5ProxyHost in the harness (the 2 extra client-proxy RTTs, exact bytes, every failure reply,
MPTCP on the client leg).

Topology: client --125 ms-- proxy --250 ms-- server, and for comparison a direct link from the
client to a second server with the same end-to-end delay (375 ms).
"""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv6Address

import pytest

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason, MptcpNegotiated
from mpsim.proto.harness import Harness
from mpsim.proto.host import Host
from mpsim.proto.middlebox import IcmpUnreachableCode
from mpsim.proto.mptcp import MptcpClientExtension
from mpsim.proto.relay import (
    CloseUpstream,
    OpenDownstream,
    Report,
    SendDownstream,
    SendUpstream,
)
from mpsim.proto.server import ResponderApp, ServerApp, ServerHost, ServerKind, response_payload
from mpsim.proto.socks5_proxy import (
    SOCKS5_SESSION_TRANSITIONS,
    Socks5ClientExchange,
    Socks5ProxyHost,
    Socks5ProxyPolicy,
    Socks5Replied,
    Socks5Result,
    Socks5Session,
    Socks5SessionState,
    Socks5Status,
)
from mpsim.proto.tcp import Closed, DataReceived, Established, PeerClosed, ResetReceived, TcpState
from mpsim.wire.mptcp import MpCapable, MpFastclose
from mpsim.wire.segment import TcpFlags
from mpsim.wire.socks5 import Socks5Reply, Socks5ReplyMessage, Socks5Request

CLIENT = IPv4Address("198.18.0.2")
CLIENT_DIRECT = IPv4Address("198.18.2.2")
PROXY_IN = IPv4Address("198.18.0.1")
PROXY_OUT = IPv4Address("198.19.0.1")
SERVER = IPv4Address("198.19.0.80")
SERVER_DIRECT = IPv4Address("198.19.2.80")
SOCKS_PORT = 1080
SERVER_PORT = 80
CLIENT_PROXY_S = 0.125
PROXY_SERVER_S = 0.25
RTT_CP_S = 2 * CLIENT_PROXY_S
RTT_PS_S = 2 * PROXY_SERVER_S
REP = Socks5Reply
GREETING = b"\x05\x01\x00"
NO_AUTH = b"\x05\x00"


def reply(code, address=IPv4Address(0), port=0) -> bytes:
    return Socks5ReplyMessage(code, address, port).encode()


def request(address=SERVER, port=SERVER_PORT, command=1) -> bytes:
    return Socks5Request(address, port, command).encode()


# --- the client exchange ----------------------------------------------------------------------------


def test_the_client_sends_the_greeting_then_the_request_after_the_method_selection():
    exchange = Socks5ClientExchange(SERVER, SERVER_PORT)
    assert exchange.greeting() == GREETING
    assert exchange.receive(b"\x05") == b""  # half a method selection: wait
    assert exchange.receive(b"\x00") == b"\x05\x01\x00\x01" + SERVER.packed + b"\x00\x50"
    assert exchange.result is None
    for byte in reply(REP.SUCCEEDED, PROXY_OUT, 40001)[:-1]:  # the reply one byte at a time
        assert exchange.receive(bytes([byte])) == b"" and exchange.result is None
    exchange.receive(reply(REP.SUCCEEDED, PROXY_OUT, 40001)[-1:] + b"banner")
    assert exchange.result == Socks5Result(Socks5Status.SUCCEEDED, 0, (PROXY_OUT, 40001), b"banner")
    assert exchange.result.fallback_reason is None
    with pytest.raises(LocalProtocolError):
        exchange.receive(b"more")


@pytest.mark.parametrize("answer, result", [
    (NO_AUTH + reply(REP.CONNECTION_REFUSED), Socks5Result(Socks5Status.REFUSED, REP.CONNECTION_REFUSED)),
    (NO_AUTH + reply(REP.TTL_EXPIRED), Socks5Result(Socks5Status.REFUSED, REP.TTL_EXPIRED)),
    (b"\x05\xff", Socks5Result(Socks5Status.NO_ACCEPTABLE_METHOD)),
    (b"\x05\x02", Socks5Result(Socks5Status.INVALID)),  # a method we did not offer
    (b"\x04\x5a", Socks5Result(Socks5Status.INVALID)),  # a SOCKS4 answer
    (NO_AUTH + b"\x05\x00\x01\x09", Socks5Result(Socks5Status.INVALID)),  # reserved byte not zero
])
def test_the_client_reports_refusals_with_the_reply_code(answer, result):
    exchange = Socks5ClientExchange(SERVER, SERVER_PORT)
    exchange.receive(answer)
    assert exchange.result == result
    assert exchange.result.fallback_reason is FallbackReason.PROXY_FAILED


# --- the session --------------------------------------------------------------------------------------


CLIENT_END = (CLIENT, 40000)


def new_session(**policy) -> Socks5Session:
    return Socks5Session(CLIENT_END, Socks5ProxyPolicy(**policy), 0.0)


def drain(session) -> list:
    out = []
    while (decision := session.next_decision()) is not None:
        out.append(decision)
    return out


def sent(decisions) -> bytes:
    return b"".join(d.data for d in decisions if isinstance(d, SendUpstream))


def test_the_session_parses_pieces_and_pipelined_messages_and_replies_before_relaying():
    session = new_session()
    session.receive_upstream(b"", 0.0)  # the SYN had no payload
    session.receive_upstream(GREETING[:2], 0.1)
    assert drain(session) == [] and session.state is Socks5SessionState.EXPECT_GREETING
    session.receive_upstream(GREETING[2:] + request() + b"early", 0.2)  # a pipelining client
    decisions = drain(session)
    assert decisions == [SendUpstream(NO_AUTH), OpenDownstream(SERVER, SERVER_PORT)]
    assert session.state is Socks5SessionState.CONNECTING_DOWNSTREAM and session.get_timer() == 30.2
    session.receive_upstream(b" and late", 0.3)
    session.downstream_opened(PROXY_OUT, 40001)
    session.downstream_connected(0.8, ())
    decisions = drain(session)
    assert decisions == [SendUpstream(reply(0, PROXY_OUT, 40001), Socks5ReplyMessage(0, PROXY_OUT, 40001)),
                         Report(Socks5Replied(CLIENT_END, (SERVER, SERVER_PORT), 0)),
                         SendDownstream(b"early and late")]
    with pytest.raises(LocalProtocolError):
        session.downstream_connected(0.9, ())


@pytest.mark.parametrize("messages, answer, state_after_greeting", [
    (b"\x05\x01\x02", b"\x05\xff", None),  # username/password only: no acceptable method
    (b"\x04\x01\x00\x50" + SERVER.packed + b"\x00", b"", None),  # SOCKS4: closed without a word
    (b"\x05\x00", b"", None),  # no methods at all
    (GREETING + request(command=2), NO_AUTH + reply(REP.COMMAND_NOT_SUPPORTED), "request"),  # BIND
    (GREETING + b"\x05\x01\x00\x05" + bytes(6), NO_AUTH + reply(REP.ADDRESS_TYPE_NOT_SUPPORTED), "request"),
    (GREETING + b"\x05\x01\x07\x01" + bytes(6), NO_AUTH + reply(REP.GENERAL_FAILURE), "request"),  # RSV != 0
    (GREETING + request("unknown.example"), NO_AUTH + reply(REP.HOST_UNREACHABLE), "request"),
])
def test_bad_greetings_and_requests_get_their_answer_then_fin(messages, answer, state_after_greeting):
    session = new_session()
    session.receive_upstream(messages, 0.0)
    decisions = drain(session)
    assert sent(decisions) == answer
    assert isinstance(decisions[-1], CloseUpstream) and session.done
    assert not any(isinstance(d, OpenDownstream) for d in decisions)


def test_a_domain_name_the_resolver_knows_is_connected_to():
    session = new_session(names={"server.example": SERVER})
    session.receive_upstream(GREETING + request("server.example", 443), 0.0)
    assert drain(session)[-1] == OpenDownstream(SERVER, 443)


@pytest.mark.parametrize("fail, code", [
    (lambda s: s.downstream_reset(1.0), REP.CONNECTION_REFUSED),
    (lambda s: s.downstream_unreachable(1.0, IcmpUnreachableCode.NET_UNREACHABLE), REP.NETWORK_UNREACHABLE),
    (lambda s: s.downstream_unreachable(1.0, IcmpUnreachableCode.HOST_UNREACHABLE), REP.HOST_UNREACHABLE),
    (lambda s: s.downstream_unreachable(1.0, IcmpUnreachableCode.PORT_UNREACHABLE), REP.CONNECTION_REFUSED),
    (lambda s: s.downstream_unreachable(1.0, IcmpUnreachableCode.ADMIN_PROHIBITED), REP.HOST_UNREACHABLE),
    (lambda s: s.downstream_unreachable(1.0, IcmpUnreachableCode.PROTOCOL_UNREACHABLE), REP.GENERAL_FAILURE),
    (lambda s: s.downstream_failed(1.0), REP.NETWORK_UNREACHABLE),  # no route for the family
    (lambda s: s.downstream_timeout(1.0), REP.TTL_EXPIRED),
    (lambda s: s.handle_timer(30.0), REP.TTL_EXPIRED),  # the session's connect timer
])
def test_each_downstream_failure_has_its_reply(fail, code):
    session = new_session()
    session.receive_upstream(GREETING + request(), 0.0)
    drain(session)
    fail(session)
    decisions = drain(session)
    assert sent(decisions) == reply(code) and isinstance(decisions[-1], CloseUpstream)
    assert Report(Socks5Replied(CLIENT_END, (SERVER, SERVER_PORT), code)) in decisions
    assert session.done


def test_the_timeout_reply_is_a_policy():
    session = new_session(timeout_reply=REP.GENERAL_FAILURE)
    session.receive_upstream(GREETING + request(), 0.0)
    session.handle_timer(30.0)
    assert sent(drain(session)) == NO_AUTH + reply(REP.GENERAL_FAILURE)


@pytest.mark.parametrize("leave", [lambda s: s.handle_timer(30.0), lambda s: s.upstream_closed(1.0)],
                         ids=["request-timer", "client-fin"])
def test_a_client_that_never_completes_its_request_is_closed(leave):
    session = new_session()
    session.receive_upstream(GREETING + request()[:5], 0.0)
    drain(session)
    leave(session)
    assert drain(session) == [CloseUpstream()] and session.done


def test_the_transition_table_covers_every_state():
    assert set(SOCKS5_SESSION_TRANSITIONS) == set(Socks5SessionState)


# --- harness --------------------------------------------------------------------------------------------


class EchoApp(ServerApp):
    def __init__(self, reset_on: bytes | None = None) -> None:
        super().__init__()
        self.reset_on = reset_on

    def on_data(self, host, conn, data, now):
        if self.reset_on is not None and self.reset_on in data:
            host.abort(conn, now)
        else:
            conn.send(b"echo:" + data, now)


@dataclasses.dataclass
class SocksClient:
    """A test owner: the SOCKS5 exchange once established, then ``data``; closes once it has
    ``expect_bytes`` of application data. ``exchange`` None: a direct connection, no SOCKS."""

    exchange: Socks5ClientExchange | None
    data: bytes = b""
    expect_bytes: int = 0
    established_at: float | None = None
    result_at: float | None = None
    first_byte_at: float | None = None
    received: bytearray = dataclasses.field(default_factory=bytearray)
    reset: ResetReceived | None = None
    closed: Closed | None = None

    def on_tcp_event(self, host, conn, event, now):
        if isinstance(event, Established):
            self.established_at = now
            conn.send(self.exchange.greeting() if self.exchange else self.data, now)
        elif isinstance(event, DataReceived):
            data = event.data
            if self.exchange is not None and self.exchange.result is None:
                out = self.exchange.receive(data)
                if out:
                    conn.send(out, now)
                if self.exchange.result is None:
                    return
                self.result_at = now
                if not self.exchange.result.succeeded:
                    conn.close(now)  # RFC 1928: the client closes after a failure
                    return
                data = self.exchange.result.app_data
                conn.send(self.data, now)
            if data:
                self.first_byte_at = self.first_byte_at if self.first_byte_at is not None else now
                self.received += data
                if len(self.received) >= self.expect_bytes and conn.state is TcpState.ESTABLISHED:
                    conn.close(now)
        elif isinstance(event, PeerClosed) and conn.state is TcpState.CLOSE_WAIT:
            conn.close(now)
        elif isinstance(event, ResetReceived):
            self.reset = event
        elif isinstance(event, Closed):
            self.closed = event


@dataclasses.dataclass
class Net:
    harness: Harness
    client: Host
    proxy: Socks5ProxyHost
    server: ServerHost
    direct: ServerHost
    rng: random.Random

    def socks(self, owner: SocksClient, *, mptcp=False, now=0.0):
        extensions = (MptcpClientExtension(rng=self.rng, mib=self.client.mib),) if mptcp else ()
        return self.client.open(owner, CLIENT, PROXY_IN, SOCKS_PORT, now, extensions=extensions)

    def packets(self, src, dst, flags=None):
        return [d for d in self.harness.log if d.src == src and d.dst == dst and not d.dropped
                and (flags is None or d.packet.segment.flags & flags == flags)]


def build(*, server_kind=ServerKind.LEGACY_DROP, app=None, server_filters=(), icmp_code=1,
          proxy_mptcp=True, **policy) -> Net:
    rng = random.Random(11)
    harness = Harness()
    client = harness.add("client", Host("client", {"eth0": CLIENT, "eth1": CLIENT_DIRECT}, rng=rng))
    extra = {} if proxy_mptcp else {"mptcp_policy": None}
    proxy = harness.add("proxy", Socks5ProxyHost("proxy", {"lan": PROXY_IN, "wan": PROXY_OUT}, rng=rng,
                                                 server_interfaces=("wan",), policy=Socks5ProxyPolicy(**policy),
                                                 **extra))
    server = harness.add("server", ServerHost("server", SERVER, server_kind, rng=rng, ports=(SERVER_PORT,),
                                              app=app if app is not None else EchoApp(), icmp_code=icmp_code))
    direct = harness.add("direct", ServerHost("direct", SERVER_DIRECT, ServerKind.LEGACY_DROP, rng=rng,
                                              ports=(SERVER_PORT,), app=ResponderApp(1000)))
    harness.link("client", "eth0", "proxy", "lan", CLIENT_PROXY_S)
    harness.link("proxy", "wan", "server", "eth0", PROXY_SERVER_S, a_to_b=list(server_filters))
    harness.link("client", "eth1", "direct", "eth0", CLIENT_PROXY_S + PROXY_SERVER_S)
    return Net(harness, client, proxy, server, direct, rng)


def test_the_first_response_byte_comes_two_client_proxy_rtts_later_than_direct():
    net = build(app=ResponderApp(1000))
    via_proxy = SocksClient(Socks5ClientExchange(SERVER, SERVER_PORT), b"GET /\n", expect_bytes=1000)
    net.socks(via_proxy)
    direct = SocksClient(None, b"GET /\n", expect_bytes=1000)
    net.client.open(direct, CLIENT_DIRECT, SERVER_DIRECT, SERVER_PORT, 0.0)
    net.harness.run(100.0)
    rtt_end_to_end_s = RTT_CP_S + RTT_PS_S
    assert direct.first_byte_at == 2 * rtt_end_to_end_s  # handshake, request
    # Handshake (r), greeting (r), request + server handshake (r + R), request proper (r + R).
    assert via_proxy.result_at == 3 * RTT_CP_S + RTT_PS_S
    assert via_proxy.first_byte_at == direct.first_byte_at + 2 * RTT_CP_S
    assert bytes(via_proxy.received) == response_payload(1000) == bytes(direct.received)


def test_bytes_are_relayed_exactly_both_ways_and_the_reply_names_the_bound_address():
    upload = bytes(range(256)) * 20  # several segments each way
    net = build()
    client = SocksClient(Socks5ClientExchange(SERVER, SERVER_PORT), upload, expect_bytes=len(upload) + 5 * 4)
    net.socks(client)
    net.harness.run(100.0)
    (four_tuple,) = net.server.app.received
    assert net.server.app.stream() == upload
    assert bytes(client.received).replace(b"echo:", b"") == upload
    assert client.exchange.result.bound == (four_tuple[2], four_tuple[3]) and four_tuple[2] == PROXY_OUT
    assert client.closed.clean and not net.proxy.relays
    client_port = net.packets("client", "proxy")[0].packet.segment.src_port
    assert net.harness.events_of("proxy", Socks5Replied) == [Socks5Replied((CLIENT, client_port),
                                                                            (SERVER, SERVER_PORT), 0)]


@pytest.mark.parametrize("kind, icmp_code, code", [
    (ServerKind.CLOSED, None, REP.CONNECTION_REFUSED),
    (ServerKind.UNREACHABLE, IcmpUnreachableCode.HOST_UNREACHABLE, REP.HOST_UNREACHABLE),
    (ServerKind.UNREACHABLE, IcmpUnreachableCode.NET_UNREACHABLE, REP.NETWORK_UNREACHABLE),
])
def test_a_server_that_cannot_be_reached_gets_its_reply_code(kind, icmp_code, code):
    net = build(server_kind=kind, icmp_code=IcmpUnreachableCode.HOST_UNREACHABLE if icmp_code is None else icmp_code)
    client = SocksClient(Socks5ClientExchange(SERVER, SERVER_PORT))
    net.socks(client)
    net.harness.run(100.0)
    assert client.exchange.result == Socks5Result(Socks5Status.REFUSED, code)
    assert client.result_at == 3 * RTT_CP_S + RTT_PS_S
    assert client.closed.clean  # reply, then FIN both ways: nobody resets
    assert not net.proxy.relays and not net.proxy.connections or all(
        c.state is TcpState.TIME_WAIT for c in net.proxy.connections.values())


def test_a_silent_server_gets_the_timeout_reply_at_the_connect_timeout():
    net = build(server_filters=[lambda packet, now: []], connect_timeout_s=5.0)
    client = SocksClient(Socks5ClientExchange(SERVER, SERVER_PORT))
    net.socks(client)
    net.harness.run(100.0)
    request_at_proxy_s = 2 * RTT_CP_S + CLIENT_PROXY_S
    assert client.result_at == request_at_proxy_s + 5.0 + CLIENT_PROXY_S
    assert client.exchange.result == Socks5Result(Socks5Status.REFUSED, REP.TTL_EXPIRED)


def test_mptcp_on_the_client_leg_plain_towards_the_server():
    net = build()
    client = SocksClient(Socks5ClientExchange(SERVER, SERVER_PORT), b"hi", expect_bytes=7)
    net.socks(client, mptcp=True)
    net.harness.run(100.0)
    assert bytes(client.received) == b"echo:hi"
    assert [e.four_tuple[0] for e in net.harness.events_of("proxy", MptcpNegotiated)] == [PROXY_IN]
    (server_syn,) = net.packets("proxy", "server", TcpFlags.SYN)
    assert not any(isinstance(o, MpCapable) for o in server_syn.packet.segment.options)
    # A proxy without MPTCP: the client falls back, SOCKS works the same.
    net = build(proxy_mptcp=False)
    client = SocksClient(Socks5ClientExchange(SERVER, SERVER_PORT), b"hi", expect_bytes=7)
    net.socks(client, mptcp=True)
    net.harness.run(100.0)
    assert bytes(client.received) == b"echo:hi"
    assert net.client.mib["MPCapableFallbackSYNACK"] == 1 and not net.harness.events_of("proxy", MptcpNegotiated)


@pytest.mark.parametrize("mptcp", [False, True])
def test_a_server_reset_while_relaying_resets_the_client_leg(mptcp):
    net = build(app=EchoApp(reset_on=b"boom"))
    client = SocksClient(Socks5ClientExchange(SERVER, SERVER_PORT), b"boom")
    net.socks(client, mptcp=mptcp)
    net.harness.run(100.0)
    fastclose = [d for d in net.packets("proxy", "client")
                 if any(isinstance(o, MpFastclose) for o in d.packet.segment.options)]
    if mptcp:
        assert len(fastclose) == 1 and client.closed.reason.name == "ABORTED"
    else:
        assert not fastclose and client.reset is not None
    assert not net.proxy.relays and not net.proxy.connections


def test_an_ipv6_destination_without_an_ipv6_leg_is_network_unreachable():
    net = build()
    client = SocksClient(Socks5ClientExchange(IPv6Address("2001:db8::80"), SERVER_PORT))
    net.socks(client)
    net.harness.run(100.0)
    assert client.exchange.result == Socks5Result(Socks5Status.REFUSED, REP.NETWORK_UNREACHABLE)
    assert client.result_at == 3 * RTT_CP_S and not net.packets("proxy", "server")
