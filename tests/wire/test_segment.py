"""TCP segments in IPv4/IPv6 packets: hand-built vectors, checksums, truncation, properties."""

import dataclasses
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, MalformedError, OptionSpaceError, TruncatedError, WireError
from mpsim.wire.options import (
    EndOfOptionList,
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    Timestamps,
    WindowScale,
    canonical_options,
)
from mpsim.wire.segment import (
    ChecksumError,
    IpPacket,
    TcpFlags,
    TcpSegment,
    decode_packet,
    decode_segment,
    encode_packet,
    encode_segment,
    internet_checksum,
    tcp_checksum,
)

CLIENT4, SERVER4 = IPv4Address("192.0.2.1"), IPv4Address("198.51.100.7")
CLIENT6, SERVER6 = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")
LINUX_SYN_OPTIONS = (MaximumSegmentSize(1460), SackPermitted(), Timestamps(1000, 0), NoOperation(), WindowScale(7))


def reference_checksum(data: bytes) -> int:
    """RFC 1071 checksum computed a different way from the module's word-by-word loop.

    One's complement addition of 16-bit words is addition modulo 0xFFFF (as 2**16 = 1 mod
    0xFFFF), so the sum is the whole big-endian integer mod 0xFFFF, with 0xFFFF standing for
    the zero of any nonzero data.
    """
    padded = data + b"\x00" * (len(data) % 2)
    total = int.from_bytes(padded, "big") % 0xFFFF
    if total == 0 and any(padded):
        total = 0xFFFF
    return 0xFFFF - total


def hexbytes(text: str) -> bytes:
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


# --- hand-built vectors ------------------------------------------------------------------------

# A Linux-style SYN, every byte laid out from RFC 791 section 3.1 (IPv4 header) and RFC 9293
# section 3.1 (TCP header); options from RFC 9293 3.2 (MSS), RFC 2018 2 (SACK-Permitted),
# RFC 7323 3.2 (Timestamps) and 2.2 (Window Scale).
IPV4_SYN = hexbytes("""
    45          # version 4, IHL 5 words
    00          # type of service / DSCP+ECN
    00 3c       # total length 60 = 20 IP + 40 TCP
    1c 46       # identification
    40 00       # flags 010 (DF), fragment offset 0
    40          # TTL 64
    06          # protocol 6 = TCP
    32 3a       # header checksum (checked independently below)
    c0 00 02 01 # source 192.0.2.1
    c6 33 64 07 # destination 198.51.100.7
    c0 00       # source port 49152
    01 bb       # destination port 443
    9f 3a 2c 10 # sequence number
    00 00 00 00 # acknowledgment number
    a0 02       # data offset 10 words, reserved 000, flags 0 0000 0010 = SYN
    fa f0       # window 64240
    cf e4       # checksum (checked independently below)
    00 00       # urgent pointer
    02 04 05 b4 # MSS 1460
    04 02       # SACK permitted
    08 0a 00 00 03 e8 00 00 00 00  # Timestamps TSval 1000, TSecr 0
    01          # NOP
    03 03 07    # Window scale 7
""")
IPV4_SYN_VALUE = IpPacket(
    CLIENT4, SERVER4,
    TcpSegment(49152, 443, 0x9F3A2C10, 0, TcpFlags.SYN, 64240, LINUX_SYN_OPTIONS),
    identification=0x1C46,
)

