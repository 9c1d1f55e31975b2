"""The Convert client's per-connection fast path (mpsim.live.client, docs/live-converter.md "Setup
rate"): reused Convert messages are byte for byte what ConvertClientExchange builds, and a reply
answered from an earlier judgement is exactly what a fresh exchange concludes; everything else goes
to the exchange. No root needed: the reply is read from a socketpair."""

from __future__ import annotations

import socket
import time
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsim.live import client
from mpsim.live.client import _read_reply, convert_message, known_reply
from mpsim.proto.convert import ConvertClientExchange, ReplyStatus
from mpsim.wire.convert import (
    CONVERT_MAGIC,
    ConvertMessage,
    CookieTlv,
    ErrorTlv,
    ExtendedTcpHeaderTlv,
    InfoTlv,
    SupportedTcpExtensionsTlv,
    UnknownTlv,
    encode_convert,
)
from mpsim.wire.mptcp import MpCapable, MpCapableFlags
from mpsim.wire.options import MaximumSegmentSize, SackPermitted, Timestamps, WindowScale

ipv4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1)).filter(lambda a: a.ipv4_mapped is None)
destinations = st.tuples(st.one_of(ipv4, ipv6), st.integers(0, 0xFFFF))
cookies = st.one_of(st.none(), st.binary(min_size=0, max_size=24).map(lambda b: b + bytes(-len(b) % 4)))
requests = st.tuples(destinations, st.booleans(), cookies)


@pytest.fixture(autouse=True)
def empty_memos():
    client._messages.clear()
    client._replies.clear()
    yield
    client._messages.clear()
    client._replies.clear()


@settings(max_examples=200, deadline=None)
@given(st.lists(requests, min_size=1, max_size=40))
def test_reused_convert_messages_are_the_exchanges_bytes(sequence):
    # Repeats, near-repeats (the same destination with another cookie or Info) and, with the memo
    # shrunk, evictions: every message must be what a fresh exchange builds for that request.
    for (dest, info, cookie) in sequence + sequence[::-1]:
        expected = ConvertClientExchange().syn_payload(dest[0], dest[1], info=info, cookie=cookie)
        assert convert_message(dest, info=info, cookie=cookie) == expected


def test_message_memo_is_bounded_and_refuses_what_the_exchange_refuses(monkeypatch):
    monkeypatch.setattr(client, "_MEMO_ENTRIES", 4)
    for port in range(10):
        convert_message((IPv4Address("198.18.1.1"), port))
    assert len(client._messages) <= 4
    with pytest.raises(Exception, match="IPv4-mapped"):
        convert_message((IPv6Address("::ffff:198.18.1.1"), 80))
    with pytest.raises(Exception, match="bytes"):
        convert_message((IPv4Address("198.18.1.1"), 80), cookie=bytearray(4))


# --- the reply -------------------------------------------------------------------------------------

options = st.lists(st.sampled_from([MaximumSegmentSize(1460), MaximumSegmentSize(65535), SackPermitted(),
                                    Timestamps(0, 0), WindowScale(7), WindowScale(14),
                                    MpCapable(1, MpCapableFlags.H)]), max_size=4, unique=True)
converter_tlvs = st.one_of(
    options.map(lambda o: ExtendedTcpHeaderTlv(tuple(o))),
    st.lists(st.sampled_from([4, 8, 30, 34, 40]), max_size=5, unique=True).map(lambda k: SupportedTcpExtensionsTlv(tuple(k))),
    st.builds(ErrorTlv, st.sampled_from([0, 1, 3, 32, 33, 64, 65, 96, 97, 200]), st.integers(0, 255)),
    st.just(InfoTlv()),
    st.binary(min_size=4, max_size=8).map(lambda b: CookieTlv(b[:4])),
    st.sampled_from([UnknownTlv(0x30), UnknownTlv(0x99)]),
)


def _messages(tlvs: list) -> bytes:
    seen, unique = set(), []
    for tlv in tlvs:
        if tlv.tlv_type not in seen:
            seen.add(tlv.tlv_type)
            unique.append(tlv)
    return encode_convert(ConvertMessage(tuple(unique)))


def _mutate(data: bytes, position: int, value: int) -> bytes:
    if not data:
        return data
    position %= len(data)
    return data[:position] + bytes((value,)) + data[position + 1:]


valid_replies = st.lists(converter_tlvs, max_size=3).map(_messages)
replies = st.one_of(
    valid_replies,
    st.tuples(valid_replies, st.integers(0, 1000), st.integers(0, 255)).map(lambda t: _mutate(*t)),
    st.tuples(valid_replies, st.integers(0, 40)).map(lambda t: t[0][:t[1]]),  # cut short: the EOF comes first
    st.binary(max_size=40),
    st.binary(max_size=36).map(lambda b: bytes((1, 1 + len(b) // 4)) + CONVERT_MAGIC.to_bytes(2, "big") + b),
)
DEST = (IPv4Address("198.18.1.1"), 7001)


def _full_parser(data: bytes) -> tuple[object, bytes]:
    """The exchange alone, fed as the client reads: the header, then Total Length words."""
    exchange = ConvertClientExchange()
    exchange.syn_payload(DEST[0], DEST[1])
    header, rest = data[:4], b""
    reply = exchange.receive(header) if len(header) == 4 else None
    used = len(header)
    if reply is None and len(header) == 4:
        rest = data[4:header[1] * 4]
        used += len(rest)
        reply = exchange.receive(rest)
    return (reply if reply is not None else exchange.reply_missing()), data[used:]


def _through_the_client(data: bytes, trailer: bytes) -> tuple[object, bytes]:
    """``data`` + ``trailer`` arrive, then EOF; the client's reply, and what stays in the socket."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data + trailer)
        theirs.shutdown(socket.SHUT_WR)
        ours.setblocking(False)
        reply = _read_reply(ours, DEST, False, None, time.monotonic() + 5)
        ours.setblocking(True)
        left = b"".join(iter(lambda: ours.recv(4096), b""))
    return reply, left


@settings(max_examples=300, deadline=None)
@given(replies, st.binary(max_size=8))
def test_reply_fast_path_agrees_with_the_exchange(data, trailer):
    expected, expected_left = _full_parser(data + trailer)
    for attempt in range(2):  # the second read may be answered from the first one's judgement
        fast = known_reply(data[:data[1] * 4]) if len(data) >= 2 else None
        reply, left = _through_the_client(data, trailer)
        assert reply == expected, f"attempt {attempt}"
        assert left == expected_left  # read exactly the message: the server's bytes stay in the socket
        if fast is not None:  # answered from memory: only ever a success
            assert fast == expected and fast.status is ReplyStatus.CONVERTED and not fast.must_reset


@given(valid_replies)
def test_only_successes_are_remembered(data):
    reply, _ = _through_the_client(data, b"")
    remembered = known_reply(data)
    if reply.status is ReplyStatus.CONVERTED:
        assert remembered == reply
    else:
        assert remembered is None  # an Error, an Info answer or anything invalid is judged afresh each time


def test_reply_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(client, "_MEMO_ENTRIES", 3)
    for mss in range(1000, 1010):
        _through_the_client(encode_convert(ConvertMessage((ExtendedTcpHeaderTlv((MaximumSegmentSize(mss),)),))), b"")
    assert 1 <= len(client._replies) <= 3
