"""The MP_CONVERT proxy: what a SYN asks (option, SYN payload, on the path), the session, and whole
connections through MpConvertProxyHost in the harness (exact setup times, exact bytes, refusals,
middleboxes, the I flag, address preservation).

Topology: client --125 ms-- proxy --250 ms-- server (one-way delays, exact in binary). The proxy
sits on the path, so the same chain serves explicit requests (SYNs to the proxy's address) and
implicit ones (SYNs to the server's address that cross it).
"""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv6Address

import pytest

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason, FellBackToTcp, MptcpNegotiated
from mpsim.proto.harness import Harness
from mpsim.proto.host import Host
from mpsim.proto.middlebox import SegmentClass, StripMode, StripOptions
from mpsim.proto.mp_convert_proxy import (
    MP_CONVERT_SESSION_TRANSITIONS,
    MpConvertProxied,
    MpConvertProxyHost,
    MpConvertProxyPolicy,
    MpConvertRejected,
    MpConvertRejection,
    MpConvertRequest,
    MpConvertReverted,
    MpConvertSession,
    MpConvertSessionState,
    SignallingMode,
    read_explicit_request,
    read_implicit_request,
)
from mpsim.proto.mptcp import MptcpClientExtension
from mpsim.proto.relay import (
    AcceptUpstream,
    ConverterTiming,
    DownstreamFailure,
    OpenDownstream,
    Report,
    ResetDownstream,
    ResetUpstream,
    SendDownstream,
    UpstreamResetReason,
)
from mpsim.proto.server import ServerApp, ServerHost, ServerKind
from mpsim.proto.tcp import (
    Closed,
    DataReceived,
    Established,
    PeerClosed,
    ResetReceived,
    TcpExtension,
    TcpPolicy,
    TcpState,
)
from mpsim.wire.mp_convert import MpConvert
from mpsim.wire.mptcp import MpCapable, MpCapableFlags, MpExperimental, MpFastclose
from mpsim.wire.options import NoOperation, TcpOptionKind
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment
from mpsim.wire.syn_payload import SynPayloadSignal, encode_syn_payload

CLIENT = IPv4Address("198.18.0.2")
PROXY_IN = IPv4Address("198.18.0.1")
PROXY_OUT = IPv4Address("198.19.0.1")
SERVER = IPv4Address("198.19.0.80")
PROXY_OUT6 = IPv6Address("2001:db8:1::1")
SERVER6 = IPv6Address("2001:db8:1::80")
PROXY_PORT = 443
SERVER_PORT = 80
CLIENT_PROXY_S = 0.125  # one-way delays, exact in binary so that times compare exactly
PROXY_SERVER_S = 0.25
RTT_CP_S = 2 * CLIENT_PROXY_S
RTT_PS_S = 2 * PROXY_SERVER_S
MPC = MpCapable(1, MpCapableFlags.H)


# --- what a SYN asks --------------------------------------------------------------------------------


def syn(dst=PROXY_IN, dst_port=PROXY_PORT, options=(MPC,), payload=b"") -> IpPacket:
    return IpPacket(CLIENT, dst, TcpSegment(40000, dst_port, 1, 0, TcpFlags.SYN, 65535, tuple(options), payload))


def signal(*options, data=b"") -> bytes:
    return encode_syn_payload(SynPayloadSignal(tuple(options), data))


CONVERT = MpConvert(SERVER, SERVER_PORT)
#: MP_CONVERT experiments whose flags and length disagree: what a client that cut the option to
#: fit, or a buggy one, would send (docs/mp-convert.md 1: decoding rules).
ODD_OPTIONS = {
    "ipv6 flag, ipv4 address": MpExperimental(0x2, b"\xc0" + SERVER.packed),
    "ipv6 address cut to fit": MpExperimental(0x2, b"\xc0" + SERVER6.packed[:12]),
    "port flag, port cut off": MpExperimental(0x6, b"\xc0" + SERVER6.packed),
    "reserved flag set": MpExperimental(0x1, b"\xc0" + SERVER.packed),
    "port flag, no address": MpExperimental(0x4, b"\xc0\x00\x50"),
}


