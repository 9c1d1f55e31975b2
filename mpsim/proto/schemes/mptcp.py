"""``mptcp``: end-to-end MPTCP (RFC 8684) to the server, with its fallback rules (the MPTCP
extension, mpsim/proto/mptcp.py); a retry with MPTCP v0 is the extension's policy."""

from __future__ import annotations

from mpsim.proto.schemes.base import MPTCP_SYN_OPTIONS, SchemeSyn, SignallingScheme, register
from mpsim.wire.mp_convert import MP_CAPABLE_SYN


class Mptcp(SignallingScheme):
    name = "mptcp"
    description = "end-to-end MPTCP (RFC 8684) to the server, falling back to TCP by its rules"

    def syn(self, address, port) -> SchemeSyn:
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, b"",
                         f"+ MP_CAPABLE ({len(MP_CAPABLE_SYN.encode())} bytes); the server itself must speak MPTCP")


MPTCP = register(Mptcp())
