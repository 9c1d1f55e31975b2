"""TCP Fast Open (RFC 7413), with Linux's client and server choices as policy knobs.

Client side. :class:`TfoClient` decides, per connection and before the SYN exists, what the SYN
carries (:meth:`TfoClient.plan_syn` -> :class:`TfoPlan`): a cookie request, the cached cookie
with data, data without any option (Linux ``tcp_fastopen`` 0x4, what an RFC 8803 Convert client
uses towards its converter), or nothing when TFO is off or backed off for that server. The
scheme layer gives ``plan.syn_payload`` to ``Host.open(syn_payload=...)`` together with
:meth:`TfoClient.extension` (or calls :meth:`TfoClient.connect`, which does both). The
extension keeps the option off retransmitted SYNs and learns from the SYN-ACK: the new cookie,
the server MSS, whether the data was ACKed (``TCPFastOpenActive`` / ``TCPFastOpenActiveFail``
in the host MIB) and whether a SYN carrying TFO was probably dropped on the path.

What the client remembers lives in :class:`TfoClientCache`, one :class:`TfoCacheEntry` per
(client IP, server IP): per server, not per port (RFC 7413 4.1.3), and per client address
because the server binds the cookie to it (Linux's tcp_metrics key the same way). The cache is
volatile: :meth:`TfoClientCache.clear` is what a reboot does.

Linux's per-destination SYN-loss back-off (Linux 3.7 to 5.x, ``tcp_fastopen_cookie_check``):
a SYN loss is recorded when (a) the SYN timer fires for the second time or later on a SYN that
carried TFO (``tcp_write_timeout``), or (b) the SYN-ACK answers a retransmitted SYN, carries no
cookie and leaves the SYN data unACKed although a TFO option was sent (``syn_drop`` in
``tcp_rcv_fastopen_synack``). Any other SYN-ACK to a TFO SYN resets the count. While
``syn_loss > 1`` and ``now < last_syn_loss + (60 s << syn_loss)`` the SYN carries no option and
no data; the check comes before the cookie-less one, so Convert clients are affected too (in
practice through (a), since (b) needs an option on the SYN).

Server side. :class:`TfoServer` issues and checks cookies bound to the client IP (HMAC-SHA256
truncated to 8 bytes, the size Linux uses; keys rotate with the previous key still accepted, as
Linux keeps a backup key) and decides per SYN (:meth:`TfoServer.decide`) what a listener does
with SYN data; :class:`TfoServerExtension` puts the cookie into the SYN-ACK and counts pending
Fast Open connections (RFC 7413 PendingFastOpenRequests).

Both sides understand the pre-IANA encoding (kind 254, ExID 0xF989) too: a Linux client whose
kind-34 cookie request went unanswered asks once in that form (packetdrill
``client/fallback-exp-opt.pkt``), and a server answers in the form it was asked in.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass

from mpsim.proto.host import ConnectionOwner, Host
from mpsim.proto.tcp import IpAddress, Rng, SynDataMode, TcpConnection, TcpExtension, TcpState
from mpsim.wire.options import EXID_FAST_OPEN, Experimental, FastOpen, MaximumSegmentSize, NoOperation, TcpOptionKind
from mpsim.wire.segment import IpPacket, TcpSegment

#: Linux TCP_FASTOPEN_COOKIE_SIZE: the cookie length this server issues.
COOKIE_BYTES = 8
_KEY_BYTES = 16
_EXID_BYTES = EXID_FAST_OPEN.to_bytes(2, "big")


def _is_cookie_length(length_bytes: int) -> bool:
    # RFC 7413 4.1.1: empty (a request) or 4..16 bytes of even length; anything else is ignored.
    return length_bytes == 0 or (4 <= length_bytes <= 16 and length_bytes % 2 == 0)


def fast_open_option(cookie: bytes, experimental: bool = False) -> FastOpen | Experimental:
    """The Fast Open option carrying ``cookie`` (empty: a cookie request), in the kind-34 or the
    kind-254 encoding."""
    if experimental:
        return Experimental(TcpOptionKind.EXPERIMENTAL_2, _EXID_BYTES + cookie)
    return FastOpen(cookie)


def find_fast_open(segment: TcpSegment) -> tuple[bytes, bool] | None:
    """The Fast Open option of ``segment`` as (cookie, experimental encoding), or None.

    A kind-254 option counts only with the Fast Open ExID and a valid cookie length.
    """
    for option in segment.options:
        if isinstance(option, FastOpen):
            return option.cookie, False
        if (isinstance(option, Experimental) and option.kind == TcpOptionKind.EXPERIMENTAL_2
                and option.data[:2] == _EXID_BYTES and _is_cookie_length(len(option.data) - 2)):
            return option.data[2:], True
    return None


def _padded(option: FastOpen | Experimental) -> tuple:
    # Linux (tcp_options_write) follows a Fast Open option of length 4n+2 with NOP NOP, keeping
    # the options after it aligned; traces then read "FO <cookie>,nop,nop" as packetdrill does.
    return (option, NoOperation(), NoOperation()) if len(option.encode()) % 4 == 2 else (option,)


# --- client -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TfoPolicy:
    """Client knobs; defaults follow Linux with ``net.ipv4.tcp_fastopen = 1`` (docs/protocols.md 4.3).

    ``syn_loss_backoff_base_s`` is the 60 s of ``60 s << syn_loss`` (None: no back-off, as in
    kernels whose ``tcp_fastopen_cookie_check`` lost it). Without a cached MSS the SYN carries at
    most ``default_syn_data_ipv4_bytes`` / ``..._ipv6_bytes`` (RFC 7413 4.1.3); a cached MSS is
    capped at ``cached_mss_cap_*`` (the RFC's MAY). ``cookie_request_retry_s``: after a cookie
    request drew no cookie, wait this long before asking that server again (RFC 7413 4.1.3
    recommends waiting; None: ask on every connection, as Linux does). ``negative_cache_s``:
    after SYN data went unACKed, send plain SYNs to that server for this long (RFC 7413 4.1.3.1
    negative caching; None: Linux, which only resends the data).
    """

    client_enabled: bool = True  # tcp_fastopen 0x1
    cookieless: bool = False  # tcp_fastopen 0x4: SYN data without any TFO option (a Convert client runs 0x5)
    syn_loss_backoff_base_s: float | None = 60.0
    default_syn_data_ipv4_bytes: int = 536
    default_syn_data_ipv6_bytes: int = 1220
    cached_mss_cap_ipv4_bytes: int = 1460
    cached_mss_cap_ipv6_bytes: int = 1440
    experimental_fallback: bool = True  # an unanswered kind-34 request is retried once as kind 254
    cookie_request_retry_s: float | None = None
    negative_cache_s: float | None = None

    def __post_init__(self) -> None:
        sizes = (self.default_syn_data_ipv4_bytes, self.default_syn_data_ipv6_bytes,
                 self.cached_mss_cap_ipv4_bytes, self.cached_mss_cap_ipv6_bytes)
        if min(sizes) < 0:
            raise ValueError("SYN data sizes and MSS caps must be >= 0")
        for name in ("syn_loss_backoff_base_s", "cookie_request_retry_s", "negative_cache_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None")


class TfoSynKind(enum.Enum):
    """What a client's SYN carries (:attr:`TfoPlan.kind`)."""

    PLAIN = "plain"  # client TFO off: no option, no data
    BACKED_OFF = "backed_off"  # TFO on, but suppressed for this server until TfoPlan.until_s
    COOKIE_REQUEST = "cookie_request"  # an empty option; the data waits for the handshake
    COOKIE = "cookie"  # the cached cookie and up to an MSS of data
    COOKIELESS = "cookieless"  # data, no option (tcp_fastopen 0x4)


@dataclass(frozen=True, slots=True)
class TfoPlan:
    """The decision for one SYN: the option to send (None: none) and the data to put in it.

    The scheme passes ``syn_payload`` to ``Host.open`` and sends :meth:`rest` after opening.
    """

    kind: TfoSynKind
    option: FastOpen | Experimental | None = None
    syn_payload: bytes = b""
    until_s: float | None = None  # BACKED_OFF: when the suppression ends

    @property
    def uses_fastopen(self) -> bool:
        """The SYN carries TFO (an option or data): Linux's ``syn_fastopen || syn_data``."""
        return self.option is not None or bool(self.syn_payload)

    def rest(self, app_data: bytes) -> bytes:
        """The application bytes that did not fit into the SYN."""
        return app_data[len(self.syn_payload):]


@dataclass
class TfoCacheEntry:
    """What a client remembers about one server (Linux ``struct tcp_fastopen_metrics``)."""

    cookie: bytes = b""  # empty: none yet
    cookie_experimental: bool = False  # learnt in the kind-254 encoding, so sent back in it
    mss_bytes: int | None = None  # the server's MSS option
    syn_loss: int = 0
    last_syn_loss_s: float | None = None
    try_experimental: int = 0  # Linux try_exp: 1 = next request in kind 254, 2 = back to kind 34 for good
    cookie_request_failed_s: float | None = None  # a cookie request drew no cookie then
    negative_until_s: float | None = None  # RFC 7413 4.1.3.1 negative cache (policy.negative_cache_s)


class TfoClientCache:
    """Cookies, server MSS and SYN-loss history per (client IP, server IP); volatile (a reboot
    is :meth:`clear`)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[IpAddress, IpAddress], TfoCacheEntry] = {}

    def get(self, client_addr: IpAddress, server_addr: IpAddress) -> TfoCacheEntry | None:
        return self._entries.get((client_addr, server_addr))

    def entry(self, client_addr: IpAddress, server_addr: IpAddress) -> TfoCacheEntry:
        """The entry for the pair, created empty if missing."""
        return self._entries.setdefault((client_addr, server_addr), TfoCacheEntry())

    def clear(self) -> None:
        """Forget everything, as a host reboot does."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class TfoOutcome:
    """What the SYN-ACK told a TFO client (:attr:`TfoClientExtension.outcome`)."""

    syn_data_bytes: int
    syn_data_acked_bytes: int
    cookie_received: bool
    syn_drop_suspected: bool  # answered a data-less retransmission: TFO SYNs may be dropped on the path


class TfoClient:
    """The TFO client of one host: policy, cache and the host's MIB counters."""

    def __init__(self, policy: TfoPolicy | None = None, *, cache: TfoClientCache | None = None,
                 mib: Counter[str] | None = None) -> None:
        self.policy = policy or TfoPolicy()
        self.cache = cache if cache is not None else TfoClientCache()
        self.mib = mib if mib is not None else Counter()

    def syn_data_limit_bytes(self, client_addr: IpAddress, server_addr: IpAddress) -> int:
        """How much data a SYN to ``server_addr`` may carry: the cached MSS (capped) or the default."""
        p = self.policy
        v6 = server_addr.version == 6
        entry = self.cache.get(client_addr, server_addr)
        if entry is None or entry.mss_bytes is None:
            return p.default_syn_data_ipv6_bytes if v6 else p.default_syn_data_ipv4_bytes
        return min(entry.mss_bytes, p.cached_mss_cap_ipv6_bytes if v6 else p.cached_mss_cap_ipv4_bytes)

    def backed_off_until_s(self, client_addr: IpAddress, server_addr: IpAddress, now: float) -> float | None:
        """When TFO to this server resumes, if the SYN-loss back-off or the negative cache holds now."""
        entry = self.cache.get(client_addr, server_addr)
        if entry is None:
            return None
        ends = []
        base_s = self.policy.syn_loss_backoff_base_s
        if base_s is not None and entry.syn_loss > 1 and entry.last_syn_loss_s is not None:
            ends.append(entry.last_syn_loss_s + base_s * (1 << entry.syn_loss))
        if entry.negative_until_s is not None:
            ends.append(entry.negative_until_s)
        until_s = max(ends, default=None)
        return until_s if until_s is not None and now < until_s else None

    def plan_syn(self, client_addr: IpAddress, server_addr: IpAddress, now: float, app_data: bytes = b"") -> TfoPlan:
        """Decide what the SYN of a new connection to ``server_addr`` carries (Linux
        ``tcp_send_syn_data``: back-off first, then cookie-less, then cookie or cookie request)."""
        p = self.policy
        if not p.client_enabled:
            return TfoPlan(TfoSynKind.PLAIN)
        until_s = self.backed_off_until_s(client_addr, server_addr, now)
        if until_s is not None:
            return TfoPlan(TfoSynKind.BACKED_OFF, until_s=until_s)
        syn_payload = app_data[: self.syn_data_limit_bytes(client_addr, server_addr)]
        if p.cookieless:
            return TfoPlan(TfoSynKind.COOKIELESS, syn_payload=syn_payload)
        entry = self.cache.get(client_addr, server_addr) or TfoCacheEntry()
        if entry.cookie:
            return TfoPlan(TfoSynKind.COOKIE, fast_open_option(entry.cookie, entry.cookie_experimental), syn_payload)
        if p.cookie_request_retry_s is not None and entry.cookie_request_failed_s is not None:
            retry_s = entry.cookie_request_failed_s + p.cookie_request_retry_s
            if now < retry_s:
                return TfoPlan(TfoSynKind.BACKED_OFF, until_s=retry_s)
        return TfoPlan(TfoSynKind.COOKIE_REQUEST, fast_open_option(b"", entry.try_experimental == 1))

    def extension(self, plan: TfoPlan) -> TfoClientExtension:
        """The extension of the connection whose SYN ``plan`` describes."""
        return TfoClientExtension(self, plan)

    def connect(self, host: Host, owner: ConnectionOwner, client_addr: IpAddress, server_addr: IpAddress,
                server_port: int, now: float, app_data: bytes = b"",
                extensions: tuple[TcpExtension, ...] = ()) -> tuple[TcpConnection, TfoClientExtension]:
        """Plan, open (``host.open``) and queue the data that did not fit into the SYN."""
        plan = self.plan_syn(client_addr, server_addr, now, app_data)
        tfo = self.extension(plan)
        conn = host.open(owner, client_addr, server_addr, server_port, now, syn_payload=plan.syn_payload,
                         extensions=(tfo, *extensions))
        if plan.rest(app_data):
            conn.send(plan.rest(app_data), now)
            host.collect(conn, now)
        return conn, tfo

    def record_syn_loss(self, client_addr: IpAddress, server_addr: IpAddress, now: float) -> None:
        """A SYN carrying TFO to this server was (probably) lost at ``now``."""
        entry = self.cache.entry(client_addr, server_addr)
        entry.syn_loss += 1
        entry.last_syn_loss_s = now


class TfoClientExtension(TcpExtension):
    """Carries a :class:`TfoPlan` onto the wire and learns from the SYN-ACK (Linux
    ``tcp_rcv_fastopen_synack``). One per connection."""

    def __init__(self, client: TfoClient, plan: TfoPlan) -> None:
        self.client = client
        self.plan = plan
        self.outcome: TfoOutcome | None = None

    def syn_options(self, conn: TcpConnection, retransmission: int) -> tuple:
        if retransmission == 0:
            return _padded(self.plan.option) if self.plan.option is not None else ()
        # RFC 7413 4.2.1, Linux: retransmitted SYNs carry no option (TcpPolicy drops the data).
        # From the second timeout on, Linux counts each one as a SYN loss (tcp_write_timeout).
        if retransmission >= 2 and self.plan.uses_fastopen:
            self.client.record_syn_loss(conn.local_addr, conn.remote_addr, conn.now_s)
        return ()

    def on_synack(self, conn: TcpConnection, synack: TcpSegment) -> str | None:
        plan = self.plan
        if not plan.uses_fastopen:
            return None  # a plain SYN: Linux does not touch the TFO cache
        client, now = self.client, conn.now_s
        entry = client.cache.entry(conn.local_addr, conn.remote_addr)
        found = find_fast_open(synack)
        # A cookie counts only in answer to an option (Linux ignores an unsolicited one; an
        # empty option in a SYN-ACK means nothing).
        issued = found if plan.option is not None and found is not None and found[0] else None
        retransmitted = conn.syns_sent > 1  # Linux tp->total_retrans: this may answer a plain retransmission
        acked_bytes = conn.syn_data_acked_bytes
        data_unacked = acked_bytes < len(plan.syn_payload)
        syn_drop = plan.option is not None and retransmitted and issued is None and data_unacked
        mss = next((o.mss_bytes for o in synack.options if isinstance(o, MaximumSegmentSize)), None)
        if mss:
            entry.mss_bytes = mss
        if issued is not None:
            entry.cookie, entry.cookie_experimental = issued  # a new cookie replaces the old (4.1.3)
            entry.cookie_request_failed_s = None
        elif plan.kind is TfoSynKind.COOKIE_REQUEST and not retransmitted:
            entry.cookie_request_failed_s = now
            if client.policy.experimental_fallback and not entry.cookie:
                tried_exp = isinstance(plan.option, Experimental)
                entry.try_experimental = max(entry.try_experimental, 2 if tried_exp else 1)
        if syn_drop:
            client.record_syn_loss(conn.local_addr, conn.remote_addr, now)
        else:
            entry.syn_loss = 0
        if data_unacked:
            client.mib["TCPFastOpenActiveFail"] += 1  # TcpPolicy.resend_unacked_syn_data resends it
            if client.policy.negative_cache_s is not None:
                entry.negative_until_s = now + client.policy.negative_cache_s
        elif plan.syn_payload:
            client.mib["TCPFastOpenActive"] += 1
        self.outcome = TfoOutcome(len(plan.syn_payload), acked_bytes, issued is not None, syn_drop)
        return None


# --- server -----------------------------------------------------------------------------------


class TfoServerMode(enum.Enum):
    """How a listener treats TFO (Linux ``tcp_fastopen`` server bits)."""

    DISABLED = "disabled"  # a legacy listener: the option is ignored, SYN data dropped
    COOKIE_REQUIRED = "cookie_required"  # 0x2 with TCP_FASTOPEN: data accepted with a valid cookie
    COOKIELESS = "cookieless"  # 0x200 / TCP_FASTOPEN_NO_COOKIE: any SYN data accepted (a converter)


@dataclass(frozen=True, slots=True)
class TfoVerdict:
    """A server's decision on one SYN: what happens to its data, the cookie the SYN-ACK carries,
    and the MIB counters to bump once the connection exists."""

    syn_data_mode: SynDataMode
    reply_option: FastOpen | Experimental | None = None
    counters: tuple[str, ...] = ()

    @property
    def fast_opened(self) -> bool:
        return self.syn_data_mode is SynDataMode.ACCEPT


class TfoServer:
    """Cookie issue and validation bound to the client IP, and the per-SYN decision (Linux
    ``tcp_try_fastopen``). ``max_pending`` bounds Fast Open connections still in SYN-RECEIVED
    (RFC 7413 PendingFastOpenRequests; Linux's TCP_FASTOPEN queue length); beyond it TFO is off
    for new SYNs (their data is dropped, no cookie is sent)."""

    def __init__(self, rng: Rng, *, mode: TfoServerMode = TfoServerMode.COOKIE_REQUIRED, max_pending: int = 4096,
                 mib: Counter[str] | None = None) -> None:
        if max_pending < 0:
            raise ValueError("max_pending must be >= 0")
        self.mode = mode
        self.max_pending = max_pending
        self.mib = mib if mib is not None else Counter()
        self._keys: tuple[bytes, ...] = (self._new_key(rng),)  # primary first, then the previous one
        self._pending: list[TcpConnection] = []

    @staticmethod
    def _new_key(rng: Rng) -> bytes:
        return rng.getrandbits(8 * _KEY_BYTES).to_bytes(_KEY_BYTES, "big")

    def rotate_key(self, rng: Rng) -> None:
        """A new primary key; cookies of the previous key stay valid (a fresh one is sent back),
        those of older keys become invalid."""
        self._keys = (self._new_key(rng), self._keys[0])

    @staticmethod
    def _mac(key: bytes, client_ip: IpAddress) -> bytes:
        return hmac.new(key, client_ip.packed, hashlib.sha256).digest()[:COOKIE_BYTES]

    def cookie_for(self, client_ip: IpAddress) -> bytes:
        """The cookie for ``client_ip`` under the current key (RFC 7413 GetCookie)."""
        return self._mac(self._keys[0], client_ip)

    def _key_index(self, client_ip: IpAddress, cookie: bytes) -> int | None:
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(self._mac(key, client_ip), cookie):
                return index
        return None

    def is_valid(self, client_ip: IpAddress, cookie: bytes) -> bool:
        """RFC 7413 IsCookieValid: made for ``client_ip`` with the current or the previous key."""
        return self._key_index(client_ip, cookie) is not None

    def pending(self) -> int:
        """Fast Open connections still in SYN-RECEIVED."""
        self._pending = [c for c in self._pending if c.state is TcpState.SYN_RECEIVED]
        return len(self._pending)

    def decide(self, syn_packet: IpPacket) -> TfoVerdict:
        """What to do with this SYN's data and which cookie to send back. Pure: counters are
        bumped and the pending count taken by :class:`TfoServerExtension` once the connection
        exists, so a listener may call this freely."""
        seg = syn_packet.segment
        found = find_fast_open(seg)
        if self.mode is TfoServerMode.DISABLED or (found is None and not seg.payload):
            return TfoVerdict(SynDataMode.DROP)
        counters: tuple[str, ...] = ("TCPFastOpenCookieReqd",) if found is not None and not found[0] else ()
        if self.pending() >= self.max_pending:  # checked first, as Linux does, to spare the MAC
            return TfoVerdict(SynDataMode.DROP, counters=counters + ("TCPFastOpenListenOverflow",))
        if seg.payload and self.mode is TfoServerMode.COOKIELESS:
            return TfoVerdict(SynDataMode.ACCEPT, counters=counters + ("TCPFastOpenPassive",))
        if found is None:
            return TfoVerdict(SynDataMode.DROP)  # data without a cookie: ACK the SYN only
        cookie, experimental = found
        fresh = fast_open_option(self.cookie_for(syn_packet.src), experimental)
        if not cookie:
            return TfoVerdict(SynDataMode.DROP, fresh, counters)
        key_index = self._key_index(syn_packet.src, cookie)
        if key_index is None:
            return TfoVerdict(SynDataMode.DROP, fresh, ("TCPFastOpenPassiveFail",))
        if key_index > 0:  # valid under the previous key: accept and hand out the current cookie
            return TfoVerdict(SynDataMode.ACCEPT, fresh, ("TCPFastOpenPassive", "TCPFastOpenPassiveAltKey"))
        return TfoVerdict(SynDataMode.ACCEPT, counters=("TCPFastOpenPassive",))

    def syn_data_mode(self, syn_packet: IpPacket, now: float | None = None) -> SynDataMode:
        """ACCEPT for a valid cookie or cookie-less data, DROP otherwise (for ``Acceptance``; the
        signature fits ``server.ServerListener``'s SYN-data policy)."""
        return self.decide(syn_packet).syn_data_mode

    def extension(self, verdict: TfoVerdict) -> TfoServerExtension:
        return TfoServerExtension(self, verdict)

    def extensions_for(self, syn_packet: IpPacket, now: float | None = None) -> tuple[TcpExtension, ...]:
        """The extension for this SYN (fits ``server.ServerListener``'s extension factory)."""
        return (TfoServerExtension(self, self.decide(syn_packet)),)

    def _admit(self, conn: TcpConnection, verdict: TfoVerdict) -> None:
        self.mib.update(verdict.counters)
        if verdict.fast_opened:
            self._pending.append(conn)


class TfoServerExtension(TcpExtension):
    """Applies a :class:`TfoVerdict` to the passive connection: counts it, and puts the cookie
    into the first SYN-ACK only (RFC 7413 4.2.2: retransmitted SYN-ACKs carry no option).

    A listener builds its answer as ``verdict = server.decide(packet)``, then
    ``Acceptance(owner, syn_data_mode=verdict.syn_data_mode, extensions=(server.extension(verdict),))``.
    """

    def __init__(self, server: TfoServer, verdict: TfoVerdict) -> None:
        self.server = server
        self.verdict = verdict
        self._cookie_sent = False

    def on_syn(self, conn: TcpConnection, syn: TcpSegment) -> None:
        self.server._admit(conn, self.verdict)

    def synack_options(self, conn: TcpConnection, syn: TcpSegment) -> tuple:
        if self.verdict.reply_option is None or self._cookie_sent:
            return ()
        self._cookie_sent = True
        return _padded(self.verdict.reply_option)
