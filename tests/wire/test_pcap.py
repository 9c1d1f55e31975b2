"""Classic pcap files: hand-checked headers, both byte orders and units, truncation, tshark."""

import math
import re
import shutil
import struct
import subprocess
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError, WireError
from mpsim.wire.options import MaximumSegmentSize, SackPermitted
from mpsim.wire.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, pcap_file_bytes, read_pcap
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, decode_packet, encode_packet

SYN = encode_packet(IpPacket(
    IPv4Address("192.0.2.1"), IPv4Address("198.51.100.7"),
    TcpSegment(49152, 443, 1, 0, TcpFlags.SYN, 64240, (MaximumSegmentSize(1460), SackPermitted())),
))

# draft-ietf-opsawg-pcap section 4 (File Header), written little-endian: magic, major, minor,
# two reserved words, snapshot length, link type.
EMPTY_FILE = bytes.fromhex(
    "d4c3b2a1"  # magic 0xa1b2c3d4: microsecond timestamps
    "0200 0400"  # version 2.4
    "00000000 00000000"  # reserved (formerly thiszone and sigfigs)
    "00000400"  # snapshot length 262144
    "65000000"  # link type 101, LINKTYPE_RAW
)


def test_file_header_is_hand_checked():
    assert pcap_file_bytes([]) == EMPTY_FILE
    assert pcap_file_bytes([], linktype=LINKTYPE_ETHERNET)[20:] == b"\x01\x00\x00\x00"


def test_record_header_is_hand_checked():
    # Section 5 (Packet Record): seconds, microseconds, captured length, original length.
    data = pcap_file_bytes([(1.5, b"\x45\x00\x00\x14")])
    assert data[24:] == bytes.fromhex("01000000 20a10700 04000000 04000000 45000014")  # 500000 = 0x7a120


def test_write_then_read():
    records = [(0.0, SYN), (1.25, b""), (3600.000001, SYN[:7])]
    assert read_pcap(pcap_file_bytes(records)) == records


def test_timestamps_round_to_the_microsecond_with_carry():
    data = pcap_file_bytes([(1.9999996, b""), (0.0000004, b"")])
    assert struct.unpack_from("<II", data, 24) == (2, 0)
    assert struct.unpack_from("<II", data, 40) == (0, 0)


def file_header(order: str, magic: int, linktype: int = LINKTYPE_RAW, major: int = 2) -> bytes:
    return struct.pack(order + "IHHiIII", magic, major, 4, 0, 0, 65535, linktype)


@pytest.mark.parametrize(
    ("order", "magic", "fraction", "expected_s"),
    [
        (">", 0xA1B2C3D4, 250_000, 7.25),  # big-endian, microseconds
        ("<", 0xA1B23C4D, 250_000_000, 7.25),  # little-endian, nanoseconds
        (">", 0xA1B23C4D, 1, 7.000000001),  # big-endian, nanoseconds
    ],
)
def test_reads_both_byte_orders_and_nanosecond_files(order, magic, fraction, expected_s):
    data = file_header(order, magic) + struct.pack(order + "IIII", 7, fraction, 3, 60) + b"abc"
    assert read_pcap(data) == [(expected_s, b"abc")]


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (bytes.fromhex("0a0d0d0a") + bytes(20), "pcapng file, which is not supported", 0),
        (b"GIF89a" + bytes(18), "not a pcap file", 0),
        (file_header("<", 0xA1B2C3D4, major=3), "pcap version 3.4, expected 2.x", 4),
        (file_header("<", 0xA1B2C3D4, linktype=LINKTYPE_ETHERNET), "pcap link type 1, expected 101", 20),
        (EMPTY_FILE + struct.pack("<IIII", 0, 1_000_000, 0, 0), "microseconds 1000000 out of range", 28),
        (file_header(">", 0xA1B23C4D) + struct.pack(">IIII", 0, 10**9, 0, 0), "nanoseconds", 28),
    ],
)
def test_malformed_files(data, message, offset):
    with pytest.raises(MalformedError, match=message) as info:
        read_pcap(data)
    assert info.value.offset == offset


