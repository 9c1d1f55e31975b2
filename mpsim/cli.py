"""The ``mpsim`` command line.

* ``mpsim run``: the main job. Until the simulator exists it is the codec demonstration of
  :mod:`mpsim.syn_budget`: what each signalling scheme puts in the SYN, and one real Convert SYN.
* ``mpsim wire decode KIND HEX...``: bytes (as pasted from Wireshark) to JSON on stdout.
* ``mpsim wire encode KIND JSON``: JSON back to a hex stream.
* ``mpsim wire budget``: the SYN budget table for chosen destinations.

Exit status: 0 on success, 2 for anything the user can fix (usage, bytes that do not decode, JSON
that does not describe a value), with one line on stderr naming the problem and where it is.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mpsim import __version__, syn_budget
from mpsim.errors import MpsimError
from mpsim.wire import jsonform
from mpsim.wire.convert import ConvertMessage, decode_convert, encode_convert
from mpsim.wire.errors import WireError
from mpsim.wire.mp_convert import MpConvert, decode_mp_convert
from mpsim.wire.mptcp import MptcpOption, decode_mptcp_option
from mpsim.wire.options import decode_options, encode_options
from mpsim.wire.segment import IpPacket, decode_packet, encode_packet
from mpsim.wire.syn_payload import SynPayloadOption, SynPayloadSignal, decode_syn_payload, encode_syn_payload

EXIT_USER_ERROR = 2  # argparse's status for usage errors; bad bytes and bad JSON are the user's to fix too


class CliError(MpsimError):
    """A problem with what the user gave; printed as one line, exit status 2."""


@dataclass(frozen=True, slots=True)
class WireKind:
    """One KIND of ``mpsim wire decode`` / ``encode``: its codec and the type its JSON describes."""

    help: str
    decode: Callable[[bytes, argparse.Namespace], Any]
    json_type: Any
    encode: Callable[[Any], bytes]


WIRE_KINDS: dict[str, WireKind] = {
    "options": WireKind(
        "a TCP option list, as in a TCP header (encoding pads it to 4-byte words, at most 40 bytes)",
        lambda data, args: decode_options(data), tuple[SynPayloadOption, ...], encode_options,
    ),
    "mptcp": WireKind(
        "one whole MPTCP option (kind 30), RFC 8684",
        lambda data, args: decode_mptcp_option(data), MptcpOption, lambda value: value.encode(),
    ),
    "mp-convert": WireKind(
        "one MP_CONVERT option (mpsim's private MP_EXPERIMENTAL layout, docs/mp-convert.md)",
        lambda data, args: decode_mp_convert(data), MpConvert, lambda value: value.encode(),
    ),
    "syn-payload": WireKind(
        "a SYN payload under the EOL scheme: options, an EOL byte, then data",
        lambda data, args: decode_syn_payload(data), SynPayloadSignal, encode_syn_payload,
    ),
    "convert": WireKind(
        "one RFC 8803 Convert message: header and TLVs, nothing after them",
        lambda data, args: decode_convert(data), ConvertMessage, encode_convert,
    ),
    "segment": WireKind(
        "a whole IPv4 or IPv6 packet carrying TCP (Wireshark: the IP layer, copied as a hex stream)",
        lambda data, args: decode_packet(data, verify_checksums=args.verify_checksums), IpPacket, encode_packet,
    ),
}


def _kinds_help() -> str:
    return "\n".join(f"  {name:<12} {kind.help}" for name, kind in WIRE_KINDS.items())


# --- input --------------------------------------------------------------------------------------


def _read_argument(words: Sequence[str]) -> str:
    """The text of the positional words, or of stdin when the only word is ``-``."""
    if list(words) == ["-"]:
        return sys.stdin.read()
    return " ".join(words)


def parse_destination(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``ADDRESS:PORT``, with an IPv6 address in brackets: ``192.0.2.1:80``, ``[2001:db8::1]:443``."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS:PORT with a port in 0..65535")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r} in {text!r} is not an IP address") from None
    if address.version == 6 and not bracketed:
        # "2001:db8::1:443" is itself an IPv6 address: only brackets say where the port starts.
        raise argparse.ArgumentTypeError(f"write an IPv6 destination as [ADDRESS]:PORT, e.g. [{address}]:{port_text}")
    if address.version == 4 and bracketed:
        raise argparse.ArgumentTypeError(f"brackets are for IPv6 addresses; write {address}:{port_text}")
    return address, int(port_text)


# --- commands -----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    print(f"mpsim {__version__}: codec demonstration (the simulator will take over `mpsim run`).")
    print("What each signalling scheme puts in the client's first SYN, as the wire codecs encode it.\n")
    print(syn_budget.format_budget())
    print()
    print(syn_budget.format_convert_syn())
    return 0


def _budget(args: argparse.Namespace) -> int:
    print(syn_budget.format_budget(args.destinations or syn_budget.DEFAULT_DESTINATIONS))
    return 0


def _decode(args: argparse.Namespace) -> int:
    kind = WIRE_KINDS[args.kind]
    if not args.verify_checksums and args.kind != "segment":
        raise CliError("--no-verify-checksums applies to KIND segment only")
    try:
        data = jsonform.hex_to_bytes(_read_argument(args.hex))
    except jsonform.JsonFormError as err:
        raise CliError(f"HEX: {err.message}") from None
    if not data:
        raise CliError("HEX holds no bytes")
    try:
        value = kind.decode(data, args)
    except WireError as err:
        raise CliError(f"{err}{_decode_hint(args.kind, data)}") from None  # the message names the structure
    print(jsonform.format_json(jsonform.to_jsonable(value)))
    return 0


def _decode_hint(kind_name: str, data: bytes) -> str:
    """A hint for the commonest paste mistake: a whole Ethernet frame where the IP packet belongs."""
    ethertype = data[12:14]
    if kind_name == "segment" and ethertype in (b"\x08\x00", b"\x86\xdd"):
        return "; this looks like an Ethernet frame: copy the IP layer instead, or drop the first 14 bytes"
    return ""


def _encode(args: argparse.Namespace) -> int:
    kind = WIRE_KINDS[args.kind]
    text = _read_argument([args.json])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    try:
        raw = kind.encode(jsonform.from_jsonable(kind.json_type, data))
    except (jsonform.JsonFormError, WireError) as err:
        raise CliError(str(err)) from None  # a JSON path, or the structure that does not fit
    print(raw.hex())
    return 0


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand stores its function as ``handler``."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mpsim", description="Design, simulate and validate MPTCP proxies (RFC 8803 transport converters)."
    )
    parser.add_argument("--version", action="version", version=f"mpsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="the main job (for now: the codec demonstration)",
        description="The main job. Until the simulator lands: what each signalling scheme puts in the SYN, "
                    "computed by the codecs, then one real RFC 8803 Convert SYN, dumped and decoded.",
    )
    run.set_defaults(handler=_run)

    wire = commands.add_parser("wire", help="decode and encode wire formats; the SYN budget",
                               description="Byte-exact wire formats: decode, encode, and the SYN budget.")
    wire_commands = wire.add_subparsers(dest="wire_command", required=True, metavar="WIRE_COMMAND")

    decode = wire_commands.add_parser(
        "decode", help="bytes (hex) to JSON", formatter_class=raw,
        description="Decode bytes to JSON on stdout. Bytes that do not decode exit with status 2 and one line\n"
                    "naming the problem and its byte offset.\n\n"
                    "HEX as Wireshark gives it: a hex stream, or bytes set off by spaces or colons (one word or\n"
                    "many), 0x prefixes, hex dumps with offsets ('Copy as Hex Dump', hexdump -C, xxd); - reads\n"
                    f"stdin.\n\nKINDs:\n{_kinds_help()}",
        epilog="examples:\n"
               "  mpsim wire decode options 02 04 05 b4 04 02 08 0a 00 00 00 01 00 00 00 00 01 03 03 07\n"
               "  mpsim wire decode convert 01:06:22:63:0a:05:00:50:00:00:00:00:00:00:00:00:00:00:ff:ff:c0:00:02:01\n"
               "  mpsim wire decode segment --no-verify-checksums - < packet.hex",
    )
    decode.add_argument("kind", choices=WIRE_KINDS, metavar="KIND", help="what the bytes are (see above)")
    decode.add_argument("hex", nargs="+", metavar="HEX", help="the bytes in hex, or - for stdin")
    decode.add_argument("--no-verify-checksums", dest="verify_checksums", action="store_false",
                        help="segment only: skip the IPv4 and TCP checksums (captures with checksum offload)")
    decode.set_defaults(handler=_decode)

    encode = wire_commands.add_parser(
        "encode", help="JSON to bytes (hex)", formatter_class=raw,
        description="Encode the JSON form of a value, as decode prints it, to a hex stream on stdout. JSON that\n"
                    "does not describe a value exits with status 2 and the path of the problem (tlvs[0].port).\n"
                    "For convert, total_length (32-bit words) may be left out; if given it must match the TLVs.\n\n"
                    f"KINDs:\n{_kinds_help()}",
        epilog="example:\n"
               "  mpsim wire encode convert '{\"version\": 1, \"tlvs\": [{\"type\": \"connect\", \"port\": 80, "
               "\"address\": \"192.0.2.1\", \"options\": []}]}'",
    )
    encode.add_argument("kind", choices=WIRE_KINDS, metavar="KIND", help="what the JSON describes (see above)")
    encode.add_argument("json", metavar="JSON", help="the value as JSON, or - for stdin")
    encode.set_defaults(handler=_encode)

    budget = wire_commands.add_parser(
        "budget", help="what each signalling scheme puts in the SYN",
        description="For each signalling scheme: the SYN's option bytes out of 40, its payload bytes, "
                    "whether it fits, and the round trips to the first response byte.",
    )
    budget.add_argument("--destination", dest="destinations", action="append", type=parse_destination,
                        metavar="ADDRESS:PORT",
                        help="the server to reach, e.g. 192.0.2.1:80 or [2001:db8::1]:443; repeatable "
                             "(default: both of these)")
    budget.set_defaults(handler=_budget)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors, --help, --version: argparse has printed them
        return int(exit_.code or 0)
    try:
        return args.handler(args)
    except CliError as err:
        print(f"mpsim: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # `mpsim run | head`: the reader left. Point stdout at /dev/null so that the interpreter's
        # final flush does not fail again, and end quietly as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
