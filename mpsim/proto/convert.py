"""RFC 8803 Transport Converter machines: the converter's logic, the client's exchange, the host.

Three layers, so that the socket daemon and the simulator run the same decisions:

* :class:`ConverterSession` is the converter's logic for one client on the *byte stream*: bytes
  from the client and the outcome of the downstream connection go in, :class:`ConverterDecision`
  values come out (open the downstream connection, send these bytes upstream, close with FIN,
  ...). No segments and no sockets: a socket daemon applies the decisions to sockets, and
  :class:`ConverterHost` applies them to :class:`~mpsim.proto.tcp.TcpConnection` objects.
  :class:`Converter` holds what the sessions of one converter share (policy, cookie secret,
  session count, counters).
* :class:`ConvertClientExchange` is the client's side of one Convert attempt: it builds the SYN
  payload, judges the SYN-ACK's acknowledgement (RFC 8803 section 8), reads the reply and turns
  it into a :class:`ConvertReply` whose :class:`ConvertAdvice` is docs/protocols.md 8.3 as data.
* :class:`ConverterHost` is the segment-level converter of the simulator, in two timings
  (:class:`ConverterTiming`): the RFC's (the client's SYN-ACK waits for the server's and carries
  the reply) and the one Linux sockets allow (the kernel answers the SYN at once; the reply is the
  first data).

Processing order of a Convert request (docs/protocols.md 1.7; each rule is RFC 8803's, the order is
ours): framing and header (:func:`~mpsim.wire.convert.parse_convert_prefix`: incomplete = wait,
bad magic = not Convert, version = Error 0, Total Length 0 = reset, framing or duplicate =
Error 1, type 0 = Error 2), then TLV types the client may not send (Error 2), a request with
neither Connect nor Info (Error 1), the cookie (Error 3 / 32), authorization (32), resources (64),
the Connect address (1), the Connect options (33), and only then the downstream connection.
Errors go in the bytestream, then FIN, never an immediate RST (section 6.2.8).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network, ip_network

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.relay import (
    AcceptUpstream,
    CloseDownstream,
    CloseUpstream,
    ConverterTiming,
    DownstreamFailure,
    IgnoreUpstream,
    OpenDownstream,
    RelayDecision,
    RelayHost,
    RelaySession,
    ResetDownstream,
    ResetUpstream,
    RetransmitDownstreamSyn,
    SendDownstream,
    SendUpstream,
    UpstreamResetReason,
)
from mpsim.proto.tcp import (
    IpAddress,
    Rng,
    TcpConnection,
    TcpExtension,
    TcpPolicy,
)
from mpsim.wire.convert import (
    CONVERT_VERSION,
    HEADER_BYTES,
    MAX_TOTAL_LENGTH_WORDS,
    BadMagicError,
    ConnectOption,
    ConnectTlv,
    ConvertErrorCode,
    ConvertMessage,
    CookieTlv,
    ErrorTlv,
    ExtendedTcpHeaderTlv,
    InfoTlv,
    SupportedTcpExtensionsTlv,
    UnsupportedTlvError,
    UnsupportedVersionError,
    ZeroTotalLengthError,
    connect_address_problem,
    encode_convert,
    parse_convert_prefix,
)
from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError
from mpsim.wire.options import EndOfOptionList, Experimental, FastOpen, TcpOptionKind, UnknownOption
from mpsim.wire.segment import IpPacket, TcpSegment

__all__ = [  # the relay names this module re-exports, besides its own
    "AcceptUpstream", "CloseDownstream", "CloseUpstream", "ConverterTiming", "IgnoreUpstream", "OpenDownstream",
    "ResetDownstream", "ResetUpstream", "RetransmitDownstreamSyn", "SendDownstream", "SendUpstream",
    "UpstreamResetReason",
]

#: The converter's cookie: an HMAC of the client address cut to two words (like a TFO cookie, and
#: a whole number of words, as the Cookie TLV needs: RFC 8803 6.2.7).
COOKIE_BYTES = 8
#: Section 7: MSS, Window Scale and SACK in a Connect TLV MUST be ignored (EOL cannot be encoded;
#: NOP MUST NOT be sent but is ignored too).
IGNORED_CONNECT_KINDS = frozenset({TcpOptionKind.NOP, TcpOptionKind.MSS, TcpOptionKind.WINDOW_SCALE,
                                   TcpOptionKind.SACK})
#: Section 7: TCP-AO MUST NOT be announced, and a Connect asking for it MUST get Error 33.
NEVER_SUPPORTED_KINDS = frozenset({TcpOptionKind.TCP_AO})
#: A reply echoing a request: 1020 bytes minus the reply's header and the Error TLV's first word.
_MAX_ECHO_BYTES = MAX_TOTAL_LENGTH_WORDS * 4 - HEADER_BYTES - 4
#: TLVs a client sends (section 6.2.2 table); any other type from a client is Error 2.
_CLIENT_TLVS = (InfoTlv, ConnectTlv, CookieTlv)
#: TLVs a converter sends in a reply; anything else makes the reply invalid.
_CONVERTER_TLVS = (ExtendedTcpHeaderTlv, SupportedTcpExtensionsTlv, ErrorTlv)


def _echo(message: bytes) -> bytes:
    """The offending message as Error 1/2 echo it: cut to what fits a reply, zero padded to a word."""
    echo = message[:_MAX_ECHO_BYTES]
    return echo + bytes(-len(echo) % 4)


# --- converter policy and shared state ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConverterPolicy:
    """A converter's knobs where RFC 8803 leaves the choice to the deployment.

    ``allowed_client_prefixes`` is the internal realm (section 9.1: never an open relay): empty
    means nobody is served. Prefixes may be given as strings; they are stored as networks.
    """

    allowed_client_prefixes: tuple[IPv4Network | IPv6Network | str, ...] = ()
    allow_hairpin: bool = True  # section 9.1: allowed unless configured otherwise (then Error 32)
    require_cookie: bool = False  # section 6.2.7
    issue_cookies: bool = True  # a missing cookie gets Error 3 with one; False: Error 32
    max_sessions: int = 1024  # beyond it: Error 64
    resource_backoff_s: int = 0  # Error 64 Value; 0 asks the client for its default (>= 30 s)
    network_failure_backoff_s: int = 0  # Error 65 Value
    supported_kinds: tuple[int, ...] = (TcpOptionKind.SACK_PERMITTED, TcpOptionKind.TIMESTAMPS, TcpOptionKind.TFO)
    connect_timeout_s: float = 30.0  # no SYN-ACK from the server by then: Error 65 (RFC sets no value)
    message_timeout_s: float = 10.0  # no complete Convert message by then: give up on the client
    timing: ConverterTiming = ConverterTiming.RFC
    # RFC timing, a SYN without a Convert header (its payload lost, or a Linux SYN retransmission
    # after a lost first SYN): False ignores it silently (section 6 SHOULD); True answers it and
    # waits for the message in the data (docs/protocols.md 9.6 leaves this open).
    accept_syn_without_message: bool = False

    def __post_init__(self) -> None:
        prefixes = tuple(ip_network(p) for p in self.allowed_client_prefixes)
        object.__setattr__(self, "allowed_client_prefixes", prefixes)
        try:
            SupportedTcpExtensionsTlv(tuple(self.supported_kinds))  # refuses kinds 0, 1, 2, 3, 5 (6.2.4, 7)
        except InvalidValueError as err:
            raise ValueError(f"supported_kinds: {err.message}") from None
        if set(self.supported_kinds) & NEVER_SUPPORTED_KINDS:
            raise ValueError("supported_kinds must not list TCP-AO (kind 29): RFC 8803 7 forbids converting it")
        if not 0 <= self.resource_backoff_s <= 255 or not 0 <= self.network_failure_backoff_s <= 255:
            raise ValueError("back-off values travel in one byte: 0..255 s")
        if self.max_sessions < 0 or self.connect_timeout_s <= 0 or self.message_timeout_s <= 0:
            raise ValueError("need max_sessions >= 0 and positive timeouts")

    def client_allowed(self, address: IpAddress) -> bool:
        return any(address in prefix for prefix in self.allowed_client_prefixes)


class Converter:
    """What the sessions of one converter share: policy, cookie secret, session count, counters.

    ``counters`` (a Counter) names: ``sessions`` (requests seen), ``ignored`` (not Convert data,
    dropped silently or closed), ``message_timeouts``, ``error_<name>`` per Error code sent,
    ``resets_sent`` (Total Length 0), ``info_answered``, ``downstream_opened``, ``converted``
    (server accepted), ``connect_timeouts``, ``bytes_to_server``, ``bytes_to_client``.
    """

    def __init__(self, policy: ConverterPolicy, rng: Rng, *, cookie_secrets: Sequence[bytes] = ()) -> None:
        self.policy = policy
        # The current secret first, then previous ones (rotation): a cookie made with a previous
        # secret is answered with a fresh one (Error 3), not refused. None given: one from ``rng``.
        self._cookie_secrets: tuple[bytes, ...] = ()
        self.set_cookie_secrets(cookie_secrets or (rng.getrandbits(128).to_bytes(16, "big"),))
        self.active_sessions = 0  # sessions holding a downstream connection (the Error 64 limit)
        self.counters: Counter[str] = Counter()
        # Memos of pure functions, bounded (emptied when full): clients send the same request bytes
        # over and over, and a server's SYN-ACK options give the same reply every time. Values are
        # immutable (frozen dataclasses, bytes), so sessions share them; only successes are kept.
        self.parsed_requests: dict[bytes, tuple[ConvertMessage, int]] = {}
        self.encoded_replies: dict[tuple, tuple[ConvertMessage, bytes]] = {}
        self.address_problems: dict[IpAddress, str | None] = {}  # connect_address_problem's answers
        self.allowed_addresses: dict[IpAddress, bool] = {}  # policy.client_allowed's answers
        self._request_facts: dict[int, RequestFacts] = {}  # by id() of the parsed request (held by the entry)
        # The last server options a reply was built for, and the reply: a driver that remembers the
        # options (mpsim.live.sockets.SynAckOptions) passes the same tuple every time, which is
        # then recognised by identity before any hashing of its option objects.
        self._last_reply: tuple | None = None

    def request_facts(self, request: ConvertMessage) -> RequestFacts:
        """:class:`RequestFacts` of ``request``, remembered per request object: the parsed-request
        memo hands the same object to every session that sent the same bytes. The entry holds the
        request, so the id() it is filed under cannot be another object's while it is kept."""
        facts = self._request_facts.get(id(request))
        if facts is None or facts.request is not request:
            connect = request.tlv(ConnectTlv)
            problem: str | None = None
            requested: tuple = ()
            unsupported: tuple = ()
            if connect is not None:
                problems = self.address_problems  # once per distinct request: two lookups are cheap here
                if connect.address in problems:
                    problem = problems[connect.address]
                else:
                    problem = connect_address_problem(connect.address)
                    if len(problems) >= _MEMO_ENTRIES:
                        problems.clear()
                    problems[connect.address] = problem
                requested = tuple(o for o in connect.options if o.kind not in IGNORED_CONNECT_KINDS)
                unsupported = tuple(dict.fromkeys(o.kind for o in requested
                                                  if o.kind not in self.policy.supported_kinds))
            facts = RequestFacts(
                request=request, foreign_tlv=any(not isinstance(tlv, _CLIENT_TLVS) for tlv in request.tlvs),
                connect=connect, info=request.tlv(InfoTlv), cookie=request.tlv(CookieTlv),
                destination_allowed=connect is not None and self.client_allowed(connect.address),
                address_problem=problem, requested=requested, unsupported=unsupported)
            if len(self._request_facts) >= _MEMO_ENTRIES:
                self._request_facts.clear()
            self._request_facts[id(request)] = facts
        return facts

    def client_allowed(self, address: IpAddress) -> bool:
        """``policy.client_allowed(address)``, remembered (the policy is fixed): asked twice per
        request (the client, and the destination for the hairpin rule)."""
        allowed = self.allowed_addresses.get(address)
        if allowed is None:
            if len(self.allowed_addresses) >= _MEMO_ENTRIES:
                self.allowed_addresses.clear()
            allowed = self.allowed_addresses[address] = self.policy.client_allowed(address)
        return allowed

    def session(self, client_address: IpAddress, now: float) -> ConverterSession:
        """A session for a new upstream connection from ``client_address``."""
        return ConverterSession(self, client_address, now)

    def set_cookie_secrets(self, secrets: Sequence[bytes]) -> None:
        """Replace the secrets: ``secrets[0]`` makes and checks cookies, the others are previous ones."""
        if not secrets or any(not isinstance(s, bytes) or len(s) < 16 for s in secrets):
            raise ValueError("cookie secrets: at least one, each of at least 16 bytes")
        self._cookie_secrets = tuple(secrets)

    def cookie_for(self, client_address: IpAddress) -> bytes:
        """The cookie bound to ``client_address`` (RFC 8803 6.2.7, like RFC 7413's)."""
        return _cookie(self._cookie_secrets[0], client_address)

    def cookie_valid(self, cookie: bytes, client_address: IpAddress) -> bool:
        return hmac.compare_digest(cookie, self.cookie_for(client_address))

    def cookie_from_previous_secret(self, cookie: bytes, client_address: IpAddress) -> bool:
        """Was ``cookie`` valid for ``client_address`` under a previous secret (before a rotation)?"""
        return any(hmac.compare_digest(cookie, _cookie(secret, client_address)) for secret in self._cookie_secrets[1:])


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the request checks (:meth:`ConverterSession._validate`) read that depends only on the
    request and the converter's fixed policy: worked out once per distinct request
    (:meth:`Converter.request_facts`); the checks themselves, and their order, stay the session's."""

    request: ConvertMessage
    foreign_tlv: bool  # a TLV a client may not send
    connect: ConnectTlv | None
    info: InfoTlv | None
    cookie: CookieTlv | None
    destination_allowed: bool  # the Connect address is inside the client prefixes (the hairpin rule)
    address_problem: str | None  # connect_address_problem(address)
    requested: tuple  # the Connect options, less the kinds section 7 ignores
    unsupported: tuple  # the requested kinds this converter does not support, in order, once each


