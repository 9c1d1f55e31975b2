"""The client host: one machine, every signalling scheme, the fallbacks between them, and the caches.

A *request* (connect to a destination, send a request, read a response) becomes a *logical
connection*: one or more *attempts*, each a TCP connection from a fresh source port. The scheme
decides the first attempt; what the network and the far end answer decides whether the attempt
carries the request, or is reset and replaced by a fallback attempt. Every logical connection
ends with one :class:`ConnectionRecord` (emitted as :class:`ConnectionFinished`): the ``outcome``,
the ``fallback_reason``, setup and first-byte times, SYNs, RSTs and source ports it cost.

Schemes (docs/design.md section 4):

====================  ===========================================================================
plain                 ordinary TCP to the server
mptcp                 end-to-end MPTCP (RFC 8684) with its fallback rules; v0 retry as a policy
mp-convert-option     MP_CAPABLE + MP_CONVERT(destination) in the SYN options, to the proxy
                      (explicit) or to the server through an on-path proxy (implicit)
syn-payload-eol       MP_CONVERT as option-formatted bytes at the start of the SYN payload,
                      ended by EOL, then the request (the 2016 proposal); explicit or implicit
convert               RFC 8803: Convert header + TLVs in the SYN payload to the converter
socks5                RFC 1928 through a proxy: greeting and CONNECT after the handshake (2 RTTs)
====================  ===========================================================================

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

from mpsim.proto import schemes as _schemes  # noqa: F401  (registers the schemes)
from mpsim.proto.cache import CachePolicy, ClientCaches, ProxyState
from mpsim.proto.catalogue import SCHEMES
from mpsim.proto.convert import (
    ConvertClientExchange,
    ConvertClientPolicy,
    ConvertReaction,
    ConvertSynAckCheck,
)
from mpsim.proto.events import FallbackReason, Outcome
from mpsim.proto.host import Host
from mpsim.proto.mptcp import MptcpBlackholeState, MptcpClientExtension, MptcpPolicy
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
    syn_base_options,
)
from mpsim.proto.socks5_proxy import Socks5ClientExchange, Socks5Result
from mpsim.proto.tfo import TfoClient, TfoPolicy
from mpsim.wire.convert import ConnectOption
from mpsim.wire.mp_convert import MpConvert, mp_convert_from_option
from mpsim.wire.mptcp import MpCapable
from mpsim.wire.options import TCP_OPTION_SPACE_BYTES, TcpOptionKind, option_space_bytes
from mpsim.wire.segment import TcpSegment
from mpsim.wire.socks5 import Socks5Reply
from mpsim.wire.syn_payload import SynPayloadSignal, encode_syn_payload

Proxy = tuple[IpAddress, int]
#: SOCKS5 replies that report the server's answer, not the proxy's state: network or host
#: unreachable, connection refused (RFC 1928 6). Like Convert's Error 96/97 they end the request.
_SOCKS5_SERVER_ANSWERS = frozenset({Socks5Reply.NETWORK_UNREACHABLE, Socks5Reply.HOST_UNREACHABLE,
                                    Socks5Reply.CONNECTION_REFUSED})


class FallbackTarget(enum.Enum):
    """Where a client goes when its proxy attempt fails (RFC 8803 leaves it open, docs/protocols.md 8.1)."""

    DIRECT_MPTCP = "direct_mptcp"
    DIRECT_TCP = "direct_tcp"
    OTHER_PROXY = "other_proxy"  # the next configured proxy, then direct TCP


class SignalAckedAsData(enum.Enum):
    """What a client does when a host that is not a proxy ACKed its signalling as SYN data (a
    legacy stack that queues SYN data, RFC 793): the bytes are now in the server's stream."""

    RESET = "reset"  # RST, then fall back on a new source port (the RST may be lost)
    CONTINUE = "continue"  # go on as plain TCP; the server application got the signalling bytes


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """The client's choices where the RFCs leave one."""

    scheme: str = "convert"  # a name in mpsim.proto.catalogue.SCHEMES
    fallback: FallbackTarget = FallbackTarget.DIRECT_TCP
    upstream_mptcp: bool = True  # MP_CAPABLE towards the proxy (the point of converting)
    implicit: bool = False  # mp-convert-option / syn-payload-eol: SYN to the server via an on-path proxy
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


