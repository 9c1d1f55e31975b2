"""The live converter tried as an attacker would (docs/live-converter.md, "Operating it safely"):
destinations on the converter's own host, abusive clients, cookie secrets across restarts, and
what a killed daemon leaves its peers. Root; each test in namespaces of its own (tests/live)."""

from __future__ import annotations

import contextlib
import errno
import resource
import select
import signal
import socket
import stat
import threading
import time

import pytest

from mpsim.bench.kernel.attacker import open_fast
from mpsim.live.client import ConvertError, convert_open
from mpsim.live.converter import ConverterDaemon
from mpsim.live.cookies import rotate_cookie_secret
from mpsim.live.sockets import (
    IPPROTO_MPTCP,
    LocalAddressCheck,
    delivered_locally,
    reset_close,
)
from mpsim.wire.convert import ConvertErrorCode

from . import (
    CONVERTER_V4,
    CONVERTER_V6,
    OUTSIDER_V4,
    SERVER_V4,
    ConverterProcess,
    EchoServer,
    converter,
    exchange,
    live_namespace,
    server_side,
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


def test_the_local_check_asks_the_kernel_and_forgets_on_every_address_change(ns):
    from ipaddress import ip_address
    assert delivered_locally(ip_address(CONVERTER_V4)) and delivered_locally(ip_address(CONVERTER_V6))
    assert delivered_locally(ip_address(f"::ffff:{CONVERTER_V4}"))
    assert not delivered_locally(ip_address(SERVER_V4))
    assert not delivered_locally(ip_address("198.18.7.7"))
    check = LocalAddressCheck()  # the daemon's: answers cached until rtnetlink says something changed
    try:
        assert check.sock is not None and not check(ip_address("198.18.7.7"))
        ns.ip("addr", "add", "198.18.7.7/32", "dev", "lo")  # an address added while running
        assert delivered_locally(ip_address("198.18.7.7"))
        assert not check(ip_address("198.18.7.7"))  # stale until the notification is read ...
        deadline = time.monotonic() + 5
        while not select.select([check.sock], [], [], 0.1)[0] and time.monotonic() < deadline:
            pass
        check.on_readable()
        assert check(ip_address("198.18.7.7"))  # ... then asked again
    finally:
        check.close()


def test_an_address_added_while_serving_is_refused_at_once(ns):
    with converter() as conv:
        for attempt in range(2):
            with pytest.raises(ConvertError) as caught:
                convert_open(conv.address, "198.18.7.7:9", mptcp=True, timeout_s=10)
            if attempt == 0:  # no such host: the connect fails (an answer about 198.18.7.7 is now cached)
                assert caught.value.code != ConvertErrorCode.NOT_AUTHORIZED
                ns.ip("addr", "add", "198.18.7.7/32", "dev", "lo")
                time.sleep(0.3)
            else:
                assert caught.value.code == ConvertErrorCode.NOT_AUTHORIZED


def test_the_post_connect_check_sees_a_local_peer(ns):
    service, port = _local_service(OUTSIDER_V4)
    with service, EchoServer() as server:
        local = socket.create_connection((OUTSIDER_V4, port), timeout=5)
        remote = socket.create_connection((server.host, server.port), timeout=5)
        with local, remote:
            assert ConverterDaemon._connected_to_self(local)
            assert not ConverterDaemon._connected_to_self(remote)


# --- 2. abuse: idle, slow, garbage, resetting and unauthorised clients beside good ones ------------------


class Abusers:
    """Keeps ``idle`` sockets that never send, ``slow`` ones that send a Convert header and then a
    byte every 0.5 s, ``outsiders`` (from outside --allow) and re-opens them when the converter
    drops them; opens ``garbage`` SYNs with a payload that is not Convert and ``resetting``
    clients that reset at once, over and over. One thread, bounded by ``limit_s``."""

    def __init__(self, dest: tuple[str, int], *, idle: int, slow: int, outsiders: int, garbage: int,
                 resetting: int, limit_s: float = 40.0) -> None:
        self.dest, self.limit_s = dest, limit_s
        self.targets = {"idle": idle, "slow": slow, "outsider": outsiders, "garbage": garbage, "resetting": resetting}
        self.opened = {kind: 0 for kind in self.targets}
        self.socks: dict[str, list[socket.socket]] = {kind: [] for kind in self.targets}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, kind: str) -> socket.socket:
        self.opened[kind] += 1
        if kind == "slow":
            return open_fast(self.dest, HEADER_ONLY)
        if kind == "garbage":
            return open_fast(self.dest, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        if kind == "outsider":
            return open_fast(self.dest, b"", source=OUTSIDER_V4)
        return open_fast(self.dest, b"")

    @staticmethod
    def _dead(sock: socket.socket) -> bool:
        try:
            return sock.recv(64, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            return err.errno != errno.ENOTCONN  # still connecting: alive

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        last_trickle = 0.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            trickle, last_trickle = (now - last_trickle >= 0.5), (now if now - last_trickle >= 0.5 else last_trickle)
            for kind, socks in self.socks.items():
                if kind in ("garbage", "resetting"):  # one shot each: close the last batch, open the next
                    for sock in socks:
                        reset_close(sock) if kind == "resetting" else sock.close()
                    socks.clear()
                else:
                    alive = []
                    for sock in socks:
                        if self._dead(sock):
                            sock.close()
                            continue
                        if kind == "slow" and trickle:
                            with contextlib.suppress(OSError):
                                sock.send(b"\x00")
                        alive.append(sock)
                    socks[:] = alive
                while len(socks) < self.targets[kind]:
                    try:
                        socks.append(self._open(kind))
                    except OSError:
                        break  # out of ports or descriptors for a moment: next round
            self._stop.wait(0.05)
        self._close()

    def _close(self) -> None:
        for socks in self.socks.values():
            for sock in socks:
                sock.close()
            socks.clear()

    def __enter__(self) -> Abusers:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


#: A Convert header promising 255 words, of which nothing more comes quickly.
HEADER_ONLY = bytes((1, 255, 0x22, 0x63))


def _good_clients(conv_address: str, dest: str, count: int, pause_s: float) -> tuple[int, list[float]]:
    served, setups = 0, []
    for _ in range(count):
        start = time.monotonic()
        try:
            connection = convert_open(conv_address, dest, mptcp=True, timeout_s=5)
        except (OSError, ConvertError):
            continue
        setups.append(time.monotonic() - start)
        with connection.sock as sock:
            if exchange(sock, b"x" * 100, timeout_s=5) == b"x" * 100:
                served += 1
        time.sleep(pause_s)
    return served, setups


def test_good_clients_are_served_through_an_attack_and_descriptors_return(ns):
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, max(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    with EchoServer() as server, converter("--quiet", "--max-pending", "100", "--max-pending-per-source", "200",
                                           "--message-timeout", "10") as conv:
        host, _, port = conv.address.rpartition(":")
        assert _good_clients(conv.address, server.address, 1, 0.3)[0] == 1  # the daemon fully up (signal fds)
        baseline = conv.fd_count()
        with Abusers((host, int(port)), idle=150, slow=100, outsiders=100, garbage=60, resetting=20):
            time.sleep(1.5)  # the attack is under way
            served, setups = _good_clients(conv.address, server.address, 60, 0.05)
            during = conv.fd_count()
        assert served == 60, f"{served} of 60 good clients served under attack"
        setups.sort()
        assert setups[int(0.9 * len(setups))] <= 2.0, f"setup p90 {setups[int(0.9 * len(setups))]:.2f} s"
        assert during > baseline  # the attack really held connections
        deadline = time.monotonic() + 15
        while conv.fd_count() > baseline and time.monotonic() < deadline:
            time.sleep(0.2)
        assert conv.fd_count() == baseline
        assert conv.terminate() == 0
        counters = conv.wait_for("counters")
        for name in ("refused_at_accept", "garbage_reset", "pending_dropped_oldest"):
            assert int(counters.get(name, "0")) > 0, (name, counters)
        assert counters["open_conns"] == "0" and counters.get("internal_errors", "0") == "0"


def test_a_half_sent_request_is_reset_after_the_grace_at_the_minimum_rate(ns):
    with converter("--request-grace", "0.5", "--request-min-rate", "100") as conv:
        host, _, port = conv.address.rpartition(":")
        sock = open_fast((host, int(port)), HEADER_ONLY)  # 4 bytes: a deadline 0.54 s after accept
        start = time.monotonic()
        with sock:
            sock.setblocking(True)
            sock.settimeout(5)
            with pytest.raises(ConnectionResetError):
                while sock.recv(64):
                    pass
            waited_s = time.monotonic() - start
        assert 0.4 <= waited_s <= 3.0, waited_s  # not the 10 s message timeout
        assert conv.wait_for("slow_request")["request_bytes"] == "4"


def test_garbage_is_reset_at_once_and_outsiders_before_they_hold_anything(ns):
    with converter() as conv:
        host, _, port = conv.address.rpartition(":")
        garbage = open_fast((host, int(port)), b"GET / HTTP/1.1\r\n\r\n")
        outsider = open_fast((host, int(port)), b"", source=OUTSIDER_V4)
        for sock in (garbage, outsider):
            with sock:
                sock.setblocking(True)
                sock.settimeout(5)
                start = time.monotonic()
                data = b""
                with pytest.raises(ConnectionResetError):
                    while chunk := sock.recv(64):
                        data += chunk
                assert time.monotonic() - start < 1.5  # at once, not after a FIN and a 2 s wait
            if sock is outsider:
                assert data == bytes((1, 2, 0x22, 0x63, 30, 1, 32, 0))  # Error 32 (RFC 8803 6.2.8), then the reset
        assert conv.terminate() == 0
        counters = conv.wait_for("counters")
        assert counters["garbage_reset"] == "1" and counters["refused_at_accept"] == "1"
        assert counters["accepted"] == "1"  # the outsider never became a connection of the daemon


def test_pending_connections_are_capped_per_source_oldest_first(ns):
    with converter("--max-pending-per-source", "5", "--request-grace", "5") as conv:
        host, _, port = conv.address.rpartition(":")
        idle = [open_fast((host, int(port)), b"") for _ in range(8)]
        time.sleep(0.5)
        try:
            assert [Abusers._dead(sock) for sock in idle] == [True] * 3 + [False] * 5  # the oldest three went
        finally:
            for sock in idle:
                sock.close()
        assert conv.terminate() == 0
        assert conv.wait_for("counters")["pending_dropped_per_source"] == "3"


# --- 3. the cookie secret across restarts and rotations ------------------------------------------------


def _cookie_of(conv, server) -> bytes:
    with pytest.raises(ConvertError) as caught:
        convert_open(conv.address, server.address, mptcp=True)
    assert caught.value.code == ConvertErrorCode.MISSING_COOKIE
    return caught.value.reply.advice.cookie


def _served_with(conv, server, cookie: bytes) -> None:
    with convert_open(conv.address, server.address, mptcp=True, cookie=cookie).sock as sock:
        assert exchange(sock, b"cookie ok") == b"cookie ok"


def test_cookies_survive_a_restart_and_a_rotation_never_refuses_them(ns, tmp_path):
    secret = tmp_path / "secret"
    flags = ("--require-cookie", "--cookie-secret", str(secret))
    with EchoServer() as server:
        with converter(*flags) as conv:
            cookie = _cookie_of(conv, server)
            _served_with(conv, server, cookie)
            assert conv.terminate() == 0
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600  # created private
        with converter(*flags) as conv:  # a restart: the same secret, the same cookie
            _served_with(conv, server, cookie)
            rotate_cookie_secret(secret)
            _served_with(conv, server, cookie)  # not reloaded yet: still the old secret
            conv.proc.send_signal(signal.SIGHUP)
            conv.wait_for("cookie_secret_reloaded")
            with pytest.raises(ConvertError) as caught:  # the previous secret's cookie: a fresh one, not 32
                convert_open(conv.address, server.address, mptcp=True, cookie=cookie)
            assert caught.value.code == ConvertErrorCode.MISSING_COOKIE
            fresh = caught.value.reply.advice.cookie
            assert fresh != cookie
            _served_with(conv, server, fresh)
            with pytest.raises(ConvertError) as forged:
                convert_open(conv.address, server.address, mptcp=True, cookie=bytes(len(cookie)))
            assert forged.value.code == ConvertErrorCode.NOT_AUTHORIZED
            assert conv.terminate() == 0
            assert conv.wait_for("counters")["cookies_reissued"] == "1"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_cookie_secret_others_can_read_is_refused(ns, tmp_path, mode):
    secret = tmp_path / "secret"
    secret.write_text("00" * 32 + "\n")
    secret.chmod(mode)
    process = ConverterProcess("--listen", f"{CONVERTER_V4}:0", "--allow", "198.18.0.0/24",
                               "--cookie-secret", str(secret))
    try:
        assert process.proc.wait(20) == 2
    finally:
        process.kill()
    assert "chmod 600" in "\n".join(process.lines)


# --- 4. a killed daemon resets both peers ----------------------------------------------------------------


def test_a_killed_daemon_resets_both_peers_mid_transfer(ns):
    seen: list[str] = []
    with server_side():
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    listener.bind((SERVER_V4, 0))
    listener.listen(1)
    listener.settimeout(10)

    def stream_forever() -> None:  # sends until its peer goes; notes how it went
        sock, _ = listener.accept()
        sock.settimeout(0.05)
        deadline = time.monotonic() + 20
        with sock:
            while time.monotonic() < deadline:
                try:
                    sock.send(b"x" * 16384)
                    if sock.recv(4096) == b"":
                        seen.append("eof")
                        return
                except TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    seen.append("reset")
                    return
            seen.append("timeout")

    server = threading.Thread(target=stream_forever, daemon=True)
    server.start()
    with listener, converter() as conv:
        connection = convert_open(conv.address, f"{SERVER_V4}:{listener.getsockname()[1]}", mptcp=True)
        with connection.sock as sock:
            sock.settimeout(10)
            received = 0
            while received < 1 << 20:  # mid-transfer
                received += len(sock.recv(65536))
            conv.kill()  # SIGKILL: no handler runs, the kernel closes the daemon's sockets
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):  # what was in flight, then the reset, never an EOF
                    pass
        server.join(15)
    assert seen == ["reset"]


# --- --workers N -------------------------------------------------------------------------------------------


def test_workers_share_the_port_and_the_cookie_secret_and_sum_their_counters(ns):
    with EchoServer() as server, converter("--workers", "2", "--require-cookie", "--quiet") as conv:
        ports = {e["port"] for e in [conv.wait_for("listening", 2)] + conv.events("listening")}
        assert len(ports) == 1  # port 0 resolved once for both
        cookie = _cookie_of(conv, server)
        for _ in range(30):  # spread over both workers by the 4-tuple hash: the cookie is valid at each
            _served_with(conv, server, cookie)
        assert conv.terminate() == 0
        total = conv.wait_for("counters")
        per_worker = conv.events("worker_counters")
    assert total["workers"] == "2" and total["converted"] == "30" and total["accepted"] == "31"
    assert sorted(w["worker"] for w in per_worker) == ["0", "1"]
    assert all(int(w["accepted"]) > 0 for w in per_worker), per_worker
    assert sum(int(w["converted"]) for w in per_worker) == 30
