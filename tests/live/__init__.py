"""Helpers of the live tests: each test runs in a network namespace of its own, created and deleted
by the ``live_ns`` fixture (so the per-namespace TFO sysctl is never touched outside it), with the
converter daemon as a subprocess in its own session (killed by process group at the end) and
small servers in threads, all bounded in time.

Addresses: RFC 8803 6.2.5 forbids loopback destinations, and the converter refuses every
destination its own host would deliver locally, so servers live in a second namespace joined by a
veth pair: the test's namespace carries 198.18.0.1 and 2001:2::1 (benchmarking ranges, RFC 2544 /
RFC 5180) on ``lo``, where the converter listens and clients connect from, and 198.19.0.1 (outside
the clients' prefixes: an unauthorised client); the server namespace carries 198.18.0.2 and
2001:2::2, where :class:`EchoServer` and :func:`free_port` bind (through :func:`server_side`).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mpsim.live.sockets import IPPROTO_MPTCP, MSG_FASTOPEN, TCP_FASTOPEN, TCP_FASTOPEN_NO_COOKIE

ROOT = Path(__file__).resolve().parents[2]
#: Where the tests' own ``mpsim`` was imported from (the repository, or build/fast: the compiled
#: build). The daemons they start import that one too: ``-P`` keeps the working directory (the
#: repository root, which ``-m`` would put first) off their path.
_PACKAGE_PARENT = str(Path(__import__("mpsim").__file__).resolve().parents[1])
_DAEMON_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH"))
                                                          if p)}
CONVERTER_V4, SERVER_V4 = "198.18.0.1", "198.18.0.2"
CONVERTER_V6, SERVER_V6 = "2001:2::1", "2001:2::2"
OUTSIDER_V4 = "198.19.0.1"  # a client address outside CLIENT_PREFIXES
CLIENT_PREFIXES = ("198.18.0.0/24", "2001:2::/64")
_CLONE_NEWNET = 0x40000000
_names = itertools.count()


def live_skip_reason() -> str | None:
    """Why the live tests cannot run here, or None."""
    if sys.platform != "linux":
        return "live tests need Linux"
    if os.geteuid() != 0:
        return "live tests need root (they create network namespaces)"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "live tests need iproute2 (`ip`)"
    if not Path("/proc/sys/net/ipv4/tcp_fastopen").exists():
        return "this kernel has no TCP Fast Open (net.ipv4.tcp_fastopen missing)"
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP).close()
    except OSError as err:
        return f"this kernel cannot create MPTCP sockets ({err.strerror})"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class LiveNs:
    name: str

    def sysctl(self, name: str, value: str) -> None:
        Path("/proc/sys", *name.split(".")).write_text(value)  # this thread is inside the namespace

    def ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)


_server_ns: list[tuple[int, int]] = []  # (server namespace fd, test namespace fd) of the running test


@contextlib.contextmanager
def server_side() -> Iterator[None]:
    """This thread in the server namespace for the block: sockets made there stay there."""
    if not _server_ns:
        yield
        return
    server_fd, test_fd = _server_ns[-1]
    _setns(server_fd)
    try:
        yield
    finally:
        _setns(test_fd)


def _wire_server_namespace(ns: LiveNs, server: LiveNs) -> None:
    ns.ip("link", "add", "mpc0", "type", "veth", "peer", "name", "mps0", "netns", server.name)
    server.ip("link", "set", "lo", "up")
    for side, dev, v4, v6 in ((ns, "mpc0", "198.18.255.1/30", "2001:2:ffff::1/64"),
                              (server, "mps0", "198.18.255.2/30", "2001:2:ffff::2/64")):
        side.ip("addr", "add", v4, "dev", dev)
        side.ip("-6", "addr", "add", v6, "dev", dev, "nodad")
        side.ip("link", "set", dev, "up")
    server.ip("addr", "add", f"{SERVER_V4}/32", "dev", "lo")
    server.ip("-6", "addr", "add", f"{SERVER_V6}/128", "dev", "lo", "nodad")
    ns.ip("route", "add", f"{SERVER_V4}/32", "via", "198.18.255.2")
    ns.ip("-6", "route", "add", f"{SERVER_V6}/128", "via", "2001:2:ffff::2")
    for prefix in ("198.18.0.0/24", "198.19.0.0/24"):
        server.ip("route", "add", prefix, "via", "198.18.255.1")
    server.ip("-6", "route", "add", "2001:2::/64", "via", "2001:2:ffff::1")


@contextlib.contextmanager
def live_namespace(tcp_fastopen: str = "0x3") -> Iterator[LiveNs]:
    """A fresh network namespace that this thread (and what it starts) lives in until the end,
    and a server namespace behind a veth pair (see the module doc)."""
    reason = live_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"mpsim-o-{os.getpid()}-{next(_names)}"
    _ip("netns", "add", name)
    _ip("netns", "add", f"{name}-s")
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        ns = LiveNs(name)
        ns.ip("link", "set", "lo", "up")
        for address in (CONVERTER_V4, OUTSIDER_V4):
            ns.ip("addr", "add", f"{address}/32", "dev", "lo")
        ns.ip("-6", "addr", "add", f"{CONVERTER_V6}/128", "dev", "lo", "nodad")
        _wire_server_namespace(ns, LiveNs(f"{name}-s"))
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        server_target = os.open(f"/run/netns/{name}-s", os.O_RDONLY)
        try:
            _setns(target)
            _server_ns.append((server_target, target))
            ns.sysctl("net.ipv4.tcp_fastopen", str(int(tcp_fastopen, 0)))
            yield ns
        finally:
            _server_ns.clear()
            _setns(original)
            os.close(target)
            os.close(server_target)
    finally:
        os.close(original)
        _ip("netns", "del", f"{name}-s")
        _ip("netns", "del", name)


# --- the converter daemon as a subprocess -----------------------------------------------------------

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_line(line: str) -> dict[str, str]:
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _FIELD.findall(line)}


class ConverterProcess:
    """``python -m mpsim.live.serve ARGS`` in its own session; its stderr log collected."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "mpsim.live.serve", *args], cwd=ROOT,
                                     env=_DAEMON_ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def events(self, event: str) -> list[dict[str, str]]:
        with self._changed:
            return [f for line in self.lines if (f := parse_log_line(line)).get("event") == event]

    def wait_for(self, event: str, count: int = 1, timeout_s: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = [f for line in self.lines if (f := parse_log_line(line)).get("event") == event]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {event!r} line #{count} in the converter log:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.2))

    @property
    def address(self) -> str:
        listening = self.wait_for("listening")
        host = listening["addr"]
        return f"[{host}]:{listening['port']}" if ":" in host else f"{host}:{listening['port']}"

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def terminate(self, timeout_s: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reader.join(5)


@contextlib.contextmanager
def converter(*args: str, allow: tuple[str, ...] = CLIENT_PREFIXES,
              listen: str = f"{CONVERTER_V4}:0") -> Iterator[ConverterProcess]:
    flags = ["--listen", listen, *(a for prefix in allow for a in ("--allow", prefix)), *args]
    process = ConverterProcess(*flags)
    try:
        process.wait_for("listening")
        yield process
        assert not process.events("internal_error"), "\n".join(process.lines)  # a bug the daemon survived
    finally:
        process.kill()


# --- servers in threads ----------------------------------------------------------------------------------


@dataclass
class EchoServer:
    """Echoes every connection (MPTCP listener: plain TCP too) and half-closes after the client's
    FIN; ``reset_after_bytes`` makes it reset instead once it got that many bytes."""

    host: str = SERVER_V4
    reset_after_bytes: int | None = None
    accepted: int = 0
    port: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> EchoServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with server_side():
            self._listener = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
        self._listener.bind((self.host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads.append(threading.Thread(target=self._accept_loop, daemon=True))
        self._threads[0].start()
        return self

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        received = 0
        with sock:
            try:
                while data := sock.recv(65536):
                    received += len(data)
                    if self.reset_after_bytes is not None and received >= self.reset_after_bytes:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        return
                    sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every connection it accepted has ended (its thread closed the socket);
        False if one is still open at the deadline (its client never closed: a leak)."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads[1:]:  # the first is the accept loop
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads[1:])

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()


class FakeConverter:
    """A Fast Open listener (cookie-less) whose connections are served by ``handler(sock)`` in a
    thread: a converter that answers what a test scripts. ``outcomes`` collects handler results."""

    def __init__(self, handler: Callable[[socket.socket], object], host: str = CONVERTER_V4) -> None:
        self.handler = handler
        self.host = host
        self.outcomes: list[object] = []
        self._stop = threading.Event()

    def __enter__(self) -> FakeConverter:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, 16)
        self._listener.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.address = f"{self.host}:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(5)
            with sock:
                try:
                    self.outcomes.append(self.handler(sock))
                except OSError as err:
                    self.outcomes.append(err)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


# --- client-side helpers -------------------------------------------------------------------------------


def exchange(sock: socket.socket, data: bytes, timeout_s: float = 30.0) -> bytes:
    """Send ``data`` then FIN, and read until the peer's FIN, at once (no deadlock on big echoes)."""
    sock.setblocking(False)
    received = bytearray()
    view = memoryview(data)
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        write_open = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"exchange: {len(received)} of {len(data)} bytes back after {timeout_s} s")
            for _, mask in selector.select(left):
                if mask & selectors.EVENT_WRITE and write_open:
                    try:
                        view = view[sock.send(view[:262144]):]
                    except BlockingIOError:
                        pass
                    if not view:
                        sock.shutdown(socket.SHUT_WR)
                        write_open = False
                        selector.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(262144)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return bytes(received)
                    received += chunk


def raw_syn(converter_address: str, payload: bytes, *, mptcp: bool = False) -> socket.socket:
    """A connection to the converter whose SYN carries ``payload`` as is (no checks): for requests
    the client library would refuse to build."""
    host, _, port = converter_address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
    sock.settimeout(5)
    sock.sendto(payload, MSG_FASTOPEN, (host.strip("[]"), int(port)))
    return sock


def read_until_eof(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    sock.settimeout(timeout_s)
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return bytes(data)


def free_port(host: str = SERVER_V4) -> int:
    """A port nobody listens on (bound, then released: connect() gets RST)."""
    with server_side():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


__all__ = ["CONVERTER_V4", "CONVERTER_V6", "OUTSIDER_V4", "SERVER_V4", "SERVER_V6", "ConverterProcess", "EchoServer",
           "FakeConverter", "converter", "exchange", "free_port", "live_namespace", "raw_syn",
           "read_until_eof", "server_side"]
