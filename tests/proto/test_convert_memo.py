"""The converter's memos of parsed requests and encoded replies (mpsim.proto.convert.Converter):
a session served from them decides exactly what a session of a fresh converter decides, and they
stay bounded."""

import random
from ipaddress import IPv4Address

from mpsim.proto.convert import _MEMO_ENTRIES, ConvertClientExchange, Converter, ConverterPolicy
from mpsim.proto.relay import ConverterTiming
from mpsim.wire.options import MaximumSegmentSize, SackPermitted, Timestamps, WindowScale

CLIENT = IPv4Address("198.18.0.2")
POLICY = ConverterPolicy(allowed_client_prefixes=("198.18.0.0/15",), timing=ConverterTiming.SOCKET)
OPTIONS = (MaximumSegmentSize(1460), SackPermitted(), Timestamps(0, 0), WindowScale(7))


def _decisions(converter: Converter, payload: bytes, options: tuple = OPTIONS) -> list:
    session = converter.session(CLIENT, 0.0)
    session.receive_upstream(payload, 0.0)
    out = []
    while (decision := session.next_decision()) is not None:
        out.append(decision)
    if session.request is not None and not session.done:
        session.downstream_connected(0.0, options)
        while (decision := session.next_decision()) is not None:
            out.append(decision)
    return out


def _payload(port: int, *, info: bool = False, app_data: bytes = b"") -> bytes:
    return ConvertClientExchange().syn_payload(IPv4Address("198.19.0.2"), port, info=info, app_data=app_data)


def test_a_memoised_session_decides_what_a_fresh_one_does():
    shared = Converter(POLICY, random.Random(1))
    cases = [(_payload(80), OPTIONS), (_payload(80), OPTIONS), (_payload(80, info=True), OPTIONS),
             (_payload(80, app_data=b"GET /"), OPTIONS), (_payload(80), OPTIONS[:1]), (_payload(443), OPTIONS),
             (_payload(80), OPTIONS)]
    for payload, options in cases:
        assert _decisions(shared, payload, options) == _decisions(Converter(POLICY, random.Random(1)), payload, options)
    assert len(shared.parsed_requests) == 4 and len(shared.encoded_replies) == 3  # the repeats were served from them


def test_garbage_and_truncated_requests_are_not_memoised():
    converter = Converter(POLICY, random.Random(1))
    _decisions(converter, b"\x01\x02\x54")  # truncated header
    _decisions(converter, b"GET / HTTP/1.1\r\n")  # not Convert
    assert not converter.parsed_requests and not converter.encoded_replies


def test_a_memoised_address_judgement_is_the_same():
    shared = Converter(POLICY, random.Random(1))
    for address in ("198.19.0.2", "127.0.0.1", "198.19.0.2", "224.0.0.1", "127.0.0.1"):
        payload = ConvertClientExchange().syn_payload(IPv4Address(address), 80)
        assert _decisions(shared, payload) == _decisions(Converter(POLICY, random.Random(1)), payload)
    assert len(shared.address_problems) == 3


def test_the_memos_stay_bounded():
    converter = Converter(POLICY, random.Random(1))
    for port in range(1, 3 * _MEMO_ENTRIES):
        address = IPv4Address(f"198.19.{port // 250}.{port % 250 + 1}")
        _decisions(converter, ConvertClientExchange().syn_payload(address, port), (MaximumSegmentSize(port),))
        assert len(converter.parsed_requests) <= _MEMO_ENTRIES and len(converter.encoded_replies) <= _MEMO_ENTRIES
        assert len(converter.address_problems) <= _MEMO_ENTRIES
