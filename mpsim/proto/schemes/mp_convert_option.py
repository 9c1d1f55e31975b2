"""``mp-convert-option``: MP_CAPABLE + MP_CONVERT(destination) in the SYN options, to the
MP_CONVERT proxy (explicit) or to the server through an on-path proxy (implicit).
The proxy is mpsim/proto/mp_convert_proxy.py; the option, docs/mp-convert.md."""

from __future__ import annotations

from mpsim.proto.schemes.base import SchemeSyn, SignallingScheme, register
from mpsim.wire.mp_convert import (
    LINUX_SYN_OPTIONS_NO_TIMESTAMPS,
    MpConvert,
    syn_option_bytes,
    syn_options_with_mp_convert,
)
from mpsim.wire.options import TCP_OPTION_SPACE_BYTES


class MpConvertOption(SignallingScheme):
    name = "mp-convert-option"
    description = "MP_CAPABLE + MP_CONVERT(destination) in the SYN options, to the MP_CONVERT proxy"
    proxy = "mp-convert"
    implicit_capable = True

    def syn(self, address, port) -> SchemeSyn:
        mp_convert = MpConvert(address, port)
        note = f"+ MP_CAPABLE + MP_CONVERT ({len(mp_convert.encode())} bytes)"
        if syn_option_bytes(mp_convert) > TCP_OPTION_SPACE_BYTES:
            # docs/mp-convert.md: dropping timestamps is the one way to make room again.
            without_ts_bytes = syn_option_bytes(mp_convert, LINUX_SYN_OPTIONS_NO_TIMESTAMPS)
            verdict = "fits" if without_ts_bytes <= TCP_OPTION_SPACE_BYTES else "still too long"
            note += f"; without timestamps {without_ts_bytes} bytes, {verdict}"
        return SchemeSyn(self.name, syn_options_with_mp_convert(mp_convert), b"", note)


MP_CONVERT_OPTION = register(MpConvertOption())
