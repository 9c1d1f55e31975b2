"""The shipped Wireshark dissector (mpsim/wireshark/mpsim.lua) against tshark.

Captures of every signalling scheme and of a bulk transfer, as ``mpsim run --pcap`` writes them,
must dissect with the Lua dissector loaded with zero malformed packets, zero dissector bugs and
zero expert errors; hand-built RFC 8803 messages (mpsim.wire.convert encoders; RFC 8803 section
6) must show every TLV and every error code by field name, bounded by Total Length, also when
split across segments. docs/wireshark.md describes the dissector and the MPTCP assertion of
Wireshark 4.0 that the tests pin down. Skipped without tshark (CI installs it: .ci/run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from mpsim.experiment import results, scenario
from mpsim.wire.convert import (
    ConnectOption,
    ConnectTlv,
    ConvertErrorCode,
    ConvertMessage,
    ConvertTlvType,
    CookieTlv,
    ErrorTlv,
    ExtendedTcpHeaderTlv,
    InfoTlv,
    SupportedTcpExtensionsTlv,
    encode_convert,
)
from mpsim.wire.mp_convert import MP_CONVERT_EXPERIMENT_ID
from mpsim.wire.mptcp import Dss, MpCapable, MpCapableFlags, MpExperimental
from mpsim.wire.options import MaximumSegmentSize, NoOperation, SackPermitted, Timestamps, WindowScale
from mpsim.wire.pcap import PcapngInterface, pcapng_file_bytes
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, encode_packet
from mpsim.wireshark import bundled_dissector_path

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
LUA = bundled_dissector_path()
#: tshark reads these captures in a second or two; the bound is generous for a loaded CI machine
#: and only stops a hung tshark.
TSHARK_TIMEOUT_S = 600
#: The variants of models/scheme_comparison.toml: every scheme (convert-socket: the converter's
#: socket timing).
SCHEMES = ("plain", "mptcp", "mp-convert-option", "syn-payload-eol", "convert", "convert-socket", "socks5")
#: Frames that are malformed or carry an error-severity expert item.
BAD_FRAMES = "_ws.malformed || _ws.expert.severity == error"

CLIENT, CONVERTER = IPv4Address("198.18.0.1"), IPv4Address("198.18.1.1")
SYN, SYN_ACK = TcpFlags.SYN, TcpFlags.SYN | TcpFlags.ACK
ACK, PSH_ACK = TcpFlags.ACK, TcpFlags.PSH | TcpFlags.ACK


def tshark(capture: Path, *args: str, lua: bool = True) -> subprocess.CompletedProcess:
    command = [TSHARK, "-n", "-r", str(capture)]
    if lua:
        command += ["-X", f"lua_script:{LUA}"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=TSHARK_TIMEOUT_S,
                          check=False)


def field_values(capture: Path, field: str, *args: str) -> list[str]:
    """Every value of ``field`` in the capture (one list item per occurrence)."""
    out = tshark(capture, "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|", "-e", field, *args)
    assert out.returncode == 0, out.stderr
    return [value for line in out.stdout.splitlines() for value in line.split("|") if value]


def assert_clean(capture: Path, *args: str) -> None:
    """No malformed frame, no expert error, no dissector bug, no Lua error."""
    bad = tshark(capture, "-Y", BAD_FRAMES, "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message", *args)
    assert bad.returncode == 0, bad.stderr
    assert bad.stdout.strip() == "", f"{capture.name}: frames with errors:\n{bad.stdout}"
    verbose = tshark(capture, "-V", *args)
    text = verbose.stdout + verbose.stderr
    for problem in ("Dissector bug", "Lua Error", "Malformed Packet"):
        assert problem not in text, f"{capture.name}: {problem}: " + next(
            line for line in text.splitlines() if problem in line)


# --- captures of the simulator ----------------------------------------------------------------


@pytest.fixture(scope="module")
def scheme_captures(tmp_path_factory) -> dict[str, list[Path]]:
    """Every scheme of scheme_comparison, and a two-path transfer, written as ``mpsim run --pcap`` does."""
    out = tmp_path_factory.mktemp("captures")
    written = results.run(scenario.load("scheme_comparison", ()), record_packets=True).write_pcaps(out / "schemes")
    by_kind: dict[str, list[Path]] = {}
    for path in written:
        by_kind.setdefault(path.name.split("-run")[0], []).append(path)
    # A transfer crosses the negotiation's links (docs/sim.md "Routes"): every link file of this
    # run holds transfer segments beside the negotiation's packets.
    transfer = scenario.load("bulk_two_path", ("transfers=[{start_s=0.0,size_bytes=100000}]",))
    by_kind["transfer"] = results.run(transfer, variants=["convert"], record_packets=True).write_pcaps(out / "transfer")
    return by_kind


@needs_tshark
def test_captures_exist_for_every_scheme_and_a_transfer(scheme_captures):
    assert set(SCHEMES) <= set(scheme_captures) and scheme_captures["transfer"]
    assert all(path.suffix == ".pcapng" for paths in scheme_captures.values() for path in paths)


@needs_tshark
@pytest.mark.parametrize("kind", (*SCHEMES, "transfer"))
def test_every_capture_dissects_without_errors(scheme_captures, kind):
    for path in scheme_captures[kind]:
        # The preference keeps Wireshark 4.0's MPTCP dissector off the MP_EXPERIMENTAL SYNs.
        assert_clean(path, "-o", "mpconvert.mptcp_option:TRUE")


@needs_tshark
def test_transfer_segments_carry_a_window(scheme_captures):
    for path in scheme_captures["transfer"]:
        assert "0" not in field_values(path, "tcp.window_size_value")
        assert field_values(path, "tcp.analysis.zero_window") == []


@needs_tshark
def test_convert_capture_names_its_tlvs(scheme_captures):
    (access,) = [p for p in scheme_captures["convert"] if p.name.endswith("path.access.pcapng")]
    assert set(field_values(access, "convert.tlv.type")) == {str(ConvertTlvType.CONNECT),
                                                              str(ConvertTlvType.EXTENDED_TCP_HEADER)}
    assert field_values(access, "convert.connect.port") == ["80"]
    assert field_values(access, "frame.interface_name", "-Y", "convert") == ["path.access", "path.access"]
    # The application data after the client's message is handed on, bounded by Total Length.
    assert field_values(access, "data.len", "-Y", "convert.connect.port") == ["100"]


@needs_tshark
def test_the_model_itself_sends_every_tlv_type(tmp_path):
    """Captures of the simulator (not hand-built bytes) show all six TLV types by field name: an
    Info request answered with Supported TCP Extensions, and a converter that requires a cookie
    (Error Missing Cookie, then a Cookie TLV on the retry)."""
    captures = []
    for name, overrides in (("info", ("client.convert_info_first=true",)),
                            ("cookie", ("converter.require_cookie=true", "workload.arrivals=count",
                                        "workload.count=2"))):
        loaded = scenario.load("scheme_comparison", overrides)
        captures += results.run(loaded, variants=["convert"], record_packets=True).write_pcaps(tmp_path / name)
    accesses = [path for path in captures if path.name.endswith("path.access.pcapng")]
    found = {value for path in accesses for value in field_values(path, "convert.tlv.type")}
    assert found == {str(int(t)) for t in ConvertTlvType}
    assert {value for path in accesses for value in field_values(path, "convert.error.code")} == {
        str(int(ConvertErrorCode.MISSING_COOKIE))}
    for path in captures:
        assert_clean(path)


@needs_tshark
def test_mp_convert_option_and_syn_payload_are_decoded(scheme_captures):
    (option,) = [p for p in scheme_captures["mp-convert-option"] if p.name.endswith("path.access.pcapng")]
    (eol,) = [p for p in scheme_captures["syn-payload-eol"] if p.name.endswith("path.access.pcapng")]
    for path in (option, eol):
        assert field_values(path, "mpconvert.experiment_id") == [f"0x{MP_CONVERT_EXPERIMENT_ID:02x}"]
        assert field_values(path, "mpconvert.port") == ["80"]
        assert len(field_values(path, "mpconvert.address")) == 1
    assert field_values(eol, "synpayload.eol") == ["0x00"]
    assert field_values(eol, "data.len", "-Y", "synpayload") == ["100"]


# --- Wireshark 4.0's MPTCP assertion ---------------------------------------------------------


def handshake(syn_options: tuple, synack_options: tuple) -> list[IpPacket]:
    return [IpPacket(CLIENT, CONVERTER, TcpSegment(40000, 80, 100, 0, SYN, 65535, syn_options)),
            IpPacket(CONVERTER, CLIENT, TcpSegment(80, 40000, 500, 101, SYN_ACK, 65535, synack_options)),
            IpPacket(CLIENT, CONVERTER, TcpSegment(40000, 80, 101, 501, ACK, 65535, ()))]


def write_capture(path: Path, packets: list[IpPacket]) -> Path:
    records = [(0, index * 0.01, encode_packet(packet)) for index, packet in enumerate(packets)]
    path.write_bytes(pcapng_file_bytes([PcapngInterface("test")], records))
    return path


MP_CAPABLE_SYN = MpCapable(version=1, flags=MpCapableFlags.H)
MP_CAPABLE_KEYED = MpCapable(version=1, flags=MpCapableFlags.H, sender_key=0x0E3806595E4F7BA1)


def dissector_bugs(path: Path, *args: str, lua: bool = False) -> int:
    out = tshark(path, *args, lua=lua)
    return (out.stdout + out.stderr).count("Dissector bug")


@needs_tshark
def test_wireshark_mptcp_assertion_is_not_specific_to_mp_convert(tmp_path):
    """Any MPTCP option of a subtype above MP_JOIN on the SYN, then the SYN-ACK's keyed MP_CAPABLE,
    makes the same dissector misbehave: a DSS as much as mpsim's MP_EXPERIMENTAL (docs/wireshark.md)."""
    cases = {
        "mp_convert": (MP_CAPABLE_SYN, MpExperimental(0, bytes((MP_CONVERT_EXPERIMENT_ID,)))),
        "other_experiment": (MP_CAPABLE_SYN, MpExperimental(0, b"\x00\x00\x00\x00")),
        "dss": (MP_CAPABLE_SYN, Dss(data_ack=1, data_ack_64_bit=True)),
        "control": (MP_CAPABLE_SYN,),
    }
    bugs = {name: dissector_bugs(write_capture(tmp_path / f"{name}.pcapng", handshake(syn, (MP_CAPABLE_KEYED,))))
            for name, syn in cases.items()}
    assert bugs["control"] == 0
    # Equal counts: whatever this tshark does with one, it does with the others (0 once fixed).
    assert bugs["mp_convert"] == bugs["other_experiment"] == bugs["dss"]
    # The preference avoids it in every case, and the options are still decoded.
    for name in cases:
        assert dissector_bugs(tmp_path / f"{name}.pcapng", "-o", "mpconvert.mptcp_option:TRUE", lua=True) == 0
    keys = field_values(tmp_path / "mp_convert.pcapng", "mpconvert.mptcp.sender_key", "-o", "mpconvert.mptcp_option:TRUE")
    assert keys == [f"0x{MP_CAPABLE_KEYED.sender_key:016x}"]
    data_acks = field_values(tmp_path / "dss.pcapng", "mpconvert.mptcp.data_ack", "-o", "mpconvert.mptcp_option:TRUE")
    assert data_acks == ["1"]


