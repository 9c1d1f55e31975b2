"""The JSON form of wire values (round trips for every kind, error paths, derived fields) and the
text forms of bytes (hex as users paste it, hex dumps)."""

import dataclasses
import importlib
import ipaddress
import json
import pkgutil
import types
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

# Strategies of the codec tests (tests/wire has no __init__.py, so pytest puts it on sys.path).
from test_convert import messages as convert_messages
from test_mp_convert import mp_converts
from test_mptcp import OPTIONS as mptcp_options
from test_options import option_lists
from test_segment import packets
from test_socks5 import addresses as socks5_addresses
from test_syn_payload import signals as syn_payload_signals

import mpsim.wire
from mpsim.wire import jsonform
from mpsim.wire.convert import ConnectTlv, ConvertMessage, ExtendedTcpHeaderTlv, encode_convert
from mpsim.wire.jsonform import JsonFormError, format_json, from_jsonable, hex_dump, hex_to_bytes, to_jsonable
from mpsim.wire.mp_convert import MpConvert
from mpsim.wire.mptcp import MpPrio, MptcpOption
from mpsim.wire.options import MaximumSegmentSize
from mpsim.wire.segment import IpPacket
from mpsim.wire.socks5 import Socks5Greeting, Socks5MethodSelection, Socks5ReplyMessage, Socks5Request
from mpsim.wire.syn_payload import SynPayloadOption, SynPayloadSignal


def through_json(hint, value):
    """``value`` to JSON text and back, as the CLI does it."""
    return from_jsonable(hint, json.loads(json.dumps(to_jsonable(value))))


# --- round trips: every kind of value ------------------------------------------------------------

socks5_messages = st.one_of(
    st.builds(Socks5Greeting, st.lists(st.integers(0, 255), min_size=1, max_size=5).map(tuple)),
    st.builds(Socks5MethodSelection, st.integers(0, 255)),
    # A domain name spelled like an IPv4 address reads back as the address: the JSON form has one
    # text field for both, and RFC 1928 has ATYP 1 for addresses. Such names are left out.
    st.builds(Socks5Request, socks5_addresses.filter(lambda a: not _is_ip_text(a)), st.integers(0, 0xFFFF)),
    st.builds(Socks5ReplyMessage, st.integers(0, 255), socks5_addresses.filter(lambda a: not _is_ip_text(a)),
              st.integers(0, 0xFFFF)),
)


def _is_ip_text(address) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return isinstance(address, str)


@pytest.mark.parametrize("hint,values", [
    (tuple[SynPayloadOption, ...], option_lists),
    (MptcpOption, mptcp_options),
    (MpConvert, mp_converts()),
    (ConvertMessage, convert_messages),
    (SynPayloadSignal, syn_payload_signals),
    (IpPacket, packets),
    (Socks5Greeting | Socks5MethodSelection | Socks5Request | Socks5ReplyMessage, socks5_messages),
], ids=["options", "mptcp", "mp-convert", "convert", "syn-payload", "segment", "socks5"])
def test_every_kind_round_trips_through_json(hint, values):
    @given(values)
    def check(value):
        back = through_json(hint, value)
        assert back == value and type(back) is type(value)

    check()


