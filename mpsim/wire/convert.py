"""RFC 8803 0-RTT TCP Convert Protocol: the Convert message (fixed header and TLVs), byte-exact.

A Convert message is the first ``Total Length * 4`` bytes of a bytestream (RFC 8803 section 6);
application data may follow it. :func:`parse_convert_prefix` is the stream parser: it returns the
message and the number of bytes it used, raises :class:`TruncatedError` while the bytes so far
could still become a message, and a :class:`MalformedError` subclass once they cannot. The
subclasses let a state machine pick its reaction without looking at the bytes again (numbers are
RFC 8803 sections):

=================================  ===============================  ============================
outcome                            converter                        client
=================================  ===============================  ============================
``TruncatedError``                 wait for more bytes              wait for more bytes
``BadMagicError``                  no Convert data (6: policy)      no valid reply (section 8)
``UnsupportedVersionError``        Error 0 (6.2.8)                  reset (RFC silent)
``ZeroTotalLengthError``           reset (6.1)                      reset (6.1)
``UnsupportedTlvError`` (type 0)   Error 2 (6.2.2)                  reset (6.2.2)
``DuplicateTlvError``              Error 1 (6.2.1)                  reset (6.2.1)
any other ``MalformedError``       Error 1 (6.2.8, 9)               reset
an ``UnknownTlv`` in the message   Error 2 (6.2.8)                  reset (RFC silent)
=================================  ===============================  ============================

Decisions where the RFC leaves room (each documented again where it applies):

* The header is judged once its 4 bytes are in, magic number first: a wrong magic number means
  the bytes are not Convert at all, so their first byte is no version. TLVs are judged once the
  whole Total Length is in (at most 1020 bytes), so every strict prefix of a message, or of any
  bytes behind a good header, is ``TruncatedError``. A header alone (Total Length 1, no TLV) is a valid message: libconvert
  answers a successful connect with just ``01 01 22 63``.
* Unknown non-zero TLV types decode as :class:`UnknownTlv` (the value kept byte for byte), so that
  each side applies its own policy; type 0 is reserved and raises :class:`UnsupportedTlvError`.
  Each type appears at most once per message (:class:`DuplicateTlvError`); repeats across the
  messages of one connection are the state machine's to catch.
* Fields the RFC calls Zero or Unassigned are sent as zero and ignored on receipt.
* Zero padding: a TLV value that RFC 8803 zero-pads keeps the padding where it cannot be told from
  data (the Cookie TLV's cookie and the Error TLV's further bytes, which must therefore be a whole
  number of 32-bit words) and drops it where it can (lists of option kinds or versions, whose
  items are never 0, and option lists, where a zero byte ends the list).
* The Connect TLV carries ``kind len value`` entries (:class:`ConnectOption`), not TCP options:
  RFC 8803 section 7 lets clients list Timestamps and MPTCP without their values (``08 02``,
  ``1E 02``), which no TCP option parser accepts. The Extended TCP Header TLV carries real TCP
  options (the server's SYN-ACK options), decoded with :func:`mpsim.wire.options.decode_options`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import ClassVar, TypeVar

from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError, WireError
from mpsim.wire.options import EndOfOptionList, TcpOption, TcpOptionKind, decode_options, encode_options

CONVERT_VERSION = 1
CONVERT_MAGIC = 0x2263
HEADER_BYTES = 4
MAX_TOTAL_LENGTH_WORDS = 255  # an 8-bit field: 1020 bytes (RFC 8803 section 6.1)


class ConvertTlvType(IntEnum):
    """Convert TLV types (RFC 8803 section 6.2.2, IANA "Convert TLVs"); 0 is reserved."""

    INFO = 0x01
    CONNECT = 0x0A
    EXTENDED_TCP_HEADER = 0x14
    SUPPORTED_TCP_EXTENSIONS = 0x15
    COOKIE = 0x16
    ERROR = 0x1E


class ConvertErrorCode(IntEnum):
    """Error TLV codes (RFC 8803 section 6.2.8, IANA "Convert Errors")."""

    UNSUPPORTED_VERSION = 0
    MALFORMED_MESSAGE = 1
    UNSUPPORTED_MESSAGE = 2
    MISSING_COOKIE = 3
    NOT_AUTHORIZED = 32
    UNSUPPORTED_TCP_OPTION = 33
    RESOURCE_EXCEEDED = 64
    NETWORK_FAILURE = 65
    CONNECTION_RESET = 96
    DESTINATION_UNREACHABLE = 97


# --- errors -----------------------------------------------------------------------------------


class BadMagicError(MalformedError):
    """The Magic Number is not 0x2263: the bytes are not a Convert message (RFC 8803 section 6.1)."""

    def __init__(self, magic: int, offset: int = 2) -> None:
        self.magic = magic
        super().__init__(f"Convert magic number 0x{magic:04x}, expected 0x{CONVERT_MAGIC:04x}", offset)


class UnsupportedVersionError(MalformedError):
    """A Convert header with a version other than 1: the converter answers Error 0."""

    def __init__(self, version: int, offset: int = 0) -> None:
        self.version = version
        super().__init__(f"Convert version {version} is not supported (only {CONVERT_VERSION})", offset)


class ZeroTotalLengthError(MalformedError):
    """A Convert header with Total Length 0: the connection MUST be reset (RFC 8803 section 6.1)."""

    def __init__(self, offset: int = 1) -> None:
        super().__init__("Convert Total Length 0 is invalid", offset)


class TlvFramingError(MalformedError):
    """A TLV Length that is 0, wrong for its type, or runs past the Total Length (RFC 8803 s. 9)."""


class TlvValueError(MalformedError):
    """A well-framed TLV whose value breaks its format (a bad option entry, a forbidden kind)."""


class DuplicateTlvError(MalformedError):
    """A TLV type seen twice in one message (RFC 8803 section 6.2.1)."""

    def __init__(self, tlv_type: int, offset: int) -> None:
        self.tlv_type = tlv_type
        super().__init__(f"Convert TLV type {tlv_type} appears twice", offset)


class UnsupportedTlvError(MalformedError):
    """A TLV of the reserved type 0 (RFC 8803 section 6.2.2)."""

    def __init__(self, tlv_type: int, offset: int) -> None:
        self.tlv_type = tlv_type
        super().__init__(f"Convert TLV type {tlv_type} is reserved", offset)


# --- helpers ----------------------------------------------------------------------------------


def _check_uint(field: str, value: int, bits: int, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value < 1 << bits:
        raise InvalidValueError(f"{field} must be an int in {minimum}..{(1 << bits) - 1}, got {value!r}")


def _check_bytes(field: str, value: bytes, *, words: bool = False) -> None:
    if type(value) is not bytes:
        raise InvalidValueError(f"{field} must be bytes, got {type(value).__name__}")
    if words and len(value) % 4:
        raise InvalidValueError(
            f"{field} must be a whole number of 32-bit words (the receiver cannot tell zero padding "
            f"from data), got {len(value)} bytes"
        )


def _tlv(tlv_type: int, body: bytes) -> bytes:
    """Type, Length and ``body`` (everything after the Length byte), zero padded to a word."""
    padded = body + bytes(-(2 + len(body)) % 4)
    length_words = (2 + len(padded)) // 4
    if length_words > 255:  # the Length field has 8 bits
        raise InvalidValueError(f"TLV type {tlv_type} needs {length_words} words, the Length field holds at most 255")
    return bytes((tlv_type, length_words)) + padded


def _check_kind_list(field: str, kinds: tuple, forbidden: frozenset[int]) -> None:
    if type(kinds) is not tuple:
        raise InvalidValueError(f"{field} must be a tuple, got {type(kinds).__name__}")
    for kind in kinds:
        _check_uint(f"{field} item", kind, 8)
        if kind in forbidden:
            raise InvalidValueError(f"{field} must not contain {sorted(forbidden)}, got {kind}")


_KNOWN_TLV_TYPES = frozenset(ConvertTlvType)


# --- TLVs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InfoTlv:
    """Info TLV (RFC 8803 section 6.2.3): a client asks which TCP extensions the converter supports."""

    tlv_type: ClassVar[int] = ConvertTlvType.INFO
    name: ClassVar[str] = "info"

    def encode(self) -> bytes:
        """``01 01 00 00``."""
        return _tlv(self.tlv_type, b"\x00\x00")


@dataclass(frozen=True, slots=True)
class ConnectOption:
    """One entry of a Connect TLV's TCP Options field (RFC 8803 section 6.2.5, Figure 19).

    ``kind len value``, ``len`` = 2 + len(value). An empty value asks the converter to use a value
    of its own (a TFO cookie request, Timestamps or MPTCP without content, section 7); a value is
    copied verbatim into the converter's SYN. EOL (kind 0) cannot be represented: a zero byte
    starts the padding. NOP (kind 1) MUST NOT be sent but is accepted here, because a converter
    MUST ignore it (section 7.1) rather than refuse the message.
    """

    kind: int
    value: bytes = b""

    def __post_init__(self) -> None:
        _check_uint("ConnectOption kind", self.kind, 8, minimum=1)
        _check_bytes("ConnectOption value", self.value)
        if len(self.value) > 253:
            raise InvalidValueError(f"ConnectOption value must be 0..253 bytes, got {len(self.value)}")

    def encode(self) -> bytes:
        """The kind, the length (2 + value bytes), the value: the TCP option as a SYN carries it."""
        return bytes((self.kind, 2 + len(self.value))) + self.value


@dataclass(frozen=True, slots=True)
class ConnectTlv:
    """Connect TLV (RFC 8803 section 6.2.5): the remote peer a converter connects to.

    Base Connect (Length 5) without ``options``, Extended Connect with them. The address goes on
    the wire as 16 bytes, an IPv4 address in the IPv4-mapped form ``::ffff:a.b.c.d`` (RFC 4291),
    which decodes back to an :class:`IPv4Address`; an :class:`IPv6Address` that is itself
    IPv4-mapped is refused so that each encoding has one value. Whether the address is one the
    converter may use is :func:`connect_address_problem`'s question, not a wire error.
    """

    port: int
    address: IPv4Address | IPv6Address
    options: tuple[ConnectOption, ...] = ()
    tlv_type: ClassVar[int] = ConvertTlvType.CONNECT
    name: ClassVar[str] = "connect"

    def __post_init__(self) -> None:
        _check_uint("Connect port", self.port, 16)
        if not isinstance(self.address, (IPv4Address, IPv6Address)):
            raise InvalidValueError(f"Connect address must be an IPv4Address or IPv6Address, got {self.address!r}")
        if isinstance(self.address, IPv6Address):
            if self.address.ipv4_mapped is not None:
                raise InvalidValueError(f"Connect address {self.address} is IPv4-mapped: give the IPv4Address")
            if self.address.scope_id is not None:
                raise InvalidValueError(f"Connect address {self.address} has a scope, which has no wire form")
        if type(self.options) is not tuple or not all(type(o) is ConnectOption for o in self.options):
            raise InvalidValueError(f"Connect options must be a tuple of ConnectOption, got {self.options!r}")
        self.encode()  # refuses a TLV longer than its Length field can say

    def encode(self) -> bytes:
        """``0A``, Length, port, the 16-byte address, the option entries, zero padding."""
        packed = self.address.packed
        address_bytes = bytes(10) + b"\xff\xff" + packed if len(packed) == 4 else packed
        entries = b"".join(option.encode() for option in self.options)
        return _tlv(self.tlv_type, struct.pack("!H", self.port) + address_bytes + entries)


@dataclass(frozen=True, slots=True)
class ExtendedTcpHeaderTlv:
    """Extended TCP Header TLV (RFC 8803 section 6.2.6): the server's SYN-ACK options, as received.

    ``options`` holds TCP option values of :mod:`mpsim.wire.options` (kind-30 values of
    :mod:`mpsim.wire.mptcp` too), NOPs included. An EOL is refused: on the wire it and the zeros
    after it cannot be told from the TLV's zero padding, so decoding drops them.
    """

    options: tuple = ()
    tlv_type: ClassVar[int] = ConvertTlvType.EXTENDED_TCP_HEADER
    name: ClassVar[str] = "extended_tcp_header"

    def __post_init__(self) -> None:
        if type(self.options) is not tuple:
            raise InvalidValueError(f"Extended TCP Header options must be a tuple, got {type(self.options).__name__}")
        for option in self.options:
            if isinstance(option, EndOfOptionList):
                raise InvalidValueError("Extended TCP Header options cannot hold an EOL: it reads as padding")
            if not isinstance(option, TcpOption) and getattr(option, "kind", None) != TcpOptionKind.MPTCP:
                raise InvalidValueError(f"Extended TCP Header options must be TCP option values, got {option!r}")
        self.encode()

    def encode(self) -> bytes:
        """``14``, Length, 2 Unassigned zero bytes, the options, zero padding."""
        return _tlv(self.tlv_type, b"\x00\x00" + encode_options(self.options, limit_bytes=None, pad=False))


# RFC 8803 section 6.2.4 and 7: EOL, NOP, MSS, Window Scale and SACK MUST NOT be announced.
_UNANNOUNCEABLE_KINDS = frozenset({0, 1, 2, 3, 5})


@dataclass(frozen=True, slots=True)
class SupportedTcpExtensionsTlv:
    """Supported TCP Extensions TLV (RFC 8803 section 6.2.4): the option kinds a converter converts.

    One byte per kind, zero padded. Kinds 0, 1, 2, 3 and 5 MUST NOT be listed (sections 6.2.4, 7):
    they are refused here and, on decoding, make the TLV malformed.
    """

    kinds: tuple[int, ...] = ()
    tlv_type: ClassVar[int] = ConvertTlvType.SUPPORTED_TCP_EXTENSIONS
    name: ClassVar[str] = "supported_tcp_extensions"

    def __post_init__(self) -> None:
        _check_kind_list("Supported TCP Extensions kinds", self.kinds, _UNANNOUNCEABLE_KINDS)
        self.encode()

    def encode(self) -> bytes:
        """``15``, Length, 2 Unassigned zero bytes, one byte per kind, zero padding."""
        return _tlv(self.tlv_type, b"\x00\x00" + bytes(self.kinds))


@dataclass(frozen=True, slots=True)
class CookieTlv:
    """Cookie TLV (RFC 8803 section 6.2.7): an opaque cookie, like a TFO cookie, in the SYN payload.

    The cookie is every byte after the Zero field, as libconvert reads it, so it must be a whole
    number of 32-bit words: zero padding would otherwise become part of the cookie on receipt.
    """

    cookie: bytes
    tlv_type: ClassVar[int] = ConvertTlvType.COOKIE
    name: ClassVar[str] = "cookie"

    def __post_init__(self) -> None:
        _check_bytes("cookie", self.cookie, words=True)
        self.encode()

    def encode(self) -> bytes:
        """``16``, Length, 2 zero bytes, the cookie."""
        return _tlv(self.tlv_type, b"\x00\x00" + self.cookie)


@dataclass(frozen=True, slots=True)
class ErrorTlv:
    """Error TLV (RFC 8803 section 6.2.8): Error Code (8 bits), Value (8 bits), further bytes.

    What ``value`` and ``data`` hold depends on the code (nothing here enforces it, so that a
    simulated peer can break the rules):

    * 0 Unsupported Version: the supported versions, one byte each, from ``value`` on, zero padded
      (build with :meth:`with_list`, read with :attr:`listed_values`);
    * 1 Malformed Message, 2 Unsupported Message: ``value`` 0, ``data`` echoes the offending message;
    * 3 Missing Cookie: ``value`` 0, ``data`` is the cookie the converter computed;
    * 32 Not Authorized, 96 Connection Reset: ``value`` 0;
    * 33 Unsupported TCP Option: the unsupported kinds, as for code 0;
    * 64 Resource Exceeded, 65 Network Failure: ``value`` is the suggested delay in seconds before
      the client tries the converter again; 0 means a default of at least 30 s;
    * 97 Destination Unreachable: ``value`` is the Code of the ICMP error the converter received.

    ``data`` must be a whole number of words (kept on decoding, padding and all, since echoes and
    cookies may end in zero bytes). ``code`` is an int so that unknown codes decode too.
    """

    code: int
    value: int = 0
    data: bytes = b""
    tlv_type: ClassVar[int] = ConvertTlvType.ERROR
    name: ClassVar[str] = "error"

    def __post_init__(self) -> None:
        _check_uint("Error code", self.code, 8)
        _check_uint("Error value", self.value, 8)
        _check_bytes("Error data", self.data, words=True)
        self.encode()

    @classmethod
    def with_list(cls, code: int, items: tuple[int, ...]) -> ErrorTlv:
        """An Error TLV whose Value field is a zero-padded list of non-zero bytes (codes 0 and 33)."""
        _check_kind_list("Error list", items, frozenset({0}))
        if not items:
            raise InvalidValueError("Error list must hold at least one item")
        rest = bytes(items[1:])
        return cls(code, items[0], rest + bytes(-len(rest) % 4))

    @property
    def listed_values(self) -> tuple[int, ...]:
        """The list of codes 0 and 33: ``value`` and the further bytes, zero padding dropped."""
        return tuple((bytes((self.value,)) + self.data).rstrip(b"\x00"))

    @property
    def known_code(self) -> ConvertErrorCode | None:
        """The code as a :class:`ConvertErrorCode`, or None for a code RFC 8803 does not define."""
        try:
            return ConvertErrorCode(self.code)
        except ValueError:
            return None

    def encode(self) -> bytes:
        """``1E``, Length, the code, the value, the further bytes."""
        return _tlv(self.tlv_type, bytes((self.code, self.value)) + self.data)


@dataclass(frozen=True, slots=True)
class UnknownTlv:
    """A TLV of a non-zero type RFC 8803 does not define, kept byte for byte.

    ``value`` is everything after the Length byte, so it is 2 bytes short of whole words. Known
    types and the reserved type 0 are refused, so that each byte string has one decoded form.
    """

    tlv_type: int
    value: bytes = b"\x00\x00"
    name: ClassVar[str] = "unknown_tlv"

    def __post_init__(self) -> None:
        _check_uint("UnknownTlv tlv_type", self.tlv_type, 8, minimum=1)
        if self.tlv_type in _KNOWN_TLV_TYPES:
            raise InvalidValueError(f"TLV type {self.tlv_type} has its own class")
        _check_bytes("UnknownTlv value", self.value)
        if len(self.value) % 4 != 2:
            raise InvalidValueError(f"UnknownTlv value must be 2 bytes short of whole words, got {len(self.value)}")
        self.encode()

    def encode(self) -> bytes:
        """The type, Length, the value."""
        return _tlv(self.tlv_type, self.value)


ConvertTlv = InfoTlv | ConnectTlv | ExtendedTcpHeaderTlv | SupportedTcpExtensionsTlv | CookieTlv | ErrorTlv | UnknownTlv
#: The class asked of ConvertMessage.tlv, so that its answer has that type.
_Tlv = TypeVar("_Tlv")


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConvertMessage:
    """A Convert message: the fixed header (RFC 8803 section 6.1) and its TLVs, in wire order.

    Each TLV type appears at most once and the whole message fits in 255 words (1020 bytes), so
    a message that constructs always encodes. ``version`` may be any of 1..255 to play a peer of
    another version; only version 1 decodes.
    """

    tlvs: tuple[ConvertTlv, ...] = ()
    version: int = CONVERT_VERSION

    def __post_init__(self) -> None:
        _check_uint("Convert version", self.version, 8, minimum=1)  # 0 is reserved (section 6.1)
        if type(self.tlvs) is not tuple or not all(isinstance(tlv, ConvertTlv) for tlv in self.tlvs):
            raise InvalidValueError(f"Convert tlvs must be a tuple of TLV values, got {self.tlvs!r}")
        types = [tlv.tlv_type for tlv in self.tlvs]
        if len(set(types)) != len(types):
            raise InvalidValueError(f"Convert TLV types must be unique in a message (RFC 8803 6.2.1), got {types}")
        if self.total_length_words > MAX_TOTAL_LENGTH_WORDS:
            raise InvalidValueError(
                f"Convert message of {self.total_length_words} words, Total Length holds at most 255 (1020 bytes)"
            )

    @property
    def total_length_words(self) -> int:
        """The Total Length field: the message's size in 32-bit words, header included."""
        return 1 + sum(len(tlv.encode()) for tlv in self.tlvs) // 4

    def tlv(self, tlv_class: type[_Tlv]) -> _Tlv | None:
        """The message's TLV of class ``tlv_class`` (there is at most one), or None."""
        return next((tlv for tlv in self.tlvs if type(tlv) is tlv_class), None)


