"""TCP options: the option list of a TCP header (RFC 9293 section 3.1), byte-exact both ways.

The same codec serves option lists that are not in a TCP header (the Convert TLVs of RFC 8803
and the option-formatted signalling at the start of a SYN payload): pass ``limit_bytes=None``
to :func:`encode_options`; :func:`decode_options` accepts a buffer of any length.

Every byte string decodes to at most one value and every value encodes to one byte string:
classed kinds are never decoded as :class:`UnknownOption`, and :class:`UnknownOption` refuses
them. The one exception to "classed kind, classed value" is a Fast Open option with an invalid
length, which RFC 7413 section 4.1.1 says MUST be ignored: it decodes as ``UnknownOption(34,
...)`` (ignored like any unknown option, bytes preserved) rather than failing the whole list.

Kind 30 (MPTCP) is decoded by :func:`mpsim.wire.mptcp.decode_mptcp_option`; those values also
carry ``kind``, ``name`` and ``encode()`` and may appear in the lists this module takes and returns.

Round trips: ``decode_options(encode_options(x)) == canonical_options(x)``. That is ``x`` itself
when ``x`` ends with :class:`EndOfOptionList` or its unpadded length is a multiple of 4; otherwise
the padding begins with a zero byte, which is an EOL, so the decoded list gains a trailing
``EndOfOptionList()``.
"""

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from mpsim.wire.errors import InvalidValueError, MalformedError, OptionSpaceError, WireError
from mpsim.wire.mptcp import Dss, MpCapable, MpJoinAck, MpJoinSyn, MpJoinSynAck, decode_mptcp_option
from mpsim.wire.option_kinds import TcpOptionKind  # re-exported: callers import it from here

#: The TCP option space of a header: a 4-bit data offset in words, minus the 20 fixed bytes.
TCP_OPTION_SPACE_BYTES = 40
#: RFC 7413 section 4.1.1 / RFC 6994: the ExID of the pre-IANA Fast Open option (kind 254).
EXID_FAST_OPEN = 0xF989
_MAX_OPTION_DATA_BYTES = 253  # the length byte counts kind and length too
_MAX_SACK_BLOCKS = 4  # RFC 2018 section 3: 4 * 8 + 2 = 34 of the 40 header bytes


