"""MP_CONVERT: the final destination carried in an MPTCP option on the SYN (2015-2017 drafts).

draft-boucadair-mptcp-plain-mode had the client put the address (and port) the MPTCP
Conversion Point should relay to into an MPTCP option of its SYN. IANA never assigned it a
subtype (RFC 8684 section 7.2 lists 0x0-0x8 and 0xF only) and the draft's own layout could not
be retrieved, so mpsim defines a private layout under MP_EXPERIMENTAL (subtype 0xF), tagged
with an experiment ID so that other experiments on 0xF are not misread. docs/mp-convert.md
gives the figure; in short::

    Kind=30 | Length | 0xF, flags I P 6 R | Experiment ID 0xC0 | address 0/4/16 | port 0/2

The point of modelling it is the 40-byte option budget: beside a typical Linux SYN and
MP_CAPABLE an IPv4 destination fits and an IPv6 one does not (:func:`fits_in_syn`).
"""

import ipaddress
from dataclasses import dataclass
from enum import IntFlag
from typing import ClassVar, Final, TypeAlias

from mpsim.wire.errors import InvalidValueError, MalformedError, WireError
from mpsim.wire.mptcp import MpCapable, MpCapableFlags, MpExperimental, decode_mptcp_option
from mpsim.wire.options import (
    TCP_OPTION_SPACE_BYTES,
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    TcpOptionKind,
    Timestamps,
    WindowScale,
    option_space_bytes,
)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: mpsim's private experiment ID for MP_CONVERT (0xC0, "C" for convert): the first body byte of
#: the MP_EXPERIMENTAL option. Not an IANA value; RFC 8684 defines no ID scheme for subtype 0xF.
MP_CONVERT_EXPERIMENT_ID: Final = 0xC0

_HEADER_BYTES = 4  # kind, length, subtype + flags, experiment ID
_PORT_BYTES = 2


class MpConvertFlags(IntFlag):
    """The four flag bits in the low nibble of the subtype byte (mpsim's private layout)."""

    IMPLICIT = 0x8  # "I": this is an MPTCP connection, the converter must not revert it to TCP
    PORT = 0x4  # "P": a destination port follows the address
    IPV6 = 0x2  # "6": the address is IPv6 (16 bytes); clear, an address is IPv4 (4 bytes)
    RESERVED = 0x1  # "R": sent as 0; a set bit marks a future layout and is refused


#: The typical Linux SYN options: mss 1460, sackOK, TS, nop, wscale 7 = 20 bytes (docs/protocols.md
#: sections 3.6 and 5, [I]; layouts RFC 9293 section 3.2, RFC 2018 section 2, RFC 7323). The
#: timestamp values are arbitrary: only the length matters for the budget.
LINUX_SYN_OPTIONS: Final = (MaximumSegmentSize(1460), SackPermitted(), Timestamps(0x12345678, 0),
                            NoOperation(), WindowScale(7))
#: The same SYN with timestamps off (net.ipv4.tcp_timestamps=0): mss,nop,nop,sackOK,nop,wscale = 12 bytes.
LINUX_SYN_OPTIONS_NO_TIMESTAMPS: Final = (MaximumSegmentSize(1460), NoOperation(), NoOperation(), SackPermitted(),
                                          NoOperation(), WindowScale(7))
#: The v1 MP_CAPABLE of a SYN: ``1E 04 01 01`` (RFC 8684 section 3.1, no key, HMAC-SHA256).
MP_CAPABLE_SYN: Final = MpCapable(version=1, flags=MpCapableFlags.H)


