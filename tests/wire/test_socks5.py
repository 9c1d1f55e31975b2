"""SOCKS5 (RFC 1928) messages: hand-built vectors, stream framing, totality."""

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.wire.errors import InvalidValueError, MalformedError, TruncatedError, WireError
from mpsim.wire.socks5 import (
    Socks5Command,
    Socks5Greeting,
    Socks5MethodSelection,
    Socks5Reply,
    Socks5ReplyMessage,
    Socks5Request,
    decode_greeting,
    decode_method_selection,
    decode_reply,
    decode_request,
)

# RFC 1928 section 3: VER=05 NMETHODS=01 METHODS=00 (no authentication required).
GREETING = bytes.fromhex("05 01 00")
# Section 3: VER=05 METHOD=00.
SELECTION = bytes.fromhex("05 00")
# Section 4: VER=05 CMD=01 (CONNECT) RSV=00 ATYP=01 DST.ADDR=192.0.2.1 DST.PORT=80.
REQUEST_V4 = bytes.fromhex("05 01 00 01 c0 00 02 01 00 50")
# Section 4 with ATYP=04: 2001:db8::1 port 443.
REQUEST_V6 = bytes.fromhex("05 01 00 04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 01 bb")
# Section 5: ATYP=03, one length byte then the name ("example.com", 11 bytes), port 80.
REQUEST_NAME = bytes.fromhex("05 01 00 03 0b") + b"example.com" + bytes.fromhex("00 50")
# Section 6: REP=05 (connection refused), BND.ADDR 0.0.0.0:0.
REPLY_REFUSED = bytes.fromhex("05 05 00 01 00 00 00 00 00 00")

VECTORS = [
    (GREETING, decode_greeting, Socks5Greeting((0,))),
    (SELECTION, decode_method_selection, Socks5MethodSelection(0)),
    (REQUEST_V4, decode_request, Socks5Request(IPv4Address("192.0.2.1"), 80)),
    (REQUEST_V6, decode_request, Socks5Request(IPv6Address("2001:db8::1"), 443)),
    (REQUEST_NAME, decode_request, Socks5Request("example.com", 80)),
    (REPLY_REFUSED, decode_reply, Socks5ReplyMessage(Socks5Reply.CONNECTION_REFUSED)),
]


@pytest.mark.parametrize("raw,decode,value", VECTORS)
def test_vectors_decode_and_encode(raw, decode, value):
    assert decode(raw + b"app data") == (value, len(raw))  # stream: what follows is left alone
    assert value.encode() == raw


@pytest.mark.parametrize("raw,decode,value", VECTORS)
def test_every_strict_prefix_is_truncated(raw, decode, value):
    for cut in range(len(raw)):
        with pytest.raises(TruncatedError):
            decode(raw[:cut])


def test_sizes_used_by_the_baseline():
    # The extra bytes a SOCKS5 client pays before its first application byte.
    assert len(GREETING) == 3 and len(REQUEST_V4) == 10 and len(REQUEST_V6) == 22


@pytest.mark.parametrize("raw,decode,offset", [
    (bytes.fromhex("04 01 00"), decode_greeting, 0),
    (bytes.fromhex("05 00"), decode_greeting, 1),
    (bytes.fromhex("05 01 01 01 c0 00 02 01 00 50"), decode_request, 2),
    (bytes.fromhex("05 01 00 02 c0 00 02 01 00 50"), decode_request, 3),
    (bytes.fromhex("05 01 00 03 00 00 50"), decode_request, 4),
])
def test_malformed_inputs_name_the_offset(raw, decode, offset):
    with pytest.raises(MalformedError) as err:
        decode(raw)
    assert err.value.offset == offset


def test_invalid_values_refused():
    with pytest.raises(InvalidValueError):
        Socks5Greeting(())
    with pytest.raises(InvalidValueError):
        Socks5Request("", 80)
    with pytest.raises(InvalidValueError):
        Socks5Request(IPv4Address("192.0.2.1"), 70000)


addresses = st.one_of(
    st.builds(IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(IPv6Address, st.integers(0, 2**128 - 1)),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=255),
)


@given(addresses, st.integers(0, 65535), st.sampled_from(list(Socks5Command)))
def test_request_round_trip(address, port, command):
    request = Socks5Request(address, port, command)
    assert decode_request(request.encode()) == (request, len(request.encode()))


@given(st.binary(max_size=40))
def test_decoders_are_total(data):
    for decode in (decode_greeting, decode_method_selection, decode_request, decode_reply):
        try:
            decode(data)
        except WireError:
            pass
