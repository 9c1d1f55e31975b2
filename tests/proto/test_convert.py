"""RFC 8803 machines: the converter session (every error code, the processing order, waiting and
its timeouts), the client exchange (every code and its reaction), and whole connections through
ConverterHost in the harness, with RFC and socket timing.

Section numbers are RFC 8803's; "1.7" and "8.3" are docs/protocols.md sections (the processing order
and the client reactions).
"""

import dataclasses
import random
from ipaddress import IPv4Address, IPv6Address

import pytest

from mpsim.proto.convert import (
    COOKIE_BYTES,
    AcceptUpstream,
    CloseDownstream,
    CloseUpstream,
    ConvertAdvice,
    ConvertClientExchange,
    ConvertClientPolicy,
    Converter,
    ConverterHost,
    ConverterPolicy,
    ConverterReplied,
    ConverterTiming,
    ConvertReaction,
    ConvertSynAckCheck,
    IgnoreUpstream,
    OpenDownstream,
    ReplyStatus,
    ResetDownstream,
    ResetUpstream,
    RetransmitDownstreamSyn,
    SendDownstream,
    SendUpstream,
    SessionState,
    SynAckVerdict,
    UpstreamResetReason,
)
from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason
from mpsim.proto.harness import Harness
from mpsim.proto.host import Acceptance, Host
from mpsim.proto.tcp import Closed, CloseReason, DataReceived, Established, PeerClosed, TcpPolicy
from mpsim.wire.convert import (
    ConnectOption,
    ConnectTlv,
    ConvertErrorCode,
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
from mpsim.wire.options import (
    EndOfOptionList,
    FastOpen,
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    TcpOptionKind,
    Timestamps,
    WindowScale,
)
from mpsim.wire.segment import TcpFlags

CLIENT = IPv4Address("10.0.0.2")
CONVERTER_IN = IPv4Address("10.0.0.1")
CONVERTER_OUT = IPv4Address("192.0.2.1")
SERVER = IPv4Address("192.0.2.80")
OUTSIDE = IPv4Address("198.51.100.7")
CONVERT_PORT = 5124
SERVER_OPTIONS = (MaximumSegmentSize(1460), SackPermitted(), Timestamps(7, 9), NoOperation(), WindowScale(7))
ERR = ConvertErrorCode
KIND = TcpOptionKind


def policy(**changes) -> ConverterPolicy:
    return ConverterPolicy(**{"allowed_client_prefixes": ("10.0.0.0/8",), **changes})


def new_session(converter_policy=None, client=CLIENT, now=0.0, converter=None):
    converter = converter or Converter(converter_policy or policy(), random.Random(1))
    return converter.session(client, now)


def drain(session) -> list:
    out = []
    while (decision := session.next_decision()) is not None:
        out.append(decision)
    return out


def msg(*tlvs) -> bytes:
    return encode_convert(ConvertMessage(tlvs))


def connect(address=SERVER, port=80, options=()) -> ConnectTlv:
    return ConnectTlv(port, address, tuple(options))


def error_of(decisions) -> ErrorTlv:
    """The Error TLV a refusal carries: the reply, then FIN and nothing else (6.2.8, 1.7 item 9)."""
    assert len(decisions) == 2 and isinstance(decisions[1], CloseUpstream), decisions
    reply = decisions[0].reply
    assert decisions[0].data == encode_convert(reply) and len(reply.tlvs) == 1
    return reply.tlv(ErrorTlv)


def refusal(payload: bytes, **policy_changes) -> ErrorTlv:
    session = new_session(policy(**policy_changes))
    session.receive_upstream(payload, 0.0)
    error = error_of(drain(session))
    assert session.state is SessionState.DONE and session.error == error
    return error


def opened(session, payload: bytes, now=0.0) -> OpenDownstream:
    session.receive_upstream(payload, now)
    decisions = drain(session)
    assert len(decisions) == 1 and isinstance(decisions[0], OpenDownstream), decisions
    return decisions[0]


# --- the converter session: success ----------------------------------------------------------------


def test_connect_opens_downstream_then_replies_with_the_server_options_as_received():
    session = new_session()
    request = opened(session, msg(connect()) + b"GET /")
    assert request == OpenDownstream(SERVER, 80, (), b"")
    assert session.state is SessionState.CONNECTING_DOWNSTREAM and session.destination == (SERVER, 80)
    session.downstream_connected(0.5, SERVER_OPTIONS + (EndOfOptionList(),))
    reply, data = drain(session)
    # 6.2.6: the server's SYN-ACK options, NOPs kept; the EOL is padding and cannot be carried.
    expected = ConvertMessage((ExtendedTcpHeaderTlv(SERVER_OPTIONS),))
    assert reply == SendUpstream(encode_convert(expected), expected)
    assert data == SendDownstream(b"GET /")  # 4.3: user data after the TLVs, TLVs stripped
    assert session.state is SessionState.RELAYING and session.get_timer() is None


def test_info_with_connect_adds_the_supported_extensions():
    session = new_session(policy(supported_kinds=(KIND.TFO, KIND.TIMESTAMPS)))
    opened(session, msg(InfoTlv(), connect()))
    session.downstream_connected(0.5, SERVER_OPTIONS)
    (reply,) = drain(session)
    assert reply.reply.tlv(SupportedTcpExtensionsTlv) == SupportedTcpExtensionsTlv((KIND.TFO, KIND.TIMESTAMPS))
    assert reply.reply.tlv(ExtendedTcpHeaderTlv) == ExtendedTcpHeaderTlv(SERVER_OPTIONS)


def test_info_alone_is_answered_and_closed_without_a_downstream_connection():
    session = new_session(policy(supported_kinds=(KIND.SACK_PERMITTED,)))
    session.receive_upstream(msg(InfoTlv()), 0.0)
    assert drain(session) == [SendUpstream(msg(SupportedTcpExtensionsTlv((4,))),
                                           ConvertMessage((SupportedTcpExtensionsTlv((4,)),))), CloseUpstream()]
    assert session.state is SessionState.DONE and session.converter.active_sessions == 0


def test_tfo_options_follow_section_7():
    # An empty TFO option asks the converter to request a cookie; the data waits for the handshake.
    session = new_session()
    request = opened(session, msg(connect(options=(ConnectOption(KIND.TFO),))) + b"data")
    assert request.requested(KIND.TFO) == ConnectOption(KIND.TFO) and request.syn_payload == b""
    # A cookie is copied verbatim, and vouches for the data in the SYN.
    session = new_session()
    request = opened(session, msg(connect(options=(ConnectOption(KIND.TFO, b"\x01" * 8),))) + b"data")
    assert request.requested(KIND.TFO).value == b"\x01" * 8 and request.syn_payload == b"data"
    session.downstream_connected(0.5, ())
    assert [type(d) for d in drain(session)] == [SendUpstream]  # the SYN carried the data already


def test_ignored_connect_kinds_neither_refuse_nor_travel():
    # 7: MSS, Window Scale, SACK and NOP in a Connect TLV MUST be ignored, whatever the policy.
    entries = (ConnectOption(KIND.MSS, b"\x05\xb4"), ConnectOption(KIND.NOP), ConnectOption(KIND.WINDOW_SCALE, b"\x07"),
               ConnectOption(KIND.SACK), ConnectOption(KIND.TIMESTAMPS), ConnectOption(KIND.MPTCP))
    session = new_session(policy(supported_kinds=(KIND.TIMESTAMPS, KIND.MPTCP)))
    request = opened(session, msg(connect(options=entries)))
    assert request.requested_options == (ConnectOption(KIND.TIMESTAMPS), ConnectOption(KIND.MPTCP))
    assert request.mptcp


def test_relaying_both_ways_and_closing_in_either_order_releases_the_session():
    converter = Converter(policy(), random.Random(1))
    session = converter.session(CLIENT, 0.0)
    opened(session, msg(connect()) + b"a")
    session.receive_upstream(b"b", 0.1)  # before the server answered: buffered, after the reply
    assert drain(session) == []
    session.downstream_connected(0.5, ())
    assert [type(d) for d in drain(session)] == [SendUpstream, SendDownstream]
    session.receive_upstream(b"c", 0.6)
    session.downstream_data(b"response")
    assert drain(session) == [SendDownstream(b"c"), SendUpstream(b"response")]
    session.upstream_closed(0.7)
    assert drain(session) == [CloseDownstream()] and session.state is SessionState.RELAYING
    assert converter.active_sessions == 1
    session.downstream_closed()
    assert drain(session) == [CloseUpstream()] and session.state is SessionState.DONE
    assert converter.active_sessions == 0
    assert converter.counters["bytes_to_server"] == 3 and converter.counters["bytes_to_client"] == 8


def test_a_client_fin_while_connecting_follows_the_buffered_data():
    session = new_session()
    opened(session, msg(connect()) + b"a")
    session.upstream_closed(0.1)
    session.downstream_connected(0.5, ())
    assert [type(d) for d in drain(session)] == [SendUpstream, SendDownstream, CloseDownstream]


def test_a_server_reset_while_relaying_resets_the_client():
    session = new_session()
    opened(session, msg(connect()))
    session.downstream_connected(0.5, ())
    drain(session)
    session.downstream_reset(1.0)
    assert drain(session) == [ResetUpstream(UpstreamResetReason.DOWNSTREAM_RESET)]
    session.downstream_data(b"late")  # a driver may still report events: ignored once DONE
    assert drain(session) == []


def test_a_client_reset_tears_the_downstream_down():
    session = new_session()
    opened(session, msg(connect()))
    session.upstream_reset(0.1)
    assert drain(session) == [ResetDownstream()] and session.state is SessionState.DONE


def test_inputs_that_cannot_happen_in_a_state_are_refused():
    session = new_session()
    with pytest.raises(LocalProtocolError):
        session.downstream_data(b"x")  # no downstream connection yet
    opened(session, msg(connect()))
    with pytest.raises(LocalProtocolError):
        session.downstream_closed()
    session.upstream_closed(0.1)
    with pytest.raises(LocalProtocolError):
        session.receive_upstream(b"after FIN", 0.2)


# --- the converter session: every refusal ------------------------------------------------------------


def test_error_0_lists_the_supported_versions():
    payload = bytes((2,)) + msg(connect())[1:]  # version 2, otherwise a good request
    error = refusal(payload)
    assert error.code == ERR.UNSUPPORTED_VERSION and error.listed_values == (1,)


def test_total_length_zero_resets_without_a_reply():
    session = new_session()
    session.receive_upstream(b"\x01\x00\x22\x63" + msg(connect())[4:], 0.0)
    assert drain(session) == [ResetUpstream(UpstreamResetReason.ZERO_TOTAL_LENGTH)]
    assert session.converter.counters["resets_sent"] == 1


@pytest.mark.parametrize("timing, decision", [(ConverterTiming.RFC, IgnoreUpstream()),
                                              (ConverterTiming.SOCKET, CloseUpstream())])
def test_bad_magic_is_not_convert_data(timing, decision):
    # 6: silently ignored; a socket converter has answered the SYN already, so it closes.
    session = new_session(policy(timing=timing))
    session.receive_upstream(b"GET / HTTP/1.1\r\n\r\n", 0.0)
    assert drain(session) == [decision] and session.converter.counters["ignored"] == 1


def test_framing_errors_get_error_1_echoing_the_message():
    good = msg(connect())
    past_end = good[:1] + bytes((2,)) + good[2:4] + b"\x0a\x05" + good[6:8]  # Connect runs past Total Length
    error = refusal(past_end)
    assert error.code == ERR.MALFORMED_MESSAGE and error.value == 0 and error.data == past_end
    duplicate = msg(InfoTlv()) [:1] + bytes((3,)) + b"\x22\x63" + InfoTlv().encode() * 2
    error = refusal(duplicate + b"user data is not echoed")
    assert error.code == ERR.MALFORMED_MESSAGE and error.data == duplicate


def test_type_0_unknown_and_converter_only_tlvs_get_error_2():
    type_zero = b"\x01\x02\x22\x63\x00\x01\x00\x00"
    assert refusal(type_zero).code == ERR.UNSUPPORTED_MESSAGE and refusal(type_zero).data == type_zero
    unknown = msg(UnknownTlv(0x40), connect())
    assert refusal(unknown).code == ERR.UNSUPPORTED_MESSAGE and refusal(unknown).data == unknown
    for converter_tlv in (ExtendedTcpHeaderTlv(), SupportedTcpExtensionsTlv((4,)), ErrorTlv(1)):
        assert refusal(msg(converter_tlv, connect())).code == ERR.UNSUPPORTED_MESSAGE


def test_the_echo_is_the_bytes_as_received():
    # The Info TLV's Zero field is ignored on receipt (a re-encoding would zero it); the echo keeps it.
    payload = b"\x01\x07\x22\x63\x01\x01\xab\xcd" + connect(IPv4Address("127.0.0.1")).encode()
    assert refusal(payload).data == payload


def test_a_request_with_neither_connect_nor_info_gets_error_1():
    assert refusal(msg(CookieTlv(b"\x00" * 8))).code == ERR.MALFORMED_MESSAGE
    assert refusal(msg()).code == ERR.MALFORMED_MESSAGE  # a header alone asks for nothing


def test_the_echo_is_cut_to_fit_a_reply():
    # The largest request (1020 bytes), its Cookie TLV (from byte 24) one word longer than it is.
    big = msg(connect(), CookieTlv(bytes(1020 - 4 - 20 - 4)))
    assert len(big) == 1020 and big[24] == 0x16
    broken = big[:25] + bytes((big[25] + 1,)) + big[26:]
    error = refusal(broken)
    assert error.code == ERR.MALFORMED_MESSAGE and error.data == broken[:1012]
    assert len(encode_convert(ConvertMessage((error,)))) == 1020


def test_cookies_error_3_then_validation():
    converter = Converter(policy(require_cookie=True), random.Random(1))
    session = converter.session(CLIENT, 0.0)
    session.receive_upstream(msg(connect()), 0.0)
    error = error_of(drain(session))
    cookie = converter.cookie_for(CLIENT)
    assert error.code == ERR.MISSING_COOKIE and error.value == 0 and error.data == cookie
    assert len(cookie) == COOKIE_BYTES
    # The cookie is bound to the client address (6.2.7) and to this converter's secret.
    assert converter.cookie_for(IPv4Address("10.0.0.3")) != cookie
    assert Converter(policy(), random.Random(2)).cookie_for(CLIENT) != cookie
    opened(converter.session(CLIENT, 1.0), msg(CookieTlv(cookie), connect()))
    wrong = converter.session(IPv4Address("10.0.0.3"), 1.0)
    wrong.receive_upstream(msg(CookieTlv(cookie), connect()), 1.0)
    assert error_of(drain(wrong)).code == ERR.NOT_AUTHORIZED


def test_a_converter_that_issues_no_cookies_refuses_with_error_32():
    assert refusal(msg(connect()), require_cookie=True, issue_cookies=False).code == ERR.NOT_AUTHORIZED


def test_authorization_never_an_open_relay():
    session = new_session(client=OUTSIDE)
    session.receive_upstream(msg(connect()), 0.0)
    assert error_of(drain(session)).code == ERR.NOT_AUTHORIZED
    # No prefixes configured: nobody is served (9.1).
    assert refusal(msg(connect()), allowed_client_prefixes=()).code == ERR.NOT_AUTHORIZED
    assert refusal(msg(InfoTlv()), allowed_client_prefixes=()).code == ERR.NOT_AUTHORIZED
    # Hairpinning to another internal client is allowed unless configured otherwise (9.1).
    inside = connect(IPv4Address("10.9.9.9"))
    opened(new_session(), msg(inside))
    assert refusal(msg(inside), allow_hairpin=False).code == ERR.NOT_AUTHORIZED
    opened(new_session(policy(allow_hairpin=False)), msg(connect()))


def test_resource_limit_error_64_and_the_slot_comes_back():
    converter = Converter(policy(max_sessions=1, resource_backoff_s=7), random.Random(1))
    first = converter.session(CLIENT, 0.0)
    opened(first, msg(connect()))
    second = converter.session(CLIENT, 0.1)
    second.receive_upstream(msg(connect()), 0.1)
    error = error_of(drain(second))
    assert (error.code, error.value) == (ERR.RESOURCE_EXCEEDED, 7)
    first.downstream_reset(0.2)  # Error 96 ends the first session
    assert error_of(drain(first)).code == ERR.CONNECTION_RESET
    opened(converter.session(CLIENT, 0.3), msg(connect()))


@pytest.mark.parametrize("address", [IPv4Address("224.0.0.1"), IPv4Address("127.0.0.1"),
                                     IPv4Address("255.255.255.255"), IPv6Address("::1"), IPv6Address("ff02::1")])
def test_bad_connect_addresses_get_error_1(address):
    payload = msg(connect(address))
    error = refusal(payload)
    assert error.code == ERR.MALFORMED_MESSAGE and error.data == payload


def test_unsupported_options_get_error_33_listing_the_kinds():
    entries = (ConnectOption(KIND.TCP_AO, b"\x01\x02"), ConnectOption(KIND.TFO), ConnectOption(28, b"\x00\x01"),
               ConnectOption(KIND.MPTCP))
    error = refusal(msg(connect(options=entries)))
    assert error.code == ERR.UNSUPPORTED_TCP_OPTION and error.listed_values == (KIND.TCP_AO, 28, KIND.MPTCP)
    with pytest.raises(ValueError):
        policy(supported_kinds=(KIND.TCP_AO,))  # 7: TCP-AO MUST NOT be announced


# Several checks fail at once: the earliest in the processing order (1.7) answers.
AO = ConnectOption(KIND.TCP_AO, b"\x01\x02")
ORDER_CASES = {
    "bad magic before version": (b"\x02\x05\x22\x64" + bytes(16), None, {}),
    "version before total length": (b"\x02\x00\x22\x63", ERR.UNSUPPORTED_VERSION, {}),
    "framing before type": (b"\x01\x03\x22\x63" + InfoTlv().encode() * 2 + b"\x00\x01\x00\x00",
                            ERR.MALFORMED_MESSAGE, {}),
    "type before cookie": (msg(UnknownTlv(0x40), connect()), ERR.UNSUPPORTED_MESSAGE, {"require_cookie": True}),
    "nothing asked before cookie": (msg(), ERR.MALFORMED_MESSAGE, {"require_cookie": True}),
    "cookie before authorization": (msg(connect()), ERR.MISSING_COOKIE,
                                    {"require_cookie": True, "allowed_client_prefixes": ()}),
    "authorization before resources": (msg(connect()), ERR.NOT_AUTHORIZED,
                                       {"allowed_client_prefixes": (), "max_sessions": 0}),
    "resources before address": (msg(connect(IPv4Address("224.0.0.1"))), ERR.RESOURCE_EXCEEDED, {"max_sessions": 0}),
    "address before options": (msg(connect(IPv4Address("224.0.0.1"), options=(AO,))), ERR.MALFORMED_MESSAGE, {}),
    "options last": (msg(connect(options=(AO,))), ERR.UNSUPPORTED_TCP_OPTION, {}),
}


@pytest.mark.parametrize("payload, code, changes", ORDER_CASES.values(), ids=ORDER_CASES.keys())
def test_processing_order(payload, code, changes):
    session = new_session(policy(**changes))
    session.receive_upstream(payload, 0.0)
    decisions = drain(session)
    if code is None:
        assert decisions == [IgnoreUpstream()]
    else:
        assert error_of(decisions).code == code


# --- the converter session: waiting for the message, and the downstream outcomes ---------------------


@pytest.mark.parametrize("timing", list(ConverterTiming))
def test_an_incomplete_message_waits_for_the_rest(timing):
    payload = msg(InfoTlv(), connect()) + b"tail"
    session = new_session(policy(timing=timing))
    session.receive_upstream(payload[:5], 0.0)  # the SYN payload: a header and one byte
    # RFC timing must answer the SYN now, or the rest could never come; sockets have answered.
    assert drain(session) == ([AcceptUpstream()] if timing is ConverterTiming.RFC else [])
    for i in range(5, 27):
        session.receive_upstream(payload[i:i + 1], 0.1)
        assert drain(session) == [] and session.state is SessionState.EXPECT_CONVERT_MESSAGE
    assert opened(session, payload[27:], 0.2).address == SERVER
    session.downstream_connected(0.5, ())
    assert drain(session)[-1] == SendDownstream(b"tail")


def test_the_message_timeout_answers_error_1_with_what_came():
    session = new_session(policy(message_timeout_s=4.0), now=1.0)
    payload = msg(connect())
    session.receive_upstream(payload[:10], 1.0)
    assert drain(session) == [AcceptUpstream()] and session.get_timer() == 5.0
    session.handle_timer(4.999)
    assert drain(session) == []
    session.handle_timer(5.0)
    error = error_of(drain(session))
    assert error.code == ERR.MALFORMED_MESSAGE and error.data == payload[:10] + b"\x00\x00"
    assert session.converter.counters["message_timeouts"] == 1 and session.get_timer() is None


def test_a_fin_before_the_message_is_complete_answers_error_1():
    session = new_session()
    session.receive_upstream(msg(connect())[:8], 0.0)
    drain(session)
    session.upstream_closed(0.1)
    assert error_of(drain(session)).code == ERR.MALFORMED_MESSAGE


def test_a_syn_without_a_convert_header():
    # RFC timing: silently ignored (6), unless the policy waits for the message in the data.
    session = new_session()
    session.receive_upstream(b"", 0.0)
    assert drain(session) == [IgnoreUpstream()]
    session = new_session(policy(accept_syn_without_message=True))
    session.receive_upstream(b"", 0.0)
    assert drain(session) == [AcceptUpstream()]
    opened(session, msg(connect()), 0.3)
    # Sockets: the kernel answered; nothing comes before the timeout, which then closes.
    session = new_session(policy(timing=ConverterTiming.SOCKET, message_timeout_s=2.0))
    session.receive_upstream(b"", 0.0)
    assert drain(session) == []
    session.handle_timer(2.0)
    assert drain(session) == [CloseUpstream()]


def test_server_reset_is_error_96():
    session = new_session()
    opened(session, msg(connect()))
    session.downstream_reset(0.5)
    error = error_of(drain(session))
    assert (error.code, error.value) == (ERR.CONNECTION_RESET, 0)


def test_icmp_unreachable_is_error_97_with_the_code():
    session = new_session()
    opened(session, msg(connect()))
    session.downstream_unreachable(0.5, 3)
    decisions = drain(session)
    assert decisions[0] == ResetDownstream()
    error = error_of(decisions[1:])
    assert (error.code, error.value) == (ERR.DESTINATION_UNREACHABLE, 3)


def test_downstream_timeout_and_the_connect_timer_are_error_65():
    session = new_session(policy(network_failure_backoff_s=20))
    opened(session, msg(connect()))
    session.downstream_timeout(0.5)
    decisions = drain(session)
    assert decisions[0] == ResetDownstream() and error_of(decisions[1:]).value == 20
    session = new_session(policy(connect_timeout_s=3.0), now=1.0)
    opened(session, msg(connect()), now=1.0)
    assert session.get_timer() == 4.0
    session.handle_timer(4.0)
    decisions = drain(session)
    assert decisions[0] == ResetDownstream() and error_of(decisions[1:]).code == ERR.NETWORK_FAILURE
    assert session.converter.counters["connect_timeouts"] == 1


def test_client_syn_retransmissions_drive_the_downstream_syn_only_with_rfc_timing():
    session = new_session()
    opened(session, msg(connect()))
    session.upstream_syn_retransmitted(1.0)
    assert drain(session) == [RetransmitDownstreamSyn()]
    session = new_session(policy(timing=ConverterTiming.SOCKET))
    opened(session, msg(connect()))
    session.upstream_syn_retransmitted(1.0)
    assert drain(session) == []


# --- the client exchange -------------------------------------------------------------------------


def test_syn_payload_layout():
    exchange = ConvertClientExchange()
    payload = exchange.syn_payload(SERVER, 443, info=True, cookie=b"\xaa" * 8,
                                   options=(ConnectOption(KIND.TFO),), app_data=b"hello")
    expected = msg(InfoTlv(), CookieTlv(b"\xaa" * 8), connect(SERVER, 443, (ConnectOption(KIND.TFO),)))
    assert payload == expected + b"hello"
    assert exchange.payload_bytes == len(payload)
    with pytest.raises(LocalProtocolError):
        exchange.syn_payload(SERVER, 443)
    assert ConvertClientExchange().syn_payload(None, info=True) == msg(InfoTlv())
    with pytest.raises(LocalProtocolError):
        ConvertClientExchange().syn_payload(None, app_data=b"x")


def test_check_synack_needs_the_whole_payload_acked():
    exchange = ConvertClientExchange()
    payload = exchange.syn_payload(SERVER, 80, app_data=b"abc")
    assert exchange.check_synack(len(payload), len(payload)) is SynAckVerdict.PAYLOAD_ACKED
    assert exchange.reply is None
    for acked in (0, len(payload) - 3):  # ISN+1 only, or the message without the data
        exchange = ConvertClientExchange()
        exchange.syn_payload(SERVER, 80, app_data=b"abc")
        assert exchange.check_synack(acked, len(payload)) is SynAckVerdict.RESET_STOP_USING_CONVERTER
        assert exchange.reply.advice.reaction is ConvertReaction.CONVERTER_OFF
        assert exchange.reply.fallback_reason is FallbackReason.SIGNAL_NOT_ACKED


def test_a_success_reply_byte_by_byte_with_mptcp_tfo_and_app_data():
    server_mpc = MpCapable(1, MpCapableFlags.H, sender_key=0x1122334455667788)
    server_options = (MaximumSegmentSize(1400), server_mpc, FastOpen(b"\x05" * 8))
    reply_bytes = msg(ExtendedTcpHeaderTlv(server_options), SupportedTcpExtensionsTlv((30, 34))) + b"HTTP/1.1"
    exchange = ConvertClientExchange()
    exchange.syn_payload(SERVER, 80, info=True)
    for i in range(len(reply_bytes) - 9):
        assert exchange.receive(reply_bytes[i:i + 1]) is None
    reply = exchange.receive(reply_bytes[len(reply_bytes) - 9:])
    assert reply.status is ReplyStatus.CONVERTED and not reply.must_reset
    assert reply.server_options == server_options and reply.supported_kinds == (30, 34)
    assert reply.server_mptcp_capable and reply.server_tfo_cookie == b"\x05" * 8
    assert reply.app_data == b"HTTP/1.1"
    with pytest.raises(LocalProtocolError):
        exchange.receive(b"more")  # the caller owns the stream from here
    plain = ConvertClientExchange().receive(msg(ExtendedTcpHeaderTlv(SERVER_OPTIONS)))
    assert not plain.server_mptcp_capable and plain.server_tfo_cookie is None


CODE_CASES = [
    (ErrorTlv.with_list(0, (2, 3)), ConvertAdvice(ConvertReaction.RETRY_OTHER_VERSION, versions=(2, 3))),
    (ErrorTlv(1, 0, b"\x01\x01\x22\x63"), ConvertAdvice(ConvertReaction.RESET_LOG)),
    (ErrorTlv(2, 0, b"\x01\x01\x22\x63"), ConvertAdvice(ConvertReaction.RESET_LOG)),
    (ErrorTlv(3, 0, b"\xc0\x0c\x1e\x00"), ConvertAdvice(ConvertReaction.RETRY_WITH_COOKIE, cookie=b"\xc0\x0c\x1e\x00")),
    (ErrorTlv(3), ConvertAdvice(ConvertReaction.CONVERTER_OFF)),  # asks for a cookie it does not give
    (ErrorTlv(32), ConvertAdvice(ConvertReaction.CONVERTER_OFF)),
    (ErrorTlv.with_list(33, (29, 30)), ConvertAdvice(ConvertReaction.RETRY_WITHOUT_OPTIONS, kinds=(29, 30))),
    (ErrorTlv(64, 0), ConvertAdvice(ConvertReaction.BACK_OFF, back_off_s=30.0)),
    (ErrorTlv(64, 90), ConvertAdvice(ConvertReaction.BACK_OFF, back_off_s=90.0)),
    (ErrorTlv(65, 5), ConvertAdvice(ConvertReaction.BACK_OFF, back_off_s=5.0)),
    (ErrorTlv(96), ConvertAdvice(ConvertReaction.REPORT_REFUSED)),
    (ErrorTlv(97, 1), ConvertAdvice(ConvertReaction.REPORT_UNREACHABLE, icmp_code=1)),
    # Codes RFC 8803 does not define, read by their class (6.2.8).
    (ErrorTlv(9), ConvertAdvice(ConvertReaction.RESET_LOG)),
    (ErrorTlv(40), ConvertAdvice(ConvertReaction.CONVERTER_OFF)),
    (ErrorTlv(70), ConvertAdvice(ConvertReaction.BACK_OFF, back_off_s=30.0)),
    (ErrorTlv(100), ConvertAdvice(ConvertReaction.REPORT_REFUSED)),
    (ErrorTlv(200), ConvertAdvice(ConvertReaction.RESET_LOG)),
]


@pytest.mark.parametrize("error, advice", CODE_CASES, ids=[f"code{e.code}-{a.reaction.name}" for e, a in CODE_CASES])
def test_each_error_code_gives_its_reaction(error, advice):
    reply = ConvertClientExchange().receive(msg(error))
    assert reply.status is ReplyStatus.ERROR and reply.must_reset and reply.error == error
    assert reply.advice == advice and reply.fallback_reason is FallbackReason.CONVERTER_ERROR


def test_the_back_off_default_is_a_policy_of_at_least_30_s():
    assert ConvertClientExchange(ConvertClientPolicy(default_back_off_s=60.0)).receive(
        msg(ErrorTlv(65))).advice.back_off_s == 60.0
    with pytest.raises(ValueError):
        ConvertClientPolicy(default_back_off_s=10.0)


def test_an_error_wins_over_an_extended_tcp_header():
    reply = ConvertClientExchange().receive(msg(ExtendedTcpHeaderTlv(SERVER_OPTIONS), ErrorTlv(96)))
    assert reply.status is ReplyStatus.ERROR and reply.advice.reaction is ConvertReaction.REPORT_REFUSED


def test_error_0_in_another_versions_header_is_still_read():
    reply_bytes = b"\x02" + msg(ErrorTlv.with_list(0, (2,)))[1:]
    exchange = ConvertClientExchange()
    assert exchange.receive(reply_bytes[:6]) is None
    reply = exchange.receive(reply_bytes[6:])
    assert reply.advice == ConvertAdvice(ConvertReaction.RETRY_OTHER_VERSION, versions=(2,))
    other = ConvertClientExchange().receive(b"\x02" + msg(ExtendedTcpHeaderTlv())[1:])
    assert other.status is ReplyStatus.INVALID and other.advice.reaction is ConvertReaction.CONVERTER_OFF


INVALID_CASES = {
    "duplicate TLV": (b"\x01\x03\x22\x63" + ErrorTlv(96).encode() * 2, ConvertReaction.RESET_LOG),
    "type 0": (b"\x01\x02\x22\x63\x00\x01\x00\x00", ConvertReaction.RESET_LOG),
    "unknown type": (msg(UnknownTlv(0x40)), ConvertReaction.RESET_LOG),
    "a TLV converters do not send": (msg(InfoTlv()), ConvertReaction.RESET_LOG),
    "framing": (b"\x01\x02\x22\x63\x14\x02\x00\x00", ConvertReaction.RESET_LOG),
    "bad magic": (b"HTTP/1.1 200 OK\r\n", ConvertReaction.CONVERTER_OFF),
    "total length 0": (b"\x01\x00\x22\x63", ConvertReaction.CONVERTER_OFF),
}


@pytest.mark.parametrize("reply_bytes, reaction", INVALID_CASES.values(), ids=INVALID_CASES.keys())
def test_an_invalid_reply_resets(reply_bytes, reaction):
    reply = ConvertClientExchange().receive(reply_bytes)
    assert reply.status is ReplyStatus.INVALID and reply.must_reset and reply.advice.reaction is reaction
    assert reply.fallback_reason is FallbackReason.CONVERTER_REPLY_INVALID


def test_a_header_only_reply_is_a_policy():
    assert ConvertClientExchange().receive(msg()).status is ReplyStatus.CONVERTED  # libconvert
    strict = ConvertClientExchange(ConvertClientPolicy(accept_header_only_reply=False))
    strict.syn_payload(SERVER, 80)
    assert strict.receive(msg()).status is ReplyStatus.INVALID


def test_an_info_only_request_gets_the_supported_kinds():
    exchange = ConvertClientExchange()
    exchange.syn_payload(None, info=True)
    reply = exchange.receive(msg(SupportedTcpExtensionsTlv((30,))))
    assert reply.status is ReplyStatus.INFO and reply.supported_kinds == (30,) and not reply.must_reset


def test_no_reply_at_all():
    exchange = ConvertClientExchange()
    exchange.receive(b"\x01\x05")
    reply = exchange.reply_missing()
    assert reply.fallback_reason is FallbackReason.CONVERTER_REPLY_MISSING and reply.must_reset
    with pytest.raises(LocalProtocolError):
        exchange.reply_missing()


def test_the_client_reads_what_the_session_refuses_with():
    """Both sides together: the session's real refusals lead to the reaction 8.3 asks for."""
    cases = [
        (msg(connect()), {"require_cookie": True}, ConvertReaction.RETRY_WITH_COOKIE),
        (msg(connect(options=(AO,))), {}, ConvertReaction.RETRY_WITHOUT_OPTIONS),
        (msg(connect()), {"max_sessions": 0, "resource_backoff_s": 12}, ConvertReaction.BACK_OFF),
        (msg(connect()), {"allowed_client_prefixes": ()}, ConvertReaction.CONVERTER_OFF),
        (b"\x02" + msg(connect())[1:], {}, ConvertReaction.RETRY_OTHER_VERSION),
    ]
    for payload, changes, reaction in cases:
        session = new_session(policy(**changes))
        session.receive_upstream(payload, 0.0)
        reply = ConvertClientExchange().receive(drain(session)[0].data)
        assert reply.advice.reaction is reaction, (changes, reply)
    assert reply.advice.versions == (1,)


# --- harness: client, converter and server hosts -------------------------------------------------


class EchoServer:
    """A plain server application: answers each chunk with b"echo:" + chunk; closes after the client."""

    def __init__(self, host: Host, port: int = 80, reset_on: bytes | None = None) -> None:
        self.received = bytearray()
        self.reset_on = reset_on
        host.listen(port, self)

    def on_syn(self, host, packet, now):
        return Acceptance(self)

    def on_tcp_event(self, host, conn, event, now):
        if isinstance(event, DataReceived):
            self.received += event.data
            if self.reset_on is not None and self.reset_on in self.received:
                host.abort(conn, now)
            else:
                conn.send(b"echo:" + event.data, now)
        elif isinstance(event, PeerClosed):
            conn.close(now)


@dataclasses.dataclass
class Attempt:
    conn: object
    exchange: ConvertClientExchange
    established_at: float | None = None
    reply_at: float | None = None
    closed: Closed | None = None
    received: bytearray = dataclasses.field(default_factory=bytearray)


class ConvertClient:
    """A test owner: one Convert attempt per connect(), SYN payload via Host.open, the SYN-ACK
    checked by ConvertSynAckCheck. After a good reply it sends ``then_send`` and closes; after a
    refusal it resets, and retries with the cookie when told to."""

    def __init__(self, host: Host, address=CLIENT, *, then_send: bytes = b"", close: bool = True,
                 retry_with_cookie: bool = False) -> None:
        self.host, self.address = host, address
        self.then_send, self.close = then_send, close
        self.retry_with_cookie = retry_with_cookie
        self.attempts: list[Attempt] = []

    def connect(self, now, dest=SERVER, port=80, *, raw_payload: bytes | None = None, **kwargs) -> Attempt:
        exchange = ConvertClientExchange()
        payload = exchange.syn_payload(dest, port, **kwargs) if raw_payload is None else raw_payload
        exchange.payload_bytes = len(payload)
        conn = self.host.open(self, self.address, CONVERTER_IN, CONVERT_PORT, now, syn_payload=payload,
                              extensions=(ConvertSynAckCheck(exchange),))
        attempt = Attempt(conn, exchange)
        self.attempts.append(attempt)
        return attempt

    def on_tcp_event(self, host, conn, event, now):
        attempt = next(a for a in self.attempts if a.conn is conn)
        if isinstance(event, Established):
            attempt.established_at = now
        elif isinstance(event, Closed):
            attempt.closed = event
        elif isinstance(event, PeerClosed) and attempt.exchange.reply is not None:
            conn.close(now)
        elif isinstance(event, DataReceived):
            if attempt.exchange.reply is not None:
                attempt.received += event.data
                return
            reply = attempt.exchange.receive(event.data)
            if reply is None:
                return
            attempt.reply_at = now
            if reply.must_reset:  # 6.2.8: a client that receives an Error TLV MUST reset
                host.abort(conn, now)
                if reply.advice.reaction is ConvertReaction.RETRY_WITH_COOKIE and self.retry_with_cookie:
                    self.connect(now, cookie=reply.advice.cookie, app_data=b"retry")
                return
            attempt.received += reply.app_data
            if self.then_send:
                conn.send(self.then_send, now)
            if self.close:
                conn.close(now)


CLIENT_CONVERTER_S = 0.125  # one-way delays, exact in binary so that times compare exactly
CONVERTER_SERVER_S = 0.25


def build(timing=ConverterTiming.RFC, *, client_filters=(), server_filters=(), server_listens=True,
          client_policy=None, server_reset_on=None, **policy_changes):
    rng = random.Random(7)
    harness = Harness()
    client_host = harness.add("client", Host("client", {"eth0": CLIENT, "eth1": OUTSIDE}, rng=rng,
                                             policy=client_policy))
    converter = harness.add("converter", ConverterHost(
        "converter", {"up": CONVERTER_IN, "down": CONVERTER_OUT}, rng=rng, convert_port=CONVERT_PORT,
        server_interfaces=("down",), policy=policy(timing=timing, **policy_changes)))
    server_host = harness.add("server", Host("server", {"eth0": SERVER}, rng=rng))
    server = EchoServer(server_host, reset_on=server_reset_on) if server_listens else None
    harness.link("client", "eth0", "converter", "up", CLIENT_CONVERTER_S, a_to_b=list(client_filters))
    harness.link("converter", "down", "server", "eth0", CONVERTER_SERVER_S, a_to_b=list(server_filters))
    return harness, client_host, converter, server


def packets(harness, src, dst, flags=None):
    return [d for d in harness.log if d.src == src and d.dst == dst and not d.dropped
            and (flags is None or d.packet.segment.flags & flags == flags)]


@pytest.mark.parametrize("timing", list(ConverterTiming))
def test_a_converted_connection_relays_bytes_exactly_both_ways(timing):
    harness, client_host, converter, server = build(timing)
    client = ConvertClient(client_host, then_send=b" and more")
    attempt = client.connect(0.0, app_data=b"GET /")
    harness.run(100.0)
    rtt_upstream, rtt_downstream = 2 * CLIENT_CONVERTER_S, 2 * CONVERTER_SERVER_S
    if timing is ConverterTiming.RFC:
        # 4.2: the SYN-ACK waits for the server's and carries the reply.
        assert attempt.established_at == attempt.reply_at == rtt_upstream + rtt_downstream
        (synack,) = packets(harness, "converter", "client", TcpFlags.SYN | TcpFlags.ACK)
        assert synack.time_s == rtt_upstream + rtt_downstream
        assert synack.packet.segment.payload.startswith(b"\x01\x07\x22\x63\x14")
    else:
        # Sockets: the kernel answers at once; the reply follows when the server has answered.
        assert attempt.established_at == rtt_upstream
        assert attempt.reply_at == rtt_upstream + rtt_downstream
    reply = attempt.exchange.reply
    assert reply.status is ReplyStatus.CONVERTED
    (server_synack,) = packets(harness, "server", "converter", TcpFlags.SYN | TcpFlags.ACK)
    assert reply.server_options == server_synack.packet.segment.options  # as received (6.2.6)
    assert bytes(server.received) == b"GET / and more"  # the TLVs stripped, nothing else touched
    assert bytes(attempt.received) == b"echo:GET /echo: and more"
    assert attempt.closed is not None and attempt.closed.clean
    assert not converter.relays and converter.converter.active_sessions == 0
    assert harness.events_of("converter", ConverterReplied)[0].destination == (SERVER, 80)


def test_rfc_timing_retransmits_the_downstream_syn_only_when_the_client_does():
    downstream = DropFirstSyn()
    harness, client_host, converter, server = build(server_filters=[downstream],
                                                    client_policy=TcpPolicy(initial_rto_s=0.5))
    attempt = ConvertClient(client_host).connect(0.0)
    harness.run(10.0)
    # The client's SYN timer (0.5 s) fires first; its retransmission reaches the converter at 0.625,
    # and only that sends the downstream SYN again (the converter's own timer would say 1.125).
    assert downstream.syn_times_s == [0.125, 0.625]
    assert attempt.reply_at == 0.625 + 2 * CONVERTER_SERVER_S + CLIENT_CONVERTER_S
    assert attempt.exchange.reply.status is ReplyStatus.CONVERTED


def test_socket_timing_leaves_the_downstream_syn_to_the_stack():
    downstream = DropFirstSyn()
    harness, client_host, converter, server = build(ConverterTiming.SOCKET, server_filters=[downstream],
                                                    client_policy=TcpPolicy(initial_rto_s=0.5))
    ConvertClient(client_host).connect(0.0)
    harness.run(10.0)
    assert downstream.syn_times_s == [0.125, 1.125]  # the converter's own initial RTO: 1 s


class DropFirstSyn:
    """A hop filter that drops the first SYN and notes when each SYN was sent."""

    def __init__(self):
        self.syn_times_s = []

    def __call__(self, packet, now):
        if packet.segment.flags != TcpFlags.SYN:
            return [packet]
        self.syn_times_s.append(now)
        return [] if len(self.syn_times_s) == 1 else [packet]


@pytest.mark.parametrize("timing", list(ConverterTiming))
def test_a_closed_server_port_is_error_96(timing):
    harness, client_host, converter, _ = build(timing, server_listens=False)
    attempt = ConvertClient(client_host).connect(0.0, app_data=b"GET /")
    harness.run(100.0)
    reply = attempt.exchange.reply
    assert reply.error.code == ERR.CONNECTION_RESET and reply.advice.reaction is ConvertReaction.REPORT_REFUSED
    assert attempt.reply_at == 2 * CLIENT_CONVERTER_S + 2 * CONVERTER_SERVER_S
    assert attempt.closed.reason is CloseReason.ABORTED  # the client resets, not the converter
    assert not [d for d in packets(harness, "converter", "client") if d.packet.segment.flags & TcpFlags.RST]
    assert [d for d in packets(harness, "converter", "client") if d.packet.segment.flags & TcpFlags.FIN]
    assert converter.converter.active_sessions == 0 and converter.converter.counters["error_connection_reset"] == 1


def test_a_client_outside_the_allowed_prefixes_gets_error_32_and_nothing_reaches_the_server():
    harness, client_host, converter, server = build()
    harness.link("client", "eth1", "converter", "up", CLIENT_CONVERTER_S)  # the outside address, same converter
    attempt = ConvertClient(client_host, address=OUTSIDE).connect(0.0)
    harness.run(100.0)
    assert attempt.exchange.reply.error.code == ERR.NOT_AUTHORIZED
    assert attempt.reply_at == 2 * CLIENT_CONVERTER_S  # RFC timing, but nothing to wait for
    assert not [d for d in harness.log if "server" in (d.src, d.dst)]


def test_a_malformed_message_gets_error_1_and_nothing_is_forwarded():
    harness, client_host, converter, server = build()
    duplicate = b"\x01\x0b\x22\x63" + connect().encode() * 2
    attempt = ConvertClient(client_host).connect(0.0, raw_payload=duplicate + b"GET /")
    harness.run(100.0)
    reply = attempt.exchange.reply
    assert reply.error.code == ERR.MALFORMED_MESSAGE and reply.error.data == duplicate
    assert reply.advice.reaction is ConvertReaction.RESET_LOG
    assert not [d for d in harness.log if "server" in (d.src, d.dst)]


@pytest.mark.parametrize("timing", list(ConverterTiming))
def test_cookie_required_error_3_then_the_retry_with_the_cookie_succeeds(timing):
    harness, client_host, converter, server = build(timing, require_cookie=True)
    client = ConvertClient(client_host, retry_with_cookie=True)
    client.connect(0.0, app_data=b"first")
    harness.run(100.0)
    first, second = client.attempts
    assert first.exchange.reply.error.code == ERR.MISSING_COOKIE
    assert first.exchange.reply.advice.cookie == converter.converter.cookie_for(CLIENT)
    assert second.exchange.reply.status is ReplyStatus.CONVERTED
    assert first.conn.local_port != second.conn.local_port  # a new connection, a new source port
    assert bytes(server.received) == b"retry"  # the refused attempt's data never reached the server
    assert bytes(second.received) == b"echo:retry"


def test_the_resource_limit_answers_error_64():
    harness, client_host, converter, server = build(max_sessions=1, resource_backoff_s=45)
    client = ConvertClient(client_host, close=False)  # the first connection stays open
    first = client.connect(0.0)
    second = client.connect(1.0)
    harness.run(10.0)
    assert first.exchange.reply.status is ReplyStatus.CONVERTED
    assert second.exchange.reply.error.code == ERR.RESOURCE_EXCEEDED
    assert second.exchange.reply.advice == ConvertAdvice(ConvertReaction.BACK_OFF, back_off_s=45.0)


def strip_syn_payload(packet, now):
    """A middlebox that removes the SYN payload (docs/protocols.md 8.6 item 3)."""
    seg = packet.segment
    if seg.flags & TcpFlags.SYN and seg.payload:
        return [dataclasses.replace(packet, segment=dataclasses.replace(seg, payload=b""))]
    return [packet]


@pytest.mark.parametrize("timing, accept", [(ConverterTiming.SOCKET, False), (ConverterTiming.RFC, True)])
def test_a_stripped_syn_payload_makes_the_client_stop_using_the_converter(timing, accept):
    harness, client_host, converter, server = build(timing, client_filters=[strip_syn_payload],
                                                    accept_syn_without_message=accept)
    attempt = ConvertClient(client_host).connect(0.0, app_data=b"GET /")
    harness.run(100.0)
    assert attempt.established_at is None  # refused inside the handshake: no Established
    reply = attempt.exchange.reply
    assert reply.fallback_reason is FallbackReason.SIGNAL_NOT_ACKED
    assert reply.advice.reaction is ConvertReaction.CONVERTER_OFF
    from_client = [d.packet.segment for d in packets(harness, "client", "converter")]
    assert [s.flags for s in from_client] == [TcpFlags.SYN, TcpFlags.RST]  # no data after the SYN
    assert not [d for d in harness.log if "server" in (d.src, d.dst)]
    assert not converter.relays


def test_rfc_timing_ignores_a_syn_without_a_convert_message():
    harness, client_host, converter, server = build(client_filters=[strip_syn_payload])
    attempt = ConvertClient(client_host).connect(0.0)
    harness.run(4.0)
    assert not packets(harness, "converter", "client")  # silently ignored: no SYN-ACK, no RST
    assert len(packets(harness, "client", "converter")) == 3  # SYNs at 0, 1 and 3 s
    assert converter.converter.counters["ignored"] == 3 and attempt.exchange.reply is None


def test_a_server_reset_while_relaying_resets_the_client_or_calls_the_hook():
    harness, client_host, converter, server = build(server_reset_on=b"boom")
    client = ConvertClient(client_host, close=False, then_send=b"boom")
    attempt = client.connect(0.0)
    harness.run(100.0)
    assert attempt.closed.reason is CloseReason.RESET_RECEIVED
    # With an MPTCP upstream the extension sends MP_FASTCLOSE instead: the hook replaces the RST.
    harness, client_host, converter, server = build(server_reset_on=b"boom")
    calls = []
    converter.on_downstream_reset = lambda host, conn, now: calls.append((conn.remote_addr, now))
    ConvertClient(client_host, close=False, then_send=b"boom").connect(0.0)
    harness.run(100.0)
    assert calls == [(CLIENT, 0.75 + 0.125 + 0.25 + 0.25)]


@dataclasses.dataclass(frozen=True)
class Unreachable:
    """An ICMP Destination Unreachable as hosts receive it (the fields ConverterHost.on_icmp reads)."""

    original: object
    code: int
    hard: bool


@pytest.mark.parametrize("code", [1, 3])  # host unreachable (soft), port unreachable (hard)
def test_icmp_unreachable_while_connecting_is_error_97(code):
    downstream = []
    harness, client_host, converter, server = build(
        server_filters=[lambda packet, now: downstream.append(packet) or []])
    attempt = ConvertClient(client_host).connect(0.0)
    harness.run(0.5)
    converter.receive("down", Unreachable(downstream[0], code, hard=code == 3), harness.now)
    harness.run(100.0)
    assert attempt.exchange.reply.error == ErrorTlv(ERR.DESTINATION_UNREACHABLE, code)
    assert attempt.reply_at == 0.5 + CLIENT_CONVERTER_S
    assert not converter.relays
    assert (CONVERTER_OUT, downstream[0].segment.src_port, SERVER, 80) not in converter.connections


def test_icmp_while_relaying_ends_the_connection_only_if_hard():
    for hard, expected in ((False, None), (True, CloseReason.RESET_RECEIVED)):
        harness, client_host, converter, server = build()
        attempt = ConvertClient(client_host, close=False).connect(0.0)
        harness.run(2.0)
        assert attempt.exchange.reply.status is ReplyStatus.CONVERTED
        syn = next(d.packet for d in harness.log if d.src == "converter" and d.dst == "server")
        converter.receive("down", Unreachable(syn, 3 if hard else 1, hard), harness.now)
        harness.run(100.0)
        assert (attempt.closed.reason if attempt.closed else None) is expected


def test_a_destination_the_converter_has_no_route_for_is_error_65():
    harness, client_host, converter, server = build()  # IPv4 only on the server side
    attempt = ConvertClient(client_host).connect(0.0, dest=IPv6Address("2001:db8::80"))
    harness.run(100.0)
    assert attempt.exchange.reply.error.code == ERR.NETWORK_FAILURE and attempt.reply_at == 2 * CLIENT_CONVERTER_S
    assert not converter.relays and converter.converter.active_sessions == 0


def test_a_silent_server_is_error_65_at_the_connect_timeout():
    sent = []
    harness, client_host, converter, server = build(server_filters=[lambda packet, now: sent.append(now) or []],
                                                    connect_timeout_s=5.0, client_policy=TcpPolicy(initial_rto_s=3.0))
    attempt = ConvertClient(client_host).connect(0.0)
    harness.run(100.0)
    assert attempt.exchange.reply.error.code == ERR.NETWORK_FAILURE
    assert attempt.reply_at == CLIENT_CONVERTER_S + 5.0 + CLIENT_CONVERTER_S
    # Only the client's SYN retransmission (its timer: 3 s) drove a second downstream SYN; the
    # converter's stack alone would have sent them at 1.125 and 3.125 (9.3: amplification).
    assert sent == [0.125, 3.125]