def _cookie(secret: bytes, client_address: IpAddress) -> bytes:
    return hmac.new(secret, client_address.packed, hashlib.sha256).digest()[:COOKIE_BYTES]


#: Entries of each of the converter's memos (parsed requests, encoded replies) before it is emptied.
_MEMO_ENTRIES = 256

#: What a :class:`ConverterSession` asks its driver to do (the decisions live in
#: :mod:`mpsim.proto.relay`, shared by every proxy, and are re-exported here).
ConverterDecision = RelayDecision


# --- the converter session ----------------------------------------------------------------------


class SessionState(enum.Enum):
    # Identity hash in C: Enum's hashes the member's name in Python, and every state change looks
    # the states up in SESSION_TRANSITIONS. Members are singletons compared by identity, so the
    # two agree; nothing iterates a set of states (iteration order would follow the hash).
    __hash__ = object.__hash__

    EXPECT_CONVERT_MESSAGE = "expect_convert_message"
    CONNECTING_DOWNSTREAM = "connecting_downstream"
    RELAYING = "relaying"
    DONE = "done"  # replied with an error or Info, ignored, reset, or both sides closed


_S = SessionState
#: The session's state changes and their causes; ``ConverterSession._move`` enforces it and the
#: state diagram in docs/state-diagrams.md is generated from it.
SESSION_TRANSITIONS: dict[SessionState, dict[SessionState, str]] = {
    _S.EXPECT_CONVERT_MESSAGE: {
        _S.CONNECTING_DOWNSTREAM: "valid Connect: open the downstream connection",
        _S.DONE: "Error TLV, Info answered, not Convert (ignored), zero Total Length (reset), or timeout"},
    _S.CONNECTING_DOWNSTREAM: {
        _S.RELAYING: "server SYN-ACK: reply with the Extended TCP Header",
        _S.DONE: "server RST (Error 96), ICMP (Error 97), timeout (Error 65), or the client left"},
    _S.RELAYING: {_S.DONE: "both directions closed, or a reset on either side"},
    _S.DONE: {},
}
class ConverterSession(RelaySession):
    """The converter's logic for one upstream connection, on the byte stream (see the module doc).

    The request phase (EXPECT_CONVERT_MESSAGE) is Convert's; connecting and relaying are the
    shared :class:`~mpsim.proto.relay.RelaySession`'s, with Convert's answers: the reply with
    the server's options, or Error 96 (RST), 97 (ICMP, with its Code) or 65 (timeout, no route).

    Inputs: :meth:`receive_upstream` (first call: the SYN payload, possibly empty; then the bytes
    that follow), :meth:`upstream_syn_retransmitted`, :meth:`upstream_closed`,
    :meth:`upstream_reset`, the downstream outcomes (:meth:`downstream_connected`,
    :meth:`downstream_reset`, :meth:`downstream_unreachable`, :meth:`downstream_timeout`,
    :meth:`downstream_failed`, :meth:`downstream_data`, :meth:`downstream_closed`) and
    :meth:`handle_timer`. Outputs: :meth:`next_decision`, :meth:`get_timer`; ``error`` (the Error
    TLV sent, if any), ``request`` (the client's Convert message, once parsed).
    """

    CONNECTING = _S.CONNECTING_DOWNSTREAM
    RELAYING = _S.RELAYING
    DONE = _S.DONE
    TRANSITIONS = SESSION_TRANSITIONS

    def __init__(self, converter: Converter, client_address: IpAddress, now: float) -> None:
        super().__init__(_S.EXPECT_CONVERT_MESSAGE, timing=converter.policy.timing,
                         deadline_s=now + converter.policy.message_timeout_s)
        self.converter = converter
        self.policy = converter.policy
        self.client_address = client_address
        self.request: ConvertMessage | None = None
        self.error: ErrorTlv | None = None
        self._buffer = bytearray()  # the stream until the message is complete
        self._syn_seen = False
        # RFC timing holds the SYN-ACK back until the session answers; sockets answered already.
        self._upstream_answered = self.policy.timing is ConverterTiming.SOCKET
        self._holds_slot = False
        converter.counters["sessions"] += 1

    @property
    def destination(self) -> tuple[IpAddress, int] | None:
        connect = self.request.tlv(ConnectTlv) if self.request else None
        return (connect.address, connect.port) if connect else None

    # --- the request phase and the answers (RelaySession hooks) ------------------------------------

    def _on_request_bytes(self, data: bytes, now: float) -> None:
        from_syn, self._syn_seen = not self._syn_seen, True
        self._buffer += data
        self._parse(now, from_syn)

    def _on_request_incomplete(self, now: float) -> None:
        self._incomplete_message()  # the client's FIN: nothing more can complete it

    def _on_request_timeout(self, now: float) -> None:
        self.converter.counters["message_timeouts"] += 1
        self._incomplete_message()

    def downstream_forbidden(self, now: float) -> None:
        """The driver found that the destination would be delivered to the converter's own host
        (one of its addresses: a client could reach the converter's listener, chain it through
        itself, or reach a service bound on that host). Refused like every administrative
        prohibition: Error 32, Not Authorized (RFC 8803 6.2.8), counted as ``forbidden_destinations``."""
        if self._legal("downstream_forbidden", self.CONNECTING):
            self.converter.counters["forbidden_destinations"] += 1
            self._refuse(ErrorTlv(ConvertErrorCode.NOT_AUTHORIZED))

    def _on_connect_timeout(self, now: float) -> None:
        self.converter.counters["connect_timeouts"] += 1
        super()._on_connect_timeout(now)

    def _on_connected(self, server_synack_options: tuple) -> None:
        """The server's SYN-ACK arrived: reply with its options as received (6.2.6)."""
        assert self.request is not None
        info = self.request.tlv(InfoTlv) is not None
        last = self.converter._last_reply
        if last is not None and last[0] is server_synack_options and last[1] is info:
            self._upstream_answered = True
            self._decisions.append(SendUpstream(last[2][1], last[2][0]))
            self.converter.counters["converted"] += 1
            return
        key = (server_synack_options, info)
        replies = self.converter.encoded_replies
        memo = True
        try:
            cached = replies.get(key)
        except TypeError:  # an option holding something unhashable: build the reply without the memo
            cached, memo = None, False
        if cached is None:
            options = tuple(o for o in server_synack_options if not isinstance(o, EndOfOptionList))  # padding
            tlvs: tuple = (ExtendedTcpHeaderTlv(options),)
            if info:
                tlvs += (SupportedTcpExtensionsTlv(tuple(self.policy.supported_kinds)),)
            reply = ConvertMessage(tlvs)
            cached = (reply, encode_convert(reply))
            if memo:
                if len(replies) >= _MEMO_ENTRIES:
                    replies.clear()
                replies[key] = cached
        self.converter._last_reply = (server_synack_options, info, cached)
        self._upstream_answered = True
        self._decisions.append(SendUpstream(cached[1], cached[0]))
        self.converter.counters["converted"] += 1

    def _on_refused(self, failure: DownstreamFailure, icmp_code: int | None) -> None:
        """Error 96 for a server RST, 97 with the ICMP Code, 65 for a timeout or no route (4.2)."""
        if failure is DownstreamFailure.RESET:
            self._refuse(ErrorTlv(ConvertErrorCode.CONNECTION_RESET))
        elif failure is DownstreamFailure.UNREACHABLE:
            self._refuse(ErrorTlv(ConvertErrorCode.DESTINATION_UNREACHABLE, icmp_code or 0))
        else:
            self._refuse(ErrorTlv(ConvertErrorCode.NETWORK_FAILURE, self.policy.network_failure_backoff_s))

    # --- processing order -------------------------------------------------------------------------

    def _parse(self, now: float, from_syn: bool) -> None:
        """Step 1-2 of the order: the header and the framing, judged by the wire parser."""
        parsed = self.converter.parsed_requests
        key = bytes(self._buffer)
        hit = parsed.get(key)
        try:
            request, used_bytes = hit if hit is not None else parse_convert_prefix(self._buffer)
        except TruncatedError:
            self._wait_for_more(from_syn)
            return
        except BadMagicError:
            self._not_convert()
            return
        except UnsupportedVersionError:
            self._refuse(ErrorTlv.with_list(ConvertErrorCode.UNSUPPORTED_VERSION, (CONVERT_VERSION,)))
            return
        except ZeroTotalLengthError:
            self.converter.counters["resets_sent"] += 1
            self._decisions.append(ResetUpstream(UpstreamResetReason.ZERO_TOTAL_LENGTH))
            self._end()
            return
        except UnsupportedTlvError:
            self._refuse(self._echo_error(ConvertErrorCode.UNSUPPORTED_MESSAGE))
            return
        except MalformedError:  # framing, a bad value, a duplicate TLV
            self._refuse(self._echo_error(ConvertErrorCode.MALFORMED_MESSAGE))
            return
        if hit is None:
            if len(parsed) >= _MEMO_ENTRIES:
                parsed.clear()
            parsed[key] = (request, used_bytes)
        self.request = request
        raw, user_data = bytes(self._buffer[:used_bytes]), bytes(self._buffer[used_bytes:])
        self._buffer.clear()
        self._validate(request, raw, user_data, now)

    def _wait_for_more(self, from_syn: bool) -> None:
        """An incomplete message: wait (the message timer runs). Under RFC timing the SYN-ACK must
        go now, or the rest can never arrive, unless the SYN held no Convert header at all."""
        if not from_syn or self._upstream_answered:
            return
        if len(self._buffer) < HEADER_BYTES and not self.policy.accept_syn_without_message:
            self._not_convert()
            return
        self._upstream_answered = True
        self._decisions.append(AcceptUpstream())

    def _not_convert(self) -> None:
        """No Convert data (section 6: silently ignored). A socket converter has answered the SYN
        already, so for it "ignore" can only mean closing."""
        self.converter.counters["ignored"] += 1
        self._decisions.append(CloseUpstream() if self._upstream_answered else IgnoreUpstream())
        self._end()

    def _incomplete_message(self) -> None:
        """The message cannot complete (timeout or FIN). A valid header says it was Convert: Error 1."""
        if len(self._buffer) >= HEADER_BYTES:
            self._refuse(self._echo_error(ConvertErrorCode.MALFORMED_MESSAGE))
        else:
            self._not_convert()

    def _echo_error(self, code: ConvertErrorCode) -> ErrorTlv:
        total_bytes = self._buffer[1] * 4 if len(self._buffer) >= 2 else len(self._buffer)
        return ErrorTlv(code, 0, _echo(bytes(self._buffer[:total_bytes])))

    def _validate(self, request: ConvertMessage, raw: bytes, user_data: bytes, now: float) -> None:
        """Steps 2-6 of the order on a well-framed request (``raw``: its bytes as received, for the
        echo); the first failing check answers."""
        facts = self.converter.request_facts(request)
        if facts.foreign_tlv:
            self._refuse(ErrorTlv(ConvertErrorCode.UNSUPPORTED_MESSAGE, 0, _echo(raw)))
            return
        connect = facts.connect
        info = facts.info
        if connect is None and info is None:  # nothing asked: the request cannot be acted on
            self._refuse(ErrorTlv(ConvertErrorCode.MALFORMED_MESSAGE, 0, _echo(raw)))
            return
        if self.policy.require_cookie:
            cookie = facts.cookie
            if cookie is None:
                if self.policy.issue_cookies:
                    self._refuse(ErrorTlv(ConvertErrorCode.MISSING_COOKIE, 0,
                                          self.converter.cookie_for(self.client_address)))
                else:
                    self._refuse(ErrorTlv(ConvertErrorCode.NOT_AUTHORIZED))
                return
            if not self.converter.cookie_valid(cookie.cookie, self.client_address):
                if self.policy.issue_cookies and self.converter.cookie_from_previous_secret(
                        cookie.cookie, self.client_address):
                    # A cookie of a rotated-out secret: the client did nothing wrong; a fresh one
                    # lets it retry at once (Error 3), where Error 32 would make it stop using us.
                    self.converter.counters["cookies_reissued"] += 1
                    self._refuse(ErrorTlv(ConvertErrorCode.MISSING_COOKIE, 0,
                                          self.converter.cookie_for(self.client_address)))
                else:
                    self._refuse(ErrorTlv(ConvertErrorCode.NOT_AUTHORIZED))
                return
        if not self.converter.client_allowed(self.client_address) or (
                connect is not None and not self.policy.allow_hairpin and facts.destination_allowed):
            self._refuse(ErrorTlv(ConvertErrorCode.NOT_AUTHORIZED))
            return
        if connect is None:  # Info alone: tell the client what we convert, then close (6.2.2)
            self.converter.counters["info_answered"] += 1
            self._send_reply(ConvertMessage((SupportedTcpExtensionsTlv(tuple(self.policy.supported_kinds)),)))
            self._decisions.append(CloseUpstream())
            self._end()
            return
        if self.converter.active_sessions >= self.policy.max_sessions:
            self._refuse(ErrorTlv(ConvertErrorCode.RESOURCE_EXCEEDED, self.policy.resource_backoff_s))
            return
        if facts.address_problem is not None:
            self._refuse(ErrorTlv(ConvertErrorCode.MALFORMED_MESSAGE, 0, _echo(raw)))
            return
        if facts.unsupported:
            self._refuse(ErrorTlv.with_list(ConvertErrorCode.UNSUPPORTED_TCP_OPTION, facts.unsupported))
            return
        self._open_downstream(connect, facts.requested, user_data, now)

    def _open_downstream(self, connect: ConnectTlv, requested: tuple, user_data: bytes, now: float) -> None:
        tfo = next((o for o in requested if o.kind == TcpOptionKind.TFO), None)
        syn_payload = user_data if tfo is not None and tfo.value else b""  # a relayed cookie vouches for SYN data
        self._pending_downstream += user_data[len(syn_payload):]
        self.converter.counters["bytes_to_server"] += len(syn_payload)
        self.converter.active_sessions += 1
        self._holds_slot = True
        self.converter.counters["downstream_opened"] += 1
        self._move(SessionState.CONNECTING_DOWNSTREAM)
        self._deadline = now + self.policy.connect_timeout_s
        self._decisions.append(OpenDownstream(connect.address, connect.port, requested, syn_payload))

    # --- helpers ---------------------------------------------------------------------------------

    def _send_reply(self, reply: ConvertMessage) -> None:
        self._upstream_answered = True
        self._decisions.append(SendUpstream(encode_convert(reply), reply))

    def _refuse(self, error: ErrorTlv) -> None:
        """Send the Error TLV (in the SYN-ACK under RFC timing), then FIN (section 6.2.8)."""
        self.error = error
        self.converter.counters[f"error_{error.known_code.name.lower()}"] += 1  # type: ignore[union-attr]
        self._send_reply(ConvertMessage((error,)))
        self._decisions.append(CloseUpstream())
        self._end()

    def _to_server(self, data: bytes) -> None:
        self.converter.counters["bytes_to_server"] += len(data)
        super()._to_server(data)

    def _to_client(self, data: bytes) -> None:
        self.converter.counters["bytes_to_client"] += len(data)
        super()._to_client(data)

    def _end(self) -> None:
        super()._end()
        if self._holds_slot:
            self._holds_slot = False
            self.converter.active_sessions -= 1