# The SYN-ACK over IPv6: RFC 8200 section 3 fixed header, next header 6.
IPV6_SYN_ACK = hexbytes("""
    60 01 23 45 # version 6, traffic class 0, flow label 0x12345
    00 28       # payload length 40
    06          # next header TCP
    40          # hop limit 64
    20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02  # source 2001:db8::2
    20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01  # destination 2001:db8::1
    01 bb c0 00 # ports 443 -> 49152
    5d 2e 00 01 # sequence number
    9f 3a 2c 11 # acknowledgment number: the SYN's + 1
    a0 12       # data offset 10, flags SYN+ACK
    fe 88       # window 65160
    f8 17       # checksum over the RFC 8200 8.1 pseudo-header
    00 00       # urgent pointer
    02 04 05 a0 04 02 08 0a 00 00 07 d0 00 00 03 e8 01 03 03 07  # MSS 1440, SACKP, TS 2000/1000, NOP, WS 7
""")
IPV6_SYN_ACK_VALUE = IpPacket(
    SERVER6, CLIENT6,
    TcpSegment(
        443, 49152, 0x5D2E0001, 0x9F3A2C11, TcpFlags.SYN | TcpFlags.ACK, 65160,
        (MaximumSegmentSize(1440), SackPermitted(), Timestamps(2000, 1000), NoOperation(), WindowScale(7)),
    ),
    flow_label=0x12345,
)

# A data segment with a 5-byte payload: the odd length makes RFC 1071 pad the last word.
IPV4_DATA = hexbytes("""
    45 00 00 2d 1c 47 40 00 40 06 32 48 c0 00 02 01 c6 33 64 07  # total length 45
    c0 00 01 bb 9f 3a 2c 11 5d 2e 00 02
    50 18       # data offset 5, flags PSH+ACK
    01 f6 93 8b 00 00
    68 65 6c 6c 6f  # "hello"
""")
IPV4_DATA_VALUE = IpPacket(
    CLIENT4, SERVER4,
    TcpSegment(49152, 443, 0x9F3A2C11, 0x5D2E0002, TcpFlags.PSH | TcpFlags.ACK, 502, payload=b"hello"),
    identification=0x1C47,
)

VECTORS = [(IPV4_SYN, IPV4_SYN_VALUE), (IPV6_SYN_ACK, IPV6_SYN_ACK_VALUE), (IPV4_DATA, IPV4_DATA_VALUE)]


@pytest.mark.parametrize(("wire", "value"), VECTORS, ids=["ipv4-syn", "ipv6-syn-ack", "ipv4-data"])
def test_hand_built_vectors_encode_and_decode(wire, value):
    assert encode_packet(value) == wire
    assert decode_packet(wire) == value


def test_ipv4_syn_checksums_match_an_independent_computation():
    assert reference_checksum(IPV4_SYN[:10] + b"\x00\x00" + IPV4_SYN[12:20]) == 0x323A
    # RFC 9293 section 3.1 pseudo-header: source, destination, zero, protocol, TCP length.
    pseudo = CLIENT4.packed + SERVER4.packed + bytes([0, 6]) + (40).to_bytes(2, "big")
    tcp = IPV4_SYN[20:]
    assert reference_checksum(pseudo + tcp[:16] + b"\x00\x00" + tcp[18:]) == 0xCFE4


def test_ipv6_checksum_uses_the_rfc8200_pseudo_header():
    # RFC 8200 section 8.1: source, destination, 32-bit length, 3 zero bytes, next header.
    pseudo = SERVER6.packed + CLIENT6.packed + (40).to_bytes(4, "big") + bytes([0, 0, 0, 6])
    tcp = IPV6_SYN_ACK[40:]
    assert reference_checksum(pseudo + tcp[:16] + b"\x00\x00" + tcp[18:]) == 0xF817
    assert tcp_checksum(SERVER6, CLIENT6, tcp) == 0


def test_odd_length_payload_checksum_pads_with_a_zero_byte():
    pseudo = CLIENT4.packed + SERVER4.packed + bytes([0, 6]) + (25).to_bytes(2, "big")
    tcp = IPV4_DATA[20:]
    assert len(tcp) % 2 == 1
    assert reference_checksum(pseudo + tcp[:16] + b"\x00\x00" + tcp[18:]) == 0x938B
    assert internet_checksum(b"\xab") == internet_checksum(b"\xab\x00") == 0x54FF


