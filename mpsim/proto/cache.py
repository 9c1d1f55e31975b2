"""Client caches that outlive a connection, and the triggers that re-probe them.

Per proxy (converter or MP_CONVERT proxy): usable / off / backing off / not authorized, with the
proxy's cookie (RFC 8803 Error 3), the TCP extensions it announced (Supported TCP Extensions TLV),
the options it refused (Error 33) and the Convert versions it supports (Error 0). Per server: what
the client learned about the server itself — MPTCP capability seen through the Extended TCP Header
TLV, so the client can bypass the converter next time (RFC 8803 5, Figure 11).

A cached "off" is the fragile part of the 2016 debate (docs/protocols.md 2.6): it must be re-probed
when it may have gone stale. Four triggers are inputs here, each tested: a new proxy is
discovered (its entry starts afresh), the host reboots (volatile state is lost), the host attaches
to a new network (other middleboxes: every verdict is re-probed, cookies kept unless bound to the
old address), and a timer expires (the entry's own deadline, reported through get_timer /
handle_timer so it happens in simulated time).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from mpsim.proto.events import FallbackReason


class ProxyState(enum.Enum):
    USABLE = "usable"
    OFF = "off"  # stop using it (RFC 8803 8: payload not ACKed; no reply; refused) until re-probed
    BACKOFF = "backoff"  # Error 64/65: do not try before the deadline
    NOT_AUTHORIZED = "not_authorized"  # Error 32


class ReprobeTrigger(enum.Enum):
    NEW_PROXY_DISCOVERED = "new_proxy_discovered"
    HOST_REBOOT = "host_reboot"
    NETWORK_ATTACHMENT = "network_attachment"
    TIMER_EXPIRY = "timer_expiry"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long verdicts last. RFC 8803 leaves all of this to the implementation (docs/protocols.md 9.6)."""

    off_reprobe_s: float | None = 3600.0  # None: an "off" verdict lasts until another trigger
    not_authorized_reprobe_s: float | None = None
    default_backoff_s: float = 30.0  # Error 64/65 with Value 0 means "at least 30 s" (RFC 8803 6.2.8)
    keep_cookies_on_new_network: bool = False  # cookies may be bound to the old client address


@dataclass(frozen=True, slots=True)
class ProxyEntry:
    state: ProxyState = ProxyState.USABLE
    until_s: float | None = None  # when the state lapses back to USABLE (None: not by time)
    reason: FallbackReason | None = None
    cookie: bytes | None = None
    supported_kinds: tuple[int, ...] | None = None
    unsupported_kinds: tuple[int, ...] = ()
    versions: tuple[int, ...] = (1,)


@dataclass(frozen=True, slots=True)
class ServerCapabilities:
    """What the client learned about a server (address) itself."""

    mptcp_capable: bool | None = None  # None: unknown
    learned_via: str = ""  # "direct", "extended_tcp_header", ...


@dataclass(frozen=True, slots=True)
class CacheReprobed:
    """A cached verdict was dropped so the proxy will be tried again."""

    proxy: Any
    trigger: ReprobeTrigger
    previous_state: ProxyState


