"""The live Convert client (mpsim.live.client) against scripted converters and the real daemon,
each test in its own network namespace (root; skipped with the reason otherwise)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from mpsim.live.client import ConvertError, connect_main, convert_connect, convert_open
from mpsim.live.sockets import KernelSettingError, tcp_info
from mpsim.proto.convert import ConvertReaction
from mpsim.proto.events import FallbackReason
from mpsim.wire.convert import (
    ConnectTlv,
    ConvertErrorCode,
    ConvertMessage,
    ErrorTlv,
    ExtendedTcpHeaderTlv,
    encode_convert,
    parse_convert_prefix,
)
from mpsim.wire.options import MaximumSegmentSize

from . import ROOT, SERVER_V4, EchoServer, FakeConverter, converter, exchange, free_port, live_namespace

DEST = f"{SERVER_V4}:7"
CONVERTED = encode_convert(ConvertMessage((ExtendedTcpHeaderTlv((MaximumSegmentSize(1460),)),)))


@pytest.fixture
def ns():
    with live_namespace() as namespace:
        yield namespace


def read_request(sock: socket.socket) -> tuple[ConvertMessage, bytes]:
    """The Convert message a client sent, and the bytes after it in the same read."""
    data = sock.recv(2048)
    message, used = parse_convert_prefix(data)
    return message, data[used:]


def peer_reset(sock: socket.socket) -> bool:
    """Whether the client ended the connection with RST (what RFC 8803 asks after an error)."""
    sock.settimeout(5)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    return False


def scripted(reply: bytes, *, then: str = "wait_reset"):
    def handler(sock: socket.socket):
        message, after = read_request(sock)
        syn_data = tcp_info(sock).syn_data
        sock.sendall(reply)
        if then == "wait_reset":
            return message, after, syn_data, peer_reset(sock)
        if then == "echo":
            while data := sock.recv(4096):
                sock.sendall(data)
        return message, after, syn_data, None
    return handler


def test_request_travels_in_the_syn_and_server_bytes_stay_in_the_socket(ns):
    with FakeConverter(scripted(CONVERTED + b"server-hello", then="echo")) as fake:
        connection = convert_open(fake.address, DEST, app_data=b"client-hello", info=True)
        with connection.sock as sock:
            assert sock.recv(64) == b"server-hello"  # read exactly the reply: the server's bytes are the app's
            sock.sendall(b"ping")
            assert sock.recv(64) == b"ping"
    message, after, syn_data, _ = fake.outcomes[0]
    assert syn_data  # the converter's kernel accepted the SYN payload (TFO, cookie-less)
    assert message.tlv(ConnectTlv).port == 7 and after == b"client-hello"
    assert connection.syn_bytes == len(encode_convert(message)) + len(b"client-hello")
    assert connection.reply.server_options == (MaximumSegmentSize(1460),)


@pytest.mark.parametrize(("error", "reaction"), [
    (ErrorTlv(ConvertErrorCode.RESOURCE_EXCEEDED, 10), ConvertReaction.BACK_OFF),
    (ErrorTlv(ConvertErrorCode.CONNECTION_RESET), ConvertReaction.REPORT_REFUSED),
    (ErrorTlv(ConvertErrorCode.NOT_AUTHORIZED), ConvertReaction.CONVERTER_OFF),
])
def test_error_tlv_raises_with_the_code_and_resets(ns, error, reaction):
    with FakeConverter(scripted(encode_convert(ConvertMessage((error,))))) as fake:
        with pytest.raises(ConvertError) as caught:
            convert_open(fake.address, DEST, timeout_s=5)
        time.sleep(0.1)
    assert caught.value.code == error.code and caught.value.reply.advice.reaction is reaction
    if error.code == ConvertErrorCode.RESOURCE_EXCEEDED:
        assert caught.value.reply.advice.back_off_s == 10
    assert fake.outcomes[0][3] is True  # the client reset (SO_LINGER 0), it did not just close


def test_invalid_or_missing_reply_raises_without_a_code(ns):
    with FakeConverter(scripted(b"HTTP/1.1 400 Bad Request\r\n\r\n")) as fake:
        with pytest.raises(ConvertError) as invalid:
            convert_open(fake.address, DEST, timeout_s=5)
    assert invalid.value.code is None
    assert invalid.value.fallback_reason is FallbackReason.CONVERTER_REPLY_INVALID
    with FakeConverter(scripted(b"", then="close")) as fake:
        with pytest.raises(ConvertError) as missing:
            convert_open(fake.address, DEST, timeout_s=5)
    assert missing.value.fallback_reason is FallbackReason.CONVERTER_REPLY_MISSING


def test_a_converter_that_never_answers_times_out(ns):
    def silent(sock: socket.socket):
        read_request(sock)
        time.sleep(1.5)

    with FakeConverter(silent) as fake:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            convert_open(fake.address, DEST, timeout_s=0.5)
        assert time.monotonic() - started < 1.4


def test_syn_payload_not_acked_means_stop_using_the_converter():
    # A converter namespace without the TFO server bit: its kernel ACKs only the SYN (RFC 8803 8).
    with live_namespace(tcp_fastopen="0x1"):
        with FakeConverter(scripted(CONVERTED)) as fake:
            with pytest.raises(ConvertError) as caught:
                convert_open(fake.address, DEST, timeout_s=5)
            time.sleep(0.2)
    assert caught.value.code is None
    assert caught.value.fallback_reason is FallbackReason.SIGNAL_NOT_ACKED
    assert caught.value.reply.advice.reaction is ConvertReaction.CONVERTER_OFF
    assert "0x2" in str(caught.value)


def test_client_kernel_without_tfo_is_explained():
    with live_namespace(tcp_fastopen="0x0"):
        with pytest.raises(KernelSettingError, match=r"tcp_fastopen=0x0 lacks the client bit 0x1"):
            convert_connect("198.18.0.1:9", DEST)


def test_unreachable_converter_is_an_oserror(ns):
    with pytest.raises(ConnectionRefusedError):
        convert_connect(f"{SERVER_V4}:{free_port()}", DEST, timeout_s=5)


def test_no_descriptor_leaks_in_the_library(ns):
    def attempts() -> None:
        for mptcp in (False, True):
            with convert_connect(conv.address, server.address, mptcp=mptcp) as sock:
                assert exchange(sock, b"abc") == b"abc"
            with pytest.raises(ConvertError):
                convert_connect(conv.address, f"{SERVER_V4}:{closed_port}", mptcp=mptcp)
        with pytest.raises(OSError):
            convert_connect(f"{SERVER_V4}:{closed_port}", DEST)

    closed_port = free_port()
    with EchoServer() as server, converter("--quiet") as conv:
        # The echo server's sockets live in this process too and close when its threads see the
        # converter's FIN, later on a busy machine: both counts are taken with the echo server idle
        # (every connection it accepted ended). A socket the library leaks keeps its connection
        # open: the wait ends at its deadline and the count shows the leak.
        attempts()
        assert server.wait_idle()
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            attempts()
        idle = server.wait_idle()
        assert (len(os.listdir("/proc/self/fd")), idle) == (before, True)


# --- the command line ----------------------------------------------------------------------------------


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpsim.live.client", *args], input=stdin, capture_output=True,
                          cwd=ROOT, timeout=30, start_new_session=True)


def test_cli_copies_stdin_to_the_server_and_back(ns):
    data = os.urandom(300_000)
    with EchoServer() as server, converter() as conv:
        result = run_cli(conv.address, server.address, "--mptcp", stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_cli_info_prints_the_reply_summary(ns):
    with EchoServer() as server, converter() as conv:
        result = run_cli(conv.address, server.address, "--mptcp", "--info")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert lines["status"] == "converted" and lines["server_mptcp"] == "1" and lines["upstream_mptcp"] == "1"
    assert lines["converter_supported_kinds"] == "4,8,30"


def test_cli_errors_are_one_line_with_an_exit_status(ns):
    with converter("--require-cookie") as conv:
        refused = run_cli(conv.address, f"{SERVER_V4}:{free_port()}")
        assert refused.returncode == 1
        message = refused.stderr.decode().strip()
        assert "\n" not in message and "Error 3 (MISSING_COOKIE" in message and "--cookie " in message
        cookie = message.rsplit("--cookie ", 1)[1]
        closed = run_cli(conv.address, f"{SERVER_V4}:{free_port()}", "--cookie", cookie)
        assert closed.returncode == 1 and "Error 96 (CONNECTION_RESET" in closed.stderr.decode()
    assert run_cli("example.com:80", DEST).returncode == 2
    assert connect_main(["198.18.0.1:5000", DEST, "--cookie", "zz"]) == 2
