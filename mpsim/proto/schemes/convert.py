"""``convert``: RFC 8803, a Convert header and TLVs in the SYN payload to the transport
converter (mpsim/proto/convert.py, whose :class:`ConvertClientExchange` reads the reply). The
converter answers in the SYN-ACK (RFC timing) or in the first bytes (socket timing); an Error TLV
resets the attempt and is acted on per code (RFC 8803 6.2.8, docs/protocols.md 8.3). A server
the client learned to be MPTCP-capable is reached directly (RFC 8803 5).
"""

from __future__ import annotations

from typing import Any

from mpsim.proto.convert import ConvertClientExchange, ConvertReaction, ConvertSynAckCheck
from mpsim.proto.events import FallbackReason
from mpsim.proto.relay import ConverterTiming
from mpsim.proto.schemes.base import (
    MPTCP_SYN_OPTIONS,
    Attempt,
    Proxy,
    SchemeLifecycle,
    SchemeSyn,
    SignallingScheme,
    TableVariant,
    register,
)
from mpsim.proto.tcp import IpAddress
from mpsim.wire.convert import HEADER_BYTES, ConnectOption, ConnectTlv, ConvertMessage, encode_convert
from mpsim.wire.options import TcpOptionKind


def convert_syn_payload(address: IpAddress, port: int) -> bytes:
    """The RFC 8803 SYN payload that asks a converter for ``address``:``port``: header + Connect TLV."""
    return encode_convert(ConvertMessage((ConnectTlv(port, address),)))


