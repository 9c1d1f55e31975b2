"""Server kinds: the far end a client or converter meets, from legacy stacks to MPTCP and TFO.

The kinds differ in what the SYN meets (docs/protocols.md 4.3, 5 and 8.6 items 5, 6 and 8):

=================  =============================================================================
LEGACY_DROP        Linux without TFO: the SYN-ACK ACKs ISN+1 and SYN data is discarded
LEGACY_QUEUE       RFC 793 as some stacks read it: SYN data ACKed in the SYN-ACK, queued, and given
                   to the application once ESTABLISHED, so signalling bytes become application data
TFO                a TFO listener (RFC 7413): SYN data accepted with a valid cookie
MPTCP_V1           an MPTCP v1 listener (RFC 8684)
MPTCP_V0           an MPTCP v0-only listener (RFC 6824), which ignores a v1 MP_CAPABLE
CLOSED             the host is up, nothing listens: RST
UNREACHABLE        no host: the last router answers every packet with ICMP destination unreachable
=================  =============================================================================

The application behind the listeners records every byte it is given, per connection, so tests
and results can see signalling that leaked into the application stream.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mpsim.proto.host import Acceptance, ConnectionOwner, FourTuple, Host
from mpsim.proto.middlebox import IcmpUnreachable, IcmpUnreachableCode
from mpsim.proto.mptcp import MptcpPolicy, MptcpServerExtension
from mpsim.proto.tfo import TfoServer
from mpsim.proto.tcp import (
    Closed,
    DataReceived,
    IpAddress,
    PeerClosed,
    Rng,
    SynDataMode,
    TcpConnection,
    TcpEvent,
    TcpExtension,
    TcpPolicy,
    TcpState,
    mypyc_attr,
)
from mpsim.wire.segment import IpPacket


class ServerKind(enum.Enum):
    LEGACY_DROP = "legacy_drop"
    LEGACY_QUEUE = "legacy_queue"
    TFO = "tfo"
    MPTCP_V1 = "mptcp_v1"
    MPTCP_V0 = "mptcp_v0"
    CLOSED = "closed"
    UNREACHABLE = "unreachable"


#: Per-SYN hooks a listener is built from: the extensions of the new connection, and what it does
#: with the SYN's data. MPTCP and TFO listeners plug theirs in here.
ExtensionFactory = Callable[[IpPacket, float], tuple[TcpExtension, ...]]
SynDataPolicy = Callable[[IpPacket, float], SynDataMode]


def no_extensions(syn: IpPacket, now: float) -> tuple[TcpExtension, ...]:
    return ()


def fixed_syn_data_mode(mode: SynDataMode) -> SynDataPolicy:
    return lambda syn, now: mode


# --- applications --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestServed:
    """The responder answered one request on ``four_tuple`` (the server's view of the tuple)."""

    four_tuple: FourTuple
    request_bytes: int
    response_bytes: int


_PATTERN = bytes(range(256))


def emit_extension_facts(host: Host, conn: TcpConnection) -> None:
    """Pass on what the connection's extensions concluded (MPTCP's ``MptcpNegotiated``, ...)."""
    for ext in conn.extensions:
        for fact in getattr(ext, "pull_events", list)():
            host.emit(fact)


def response_payload(size_bytes: int) -> bytes:
    """The bytes a :class:`ResponderApp` sends: a counting pattern, so corruption shows."""
    return (_PATTERN * (size_bytes // len(_PATTERN) + 1))[:size_bytes]


# The compiled build (docs/sim.md "Performance") keeps it open to uncompiled applications.
@mypyc_attr(allow_interpreted_subclasses=True)
class ServerApp:
    """The owner of every connection a server accepts. Records, per connection, the bytes the
    application was given in ``received``; closes its side once the peer has closed."""

    def __init__(self) -> None:
        self.received: dict[FourTuple, bytearray] = {}
        self.closes: dict[FourTuple, Closed] = {}

    def on_tcp_event(self, host: Host, conn: TcpConnection, event: TcpEvent, now: float) -> None:
        key = conn.four_tuple
        received = self.received.get(key)  # one lookup per event: hashing a 4-tuple hashes two addresses
        if received is None:
            received = self.received[key] = bytearray()
        if isinstance(event, DataReceived):
            received += event.data
            self.on_data(host, conn, event.data, now)
        elif isinstance(event, PeerClosed) and conn.state is TcpState.CLOSE_WAIT:
            conn.close(now)
        elif isinstance(event, Closed):
            self.closes[key] = event

    def on_data(self, host: Host, conn: TcpConnection, data: bytes, now: float) -> None:
        """What the application does with new bytes; a sink does nothing."""

    def stream(self, four_tuple: FourTuple | None = None) -> bytes:
        """What the application received on ``four_tuple`` (default: the only connection, if any)."""
        if four_tuple is None:
            if len(self.received) > 1:
                raise ValueError(f"{len(self.received)} connections: name the four_tuple")
            four_tuple = next(iter(self.received), None)
            if four_tuple is None:
                return b""
        return bytes(self.received.get(four_tuple, b""))


class SinkApp(ServerApp):
    """Reads and records everything, never answers."""


class ResponderApp(ServerApp):
    """Answers each request with ``response_size_bytes`` of :func:`response_payload`.

    A request is ``request_size_bytes`` bytes, or, when that is None, everything up to and
    including a ``b"\\n"``. With ``close_after_response`` the server closes after the first
    response (HTTP/1.0 style); otherwise it serves requests until the client closes.
    """

    def __init__(self, response_size_bytes: int, *, request_size_bytes: int | None = None,
                 close_after_response: bool = False) -> None:
        super().__init__()
        if response_size_bytes < 0 or (request_size_bytes is not None and request_size_bytes < 1):
            raise ValueError("need response_size_bytes >= 0 and request_size_bytes >= 1 (or None)")
        self.response_size_bytes = response_size_bytes
        self.request_size_bytes = request_size_bytes
        self.close_after_response = close_after_response
        self._unparsed: dict[FourTuple, bytes] = {}
        self._done: set[FourTuple] = set()

    def _request_length(self, buffer: bytes) -> int | None:
        if self.request_size_bytes is not None:
            return self.request_size_bytes if len(buffer) >= self.request_size_bytes else None
        end = buffer.find(b"\n")
        return None if end < 0 else end + 1

    def on_data(self, host: Host, conn: TcpConnection, data: bytes, now: float) -> None:
        key = conn.four_tuple
        if key in self._done:
            return
        buffer = self._unparsed.get(key, b"") + data
        while (request_bytes := self._request_length(buffer)) is not None:
            buffer = buffer[request_bytes:]
            conn.send(response_payload(self.response_size_bytes), now)
            host.emit(RequestServed(key, request_bytes, self.response_size_bytes))
            if self.close_after_response:
                conn.close(now)
                self._done.add(key)
                break
        self._unparsed[key] = buffer


# --- listeners and hosts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerListener:
    """Accepts every SYN for ``owner``; extensions and the SYN-data mode are decided per SYN."""

    owner: ConnectionOwner
    syn_data_mode: SynDataPolicy = fixed_syn_data_mode(SynDataMode.DROP)
    extensions: ExtensionFactory = no_extensions

    def on_syn(self, host: Host, packet: IpPacket, now: float) -> Acceptance:
        return Acceptance(self.owner, self.syn_data_mode(packet, now), extensions=self.extensions(packet, now))


_LEGACY_MODES = {ServerKind.LEGACY_DROP: SynDataMode.DROP, ServerKind.LEGACY_QUEUE: SynDataMode.QUEUE}
_MPTCP_VERSIONS = {ServerKind.MPTCP_V1: 1, ServerKind.MPTCP_V0: 0}


class ServerHost(Host):
    """A server of one :class:`ServerKind`, listening on ``ports`` with ``app`` (default a sink).

    TFO and MPTCP kinds may be given their per-SYN hooks (``extensions``, ``syn_data_mode``);
    without them a TFO server uses ``tfo_server`` (default: a cookie-requiring
    :class:`~mpsim.proto.tfo.TfoServer` counting into this host's MIB), and an MPTCP server puts a
    fresh :class:`~mpsim.proto.mptcp.MptcpServerExtension` with ``mptcp_policy`` (whose version
    must match the kind) on each connection and drops SYN data, as Linux does without TFO. For
    UNREACHABLE, ``address`` is the last router's: it answers every TCP packet, whatever its
    destination, with an :class:`IcmpUnreachable` of ``icmp_code``.
    """

    def __init__(self, name: str, address: IpAddress, kind: ServerKind, *, rng: Rng,
                 app: ServerApp | None = None, ports: tuple[int, ...] = (80,), interface: str = "eth0",
                 policy: TcpPolicy | None = None, extensions: ExtensionFactory | None = None,
                 syn_data_mode: SynDataPolicy | None = None, tfo_server: TfoServer | None = None,
                 mptcp_policy: MptcpPolicy | None = None,
                 icmp_code: int = IcmpUnreachableCode.HOST_UNREACHABLE) -> None:
        super().__init__(name, {interface: address}, rng=rng, policy=policy)
        self.kind = kind
        self.app = app if app is not None else SinkApp()
        self.icmp_code = icmp_code
        self.icmp_sent = 0
        self.tfo_server: TfoServer | None = None
        self.mptcp_policy: MptcpPolicy | None = None
        if kind in (ServerKind.CLOSED, ServerKind.UNREACHABLE):
            return
        if kind in _LEGACY_MODES:
            if extensions is not None or syn_data_mode is not None:
                raise ValueError(f"{kind.value} servers take no extensions or SYN-data policy")
            syn_data_mode = fixed_syn_data_mode(_LEGACY_MODES[kind])
        elif kind is ServerKind.TFO:
            if (extensions is None) != (syn_data_mode is None):
                raise ValueError("a tfo server takes both extensions and syn_data_mode, or neither")
            if extensions is None:
                self.tfo_server = tfo_server if tfo_server is not None else TfoServer(rng, mib=self.mib)
                extensions, syn_data_mode = self.tfo_server.extensions_for, self.tfo_server.syn_data_mode
        elif extensions is None:  # MPTCP
            version = _MPTCP_VERSIONS[kind]
            if mptcp_policy is not None and mptcp_policy.version != version:
                raise ValueError(f"a {kind.value} server needs an MptcpPolicy with version {version}")
            self.mptcp_policy = mptcp_policy or MptcpPolicy(version=version)
            extensions = self._mptcp_extensions
        for port in ports:
            self.listen(port, ServerListener(self.app, syn_data_mode or fixed_syn_data_mode(SynDataMode.DROP),
                                             extensions or no_extensions))

    def _mptcp_extensions(self, syn: IpPacket, now: float) -> tuple[TcpExtension, ...]:
        return (MptcpServerExtension(rng=self.rng, mib=self.mib, policy=self.mptcp_policy),)

    def receive(self, port: str, packet: Any, now: float) -> None:
        if self.kind is ServerKind.UNREACHABLE:
            if isinstance(packet, IpPacket):
                self.icmp_sent += 1
                icmp = IcmpUnreachable(packet, self.icmp_code, reporter=self.interfaces[port])
                self._transmit(icmp)  # type: ignore[arg-type]
            return
        super().receive(port, packet, now)

    def _collect(self, conn: TcpConnection, now: float) -> None:
        # Every input of a connection ends here, also those that raise no TCP event (a fallback
        # seen on a pure ACK) and those that close it. The facts go before the application's
        # reactions, which raise none (sending only reads the MPTCP state).
        emit_extension_facts(self, conn)
        super()._collect(conn, now)


# --- registration: every ServerKind as a "server" (mpsim/proto/catalogue.py SERVERS) --------------------

from mpsim.proto.catalogue import SERVERS  # noqa: E402  (registration lines stay together at the bottom)


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """A server by name: ``create(name, address, rng, app, ports)`` builds its host."""

    name: str
    description: str
    create: Callable[..., ServerHost]


def _server_factory(kind: ServerKind) -> Callable[..., ServerHost]:
    def create(name: str, address: IpAddress, rng: Rng, app: ServerApp | None, ports: tuple[int, ...]) -> ServerHost:
        return ServerHost(name, address, kind, rng=rng, app=app, ports=ports)

    return create


for _kind, _description in (
    (ServerKind.LEGACY_DROP, "Linux without TFO: the SYN-ACK ACKs ISN+1 and SYN data is discarded"),
    (ServerKind.LEGACY_QUEUE, "SYN data ACKed in the SYN-ACK and queued for the application"),
    (ServerKind.TFO, "a TFO listener (RFC 7413): SYN data accepted with a valid cookie"),
    (ServerKind.MPTCP_V1, "an MPTCP v1 listener (RFC 8684)"),
    (ServerKind.MPTCP_V0, "an MPTCP v0-only listener (RFC 6824), which ignores a v1 MP_CAPABLE"),
    (ServerKind.CLOSED, "the host is up, nothing listens: RST"),
    (ServerKind.UNREACHABLE, "no host: the last router answers every packet with ICMP destination unreachable"),
):
    SERVERS.register(_kind.value, ServerEntry(_kind.value, _description, _server_factory(_kind)))