@pytest.mark.parametrize("packet, expected", [
    (syn(options=(MPC, CONVERT.to_option())),
     MpConvertRequest((SERVER, SERVER_PORT), SignallingMode.OPTION)),
    # No port: the SYN's own destination port is meant (docs/mp-convert.md 1, Modes).
    (syn(options=(MPC, MpConvert(SERVER).to_option())),
     MpConvertRequest((SERVER, PROXY_PORT), SignallingMode.OPTION)),
    (syn(options=(MPC, MpConvert(SERVER, 80, implicit=True).to_option())),
     MpConvertRequest((SERVER, 80), SignallingMode.OPTION, implicit_flag=True)),
    # In the payload: the 10-byte option and its EOL are the signalling.
    (syn(payload=signal(CONVERT, data=b"GET /")),
     MpConvertRequest((SERVER, SERVER_PORT), SignallingMode.SYN_PAYLOAD, signalling_bytes=11)),
    # The header option wins: the payload is data, even when it would decode as signalling.
    (syn(options=(MPC, CONVERT.to_option()), payload=signal(MpConvert(PROXY_OUT, 1)) + b"x"),
     MpConvertRequest((SERVER, SERVER_PORT), SignallingMode.OPTION)),
    (syn(), MpConvertRejection.NO_SIGNAL),
    (syn(payload=b"\x00\x1d\x12\x34"), MpConvertRejection.NO_SIGNAL),  # decodes, but signals nothing
    (syn(payload=b"GET / HTTP/1.1\r\n"), MpConvertRejection.MALFORMED_SIGNAL),
    (syn(options=(MPC, CONVERT.to_option(), MpConvert(SERVER, 81).to_option())), MpConvertRejection.MALFORMED_SIGNAL),
    (syn(payload=signal(CONVERT, CONVERT)), MpConvertRejection.MALFORMED_SIGNAL),
    (syn(options=(MPC, MpConvert(implicit=True).to_option())), MpConvertRejection.NO_DESTINATION),
    (syn(options=(MpConvert(SERVER, 80, implicit=True).to_option(),)), MpConvertRejection.MPTCP_REQUIRED),
    (syn(options=(MPC, MpConvert(PROXY_OUT, 80).to_option())), MpConvertRejection.LOOP),
], ids=["option", "option-no-port", "option-i-flag", "payload", "option-wins", "nothing", "payload-no-convert",
        "payload-text", "two-options", "two-in-payload", "no-address", "i-without-mpc", "loop"])
def test_what_an_explicit_syn_asks(packet, expected):
    assert read_explicit_request(packet, own_addresses=(PROXY_IN, PROXY_OUT)) == expected


@pytest.mark.parametrize("odd", list(ODD_OPTIONS.values()), ids=list(ODD_OPTIONS))
def test_odd_options_are_malformed_in_the_header_and_in_the_payload(odd):
    assert read_explicit_request(syn(options=(MPC, odd))) is MpConvertRejection.MALFORMED_SIGNAL
    assert read_implicit_request(syn(SERVER, SERVER_PORT, options=(MPC, odd))) is MpConvertRejection.MALFORMED_SIGNAL
    payload = signal(NoOperation()) [:-1] + odd.encode() + b"\x00data"
    assert read_explicit_request(syn(payload=payload)) is MpConvertRejection.MALFORMED_SIGNAL


def test_the_explicit_service_reads_only_what_its_policy_says():
    both = syn(options=(MPC, CONVERT.to_option()), payload=signal(MpConvert(SERVER, 8080)))
    assert read_explicit_request(both, read_option=False).destination == (SERVER, 8080)
    assert read_explicit_request(syn(payload=signal(CONVERT)), read_syn_payload=False) is MpConvertRejection.NO_SIGNAL


@pytest.mark.parametrize("options, intercept_any, expected", [
    ((MPC, MpConvert(implicit=True).to_option()), False, True),
    ((MPC,), False, None),  # plain MPTCP to a server: not the proxy's business
    ((MPC,), True, False),  # intercepted, but without the I flag
    ((MPC, MpConvert().to_option()), False, None),  # an MP_CONVERT that asks nothing
    ((MPC, MpConvert(SERVER, 80, implicit=True).to_option()), True, None),  # for another proxy
    ((MpConvert(implicit=True).to_option(),), True, None),  # no MP_CAPABLE: not MPTCP at all
    ((), True, None),
])
def test_what_the_on_path_proxy_intercepts(options, intercept_any, expected):
    request = read_implicit_request(syn(SERVER, SERVER_PORT, options=options), intercept_any_mp_capable=intercept_any)
    if expected is None:
        assert request is None
    else:
        assert request == MpConvertRequest((SERVER, SERVER_PORT), SignallingMode.IMPLICIT, implicit_flag=expected)


def test_a_policy_must_offer_some_service():
    with pytest.raises(ValueError):
        MpConvertProxyPolicy()
    with pytest.raises(ValueError):
        MpConvertProxyPolicy(explicit_ports=(443,), read_option=False, read_syn_payload=False)


# --- the session --------------------------------------------------------------------------------------


CLIENT_END = (CLIENT, 40000)


def drain(session) -> list:
    out = []
    while (decision := session.next_decision()) is not None:
        out.append(decision)
    return out


