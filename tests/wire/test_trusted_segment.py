"""The machines' unchecked builders (``trusted_segment``, ``trusted_packet``) give the very values
the validating constructors give, and leave everything unusual to them, errors included
(docs/sim.md "Performance")."""

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, OptionSpaceError
from mpsim.wire.mptcp import Dss, MpCapable, MpJoinAck
from mpsim.wire.options import (
    EndOfOptionList,
    FastOpen,
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    Timestamps,
    WindowScale,
)
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, encode_packet, trusted_packet, trusted_segment

V4 = (IPv4Address("192.0.2.1"), IPv4Address("198.51.100.2"))
V6 = (IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2"))
OPTIONS = [
    NoOperation(), Timestamps(1, 2), MaximumSegmentSize(1460), WindowScale(7), SackPermitted(),
    Dss(data_ack=5, dsn=6, ssn=7, data_level_length_bytes=8), MpCapable(1, 1), MpJoinAck(b"\x01" * 20),
    FastOpen(b"abcd"),  # sized by encoding: the constructor's path
]


def _same(built, expected) -> None:
    assert type(built) is type(expected)
    assert built == expected and repr(built) == repr(expected) and hash(built) == hash(expected)


@given(src_port=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFFFFFF), ack=st.integers(0, 0xFFFFFFFF),
       flags=st.integers(0, 0x1FF), window=st.integers(0, 0xFFFF),
       options=st.lists(st.sampled_from(OPTIONS), max_size=4), payload=st.binary(max_size=64),
       v6=st.booleans())
def test_the_builders_give_the_constructors_values(src_port, seq, ack, flags, window, options, payload, v6):
    fields = (src_port, 443, seq, ack, TcpFlags(flags), window, tuple(options), payload)
    expected_segment = TcpSegment(*fields)
    segment = trusted_segment(*fields)
    _same(segment, expected_segment)
    addresses = V6 if v6 else V4
    try:
        expected = IpPacket(*addresses, expected_segment)
    except OptionSpaceError:  # more than 40 bytes of options
        with pytest.raises(OptionSpaceError):
            segment.header_length_bytes
        with pytest.raises(OptionSpaceError):
            trusted_packet(*addresses, segment)
        return
    assert segment.header_length_bytes == expected_segment.header_length_bytes
    packet = trusted_packet(*addresses, segment)
    _same(packet, expected)
    assert packet.length_bytes == expected.length_bytes == len(encode_packet(packet))
    assert encode_packet(packet) == encode_packet(expected)


def test_what_the_builders_do_not_check_goes_through_the_constructors():
    with pytest.raises(InvalidValueError, match="EndOfOptionList must be the last option"):
        trusted_segment(1, 2, 3, 4, TcpFlags.ACK, 5, (EndOfOptionList(), NoOperation()), b"")
    with pytest.raises(InvalidValueError, match="options must be a tuple"):
        trusted_segment(1, 2, 3, 4, TcpFlags.ACK, 5, [NoOperation()], b"")
    with pytest.raises(InvalidValueError, match="payload must be bytes"):
        trusted_segment(1, 2, 3, 4, TcpFlags.ACK, 5, (), bytearray(b"x"))
    # Flags given as an int become TcpFlags, as the constructor makes them.
    assert trusted_segment(1, 2, 3, 4, 0x10, 5, (), b"").flags is TcpFlags.ACK
    segment = trusted_segment(1, 2, 3, 4, TcpFlags.ACK, 5, (), b"")
    with pytest.raises(InvalidValueError, match="two IPv4Address or two IPv6Address"):
        trusted_packet(V4[0], V6[1], segment)
    with pytest.raises(InvalidValueError, match="IPv4 total length 65556 bytes exceeds 65535"):
        trusted_packet(*V4, trusted_segment(1, 2, 3, 4, TcpFlags.ACK, 5, (), bytes(65516)))
    assert trusted_packet(*V6, trusted_segment(1, 2, 3, 4, TcpFlags.ACK, 5, (), bytes(65515))).length_bytes \
        == 40 + 20 + 65515  # IPv6 counts its payload length without the fixed header
    full = (MpJoinAck(b"\x01" * 20), MpJoinAck(b"\x02" * 20))  # 48 bytes of options
    with pytest.raises(OptionSpaceError):
        trusted_packet(*V4, trusted_segment(1, 2, 3, 4, TcpFlags.ACK, 5, full, b""))