# --- the client side ----------------------------------------------------------------------------


class SynAckVerdict(enum.Enum):
    """What the client makes of the SYN-ACK's acknowledgement of its SYN payload (RFC 8803 8)."""

    PAYLOAD_ACKED = "payload_acked"
    RESET_STOP_USING_CONVERTER = "reset_stop_using_converter"  # ISN+1 only, or part of the payload


class ReplyStatus(enum.Enum):
    CONVERTED = "converted"  # the server accepted: its SYN-ACK options are known
    INFO = "info"  # the answer to an Info-only request: the converter's supported kinds
    ERROR = "error"  # an Error TLV: the client MUST reset (6.2.8)
    INVALID = "invalid"  # no valid reply: the client resets


class ConvertReaction(enum.Enum):
    """The client's reaction to a failed attempt (docs/protocols.md 8.3); the arguments are in
    :class:`ConvertAdvice`. Every reaction starts with resetting the connection."""

    RETRY_WITH_COOKIE = "retry_with_cookie"  # Error 3: cache the cookie, retry at once
    RETRY_WITHOUT_OPTIONS = "retry_without_options"  # Error 33: retry without ``kinds``
    RETRY_OTHER_VERSION = "retry_other_version"  # Error 0: ``versions`` are the converter's
    BACK_OFF = "back_off"  # Error 64/65: do not use the converter for ``back_off_s``
    CONVERTER_OFF = "converter_off"  # Error 32, or not a converter at all: stop using it
    REPORT_REFUSED = "report_refused"  # Error 96: the server refused (ECONNREFUSED)
    REPORT_UNREACHABLE = "report_unreachable"  # Error 97: ``icmp_code``
    RESET_LOG = "reset_log"  # Error 1/2, an invalid reply: a bug somewhere; log it


