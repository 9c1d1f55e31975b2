"""Classic libpcap capture files as bytes (draft-ietf-opsawg-pcap; the format tcpdump writes).

Pure functions: the caller writes the bytes to a file or reads them from one. Files written
here are little-endian (as tcpdump writes them on x86 and ARM Linux) with microsecond
timestamps; the reader takes either byte order and microsecond or nanosecond timestamps.
pcapng is not supported.
"""

import struct
from collections.abc import Iterable

from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # each record is an IPv4 or IPv6 packet, told apart by its version nibble
SNAPLEN_BYTES = 262144  # libpcap's maximum snapshot length, and tcpdump's default
FILE_HEADER_BYTES = 24
RECORD_HEADER_BYTES = 16
_MICROS_PER_S = 1_000_000
_NANOS_PER_S = 1_000_000_000
# The magic number in the writer's byte order tells the reader both the order and the unit.
_MAGICS = {
    bytes.fromhex("a1b2c3d4"): (">", _MICROS_PER_S),
    bytes.fromhex("d4c3b2a1"): ("<", _MICROS_PER_S),
    bytes.fromhex("a1b23c4d"): (">", _NANOS_PER_S),
    bytes.fromhex("4d3cb2a1"): ("<", _NANOS_PER_S),
}
_PCAPNG_MAGIC = bytes.fromhex("0a0d0d0a")


def pcap_file_bytes(records: Iterable[tuple[float, bytes]], linktype: int = LINKTYPE_RAW) -> bytes:
    """A whole pcap file: the file header, then one record per ``(timestamp_s, packet)``.

    Timestamps are seconds since the epoch (or since the start of a simulation), rounded to the
    microsecond; they must lie in 0 <= t < 2**32. Packets are stored whole, so none may exceed
    :data:`SNAPLEN_BYTES`.
    """
    if type(linktype) is not int or not 0 <= linktype <= 0xFFFF:
        raise InvalidValueError(f"linktype must be an int in 0..65535, got {linktype!r}")
    chunks = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN_BYTES, linktype)]
    for index, (timestamp_s, packet) in enumerate(records):
        if not isinstance(timestamp_s, (int, float)) or not 0 <= timestamp_s < 2**32:
            raise InvalidValueError(f"record {index}: timestamp_s must be in 0 <= t < 2**32, got {timestamp_s!r}")
        if not isinstance(packet, (bytes, bytearray, memoryview)):
            raise InvalidValueError(f"record {index}: packet must be bytes, got {type(packet).__name__}")
        packet = bytes(packet)
        if len(packet) > SNAPLEN_BYTES:
            raise InvalidValueError(f"record {index}: packet of {len(packet)} bytes exceeds {SNAPLEN_BYTES}")
        seconds, micros = divmod(round(timestamp_s * _MICROS_PER_S), _MICROS_PER_S)
        if seconds >= 2**32:  # rounding up from just below 2**32
            raise InvalidValueError(f"record {index}: timestamp_s {timestamp_s!r} rounds to 2**32 s")
        chunks.append(struct.pack("<IIII", seconds, micros, len(packet), len(packet)))
        chunks.append(packet)
    return b"".join(chunks)


def read_pcap(data: bytes | memoryview, *, linktype: int | None = LINKTYPE_RAW) -> list[tuple[float, bytes]]:
    """The ``(timestamp_s, packet)`` records of a pcap file, in file order.

    The file's link type must equal ``linktype`` (MalformedError otherwise, so that Ethernet
    frames are not mistaken for IP packets); pass None to accept any. A packet captured with a
    snapshot length shorter than the packet comes back cut short, as it is stored. A file that
    ends inside a record (e.g. one still being written) raises TruncatedError.
    """
    data = bytes(data)
    if len(data) < FILE_HEADER_BYTES:
        raise TruncatedError(
            f"pcap file header needs {FILE_HEADER_BYTES} bytes, got {len(data)}", len(data), FILE_HEADER_BYTES
        )
    magic = data[:4]
    if magic not in _MAGICS:
        kind = "a pcapng file, which is not supported" if magic == _PCAPNG_MAGIC else "not a pcap file"
        raise MalformedError(f"pcap magic number 0x{magic.hex()}: {kind}", 0)
    order, ticks_per_s = _MAGICS[magic]
    major, minor, link_info = struct.unpack_from(order + "HH12xI", data, 4)
    if major != 2:
        raise MalformedError(f"pcap version {major}.{minor}, expected 2.x", 4)
    # The upper 16 bits carry FCS information (draft-ietf-opsawg-pcap, LinkType field).
    if linktype is not None and link_info & 0xFFFF != linktype:
        raise MalformedError(f"pcap link type {link_info & 0xFFFF}, expected {linktype}", 20)
    records = []
    offset = FILE_HEADER_BYTES
    while offset < len(data):
        if len(data) - offset < RECORD_HEADER_BYTES:
            raise TruncatedError("pcap file ends inside a record header", len(data), offset + RECORD_HEADER_BYTES)
        seconds, ticks, captured_bytes, _original_bytes = struct.unpack_from(order + "IIII", data, offset)
        if ticks >= ticks_per_s:
            unit = "microseconds" if ticks_per_s == _MICROS_PER_S else "nanoseconds"
            raise MalformedError(f"pcap record timestamp {unit} {ticks} out of range 0..{ticks_per_s - 1}", offset + 4)
        end = offset + RECORD_HEADER_BYTES + captured_bytes
        if end > len(data):
            raise TruncatedError(f"pcap record of {captured_bytes} bytes runs past the end of the file", len(data), end)
        # Integer arithmetic first, then one correctly rounded division.
        records.append(((seconds * ticks_per_s + ticks) / ticks_per_s, data[offset + RECORD_HEADER_BYTES : end]))
        offset = end
    return records
