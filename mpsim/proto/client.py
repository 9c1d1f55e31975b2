"""The client host: one machine, every signalling scheme, the fallbacks between them, and the caches.

A *request* (connect to a destination, send a request, read a response) becomes a *logical
connection*: one or more *attempts*, each a TCP connection from a fresh source port. The scheme
decides the first attempt; what the network and the far end answer decides whether the attempt
carries the request, or is reset and replaced by a fallback attempt. Every logical connection
ends with one :class:`ConnectionRecord` (emitted as :class:`ConnectionFinished`): the ``outcome``,
the ``fallback_reason``, setup and first-byte times, SYNs, RSTs and source ports it cost.

What a scheme sends and how it reads the answers is the scheme's own module in
:mod:`mpsim.proto.schemes` (plain, mptcp, mp-convert-option, syn-payload-eol, convert, socks5;
docs/design.md section 4), registered by name in :data:`mpsim.proto.catalogue.SCHEMES`;
``ClientPolicy.scheme`` names one. This module is the lifecycle every scheme shares
(:data:`LOGICAL_TRANSITIONS`): attempts, retries, fallbacks, timeouts and the record.

Fallback after a failed proxy attempt goes to a named target (:class:`FallbackTarget`): direct
MPTCP, direct plain TCP, or the next configured proxy. A fallback always uses a new source port:
the old 4-tuple is quarantined by the host (the RST may be lost, docs/protocols.md 5).

How answers are read (the proxies are mpsim/proto/convert.py, mp_convert_proxy.py, socks5_proxy.py):

* Before the path is ready (Convert reply, SOCKS5 success, the SYN-ACK of a signalled attempt),
  a failure is the proxy path's: the proxy is marked off, backed off or not authorized as the
  answer says, and the request falls back. What reports the *server's* answer (Convert Error
  96/97, SOCKS5 replies 3-5, an RST to an implicit SYN, which went to the server) ends the
  request instead: trying the server directly would be refused again.
* The MP_CONVERT proxy has no error message: its RST looks the same whether it or the server
  refused, so a refused server costs an explicit client a fallback (and the proxy its verdict).
  The on-path proxy answers as the server and echoes nothing: an implicit conversion is recorded
  as the MPTCP connection the client sees (``outcome`` mptcp, ``via_proxy`` False).
* Once the path is ready, a reset or timeout ends the request as failed (the application sees
  ECONNRESET; replaying the request elsewhere is not the transport's call), except after an
  implicit attempt's MPTCP fell back: an on-path proxy enforcing the I flag resets both legs, and
  the request goes again, unsignalled. A FIN before the whole response ends it as it stands.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from mpsim.proto.cache import CachePolicy, ClientCaches, ProxyState
from mpsim.proto.catalogue import SCHEMES
from mpsim.proto.convert import ConvertClientPolicy
from mpsim.proto.events import FallbackReason, Outcome
from mpsim.proto.host import Host
from mpsim.proto.mptcp import MptcpBlackholeState, MptcpClientExtension, MptcpPolicy
# The records the schemes share with this lifecycle live in the schemes package (base.py), so
# the dependency runs one way: this module imports the schemes, they never import it.
from mpsim.proto.schemes import Attempt, Proxy, SignalAckedAsData, SignallingScheme
from mpsim.proto.tcp import (
    Closed,
    CloseReason,
    DataReceived,
    Established,
    IpAddress,
    PeerClosed,
    ResetReceived,
    Rng,
    TcpConnection,
    TcpEvent,
    TcpExtension,
    TcpPolicy,
    TcpState,
    TimedOut,
    Unreachable,
)
from mpsim.proto.tfo import TfoClient, TfoPolicy

__all__ = ["Attempt", "ClientHost", "ClientPolicy", "ConnectionFinished", "ConnectionRecord", "FallbackTarget",
           "LOGICAL_TRANSITIONS", "LogicalConnection", "LogicalState", "Proxy", "Request", "SignalAckedAsData"]

class FallbackTarget(enum.Enum):
    """Where a client goes when its proxy attempt fails (RFC 8803 leaves it open, docs/protocols.md 8.1)."""

    DIRECT_MPTCP = "direct_mptcp"
    DIRECT_TCP = "direct_tcp"
    OTHER_PROXY = "other_proxy"  # the next configured proxy, then direct TCP


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """The client's choices where the RFCs leave one."""

    scheme: str = "convert"  # a name in mpsim.proto.catalogue.SCHEMES
    fallback: FallbackTarget = FallbackTarget.DIRECT_TCP
    upstream_mptcp: bool = True  # MP_CAPABLE towards the proxy (the point of converting)
    implicit: bool = False  # an implicit_capable scheme signals to the server, for an on-path proxy
    signal_acked_as_data: SignalAckedAsData = SignalAckedAsData.RESET
    bypass_mptcp_servers: bool = True  # go direct to servers learned MPTCP-capable (RFC 8803 5)
    convert_info_first: bool = False  # send an Info TLV on the first connection to each converter
    tfo_to_server: bool = False  # use TFO towards servers: directly, or through the converter's Connect TLV
    # Ask the converter for MPTCP towards the server (an empty kind-30 entry in the Connect TLV, RFC
    # 8803 7): the server's MP_CAPABLE then comes back in the Extended TCP Header, which is how a
    # client learns it may bypass the converter (section 5, Figure 11). Off by default because a
    # converter that does not convert MPTCP answers Error 33 and costs a retry.
    mptcp_to_server: bool = False
    proxy_syn_retries: int = 2  # SYNs to a proxy at 0, 1, 3 s; then give up on it (RFC silent)
    reply_timeout_s: float = 10.0  # wait for the Convert / SOCKS5 reply after the handshake
    # The application's idle timeout once the path is ready: with the request ACKed, nothing is
    # outstanding, so TCP itself never notices a response that stopped coming (None: wait forever).
    response_timeout_s: float | None = 300.0
    max_attempts: int = 6  # a bound on fallbacks and retries for one request

    def __post_init__(self) -> None:
        # An unknown name is an error with a did-you-mean suggestion; a str subclass (the scenario
        # schema's choices) is stored as the registered name itself.
        object.__setattr__(self, "scheme", SCHEMES.get(self.scheme).name)
        if self.proxy_syn_retries < 0 or self.max_attempts < 1 or self.reply_timeout_s <= 0 \
                or (self.response_timeout_s is not None and self.response_timeout_s <= 0):
            raise ValueError("proxy_syn_retries >= 0, max_attempts >= 1, reply_timeout_s > 0 and "
                             "response_timeout_s > 0 (or None) are required")