def test_published_scapy_syn_decodes_and_reencodes():
    # Scapy documentation, Usage, "Stacking layers" (scapy.readthedocs.io/en/latest/usage.html):
    # raw(IP()/TCP()) with IP chksum=0x7ccd and TCP chksum=0x917c, 127.0.0.1 to itself.
    wire = (
        b"E\x00\x00(\x00\x01\x00\x00@\x06|\xcd\x7f\x00\x00\x01\x7f\x00\x00\x01"
        b"\x00\x14\x00P\x00\x00\x00\x00\x00\x00\x00\x00P\x02 \x00\x91|\x00\x00"
    )
    packet = decode_packet(wire)
    assert packet == IpPacket(
        IPv4Address("127.0.0.1"), IPv4Address("127.0.0.1"),
        TcpSegment(20, 80, 0, 0, TcpFlags.SYN, 8192), identification=1, dont_fragment=False,
    )
    assert encode_packet(packet) == wire


def test_rfc1071_numerical_example():
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 have the one's complement sum ddf2.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_published_ipv4_header_checksum_then_protocol_refused():
    # The Wikipedia "Internet checksum" worked example: a UDP/IPv4 header with checksum b861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    with pytest.raises(MalformedError, match="IPv4 protocol 17 not supported") as info:
        decode_packet(header[:10] + b"\xb8\x61" + header[12:] + bytes(95))
    assert info.value.offset == 9


def test_checksum_over_data_including_a_correct_checksum_is_zero():
    assert internet_checksum(IPV4_SYN[:20]) == 0
    assert tcp_checksum(CLIENT4, SERVER4, IPV4_SYN[20:]) == 0


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", [IPV4_SYN, IPV6_SYN_ACK, IPV4_DATA], ids=["ipv4-syn", "ipv6-syn-ack", "ipv4-data"])
def test_truncation_at_every_offset_is_truncated_error(wire):
    # The IP header states the length, so every shorter buffer is incomplete, never malformed.
    for length in range(len(wire)):
        with pytest.raises(TruncatedError) as info:
            decode_packet(wire[:length])
        assert info.value.needed_bytes is not None and info.value.needed_bytes > length


def test_segment_truncation_at_every_offset():
    tcp = IPV4_SYN[20:]
    for length in range(len(tcp)):
        with pytest.raises((TruncatedError, MalformedError)):
            decode_segment(tcp[:length], CLIENT4, SERVER4)
    for length in range(40):  # inside the header: more bytes would complete it
        with pytest.raises(TruncatedError):
            decode_segment(tcp[:length], CLIENT4, SERVER4, verify_checksum=False)


def test_trailing_bytes_after_the_stated_length_are_ignored():
    assert decode_packet(IPV4_DATA + bytes(11)) == IPV4_DATA_VALUE  # Ethernet pads to 60 bytes
    assert decode_packet(IPV6_SYN_ACK + b"\xff") == IPV6_SYN_ACK_VALUE


def test_corrupted_payload_is_a_tcp_checksum_error():
    corrupted = IPV4_DATA[:-1] + b"p"
    with pytest.raises(ChecksumError, match="TCP checksum 0x938b, expected") as info:
        decode_packet(corrupted)
    err = info.value
    assert (err.checksum_name, err.actual, err.offset) == ("TCP", 0x938B, 20 + 16)
    assert err.expected == reference_checksum(
        CLIENT4.packed + SERVER4.packed + bytes([0, 6, 0, 25]) + corrupted[20:36] + b"\x00\x00" + corrupted[38:]
    )
    assert decode_packet(corrupted, verify_checksums=False).segment.payload == b"hellp"


def test_corrupted_ipv4_header_is_a_header_checksum_error():
    corrupted = IPV4_SYN[:8] + b"\x3f" + IPV4_SYN[9:]  # TTL 63 without updating the checksum
    with pytest.raises(ChecksumError) as info:
        decode_packet(corrupted)
    assert (info.value.checksum_name, info.value.actual, info.value.offset) == ("IPv4 header", 0x323A, 10)
    assert info.value.expected == reference_checksum(corrupted[:10] + b"\x00\x00" + corrupted[12:20])
    assert decode_packet(corrupted, verify_checksums=False).ttl_hops == 63


