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


# --- request facts and the last reply, remembered by identity (the live daemon's hot path) ------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mpsim.proto.convert import SESSION_TRANSITIONS, SessionState  # noqa: E402
from mpsim.wire.convert import (  # noqa: E402
    ConnectOption,
    ConvertMessage,
    ExtendedTcpHeaderTlv,
    encode_convert,
)
from mpsim.wire.options import TcpOptionKind  # noqa: E402

_ADDRESSES = ("198.19.0.2", "198.18.0.9", "127.0.0.1", "224.0.0.1", "0.0.0.1", "203.0.113.7")
_OPTION_SETS = ((), (ConnectOption(TcpOptionKind.SACK_PERMITTED, b""),), (ConnectOption(TcpOptionKind.TFO, b""),),
                (ConnectOption(TcpOptionKind.NOP, b""), ConnectOption(99, b"ab"), ConnectOption(99, b"cd")))
#: The same tuple objects over and over (what mpsim.live.sockets.SynAckOptions hands over), an
#: equal tuple that is another object, and different ones.
_SYNACKS = (OPTIONS, OPTIONS, tuple(OPTIONS), OPTIONS[:1], (MaximumSegmentSize(1400),))
_REQUESTS = st.one_of(
    st.builds(lambda a, port, info, opts, app, cookie: ConvertClientExchange().syn_payload(
        IPv4Address(a), port, info=info, options=opts, app_data=app, cookie=cookie),
        st.sampled_from(_ADDRESSES), st.sampled_from((80, 443)), st.booleans(), st.sampled_from(_OPTION_SETS),
        st.sampled_from((b"", b"GET /")), st.sampled_from((None, b"\x00" * 16))),
    st.just(ConvertClientExchange().syn_payload(None, info=True)),  # Info alone
    st.just(encode_convert(ConvertMessage((ExtendedTcpHeaderTlv(()),)))),  # a TLV only a converter sends
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(_REQUESTS, st.integers(0, len(_SYNACKS) - 1)), min_size=1, max_size=12),
       require_cookie=st.booleans(), hairpin=st.booleans())
def test_remembered_request_facts_and_replies_decide_what_a_fresh_converter_does(steps, require_cookie, hairpin):
    policy = ConverterPolicy(allowed_client_prefixes=("198.18.0.0/15",), timing=ConverterTiming.SOCKET,
                             require_cookie=require_cookie, allow_hairpin=hairpin,
                             supported_kinds=(TcpOptionKind.SACK_PERMITTED, TcpOptionKind.TIMESTAMPS))
    shared = Converter(policy, random.Random(1))
    for payload, synack in steps:
        fresh = Converter(policy, random.Random(1))
        assert _decisions(shared, payload, _SYNACKS[synack]) == _decisions(fresh, payload, _SYNACKS[synack])
    assert len(shared.parsed_requests) <= _MEMO_ENTRIES


def test_request_facts_are_filed_by_the_request_object_and_stay_bounded():
    converter = Converter(POLICY, random.Random(1))
    for port in range(1, 2 * _MEMO_ENTRIES):
        _decisions(converter, _payload(port))
        assert len(converter._request_facts) <= _MEMO_ENTRIES
    request = converter.parsed_requests[_payload(2 * _MEMO_ENTRIES - 1)][0]
    assert converter.request_facts(request).request is request


def test_session_states_hash_by_identity_and_the_transitions_still_hold():
    assert hash(SessionState.DONE) == object.__hash__(SessionState.DONE)
    assert SessionState.RELAYING in SESSION_TRANSITIONS[SessionState.CONNECTING_DOWNSTREAM]