def test_the_session_opens_at_once_strips_the_signalling_and_replies_with_the_synack():
    request = MpConvertRequest((SERVER, 80), SignallingMode.SYN_PAYLOAD, signalling_bytes=11)
    session = MpConvertSession(request, CLIENT_END, MpConvertProxyPolicy(explicit_ports=(443,)), 0.0)
    assert drain(session) == [OpenDownstream(SERVER, 80)]
    session.receive_upstream(b"0123456789", 0.0)  # all signalling, in two pieces
    session.receive_upstream(b"!GET", 0.0)
    assert drain(session) == [] and session.get_timer() == 30.0
    session.downstream_connected(0.5, (MPC,))
    proxied = MpConvertProxied(CLIENT_END, (SERVER, 80), SignallingMode.SYN_PAYLOAD, server_mptcp=True)
    assert drain(session) == [AcceptUpstream(), Report(proxied), SendDownstream(b"GET")]
    assert session.state is MpConvertSessionState.RELAYING and session.get_timer() is None
    with pytest.raises(LocalProtocolError):
        session.downstream_connected(0.6, ())


@pytest.mark.parametrize("timing, first", [(ConverterTiming.RFC, [AcceptUpstream()]), (ConverterTiming.SOCKET, [])])
def test_only_rfc_timing_releases_a_synack(timing, first):
    session = MpConvertSession(MpConvertRequest((SERVER, 80), SignallingMode.OPTION), CLIENT_END,
                               MpConvertProxyPolicy(explicit_ports=(443,), timing=timing), 0.0)
    drain(session)
    session.downstream_connected(0.5, ())
    assert drain(session)[:-1] == first


@pytest.mark.parametrize("fail, failure, reason", [
    (lambda s: s.downstream_reset(1.0), DownstreamFailure.RESET, UpstreamResetReason.DOWNSTREAM_RESET),
    (lambda s: s.downstream_unreachable(1.0, 1), DownstreamFailure.UNREACHABLE, UpstreamResetReason.DOWNSTREAM_FAILED),
    (lambda s: s.handle_timer(30.0), DownstreamFailure.TIMEOUT, UpstreamResetReason.DOWNSTREAM_FAILED),
])
def test_every_downstream_failure_is_an_rst_to_the_client(fail, failure, reason):
    request = MpConvertRequest((SERVER, 80), SignallingMode.OPTION)
    session = MpConvertSession(request, CLIENT_END, MpConvertProxyPolicy(explicit_ports=(443,)), 0.0)
    drain(session)
    fail(session)
    decisions = [d for d in drain(session) if not isinstance(d, ResetDownstream)]
    assert decisions == [ResetUpstream(reason), Report(MpConvertProxied(CLIENT_END, (SERVER, 80),
                                                                        SignallingMode.OPTION, failure))]
    assert session.done and session.get_timer() is None


@pytest.mark.parametrize("implicit_flag, reset_on_revert, resets", [(True, True, True), (False, True, False),
                                                                     (True, False, False)])
def test_a_reverted_client_leg_is_reset_only_under_the_i_flag(implicit_flag, reset_on_revert, resets):
    request = MpConvertRequest((SERVER, 80), SignallingMode.IMPLICIT, implicit_flag=implicit_flag)
    session = MpConvertSession(request, CLIENT_END,
                               MpConvertProxyPolicy(implicit=True, reset_on_revert=reset_on_revert), 0.0)
    drain(session)
    session.upstream_fell_back(0.5)
    decisions = drain(session)
    if resets:
        assert decisions == [ResetDownstream(), ResetUpstream(UpstreamResetReason.UPSTREAM_REVERTED),
                             Report(MpConvertReverted(CLIENT_END, (SERVER, 80)))]
        assert session.done
    else:
        assert decisions == [] and not session.done


def test_the_transition_table_covers_every_state():
    assert set(MP_CONVERT_SESSION_TRANSITIONS) == set(MpConvertSessionState)
    assert all(targets for state, targets in MP_CONVERT_SESSION_TRANSITIONS.items()
               if state is not MpConvertSessionState.DONE)


# --- harness: client, proxy and server ----------------------------------------------------------------


class AddSynOptions(TcpExtension):
    """Puts ``options`` on every SYN (what a client scheme for MP_CONVERT does)."""

    def __init__(self, *options) -> None:
        self.options = options

    def syn_options(self, conn, retransmission):
        return self.options


class EchoApp(ServerApp):
    """Answers each chunk with b"echo:" + chunk; resets the connection on ``reset_on``."""

    def __init__(self, reset_on: bytes | None = None) -> None:
        super().__init__()
        self.reset_on = reset_on

    def on_data(self, host, conn, data, now):
        if self.reset_on is not None and self.reset_on in data:
            host.abort(conn, now)
        else:
            conn.send(b"echo:" + data, now)