@pytest.mark.parametrize("wire", [IPV4_SYN, IPV6_SYN_ACK, IPV4_DATA], ids=["ipv4-syn", "ipv6-syn-ack", "ipv4-data"])
def test_every_single_bit_flip_is_detected(wire):
    # RFC 1071 checksums catch every single-bit error. IPv6 has no header checksum and its
    # pseudo-header leaves out traffic class, flow label and hop limit (bytes 0-3 and 7), so
    # flips there (other than in the version nibble) decode to a different packet.
    unprotected = {(0, bit) for bit in range(4)} | {(i, bit) for i in (1, 2, 3, 7) for bit in range(8)}
    original = decode_packet(wire)
    for index in range(len(wire)):
        for bit in range(8):
            flipped = wire[:index] + bytes([wire[index] ^ 1 << bit]) + wire[index + 1 :]
            if wire[0] >> 4 == 6 and (index, bit) in unprotected:
                assert decode_packet(flipped) != original
            else:
                with pytest.raises(WireError):
                    decode_packet(flipped)


def with_ipv4_header(wire: bytes, **changes) -> bytes:
    """``wire`` with IPv4 header fields replaced and the header checksum recomputed."""
    fields = dict(zip(["vihl", "tos", "total", "ident", "frag", "ttl", "proto"], struct.unpack_from("!BBHHHBB", wire)))
    fields.update(changes)
    header_bytes = max(20, (fields["vihl"] & 0xF) * 4)
    head = struct.pack("!BBHHHBB", *fields.values()) + b"\x00\x00" + wire[12:header_bytes]
    return head[:10] + internet_checksum(head).to_bytes(2, "big") + wire[12:]


@pytest.mark.parametrize(
    ("changes", "message", "offset"),
    [
        ({"vihl": 0x44}, "IPv4 IHL 4 words, the minimum is 5", 0),
        ({"total": 19}, "IPv4 total length 19 is shorter than its 20-byte header", 2),
        ({"frag": 0x8000}, "reserved flag", 6),
        ({"frag": 0x2000}, r"IPv4 fragment \(more-fragments 1, fragment offset 0 words\) not supported", 6),
        ({"frag": 0x00B9}, r"IPv4 fragment \(more-fragments 0, fragment offset 185 words\) not supported", 6),
        ({"proto": 17}, r"IPv4 protocol 17 not supported, only TCP \(6\)", 9),
    ],
)
def test_ipv4_header_errors(changes, message, offset):
    with pytest.raises(MalformedError, match=message) as info:
        decode_packet(with_ipv4_header(IPV4_SYN, **changes))
    assert info.value.offset == offset


def test_ipv4_options_are_kept_raw():
    # RFC 791 section 3.1: IHL 6 words, one word of options (three NOPs and an EOL).
    wire = with_ipv4_header(IPV4_SYN[:20] + b"\x01\x01\x01\x00" + IPV4_SYN[20:], vihl=0x46, total=64)
    packet = decode_packet(wire)
    assert packet.ipv4_options == b"\x01\x01\x01\x00"
    assert packet.segment == IPV4_SYN_VALUE.segment
    assert encode_packet(packet) == wire


def test_ipv4_total_length_past_the_buffer_is_truncated():
    with pytest.raises(TruncatedError, match="IPv4 total length 61 bytes, got 60") as info:
        decode_packet(with_ipv4_header(IPV4_SYN, total=61))
    assert info.value.needed_bytes == 61


def test_ipv6_extension_headers_and_other_next_headers_are_refused():
    for next_header, message in [(43, "IPv6 next header 43 not supported"), (44, "fragment header"),
                                 (17, "IPv6 next header 17 not supported")]:
        with pytest.raises(MalformedError, match=message) as info:
            decode_packet(IPV6_SYN_ACK[:6] + bytes([next_header]) + IPV6_SYN_ACK[7:])
        assert info.value.offset == 6


