"""MPTCP options (TCP option kind 30) and the MPTCP key crypto: RFC 8684 (v1), RFC 6824 (v0).

Every option starts ``kind=30 | length | subtype (high nibble) + 4 subtype-specific bits``; the
length counts the whole option. :func:`decode_mptcp_option` takes exactly one whole option.

Choices made where the RFCs leave room (each is tested):

* **Reserved bits are kept** in a ``reserved_bits`` field instead of being rejected or dropped,
  and so are the DSS flags that RFC 8684 section 3.3 says to ignore ("a" without "A", "m" without
  "M"). Hence ``encode(decode(b)) == b`` for every ``b`` that decodes, so a middlebox model that
  re-encodes an option changes nothing, and a receiver still ignores those bits by not reading
  them. Senders leave them at 0, as the RFCs require.
* Numbers hold what is on the wire: a 4-byte DSN or Data ACK is the low 32 bits of the 64-bit
  value; widening it (RFC 8684 section 3.3.1) is the receiver's job.
* MP_CAPABLE versions 2..15 are undefined. They decode with the v1 layout, so that a listener can
  see the request and answer with a lower version (RFC 8684 section 3.1).
* Subtypes 0x9..0xE are unassigned and raise :class:`MalformedError` (offset 2). Subtype 0xF
  (MP_EXPERIMENTAL) decodes to raw bits and bytes for private layouts to build on.
* v0 ADD_ADDR (RFC 6824: an IPVer nibble, no HMAC) is not supported: IPVer 4 or 6 reads as E=0
  with an echo's length, which raises :class:`MalformedError`. v0 MP_CAPABLE and v0 MP_PRIO are.
"""

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag, StrEnum
from typing import ClassVar, TypeAlias

from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError
from mpsim.wire.option_kinds import TcpOptionKind

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

#: MP_JOIN SYN/ACK: the leftmost 64 bits of the sender's HMAC (RFC 8684 section 3.2).
JOIN_SYN_ACK_HMAC_BYTES = 8
#: MP_JOIN third ACK: the leftmost 160 bits of the sender's HMAC (RFC 8684 section 3.2).
JOIN_ACK_HMAC_BYTES = 20
#: ADD_ADDR: the rightmost 64 bits of the HMAC (RFC 8684 section 3.4.1).
ADD_ADDR_HMAC_BYTES = 8
_MAX_OPTION_BYTES = 255


class MptcpSubtype(IntEnum):
    """MPTCP option subtypes (IANA "MPTCP Option Subtypes", RFC 8684 section 7.2)."""

    MP_CAPABLE = 0x0
    MP_JOIN = 0x1
    DSS = 0x2
    ADD_ADDR = 0x3
    REMOVE_ADDR = 0x4
    MP_PRIO = 0x5
    MP_FAIL = 0x6
    MP_FASTCLOSE = 0x7
    MP_TCPRST = 0x8
    MP_EXPERIMENTAL = 0xF


class MpCapableFlags(IntFlag):
    """The MP_CAPABLE flags byte, letters as in RFC 8684 section 3.1 (Figure 4)."""

    A = 0x80  # checksum required
    B = 0x40  # extensibility; MUST be 0, a receiver that does not understand it falls back
    C = 0x20  # v1: do not open subflows to the sender's source address (v0: a crypto bit)
    D = 0x10  # D..G: crypto negotiation, unassigned
    E = 0x08
    F = 0x04
    G = 0x02
    H = 0x01  # HMAC-SHA256 in v1, HMAC-SHA1 in v0


class MpCapableForm(StrEnum):
    """Which handshake segment an MP_CAPABLE belongs to, as far as its layout tells."""

    SYN = "syn"  # v1, 4 bytes, no key
    SYN_ACK = "syn_ack"  # v1, 12 bytes
    SYN_OR_SYN_ACK = "syn_or_syn_ack"  # v0, 12 bytes: only the TCP flags tell which
    ACK = "ack"  # 20 bytes, both keys
    DATA = "data"  # v1, 22 or 24 bytes: both keys and a data-level length


class DssFlags(IntFlag):
    """The DSS flag bits (RFC 8684 section 3.3, Figure 9); RFC letters in the comments."""

    DATA_ACK_PRESENT = 0x01  # A
    DATA_ACK_64_BIT = 0x02  # a
    MAPPING_PRESENT = 0x04  # M
    DSN_64_BIT = 0x08  # m
    DATA_FIN = 0x10  # F


