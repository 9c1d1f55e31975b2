"""EOL-delimited signalling in the SYN payload: vectors, errors, truncation, properties, and what a
converter expecting it makes of ordinary (unsignalled) SYN payloads.

Format (docs/protocols.md 2.4(b), [U]; docs/mp-convert.md section 2): option-formatted bytes, one
EOL (0x00, RFC 9293 section 3.2), then Fast Open / application data.
"""

import ipaddress
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, MalformedError, WireError
from mpsim.wire.mp_convert import MpConvert, mp_convert_from_option
from mpsim.wire.mptcp import MpCapable, MpExperimental
from mpsim.wire.options import (
    EndOfOptionList,
    FastOpen,
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    Timestamps,
    UnknownOption,
    WindowScale,
)
from mpsim.wire.syn_payload import SynPayloadSignal, decode_syn_payload, encode_syn_payload, signalling_sequence_bytes

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "mp-convert.md"
NOP = NoOperation()
V4 = ipaddress.IPv4Address("198.51.100.7")  # c6 33 64 07
V6 = ipaddress.IPv6Address("2001:db8::1")
V6_HEX = "20010db8 00000000 00000000 00000001"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


VECTORS = [
    ("00", SynPayloadSignal()),
    ("00 68656c6c6f", SynPayloadSignal((), b"hello")),
    # NOP NOP MSS(1460) EOL, then data: nothing is padded, the EOL follows the last option.
    ("0101 020405b4 00 abcd", SynPayloadSignal((NOP, NOP, MaximumSegmentSize(1460)), h("abcd"))),
    ("030307 00", SynPayloadSignal((WindowScale(7),))),
    ("01 00 00", SynPayloadSignal((NOP,), h("00"))),
    # Zero bytes inside an option's value are not the delimiter: MSS 0, then the real EOL.
    ("02040000 00 ff", SynPayloadSignal((MaximumSegmentSize(0),), h("ff"))),
    # Data may hold anything, 0x00 included, once the EOL has been seen.
    ("00 0000 01", SynPayloadSignal((), h("0000 01"))),
    # MP_CONVERT IPv6 + port (22 bytes, too big for the header beside a Linux SYN) then a request.
    ("1e16f6c0" + V6_HEX + "01bb 00 474554202f", SynPayloadSignal(
        (MpExperimental(low_nibble=0x6, body=h("c0" + V6_HEX + "01bb")),), b"GET /")),
]


@pytest.mark.parametrize("hex_text, signal", VECTORS)
def test_vectors(hex_text, signal):
    wire = h(hex_text)
    assert decode_syn_payload(wire) == signal
    assert encode_syn_payload(signal) == wire


def test_mp_convert_value_encodes_and_comes_back_through_the_experimental_option():
    signal = SynPayloadSignal((MpConvert(V6, 443),), b"GET /")
    decoded = decode_syn_payload(encode_syn_payload(signal))
    assert decoded.data == b"GET /"
    assert mp_convert_from_option(decoded.options[0]) == MpConvert(V6, 443)


def test_no_40_byte_limit_in_the_payload():
    options = (MpConvert(V6, 443).to_option(),) * 3  # 66 bytes of options
    wire = encode_syn_payload(SynPayloadSignal(options, b"x"))
    assert len(wire) == 66 + 1 + 1
    assert decode_syn_payload(wire) == SynPayloadSignal(options, b"x")


@pytest.mark.parametrize("hex_text, offset, fragment", [
    ("", 0, "no EOL"),  # an empty payload carries no signalling, so it is not a valid one
    ("0101", 2, "no EOL"),
    ("474554", 0, "runs past the end"),  # "GET": kind 0x47 length 0x45
    ("02", 0, "no length byte"),
    ("0801 00", 0, "length 1"),
    ("01 0203 00 00", 1, "MSS option length 3"),  # from the option decoder, offset kept
    ("080a 0000", 0, "runs past the end"),
])
def test_malformed(hex_text, offset, fragment):
    with pytest.raises(MalformedError) as err:
        decode_syn_payload(h(hex_text))
    assert err.value.offset == offset
    assert fragment in err.value.message


