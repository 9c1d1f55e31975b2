"""The live converter daemon (mpsim.live.converter) on real sockets, each test in its own network
namespace (root; skipped with the reason otherwise), plus the socket helpers that need no root."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
import time
from ipaddress import IPv4Address, IPv6Address

import pytest

from mpsim.live.client import ConvertError, convert_open
from mpsim.live.sockets import (
    TCPI_OPT_SACK,
    TCPI_OPT_TIMESTAMPS,
    TCPI_OPT_WSCALE,
    MptcpInfo,
    icmp_code_for_errno,
    parse_endpoint,
    parse_tcp_info,
    reconstruct_synack_options,
)
from mpsim.proto.convert import ConvertClientExchange, ReplyStatus
from mpsim.wire.convert import ConnectOption, ConnectTlv, ConvertErrorCode, ConvertMessage, encode_convert
from mpsim.wire.mptcp import MpCapable, MpCapableFlags
from mpsim.wire.options import MaximumSegmentSize, SackPermitted, Timestamps, WindowScale

from . import (
    CONVERTER_V4,
    CONVERTER_V6,
    SERVER_V4,
    SERVER_V6,
    ConverterProcess,
    EchoServer,
    converter,
    exchange,
    free_port,
    live_namespace,
    raw_syn,
    read_until_eof,
    server_side,
)


@pytest.fixture
def ns():
    with live_namespace() as namespace:
        yield namespace


def reply_to(sock: socket.socket):
    """The converter's reply on a raw connection, judged by the client's exchange."""
    exchange_ = ConvertClientExchange()
    sock.settimeout(5)
    while (reply := exchange_.receive(sock.recv(1024))) is None:
        pass
    return reply


# --- relaying ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("relay", ["splice", "copy", "auto"])
def test_mptcp_conversion_relays_bytes_exactly_both_ways(ns, relay):
    data = os.urandom(4 << 20)
    with EchoServer() as server, converter("--relay", relay) as conv:
        connection = convert_open(conv.address, server.address, mptcp=True)
        with connection.sock as sock:
            echoed = exchange(sock, data)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        assert len(echoed) == len(data)
        assert connection.upstream_mptcp and connection.reply.server_mptcp_capable
        connected = conv.wait_for("connected")
        assert connected["mptcp"] == "1"  # the downstream leg is MPTCP too
        expected = {"splice": ("splice", "splice"), "copy": ("copy", "copy"), "auto": ("copy", "copy")}[relay]
        assert (connected["relay_up"], connected["relay_down"]) == expected  # auto: copy from MPTCP sockets
        closed = conv.wait_for("closed")
        assert (int(closed["bytes_to_server"]), int(closed["bytes_to_client"]), closed["reset"]) == (
            len(data), len(data), "0")
    assert server.accepted == 1


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_plain_tcp_client_over_dual_stack_listener(ns, family):
    data = os.urandom(1 << 20)
    server_host = SERVER_V4 if family == "ipv4" else SERVER_V6
    with EchoServer(host=server_host) as server, converter(listen="[::]:0") as conv:
        port = conv.address.rpartition(":")[2]
        converter_address = f"{CONVERTER_V4}:{port}" if family == "ipv4" else f"[{CONVERTER_V6}]:{port}"
        early = os.urandom(1300)  # longer than the converter's request read: part waits in the socket
        connection = convert_open(converter_address, server.address, mptcp=False, app_data=early)
        with connection.sock as sock:
            echoed = exchange(sock, data)
        assert echoed == early + data  # data from the SYN first, then the rest, in order
        assert not connection.upstream_mptcp
        accept = conv.wait_for("accept")
        assert accept["mptcp"] == "0" and accept["syn_data"] == "1"
        # A plain client of an MPTCP listener still gets an MPTCP socket (fallen back): auto copies from it.
        assert conv.wait_for("connected")["relay_up"] == "copy"


def test_without_mptcp_auto_splices_plain_tcp(ns):
    data = os.urandom(1 << 20)
    with EchoServer() as server, converter("--no-mptcp") as conv:
        connection = convert_open(conv.address, server.address)
        with connection.sock as sock:
            assert exchange(sock, data) == data
        connected = conv.wait_for("connected")
        assert (connected["mptcp"], connected["relay_up"], connected["relay_down"]) == ("0", "splice", "splice")
        assert "30" not in conv.wait_for("listening")["supported_kinds"].split(",")


def test_reply_reconstructs_the_servers_synack_options(ns):
    with EchoServer() as server, converter() as conv:
        connection = convert_open(conv.address, server.address, mptcp=True, info=True)
        connection.sock.close()
    options = {type(o) for o in connection.reply.server_options}
    assert options == {MaximumSegmentSize, SackPermitted, Timestamps, WindowScale, MpCapable}
    assert connection.reply.supported_kinds == (4, 8, 30)  # Info answered: no TFO (34), it cannot be honoured


def test_downstream_reset_resets_the_client(ns):
    with EchoServer(reset_after_bytes=1000) as server, converter() as conv:
        sock = convert_open(conv.address, server.address, mptcp=True).sock
        with sock, pytest.raises(ConnectionResetError):
            sock.sendall(b"x" * 1000)
            sock.settimeout(5)
            while sock.recv(65536):
                pass
        assert conv.wait_for("closed")["reset"] == "1"  # the client's leg was reset in turn


def test_server_half_close_first_keeps_the_other_direction_open(ns):
    """The server says goodbye and sends FIN at once, then still reads: the converter must pass the
    FIN upstream (RFC 8803 4.2) and keep relaying the client's bytes."""
    received: list[bytes] = []

    def serve(listener: socket.socket) -> None:
        sock, _ = listener.accept()
        with sock:
            sock.sendall(b"bye")
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
            received.append(bytes(data))

    data = os.urandom(1 << 20)
    with server_side():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    with listener, converter() as conv:
        listener.bind((SERVER_V4, 0))
        listener.listen(1)
        server = threading.Thread(target=serve, args=(listener,), daemon=True)
        server.start()
        with convert_open(conv.address, f"{SERVER_V4}:{listener.getsockname()[1]}", mptcp=True).sock as sock:
            assert read_until_eof(sock) == b"bye"  # the server's FIN came through first
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            server.join(10)
        assert received == [data]
        assert conv.wait_for("closed")["reset"] == "0"


