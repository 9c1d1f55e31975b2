"""MPTCP option codec and key crypto (mpsim.wire.mptcp), against RFC 8684 / RFC 6824 by hand.

Vectors are written byte by byte from the RFC figures (section cited at each), so that a codec
bug and a test bug would have to coincide to pass.
"""

import hashlib
import hmac
import ipaddress
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError, WireError
from mpsim.wire.mptcp import (
    ADD_ADDR_HMAC_BYTES,
    JOIN_ACK_HMAC_BYTES,
    JOIN_SYN_ACK_HMAC_BYTES,
    AddAddr,
    Dss,
    DssFlags,
    MpCapable,
    MpCapableFlags,
    MpCapableForm,
    MpExperimental,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MptcpOption,
    MptcpSubtype,
    MpTcpRst,
    MpTcpRstFlags,
    MpTcpRstReason,
    RemoveAddr,
    add_addr_hmac,
    decode_mptcp_option,
    join_hmac,
    key_idsn,
    key_token,
)
from mpsim.wire.options import options_length_bytes

KEY_A, KEY_A_HEX = 0x0102030405060708, "0102030405060708"
KEY_B, KEY_B_HEX = 0x1112131415161718, "1112131415161718"
H, A = MpCapableFlags.H, MpCapableFlags.A
V4, V6 = ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv6Address("2001:db8::1")
V4_HEX, V6_HEX = "c0000201", "20010db8000000000000000000000001"
HMAC8 = bytes(range(0xA0, 0xA8))
ALL_CLASSES = (MpCapable, MpJoinSyn, MpJoinSynAck, MpJoinAck, Dss, AddAddr, RemoveAddr, MpPrio, MpFail, MpFastclose,
               MpTcpRst, MpExperimental)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


