"""Capture files as bytes: classic libpcap (draft-ietf-opsawg-pcap) and pcapng (draft-ietf-opsawg-pcapng).

Pure functions: the caller writes the bytes to a file or reads them from one. Files written
here are little-endian (as tcpdump writes them on x86 and ARM Linux) with microsecond
timestamps; the classic reader takes either byte order and microsecond or nanosecond timestamps.

pcapng (:func:`pcapng_file_bytes`) is what mpsim's captures use: one Section Header Block, one
Interface Description Block per interface, named (``if_name``, shown by Wireshark as
``frame.interface_name``), and one Enhanced Packet Block per packet naming its interface. The
reader (:func:`read_pcapng`) covers what the writer produces and what tshark writes: one
section, SHB/IDB/EPB blocks (others skipped), either byte order, any ``if_tsresol``.
"""

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    header = _pcap_header(data, linktype)
    # Integer arithmetic first, then one correctly rounded division.
    return [((seconds * header.ticks_per_s + ticks) / header.ticks_per_s, packet)
            for seconds, ticks, packet, _original in _pcap_records(data, header, partial_ok=False)]


@dataclass(frozen=True, slots=True)
class _PcapHeader:
    order: str
    ticks_per_s: int
    snaplen_bytes: int
    linktype: int


def _pcap_header(data: bytes, linktype: int | None) -> _PcapHeader:
    if len(data) < FILE_HEADER_BYTES:
        raise TruncatedError(
            f"pcap file header needs {FILE_HEADER_BYTES} bytes, got {len(data)}", len(data), FILE_HEADER_BYTES
        )
    magic = data[:4]
    if magic not in _MAGICS:
        kind = "a pcapng file, which is not supported" if magic == _PCAPNG_MAGIC else "not a pcap file"
        raise MalformedError(f"pcap magic number 0x{magic.hex()}: {kind}", 0)
    order, ticks_per_s = _MAGICS[magic]
    major, minor, snaplen, link_info = struct.unpack_from(order + "HH8xII", data, 4)
    if major != 2:
        raise MalformedError(f"pcap version {major}.{minor}, expected 2.x", 4)
    # The upper 16 bits carry FCS information (draft-ietf-opsawg-pcap, LinkType field).
    if linktype is not None and link_info & 0xFFFF != linktype:
        raise MalformedError(f"pcap link type {link_info & 0xFFFF}, expected {linktype}", 20)
    return _PcapHeader(order, ticks_per_s, snaplen, link_info & 0xFFFF)


def _pcap_records(data: bytes, header: _PcapHeader, *, partial_ok: bool) -> list[tuple[int, int, bytes, int]]:
    """(seconds, ticks, stored bytes, original length) of every record after the file header;
    a record cut short at the end raises TruncatedError, or with ``partial_ok`` ends the list."""
    records = []
    offset = FILE_HEADER_BYTES
    while offset < len(data):
        if len(data) - offset < RECORD_HEADER_BYTES:
            if partial_ok:
                break
            raise TruncatedError("pcap file ends inside a record header", len(data), offset + RECORD_HEADER_BYTES)
        seconds, ticks, captured_bytes, original_bytes = struct.unpack_from(header.order + "IIII", data, offset)
        if ticks >= header.ticks_per_s:
            unit = "microseconds" if header.ticks_per_s == _MICROS_PER_S else "nanoseconds"
            raise MalformedError(f"pcap record timestamp {unit} {ticks} out of range 0..{header.ticks_per_s - 1}",
                                 offset + 4)
        end = offset + RECORD_HEADER_BYTES + captured_bytes
        if end > len(data):
            if partial_ok:
                break
            raise TruncatedError(f"pcap record of {captured_bytes} bytes runs past the end of the file", len(data), end)
        records.append((seconds, ticks, data[offset + RECORD_HEADER_BYTES : end], original_bytes))
        offset = end
    return records


# --- pcapng -------------------------------------------------------------------------------------

_BLOCK_SHB = 0x0A0D0D0A
_BLOCK_IDB = 0x00000001
_BLOCK_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_ENDOFOPT = 0
_OPT_COMMENT = 1  # opt_comment, valid in every block (pcapng, draft-ietf-opsawg-pcapng section 3.5)
_OPT_SHB_USERAPPL = 4
_OPT_IF_NAME = 2
_OPT_IF_DESCRIPTION = 3
_OPT_IF_TSRESOL = 9


@dataclass(frozen=True, slots=True)
class PcapngInterface:
    """One interface of a pcapng file: its name (``if_name``), link type and description.

    (The field is not called ``name``: in mpsim.wire that attribute tags the values of
    :mod:`mpsim.wire.jsonform`, and an interface is not one.)
    """

    interface_name: str
    linktype: int = LINKTYPE_RAW
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.interface_name, str) or not self.interface_name:
            raise InvalidValueError(f"interface name must be a non-empty str, got {self.interface_name!r}")
        if type(self.linktype) is not int or not 0 <= self.linktype <= 0xFFFF:
            raise InvalidValueError(f"interface linktype must be an int in 0..65535, got {self.linktype!r}")
        if not isinstance(self.description, str):
            raise InvalidValueError(f"interface description must be a str, got {self.description!r}")


