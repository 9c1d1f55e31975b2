"""``plain``: ordinary TCP to the server, the baseline every other scheme is compared with."""

from __future__ import annotations

from mpsim.proto.schemes.base import Proxy, SchemeLifecycle, SchemeSyn, SignallingScheme, register
from mpsim.proto.tcp import IpAddress
from mpsim.wire.mp_convert import LINUX_SYN_OPTIONS


class Plain(SignallingScheme):
    name = "plain"
    description = "ordinary TCP to the server"
    plain_tcp = True
    truth_table_rank = 0

    def open(self, lc: SchemeLifecycle, now: float, proxy: Proxy | None) -> None:
        lc.open_direct(now, mptcp=False)

    def syn(self, address: IpAddress, port: int) -> SchemeSyn:
        return SchemeSyn(self.name, LINUX_SYN_OPTIONS, b"", "Linux SYN options: mss, sackOK, TS, nop, wscale")


PLAIN = register(Plain())
