"""MP_CONVERT under MP_EXPERIMENTAL: hand-built vectors, bad layouts, truncation, properties, and
the SYN option budget that made IPv6 destinations impossible beside a Linux SYN.

Layout (mpsim's own, docs/mp-convert.md section 1): the first three bytes are RFC 8684 section 3's
``kind 30 | length | subtype (high nibble)``, subtype 0xF is MP_EXPERIMENTAL (RFC 8684 section
7.2), then the flag nibble I P 6 R, the experiment ID 0xC0, the address, the port.
"""

import ipaddress
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, MalformedError, OptionSpaceError, TruncatedError, WireError
from mpsim.wire.mp_convert import (
    LINUX_SYN_OPTIONS,
    LINUX_SYN_OPTIONS_NO_TIMESTAMPS,
    MP_CAPABLE_SYN,
    MP_CONVERT_EXPERIMENT_ID,
    MpConvert,
    decode_mp_convert,
    fits_in_syn,
    mp_convert_from_option,
    syn_option_bytes,
    syn_options_with_mp_convert,
)
from mpsim.wire.mptcp import MpCapable, MpExperimental, decode_mptcp_option
from mpsim.wire.options import FastOpen, MaximumSegmentSize, NoOperation, decode_options, encode_options

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "mp-convert.md"
V4 = ipaddress.IPv4Address("198.51.100.7")  # RFC 5737 TEST-NET-2: c6 33 64 07
V6 = ipaddress.IPv6Address("2001:db8::1")  # RFC 3849 documentation prefix
V6_HEX = "20010db8 00000000 00000000 00000001"
HTTPS_PORT = 443  # 01 bb
COOKIE_8 = bytes.fromhex("0102030405060708")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# kind 1e | length | subtype F + flags (I=8 P=4 6=2) | experiment ID c0 | address | port
VECTORS = [
    ("1e04 f0 c0", MpConvert(), 0x0),  # "convert this", destination from the IP header
    ("1e04 f8 c0", MpConvert(implicit=True), 0x8),  # transparent mode, do not revert to TCP
    ("1e08 f0 c0 c6336407", MpConvert(V4), 0x0),
    ("1e0a f4 c0 c6336407 01bb", MpConvert(V4, HTTPS_PORT), 0x4),
    ("1e0a fc c0 c6336407 0000", MpConvert(V4, 0, implicit=True), 0xC),
    ("1e14 f2 c0" + V6_HEX, MpConvert(V6), 0x2),
    ("1e16 f6 c0" + V6_HEX + "01bb", MpConvert(V6, HTTPS_PORT), 0x6),
    ("1e16 fe c0" + V6_HEX + "ffff", MpConvert(V6, 0xFFFF, implicit=True), 0xE),
]


@pytest.mark.parametrize("hex_text, value, nibble", VECTORS)
def test_vectors(hex_text, value, nibble):
    wire = h(hex_text)
    assert decode_mp_convert(wire) == value
    assert value.encode() == wire
    assert value.to_option() == MpExperimental(low_nibble=nibble, body=wire[3:])
    assert value.flags == nibble
    assert mp_convert_from_option(decode_mptcp_option(wire)) == value


def test_lengths_are_4_8_10_20_22():
    assert [len(h(hex_text)) for hex_text, _, _ in VECTORS] == [4, 4, 8, 10, 10, 20, 22, 22]


def test_experiment_id_is_the_fourth_byte():
    assert MP_CONVERT_EXPERIMENT_ID == 0xC0
    assert MpConvert(V4).encode()[3] == 0xC0


def test_usable_directly_in_an_option_list_and_decodes_as_mp_experimental():
    listed = encode_options((MaximumSegmentSize(1460), MpConvert(V4, HTTPS_PORT)))
    assert listed == h("020405b4 1e0af4c0 c6336407 01bb 0000")
    decoded = decode_options(listed)
    assert mp_convert_from_option(decoded[1]) == MpConvert(V4, HTTPS_PORT)


@pytest.mark.parametrize("option", [
    MaximumSegmentSize(1460), NoOperation(), MpCapable(version=1, flags=1),
    MpExperimental(low_nibble=0, body=b""),  # no experiment ID at all
    MpExperimental(low_nibble=0x4, body=h("c1 c6336407 01bb")),  # someone else's experiment
    None,
])
def test_other_options_and_experiments_are_not_mp_convert(option):
    assert mp_convert_from_option(option) is None