def _tagged_classes_of_every_wire_module() -> dict[str, type]:
    found = {}
    for info in pkgutil.iter_modules(mpsim.wire.__path__):
        module = importlib.import_module(f"mpsim.wire.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and "name" in vars(obj):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_registry_holds_every_tagged_class_of_the_wire_layer():
    tagged = _tagged_classes_of_every_wire_module()
    assert len(tagged) > 30  # options, MPTCP, MP_CONVERT, TLVs, SOCKS5: the walk found them
    registry = jsonform.wire_registry()
    missing = [name for name, cls in tagged.items() if registry.get(cls.name) is not cls]
    assert not missing, f"add their modules to jsonform.wire_registry(): {missing}"


def test_a_name_used_twice_is_refused():
    @dataclasses.dataclass(frozen=True)
    class First:
        name = "same"

    @dataclasses.dataclass(frozen=True)
    class Second:
        name = "same"

    with pytest.raises(ValueError, match="'same' is used by both"):
        jsonform.tagged_classes(types.SimpleNamespace(First=First), types.SimpleNamespace(Second=Second))


# --- the Convert message: version, total_length, tlvs ------------------------------------------

CONNECT_80 = ConvertMessage((ConnectTlv(80, IPv4Address("192.0.2.1")),))


def test_convert_json_shows_total_length_in_wire_order():
    as_json = to_jsonable(CONNECT_80)
    assert list(as_json) == ["version", "total_length", "tlvs"]
    assert as_json["total_length"] == 6 == encode_convert(CONNECT_80)[1]  # RFC 8803 Total Length byte
    assert as_json["tlvs"] == [{"type": "connect", "port": 80, "address": "192.0.2.1", "options": []}]


def test_total_length_is_optional_and_checked():
    shape = {"version": 1, "tlvs": [{"type": "connect", "port": 80, "address": "192.0.2.1", "options": []}]}
    assert from_jsonable(ConvertMessage, shape) == CONNECT_80
    assert from_jsonable(ConvertMessage, {**shape, "total_length": 6}) == CONNECT_80
    for wrong in (5, 7, "6", True):
        with pytest.raises(JsonFormError) as info:
            from_jsonable(ConvertMessage, {**shape, "total_length": wrong})
        assert info.value.path == "total_length" and "6" in info.value.message


# --- errors name the path ---------------------------------------------------------------------


@pytest.mark.parametrize("hint,data,path,fragment", [
    (ConvertMessage, {"tlvs": [{"type": "connect", "port": "80", "address": "192.0.2.1"}]}, "tlvs[0].port",
     "expected an integer"),
    (ConvertMessage, {"tlvs": [{"type": "connect", "port": 80, "address": "192.0.2.300"}]}, "tlvs[0].address",
     "not an IPv4 or IPv6 address"),
    (ConvertMessage, {"tlvs": ["info"]}, "tlvs[0]", "expected an object, got a string"),
    (ConvertMessage, {"tlvs": [{"type": "conect"}]}, "tlvs[0]",
     "'conect' is not a known form; expected one of: connect, cookie, error"),
    (ConvertMessage, {"tlvs": [{"kind": 2, "name": "mss", "mss_bytes": 1460}]}, "tlvs[0]", "'mss' is not allowed here"),
    (ConvertMessage, {"tlvs": [{"type": "extended_tcp_header", "options": [{"name": "mss", "mss_bytes": -1}]}]},
     "tlvs[0].options[0]", "mss_bytes must be an int in 0..65535"),
    (ConvertMessage, {"tlvs": [{"type": "connect", "port": 80}]}, "tlvs[0]", "missing field 'address'"),
    (ConvertMessage, {"tlvs": [{"type": "info", "colour": 1}]}, "tlvs[0]", "unknown field(s) ['colour']"),
    (ConvertMessage, {"tlvs": {}}, "tlvs", "expected a list, got an object"),
    (tuple[SynPayloadOption, ...], [{"kind": 3, "name": "mss", "mss_bytes": 1}], "[0].kind", "mss has kind 2, not 3"),
    (tuple[SynPayloadOption, ...], [{"mss_bytes": 1}], "[0]", 'needs a "name"'),
    (tuple[SynPayloadOption, ...], [{"name": "tfo", "cookie": "abc"}], "[0].cookie", "odd number of digits"),
    (MptcpOption, {"name": "mp_prio", "backup": True, "address_id": "x"}, "address_id", "expected an integer"),
    (MpConvert, {"name": "mss", "mss_bytes": 1}, "", "'mss' is not allowed here; expected one of: mp_convert"),
])
def test_errors_name_the_path_and_the_problem(hint, data, path, fragment):
    with pytest.raises(JsonFormError) as info:
        from_jsonable(hint, data)
    assert info.value.path == path
    assert fragment in info.value.message


def test_a_specific_hint_needs_no_tag():
    assert from_jsonable(MpConvert, {"address": "192.0.2.1", "port": 80}) == MpConvert(IPv4Address("192.0.2.1"), 80)
    assert from_jsonable(MpPrio, {"backup": True}) == MpPrio(True)


def test_extended_tcp_header_options_are_read_by_name():
    data = {"type": "extended_tcp_header", "options": [{"kind": 2, "name": "mss", "mss_bytes": 1460}]}
    assert from_jsonable(ConvertMessage, {"tlvs": [data]}).tlvs == (ExtendedTcpHeaderTlv((MaximumSegmentSize(1460),)),)


# --- hex as users paste it ----------------------------------------------------------------------

SYN_OPTIONS = bytes.fromhex("020405b40402080a0000000100000000")


@pytest.mark.parametrize("text", [
    "020405b40402080a0000000100000000",  # Wireshark "Copy as Hex Stream"
    "02 04 05 b4 04 02 08 0a 00 00 00 01 00 00 00 00",  # the packet bytes pane, several shell words
    "02:04:05:b4:04:02:08:0a:00:00:00:01:00:00:00:00",  # "...as Hex + colons" / tshark
    "0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00",  # C array
    "\\x02\\x04\\x05\\xb4\\x04\\x02\\x08\\x0a\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00",  # "Copy as Escaped String"
    "0204 05B4 0402 080A\n0000 0001 0000 0000\n",  # grouped, upper case, two lines
    "0x020405b40402080a0000000100000000",
])
def test_pasted_hex_forms(text):
    assert hex_to_bytes(text) == SYN_OPTIONS


PACKET_START = bytes.fromhex("45000058000040004006d460c633640acb0071019c4004d25eed0001")


@pytest.mark.parametrize("text", [
    # Wireshark "Copy as Hex Dump"
    "0000   45 00 00 58 00 00 40 00 40 06 d4 60 c6 33 64 0a   E..X..@.@..`.3d.\n"
    "0010   cb 00 71 01 9c 40 04 d2 5e ed 00 01               ..q..@..^...\n",
    # hexdump -C, with its middle gap, pipes and final offset line
    "00000000  45 00 00 58 00 00 40 00  40 06 d4 60 c6 33 64 0a  |E..X..@.@..`.3d.|\n"
    "00000010  cb 00 71 01 9c 40 04 d2  5e ed 00 01              |..q..@..^...|\n"
    "0000001c\n",
    # tcpdump -X (ASCII) and -xx (none)
    "\t0x0000:  4500 0058 0000 4000 4006 d460 c633 640a  E..X..@.@..`.3d.\n"
    "\t0x0010:  cb00 7101 9c40 04d2 5eed 0001            ..q..@..^...\n",
    "\t0x0000:  4500 0058 0000 4000 4006 d460 c633 640a\n\t0x0010:  cb00 7101 9c40 04d2 5eed 0001\n",
    # xxd
    "00000000: 4500 0058 0000 4000 4006 d460 c633 640a  E..X..@.@..`.3d.\n"
    "00000010: cb00 7101 9c40 04d2 5eed 0001            ..q..@..^...\n",
])
def test_hex_dumps_with_offsets(text):
    assert hex_to_bytes(text) == PACKET_START


def test_an_ascii_column_that_looks_like_hex_is_still_the_ascii_column():
    assert hex_to_bytes("0000   61 62   ab") == b"ab"


@pytest.mark.parametrize("text,data", [
    ("0000 1c46", bytes.fromhex("00001c46")),  # one space: two hex groups, not an offset
    ("0000:1c46", bytes.fromhex("00001c46")),  # no space after the colon: the same
    ("00000000", bytes(4)),  # an offset alone is no dump
])
def test_hex_that_is_not_a_dump(text, data):
    assert hex_to_bytes(text) == data


def test_a_dump_must_start_at_offset_0():
    # A dump copied from its second line on is not taken for one (its bytes would be misplaced).
    with pytest.raises(JsonFormError, match="not a hex digit: '.' at character 17"):
        hex_to_bytes("0010   45 00   E.")


@pytest.mark.parametrize("text,message", [
    ("02 04 05 b", "hex group 'b' at character 10 has an odd number of digits (1)"),
    ("02 0g", "not a hex digit: 'g' at character 5"),
    ("c0x12", "not a hex digit: 'x' at character 3"),  # "0x" inside a group is no prefix
])
def test_hex_errors_say_where(text, message):
    with pytest.raises(JsonFormError) as info:
        hex_to_bytes(text, "field")
    assert info.value.message == message and info.value.path == "field"


@given(st.binary(min_size=1, max_size=200))
def test_every_rendering_reads_back(data):
    renderings = [
        data.hex(), data.hex(" "), data.hex(":"), data.hex().upper(), ", ".join(f"0x{b:02x}" for b in data),
        hex_dump(data), hex_dump(data, width_bytes=8),
    ]
    for text in renderings:
        assert hex_to_bytes(text) == data, text


def test_hex_dump_layout():
    assert hex_dump(b"E\x00\x00X" + bytes(14)).splitlines() == [
        "0000   45 00 00 58 00 00 00 00 00 00 00 00 00 00 00 00   E..X............",
        "0010   00 00                                             ..",
    ]


# --- JSON text for people -------------------------------------------------------------------------


def test_format_json_keeps_short_objects_on_one_line():
    text = format_json(to_jsonable(CONNECT_80))
    assert text.splitlines() == [
        "{",
        '  "version": 1,',
        '  "total_length": 6,',
        '  "tlvs": [{"type": "connect", "port": 80, "address": "192.0.2.1", "options": []}]',
        "}",
    ]
    assert all(len(line) <= 100 for line in text.splitlines())


@given(convert_messages)
def test_format_json_is_json(msg):
    data = to_jsonable(msg)
    assert json.loads(format_json(data, width_chars=40)) == data