# --- refusals ----------------------------------------------------------------------------------------


def test_closed_server_port_gives_error_96(ns):
    with converter() as conv, pytest.raises(ConvertError) as caught:
        convert_open(conv.address, f"{SERVER_V4}:{free_port()}")
    assert caught.value.code == ConvertErrorCode.CONNECTION_RESET


def test_unreachable_destination_gives_error_97_with_a_code(ns):
    ns.ip("route", "add", "unreachable", "198.18.99.0/24")
    ns.ip("route", "add", "prohibit", "198.18.98.0/24")
    with converter() as conv:
        with pytest.raises(ConvertError) as host_unreachable:
            convert_open(conv.address, "198.18.99.1:80")
        with pytest.raises(ConvertError) as prohibited:
            convert_open(conv.address, "198.18.98.1:80")
    assert host_unreachable.value.code == ConvertErrorCode.DESTINATION_UNREACHABLE
    assert host_unreachable.value.reply.error.value == 1  # ICMP host unreachable
    assert prohibited.value.reply.error.value == 13  # communication administratively prohibited


def test_server_that_never_answers_gives_error_65_after_the_connect_timeout(ns):
    ns.ip("route", "add", "198.18.97.0/24", "dev", "lo")  # delivered to ourselves, owned by nobody: SYNs vanish
    with converter("--connect-timeout", "0.5") as conv:
        started = time.monotonic()
        with pytest.raises(ConvertError) as caught:
            convert_open(conv.address, "198.18.97.1:80")
        assert 0.4 <= time.monotonic() - started < 3
        assert conv.wait_for("connect_timeout")["dest"] == "198.18.97.1:80"
    assert caught.value.code == ConvertErrorCode.NETWORK_FAILURE
    assert caught.value.reply.advice.back_off_s >= 30


def test_client_outside_allowed_prefixes_gets_error_32(ns):
    with EchoServer() as server, converter(allow=("198.18.1.0/24",)) as conv:
        with pytest.raises(ConvertError) as caught:
            convert_open(conv.address, server.address)
    assert caught.value.code == ConvertErrorCode.NOT_AUTHORIZED
    assert server.accepted == 0


def test_no_allow_refuses_everyone_and_says_so(ns):
    with EchoServer() as server, converter(allow=()) as conv:
        assert "Error 32" in conv.wait_for("warning")["msg"]
        with pytest.raises(ConvertError) as caught:
            convert_open(conv.address, server.address, mptcp=True)
    assert caught.value.code == ConvertErrorCode.NOT_AUTHORIZED
    assert server.accepted == 0