def test_link_type_check_can_be_relaxed_and_ignores_fcs_bits():
    ethernet = file_header("<", 0xA1B2C3D4, linktype=LINKTYPE_ETHERNET)
    assert read_pcap(ethernet, linktype=None) == []
    assert read_pcap(ethernet, linktype=LINKTYPE_ETHERNET) == []
    # The upper 16 bits of the link type field describe the FCS, not the link type.
    assert read_pcap(file_header("<", 0xA1B2C3D4, linktype=0x1400_0000 | LINKTYPE_RAW)) == []


def test_truncation_at_every_offset():
    data = pcap_file_bytes([(1.0, SYN), (2.0, SYN[:20])])
    first_end = 24 + 16 + len(SYN)
    for length in range(len(data)):
        if length in (24, first_end):  # a record boundary: a shorter but complete file
            assert len(read_pcap(data[:length])) == (0 if length == 24 else 1)
            continue
        with pytest.raises(TruncatedError) as info:
            read_pcap(data[:length])
        assert info.value.needed_bytes > length


@pytest.mark.parametrize(
    ("records", "linktype"),
    [
        ([(-0.5, b"")], LINKTYPE_RAW),
        ([(math.nan, b"")], LINKTYPE_RAW),
        ([(math.inf, b"")], LINKTYPE_RAW),
        ([(2.0**32, b"")], LINKTYPE_RAW),
        ([(2.0**32 - 1e-7, b"")], LINKTYPE_RAW),  # rounds up to 2**32 seconds
        ([("1.0", b"")], LINKTYPE_RAW),
        ([(1.0, "packet")], LINKTYPE_RAW),
        ([(1.0, bytes(262145))], LINKTYPE_RAW),
        ([], 65536),
    ],
)
def test_invalid_records_are_refused(records, linktype):
    with pytest.raises(InvalidValueError):
        pcap_file_bytes(records, linktype)


micro_timestamps = st.integers(0, 2**32 * 10**6 - 1).map(lambda micros: micros / 10**6)


@given(st.lists(st.tuples(micro_timestamps, st.binary(max_size=80)), max_size=5))
def test_round_trip_of_microsecond_timestamps(records):
    assert read_pcap(pcap_file_bytes(records)) == records


@given(st.floats(0, 2**31, exclude_max=True))
def test_any_timestamp_comes_back_within_half_a_microsecond(timestamp_s):
    [(read_s, _)] = read_pcap(pcap_file_bytes([(timestamp_s, b"")]))
    assert abs(read_s - timestamp_s) <= 0.5e-6 + 1e-15 * timestamp_s


@given(st.one_of(st.binary(max_size=80), st.binary(max_size=60).map(lambda tail: EMPTY_FILE + tail)))
def test_read_pcap_is_total(data):
    try:
        records = read_pcap(data)
    except WireError:
        return
    assert all(isinstance(t, float) and isinstance(p, bytes) for t, p in records)