@dataclass(frozen=True, slots=True)
class ConvertAdvice:
    reaction: ConvertReaction
    cookie: bytes = b""
    kinds: tuple[int, ...] = ()
    versions: tuple[int, ...] = ()
    back_off_s: float = 0.0
    icmp_code: int | None = None


@dataclass(frozen=True, slots=True)
class ConvertReply:
    """What the client learned from the converter's reply. ``app_data``: the server's bytes that
    came after the Convert message in the same read (later bytes are plain application data)."""

    status: ReplyStatus
    server_options: tuple = ()
    supported_kinds: tuple[int, ...] | None = None  # present when the converter answered Info
    error: ErrorTlv | None = None
    advice: ConvertAdvice | None = None
    fallback_reason: FallbackReason | None = None
    app_data: bytes = b""

    @property
    def must_reset(self) -> bool:
        return self.status in (ReplyStatus.ERROR, ReplyStatus.INVALID)

    @property
    def server_mptcp_capable(self) -> bool:
        """The server's SYN-ACK held MPTCP (kind 30): the client may bypass the converter (5, Fig. 11)."""
        return any(o.kind == TcpOptionKind.MPTCP for o in self.server_options)

    @property
    def server_tfo_cookie(self) -> bytes | None:
        """The TFO cookie the server handed out through the converter (7, kind 34)."""
        return next((o.cookie for o in self.server_options if isinstance(o, FastOpen) and o.cookie), None)