@needs_tshark
def test_without_the_preference_only_the_known_mptcp_assertion_remains(scheme_captures):
    for path in scheme_captures["mp-convert-option"]:
        out = tshark(path)
        for line in (out.stdout + out.stderr).splitlines():
            if "Dissector bug" in line:
                assert "protocol MPTCP" in line and "DISSECTOR_ASSERT_NOT_REACHED" in line, line


# --- hand-built RFC 8803 messages ------------------------------------------------------------

#: Bytes no Wireshark heuristic claims (HTTP's would take a GET), so that they show as data.
APP_DATA = b"\xa5\x5a mpsim application data after the Convert message"
# RFC 8803 section 6: a client's SYN payload (Info, Extended Connect with a TFO cookie request and
# MPTCP without value, a Cookie) and a converter's reply (Supported TCP Extensions, Extended TCP Header).
CLIENT_MESSAGE = ConvertMessage((
    InfoTlv(),
    ConnectTlv(443, IPv4Address("198.51.100.7"), (ConnectOption(34), ConnectOption(30))),
    CookieTlv(bytes(range(1, 9))),
))
CONVERTER_MESSAGE = ConvertMessage((
    SupportedTcpExtensionsTlv((30, 34, 8)),
    ExtendedTcpHeaderTlv((MaximumSegmentSize(1460), SackPermitted(), Timestamps(7, 1), NoOperation(), WindowScale(7))),
))
IPV6_MESSAGE = ConvertMessage((ConnectTlv(8080, IPv6Address("2001:db8::1")),))