@dataclass(frozen=True, slots=True)
class MpConvert:
    """The destination a client asks an MPTCP Conversion Point to relay to.

    ``address`` None means "the destination in the IP header" (transparent, on-path mode);
    ``port`` None means "the destination port of this SYN" and needs an address, since a port
    alone says nothing the TCP header does not. ``implicit`` sets the I flag: the connection is
    MPTCP and the converter must not revert it to plain TCP. Usable directly in an option list
    (it encodes as its MP_EXPERIMENTAL option); decoded lists hold the MP_EXPERIMENTAL value,
    which :func:`mp_convert_from_option` turns back into this.
    """

    address: IPAddress | None = None
    port: int | None = None
    implicit: bool = False
    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_convert"

    def __post_init__(self) -> None:
        if self.address is not None:
            if not isinstance(self.address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                raise InvalidValueError(f"MP_CONVERT address must be an IPv4/IPv6Address or None, got {self.address!r}")
            if getattr(self.address, "scope_id", None):
                raise InvalidValueError(f"MP_CONVERT address {self.address} has a scope ID, which has no wire form")
        if self.port is not None:
            if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 0xFFFF:
                raise InvalidValueError(f"MP_CONVERT port must be an int in 0..65535 or None, got {self.port!r}")
            if self.address is None:
                raise InvalidValueError("MP_CONVERT port needs an address: without one the TCP header already says it")
        if not isinstance(self.implicit, bool):
            raise InvalidValueError(f"MP_CONVERT implicit must be a bool, got {self.implicit!r}")

    @property
    def flags(self) -> MpConvertFlags:
        """The flag nibble this value encodes with."""
        flags = MpConvertFlags(0)
        if self.implicit:
            flags |= MpConvertFlags.IMPLICIT
        if self.port is not None:
            flags |= MpConvertFlags.PORT
        if isinstance(self.address, ipaddress.IPv6Address):
            flags |= MpConvertFlags.IPV6
        return flags

    def to_option(self) -> MpExperimental:
        """The MP_EXPERIMENTAL option that carries this value."""
        body = bytes((MP_CONVERT_EXPERIMENT_ID,))
        if self.address is not None:
            body += self.address.packed
        if self.port is not None:
            body += self.port.to_bytes(_PORT_BYTES, "big")
        return MpExperimental(low_nibble=int(self.flags), body=body)

    def encode(self) -> bytes:
        """The whole option: 4, 8, 10, 20 or 22 bytes."""
        return self.to_option().encode()


def mp_convert_from_option(option: object) -> MpConvert | None:
    """The MP_CONVERT an option carries; None when it is any other option or experiment.

    Raises :class:`MalformedError` (offsets relative to the option's kind byte) when the
    experiment ID is MP_CONVERT's but the flags or length are not a valid MP_CONVERT.
    """
    if not isinstance(option, MpExperimental) or option.body[:1] != bytes((MP_CONVERT_EXPERIMENT_ID,)):
        return None
    flags = MpConvertFlags(option.low_nibble)
    if MpConvertFlags.RESERVED in flags:
        # As with MP_CAPABLE's B bit: an unknown bit means a layout this code cannot read.
        raise MalformedError("MP_CONVERT reserved flag R is set", 2)
    port_bytes = _PORT_BYTES if MpConvertFlags.PORT in flags else 0
    # IPv6 needs its 16 bytes; a port needs an address, so with P and not 6 the address is IPv4.
    allowed_address_bytes = (16,) if MpConvertFlags.IPV6 in flags else (4,) if port_bytes else (0, 4)
    address_bytes = len(option.body) - 1 - port_bytes  # the body is ID, address, port
    if address_bytes not in allowed_address_bytes:
        expected = " or ".join(str(_HEADER_BYTES + n + port_bytes) for n in allowed_address_bytes)
        raise MalformedError(
            f"MP_CONVERT option length {3 + len(option.body)} with flags {flags.value:#x}, expected {expected}", 1
        )
    address = ipaddress.ip_address(option.body[1 : 1 + address_bytes]) if address_bytes else None
    port = int.from_bytes(option.body[1 + address_bytes :], "big") if port_bytes else None
    return MpConvert(address, port, MpConvertFlags.IMPLICIT in flags)


def decode_mp_convert(data: bytes | memoryview) -> MpConvert:
    """Decode one whole MP_CONVERT option (``len(data)`` equal to its length byte).

    :class:`TruncatedError` when ``data`` is shorter than its length byte says (as
    :func:`mpsim.wire.mptcp.decode_mptcp_option`); :class:`MalformedError` for another MPTCP
    subtype, another experiment ID, or flags and length that disagree.
    """
    option = decode_mptcp_option(data)
    if not isinstance(option, MpExperimental):
        raise MalformedError(f"MPTCP subtype {bytes(data)[2] >> 4:#x} is not MP_EXPERIMENTAL (0xf)", 2)
    if not option.body:
        raise MalformedError("MP_EXPERIMENTAL option has no experiment ID byte", 3)
    convert = mp_convert_from_option(option)
    if convert is None:
        raise MalformedError(
            f"MP_EXPERIMENTAL experiment ID {option.body[0]:#04x} is not MP_CONVERT's {MP_CONVERT_EXPERIMENT_ID:#04x}",
            3,
        )
    return convert


def syn_options_with_mp_convert(mp_convert: MpConvert, base_options: tuple = LINUX_SYN_OPTIONS) -> tuple:
    """The SYN's option list: ``base_options``, then MP_CAPABLE (4), then the MP_CONVERT option."""
    return (*base_options, MP_CAPABLE_SYN, mp_convert.to_option())


def syn_option_bytes(mp_convert: MpConvert, base_options: tuple = LINUX_SYN_OPTIONS) -> int:
    """The padded option bytes of :func:`syn_options_with_mp_convert`, whether or not they fit."""
    return option_space_bytes(syn_options_with_mp_convert(mp_convert, base_options))


def fits_in_syn(mp_convert: MpConvert, base_options: tuple = LINUX_SYN_OPTIONS) -> bool:
    """Whether ``base_options`` + MP_CAPABLE + this MP_CONVERT fit in the 40-byte option space.

    Add a TFO option to ``base_options`` to ask the question for a Fast Open SYN.
    """
    return syn_option_bytes(mp_convert, base_options) <= TCP_OPTION_SPACE_BYTES
