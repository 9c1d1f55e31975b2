"""The ``mpsim`` command line and the SYN budget demonstration behind ``mpsim wire budget``.

Most tests call ``main(argv)`` in-process (fast); a few run ``python -m mpsim`` as users do.
"""

import io
import json
import subprocess
import sys
from ipaddress import IPv4Address, IPv6Address

import pytest

from mpsim import __version__, syn_budget
from mpsim.cli import main
from mpsim.proto.catalogue import SCHEMES
from mpsim.syn_budget import convert_syn_packet
from mpsim.wire.convert import ConnectTlv, decode_convert
from mpsim.wire.jsonform import hex_dump, hex_to_bytes
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, decode_packet, encode_packet
from mpsim.wire.options import MaximumSegmentSize, WindowScale


def run(capsys, *argv, stdin: str | None = None, monkeypatch=None):
    """``main(argv)``: (exit status, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, out: str, err: str, *fragments: str) -> None:
    assert status == 2 and out == ""
    assert err.startswith("mpsim: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


# --- decode and encode each kind ----------------------------------------------------------------

# The IPv4 Convert SYN of the demonstration and an IPv6 SYN-ACK, encoded by the segment codec.
CONVERT_SYN = encode_packet(convert_syn_packet()).hex()
SYN_ACK_V6 = encode_packet(IpPacket(
    IPv6Address("2001:db8::2"), IPv6Address("2001:db8::1"),
    TcpSegment(443, 40000, 7, 1, TcpFlags.SYN | TcpFlags.ACK, 65535, (MaximumSegmentSize(1440), WindowScale(7))),
    flow_label=0x12345,
)).hex()

VECTORS = [
    # Linux SYN options: mss 1460, sackOK, TS (1, 0), nop, wscale 7 (RFC 9293 3.2, RFC 2018, RFC 7323).
    ("options", "020405b40402080a0000000100000000" "01030307", [("name", "mss"), ("mss_bytes", 1460)]),
    # MP_CAPABLE v1 on a SYN/ACK: flags A and H, the listener's key (RFC 8684 3.1).
    ("mptcp", "1e0c01810102030405060708", [("name", "mp_capable"), ("sender_key", 0x0102030405060708)]),
    # MP_CONVERT to 198.51.100.7:443 (docs/mp-convert.md, flags P).
    ("mp-convert", "1e0af4c0c633640701bb", [("name", "mp_convert"), ("address", "198.51.100.7"), ("port", 443)]),
    # The same MP_CONVERT, an EOL, then "GET /".
    ("syn-payload", "1e0af4c0c633640701bb00474554202f", [("data", "474554202f")]),
    # RFC 8803 6.1 + 6.2.5: header (Total Length 6) and a Connect TLV to 192.0.2.1:80.
    ("convert", "010622630a05005000000000000000000000ffffc0000201", [("version", 1), ("total_length", 6)]),
    ("segment", CONVERT_SYN, [("src", "198.51.100.10"), ("dst", "203.0.113.1")]),
    ("segment", SYN_ACK_V6, [("src", "2001:db8::2"), ("flow_label", 0x12345)]),
]


@pytest.mark.parametrize("kind,hex_text,expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_decode_prints_json_and_encode_gives_the_same_hex(capsys, kind, hex_text, expected):
    status, out, err = run(capsys, "wire", "decode", kind, hex_text)
    assert (status, err) == (0, "")
    decoded = json.loads(out)
    first = decoded[0] if isinstance(decoded, list) else decoded
    for key, value in expected:
        assert first[key] == value
    status, out, err = run(capsys, "wire", "encode", kind, out)
    assert (status, err, out) == (0, "", hex_text + "\n")


def test_decode_convert_shows_the_rfc_names(capsys):
    status, out, _ = run(capsys, "wire", "decode", "convert", "01 06 22 63 0a 05 00 50 00 00 00 00 00 00 00 00 00 00 "
                         "ff ff c0 00 02 01")
    assert status == 0
    assert json.loads(out) == {"version": 1, "total_length": 6, "tlvs": [
        {"type": "connect", "port": 80, "address": "192.0.2.1", "options": []}]}


# Convert messages in the JSON shape of the issue, with their bytes laid out from RFC 8803 figures.
CONVERT_JSON_VECTORS = [
    # The README example: Total Length left out, computed.
    ('{"version": 1, "tlvs": [{"type": "connect", "port": 80, "address": "192.0.2.1", "options": []}]}',
     "01062263" "0a050050" "00000000000000000000ffff" "c0000201"),
    # A client SYN: Extended Connect (6.2.5) to [2001:db8::1]:443 asking for a TFO cookie and MPTCP
    # without values (section 7), then a Cookie TLV (6.2.7). 1 + 6 + 3 = 10 words.
    ('{"version": 1, "total_length": 10, "tlvs": ['
     '{"type": "connect", "port": 443, "address": "2001:db8::1", "options": [{"kind": 34}, {"kind": 30, "value": ""}]},'
     '{"type": "cookie", "cookie": "0102030405060708"}]}',
     "010a2263" "0a0601bb" "20010db8000000000000000000000001" "22021e02" "16030000" "0102030405060708"),
    # A converter's reply: Supported TCP Extensions 30, 34 (6.2.4), then the server's SYN-ACK options
    # MSS 1460 and SACK-Permitted in an Extended TCP Header TLV (6.2.6), both zero padded.
    ('{"version": 1, "tlvs": [{"type": "supported_tcp_extensions", "kinds": [30, 34]},'
     '{"type": "extended_tcp_header", "options": [{"kind": 2, "name": "mss", "mss_bytes": 1460},'
     '{"kind": 4, "name": "sack_permitted"}]}]}',
     "01062263" "15020000" "1e220000" "14030000" "020405b4" "04020000"),
    # Error 33, Unsupported TCP Option, Value 8: Timestamps (6.2.8), and an Info TLV (6.2.3).
    ('{"version": 1, "total_length": 3, "tlvs": [{"type": "error", "code": 33, "value": 8}, {"type": "info"}]}',
     "01032263" "1e012108" "01010000"),
]


@pytest.mark.parametrize("json_text,hex_text", CONVERT_JSON_VECTORS)
def test_encode_convert_from_the_issue_shape(capsys, json_text, hex_text):
    status, out, err = run(capsys, "wire", "encode", "convert", json_text)
    assert (status, err, out) == (0, "", hex_text + "\n")


def test_encode_reads_stdin(capsys, monkeypatch):
    status, out, _ = run(capsys, "wire", "encode", "mp-convert", "-",
                         stdin='{"address": "2001:db8::1", "port": 443}', monkeypatch=monkeypatch)
    # docs/mp-convert.md: flags P and 6, the 16-byte address, the port.
    assert (status, out) == (0, "1e16f6c0" "20010db8000000000000000000000001" "01bb\n")


def test_encode_options_pads_to_words_within_40_bytes(capsys):
    status, out, _ = run(capsys, "wire", "encode", "options", '[{"kind": 3, "name": "window_scale", "shift_count": 7}]')
    assert (status, out) == (0, "03030700\n")
    too_long = json.dumps([{"name": "experimental", "kind": 254, "data": "ab" * 40}])
    assert_one_line_error(*run(capsys, "wire", "encode", "options", too_long),
                          "TCP options need 44 bytes", "at most 40")


# --- bad input: exit status 2, one line naming the problem and where ----------------------------


def _corrupt(hex_text: str, offset: int, replacement: str) -> str:
    return hex_text[: 2 * offset] + replacement + hex_text[2 * offset + len(replacement):]


@pytest.mark.parametrize("argv,fragments", [
    (["convert", "01 06 22 63 0a 05 00 50"], ["Convert Total Length 6 words needs 24 bytes",
                                              "at byte offset 8"]),
    (["convert", "01 06 22 64"], ["Convert magic number 0x2264, expected 0x2263 at byte offset 2"]),
    (["options", "02 03 05 b4"], ["mpsim: error: MSS option length 3, expected 4 at byte offset 0\n"]),
    (["options", "01 01 03 04 07 00"], ["Window Scale option length 4, expected 3 at byte offset 2"]),
    (["options", "01 01 02 08 05 b4"], ["TCP option kind 2 length 8 runs past the end", "at byte offset 2"]),
    (["segment", _corrupt(CONVERT_SYN, 36, "ffff")], ["TCP checksum 0xffff, expected",
                                                      "at byte offset 36"]),
    (["segment", _corrupt(CONVERT_SYN, 10, "0000")], ["IPv4 header checksum 0x0000, expected", "at byte offset 10"]),
    (["segment", CONVERT_SYN[:-2]], ["IPv4 total length 88 bytes, got 87 at byte offset 87"]),
    (["mptcp", "1e 04 91 01"], ["MPTCP option subtype 0x9 is not assigned at byte offset 2"]),
    (["syn-payload", "02 04 05 b4"], ["SYN payload has no EOL", "at byte offset 4"]),
])
def test_bytes_that_do_not_decode(capsys, argv, fragments):
    assert_one_line_error(*run(capsys, "wire", "decode", *argv), *fragments)


def test_no_verify_checksums_decodes_an_offloaded_capture(capsys):
    offloaded = _corrupt(_corrupt(CONVERT_SYN, 36, "0000"), 10, "0000")  # what a sender-side capture shows
    status, out, _ = run(capsys, "wire", "decode", "segment", "--no-verify-checksums", offloaded)
    assert status == 0 and json.loads(out)["segment"]["src_port"] == 40000
    assert_one_line_error(*run(capsys, "wire", "decode", "convert", "--no-verify-checksums", "01012263"),
                          "--no-verify-checksums applies to KIND segment only")


def test_an_ethernet_frame_gets_a_hint(capsys):
    frame = "000c29aabbcc" "000c29ddeeff" "0800" + CONVERT_SYN
    assert_one_line_error(*run(capsys, "wire", "decode", "segment", frame),
                          "IP version 0, expected 4 or 6 at byte offset 0", "looks like an Ethernet frame")


@pytest.mark.parametrize("argv,fragments", [
    (["convert", '{"version": 1, "total_length": 5, "tlvs": [{"type": "info"}]}'],
     ["mpsim: error: total_length: 5 does not match 2"]),
    (["convert", '{"tlvs": [{"type": "connect", "port": 80, "address": "192.0.2.256"}]}'],
     ["tlvs[0].address: '192.0.2.256' is not an IPv4 or IPv6 address"]),
    (["convert", '{"tlvs": [{"type": "connect", "port": 70000, "address": "192.0.2.1"}]}'],
     ["tlvs[0]: Connect port must be an int in 0..65535, got 70000"]),
    (["convert", '{"tlvs": [{"type": "info"}, {"type": "info"}]}'], ["(top level): Convert TLV types must be unique"]),
    (["options", '[{"kind": 2, "name": "mss", "mss_bytes": 1460}, {"name": "eol"}, {"name": "nop"}]'],
     ["EndOfOptionList must be the last option"]),
    (["options", '{"kind": 2, "name": "mss"}'], ["(top level): expected a list, got an object"]),
    (["segment", '{"src": "192.0.2.1"}'], ["missing field 'dst'"]),
    (["convert", '{"version": 1,'], ["invalid JSON: Expecting property name enclosed in double quotes at line 1 "
                                     "column 15"]),
])
def test_json_that_does_not_encode(capsys, argv, fragments):
    assert_one_line_error(*run(capsys, "wire", "encode", *argv), *fragments)


# --- hex as pasted from Wireshark --------------------------------------------------------------

CONNECT_HEX = "010622630a05005000000000000000000000ffffc0000201"


@pytest.mark.parametrize("words", [
    [CONNECT_HEX],  # "Copy as Hex Stream"
    [CONNECT_HEX[i: i + 2] for i in range(0, len(CONNECT_HEX), 2)],  # unquoted spaced bytes: many words
    [":".join(CONNECT_HEX[i: i + 2] for i in range(0, len(CONNECT_HEX), 2))],
    [" ".join("0x" + CONNECT_HEX[i: i + 2].upper() for i in range(0, len(CONNECT_HEX), 2))],
    ["01062263", "0a050050", "00000000 00000000", "0000ffff c0000201"],
])
def test_wireshark_style_hex(capsys, words):
    status, out, _ = run(capsys, "wire", "decode", "convert", *words)
    assert status == 0 and json.loads(out)["tlvs"][0]["address"] == "192.0.2.1"


@pytest.mark.parametrize("text", [CONVERT_SYN + "\n", hex_dump(bytes.fromhex(CONVERT_SYN)) + "\n"])
def test_hex_from_stdin(capsys, monkeypatch, text):
    status, out, _ = run(capsys, "wire", "decode", "segment", "-", stdin=text, monkeypatch=monkeypatch)
    assert status == 0 and json.loads(out)["segment"]["dst_port"] == 1234


@pytest.mark.parametrize("words,stdin,fragment", [
    (["02", "04", "05", "b"], None, "HEX: hex group 'b' at character 10 has an odd number of digits"),
    (["02", "0g"], None, "HEX: not a hex digit: 'g' at character 5"),
    (["-"], "", "HEX holds no bytes"),
])
def test_bad_hex(capsys, monkeypatch, words, stdin, fragment):
    assert_one_line_error(*run(capsys, "wire", "decode", "options", *words, stdin=stdin, monkeypatch=monkeypatch),
                          fragment)


# --- the SYN budget -----------------------------------------------------------------------------

V4, V6 = syn_budget.DEFAULT_DESTINATIONS


@pytest.mark.parametrize("destination,scheme,option_bytes,payload_bytes,fits,rtts", [
    # Linux SYN 20 bytes; + MP_CAPABLE 4 (docs/mp-convert.md, docs/protocols.md 3.6).
    (V4, "plain", 20, 0, True, 2),
    (V4, "mptcp", 24, 0, True, 2),
    # + MP_CONVERT with port: IPv4 34 padded to 36 fits; IPv6 46 padded to 48 does not.
    (V4, "mp-convert-option", 36, 0, True, 2),
    (V6, "mp-convert-option", 48, 0, False, None),
    # The same MP_CONVERT option (10 / 22 bytes) + one EOL byte in the payload.
    (V4, "syn-payload-eol", 24, 11, True, 2),
    (V6, "syn-payload-eol", 24, 23, True, 2),
    # RFC 8803: 4-byte header + 20-byte Connect TLV for either family (IPv4-mapped).
    (V4, "convert", 24, 24, True, 2),
    (V6, "convert", 24, 24, True, 2),
    # RFC 1928: greeting and CONNECT each cost a round trip.
    (V4, "socks5", 24, 0, True, 4),
    (V6, "socks5", 24, 0, True, 4),
])
def test_budget_rows(destination, scheme, option_bytes, payload_bytes, fits, rtts):
    row = next(row for row in syn_budget.syn_budget(*destination) if row.scheme == scheme)
    assert (row.syn_option_bytes, row.syn_payload_bytes, row.fits, row.rtts_to_first_response_byte) == (
        option_bytes, payload_bytes, fits, rtts)


def test_socks5_message_sizes():
    # RFC 1928: greeting VER NMETHODS METHOD = 3 bytes; CONNECT 4 + address + 2 = 10 (IPv4) / 22 (IPv6).
    for (address, port), connect_bytes in ((V4, 10), (V6, 22)):
        row = next(row for row in syn_budget.syn_budget(address, port) if row.scheme == "socks5")
        assert row.pre_request_message_bytes == (("greeting", 3), ("CONNECT", connect_bytes))
        assert f"greeting 3 bytes, CONNECT {connect_bytes} bytes" in row.note


def test_ipv6_mp_convert_note_says_what_would_fit():
    row = next(row for row in syn_budget.syn_budget(*V6) if row.scheme == "mp-convert-option")
    assert "without timestamps 40 bytes, fits" in row.note  # docs/mp-convert.md: 38 padded to 40


def test_budget_prints_the_table_and_a_real_convert_syn(capsys):
    status, out, err = run(capsys, "wire", "budget")
    assert (status, err) == (0, "")
    assert "Destination 192.0.2.1:80" in out and "Destination [2001:db8::1]:443" in out
    table_rows = [line.split()[:5] for line in out.splitlines() if line.split()[:1] in ([s] for s in SCHEMES)]
    assert len(table_rows) == 2 * len(SCHEMES)
    assert ["mp-convert-option", "36/40", "0", "yes", "2"] in table_rows
    assert ["mp-convert-option", "48/40", "0", "NO", "-"] in table_rows
    assert ["socks5", "24/40", "0", "yes", "4"] in table_rows
    # The dump is real: read back from the output, it decodes (checksums verified) to the demo SYN.
    dump = "\n".join(line for line in out.splitlines() if line[:4].isalnum() and line[4:7] == "   ")
    packet = decode_packet(hex_to_bytes(dump))
    assert packet == convert_syn_packet() and packet.segment.flags == TcpFlags.SYN
    assert decode_convert(packet.segment.payload).tlvs == (ConnectTlv(80, IPv4Address("192.0.2.1")),)
    assert '"total_length": 6' in out


def test_budget_takes_destinations(capsys):
    status, out, _ = run(capsys, "wire", "budget", "--destination", "198.51.100.7:8080",
                         "--destination", "[2001:db8::7]:22")
    assert status == 0
    assert [line for line in out.splitlines() if line.startswith("Destination")] == [
        "Destination 198.51.100.7:8080", "Destination [2001:db8::7]:22"]


@pytest.mark.parametrize("destination,fragment", [
    ("2001:db8::1:443", "write an IPv6 destination as [ADDRESS]:PORT, e.g. [2001:db8::1]:443"),
    ("192.0.2.1", "is not ADDRESS:PORT"),
    ("192.0.2.1:65536", "is not ADDRESS:PORT with a port in 0..65535"),
    ("example.com:80", "'example.com' in 'example.com:80' is not an IP address"),
])
def test_budget_refuses_bad_destinations(capsys, destination, fragment):
    status, out, err = run(capsys, "wire", "budget", "--destination", destination)
    assert status == 2 and out == "" and fragment in err


# --- the command line itself --------------------------------------------------------------------


def test_run_rejects_unknown_arguments(capsys):
    status, out, err = run(capsys, "run", "--scenario", "x")
    assert status == 2 and out == "" and "unrecognized arguments: --scenario" in err


@pytest.mark.parametrize("argv,fragment", [
    ([], "required: COMMAND"),
    (["wire"], "required: WIRE_COMMAND"),
    (["wire", "decode", "tcp", "00"], "argument KIND: invalid choice: 'tcp'"),
    (["wire", "decode", "options"], "required: HEX"),
])
def test_usage_errors(capsys, argv, fragment):
    status, out, err = run(capsys, *argv)
    assert status == 2 and fragment in err


def test_version(capsys):
    assert run(capsys, "--version") == (0, f"mpsim {__version__}\n", "")


def test_help_lists_every_kind(capsys):
    status, out, _ = run(capsys, "wire", "decode", "--help")
    assert status == 0
    for kind in ("options", "mptcp", "mp-convert", "syn-payload", "convert", "segment"):
        assert f"\n  {kind} " in out


def python_m_mpsim(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpsim", *argv], input=stdin, capture_output=True, text=True,
                          timeout=60)


def test_python_m_mpsim_runs_the_demonstration():
    result = python_m_mpsim("wire", "budget")
    assert result.returncode == 0 and result.stderr == ""
    assert "Destination [2001:db8::1]:443" in result.stdout and "One RFC 8803 Convert SYN" in result.stdout


def test_python_m_mpsim_decode_error_and_pipe():
    result = python_m_mpsim("wire", "decode", "convert", "01 06 22 63 0a 05 00 50")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "mpsim: error: Convert Total Length 6 words needs 24 bytes at byte offset 8\n"
    decoded = python_m_mpsim("wire", "decode", "segment", "-", stdin=CONVERT_SYN)
    encoded = python_m_mpsim("wire", "encode", "segment", "-", stdin=decoded.stdout)
    assert (decoded.returncode, encoded.returncode, encoded.stdout) == (0, 0, CONVERT_SYN + "\n")


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `mpsim wire decode ... | head`: more output than a pipe buffer holds, and the reader goes away.
    big = encode_packet(IpPacket(IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"),
                                 TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5, payload=bytes(60_000)))).hex()
    process = subprocess.Popen([sys.executable, "-m", "mpsim", "wire", "decode", "segment", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(big.encode())
    process.stdin.close()
    process.stdout.read(10)
    process.stdout.close()
    assert process.wait(timeout=60) == 1
    assert process.stderr.read() == b""