@dataclasses.dataclass
class Client:
    """A test owner: sends ``data`` once established, closes once it has received ``expect_bytes``."""

    data: bytes = b""
    expect_bytes: int = 0
    conn: object = None
    established_at: float | None = None
    reset_at: float | None = None
    reset: ResetReceived | None = None
    closed: Closed | None = None
    closed_at: float | None = None
    received: bytearray = dataclasses.field(default_factory=bytearray)
    first_byte_at: float | None = None

    def on_tcp_event(self, host, conn, event, now):
        self.conn = conn
        if isinstance(event, Established):
            self.established_at = now
            if self.data:
                conn.send(self.data, now)
        elif isinstance(event, DataReceived):
            self.first_byte_at = self.first_byte_at if self.first_byte_at is not None else now
            self.received += event.data
            if len(self.received) >= self.expect_bytes and conn.state is TcpState.ESTABLISHED:
                conn.close(now)
        elif isinstance(event, PeerClosed) and conn.state is TcpState.CLOSE_WAIT:
            conn.close(now)
        elif isinstance(event, ResetReceived):
            self.reset, self.reset_at = event, now
        elif isinstance(event, Closed):
            self.closed, self.closed_at = event, now


@dataclasses.dataclass
class Net:
    harness: Harness
    client: Host
    proxy: MpConvertProxyHost
    server: ServerHost
    rng: random.Random

    def connect(self, owner: Client, dst=PROXY_IN, port=PROXY_PORT, *, mptcp=True, options=(), payload=b"", now=0.0):
        extensions = ((MptcpClientExtension(rng=self.rng, mib=self.client.mib),) if mptcp else ()) + (
            (AddSynOptions(*options),) if options else ())
        return self.client.open(owner, CLIENT, dst, port, now, syn_payload=payload, extensions=extensions)

    def packets(self, src, dst, flags=None):
        return [d for d in self.harness.log if d.src == src and d.dst == dst and not d.dropped
                and (flags is None or d.packet.segment.flags & flags == flags)]

    def events(self, kind):
        return self.harness.events_of("proxy", kind)


def build(*, timing=ConverterTiming.RFC, server_kind=ServerKind.LEGACY_DROP, app=None, client_filters=(),
          server_filters=(), client_policy=None, ipv6=False, **policy_changes) -> Net:
    rng = random.Random(7)
    harness = Harness()
    client = harness.add("client", Host("client", {"eth0": CLIENT}, rng=rng, policy=client_policy))
    interfaces = {"lan": PROXY_IN, "wan": PROXY_OUT} | ({"wan6": PROXY_OUT6} if ipv6 else {})
    policy = MpConvertProxyPolicy(**{"explicit_ports": (PROXY_PORT,), "timing": timing, **policy_changes})
    proxy = harness.add("proxy", MpConvertProxyHost("proxy", interfaces, rng=rng, client_interface="lan",
                                                    server_interfaces=tuple(i for i in interfaces if i != "lan"),
                                                    policy=policy))
    server = harness.add("server", ServerHost("server", SERVER, server_kind, rng=rng,
                                              app=app if app is not None else EchoApp(), ports=(SERVER_PORT,)))
    harness.link("client", "eth0", "proxy", "lan", CLIENT_PROXY_S, a_to_b=list(client_filters))
    harness.link("proxy", "wan", "server", "eth0", PROXY_SERVER_S, a_to_b=list(server_filters))
    if ipv6:
        server6 = harness.add("server6", ServerHost("server6", SERVER6, ServerKind.LEGACY_DROP, rng=rng,
                                                    app=EchoApp(), ports=(SERVER_PORT,)))
        harness.link("proxy", "wan6", "server6", "eth0", PROXY_SERVER_S)
        server.server6 = server6
    return Net(harness, client, proxy, server, rng)


def options_of(delivery) -> list:
    return [o.name for o in delivery.packet.segment.options]