VECTORS = [
    # RFC 8684 3.1, Figure 4 (and the digest's table): v1 SYN carries no key.
    pytest.param("1e 04 01 01", MpCapable(1, H), id="mpc-v1-syn"),
    pytest.param("1e 04 01 81", MpCapable(1, A | H), id="mpc-v1-syn-checksum"),
    # packetdrill v1_bind_tcpfallback_flagB.pkt sends flags 0x41: it decodes, falling back is proto's job.
    pytest.param("1e 04 01 41", MpCapable(1, MpCapableFlags.B | H), id="mpc-v1-syn-flag-b"),
    pytest.param("1e 0c 01 01" + KEY_B_HEX, MpCapable(1, H, KEY_B), id="mpc-v1-synack"),
    pytest.param("1e 14 01 01" + KEY_A_HEX + KEY_B_HEX, MpCapable(1, H, KEY_A, KEY_B), id="mpc-v1-ack"),
    pytest.param("1e 16 01 01" + KEY_A_HEX + KEY_B_HEX + "0002", MpCapable(1, H, KEY_A, KEY_B, 2), id="mpc-v1-data"),
    pytest.param("1e 18 01 81" + KEY_A_HEX + KEY_B_HEX + "05dc beef", MpCapable(1, A | H, KEY_A, KEY_B, 1500, 0xBEEF),
                 id="mpc-v1-data-checksum"),
    # RFC 6824 3.1, Figure 4: v0 puts the sender's key on the SYN (and SYN/ACK), both on the ACK.
    pytest.param("1e 0c 00 81" + KEY_A_HEX, MpCapable(0, A | H, KEY_A), id="mpc-v0-syn"),
    pytest.param("1e 14 00 81" + KEY_A_HEX + KEY_B_HEX, MpCapable(0, A | H, KEY_A, KEY_B), id="mpc-v0-ack"),
    # RFC 8684 3.2, Figures 5-7: MP_JOIN SYN (B set, address ID 2), SYN/ACK and third ACK.
    pytest.param("1e 0c 11 02 a1b2c3d4 01020304", MpJoinSyn(2, 0xA1B2C3D4, 0x01020304, backup=True), id="join-syn"),
    pytest.param("1e 10 10 02" + HMAC8.hex() + "deadbeef", MpJoinSynAck(2, HMAC8, 0xDEADBEEF), id="join-synack"),
    pytest.param("1e 18 10 00" + bytes(range(20)).hex(), MpJoinAck(bytes(range(20))), id="join-ack"),
    # RFC 8684 3.3, Figure 9: DSS. A 4-byte Data ACK alone; an 8-byte one ("dss dack8" in packetdrill).
    pytest.param("1e 08 20 01 0000002a", Dss(data_ack=42), id="dss-dack4"),
    pytest.param("1e 0c 20 03 0000000000000100", Dss(data_ack=256, data_ack_64_bit=True), id="dss-dack8"),
    # packetdrill mp_join/mp_join_server.pkt: "dss dack4=1 dsn8=3 ssn=0 dll=1 nocs fin" (flags F m M A).
    pytest.param("1e 16 20 1d 00000001 0000000000000003 00000000 0001",
                 Dss(data_ack=1, dsn=3, ssn=0, data_level_length_bytes=1, dsn_64_bit=True, data_fin=True),
                 id="dss-packetdrill-fin"),
    # RFC 8684 3.3.1 / 3.7: the infinite mapping, data-level length 0 and checksum 0.
    pytest.param("1e 10 20 04 00001000 00000000 0000 0000",
                 Dss(dsn=0x1000, ssn=0, data_level_length_bytes=0, checksum=0), id="dss-infinite"),
    # RFC 8684 3.3: all flags set is the 28-byte maximum.
    pytest.param("1e 1c 20 1f 0000000000000007 0000000000000009 0000000b 000c 000d",
                 Dss(7, 9, 11, 12, 13, data_ack_64_bit=True, dsn_64_bit=True, data_fin=True), id="dss-max"),
    # Reserved bits all set (4 in the subtype byte, 3 above the flags) are kept, not cleaned.
    pytest.param("1e 08 2f e1 00000005", Dss(data_ack=5, reserved_bits=0x7F), id="dss-reserved"),
    # RFC 8684 3.4.1, Figure 12: ADD_ADDR in its 8 lengths (IPv4/IPv6 x port x echo).
    pytest.param("1e 10 30 01" + V4_HEX + HMAC8.hex(), AddAddr(1, V4, truncated_hmac=HMAC8), id="add-v4"),
    pytest.param("1e 12 30 01" + V4_HEX + "1f90" + HMAC8.hex(), AddAddr(1, V4, 8080, truncated_hmac=HMAC8),
                 id="add-v4-port"),
    pytest.param("1e 08 31 01" + V4_HEX, AddAddr(1, V4, echo=True), id="add-v4-echo"),
    pytest.param("1e 0a 31 01" + V4_HEX + "1f90", AddAddr(1, V4, 8080, echo=True), id="add-v4-port-echo"),
    pytest.param("1e 1c 30 09" + V6_HEX + HMAC8.hex(), AddAddr(9, V6, truncated_hmac=HMAC8), id="add-v6"),
    pytest.param("1e 1e 30 09" + V6_HEX + "0000" + HMAC8.hex(), AddAddr(9, V6, 0, truncated_hmac=HMAC8),
                 id="add-v6-port-0"),
    pytest.param("1e 14 31 09" + V6_HEX, AddAddr(9, V6, echo=True), id="add-v6-echo"),
    pytest.param("1e 16 31 09" + V6_HEX + "01bb", AddAddr(9, V6, 443, echo=True), id="add-v6-port-echo"),
    # RFC 8684 3.4.2, Figure 13: REMOVE_ADDR, 3 + n bytes.
    pytest.param("1e 04 40 05", RemoveAddr((5,)), id="remove-one"),
    pytest.param("1e 06 40 01 02 03", RemoveAddr((1, 2, 3)), id="remove-three"),
    # RFC 8684 3.3.8, Figure 11: MP_PRIO v1; RFC 6824 3.3.8: v0 may add an address ID.
    pytest.param("1e 03 51", MpPrio(backup=True), id="prio-backup"),
    pytest.param("1e 03 50", MpPrio(backup=False), id="prio-regular"),
    pytest.param("1e 04 51 07", MpPrio(backup=True, address_id=7), id="prio-v0-address-id"),
    # RFC 8684 3.7, Figure 16: MP_FAIL with a full 64-bit DSN.
    pytest.param("1e 0c 60 00 0000000100000002", MpFail(0x100000002), id="fail"),
    # RFC 8684 3.5, Figure 14: MP_FASTCLOSE with the option receiver's key.
    pytest.param("1e 0c 70 00" + KEY_B_HEX, MpFastclose(KEY_B), id="fastclose"),
    pytest.param("1e 0c 7a bc" + KEY_B_HEX, MpFastclose(KEY_B, reserved_bits=0xABC), id="fastclose-reserved"),
    # RFC 8684 3.6, Figure 15: MP_TCPRST, U V W T in the low nibble, T the least significant.
    pytest.param("1e 04 81 06", MpTcpRst(MpTcpRstReason.MIDDLEBOX_INTERFERENCE, MpTcpRstFlags.T),
                 id="tcprst-transient"),
    pytest.param("1e 04 80 01", MpTcpRst(MpTcpRstReason.MPTCP_SPECIFIC_ERROR), id="tcprst-permanent"),
    pytest.param("1e 04 8f 2a", MpTcpRst(0x2A, MpTcpRstFlags(0xF)), id="tcprst-undefined-reason"),
    # RFC 8684 7.2: subtype 0xF is for private use; kept raw.
    pytest.param("1e 03 f0", MpExperimental(), id="experimental-empty"),
    pytest.param("1e 06 f5 010203", MpExperimental(5, b"\x01\x02\x03"), id="experimental"),
]


