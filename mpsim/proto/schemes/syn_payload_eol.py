"""``syn-payload-eol``: MP_CONVERT as option-formatted bytes at the start of the SYN payload,
ended by EOL, then the request (the 2016 proposal); explicit or implicit, like
``mp-convert-option``, whose opening and reading it shares. The payload codec is
mpsim/wire/syn_payload.py.

The signalling is SYN data, so the SYN-ACK must ACK all of it: what is not ACKed Linux would
resend as data after the handshake, where it would reach the server application. An implicit
SYN whose payload the server's own stack ACKed (an on-path proxy drops SYN data) had its
signalling queued as data (RFC 793 / TFO): ``ClientPolicy.signal_acked_as_data``
(:class:`~mpsim.proto.schemes.base.SignalAckedAsData`) says what the client does.
"""

from __future__ import annotations

from mpsim.proto.events import FallbackReason
from mpsim.proto.schemes.base import (
    MPTCP_SYN_OPTIONS,
    Attempt,
    SchemeLifecycle,
    SchemeSyn,
    SignalAckedAsData,
    TableVariant,
    register,
)
from mpsim.proto.schemes.mp_convert_option import MpConvertOption
from mpsim.proto.tcp import IpAddress, TcpConnection
from mpsim.wire.mp_convert import MpConvert, mp_convert_from_option
from mpsim.wire.segment import TcpSegment
from mpsim.wire.syn_payload import SynPayloadSignal, encode_syn_payload


class SynPayloadEol(MpConvertOption):
    name = "syn-payload-eol"
    description = "MP_CONVERT as option bytes + EOL at the start of the SYN payload, then the request"
    truth_table_rank = 4

    def truth_table_variants(self) -> tuple[TableVariant, ...]:
        # Explicit; implicit with no proxy on the path, where the server's stack meets the signal
        # (reset and fall back, or carry on with the signalling in the server's stream).
        implicit = {"implicit": True}
        return (TableVariant(self.name),
                TableVariant(f"{self.name} (implicit, no proxy on path)", implicit),
                TableVariant(f"{self.name} (implicit, no proxy, continue)",
                             implicit | {"signal_acked_as_data": SignalAckedAsData.CONTINUE}))

    def _does_not_fit(self, lc: SchemeLifecycle, signal: MpConvert) -> str | None:
        return None  # the payload has room: the request gives way to the signalling

    def _signal(self, lc: SchemeLifecycle, attempt: Attempt, signal: MpConvert, remote: IpAddress,
                extensions: tuple) -> tuple[tuple, bytes]:
        attempt.signal_bytes = len(encode_syn_payload(SynPayloadSignal((signal,))))
        in_syn = lc.payload[: max(0, lc.syn_data_limit_bytes(remote) - attempt.signal_bytes)]
        return extensions, encode_syn_payload(SynPayloadSignal((signal,), in_syn))

    def judge_synack(self, lc: SchemeLifecycle, attempt: Attempt, conn: TcpConnection,
                      synack: TcpSegment) -> str | None:
        """Who answered, and what became of the signalling (docs/protocols.md 2.4, 2.6)."""
        if conn.syn_data_acked_bytes < len(attempt.syn_payload):
            # The signalling was not taken: Linux would resend it as data after the handshake,
            # where it would reach the server application. Reset instead (RFC 8803 8 does the same).
            attempt.reason = FallbackReason.SIGNAL_NOT_ACKED
            return "signalling not acknowledged"
        if attempt.proxy is not None or any(mp_convert_from_option(o) is not None for o in synack.options):
            return None  # a proxy took the request
        if conn.syn_data_acked_bytes:
            # Implicit, and the server's own stack ACKed the payload (an on-path proxy drops SYN
            # data): it queued the signalling as data, MPTCP server or not (RFC 793 / TFO).
            if lc.host.client_policy.signal_acked_as_data is SignalAckedAsData.RESET:
                attempt.reason = FallbackReason.SIGNAL_ACKED_AS_DATA
                return "signalling acknowledged as data"
            lc.signal_leaked = True
            lc.fallback_reason = FallbackReason.SIGNAL_ACKED_AS_DATA
        return None  # implicit: a proxy or the server answered; the connection is what MPTCP made of it

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        mp_convert = MpConvert(address, port)
        payload = encode_syn_payload(SynPayloadSignal((mp_convert,)))
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, payload,
                         f"payload: MP_CONVERT ({len(mp_convert.encode())} bytes) + EOL, then the data")


SYN_PAYLOAD_EOL = register(SynPayloadEol())