# --- explicit mode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("timing", list(ConverterTiming))
def test_explicit_option_setup_time_and_exact_relay_both_ways(timing):
    net = build(timing=timing)
    client = Client(b"GET / and more", expect_bytes=len(b"echo:GET / and more"))
    net.connect(client, options=(CONVERT.to_option(),))
    net.harness.run(100.0)
    (synack,) = net.packets("proxy", "client", TcpFlags.SYN | TcpFlags.ACK)
    if timing is ConverterTiming.RFC:
        # The SYN-ACK waits for the server's: one client-proxy RTT plus one proxy-server RTT.
        assert client.established_at == synack.time_s + CLIENT_PROXY_S - CLIENT_PROXY_S == RTT_CP_S + RTT_PS_S
    else:
        assert client.established_at == RTT_CP_S
    assert "mp_capable" in options_of(synack) and synack.packet.src == PROXY_IN
    (server_syn,) = net.packets("proxy", "server", TcpFlags.SYN)
    assert server_syn.packet.src == PROXY_OUT and "mp_experimental" not in options_of(server_syn)
    assert net.server.app.stream() == b"GET / and more"
    assert bytes(client.received) == b"echo:GET / and more"
    assert client.closed is not None and client.closed.clean
    assert not net.proxy.relays and not net.proxy.connections or all(
        c.state is TcpState.TIME_WAIT for c in net.proxy.connections.values())
    (proxied,) = net.events(MpConvertProxied)
    assert proxied.destination == (SERVER, SERVER_PORT) and proxied.mode is SignallingMode.OPTION
    assert [e.four_tuple[0] for e in net.events(MptcpNegotiated)] == [PROXY_IN]  # the client leg is MPTCP


def test_explicit_syn_payload_signalling_is_consumed_and_its_bytes_acknowledged():
    dns_query = b"\x00\x1d\x12\x34\x01\x00"  # starts with 0x00: the EOL before it must not eat it
    payload = signal(CONVERT, data=dns_query)
    net = build()
    client = Client(expect_bytes=5 + len(dns_query))
    conn = net.connect(client, payload=payload)
    net.harness.run(100.0)
    (synack,) = net.packets("proxy", "client", TcpFlags.SYN | TcpFlags.ACK)
    assert conn.syn_data_acked_bytes == len(payload)  # signalling included: it took sequence space
    assert client.established_at == RTT_CP_S + RTT_PS_S
    assert net.server.app.stream() == dns_query
    assert bytes(client.received) == b"echo:" + dns_query
    assert net.events(MpConvertProxied)[0].mode is SignallingMode.SYN_PAYLOAD


def test_with_the_option_the_syn_payload_is_data_even_if_it_starts_with_zero():
    net = build()
    client = Client(expect_bytes=len(b"echo:\x00data"))
    net.connect(client, options=(CONVERT.to_option(),), payload=b"\x00data")
    net.harness.run(100.0)
    assert net.server.app.stream() == b"\x00data"


@pytest.mark.parametrize("timing", list(ConverterTiming))
def test_a_closed_server_port_resets_the_client(timing):
    net = build(timing=timing, server_kind=ServerKind.CLOSED)
    client = Client()
    net.connect(client, options=(CONVERT.to_option(),))
    net.harness.run(100.0)
    assert client.closed_at == RTT_CP_S + RTT_PS_S
    if timing is ConverterTiming.RFC:
        # The RST answers the SYN itself: to the client the proxy looks like a closed port.
        assert client.established_at is None and client.reset.refused
        assert not net.packets("proxy", "client", TcpFlags.SYN | TcpFlags.ACK)
    else:
        # Established already, over MPTCP: the server's refusal arrives as MP_FASTCLOSE (RFC 8803 5).
        assert client.established_at == RTT_CP_S and client.closed.reason.name == "ABORTED"
        assert [d for d in net.packets("proxy", "client")
                if any(isinstance(o, MpFastclose) for o in d.packet.segment.options)]
    (proxied,) = net.events(MpConvertProxied)
    assert proxied.failure is DownstreamFailure.RESET
    assert not net.proxy.relays


def test_an_unreachable_server_resets_the_client():
    net = build(server_kind=ServerKind.UNREACHABLE)  # the last router answers with ICMP
    client = Client()
    net.connect(client, options=(CONVERT.to_option(),))
    net.harness.run(100.0)
    assert client.reset_at == RTT_CP_S + RTT_PS_S and client.reset.refused
    assert net.events(MpConvertProxied)[0].failure is DownstreamFailure.UNREACHABLE


def test_a_silent_server_resets_the_client_at_the_connect_timeout_with_mirrored_syns():
    sent = []
    net = build(server_filters=[lambda packet, now: sent.append(now) or []], connect_timeout_s=5.0)
    client = Client()
    net.connect(client, options=(CONVERT.to_option(),))
    net.harness.run(100.0)
    # RFC timing: the server-side SYN goes again only when the client's does (0, 1 and 3 s).
    assert sent == [CLIENT_PROXY_S, 1 + CLIENT_PROXY_S, 3 + CLIENT_PROXY_S]
    assert client.reset_at == CLIENT_PROXY_S + 5.0 + CLIENT_PROXY_S and client.reset.refused
    assert net.events(MpConvertProxied)[0].failure is DownstreamFailure.TIMEOUT
    assert not net.proxy.relays and not net.proxy.connections