def encode_convert(msg: ConvertMessage) -> bytes:
    """The message's bytes: Version, Total Length, Magic Number, then each TLV."""
    # Each TLV encoded once: Total Length is worked out from these bytes (as total_length_words does).
    tlv_bytes = b"".join(tlv.encode() for tlv in msg.tlvs)
    return struct.pack("!BBH", msg.version, 1 + len(tlv_bytes) // 4, CONVERT_MAGIC) + tlv_bytes


def decode_convert(data: bytes | memoryview) -> ConvertMessage:
    """Decode a buffer that holds exactly one Convert message (trailing bytes are malformed)."""
    msg, consumed_bytes = parse_convert_prefix(data)
    if consumed_bytes != len(data):
        raise MalformedError(
            f"{len(data) - consumed_bytes} bytes after the {consumed_bytes}-byte Convert message", consumed_bytes
        )
    return msg


def parse_convert_prefix(data: bytes | bytearray | memoryview) -> tuple[ConvertMessage, int]:
    """Parse the Convert message at the start of a bytestream; the bytes after it are not read.

    Returns the message and the bytes it used (Total Length * 4). Raises :class:`TruncatedError`
    (``needed_bytes``: 4, then Total Length * 4) until those bytes are all in, and a
    :class:`MalformedError` subclass (see the module docstring) once they cannot form a message.
    """
    if len(data) < HEADER_BYTES:
        raise TruncatedError("Convert header needs 4 bytes", len(data), needed_bytes=HEADER_BYTES)
    version, total_length_words, magic = struct.unpack("!BBH", bytes(data[:HEADER_BYTES]))
    if magic != CONVERT_MAGIC:
        raise BadMagicError(magic)
    if version != CONVERT_VERSION:
        raise UnsupportedVersionError(version)
    if total_length_words == 0:
        raise ZeroTotalLengthError()
    end = total_length_words * 4
    if len(data) < end:
        raise TruncatedError(
            f"Convert Total Length {total_length_words} words needs {end} bytes", len(data), needed_bytes=end
        )
    buf = bytes(data[:end])
    tlvs: list = []
    seen: set[int] = set()
    offset = HEADER_BYTES
    while offset < end:
        tlv_type, length_words = buf[offset], buf[offset + 1]  # TLVs are word aligned: 4 bytes are there
        if tlv_type == 0:
            raise UnsupportedTlvError(tlv_type, offset)
        _check_tlv_length(tlv_type, length_words, offset, end)
        if tlv_type in seen:
            raise DuplicateTlvError(tlv_type, offset)
        seen.add(tlv_type)
        raw = buf[offset : offset + 4 * length_words]
        try:
            tlvs.append(_decode_tlv(tlv_type, raw))
        except InvalidValueError as err:
            raise TlvValueError(f"Convert TLV type {tlv_type}: {err.message}", offset) from None
        except WireError as err:
            raise err.shifted(offset) from None
        offset += len(raw)
    return ConvertMessage(tuple(tlvs)), end


def _check_tlv_length(tlv_type: int, length_words: int, offset: int, end: int) -> None:
    if length_words == 0:
        raise TlvFramingError(f"Convert TLV type {tlv_type} has Length 0", offset)
    if offset + 4 * length_words > end:
        raise TlvFramingError(
            f"Convert TLV type {tlv_type} of {length_words} words runs past the Total Length ({end} bytes)", offset
        )
    # Sections 6.2.3 and 6.2.5; every other type needs only the first word, which Length >= 1 gives.
    if tlv_type == ConvertTlvType.INFO and length_words != 1:
        raise TlvFramingError(f"Info TLV Length {length_words}, expected 1", offset)
    if tlv_type == ConvertTlvType.CONNECT and length_words < 5:
        raise TlvFramingError(f"Connect TLV Length {length_words}, the minimum is 5", offset)


def _decode_tlv(tlv_type: int, raw: bytes) -> ConvertTlv:
    """One framed TLV; errors carry offsets relative to its first byte."""
    if tlv_type == ConvertTlvType.INFO:
        return InfoTlv()
    if tlv_type == ConvertTlvType.CONNECT:
        address = IPv6Address(raw[4:20])
        return ConnectTlv(
            struct.unpack("!H", raw[2:4])[0], address.ipv4_mapped or address, _decode_connect_options(raw[20:], 20)
        )
    if tlv_type == ConvertTlvType.EXTENDED_TCP_HEADER:
        try:
            options = decode_options(raw[4:])
        except WireError as err:
            # Inside a TLV the option list has a fixed length: nothing more can complete it.
            raise TlvValueError(f"Extended TCP Header TLV: {err.message}", (err.offset or 0) + 4) from None
        if options and isinstance(options[-1], EndOfOptionList):
            options = options[:-1]
        return ExtendedTcpHeaderTlv(options)
    if tlv_type == ConvertTlvType.SUPPORTED_TCP_EXTENSIONS:
        return SupportedTcpExtensionsTlv(tuple(raw[4:].rstrip(b"\x00")))
    if tlv_type == ConvertTlvType.COOKIE:
        return CookieTlv(raw[4:])
    if tlv_type == ConvertTlvType.ERROR:
        return ErrorTlv(raw[2], raw[3], raw[4:])
    return UnknownTlv(tlv_type, raw[2:])


def _decode_connect_options(buf: bytes, base: int) -> tuple[ConnectOption, ...]:
    """The ``kind len value`` entries of an Extended Connect TLV, then zero padding."""
    entries = []
    offset = 0
    while offset < len(buf):
        kind = buf[offset]
        if kind == 0:
            padding = buf[offset:]
            if any(padding):
                first_nonzero = offset + len(padding) - len(padding.lstrip(b"\x00"))
                raise TlvValueError("Connect TCP Options: non-zero byte in the zero padding", base + first_nonzero)
            break
        if offset + 1 == len(buf):
            raise TlvValueError(f"Connect TCP option kind {kind} has no length byte", base + offset)
        length = buf[offset + 1]
        if length < 2 or offset + length > len(buf):
            raise TlvValueError(
                f"Connect TCP option kind {kind} length {length}: needs 2..{len(buf) - offset}", base + offset
            )
        entries.append(ConnectOption(kind, buf[offset + 2 : offset + length]))
        offset += length
    return tuple(entries)


_THIS_NETWORK = IPv4Network("0.0.0.0/8")


def connect_address_problem(address: IPv4Address | IPv6Address) -> str | None:
    """Why a converter must refuse this Connect address, or None if it may use it.

    RFC 8803 section 6.2.5: multicast, broadcast and host loopback addresses (RFC 6890) MUST NOT
    be used; the converter answers Error 1 (Malformed Message). The unspecified addresses and the
    IPv4 "this network" block 0.0.0.0/8 (RFC 6890: not forwardable) are refused too: a connect to
    them reaches the converter host's own services, which no client should be able to ask for.
    Directed broadcast addresses depend on a prefix length the converter knows and this function
    does not.
    """
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_loopback:
        return f"{address} is a host loopback address"
    if address == IPv4Address("255.255.255.255"):
        return f"{address} is the limited broadcast address"
    if address.is_unspecified or (isinstance(address, IPv4Address) and address in _THIS_NETWORK):
        return f"{address} is an unspecified or 'this network' address"
    return None
