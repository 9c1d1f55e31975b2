"""RFC 8803 Convert codec: RFC vectors, the stream parser, malformed input by class, properties.

Section numbers are those of RFC 8803 unless another RFC is named. The RFC gives no hex dumps;
the vectors below are laid out by hand from its figures.
"""

import dataclasses
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire import convert, jsonform, options
from mpsim.wire.convert import (
    CONVERT_MAGIC,
    CONVERT_VERSION,
    BadMagicError,
    ConnectOption,
    ConnectTlv,
    ConvertErrorCode,
    ConvertMessage,
    ConvertTlvType,
    CookieTlv,
    DuplicateTlvError,
    ErrorTlv,
    ExtendedTcpHeaderTlv,
    InfoTlv,
    SupportedTcpExtensionsTlv,
    TlvFramingError,
    TlvValueError,
    UnknownTlv,
    UnsupportedTlvError,
    UnsupportedVersionError,
    ZeroTotalLengthError,
    connect_address_problem,
    decode_convert,
    encode_convert,
    parse_convert_prefix,
)
from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError, WireError
from mpsim.wire.mptcp import MpCapable, MpCapableFlags
from mpsim.wire.options import (
    FastOpen,
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    Timestamps,
    UnknownOption,
    WindowScale,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def header(total_length_words: int) -> bytes:
    # Section 6.1, Figure 13: Version 1, Total Length, Magic Number 0x2263.
    return bytes((1, total_length_words)) + h("2263")


SERVER = IPv4Address("192.0.2.1")
# Section 6.2.5, Figure 17: Base Connect to 192.0.2.1 port 80, the address IPv4-mapped (RFC 4291).
CONNECT_HEX = "0a05 0050 00000000 00000000 0000ffff c0000201"
# The same, as an Extended Connect of Length 6 whose last word (the option entries) the test supplies.
CONNECT6_HEX = "0a06" + CONNECT_HEX[4:]
# Section 6.2.3, Figure 15.
INFO_HEX = "0101 0000"
# Section 6.2.4, Figure 16: MPTCP (30), TFO (34), SACK-Permitted (4), Timestamps (8).
SUPPORTED_HEX = "1502 0000 1e220408"
HTTP_GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
MP_CAPABLE_SYN_ACK = MpCapable(1, MpCapableFlags(0x81), sender_key=0x0102030405060708)


# --- hand-built vectors -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "hex_text, tlv",
    [
        (INFO_HEX, InfoTlv()),
        (CONNECT_HEX, ConnectTlv(80, SERVER)),
        # Section 6.2.5 Figure 18 and section 7.6: Extended Connect with an empty TFO option
        # (a cookie request the converter relays to the server), Length 6.
        ("0a06 0050 00000000 00000000 0000ffff c0000201 2202 0000",
         ConnectTlv(80, SERVER, (ConnectOption(34),))),
        # Section 6.2.5 Figure 19, section 7.6: a TFO option with an 8-byte cookie, copied verbatim.
        ("0a08 0050 00000000 00000000 0000ffff c0000201 220a 0102030405060708 0000",
         ConnectTlv(80, SERVER, (ConnectOption(34, h("0102030405060708")),))),
        # Sections 7.4 and 7.5: Timestamps and MPTCP listed "without any content" (length 2),
        # which are not valid TCP options; IPv6 destination 2001:db8::1 port 443.
        ("0a06 01bb 20010db8 00000000 00000000 00000001 0802 1e02",
         ConnectTlv(443, IPv6Address("2001:db8::1"), (ConnectOption(8), ConnectOption(30)))),
        (SUPPORTED_HEX, SupportedTcpExtensionsTlv((30, 34, 4, 8))),
        # Section 6.2.4: an odd number of kinds is zero padded to the word.
        ("1502 0000 1e000000", SupportedTcpExtensionsTlv((30,))),
        # Section 6.2.6, Figure 20: the options of a Linux SYN-ACK (MSS 1460, SACK-Permitted,
        # Timestamps, NOP, Window Scale 7), 20 bytes after 2 Unassigned bytes: Length 6.
        ("1406 0000 020405b4 0402 080a 00000001 00000002 01 030307",
         ExtendedTcpHeaderTlv((MaximumSegmentSize(1460), SackPermitted(), Timestamps(1, 2), NoOperation(),
                               WindowScale(7)))),
        # Section 7.6: the server's TFO cookie relayed to the client; 10 option bytes, zero padded.
        ("1404 0000 220a 0102030405060708 0000", ExtendedTcpHeaderTlv((FastOpen(h("0102030405060708")),))),
        # Section 5 Figure 11 with RFC 8684 section 3.1: an MPTCP server's SYN-ACK MP_CAPABLE
        # (v1, flags A and H, the 64-bit key) relayed to the client, which may then bypass the converter.
        ("1404 0000 1e0c0181 0102030405060708", ExtendedTcpHeaderTlv((MP_CAPABLE_SYN_ACK,))),
        # Section 6.2.7, Figure 21: an 8-byte cookie after the Zero field.
        ("1603 0000 a1a2a3a4 a5a6a7a8", CookieTlv(h("a1a2a3a4a5a6a7a8"))),
        # Section 6.2.8: Connection Reset (96), Value MUST be 0.
        ("1e01 6000", ErrorTlv(96)),
        # Section 6.2.8: Destination Unreachable (97), Value = the ICMP Code (3, port unreachable).
        ("1e01 6103", ErrorTlv(97, 3)),
        # Section 6.2.8: Resource Exceeded (64) with a suggested delay of 120 s.
        ("1e01 4078", ErrorTlv(64, 120)),
        # Section 6.2.8: Missing Cookie (3): first Value byte 0, then the computed cookie.
        ("1e03 0300 a1a2a3a4 a5a6a7a8", ErrorTlv(3, 0, h("a1a2a3a4a5a6a7a8"))),
        # Section 6.2.8 Figure 23: Malformed Message (1) echoing the offending message.
        ("1e03 0100 01022263 00000000", ErrorTlv(1, 0, h("01022263 00000000"))),
        # Section 6.2.8: Unsupported TCP Option (33) listing TCP-AO (29), section 7.7.
        ("1e01 211d", ErrorTlv(33, 29)),
        # IANA Convert TLVs 192-255 are private use: such a TLV is kept byte for byte.
        ("c002 0000 deadbeef", UnknownTlv(0xC0, h("0000 deadbeef"))),
    ],
)
def test_tlv_vectors(hex_text, tlv):
    raw = h(hex_text)
    assert tlv.encode() == raw
    assert decode_convert(header(1 + len(raw) // 4) + raw) == ConvertMessage((tlv,))


def test_bare_header_is_a_message():
    # libconvert tests/test_ok.py: the mock converter's SYN-ACK payload is the header alone.
    assert decode_convert(h("01012263")) == ConvertMessage(())
    assert encode_convert(ConvertMessage()) == h("01012263")


def test_client_syn_payload_leaves_the_application_data():
    # Sections 4.2, 6: header, Info, Connect, then the user data right after the TLVs.
    convert_bytes = header(7) + h(INFO_HEX) + h(CONNECT_HEX)
    msg, consumed_bytes = parse_convert_prefix(convert_bytes + HTTP_GET)
    assert msg == ConvertMessage((InfoTlv(), ConnectTlv(80, SERVER)))
    assert consumed_bytes == 28 == msg.total_length_words * 4
    assert (convert_bytes + HTTP_GET)[consumed_bytes:] == HTTP_GET
    assert encode_convert(msg) == convert_bytes


def test_converter_syn_ack_payload():
    # Section 6.2.2: after Info and a successful Connect, Extended TCP Header and Supported TCP
    # Extensions; section 5 Figure 11: the server's MPTCP support would show in the former.
    ext = h("1403 0000 020405b4 0402 0000")
    msg = decode_convert(header(6) + ext + h(SUPPORTED_HEX))
    assert msg.tlv(ExtendedTcpHeaderTlv) == ExtendedTcpHeaderTlv((MaximumSegmentSize(1460), SackPermitted()))
    assert msg.tlv(SupportedTcpExtensionsTlv).kinds == (30, 34, 4, 8)
    assert msg.tlv(CookieTlv) is None


def test_memoryview_and_bytearray_input():
    raw = bytearray(header(2) + h(INFO_HEX) + HTTP_GET)
    assert parse_convert_prefix(memoryview(raw)) == (ConvertMessage((InfoTlv(),)), 8)


def test_code_points_follow_iana():
    # IANA "TCP Convert Protocol Parameters" (section 10), and section 6.1 for version and magic.
    assert (CONVERT_VERSION, CONVERT_MAGIC) == (1, 0x2263)
    assert {t.name: int(t) for t in ConvertTlvType} == {
        "INFO": 1, "CONNECT": 10, "EXTENDED_TCP_HEADER": 20, "SUPPORTED_TCP_EXTENSIONS": 21, "COOKIE": 22, "ERROR": 30}
    assert {c.name: int(c) for c in ConvertErrorCode} == {
        "UNSUPPORTED_VERSION": 0, "MALFORMED_MESSAGE": 1, "UNSUPPORTED_MESSAGE": 2, "MISSING_COOKIE": 3,
        "NOT_AUTHORIZED": 32, "UNSUPPORTED_TCP_OPTION": 33, "RESOURCE_EXCEEDED": 64, "NETWORK_FAILURE": 65,
        "CONNECTION_RESET": 96, "DESTINATION_UNREACHABLE": 97}


def test_tlv_names_are_the_rfc_names_and_unique_across_wire_classes():
    tlv_classes = [InfoTlv, ConnectTlv, ExtendedTcpHeaderTlv, SupportedTcpExtensionsTlv, CookieTlv, ErrorTlv]
    assert [c.name for c in tlv_classes] == [
        "info", "connect", "extended_tcp_header", "supported_tcp_extensions", "cookie", "error"]
    assert [c.tlv_type for c in tlv_classes] == sorted(ConvertTlvType)
    # One JSON registry serves all wire modules, so a TLV name must not shadow an option's.
    tlv_names = {name for name, cls in jsonform.tagged_classes(convert).items() if cls.__module__ == convert.__name__}
    assert tlv_names == {c.name for c in tlv_classes} | {"unknown_tlv"}
    assert not tlv_names & set(jsonform.tagged_classes(options))


def test_error_code_property_and_lists():
    assert ErrorTlv(96).known_code is ConvertErrorCode.CONNECTION_RESET
    assert ErrorTlv(200).known_code is None  # an unassigned code still decodes
    # Section 6.2.8, code 0: supported versions one byte each from the Value field, zero padded.
    versions = ErrorTlv.with_list(ConvertErrorCode.UNSUPPORTED_VERSION, (1, 2))
    assert versions.encode() == h("1e02 0001 02000000")
    assert versions.listed_values == (1, 2)
    # Code 33: five unsupported kinds fill Value plus exactly one further word.
    kinds = ErrorTlv.with_list(ConvertErrorCode.UNSUPPORTED_TCP_OPTION, (29, 253, 254, 200, 201))
    assert kinds.encode() == h("1e02 211d fdfec8c9")
    assert kinds.listed_values == (29, 253, 254, 200, 201)
    with pytest.raises(InvalidValueError):
        ErrorTlv.with_list(0, ())
    with pytest.raises(InvalidValueError):
        ErrorTlv.with_list(33, (29, 0))


def test_reserved_and_unassigned_fields_are_ignored_on_receipt():
    # Sections 6.2.4 and 6.2.6: Unassigned MUST be ignored by the receiver; the Zero fields of
    # Info and Cookie likewise, so that a sloppy peer is not refused for bits that mean nothing.
    msg = decode_convert(header(5) + h("0101 ffff") + h("1401 ffff") + h("1502 abcd 1e000000"))
    assert msg == ConvertMessage((InfoTlv(), ExtendedTcpHeaderTlv(), SupportedTcpExtensionsTlv((30,))))


def test_connect_option_entry_is_the_tcp_option_a_syn_carries():
    # Section 6.2.5: with a value, the converter copies the entire option into its SYN.
    entry = ConnectOption(34, h("0102030405060708"))
    assert options.decode_options(entry.encode()) == (FastOpen(h("0102030405060708")),)


def test_json_form_round_trips_and_names_each_connect_entry_kind():
    msg = ConvertMessage((InfoTlv(), ConnectTlv(80, SERVER, (ConnectOption(34),)), ExtendedTcpHeaderTlv(
        (MaximumSegmentSize(1460), NoOperation())), ErrorTlv(3, 0, h("a1a2a3a4")), UnknownTlv(200)))
    as_json = jsonform.to_jsonable(msg)
    assert as_json["tlvs"][1] == {"type": "connect", "port": 80, "address": "192.0.2.1",
                                  "options": [{"kind": 34, "value": ""}]}
    registry = jsonform.tagged_classes(convert, options)
    assert jsonform.from_jsonable(ConvertMessage, as_json, registry) == msg


# --- connect address policy ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "address, problem",
    [
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this network"),
        ("::", "unspecified"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("192.0.2.1", None),
        ("2001:db8::1", None),
    ],
)
def test_connect_address_problem(address, problem):
    # Section 6.2.5: no multicast, broadcast or host loopback (RFC 6890); the converter answers Error 1.
    found = connect_address_problem(ip_address(address))
    assert (found is None) if problem is None else (problem in found)


def test_a_refused_address_is_still_a_wire_value():
    # It is the converter's decision (Error 1), so the message decodes.
    raw = h("0a05 0050 00000000 00000000 0000ffff 7f000001")
    assert decode_convert(header(6) + raw).tlvs == (ConnectTlv(80, IPv4Address("127.0.0.1")),)


# --- the stream parser: truncation and corruption -----------------------------------------------

FULL_SYN = header(11) + h(INFO_HEX) + h("0a06 0050 00000000 00000000 0000ffff c0000201 2202 0000") + h(
    "1603 0000 a1a2a3a4 a5a6a7a8")


@pytest.mark.parametrize("cut", range(len(FULL_SYN)))
def test_truncation_at_every_offset(cut):
    with pytest.raises(TruncatedError) as info:
        parse_convert_prefix(FULL_SYN[:cut])
    assert info.value.needed_bytes == (4 if cut < 4 else len(FULL_SYN))
    assert info.value.offset == cut
    # The exact-buffer decoder says the same: the bytes end before the message.
    with pytest.raises(TruncatedError):
        decode_convert(FULL_SYN[:cut])


def test_full_syn_parses():
    assert parse_convert_prefix(FULL_SYN)[1] == len(FULL_SYN) == 44


def test_trailing_bytes_are_malformed_for_the_exact_decoder_only():
    with pytest.raises(MalformedError) as info:
        decode_convert(FULL_SYN + b"\x00")
    assert info.value.offset == len(FULL_SYN) and not isinstance(info.value, TruncatedError)


@pytest.mark.parametrize(
    "hex_text, error, offset",
    [
        # Section 6.1: Total Length 0 is invalid and the connection MUST be reset.
        ("01002263", ZeroTotalLengthError, 1),
        # Section 6.1: only version 1 is defined (0 is reserved); the converter answers Error 0.
        ("02012263", UnsupportedVersionError, 0),
        ("00012263", UnsupportedVersionError, 0),
        # Section 6.1: the magic number tells Convert data from application data.
        ("01012264", BadMagicError, 2),
        (HTTP_GET.hex(), BadMagicError, 2),
        # A wrong magic number outranks the version: those bytes are not Convert at all.
        ("02002264", BadMagicError, 2),
        # A future version may give Total Length another meaning: version is checked first.
        ("02002263", UnsupportedVersionError, 0),
        # Section 9: TLVs MUST be framed within Total Length (a 5-word Connect in a 2-word message).
        ("01022263" + CONNECT_HEX, TlvFramingError, 4),
        # Section 6.2.1: a Length of 0 cannot be (Length counts Type and Length themselves).
        ("01022263 01000000", TlvFramingError, 4),
        # Section 6.2.3: Info is exactly 1 word.
        ("01032263 01020000 00000000", TlvFramingError, 4),
        # Section 6.2.5: a Connect TLV is at least 5 words.
        ("01052263 0a040050 00000000 00000000 0000ffff", TlvFramingError, 4),
        # Section 6.2.1: a TLV appears once; a converter answers Error 1, a client resets.
        ("01032263 01010000 01010000", DuplicateTlvError, 8),
        # Section 6.2.2: type 0 is reserved; a converter answers Error 2, a client resets.
        ("01022263 00010000", UnsupportedTlvError, 4),
        ("01022263 00000000", UnsupportedTlvError, 4),
        # Section 6.2.5: an option entry is at least 2 bytes long...
        ("01072263" + CONNECT6_HEX + "2201 0000", TlvValueError, 24),
        # ...and lies within the TLV...
        ("01072263" + CONNECT6_HEX + "2205 0000", TlvValueError, 24),
        # ...and the padding after the entries is zeros.
        ("01072263" + CONNECT6_HEX + "2202 0001", TlvValueError, 27),
        # Sections 6.2.4, 7.1: MSS (2) MUST NOT be announced.
        ("01032263 15020000 02000000", TlvValueError, 4),
        # A zero in the middle of the kinds would be kind 0 (EOL), which is not announced either.
        ("01032263 15020000 1e00221e", TlvValueError, 4),
        # Section 6.2.6: a malformed option in the returned SYN-ACK options (MSS of length 3),
        # reported at the option's own byte.
        ("01032263 14020000 02030500", TlvValueError, 8),
        # The same for an MPTCP option (MP_CAPABLE cannot be 5 bytes, RFC 8684 section 3.1): inside
        # the TLV nothing can complete it, so it is malformed, never truncated. The MPTCP decoder
        # points at the option's length byte; the offset is carried through.
        ("01042263 14030000 1e050181 00000000", TlvValueError, 9),
    ],
)
def test_corruption_gives_the_right_error(hex_text, error, offset):
    with pytest.raises(error) as info:
        parse_convert_prefix(h(hex_text) + HTTP_GET)
    assert info.value.offset == offset
    assert isinstance(info.value, MalformedError)


def test_errors_carry_what_a_state_machine_needs():
    with pytest.raises(UnsupportedVersionError) as version:
        parse_convert_prefix(h("03012263"))
    with pytest.raises(BadMagicError) as magic:
        parse_convert_prefix(h("01014745"))
    with pytest.raises(DuplicateTlvError) as duplicate:
        parse_convert_prefix(header(3) + h("1e016000 1e016100"))
    assert (version.value.version, magic.value.magic, duplicate.value.tlv_type) == (3, 0x4745, 30)
    # Offsets survive re-basing by an enclosing decoder (e.g. the TCP segment holding the payload).
    assert duplicate.value.offset == 8
    assert duplicate.value.shifted(40).offset == 48 and duplicate.value.shifted(40).tlv_type == 30


def test_unknown_non_zero_type_is_returned_for_the_state_machine():
    # Section 6.2.8, Error 2 covers message types the converter does not support; which types
    # those are is the converter's policy, so the parser returns them.
    msg = decode_convert(header(3) + h("6301 0000") + h(INFO_HEX))
    assert msg.tlvs == (UnknownTlv(0x63), InfoTlv())


def test_duplicate_unknown_type_is_a_duplicate():
    with pytest.raises(DuplicateTlvError):
        decode_convert(header(3) + h("6301 0000 6301 0000"))


def test_extended_tcp_header_drops_eol_and_padding():
    # An EOL in the relayed options and the zeros after it read as the TLV's padding.
    msg = decode_convert(header(3) + h("1402 0000 01000000"))
    assert msg.tlvs == (ExtendedTcpHeaderTlv((NoOperation(),)),)


# --- values that cannot be encoded -----------------------------------------------------------------

@pytest.mark.parametrize(
    "build",
    [
        lambda: ConnectTlv(65536, SERVER),
        lambda: ConnectTlv(-1, SERVER),
        lambda: ConnectTlv(80, "192.0.2.1"),
        lambda: ConnectTlv(80, IPv6Address("::ffff:192.0.2.1")),  # use the IPv4Address
        lambda: ConnectTlv(80, IPv6Address("fe80::1%eth0")),
        lambda: ConnectTlv(80, SERVER, [ConnectOption(34)]),
        lambda: ConnectTlv(80, SERVER, (FastOpen(),)),
        lambda: ConnectTlv(80, SERVER, tuple(ConnectOption(200 + i, bytes(253)) for i in range(4))),
        lambda: ConnectOption(0),  # a zero byte starts the padding (section 6.2.5)
        lambda: ConnectOption(256),
        lambda: ConnectOption(34, bytes(254)),
        lambda: ConnectOption(True),
        lambda: SupportedTcpExtensionsTlv((0,)),
        lambda: SupportedTcpExtensionsTlv((1,)),
        lambda: SupportedTcpExtensionsTlv((2,)),
        lambda: SupportedTcpExtensionsTlv((3,)),
        lambda: SupportedTcpExtensionsTlv((5,)),
        lambda: SupportedTcpExtensionsTlv((256,)),
        lambda: SupportedTcpExtensionsTlv([30]),
        lambda: CookieTlv(b"abc"),  # not a whole word: the padding would join the cookie
        lambda: CookieTlv(bytes(1020)),  # 256 words
        lambda: ErrorTlv(256),
        lambda: ErrorTlv(96, 256),
        lambda: ErrorTlv(3, 0, b"abcdef"),
        lambda: ExtendedTcpHeaderTlv((options.EndOfOptionList(),)),
        lambda: ExtendedTcpHeaderTlv((ConnectOption(34),)),
        lambda: UnknownTlv(0),
        lambda: UnknownTlv(ConvertTlvType.COOKIE),
        lambda: UnknownTlv(200, b"\x00"),
        lambda: UnknownTlv(200, bytes(4)),  # would need padding, which decoding would keep
        lambda: ConvertMessage((InfoTlv(), InfoTlv())),
        lambda: ConvertMessage((InfoTlv(),), version=0),
        lambda: ConvertMessage([InfoTlv()]),
        lambda: ConvertMessage((FastOpen(),)),
    ],
)
def test_invalid_values_are_refused(build):
    with pytest.raises(InvalidValueError):
        build()


def test_message_size_limit_is_255_words():
    # Section 6.1: Total Length is 8 bits, so at most 1020 bytes, header included.
    largest = ConvertMessage((CookieTlv(bytes(1012)),))
    assert largest.total_length_words == 255 and len(encode_convert(largest)) == 1020
    with pytest.raises(InvalidValueError):
        ConvertMessage((CookieTlv(bytes(1016)),))  # a 255-word TLV fits its field, not the message
    assert CookieTlv(bytes(1016)).encode()[1] == 255


def test_values_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ErrorTlv(96).code = 97  # type: ignore[misc]


# --- properties -------------------------------------------------------------------------------------

def _words(max_words: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, max_words).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))


addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None),
)
connect_options = st.builds(ConnectOption, st.integers(1, 255), st.binary(max_size=40))
tcp_options = st.one_of(
    st.just(NoOperation()),
    st.just(SackPermitted()),
    st.builds(MaximumSegmentSize, st.integers(0, 0xFFFF)),
    st.builds(WindowScale, st.integers(0, 255)),
    st.builds(Timestamps, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(FastOpen, st.sampled_from([b"", b"abcd", bytes(range(16))])),
    st.builds(UnknownOption, st.sampled_from([6, 19, 28, 69, 200]), st.binary(max_size=10)),
    st.just(MP_CAPABLE_SYN_ACK),
)
tlvs = st.one_of(
    st.just(InfoTlv()),
    st.builds(ConnectTlv, st.integers(0, 0xFFFF), addresses, st.lists(connect_options, max_size=3).map(tuple)),
    st.builds(ExtendedTcpHeaderTlv, st.lists(tcp_options, max_size=6).map(tuple)),
    st.builds(SupportedTcpExtensionsTlv,
              st.lists(st.integers(4, 255).filter(lambda k: k != 5), max_size=12).map(tuple)),
    st.builds(CookieTlv, _words(8)),
    st.builds(ErrorTlv, st.integers(0, 255), st.integers(0, 255), _words(20)),
    st.builds(UnknownTlv, st.integers(1, 255).filter(lambda t: t not in set(ConvertTlvType)),
              _words(10).map(lambda b: b"\x00\x00" + b)),
)
messages = st.builds(ConvertMessage, st.lists(tlvs, max_size=7, unique_by=lambda t: t.tlv_type).map(tuple))


@given(messages, st.binary(max_size=64))
def test_round_trip_and_the_data_after_the_message_is_left(msg, app_data):
    raw = encode_convert(msg)
    assert len(raw) == 4 * msg.total_length_words == 4 * raw[1]
    assert decode_convert(raw) == msg
    assert parse_convert_prefix(raw + app_data) == (msg, len(raw))


@given(messages, st.data())
def test_every_strict_prefix_is_truncated(msg, data):
    raw = encode_convert(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(TruncatedError) as info:
        parse_convert_prefix(raw[:cut])
    assert info.value.needed_bytes == (4 if cut < 4 else len(raw))


def _total(data: bytes) -> None:
    try:
        msg, consumed_bytes = parse_convert_prefix(data)
    except WireError as err:
        assert type(err) is not WireError and not isinstance(err, InvalidValueError)
        return
    assert consumed_bytes == 4 * data[1] <= len(data)
    # Whatever decodes is canonical (ignored fields and surplus padding are not kept).
    assert decode_convert(encode_convert(msg)) == msg


@given(st.binary(max_size=80))
def test_parser_is_total_on_arbitrary_bytes(data):
    _total(data)


@given(st.data())
def test_parser_is_total_behind_a_valid_header(data):
    # Bodies near the announced length, so that the TLV parser (not truncation) gets the bytes.
    total_length_words = data.draw(st.integers(0, 40))
    body_bytes = max(0, 4 * total_length_words - 4)
    _total(header(total_length_words) + data.draw(st.binary(min_size=body_bytes, max_size=body_bytes + 8)))


@given(messages, st.data())
def test_parser_is_total_on_corrupted_messages(msg, data):
    raw = bytearray(encode_convert(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _total(bytes(raw))

