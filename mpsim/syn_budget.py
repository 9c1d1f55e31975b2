"""What each signalling scheme puts in the client's first SYN, measured on bytes the codecs encode.

For one destination, every scheme registered in ``mpsim.proto.catalogue.SCHEMES`` builds the SYN
it would send with :mod:`mpsim.wire` (option list and payload: the scheme's ``syn`` hook,
mpsim/proto/schemes/), and the budget reads the sizes off the encoded bytes: option bytes out of
the 40 a TCP header holds, SYN payload bytes, whether that fits, and the round trips to the
first response byte that follow. Nothing here is a typed-in size: change a codec and the
table changes with it.

``mpsim wire budget`` shows the table with one real RFC 8803 SYN packet; with ``--destination``
it shows the table alone.

Assumptions, shared by every scheme so that the rows compare (each is a knob of the future
simulator, not a claim about every network):

* the client is a Linux host (its usual SYN options, ``LINUX_SYN_OPTIONS``) speaking MPTCP to the
  proxy in every proxied scheme; the proxy sits on the client's path, so it adds no round trip;
* no TCP Fast Open towards the server: the application's request leaves after the handshake;
  the SYN payload of ``convert`` and ``syn-payload-eol`` is sent without a TFO option, as RFC 8803
  Appendix A.1 has clients do (Linux ``tcp_fastopen=0x5``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from mpsim.proto.catalogue import SCHEMES
from mpsim.proto.schemes.base import SchemeSyn  # importing the package registers the schemes
from mpsim.proto.schemes.convert import convert_syn_payload  # noqa: F401  (part of this module's interface)
from mpsim.wire import jsonform
from mpsim.wire.convert import decode_convert
from mpsim.wire.options import TCP_OPTION_SPACE_BYTES, option_space_bytes
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, decode_packet, encode_packet

IpAddress = IPv4Address | IPv6Address

#: The destinations ``mpsim run`` shows: one of each family, from the documentation ranges.
V4_DESTINATION: tuple[IpAddress, int] = (IPv4Address("192.0.2.1"), 80)
V6_DESTINATION: tuple[IpAddress, int] = (IPv6Address("2001:db8::1"), 443)
DEFAULT_DESTINATIONS: tuple[tuple[IpAddress, int], ...] = (V4_DESTINATION, V6_DESTINATION)
#: RFC 9293 section 3.7.1 (MUST-15): the send MSS assumed before the peer announces one, so the
#: most SYN payload a client can count on. 536 is the IPv4 value (IPv6: 1220); the smaller one
#: holds whichever family the path to the proxy uses.
DEFAULT_SEND_MSS_BYTES = 536
HANDSHAKE_RTTS = 1  # SYN out, SYN-ACK back
REQUEST_RTTS = 1  # the application's request out, the first response byte back


def scheme_syn(scheme: str, address: IpAddress, port: int) -> SchemeSyn:
    """The SYN the scheme named ``scheme`` sends to reach ``address``:``port``, built with the wire
    codecs by the scheme itself (its ``syn`` hook, mpsim/proto/schemes/)."""
    return SCHEMES.get(scheme).syn(address, port)


@dataclass(frozen=True, slots=True)
class SynBudget:
    """One row of the budget: what a scheme's first SYN costs for one destination."""

    scheme: str  # a name in mpsim.proto.catalogue.SCHEMES
    address: IpAddress
    port: int
    syn_option_bytes: int  # padded to 4-byte words, as the TCP header's data offset counts them
    syn_payload_bytes: int
    pre_request_message_bytes: tuple[tuple[str, int], ...]
    note: str

    @property
    def fits(self) -> bool:
        """Whether the SYN can be sent: options within 40 bytes, payload within the default MSS."""
        return self.syn_option_bytes <= TCP_OPTION_SPACE_BYTES and self.syn_payload_bytes <= DEFAULT_SEND_MSS_BYTES

    @property
    def rtts_to_first_response_byte(self) -> int | None:
        """Handshake, one round trip per pre-request message, the request; None if the SYN does not fit."""
        if not self.fits:
            return None
        return HANDSHAKE_RTTS + len(self.pre_request_message_bytes) + REQUEST_RTTS


def syn_budget(address: IpAddress, port: int) -> list[SynBudget]:
    """One row per registered scheme, in registration order (docs/design.md section 4's first)."""
    rows = []
    for scheme in SCHEMES.names():
        syn = scheme_syn(scheme, address, port)
        rows.append(SynBudget(
            scheme, address, port, option_space_bytes(syn.options), len(syn.payload),
            tuple((label, len(raw)) for label, raw in syn.pre_request_messages), syn.note,
        ))
    return rows


