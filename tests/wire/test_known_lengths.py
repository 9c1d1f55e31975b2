"""Lengths worked out when a segment or packet is built, and TcpFlags arithmetic done by lookup,
give what encoding and the enum machinery give (the simulator relies on them for speed)."""

import copy
import pickle
from enum import IntFlag
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError
from mpsim.wire.mptcp import Dss, MpCapable
from mpsim.wire.options import (
    EndOfOptionList,
    FastOpen,
    NoOperation,
    Sack,
    Timestamps,
    encode_options,
    option_space_bytes,
    options_length_bytes,
)
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, decode_packet, encode_packet

V4 = (IPv4Address("192.0.2.1"), IPv4Address("198.51.100.2"))
V6 = (IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2"))
OPTION_LISTS = [
    (),
    (NoOperation(), NoOperation(), Timestamps(1, 2)),
    (NoOperation(), NoOperation(), Sack(((1, 2), (3, 4)))),
    (FastOpen(b"abcd"), MpCapable(1, 1)),
    (Dss(data_ack=5, dsn=6, ssn=7, data_level_length_bytes=8), EndOfOptionList()),
]


@pytest.mark.parametrize("options", OPTION_LISTS)
@pytest.mark.parametrize("addresses", [V4, V6])
def test_a_packet_knows_its_encoded_length_and_copies_do_too(options, addresses):
    packet = IpPacket(*addresses, TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5, options, b"data"))
    encoded = encode_packet(packet)
    ip_header_bytes = 20 if addresses is V4 else 40
    assert packet.length_bytes == len(encoded)
    assert packet.segment.header_length_bytes == len(encoded) - ip_header_bytes - len(b"data")
    for duplicate in (copy.copy(packet), copy.deepcopy(packet), pickle.loads(pickle.dumps(packet))):
        assert duplicate == packet and duplicate.length_bytes == len(encoded)
    assert decode_packet(encoded).length_bytes == len(encoded)  # decoding may add an EOL (canonical_options)
    assert options_length_bytes(options) == len(encode_options(options, limit_bytes=None, pad=False))
    assert option_space_bytes(options) == len(encode_options(options, limit_bytes=None))


def test_sizing_refuses_what_encoding_refuses():
    with pytest.raises(InvalidValueError, match="EndOfOptionList must be the last option"):
        options_length_bytes((EndOfOptionList(), NoOperation()))


@given(st.integers(0, 0x1FF), st.integers(0, 0x1FF))
def test_flag_arithmetic_gives_the_enum_values(a, b):
    for left, right in ((TcpFlags(a), TcpFlags(b)), (TcpFlags(a), b), (a, TcpFlags(b))):
        for mine, enums in ((left & right, IntFlag.__and__), (left | right, IntFlag.__or__)):
            reference = enums(left, right) if isinstance(left, TcpFlags) else enums(right, left)
            assert type(mine) is TcpFlags and mine == reference and mine is TcpFlags(int(reference))