class AttemptKind(enum.Enum):
    DIRECT = "direct"
    CONVERT = "convert"
    MP_CONVERT_OPTION = "mp_convert_option"
    SYN_PAYLOAD_EOL = "syn_payload_eol"
    SOCKS5 = "socks5"


@dataclass
class _Attempt:
    kind: AttemptKind
    conn: TcpConnection | None = None
    proxy: Proxy | None = None
    mptcp: MptcpClientExtension | None = None
    exchange: Any = None  # ConvertClientExchange or Socks5ClientExchange
    syn_payload: bytes = b""
    signal_bytes: int = 0  # signalling this attempt sent (Convert TLVs, EOL options, SOCKS5), not the request
    ready: bool = False
    failed: bool = False  # its failure has been dealt with (retry, fallback or the end)
    reason: FallbackReason | None = None  # why the SYN-ACK was refused, for the Closed event that follows
    aborting: bool = False  # we reset it ourselves: its Closed event is no news


class _SignalCheck(TcpExtension):
    """Judges the SYN-ACK of a pre-RFC 8803 signalling attempt (mp-convert-option,
    syn-payload-eol): who answered, and what happened to the signalling bytes."""

    def __init__(self, logical: LogicalConnection, attempt: _Attempt) -> None:
        self.logical, self.attempt = logical, attempt

    def on_synack(self, conn: TcpConnection, synack: TcpSegment) -> str | None:
        return self.logical._judge_signal_synack(self.attempt, conn, synack)


class _MpConvertOption(TcpExtension):
    """Puts MP_CONVERT on every SYN that carries MP_CAPABLE: a SYN without MP_CAPABLE cannot ask
    for an MPTCP conversion, and one without MP_CONVERT is refused by the explicit proxy (so the
    option may not be dropped from retransmissions the way TFO's is). Must follow ``mptcp`` in
    the connection's extensions, which decides per SYN first."""

    def __init__(self, option: Any, mptcp: MptcpClientExtension) -> None:
        self.option, self.mptcp = option, mptcp

    def syn_options(self, conn: TcpConnection, retransmission: int) -> tuple:
        return (self.option,) if self.mptcp.fallback_reason is None else ()


