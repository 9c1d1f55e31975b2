"""A scoped IPv6 address (``fe80::1%eth0``) has no wire form in any address field: the 16 address
bytes carry no zone (RFC 4007 11: the zone index is local to a node). Every encoder that takes an
address refuses it, as the Connect TLV does, instead of silently dropping the scope."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from mpsim.wire.convert import ConnectTlv
from mpsim.wire.errors import InvalidValueError
from mpsim.wire.mptcp import AddAddr, add_addr_hmac
from mpsim.wire.socks5 import Socks5Command, Socks5Reply, Socks5ReplyMessage, Socks5Request

SCOPED = IPv6Address("fe80::1%eth0")
UNSCOPED = IPv6Address("fe80::1")


def test_connect_tlv_refuses_a_scope():
    with pytest.raises(InvalidValueError, match="scope"):
        ConnectTlv(80, SCOPED)


def test_add_addr_refuses_a_scope_and_keeps_the_unscoped_bytes():
    with pytest.raises(InvalidValueError, match="scope"):
        AddAddr(address_id=1, address=SCOPED, echo=True)
    with pytest.raises(InvalidValueError, match="scope"):
        add_addr_hmac(1, 2, 1, SCOPED)
    # RFC 8684 3.4.1, Figure 12, echo (no HMAC), IPv6 without port: kind 30, length 20,
    # subtype 3 << 4 | E, address id, the 16 address bytes.
    echo = AddAddr(address_id=7, address=UNSCOPED, echo=True).encode()
    assert echo == bytes((30, 20, 0x31, 7)) + bytes.fromhex("fe800000000000000000000000000001")


def test_socks5_messages_refuse_a_scope():
    with pytest.raises(InvalidValueError, match="scope"):
        Socks5Request(SCOPED, 80, Socks5Command.CONNECT)
    with pytest.raises(InvalidValueError, match="scope"):
        Socks5ReplyMessage(Socks5Reply.SUCCEEDED, SCOPED, 80)
    # RFC 1928 4: VER 5, CMD 1, RSV 0, ATYP 4, 16 address bytes, port 80
    request = Socks5Request(UNSCOPED, 80, Socks5Command.CONNECT).encode()
    assert request == bytes((5, 1, 0, 4)) + bytes.fromhex("fe800000000000000000000000000001") + b"\x00\x50"
    assert Socks5Request(IPv4Address("192.0.2.1"), 80, Socks5Command.CONNECT).encode()[3] == 1
