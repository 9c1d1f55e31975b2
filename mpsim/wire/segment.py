"""TCP segments in IPv4 and IPv6 packets, with their checksums: what pcap traces and captures hold.

Layouts: the TCP header of RFC 9293 section 3.1, the IPv4 header of RFC 791 section 3.1, the
IPv6 fixed header of RFC 8200 section 3; the TCP checksum covers the pseudo-header of RFC 9293
section 3.1 (IPv4) or RFC 8200 section 8.1 (IPv6); all checksums are the Internet checksum of
RFC 1071.

Byte-exact both ways: every header bit the decoder accepts is kept in the value (the reserved
TCP bits, bytes after an End of Option List, raw IPv4 options), so decoding a packet and
encoding the result gives the same bytes. The checksums are the exception: they are not kept
but recomputed, which gives the same bytes whenever the received checksums were correct (and
not the 0xFFFF spelling of a zero checksum, which RFC 1071 also accepts).

The decoder reads TCP only: IPv4 fragments and other protocols, IPv6 extension headers and
other next headers raise :class:`~mpsim.wire.errors.MalformedError` naming what was found.
"""

import struct
import types
from dataclasses import dataclass
from enum import IntFlag
from ipaddress import IPv4Address, IPv6Address

from mpsim.wire.errors import InvalidValueError, MalformedError, OptionSpaceError, TruncatedError, WireError
from mpsim.wire.options import (
    _FIXED_LENGTH_BYTES,
    _SELF_SIZED_TYPES,
    TCP_OPTION_SPACE_BYTES,
    EndOfOptionList,
    decode_options,
    encode_options,
    options_length_bytes,
)

IpAddress = IPv4Address | IPv6Address
# object.__setattr__ under another name: the compiled build (docs/sim.md "Performance") rewrites a
# literal ``object.__setattr__`` call into a direct store, which it cannot do for an inherited slot.
_set_frozen = object.__setattr__

PROTOCOL_TCP = 6  # IANA protocol number: IPv4 protocol field, IPv6 next header
TCP_HEADER_MIN_BYTES = 20
IPV4_HEADER_MIN_BYTES = 20
IPV6_HEADER_BYTES = 40
MAX_IPV4_OPTIONS_BYTES = 40  # a 4-bit IHL counts at most 15 words, 5 of them fixed
_TCP_CHECKSUM_OFFSET = 16
_IPV4_CHECKSUM_OFFSET = 10
_IPV4_DONT_FRAGMENT = 0x4000
_IPV4_RESERVED_FLAG = 0x8000
_TCP_FIXED = struct.Struct("!HHIIHHHH")
_IPV4_FIXED = struct.Struct("!BBHHHBBH4s4s")
_IPV6_FIXED = struct.Struct("!IHBB16s16s")


class ChecksumError(MalformedError):
    """A checksum that does not verify; ``checksum_name`` says which ("TCP", "IPv4 header").

    ``expected`` is the value a correct sender would have written, ``actual`` the one found.
    """

    def __init__(self, checksum_name: str, expected: int, actual: int, offset: int | None = None) -> None:
        self.checksum_name = checksum_name
        self.expected = expected
        self.actual = actual
        super().__init__(f"{checksum_name} checksum 0x{actual:04x}, expected 0x{expected:04x}", offset)


class TcpFlags(IntFlag):
    """The TCP control bits: RFC 9293 section 3.1, ECE and CWR from RFC 3168, AE from RFC 9768.

    Values are as in the 12 bits after the data offset; AE (0x100) was the ECN-nonce NS bit of
    RFC 3540 (historic since RFC 8311).
    """

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80
    AE = 0x100

    # Flag arithmetic goes through the enum machinery (microseconds a call) and the machines test
    # flags on every segment: the results for TcpFlags and plain ints are looked up instead.
    def __and__(self, other):
        if type(other) is TcpFlags or type(other) is int:
            value = int.__and__(self, other)
            flags = _FLAGS_BY_VALUE.get(value)
            return flags if flags is not None else _flags_of(value)
        return IntFlag.__and__(self, other)

    def __or__(self, other):
        if type(other) is TcpFlags or type(other) is int:
            value = int.__or__(self, other)
            flags = _FLAGS_BY_VALUE.get(value)
            return flags if flags is not None else _flags_of(value)
        return IntFlag.__or__(self, other)

    # Methods, not ``__rand__ = __and__``: the compiled build (docs/sim.md) cannot alias in a class body.
    def __rand__(self, other):
        return self.__and__(other)

    def __ror__(self, other):
        return self.__or__(other)