def test_a_server_reset_while_relaying_becomes_mp_fastclose():
    net = build(app=EchoApp(reset_on=b"boom"))
    client = Client(b"boom")
    net.connect(client, options=(CONVERT.to_option(),))
    net.harness.run(100.0)
    fastclose = [d for d in net.packets("proxy", "client")
                 if any(isinstance(o, MpFastclose) for o in d.packet.segment.options)]
    assert len(fastclose) == 1  # RFC 8803 5: a downstream reset is MP_FASTCLOSE upstream
    assert client.closed.reason.name == "ABORTED"  # the client answers MP_FASTCLOSE with RST
    assert not net.proxy.relays and not net.proxy.connections


@pytest.mark.parametrize("odd", list(ODD_OPTIONS.values()), ids=list(ODD_OPTIONS))
def test_an_odd_mp_convert_is_refused_cleanly_by_the_explicit_proxy(odd):
    net = build()
    client = Client()
    net.connect(client, options=(odd,))
    net.harness.run(100.0)
    assert client.reset_at == RTT_CP_S and client.reset.refused
    assert not net.packets("proxy", "server")
    assert net.events(MpConvertRejected) == [MpConvertRejected((CLIENT, client.conn.local_port),
                                                               MpConvertRejection.MALFORMED_SIGNAL, forwarded=False)]
    assert not net.proxy.relays and not net.proxy.connections


@pytest.mark.parametrize("mode", list(StripMode))
def test_a_stripped_mp_convert_gets_an_rst_from_the_explicit_proxy(mode):
    strip = StripOptions(frozenset({TcpOptionKind.MPTCP}), mode=mode)
    net = build(client_filters=[strip])
    client = Client()
    net.connect(client, options=(CONVERT.to_option(),))
    net.harness.run(100.0)
    # A plain SYN without a destination: nothing to relay to, and nothing to say it with but RST.
    assert client.reset_at == RTT_CP_S and client.reset.refused
    assert net.events(MpConvertRejected)[0].reason is MpConvertRejection.NO_SIGNAL
    assert not net.packets("proxy", "server")


def test_the_i_flag_without_mp_capable_is_refused_and_without_it_the_relay_is_plain_tcp():
    net = build()
    refused = Client()
    net.connect(refused, mptcp=False, options=(MpConvert(SERVER, SERVER_PORT, implicit=True).to_option(),))
    plain = Client(b"hi", expect_bytes=7)
    net.connect(plain, mptcp=False, options=(CONVERT.to_option(),), now=0.5)
    net.harness.run(100.0)
    assert refused.reset.refused and net.events(MpConvertRejected)[0].reason is MpConvertRejection.MPTCP_REQUIRED
    assert bytes(plain.received) == b"echo:hi" and plain.closed.clean
    assert not net.events(MptcpNegotiated)


def test_an_ipv6_destination_is_relayed_by_a_proxy_with_an_ipv6_leg_and_refused_without():
    convert6 = MpConvert(SERVER6, SERVER_PORT)
    no_timestamps = TcpPolicy(timestamps=False)  # beside a Linux SYN with timestamps it would not fit
    net = build(ipv6=True, client_policy=no_timestamps)
    client = Client(b"v6", expect_bytes=7)
    net.connect(client, options=(convert6.to_option(),))
    net.harness.run(100.0)
    (syn_in,) = net.packets("client", "proxy", TcpFlags.SYN)
    assert syn_in.packet.segment.options[-1] == convert6.to_option()
    assert net.server.server6.app.stream() == b"v6" and bytes(client.received) == b"echo:v6"
    assert net.packets("proxy", "server6", TcpFlags.SYN)[0].packet.src == PROXY_OUT6

    net = build(client_policy=no_timestamps)  # no IPv6 interface: nowhere to relay to
    client = Client()
    net.connect(client, options=(convert6.to_option(),))
    net.harness.run(100.0)
    assert client.reset_at == RTT_CP_S and client.reset.refused
    assert net.events(MpConvertProxied)[0].failure is DownstreamFailure.NO_ROUTE


# --- implicit mode: on the path ------------------------------------------------------------------------


IMPLICIT = MpConvert(implicit=True)


def test_the_on_path_proxy_intercepts_answers_as_the_server_and_preserves_the_client_address():
    net = build(implicit=True)
    client = Client(b"GET /", expect_bytes=10)
    conn = net.connect(client, SERVER, SERVER_PORT, options=(IMPLICIT.to_option(),))
    net.harness.run(100.0)
    (synack,) = net.packets("proxy", "client", TcpFlags.SYN | TcpFlags.ACK)
    assert (synack.packet.src, synack.packet.segment.src_port) == (SERVER, SERVER_PORT)
    assert "mp_capable" in options_of(synack)
    assert client.established_at == RTT_CP_S + RTT_PS_S  # RFC timing on the path too
    # Address preservation: the server sees the client's own 4-tuple, and no MP_CONVERT.
    (server_syn,) = net.packets("proxy", "server", TcpFlags.SYN)
    assert (server_syn.packet.src, server_syn.packet.segment.src_port) == (CLIENT, conn.local_port)
    assert "mp_experimental" not in options_of(server_syn)
    assert net.server.app.stream((SERVER, SERVER_PORT, CLIENT, conn.local_port)) == b"GET /"
    assert bytes(client.received) == b"echo:GET /" and client.closed.clean
    assert net.events(MpConvertProxied)[0].mode is SignallingMode.IMPLICIT
    assert net.proxy.mib["MpConvertIntercepted"] == 1