def test_ipv6_payload_length_past_the_buffer_is_truncated():
    with pytest.raises(TruncatedError) as info:
        decode_packet(IPV6_SYN_ACK[:4] + (41).to_bytes(2, "big") + IPV6_SYN_ACK[6:])
    assert info.value.needed_bytes == 81


def test_unknown_ip_version_is_malformed():
    with pytest.raises(MalformedError, match="IP version 5, expected 4 or 6"):
        decode_packet(b"\x50" + IPV4_SYN[1:])


@pytest.mark.parametrize("data_offset_words", [0, 4])
def test_tcp_data_offset_below_five_is_malformed(data_offset_words):
    wire = IPV4_DATA[:32] + bytes([data_offset_words << 4]) + IPV4_DATA[33:]
    with pytest.raises(MalformedError, match=f"TCP data offset {data_offset_words} words") as info:
        decode_packet(wire, verify_checksums=False)
    assert info.value.offset == 32


def test_tcp_data_offset_past_the_packet_is_malformed_not_truncated():
    # Data offset 15 words = 60 bytes, but the IPv4 total length leaves 25 bytes for TCP.
    wire = IPV4_DATA[:32] + b"\xf0" + IPV4_DATA[33:]
    with pytest.raises(MalformedError, match="runs past the 25-byte segment") as info:
        decode_packet(wire, verify_checksums=False)
    assert not isinstance(info.value, TruncatedError)
    assert info.value.offset == 32


def test_ipv4_total_length_too_short_for_a_tcp_header_is_malformed():
    with pytest.raises(MalformedError, match="TCP header needs 20 bytes, got 10") as info:
        decode_packet(with_ipv4_header(IPV4_SYN, total=30), verify_checksums=False)
    assert not isinstance(info.value, TruncatedError)
    assert info.value.offset == 30


def test_option_errors_are_shifted_to_packet_offsets():
    # An MSS option with length 3 in the SYN's option block (RFC 9293 3.2: MSS length is 4).
    wire = IPV4_SYN[:41] + b"\x03" + IPV4_SYN[42:]
    with pytest.raises(MalformedError, match="MSS option length 3") as info:
        decode_packet(wire, verify_checksums=False)
    assert info.value.offset == 40


# --- byte exactness of odd headers -------------------------------------------------------------


def test_reserved_bits_and_ae_flag_survive_a_round_trip():
    # RFC 9293 3.1 reserved bits (here 101) and the AE bit of RFC 9768 in the flags word.
    tcp = bytearray(encode_segment(IPV4_DATA_VALUE.segment, CLIENT4, SERVER4))
    tcp[12] |= 0b1011
    tcp[16:18] = b"\x00\x00"
    tcp[16:18] = tcp_checksum(CLIENT4, SERVER4, tcp).to_bytes(2, "big")
    segment = decode_segment(tcp, CLIENT4, SERVER4)
    assert segment.reserved_bits == 0b101
    assert segment.flags == TcpFlags.AE | TcpFlags.PSH | TcpFlags.ACK
    assert encode_segment(segment, CLIENT4, SERVER4) == bytes(tcp)