@dataclass(frozen=True, slots=True)
class Request:
    """Connect to ``destination:port``, send ``request_size_bytes``, expect ``response_size_bytes``."""

    destination: IpAddress
    port: int
    request_size_bytes: int = 100
    response_size_bytes: int = 1000
    scheme: str | None = None  # a name in SCHEMES; None: the client policy's scheme
    data: bytes = b""  # the request's bytes; empty: a generated one of request_size_bytes
    #: The application keeps the connection after the whole response: more follows on it (a
    #: simulated transfer, docs/sim.md "Routes"), and it closes once the peer has closed (or when
    #: its owner closes it). False: it closes as soon as the response is complete.
    keep_open: bool = False

    def __post_init__(self) -> None:
        if self.scheme is not None:
            object.__setattr__(self, "scheme", SCHEMES.get(self.scheme).name)

    def payload(self) -> bytes:
        if self.data:
            return self.data
        # A recognisable request the far end can measure; its content does not matter.
        return (b"REQ " + str(self.response_size_bytes).encode() + b"\n").ljust(self.request_size_bytes, b".")


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One logical connection, as the results tables show it."""

    request_id: int
    scheme: str
    destination: str
    outcome: str
    fallback_reason: str | None
    start_s: float
    setup_time_s: float | None  # until the path to the server could carry the request
    first_byte_time_s: float | None  # until the first response byte reached the application
    completion_time_s: float | None
    syns_sent: int
    rsts_sent: int
    source_ports_used: int
    bytes_sent: int  # request bytes handed to the network (first transmissions, signalling excluded)
    bytes_delivered: int  # response bytes delivered to the application
    attempts: int
    via_proxy: bool
    mptcp: bool  # the client's leg ran MPTCP (to the proxy or end to end)
    converter_error: int | None = None
    signal_leaked: bool = False  # signalling bytes reached a server application
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionFinished:
    record: ConnectionRecord


class LogicalState(enum.Enum):
    """Where a request stands (docs/state-diagrams.md draws LOGICAL_TRANSITIONS)."""

    NEW = "new"  # created; the scheme has not opened an attempt yet
    CONNECTING = "connecting"  # the current attempt's path is not ready (handshake, proxy reply)
    REQUESTING = "requesting"  # the path is ready: the request is under way, the response awaited
    DONE = "done"  # the record has been emitted; nothing changes any more


_L = LogicalState
#: The lifecycle of one request, whatever its scheme: the table decides, ``_move`` enforces it.
LOGICAL_TRANSITIONS: dict[LogicalState, dict[LogicalState, str]] = {
    _L.NEW: {_L.CONNECTING: "start: the scheme opens the first attempt"},
    _L.CONNECTING: {
        _L.CONNECTING: "attempt failed: retry, or fall back on a new source port",
        _L.REQUESTING: "path ready: handshake done, or the proxy's reply accepted",
        _L.DONE: "the server's refusal, out of attempts, or abandoned"},
    _L.REQUESTING: {
        _L.CONNECTING: "an on-path proxy reverted an implicit attempt: again, unsignalled",
        _L.DONE: "whole response, peer closed, reset, response timeout, or abandoned"},
    _L.DONE: {},
}


def _opened(attempt: Attempt) -> TcpConnection:
    """The attempt's connection, which open_attempt made; typed as one for the compiled build
    (docs/sim.md "Performance")."""
    conn = attempt.conn
    if conn is None:
        raise RuntimeError("the attempt has no connection yet")  # a bug, not input
    return conn


class LogicalConnection:
    """One request: its attempts, fallbacks, and the record it ends with. Owner of its TCP connections.

    The lifecycle is the same for every scheme (:data:`LOGICAL_TRANSITIONS`); what an attempt
    sends and how its answers are read is the scheme's (:mod:`mpsim.proto.schemes`), which acts
    through the public helpers below: together with ``host``, ``request``, ``payload`` and the
    record fields ``detail``, ``converter_error``, ``fallback_reason`` and ``signal_leaked``, they
    are :class:`~mpsim.proto.schemes.base.SchemeLifecycle`, all a scheme may use. Commands:
    :meth:`start` (the host calls it) and :meth:`abandon`.
    """

    def __init__(self, host: ClientHost, request_id: int, request: Request, now: float) -> None:
        self.host = host
        self.request_id = request_id
        self.request = request
        self.scheme: SignallingScheme = SCHEMES.get(request.scheme or host.client_policy.scheme)
        self.state = LogicalState.NEW
        self.start_s = now
        self.payload = request.payload()
        self.attempts: list[Attempt] = []
        self.proxies_tried: list[Proxy] = []
        self.outcome: Outcome | None = None
        self.fallback_reason: FallbackReason | None = None
        self.via_proxy = False
        self.converter_error: int | None = None
        self.signal_leaked = False
        self.setup_s: float | None = None
        self.first_byte_s: float | None = None
        self.delivered_bytes = 0
        self._deadline: float | None = None
        self.detail = ""

    @property
    def deadline(self) -> float | None:
        """When this request's own timer (reply or response timeout) fires; None: not armed."""
        return self._deadline

    @deadline.setter
    def deadline(self, value: float | None) -> None:
        # The host keeps the earliest deadline of its unfinished requests rather than scanning them
        # on every get_timer: any change makes it work that out again, once, when next asked.
        self._deadline = value
        self.host._request_timer_stale = True

    @property
    def finished(self) -> bool:
        return self.state is LogicalState.DONE

    def _move(self, state: LogicalState) -> None:
        if state not in LOGICAL_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal request transition {self.state.name} -> {state.name}")  # a bug, not input
        self.state = state

    # --- commands --------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        if self.state is not LogicalState.NEW:
            raise RuntimeError(f"request {self.request_id} started twice")
        self.scheme.start(self, now)

    def abandon(self, now: float, detail: str) -> None:
        """Give the request up as failed (``detail`` says why): its connections are reset, unless
        the host has forgotten them (a reboot, a lost network), and its record is emitted with
        every field a finished one has. Nothing happens to a request that has finished."""
        self._finish(now, Outcome.FAILED, detail)

    # --- for the schemes: opening attempts -------------------------------------------------------

    def attempts_left(self) -> bool:
        return len(self.attempts) < self.host.client_policy.max_attempts

    def new_attempt(self, via: SignallingScheme | None, proxy: Proxy | None = None, *,
                    implicit: bool = False) -> Attempt:
        # The reply deadline belongs to the attempt that set it: left armed, it would cut a
        # fallback attempt short (a direct SYN still retrying when the old deadline passes).
        self.deadline = None
        self._move(LogicalState.CONNECTING)
        attempt = Attempt(via, proxy=proxy, implicit=implicit)
        self.attempts.append(attempt)
        return attempt

    def mptcp_extension(self, attempt: Attempt, policy: MptcpPolicy | None = None) -> tuple[TcpExtension, ...]:
        """MP_CAPABLE on the attempt's SYN: the MPTCP extension, kept as ``attempt.mptcp``."""
        attempt.mptcp = MptcpClientExtension(rng=self.host.rng, mib=self.host.mib,
                                             policy=policy or self.host.mptcp_policy,
                                             blackhole=self.host.mptcp_blackhole)
        return (attempt.mptcp,)

    def local_address(self, remote: IpAddress) -> IpAddress:
        return self.host.source_address(remote)

    def open_attempt(self, attempt: Attempt, remote: IpAddress, port: int, now: float, *, syn_payload: bytes = b"",
                     extensions: tuple[TcpExtension, ...] = (), policy: TcpPolicy | None = None) -> None:
        """Open the attempt's TCP connection (this request owns it); send with :meth:`send_rest`
        and hand the first packets to the host with :meth:`collect`."""
        attempt.syn_payload = syn_payload
        attempt.conn = self.host.open(self, self.local_address(remote), remote, port, now, syn_payload=syn_payload,
                                      extensions=extensions, policy=policy)

    def send_rest(self, attempt: Attempt, sent_in_syn_bytes: int, now: float) -> None:
        """The request bytes that did not fit into the SYN go after the handshake."""
        if sent_in_syn_bytes < len(self.payload):
            _opened(attempt).send(self.payload[sent_in_syn_bytes:], now)

    def collect(self, attempt: Attempt, now: float) -> None:
        self.host.collect(_opened(attempt), now)

    def proxy_tcp_policy(self) -> TcpPolicy:
        # Give up on an unanswered proxy quickly, as Linux gives up on MP_CAPABLE SYNs: SYNs at
        # 0, 1 and 3 s with the default of 2 retries, then the fallback.
        return replace(self.host.policy, syn_retries=self.host.client_policy.proxy_syn_retries)

    def syn_data_limit_bytes(self, remote: IpAddress) -> int:
        """What one SYN may carry towards ``remote``: the cached MSS, or RFC 7413 4.1.3's default
        (536 bytes over IPv4, 1220 over IPv6) — signalling and request together."""
        return self.host.tfo.syn_data_limit_bytes(self.local_address(remote), remote)

    def open_direct(self, now: float, *, mptcp: bool, mptcp_policy: MptcpPolicy | None = None) -> None:
        """An attempt to the server itself, plain TCP or MPTCP (with TFO when the policy says so):
        the plain and mptcp schemes, and every fallback."""
        attempt = self.new_attempt(None)
        extensions = self.mptcp_extension(attempt, mptcp_policy) if mptcp else ()
        dest, port = self.request.destination, self.request.port
        if self.host.client_policy.tfo_to_server:
            plan = self.host.tfo.plan_syn(self.local_address(dest), dest, now, self.payload)
            self.open_attempt(attempt, dest, port, now, syn_payload=plan.syn_payload,
                              extensions=(self.host.tfo.extension(plan), *extensions))
            if plan.rest(self.payload):
                _opened(attempt).send(plan.rest(self.payload), now)
        else:
            self.open_attempt(attempt, dest, port, now, extensions=extensions)
            _opened(attempt).send(self.payload, now)
        self.collect(attempt, now)

    def _next_proxy(self, now: float) -> Proxy | None:
        for proxy in self.host.proxies:
            if proxy not in self.proxies_tried and self.host.caches.proxy_usable(proxy, now):
                return proxy
        return None

    def open_via_proxy(self, now: float) -> None:
        """The scheme's attempt to the next configured proxy the caches allow, else the fallback."""
        proxy = self._next_proxy(now)
        if proxy is None:
            self.fall_back(now, FallbackReason.CONVERTER_CACHED_OFF if self.host.proxies else
                           FallbackReason.PROXY_FAILED)
            return
        self.proxies_tried.append(proxy)
        self.scheme.open(self, now, proxy)

    def arm_reply_deadline(self, now: float) -> None:
        """Wait ``reply_timeout_s`` for the proxy's reply after the handshake."""
        self.deadline = now + self.host.client_policy.reply_timeout_s

    # --- for the schemes: verdicts ---------------------------------------------------------------

    def path_ready(self, attempt: Attempt, now: float) -> None:
        """The attempt can carry the request (the scheme's handshake and reply are done)."""
        self._move(LogicalState.REQUESTING)
        attempt.ready = True
        self._await_response(now)
        if self.setup_s is None:
            self.setup_s = now - self.start_s
        self.via_proxy = attempt.proxy is not None or \
            (attempt.implicit and attempt.via is not None and attempt.via.converted_implicitly(attempt))
        if attempt.proxy is not None:
            self.host.caches.mark_usable(attempt.proxy)

    def abort(self, attempt: Attempt, now: float) -> None:
        """Reset the attempt's connection (if the host still has it); its Closed event is no news."""
        attempt.aborting = True
        if attempt.conn is not None and attempt.conn.four_tuple in self.host.connections:
            self.host.abort(attempt.conn, now)

    def fall_back(self, now: float, reason: FallbackReason) -> None:
        """The proxy path failed for ``reason``: try the configured fallback on a new port."""
        self.fallback_reason = self.fallback_reason or reason
        if not self.attempts_left():
            self._finish(now, Outcome.FAILED, "too many attempts")
            return
        target = self.host.client_policy.fallback
        if target is FallbackTarget.OTHER_PROXY and self.scheme.proxy is not None:
            if self._next_proxy(now) is not None:
                self.open_via_proxy(now)
                return
            target = FallbackTarget.DIRECT_TCP
        self.open_direct(now, mptcp=target is FallbackTarget.DIRECT_MPTCP)

    def fail(self, now: float, detail: str) -> None:
        """End the request as failed: what the server answered (through the proxy) ends it."""
        self._finish(now, Outcome.FAILED, detail)

    def _attempt_failed(self, attempt: Attempt, now: float, reason: FallbackReason | None, *,
                        detail: str = "") -> None:
        """The current attempt cannot carry the request: reset it, then retry, fall back or give up."""
        if self.finished or attempt.failed or attempt is not self.attempts[-1]:
            return
        attempt.failed = True
        self.abort(attempt, now)
        if attempt.via is None or (attempt.proxy is None and reason is None):
            retry = attempt.mptcp.retry_policy if attempt.mptcp is not None else None
            if retry is not None and self.attempts_left():
                self.fallback_reason = self.fallback_reason or FallbackReason.MP_CAPABLE_MISSING_SYNACK
                self.open_direct(now, mptcp=True, mptcp_policy=retry)
                return
            self._finish(now, Outcome.FAILED, detail or (reason.value if reason else "failed"))
            return
        reason = reason or FallbackReason.CONVERTER_REPLY_INVALID
        if attempt.proxy is not None:
            self.host.caches.mark_off(attempt.proxy, now, reason)
        self.fall_back(now, reason)

    # --- the owner interface -----------------------------------------------------------------------

    def on_tcp_event(self, host: Host, conn: TcpConnection, event: TcpEvent, now: float) -> None:
        attempt = next((a for a in self.attempts if a.conn is conn), None)
        if attempt is None:
            return
        if self.finished:
            # A connection kept open after its response (Request.keep_open) answers the peer's
            # FIN with its own, as an application that reads EOF and closes does.
            if isinstance(event, PeerClosed) and self.request.keep_open and conn.state is TcpState.CLOSE_WAIT:
                conn.close(now)
            return
        if attempt.mptcp is not None:
            for fact in attempt.mptcp.pull_events():
                host.emit(fact)
        if isinstance(event, Established):
            if attempt.via is None:
                self.path_ready(attempt, now)
            else:
                attempt.via.on_established(self, attempt, now)
        elif isinstance(event, DataReceived):
            self._on_data(attempt, event.data, now)
        elif isinstance(event, PeerClosed):
            if attempt.ready:  # the far end has said all it will: a short response ends the request too
                self._complete(attempt, now)
            else:
                self._attempt_failed(attempt, now, self._reply_missing(attempt))
        elif isinstance(event, Unreachable):  # an ICMP error ended the attempt in SYN-SENT (Linux)
            self._connection_lost(attempt, now, None if attempt.proxy is None else FallbackReason.CONVERTER_UNREACHABLE,
                                  f"unreachable (ICMP code {event.icmp_code})")
        elif isinstance(event, (ResetReceived, TimedOut)):
            detail = "refused" if isinstance(event, ResetReceived) and event.refused else \
                "reset" if isinstance(event, ResetReceived) else f"timed out ({event.what})"
            self._connection_lost(attempt, now, self._failure_reason(attempt, event), detail)
        elif isinstance(event, Closed) and event.reason is CloseReason.ABORTED and not attempt.aborting \
                and not attempt.failed:
            # An extension aborted the connection: it refused the SYN-ACK (RFC 8803 8 payload
            # check, signalling check, MPTCP v0 retry), or an MP_FASTCLOSE came (a proxy's reset).
            self._connection_lost(attempt, now, attempt.reason or self._synack_refused_reason(attempt),
                                  "reset (MP_FASTCLOSE)" if attempt.ready else "SYN-ACK refused")

    def _connection_lost(self, attempt: Attempt, now: float, reason: FallbackReason | None, detail: str) -> None:
        if self._reverted_by_proxy(attempt):
            self._attempt_failed(attempt, now, attempt.mptcp.fallback_reason, detail=detail)  # type: ignore[union-attr]
        elif attempt.ready:
            # The request was under way: the application sees ECONNRESET or ETIMEDOUT. Replaying
            # it on another path is not the transport's call, nor is blaming the proxy.
            self._finish(now, Outcome.FAILED, detail)
        else:
            self._attempt_failed(attempt, now, reason, detail=detail)

    def _reverted_by_proxy(self, attempt: Attempt) -> bool:
        """An implicit signalled attempt whose MPTCP fell back, reset before any answer came: an
        on-path proxy enforcing the I flag ("do not revert to TCP") resets both legs, so the
        request may go again, unsignalled, on a new port (mp_convert_proxy.py, reset_on_revert)."""
        # A SYN-ACK must have come: a RST to the SYN itself is the server refusing (the proxy, if
        # any, only intercepts SYNs that still carry MP_CAPABLE and answers them with a SYN-ACK).
        return attempt.implicit and self.first_byte_s is None and attempt.conn is not None \
            and attempt.conn.synack is not None and attempt.mptcp is not None \
            and attempt.mptcp.fallback_reason is not None

    @staticmethod
    def _failure_reason(attempt: Attempt, event: TcpEvent) -> FallbackReason | None:
        if attempt.via is None or (attempt.proxy is None and isinstance(event, ResetReceived)):
            # Nothing to fall back from: the server itself refused or stayed silent (implicit: the
            # SYN went to the server, and an on-path proxy answers for it as the server would).
            return None
        if isinstance(event, TimedOut):
            return FallbackReason.CONVERTER_SYN_TIMEOUT if event.what == "syn" else FallbackReason.CONVERTER_REPLY_MISSING
        return attempt.via.refused_reason(attempt, event)

    @staticmethod
    def _synack_refused_reason(attempt: Attempt) -> FallbackReason:
        reason = attempt.via.synack_refused_reason(attempt) if attempt.via is not None else None
        if reason is not None:
            return reason
        if attempt.mptcp is not None and attempt.mptcp.retry_policy is not None:
            return FallbackReason.MP_CAPABLE_MISSING_SYNACK
        return FallbackReason.CONVERTER_REPLY_INVALID

    @staticmethod
    def _reply_missing(attempt: Attempt) -> FallbackReason:
        if attempt.via is not None:
            return attempt.via.reply_missing_reason(attempt)
        return FallbackReason.CONVERTER_REPLY_MISSING

    def _await_response(self, now: float) -> None:
        timeout_s = self.host.client_policy.response_timeout_s
        self.deadline = None if timeout_s is None else now + timeout_s

    def _on_data(self, attempt: Attempt, data: bytes, now: float) -> None:
        if not attempt.ready:
            if attempt.via is not None:
                reply = attempt.via.on_reply(self, attempt, data, now)
                if not reply:
                    return
                data = reply
            if not data:
                return
        if self.first_byte_s is None:
            self.first_byte_s = now - self.start_s
        self._await_response(now)
        self.delivered_bytes += len(data)
        if self.delivered_bytes >= self.request.response_size_bytes:
            self._complete(attempt, now)

    # --- ending --------------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        attempt = self.attempts[-1]
        if attempt.ready:
            self._finish(now, Outcome.FAILED, f"no response for {self.host.client_policy.response_timeout_s:g} s")
        elif attempt.conn is not None:
            self._attempt_failed(attempt, now, self._reply_missing(attempt))

    def _complete(self, attempt: Attempt, now: float) -> None:
        if self.delivered_bytes < self.request.response_size_bytes:
            # The peer closed before the whole response: the application got less than it asked
            # for, which is no success whatever path carried it.
            conn = _opened(attempt)
            if conn.state is not TcpState.CLOSED:
                conn.close(now)
                self.host.collect(conn, now)
            self._finish(now, Outcome.FAILED, f"peer closed after {self.delivered_bytes} response bytes")
            return
        mptcp_ext = attempt.mptcp
        mptcp_on = mptcp_ext is not None and mptcp_ext.negotiated
        if self.via_proxy and (mptcp_on or not self.host.client_policy.upstream_mptcp):
            outcome = Outcome.CONVERTED
        elif not self.via_proxy and mptcp_on:
            outcome = Outcome.MPTCP
        elif self.scheme.plain_tcp and self.fallback_reason is None:
            outcome = Outcome.TCP
        else:  # through the proxy without MPTCP on our leg, or direct after a fallback
            outcome = Outcome.FALLBACK_TCP
            if self.fallback_reason is None and mptcp_ext is not None:
                self.fallback_reason = mptcp_ext.fallback_reason
        conn = _opened(attempt)
        # Kept open only while both directions are: a peer that closed already has nothing more to send.
        if conn.state is not TcpState.CLOSED and not (self.request.keep_open and conn.state is TcpState.ESTABLISHED):
            conn.close(now)
            self.host.collect(conn, now)
        self._finish(now, outcome)

    def _finish(self, now: float, outcome: Outcome, detail: str = "") -> None:
        if self.finished:
            return
        self._move(LogicalState.DONE)
        self.host.unfinished.pop(self.request_id, None)
        self.outcome = outcome
        self.deadline = None  # also marks the host's earliest deadline stale: this one left the set
        conns = [a.conn for a in self.attempts if a.conn is not None]
        if outcome is Outcome.FAILED:
            for attempt in self.attempts:
                if attempt.conn is not None and attempt.conn.state is not TcpState.TIME_WAIT:
                    self.abort(attempt, now)
        record = ConnectionRecord(
            request_id=self.request_id,
            scheme=self.scheme.name,
            # ADDR:PORT; an IPv6 address in brackets, so that the port reads apart (RFC 3986 3.2.2).
            destination=f"[{self.request.destination}]:{self.request.port}" if self.request.destination.version == 6
            else f"{self.request.destination}:{self.request.port}",
            outcome=outcome.value,
            fallback_reason=self.fallback_reason.value if self.fallback_reason else None,
            start_s=self.start_s,
            setup_time_s=self.setup_s,
            first_byte_time_s=self.first_byte_s,
            completion_time_s=now - self.start_s if outcome is not Outcome.FAILED else None,
            syns_sent=sum(c.syns_sent for c in conns),
            rsts_sent=sum(c.rsts_sent for c in conns),
            source_ports_used=len(conns),
            bytes_sent=self._request_bytes_sent(),
            bytes_delivered=self.delivered_bytes,
            attempts=len(self.attempts),
            via_proxy=self.via_proxy,
            mptcp=any(a.mptcp is not None and a.mptcp.negotiated for a in self.attempts if a.ready),
            converter_error=self.converter_error,
            signal_leaked=self.signal_leaked,
            detail=detail or self.detail,
        )
        self.host.emit(ConnectionFinished(record))
        self.host.finished.append(record)

    def _request_bytes_sent(self) -> int:
        total = 0
        for attempt in self.attempts:
            if attempt.conn is not None:
                total += max(0, attempt.conn.bytes_sent - attempt.signal_bytes)
        return total