def _check_uint(field: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise InvalidValueError(f"{field} must be an int in 0..{(1 << bits) - 1}, got {value!r}")


def _check_data(field: str, value: bytes, max_bytes: int) -> None:
    if type(value) is not bytes or len(value) > max_bytes:
        raise InvalidValueError(f"{field} must be bytes of length 0..{max_bytes}, got {value!r}")


def _tlv(kind: int, data: bytes) -> bytes:
    return bytes((kind, 2 + len(data))) + data


def _is_cookie_length(length_bytes: int) -> bool:
    # RFC 7413 section 4.1.1: cookie 0 (a request) or 4..16 bytes, option length even.
    return length_bytes == 0 or (4 <= length_bytes <= 16 and length_bytes % 2 == 0)


@dataclass(frozen=True, slots=True)
class EndOfOptionList:
    """EOL (kind 0, RFC 9293 section 3.2): ends the list; what follows it is zero padding."""

    kind: ClassVar[int] = TcpOptionKind.EOL
    name: ClassVar[str] = "eol"

    def encode(self) -> bytes:
        """The single byte ``00``."""
        return b"\x00"


@dataclass(frozen=True, slots=True)
class NoOperation:
    """NOP (kind 1, RFC 9293 section 3.2): one byte, used to align the next option."""

    kind: ClassVar[int] = TcpOptionKind.NOP
    name: ClassVar[str] = "nop"

    def encode(self) -> bytes:
        """The single byte ``01``."""
        return b"\x01"


@dataclass(frozen=True, slots=True)
class MaximumSegmentSize:
    """MSS (kind 2, length 4, RFC 9293 section 3.2): the largest segment the sender can receive."""

    mss_bytes: int
    kind: ClassVar[int] = TcpOptionKind.MSS
    name: ClassVar[str] = "mss"

    def __post_init__(self) -> None:
        _check_uint("mss_bytes", self.mss_bytes, 16)

    def encode(self) -> bytes:
        """``02 04`` and the MSS in network byte order."""
        return struct.pack("!BBH", self.kind, 4, self.mss_bytes)


@dataclass(frozen=True, slots=True)
class WindowScale:
    """Window Scale (kind 3, length 3, RFC 7323 section 2.2).

    Any shift count 0..255 encodes, so that the simulator can send what misbehaving peers send;
    a receiver MUST use 14 for a larger value (RFC 7323 section 2.3), which is the proto
    layer's business, not the codec's.
    """

    shift_count: int
    kind: ClassVar[int] = TcpOptionKind.WINDOW_SCALE
    name: ClassVar[str] = "window_scale"

    def __post_init__(self) -> None:
        _check_uint("shift_count", self.shift_count, 8)

    def encode(self) -> bytes:
        """``03 03`` and the shift count."""
        return bytes((self.kind, 3, self.shift_count))


@dataclass(frozen=True, slots=True)
class SackPermitted:
    """SACK-Permitted (kind 4, length 2, RFC 2018 section 2): allowed only on SYNs."""

    kind: ClassVar[int] = TcpOptionKind.SACK_PERMITTED
    name: ClassVar[str] = "sack_permitted"

    def encode(self) -> bytes:
        """``04 02``."""
        return b"\x04\x02"


@dataclass(frozen=True, slots=True)
class Sack:
    """SACK (kind 5, length 2 + 8n, RFC 2018 section 3): 1..4 blocks of (left_edge, right_edge).

    Edges are 32-bit sequence numbers; a left edge numerically above its right edge is legal
    (the block wraps around the sequence space), so no order is enforced.
    """

    blocks: tuple[tuple[int, int], ...]
    kind: ClassVar[int] = TcpOptionKind.SACK
    name: ClassVar[str] = "sack"

    def __post_init__(self) -> None:
        if type(self.blocks) is not tuple or not 1 <= len(self.blocks) <= _MAX_SACK_BLOCKS:
            raise InvalidValueError(f"blocks must be a tuple of 1..{_MAX_SACK_BLOCKS} blocks, got {self.blocks!r}")
        for block in self.blocks:
            if type(block) is not tuple or len(block) != 2:
                raise InvalidValueError(f"each SACK block must be a (left_edge, right_edge) tuple, got {block!r}")
            _check_uint("SACK left_edge", block[0], 32)
            _check_uint("SACK right_edge", block[1], 32)

    def encode(self) -> bytes:
        """``05``, the length, then each block's edges in network byte order."""
        edges = [edge for block in self.blocks for edge in block]
        return struct.pack(f"!BB{len(edges)}I", self.kind, 2 + 4 * len(edges), *edges)


@dataclass(frozen=True, slots=True)
class Timestamps:
    """Timestamps (kind 8, length 10, RFC 7323 section 3.2): TSval and TSecr, 32 bits each."""

    ts_value: int
    ts_echo_reply: int
    kind: ClassVar[int] = TcpOptionKind.TIMESTAMPS
    name: ClassVar[str] = "timestamps"

    def __post_init__(self) -> None:
        # One test for the usual values (every segment carries a new pair), the checks one by one otherwise.
        if not (type(self.ts_value) is int and 0 <= self.ts_value <= 0xFFFFFFFF
                and type(self.ts_echo_reply) is int and 0 <= self.ts_echo_reply <= 0xFFFFFFFF):
            _check_uint("ts_value", self.ts_value, 32)
            _check_uint("ts_echo_reply", self.ts_echo_reply, 32)

    def encode(self) -> bytes:
        """``08 0a``, TSval, TSecr."""
        return struct.pack("!BBII", self.kind, 10, self.ts_value, self.ts_echo_reply)


@dataclass(frozen=True, slots=True)
class FastOpen:
    """TCP Fast Open cookie (kind 34, RFC 7413 section 4.1.1).

    An empty cookie is a cookie request (``22 02``); otherwise the cookie is 4..16 bytes and of
    even length. The legacy encoding (kind 254, ExID 0xF989) decodes as :class:`Experimental`.
    """

    cookie: bytes = b""
    kind: ClassVar[int] = TcpOptionKind.TFO
    name: ClassVar[str] = "tfo"

    def __post_init__(self) -> None:
        _check_data("cookie", self.cookie, 16)
        if not _is_cookie_length(len(self.cookie)):
            raise InvalidValueError(f"cookie must be empty or 4..16 bytes of even length, got {len(self.cookie)} bytes")

    @property
    def is_cookie_request(self) -> bool:
        """True for the empty cookie a client sends to ask the server for one."""
        return not self.cookie

    def encode(self) -> bytes:
        """``22``, the length (2 + cookie bytes), the cookie."""
        return _tlv(self.kind, self.cookie)


@dataclass(frozen=True, slots=True)
class Experimental:
    """An experimental option (kind 253 or 254, RFC 4727), data kept byte for byte.

    Unlike the other classes ``kind`` is a field here, since two kinds share the class.
    """

    kind: int
    data: bytes
    name: ClassVar[str] = "experimental"

    def __post_init__(self) -> None:
        _check_uint("kind", self.kind, 8)
        if self.kind not in (TcpOptionKind.EXPERIMENTAL_1, TcpOptionKind.EXPERIMENTAL_2):
            raise InvalidValueError(f"Experimental kind must be 253 or 254, got {self.kind!r}")
        _check_data("data", self.data, _MAX_OPTION_DATA_BYTES)

    @property
    def exid(self) -> int | None:
        """The RFC 6994 16-bit experiment ID (the first two data bytes), or None if too short.

        Pre-RFC 6994 experiments have no ExID; their first two bytes are returned all the same.
        """
        return int.from_bytes(self.data[:2], "big") if len(self.data) >= 2 else None

    def encode(self) -> bytes:
        """The kind, the length (2 + data bytes), the data."""
        return _tlv(self.kind, self.data)


_CLASSED_KINDS = frozenset(TcpOptionKind) - {TcpOptionKind.TCP_AO}


@dataclass(frozen=True, slots=True)
class UnknownOption:
    """An option this codec has no class for, kept byte for byte (RFC 9293 MUST-5: ignored).

    Also a Fast Open option (kind 34) whose length is invalid, which RFC 7413 section 4.1.1
    says MUST be ignored. Kinds with a class of their own are refused, so that each byte
    string has exactly one decoded form.
    """

    kind: int
    data: bytes
    name: ClassVar[str] = "unknown"

    def __post_init__(self) -> None:
        _check_uint("kind", self.kind, 8)
        _check_data("data", self.data, _MAX_OPTION_DATA_BYTES)
        if self.kind == TcpOptionKind.TFO:
            if _is_cookie_length(len(self.data)):
                raise InvalidValueError("UnknownOption kind 34 with a valid cookie length: use FastOpen")
        elif self.kind in _CLASSED_KINDS:
            raise InvalidValueError(f"UnknownOption kind {self.kind} has its own option class")

    def encode(self) -> bytes:
        """The kind, the length (2 + data bytes), the data."""
        return _tlv(self.kind, self.data)


TcpOption = (
    EndOfOptionList | NoOperation | MaximumSegmentSize | WindowScale | SackPermitted | Sack
    | Timestamps | FastOpen | Experimental | UnknownOption
)
"""Every option value of this module; kind-30 values come from :mod:`mpsim.wire.mptcp`."""

# Kinds whose options have one legal length: (label for messages, length in bytes).
_FIXED_LENGTHS: dict[int, tuple[str, int]] = {
    TcpOptionKind.MSS: ("MSS", 4),
    TcpOptionKind.WINDOW_SCALE: ("Window Scale", 3),
    TcpOptionKind.SACK_PERMITTED: ("SACK-Permitted", 2),
    TcpOptionKind.TIMESTAMPS: ("Timestamps", 10),
}


def encode_options(options: Sequence, *, limit_bytes: int | None = TCP_OPTION_SPACE_BYTES, pad: bool = True) -> bytes:
    """Concatenate ``options`` (kind-30 values included) into an option list.

    With ``pad`` the list is zero-filled to a multiple of 4 bytes (RFC 9293 section 3.1: the
    first zero byte is an EOL, the rest is padding). ``limit_bytes`` bounds the padded length
    (40 for a TCP header; None for lists carried outside one, such as Convert TLVs). Raises
    :class:`InvalidValueError` if an :class:`EndOfOptionList` is not last, and
    :class:`OptionSpaceError` if the padded length exceeds ``limit_bytes``.
    """
    for option in options[:-1]:
        if isinstance(option, EndOfOptionList):
            raise InvalidValueError("EndOfOptionList must be the last option: the receiver stops reading there")
    raw = b"".join(option.encode() for option in options)
    padded_bytes = -len(raw) % 4 + len(raw)
    if limit_bytes is not None and padded_bytes > limit_bytes:
        raise OptionSpaceError(requested_bytes=padded_bytes, limit_bytes=limit_bytes)
    return raw.ljust(padded_bytes, b"\x00") if pad else raw


# The options whose encoding has one length whatever their fields: sizing them costs no encoding.
_FIXED_LENGTH_BYTES: dict[type, int] = {
    EndOfOptionList: 1, NoOperation: 1, MaximumSegmentSize: 4, WindowScale: 3, SackPermitted: 2, Timestamps: 10,
    MpJoinSyn: 12, MpJoinSynAck: 16, MpJoinAck: 24,
}
# The options that work out their own length from the fields present (``size_bytes``, checked
# against their encoders by tests/wire/test_known_lengths.py): the MPTCP options of every
# converted segment, which would otherwise be encoded once just to be sized.
_SELF_SIZED_TYPES = frozenset((Dss, MpCapable))


def options_length_bytes(options: Sequence) -> int:
    """``len(encode_options(options, limit_bytes=None, pad=False))``, with the same errors, encoding
    only the options whose length their type does not fix (the simulator sizes every segment)."""
    for option in options[:-1]:
        if isinstance(option, EndOfOptionList):
            raise InvalidValueError("EndOfOptionList must be the last option: the receiver stops reading there")
    total = 0
    for option in options:
        length = _FIXED_LENGTH_BYTES.get(type(option))
        if length is not None:
            total += length
        elif type(option) in _SELF_SIZED_TYPES:
            total += option.size_bytes
        else:
            # Any bytes-like encoding counts, as encode_options's b"".join takes it; anything else raises.
            total += memoryview(option.encode()).nbytes
    return total


def option_space_bytes(options: Sequence) -> int:
    """The padded length :func:`encode_options` would produce, whatever the limit."""
    length = options_length_bytes(options)
    return length + -length % 4


def canonical_options(options: Sequence) -> tuple:
    """What ``decode_options(encode_options(options))`` returns (see the module docstring)."""
    options = tuple(options)
    raw_bytes = len(encode_options(options, limit_bytes=None, pad=False))
    if raw_bytes % 4 == 0 or isinstance(options[-1], EndOfOptionList):
        return options
    return options + (EndOfOptionList(),)


def decode_options(data: bytes | memoryview) -> tuple:
    """Decode an option list (RFC 9293 section 3.1) into option values, in wire order.

    An EOL ends the list and is returned as the last element; the bytes after it are padding
    and are not read. Raises :class:`MalformedError`, with the offset of the offending option's
    kind byte, for a length below 2 or past the end of ``data`` (RFC 9293 MUST-7), or a wrong
    length for a kind with a fixed layout; errors from the MPTCP decoder are shifted likewise.
    """
    buf = bytes(data)
    options: list = []
    offset = 0
    while offset < len(buf):
        kind = buf[offset]
        if kind == TcpOptionKind.EOL:
            options.append(EndOfOptionList())
            break
        if kind == TcpOptionKind.NOP:
            options.append(NoOperation())
            offset += 1
            continue
        if offset + 1 == len(buf):
            raise MalformedError(f"TCP option kind {kind} has no length byte", offset)
        length = buf[offset + 1]
        if length < 2:
            raise MalformedError(f"TCP option kind {kind} length {length}, the minimum is 2", offset)
        if offset + length > len(buf):
            raise MalformedError(
                f"TCP option kind {kind} length {length} runs past the end of the {len(buf)}-byte option list", offset
            )
        options.append(_decode_option(buf[offset : offset + length], offset))
        offset += length
    return tuple(options)


def _decode_option(raw: bytes, offset: int):
    """One option with a length byte; ``raw`` is the whole option, ``offset`` its position."""
    kind, body = raw[0], raw[2:]
    if kind in _FIXED_LENGTHS:
        label, expected = _FIXED_LENGTHS[kind]
        if len(raw) != expected:
            raise MalformedError(f"{label} option length {len(raw)}, expected {expected}", offset)
    if kind == TcpOptionKind.MSS:
        return MaximumSegmentSize(int.from_bytes(body, "big"))
    if kind == TcpOptionKind.WINDOW_SCALE:
        return WindowScale(body[0])
    if kind == TcpOptionKind.SACK_PERMITTED:
        return SackPermitted()
    if kind == TcpOptionKind.TIMESTAMPS:
        return Timestamps(*struct.unpack("!II", body))
    if kind == TcpOptionKind.SACK:
        if len(body) % 8 or not 1 <= len(body) // 8 <= _MAX_SACK_BLOCKS:
            raise MalformedError(f"SACK option length {len(raw)}, expected 10, 18, 26 or 34 (2 + 8 per block)", offset)
        edges = struct.unpack(f"!{len(body) // 4}I", body)
        return Sack(tuple(zip(edges[::2], edges[1::2])))
    if kind == TcpOptionKind.TFO and _is_cookie_length(len(body)):
        return FastOpen(body)
    if kind in (TcpOptionKind.EXPERIMENTAL_1, TcpOptionKind.EXPERIMENTAL_2):
        return Experimental(kind, body)
    if kind == TcpOptionKind.MPTCP:
        try:
            return decode_mptcp_option(raw)
        except WireError as err:
            raise err.shifted(offset) from None
    return UnknownOption(kind, body)