@pytest.mark.parametrize("hex_text, value", VECTORS)
def test_vector_decodes_and_encodes_byte_exact(hex_text, value):
    data = h(hex_text)
    decoded = decode_mptcp_option(data)
    assert type(decoded) is type(value)
    assert decoded == value
    assert value.encode() == data
    assert decode_mptcp_option(memoryview(data)) == value


@pytest.mark.parametrize("hex_text, value", VECTORS)
def test_truncation_at_every_offset(hex_text, value):
    data = h(hex_text)
    for cut in range(len(data)):
        with pytest.raises(TruncatedError) as info:
            decode_mptcp_option(data[:cut])
        assert info.value.needed_bytes == (len(data) if cut >= 2 else 2)
        assert info.value.offset == cut


@pytest.mark.parametrize("hex_text, value", VECTORS)
def test_shortened_option_with_matching_length_byte_is_refused_or_exact(hex_text, value):
    # A shorter option whose length byte agrees is either a valid shorter form (e.g. the
    # 22-byte MP_CAPABLE inside the 24-byte one) that re-encodes to the same bytes, or malformed.
    data = h(hex_text)
    for cut in range(3, len(data)):
        shortened = bytes((data[0], cut)) + data[2:cut]
        try:
            assert decode_mptcp_option(shortened).encode() == shortened
        except MalformedError as err:
            assert 1 <= err.offset < cut


def test_mp_capable_form_is_derived_from_the_fields():
    assert MpCapable(1, H).form is MpCapableForm.SYN
    assert MpCapable(1, H, KEY_B).form is MpCapableForm.SYN_ACK
    assert MpCapable(0, H, KEY_A).form is MpCapableForm.SYN_OR_SYN_ACK
    assert MpCapable(1, H, KEY_A, KEY_B).form is MpCapableForm.ACK
    assert MpCapable(0, H, KEY_A, KEY_B).form is MpCapableForm.ACK
    assert MpCapable(1, H, KEY_A, KEY_B, 0).form is MpCapableForm.DATA
    assert MpCapable(1, H, KEY_A, KEY_B, 0, 0).form is MpCapableForm.DATA


def test_mp_capable_twelve_bytes_same_layout_in_v0_and_v1():
    # RFC 8684 3.1 vs RFC 6824 3.1: only the version nibble differs; the key is the sender's either way.
    v1, v0 = decode_mptcp_option(h("1e 0c 01 01" + KEY_A_HEX)), decode_mptcp_option(h("1e 0c 00 01" + KEY_A_HEX))
    assert v1.sender_key == v0.sender_key == KEY_A
    assert (v1.form, v0.form) == (MpCapableForm.SYN_ACK, MpCapableForm.SYN_OR_SYN_ACK)