class Convert(SignallingScheme):
    name = "convert"
    description = "RFC 8803: Convert header + TLVs in the SYN payload, to the transport converter"
    proxy = "convert"
    truth_table_rank = 2

    def truth_table_variants(self) -> tuple[TableVariant, ...]:
        # The RFC's converter (its SYN-ACK waits for the server's, RFC 8803 4.2), and one that answers
        # at once, as a proxy on Linux sockets does (ConverterTiming, mpsim/proto/relay.py).
        return (TableVariant(self.name), TableVariant(f"{self.name} (socket timing)", timing=ConverterTiming.SOCKET))

    def start(self, lc: SchemeLifecycle, now: float) -> None:
        if lc.host.client_policy.bypass_mptcp_servers and lc.host.caches.server_mptcp_capable(lc.request.destination):
            lc.detail = "bypassed the converter: server known MPTCP-capable"
            lc.open_direct(now, mptcp=True)
            return
        super().start(lc, now)

    def open(self, lc: SchemeLifecycle, now: float, proxy: Proxy | None) -> None:
        host = lc.host
        attempt = lc.new_attempt(self, proxy)
        entry = host.caches.proxy(proxy, now)
        exchange = ConvertClientExchange(host.convert_policy)
        attempt.exchange = exchange
        first_time = proxy not in host.converters_seen
        options = self._connect_options_for(lc, proxy, entry.unsupported_kinds)
        payload = exchange.syn_payload(lc.request.destination, lc.request.port,
                                       info=host.client_policy.convert_info_first and first_time,
                                       cookie=entry.cookie, options=options, app_data=lc.payload,
                                       max_bytes=lc.syn_data_limit_bytes(proxy[0]))
        host.converters_seen.add(proxy)
        attempt.signal_bytes = len(payload) - exchange.app_data_bytes
        extensions = (ConvertSynAckCheck(exchange),)
        if host.client_policy.upstream_mptcp:
            extensions += lc.mptcp_extension(attempt)
        lc.open_attempt(attempt, proxy[0], proxy[1], now, syn_payload=payload, extensions=extensions,
                        policy=lc.proxy_tcp_policy())
        lc.send_rest(attempt, exchange.app_data_bytes, now)
        lc.collect(attempt, now)

    @staticmethod
    def _connect_options_for(lc: SchemeLifecycle, proxy: Proxy,
                             unsupported: tuple[int, ...]) -> tuple[ConnectOption, ...]:
        """Extended Connect entries (RFC 8803 7), minus the kinds the converter refused (Error 33):
        MPTCP towards the server, and the server's TFO (an empty option asks for a cookie, a cookie
        learned through this converter is copied verbatim)."""
        policy, options = lc.host.client_policy, ()
        if policy.mptcp_to_server and TcpOptionKind.MPTCP not in unsupported:
            options += (ConnectOption(TcpOptionKind.MPTCP),)
        if policy.tfo_to_server and TcpOptionKind.TFO not in unsupported:
            cookie = lc.host.converter_tfo_cookies.get((proxy, lc.request.destination), b"")
            options += (ConnectOption(TcpOptionKind.TFO, cookie),)
        return options

    def on_established(self, lc: SchemeLifecycle, attempt: Attempt, now: float) -> None:
        lc.arm_reply_deadline(now)  # the reply comes in the SYN-ACK (RFC timing) or as the first bytes (socket timing)

    def on_reply(self, lc: SchemeLifecycle, attempt: Attempt, data: bytes, now: float) -> bytes | None:
        reply = attempt.exchange.receive(data)
        if reply is None:
            return None
        if reply.must_reset:
            self._react_to_reply(lc, attempt, reply, now)
            return None
        self._learn_from_reply(lc, attempt, reply)
        lc.path_ready(attempt, now)
        return reply.app_data

    @staticmethod
    def _learn_from_reply(lc: SchemeLifecycle, attempt: Attempt, reply: Any) -> None:
        caches = lc.host.caches
        if reply.supported_kinds is not None:
            caches.store_supported_kinds(attempt.proxy, reply.supported_kinds)
        if reply.server_options:
            caches.learn_server(lc.request.destination, mptcp_capable=reply.server_mptcp_capable,
                                learned_via="extended_tcp_header")
        if reply.server_tfo_cookie:
            lc.host.converter_tfo_cookies[(attempt.proxy, lc.request.destination)] = reply.server_tfo_cookie

    def _react_to_reply(self, lc: SchemeLifecycle, attempt: Attempt, reply: Any, now: float) -> None:
        """RFC 8803 6.2.8: reset on any Error TLV, then act per code (docs/protocols.md 8.3)."""
        attempt.failed = True
        lc.abort(attempt, now)
        caches, proxy, advice = lc.host.caches, attempt.proxy, reply.advice
        if reply.error is not None:
            lc.converter_error = reply.error.code
        reaction = advice.reaction
        if reaction is ConvertReaction.RETRY_WITH_COOKIE:
            caches.store_cookie(proxy, advice.cookie)
            self._retry_same_proxy(lc, proxy, now)
        elif reaction is ConvertReaction.RETRY_WITHOUT_OPTIONS:
            caches.store_unsupported_kinds(proxy, advice.kinds)
            self._retry_same_proxy(lc, proxy, now)
        elif reaction is ConvertReaction.BACK_OFF:
            caches.mark_backoff(proxy, now, advice.back_off_s)
            lc.fall_back(now, reply.fallback_reason)
        elif reaction in (ConvertReaction.REPORT_REFUSED, ConvertReaction.REPORT_UNREACHABLE):
            lc.fallback_reason = reply.fallback_reason
            lc.fail(now, reaction.value)
        else:  # CONVERTER_OFF, RETRY_OTHER_VERSION (we speak version 1 only), RESET_LOG
            if reply.error is not None and reply.error.code == 32:
                caches.mark_not_authorized(proxy, now)
            else:
                caches.mark_off(proxy, now, reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID)
            lc.fall_back(now, reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID)

    def _retry_same_proxy(self, lc: SchemeLifecycle, proxy: Proxy, now: float) -> None:
        if not lc.attempts_left():
            lc.fail(now, "too many attempts")
            return
        self.open(lc, now, proxy)

    def reply_missing_reason(self, attempt: Attempt) -> FallbackReason:
        if attempt.exchange.reply is None:
            return attempt.exchange.reply_missing().fallback_reason
        return FallbackReason.CONVERTER_REPLY_MISSING

    def synack_refused_reason(self, attempt: Attempt) -> FallbackReason | None:
        if attempt.exchange.reply is not None:
            return attempt.exchange.reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID
        return None

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        connect_bytes = len(ConnectTlv(port, address).encode())
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, convert_syn_payload(address, port),
                         f"payload: Convert header ({HEADER_BYTES} bytes) + Connect TLV ({connect_bytes} bytes)")


CONVERT = register(Convert())
