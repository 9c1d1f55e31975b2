"""The relay every proxy shares: an upstream connection, a downstream connection, a session between.

mpsim has three proxies: the RFC 8803 converter (:mod:`mpsim.proto.convert`), the MP_CONVERT
MPTCP Conversion Point (:mod:`mpsim.proto.mp_convert_proxy`) and SOCKS5
(:mod:`mpsim.proto.socks5_proxy`). They differ only in how the client names the destination and
what the client is told; relaying is the same. So each is split the same way:

* a **session** holds the proxy's logic for one client on the *byte stream*: bytes from the
  client and the outcome of the downstream connection go in, :data:`RelayDecision` values come
  out (open the downstream connection, send these bytes upstream, close with FIN, ...). No
  segments and no sockets, so a socket daemon and the simulator run the same decisions.
  :class:`RelaySession` is the part every session shares (the converter's included): buffering
  while the server is being reached, relaying both ways, FIN and RST coupling between the legs
  (RFC 8803 4.2: a failure of one leg tears the other down; a FIN becomes a FIN);
* a :class:`Relay` owns the two :class:`~mpsim.proto.tcp.TcpConnection` objects of one session,
  feeds the session their events and applies its decisions to them;
* a :class:`RelayHost` is the :class:`~mpsim.proto.host.Host` behind which relays live: it
  accepts upstream SYNs for a session, opens downstream connections from its server-facing
  interfaces, merges the sessions' timers with the connections' and maps ICMP errors to the
  downstream connection they quote.

Timing (:class:`ConverterTiming`): RFC 8803's withholds the client's SYN-ACK until the server
answered (the downstream SYN is then retransmitted only when the client retransmits its own, RFC
8803 9.3); the socket timing answers the SYN at once and leaves the downstream SYN to the stack.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.mptcp import MptcpClientExtension, MptcpServerExtension
from mpsim.proto.tcp import (
    DataReceived,
    Established,
    IpAddress,
    PeerClosed,
    ResetReceived,
    Rng,
    SynDataMode,
    SynRetransmissionReceived,
    TcpConnection,
    TcpEvent,
    TcpExtension,
    TcpPolicy,
    TcpState,
    TimedOut,
    mypyc_attr,
    reset_for,
)
from mpsim.wire.convert import ConnectOption
from mpsim.wire.options import TcpOptionKind
from mpsim.wire.segment import IpPacket


class ConverterTiming(enum.Enum):
    """When a converting proxy answers the client's SYN."""

    RFC = "rfc"  # RFC 8803 4.2: the SYN-ACK waits for the server's (and carries the reply)
    SOCKET = "socket"  # Linux sockets: the kernel answers at once; any reply is the first data


# --- decisions: what a session asks its driver to do --------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptUpstream:
    """Answer the client's SYN now, with no Convert reply yet (RFC timing; sockets: nothing to do)."""


@dataclass(frozen=True, slots=True)
class IgnoreUpstream:
    """Drop the client's SYN silently: no SYN-ACK, no RST (RFC timing; not Convert data)."""


@dataclass(frozen=True, slots=True)
class OpenDownstream:
    """Connect to the server. ``requested_options`` are the client's Connect options minus the
    kinds section 7 says to ignore: an empty value asks the converter for a value of its own (a TFO
    cookie request, "use MPTCP"), a value is copied verbatim (a TFO cookie). ``syn_payload`` is
    user data for the SYN: only with a TFO cookie, which is what makes SYN data acceptable."""

    address: IpAddress
    port: int
    requested_options: tuple[ConnectOption, ...] = ()
    syn_payload: bytes = b""

    def requested(self, kind: int) -> ConnectOption | None:
        return next((o for o in self.requested_options if o.kind == kind), None)

    @property
    def mptcp(self) -> bool:
        """The client asked for MPTCP towards the server (kind 30)."""
        return self.requested(TcpOptionKind.MPTCP) is not None