@pytest.mark.parametrize(
    ("option_area", "padding"),
    [
        (bytes.fromhex("020405b4 00000000 00000000"), bytes(7)),  # a whole word of zeros too many
        (bytes.fromhex("020405b4 01010000"), b""),  # NOP, NOP, EOL, zero: the usual form
        (bytes.fromhex("0402 00 ff"), b"\xff"),  # garbage after the EOL
    ],
)
def test_bytes_after_eol_are_kept_when_not_the_default_padding(option_area, padding):
    # RFC 9293 3.1: the options end at the data offset; an EOL may end the list earlier.
    header = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (5 + len(option_area) // 4) << 12 | TcpFlags.SYN, 5, 0, 0)
    tcp = bytearray(header + option_area)
    tcp[16:18] = tcp_checksum(CLIENT6, SERVER6, tcp).to_bytes(2, "big")
    segment = decode_segment(tcp, CLIENT6, SERVER6)
    assert isinstance(segment.options[-1], EndOfOptionList)
    assert segment.option_padding == padding
    assert encode_segment(segment, CLIENT6, SERVER6) == bytes(tcp)


# --- values ------------------------------------------------------------------------------------


def test_sequence_space_counts_syn_and_fin():
    assert TcpSegment(1, 2, 0, 0, TcpFlags.SYN | TcpFlags.FIN, 0, payload=b"abc").sequence_space_bytes == 5
    assert TcpSegment(1, 2, 0, 0, TcpFlags.ACK, 0).sequence_space_bytes == 0


def test_integer_flags_become_tcp_flags():
    segment = TcpSegment(1, 2, 0, 0, 0x12, 0)
    assert type(segment.flags) is TcpFlags and segment.flags == TcpFlags.SYN | TcpFlags.ACK


@pytest.mark.parametrize(
    "changes",
    [{"src_port": 65536}, {"seq": -1}, {"ack": 2**32}, {"flags": 0x200}, {"flags": True}, {"window": 1 << 16},
     {"urgent_pointer": -1}, {"reserved_bits": 8}, {"options": [NoOperation()]}, {"options": ("mss",)},
     {"options": (EndOfOptionList(), NoOperation())}, {"payload": bytearray(b"x")},
     {"option_padding": b"\x00"}, {"options": (EndOfOptionList(),), "option_padding": b"\x00\x00\x00"},
     {"options": (EndOfOptionList(),), "option_padding": b"\x00\x00"}],
)
def test_invalid_segment_fields_are_refused(changes):
    base = {"src_port": 1, "dst_port": 2, "seq": 0, "ack": 0, "flags": TcpFlags.ACK, "window": 0}
    with pytest.raises(InvalidValueError):
        TcpSegment(**{**base, **changes})


@pytest.mark.parametrize(
    ("src", "dst", "changes"),
    [
        (CLIENT4, SERVER6, {}),
        ("192.0.2.1", SERVER4, {}),
        (CLIENT4, SERVER4, {"flow_label": 1}),
        (CLIENT4, SERVER4, {"ipv4_options": b"\x01\x01\x01"}),
        (CLIENT4, SERVER4, {"ipv4_options": b"\x01" * 44}),
        (CLIENT4, SERVER4, {"ttl_hops": 256}),
        (CLIENT4, SERVER4, {"dscp_ecn": 256}),
        (CLIENT6, SERVER6, {"identification": 1}),
        (CLIENT6, SERVER6, {"dont_fragment": False}),
        (CLIENT6, SERVER6, {"flow_label": 1 << 20}),
    ],
)
def test_invalid_packet_fields_are_refused(src, dst, changes):
    with pytest.raises(InvalidValueError):
        IpPacket(src, dst, IPV4_DATA_VALUE.segment, **changes)


def test_packets_longer_than_the_length_fields_are_refused():
    segment = TcpSegment(1, 2, 0, 0, TcpFlags.ACK, 0, payload=bytes(65535 - 40))
    assert len(encode_packet(IpPacket(CLIENT4, SERVER4, segment))) == 65535
    with pytest.raises(InvalidValueError, match="IPv4 total length 65539"):
        IpPacket(CLIENT4, SERVER4, segment, ipv4_options=bytes(4))
    bigger = dataclasses.replace(segment, payload=bytes(65535 - 19))
    with pytest.raises(InvalidValueError, match="IPv6 payload length 65536"):
        IpPacket(CLIENT6, SERVER6, bigger)


def test_options_beyond_forty_bytes_cannot_encode():
    segment = TcpSegment(1, 2, 0, 0, TcpFlags.SYN, 0, (Timestamps(1, 2),) * 4 + (MaximumSegmentSize(1),))
    with pytest.raises(OptionSpaceError):
        encode_segment(segment, CLIENT4, SERVER4)
    padded = TcpSegment(1, 2, 0, 0, TcpFlags.SYN, 0, (EndOfOptionList(),), option_padding=bytes(43))
    with pytest.raises(OptionSpaceError):
        encode_segment(padded, CLIENT4, SERVER4)


def test_checksum_needs_one_address_family():
    with pytest.raises(InvalidValueError):
        tcp_checksum(CLIENT4, SERVER6, b"")


# --- properties --------------------------------------------------------------------------------

option_lists = st.lists(
    st.one_of(
        st.builds(MaximumSegmentSize, st.integers(0, 0xFFFF)),
        st.just(NoOperation()),
        st.just(SackPermitted()),
        st.builds(Timestamps, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        st.builds(WindowScale, st.integers(0, 255)),
    ),
    max_size=8,
).filter(lambda options: sum(len(o.encode()) for o in options) <= 39).map(canonical_options)
# At most 39 unpadded bytes, so that the padding (or the EOL canonical_options adds) fits in 40.

segments = st.builds(
    TcpSegment,
    src_port=st.integers(0, 0xFFFF),
    dst_port=st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0x1FF).map(TcpFlags),
    window=st.integers(0, 0xFFFF),
    options=option_lists,
    payload=st.binary(max_size=64),
    urgent_pointer=st.integers(0, 0xFFFF),
    reserved_bits=st.integers(0, 7),
)
ipv4_packets = st.builds(
    IpPacket,
    src=st.integers(0, 2**32 - 1).map(IPv4Address),
    dst=st.integers(0, 2**32 - 1).map(IPv4Address),
    segment=segments,
    ttl_hops=st.integers(0, 255),
    identification=st.integers(0, 0xFFFF),
    dont_fragment=st.booleans(),
    dscp_ecn=st.integers(0, 255),
    ipv4_options=st.integers(0, 10).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words)),
)
ipv6_packets = st.builds(
    IpPacket,
    src=st.integers(0, 2**128 - 1).map(IPv6Address),
    dst=st.integers(0, 2**128 - 1).map(IPv6Address),
    segment=segments,
    ttl_hops=st.integers(0, 255),
    dscp_ecn=st.integers(0, 255),
    flow_label=st.integers(0, 2**20 - 1),
)
packets = st.one_of(ipv4_packets, ipv6_packets)


