"""TCP option list codec: RFC vectors, padding, the 40-byte budget, bad lengths, properties."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, MalformedError, OptionSpaceError, WireError
from mpsim.wire.mptcp import MpCapable, MpCapableFlags
from mpsim.wire.options import (
    EXID_FAST_OPEN,
    EndOfOptionList,
    Experimental,
    FastOpen,
    MaximumSegmentSize,
    NoOperation,
    Sack,
    SackPermitted,
    TcpOptionKind,
    Timestamps,
    UnknownOption,
    WindowScale,
    canonical_options,
    decode_options,
    encode_options,
    option_space_bytes,
)

EOL, NOP = EndOfOptionList(), NoOperation()
COOKIE_8 = bytes.fromhex("0102030405060708")
COOKIE_16 = bytes(range(0x10, 0x20))

# Linux SYN: mss 1460, sackOK, TS, nop, wscale 7 = 20 bytes. Layouts: MSS RFC 9293 section 3.2,
# SACK-Permitted RFC 2018 section 2, Timestamps RFC 7323 section 3.2, Window Scale RFC 7323
# section 2.2; the order is the one Linux sends (docs/protocols.md section 3.6 / 5, [I]).
LINUX_SYN_HEX = "020405b4 0402 080a 12345678 00000000 01 030307"
LINUX_SYN = (MaximumSegmentSize(1460), SackPermitted(), Timestamps(0x12345678, 0), NOP, WindowScale(7))


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- hand-built vectors --------------------------------------------------------------------------

def test_linux_syn_vector():
    assert decode_options(h(LINUX_SYN_HEX)) == LINUX_SYN
    assert encode_options(LINUX_SYN) == h(LINUX_SYN_HEX)
    assert option_space_bytes(LINUX_SYN) == 20


@pytest.mark.parametrize(
    "hex_text, option",
    [
        # RFC 7413 section 4.1.1: an empty cookie (Length 2) is a cookie request.
        ("2202", FastOpen()),
        # RFC 7413 section 4.1.1: Length = 2 + cookie, here an 8-byte cookie.
        ("220a 0102030405060708", FastOpen(COOKIE_8)),
        # RFC 7413 section 4.1.1: the bounds of a real cookie, 4 and 16 bytes.
        ("2206 aabbccdd", FastOpen(h("aabbccdd"))),
        ("2212" + COOKIE_16.hex(), FastOpen(COOKIE_16)),
        # RFC 7413 section 4.1.1 / RFC 6994 section 3: pre-IANA Fast Open, kind 254, ExID 0xF989.
        ("fe0c f989 0102030405060708", Experimental(254, h("f989") + COOKIE_8)),
        # RFC 6994 section 3: an experiment with a 2-byte ExID and no data of its own.
        ("fd04 abcd", Experimental(253, h("abcd"))),
        ("fd02", Experimental(253, b"")),
        # RFC 2018 section 3: one and four SACK blocks (length 8n + 2).
        ("050a 00000064 000000c8", Sack(((100, 200),))),
        ("0522" + "00000001 00000002" * 3 + "fffffff0 00000010", Sack(((1, 2),) * 3 + ((0xFFFFFFF0, 0x10),))),
        # RFC 7323 section 2.3: shift counts above 14 are clamped by the receiver, not the codec.
        ("03030f", WindowScale(15)),
        ("0303ff", WindowScale(255)),
        ("0204ffff", MaximumSegmentSize(65535)),
        ("080a ffffffff 00000001", Timestamps(0xFFFFFFFF, 1)),
    ],
)
def test_single_option_vectors(hex_text, option):
    assert decode_options(h(hex_text)) == (option,)
    assert option.encode() == h(hex_text)


def test_fast_open_cookie_request_flag():
    assert FastOpen().is_cookie_request
    assert not FastOpen(COOKIE_8).is_cookie_request


def test_linux_tfo_syn_with_nop_aligned_cookie():
    # Linux puts NOP NOP before an 8-byte cookie so that the list stays word-aligned (digest 4.1).
    vector = h(LINUX_SYN_HEX + "0101 220a" + COOKIE_8.hex())
    assert decode_options(vector) == LINUX_SYN + (NOP, NOP, FastOpen(COOKIE_8))
    assert encode_options(decode_options(vector)) == vector


def test_mptcp_options_are_decoded_by_the_mptcp_codec():
    # RFC 8684 section 3.1: v1 MP_CAPABLE is 4 bytes on the SYN (no key), 12 on the SYN/ACK.
    # A Linux SYN plus MP_CAPABLE is 24 bytes (docs/protocols.md section 3.6).
    vector = h(LINUX_SYN_HEX + "1e04 0101" + "1e0c 0101 0102030405060708")
    syn, syn_ack = MpCapable(1, MpCapableFlags.H), MpCapable(1, MpCapableFlags.H, sender_key=0x0102030405060708)
    assert decode_options(vector) == LINUX_SYN + (syn, syn_ack)
    assert encode_options(LINUX_SYN + (syn, syn_ack)) == vector


@pytest.mark.parametrize(
    "hex_text, offset",
    [
        ("0101 1e03 90", 4),  # subtype 0x9 is unassigned (RFC 8684 section 7.2): the subtype byte
        ("01 1e02", 2),  # too short to hold a subtype: the length byte
    ],
)
def test_mptcp_errors_are_shifted_to_the_list_offset(hex_text, offset):
    with pytest.raises(MalformedError) as caught:
        decode_options(h(hex_text))
    assert caught.value.offset == offset


def test_experimental_exid():
    assert Experimental(254, h("f989") + COOKIE_8).exid == EXID_FAST_OPEN == 0xF989
    assert Experimental(253, h("ab")).exid is None
    assert Experimental(253, b"").exid is None


@pytest.mark.parametrize(
    "hex_text",
    [
        "2203 aa",  # odd length: RFC 7413 section 4.1.1 says the length MUST be even
        "2204 aabb",  # a 2-byte cookie: below the 4-byte minimum
        "2207 0102030405",  # a 5-byte cookie: odd
        "2214" + "00" * 18,  # an 18-byte cookie: above the 16-byte maximum
    ],
)
def test_fast_open_with_invalid_length_is_kept_as_unknown(hex_text):
    # RFC 7413 section 4.1.1: such an option MUST be ignored, so it must not fail the list.
    raw = h(hex_text)
    assert decode_options(raw) == (UnknownOption(34, raw[2:]),)
    assert encode_options(decode_options(raw), pad=False) == raw


@pytest.mark.parametrize(
    "hex_text, kind",
    [("c805 010203", 200), ("1d06 0102aabb", 29), ("ff02", 255), ("0603 00", 6)],
)
def test_unknown_kind_preserved_byte_for_byte(hex_text, kind):
    # RFC 9293 section 3.1 (MUST-5): unknown options with a length byte are skipped, not refused.
    raw = h(hex_text)
    (option,) = decode_options(raw)
    assert option == UnknownOption(kind, raw[2:])
    assert option.encode() == raw


def test_eol_ends_the_list_and_what_follows_is_not_read():
    # RFC 9293 section 3.1: after EOL comes padding; "02 01" would otherwise be a bad length.
    assert decode_options(h("01 00 0201")) == (NOP, EOL)
    assert decode_options(h("00")) == (EOL,)
    assert decode_options(b"") == ()


def test_memoryview_input():
    assert decode_options(memoryview(h(LINUX_SYN_HEX))) == LINUX_SYN


def test_kind_numbers_follow_iana():
    assert {k.name: int(k) for k in TcpOptionKind} == {
        "EOL": 0, "NOP": 1, "MSS": 2, "WINDOW_SCALE": 3, "SACK_PERMITTED": 4, "SACK": 5, "TIMESTAMPS": 8,
        "TCP_AO": 29, "MPTCP": 30, "TFO": 34, "EXPERIMENTAL_1": 253, "EXPERIMENTAL_2": 254,
    }


def test_option_names_are_unique():
    classes = [EndOfOptionList, NoOperation, MaximumSegmentSize, WindowScale, SackPermitted, Sack,
               Timestamps, FastOpen, Experimental, UnknownOption]
    names = [cls.name for cls in classes]
    assert len(set(names)) == len(names)


# --- padding and the option budget ---------------------------------------------------------------

@pytest.mark.parametrize(
    "options, hex_text",
    [
        # RFC 9293 section 3.1: the list is zero-filled to a 32-bit boundary; the first zero is EOL.
        ((MaximumSegmentSize(1460), WindowScale(7)), "020405b4 030307 00"),
        ((FastOpen(),), "2202 0000"),
        ((NOP,), "01 000000"),
        ((WindowScale(0), EOL), "030300 00"),
        ((EOL,), "00000000"),
        ((), ""),
    ],
)
def test_padding(options, hex_text):
    assert encode_options(options) == h(hex_text)
    assert option_space_bytes(options) == len(h(hex_text))
    assert decode_options(h(hex_text)) == canonical_options(options)


def test_unaligned_list_decodes_with_a_trailing_eol():
    options = (MaximumSegmentSize(1460), WindowScale(7))
    assert canonical_options(options) == options + (EOL,)
    assert canonical_options(LINUX_SYN) == LINUX_SYN


def test_no_padding_on_request():
    assert encode_options((MaximumSegmentSize(1460), WindowScale(7)), pad=False) == h("020405b4 030307")


def test_eol_must_be_last():
    with pytest.raises(InvalidValueError):
        encode_options((EOL, NOP))
    with pytest.raises(InvalidValueError):
        option_space_bytes((NOP, EOL, NOP))


# Linux SYN (20) + NOP NOP + a 16-byte TFO cookie (18): exactly the 40 bytes a header holds.
FULL_40 = LINUX_SYN + (NOP, NOP, FastOpen(COOKIE_16))


def test_exactly_40_bytes_fit():
    assert len(encode_options(FULL_40)) == 40
    assert decode_options(encode_options(FULL_40)) == FULL_40


def test_41_bytes_do_not_fit():
    # RFC 9293 section 3.1: the data offset caps the header at 60 bytes, so options at 40.
    over = FULL_40 + (NOP,)
    with pytest.raises(OptionSpaceError) as caught:
        encode_options(over)
    assert caught.value.requested_bytes == 44
    assert "44" in str(caught.value)
    assert option_space_bytes(over) == 44
    assert len(encode_options(over, limit_bytes=None)) == 44


def test_custom_limit():
    assert encode_options(LINUX_SYN, limit_bytes=20) == h(LINUX_SYN_HEX)
    with pytest.raises(OptionSpaceError) as caught:
        encode_options(LINUX_SYN, limit_bytes=16)
    assert (caught.value.requested_bytes, caught.value.limit_bytes) == (20, 16)


# --- bad lengths and truncation ------------------------------------------------------------------

@pytest.mark.parametrize("hex_text", ["0800", "0801", "c800", "fd01", "1e00", "2201", "0500"])
def test_length_below_two_is_malformed(hex_text):
    # RFC 9293 section 3.1 (MUST-7): an illegal length such as 0 must be handled, not looped on.
    with pytest.raises(MalformedError) as caught:
        decode_options(h(hex_text))
    assert caught.value.offset == 0
    assert f"kind {h(hex_text)[0]} length {h(hex_text)[1]}" in str(caught.value)


def test_error_offset_points_at_the_offending_option():
    with pytest.raises(MalformedError) as caught:
        decode_options(h("0101 030307 c801"))
    assert caught.value.offset == 5


@pytest.mark.parametrize(
    "hex_text, message",
    [
        ("0203 05", "MSS option length 3, expected 4"),
        ("0205 05b400", "MSS option length 5, expected 4"),
        ("0302", "Window Scale option length 2, expected 3"),
        ("0304 0700", "Window Scale option length 4, expected 3"),
        ("0403 00", "SACK-Permitted option length 3, expected 2"),
        ("0808 000000000000", "Timestamps option length 8, expected 10"),
        ("0502", "SACK option length 2"),
        ("0506 00000000", "SACK option length 6"),
        ("050b" + "00" * 9, "SACK option length 11"),
        ("052a" + "00" * 40, "SACK option length 42"),  # five blocks: RFC 2018 section 3 allows 4
    ],
)
def test_known_kind_with_wrong_length_is_malformed(hex_text, message):
    with pytest.raises(MalformedError, match=message) as caught:
        decode_options(h("01" + hex_text))
    assert caught.value.offset == 1


def test_option_running_past_the_buffer_is_malformed():
    with pytest.raises(MalformedError, match="runs past the end") as caught:
        decode_options(h("01 c80a 0000"))
    assert caught.value.offset == 1


TRUNCATION_VECTOR = h(LINUX_SYN_HEX + "0101 220a" + COOKIE_8.hex())
# (start, end) of each option in TRUNCATION_VECTOR.
TRUNCATION_SPANS = [(0, 4), (4, 6), (6, 16), (16, 17), (17, 20), (20, 21), (21, 22), (22, 32)]


@pytest.mark.parametrize("cut", range(len(TRUNCATION_VECTOR)))
def test_truncation_at_every_offset(cut):
    # Inside a TCP header the option block has a fixed length: a cut option is malformed
    # (wire-conventions.md), and the error names where that option starts.
    full = decode_options(TRUNCATION_VECTOR)
    complete = [i for i, (_, end) in enumerate(TRUNCATION_SPANS) if end <= cut]
    if cut in {0} | {end for _, end in TRUNCATION_SPANS}:
        assert decode_options(TRUNCATION_VECTOR[:cut]) == full[: len(complete)]
    else:
        with pytest.raises(MalformedError) as caught:
            decode_options(TRUNCATION_VECTOR[:cut])
        assert caught.value.offset == TRUNCATION_SPANS[len(complete)][0]


# --- construction ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "build",
    [
        lambda: MaximumSegmentSize(-1),
        lambda: MaximumSegmentSize(65536),
        lambda: MaximumSegmentSize(True),
        lambda: WindowScale(256),
        lambda: Sack(()),
        lambda: Sack(((1, 2),) * 5),
        lambda: Sack([(1, 2)]),
        lambda: Sack(((1,),)),
        lambda: Sack(((0, 1 << 32),)),
        lambda: Timestamps(1 << 32, 0),
        lambda: Timestamps(0, -1),
        lambda: FastOpen(b"ab"),
        lambda: FastOpen(b"abc"),
        lambda: FastOpen(b"x" * 18),
        lambda: FastOpen("abcd"),
        lambda: Experimental(252, b""),
        lambda: Experimental(30, b""),
        lambda: Experimental(254, b"x" * 254),
        lambda: UnknownOption(256, b""),
        lambda: UnknownOption(-1, b""),
        lambda: UnknownOption(200, b"x" * 254),
        lambda: UnknownOption(34, b""),
        lambda: UnknownOption(34, COOKIE_8),
    ],
)
def test_invalid_values_are_refused(build):
    with pytest.raises(InvalidValueError):
        build()


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4, 5, 8, 30, 253, 254])
def test_unknown_option_refuses_kinds_with_a_class(kind):
    with pytest.raises(InvalidValueError):
        UnknownOption(kind, b"\x00\x00")


def test_longest_option_data_encodes():
    # 253 data bytes make the length byte 255, its largest value.
    assert Experimental(254, b"x" * 253).encode()[:2] == h("feff")
    assert UnknownOption(200, b"x" * 253).encode()[:2] == h("c8ff")


# --- properties ----------------------------------------------------------------------------------

CLASSED_KINDS = {0, 1, 2, 3, 4, 5, 8, 30, 34, 253, 254}
uint32 = st.integers(0, 2**32 - 1)
cookies = st.one_of(st.just(b""), st.integers(2, 8).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n)))
bad_cookies = st.binary(max_size=30).filter(lambda c: not (c == b"" or (4 <= len(c) <= 16 and len(c) % 2 == 0)))
options_without_eol = st.one_of(
    st.just(NOP),
    st.builds(MaximumSegmentSize, st.integers(0, 65535)),
    st.builds(WindowScale, st.integers(0, 255)),
    st.just(SackPermitted()),
    st.builds(Sack, st.lists(st.tuples(uint32, uint32), min_size=1, max_size=4).map(tuple)),
    st.builds(Timestamps, uint32, uint32),
    st.builds(FastOpen, cookies),
    st.builds(Experimental, st.sampled_from([253, 254]), st.binary(max_size=30)),
    st.builds(UnknownOption, st.integers(0, 255).filter(lambda k: k not in CLASSED_KINDS), st.binary(max_size=30)),
    st.builds(UnknownOption, st.just(34), bad_cookies),
    st.builds(MpCapable, st.just(1), st.just(MpCapableFlags.H), st.one_of(st.none(), st.integers(0, 2**64 - 1))),
)
option_lists = st.tuples(st.lists(options_without_eol, max_size=10), st.booleans()).map(
    lambda parts: tuple(parts[0]) + ((EOL,) if parts[1] else ())
)


@given(option_lists)
def test_round_trip(options):
    assert decode_options(encode_options(options, limit_bytes=None)) == canonical_options(options)


@given(option_lists)
def test_budget_is_the_padded_length(options):
    space = option_space_bytes(options)
    assert space % 4 == 0 and space == len(encode_options(options, limit_bytes=None))
    if space <= 40:
        assert len(encode_options(options)) == space
    else:
        with pytest.raises(OptionSpaceError) as caught:
            encode_options(options)
        assert caught.value.requested_bytes == space


# Mostly well-formed lists with random bytes spliced in, so that decoding gets past the first option.
option_bytes = st.one_of(
    st.binary(max_size=60),
    st.lists(st.one_of(options_without_eol.map(lambda o: o.encode()), st.binary(max_size=4)), max_size=8).map(b"".join),
)


@given(option_bytes)
def test_decoding_is_total_and_byte_exact(data):
    try:
        decoded = decode_options(data)
    except WireError as err:
        assert isinstance(err, MalformedError) and 0 <= err.offset < len(data)
        return
    reencoded = encode_options(decoded, limit_bytes=None, pad=False)
    if decoded and decoded[-1] == EOL:
        assert data.startswith(reencoded)
    else:
        assert reencoded == data