@dataclass(frozen=True, slots=True)
class RetransmitDownstreamSyn:
    """The client retransmitted its SYN: retransmit the downstream SYN (RFC 8803 9.3, RFC timing)."""


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Bytes for the client. ``reply`` is the protocol message they start with, if they do (a
    Convert reply, a SOCKS5 reply), for the host to report."""

    data: bytes
    reply: Any = None


@dataclass(frozen=True, slots=True)
class SendDownstream:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """FIN towards the client (after an error: the client sends the RST, section 6.2.8)."""


@dataclass(frozen=True, slots=True)
class CloseDownstream:
    """FIN towards the server."""


class UpstreamResetReason(enum.Enum):
    ZERO_TOTAL_LENGTH = "zero_total_length"  # RFC 8803 6.1: MUST reset
    DOWNSTREAM_RESET = "downstream_reset"  # the server reset a relayed connection (MPTCP: MP_FASTCLOSE)
    DOWNSTREAM_FAILED = "downstream_failed"  # the server's connection timed out or became unreachable
    UPSTREAM_REVERTED = "upstream_reverted"  # the client's MPTCP fell back and it asked not to revert


@dataclass(frozen=True, slots=True)
class ResetUpstream:
    reason: UpstreamResetReason


@dataclass(frozen=True, slots=True)
class ResetDownstream:
    """Abort the downstream connection or attempt (RST if the server knows it)."""


@dataclass(frozen=True, slots=True)
class Report:
    """A past-tense fact for the driver and the trace (``host.emit``)."""

    event: Any


RelayDecision = (AcceptUpstream | IgnoreUpstream | OpenDownstream | RetransmitDownstreamSyn | SendUpstream
                 | SendDownstream | CloseUpstream | CloseDownstream | ResetUpstream | ResetDownstream | Report)


class DownstreamFailure(enum.Enum):
    """How the downstream connection was lost."""

    RESET = "reset"  # the server answered RST (nobody listens) or reset the connection
    UNREACHABLE = "unreachable"  # an ICMP destination unreachable quoting our segment
    TIMEOUT = "timeout"  # SYN retransmissions ran out, or the session's connect timer fired
    NO_ROUTE = "no_route"  # the proxy has no interface of the destination's address family


# --- the session base ----------------------------------------------------------------------------


# The compiled build (docs/sim.md "Performance") keeps these open to the uncompiled proxies.
@mypyc_attr(allow_interpreted_subclasses=True)
class RelaySession:
    """What a proxy session does once it has asked for the downstream connection.

    Subclasses name the members of their own state enum that stand for the shared phases
    (``CONNECTING``, ``RELAYING``, ``DONE``), give the enum's legal changes as ``TRANSITIONS``
    (data, so state diagrams can be drawn from it; :meth:`_move` enforces it), and implement the
    hooks: :meth:`_on_request_bytes`, :meth:`_on_request_incomplete` and :meth:`_on_request_timeout`
    for the states before CONNECTING (a session that knows its destination from the SYN starts in
    CONNECTING and needs none), :meth:`_on_connected` (what the client is told when the server
    accepted) and :meth:`_on_refused` (what it is told when the server could not be reached).

    Inputs (the RFC 8803 converter's, whose session is one too): :meth:`receive_upstream`
    (the first call carries the SYN payload, ``b""`` if none), :meth:`upstream_syn_retransmitted`,
    :meth:`upstream_closed`, :meth:`upstream_reset`, :meth:`upstream_fell_back`, the downstream
    outcomes and :meth:`handle_timer`. Outputs: :meth:`next_decision`, :meth:`get_timer`. Inputs
    that cannot happen in a live state raise :class:`LocalProtocolError`; in DONE every input is
    ignored, since a driver may still report events of connections the session has given up on.
    """

    CONNECTING: ClassVar[Any]
    RELAYING: ClassVar[Any]
    DONE: ClassVar[Any]
    TRANSITIONS: ClassVar[dict[Any, dict[Any, str]]]

    def __init__(self, state: Any, *, timing: ConverterTiming, deadline_s: float | None) -> None:
        self.state = state
        self.timing = timing
        self.bytes_to_server = 0
        self.bytes_to_client = 0
        self._decisions: deque[RelayDecision] = deque()
        self._pending_downstream = bytearray()  # client bytes waiting for the server's SYN-ACK
        self._upstream_fin = False
        self._downstream_fin = False
        self._deadline = deadline_s

    # --- outputs --------------------------------------------------------------------------------

    def next_decision(self) -> RelayDecision | None:
        return self._decisions.popleft() if self._decisions else None

    def get_timer(self) -> float | None:
        return self._deadline

    @property
    def done(self) -> bool:
        return self.state is self.DONE

    # --- inputs from the client side --------------------------------------------------------------

    def receive_upstream(self, data: bytes, now: float) -> None:
        """Bytes from the client; the first call carries the SYN payload (``b""`` if it had none)."""
        if self.done:
            return
        if self._upstream_fin:
            raise LocalProtocolError("bytes from the client after its FIN")
        if self.state is self.CONNECTING:
            self._pending_downstream += data
        elif self.state is self.RELAYING:
            if data:
                self._to_server(bytes(data))
        else:
            self._on_request_bytes(bytes(data), now)

    def upstream_syn_retransmitted(self, now: float) -> None:
        """The client sent its SYN again while its SYN-ACK was withheld: so does the proxy (9.3)."""
        if not self.done and self.state is self.CONNECTING and self.timing is ConverterTiming.RFC:
            self._decide(RetransmitDownstreamSyn())

    def upstream_closed(self, now: float) -> None:
        """The client sent FIN."""
        if self.done:
            return
        self._upstream_fin = True
        if self.state is self.RELAYING:
            self._decide(CloseDownstream())
            self._end_if_both_closed()
        elif self.state is not self.CONNECTING:
            self._on_request_incomplete(now)  # nothing more can complete the request
        # CONNECTING: the FIN is passed on once the buffered data has gone to the server

    def upstream_reset(self, now: float) -> None:
        """The client's connection was reset or timed out: tear the downstream down too (4.2)."""
        if self.done:
            return
        if self.state in (self.CONNECTING, self.RELAYING):
            self._decide(ResetDownstream())
        self._end()

    def upstream_fell_back(self, now: float) -> None:
        """The client's MPTCP connection became plain TCP (RFC 8684 3.7). A proxy relays plain TCP
        as well; a session that must not (MP_CONVERT's I flag) overrides this."""

    # --- inputs from the server side --------------------------------------------------------------

    def downstream_connected(self, now: float, server_synack_options: tuple) -> None:
        """The server's SYN-ACK arrived: tell the client, then pass on what it sent meanwhile."""
        if not self._legal("downstream_connected", self.CONNECTING):
            return
        self._deadline = None
        self._move(self.RELAYING)
        self._on_connected(server_synack_options)
        if self._pending_downstream:
            self._to_server(bytes(self._pending_downstream))
            self._pending_downstream.clear()
        if self._upstream_fin:
            self._decide(CloseDownstream())

    def downstream_reset(self, now: float) -> None:
        """The server answered RST, or reset a relayed connection."""
        if self._legal("downstream_reset", self.CONNECTING, self.RELAYING):
            self._downstream_lost(DownstreamFailure.RESET)

    def downstream_unreachable(self, now: float, icmp_code: int) -> None:
        """An ICMP error that ends the downstream connection (``icmp_code`` as received)."""
        if self._legal("downstream_unreachable", self.CONNECTING, self.RELAYING):
            self._downstream_lost(DownstreamFailure.UNREACHABLE, icmp_code)

    def downstream_timeout(self, now: float) -> None:
        """The downstream connection's retransmissions ran out."""
        if self._legal("downstream_timeout", self.CONNECTING, self.RELAYING):
            self._downstream_lost(DownstreamFailure.TIMEOUT)

    def downstream_failed(self, now: float) -> None:
        """The downstream connection cannot be opened (no route for its address family)."""
        if self._legal("downstream_failed", self.CONNECTING, self.RELAYING):
            self._downstream_lost(DownstreamFailure.NO_ROUTE)

    def downstream_data(self, data: bytes) -> None:
        if self._legal("downstream_data", self.RELAYING):
            self._refuse_after_server_fin("bytes from the server after its FIN")
            if data:
                self._to_client(bytes(data))

    def downstream_closed(self) -> None:
        """The server sent FIN: close upstream gracefully (RFC 8803 4.2 SHOULD)."""
        if not self._legal("downstream_closed", self.RELAYING):
            return
        self._refuse_after_server_fin("a second FIN from the server")
        self._downstream_fin = True
        self._decide(CloseUpstream())
        self._end_if_both_closed()

    def _refuse_after_server_fin(self, what: str) -> None:
        # Mirrors the client side: a driver that reports these has lost track of the connection.
        if self._downstream_fin:
            raise LocalProtocolError(what)

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self.state is self.CONNECTING:
            self._on_connect_timeout(now)
        elif not self.done:
            self._on_request_timeout(now)

    # --- hooks ------------------------------------------------------------------------------------

    def _on_request_bytes(self, data: bytes, now: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no request phase")

    def _on_request_incomplete(self, now: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no request phase")

    def _on_request_timeout(self, now: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no request phase")

    def _on_connect_timeout(self, now: float) -> None:
        """The session's connect timer fired: the attempt is abandoned like a timed-out one."""
        self.downstream_timeout(now)

    def _on_connected(self, server_synack_options: tuple) -> None:
        raise NotImplementedError

    def _on_refused(self, failure: DownstreamFailure, icmp_code: int | None) -> None:
        """Tell the client the server could not be reached; the session ends afterwards."""
        raise NotImplementedError

    # --- helpers ----------------------------------------------------------------------------------

    def _decide(self, decision: RelayDecision) -> None:
        self._decisions.append(decision)

    def _legal(self, name: str, *states: Any) -> bool:
        if self.done:
            return False
        if self.state not in states:
            raise LocalProtocolError(f"{name} is not legal in session state {self.state.name}")
        return True

    def _open(self, address: IpAddress, port: int, deadline_s: float, data: bytes = b"") -> None:
        """Ask for the downstream connection; ``data`` (client bytes after the request) waits for it."""
        self._move(self.CONNECTING)
        self._deadline = deadline_s
        self._pending_downstream += data
        self._decide(OpenDownstream(address, port))

    def _downstream_lost(self, failure: DownstreamFailure, icmp_code: int | None = None) -> None:
        if failure is not DownstreamFailure.RESET:
            self._decide(ResetDownstream())  # the attempt may still be alive (a SYN in flight)
        if self.state is self.CONNECTING:
            self._on_refused(failure, icmp_code)
        else:
            reason = (UpstreamResetReason.DOWNSTREAM_RESET if failure is DownstreamFailure.RESET
                      else UpstreamResetReason.DOWNSTREAM_FAILED)
            self._decide(ResetUpstream(reason))
        self._end()

    def _to_server(self, data: bytes) -> None:
        self.bytes_to_server += len(data)
        self._decide(SendDownstream(data))

    def _to_client(self, data: bytes) -> None:
        self.bytes_to_client += len(data)
        self._decide(SendUpstream(data))

    def _end_if_both_closed(self) -> None:
        if self._upstream_fin and self._downstream_fin:
            self._end()

    def _move(self, state: Any) -> None:
        if state not in self.TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal session transition {self.state.name} -> {state.name}")  # a bug
        self.state = state

    def _end(self) -> None:
        if not self.done:
            self._move(self.DONE)
            self._deadline = None


# --- the relay: one session's two connections ------------------------------------------------------


class Relay:
    """Owner of one upstream connection and its downstream connection: feeds the session the
    events of both and applies its decisions to them."""

    def __init__(self, host: RelayHost, session: RelaySession, syn_packet: IpPacket, *, withhold_synack: bool) -> None:
        self.host = host
        self.session = session
        seg = syn_packet.segment
        self.upstream_key = (syn_packet.dst, seg.dst_port, syn_packet.src, seg.src_port)
        self.client = (syn_packet.src, seg.src_port)
        self.upstream: TcpConnection | None = None
        self.downstream: TcpConnection | None = None
        self.synack_withheld = withhold_synack
        self.syn_fed = False

    def start(self, now: float) -> None:
        """After the host created the upstream connection: an empty SYN payload produced no
        DataReceived, but the session must still see its (empty) SYN payload."""
        self.upstream = self.upstream or self.host.connections.get(self.upstream_key)
        if not self.syn_fed and self.upstream is not None:
            self.syn_fed = True
            self.session.receive_upstream(b"", now)
            self.pull_extension_events(now)
            self.apply(now, current=None)

    def on_tcp_event(self, host: Host, conn: TcpConnection, event: TcpEvent, now: float) -> None:
        if self.upstream is None:
            self.upstream = conn
        s = self.session
        if conn is self.upstream:
            if isinstance(event, DataReceived):
                self.syn_fed = True
                s.receive_upstream(event.data, now)
            elif isinstance(event, PeerClosed):
                s.upstream_closed(now)
            elif isinstance(event, (ResetReceived, TimedOut)):
                s.upstream_reset(now)
            elif isinstance(event, SynRetransmissionReceived):
                s.upstream_syn_retransmitted(now)
        elif isinstance(event, Established):
            assert conn.synack is not None
            s.downstream_connected(now, conn.synack.options)
        elif isinstance(event, DataReceived):
            s.downstream_data(event.data)
        elif isinstance(event, PeerClosed):
            s.downstream_closed()
        elif isinstance(event, ResetReceived):
            s.downstream_reset(now)
        elif isinstance(event, TimedOut):
            s.downstream_timeout(now)
        self.pull_extension_events(now)
        self.apply(now, current=conn)

    def pull_extension_events(self, now: float) -> bool:
        """Hand what the connections' extensions concluded (MPTCP negotiated or fell back) to the
        host; returns whether there was anything."""
        pulled = False
        for conn in (self.upstream, self.downstream):
            if conn is None or not conn.extensions:  # most connections carry none: no loop set up
                continue
            for ext in conn.extensions:
                for event in getattr(ext, "pull_events", list)():
                    pulled = True
                    self.host.on_extension_event(self, conn, event, now)
        return pulled

    def apply(self, now: float, current: TcpConnection | None) -> None:
        """Carry out the session's decisions, then flush the connections acted on (the host
        flushes ``current``, whose event it is delivering, itself)."""
        host, up = self.host, self.upstream
        if up is None:
            return
        while (decision := self.session.next_decision()) is not None:
            match decision:
                case AcceptUpstream():
                    self._release_synack(now, b"")
                case IgnoreUpstream():
                    host.abort(up, now)  # a withheld SYN-ACK: the abort sends nothing
                case SendUpstream(data=data, reply=reply):
                    if reply is not None:
                        host.on_upstream_reply(self, reply, now)
                    if self.synack_withheld:
                        self._release_synack(now, data)
                    elif up.state is not TcpState.CLOSED:
                        up.send(data, now)
                case CloseUpstream():
                    if up.state is not TcpState.CLOSED:
                        up.close(now)
                case ResetUpstream(reason=reason):
                    self._reset_upstream(reason, now)
                case OpenDownstream():
                    self.downstream = host.open_downstream(self, decision, now)
                    if self.downstream is None:  # no route for this address family: a forwarding failure
                        self.session.downstream_failed(now)
                case RetransmitDownstreamSyn():
                    if self.downstream is not None and self.downstream.state is TcpState.SYN_SENT:
                        self.downstream.retransmit_syn(now)
                case SendDownstream(data=data):
                    assert self.downstream is not None
                    self.downstream.send(data, now)
                case CloseDownstream():
                    if self.downstream is not None and self.downstream.state is not TcpState.CLOSED:
                        self.downstream.close(now)
                case ResetDownstream():
                    if self.downstream is not None:
                        host.abort(self.downstream, now)
                case Report(event=event):
                    host.emit(event)
        for conn in (up, self.downstream):
            if conn is not None and conn is not current:
                host.collect(conn, now)
        if self.session.done:
            host.relays.pop(self, None)

    def _release_synack(self, now: float, payload: bytes) -> None:
        if self.synack_withheld and self.upstream is not None:
            self.synack_withheld = False
            self.upstream.send_synack(now, payload)

    def _reset_upstream(self, reason: UpstreamResetReason, now: float) -> None:
        up = self.upstream
        assert up is not None and up.syn is not None
        if self.synack_withheld:
            # A withheld SYN-ACK cannot be followed by an RST on the connection: answer the SYN itself.
            self.host.abort(up, now)
            self.host.send_rst_for_syn(IpPacket(up.remote_addr, up.local_addr, up.syn))
        elif reason is UpstreamResetReason.DOWNSTREAM_RESET and self.host.on_downstream_reset is not None:
            self.host.on_downstream_reset(self.host, up, now)
        else:
            self.host.abort(up, now)


def mptcp_fastclose_or_reset(host: Host, upstream: TcpConnection, now: float) -> None:
    """An ``on_downstream_reset`` for an MPTCP upstream: MP_FASTCLOSE when MPTCP is in use (RFC
    8803 5: a downstream reset becomes MP_FASTCLOSE), a plain RST otherwise."""
    ext = next((e for e in upstream.extensions if isinstance(e, (MptcpServerExtension, MptcpClientExtension))
                and e.negotiated), None)
    if ext is None:
        host.abort(upstream, now)
        return
    ext.send_fastclose(upstream, now)
    host.collect(upstream, now)


# --- the host --------------------------------------------------------------------------------------


@mypyc_attr(allow_interpreted_subclasses=True)
class RelayHost(Host):
    """A host whose upstream SYNs become :class:`Relay` objects (see the module doc).

    ``server_interfaces``: where downstream connections start (the first of the destination's
    address family is used). Hooks: ``upstream_extensions(syn_packet)`` and
    ``downstream_extensions(open_downstream)`` add TcpExtensions per connection (MPTCP on either
    leg); ``on_downstream_reset(host, upstream, now)`` replaces the upstream RST after a server
    reset (:func:`mptcp_fastclose_or_reset`). Subclasses accept SYNs with :meth:`accept` and may
    override :meth:`open_downstream`, :meth:`on_upstream_reply` and :meth:`on_extension_event`.
    """

    def __init__(self, name: str, interfaces: dict[str, IpAddress], *, rng: Rng, server_interfaces: Sequence[str],
                 timing: ConverterTiming, tcp_policy: TcpPolicy | None = None,
                 upstream_extensions: Callable[[IpPacket], tuple[TcpExtension, ...]] | None = None,
                 downstream_extensions: Callable[[OpenDownstream], tuple[TcpExtension, ...]] | None = None,
                 on_downstream_reset: Callable[[Any, TcpConnection, float], None] | None = None) -> None:
        super().__init__(name, interfaces, rng=rng, policy=tcp_policy)
        unknown = [i for i in server_interfaces if i not in interfaces]
        if unknown or not server_interfaces:
            raise ValueError(f"{name}: server_interfaces {list(server_interfaces)} must name interfaces")
        self.timing = timing
        self.server_interfaces = tuple(server_interfaces)
        self.upstream_extensions = upstream_extensions or (lambda packet: ())
        self.downstream_extensions = downstream_extensions or (lambda request: ())
        self.on_downstream_reset = on_downstream_reset
        # RFC timing: the downstream SYN is paced by the client's SYN retransmissions (9.3).
        self.downstream_policy = (replace(self.policy, syn_retransmission_timer=False)
                                  if timing is ConverterTiming.RFC else self.policy)
        self.relays: dict[Relay, None] = {}  # live sessions, in arrival order (determinism)
        self._starting: list[Relay] = []

    def accept(self, session: RelaySession, packet: IpPacket, *,
               syn_data_mode: SynDataMode = SynDataMode.ACCEPT) -> Acceptance:
        """The listener's answer to an upstream SYN that ``session`` will serve."""
        withhold = self.timing is ConverterTiming.RFC
        relay = Relay(self, session, packet, withhold_synack=withhold)
        self.relays[relay] = None
        self._starting.append(relay)
        return Acceptance(relay, syn_data_mode=syn_data_mode, withhold_synack=withhold,
                          extensions=self.upstream_extensions(packet))

    # --- overridable ------------------------------------------------------------------------------

    def open_downstream(self, relay: Relay, request: OpenDownstream, now: float) -> TcpConnection | None:
        """Open the downstream connection (None: no interface of the destination's family)."""
        source = self.source_address_for(request.address)
        if source is None:
            return None
        return self.open(relay, source, request.address, request.port, now, syn_payload=request.syn_payload,
                         extensions=self.downstream_extensions_for(request), policy=self.downstream_policy)

    def source_address_for(self, destination: IpAddress) -> IpAddress | None:
        return next((self.interfaces[i] for i in self.server_interfaces
                     if self.interfaces[i].version == destination.version), None)

    def downstream_extensions_for(self, request: OpenDownstream) -> tuple[TcpExtension, ...]:
        return self.downstream_extensions(request)

    def on_upstream_reply(self, relay: Relay, reply: Any, now: float) -> None:
        """A session sent a protocol reply to its client (for the trace)."""

    def on_extension_event(self, relay: Relay, conn: TcpConnection, event: Any, now: float) -> None:
        """An extension of one of the relay's connections concluded something: record it."""
        self.emit(event)

    # --- the machine contract -----------------------------------------------------------------------

    def receive(self, port: str, packet: IpPacket, now: float) -> None:
        super().receive(port, packet, now)
        self._settle(packet, now)

    def _settle(self, packet: Any, now: float) -> None:
        """After a packet: start the relays it created, and pass on what the extensions of the
        connection it reached concluded without a connection event (MPTCP falling back on an ACK)."""
        starting, self._starting = self._starting, []
        for relay in starting:
            relay.start(now)
        if isinstance(packet, IpPacket):
            conn = self.connection_for(packet)
            owner = self.owners.get(id(conn)) if conn is not None else None
            if isinstance(owner, Relay) and owner in self.relays and owner.pull_extension_events(now):
                owner.apply(now, current=None)

    def get_timer(self) -> float | None:
        # The earliest of the sessions' deadlines and the host's own, without building a list (asked
        # after every input).
        timer_s = None
        for relay in self.relays:
            deadline = relay.session.get_timer()
            if deadline is not None and (timer_s is None or deadline < timer_s):
                timer_s = deadline
        own = super().get_timer()
        return own if own is not None and (timer_s is None or own < timer_s) else timer_s

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        for relay in list(self.relays):
            deadline = relay.session.get_timer()
            if deadline is not None and deadline <= now:
                relay.session.handle_timer(now)
                relay.apply(now, current=None)

    def connection_unreachable(self, conn: TcpConnection, message: Any, now: float) -> None:
        """A Destination Unreachable quoting one of our segments (``message.code``, ``.hard``, as
        :class:`mpsim.proto.middlebox.IcmpUnreachable` has them). For a downstream connection:
        while connecting, any code ends the attempt (RFC 8803 4.2 counts network, host and port
        unreachable as hard; Linux aborts SYN-SENT on any); once relaying, only hard errors do
        (RFC 5461: soft errors are retransmitted through)."""
        relay = self.owners.get(id(conn))
        if isinstance(relay, Relay) and conn is relay.downstream:
            if conn.state is TcpState.SYN_SENT or message.hard:
                self.downstream_unreachable(conn, message.code, now)
            return
        super().connection_unreachable(conn, message, now)

    def downstream_unreachable(self, conn: TcpConnection, icmp_code: int, now: float) -> None:
        """An ICMP error that ends downstream connection ``conn``."""
        relay = self.owners.get(id(conn))
        if isinstance(relay, Relay) and conn is relay.downstream:
            relay.session.downstream_unreachable(now, icmp_code)
            relay.apply(now, current=None)

    def send_rst_for_syn(self, syn_packet: IpPacket) -> None:
        """Answer a SYN with RST (RFC 9293 3.10.7.1), for a connection whose SYN-ACK never left."""
        rst = reset_for(syn_packet)
        if rst is not None:
            self._transmit(rst)