def test_the_on_path_proxy_forwards_other_traffic_untouched():
    net = build(implicit=True)
    plain = Client(b"plain", expect_bytes=10)
    conn = net.connect(plain, SERVER, SERVER_PORT, mptcp=False)
    mptcp = Client(b"e2e", expect_bytes=8)
    net.connect(mptcp, SERVER, SERVER_PORT, now=0.5)  # MPTCP without the I flag
    net.harness.run(100.0)
    # Every packet crossed unchanged, in both directions, and only the server answered.
    assert [d.packet for d in net.packets("client", "proxy")] == [d.packet for d in net.packets("proxy", "server")]
    assert [d.packet for d in net.packets("server", "proxy")] == [d.packet for d in net.packets("proxy", "client")]
    assert net.server.app.stream((SERVER, SERVER_PORT, CLIENT, conn.local_port)) == b"plain"
    assert bytes(plain.received) == b"echo:plain" and bytes(mptcp.received) == b"echo:e2e"
    assert not net.proxy.relays and not net.proxy.connections and net.proxy.mib["MpConvertIntercepted"] == 0
    assert net.proxy.mib["IpForwDatagrams"] == len([d for d in net.harness.log if d.dst == "proxy"])


@pytest.mark.parametrize("mode", list(StripMode))
def test_a_stripped_signal_is_not_intercepted(mode):
    strip = StripOptions(frozenset({TcpOptionKind.MPTCP}), classes=frozenset({SegmentClass.SYN}), mode=mode)
    net = build(implicit=True, client_filters=[strip])
    client = Client(b"x", expect_bytes=6)
    net.connect(client, SERVER, SERVER_PORT, options=(IMPLICIT.to_option(),))
    net.harness.run(100.0)
    assert bytes(client.received) == b"echo:x"  # end to end, with the server, as plain TCP
    assert net.proxy.mib["MpConvertIntercepted"] == 0 and not net.proxy.connections
    (synack,) = net.packets("server", "proxy", TcpFlags.SYN | TcpFlags.ACK)
    assert [d.packet for d in net.packets("proxy", "client", TcpFlags.SYN | TcpFlags.ACK)] == [synack.packet]


@pytest.mark.parametrize("odd", list(ODD_OPTIONS.values())[:2], ids=list(ODD_OPTIONS)[:2])
def test_an_odd_mp_convert_crossing_the_proxy_is_forwarded_and_reported(odd):
    net = build(implicit=True)
    client = Client(b"x", expect_bytes=6)
    net.connect(client, SERVER, SERVER_PORT, options=(odd,))
    net.harness.run(100.0)
    (server_syn,) = net.packets("proxy", "server", TcpFlags.SYN)
    assert odd in server_syn.packet.segment.options  # untouched: the server ignores it (RFC 9293 MUST-6)
    assert bytes(client.received) == b"echo:x"
    assert net.events(MpConvertRejected)[0] == MpConvertRejected((CLIENT, client.conn.local_port),
                                                                  MpConvertRejection.MALFORMED_SIGNAL, forwarded=True)


def test_a_server_that_speaks_mptcp_gets_an_mptcp_server_leg():
    net = build(implicit=True, server_kind=ServerKind.MPTCP_V1)
    client = Client(b"x", expect_bytes=6)
    net.connect(client, SERVER, SERVER_PORT, options=(IMPLICIT.to_option(),))
    net.harness.run(100.0)
    assert bytes(client.received) == b"echo:x"
    assert net.events(MpConvertProxied)[0].server_mptcp  # and still converted: the I flag asked for the proxy
    local_ends = {e.four_tuple[0] for e in net.events(MptcpNegotiated)}
    assert local_ends == {SERVER, CLIENT}  # the client leg (answered as SERVER) and the server leg (from CLIENT)
    assert not net.events(FellBackToTcp)


def test_an_unreachable_server_on_the_path_resets_the_client():
    net = build(implicit=True, server_kind=ServerKind.UNREACHABLE)
    client = Client()
    net.connect(client, SERVER, SERVER_PORT, options=(IMPLICIT.to_option(),))
    net.harness.run(100.0)
    assert client.reset_at == RTT_CP_S + RTT_PS_S and client.reset.refused
    assert net.events(MpConvertProxied)[0].failure is DownstreamFailure.UNREACHABLE