_FLAGS_BY_VALUE: dict[int, TcpFlags] = {}


def _flags_of(value: int) -> TcpFlags:
    """``TcpFlags(value)``: the same object, remembered for the 512 values of the nine bits."""
    flags = _FLAGS_BY_VALUE.get(value)
    if flags is None:
        flags = TcpFlags(value)
        if 0 <= value <= 0x1FF:
            _FLAGS_BY_VALUE[value] = flags
    return flags


class _KnownLength:
    """One slot beside a frozen dataclass's fields for a length worked out when the value was
    built (a TcpSegment's options before padding, an IpPacket's whole encoding), which never goes
    stale: the fields cannot change. Not a field, so equality, hashing, repr and
    ``dataclasses.fields`` do not see it; a copy made without ``__init__`` (pickle, ``copy``)
    lacks it and works the length out again."""

    __slots__ = ("_known_bytes",)
    _known_bytes: int  # declared for the compiled build (docs/sim.md "Performance"), which has no __slots__


def _check_uint(field: str, value: int, bits: int) -> None:
    if type(value) is not int or not 0 <= value < 1 << bits:
        raise InvalidValueError(f"{field} must be an int in 0..{(1 << bits) - 1}, got {value!r}")


def _check_address_pair(src: IpAddress, dst: IpAddress) -> None:
    if not isinstance(src, IpAddress) or not isinstance(dst, IpAddress) or src.version != dst.version:
        raise InvalidValueError(f"src and dst must be two IPv4Address or two IPv6Address, got {src!r} and {dst!r}")


