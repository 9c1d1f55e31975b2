"""``mp-convert-option``: MP_CAPABLE + MP_CONVERT(destination) in the SYN options, to the
MP_CONVERT proxy (explicit) or, with the implicit flag and no destination, to the server itself
for an on-path proxy to intercept (``ClientPolicy.implicit``). The proxy is
mpsim/proto/mp_convert_proxy.py; the option's layout, docs/mp-convert.md.

How the answers are read (docs/protocols.md 2.4, 2.6): the explicit proxy answers only once the
server has (RFC timing) and refuses with RST, the same RST whether it or the server refused, so
a refused server costs an explicit client a fallback. The on-path proxy answers as the server,
drops SYN data and echoes nothing but MP_CONVERT in its SYN-ACK.
"""

from __future__ import annotations

from typing import Any

from mpsim.proto.events import FallbackReason
from mpsim.proto.mptcp import MptcpClientExtension
from mpsim.proto.proxies import Placement
from mpsim.proto.schemes.base import (
    Attempt,
    Proxy,
    SchemeLifecycle,
    SchemeSyn,
    SignallingScheme,
    SynAckJudge,
    TableVariant,
    register,
)
from mpsim.proto.tcp import IpAddress, TcpConnection, TcpExtension, syn_base_options
from mpsim.wire.mp_convert import (
    LINUX_SYN_OPTIONS_NO_TIMESTAMPS,
    MpConvert,
    mp_convert_from_option,
    syn_option_bytes,
    syn_options_with_mp_convert,
)
from mpsim.wire.mptcp import MpCapable
from mpsim.wire.options import TCP_OPTION_SPACE_BYTES, option_space_bytes
from mpsim.wire.segment import TcpSegment


class _MpConvertOptionOnSyns(TcpExtension):
    """Puts MP_CONVERT on every SYN that carries MP_CAPABLE: a SYN without MP_CAPABLE cannot ask
    for an MPTCP conversion, and one without MP_CONVERT is refused by the explicit proxy (so the
    option may not be dropped from retransmissions the way TFO's is). Must follow ``mptcp`` in
    the connection's extensions, which decides per SYN first."""

    def __init__(self, option: Any, mptcp: MptcpClientExtension) -> None:
        self.option, self.mptcp = option, mptcp

    def syn_options(self, conn: TcpConnection, retransmission: int) -> tuple:
        return (self.option,) if self.mptcp.fallback_reason is None else ()


class MpConvertOption(SignallingScheme):
    name = "mp-convert-option"
    description = "MP_CAPABLE + MP_CONVERT(destination) in the SYN options, to the MP_CONVERT proxy"
    proxy = "mp-convert"
    implicit_capable = True
    truth_table_rank = 3

    def truth_table_variants(self) -> tuple[TableVariant, ...]:
        # Explicit, to the proxy beside the router; implicit, to the server, for a proxy on the path.
        return (TableVariant(self.name),
                TableVariant(f"{self.name} (implicit, proxy on path)", {"implicit": True},
                             placement=Placement.ON_PATH))

    def open(self, lc: SchemeLifecycle, now: float, proxy: Proxy | None) -> None:
        """Explicit (to ``proxy``) or implicit (proxy None: to the server itself)."""
        implicit = proxy is None
        signal = MpConvert(None, None, implicit=True) if implicit else \
            MpConvert(lc.request.destination, lc.request.port, implicit=False)
        remote, port = (lc.request.destination, lc.request.port) if implicit else proxy
        too_long = self._does_not_fit(lc, signal)
        if too_long:
            lc.detail = too_long
            lc.fall_back(now, FallbackReason.SIGNAL_DOES_NOT_FIT)
            return
        attempt = lc.new_attempt(self, proxy, implicit=implicit)
        extensions = (SynAckJudge(self, lc, attempt), *lc.mptcp_extension(attempt))
        extensions, syn_payload = self._signal(lc, attempt, signal, remote, extensions)
        lc.open_attempt(attempt, remote, port, now, syn_payload=syn_payload, extensions=extensions,
                        policy=lc.proxy_tcp_policy() if not implicit else None)
        lc.send_rest(attempt, len(syn_payload) - attempt.signal_bytes if syn_payload else 0, now)
        lc.collect(attempt, now)

    def _does_not_fit(self, lc: SchemeLifecycle, signal: MpConvert) -> str | None:
        """Why the signal cannot be sent (None: it can): the option must fit beside the host's SYN options."""
        needed = option_space_bytes(syn_base_options(lc.host.policy) + (MpCapable(1, 1), signal))
        if needed > TCP_OPTION_SPACE_BYTES:
            return f"MP_CONVERT needs {needed} option bytes of {TCP_OPTION_SPACE_BYTES}"
        return None

    def _signal(self, lc: SchemeLifecycle, attempt: Attempt, signal: MpConvert, remote: IpAddress,
                extensions: tuple) -> tuple[tuple, bytes]:
        """The attempt's extensions and SYN payload carrying ``signal``: here, the option as it
        travels (the MP_EXPERIMENTAL option a proxy reads with mp_convert_from_option)."""
        return (*extensions, _MpConvertOptionOnSyns(signal.to_option(), attempt.mptcp)), b""

    def judge_synack(self, lc: SchemeLifecycle, attempt: Attempt, conn: TcpConnection,
                      synack: TcpSegment) -> str | None:
        # A proxy took the request (without MP_CAPABLE in its SYN-ACK our leg is plain TCP, which
        # a proxy relays when the I flag is clear: the MPTCP extension records why); implicit, a
        # proxy or the server answered, and the connection is what MPTCP made of it.
        return None

    def converted_implicitly(self, attempt: Attempt) -> bool:
        synack = attempt.conn.synack
        return synack is not None and any(mp_convert_from_option(o) is not None for o in synack.options)

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        mp_convert = MpConvert(address, port)
        note = f"+ MP_CAPABLE + MP_CONVERT ({len(mp_convert.encode())} bytes)"
        if syn_option_bytes(mp_convert) > TCP_OPTION_SPACE_BYTES:
            # docs/mp-convert.md: dropping timestamps is the one way to make room again.
            without_ts_bytes = syn_option_bytes(mp_convert, LINUX_SYN_OPTIONS_NO_TIMESTAMPS)
            verdict = "fits" if without_ts_bytes <= TCP_OPTION_SPACE_BYTES else "still too long"
            note += f"; without timestamps {without_ts_bytes} bytes, {verdict}"
        return SchemeSyn(self.name, syn_options_with_mp_convert(mp_convert), b"", note)


MP_CONVERT_OPTION = register(MpConvertOption())
