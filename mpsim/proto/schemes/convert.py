"""``convert``: RFC 8803, a Convert header and TLVs in the SYN payload to the transport
converter (mpsim/proto/convert.py), which answers in the SYN-ACK or first bytes."""

from __future__ import annotations

from mpsim.proto.schemes.base import MPTCP_SYN_OPTIONS, SchemeSyn, SignallingScheme, register
from mpsim.wire.convert import HEADER_BYTES, ConnectTlv, ConvertMessage, encode_convert


def convert_syn_payload(address, port: int) -> bytes:
    """The RFC 8803 SYN payload that asks a converter for ``address``:``port``: header + Connect TLV."""
    return encode_convert(ConvertMessage((ConnectTlv(port, address),)))


class Convert(SignallingScheme):
    name = "convert"
    description = "RFC 8803: Convert header + TLVs in the SYN payload, to the transport converter"
    proxy = "convert"

    def syn(self, address, port) -> SchemeSyn:
        connect_bytes = len(ConnectTlv(port, address).encode())
        return SchemeSyn(self.name, MPTCP_SYN_OPTIONS, convert_syn_payload(address, port),
                         f"payload: Convert header ({HEADER_BYTES} bytes) + Connect TLV ({connect_bytes} bytes)")


CONVERT = register(Convert())