@dataclass
class ClientCaches:
    """The caches of one client host. Keys are whatever identifies a proxy or a server (an
    ``(address, port)`` tuple or an address)."""

    policy: CachePolicy = field(default_factory=CachePolicy)
    proxies: dict[Any, ProxyEntry] = field(default_factory=dict)
    servers: dict[Any, ServerCapabilities] = field(default_factory=dict)
    events: list[CacheReprobed] = field(default_factory=list)
    # The earliest re-probe deadline, kept between changes of ``proxies`` (every change goes
    # through _update or _reprobe, which drop it): get_timer is asked after every input.
    _timer_s: Any = field(default=None, init=False, repr=False, compare=False)
    _timer_stale: bool = field(default=True, init=False, repr=False, compare=False)

    # --- reading ------------------------------------------------------------------------------

    def proxy(self, proxy: Any, now: float) -> ProxyEntry:
        """The entry for ``proxy`` as of ``now`` (a lapsed deadline is processed first)."""
        self.handle_timer(now)
        return self.proxies.get(proxy, ProxyEntry())

    def proxy_usable(self, proxy: Any, now: float) -> bool:
        return self.proxy(proxy, now).state is ProxyState.USABLE

    def server_mptcp_capable(self, server: Any) -> bool:
        return bool(self.servers.get(server, ServerCapabilities()).mptcp_capable)

    # --- verdicts -----------------------------------------------------------------------------

    def mark_off(self, proxy: Any, now: float, reason: FallbackReason) -> None:
        until = None if self.policy.off_reprobe_s is None else now + self.policy.off_reprobe_s
        self._update(proxy, state=ProxyState.OFF, until_s=until, reason=reason)

    def mark_backoff(self, proxy: Any, now: float, delay_s: float) -> None:
        """Error 64/65: back off for ``delay_s`` seconds; 0 means the policy's default (>= 30 s)."""
        delay_s = delay_s if delay_s > 0 else self.policy.default_backoff_s
        self._update(proxy, state=ProxyState.BACKOFF, until_s=now + delay_s, reason=FallbackReason.CONVERTER_ERROR)

    def mark_not_authorized(self, proxy: Any, now: float) -> None:
        reprobe = self.policy.not_authorized_reprobe_s
        self._update(proxy, state=ProxyState.NOT_AUTHORIZED, until_s=None if reprobe is None else now + reprobe,
                     reason=FallbackReason.CONVERTER_ERROR)

    def mark_usable(self, proxy: Any) -> None:
        self._update(proxy, state=ProxyState.USABLE, until_s=None, reason=None)

    def store_cookie(self, proxy: Any, cookie: bytes) -> None:
        self._update(proxy, cookie=cookie)

    def store_supported_kinds(self, proxy: Any, kinds: tuple[int, ...]) -> None:
        self._update(proxy, supported_kinds=tuple(kinds))

    def store_unsupported_kinds(self, proxy: Any, kinds: tuple[int, ...]) -> None:
        entry = self.proxies.get(proxy, ProxyEntry())
        self._update(proxy, unsupported_kinds=tuple(sorted(set(entry.unsupported_kinds) | set(kinds))))

    def store_versions(self, proxy: Any, versions: tuple[int, ...]) -> None:
        self._update(proxy, versions=tuple(versions))

    def learn_server(self, server: Any, *, mptcp_capable: bool, learned_via: str) -> None:
        self.servers[server] = ServerCapabilities(mptcp_capable=mptcp_capable, learned_via=learned_via)

    # --- re-probe triggers --------------------------------------------------------------------

    def new_proxy_discovered(self, proxy: Any) -> None:
        """A proxy learned afresh (configuration, DHCP, RADIUS): whatever we held about it is stale."""
        if proxy in self.proxies:
            self._reprobe(proxy, ReprobeTrigger.NEW_PROXY_DISCOVERED, keep_cookie=False)

    def host_rebooted(self) -> None:
        """Volatile caches are lost with the host's memory."""
        for proxy in list(self.proxies):
            self._reprobe(proxy, ReprobeTrigger.HOST_REBOOT, keep_cookie=False)
        self.servers.clear()

    def network_attached(self) -> None:
        """A new network means other middleboxes: every verdict is re-probed."""
        for proxy in list(self.proxies):
            self._reprobe(proxy, ReprobeTrigger.NETWORK_ATTACHMENT,
                          keep_cookie=self.policy.keep_cookies_on_new_network)

    def get_timer(self) -> float | None:
        if self._timer_stale:
            self._timer_s = min((e.until_s for e in self.proxies.values()
                                 if e.until_s is not None and e.state is not ProxyState.USABLE), default=None)
            self._timer_stale = False
        return self._timer_s

    def handle_timer(self, now: float) -> None:
        timer_s = self.get_timer()  # the earliest entry this loop would re-probe (None: none will)
        if timer_s is None or timer_s > now:
            return
        for proxy, entry in list(self.proxies.items()):
            if entry.state is not ProxyState.USABLE and entry.until_s is not None and entry.until_s <= now:
                self._reprobe(proxy, ReprobeTrigger.TIMER_EXPIRY, keep_cookie=True)

    # --- internals ----------------------------------------------------------------------------

    def _update(self, proxy: Any, **changes: Any) -> None:
        self.proxies[proxy] = replace(self.proxies.get(proxy, ProxyEntry()), **changes)
        self._timer_stale = True

    def _reprobe(self, proxy: Any, trigger: ReprobeTrigger, keep_cookie: bool) -> None:
        entry = self.proxies.pop(proxy)
        self._timer_stale = True
        if keep_cookie and entry.cookie is not None:
            self.proxies[proxy] = ProxyEntry(cookie=entry.cookie)
        self.events.append(CacheReprobed(proxy, trigger, entry.state))