@dataclass(frozen=True, slots=True)
class ConvertClientPolicy:
    # libconvert takes a header-only reply as success; RFC 8803 6.2.2/6.2.6 expects the Extended
    # TCP Header TLV (a MUST only after an Extended Connect). False: such a reply is invalid.
    accept_header_only_reply: bool = True
    default_back_off_s: float = 30.0  # Error 64/65 with Value 0: "at least 30 s" (6.2.8)

    def __post_init__(self) -> None:
        if self.default_back_off_s < 30.0:
            raise ValueError("RFC 8803 6.2.8: the default back-off is at least 30 s")


def _invalid(reaction: ConvertReaction,
             reason: FallbackReason = FallbackReason.CONVERTER_REPLY_INVALID) -> ConvertReply:
    return ConvertReply(ReplyStatus.INVALID, advice=ConvertAdvice(reaction), fallback_reason=reason)


class ConvertClientExchange:
    """The client's side of one Convert attempt, on the byte stream.

    :meth:`syn_payload` builds the SYN payload; :meth:`check_synack` judges the SYN-ACK's
    acknowledgement; :meth:`receive` reads the converter's bytes until the reply is complete and
    returns it (None: more bytes needed); :meth:`reply_missing` closes the attempt when the
    connection ended or the wait timed out first. The result stays in ``reply``.
    """

    def __init__(self, policy: ConvertClientPolicy | None = None) -> None:
        self.policy = policy or ConvertClientPolicy()
        self.request: ConvertMessage | None = None
        self.payload_bytes = 0
        self.app_data_bytes = 0
        self.reply: ConvertReply | None = None
        self._buffer = bytearray()

    def syn_payload(self, dest: IpAddress | None, port: int = 0, *, info: bool = False, cookie: bytes | None = None,
                    options: tuple[ConnectOption, ...] = (), app_data: bytes = b"",
                    max_bytes: int | None = None) -> bytes:
        """Header, [Info], [Cookie], Connect (no Connect when ``dest`` is None: an Info-only
        request), then ``app_data`` (6: user data follows the TLVs), cut so that the whole
        payload stays within ``max_bytes`` (what one SYN may carry); ``app_data_bytes`` then
        says how much of ``app_data`` went in, the caller sends the rest after the handshake."""
        if self.request is not None:
            raise LocalProtocolError("this exchange has built its SYN payload already")
        if dest is None and (not info or options or app_data):
            raise LocalProtocolError("a request without Connect can only ask for Info")
        tlvs: tuple = ()
        if info:
            tlvs += (InfoTlv(),)
        if cookie is not None:
            tlvs += (CookieTlv(cookie),)
        if dest is not None:
            tlvs += (ConnectTlv(port, dest, tuple(options)),)
        self.request = ConvertMessage(tlvs)
        message = encode_convert(self.request)
        if max_bytes is not None:
            app_data = app_data[: max(0, max_bytes - len(message))]
        self.app_data_bytes = len(app_data)
        payload = message + app_data
        self.payload_bytes = len(payload)
        return payload

    def check_synack(self, ack_covers_payload_bytes: int, payload_bytes: int) -> SynAckVerdict:
        """RFC 8803 8: a SYN-ACK that ACKs less than the whole SYN payload means a middlebox took it
        (or the converter is none): reset and stop using this converter."""
        if ack_covers_payload_bytes >= payload_bytes:
            return SynAckVerdict.PAYLOAD_ACKED
        self.reply = ConvertReply(ReplyStatus.INVALID, advice=ConvertAdvice(ConvertReaction.CONVERTER_OFF),
                                  fallback_reason=FallbackReason.SIGNAL_NOT_ACKED)
        return SynAckVerdict.RESET_STOP_USING_CONVERTER

    def receive(self, data: bytes) -> ConvertReply | None:
        """Bytes from the converter; the reply once its message is complete, else None."""
        if self.reply is not None:
            raise LocalProtocolError("the Convert reply is complete; later bytes are application data")
        self._buffer += data
        try:
            reply, used_bytes = parse_convert_prefix(self._buffer)
        except TruncatedError:
            return None
        except UnsupportedVersionError:
            return self._other_version()
        except (BadMagicError, ZeroTotalLengthError):  # not a converter speaking Convert
            return self._finish(_invalid(ConvertReaction.CONVERTER_OFF))
        except MalformedError:  # bad framing, a duplicate or type-0 TLV: MUST reset (6.2.1, 6.2.2)
            return self._finish(_invalid(ConvertReaction.RESET_LOG))
        result = self._classify(reply)
        return self._finish(replace(result, app_data=bytes(self._buffer[used_bytes:])))

    def reply_missing(self) -> ConvertReply:
        """The connection closed, or the client's wait ended, before a complete reply (8: a
        middlebox may remove the SYN-ACK payload)."""
        if self.reply is not None:
            raise LocalProtocolError("the Convert reply is complete already")
        return self._finish(_invalid(ConvertReaction.CONVERTER_OFF, FallbackReason.CONVERTER_REPLY_MISSING))

    def _finish(self, reply: ConvertReply) -> ConvertReply:
        self.reply = reply
        return reply

    def _other_version(self) -> ConvertReply | None:
        """A reply in another version can still be an Error 0 listing the converter's versions;
        its TLV layout is read as version 1's, since Error 0 exists to negotiate versions."""
        try:
            reply, _ = parse_convert_prefix(bytes((CONVERT_VERSION,)) + bytes(self._buffer[1:]))
        except TruncatedError:
            return None
        except MalformedError:
            return self._finish(_invalid(ConvertReaction.CONVERTER_OFF))
        error = reply.tlv(ErrorTlv)
        if error is None or error.code != ConvertErrorCode.UNSUPPORTED_VERSION:
            return self._finish(_invalid(ConvertReaction.CONVERTER_OFF))
        return self._finish(self._error_reply(error))

    def _classify(self, reply: ConvertMessage) -> ConvertReply:
        if any(not isinstance(tlv, _CONVERTER_TLVS) for tlv in reply.tlvs):
            return _invalid(ConvertReaction.RESET_LOG)  # a type a converter does not send, or unknown
        error = reply.tlv(ErrorTlv)
        if error is not None:
            return self._error_reply(error)
        supported = reply.tlv(SupportedTcpExtensionsTlv)
        kinds = supported.kinds if supported is not None else None
        extended = reply.tlv(ExtendedTcpHeaderTlv)
        asked_connect = self.request is None or self.request.tlv(ConnectTlv) is not None
        if extended is not None:
            return ConvertReply(ReplyStatus.CONVERTED, extended.options, kinds)
        if not asked_connect:
            return ConvertReply(ReplyStatus.INFO, supported_kinds=kinds or ())
        if self.policy.accept_header_only_reply:
            return ConvertReply(ReplyStatus.CONVERTED, (), kinds)
        return _invalid(ConvertReaction.RESET_LOG)

    def _error_reply(self, error: ErrorTlv) -> ConvertReply:
        return ConvertReply(ReplyStatus.ERROR, error=error, advice=self.advice_for(error),
                            fallback_reason=FallbackReason.CONVERTER_ERROR)

    def advice_for(self, error: ErrorTlv) -> ConvertAdvice:
        """docs/protocols.md 8.3; an unknown code is read by its class (6.2.8: 0-31 message, 32-63
        client, 64-95 converter, 96-127 server; beyond 127 nothing is known: log it)."""
        code = error.code
        if code == ConvertErrorCode.UNSUPPORTED_VERSION:
            return ConvertAdvice(ConvertReaction.RETRY_OTHER_VERSION, versions=error.listed_values)
        if code == ConvertErrorCode.MISSING_COOKIE:
            cookie = error.data
            return ConvertAdvice(ConvertReaction.RETRY_WITH_COOKIE, cookie=cookie) if cookie \
                else ConvertAdvice(ConvertReaction.CONVERTER_OFF)  # asked for a cookie it did not give
        if code == ConvertErrorCode.UNSUPPORTED_TCP_OPTION:
            return ConvertAdvice(ConvertReaction.RETRY_WITHOUT_OPTIONS, kinds=error.listed_values)
        if code == ConvertErrorCode.DESTINATION_UNREACHABLE:
            return ConvertAdvice(ConvertReaction.REPORT_UNREACHABLE, icmp_code=error.value)
        if code < 32 or code > 127:
            return ConvertAdvice(ConvertReaction.RESET_LOG)
        if code < 64:
            return ConvertAdvice(ConvertReaction.CONVERTER_OFF)
        if code < 96:
            back_off_s = float(error.value or self.policy.default_back_off_s)
            return ConvertAdvice(ConvertReaction.BACK_OFF, back_off_s=back_off_s)
        return ConvertAdvice(ConvertReaction.REPORT_REFUSED)


