"""``syn-payload-eol``: MP_CONVERT as option-formatted bytes at the start of the SYN payload,
ended by EOL, then the request (the 2016 proposal); explicit or implicit, like
``mp-convert-option``. The payload codec is mpsim/wire/syn_payload.py."""

from __future__ import annotations

from mpsim.proto.schemes.base import MPTCP_SYN_OPTIONS, SchemeSyn, register
from mpsim.proto.schemes.mp_convert_option import MpConvertOption
from mpsim.wire.mp_convert import MpConvert
from mpsim.wire.syn_payload import SynPayloadSignal, encode_syn_payload


class SynPayloadEol(MpConvertOption):
    name = "syn-payload-eol"
    description = "MP_CONVERT as option bytes + EOL at the start of the SYN payload, then the request"

    def syn(self, address, port) -> SchemeSyn:
        mp_convert = MpConvert(address, port)
        payload = encode_syn_payload(SynPayloadSignal((mp_convert,)))
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, payload,
                         f"payload: MP_CONVERT ({len(mp_convert.encode())} bytes) + EOL, then the data")


SYN_PAYLOAD_EOL = register(SynPayloadEol())