def test_mp_capable_undefined_version_uses_v1_layout():
    assert decode_mptcp_option(h("1e 04 02 01")) == MpCapable(2, H)
    assert decode_mptcp_option(h("1e 16 0f 01" + KEY_A_HEX + KEY_B_HEX + "0001")).version == 15


def test_flags_are_typed_after_construction_from_ints():
    assert isinstance(MpCapable(1, 0x81).flags, MpCapableFlags)
    assert MpCapable(1, 0x81).flags == A | H
    assert MpTcpRst(6).reason is MpTcpRstReason.MIDDLEBOX_INTERFERENCE
    assert type(MpTcpRst(7).reason) is int


# Lengths each subtype may have, read off the RFC figures: (subtype byte, lengths that decode).
LENGTH_TABLE = [
    pytest.param(0x01, {4, 12, 20, 22, 24}, id="mp_capable-v1"),  # RFC 8684 3.1
    pytest.param(0x00, {12, 20}, id="mp_capable-v0"),  # RFC 6824 3.1
    pytest.param(0x10, {12, 16, 24}, id="mp_join"),  # RFC 8684 3.2
    pytest.param(0x30, {16, 18, 28, 30}, id="add_addr"),  # RFC 8684 3.4.1, E=0
    pytest.param(0x31, {8, 10, 20, 22}, id="add_addr-echo"),  # RFC 8684 3.4.1, E=1
    pytest.param(0x40, set(range(4, 256)), id="remove_addr"),  # RFC 8684 3.4.2
    pytest.param(0x50, {3, 4}, id="mp_prio"),  # RFC 8684 3.3.8 (3), RFC 6824 3.3.8 (4)
    pytest.param(0x60, {12}, id="mp_fail"),  # RFC 8684 3.7
    pytest.param(0x70, {12}, id="mp_fastclose"),  # RFC 8684 3.5
    pytest.param(0x80, {4}, id="mp_tcprst"),  # RFC 8684 3.6
    pytest.param(0xF0, set(range(3, 256)), id="mp_experimental"),
]


@pytest.mark.parametrize("subtype_byte, lengths", LENGTH_TABLE)
def test_exactly_the_rfc_lengths_decode(subtype_byte, lengths):
    accepted = set()
    for length in range(3, 256):
        data = bytes((30, length, subtype_byte)) + bytes(length - 3)
        try:
            value = decode_mptcp_option(data)
        except MalformedError as err:
            assert err.offset == 1
            continue
        assert value.encode() == data
        accepted.add(length)
    assert accepted == lengths


def dss_lengths(flags: int) -> set[int]:
    """RFC 8684 3.3, Figure 9: 4 bytes, Data ACK 4|8, mapping DSN 4|8 + SSN 4 + length 2 [+ checksum 2]."""
    ack = (8 if flags & 0x02 else 4) if flags & 0x01 else 0
    if not flags & 0x04:
        return {4 + ack}
    mapping = (8 if flags & 0x08 else 4) + 4 + 2
    return {4 + ack + mapping, 4 + ack + mapping + 2}


@pytest.mark.parametrize("flags", range(32))
def test_dss_lengths_per_flag_combination(flags):
    accepted = set()
    for length in range(4, 40):
        data = bytes((30, length, 0x20, flags)) + bytes(length - 4)
        try:
            value = decode_mptcp_option(data)
        except MalformedError as err:
            assert err.offset == 1
            continue
        assert value.flags == flags and value.encode() == data
        accepted.add(length)
    assert accepted == dss_lengths(flags)


@pytest.mark.parametrize("flags", range(32))
@pytest.mark.parametrize("with_checksum", [False, True])
def test_dss_every_flag_combination_round_trips(flags, with_checksum):
    ack64, dsn64 = bool(flags & 0x02), bool(flags & 0x08)
    mapping = bool(flags & 0x04)
    value = Dss(
        data_ack=((1 << (64 if ack64 else 32)) - 1) if flags & 0x01 else None,
        dsn=((1 << (64 if dsn64 else 32)) - 2) if mapping else None,
        ssn=0xFFFFFFFD if mapping else None,
        data_level_length_bytes=0xFFFC if mapping else None,
        checksum=0xFFFB if mapping and with_checksum else None,
        data_ack_64_bit=ack64,
        dsn_64_bit=dsn64,
        data_fin=bool(flags & 0x10),
    )
    data = value.encode()
    assert data[2:4] == bytes((0x20, flags))
    assert len(data) == data[1] == (max if with_checksum else min)(dss_lengths(flags))
    assert decode_mptcp_option(data) == value


