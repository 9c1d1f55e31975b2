"""``socks5``: RFC 1928 through a SOCKS5 proxy (mpsim/proto/socks5_proxy.py): the greeting and the
CONNECT after the handshake, two round trips before the request."""

from __future__ import annotations

from mpsim.proto.events import FallbackReason
from mpsim.proto.schemes.base import MPTCP_SYN_OPTIONS, SchemeSyn, SignallingScheme, register
from mpsim.wire.socks5 import Socks5Greeting, Socks5Request


class Socks5(SignallingScheme):
    name = "socks5"
    description = "RFC 1928 through a SOCKS5 proxy: greeting and CONNECT after the handshake (2 RTTs)"
    proxy = "socks5"
    proxy_refused_reason = FallbackReason.PROXY_FAILED

    def syn(self, address, port) -> SchemeSyn:
        messages = (("greeting", Socks5Greeting().encode()), ("CONNECT", Socks5Request(address, port).encode()))
        sizes = ", ".join(f"{label} {len(raw)} bytes" for label, raw in messages)
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, b"", f"after the handshake: {sizes}, each awaiting a reply",
                         messages)


SOCKS5 = register(Socks5())
