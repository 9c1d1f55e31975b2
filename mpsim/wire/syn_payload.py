"""Signalling in the SYN payload, delimited by EOL: the 2016 proposal (docs/protocols.md 2.4(b), [U]).

TCP-option-formatted bytes open the SYN payload and one EOL byte (0x00) ends them; whatever
follows is Fast Open / application data::

    option | option | ... | 00 | data ...

It reuses the TCP header's own end-of-list rule instead of a length field or a magic number,
and that is its weakness: nothing tells a signalled payload from an ordinary one. A payload
whose first byte is 0x00 (DNS over TCP, PostgreSQL, SMB) reads as "no options" and loses that
byte; one that starts like an option may swallow application bytes (docs/mp-convert.md, section
2, has the table). RFC 8803 replaced it with a dedicated port, a magic number and a Total Length.

A SYN's payload is complete when it is decoded (the segment has arrived whole), so a payload
with no EOL, or with an option running past its end, raises :class:`MalformedError`, never
:class:`TruncatedError`: no later byte can belong to the SYN.
"""

from dataclasses import dataclass
from typing import TypeAlias

from mpsim.wire.errors import InvalidValueError, MalformedError
from mpsim.wire.mp_convert import MpConvert
from mpsim.wire.mptcp import MptcpOption
from mpsim.wire.options import EndOfOptionList, TcpOption, TcpOptionKind, decode_options, encode_options

#: What may stand in the signalling: any TCP or MPTCP option value (an MP_CONVERT included).
SynPayloadOption: TypeAlias = TcpOption | MptcpOption | MpConvert


@dataclass(frozen=True, slots=True)
class SynPayloadSignal:
    """A SYN payload under the EOL scheme: ``options`` (no EOL among them), then ``data``.

    ``options`` holds option values of :mod:`mpsim.wire.options` or :mod:`mpsim.wire.mptcp`
    (an :class:`~mpsim.wire.mp_convert.MpConvert` also encodes, but decodes back as the
    MP_EXPERIMENTAL option that carries it: apply ``mp_convert_from_option``). No 40-byte
    limit applies: the payload is not the TCP header, which is the point of the scheme.
    """

    options: tuple[SynPayloadOption, ...] = ()
    data: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.options, tuple) or not all(isinstance(o, SynPayloadOption) for o in self.options):
            raise InvalidValueError(f"SYN payload options must be a tuple of option values, got {self.options!r}")
        if any(isinstance(o, EndOfOptionList) for o in self.options):
            raise InvalidValueError("SYN payload options must not contain an EOL: the encoder adds the one delimiter")
        if not isinstance(self.data, bytes):
            raise InvalidValueError(f"SYN payload data must be bytes, got {self.data!r}")


def encode_syn_payload(signal: SynPayloadSignal) -> bytes:
    """The options unpadded, one 0x00, then the data."""
    return encode_options(signal.options, limit_bytes=None, pad=False) + b"\x00" + signal.data


def signalling_sequence_bytes(signal: SynPayloadSignal) -> int:
    """Sequence numbers the signalling takes when a receiver accepts the payload as data.

    A legacy server that queues SYN data, or a Fast Open server, counts every payload byte
    (RFC 9293 section 3.10.7.2; RFC 7413 section 4.2): the options and their EOL advance its
    RCV.NXT like data, so a SYN-ACK acknowledging ISN + 1 + this + len(data) says the
    signalling went to the application. (draft-bonaventure-mptcp-long-00 instead made its
    payload options consume no sequence space, for receivers that understand them.)
    """
    return len(encode_syn_payload(signal)) - len(signal.data)


def _eol_offset(payload: bytes) -> int:
    """Where the delimiting EOL is: walk the options by their lengths, so that 0x00 bytes inside
    an option's value are not mistaken for it."""
    offset = 0
    while offset < len(payload):
        kind = payload[offset]
        if kind == TcpOptionKind.EOL:
            return offset
        if kind == TcpOptionKind.NOP:
            offset += 1
            continue
        if offset + 1 == len(payload):
            raise MalformedError(f"SYN payload option kind {kind} has no length byte and no EOL follows", offset)
        length = payload[offset + 1]
        if length < 2:
            raise MalformedError(f"SYN payload option kind {kind} length {length}, the minimum is 2", offset)
        if offset + length > len(payload):
            raise MalformedError(
                f"SYN payload option kind {kind} length {length} runs past the end of the {len(payload)}-byte payload",
                offset,
            )
        offset += length
    raise MalformedError(f"SYN payload has no EOL (0x00) ending its options in its {len(payload)} bytes", len(payload))


def decode_syn_payload(payload: bytes | memoryview) -> SynPayloadSignal:
    """Split a SYN payload into the options before the first EOL (at an option boundary) and the
    data after it.

    Raises :class:`MalformedError` when no EOL is found, when an option's length is below 2 or
    runs past the payload, or when a known option has a wrong length (offsets from the payload
    start). An empty payload has no EOL, so it is malformed too: "no signalling" is not a value.
    """
    payload = bytes(payload)
    eol = _eol_offset(payload)
    return SynPayloadSignal(decode_options(payload[:eol]), payload[eol + 1 :])