def test_dss_infinite_mapping_property():
    assert Dss(dsn=1, ssn=1, data_level_length_bytes=0).is_infinite_mapping
    assert not Dss(dsn=1, ssn=1, data_level_length_bytes=1).is_infinite_mapping
    assert not Dss(data_ack=1).is_infinite_mapping
    assert Dss(data_ack=1).flags == DssFlags.DATA_ACK_PRESENT


@pytest.mark.parametrize("subtype", range(9, 15))
def test_unassigned_subtypes_are_malformed(subtype):
    with pytest.raises(MalformedError) as info:
        decode_mptcp_option(bytes((30, 4, subtype << 4, 0)))
    assert info.value.offset == 2


@pytest.mark.parametrize("data, error, offset", [
    (b"", TruncatedError, 0),
    (h("1e"), TruncatedError, 1),
    (h("02 04 05 b4"), MalformedError, 0),  # an MSS option is not kind 30
    (h("1e 00"), MalformedError, 1),
    (h("1e 02"), MalformedError, 1),
    (h("1e 04 01"), TruncatedError, 3),
    (h("1e 04 01 01 00"), MalformedError, 4),  # the option ends before the buffer does
])
def test_framing_errors(data, error, offset):
    with pytest.raises(error) as info:
        decode_mptcp_option(data)
    assert info.value.offset == offset


@pytest.mark.parametrize("make", [
    lambda: MpCapable(16, H),
    lambda: MpCapable(1, 0x100),
    lambda: MpCapable(1, H, receiver_key=KEY_B),  # a receiver's key needs the sender's
    lambda: MpCapable(1, H, KEY_A, data_level_length_bytes=1),
    lambda: MpCapable(1, H, KEY_A, KEY_B, checksum=1),
    lambda: MpCapable(0, H),  # v0 SYN carries the key
    lambda: MpCapable(0, H, KEY_A, KEY_B, 1),  # v0 has no MP_CAPABLE with data
    lambda: MpCapable(1, H, 1 << 64),
    lambda: MpCapable(1, H, KEY_A, KEY_B, 1 << 16),
    lambda: MpJoinSyn(256, 0, 0),
    lambda: MpJoinSyn(0, 1 << 32, 0),
    lambda: MpJoinSyn(0, 0, 0, reserved_bits=8),
    lambda: MpJoinSynAck(0, bytes(7), 0),
    lambda: MpJoinAck(bytes(32)),  # the full SHA-256 HMAC must be truncated to 160 bits
    lambda: MpJoinAck(bytes(20), reserved_bits=1 << 12),
    lambda: Dss(dsn=1),  # half a mapping
    lambda: Dss(checksum=0),
    lambda: Dss(data_ack=1 << 32),  # needs data_ack_64_bit
    lambda: Dss(dsn=1 << 32, ssn=0, data_level_length_bytes=0),  # needs dsn_64_bit
    lambda: Dss(reserved_bits=128),
    lambda: AddAddr(1, V4),  # neither an echo nor an HMAC
    lambda: AddAddr(1, V4, echo=True, truncated_hmac=HMAC8),
    lambda: AddAddr(1, V4, truncated_hmac=bytes(9)),
    lambda: AddAddr(1, "192.0.2.1", echo=True),
    lambda: AddAddr(1, V4, 1 << 16, echo=True),
    lambda: RemoveAddr(()),
    lambda: RemoveAddr(tuple(range(253))),  # 3 + 253 > 255
    lambda: RemoveAddr((256,)),
    lambda: MpPrio(True, 256),
    lambda: MpFail(1 << 64),
    lambda: MpFastclose(-1),
    lambda: MpTcpRst(256),
    lambda: MpTcpRst(0, 16),
    lambda: MpExperimental(16),
    lambda: MpExperimental(0, bytes(253)),
])
def test_invalid_values_are_refused(make):
    with pytest.raises(InvalidValueError):
        make()