class ConvertSynAckCheck(TcpExtension):
    """Puts :meth:`ConvertClientExchange.check_synack` on the client's connection: a SYN-ACK that
    did not ACK the whole payload is answered with RST before any data goes out (RFC 8803 8), so
    the Linux habit of resending unACKed SYN data does not leak the Convert message as data."""

    def __init__(self, exchange: ConvertClientExchange) -> None:
        self.exchange = exchange

    def on_synack(self, conn: TcpConnection, synack: TcpSegment) -> str | None:
        verdict = self.exchange.check_synack(conn.syn_data_acked_bytes, self.exchange.payload_bytes)
        return None if verdict is SynAckVerdict.PAYLOAD_ACKED else "convert payload not acknowledged"


# --- the segment-level converter ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConverterReplied:
    """A converter answered a Convert request (``error_code`` None: the server accepted, or Info)."""

    client: tuple[IpAddress, int]
    destination: tuple[IpAddress, int] | None
    error_code: int | None


class RelayConnectOptions(TcpExtension):
    """Puts the Connect options a converter copies verbatim into its downstream SYN (7): a TFO
    cookie or cookie request, and any other kind the policy converts but the stack does not offer
    itself. SACK-Permitted and Timestamps come from the converter's own TcpPolicy; MPTCP needs a
    real extension (``downstream_extensions`` of :class:`ConverterHost`)."""

    _STACK_KINDS = frozenset({TcpOptionKind.SACK_PERMITTED, TcpOptionKind.TIMESTAMPS, TcpOptionKind.MPTCP})

    def __init__(self, requested_options: Sequence[ConnectOption]) -> None:
        self.options = tuple(self._as_tcp_option(o) for o in requested_options if o.kind not in self._STACK_KINDS)

    @staticmethod
    def _as_tcp_option(option: ConnectOption):
        """The entry as the TCP option with the same bytes (a TFO option of a bad length stays raw)."""
        if option.kind == TcpOptionKind.TFO:
            try:
                return FastOpen(option.value)
            except InvalidValueError:
                return UnknownOption(option.kind, option.value)
        if option.kind in (TcpOptionKind.EXPERIMENTAL_1, TcpOptionKind.EXPERIMENTAL_2):
            return Experimental(option.kind, option.value)
        return UnknownOption(option.kind, option.value)

    def syn_options(self, conn: TcpConnection, retransmission: int) -> tuple:
        return self.options