def run_tshark(path, *args: str) -> str:
    return subprocess.run(
        ["tshark", "-r", str(path), *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_tshark_dissects_the_written_file(tmp_path):
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed; the pcap format is checked byte by byte above")
    path = tmp_path / "syn.pcap"
    path.write_bytes(pcap_file_bytes([(12.5, SYN)]))
    output = run_tshark(
        path, "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-T", "fields", "-E", "separator=,",
        "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.dstport", "-e", "tcp.flags.syn",
        "-e", "tcp.options.mss_val", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
    )
    # Wireshark checksum status 1 is "Good".
    assert output.split() == ["12.500000000,192.0.2.1,443,1,1460,1,1"]


def test_reads_a_nanosecond_file_written_by_tshark(tmp_path):
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed; nanosecond files are checked with hand-built bytes above")
    source, converted = tmp_path / "us.pcap", tmp_path / "ns.pcap"
    source.write_bytes(pcap_file_bytes([(12.5, SYN), (13.000001, SYN)]))
    run_tshark(source, "-F", "nsecpcap", "-w", str(converted))
    data = converted.read_bytes()
    assert data[:4] == bytes.fromhex("4d3cb2a1")  # little-endian nanosecond magic
    assert read_pcap(data) == [(12.5, SYN), (13.000001, SYN)]
    assert decode_packet(read_pcap(data)[0][1]).segment.options[0] == MaximumSegmentSize(1460)


# --- pcapng ---------------------------------------------------------------------------------------

from mpsim.wire.pcap import PcapngInterface, pcapng_file_bytes, read_pcapng  # noqa: E402

# draft-ietf-opsawg-pcapng, little-endian, by hand: section 4.1 (Section Header Block), 4.2
# (Interface Description Block), 4.3 (Enhanced Packet Block), 3.5 (options, padded to 32 bits).
PCAPNG_ONE_PACKET = bytes.fromhex(
    "0a0d0d0a 28000000"  # SHB, total length 40
    "4d3c2b1a 0100 0000 ffffffffffffffff"  # byte-order magic, version 1.0, section length -1
    "0400 0200 6162 0000"  # shb_userappl "ab", padded
    "0000 0000"  # opt_endofopt
    "28000000"  # total length again
    "01000000 28000000"  # IDB, total length 40
    "6500 0000 00000400"  # link type 101 (raw IP), reserved, snapshot length 262144
    "0200 0100 78000000"  # if_name "x", padded
    "0300 0300 612d6200"  # if_description "a-b", padded
    "0000 0000"  # opt_endofopt
    "28000000"
    "06000000 24000000"  # EPB, total length 36
    "00000000"  # interface 0
    "00000000 a0860100"  # timestamp 100000 us: high word 0, low word 0x000186a0
    "03000000 03000000"  # captured and original length 3
    "010203 00"  # packet, padded
    "24000000"
)


def test_pcapng_blocks_are_hand_checked():
    data = pcapng_file_bytes([PcapngInterface("x", description="a-b")], [(0, 0.1, b"\x01\x02\x03")], application="ab")
    assert data == PCAPNG_ONE_PACKET


def test_pcapng_section_comment_is_an_opt_comment_before_the_application():
    # draft-ietf-opsawg-pcapng 3.5: opt_comment (code 1) is valid in every block; UTF-8, padded.
    data = pcapng_file_bytes([], [], application="ab", comment="hey")
    assert data == bytes.fromhex(
        "0a0d0d0a 30000000" "4d3c2b1a 0100 0000 ffffffffffffffff"
        "0100 0300 68657900"  # opt_comment "hey", padded
        "0400 0200 6162 0000" "0000 0000" "30000000")


def test_pcapng_round_trip_with_several_interfaces():
    interfaces = [PcapngInterface("path.access", description="client <-> router"), PcapngInterface("server.link")]
    records = [(0, 0.0, SYN), (1, 0.25, SYN), (0, 2**33 / 1e6, b"\x45")]  # past 2**32 us: the high word counts
    assert read_pcapng(pcapng_file_bytes(interfaces, records)) == (interfaces, records)


@pytest.mark.parametrize("interfaces,records,message", [
    ([PcapngInterface("a")], [(1, 0.0, SYN)], "interface_id must be an int in 0..0"),
    ([PcapngInterface("a")], [(0, -1.0, SYN)], "timestamp_s"),
    ([PcapngInterface("a")], [(0, 0.0, "x")], "packet must be bytes"),
    ([PcapngInterface("a")], [(0, 0.0)], "must be (interface_id, timestamp_s, packet)"),
    (["a"], [], "sequence of PcapngInterface"),
])
def test_pcapng_refuses_bad_input(interfaces, records, message):
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        pcapng_file_bytes(interfaces, records)


def test_pcapng_interface_needs_a_name():
    with pytest.raises(InvalidValueError, match="interface name"):
        PcapngInterface("")


def test_pcapng_reader_refuses_and_truncates():
    with pytest.raises(MalformedError, match="not a pcapng file"):
        read_pcapng(pcap_file_bytes([]) + bytes(8))
    for cut in (10, 44, 50, len(PCAPNG_ONE_PACKET) - 1):
        with pytest.raises(TruncatedError):
            read_pcapng(PCAPNG_ONE_PACKET[:cut])


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_interface_names(tmp_path):
    path = tmp_path / "two.pcapng"
    path.write_bytes(pcapng_file_bytes([PcapngInterface("path.access"), PcapngInterface("server.link")],
                                       [(0, 0.0, SYN), (1, 0.5, SYN)]))
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name", "-e", "tcp.dstport"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.split() == ["path.access", "443", "server.link", "443"]


# --- a classic pcap (tcpdump's) as pcapng -----------------------------------------------------------

from mpsim.wire.pcap import pcap_as_pcapng  # noqa: E402

# A tcpdump file by hand (draft-ietf-opsawg-pcap sections 4 and 5): little-endian, microseconds,
# snapshot length 128, Ethernet; one record stored 3 bytes of a 60-byte frame at 1.5 s.
TCPDUMP_ONE_RECORD = bytes.fromhex(
    "d4c3b2a1 0200 0400 00000000 00000000 80000000 01000000"
    "01000000 20a10700 03000000 3c000000" "0a0b0c")
PCAPNG_FROM_TCPDUMP = bytes.fromhex(
    "0a0d0d0a 20000000" "4d3c2b1a 0100 0000 ffffffffffffffff" "0000 0000" "20000000"  # SHB, no options
    "01000000 24000000"  # IDB, total length 36
    "0100 0000 80000000"  # link type 1 (Ethernet), reserved, the file's snapshot length 128
    "0200 0600 706174682e6100 00"  # if_name "path.a", padded
    "0000 0000" "24000000"
    "06000000 24000000" "00000000"  # EPB, interface 0
    "00000000 60e31600"  # 1,500,000 us
    "03000000 3c000000"  # captured 3, original 60: the snapshot's cut is kept
    "0a0b0c 00" "24000000")


def test_pcap_as_pcapng_is_hand_checked():
    assert pcap_as_pcapng(TCPDUMP_ONE_RECORD, PcapngInterface("path.a", LINKTYPE_ETHERNET), application="") == \
        PCAPNG_FROM_TCPDUMP
    interfaces, records = read_pcapng(PCAPNG_FROM_TCPDUMP)
    assert interfaces == [PcapngInterface("path.a", LINKTYPE_ETHERNET)] and records == [(0, 1.5, b"\x0a\x0b\x0c")]


def test_pcap_as_pcapng_keeps_nanoseconds_and_refuses_the_wrong_link_type():
    nanos = pcap_file_bytes([]).replace(bytes.fromhex("d4c3b2a1"), bytes.fromhex("4d3cb2a1"), 1)
    nanos += struct.pack("<IIII", 2, 123_456_789, 1, 1) + b"\x45"
    interfaces, records = read_pcapng(pcap_as_pcapng(nanos, PcapngInterface("x")))
    assert records == [(0, 2.123456789, b"\x45")]  # if_tsresol 9: no rounding to microseconds
    with pytest.raises(MalformedError, match="link type 101, expected 1"):
        pcap_as_pcapng(nanos, PcapngInterface("x", LINKTYPE_ETHERNET))


def test_pcap_as_pcapng_drops_a_cut_last_record_only_when_asked():
    cut = TCPDUMP_ONE_RECORD + bytes.fromhex("02000000 00000000 05000000 05000000") + b"\x01\x02"
    with pytest.raises(TruncatedError):
        pcap_as_pcapng(cut, PcapngInterface("path.a", LINKTYPE_ETHERNET))
    assert read_pcapng(pcap_as_pcapng(cut, PcapngInterface("path.a", LINKTYPE_ETHERNET), partial_ok=True))[1] == \
        [(0, 1.5, b"\x0a\x0b\x0c")]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_a_converted_capture_with_its_original_length(tmp_path):
    frame = bytes(12) + b"\x08\x00" + SYN
    original = frame + bytes(40)
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 128, 1)
    data += struct.pack("<IIII", 7, 0, len(frame), len(original)) + frame
    path = tmp_path / "k.pcapng"
    path.write_bytes(pcap_as_pcapng(data, PcapngInterface("path.a", LINKTYPE_ETHERNET), comment="kernel"))
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name", "-e", "frame.len",
                          "-e", "frame.cap_len", "-e", "tcp.flags.syn"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.split() == ["path.a", str(len(original)), str(len(frame)), "1"]
