"""``mptcp``: end-to-end MPTCP (RFC 8684) to the server. Its fallback rules are the MPTCP
extension's (mpsim/proto/mptcp.py), a retry with MPTCP v0 is that extension's policy, and the
lifecycle (mpsim/proto/client.py) opens the retry."""

from __future__ import annotations

from mpsim.proto.schemes.base import MPTCP_SYN_OPTIONS, Proxy, SchemeLifecycle, SchemeSyn, SignallingScheme, register
from mpsim.proto.tcp import IpAddress
from mpsim.wire.mp_convert import MP_CAPABLE_SYN


class Mptcp(SignallingScheme):
    name = "mptcp"
    description = "end-to-end MPTCP (RFC 8684) to the server, falling back to TCP by its rules"
    truth_table_rank = 1

    def open(self, lc: SchemeLifecycle, now: float, proxy: Proxy | None) -> None:
        lc.open_direct(now, mptcp=True)

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, b"",
                         f"+ MP_CAPABLE ({len(MP_CAPABLE_SYN.encode())} bytes); the server itself must speak MPTCP")


MPTCP = register(Mptcp())