def test_largest_options_fit_the_length_byte():
    assert len(MpExperimental(0, bytes(252)).encode()) == 255
    assert RemoveAddr(tuple(range(252))).encode()[1] == 255


def test_class_metadata():
    names = [cls.name for cls in ALL_CLASSES]
    assert len(set(names)) == len(names)
    assert all(cls.kind == 30 for cls in ALL_CLASSES)
    assert set(typing.get_args(MptcpOption)) == set(ALL_CLASSES)
    assert [int(s) for s in MptcpSubtype] == [*range(9), 0xF]


# --- crypto ----------------------------------------------------------------------------------

# SHA-256 and SHA-1 of the bytes 01..08, computed with coreutils sha256sum / sha1sum.
SHA256_KEY_A = "66840dda154e8a113c31dd0ad32f7f3a366a80e8136979d8f5a101d3d29d6f72"
SHA1_KEY_A = "dd5783bcf1e9002bc00ad5b83a95ed6e4ebb4ad5"


def test_token_and_idsn_v1():
    # RFC 8684 3.1: token = most significant 32 bits, IDSN = least significant 64 bits of SHA-256(key).
    assert key_token(KEY_A) == 0x66840DDA
    assert key_idsn(KEY_A) == 0xF5A101D3D29D6F72 == int(SHA256_KEY_A[-16:], 16)
    digest = hashlib.sha256(h(KEY_B_HEX)).digest()
    assert key_token(KEY_B) == int.from_bytes(digest[:4], "big")
    assert key_idsn(KEY_B) == int.from_bytes(digest[-8:], "big")


def test_token_and_idsn_v0_use_sha1():
    # RFC 6824 3.1: the same truncations of SHA-1(key).
    assert key_token(KEY_A, version=0) == int(SHA1_KEY_A[:8], 16)
    assert key_idsn(KEY_A, version=0) == int(SHA1_KEY_A[-16:], 16)


# Linux net/mptcp/crypto_test.c (KUnit): the key and message are ASCII strings read as the two
# big-endian 64-bit keys and the two big-endian 32-bit randoms; results are full HMAC-SHA256.
KUNIT_VECTORS = [
    (b"0b0b0b0b0b0b0b0b", b"48692054", "8385e24fb4235ac37556b6b886db106284a1da671699f46db1f235ec622dcafa"),
    (b"aaaaaaaaaaaaaaaa", b"dddddddd", "2c5e219164ff1dca1c4a92318d847bb6b9d44492984e1eb71aff9022f71046e9"),
    (b"0102030405060708", b"cdcdcdcd", "e73b9ba9969969cefb04aa0d6df18ec2fcc075b6f23b4d8c4da736a5dbbc6e7d"),
]


@pytest.mark.parametrize("key, message, expected", KUNIT_VECTORS)
def test_join_hmac_linux_kunit_vectors(key, message, expected):
    def be(raw: bytes) -> int:
        return int.from_bytes(raw, "big")

    assert join_hmac(be(key[:8]), be(key[8:]), be(message[:4]), be(message[4:])).hex() == expected


def test_join_hmac_key_and_message_order():
    # RFC 8684 3.2: HMAC-A = HMAC(Key=(Key-A + Key-B), Msg=(R-A + R-B)); B uses the mirror image.
    r_a, r_b = 0x01020304, 0xA0B0C0D0
    expected_a = hmac.new(h(KEY_A_HEX + KEY_B_HEX), h("01020304 a0b0c0d0"), hashlib.sha256).digest()
    expected_b = hmac.new(h(KEY_B_HEX + KEY_A_HEX), h("a0b0c0d0 01020304"), hashlib.sha256).digest()
    assert join_hmac(KEY_A, KEY_B, r_a, r_b) == expected_a
    assert join_hmac(KEY_B, KEY_A, r_b, r_a) == expected_b != expected_a
    # RFC 6824 3.2: v0 uses HMAC-SHA1, whose 160 bits the third ACK carries whole.
    v0 = join_hmac(KEY_A, KEY_B, r_a, r_b, version=0)
    assert v0 == hmac.new(h(KEY_A_HEX + KEY_B_HEX), h("01020304 a0b0c0d0"), hashlib.sha1).digest()
    assert len(v0) == JOIN_ACK_HMAC_BYTES
    assert MpJoinSynAck(1, expected_b[:JOIN_SYN_ACK_HMAC_BYTES], r_b).encode()[4:12] == expected_b[:8]
    assert MpJoinAck(expected_a[:JOIN_ACK_HMAC_BYTES]).encode()[4:] == expected_a[:20]


