"""The converter daemon's per-connection shortcuts (docs/live-converter.md "Setup rate") against the
general paths they stand in for: Pump.forward against Pump.pump, the remembered SYN-ACK options
against a full TCP_INFO parse, the Converter's remembered client_allowed against the policy's.
No root needed: socket pairs and loopback only."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsim.live.relay import BufferPool, PipePool, Pump, PumpEvent, RelayMode
from mpsim.live.sockets import (
    MptcpInfo,
    SynAckOptions,
    parse_tcp_info,
    reconstruct_synack_options,
)
from mpsim.proto.convert import Converter, ConverterPolicy
from mpsim.proto.relay import ConverterTiming, SendUpstream
from mpsim.wire.convert import ConvertMessage, ExtendedTcpHeaderTlv, encode_convert

# --- Pump.forward: the same bytes, counts and events as Pump.pump ---------------------------------


def _pairs():
    """(client end, pump source), (pump destination, server end): two stream socket pairs."""
    a, source = socket.socketpair()
    destination, b = socket.socketpair()
    for sock in (a, source, destination, b):
        sock.setblocking(False)
    return a, source, destination, b


def _pump(source, destination) -> Pump:
    return Pump(source, destination, RelayMode.COPY, pipes=PipePool(), buffers=BufferPool())


def _drain(sock: socket.socket) -> bytes:
    got = bytearray()
    for _ in range(10_000):
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_forward_relays_a_short_exchange_in_one_call_and_counts_it():
    a, source, destination, b = _pairs()
    pump = _pump(source, destination)
    assert pump.can_forward
    assert pump.forward() == 0  # nothing there yet: nothing changes
    a.send(b"x" * 100)
    assert pump.forward() == 100
    assert _drain(b) == b"x" * 100
    assert pump.relayed_bytes == 100 and pump.can_forward and not pump.wants_write
    for sock in (a, source, destination, b):
        sock.close()


def test_forward_keeps_what_the_destination_could_not_take_and_pump_delivers_it():
    a, source, destination, b = _pairs()
    destination.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pump = _pump(source, destination)
    payload = bytes(range(256)) * 200  # 51,200 bytes: more than the destination's buffers hold
    a.send(payload)
    got = bytearray()
    result = pump.forward()
    assert result is None  # a part stayed behind
    assert pump.wants_write and not pump.can_forward
    for _ in range(1000):  # the general pump takes over until everything is through
        got += _drain(b)
        if len(got) >= len(payload):
            break
        assert pump.pump() is None
    assert bytes(got) == payload
    assert pump.relayed_bytes == len(payload)
    for sock in (a, source, destination, b):
        sock.close()


def test_forward_reports_eof_and_shuts_the_destination_once_asked():
    a, source, destination, b = _pairs()
    pump = _pump(source, destination)
    a.shutdown(socket.SHUT_WR)
    assert pump.forward() is PumpEvent.SOURCE_EOF
    assert pump.source_eof and not pump.can_forward
    pump.request_shutdown()  # what the session decides on the EOF
    assert pump.finished
    assert b.recv(10) == b""  # the FIN went on
    for sock in (a, source, destination, b):
        sock.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setblocking(False)
    server.setblocking(False)
    return client, server


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_forward_reports_resets_of_either_side_as_pump_does():
    peer, source = _tcp_pair()
    destination, other = _tcp_pair()
    pump = _pump(source, destination)
    _reset(peer)
    for _ in range(100):
        result = pump.forward()
        if result != 0:
            break
    assert result is PumpEvent.SOURCE_RESET and pump.failed
    for sock in (source, destination, other):
        sock.close()

    client, source = _tcp_pair()
    destination, server = _tcp_pair()
    pump = _pump(source, destination)
    _reset(server)
    result = None
    for _ in range(100):  # the first send may still be accepted before the RST is seen
        client.send(b"y" * 10)
        result = pump.forward()
        if result.__class__ is not int:
            break
    assert result is PumpEvent.DESTINATION_RESET and pump.failed
    for sock in (client, source, destination):
        sock.close()


# --- the server's SYN-ACK options: remembered = a full parse ----------------------------------------

_SHARED = SynAckOptions()  # shared across examples, so that remembered answers are reused


@settings(max_examples=400, deadline=None)
@given(options=st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 0x20, 0x27, 0xA7]),
       wscale=st.integers(0, 255), mss=st.sampled_from([536, 1448, 1460, 32768, 65535 + 100]),
       rest=st.binary(min_size=236, max_size=236), first=st.binary(min_size=5, max_size=5),
       mptcp=st.one_of(st.none(), st.tuples(st.integers(0, 7), st.booleans())), length=st.integers(88, 256))
def test_remembered_synack_options_equal_the_full_parse(options, wscale, mss, rest, first, mptcp, length):
    raw = bytearray(first + bytes([options, wscale]) + rest)[:256]
    raw = raw.ljust(256, b"\0")
    struct.pack_into("=I", raw, 16, mss & 0xFFFFFFFF)
    raw = bytes(raw[:length])
    info = None if mptcp is None else MptcpInfo(subflows=0, flags=mptcp[0], csum_enabled=mptcp[1], bytes_sent=0,
                                                bytes_received=0)
    expected = reconstruct_synack_options(parse_tcp_info(raw), info)
    assert _SHARED.from_info(raw, info) == expected
    assert _SHARED.from_info(raw[:20], info) == expected  # the 20 bytes the daemon reads are enough
    # and the reply the session builds on them is byte for byte the reply of a fresh encoding
    converter = Converter(ConverterPolicy(allowed_client_prefixes=("198.18.0.0/15",),
                                          timing=ConverterTiming.SOCKET), _FixedRng())
    session = converter.session(IPv4Address("198.18.0.1"), 0.0)
    session.receive_upstream(_CONNECT_REQUEST, 0.0)
    while session.next_decision() is not None:
        pass
    session.downstream_connected(0.0, _SHARED.from_info(raw, info))
    reply = next(d for d in iter(session.next_decision, None) if isinstance(d, SendUpstream))
    assert reply.data == encode_convert(ConvertMessage((ExtendedTcpHeaderTlv(expected),)))


def test_remembered_synack_options_need_the_first_20_bytes():
    with pytest.raises(ValueError, match="20 bytes"):
        SynAckOptions().from_info(b"\0" * 19, None)


class _FixedRng:
    def getrandbits(self, bits: int) -> int:
        return 0x5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A & ((1 << bits) - 1)


def _connect_request() -> bytes:
    from mpsim.wire.convert import ConnectTlv

    return encode_convert(ConvertMessage((ConnectTlv(80, IPv4Address("192.0.2.80")),)))


_CONNECT_REQUEST = _connect_request()


# --- client_allowed remembered by the Converter -------------------------------------------------------


def test_converters_remembered_client_allowed_is_the_policys_answer_also_past_its_bound():
    policy = ConverterPolicy(allowed_client_prefixes=("198.18.0.0/24", "2001:db8::/64"))
    converter = Converter(policy, _FixedRng())
    addresses = [ip_address(f"198.18.{i % 3}.{i % 251}") for i in range(700)]
    addresses += [ip_address(f"2001:db8:0:{i % 2}::{i}") for i in range(50)]
    for _round in range(2):  # the second round answers from the memo (and after it was emptied)
        for address in addresses:
            assert converter.client_allowed(address) == policy.client_allowed(address)
    assert len(converter.allowed_addresses) <= 256


def test_the_wakeup_bytes_stop_or_reload_the_daemon_themselves():
    # signal.set_wakeup_fd writes one byte per signal caught; the daemon acts on those bytes
    # (ConverterDaemon._on_signals), not only in its Python-level handlers, which the compiled
    # build's native loop may not run until the next event. The end-to-end check is
    # test_converter.py's SIGTERM test, run against the compiled build by tests/test_fast_build.py.
    import signal

    from mpsim.live.converter import signal_actions

    assert signal_actions(bytes([signal.SIGUSR1, signal.SIGHUP])) == (False, True)
    assert signal_actions(bytes([signal.SIGINT])) == (True, False)
    assert signal_actions(bytes([signal.SIGTERM, signal.SIGHUP])) == (True, True)
    assert signal_actions(b"") == (False, False)