def _option(code: int, value: bytes) -> bytes:
    """An option: code, length, the value padded to 32 bits (draft-ietf-opsawg-pcapng 3.5)."""
    if len(value) > 0xFFFF:
        raise InvalidValueError(f"pcapng option {code} value of {len(value)} bytes exceeds 65535")
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    """Type, total length, the body (a multiple of 4 bytes), total length again (section 3.1)."""
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def pcapng_file_bytes(interfaces: Sequence[PcapngInterface], records: Iterable[tuple[int, float, bytes]], *,
                      application: str = "mpsim", comment: str = "") -> bytes:
    """A whole pcapng file: a section header, ``interfaces`` in order (interface ID = index), then
    one Enhanced Packet Block per ``(interface_id, timestamp_s, packet)``.

    Timestamps are seconds as for :func:`pcap_file_bytes` (microsecond resolution, the pcapng
    default; 0 <= t < 2**64 us); packets are stored whole (at most :data:`SNAPLEN_BYTES`).
    ``application`` goes into ``shb_userappl``, ``comment`` (if any) into the section's
    ``opt_comment`` (Wireshark: Statistics > Capture File Properties; ``capinfos -k``).
    """
    if not isinstance(interfaces, Sequence) or not all(isinstance(i, PcapngInterface) for i in interfaces):
        raise InvalidValueError(f"interfaces must be a sequence of PcapngInterface, got {interfaces!r}")
    chunks = [_shb(application, comment)]
    chunks += [_idb(interface, SNAPLEN_BYTES) for interface in interfaces]
    for index, record in enumerate(records):
        if not isinstance(record, tuple) or len(record) != 3:
            raise InvalidValueError(f"record {index}: must be (interface_id, timestamp_s, packet), got {record!r}")
        interface_id, timestamp_s, packet = record
        if type(interface_id) is not int or not 0 <= interface_id < len(interfaces):
            raise InvalidValueError(
                f"record {index}: interface_id must be an int in 0..{len(interfaces) - 1}, got {interface_id!r}")
        if not isinstance(timestamp_s, (int, float)) or not 0 <= timestamp_s < 2**64 / _MICROS_PER_S:
            raise InvalidValueError(f"record {index}: timestamp_s must be in 0 <= t < 2**64 us, got {timestamp_s!r}")
        if not isinstance(packet, (bytes, bytearray, memoryview)):
            raise InvalidValueError(f"record {index}: packet must be bytes, got {type(packet).__name__}")
        packet = bytes(packet)
        if len(packet) > SNAPLEN_BYTES:
            raise InvalidValueError(f"record {index}: packet of {len(packet)} bytes exceeds {SNAPLEN_BYTES}")
        micros = round(timestamp_s * _MICROS_PER_S)
        if micros >= 2**64:
            raise InvalidValueError(f"record {index}: timestamp_s {timestamp_s!r} rounds to 2**64 us")
        chunks.append(_epb(interface_id, micros, packet, len(packet)))
    return b"".join(chunks)


def _shb(application: str, comment: str) -> bytes:
    """The Section Header Block (draft-ietf-opsawg-pcapng 4.1): byte-order magic, version 1.0,
    section length -1 (not given: the writer does not seek back), then the comment and application."""
    options = _option(_OPT_COMMENT, comment.encode()) if comment else b""
    options += _option(_OPT_SHB_USERAPPL, application.encode()) if application else b""
    return _block(_BLOCK_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + options + _option(_OPT_ENDOFOPT, b""))


def _idb(interface: PcapngInterface, snaplen_bytes: int, tsresol: int | None = None) -> bytes:
    """An Interface Description Block (section 4.2): link type, snapshot length, if_name,
    if_description, and if_tsresol when it is not the default (microseconds)."""
    options = _option(_OPT_IF_NAME, interface.interface_name.encode())
    if interface.description:
        options += _option(_OPT_IF_DESCRIPTION, interface.description.encode())
    if tsresol is not None:
        options += _option(_OPT_IF_TSRESOL, bytes((tsresol,)))
    return _block(_BLOCK_IDB, struct.pack("<HHI", interface.linktype, 0, snaplen_bytes) + options
                  + _option(_OPT_ENDOFOPT, b""))


def _epb(interface_id: int, ticks: int, packet: bytes, original_bytes: int) -> bytes:
    """An Enhanced Packet Block (section 4.3): the timestamp in the interface's ticks as two 32-bit
    words, the captured and the original length, the packet padded to 32 bits."""
    return _block(_BLOCK_EPB, struct.pack("<IIIII", interface_id, ticks >> 32, ticks & 0xFFFFFFFF, len(packet),
                                          original_bytes) + packet + bytes(-len(packet) % 4))