class ConverterHost(RelayHost):
    """A converter in the simulator: a :class:`~mpsim.proto.relay.RelayHost` listening on
    ``convert_port``, one :class:`ConverterSession` per upstream SYN, downstream connections from
    its server-facing interfaces (``server_interfaces``: the first of the destination's address
    family is used).

    Timing (``policy.timing``): RFC timing withholds the upstream SYN-ACK until the session
    replies, and the downstream SYN has no retransmission timer of its own: it is retransmitted
    when (and only when) the client retransmits its SYN (RFC 8803 9.3), the session's connect
    timer bounding the wait. Socket timing answers the SYN at once (SYN data accepted, as the
    TFO_NO_COOKIE listener of Appendix A.2 does) and leaves the downstream SYN to the stack.

    Hooks: ``upstream_extensions(syn_packet)`` and ``downstream_extensions(open_downstream)`` add
    TcpExtensions per connection (MPTCP on either leg); ``on_downstream_reset(host, upstream, now)``
    replaces the upstream RST after a server reset (an MPTCP upstream sends MP_FASTCLOSE instead).
    """

    def __init__(self, name: str, interfaces: dict[str, IpAddress], *, rng: Rng, convert_port: int,
                 server_interfaces: Sequence[str], policy: ConverterPolicy, tcp_policy: TcpPolicy | None = None,
                 upstream_extensions: Callable[[IpPacket], tuple[TcpExtension, ...]] | None = None,
                 downstream_extensions: Callable[[OpenDownstream], tuple[TcpExtension, ...]] | None = None,
                 on_downstream_reset: Callable[[ConverterHost, TcpConnection, float], None] | None = None) -> None:
        super().__init__(name, interfaces, rng=rng, server_interfaces=server_interfaces, timing=policy.timing,
                         tcp_policy=tcp_policy, upstream_extensions=upstream_extensions,
                         downstream_extensions=downstream_extensions, on_downstream_reset=on_downstream_reset)
        if TcpOptionKind.MPTCP in policy.supported_kinds and downstream_extensions is None:
            raise ValueError(f"{name}: converting MPTCP (kind 30) needs downstream_extensions that provide it")
        self.converter = Converter(policy, rng)
        self.convert_port = convert_port
        self.listen(convert_port, self)

    def on_syn(self, host: Host, packet: IpPacket, now: float) -> Acceptance:
        return self.accept(self.converter.session(packet.src, now), packet)

    def downstream_extensions_for(self, request: OpenDownstream) -> tuple[TcpExtension, ...]:
        return (RelayConnectOptions(request.requested_options),) + self.downstream_extensions(request)

    def on_upstream_reply(self, relay, reply: ConvertMessage, now: float) -> None:
        error = reply.tlv(ErrorTlv)
        self.emit(ConverterReplied(relay.client, relay.session.destination, None if error is None else error.code))