@given(packets)
def test_round_trip(packet):
    assert decode_packet(encode_packet(packet)) == packet


@given(segments, st.sampled_from([(CLIENT4, SERVER4), (CLIENT6, SERVER6)]))
def test_segment_round_trip(segment, addresses):
    assert decode_segment(encode_segment(segment, *addresses), *addresses) == segment


@given(st.binary(max_size=200))
def test_internet_checksum_matches_the_reference(data):
    assert internet_checksum(data) == reference_checksum(data)


@given(st.binary(max_size=120), st.booleans())
def test_decode_packet_is_total(data, verify):
    try:
        result = decode_packet(data, verify_checksums=verify)
    except WireError:
        return
    assert isinstance(result, IpPacket)


def zero_checksums(wire: bytes) -> bytes:
    """``wire`` with the IPv4 header and TCP checksum fields zeroed."""
    out = bytearray(wire)
    tcp_start = 40 if wire[0] >> 4 == 6 else (wire[0] & 0xF) * 4
    if wire[0] >> 4 == 4:
        out[10:12] = b"\x00\x00"
    out[tcp_start + 16 : tcp_start + 18] = b"\x00\x00"
    return bytes(out)


@settings(max_examples=300)
@given(packets, st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4), st.integers(0, 8))
def test_mutated_packets_decode_byte_exactly_or_fail_cleanly(packet, edits, cut):
    # Mutations reach the deeper branches that random bytes never get to; whatever decodes
    # must re-encode to the same bytes, checksums aside (they are recomputed, not kept).
    wire = bytearray(encode_packet(packet))
    for position, value in edits:
        wire[position % len(wire)] = value
    wire = bytes(wire[: len(wire) - cut])
    try:
        decoded = decode_packet(wire, verify_checksums=False)
    except WireError:
        return
    reencoded = encode_packet(decoded)
    assert zero_checksums(reencoded) == zero_checksums(wire[: len(reencoded)])
    assert decode_packet(reencoded) == decoded
