"""``plain``: ordinary TCP to the server, the baseline every other scheme is compared with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpsim.proto.schemes.base import SchemeSyn, SignallingScheme, register
from mpsim.wire.mp_convert import LINUX_SYN_OPTIONS

if TYPE_CHECKING:  # the client imports the schemes; they only name its types
    from mpsim.proto.client import LogicalConnection, Proxy
    from mpsim.proto.tcp import IpAddress


class Plain(SignallingScheme):
    name = "plain"
    description = "ordinary TCP to the server"
    plain_tcp = True

    def open(self, lc: LogicalConnection, now: float, proxy: Proxy | None) -> None:
        lc.open_direct(now, mptcp=False)

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        return SchemeSyn(self.name, LINUX_SYN_OPTIONS, b"", "Linux SYN options: mss, sackOK, TS, nop, wscale")


PLAIN = register(Plain())