def format_destination(address: IpAddress, port: int) -> str:
    """``192.0.2.1:80`` or ``[2001:db8::1]:443`` (RFC 3986 brackets, so the port is unambiguous)."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip() for row in rows
    )


def format_budget(destinations: Iterable[tuple[IpAddress, int]] = DEFAULT_DESTINATIONS) -> str:
    """The budget as plain text tables, one per destination, with the assumptions under them."""
    blocks = []
    for address, port in destinations:
        rows = [
            (
                row.scheme,
                f"{row.syn_option_bytes}/{TCP_OPTION_SPACE_BYTES}",
                str(row.syn_payload_bytes),
                "yes" if row.fits else "NO",
                "-" if row.rtts_to_first_response_byte is None else str(row.rtts_to_first_response_byte),
                row.note,
            )
            for row in syn_budget(address, port)
        ]
        header = ("scheme", "option bytes", "payload bytes", "fits", "RTTs", "what the SYN carries")
        blocks.append(f"Destination {format_destination(address, port)}\n{_table(header, rows)}")
    legend = (
        f"option bytes: the SYN's TCP options, padded, of the {TCP_OPTION_SPACE_BYTES} a TCP header holds "
        "(RFC 9293 3.1).\n"
        f"payload bytes: SYN data before the application's first byte; fits also needs it within "
        f"{DEFAULT_SEND_MSS_BYTES} bytes (RFC 9293 3.7.1).\n"
        "RTTs: round trips from the SYN to the first response byte, proxy on the path, no TFO to the server:\n"
        f"{HANDSHAKE_RTTS} for the handshake + 1 per message awaited before the request + {REQUEST_RTTS} "
        "for the request."
    )
    return "\n\n".join(blocks) + "\n\n" + legend


# --- one real SYN ---------------------------------------------------------------------------------

#: The demonstration SYN's endpoints: a client and a converter from the documentation ranges.
#: RFC 8803 assigns the converter no port; 1234 is libconvert's default (docs/protocols.md 1.3).
DEMO_CLIENT: tuple[IPv4Address, int] = (IPv4Address("198.51.100.10"), 40000)
DEMO_CONVERTER: tuple[IPv4Address, int] = (IPv4Address("203.0.113.1"), 1234)
DEMO_ISN = 0x5EED0001  # any initial sequence number will do
DEMO_WINDOW_BYTES = 64240  # Linux's SYN window for an MSS of 1460 (44 * 1460)


def convert_syn_packet(address: IpAddress = V4_DESTINATION[0], port: int = V4_DESTINATION[1]) -> IpPacket:
    """The IPv4 SYN a Linux MPTCP client sends a converter to reach ``address``:``port``.

    Its options and payload are those of the ``convert`` row of :func:`syn_budget`.
    """
    syn = scheme_syn("convert", address, port)
    segment = TcpSegment(DEMO_CLIENT[1], DEMO_CONVERTER[1], seq=DEMO_ISN, ack=0, flags=TcpFlags.SYN,
                         window=DEMO_WINDOW_BYTES, options=syn.options, payload=syn.payload)
    return IpPacket(DEMO_CLIENT[0], DEMO_CONVERTER[0], segment)


def format_convert_syn() -> str:
    """One full Convert SYN: its hex dump, its decoding, and its payload decoded as a Convert message."""
    packet = convert_syn_packet()
    raw = encode_packet(packet)
    decoded = decode_packet(raw)  # decoded from the bytes, checksums verified, not the value we built
    payload = decoded.segment.payload
    client, converter = format_destination(*DEMO_CLIENT), format_destination(*DEMO_CONVERTER)
    return "\n".join([
        f"One RFC 8803 Convert SYN, {client} -> converter {converter}, asking for "
        f"{format_destination(*V4_DESTINATION)}: {len(raw)} bytes "
        f"(IPv4 header 20, TCP header {decoded.segment.header_length_bytes}, payload {len(payload)}).",
        "Paste the dump into `mpsim wire decode segment -` to decode it yourself.",
        "",
        jsonform.hex_dump(raw),
        "",
        "Decoded (mpsim wire decode segment):",
        jsonform.format_json(jsonform.to_jsonable(decoded)),
        "",
        "Its payload decoded (mpsim wire decode convert):",
        jsonform.format_json(jsonform.to_jsonable(decode_convert(payload))),
    ])