@pytest.mark.parametrize("hex_text, offset, fragment", [
    ("1e04 f1 c0", 2, "reserved flag R"),
    ("1e06 f4 c0 01bb", 1, "length 6 with flags 0x4, expected 10"),  # a port without an address
    ("1e08 f4 c0 c6336407", 1, "expected 10"),  # P set, no room for the port
    ("1e04 f2 c0", 1, "expected 20"),  # 6 set, no address
    ("1e08 f2 c0 c6336407", 1, "expected 20"),  # 6 set, IPv4-sized address
    ("1e14 f0 c0" + V6_HEX, 1, "expected 4 or 8"),  # 16 bytes of address without 6
    ("1e05 f0 c0 00", 1, "expected 4 or 8"),
    ("1e09 f0 c0 c6336407 00", 1, "expected 4 or 8"),
    ("1e15 f6 c0" + V6_HEX + "01", 1, "expected 22"),
    ("1e03 f0", 3, "no experiment ID"),
    ("1e04 f0 c1", 3, "experiment ID 0xc1"),
    ("1e04 0101", 2, "not MP_EXPERIMENTAL"),  # MP_CAPABLE v1 SYN (RFC 8684 section 3.1)
    ("0204 05b4", 0, "kind 2"),  # an MSS option
    ("1e04 f8 c0 00", 4, "after"),  # one byte too many
])
def test_malformed(hex_text, offset, fragment):
    with pytest.raises(MalformedError) as err:
        decode_mp_convert(h(hex_text))
    assert err.value.offset == offset
    assert fragment in err.value.message


def test_malformed_mp_convert_is_refused_from_an_option_too():
    with pytest.raises(MalformedError):
        mp_convert_from_option(MpExperimental(low_nibble=0x4, body=h("c0 01bb")))


@pytest.mark.parametrize("hex_text", [hex_text for hex_text, _, _ in VECTORS])
def test_truncation_at_every_offset(hex_text):
    # A lone option is a buffer that more bytes would complete, as in decode_mptcp_option.
    wire = h(hex_text)
    for cut in range(len(wire)):
        with pytest.raises(TruncatedError) as err:
            decode_mp_convert(wire[:cut])
        assert err.value.needed_bytes == (2 if cut < 2 else len(wire)), cut


@pytest.mark.parametrize("kwargs", [
    {"port": 443},  # a port without an address
    {"address": V4, "port": 65536},
    {"address": V4, "port": -1},
    {"address": V4, "port": True},
    {"address": "198.51.100.7"},
    {"address": ipaddress.IPv6Address("fe80::1%eth0")},
    {"implicit": 1},
])
def test_invalid_values_are_refused(kwargs):
    with pytest.raises(InvalidValueError):
        MpConvert(**kwargs)


addresses = st.one_of(st.none(), st.ip_addresses(v=4), st.ip_addresses(v=6))


@st.composite
def mp_converts(draw):
    address = draw(addresses)
    port = None if address is None else draw(st.none() | st.integers(0, 0xFFFF))
    return MpConvert(address, port, draw(st.booleans()))


@given(mp_converts())
def test_round_trip(value):
    wire = value.encode()
    assert decode_mp_convert(wire) == value
    assert len(wire) == 4 + (0 if value.address is None else len(value.address.packed)) + (value.port is not None) * 2


@given(mp_converts())
def test_only_ipv6_destinations_miss_the_linux_syn_budget(value):
    # 20 (Linux SYN) + 4 (MP_CAPABLE) leaves 16 bytes: every IPv4 form fits, no IPv6 form does.
    assert fits_in_syn(value) == (value.address is None or value.address.version == 4)


@st.composite
def near_mp_convert(draw):
    # A valid option with one byte overwritten and maybe a byte added or cut: reaches every check.
    wire = bytearray(draw(mp_converts()).encode())
    wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    return bytes(wire) + draw(st.binary(max_size=1)) if draw(st.booleans()) else bytes(wire[:-1])


@given(st.one_of(st.binary(max_size=40), near_mp_convert()))
def test_decoding_is_total_and_byte_exact(data):
    try:
        value = decode_mp_convert(data)
    except WireError:
        return
    assert value.encode() == data


# --- The option budget (RFC 9293 section 3.1: at most 40 bytes of options) ------------------

def test_linux_syn_vectors():
    # mss 1460 | sackOK | TS val ecr | nop | wscale 7 (docs/protocols.md 3.6 [I]; RFC 9293 3.2,
    # RFC 2018 section 2, RFC 7323 sections 2.2 and 3.2).
    assert encode_options(LINUX_SYN_OPTIONS) == h("020405b4 0402 080a 12345678 00000000 01 030307")
    # mss | nop nop sackOK | nop wscale 7, with net.ipv4.tcp_timestamps=0.
    assert encode_options(LINUX_SYN_OPTIONS_NO_TIMESTAMPS) == h("020405b4 0101 0402 01 030307")
    assert MP_CAPABLE_SYN.encode() == h("1e040101")  # RFC 8684 section 3.1, v1 SYN


def test_linux_syn_with_mp_capable_is_24_bytes():
    assert len(encode_options((*LINUX_SYN_OPTIONS, MP_CAPABLE_SYN))) == 24