class LogicalConnection:
    """One request: its attempts, fallbacks, and the record it ends with. Owner of its TCP connections."""

    def __init__(self, host: ClientHost, request_id: int, request: Request, now: float) -> None:
        self.host = host
        self.request_id = request_id
        self.request = request
        self.scheme = SCHEMES.get(request.scheme or host.client_policy.scheme)
        self.start_s = now
        self.payload = request.payload()
        self.attempts: list[_Attempt] = []
        self.proxies_tried: list[Proxy] = []
        self.outcome: Outcome | None = None
        self.fallback_reason: FallbackReason | None = None
        self.via_proxy = False
        self.converter_error: int | None = None
        self.signal_leaked = False
        self.setup_s: float | None = None
        self.first_byte_s: float | None = None
        self.delivered_bytes = 0
        self.deadline: float | None = None
        self.finished = False
        self.detail = ""

    # --- planning -----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        policy = self.host.client_policy
        if self.scheme.name == "plain":
            self._open_direct(now, mptcp=False)
        elif self.scheme.name == "mptcp":
            self._open_direct(now, mptcp=True)
        elif self.scheme.name == "convert" and policy.bypass_mptcp_servers and \
                self.host.caches.server_mptcp_capable(self.request.destination):
            self.detail = "bypassed the converter: server known MPTCP-capable"
            self._open_direct(now, mptcp=True)
        elif policy.implicit and self.scheme.implicit_capable:
            self._open_signalled(now, proxy=None)
        else:
            self._open_via_proxy(now)

    def _next_proxy(self, now: float) -> Proxy | None:
        for proxy in self.host.proxies:
            if proxy not in self.proxies_tried and self.host.caches.proxy_usable(proxy, now):
                return proxy
        return None

    def _open_via_proxy(self, now: float) -> None:
        proxy = self._next_proxy(now)
        if proxy is None:
            self._fall_back(now, FallbackReason.CONVERTER_CACHED_OFF if self.host.proxies else
                            FallbackReason.PROXY_FAILED)
            return
        self.proxies_tried.append(proxy)
        if self.scheme.name == "convert":
            self._open_convert(now, proxy)
        elif self.scheme.name == "socks5":
            self._open_socks5(now, proxy)
        else:
            self._open_signalled(now, proxy)

    def _fall_back(self, now: float, reason: FallbackReason) -> None:
        """The proxy path failed for ``reason``: try the configured fallback on a new port."""
        self.fallback_reason = self.fallback_reason or reason
        if len(self.attempts) >= self.host.client_policy.max_attempts:
            self._finish(now, Outcome.FAILED, "too many attempts")
            return
        target = self.host.client_policy.fallback
        if target is FallbackTarget.OTHER_PROXY and self.scheme.proxy is not None:
            if self._next_proxy(now) is not None:
                self._open_via_proxy(now)
                return
            target = FallbackTarget.DIRECT_TCP
        self._open_direct(now, mptcp=target is FallbackTarget.DIRECT_MPTCP)

    # --- opening attempts ----------------------------------------------------------------------

    def _new_attempt(self, kind: AttemptKind, proxy: Proxy | None = None) -> _Attempt:
        # The reply deadline belongs to the attempt that set it: left armed, it would cut a
        # fallback attempt short (a direct SYN still retrying when the old deadline passes).
        self.deadline = None
        attempt = _Attempt(kind, proxy=proxy)
        self.attempts.append(attempt)
        return attempt

    def _mptcp_extension(self, attempt: _Attempt, policy: MptcpPolicy | None = None) -> tuple[TcpExtension, ...]:
        attempt.mptcp = MptcpClientExtension(rng=self.host.rng, mib=self.host.mib,
                                             policy=policy or self.host.mptcp_policy,
                                             blackhole=self.host.mptcp_blackhole)
        return (attempt.mptcp,)

    def _local_address(self, remote: IpAddress) -> IpAddress:
        return self.host.source_address(remote)

    def _open(self, attempt: _Attempt, remote: IpAddress, port: int, now: float, *, syn_payload: bytes = b"",
              extensions: tuple[TcpExtension, ...] = (), policy: TcpPolicy | None = None) -> None:
        attempt.syn_payload = syn_payload
        attempt.conn = self.host.open(self, self._local_address(remote), remote, port, now, syn_payload=syn_payload,
                                      extensions=extensions, policy=policy)

    def _open_direct(self, now: float, *, mptcp: bool, mptcp_policy: MptcpPolicy | None = None) -> None:
        attempt = self._new_attempt(AttemptKind.DIRECT)
        extensions = self._mptcp_extension(attempt, mptcp_policy) if mptcp else ()
        dest, port = self.request.destination, self.request.port
        if self.host.client_policy.tfo_to_server:
            plan = self.host.tfo.plan_syn(self._local_address(dest), dest, now, self.payload)
            self._open(attempt, dest, port, now, syn_payload=plan.syn_payload,
                       extensions=(self.host.tfo.extension(plan), *extensions))
            if plan.rest(self.payload):
                attempt.conn.send(plan.rest(self.payload), now)
        else:
            self._open(attempt, dest, port, now, extensions=extensions)
            attempt.conn.send(self.payload, now)
        self.host.collect(attempt.conn, now)

    def _proxy_tcp_policy(self) -> TcpPolicy:
        # Give up on an unanswered proxy quickly, as Linux gives up on MP_CAPABLE SYNs: SYNs at
        # 0, 1 and 3 s with the default of 2 retries, then the fallback.
        return replace(self.host.policy, syn_retries=self.host.client_policy.proxy_syn_retries)

    def _open_convert(self, now: float, proxy: Proxy) -> None:
        attempt = self._new_attempt(AttemptKind.CONVERT, proxy)
        entry = self.host.caches.proxy(proxy, now)
        exchange = ConvertClientExchange(self.host.convert_policy)
        attempt.exchange = exchange
        first_time = proxy not in self.host.converters_seen
        options = self._connect_options_for(proxy, entry.unsupported_kinds)
        payload = exchange.syn_payload(self.request.destination, self.request.port,
                                       info=self.host.client_policy.convert_info_first and first_time,
                                       cookie=entry.cookie, options=options, app_data=self.payload,
                                       max_bytes=self._syn_data_limit_bytes(proxy[0]))
        self.host.converters_seen.add(proxy)
        attempt.signal_bytes = len(payload) - exchange.app_data_bytes
        extensions = (ConvertSynAckCheck(exchange),)
        if self.host.client_policy.upstream_mptcp:
            extensions += self._mptcp_extension(attempt)
        self._open(attempt, proxy[0], proxy[1], now, syn_payload=payload, extensions=extensions,
                   policy=self._proxy_tcp_policy())
        self._send_rest(attempt, exchange.app_data_bytes, now)
        self.host.collect(attempt.conn, now)

    def _syn_data_limit_bytes(self, remote: IpAddress) -> int:
        """What one SYN may carry towards ``remote``: the cached MSS, or RFC 7413 4.1.3's default
        (536 bytes over IPv4, 1220 over IPv6) — signalling and request together."""
        return self.host.tfo.syn_data_limit_bytes(self._local_address(remote), remote)

    def _send_rest(self, attempt: _Attempt, sent_in_syn_bytes: int, now: float) -> None:
        """The request bytes that did not fit into the SYN go after the handshake."""
        if sent_in_syn_bytes < len(self.payload):
            attempt.conn.send(self.payload[sent_in_syn_bytes:], now)

    def _connect_options_for(self, proxy: Proxy, unsupported: tuple[int, ...]) -> tuple[ConnectOption, ...]:
        """Extended Connect entries (RFC 8803 7), minus the kinds the converter refused (Error 33):
        MPTCP towards the server, and the server's TFO (an empty option asks for a cookie, a cookie
        learned through this converter is copied verbatim)."""
        policy, options = self.host.client_policy, ()
        if policy.mptcp_to_server and TcpOptionKind.MPTCP not in unsupported:
            options += (ConnectOption(TcpOptionKind.MPTCP),)
        if policy.tfo_to_server and TcpOptionKind.TFO not in unsupported:
            cookie = self.host.converter_tfo_cookies.get((proxy, self.request.destination), b"")
            options += (ConnectOption(TcpOptionKind.TFO, cookie),)
        return options

    def _open_signalled(self, now: float, proxy: Proxy | None) -> None:
        """mp-convert-option or syn-payload-eol, explicit (to ``proxy``) or implicit (proxy None:
        to the server itself, for an on-path proxy to intercept)."""
        kind = AttemptKind.MP_CONVERT_OPTION if self.scheme.name == "mp-convert-option" else AttemptKind.SYN_PAYLOAD_EOL
        attempt = self._new_attempt(kind, proxy)
        implicit = proxy is None
        signal = MpConvert(None, None, implicit=True) if implicit else \
            MpConvert(self.request.destination, self.request.port, implicit=False)
        remote, port = (self.request.destination, self.request.port) if implicit else proxy
        extensions: tuple[TcpExtension, ...] = (_SignalCheck(self, attempt),)
        extensions += self._mptcp_extension(attempt)
        syn_payload = b""
        if kind is AttemptKind.MP_CONVERT_OPTION:
            base = syn_base_options(self.host.policy)
            needed = option_space_bytes(base + (MpCapable(1, 1), signal))
            if needed > TCP_OPTION_SPACE_BYTES:
                self.attempts.pop()
                self.detail = f"MP_CONVERT needs {needed} option bytes of {TCP_OPTION_SPACE_BYTES}"
                self._fall_back(now, FallbackReason.SIGNAL_DOES_NOT_FIT)
                return
            # As it travels: the MP_EXPERIMENTAL option (a proxy reads it with mp_convert_from_option).
            extensions += (_MpConvertOption(signal.to_option(), attempt.mptcp),)
        else:
            attempt.signal_bytes = len(encode_syn_payload(SynPayloadSignal((signal,))))
            in_syn = self.payload[: max(0, self._syn_data_limit_bytes(remote) - attempt.signal_bytes)]
            syn_payload = encode_syn_payload(SynPayloadSignal((signal,), in_syn))
        self._open(attempt, remote, port, now, syn_payload=syn_payload, extensions=extensions,
                   policy=self._proxy_tcp_policy() if not implicit else None)
        self._send_rest(attempt, len(syn_payload) - attempt.signal_bytes if syn_payload else 0, now)
        self.host.collect(attempt.conn, now)

    def _open_socks5(self, now: float, proxy: Proxy) -> None:
        attempt = self._new_attempt(AttemptKind.SOCKS5, proxy)
        attempt.exchange = Socks5ClientExchange(self.request.destination, self.request.port)
        extensions = self._mptcp_extension(attempt) if self.host.client_policy.upstream_mptcp else ()
        self._open(attempt, proxy[0], proxy[1], now, extensions=extensions, policy=self._proxy_tcp_policy())
        self.host.collect(attempt.conn, now)

    # --- judging what came back ------------------------------------------------------------------

    def _judge_signal_synack(self, attempt: _Attempt, conn: TcpConnection, synack: TcpSegment) -> str | None:
        """Who answered a signalled SYN, and what became of the signalling (docs/protocols.md 2.4, 2.6).

        What the proxy does is mpsim/proto/mp_convert_proxy.py's: the explicit proxy answers only
        once the server has (RFC timing), ACKs the whole SYN payload, signalling included, and
        refuses with RST; the on-path proxy answers as the server, drops SYN data and echoes
        nothing, so an implicit client cannot tell it from an MPTCP server.
        """
        acked_all = conn.syn_data_acked_bytes >= len(attempt.syn_payload)
        if attempt.kind is AttemptKind.SYN_PAYLOAD_EOL and not acked_all:
            # The signalling was not taken: Linux would resend it as data after the handshake,
            # where it would reach the server application. Reset instead (RFC 8803 8 does the same).
            attempt.reason = FallbackReason.SIGNAL_NOT_ACKED
            return "signalling not acknowledged"
        if attempt.proxy is not None or any(mp_convert_from_option(o) is not None for o in synack.options):
            # A proxy took the request (without MP_CAPABLE in its SYN-ACK our leg is plain TCP,
            # which a proxy relays when the I flag is clear: the MPTCP extension records why).
            return None
        if attempt.kind is AttemptKind.SYN_PAYLOAD_EOL and conn.syn_data_acked_bytes:
            # Implicit, and the server's own stack ACKed the payload (an on-path proxy drops SYN
            # data): it queued the signalling as data, MPTCP server or not (RFC 793 / TFO).
            if self.host.client_policy.signal_acked_as_data is SignalAckedAsData.RESET:
                attempt.reason = FallbackReason.SIGNAL_ACKED_AS_DATA
                return "signalling acknowledged as data"
            self.signal_leaked = True
            self.fallback_reason = FallbackReason.SIGNAL_ACKED_AS_DATA
        return None  # implicit: a proxy or the server answered; the connection is what MPTCP made of it

    # --- the owner interface -----------------------------------------------------------------------

    def on_tcp_event(self, host: Host, conn: TcpConnection, event: TcpEvent, now: float) -> None:
        attempt = next((a for a in self.attempts if a.conn is conn), None)
        if attempt is None or self.finished:
            return
        if attempt.mptcp is not None:
            for fact in attempt.mptcp.pull_events():
                host.emit(fact)
        if isinstance(event, Established):
            self._on_established(attempt, now)
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
            self._connection_lost(attempt, now, attempt.reason or self._exchange_reason(attempt),
                                  "reset (MP_FASTCLOSE)" if attempt.ready else "SYN-ACK refused")

    def _connection_lost(self, attempt: _Attempt, now: float, reason: FallbackReason | None, detail: str) -> None:
        if self._reverted_by_proxy(attempt):
            self._attempt_failed(attempt, now, attempt.mptcp.fallback_reason, detail=detail)
        elif attempt.ready:
            # The request was under way: the application sees ECONNRESET or ETIMEDOUT. Replaying
            # it on another path is not the transport's call, nor is blaming the proxy.
            self._finish(now, Outcome.FAILED, detail)
        else:
            self._attempt_failed(attempt, now, reason, detail=detail)

    def _reverted_by_proxy(self, attempt: _Attempt) -> bool:
        """An implicit signalled attempt whose MPTCP fell back, reset before any answer came: an
        on-path proxy enforcing the I flag ("do not revert to TCP") resets both legs, so the
        request may go again, unsignalled, on a new port (mp_convert_proxy.py, reset_on_revert)."""
        # A SYN-ACK must have come: a RST to the SYN itself is the server refusing (the proxy, if
        # any, only intercepts SYNs that still carry MP_CAPABLE and answers them with a SYN-ACK).
        return attempt.proxy is None and attempt.kind in (AttemptKind.MP_CONVERT_OPTION, AttemptKind.SYN_PAYLOAD_EOL) \
            and self.first_byte_s is None and attempt.conn is not None and attempt.conn.synack is not None \
            and attempt.mptcp is not None and attempt.mptcp.fallback_reason is not None

    @staticmethod
    def _failure_reason(attempt: _Attempt, event: TcpEvent) -> FallbackReason | None:
        if attempt.kind is AttemptKind.DIRECT or (attempt.proxy is None and isinstance(event, ResetReceived)):
            # Nothing to fall back from: the server itself refused or stayed silent (implicit: the
            # SYN went to the server, and an on-path proxy answers for it as the server would).
            return None
        if isinstance(event, TimedOut):
            return FallbackReason.CONVERTER_SYN_TIMEOUT if event.what == "syn" else FallbackReason.CONVERTER_REPLY_MISSING
        if attempt.kind is AttemptKind.SOCKS5:
            return FallbackReason.PROXY_FAILED
        return FallbackReason.CONVERTER_REFUSED

    def _exchange_reason(self, attempt: _Attempt) -> FallbackReason:
        if isinstance(attempt.exchange, ConvertClientExchange) and attempt.exchange.reply is not None:
            return attempt.exchange.reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID
        if attempt.mptcp is not None and attempt.mptcp.retry_policy is not None:
            return FallbackReason.MP_CAPABLE_MISSING_SYNACK
        return FallbackReason.CONVERTER_REPLY_INVALID

    def _on_established(self, attempt: _Attempt, now: float) -> None:
        if attempt.kind in (AttemptKind.DIRECT, AttemptKind.MP_CONVERT_OPTION, AttemptKind.SYN_PAYLOAD_EOL):
            self._path_ready(attempt, now)
        elif attempt.kind is AttemptKind.SOCKS5:
            greeting = attempt.exchange.greeting()
            attempt.signal_bytes += len(greeting)
            attempt.conn.send(greeting, now)
            self.deadline = now + self.host.client_policy.reply_timeout_s
        else:  # CONVERT: the reply comes in the SYN-ACK (RFC timing) or as the first bytes (socket timing)
            self.deadline = now + self.host.client_policy.reply_timeout_s

    def _path_ready(self, attempt: _Attempt, now: float) -> None:
        attempt.ready = True
        self._await_response(now)
        if self.setup_s is None:
            self.setup_s = now - self.start_s
        self.via_proxy = attempt.proxy is not None or attempt.kind in (AttemptKind.MP_CONVERT_OPTION,
                                                                       AttemptKind.SYN_PAYLOAD_EOL) and \
            self._implicit_converted(attempt)
        if attempt.proxy is not None:
            self.host.caches.mark_usable(attempt.proxy)

    def _await_response(self, now: float) -> None:
        timeout_s = self.host.client_policy.response_timeout_s
        self.deadline = None if timeout_s is None else now + timeout_s

    def _implicit_converted(self, attempt: _Attempt) -> bool:
        synack = attempt.conn.synack
        return synack is not None and any(mp_convert_from_option(o) is not None for o in synack.options)

    def _on_data(self, attempt: _Attempt, data: bytes, now: float) -> None:
        if not attempt.ready:
            if attempt.kind is AttemptKind.CONVERT:
                reply = attempt.exchange.receive(data)
                if reply is None:
                    return
                if reply.must_reset:
                    self._react_to_convert_reply(attempt, reply, now)
                    return
                self._learn_from_convert_reply(attempt, reply)
                self._path_ready(attempt, now)
                data = reply.app_data
            elif attempt.kind is AttemptKind.SOCKS5:
                request = attempt.exchange.receive(data)  # the CONNECT, once the method is agreed
                if request:
                    attempt.signal_bytes += len(request)
                    attempt.conn.send(request, now)
                result = attempt.exchange.result
                if result is None:
                    return
                if not result.succeeded:
                    self._react_to_socks5_result(attempt, result, now)
                    return
                self._path_ready(attempt, now)
                attempt.conn.send(self.payload, now)
                data = result.app_data
            if not data:
                return
        if self.first_byte_s is None:
            self.first_byte_s = now - self.start_s
        self._await_response(now)
        self.delivered_bytes += len(data)
        if self.delivered_bytes >= self.request.response_size_bytes:
            self._complete(attempt, now)

    def _learn_from_convert_reply(self, attempt: _Attempt, reply: Any) -> None:
        caches = self.host.caches
        if reply.supported_kinds is not None:
            caches.store_supported_kinds(attempt.proxy, reply.supported_kinds)
        if reply.server_options:
            caches.learn_server(self.request.destination, mptcp_capable=reply.server_mptcp_capable,
                                learned_via="extended_tcp_header")
        if reply.server_tfo_cookie:
            self.host.converter_tfo_cookies[(attempt.proxy, self.request.destination)] = reply.server_tfo_cookie

    def _react_to_convert_reply(self, attempt: _Attempt, reply: Any, now: float) -> None:
        """RFC 8803 6.2.8: reset on any Error TLV, then act per code (docs/protocols.md 8.3)."""
        attempt.failed = True
        self._abort(attempt, now)
        caches, proxy, advice = self.host.caches, attempt.proxy, reply.advice
        if reply.error is not None:
            self.converter_error = reply.error.code
        reaction = advice.reaction
        if reaction is ConvertReaction.RETRY_WITH_COOKIE:
            caches.store_cookie(proxy, advice.cookie)
            self._retry_same_proxy(proxy, now)
        elif reaction is ConvertReaction.RETRY_WITHOUT_OPTIONS:
            caches.store_unsupported_kinds(proxy, advice.kinds)
            self._retry_same_proxy(proxy, now)
        elif reaction is ConvertReaction.BACK_OFF:
            caches.mark_backoff(proxy, now, advice.back_off_s)
            self._fall_back(now, reply.fallback_reason)
        elif reaction in (ConvertReaction.REPORT_REFUSED, ConvertReaction.REPORT_UNREACHABLE):
            self.fallback_reason = reply.fallback_reason
            self._finish(now, Outcome.FAILED, reaction.value)
        else:  # CONVERTER_OFF, RETRY_OTHER_VERSION (we speak version 1 only), RESET_LOG
            if reply.error is not None and reply.error.code == 32:
                caches.mark_not_authorized(proxy, now)
            else:
                caches.mark_off(proxy, now, reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID)
            self._fall_back(now, reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID)

    def _react_to_socks5_result(self, attempt: _Attempt, result: Socks5Result, now: float) -> None:
        """A failure reply (RFC 1928 6), read the way RFC 8803 error classes are (docs/protocols.md 8.3):
        what the server answered ends the request; a ruleset refusal is "not authorized"; a general
        failure or a timeout is a transient proxy problem (back off); the rest means the proxy
        cannot serve us (off). RFC 1928 has no Error TLV to carry more."""
        attempt.failed = True
        self._abort(attempt, now)
        code, caches, proxy = result.reply_code, self.host.caches, attempt.proxy
        self.converter_error = code
        if code in _SOCKS5_SERVER_ANSWERS:
            self.fallback_reason = FallbackReason.PROXY_FAILED
            self._finish(now, Outcome.FAILED, f"socks5 reply {code:#04x}")
            return
        if code == Socks5Reply.CONNECTION_NOT_ALLOWED:
            caches.mark_not_authorized(proxy, now)
        elif code in (Socks5Reply.GENERAL_FAILURE, Socks5Reply.TTL_EXPIRED):
            caches.mark_backoff(proxy, now, 0.0)
        else:  # unsupported command or address type, no acceptable method, not SOCKS5 at all
            caches.mark_off(proxy, now, FallbackReason.PROXY_FAILED)
        self._fall_back(now, FallbackReason.PROXY_FAILED)

    def _abort(self, attempt: _Attempt, now: float) -> None:
        attempt.aborting = True
        if attempt.conn is not None and attempt.conn.four_tuple in self.host.connections:
            self.host.abort(attempt.conn, now)

    def _retry_same_proxy(self, proxy: Proxy, now: float) -> None:
        if len(self.attempts) >= self.host.client_policy.max_attempts:
            self._finish(now, Outcome.FAILED, "too many attempts")
            return
        self._open_convert(now, proxy)

    def _reply_missing(self, attempt: _Attempt) -> FallbackReason:
        if isinstance(attempt.exchange, ConvertClientExchange) and attempt.exchange.reply is None:
            return attempt.exchange.reply_missing().fallback_reason
        return FallbackReason.CONVERTER_REPLY_MISSING

    def _attempt_failed(self, attempt: _Attempt, now: float, reason: FallbackReason | None, *,
                        detail: str = "") -> None:
        """The current attempt cannot carry the request: reset it, then retry, fall back or give up."""
        if self.finished or attempt.failed or attempt is not self.attempts[-1]:
            return
        attempt.failed = True
        self._abort(attempt, now)
        if attempt.kind is AttemptKind.DIRECT or (attempt.proxy is None and reason is None):
            retry = attempt.mptcp.retry_policy if attempt.mptcp is not None else None
            if retry is not None and len(self.attempts) < self.host.client_policy.max_attempts:
                self.fallback_reason = self.fallback_reason or FallbackReason.MP_CAPABLE_MISSING_SYNACK
                self._open_direct(now, mptcp=True, mptcp_policy=retry)
                return
            self._finish(now, Outcome.FAILED, detail or (reason.value if reason else "failed"))
            return
        reason = reason or FallbackReason.CONVERTER_REPLY_INVALID
        if attempt.proxy is not None:
            self.host.caches.mark_off(attempt.proxy, now, reason)
        self._fall_back(now, reason)

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

    def _complete(self, attempt: _Attempt, now: float) -> None:
        if self.delivered_bytes < self.request.response_size_bytes:
            # The peer closed before the whole response: the application got less than it asked
            # for, which is no success whatever path carried it.
            if attempt.conn.state is not TcpState.CLOSED:
                attempt.conn.close(now)
                self.host.collect(attempt.conn, now)
            self._finish(now, Outcome.FAILED, f"peer closed after {self.delivered_bytes} response bytes")
            return
        mptcp_ext = attempt.mptcp
        mptcp_on = mptcp_ext is not None and mptcp_ext.negotiated
        if self.via_proxy and (mptcp_on or not self.host.client_policy.upstream_mptcp):
            outcome = Outcome.CONVERTED
        elif not self.via_proxy and mptcp_on:
            outcome = Outcome.MPTCP
        elif self.scheme.name == "plain" and self.fallback_reason is None:
            outcome = Outcome.TCP
        else:  # through the proxy without MPTCP on our leg, or direct after a fallback
            outcome = Outcome.FALLBACK_TCP
            if self.fallback_reason is None and mptcp_ext is not None:
                self.fallback_reason = mptcp_ext.fallback_reason
        if attempt.conn.state is not TcpState.CLOSED:
            attempt.conn.close(now)
            self.host.collect(attempt.conn, now)
        self._finish(now, outcome)

    def _finish(self, now: float, outcome: Outcome, detail: str = "") -> None:
        if self.finished:
            return
        self.finished = True
        self.host.unfinished.pop(self.request_id, None)
        self.outcome = outcome
        self.deadline = None
        conns = [a.conn for a in self.attempts if a.conn is not None]
        if outcome is Outcome.FAILED:
            for attempt in self.attempts:
                if attempt.conn is not None and attempt.conn.state is not TcpState.TIME_WAIT:
                    self._abort(attempt, now)
        record = ConnectionRecord(
            request_id=self.request_id,
            scheme=self.scheme.name,
            destination=f"{self.request.destination}:{self.request.port}",
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

    # --- commands ------------------------------------------------------------------------------------

    def connect(self, request: Request, now: float) -> int:
        """Start a request; returns its id (the ``request_id`` of its record)."""
        request_id = self._next_request_id
        self._next_request_id += 1
        logical = LogicalConnection(self, request_id, request, now)
        self.logical[request_id] = logical
        self.unfinished[request_id] = logical
        logical.start(now)
        return request_id

    def reboot(self, now: float) -> None:
        """Volatile state is lost: connections vanish without a RST, caches and TIME-WAIT are gone."""
        # Forget the connections first, so that ending their requests sends nothing: a host
        # that lost its memory cannot reset what it no longer knows (the peers find out later).
        self.connections.clear()
        self.owners.clear()
        self._out.clear()
        for logical in self.logical.values():
            if not logical.finished:
                logical._finish(now, Outcome.FAILED, "host rebooted")
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
                    logical._finish(now, Outcome.FAILED, "network changed")
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
        deadlines = [d for d in (super().get_timer(), self.caches.get_timer()) if d is not None]
        deadlines += [lc.deadline for lc in self.unfinished.values() if lc.deadline is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        self.caches.handle_timer(now)
        for event in self.caches.events:
            self.emit(event)
        self.caches.events.clear()
        for logical in list(self.unfinished.values()):
            if not logical.finished:
                logical.handle_timer(now)

    def next_event(self) -> Any | None:
        for event in self.caches.events:
            self.emit(event)
        self.caches.events.clear()
        return super().next_event()

    def proxy_state(self, proxy: Proxy, now: float) -> ProxyState:
        return self.caches.proxy(proxy, now).state
