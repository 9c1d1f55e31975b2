"""``socks5``: RFC 1928 through a SOCKS5 proxy (mpsim/proto/socks5_proxy.py, whose
:class:`Socks5ClientExchange` speaks the client side): the greeting and the CONNECT after the
handshake, two round trips before the request. Failure replies are read the way RFC 8803's error
classes are (docs/protocols.md 8.3)."""

from __future__ import annotations

from mpsim.proto.events import FallbackReason
from mpsim.proto.schemes.base import (
    MPTCP_SYN_OPTIONS,
    Attempt,
    Proxy,
    SchemeLifecycle,
    SchemeSyn,
    SignallingScheme,
    register,
)
from mpsim.proto.socks5_proxy import Socks5ClientExchange, Socks5Result
from mpsim.proto.tcp import IpAddress
from mpsim.wire.socks5 import Socks5Greeting, Socks5Reply, Socks5Request


#: SOCKS5 replies that report the server's answer, not the proxy's state: network or host
#: unreachable, connection refused (RFC 1928 6). Like Convert's Error 96/97 they end the request.
SERVER_ANSWERS = frozenset({Socks5Reply.NETWORK_UNREACHABLE, Socks5Reply.HOST_UNREACHABLE,
                            Socks5Reply.CONNECTION_REFUSED})


class Socks5(SignallingScheme):
    name = "socks5"
    description = "RFC 1928 through a SOCKS5 proxy: greeting and CONNECT after the handshake (2 RTTs)"
    proxy = "socks5"
    proxy_refused_reason = FallbackReason.PROXY_FAILED
    truth_table_rank = 5

    def open(self, lc: SchemeLifecycle, now: float, proxy: Proxy | None) -> None:
        attempt = lc.new_attempt(self, proxy)
        attempt.exchange = Socks5ClientExchange(lc.request.destination, lc.request.port)
        extensions = lc.mptcp_extension(attempt) if lc.host.client_policy.upstream_mptcp else ()
        lc.open_attempt(attempt, proxy[0], proxy[1], now, extensions=extensions, policy=lc.proxy_tcp_policy())
        lc.collect(attempt, now)

    def on_established(self, lc: SchemeLifecycle, attempt: Attempt, now: float) -> None:
        greeting = attempt.exchange.greeting()
        attempt.signal_bytes += len(greeting)
        attempt.conn.send(greeting, now)
        lc.arm_reply_deadline(now)

    def on_reply(self, lc: SchemeLifecycle, attempt: Attempt, data: bytes, now: float) -> bytes | None:
        request = attempt.exchange.receive(data)  # the CONNECT, once the method is agreed
        if request:
            attempt.signal_bytes += len(request)
            attempt.conn.send(request, now)
        result = attempt.exchange.result
        if result is None:
            return None
        if not result.succeeded:
            self._react_to_result(lc, attempt, result, now)
            return None
        lc.path_ready(attempt, now)
        attempt.conn.send(lc.payload, now)
        return result.app_data

    @staticmethod
    def _react_to_result(lc: SchemeLifecycle, attempt: Attempt, result: Socks5Result, now: float) -> None:
        """A failure reply (RFC 1928 6): what the server answered ends the request; a ruleset
        refusal is "not authorized"; a general failure or a timeout is a transient proxy problem
        (back off); the rest means the proxy cannot serve us (off). RFC 1928 has no Error TLV to
        carry more."""
        attempt.failed = True
        lc.abort(attempt, now)
        code, caches, proxy = result.reply_code, lc.host.caches, attempt.proxy
        lc.converter_error = code
        if code in SERVER_ANSWERS:
            lc.fallback_reason = FallbackReason.PROXY_FAILED
            lc.fail(now, f"socks5 reply {code:#04x}")
            return
        if code == Socks5Reply.CONNECTION_NOT_ALLOWED:
            caches.mark_not_authorized(proxy, now)
        elif code in (Socks5Reply.GENERAL_FAILURE, Socks5Reply.TTL_EXPIRED):
            caches.mark_backoff(proxy, now, 0.0)
        else:  # unsupported command or address type, no acceptable method, not SOCKS5 at all
            caches.mark_off(proxy, now, FallbackReason.PROXY_FAILED)
        lc.fall_back(now, FallbackReason.PROXY_FAILED)

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        messages = (("greeting", Socks5Greeting().encode()), ("CONNECT", Socks5Request(address, port).encode()))
        sizes = ", ".join(f"{label} {len(raw)} bytes" for label, raw in messages)
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, b"", f"after the handshake: {sizes}, each awaiting a reply",
                         messages)


SOCKS5 = register(Socks5())
