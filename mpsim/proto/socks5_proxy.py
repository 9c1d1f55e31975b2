"""SOCKS5 (RFC 1928): the 2-RTT-or-more proxy baseline RFC 8803 section 3 compares against.

Three pieces, split as the other proxies are (:mod:`mpsim.proto.relay`):

* :class:`Socks5Session`, the proxy's logic for one client on the byte stream: greeting, method
  selection (no authentication only), CONNECT request, the downstream connection, the reply,
  then relaying;
* :class:`Socks5ProxyHost`, the segment-level proxy: a :class:`~mpsim.proto.relay.RelayHost`
  listening on ``policy.port``, MPTCP on the client leg when the client offers it (an
  :class:`~mpsim.proto.mptcp.MptcpServerExtension` per connection, ``mptcp_policy``; KT's GiGA LTE
  service ran SOCKS5 over MPTCP this way), plain TCP towards the server;
* :class:`Socks5ClientExchange`, the client's side (sans-I/O): the greeting, then the request
  once the method selection came, then the outcome with the reply code.

What the client pays, with client-proxy RTT ``r`` and proxy-server RTT ``R`` (no data in the SYN,
RFC 1928 3-4): the TCP handshake (r), greeting and method selection (r), request, downstream
handshake and reply (r + R), then the request proper (r + R): the first response byte comes 2 r
later than over a direct connection, whose handshake and request cost (r + R) each.

Choices RFC 1928 leaves open (mpsim's, marked [I] where they follow an implementation):

* The proxy answers the SYN at once (a SOCKS server is an ordinary listener; SYN data is dropped,
  as Linux does without TFO) and, like Dante, does not wait for the greeting's reply to be read:
  bytes that follow a message in the same segment (a pipelining client) are parsed at once, and
  client data sent after the request waits for the server.
* A greeting that is not SOCKS5 (another version, no methods) is closed with FIN and no reply:
  whatever the proxy wrote would be misread. A greeting without "no authentication" gets method
  0xFF and FIN (RFC 1928 3: the client must then close).
* Request errors get a reply and FIN (RFC 1928 6: the server terminates the connection shortly
  after a failure reply): command other than CONNECT 0x07; address type other than 1, 3, 4 0x08;
  any other malformation 0x01. A domain name is looked up in ``policy.names`` (the simulation has
  no DNS); an unknown name gets 0x04 (Dante [I]).
* Downstream failures, via the errno Linux derives (``icmp_err_convert`` [I]) and Dante's
  ``errno2reply`` [I]: RST -> ECONNREFUSED -> 0x05; ICMP net unreachable -> 0x03, host
  unreachable or administratively prohibited -> 0x04, port unreachable -> 0x05, other codes
  0x01; no route for the family (ENETUNREACH) -> 0x03; no SYN-ACK within ``connect_timeout_s``
  (ETIMEDOUT) -> ``timeout_reply`` (0x06 TTL expired, Dante's choice; 0x01 is the other usual).
* Failure replies carry BND 0.0.0.0:0; success carries the address and port the server sees.
* A server reset while relaying resets the client leg (MP_FASTCLOSE when it is MPTCP).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.middlebox import IcmpUnreachableCode
from mpsim.proto.mptcp import MptcpPolicy, MptcpServerExtension
from mpsim.proto.relay import (
    CloseUpstream,
    ConverterTiming,
    DownstreamFailure,
    OpenDownstream,
    Relay,
    RelayHost,
    RelaySession,
    Report,
    SendUpstream,
    mptcp_fastclose_or_reset,
)
from mpsim.proto.tcp import IpAddress, Rng, SynDataMode, TcpConnection, TcpPolicy
from mpsim.wire.errors import MalformedError, TruncatedError
from mpsim.wire.segment import IpPacket
from mpsim.wire.socks5 import (
    Socks5AddressType,
    Socks5Command,
    Socks5Greeting,
    Socks5Method,
    Socks5MethodSelection,
    Socks5Reply,
    Socks5ReplyMessage,
    Socks5Request,
    decode_greeting,
    decode_method_selection,
    decode_reply,
    decode_request,
)

Endpoint = tuple[IpAddress, int]
SOCKS_PORT = 1080  # IANA "socks"

#: ICMP Destination Unreachable code -> REP, through Linux's errno (see the module doc).
ICMP_CODE_TO_REPLY: Mapping[int, Socks5Reply] = {
    IcmpUnreachableCode.NET_UNREACHABLE: Socks5Reply.NETWORK_UNREACHABLE,
    IcmpUnreachableCode.HOST_UNREACHABLE: Socks5Reply.HOST_UNREACHABLE,
    IcmpUnreachableCode.PORT_UNREACHABLE: Socks5Reply.CONNECTION_REFUSED,
    IcmpUnreachableCode.ADMIN_PROHIBITED: Socks5Reply.HOST_UNREACHABLE,
}
_NO_AUTH = Socks5Method.NO_AUTHENTICATION_REQUIRED


@dataclass(frozen=True, slots=True)
class Socks5ProxyPolicy:
    port: int = SOCKS_PORT
    request_timeout_s: float = 30.0  # greeting and request must be complete by then (Dante: 30 s [I])
    connect_timeout_s: float = 30.0  # no SYN-ACK from the server by then: ``timeout_reply`` (Dante: 30 s [I])
    timeout_reply: int = Socks5Reply.TTL_EXPIRED
    names: Mapping[str, IpAddress] = field(default_factory=dict)  # what the proxy's resolver knows

    def __post_init__(self) -> None:
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if not 0 < self.timeout_reply <= 0xFF:
            raise ValueError("timeout_reply must be a failure REP code (1..255)")


@dataclass(frozen=True, slots=True)
class Socks5Replied:
    """The proxy answered a request (``destination`` None: the request itself was refused)."""

    client: Endpoint
    destination: Endpoint | None
    reply_code: int


class Socks5SessionState(enum.Enum):
    EXPECT_GREETING = "expect_greeting"
    EXPECT_REQUEST = "expect_request"
    CONNECTING_DOWNSTREAM = "connecting_downstream"
    RELAYING = "relaying"
    DONE = "done"


_K = Socks5SessionState
#: The session's state changes and their causes (transitions as data, as ConverterSession's).
SOCKS5_SESSION_TRANSITIONS: dict[Socks5SessionState, dict[Socks5SessionState, str]] = {
    _K.EXPECT_GREETING: {
        _K.EXPECT_REQUEST: "greeting offers no authentication: method 0x00",
        _K.DONE: "no acceptable method (0xFF), not SOCKS5, the client left or the request timer"},
    _K.EXPECT_REQUEST: {
        _K.CONNECTING_DOWNSTREAM: "CONNECT to an address (or a known name): open the downstream connection",
        _K.DONE: "reply 0x01/0x04/0x07/0x08 and FIN, the client left or the request timer"},
    _K.CONNECTING_DOWNSTREAM: {
        _K.RELAYING: "server SYN-ACK: reply 0x00 with the bound address",
        _K.DONE: "server RST (0x05), ICMP (0x03/0x04/0x05), no route (0x03), timeout, or the client left"},
    _K.RELAYING: {_K.DONE: "both directions closed, or a reset on either side"},
    _K.DONE: {},
}


class Socks5Session(RelaySession):
    """The proxy's logic for one SOCKS5 client on the byte stream (see the module doc).

    Beyond :class:`~mpsim.proto.relay.RelaySession`'s inputs, :meth:`downstream_opened` tells it
    the address and port the downstream connection starts from (the success reply's BND).
    """

    CONNECTING = _K.CONNECTING_DOWNSTREAM
    RELAYING = _K.RELAYING
    DONE = _K.DONE
    TRANSITIONS = SOCKS5_SESSION_TRANSITIONS

    def __init__(self, client: Endpoint, policy: Socks5ProxyPolicy, now: float) -> None:
        super().__init__(_K.EXPECT_GREETING, timing=ConverterTiming.SOCKET, deadline_s=now + policy.request_timeout_s)
        self.client = client
        self.policy = policy
        self.destination: Endpoint | None = None
        self.bound: Endpoint = (IPv4Address(0), 0)
        self._buffer = bytearray()

    def downstream_opened(self, address: IpAddress, port: int) -> None:
        self.bound = (address, port)

    # --- the request phase ------------------------------------------------------------------------

    def _on_request_bytes(self, data: bytes, now: float) -> None:
        self._buffer += data
        if self.state is _K.EXPECT_GREETING:
            try:
                greeting, used = decode_greeting(self._buffer)
            except TruncatedError:
                return
            except MalformedError:
                self._close()  # not SOCKS5: any answer would be misread
                return
            del self._buffer[:used]
            if _NO_AUTH not in greeting.methods:
                self._decide(SendUpstream(Socks5MethodSelection(Socks5Method.NO_ACCEPTABLE_METHODS).encode()))
                self._close()
                return
            self._decide(SendUpstream(Socks5MethodSelection(_NO_AUTH).encode()))
            self._move(_K.EXPECT_REQUEST)
        if self.state is _K.EXPECT_REQUEST and self._buffer:
            self._on_request(now)

    def _on_request(self, now: float) -> None:
        try:
            request, used = decode_request(self._buffer)
        except TruncatedError:
            return
        except MalformedError:
            bad_type = len(self._buffer) > 3 and self._buffer[3] not in set(Socks5AddressType)
            self._refuse(Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED if bad_type else Socks5Reply.GENERAL_FAILURE)
            return
        rest = bytes(self._buffer[used:])
        self._buffer.clear()
        if request.command != Socks5Command.CONNECT:
            self._refuse(Socks5Reply.COMMAND_NOT_SUPPORTED)
            return
        address = self.policy.names.get(request.address) if isinstance(request.address, str) else request.address
        if address is None:
            self._refuse(Socks5Reply.HOST_UNREACHABLE)  # the name does not resolve
            return
        self.destination = (address, request.port)
        self._open(address, request.port, now + self.policy.connect_timeout_s, rest)

    def _on_request_incomplete(self, now: float) -> None:
        self._close()

    def _on_request_timeout(self, now: float) -> None:
        self._close()

    # --- the reply --------------------------------------------------------------------------------

    def _on_connected(self, server_synack_options: tuple) -> None:
        self._reply(Socks5Reply.SUCCEEDED, *self.bound)

    def _on_refused(self, failure: DownstreamFailure, icmp_code: int | None) -> None:
        if failure is DownstreamFailure.RESET:
            code = Socks5Reply.CONNECTION_REFUSED
        elif failure is DownstreamFailure.UNREACHABLE:
            code = ICMP_CODE_TO_REPLY.get(icmp_code, Socks5Reply.GENERAL_FAILURE)
        elif failure is DownstreamFailure.NO_ROUTE:
            code = Socks5Reply.NETWORK_UNREACHABLE
        else:
            code = self.policy.timeout_reply
        self._reply(code)
        self._decide(CloseUpstream())

    def _refuse(self, code: int) -> None:
        self._reply(code)
        self._close()

    def _reply(self, code: int, address: IpAddress = IPv4Address(0), port: int = 0) -> None:
        message = Socks5ReplyMessage(code, address, port)
        self._decide(SendUpstream(message.encode(), message))
        self._decide(Report(Socks5Replied(self.client, self.destination, code)))

    def _close(self) -> None:
        self._decide(CloseUpstream())
        self._end()


class Socks5ProxyHost(RelayHost):
    """A SOCKS5 proxy listening on ``policy.port`` of every address, relaying from the first of
    ``server_interfaces`` of the destination's family. ``mptcp_policy`` None: plain TCP on the
    client leg too."""

    def __init__(self, name: str, interfaces: dict[str, IpAddress], *, rng: Rng, server_interfaces: Sequence[str],
                 policy: Socks5ProxyPolicy | None = None, tcp_policy: TcpPolicy | None = None,
                 mptcp_policy: MptcpPolicy | None = MptcpPolicy()) -> None:
        super().__init__(name, interfaces, rng=rng, server_interfaces=server_interfaces, timing=ConverterTiming.SOCKET,
                         tcp_policy=tcp_policy,
                         upstream_extensions=self._client_leg_mptcp if mptcp_policy is not None else None,
                         on_downstream_reset=mptcp_fastclose_or_reset)
        self.proxy_policy = policy or Socks5ProxyPolicy()
        self.mptcp_policy = mptcp_policy
        self.listen(self.proxy_policy.port, self)

    def _client_leg_mptcp(self, syn: IpPacket) -> tuple:
        return (MptcpServerExtension(rng=self.rng, mib=self.mib, policy=self.mptcp_policy),)

    def on_syn(self, host: Host, packet: IpPacket, now: float) -> Acceptance:
        session = Socks5Session((packet.src, packet.segment.src_port), self.proxy_policy, now)
        return self.accept(session, packet, syn_data_mode=SynDataMode.DROP)

    def open_downstream(self, relay: Relay, request: OpenDownstream, now: float) -> TcpConnection | None:
        conn = super().open_downstream(relay, request, now)
        if conn is not None:
            relay.session.downstream_opened(conn.local_addr, conn.local_port)
        return conn


# --- the client side -------------------------------------------------------------------------------


class Socks5ClientState(enum.Enum):
    EXPECT_METHOD_SELECTION = "expect_method_selection"
    EXPECT_REPLY = "expect_reply"
    DONE = "done"


class Socks5Status(enum.Enum):
    SUCCEEDED = "succeeded"  # reply 0x00: the bytes from now on are the server's
    REFUSED = "refused"  # a failure reply: ``reply_code`` says which
    NO_ACCEPTABLE_METHOD = "no_acceptable_method"  # method 0xFF: the client must close
    INVALID = "invalid"  # not a SOCKS5 answer, or a method we did not offer


@dataclass(frozen=True, slots=True)
class Socks5Result:
    """What the client learned. ``app_data``: the server's bytes that came with the reply."""

    status: Socks5Status
    reply_code: int | None = None
    bound: Endpoint | None = None
    app_data: bytes = b""

    @property
    def succeeded(self) -> bool:
        return self.status is Socks5Status.SUCCEEDED

    @property
    def fallback_reason(self) -> FallbackReason | None:
        return None if self.succeeded else FallbackReason.PROXY_FAILED


class Socks5ClientExchange:
    """The client's side of one SOCKS5 CONNECT (sans-I/O): send :meth:`greeting` once connected,
    hand every byte from the proxy to :meth:`receive` and send what it returns (the request, after
    the method selection); ``result`` is set once the exchange is over."""

    def __init__(self, address: IpAddress | str, port: int,
                 methods: tuple[int, ...] = (_NO_AUTH,)) -> None:
        self.request = Socks5Request(address, port)
        self._greeting = Socks5Greeting(methods)
        self.state = Socks5ClientState.EXPECT_METHOD_SELECTION
        self.result: Socks5Result | None = None
        self._buffer = bytearray()

    def greeting(self) -> bytes:
        return self._greeting.encode()

    def receive(self, data: bytes) -> bytes:
        """Bytes from the proxy; returns the bytes to send now (possibly none)."""
        if self.state is Socks5ClientState.DONE:
            raise LocalProtocolError("the SOCKS5 exchange is over: later bytes are the application's")
        self._buffer += data
        out = b""
        try:
            if self.state is Socks5ClientState.EXPECT_METHOD_SELECTION:
                selection, used = decode_method_selection(self._buffer)
                del self._buffer[:used]
                if selection.method == Socks5Method.NO_ACCEPTABLE_METHODS:
                    return self._finish(Socks5Result(Socks5Status.NO_ACCEPTABLE_METHOD))
                if selection.method != _NO_AUTH or _NO_AUTH not in self._greeting.methods:
                    # a method we did not offer, or one this exchange cannot carry out
                    return self._finish(Socks5Result(Socks5Status.INVALID))
                self.state = Socks5ClientState.EXPECT_REPLY
                out = self.request.encode()
            if self._buffer:
                reply, used = decode_reply(self._buffer)
                app_data = bytes(self._buffer[used:])
                if reply.reply == Socks5Reply.SUCCEEDED:
                    bound = (reply.address, reply.port)
                    self._finish(Socks5Result(Socks5Status.SUCCEEDED, reply.reply, bound, app_data))
                else:
                    self._finish(Socks5Result(Socks5Status.REFUSED, reply.reply))
        except TruncatedError:
            pass
        except MalformedError:
            self._finish(Socks5Result(Socks5Status.INVALID))
        return out

    def _finish(self, result: Socks5Result) -> bytes:
        self.result = result
        self.state = Socks5ClientState.DONE
        self._buffer.clear()
        return b""


# --- registration: the "socks5" proxy (mpsim/proto/proxies.py) ---------------------------------------------

from mpsim.proto.catalogue import PROXIES  # noqa: E402  (registration lines stay together at the bottom)
# The proxies register in one order (convert, mp-convert, socks5) whichever module is imported
# first: the catalogue's listings (docs, schema, errors) must not depend on a process's import order.
import mpsim.proto.mp_convert_proxy  # noqa: E402,F401
from mpsim.proto.proxies import ProxyEntry, ProxySettings  # noqa: E402


def _create_socks5_proxy(name: str, addresses: dict[str, IpAddress], rng: Rng,
                         settings: ProxySettings) -> Socks5ProxyHost:
    defaults = Socks5ProxyPolicy(port=settings.port)
    policy = Socks5ProxyPolicy(port=settings.port, connect_timeout_s=defaults.connect_timeout_s
                               if settings.connect_timeout_s is None else settings.connect_timeout_s)
    return Socks5ProxyHost(name, addresses, rng=rng, server_interfaces=("down",), policy=policy)


PROXIES.register("socks5", ProxyEntry("socks5", "SOCKS5 proxy", "SOCKS5 proxy (RFC 1928; MPTCP towards the client)",
                                      _create_socks5_proxy))