@pytest.mark.parametrize("address, port, message_hex", [
    (V4, None, "05" + V4_HEX + "0000"),  # no port: two zero bytes
    (V4, 8080, "05" + V4_HEX + "1f90"),
    (V6, 443, "05" + V6_HEX + "01bb"),
])
def test_add_addr_hmac_is_rightmost_64_bits(address, port, message_hex):
    # RFC 8684 3.4.1: HMAC(Key=(Key-A + Key-B), Msg=(Address ID + IP Address + Port)), rightmost 64 bits.
    full = hmac.new(h(KEY_A_HEX + KEY_B_HEX), h(message_hex), hashlib.sha256).digest()
    result = add_addr_hmac(KEY_A, KEY_B, 5, address, port)
    assert result == full[-8:] and len(result) == ADD_ADDR_HMAC_BYTES
    assert AddAddr(5, address, port, truncated_hmac=result).encode().endswith(full[-8:])


@pytest.mark.parametrize("call", [
    lambda: key_token(KEY_A, version=2),
    lambda: key_idsn(1 << 64),
    lambda: join_hmac(KEY_A, KEY_B, 1 << 32, 0),
    lambda: join_hmac(-1, KEY_B, 0, 0),
    lambda: add_addr_hmac(KEY_A, KEY_B, 256, V4),
])
def test_crypto_refuses_out_of_range_inputs(call):
    with pytest.raises(InvalidValueError):
        call()


# --- properties ------------------------------------------------------------------------------


def uint(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << bits) - 1)


@st.composite
def mp_capables(draw):
    version = draw(uint(4))
    count = draw(st.integers(1, 2) if version == 0 else st.integers(0, 4))
    values = [draw(uint(64)), draw(uint(64)), draw(uint(16)), draw(uint(16))][:count]
    return MpCapable(version, draw(uint(8)), *values)


@st.composite
def dss_options(draw):
    ack64, dsn64, mapping = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    return Dss(
        data_ack=draw(st.none() | uint(64 if ack64 else 32)),
        dsn=draw(uint(64 if dsn64 else 32)) if mapping else None,
        ssn=draw(uint(32)) if mapping else None,
        data_level_length_bytes=draw(uint(16)) if mapping else None,
        checksum=draw(st.none() | uint(16)) if mapping else None,
        data_ack_64_bit=ack64,
        dsn_64_bit=dsn64,
        data_fin=draw(st.booleans()),
        reserved_bits=draw(uint(7)),
    )


@st.composite
def add_addrs(draw):
    echo = draw(st.booleans())
    return AddAddr(
        address_id=draw(uint(8)),
        address=draw(st.ip_addresses()),
        port=draw(st.none() | uint(16)),
        echo=echo,
        truncated_hmac=None if echo else draw(st.binary(min_size=8, max_size=8)),
        reserved_bits=draw(uint(3)),
    )


OPTIONS = st.one_of(
    mp_capables(),
    st.builds(MpJoinSyn, uint(8), uint(32), uint(32), st.booleans(), uint(3)),
    st.builds(MpJoinSynAck, uint(8), st.binary(min_size=8, max_size=8), uint(32), st.booleans(), uint(3)),
    st.builds(MpJoinAck, st.binary(min_size=20, max_size=20), uint(12)),
    dss_options(),
    add_addrs(),
    st.builds(RemoveAddr, st.lists(uint(8), min_size=1, max_size=252).map(tuple), uint(4)),
    st.builds(MpPrio, st.booleans(), st.none() | uint(8), uint(3)),
    st.builds(MpFail, uint(64), uint(12)),
    st.builds(MpFastclose, uint(64), uint(12)),
    st.builds(MpTcpRst, uint(8), uint(4)),
    st.builds(MpExperimental, uint(4), st.binary(max_size=252)),
)