class MpTcpRstFlags(IntFlag):
    """MP_TCPRST flags (RFC 8684 section 3.6, Figure 15); U, V, W are reserved."""

    U = 0x8
    V = 0x4
    W = 0x2
    T = 0x1  # transient: the sender allows a retry on this path


class MpTcpRstReason(IntEnum):
    """MP_TCPRST reason codes (RFC 8684 section 3.6)."""

    UNSPECIFIED_ERROR = 0x00
    MPTCP_SPECIFIC_ERROR = 0x01
    LACK_OF_RESOURCES = 0x02
    ADMINISTRATIVELY_PROHIBITED = 0x03
    TOO_MUCH_OUTSTANDING_DATA = 0x04
    UNACCEPTABLE_PERFORMANCE = 0x05
    MIDDLEBOX_INTERFERENCE = 0x06


def _check_uint(owner: str, field: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise InvalidValueError(f"{owner} {field} must be an int in 0..{(1 << bits) - 1}, got {value!r}")


_U32 = 1 << 32
_U64 = 1 << 64


def _check_optional_uint(owner: str, field: str, value: int | None, bits: int) -> None:
    if value is not None:
        _check_uint(owner, field, value, bits)


def _check_bytes(owner: str, field: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidValueError(f"{owner} {field} must be {size} bytes, got {value!r}")


def _option(subtype: MptcpSubtype, low_nibble: int, body: bytes) -> bytes:
    return bytes((TcpOptionKind.MPTCP, 3 + len(body), subtype << 4 | low_nibble)) + body


def _length_error(what: str, data: bytes, expected: str) -> MalformedError:
    return MalformedError(f"{what} length {len(data)}, expected {expected}", 1)


# --- MP_CAPABLE ------------------------------------------------------------------------------

_MP_CAPABLE_FIELDS = (("sender_key", "Q", 64), ("receiver_key", "Q", 64), ("data_level_length_bytes", "H", 16),
                      ("checksum", "H", 16))
_MP_CAPABLE_LENGTHS = {4: 0, 12: 1, 20: 2, 22: 3, 24: 4}  # option length -> fields present
_MP_CAPABLE_V0_LENGTHS = (12, 20)


@dataclass(frozen=True, slots=True)
class MpCapable:
    """MP_CAPABLE (subtype 0x0): RFC 8684 section 3.1 (v1), RFC 6824 section 3.1 (v0).

    The fields present fix the length, each requiring the one before it:
    v1 SYN 4 (no key), SYN/ACK 12 (``sender_key``), third ACK 20 (+ ``receiver_key``), first data
    22 (+ ``data_level_length_bytes``) or 24 (+ ``checksum``); v0 has 12 on SYN and SYN/ACK and 20
    on the third ACK. The keys are named as in the RFC figures, from the option's sender: in a
    SYN/ACK ``sender_key`` is the listener's key; in a third ACK it is the initiator's and
    ``receiver_key`` the listener's. A 12-byte option has the same layout in v1 (the listener's
    key on the SYN/ACK) and v0 (the sender's key on SYN or SYN/ACK): only ``version`` separates them.
    Whether the checksum's presence agrees with the negotiated A flags is a protocol question,
    not a layout one, and is not checked here.
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_capable"
    version: int
    flags: MpCapableFlags
    sender_key: int | None = None
    receiver_key: int | None = None
    data_level_length_bytes: int | None = None
    checksum: int | None = None

    def __post_init__(self) -> None:
        _check_uint("MP_CAPABLE", "version", self.version, 4)
        _check_uint("MP_CAPABLE", "flags", self.flags, 8)
        object.__setattr__(self, "flags", MpCapableFlags(self.flags))
        present = [getattr(self, field) is not None for field, _, _ in _MP_CAPABLE_FIELDS]
        if present != sorted(present, reverse=True):
            raise InvalidValueError(
                "MP_CAPABLE fields must be set in order sender_key, receiver_key, data_level_length_bytes, checksum"
            )
        if self.version == 0 and (not present[0] or present[2]):
            raise InvalidValueError("MP_CAPABLE v0 carries sender_key and optionally receiver_key, nothing else")
        for field, _, bits in _MP_CAPABLE_FIELDS:
            _check_optional_uint("MP_CAPABLE", field, getattr(self, field), bits)

    @property
    def form(self) -> MpCapableForm:
        """The handshake segment this layout belongs to (derived from the fields present)."""
        if self.data_level_length_bytes is not None:
            return MpCapableForm.DATA
        if self.receiver_key is not None:
            return MpCapableForm.ACK
        if self.sender_key is not None:
            return MpCapableForm.SYN_OR_SYN_ACK if self.version == 0 else MpCapableForm.SYN_ACK
        return MpCapableForm.SYN

    @property
    def size_bytes(self) -> int:
        """``len(self.encode())`` without encoding (the simulator sizes every segment): kind,
        length, subtype/version and flags, then each field present (4, 12, 20, 22 or 24)."""
        return (4 + (self.sender_key is not None) * 8 + (self.receiver_key is not None) * 8
                + (self.data_level_length_bytes is not None) * 2 + (self.checksum is not None) * 2)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = bytes((self.flags,))
        for field, fmt, _ in _MP_CAPABLE_FIELDS:
            if (value := getattr(self, field)) is not None:
                body += struct.pack("!" + fmt, value)
        return _option(MptcpSubtype.MP_CAPABLE, self.version, body)


def _decode_mp_capable(data: bytes) -> MpCapable:
    version = data[2] & 0xF
    allowed = _MP_CAPABLE_V0_LENGTHS if version == 0 else tuple(_MP_CAPABLE_LENGTHS)
    if len(data) not in allowed:
        raise _length_error(f"MP_CAPABLE v{version}", data, " or ".join(map(str, allowed)))
    fmt = "".join(fmt for _, fmt, _ in _MP_CAPABLE_FIELDS[: _MP_CAPABLE_LENGTHS[len(data)]])
    return MpCapable(version, MpCapableFlags(data[3]), *struct.unpack_from("!" + fmt, data, 4))


# --- MP_JOIN ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MpJoinSyn:
    """MP_JOIN on a SYN (12 bytes, RFC 8684 section 3.2, Figure 5).

    ``receiver_token`` is the token of the connection to join (see :func:`key_token`);
    ``backup`` is the B flag; ``reserved_bits`` are the 3 bits between subtype and B.
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_join_syn"
    address_id: int
    receiver_token: int
    sender_random: int
    backup: bool = False
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        _check_uint("MP_JOIN SYN", "address_id", self.address_id, 8)
        _check_uint("MP_JOIN SYN", "receiver_token", self.receiver_token, 32)
        _check_uint("MP_JOIN SYN", "sender_random", self.sender_random, 32)
        _check_uint("MP_JOIN SYN", "reserved_bits", self.reserved_bits, 3)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = struct.pack("!BII", self.address_id, self.receiver_token, self.sender_random)
        return _option(MptcpSubtype.MP_JOIN, self.reserved_bits << 1 | self.backup, body)


@dataclass(frozen=True, slots=True)
class MpJoinSynAck:
    """MP_JOIN on a SYN/ACK (16 bytes, RFC 8684 section 3.2, Figure 6).

    ``sender_truncated_hmac`` is the leftmost :data:`JOIN_SYN_ACK_HMAC_BYTES` of :func:`join_hmac`
    computed by the responder (its key and random first).
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_join_syn_ack"
    address_id: int
    sender_truncated_hmac: bytes
    sender_random: int
    backup: bool = False
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        _check_uint("MP_JOIN SYN/ACK", "address_id", self.address_id, 8)
        _check_bytes("MP_JOIN SYN/ACK", "sender_truncated_hmac", self.sender_truncated_hmac, JOIN_SYN_ACK_HMAC_BYTES)
        _check_uint("MP_JOIN SYN/ACK", "sender_random", self.sender_random, 32)
        _check_uint("MP_JOIN SYN/ACK", "reserved_bits", self.reserved_bits, 3)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = bytes((self.address_id,)) + self.sender_truncated_hmac + struct.pack("!I", self.sender_random)
        return _option(MptcpSubtype.MP_JOIN, self.reserved_bits << 1 | self.backup, body)


@dataclass(frozen=True, slots=True)
class MpJoinAck:
    """MP_JOIN on the third ACK (24 bytes, RFC 8684 section 3.2, Figure 7).

    ``sender_hmac`` is the leftmost :data:`JOIN_ACK_HMAC_BYTES` of :func:`join_hmac` computed by
    the initiator; ``reserved_bits`` are the 12 bits after the subtype.
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_join_ack"
    sender_hmac: bytes
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        _check_bytes("MP_JOIN ACK", "sender_hmac", self.sender_hmac, JOIN_ACK_HMAC_BYTES)
        _check_uint("MP_JOIN ACK", "reserved_bits", self.reserved_bits, 12)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = bytes((self.reserved_bits & 0xFF,)) + self.sender_hmac
        return _option(MptcpSubtype.MP_JOIN, self.reserved_bits >> 8, body)


def _decode_mp_join(data: bytes) -> MpJoinSyn | MpJoinSynAck | MpJoinAck:
    backup, reserved = bool(data[2] & 1), data[2] >> 1 & 0x7
    if len(data) == 12:
        address_id, token, random = struct.unpack_from("!BII", data, 3)
        return MpJoinSyn(address_id, token, random, backup, reserved)
    if len(data) == 16:
        (random,) = struct.unpack_from("!I", data, 12)
        return MpJoinSynAck(data[3], data[4:12], random, backup, reserved)
    if len(data) == 24:
        return MpJoinAck(data[4:24], (data[2] & 0xF) << 8 | data[3])
    raise _length_error("MP_JOIN", data, "12 (SYN), 16 (SYN/ACK) or 24 (ACK)")


# --- DSS -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dss:
    """Data Sequence Signal (subtype 0x2, RFC 8684 section 3.3, Figure 9).

    A Data ACK is present when ``data_ack`` is set; a mapping when ``dsn``, ``ssn`` and
    ``data_level_length_bytes`` are set (all or none), with ``checksum`` only when checksums were
    negotiated (the decoder infers it from the length). ``data_ack_64_bit`` and ``dsn_64_bit``
    are the "a" and "m" flags: they choose 8-byte fields and are kept even when their field is
    absent. ``reserved_bits`` are the 7 bits between the subtype and the F flag.
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "dss"
    data_ack: int | None = None
    dsn: int | None = None
    ssn: int | None = None
    data_level_length_bytes: int | None = None
    checksum: int | None = None
    data_ack_64_bit: bool = False
    dsn_64_bit: bool = False
    data_fin: bool = False
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        # The usual DSS (one per converted data segment) passes one test; anything else gets the
        # checks one by one, with their messages.
        data_ack, dsn, ssn, length = self.data_ack, self.dsn, self.ssn, self.data_level_length_bytes
        if (type(self.reserved_bits) is int and self.reserved_bits == 0 and self.checksum is None
                and (data_ack is None or (type(data_ack) is int
                                          and 0 <= data_ack < (_U64 if self.data_ack_64_bit else _U32)))
                and ((dsn is None and ssn is None and length is None)
                     or (type(dsn) is int and 0 <= dsn < (_U64 if self.dsn_64_bit else _U32)
                         and type(ssn) is int and 0 <= ssn < _U32
                         and type(length) is int and 0 <= length <= 0xFFFF))):
            return
        self._check_fields()

    def _check_fields(self) -> None:
        _check_optional_uint("DSS", "data_ack", self.data_ack, 64 if self.data_ack_64_bit else 32)
        mapping = (self.dsn, self.ssn, self.data_level_length_bytes)
        if any(v is None for v in mapping) and any(v is not None for v in mapping):
            raise InvalidValueError("DSS mapping needs all of dsn, ssn and data_level_length_bytes, or none")
        if self.checksum is not None and self.dsn is None:
            raise InvalidValueError("DSS checksum is part of a mapping: set dsn, ssn and data_level_length_bytes")
        _check_optional_uint("DSS", "dsn", self.dsn, 64 if self.dsn_64_bit else 32)
        _check_optional_uint("DSS", "ssn", self.ssn, 32)
        _check_optional_uint("DSS", "data_level_length_bytes", self.data_level_length_bytes, 16)
        _check_optional_uint("DSS", "checksum", self.checksum, 16)
        _check_uint("DSS", "reserved_bits", self.reserved_bits, 7)

    @property
    def flags(self) -> DssFlags:
        """The five flag bits as they go on the wire."""
        return DssFlags(
            (DssFlags.DATA_ACK_PRESENT if self.data_ack is not None else 0)
            | (DssFlags.DATA_ACK_64_BIT if self.data_ack_64_bit else 0)
            | (DssFlags.MAPPING_PRESENT if self.dsn is not None else 0)
            | (DssFlags.DSN_64_BIT if self.dsn_64_bit else 0)
            | (DssFlags.DATA_FIN if self.data_fin else 0)
        )

    @property
    def is_infinite_mapping(self) -> bool:
        """A mapping with data-level length 0: fallback to TCP (RFC 8684 sections 3.3.1, 3.7)."""
        return self.data_level_length_bytes == 0

    @property
    def size_bytes(self) -> int:
        """``len(self.encode())`` without encoding (the simulator sizes every segment, and a
        converted negotiation's segments nearly all carry a DSS): kind, length, subtype and flags,
        then the Data ACK (4 or 8), the mapping (DSN 4 or 8, SSN 4, length 2), the checksum (2)."""
        size = 4
        if self.data_ack is not None:
            size += 8 if self.data_ack_64_bit else 4
        if self.dsn is not None:
            size += 14 if self.dsn_64_bit else 10
        if self.checksum is not None:
            size += 2
        return size

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        # The flag bits as plain ints: the same bits as ``self.flags`` without IntFlag arithmetic.
        flag_bits = ((1 if self.data_ack is not None else 0) | (2 if self.data_ack_64_bit else 0)
                     | (4 if self.dsn is not None else 0) | (8 if self.dsn_64_bit else 0)
                     | (16 if self.data_fin else 0))
        body = bytes(((self.reserved_bits & 0x7) << 5 | flag_bits,))
        if self.data_ack is not None:
            body += struct.pack("!Q" if self.data_ack_64_bit else "!I", self.data_ack)
        if self.dsn is not None:
            body += struct.pack("!Q" if self.dsn_64_bit else "!I", self.dsn)
            body += struct.pack("!IH", self.ssn, self.data_level_length_bytes)
        if self.checksum is not None:
            body += struct.pack("!H", self.checksum)
        return _option(MptcpSubtype.DSS, self.reserved_bits >> 3, body)


def _decode_dss(data: bytes) -> Dss:
    if len(data) < 4:
        raise _length_error("DSS", data, "at least 4 (subtype and flags)")
    flags = DssFlags(data[3] & 0x1F)
    ack_fmt = ("Q" if DssFlags.DATA_ACK_64_BIT in flags else "I") if DssFlags.DATA_ACK_PRESENT in flags else ""
    map_fmt = ("Q" if DssFlags.DSN_64_BIT in flags else "I") + "IH" if DssFlags.MAPPING_PRESENT in flags else ""
    base = 4 + struct.calcsize("!" + ack_fmt + map_fmt)
    allowed = (base, base + 2) if map_fmt else (base,)
    if len(data) not in allowed:
        expected = f"{base} or {base + 2} (with checksum)" if map_fmt else str(base)
        raise _length_error(f"DSS with flags {int(flags):#04x}", data, expected)
    fields = iter(struct.unpack_from("!" + ack_fmt + map_fmt + ("H" if len(data) == base + 2 else ""), data, 4))
    data_ack = next(fields) if ack_fmt else None
    dsn, ssn, length = (next(fields), next(fields), next(fields)) if map_fmt else (None, None, None)
    return Dss(
        data_ack=data_ack,
        dsn=dsn,
        ssn=ssn,
        data_level_length_bytes=length,
        checksum=next(fields, None),
        data_ack_64_bit=DssFlags.DATA_ACK_64_BIT in flags,
        dsn_64_bit=DssFlags.DSN_64_BIT in flags,
        data_fin=DssFlags.DATA_FIN in flags,
        reserved_bits=(data[2] & 0xF) << 3 | data[3] >> 5,
    )


# --- ADD_ADDR, REMOVE_ADDR, MP_PRIO ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddAddr:
    """ADD_ADDR (subtype 0x3, RFC 8684 section 3.4.1, Figure 12).

    ``echo`` is the E flag: an echo carries no HMAC, any other ADD_ADDR carries the
    :data:`ADD_ADDR_HMAC_BYTES`-byte ``truncated_hmac`` (see :func:`add_addr_hmac`). Lengths:
    IPv4 16/18 (with port), echo 8/10; IPv6 28/30, echo 20/22. ``port`` None means no port field
    (a port of 0 on the wire is ``port=0``). ``reserved_bits`` are the 3 bits before E.
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "add_addr"
    address_id: int
    address: IPAddress
    port: int | None = None
    echo: bool = False
    truncated_hmac: bytes | None = None
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        _check_uint("ADD_ADDR", "address_id", self.address_id, 8)
        if not isinstance(self.address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raise InvalidValueError(f"ADD_ADDR address must be an IPv4Address or IPv6Address, got {self.address!r}")
        if isinstance(self.address, ipaddress.IPv6Address) and self.address.scope_id is not None:
            # RFC 8684 3.4.1: the address field is the 16 address bytes; a scope (fe80::1%eth0) would be lost
            raise InvalidValueError(f"ADD_ADDR address {self.address} has a scope, which has no wire form")
        _check_optional_uint("ADD_ADDR", "port", self.port, 16)
        if self.echo != (self.truncated_hmac is None):
            raise InvalidValueError("ADD_ADDR carries truncated_hmac exactly when echo is False (RFC 8684 3.4.1)")
        if self.truncated_hmac is not None:
            _check_bytes("ADD_ADDR", "truncated_hmac", self.truncated_hmac, ADD_ADDR_HMAC_BYTES)
        _check_uint("ADD_ADDR", "reserved_bits", self.reserved_bits, 3)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = bytes((self.address_id,)) + self.address.packed
        if self.port is not None:
            body += struct.pack("!H", self.port)
        body += self.truncated_hmac or b""
        return _option(MptcpSubtype.ADD_ADDR, self.reserved_bits << 1 | self.echo, body)


def _decode_add_addr(data: bytes) -> AddAddr:
    echo = bool(data[2] & 1)
    hmac_bytes = 0 if echo else ADD_ADDR_HMAC_BYTES
    for address_bytes in (4, 16):
        for port_bytes in (0, 2):
            if len(data) == 4 + address_bytes + port_bytes + hmac_bytes:
                end = 4 + address_bytes
                port = struct.unpack_from("!H", data, end)[0] if port_bytes else None
                return AddAddr(
                    address_id=data[3],
                    address=ipaddress.ip_address(data[4:end]),
                    port=port,
                    echo=echo,
                    truncated_hmac=None if echo else data[end + port_bytes :],
                    reserved_bits=data[2] >> 1 & 0x7,
                )
    expected = "8, 10, 20 or 22 (echo)" if echo else "16, 18, 28 or 30 (with HMAC)"
    raise _length_error("ADD_ADDR", data, expected)


@dataclass(frozen=True, slots=True)
class RemoveAddr:
    """REMOVE_ADDR (subtype 0x4, RFC 8684 section 3.4.2): one or more address IDs, length 3 + n."""

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "remove_addr"
    address_ids: tuple[int, ...]
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "address_ids", tuple(self.address_ids))
        if not 1 <= len(self.address_ids) <= _MAX_OPTION_BYTES - 3:
            raise InvalidValueError(
                f"REMOVE_ADDR needs 1..{_MAX_OPTION_BYTES - 3} address_ids, got {len(self.address_ids)}"
            )
        for address_id in self.address_ids:
            _check_uint("REMOVE_ADDR", "address_ids item", address_id, 8)
        _check_uint("REMOVE_ADDR", "reserved_bits", self.reserved_bits, 4)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        return _option(MptcpSubtype.REMOVE_ADDR, self.reserved_bits, bytes(self.address_ids))


def _decode_remove_addr(data: bytes) -> RemoveAddr:
    if len(data) < 4:
        raise _length_error("REMOVE_ADDR", data, "at least 4 (one address ID)")
    return RemoveAddr(tuple(data[3:]), data[2] & 0xF)


@dataclass(frozen=True, slots=True)
class MpPrio:
    """MP_PRIO (subtype 0x5): ``backup`` is the B flag.

    v1 (RFC 8684 section 3.3.8) is 3 bytes. v0 (RFC 6824 section 3.3.8) also allowed a 4-byte
    form with the ``address_id`` of the subflow to change; it decodes too, with ``address_id``
    set. ``reserved_bits`` are the 3 bits before B.
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_prio"
    backup: bool
    address_id: int | None = None
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        _check_optional_uint("MP_PRIO", "address_id", self.address_id, 8)
        _check_uint("MP_PRIO", "reserved_bits", self.reserved_bits, 3)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = b"" if self.address_id is None else bytes((self.address_id,))
        return _option(MptcpSubtype.MP_PRIO, self.reserved_bits << 1 | self.backup, body)


def _decode_mp_prio(data: bytes) -> MpPrio:
    if len(data) not in (3, 4):
        raise _length_error("MP_PRIO", data, "3 (v1) or 4 (v0, with address ID)")
    return MpPrio(bool(data[2] & 1), data[3] if len(data) == 4 else None, data[2] >> 1 & 0x7)


# --- MP_FAIL, MP_FASTCLOSE, MP_TCPRST, MP_EXPERIMENTAL ---------------------------------------


@dataclass(frozen=True, slots=True)
class MpFail:
    """MP_FAIL (subtype 0x6, 12 bytes, RFC 8684 section 3.7): the full 64-bit DSN of the failed mapping."""

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_fail"
    dsn: int
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        _check_uint("MP_FAIL", "dsn", self.dsn, 64)
        _check_uint("MP_FAIL", "reserved_bits", self.reserved_bits, 12)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = struct.pack("!BQ", self.reserved_bits & 0xFF, self.dsn)
        return _option(MptcpSubtype.MP_FAIL, self.reserved_bits >> 8, body)


@dataclass(frozen=True, slots=True)
class MpFastclose:
    """MP_FASTCLOSE (subtype 0x7, 12 bytes, RFC 8684 section 3.5): the option receiver's 64-bit key."""

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_fastclose"
    receiver_key: int
    reserved_bits: int = 0

    def __post_init__(self) -> None:
        _check_uint("MP_FASTCLOSE", "receiver_key", self.receiver_key, 64)
        _check_uint("MP_FASTCLOSE", "reserved_bits", self.reserved_bits, 12)

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        body = struct.pack("!BQ", self.reserved_bits & 0xFF, self.receiver_key)
        return _option(MptcpSubtype.MP_FASTCLOSE, self.reserved_bits >> 8, body)


def _decode_u64_option(data: bytes, cls: type[MpFail] | type[MpFastclose], label: str) -> MpFail | MpFastclose:
    if len(data) != 12:
        raise _length_error(label, data, "12")
    reserved_low, value = struct.unpack_from("!BQ", data, 3)
    return cls(value, (data[2] & 0xF) << 8 | reserved_low)


@dataclass(frozen=True, slots=True)
class MpTcpRst:
    """MP_TCPRST (subtype 0x8, 4 bytes, RFC 8684 section 3.6): why a subflow was reset.

    ``reason`` is any 8-bit code; decoding gives an :class:`MpTcpRstReason` for the defined ones
    and a plain int for the others (which a receiver must tolerate).
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_tcprst"
    reason: int
    flags: MpTcpRstFlags = MpTcpRstFlags(0)

    def __post_init__(self) -> None:
        _check_uint("MP_TCPRST", "reason", self.reason, 8)
        _check_uint("MP_TCPRST", "flags", self.flags, 4)
        try:
            object.__setattr__(self, "reason", MpTcpRstReason(self.reason))
        except ValueError:
            pass  # an undefined code stays a plain int
        object.__setattr__(self, "flags", MpTcpRstFlags(self.flags))

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        return _option(MptcpSubtype.MP_TCPRST, self.flags, bytes((self.reason,)))


def _decode_mp_tcprst(data: bytes) -> MpTcpRst:
    if len(data) != 4:
        raise _length_error("MP_TCPRST", data, "4")
    return MpTcpRst(data[3], MpTcpRstFlags(data[2] & 0xF))


@dataclass(frozen=True, slots=True)
class MpExperimental:
    """MP_EXPERIMENTAL (subtype 0xF, reserved for private use by RFC 8684 section 7.2).

    Kept raw so that private layouts can be defined on top: ``low_nibble`` is the low 4 bits of
    the subtype byte and ``body`` every byte after it (length 3 + len(body)).
    """

    kind: ClassVar[int] = TcpOptionKind.MPTCP
    name: ClassVar[str] = "mp_experimental"
    low_nibble: int = 0
    body: bytes = b""

    def __post_init__(self) -> None:
        _check_uint("MP_EXPERIMENTAL", "low_nibble", self.low_nibble, 4)
        if not isinstance(self.body, bytes) or len(self.body) > _MAX_OPTION_BYTES - 3:
            raise InvalidValueError(f"MP_EXPERIMENTAL body must be at most {_MAX_OPTION_BYTES - 3} bytes")

    def encode(self) -> bytes:
        """The whole option, kind and length included."""
        return _option(MptcpSubtype.MP_EXPERIMENTAL, self.low_nibble, self.body)


MptcpOption: TypeAlias = (
    MpCapable | MpJoinSyn | MpJoinSynAck | MpJoinAck | Dss | AddAddr | RemoveAddr | MpPrio | MpFail | MpFastclose
    | MpTcpRst | MpExperimental
)

_DECODERS = {
    MptcpSubtype.MP_CAPABLE: _decode_mp_capable,
    MptcpSubtype.MP_JOIN: _decode_mp_join,
    MptcpSubtype.DSS: _decode_dss,
    MptcpSubtype.ADD_ADDR: _decode_add_addr,
    MptcpSubtype.REMOVE_ADDR: _decode_remove_addr,
    MptcpSubtype.MP_PRIO: _decode_mp_prio,
    MptcpSubtype.MP_FAIL: lambda data: _decode_u64_option(data, MpFail, "MP_FAIL"),
    MptcpSubtype.MP_FASTCLOSE: lambda data: _decode_u64_option(data, MpFastclose, "MP_FASTCLOSE"),
    MptcpSubtype.MP_TCPRST: _decode_mp_tcprst,
    MptcpSubtype.MP_EXPERIMENTAL: lambda data: MpExperimental(data[2] & 0xF, data[3:]),
}


def decode_mptcp_option(data: bytes | memoryview) -> MptcpOption:
    """Decode one whole MPTCP option: kind 30, length, subtype and the rest; ``len(data) == data[1]``.

    Raises :class:`TruncatedError` when ``data`` is shorter than its length byte says, and
    :class:`MalformedError` for a wrong kind, extra bytes, a length its subtype (and flags) cannot
    have, or an unassigned subtype. Offsets are relative to ``data``.
    """
    data = bytes(data)
    if len(data) < 2:
        raise TruncatedError("MPTCP option needs its kind and length bytes", len(data), needed_bytes=2)
    if data[0] != TcpOptionKind.MPTCP:
        raise MalformedError(f"MPTCP option kind {data[0]}, expected {int(TcpOptionKind.MPTCP)}", 0)
    declared = data[1]
    if declared < 3:
        raise MalformedError(f"MPTCP option length {declared}, expected at least 3 (kind, length, subtype)", 1)
    if len(data) < declared:
        message = f"MPTCP option length {declared} but only {len(data)} bytes"
        raise TruncatedError(message, len(data), needed_bytes=declared)
    if len(data) > declared:
        raise MalformedError(f"{len(data) - declared} bytes after the {declared}-byte MPTCP option", declared)
    decoder = _DECODERS.get(data[2] >> 4)
    if decoder is None:
        raise MalformedError(f"MPTCP option subtype {data[2] >> 4:#x} is not assigned", 2)
    return decoder(data)


# --- Key crypto ------------------------------------------------------------------------------


def _hash(version: int):
    if version not in (0, 1):
        raise InvalidValueError(f"MPTCP crypto version must be 0 (SHA-1) or 1 (SHA-256), got {version!r}")
    return hashlib.sha1 if version == 0 else hashlib.sha256


def _key_bytes(field: str, key: int) -> bytes:
    _check_uint("MPTCP", field, key, 64)
    return key.to_bytes(8, "big")


def key_token(key: int, version: int = 1) -> int:
    """The 32-bit token of a key: the most significant 32 bits of SHA-256 (v0: SHA-1) over the
    8-byte big-endian key (RFC 8684 section 3.1; RFC 6824 section 3.1)."""
    return int.from_bytes(_hash(version)(_key_bytes("key", key)).digest()[:4], "big")


def key_idsn(key: int, version: int = 1) -> int:
    """The initial data sequence number of a key: the least significant 64 bits of SHA-256
    (v0: SHA-1) over the 8-byte big-endian key (RFC 8684 section 3.1; RFC 6824 section 3.1)."""
    return int.from_bytes(_hash(version)(_key_bytes("key", key)).digest()[-8:], "big")


def join_hmac(key_local: int, key_remote: int, random_local: int, random_remote: int, version: int = 1) -> bytes:
    """The full MP_JOIN HMAC computed by the host that sends it (RFC 8684 section 3.2).

    HMAC-SHA256 (v0: HMAC-SHA1) with key ``Key_local || Key_remote`` over
    ``R_local || R_remote`` (8-byte keys, 4-byte randoms, big-endian), "local" being the sender:
    the responder's SYN/ACK carries the leftmost :data:`JOIN_SYN_ACK_HMAC_BYTES` of its HMAC, the
    initiator's third ACK the leftmost :data:`JOIN_ACK_HMAC_BYTES` (all of a SHA-1 HMAC).
    """
    _check_uint("MP_JOIN", "random_local", random_local, 32)
    _check_uint("MP_JOIN", "random_remote", random_remote, 32)
    digest = _hash(version)
    key = _key_bytes("key_local", key_local) + _key_bytes("key_remote", key_remote)
    return hmac.new(key, struct.pack("!II", random_local, random_remote), digest).digest()


def add_addr_hmac(
    key_sender: int, key_receiver: int, address_id: int, address: IPAddress, port: int | None = None
) -> bytes:
    """The ADD_ADDR truncated HMAC (RFC 8684 section 3.4.1): the rightmost 64 bits of
    HMAC-SHA256 with key ``Key_sender || Key_receiver`` over ``Address ID || Address || Port``,
    the port being two zero bytes when the option carries none."""
    _check_uint("ADD_ADDR", "address_id", address_id, 8)
    _check_optional_uint("ADD_ADDR", "port", port, 16)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise InvalidValueError(f"ADD_ADDR address {address} has a scope, which has no wire form")
    key = _key_bytes("key_sender", key_sender) + _key_bytes("key_receiver", key_receiver)
    message = bytes((address_id,)) + address.packed + struct.pack("!H", port or 0)
    return hmac.new(key, message, hashlib.sha256).digest()[-ADD_ADDR_HMAC_BYTES:]
