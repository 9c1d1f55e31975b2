"""SOCKS version 5 (RFC 1928): the 2-RTT proxy baseline that RFC 8803 section 3 compares against.

Four messages, each read from a byte stream, so every decoder takes a buffer that may hold more
than one message and returns ``(value, bytes_consumed)``; a buffer that ends early raises
TruncatedError with the total length needed (when the length is known), anything else MalformedError.

- greeting (client): ``VER=5 | NMETHODS | METHODS...`` (RFC 1928 section 3)
- method selection (proxy): ``VER=5 | METHOD`` (section 3)
- request (client): ``VER=5 | CMD | RSV=0 | ATYP | DST.ADDR | DST.PORT`` (section 4)
- reply (proxy): ``VER=5 | REP | RSV=0 | ATYP | BND.ADDR | BND.PORT`` (section 6)

Addresses are IPv4 (ATYP 1), a domain name (ATYP 3, one length byte then the name) or IPv6 (ATYP 4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError

SOCKS_VERSION = 5


class Socks5Method(IntEnum):
    """Authentication methods (RFC 1928 section 3)."""

    NO_AUTHENTICATION_REQUIRED = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE_METHODS = 0xFF


class Socks5Command(IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class Socks5AddressType(IntEnum):
    IPV4 = 0x01
    DOMAINNAME = 0x03
    IPV6 = 0x04


class Socks5Reply(IntEnum):
    """REP codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    CONNECTION_NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


def _check_byte(field: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFF:
        raise InvalidValueError(f"SOCKS5 {field} must be an int in 0..255, got {value!r}")


@dataclass(frozen=True, slots=True)
class Socks5Greeting:
    name: ClassVar[str] = "socks5_greeting"
    methods: tuple[int, ...] = (Socks5Method.NO_AUTHENTICATION_REQUIRED,)

    def __post_init__(self) -> None:
        if not 1 <= len(self.methods) <= 255:
            raise InvalidValueError(f"SOCKS5 greeting needs 1..255 methods, got {len(self.methods)}")
        for method in self.methods:
            _check_byte("method", method)

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, len(self.methods), *self.methods))


@dataclass(frozen=True, slots=True)
class Socks5MethodSelection:
    name: ClassVar[str] = "socks5_method_selection"
    method: int = Socks5Method.NO_AUTHENTICATION_REQUIRED

    def __post_init__(self) -> None:
        _check_byte("method", self.method)

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, self.method))


def _check_address(address: IPv4Address | IPv6Address | str, port: int) -> None:
    if isinstance(address, str):
        encoded = address.encode("ascii") if address.isascii() else b""
        if not 1 <= len(encoded) <= 255:
            raise InvalidValueError(f"SOCKS5 domain name must be 1..255 ASCII bytes, got {address!r}")
    elif not isinstance(address, (IPv4Address, IPv6Address)):
        raise InvalidValueError(f"SOCKS5 address must be an IP address or a domain name, got {address!r}")
    elif isinstance(address, IPv6Address) and address.scope_id is not None:
        # RFC 1928 5: ATYP 4 is 16 bytes; a scope (fe80::1%eth0) has no wire form and would be lost
        raise InvalidValueError(f"SOCKS5 address {address} has a scope, which has no wire form")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
        raise InvalidValueError(f"SOCKS5 port must be an int in 0..65535, got {port!r}")


def _encode_address(address: IPv4Address | IPv6Address | str, port: int) -> bytes:
    if isinstance(address, IPv4Address):
        body = bytes((Socks5AddressType.IPV4,)) + address.packed
    elif isinstance(address, IPv6Address):
        body = bytes((Socks5AddressType.IPV6,)) + address.packed
    else:
        name = address.encode("ascii")
        body = bytes((Socks5AddressType.DOMAINNAME, len(name))) + name
    return body + struct.pack("!H", port)


@dataclass(frozen=True, slots=True)
class Socks5Request:
    name: ClassVar[str] = "socks5_request"
    address: IPv4Address | IPv6Address | str
    port: int
    command: int = Socks5Command.CONNECT

    def __post_init__(self) -> None:
        _check_byte("command", self.command)
        _check_address(self.address, self.port)

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, self.command, 0)) + _encode_address(self.address, self.port)


@dataclass(frozen=True, slots=True)
class Socks5ReplyMessage:
    name: ClassVar[str] = "socks5_reply"
    reply: int
    address: IPv4Address | IPv6Address | str = IPv4Address(0)
    port: int = 0

    def __post_init__(self) -> None:
        _check_byte("reply", self.reply)
        _check_address(self.address, self.port)

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, self.reply, 0)) + _encode_address(self.address, self.port)


def _need(data: bytes, total: int, what: str) -> None:
    if len(data) < total:
        raise TruncatedError(f"SOCKS5 {what} needs {total} bytes, have {len(data)}", len(data), needed_bytes=total)


def _check_version(data: bytes, what: str) -> None:
    _need(data, 1, what)
    if data[0] != SOCKS_VERSION:
        raise MalformedError(f"SOCKS5 {what} version {data[0]}, expected {SOCKS_VERSION}", 0)


def decode_greeting(data: bytes | memoryview) -> tuple[Socks5Greeting, int]:
    data = bytes(data)
    _check_version(data, "greeting")
    _need(data, 2, "greeting")
    if data[1] == 0:
        raise MalformedError("SOCKS5 greeting lists no methods", 1)
    total = 2 + data[1]
    _need(data, total, "greeting")
    return Socks5Greeting(tuple(data[2:total])), total


def decode_method_selection(data: bytes | memoryview) -> tuple[Socks5MethodSelection, int]:
    data = bytes(data)
    _check_version(data, "method selection")
    _need(data, 2, "method selection")
    return Socks5MethodSelection(data[1]), 2


def _decode_address_message(data: bytes, what: str) -> tuple[int, IPv4Address | IPv6Address | str, int, int]:
    _check_version(data, what)
    _need(data, 4, what)
    if data[2] != 0:
        raise MalformedError(f"SOCKS5 {what} reserved byte is {data[2]}, expected 0", 2)
    atyp = data[3]
    if atyp == Socks5AddressType.IPV4:
        total = 4 + 4 + 2
        _need(data, total, what)
        address: IPv4Address | IPv6Address | str = IPv4Address(data[4:8])
    elif atyp == Socks5AddressType.IPV6:
        total = 4 + 16 + 2
        _need(data, total, what)
        address = IPv6Address(data[4:20])
    elif atyp == Socks5AddressType.DOMAINNAME:
        _need(data, 5, what)
        if data[4] == 0:
            raise MalformedError(f"SOCKS5 {what} has an empty domain name", 4)
        total = 5 + data[4] + 2
        _need(data, total, what)
        raw = data[5: 5 + data[4]]
        if not raw.isascii():
            raise MalformedError(f"SOCKS5 {what} domain name is not ASCII", 5)
        address = raw.decode("ascii")
    else:
        raise MalformedError(f"SOCKS5 {what} address type {atyp} is not 1, 3 or 4", 3)
    (port,) = struct.unpack_from("!H", data, total - 2)
    return data[1], address, port, total


def decode_request(data: bytes | memoryview) -> tuple[Socks5Request, int]:
    command, address, port, total = _decode_address_message(bytes(data), "request")
    return Socks5Request(address, port, command), total


def decode_reply(data: bytes | memoryview) -> tuple[Socks5ReplyMessage, int]:
    reply, address, port, total = _decode_address_message(bytes(data), "reply")
    return Socks5ReplyMessage(reply, address, port), total