@pytest.mark.parametrize("mptcp", [False, True])
def test_a_refusal_reaches_a_client_that_wakes_after_the_reset(ns, monkeypatch, mptcp):
    """The converter refuses at accept with Error 32 and resets at once; a client descheduled
    between its handshake and reading the result (a busy machine) finds ECONNRESET pending and the
    reply still queued: it reports the refusal, not an unreachable converter."""
    from mpsim.live import client

    woken = []

    def late_wait(sock, events, deadline, what):  # the client's poll, then 0.3 s off the CPU
        original_wait(sock, events, deadline, what)
        if not woken:
            woken.append(what)
            time.sleep(0.3)

    original_wait = client._wait
    monkeypatch.setattr(client, "_wait", late_wait)
    with EchoServer() as server, converter(allow=()) as conv:
        with pytest.raises(ConvertError) as caught:
            convert_open(conv.address, server.address, mptcp=mptcp)
    assert woken == ["connecting to the converter"]
    assert caught.value.code == ConvertErrorCode.NOT_AUTHORIZED
    assert server.accepted == 0


def test_malformed_message_gives_error_1_and_forwards_nothing(ns):
    with EchoServer() as server, converter() as conv:
        port = server.port
        connect = ConnectTlv(port, IPv4Address(SERVER_V4)).encode()
        # two Connect TLVs: a duplicate TLV is Malformed (RFC 8803 6.2.1)
        payload = bytes((1, 1 + 2 * len(connect) // 4)) + b"\x22\x63" + connect + connect + b"app data"
        with raw_syn(conv.address, payload) as sock:
            reply = reply_to(sock)
            assert read_until_eof(sock) == b""  # then FIN, no RST (RFC 8803 6.2.8)
        assert reply.status is ReplyStatus.ERROR and reply.error.code == ConvertErrorCode.MALFORMED_MESSAGE
        assert reply.error.data.startswith(payload[:4 + 2 * len(connect)])  # the message is echoed
        time.sleep(0.2)
    assert server.accepted == 0


def test_unsupported_connect_option_gives_error_33(ns):
    request = ConvertMessage((ConnectTlv(7, IPv4Address(SERVER_V4), (ConnectOption(34),)),))  # TFO cookie request
    with EchoServer() as server, converter() as conv, raw_syn(conv.address, encode_convert(request)) as sock:
        reply = reply_to(sock)
    assert reply.error.code == ConvertErrorCode.UNSUPPORTED_TCP_OPTION and reply.error.listed_values == (34,)
    assert server.accepted == 0


def test_missing_cookie_gives_error_3_with_a_cookie_that_then_works(ns):
    with EchoServer() as server, converter("--require-cookie") as conv:
        with pytest.raises(ConvertError) as caught:
            convert_open(conv.address, server.address)
        assert caught.value.code == ConvertErrorCode.MISSING_COOKIE
        cookie = caught.value.reply.advice.cookie
        assert len(cookie) == 8
        with pytest.raises(ConvertError) as wrong:
            convert_open(conv.address, server.address, cookie=bytes(8))
        assert wrong.value.code == ConvertErrorCode.NOT_AUTHORIZED
        with convert_open(conv.address, server.address, cookie=cookie).sock as sock:
            assert exchange(sock, b"with cookie") == b"with cookie"


def test_connection_limit_gives_error_64_and_frees_the_slot(ns):
    with EchoServer() as server, converter("--max-conns", "1") as conv:
        first = convert_open(conv.address, server.address, mptcp=True).sock
        with pytest.raises(ConvertError) as caught:
            convert_open(conv.address, server.address, mptcp=True)
        assert caught.value.code == ConvertErrorCode.RESOURCE_EXCEEDED
        assert caught.value.reply.advice.back_off_s >= 30  # Value 0: the client's default back-off
        with first:
            assert exchange(first, b"first") == b"first"
        conv.wait_for("closed", count=2)
        with convert_open(conv.address, server.address).sock as third:  # the slot was given back
            assert exchange(third, b"third") == b"third"


def test_silent_client_is_dropped_after_the_message_timeout(ns):
    with converter("--message-timeout", "0.5") as conv:
        host, _, port = conv.address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            started = time.monotonic()
            assert read_until_eof(sock) == b""
            waited_s = time.monotonic() - started
        assert 0.4 <= waited_s < 3.0
        assert conv.wait_for("message_timeout")


# --- life cycle ----------------------------------------------------------------------------------------


def test_sigterm_stops_cleanly_within_the_grace_period(ns):
    with EchoServer() as server, converter("--shutdown-grace", "1") as conv:
        idle = convert_open(conv.address, server.address, mptcp=True).sock
        started = time.monotonic()
        assert conv.terminate(timeout_s=10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(ProcessLookupError):
            os.killpg(conv.proc.pid, 0)  # nothing of its process group is left
        counters = conv.wait_for("counters")
        assert counters["open_conns"] == "0" and counters["reset_at_shutdown"] == "1"
        with idle, pytest.raises(ConnectionResetError):  # the relay still open at the deadline was reset
            idle.settimeout(5)
            idle.recv(1)


def test_kernel_without_tfo_server_bit_refuses_to_start(ns):
    ns.sysctl("net.ipv4.tcp_fastopen", "1")
    process = ConverterProcess("--listen", f"{CONVERTER_V4}:0", "--allow", "198.18.0.0/24")
    try:
        assert process.proc.wait(10) == 2
        process._reader.join(5)
        assert len(process.lines) == 1 and "0x2" in process.lines[0] and "tcp_fastopen" in process.lines[0]
    finally:
        process.kill()


def test_no_descriptor_leaks_after_many_connections(ns):
    def round_of_connections() -> None:
        for i in range(10):
            with convert_open(conv.address, server.address, mptcp=i % 2 == 0).sock as sock:
                assert exchange(sock, b"x" * 100_000) == b"x" * 100_000
            with pytest.raises(ConvertError):
                convert_open(conv.address, f"{SERVER_V4}:{closed_port}")
            with raw_syn(conv.address, b"\x01\x00\x22\x63") as sock:  # Total Length 0: reset
                read_until_eof(sock)
            with raw_syn(conv.address, b"not convert at all") as sock:
                read_until_eof(sock)

    closed_port = free_port()
    with EchoServer() as server, converter("--relay", "splice", "--quiet") as conv:
        round_of_connections()  # warm-up: the pools hold their idle pipes from here on
        time.sleep(0.5)
        baseline = conv.fd_count()
        for _ in range(5):
            round_of_connections()
        deadline = time.monotonic() + 5
        while conv.fd_count() != baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        assert conv.fd_count() == baseline
        assert conv.terminate() == 0
        assert conv.wait_for("counters")["open_conns"] == "0"


# --- helpers that need no root ------------------------------------------------------------------------


def _tcp_info_bytes(options: int, wscale: int, snd_mss: int) -> bytes:
    raw = bytearray(232)
    raw[5], raw[6] = options, wscale
    struct.pack_into("=II", raw, 16, snd_mss, 536)
    return bytes(raw)


def test_tcp_info_parsing_and_option_reconstruction():
    info = parse_tcp_info(_tcp_info_bytes(TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE, 0x79, 1448))
    assert (info.snd_wscale, info.rcv_wscale, info.snd_mss) == (9, 7, 1448)
    mptcp = MptcpInfo(subflows=0, flags=0x2, csum_enabled=True, bytes_sent=0, bytes_received=0)
    assert reconstruct_synack_options(info, mptcp) == (
        MaximumSegmentSize(1460), SackPermitted(), Timestamps(0, 0), WindowScale(9),
        MpCapable(1, MpCapableFlags.A | MpCapableFlags.H))
    bare = parse_tcp_info(_tcp_info_bytes(0, 0, 1460))
    assert reconstruct_synack_options(bare, None) == (MaximumSegmentSize(1460),)
    with pytest.raises(ValueError):
        parse_tcp_info(b"\x00" * 40)


def test_errno_to_icmp_code_and_endpoints():
    assert icmp_code_for_errno(socket.AF_INET, errno.EHOSTUNREACH) == 1
    assert icmp_code_for_errno(socket.AF_INET6, errno.EHOSTUNREACH) == 3
    assert icmp_code_for_errno(socket.AF_INET, errno.ECONNREFUSED) is None
    assert parse_endpoint("[2001:2::2]:80") == (IPv6Address("2001:2::2"), 80)
    assert parse_endpoint("198.18.0.2:7") == (IPv4Address("198.18.0.2"), 7)
    for bad in ("example.com:80", "2001:2::2:80", "198.18.0.2", "198.18.0.2:70000"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