@given(OPTIONS)
def test_round_trip(value):
    data = value.encode()
    assert data[0] == 30 and data[1] == len(data)
    decoded = decode_mptcp_option(data)
    assert type(decoded) is type(value) and decoded == value


@given(OPTIONS)
def test_known_length_equals_the_encoding(value):
    """Options that size themselves (``size_bytes``) or whose type fixes their length are sized
    without encoding by the simulator: the figure must be the encoder's, for every field set."""
    encoded_bytes = len(value.encode())
    if hasattr(value, "size_bytes"):
        assert value.size_bytes == encoded_bytes
    assert options_length_bytes((value,)) == encoded_bytes
    assert options_length_bytes((value, value)) == 2 * encoded_bytes


def test_dss_and_mp_capable_size_themselves():
    # Every DSS layout of RFC 8684 Figure 9 (and a v1 MP_CAPABLE of each section 3.1 length).
    assert Dss().size_bytes == 4
    assert Dss(data_ack=1).size_bytes == 8 and Dss(data_ack=1, data_ack_64_bit=True).size_bytes == 12
    assert Dss(dsn=1, ssn=2, data_level_length_bytes=3).size_bytes == 14
    assert Dss(data_ack=1, dsn=1, ssn=2, data_level_length_bytes=3, checksum=4, data_ack_64_bit=True,
               dsn_64_bit=True).size_bytes == 28
    assert [MpCapable(1, 0x81, *fields).size_bytes for fields in ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4))] \
        == [4, 12, 20, 22, 24]


def check_total(data: bytes) -> None:
    """A value that re-encodes to exactly ``data``, or a WireError pointing inside ``data``."""
    try:
        value = decode_mptcp_option(data)
    except WireError as err:
        assert err.offset is not None and 0 <= err.offset <= len(data)
        return
    assert value.encode() == data


@given(st.binary(max_size=253))
def test_total_on_arbitrary_option_bodies(body):
    check_total(bytes((30, len(body) + 2)) + body)


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=36))
def test_total_on_every_subtype_and_flags_byte(subtype_byte, flags_byte, rest):
    body = bytes((subtype_byte, flags_byte)) + rest
    check_total(bytes((30, len(body) + 2)) + body)


@given(st.binary(max_size=300))
def test_total_on_arbitrary_bytes(data):
    check_total(data)




_DSS_EDGES = [None, 0, 0xFFFF, 0x10000, 2**32 - 1, 2**32, 2**64 - 1, 2**64, -1, True, False, "1"]
_DSS_FIELDS = ["data_ack", "dsn", "ssn", "data_level_length_bytes", "checksum", "reserved_bits"]


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("mapping", [True, False])
@pytest.mark.parametrize("field", _DSS_FIELDS)
@pytest.mark.parametrize("value", _DSS_EDGES)
def test_dss_one_test_fast_path_accepts_exactly_what_the_field_checks_accept(wide, mapping, field, value):
    """Every field at every edge, in a DSS otherwise valid (with or without a mapping, 32- or
    64-bit fields): the one-test path of ``__post_init__`` lets through only what the checks
    one by one accept."""
    fields = dict(data_ack=7, dsn=8 if mapping else None, ssn=9 if mapping else None,
                  data_level_length_bytes=10 if mapping else None, checksum=None,
                  data_ack_64_bit=wide, dsn_64_bit=wide, reserved_bits=0, data_fin=False)
    fields[field] = value
    unchecked = object.__new__(Dss)
    for name, field_value in fields.items():
        object.__setattr__(unchecked, name, field_value)
    try:
        unchecked._check_fields()
        valid = True
    except InvalidValueError:
        valid = False
    if valid:
        assert Dss(**fields) == unchecked
    else:
        with pytest.raises(InvalidValueError):
            Dss(**fields)