def test_ipv4_with_port_fits_as_34_bytes_padded_to_36():
    options = syn_options_with_mp_convert(MpConvert(V4, HTTPS_PORT))
    assert len(encode_options(options, pad=False)) == 34
    assert encode_options(options)[20:] == h("1e040101 1e0af4c0 c6336407 01bb 0000")


@pytest.mark.parametrize("value, base, requested_bytes", [
    (MpConvert(V6, HTTPS_PORT), LINUX_SYN_OPTIONS, 48),  # 46 bytes
    (MpConvert(V6), LINUX_SYN_OPTIONS, 44),  # 44 bytes, even without the port
    (MpConvert(V4, HTTPS_PORT), (*LINUX_SYN_OPTIONS, FastOpen(COOKIE_8)), 44),  # 20 + 10 + 4 + 10
])
def test_these_do_not_fit(value, base, requested_bytes):
    with pytest.raises(OptionSpaceError) as err:
        encode_options(syn_options_with_mp_convert(value, base))
    assert err.value.requested_bytes == requested_bytes
    assert not fits_in_syn(value, base)


def test_ipv6_with_port_fits_without_timestamps():
    options = syn_options_with_mp_convert(MpConvert(V6, HTTPS_PORT), LINUX_SYN_OPTIONS_NO_TIMESTAMPS)
    assert len(encode_options(options, pad=False)) == 38  # 12 + 4 + 22
    assert len(encode_options(options)) == 40
    assert fits_in_syn(MpConvert(V6, HTTPS_PORT), LINUX_SYN_OPTIONS_NO_TIMESTAMPS)


# The table of docs/mp-convert.md: each row is recomputed here and must appear there verbatim.
NO_TS, TFO8 = LINUX_SYN_OPTIONS_NO_TIMESTAMPS, (FastOpen(COOKIE_8),)
BUDGET_ROWS = [
    ("Linux SYN + MP_CAPABLE + MP_CONVERT implicit only", LINUX_SYN_OPTIONS, MpConvert(implicit=True), 28, 28),
    ("Linux SYN + MP_CAPABLE + MP_CONVERT IPv4", LINUX_SYN_OPTIONS, MpConvert(V4), 32, 32),
    ("Linux SYN + MP_CAPABLE + MP_CONVERT IPv4 + port", LINUX_SYN_OPTIONS, MpConvert(V4, HTTPS_PORT), 34, 36),
    ("Linux SYN + MP_CAPABLE + MP_CONVERT IPv6", LINUX_SYN_OPTIONS, MpConvert(V6), 44, 44),
    ("Linux SYN + MP_CAPABLE + MP_CONVERT IPv6 + port", LINUX_SYN_OPTIONS, MpConvert(V6, HTTPS_PORT), 46, 48),
    ("Linux SYN + TFO 8-byte cookie + MP_CAPABLE + MP_CONVERT implicit only", LINUX_SYN_OPTIONS + TFO8,
     MpConvert(implicit=True), 38, 40),
    ("Linux SYN + TFO 8-byte cookie + MP_CAPABLE + MP_CONVERT IPv4", LINUX_SYN_OPTIONS + TFO8, MpConvert(V4), 42, 44),
    ("Linux SYN + TFO 8-byte cookie + MP_CAPABLE + MP_CONVERT IPv4 + port", LINUX_SYN_OPTIONS + TFO8,
     MpConvert(V4, HTTPS_PORT), 44, 44),
    ("Linux SYN without TS + MP_CAPABLE + MP_CONVERT IPv6", NO_TS, MpConvert(V6), 36, 36),
    ("Linux SYN without TS + MP_CAPABLE + MP_CONVERT IPv6 + port", NO_TS, MpConvert(V6, HTTPS_PORT), 38, 40),
    ("Linux SYN without TS + TFO 8-byte cookie + MP_CAPABLE + MP_CONVERT IPv4 + port", NO_TS + TFO8,
     MpConvert(V4, HTTPS_PORT), 36, 36),
    ("Linux SYN without TS + TFO 8-byte cookie + MP_CAPABLE + MP_CONVERT IPv6 + port", NO_TS + TFO8,
     MpConvert(V6, HTTPS_PORT), 48, 48),
]


@pytest.mark.parametrize("label, base, value, raw_bytes, padded_bytes", BUDGET_ROWS, ids=[r[0] for r in BUDGET_ROWS])
def test_budget_table_matches_code_and_doc(label, base, value, raw_bytes, padded_bytes):
    options = syn_options_with_mp_convert(value, base)
    assert len(encode_options(options, limit_bytes=None, pad=False)) == raw_bytes
    assert syn_option_bytes(value, base) == padded_bytes
    fits = fits_in_syn(value, base)
    assert fits == (padded_bytes <= 40)
    row = f"| {label} | {len(value.encode())} | {raw_bytes} | {padded_bytes} | {'yes' if fits else '**no**'} |"
    assert row in DOC.read_text(), f"docs/mp-convert.md lacks the row:\n{row}"