# --- the I flag: do not revert ---------------------------------------------------------------------------


#: A middlebox that lets MP_CAPABLE through on the SYN but strips MPTCP options afterwards: the
#: client leg falls back to TCP at the third ACK (RFC 8684 3.7).
def strip_after_syn():
    return StripOptions(frozenset({TcpOptionKind.MPTCP}),
                        classes=frozenset({SegmentClass.THIRD_ACK, SegmentClass.DATA}))


@pytest.mark.parametrize("dst, options, policy", [
    (SERVER, (IMPLICIT.to_option(),), {"implicit": True}),
    (PROXY_IN, (MpConvert(SERVER, SERVER_PORT, implicit=True).to_option(),), {}),
], ids=["implicit", "explicit"])
def test_with_the_i_flag_a_reverted_client_leg_resets_both_legs(dst, options, policy):
    net = build(client_filters=[strip_after_syn()], **policy)
    client = Client(b"x")
    port = PROXY_PORT if dst == PROXY_IN else SERVER_PORT
    net.connect(client, dst, port, options=options)
    net.harness.run(100.0)
    assert [e.reason for e in net.events(FellBackToTcp) if e.four_tuple[1] == port] == [
        FallbackReason.MP_CAPABLE_MISSING_ACK]
    assert len(net.events(MpConvertReverted)) == 1
    assert client.reset is not None and not client.reset.refused  # established, then reset
    assert net.server.app.stream() == b"" and net.server.app.closes  # the server leg was reset too
    assert not net.proxy.relays and not net.proxy.connections


@pytest.mark.parametrize("dst, options, policy", [
    (SERVER, (), {"implicit": True, "intercept_any_mp_capable": True}),
    (PROXY_IN, (CONVERT.to_option(),), {}),
], ids=["implicit-any", "explicit"])
def test_without_the_i_flag_a_reverted_client_leg_is_relayed_as_plain_tcp(dst, options, policy):
    net = build(client_filters=[strip_after_syn()], **policy)
    client = Client(b"x", expect_bytes=6)
    net.connect(client, dst, PROXY_PORT if dst == PROXY_IN else SERVER_PORT, options=options)
    net.harness.run(100.0)
    assert bytes(client.received) == b"echo:x" and client.closed.clean
    assert not net.events(MpConvertReverted) and net.proxy.mib["MpConvertIntercepted"] == (dst == SERVER)


class EchoThenCloseApp(EchoApp):
    """Echoes, then closes first: the server leg and, through the relay, the client leg close
    from the proxy's side, so the proxy's intercepted connection ends in TIME-WAIT."""

    def on_data(self, host, conn, data, now):
        super().on_data(host, conn, data, now)
        conn.close(now)


def test_the_on_path_proxy_reopens_an_intercepted_4_tuple_from_time_wait():
    # Host adopts intercepted connections through Host.foreign_listener, so the proxy gets Host's
    # TIME-WAIT reopening (RFC 1122 4.2.2.13, RFC 6191: a newer timestamp) for foreign addresses.
    net = build(implicit=True, app=EchoThenCloseApp())
    first = Client(b"one", expect_bytes=100)  # closes only after the proxy did
    conn = net.connect(first, SERVER, SERVER_PORT, options=(IMPLICIT.to_option(),))
    net.harness.run(10.0)
    key = (SERVER, SERVER_PORT, CLIENT, conn.local_port)
    old = net.proxy.connections[key]
    assert bytes(first.received) == b"echo:one" and first.closed.clean
    assert old.state is TcpState.TIME_WAIT and not net.client.connections
    # The same client port again, well inside the 60 s TIME-WAIT.
    second = Client(b"two", expect_bytes=100)
    extensions = (MptcpClientExtension(rng=net.rng, mib=net.client.mib), AddSynOptions(IMPLICIT.to_option()))
    net.client.open(second, CLIENT, SERVER, SERVER_PORT, 10.0, extensions=extensions, local_port=conn.local_port)
    net.harness.run(20.0)
    assert bytes(second.received) == b"echo:two" and second.closed.clean
    # At once: no challenge ACK from TIME-WAIT, no RST, no SYN retransmission a second later.
    assert second.established_at == 10.0 + RTT_CP_S + RTT_PS_S
    assert not [d for d in net.packets("client", "proxy", TcpFlags.RST) if d.time_s >= 10.0]
    assert old.state is TcpState.CLOSED and net.proxy.mib["MpConvertIntercepted"] == 2
    assert [e.mode for e in net.events(MpConvertProxied)] == [SignallingMode.IMPLICIT] * 2