@pytest.mark.parametrize("kwargs", [
    {"options": (EndOfOptionList(),)},
    {"options": [NOP]},
    {"options": (5,)},
    {"data": "hello"},
])
def test_invalid_values_are_refused(kwargs):
    with pytest.raises(InvalidValueError):
        SynPayloadSignal(**kwargs)


def test_signalling_takes_options_plus_one_sequence_numbers():
    # A legacy or TFO server that takes the payload as data ACKs ISN + 1 + 11 + 5 (RFC 9293
    # section 3.10.7.2, RFC 7413 section 4.2): the 11 signalling bytes went to its application.
    signal = SynPayloadSignal((MpConvert(V4, 443).to_option(),), b"hello")
    assert signalling_sequence_bytes(signal) == 10 + 1
    assert signalling_sequence_bytes(SynPayloadSignal((), b"hello")) == 1


def test_truncation_at_every_offset_is_detected_only_before_the_eol():
    # No length field: a middlebox that cuts the data goes unnoticed, one that cuts the options
    # leaves no EOL behind.
    signal = SynPayloadSignal((MaximumSegmentSize(1460), MpConvert(V4, 443).to_option()), b"GET / HTTP/1.1")
    wire = encode_syn_payload(signal)
    eol = 4 + 10
    assert wire[eol] == 0
    for cut in range(len(wire)):
        if cut <= eol:
            with pytest.raises(MalformedError):
                decode_syn_payload(wire[:cut])
        else:
            assert decode_syn_payload(wire[:cut]) == SynPayloadSignal(signal.options, signal.data[: cut - eol - 1])


# --- Ordinary SYN payloads read by a converter that expects EOL signalling ------------------

def dns_query() -> bytes:
    # RFC 1035 section 4.2.2 (RFC 7766): a 2-byte length prefix, then the message: ID 0x1234,
    # flags 0x0100 (RD), QDCOUNT 1, then QNAME example.com, QTYPE A, QCLASS IN (section 4.1).
    message = h("1234 0100 0001 0000 0000 0000") + b"\x07example\x03com\x00" + h("0001 0001")
    return len(message).to_bytes(2, "big") + message


def tls_client_hello(record_length: int) -> bytes:
    # RFC 8446 section 5.1 record header (type 22, legacy version 0x0301, length), then the
    # handshake header (type 1, 24-bit length) and legacy_version 0x0303. The rest is zero filler:
    # what the decoder does depends on the first five bytes only.
    body = bytes((1,)) + (record_length - 4).to_bytes(3, "big") + h("0303")
    return h("160301") + record_length.to_bytes(2, "big") + body.ljust(record_length, b"\x00")


# PostgreSQL StartupMessage (protocol 3.0 docs, "Message Formats"): Int32 length including
# itself, Int32 196608 (3.0), "user\0alice\0", terminating "\0".
POSTGRES_STARTUP = h("00000014 00030000") + b"user\x00alice\x00\x00"
# MQTT 3.1.1 CONNECT (OASIS, section 3.1): fixed header 0x10, remaining length 12, protocol name
# "MQTT", level 4, flags 0x02 (clean session), keep-alive 60, empty client identifier (3.1.3.1).
MQTT_CONNECT = h("100c 0004") + b"MQTT" + h("04 02 003c 0000")
HTTP_GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"  # RFC 4253 section 4.2
# RFC 9113 section 3.4 "prior knowledge": the client preface, then an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h("000000 04 00 00000000")