def error_message(code: ConvertErrorCode) -> ConvertMessage:
    if code in (ConvertErrorCode.UNSUPPORTED_VERSION, ConvertErrorCode.UNSUPPORTED_TCP_OPTION):
        return ConvertMessage((ErrorTlv.with_list(code, (1, 2) if code == 0 else (34, 30)),))
    if code == ConvertErrorCode.MALFORMED_MESSAGE:
        return ConvertMessage((ErrorTlv(code, 0, encode_convert(IPV6_MESSAGE)),))
    if code == ConvertErrorCode.MISSING_COOKIE:
        return ConvertMessage((ErrorTlv(code, 0, bytes(range(8))),))
    return ConvertMessage((ErrorTlv(code, 5 if code in (64, 65) else 0),))


def conversation(port: int, client_payload: bytes, reply_payload: bytes, server_port: int = 1234) -> list[IpPacket]:
    """A SYN with ``client_payload``, a SYN-ACK with ``reply_payload``, the ACK."""
    return [IpPacket(CLIENT, CONVERTER, TcpSegment(port, server_port, 1000, 0, SYN, 65535,
                                                   (MaximumSegmentSize(1460),), client_payload)),
            IpPacket(CONVERTER, CLIENT, TcpSegment(server_port, port, 5000, 1001 + len(client_payload), SYN_ACK,
                                                   65535, (MaximumSegmentSize(1460),), reply_payload)),
            IpPacket(CLIENT, CONVERTER, TcpSegment(port, server_port, 1001 + len(client_payload),
                                                   5001 + len(reply_payload), ACK, 65535, ()))]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> Path:
    packets = conversation(41000, encode_convert(CLIENT_MESSAGE) + APP_DATA, encode_convert(CONVERTER_MESSAGE))
    packets += conversation(41001, encode_convert(IPV6_MESSAGE), b"")
    for index, code in enumerate(ConvertErrorCode):
        packets += conversation(42000 + index, encode_convert(IPV6_MESSAGE), encode_convert(error_message(code)))
    return write_capture(tmp_path_factory.mktemp("vectors") / "vectors.pcapng", packets)


