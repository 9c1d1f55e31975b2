"""The live converter tried as an attacker would (docs/live-converter.md, "Operating it safely"):
destinations on the converter's own host, abusive clients, cookie secrets across restarts, and
what a killed daemon leaves its peers. Root; each test in namespaces of its own (tests/live)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mpsim.live.client import ConvertError, convert_open
from mpsim.live.converter import ConverterDaemon
from mpsim.live.sockets import IPPROTO_MPTCP, delivered_locally
from mpsim.wire.convert import ConvertErrorCode

from . import (
    CONVERTER_V4,
    CONVERTER_V6,
    OUTSIDER_V4,
    SERVER_V4,
    EchoServer,
    converter,
    exchange,
    live_namespace,
)


@pytest.fixture
def ns():
    with live_namespace() as namespace:
        yield namespace


def _local_service(host: str) -> tuple[socket.socket, int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(8)
    listener.setblocking(False)
    return listener, listener.getsockname()[1]


# --- 1. destinations the converter's host delivers locally -------------------------------------------


def test_destinations_on_the_converters_own_host_get_error_32_and_are_counted(ns):
    service_v4, port_v4 = _local_service(OUTSIDER_V4)  # another address of the converter's host
    service_v6, port_v6 = _local_service(CONVERTER_V6)
    with service_v4, service_v6, EchoServer() as server, converter(listen=f"{CONVERTER_V4}:0") as conv:
        own_port = int(conv.wait_for("listening")["port"])
        for dest in (f"{CONVERTER_V4}:{own_port}",  # its own listener: chaining itself
                     f"{OUTSIDER_V4}:{port_v4}", f"[{CONVERTER_V6}]:{port_v6}"):
            with pytest.raises(ConvertError) as caught:
                convert_open(conv.address, dest, mptcp=True)
            assert caught.value.code == ConvertErrorCode.NOT_AUTHORIZED, dest
        for service in (service_v4, service_v6):  # no SYN ever reached the local services
            with pytest.raises(BlockingIOError):
                service.accept()
        with convert_open(conv.address, server.address, mptcp=True).sock as sock:  # others still converted
            assert exchange(sock, b"still served") == b"still served"
        assert [e["stage"] for e in conv.events("forbidden_destination")] == ["request"] * 3
        assert conv.terminate() == 0
        counters = conv.wait_for("counters")
        assert counters["forbidden_destinations"] == "3" and counters["error_not_authorized"] == "3"
        assert counters["accepted"] == "4"  # the client's own connections; none came back through itself


def test_the_local_check_asks_the_kernel_each_time(ns):
    from ipaddress import ip_address
    assert delivered_locally(ip_address(CONVERTER_V4)) and delivered_locally(ip_address(CONVERTER_V6))
    assert delivered_locally(ip_address(f"::ffff:{CONVERTER_V4}"))
    assert not delivered_locally(ip_address(SERVER_V4))
    assert not delivered_locally(ip_address("198.18.7.7"))
    ns.ip("addr", "add", "198.18.7.7/32", "dev", "lo")  # an address added while running: seen at once
    assert delivered_locally(ip_address("198.18.7.7"))


def test_the_post_connect_check_sees_a_local_peer(ns):
    service, port = _local_service(OUTSIDER_V4)
    with service, EchoServer() as server:
        local = socket.create_connection((OUTSIDER_V4, port), timeout=5)
        remote = socket.create_connection((server.host, server.port), timeout=5)
        with local, remote:
            assert ConverterDaemon._connected_to_self(local)
            assert not ConverterDaemon._connected_to_self(remote)