# (row label for the doc, payload, options the converter sees or None, bytes it strips, error offset)
LEGACY_ROWS = [
    ("DNS over TCP query (length 0x001d)", dns_query(), (), 1, None),
    ("PostgreSQL StartupMessage", POSTGRES_STARTUP, (), 1, None),
    ("MQTT 3.1.1 CONNECT, empty client ID", MQTT_CONNECT, (UnknownOption(16, MQTT_CONNECT[2:12]),), 13, None),
    ("TLS ClientHello, record length 197", tls_client_hello(197), (UnknownOption(22, h("01")),), 4, None),
    ("TLS ClientHello, record length 512", tls_client_hello(512), None, None, 3),
    ("HTTP/1.1 GET", HTTP_GET, None, None, 0),
    ("SSH identification string", SSH_BANNER, None, None, 0),
    ("HTTP/2 prior-knowledge preface", HTTP2_PREFACE, None, None, 0),
]


@pytest.mark.parametrize("label, payload, options, stripped_bytes, error_offset", LEGACY_ROWS,
                         ids=[r[0] for r in LEGACY_ROWS])
def test_legacy_payloads_as_a_converter_reads_them(label, payload, options, stripped_bytes, error_offset):
    if options is None:
        with pytest.raises(MalformedError) as err:
            decode_syn_payload(payload)
        assert err.value.offset == error_offset
        outcome = f"MalformedError at offset {error_offset}"
    else:
        signal = decode_syn_payload(payload)
        assert signal.options == options
        # The bytes before the data are gone: the server would get a damaged stream.
        assert signal.data == payload[stripped_bytes:]
        outcome = f"signalling, {stripped_bytes} byte{'s' if stripped_bytes > 1 else ''} eaten"
    row = f"| {label} | `{payload[:6].hex(' ')}` | {len(payload)} | {outcome} |"
    assert row in DOC.read_text(), f"docs/mp-convert.md lacks the row:\n{row}"


def test_signalled_payload_is_unambiguous_even_when_data_starts_with_zero():
    # The ambiguity is in reading unsignalled payloads; a signalled one always round-trips.
    signal = SynPayloadSignal((), dns_query())
    assert encode_syn_payload(signal)[:3] == h("00 001d")
    assert decode_syn_payload(encode_syn_payload(signal)) == signal
    assert decode_syn_payload(dns_query()) != signal


@given(st.binary())
def test_a_payload_starting_with_zero_loses_its_first_byte(rest):
    assert decode_syn_payload(b"\x00" + rest) == SynPayloadSignal((), rest)


@given(st.lists(st.integers(1, 255)).map(bytes))
def test_a_payload_without_a_zero_byte_is_always_malformed(payload):
    # Text protocols (HTTP/1, SSH, SMTP, ...) contain no 0x00, so they can never decode.
    with pytest.raises(MalformedError):
        decode_syn_payload(payload)


# --- Properties -------------------------------------------------------------------------------

unknown_kinds = st.integers(6, 255).filter(lambda k: k not in (8, 30, 34, 253, 254))
canonical_options = st.one_of(
    st.just(NOP), st.just(SackPermitted()),
    st.builds(MaximumSegmentSize, st.integers(0, 0xFFFF)),
    st.builds(WindowScale, st.integers(0, 255)),
    st.builds(Timestamps, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(FastOpen, st.sampled_from([b"", bytes(4), bytes(range(16))])),
    st.just(MpCapable(version=1, flags=1)),
    st.builds(lambda c: c.to_option(), st.builds(MpConvert, st.none() | st.ip_addresses(), st.none(), st.booleans())),
    st.builds(UnknownOption, unknown_kinds, st.binary(max_size=30)),
)
signals = st.builds(SynPayloadSignal, st.lists(canonical_options, max_size=8).map(tuple), st.binary(max_size=64))


@given(signals)
def test_round_trip(signal):
    wire = encode_syn_payload(signal)
    assert decode_syn_payload(wire) == signal
    assert signalling_sequence_bytes(signal) == len(wire) - len(signal.data)


@given(st.one_of(st.binary(max_size=80), signals.map(encode_syn_payload).map(lambda b: b[:-1] + b"\x1e")))
def test_decoding_is_total_and_byte_exact(payload):
    try:
        signal = decode_syn_payload(payload)
    except WireError:
        return
    assert encode_syn_payload(signal) == payload