@needs_tshark
def test_hand_built_vectors_dissect_cleanly(vectors):
    assert_clean(vectors)


@needs_tshark
def test_every_tlv_type_is_found_by_field_name(vectors):
    assert set(field_values(vectors, "convert.tlv.type")) == {str(int(t)) for t in ConvertTlvType}
    assert field_values(vectors, "convert.info") != []
    assert field_values(vectors, "convert.connect.ipv4") == ["198.51.100.7"]
    assert set(field_values(vectors, "convert.connect.address")) >= {"::ffff:198.51.100.7", "2001:db8::1"}
    assert field_values(vectors, "convert.connect.option.kind", "-Y", "tcp.srcport == 41000") == ["34", "30"]
    assert field_values(vectors, "convert.cookie") == ["0102030405060708"]
    assert field_values(vectors, "convert.supported.kind") == ["30", "34", "8"]
    assert field_values(vectors, "convert.ext_tcp_header.option.kind") == ["2", "4", "8", "1", "3"]


@needs_tshark
def test_every_error_code_is_named(vectors):
    assert sorted(map(int, field_values(vectors, "convert.error.code"))) == sorted(ConvertErrorCode)
    text = tshark(vectors, "-V", "-O", "convert").stdout
    for code in ConvertErrorCode:
        # The names of RFC 8803 section 6.2.8, as mpsim.wire.convert spells them.
        shown = re.search(rf"Error Code: ([^(\n]+) \({int(code)}\)", text)
        assert shown and shown.group(1).replace(" ", "_").upper() == code.name, code
    assert field_values(vectors, "convert.error.supported_version") == ["1", "2"]
    assert field_values(vectors, "convert.error.unsupported_kind") == ["34", "30"]
    assert field_values(vectors, "convert.error.retry_delay") == ["5", "5"]
    assert field_values(vectors, "convert.error.echo") == [encode_convert(IPV6_MESSAGE).hex()]