class ClientHost(Host):
    """A client: requests in, logical connections out, caches kept across them.

    Commands: :meth:`connect` (a :class:`Request`), and the re-probe triggers :meth:`reboot`,
    :meth:`attach_network`, :meth:`discover_proxy` (the timer trigger is internal). Every finished
    request is emitted as :class:`ConnectionFinished` and kept in ``finished``.
    """

    def __init__(self, name: str, interfaces: dict[str, IpAddress], *, rng: Rng,
                 policy: ClientPolicy | None = None, proxies: tuple[Proxy, ...] = (),
                 tcp_policy: TcpPolicy | None = None, mptcp_policy: MptcpPolicy | None = None,
                 tfo_policy: TfoPolicy | None = None, cache_policy: CachePolicy | None = None,
                 convert_policy: ConvertClientPolicy | None = None) -> None:
        super().__init__(name, interfaces, rng=rng, policy=tcp_policy)
        self.client_policy = policy or ClientPolicy()
        self.proxies = list(proxies)
        self.mptcp_policy = mptcp_policy or MptcpPolicy()
        self.mptcp_blackhole = MptcpBlackholeState(self.mptcp_policy)
        self.tfo = TfoClient(tfo_policy, mib=self.mib)
        self.caches = ClientCaches(cache_policy or CachePolicy())
        self.convert_policy = convert_policy or ConvertClientPolicy()
        # Server TFO cookies learned through a converter, per (converter, server): the server binds a
        # cookie to the address it sees, the converter's, so one learned directly (self.tfo, per
        # client address) is never offered through a converter, nor one of these directly.
        self.converter_tfo_cookies: dict[tuple[Proxy, IpAddress], bytes] = {}
        self.converters_seen: set[Proxy] = set()
        self.logical: dict[int, LogicalConnection] = {}
        #: The logical connections not finished yet, in request order: the timer scans these only.
        self.unfinished: dict[int, LogicalConnection] = {}
        self.finished: list[ConnectionRecord] = []
        self._next_request_id = 0
        # The earliest deadline of the unfinished requests, worked out again only after a request's
        # deadline changed or a request started or finished (``_request_timer_stale``).
        self._request_timer_s: float | None = None
        self._request_timer_stale = False

    # --- commands ------------------------------------------------------------------------------------

    def connect(self, request: Request, now: float) -> int:
        """Start a request; returns its id (the ``request_id`` of its record)."""
        request_id = self._next_request_id
        self._next_request_id += 1
        logical = LogicalConnection(self, request_id, request, now)
        self.logical[request_id] = logical
        self.unfinished[request_id] = logical
        self._request_timer_stale = True
        logical.start(now)
        return request_id

    def reboot(self, now: float) -> None:
        """Volatile state is lost: connections vanish without a RST, caches and TIME-WAIT are gone."""
        # Forget the connections first, so that ending their requests sends nothing: a host
        # that lost its memory cannot reset what it no longer knows (the peers find out later).
        self.connections.clear()
        self.owners.clear()
        self._by_ports.clear()
        self._out.clear()
        for logical in self.logical.values():
            if not logical.finished:
                logical.abandon(now, "host rebooted")
        self.ports = type(self.ports)(self.rng, self.ports.low, self.ports.high)
        self.caches.host_rebooted()
        self.tfo.cache.clear()
        self.converter_tfo_cookies.clear()
        self.converters_seen.clear()
        self.mptcp_blackhole = MptcpBlackholeState(self.mptcp_policy)

    def attach_network(self, now: float, interfaces: dict[str, IpAddress] | None = None) -> None:
        """The host moved to another network (other middleboxes): cached verdicts are re-probed.
        With new ``interfaces``, connections bound to an address the host no longer has are gone
        with the old network (nothing can leave from it, not even an RST): their requests fail."""
        if interfaces is not None:
            self.interfaces = dict(interfaces)
            stale = [c for c in self.connections.values() if c.local_addr not in self.interfaces.values()]
            for conn in stale:
                self._drop(conn)
            for logical in self.logical.values():
                if not logical.finished and any(a.conn in stale for a in logical.attempts):
                    logical.abandon(now, "network changed")
        self.caches.network_attached()

    def discover_proxy(self, proxy: Proxy, now: float) -> None:
        """A proxy learned afresh (configuration, DHCP): its cached state is dropped."""
        if proxy not in self.proxies:
            self.proxies.append(proxy)
        self.caches.new_proxy_discovered(proxy)

    def source_address(self, remote: IpAddress) -> IpAddress:
        """The first interface address of the remote's family (multipath subflows are the simulator's)."""
        for address in self.interfaces.values():
            if address.version == remote.version:
                return address
        raise ValueError(f"{self.name} has no IPv{remote.version} address to reach {remote}")

    # --- the machine contract ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self._request_timer_stale:
            self._request_timer_s = min((lc._deadline for lc in self.unfinished.values() if lc._deadline is not None),
                                        default=None)
            self._request_timer_stale = False
        timer_s = self._request_timer_s
        # Asked after every input of the machine: the two other deadlines without a tuple or a loop.
        deadline = super().get_timer()
        if deadline is not None and (timer_s is None or deadline < timer_s):
            timer_s = deadline
        deadline = self.caches.get_timer()
        if deadline is not None and (timer_s is None or deadline < timer_s):
            timer_s = deadline
        return timer_s

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        self.caches.handle_timer(now)
        for event in self.caches.events:
            self.emit(event)
        self.caches.events.clear()
        for logical in list(self.unfinished.values()):
            # Only a request whose deadline has come has anything to do (LogicalConnection.handle_timer).
            if not logical.finished and logical._deadline is not None and logical._deadline <= now:
                logical.handle_timer(now)

    def next_event(self) -> Any | None:
        if self.caches.events:  # asked after every input; mostly the caches have nothing to say
            for event in self.caches.events:
                self.emit(event)
            self.caches.events.clear()
        return super().next_event()

    def proxy_state(self, proxy: Proxy, now: float) -> ProxyState:
        return self.caches.proxy(proxy, now).state