# --- registration: the RFC 8803 converter as the "convert" proxy (mpsim/proto/proxies.py) ------------

from mpsim.proto.catalogue import PROXIES  # noqa: E402  (registration lines stay together at the bottom)
from mpsim.proto.mptcp import MptcpClientExtension, MptcpServerExtension  # noqa: E402
from mpsim.proto.proxies import ProxyEntry, ProxySettings  # noqa: E402


def _create_converter(name: str, addresses: Mapping[str, IpAddress], rng: Rng, settings: ProxySettings) -> ConverterHost:
    """A converter speaking MPTCP to clients (and, with ``convert_mptcp``, to servers that ask)."""
    defaults = ConverterPolicy()
    supported = defaults.supported_kinds + ((TcpOptionKind.MPTCP,) if settings.convert_mptcp else ())
    policy = ConverterPolicy(
        allowed_client_prefixes=settings.client_prefixes, timing=settings.timing, supported_kinds=supported,
        require_cookie=defaults.require_cookie if settings.require_cookie is None else settings.require_cookie,
        max_sessions=defaults.max_sessions if settings.max_sessions is None else settings.max_sessions,
        connect_timeout_s=defaults.connect_timeout_s if settings.connect_timeout_s is None
        else settings.connect_timeout_s)
    holder: dict[str, ConverterHost] = {}  # the extensions count in the host's MIB, made just below
    host = ConverterHost(
        name, dict(addresses), rng=rng, convert_port=settings.port, server_interfaces=("down",), policy=policy,
        upstream_extensions=lambda syn: (MptcpServerExtension(rng=rng, mib=holder["host"].mib),),
        downstream_extensions=lambda request: (MptcpClientExtension(rng=rng, mib=holder["host"].mib),)
        if request.mptcp else ())
    holder["host"] = host
    return host


PROXIES.register("convert", ProxyEntry("convert", "RFC 8803 converter",
                                       "RFC 8803 transport converter (MPTCP towards the client)",
                                       _create_converter))