@needs_tshark
def test_message_is_bounded_by_total_length_and_the_data_handed_on(vectors):
    first = ["-Y", "tcp.srcport == 41000 && tcp.flags.syn == 1"]
    assert field_values(vectors, "convert.message_bytes", *first) == [str(len(encode_convert(CLIENT_MESSAGE)))]
    assert field_values(vectors, "data.data", *first) == [APP_DATA.hex()]


@needs_tshark
def test_heuristic_finds_convert_on_another_port(tmp_path):
    path = write_capture(tmp_path / "heuristic.pcapng",
                         conversation(43000, encode_convert(CLIENT_MESSAGE) + APP_DATA,
                                      encode_convert(CONVERTER_MESSAGE), server_port=5555)
                         + conversation(43001, b"\x16\x03\x01\x00\x05hello", b"", server_port=5555))
    assert len(field_values(path, "convert.version")) == 2  # the SYN's message and the SYN-ACK's
    assert field_values(path, "convert.version", "-Y", "tcp.srcport == 43001") == []
    # Off the port and without the heuristic, nothing is taken for Convert.
    assert field_values(path, "convert.version", "--disable-heuristic", "convert_tcp") == []
    assert_clean(path)


# --- reassembly ----------------------------------------------------------------------------------


def split_stream(message: bytes, cut_points: list[int], from_client: bool) -> list[IpPacket]:
    """A handshake without payload, then ``message`` + APP_DATA sent in pieces cut at ``cut_points``
    by the client (or the converter), each acknowledged."""
    packets = [IpPacket(CLIENT, CONVERTER, TcpSegment(44000, 1234, 100, 0, SYN, 65535, ())),
               IpPacket(CONVERTER, CLIENT, TcpSegment(1234, 44000, 700, 101, SYN_ACK, 65535, ())),
               IpPacket(CLIENT, CONVERTER, TcpSegment(44000, 1234, 101, 701, ACK, 65535, ()))]
    data = message + APP_DATA
    bounds = [0, *cut_points, len(data)]
    sender, receiver = (CLIENT, CONVERTER) if from_client else (CONVERTER, CLIENT)
    ports = (44000, 1234) if from_client else (1234, 44000)
    isn, peer = (101, 701) if from_client else (701, 101)
    for start, end in zip(bounds, bounds[1:]):
        packets.append(IpPacket(sender, receiver, TcpSegment(*ports, isn + start, peer, PSH_ACK, 65535, (),
                                                             data[start:end])))
        packets.append(IpPacket(receiver, sender, TcpSegment(*ports[::-1], peer, isn + end, ACK, 65535, ())))
    return packets


@needs_tshark
@pytest.mark.parametrize("message,cuts", [
    (CLIENT_MESSAGE, [2]),  # inside the header
    (CLIENT_MESSAGE, [10]),  # inside the Connect TLV
    (CLIENT_MESSAGE, [9, 30]),  # three segments
    (CONVERTER_MESSAGE, [len(encode_convert(CONVERTER_MESSAGE)) - 1]),  # one byte short
])
@pytest.mark.parametrize("from_client", [True, False])
def test_a_message_split_across_segments_is_reassembled(tmp_path, message, cuts, from_client):
    encoded = encode_convert(message)
    path = write_capture(tmp_path / "split.pcapng", split_stream(encoded, cuts, from_client))
    assert field_values(path, "convert.message_bytes") == [str(len(encoded))]
    # The message is shown once, in the segment that completes it, with the data after it.
    completing = 3 + 2 * len(cuts) + 1  # frame numbers start at 1
    assert field_values(path, "frame.number", "-Y", "convert") == [str(completing)]
    assert field_values(path, "convert.tlv.type") == [str(tlv.tlv_type) for tlv in message.tlvs]
    assert "".join(field_values(path, "data.data")) == APP_DATA.hex()
    assert_clean(path)