def pcap_as_pcapng(data: bytes | memoryview, interface: PcapngInterface, *, application: str = "mpsim",
                   comment: str = "", partial_ok: bool = False) -> bytes:
    """A classic pcap file (as tcpdump writes it) as a one-interface pcapng file, so that captures
    made by a program and captures written here have one format: the interface is ``interface``
    (its link type must be the file's, MalformedError otherwise), with the file's snapshot length;
    every record keeps its timestamp (nanosecond files get ``if_tsresol`` 9, draft-ietf-opsawg-pcapng
    4.2), its stored bytes and its original length (larger than the stored bytes when the snapshot
    cut the packet). A record cut short at the end of the file (a capture stopped while writing)
    raises TruncatedError, or with ``partial_ok`` is left out."""
    data = bytes(data)
    if not isinstance(interface, PcapngInterface):
        raise InvalidValueError(f"interface must be a PcapngInterface, got {interface!r}")
    header = _pcap_header(data, interface.linktype)
    tsresol = None if header.ticks_per_s == _MICROS_PER_S else 9
    chunks = [_shb(application, comment), _idb(interface, header.snaplen_bytes, tsresol)]
    for seconds, ticks, packet, original_bytes in _pcap_records(data, header, partial_ok=partial_ok):
        chunks.append(_epb(0, seconds * header.ticks_per_s + ticks, packet, original_bytes))
    return b"".join(chunks)


def _read_options(data: bytes, order: str, offset: int, end: int) -> dict[int, bytes]:
    """The options from ``offset`` to ``end`` (the first occurrence of each code)."""
    options: dict[int, bytes] = {}
    while offset + 4 <= end:
        code, length = struct.unpack_from(order + "HH", data, offset)
        if code == _OPT_ENDOFOPT:
            break
        if offset + 4 + length > end:
            raise MalformedError(f"pcapng option {code} of {length} bytes runs past its block", offset)
        options.setdefault(code, data[offset + 4 : offset + 4 + length])
        offset += 4 + length + (-length % 4)
    return options


def read_pcapng(data: bytes | memoryview) -> tuple[list[PcapngInterface], list[tuple[int, float, bytes]]]:
    """The interfaces and the ``(interface_id, timestamp_s, packet)`` records of a one-section
    pcapng file, in file order. TruncatedError when the file ends inside a block."""
    data = bytes(data)
    if len(data) < 28:
        raise TruncatedError(f"pcapng section header needs 28 bytes, got {len(data)}", len(data), 28)
    if data[:4] != _PCAPNG_MAGIC:
        raise MalformedError(f"pcapng block type 0x{data[:4].hex()}: not a pcapng file", 0)
    magic_bytes = data[8:12]
    if magic_bytes == struct.pack("<I", _BYTE_ORDER_MAGIC):
        order = "<"
    elif magic_bytes == struct.pack(">I", _BYTE_ORDER_MAGIC):
        order = ">"
    else:
        raise MalformedError(f"pcapng byte-order magic 0x{magic_bytes.hex()}", 8)
    interfaces: list[PcapngInterface] = []
    ticks_per_s: list[int] = []
    records: list[tuple[int, float, bytes]] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 12:
            raise TruncatedError("pcapng file ends inside a block header", len(data), offset + 12)
        block_type, total = struct.unpack_from(order + "II", data, offset)
        if total < 12 or total % 4:
            raise MalformedError(f"pcapng block total length {total}", offset + 4)
        if offset + total > len(data):
            raise TruncatedError(f"pcapng block of {total} bytes runs past the end of the file", len(data),
                                 offset + total)
        body, end = offset + 8, offset + total - 4
        if block_type == _BLOCK_SHB and offset > 0:
            raise MalformedError("pcapng file with a second section: not supported", offset)
        if block_type == _BLOCK_IDB:
            linktype, _reserved, _snaplen = struct.unpack_from(order + "HHI", data, body)
            options = _read_options(data, order, body + 8, end)
            resolution = options.get(_OPT_IF_TSRESOL, bytes((6,)))[0]
            ticks_per_s.append(2 ** (resolution & 0x7F) if resolution & 0x80 else 10**resolution)
            interfaces.append(PcapngInterface(options.get(_OPT_IF_NAME, b"").decode(errors="replace") or
                                              f"interface {len(interfaces)}", linktype,
                                              options.get(_OPT_IF_DESCRIPTION, b"").decode(errors="replace")))
        elif block_type == _BLOCK_EPB:
            interface_id, high, low, captured_bytes, _original = struct.unpack_from(order + "IIIII", data, body)
            if interface_id >= len(interfaces):
                raise MalformedError(f"pcapng packet on interface {interface_id}, which is not described", body)
            if body + 20 + captured_bytes > end:
                raise MalformedError(f"pcapng packet of {captured_bytes} bytes runs past its block", body + 12)
            ticks = (high << 32) | low
            records.append((interface_id, ticks / ticks_per_s[interface_id],
                            data[body + 20 : body + 20 + captured_bytes]))
        offset += total
    return interfaces, records