@dataclass(frozen=True, slots=True)
class TcpSegment(_KnownLength):
    """The TCP part of a packet: header fields, options and payload (RFC 9293 section 3.1).

    The data offset and the checksum are derived when encoding. ``reserved_bits`` are the three
    header bits between the data offset and AE (zero on the wire today). ``option_padding`` is
    empty for the usual zero padding after the options; it holds the bytes between an
    :class:`~mpsim.wire.options.EndOfOptionList` and the end of the header only when they are
    something else (nonzero bytes, or more than the next 4-byte boundary), which the decoder
    keeps so that re-encoding gives the same header.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int
    options: tuple = ()
    payload: bytes = b""
    urgent_pointer: int = 0
    reserved_bits: int = 0
    option_padding: bytes = b""

    def __post_init__(self) -> None:
        # The usual segment passes one test; anything else gets the checks one by one, with their messages.
        if not (type(self.src_port) is int and 0 <= self.src_port <= 0xFFFF and type(self.dst_port) is int
                and 0 <= self.dst_port <= 0xFFFF and type(self.seq) is int and 0 <= self.seq <= 0xFFFFFFFF
                and type(self.ack) is int and 0 <= self.ack <= 0xFFFFFFFF and type(self.flags) is TcpFlags
                and 0 <= self.flags <= 0x1FF and type(self.window) is int and 0 <= self.window <= 0xFFFF
                and self.urgent_pointer == 0 == self.reserved_bits and type(self.urgent_pointer) is int
                and type(self.reserved_bits) is int):
            self._check_header_fields()
        options = self.options
        if type(options) is not tuple:
            raise InvalidValueError(f"options must be a tuple of option values, got {options!r}")
        # The usual options (NOP, MSS, WS, SACK-permitted, TS) have lengths their type fixes: they
        # are sized in one pass; anything else (an EOL, MPTCP, ...) is checked and sized one by one.
        unpadded_bytes = 0
        for option in options:
            length = _FIXED_LENGTH_BYTES.get(type(option))
            if length is None or type(option) is EndOfOptionList:
                unpadded_bytes = self._checked_options_length()
                break
            unpadded_bytes += length
        _set_frozen(self, "_known_bytes", unpadded_bytes)
        if type(self.payload) is not bytes:
            raise InvalidValueError(f"payload must be bytes, got {type(self.payload).__name__}")
        if type(self.option_padding) is not bytes:
            raise InvalidValueError(f"option_padding must be bytes, got {type(self.option_padding).__name__}")
        if self.option_padding:
            if not self.options or not isinstance(self.options[-1], EndOfOptionList):
                raise InvalidValueError("option_padding needs options ending with EndOfOptionList")
            if (unpadded_bytes + len(self.option_padding)) % 4:
                raise InvalidValueError(
                    f"options ({unpadded_bytes} bytes) and option_padding ({len(self.option_padding)} bytes) "
                    "must end on a 4-byte boundary"
                )
            if self.option_padding == bytes(-unpadded_bytes % 4):
                raise InvalidValueError("option_padding equal to the default zero padding must be left empty")

    def _checked_options_length(self) -> int:
        for option in self.options:
            if not (hasattr(option, "kind") and hasattr(option, "encode")):
                raise InvalidValueError(f"options must be a tuple of option values, got {self.options!r}")
        return options_length_bytes(self.options)  # encodes what it must; refuses a non-final EOL

    def _check_header_fields(self) -> None:
        _check_uint("src_port", self.src_port, 16)
        _check_uint("dst_port", self.dst_port, 16)
        _check_uint("seq", self.seq, 32)
        _check_uint("ack", self.ack, 32)
        if not isinstance(self.flags, int) or isinstance(self.flags, bool) or not 0 <= self.flags <= 0x1FF:
            raise InvalidValueError(f"flags must be TcpFlags (or an int in 0..0x1ff), got {self.flags!r}")
        object.__setattr__(self, "flags", _flags_of(int(self.flags)))
        _check_uint("window", self.window, 16)
        _check_uint("urgent_pointer", self.urgent_pointer, 16)
        _check_uint("reserved_bits", self.reserved_bits, 3)

    @property
    def sequence_space_bytes(self) -> int:
        """Sequence numbers the segment occupies: payload bytes, plus one each for SYN and FIN."""
        return len(self.payload) + bool(self.flags & TcpFlags.SYN) + bool(self.flags & TcpFlags.FIN)

    @property
    def header_length_bytes(self) -> int:
        """The header length with options and padding; raises OptionSpaceError beyond 60."""
        try:
            unpadded_bytes = self._known_bytes  # the options without padding
        except AttributeError:
            unpadded_bytes = options_length_bytes(self.options)
        if self.option_padding:
            option_bytes = unpadded_bytes + len(self.option_padding)
            if option_bytes > TCP_OPTION_SPACE_BYTES:
                raise OptionSpaceError(option_bytes)
        else:
            option_bytes = unpadded_bytes + -unpadded_bytes % 4
            if option_bytes > TCP_OPTION_SPACE_BYTES:
                raise OptionSpaceError(requested_bytes=option_bytes, limit_bytes=TCP_OPTION_SPACE_BYTES)
        return TCP_HEADER_MIN_BYTES + option_bytes

    def _option_bytes(self) -> bytes:
        if not self.option_padding:
            return encode_options(self.options)
        option_bytes = encode_options(self.options, limit_bytes=None, pad=False) + self.option_padding
        if len(option_bytes) > TCP_OPTION_SPACE_BYTES:
            raise OptionSpaceError(len(option_bytes))
        return option_bytes


@dataclass(frozen=True, slots=True)
class IpPacket(_KnownLength):
    """An IPv4 or IPv6 packet carrying one TCP segment (RFC 791 section 3.1, RFC 8200 section 3).

    Lengths, the protocol / next header and the IPv4 header checksum are derived when encoding.
    ``dscp_ecn`` is the whole IPv4 type-of-service / IPv6 traffic class byte, ``ttl_hops`` the
    TTL or hop limit. IPv4 only: ``identification``, ``dont_fragment`` and ``ipv4_options``
    (raw option bytes, a multiple of 4 up to 40). IPv6 only: ``flow_label``. The fields of the
    other family must keep their defaults, so that each packet has one value. The lengths are
    checked on construction, so options beyond 40 bytes raise OptionSpaceError here already.
    """

    src: IpAddress
    dst: IpAddress
    segment: TcpSegment
    ttl_hops: int = 64
    identification: int = 0
    dont_fragment: bool = True
    dscp_ecn: int = 0
    flow_label: int = 0
    ipv4_options: bytes = b""

    def __post_init__(self) -> None:
        # The usual packet passes one test; anything else gets the checks one by one, with their messages.
        if not (type(self.src) is type(self.dst) and (type(self.src) is IPv4Address or type(self.src) is IPv6Address)
                and type(self.segment) is TcpSegment and type(self.ttl_hops) is int and 0 <= self.ttl_hops <= 0xFF
                and type(self.identification) is int and 0 <= self.identification <= 0xFFFF
                and type(self.dont_fragment) is bool and type(self.dscp_ecn) is int and 0 <= self.dscp_ecn <= 0xFF
                and self.flow_label == 0 and type(self.flow_label) is int and type(self.ipv4_options) is bytes):
            self._check_fields()
        tcp_bytes = self.segment.header_length_bytes + len(self.segment.payload)
        if isinstance(self.src, IPv4Address):
            if self.flow_label:
                raise InvalidValueError("flow_label exists only in IPv6; it must be 0 for IPv4")
            if len(self.ipv4_options) % 4 or len(self.ipv4_options) > MAX_IPV4_OPTIONS_BYTES:
                raise InvalidValueError(
                    f"ipv4_options must be a multiple of 4 bytes up to {MAX_IPV4_OPTIONS_BYTES}, "
                    f"got {len(self.ipv4_options)}"
                )
            total_bytes = IPV4_HEADER_MIN_BYTES + len(self.ipv4_options) + tcp_bytes
            if total_bytes > 0xFFFF:
                raise InvalidValueError(f"IPv4 total length {total_bytes} bytes exceeds 65535")
        else:
            if self.identification or not self.dont_fragment or self.ipv4_options:
                raise InvalidValueError(
                    "identification, dont_fragment and ipv4_options exist only in IPv4; "
                    "keep them at 0, True and b'' for IPv6"
                )
            if tcp_bytes > 0xFFFF:
                raise InvalidValueError(f"IPv6 payload length {tcp_bytes} bytes exceeds 65535 (no jumbograms)")
            total_bytes = IPV6_HEADER_BYTES + tcp_bytes
        _set_frozen(self, "_known_bytes", total_bytes)

    @property
    def length_bytes(self) -> int:
        """The encoded length, ``len(encode_packet(packet))``: IP header, TCP header, payload."""
        try:
            return self._known_bytes
        except AttributeError:
            ip_header_bytes = IPV4_HEADER_MIN_BYTES + len(self.ipv4_options) if isinstance(self.src, IPv4Address) \
                else IPV6_HEADER_BYTES
            return ip_header_bytes + self.segment.header_length_bytes + len(self.segment.payload)

    def _check_fields(self) -> None:
        _check_address_pair(self.src, self.dst)
        if not isinstance(self.segment, TcpSegment):
            raise InvalidValueError(f"segment must be a TcpSegment, got {type(self.segment).__name__}")
        _check_uint("ttl_hops", self.ttl_hops, 8)
        _check_uint("identification", self.identification, 16)
        if type(self.dont_fragment) is not bool:
            raise InvalidValueError(f"dont_fragment must be a bool, got {self.dont_fragment!r}")
        _check_uint("dscp_ecn", self.dscp_ecn, 8)
        _check_uint("flow_label", self.flow_label, 20)
        if type(self.ipv4_options) is not bytes:
            raise InvalidValueError(f"ipv4_options must be bytes, got {type(self.ipv4_options).__name__}")


# --- the machines' own segments, built without the checks ------------------------------------------

# Pure Python only: a compiled build (docs/sim.md "Performance") makes these classes native, which
# object.__new__ refuses; there the validating constructors are fast anyway and are used instead.
_INTERPRETED = isinstance(_check_uint, types.FunctionType)
_new_object = object.__new__


def trusted_segment(src_port: int, dst_port: int, seq: int, ack: int, flags: TcpFlags, window: int,
                    options: tuple, payload: bytes) -> TcpSegment:
    """``TcpSegment(src_port, dst_port, seq, ack, flags, window, options, payload)`` for a segment a
    machine builds from its own state (docs/sim.md "Performance"): the caller guarantees the
    header fields are in range (ports and 32-bit sequence numbers it keeps, a 16-bit window,
    ``TcpFlags``) and the payload is ``bytes``, so the field checks are skipped and the fields
    are stored directly; the options are still sized as the constructor sizes them. Anything
    unusual (an option of another type, an EOL, flags that are not ``TcpFlags``) goes through
    the constructor, with its checks and errors. The value equals the constructor's
    (tests/wire/test_trusted_segment.py)."""
    unpadded_bytes = 0
    for option in options:
        length = _FIXED_LENGTH_BYTES.get(type(option))
        if length is None:
            if type(option) not in _SELF_SIZED_TYPES:
                return TcpSegment(src_port, dst_port, seq, ack, flags, window, options, payload)
            length = option.size_bytes
        elif type(option) is EndOfOptionList:
            return TcpSegment(src_port, dst_port, seq, ack, flags, window, options, payload)
        unpadded_bytes += length
    if not _INTERPRETED or type(flags) is not TcpFlags or type(options) is not tuple or type(payload) is not bytes:
        return TcpSegment(src_port, dst_port, seq, ack, flags, window, options, payload)
    segment = _new_object(TcpSegment)
    _set_frozen(segment, "src_port", src_port)
    _set_frozen(segment, "dst_port", dst_port)
    _set_frozen(segment, "seq", seq)
    _set_frozen(segment, "ack", ack)
    _set_frozen(segment, "flags", flags)
    _set_frozen(segment, "window", window)
    _set_frozen(segment, "options", options)
    _set_frozen(segment, "payload", payload)
    _set_frozen(segment, "urgent_pointer", 0)
    _set_frozen(segment, "reserved_bits", 0)
    _set_frozen(segment, "option_padding", b"")
    _set_frozen(segment, "_known_bytes", unpadded_bytes)
    return segment


def trusted_packet(src: IpAddress, dst: IpAddress, segment: TcpSegment) -> IpPacket:
    """``IpPacket(src, dst, segment)`` with the default IP fields, for a packet a machine builds
    from its own connection (two addresses of one family) around a :func:`trusted_segment`: the
    length is worked out as the constructor does, without its field checks. A segment whose
    options overflow the header, or an address pair that is not two IPv4 or two IPv6 addresses,
    goes through the constructor and its errors."""
    try:
        unpadded_bytes = segment._known_bytes
    except AttributeError:  # a copy made without __init__: the constructor works it out
        return IpPacket(src, dst, segment)
    option_bytes = unpadded_bytes + -unpadded_bytes % 4
    if option_bytes > TCP_OPTION_SPACE_BYTES or segment.option_padding or not _INTERPRETED:
        return IpPacket(src, dst, segment)
    if type(src) is IPv4Address and type(dst) is IPv4Address:
        total_bytes = IPV4_HEADER_MIN_BYTES + TCP_HEADER_MIN_BYTES + option_bytes + len(segment.payload)
    elif type(src) is IPv6Address and type(dst) is IPv6Address:
        total_bytes = IPV6_HEADER_BYTES + TCP_HEADER_MIN_BYTES + option_bytes + len(segment.payload)
    else:
        return IpPacket(src, dst, segment)
    if total_bytes > 0xFFFF:
        return IpPacket(src, dst, segment)  # which names the limit
    packet = _new_object(IpPacket)
    _set_frozen(packet, "src", src)
    _set_frozen(packet, "dst", dst)
    _set_frozen(packet, "segment", segment)
    _set_frozen(packet, "ttl_hops", 64)
    _set_frozen(packet, "identification", 0)
    _set_frozen(packet, "dont_fragment", True)
    _set_frozen(packet, "dscp_ecn", 0)
    _set_frozen(packet, "flow_label", 0)
    _set_frozen(packet, "ipv4_options", b"")
    _set_frozen(packet, "_known_bytes", total_bytes)
    return packet


def internet_checksum(data: bytes | memoryview) -> int:
    """The Internet checksum of RFC 1071: the one's complement of the one's complement sum of
    the 16-bit big-endian words of ``data`` (an odd last byte padded with a zero byte).

    Over data that includes a correct checksum field, the result is 0 (RFC 1071 section 1).
    """
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_checksum(src: IpAddress, dst: IpAddress, tcp_bytes: bytes | memoryview) -> int:
    """The Internet checksum over the TCP pseudo-header and ``tcp_bytes`` (header and payload).

    The pseudo-header is that of RFC 9293 section 3.1 for IPv4 and RFC 8200 section 8.1 for
    IPv6. With the checksum field of ``tcp_bytes`` zeroed, this is the value to write there;
    with a correct checksum in place, it is 0.
    """
    _check_address_pair(src, dst)
    length_bytes = len(tcp_bytes)
    if src.version == 4:
        if length_bytes > 0xFFFF:
            raise InvalidValueError(f"TCP length {length_bytes} bytes does not fit the IPv4 pseudo-header")
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, PROTOCOL_TCP, length_bytes)
    else:
        if length_bytes > 0xFFFFFFFF:
            raise InvalidValueError(f"TCP length {length_bytes} bytes does not fit the IPv6 pseudo-header")
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length_bytes, PROTOCOL_TCP)
    return internet_checksum(pseudo + bytes(tcp_bytes))


def encode_segment(segment: TcpSegment, src: IpAddress, dst: IpAddress) -> bytes:
    """The TCP header, options and payload, with the checksum for this address pair."""
    option_bytes = segment._option_bytes()
    header_words = (TCP_HEADER_MIN_BYTES + len(option_bytes)) // 4
    offset_and_flags = header_words << 12 | segment.reserved_bits << 9 | segment.flags
    header = _TCP_FIXED.pack(
        segment.src_port, segment.dst_port, segment.seq, segment.ack,
        offset_and_flags, segment.window, 0, segment.urgent_pointer,
    )
    unsummed = header + option_bytes + segment.payload
    checksum = tcp_checksum(src, dst, unsummed)
    return unsummed[:_TCP_CHECKSUM_OFFSET] + checksum.to_bytes(2, "big") + unsummed[_TCP_CHECKSUM_OFFSET + 2 :]


def decode_segment(
    data: bytes | memoryview, src: IpAddress, dst: IpAddress, *, verify_checksum: bool = True
) -> TcpSegment:
    """Decode a whole TCP segment (header and payload, nothing after it).

    Raises TruncatedError when ``data`` ends inside the header, MalformedError for a data offset
    below 5 or bad options, and :class:`ChecksumError` for a checksum that does not verify
    (unless ``verify_checksum`` is False, e.g. for captures taken before checksum offload).
    """
    data = bytes(data)
    if len(data) < TCP_HEADER_MIN_BYTES:
        raise TruncatedError(
            f"TCP header needs {TCP_HEADER_MIN_BYTES} bytes, got {len(data)}", len(data), TCP_HEADER_MIN_BYTES
        )
    src_port, dst_port, seq, ack, offset_and_flags, window, checksum, urgent = _TCP_FIXED.unpack_from(data)
    header_words = offset_and_flags >> 12
    header_bytes = header_words * 4
    if header_bytes < TCP_HEADER_MIN_BYTES:
        raise MalformedError(f"TCP data offset {header_words} words, the minimum is 5", 12)
    if header_bytes > len(data):
        raise TruncatedError(
            f"TCP data offset {header_words} words ({header_bytes} bytes) runs past the {len(data)}-byte segment",
            12, header_bytes,
        )
    if verify_checksum and tcp_checksum(src, dst, data) != 0:
        unsummed = data[:_TCP_CHECKSUM_OFFSET] + b"\x00\x00" + data[_TCP_CHECKSUM_OFFSET + 2 :]
        raise ChecksumError("TCP", tcp_checksum(src, dst, unsummed), checksum, _TCP_CHECKSUM_OFFSET)
    option_area = data[TCP_HEADER_MIN_BYTES:header_bytes]
    try:
        options = decode_options(option_area)
    except WireError as err:
        raise err.shifted(TCP_HEADER_MIN_BYTES) from None
    # Bytes after an EOL are kept only when re-encoding would not restore them (see TcpSegment).
    unpadded_bytes = options_length_bytes(options)
    padding = option_area[unpadded_bytes:]
    if padding == bytes(-unpadded_bytes % 4):
        padding = b""
    return TcpSegment(
        src_port, dst_port, seq, ack, TcpFlags(offset_and_flags & 0x1FF), window, options,
        data[header_bytes:], urgent, (offset_and_flags >> 9) & 0x7, padding,
    )


def encode_packet(packet: IpPacket) -> bytes:
    """The IP header (with its checksum for IPv4) followed by the TCP segment."""
    tcp = encode_segment(packet.segment, packet.src, packet.dst)
    if packet.src.version == 6:
        first_word = 6 << 28 | packet.dscp_ecn << 20 | packet.flow_label
        return _IPV6_FIXED.pack(
            first_word, len(tcp), PROTOCOL_TCP, packet.ttl_hops, packet.src.packed, packet.dst.packed
        ) + tcp
    header_bytes = IPV4_HEADER_MIN_BYTES + len(packet.ipv4_options)
    header = _IPV4_FIXED.pack(
        4 << 4 | header_bytes // 4, packet.dscp_ecn, header_bytes + len(tcp), packet.identification,
        _IPV4_DONT_FRAGMENT if packet.dont_fragment else 0, packet.ttl_hops, PROTOCOL_TCP, 0,
        packet.src.packed, packet.dst.packed,
    ) + packet.ipv4_options
    checksum = internet_checksum(header)
    return header[:_IPV4_CHECKSUM_OFFSET] + checksum.to_bytes(2, "big") + header[_IPV4_CHECKSUM_OFFSET + 2 :] + tcp


def decode_packet(data: bytes | memoryview, *, verify_checksums: bool = True) -> IpPacket:
    """Decode an IPv4 or IPv6 packet carrying TCP; the version comes from the first nibble.

    Bytes after the length the IP header states (e.g. Ethernet padding) are ignored; a buffer
    shorter than that length raises TruncatedError. With ``verify_checksums`` False neither the
    IPv4 header checksum nor the TCP checksum is checked (captures on a host with checksum
    offload show partial checksums on outgoing packets).
    """
    data = bytes(data)
    if not data:
        raise TruncatedError("IP packet is empty", 0, 1)
    version = data[0] >> 4
    if version == 4:
        return _decode_ipv4(data, verify_checksums)
    if version == 6:
        return _decode_ipv6(data, verify_checksums)
    raise MalformedError(f"IP version {version}, expected 4 or 6", 0)


def _decode_ipv4(data: bytes, verify_checksums: bool) -> IpPacket:
    if len(data) < IPV4_HEADER_MIN_BYTES:
        raise TruncatedError(
            f"IPv4 header needs {IPV4_HEADER_MIN_BYTES} bytes, got {len(data)}", len(data), IPV4_HEADER_MIN_BYTES
        )
    (version_ihl, dscp_ecn, total_bytes, identification, flags_fragment, ttl, protocol, checksum,
     src, dst) = _IPV4_FIXED.unpack_from(data)
    header_bytes = (version_ihl & 0xF) * 4
    if header_bytes < IPV4_HEADER_MIN_BYTES:
        raise MalformedError(f"IPv4 IHL {header_bytes // 4} words, the minimum is 5", 0)
    if total_bytes < header_bytes:
        raise MalformedError(f"IPv4 total length {total_bytes} is shorter than its {header_bytes}-byte header", 2)
    if flags_fragment & _IPV4_RESERVED_FLAG:
        raise MalformedError("IPv4 reserved flag bit is set (RFC 791: must be zero)", 6)
    if flags_fragment & ~_IPV4_DONT_FRAGMENT:
        raise MalformedError(
            f"IPv4 fragment (more-fragments {flags_fragment >> 13 & 1}, fragment offset "
            f"{flags_fragment & 0x1FFF} words) not supported",
            6,
        )
    if protocol != PROTOCOL_TCP:
        raise MalformedError(f"IPv4 protocol {protocol} not supported, only TCP ({PROTOCOL_TCP})", 9)
    if len(data) < header_bytes:
        raise TruncatedError(
            f"IPv4 header with IHL {header_bytes // 4} needs {header_bytes} bytes", len(data), header_bytes
        )
    if verify_checksums and internet_checksum(data[:header_bytes]) != 0:
        unsummed = data[:_IPV4_CHECKSUM_OFFSET] + b"\x00\x00" + data[_IPV4_CHECKSUM_OFFSET + 2 : header_bytes]
        raise ChecksumError("IPv4 header", internet_checksum(unsummed), checksum, _IPV4_CHECKSUM_OFFSET)
    if len(data) < total_bytes:
        raise TruncatedError(f"IPv4 total length {total_bytes} bytes, got {len(data)}", len(data), total_bytes)
    src_address, dst_address = IPv4Address(src), IPv4Address(dst)
    segment = _decode_tcp_within(data, header_bytes, total_bytes, src_address, dst_address, verify_checksums)
    return IpPacket(
        src_address, dst_address, segment, ttl, identification, bool(flags_fragment & _IPV4_DONT_FRAGMENT),
        dscp_ecn, 0, data[IPV4_HEADER_MIN_BYTES:header_bytes],
    )


def _decode_ipv6(data: bytes, verify_checksums: bool) -> IpPacket:
    if len(data) < IPV6_HEADER_BYTES:
        raise TruncatedError(
            f"IPv6 header needs {IPV6_HEADER_BYTES} bytes, got {len(data)}", len(data), IPV6_HEADER_BYTES
        )
    first_word, payload_bytes, next_header, hop_limit, src, dst = _IPV6_FIXED.unpack_from(data)
    if next_header == 44:
        raise MalformedError("IPv6 next header 44 (fragment header) not supported", 6)
    if next_header != PROTOCOL_TCP:
        raise MalformedError(
            f"IPv6 next header {next_header} not supported, only TCP ({PROTOCOL_TCP}) right after the fixed header", 6
        )
    total_bytes = IPV6_HEADER_BYTES + payload_bytes
    if len(data) < total_bytes:
        raise TruncatedError(
            f"IPv6 payload length {payload_bytes} bytes, got {len(data) - IPV6_HEADER_BYTES}", len(data), total_bytes
        )
    src_address, dst_address = IPv6Address(src), IPv6Address(dst)
    segment = _decode_tcp_within(data, IPV6_HEADER_BYTES, total_bytes, src_address, dst_address, verify_checksums)
    return IpPacket(
        src_address, dst_address, segment, hop_limit, dscp_ecn=first_word >> 20 & 0xFF, flow_label=first_word & 0xFFFFF
    )


def _decode_tcp_within(
    data: bytes, start: int, end: int, src: IpAddress, dst: IpAddress, verify_checksum: bool
) -> TcpSegment:
    try:
        return decode_segment(data[start:end], src, dst, verify_checksum=verify_checksum)
    except TruncatedError as err:
        # The IP length fixed where the segment ends, so no further bytes can complete it.
        raise MalformedError(f"{err.message}, as the IP length field sets it",
                             None if err.offset is None else start + err.offset) from None
    except WireError as err:
        raise err.shifted(start) from None
