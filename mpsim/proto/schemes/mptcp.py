"""``mptcp``: end-to-end MPTCP (RFC 8684) to the server. Its fallback rules are the MPTCP
extension's (mpsim/proto/mptcp.py), a retry with MPTCP v0 is that extension's policy, and the
lifecycle (mpsim/proto/client.py) opens the retry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpsim.proto.schemes.base import MPTCP_SYN_OPTIONS, SchemeSyn, SignallingScheme, register
from mpsim.wire.mp_convert import MP_CAPABLE_SYN

if TYPE_CHECKING:  # the client imports the schemes; they only name its types
    from mpsim.proto.client import LogicalConnection, Proxy
    from mpsim.proto.tcp import IpAddress


class Mptcp(SignallingScheme):
    name = "mptcp"
    description = "end-to-end MPTCP (RFC 8684) to the server, falling back to TCP by its rules"

    def open(self, lc: LogicalConnection, now: float, proxy: Proxy | None) -> None:
        lc.open_direct(now, mptcp=True)

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, b"",
                         f"+ MP_CAPABLE ({len(MP_CAPABLE_SYN.encode())} bytes); the server itself must speak MPTCP")


MPTCP = register(Mptcp())
