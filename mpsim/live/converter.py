"""The RFC 8803 Transport Converter on Linux sockets: ``mpsim converter serve``.

A single-threaded epoll loop. Every Convert decision (framing, authorization, cookies,
the connection limit, destination checks, which Error TLV, the FIN/RST coupling of the two legs)
is :class:`mpsim.proto.convert.ConverterSession`'s, the same object the simulator runs, in its
SOCKET timing; this module only carries the session's decisions out on sockets and feeds it what
the sockets report. The exceptions are the two things sockets cannot leave to the session:

* relaying: once the session is RELAYING the bytes flow through :class:`mpsim.live.relay.Pump`
  (splice or copy) without passing through the session; only the ends of each direction (EOF,
  reset) are handed to it, and its Close decisions become ``shutdown(SHUT_WR)`` once the
  direction is drained;
* what the kernel decides alone: it answers the client's SYN before the server was reached, and
  retransmits the downstream SYN on its own timer (docs/live-converter.md lists every deviation).

Listeners are MPTCP sockets (plain TCP clients are accepted by them too) with the Fast Open
server side on in cookie-less mode (``TCP_FASTOPEN`` + ``TCP_FASTOPEN_NO_COOKIE``; the sysctl needs
the server bit 0x2), so the Convert message is read from the SYN payload.

Log lines go to stderr as ``key=value``; :meth:`ConverterDaemon.counters` has the counters,
printed at exit too.
"""

from __future__ import annotations

import errno
import heapq
import json
import random
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import TextIO

from mpsim.errors import MpsimError
from mpsim.live.cookies import CookieSecretError, load_cookie_secrets
from mpsim.live.relay import BufferPool, PipePool, Pump, PumpEvent, RelayMode, mode_for
from mpsim.live.sockets import (
    TCP_FASTOPEN,
    TCP_FASTOPEN_NO_COOKIE,
    KernelSettingError,
    converter_kernel_problems,
    LocalAddressCheck,
    SynAckOptions,
    family_of,
    icmp_code_for_errno,
    mptcp_info,
    peer_address,
    read_sysctl,
    reset_close,
    stream_socket,
    tcp_info,
)
from mpsim.proto.convert import Converter, ConverterPolicy, ConverterSession
from mpsim.proto.relay import (
    AcceptUpstream,
    CloseDownstream,
    CloseUpstream,
    ConverterTiming,
    IgnoreUpstream,
    OpenDownstream,
    Report,
    ResetDownstream,
    ResetUpstream,
    RetransmitDownstreamSyn,
    SendDownstream,
    SendUpstream,
)
from mpsim.wire.convert import MAX_TOTAL_LENGTH_WORDS, ConvertErrorCode, ConvertMessage, ErrorTlv, encode_convert
from mpsim.wire.options import TcpOptionKind

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1  # could not listen, or the loop failed
EXIT_USER_ERROR = 2  # usage or kernel settings: something the operator can fix

#: Request-phase reads: at most one whole Convert message (255 words); bytes after it wait in the session.
_REQUEST_READ_BYTES = MAX_TOTAL_LENGTH_WORDS * 4
_ACCEPTS_PER_WAKEUP = 64
_CLIENT_MEMO_ENTRIES = 4096
_LOG_WRITE_BYTES = 4000  # below PIPE_BUF (4096): one write of whole lines is atomic on a pipe
_MAX_LOOP_WAIT_S = 1.0
# While a relay is moving bytes, look at it again this often even without a readiness event: a
# rare relay stall (one transfer in thousands, both pumps waiting on an MPTCP socket that had
# become ready) showed that a wake-up can be missed; a bounded re-check costs a few wake-ups a
# second per active relay and nothing once it goes idle. A last line of defence only: slow
# downloads over MPTCP are the kernel's window drops on connections opened with SYN data, not
# missed wake-ups (docs/live-converter.md "Downloads over a client leg opened with SYN data").
_RELAY_RECHECK_S = 0.2
_RELAY_ACTIVE_S = 2.0  # a relay counts as active this long after it last moved a byte
_ACCEPT_ERROR_PAUSE_S = 0.5
#: Connections past --max-conns + --max-pending (converted ones still flushing after their
#: session ended) beyond which the listeners pause: a bound on descriptors, not a policy.
_FLUSHING_CONNS = 64
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST (MPTCP: MP_FASTCLOSE)
_LINGER_ORDERLY = struct.pack("ii", 0, 0)  # the default: close() sends FIN
_DESCRIPTORS_PER_CONN = 6  # two sockets, and two pipes of two ends while splicing both ways
# epoll event bits (level-triggered). An error or hang-up is reported without being asked for and
# counts as both readable and writable: the next read or write finds out what happened.
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
_WRITABLE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
_NOT_FORWARDABLE = ~(select.EPOLLIN | select.EPOLLHUP)  # readiness that Pump.forward leaves to the general pump


class ConfigError(MpsimError):
    """A converter setting that cannot work; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """What ``mpsim converter serve`` takes (see :func:`serve_main` for the options)."""

    listen: tuple[tuple[IPv4Address | IPv6Address, int], ...]
    allowed_prefixes: tuple[str, ...] = ()
    require_cookie: bool = False
    max_conns: int = 1024
    relay: RelayMode = RelayMode.AUTO
    mptcp: bool = True  # MPTCP listeners, and MPTCP attempted downstream
    message_timeout_s: float = 10.0
    connect_timeout_s: float = 30.0
    shutdown_grace_s: float = 5.0
    close_linger_s: float = 2.0  # after an error reply: how long to wait for the client's RST or FIN
    tfo_queue_len: int = 1024
    log_connections: bool = True
    # Abuse resistance (docs/live-converter.md, "Operating it safely"): connections without a
    # downstream leg (reading the request, or closing after an Error TLV) are "pending".
    max_pending: int = 1024  # the pending pool; when full, the oldest pending connection is reset
    max_pending_per_source: int = 64  # per client address; when full, that address's oldest is reset
    request_grace_s: float = 1.0  # a request may take this long ...
    request_min_rate_bytes_per_s: float = 256.0  # ... plus its bytes so far at this rate, then it is reset
    cookie_secret_path: str | None = None  # None: ``cookie_secrets``, or a random secret per start
    cookie_secrets: tuple[bytes, ...] = ()  # given by the supervisor of --workers: one secret for all
    reuse_port: bool = False  # SO_REUSEPORT listeners: --workers N processes share each port
    worker: int | None = None  # this process's number under --workers (log lines say it)

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError("give at least one --listen ADDR:PORT")
        if self.max_conns < 1:
            raise ConfigError("--max-conns must be at least 1")
        if self.max_pending < 1 or self.max_pending_per_source < 1:
            raise ConfigError("--max-pending and --max-pending-per-source must be at least 1")
        for name in ("message_timeout_s", "connect_timeout_s", "shutdown_grace_s", "close_linger_s",
                     "request_grace_s", "request_min_rate_bytes_per_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for prefix in self.allowed_prefixes:
            try:
                ip_network(prefix)
            except ValueError as err:
                raise ConfigError(f"--allow {prefix}: {err}") from None

    @property
    def max_open_conns(self) -> int:
        return 2 * self.max_conns + self.max_pending + _FLUSHING_CONNS


def supported_kinds(mptcp: bool) -> tuple[int, ...]:
    """The Connect options this converter honours (Supported TCP Extensions TLV): what its own
    SYNs carry. SACK-Permitted and Timestamps follow the sysctls (Linux adds them to every SYN or
    to none); MPTCP when downstream MPTCP is attempted. TFO (34) is absent: a client's cookie
    cannot be put in a SYN through the socket API, and a cookie request's answer lands in the
    kernel's cache, not with us (Error 33)."""
    kinds = []
    if read_sysctl("net.ipv4.tcp_sack") != "0":
        kinds.append(TcpOptionKind.SACK_PERMITTED)
    if read_sysctl("net.ipv4.tcp_timestamps") not in ("0", None):
        kinds.append(TcpOptionKind.TIMESTAMPS)
    if mptcp:
        kinds.append(TcpOptionKind.MPTCP)
    return tuple(kinds)


def _kv(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '="' for c in text) else text


class _Conn:
    """One client: its upstream socket, its session, and what the driver keeps around them."""

    __slots__ = ("id", "up", "down", "sockaddr", "session", "phase", "to_client", "to_server", "up2down",
                 "down2up", "closing_deadline", "scheduled", "started", "down_family", "events", "eof_seen",
                 "fin_sent", "reset_sent", "last_progress_s", "relayed_bytes", "source", "request_bytes",
                 "linger_armed", "connected_early", "up_events", "down_events", "down_peer")

    def __init__(self, conn_id: int, up: socket.socket, sockaddr: tuple, session: ConverterSession, now: float,
                 source: str = "") -> None:
        self.id = conn_id
        self.source = source  # the client's address: the per-source pending cap
        self.request_bytes = 0  # read in the request phase (the minimum rate)
        self.connected_early = False  # connect() had finished when it returned
        self.down_peer: tuple | None = None  # getpeername() of the downstream socket, once connected
        # Reset on close (SO_LINGER 0) from accept on, inherited from the listener: a crash resets
        # the client; an orderly close (_drop_socket with reset=False) switches it back first.
        self.linger_armed = True
        self.up: socket.socket | None = up
        self.down: socket.socket | None = None
        self.sockaddr = sockaddr  # the client's (address, port, ...): its text only when a log line needs it
        self.session = session
        self.phase = "request"  # request, connecting, relaying, closing, closed
        self.to_client = bytearray()  # before the relay exists: error replies
        self.to_server = bytearray()
        self.up2down: Pump | None = None
        self.down2up: Pump | None = None
        self.closing_deadline: float | None = None
        self.scheduled: float | None = None
        self.started = now
        self.down_family: int = socket.AF_INET
        self.up_events = 0  # the epoll events registered for each socket (0: not registered)
        self.down_events = 0
        self.eof_seen = False  # the client's FIN (or reset) was read
        self.fin_sent = False  # closing: our FIN after the reply
        self.reset_sent = False  # a leg was closed with RST
        self.last_progress_s = now  # the last time a pump moved bytes (for the stall re-check)
        self.relayed_bytes = 0

    @property
    def client(self) -> str:
        """The client's ``address:port`` for log lines."""
        return f"{self.sockaddr[0]}:{self.sockaddr[1]}"


def signal_actions(caught: bytes) -> tuple[bool, bool]:
    """(stop, reload) for the signal numbers a wakeup socket carried: SIGTERM or SIGINT stops,
    SIGHUP reloads the cookie secrets; other signals do nothing."""
    stop = signal.SIGTERM in caught or signal.SIGINT in caught
    return stop, signal.SIGHUP in caught


class ConverterDaemon:
    """The converter: :meth:`start` opens the listeners, :meth:`run` serves until :meth:`stop`
    (or SIGTERM/SIGINT with :meth:`install_signal_handlers`), then returns the exit status."""

    def __init__(self, config: ServeConfig, *, log: TextIO | None = None) -> None:
        self.config = config
        self.policy = ConverterPolicy(
            allowed_client_prefixes=config.allowed_prefixes, require_cookie=config.require_cookie,
            max_sessions=config.max_conns, supported_kinds=supported_kinds(config.mptcp),
            connect_timeout_s=config.connect_timeout_s, message_timeout_s=config.message_timeout_s,
            timing=ConverterTiming.SOCKET)
        secrets_ = config.cookie_secrets
        if config.cookie_secret_path is not None:
            try:
                secrets_ = load_cookie_secrets(config.cookie_secret_path)
            except CookieSecretError as err:
                raise ConfigError(str(err)) from None
        self.converter = Converter(self.policy, random.SystemRandom(), cookie_secrets=secrets_)
        self._reload_requested = False
        self._counters: Counter[str] = self.converter.counters  # the session's and ours, one table
        self._log_stream = log if log is not None else sys.stderr
        # Log lines of one turn of the loop, written together at its end (one write, not one per line).
        self._log_lines: list[str] = []
        self._log_bytes = 0
        # A bare level-triggered epoll with our own fd -> handler table (no selectors.SelectorKey per
        # registration): handlers are ("listener", sock), ("netlink", check), ("wakeup", sock) or
        # (conn, side). A socket is forgotten when it is closed: closing removes it from the epoll
        # set, so no EPOLL_CTL_DEL is needed.
        self._epoll = select.epoll()
        self._handlers: dict[int, tuple] = {}
        self._closed_fds: set[int] = set()  # closed while the current batch of events is dispatched
        self._listeners: list[socket.socket] = []
        self._accepting = False
        self._conns: dict[int, _Conn] = {}
        # Pending connections (no downstream leg yet), oldest first: all, and per client address.
        self._pending: dict[int, _Conn] = {}
        self._pending_by_source: dict[str, dict[int, _Conn]] = {}
        # Client address text -> (address, allowed by --allow, the per-source key); bounded.
        self._clients: dict[str, tuple[IPv4Address | IPv6Address, bool, str]] = {}
        self._refusal = encode_convert(ConvertMessage((ErrorTlv(ConvertErrorCode.NOT_AUTHORIZED),)))
        self._by_fd: dict[int, tuple[_Conn, str]] = {}
        self._timers: list[tuple[float, int, int]] = []  # (deadline, seq, conn id); stale entries skipped
        self._timer_seq = 0
        self._next_id = 1
        self._pipes = PipePool()
        self._buffers = BufferPool()
        self._stop_requested = False
        self._stop_deadline: float | None = None
        self._accept_resume_at: float | None = None  # after an accept() error
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._synack_options = SynAckOptions()  # the server's options, remembered per TCP_INFO bytes
        self._sockaddrs: dict = {}  # destination address -> its text for connect(): str() costs more than a lookup
        self._max_open_conns = config.max_open_conns
        self._is_local = LocalAddressCheck()  # the host's own addresses, kept current by rtnetlink
        if self._is_local.sock is not None:
            self._watch(self._is_local.sock.fileno(), _IN, ("netlink", self._is_local))
        self.addresses: list[tuple[str, int]] = []

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> list[tuple[str, int]]:
        """Check the kernel, open the listeners; the (address, port) pairs listened on."""
        problems = converter_kernel_problems(mptcp=self.config.mptcp)
        if problems:
            raise KernelSettingError("; ".join(problems))
        self._raise_descriptor_limit()
        for address, port in self.config.listen:
            self._listeners.append(self._listener(address, port))
        for listener in self._listeners:
            self._watch(listener.fileno(), _IN, ("listener", listener))
        # Accepted sockets are made from the listener's family and protocol read once here: the
        # socket module's accept() converts both to enums on every call.
        self._accept_kinds = {listener.fileno(): (int(listener.family), listener.proto) for listener in self._listeners}
        # Whether another connection waits, asked before accepting it: an accept() that finds none
        # raises (BlockingIOError), which costs several times a poll(0).
        self._accept_polls = {}
        for listener in self._listeners:
            self._accept_polls[listener.fileno()] = poll = select.poll()
            poll.register(listener.fileno(), select.POLLIN)
        self._accepting = True
        self.addresses = [listener.getsockname()[:2] for listener in self._listeners]
        for host, port in self.addresses:
            self._log("listening", addr=host, port=port, mptcp=int(self.config.mptcp), relay=self.config.relay.value,
                      max_conns=self.config.max_conns, supported_kinds=",".join(map(str, self.policy.supported_kinds)))
        if not self.config.allowed_prefixes:
            self._log("warning", msg="no --allow given: every client will be refused with Error 32 "
                                     "(never an open relay, RFC 8803 9.1)")
        self._flush_log()
        return self.addresses

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop gracefully; the wakeup socket ends a select() at once."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        self._watch(reader.fileno(), _IN, ("wakeup", reader))
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda num, frame: self.stop())
        signal.signal(signal.SIGHUP, lambda num, frame: self.reload())

    def _on_signals(self, caught: bytes) -> None:
        """Act on the signal numbers the wakeup socket carries (``signal.set_wakeup_fd`` writes one
        byte per signal caught). The Python-level handlers do the same, but they run only when the
        interpreter next evaluates Python code: in the compiled build (``make fast``) the loop is
        native code, and a SIGTERM with nothing else happening (an idle relay open) waited there
        for the next event, past the grace period (tests/live/test_converter.py, seen in 3 of 6
        compiled runs). Both paths only set flags, so acting twice is harmless."""
        stop, reload = signal_actions(caught)
        if stop:
            self.stop()
        if reload:
            self.reload()

    def reload(self) -> None:
        """Re-read the cookie secret file (after a rotation) at the next turn of the loop."""
        self._reload_requested = True

    def _reload_secrets(self) -> None:
        self._reload_requested = False
        if self.config.cookie_secret_path is None:
            return
        try:
            secrets_ = load_cookie_secrets(self.config.cookie_secret_path)
        except CookieSecretError as err:
            self._log("warning", msg=f"cookie secrets not reloaded, the old ones stay: {err}")
            return
        self.converter.set_cookie_secrets(secrets_)
        self._counters["cookie_secret_reloads"] += 1
        self._log("cookie_secret_reloaded", secrets=len(secrets_))

    def stop(self) -> None:
        """Stop accepting; relays get ``shutdown_grace_s`` to finish, then are reset."""
        self._stop_requested = True

    def counters(self) -> dict[str, int]:
        """Counters so far: the sessions' (mpsim.proto.convert.Converter) and the driver's."""
        snapshot = dict(self._counters)
        snapshot["open_conns"] = len(self._conns)
        snapshot["pending_conns"] = len(self._pending)
        snapshot["active_sessions"] = self.converter.active_sessions
        snapshot["pipes_created"] = self._pipes.created
        snapshot["buffers_created"] = self._buffers.created
        return snapshot

    def run(self) -> int:
        try:
            while True:
                now = time.monotonic()
                if self._reload_requested:
                    self._reload_secrets()
                if self._stop_requested and self._stop_deadline is None:
                    self._begin_stop(now)
                if self._stop_deadline is not None and (not self._conns or now >= self._stop_deadline):
                    break
                if self._log_lines:
                    self._flush_log()  # before waiting: nothing logged waits for the next event
                events = self._epoll.poll(self._wait_s(now))
                for fd, mask in events:
                    if fd in self._closed_fds:
                        continue  # closed by an earlier event of this batch (its number may be reused)
                    handler = self._handlers.get(fd)
                    if handler is not None:
                        self._dispatch(handler, mask)
                self._closed_fds.clear()
                now = time.monotonic()
                self._run_timers(now)
                if self._accept_resume_at is not None and now >= self._accept_resume_at:
                    self._accept_resume_at = None
                    self._resume_accepting()
        finally:
            self._close_everything()
            self._flush_log()
        self._log("counters" if self.config.worker is None else "worker_counters", **self.counters())
        self._flush_log()
        return EXIT_OK

    # --- setup helpers ------------------------------------------------------------------------------

    def _listener(self, address: IPv4Address | IPv6Address, port: int) -> socket.socket:
        sock = stream_socket(family_of(address), mptcp=self.config.mptcp)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.config.reuse_port:  # --workers: the kernel spreads new connections over the processes
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if address.version == 6 and address.is_unspecified:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] takes IPv4 clients too
            # Fast Open server side, cookie-less: the Convert message arrives in the SYN (RFC 8803 4.2).
            sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, self.config.tfo_queue_len)
            sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
            # Accepted sockets inherit SO_LINGER 0 (reset on close): one setsockopt per listener
            # rather than one per connection; see _Conn.linger_armed.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.bind((str(address), port))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise OSError(err.errno, f"cannot listen on {address}:{port}: {err.strerror}") from None
        return sock

    def _raise_descriptor_limit(self) -> None:
        needed = self.config.max_open_conns + _DESCRIPTORS_PER_CONN * self.config.max_conns + 256
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft >= needed:
            return
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ConfigError(f"--max-conns {self.config.max_conns} needs about {needed} file descriptors; the hard "
                              f"limit is {hard} (raise it with ulimit -Hn, or lower --max-conns)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))

    # --- the loop --------------------------------------------------------------------------------------

    def _wait_s(self, now: float) -> float:
        deadline = self._timers[0][0] if self._timers else now + _MAX_LOOP_WAIT_S
        for other in (self._stop_deadline, self._accept_resume_at):
            if other is not None:
                deadline = min(deadline, other)
        return min(max(deadline - now, 0.0), _MAX_LOOP_WAIT_S)

    def _watch(self, fd: int, events: int, handler: tuple) -> None:
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        self._epoll.unregister(fd)
        del self._handlers[fd]

    def _dispatch(self, handler: tuple, mask: int) -> None:
        first, obj = handler
        if first.__class__ is _Conn:
            if first.phase != "closed":
                try:
                    self._on_ready(first, obj, mask)
                except Exception as err:  # a bug must cost one connection, not the converter
                    self._internal_error(first, err)
        elif first == "listener":
            self._accept(obj)
        elif first == "netlink":
            obj.on_readable()
        elif first == "wakeup":
            try:
                while caught := obj.recv(4096):
                    self._on_signals(caught)
            except BlockingIOError:
                pass

    def _begin_stop(self, now: float) -> None:
        self._stop_deadline = now + self.config.shutdown_grace_s
        for listener in self._listeners:
            if self._accepting:
                self._unwatch(listener.fileno())
            listener.close()
        self._listeners.clear()
        self._accepting = False
        self._log("stopping", open_conns=len(self._conns), grace_s=self.config.shutdown_grace_s)

    def _close_everything(self) -> None:
        if self._conns:
            self._log("stopped_relays", count=len(self._conns), msg="grace period over: reset")
        for conn in list(self._conns.values()):
            self._counters["reset_at_shutdown"] += 1
            self._finish(conn, reset=True)
        for listener in self._listeners:
            listener.close()
        self._is_local.close()
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for sock in self._wakeup:
                sock.close()
        self._epoll.close()
        self._pipes.close()
        self._buffers.close()

    # --- accepting -----------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        now = time.monotonic()
        family, proto = self._accept_kinds[listener.fileno()]
        waiting = self._accept_polls[listener.fileno()].poll
        for index in range(_ACCEPTS_PER_WAKEUP):
            if len(self._conns) >= self._max_open_conns:
                self._pause_accepting()
                return
            if index and not waiting(0):
                return  # the queue is empty (epoll said so for the first)
            try:
                fd, sockaddr = listener._accept()  # type: ignore[attr-defined]  # what accept() wraps
                sock = socket.socket(family, socket.SOCK_STREAM, proto, fd)
            except BlockingIOError:
                return
            except OSError as err:  # EMFILE and the like: the listener stays readable, so pause, not spin
                self._counters["accept_errors"] += 1
                self._log("accept_error", error=errno.errorcode.get(err.errno or 0, err.errno))
                self._pause_accepting()
                self._accept_resume_at = now + _ACCEPT_ERROR_PAUSE_S
                return
            known = self._clients.get(sockaddr[0])
            if known is None:  # parse and judge each client address once (the policy is fixed)
                address = peer_address(sockaddr)
                known = (address, self.policy.client_allowed(address), str(address))
                if len(self._clients) >= _CLIENT_MEMO_ENTRIES:
                    self._clients.clear()
                self._clients[sockaddr[0]] = known
            address, allowed, source = known
            if not allowed:
                self._refuse_at_accept(sock, sockaddr)
                continue
            sock.setblocking(False)
            if len(self._pending) >= self.config.max_pending:
                self._counters["pending_dropped_oldest"] += 1  # the pool is full: the oldest goes, not service
                self._finish(next(iter(self._pending.values())), reset=True)
            same_source = self._pending_by_source.setdefault(source, {})
            if len(same_source) >= self.config.max_pending_per_source:
                self._counters["pending_dropped_per_source"] += 1
                self._finish(next(iter(same_source.values())), reset=True)
                same_source = self._pending_by_source.setdefault(source, {})
            conn_id, self._next_id = self._next_id, self._next_id + 1
            session = self.converter.session(address, now)
            conn = _Conn(conn_id, sock, sockaddr, session, now, source)
            self._conns[conn_id] = conn
            self._pending[conn_id] = conn
            same_source[conn_id] = conn
            self._counters["accepted"] += 1
            try:
                if self.config.log_connections:
                    info = tcp_info(sock)  # was the Convert message in the SYN? (RFC 8803 8)
                    self._log("accept", conn=conn_id, client=conn.client, mptcp=int(mptcp_info(sock) is not None),
                              syn_data=int(info.syn_data), syn_bytes=info.bytes_received if info.syn_data else 0)
                self._read_request(conn, now)  # the SYN payload is already there
            except Exception as err:
                self._internal_error(conn, err)

    def _refuse_at_accept(self, sock: socket.socket, sockaddr: tuple) -> None:
        """A client outside --allow: Error 32 (RFC 8803 6.2.8) in one non-blocking send, then a
        reset at once, before it holds a session, a timer or a pending slot. The SYN payload is not
        even read (the reset would come anyway: RFC 8803 wants the client to reset after an Error)."""
        self._counters["refused_at_accept"] += 1
        try:
            sock.setblocking(False)
            sock.send(self._refusal)
        except OSError:
            pass  # its buffer is full or it is gone: the reset says enough
        reset_close(sock)
        if self.config.log_connections:
            self._log("refused", client=f"{sockaddr[0]}:{sockaddr[1]}", error=int(ConvertErrorCode.NOT_AUTHORIZED),
                      name="NOT_AUTHORIZED", value=0, dest="-", stage="accept")

    def _unpend(self, conn: _Conn) -> None:
        """``conn`` got its downstream leg, or is gone: it leaves the pending pool."""
        if self._pending.pop(conn.id, None) is not None:
            same_source = self._pending_by_source.get(conn.source)
            if same_source is not None:
                same_source.pop(conn.id, None)
                if not same_source:
                    del self._pending_by_source[conn.source]

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for listener in self._listeners:
                self._unwatch(listener.fileno())
            self._counters["accept_paused"] += 1
            self._log("accept_paused", open_conns=len(self._conns))

    def _resume_accepting(self) -> None:
        if (not self._accepting and self._listeners and self._accept_resume_at is None
                and len(self._conns) < self.config.max_open_conns):
            self._accepting = True
            for listener in self._listeners:
                self._watch(listener.fileno(), _IN, ("listener", listener))

    # --- one connection: readiness ----------------------------------------------------------------

    def _on_ready(self, conn: _Conn, side: str, mask: int) -> None:
        now = time.monotonic()
        phase = conn.phase
        if phase == "relaying":
            if not mask & _NOT_FORWARDABLE:
                # Bytes (or a FIN) to read and nothing to write: the short exchange's common case,
                # one recv and one send without the general pump's rounds, pools and re-registration.
                pump, other = (conn.up2down, conn.down2up) if side == "up" else (conn.down2up, conn.up2down)
                assert pump is not None and other is not None
                if pump.can_forward and not other.wants_write:
                    result = pump.forward()
                    if isinstance(result, int):
                        if result:
                            self._forwarded(conn, now)
                        return
                    if result is not None:
                        self._pump_event(conn, side, result, now)
                    self._note_progress(conn, now)
                    self._settle(conn, now)
                    return
            # Only the directions this socket's readiness concerns: the other socket has its own
            # registration (level-triggered), so nothing waits on a direction not pumped here.
            readable, writable = bool(mask & _READABLE), bool(mask & _WRITABLE)
            if side == "up":
                self._pump(conn, now, up2down=readable, down2up=writable)
            else:
                self._pump(conn, now, up2down=writable, down2up=readable)
        elif phase == "request":
            self._read_request(conn, now)
        elif phase == "connecting":
            self._downstream_ready(conn, now)
        elif phase == "closing":
            self._closing_step(conn, now)

    def _read_request(self, conn: _Conn, now: float) -> None:
        assert conn.up is not None
        try:
            data = conn.up.recv(_REQUEST_READ_BYTES)
        except BlockingIOError:
            self._settle(conn, now)
            return
        except OSError:
            conn.session.upstream_reset(now)
        else:
            if data:
                conn.request_bytes += len(data)
                conn.session.receive_upstream(data, now)
            else:
                conn.eof_seen = True
                conn.session.upstream_closed(now)
        self._apply(conn, now)

    def _downstream_ready(self, conn: _Conn, now: float) -> None:
        """The non-blocking connect() finished: SYN-ACK (the reply), or why not (the Error TLV)."""
        down = conn.down
        assert down is not None and conn.up is not None
        # Connected (the peer is known: inside connect(), or getpeername() answers now): nothing
        # can have failed yet that the relay would not see; else SO_ERROR says how the handshake
        # ended. getpeername() first because the self-check below needs the peer anyway: one
        # system call on the common path instead of SO_ERROR and getpeername().
        error = 0
        if conn.down_peer is None:
            try:
                conn.down_peer = down.getpeername()
            except OSError:  # ENOTCONN: the handshake failed (or the connection was reset since)
                error = down.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._drop_socket(conn, "down", reset=False)
            self._downstream_error(conn, error, now)
        elif self._connected_to_self(down, conn.down_peer):  # the last line of defence: an address added since the check
            self._log("forbidden_destination", conn=conn.id, client=conn.client, dest=_dest(conn), stage="connected")
            self._drop_socket(conn, "down", reset=True)
            conn.session.downstream_forbidden(now)
        else:
            options, mptcp = self._synack_options(down)
            relay = self.config.relay
            conn.up2down = Pump(conn.up, down, mode_for(conn.up, relay), pipes=self._pipes, buffers=self._buffers)
            conn.down2up = Pump(down, conn.up, mode_for(down, relay), pipes=self._pipes, buffers=self._buffers)
            conn.down2up.prefix += conn.to_client
            conn.up2down.prefix += conn.to_server
            conn.to_client.clear()
            conn.to_server.clear()
            conn.phase = "relaying"
            # While relaying, a close is a reset: if the daemon dies (crash, SIGKILL, OOM) the kernel
            # closes both legs with RST, and neither peer mistakes a cut stream for a finished one.
            # Only an orderly close (_drop_socket with reset=False) switches it back.
            # The upstream leg has been so since accept (the listener's SO_LINGER is inherited).
            down.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self._counters["downstream_mptcp" if mptcp is not None else "downstream_tcp"] += 1
            if self.config.log_connections:
                self._log("connected", conn=conn.id, dest=_dest(conn), mptcp=int(mptcp is not None),
                          relay_up=conn.up2down.mode.value, relay_down=conn.down2up.mode.value)
            conn.session.downstream_connected(now, options)
        self._apply(conn, now, settle=False)
        if conn.phase == "relaying":
            # The reply and any early client bytes go at once (and it settles); nothing is read
            # yet: epoll says when either side has bytes, which saves two reads that find none.
            self._pump(conn, now, read=False)
        else:
            self._settle(conn, now)

    @staticmethod
    def _connected_to_self(down: socket.socket, peer: tuple | None = None) -> bool:
        """After connect(): is the peer this host? Linux gives a connection to a local address that
        address itself as source (the local route's preferred source), so peer == local says it
        without another syscall; the check before connect() asked the kernel already. ``peer``:
        getpeername() when already known."""
        try:
            if peer is None:
                peer = down.getpeername()
            local = down.getsockname()
        except OSError:
            return False  # reset already: the relay finds out
        return peer[0] == local[0]

    def _downstream_error(self, conn: _Conn, error: int, now: float) -> None:
        """A connect() errno, to the session's words for it (which pick the Error TLV)."""
        self._counters[f"connect_{errno.errorcode.get(error, error)}"] += 1
        if error == errno.ECONNREFUSED:  # a RST (or an ICMP port unreachable: the same errno)
            conn.session.downstream_reset(now)
        elif (code := icmp_code_for_errno(conn.down_family, error)) is not None:
            conn.session.downstream_unreachable(now, code)
        elif error == errno.ETIMEDOUT:
            conn.session.downstream_timeout(now)
        else:
            conn.session.downstream_failed(now)

    def _pump(self, conn: _Conn, now: float, *, up2down: bool = True, down2up: bool = True,
              read: bool = True) -> None:
        for pump, source, wanted in ((conn.up2down, "up", up2down), (conn.down2up, "down", down2up)):
            if not wanted or pump is None or conn.phase != "relaying":
                continue
            event = pump.pump(read)
            if event is None:
                continue  # the session heard nothing, so it has nothing to decide (its queue is empty)
            self._pump_event(conn, source, event, now)
        self._note_progress(conn, now)
        self._settle(conn, now)  # once for both directions (it re-registers and re-arms the timer)

    def _pump_event(self, conn: _Conn, source: str, event: PumpEvent, now: float) -> None:
        """A pump's EOF or reset, told to the session, whose decisions are carried out (no settle)."""
        session = conn.session
        if event is PumpEvent.SOURCE_EOF:
            if source == "up":
                session.upstream_closed(now)
            else:
                session.downstream_closed()
        else:
            upstream_side = (source == "up") == (event is PumpEvent.SOURCE_RESET)
            self._counters["relay_resets_up" if upstream_side else "relay_resets_down"] += 1
            if upstream_side:
                session.upstream_reset(now)
            else:
                session.downstream_reset(now)
        self._apply(conn, now, settle=False)

    def _forwarded(self, conn: _Conn, now: float) -> None:
        """Bytes went straight through (:meth:`Pump.forward`): what _settle would change is only the
        progress time and, when none is pending, the relay's stall re-check."""
        assert conn.up2down is not None and conn.down2up is not None
        conn.relayed_bytes = conn.up2down.relayed_bytes + conn.down2up.relayed_bytes
        conn.last_progress_s = now
        if conn.scheduled is None or conn.scheduled < now:
            conn.scheduled = deadline = now + _RELAY_RECHECK_S
            self._timer_seq += 1
            heapq.heappush(self._timers, (deadline, self._timer_seq, conn.id))

    @staticmethod
    def _note_progress(conn: _Conn, now: float) -> None:
        if conn.up2down is None or conn.down2up is None:
            return
        relayed = conn.up2down.relayed_bytes + conn.down2up.relayed_bytes
        if relayed != conn.relayed_bytes:
            conn.relayed_bytes, conn.last_progress_s = relayed, now

    # --- one connection: the session's decisions -------------------------------------------------------

    def _apply(self, conn: _Conn, now: float, *, settle: bool = True) -> None:
        session = conn.session
        while (decision := session.next_decision()) is not None:
            match decision:
                case OpenDownstream():
                    self._open_downstream(conn, decision, now)
                case SendUpstream(data=data, reply=reply):
                    if reply is not None and (session.error is not None or self.config.log_connections):
                        self._log_reply(conn, reply)  # refusals always; successes unless --quiet
                    (conn.down2up.prefix if conn.down2up is not None else conn.to_client).extend(data)
                case SendDownstream(data=data):
                    (conn.up2down.prefix if conn.up2down is not None else conn.to_server).extend(data)
                case CloseUpstream():
                    if conn.down2up is not None:
                        conn.down2up.request_shutdown()
                    elif session.request is None and session.error is None and not conn.to_client:
                        # Not Convert at all (RFC 8803 6: ignored): reset at once, no FIN-and-wait
                        # that garbage could hold a slot with.
                        self._counters["garbage_reset"] += 1
                        self._finish(conn, reset=True)
                        return
                    else:
                        self._start_closing(conn, now)
                case CloseDownstream():
                    if conn.up2down is not None:
                        conn.up2down.request_shutdown()
                case ResetUpstream(reason=reason):
                    self._counters[f"upstream_reset_{reason.value}"] += 1
                    self._drop_socket(conn, "up", reset=True)
                case ResetDownstream():
                    self._drop_socket(conn, "down", reset=True)
                case IgnoreUpstream():
                    self._drop_socket(conn, "up", reset=True)  # the kernel answered the SYN: closing is all we can do
                case AcceptUpstream() | RetransmitDownstreamSyn():
                    pass  # RFC timing only: the kernel answered the SYN, and retransmits the downstream SYN itself
                case Report(event=event):
                    self._log("report", conn=conn.id, event_type=type(event).__name__)
        if conn.connected_early and conn.phase == "connecting":
            conn.connected_early = False
            self._downstream_ready(conn, now)  # applies the session's answer and settles
            return
        if settle:
            self._settle(conn, now)

    def _open_downstream(self, conn: _Conn, request: OpenDownstream, now: float) -> None:
        family = family_of(request.address)
        conn.down_family = family
        conn.phase = "connecting"
        self._unpend(conn)
        if self._is_local(request.address):  # the converter's own host: its listener, its services
            self._log("forbidden_destination", conn=conn.id, client=conn.client, dest=_dest(conn), stage="request")
            conn.session.downstream_forbidden(now)
            return
        if request.syn_payload:  # only with a relayed TFO cookie, which supported_kinds never offers
            conn.to_server += request.syn_payload
        try:
            down = stream_socket(family, mptcp=self.config.mptcp, nonblocking=True)  # MPTCP attempted; the kernel falls back
        except OSError as err:
            self._counters["downstream_socket_errors"] += 1
            self._log("downstream_socket_error", conn=conn.id, error=errno.errorcode.get(err.errno or 0, err.errno))
            conn.session.downstream_failed(now)
            return
        text = self._sockaddrs.get(request.address)
        if text is None:
            if len(self._sockaddrs) >= _CLIENT_MEMO_ENTRIES:
                self._sockaddrs.clear()
            text = self._sockaddrs[request.address] = str(request.address)
        error = down.connect_ex((text, request.port))
        if error == errno.EINPROGRESS:
            # epoll says when the handshake has ended. Not asked at once with getpeername(), which
            # answers only when the SYN-ACK was processed inside connect() itself (between
            # namespaces on one CPU): on the benchmark's testbed, whose receive processing runs on
            # the other CPU, in 2.5 % of connections, and never for a server across a network; an
            # ENOTCONN raised for every other connection cost more than the epoll round it saves.
            conn.down = down
        elif error == 0:  # connected already
            conn.down = down
            try:
                conn.down_peer = down.getpeername()
                conn.connected_early = True
            except OSError:
                pass  # reset meanwhile: epoll reports it
        else:  # a local route said no at once (unreachable, prohibit, no route): same words as an ICMP error
            down.close()
            self._downstream_error(conn, error, now)

    def _start_closing(self, conn: _Conn, now: float) -> None:
        """After an error reply (or bytes that are not Convert): the reply, then FIN (RFC 8803
        6.2.8: never an immediate RST), then wait a little for the client's RST or FIN."""
        conn.phase = "closing"
        conn.closing_deadline = now + self.config.close_linger_s
        self._closing_step(conn, now)

    def _closing_step(self, conn: _Conn, now: float) -> None:
        up = conn.up
        if up is None:
            self._settle(conn, now)
            return
        try:
            while conn.to_client:
                del conn.to_client[:up.send(conn.to_client)]
            if not conn.fin_sent:
                conn.fin_sent = True
                up.shutdown(socket.SHUT_WR)
            while not conn.eof_seen:  # the client's bytes are not wanted any more: drop them until its FIN
                conn.eof_seen = not up.recv(65536)
        except BlockingIOError:
            pass
        except OSError:  # reset by the client, as RFC 8803 expects after an Error TLV
            self._finish(conn, reset=True)
            return
        if conn.eof_seen and conn.fin_sent:
            self._finish(conn, reset=False)
        else:
            self._settle(conn, now)

    # --- bookkeeping -------------------------------------------------------------------------------------

    def _settle(self, conn: _Conn, now: float) -> None:
        """After anything happened to ``conn``: finish it, or update its selector events and timer."""
        if conn.phase == "closed":
            return
        if self._finished(conn):
            up2down, down2up = conn.up2down, conn.down2up
            self._finish(conn, reset=up2down is not None and down2up is not None
                         and not (up2down.finished and down2up.finished))
            return
        self._register(conn)
        # The earliest of: the session's timer, the closing linger, the request's minimum-rate
        # deadline, the relay's stall re-check (compared one by one: this runs several times per
        # connection, and a list and min() cost more than the comparisons).
        deadline = conn.session.get_timer()
        other = conn.closing_deadline
        if other is not None and (deadline is None or other < deadline):
            deadline = other
        phase = conn.phase
        if phase == "request":
            other = self._request_deadline(conn)
            if deadline is None or other < deadline:
                deadline = other
        elif phase == "relaying" and now - conn.last_progress_s < _RELAY_ACTIVE_S:
            other = now + _RELAY_RECHECK_S
            if deadline is None or other < deadline:
                deadline = other
        # Keep an earlier wake-up that is still pending (it re-evaluates when it fires), so the
        # moving re-check deadline does not push a heap entry per event.
        if deadline is not None and (conn.scheduled is None or deadline < conn.scheduled or conn.scheduled < now):
            conn.scheduled = deadline
            self._timer_seq += 1
            heapq.heappush(self._timers, (deadline, self._timer_seq, conn.id))

    def _request_deadline(self, conn: _Conn) -> float:
        """A request must arrive at the minimum rate: grace, plus its bytes so far at that rate."""
        return conn.started + self.config.request_grace_s + conn.request_bytes / self.config.request_min_rate_bytes_per_s

    def _finished(self, conn: _Conn) -> bool:
        if conn.phase == "closing":
            return conn.up is None
        if not conn.session.done:
            return False
        if conn.up2down is None or conn.down2up is None:
            return True  # never relayed: nothing left to flush
        if conn.up is None or conn.down is None:
            return True  # a side was reset
        return conn.up2down.finished and conn.down2up.finished

    @staticmethod
    def _events_up(conn: _Conn) -> int:
        phase = conn.phase
        if phase == "relaying":
            up2down, down2up = conn.up2down, conn.down2up
            assert up2down is not None and down2up is not None
            return (_IN if up2down.wants_read else 0) | (_OUT if down2up.wants_write else 0)
        if phase == "request":
            return _IN
        if phase == "closing":
            return _IN | (_OUT if conn.to_client else 0)
        return 0  # connecting: the request is read; more client bytes wait in the kernel (bounded)

    @staticmethod
    def _events_down(conn: _Conn) -> int:
        phase = conn.phase
        if phase == "relaying":
            up2down, down2up = conn.up2down, conn.down2up
            assert up2down is not None and down2up is not None
            return (_IN if down2up.wants_read else 0) | (_OUT if up2down.wants_write else 0)
        if phase == "connecting":
            return _OUT
        return 0

    def _register(self, conn: _Conn) -> None:
        """Make both sockets' epoll registrations what the connection's phase and pumps want."""
        if conn.up is not None:
            events = self._events_up(conn)
            if events != conn.up_events:
                self._set_events(conn, conn.up.fileno(), conn.up_events, events, "up")
                conn.up_events = events
        if conn.down is not None:
            events = self._events_down(conn)
            if events != conn.down_events:
                self._set_events(conn, conn.down.fileno(), conn.down_events, events, "down")
                conn.down_events = events

    def _set_events(self, conn: _Conn, fd: int, current: int, events: int, side: str) -> None:
        if not current:
            self._epoll.register(fd, events)
            self._handlers[fd] = (conn, side)
        elif not events:
            self._unwatch(fd)
        else:
            self._epoll.modify(fd, events)

    def _drop_socket(self, conn: _Conn, side: str, *, reset: bool) -> None:
        sock = conn.up if side == "up" else conn.down
        if sock is None:
            return
        fd = sock.fileno()
        if side == "up":
            registered, conn.up_events = conn.up_events, 0
        else:
            registered, conn.down_events = conn.down_events, 0
        if registered:  # the close below takes it out of the epoll set
            del self._handlers[fd]
        self._closed_fds.add(fd)  # events of this batch for its number are not for a socket that reuses it
        for pump in (conn.up2down, conn.down2up):
            if pump is not None and not pump.finished:
                pump.fail()
        if reset:
            conn.reset_sent = True
            reset_close(sock)
        else:
            if conn.linger_armed:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ORDERLY)
                except OSError:
                    pass  # reset meanwhile: close() sends nothing more anyway
            sock.close()
        if side == "up":
            conn.up = None
        else:
            conn.down = None

    def _finish(self, conn: _Conn, *, reset: bool) -> None:
        """Close what is left of ``conn`` (RST if ``reset``: an abandoned relay) and forget it."""
        if conn.phase == "closed":
            return
        for pump in (conn.up2down, conn.down2up):
            if pump is not None:
                if not pump.finished:
                    pump.fail()
        if conn.up is not None and conn.phase == "closing" and not conn.eof_seen:
            reset = True  # the client never answered our FIN: do not let the socket linger
        self._drop_socket(conn, "up", reset=reset)
        self._drop_socket(conn, "down", reset=reset)
        if not conn.session.done:
            conn.session.upstream_reset(time.monotonic())  # releases its slot in the converter
            while conn.session.next_decision() is not None:
                pass
        conn.phase = "closed"
        self._conns.pop(conn.id, None)
        self._unpend(conn)
        up_bytes = conn.up2down.relayed_bytes if conn.up2down else 0
        down_bytes = conn.down2up.relayed_bytes if conn.down2up else 0
        self._counters["bytes_to_server"] += up_bytes
        self._counters["bytes_to_client"] += down_bytes
        self._counters["closed"] += 1
        if self.config.log_connections:
            self._log("closed", conn=conn.id, duration_s=f"{time.monotonic() - conn.started:.3f}",
                      bytes_to_server=up_bytes, bytes_to_client=down_bytes, reset=int(conn.reset_sent))
        if not self._stop_requested:
            self._resume_accepting()

    def _internal_error(self, conn: _Conn, err: Exception) -> None:
        self._counters["internal_errors"] += 1
        self._log("internal_error", conn=conn.id, error=f"{type(err).__name__}: {err}")
        self._finish(conn, reset=True)

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            deadline, _, conn_id = heapq.heappop(self._timers)
            conn = self._conns.get(conn_id)
            if conn is None or conn.scheduled != deadline:
                continue  # stale: the connection is gone or has another deadline now
            conn.scheduled = None
            if conn.phase == "request" and self._request_deadline(conn) <= now:
                self._counters["slow_requests"] += 1  # half-sent requests do not hold a slot for long
                if self.config.log_connections:
                    self._log("slow_request", conn=conn.id, client=conn.client, request_bytes=conn.request_bytes)
                self._finish(conn, reset=True)
                continue
            if conn.phase == "closing" and conn.closing_deadline is not None and conn.closing_deadline <= now:
                self._counters["closing_timeouts"] += 1
                self._finish(conn, reset=True)
                continue
            timer = conn.session.get_timer()
            if timer is not None and timer <= now:
                if conn.phase == "connecting":
                    self._log("connect_timeout", conn=conn.id, dest=_dest(conn))
                elif conn.phase == "request" and self.config.log_connections:
                    self._log("message_timeout", conn=conn.id, client=conn.client)
                try:
                    conn.session.handle_timer(now)
                    self._apply(conn, now)
                except Exception as err:
                    self._internal_error(conn, err)
            else:
                if conn.phase == "relaying":
                    try:
                        self._pump(conn, now)  # the stall re-check: move what can move now
                    except Exception as err:
                        self._internal_error(conn, err)
                        continue
                self._settle(conn, now)

    # --- logging ---------------------------------------------------------------------------------------

    def _log_reply(self, conn: _Conn, reply) -> None:
        error = reply.tlv(ErrorTlv)
        if error is not None:
            name = error.known_code.name if error.known_code is not None else "UNKNOWN"
            self._log("refused", conn=conn.id, client=conn.client, error=error.code, name=name,
                      value=error.value, dest=_dest(conn))
        elif self.config.log_connections:
            self._log("replied", conn=conn.id, client=conn.client, dest=_dest(conn))

    def _log(self, event: str, **fields: object) -> None:
        """Queue one line; :meth:`_flush_log` writes the queue at the end of the loop's turn."""
        line = f"ts={time.time():.3f} event={event}" + "".join(f" {k}={_kv(v)}" for k, v in fields.items())
        if self.config.worker is not None:
            line += f" worker={self.config.worker}"
        self._log_lines.append(line + "\n")
        self._log_bytes += len(line) + 1
        if self._log_bytes >= _LOG_WRITE_BYTES:
            self._flush_log()

    def _flush_log(self) -> None:
        """The queued lines in writes of at most about _LOG_WRITE_BYTES, each of whole lines: --workers
        share the stream (a pipe), where a write up to PIPE_BUF is not interleaved with another's."""
        lines, self._log_lines, self._log_bytes = self._log_lines, [], 0
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                if chunk and size + len(line) > _LOG_WRITE_BYTES:
                    self._log_stream.write("".join(chunk))
                    self._log_stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._log_stream.write("".join(chunk))
                self._log_stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads the log any more; serving goes on


def _dest(conn: _Conn) -> str:
    destination = conn.session.destination
    if destination is None:
        return "-"
    address, port = destination
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def run_daemon(config: ServeConfig, label: str) -> tuple[int, ConverterDaemon | None]:
    """Start a daemon for ``config`` and serve until it stops: (exit status, the daemon, None when it
    never started). A setting the operator must fix is one line on stderr and EXIT_USER_ERROR; a
    socket that cannot listen, EXIT_RUNTIME_ERROR. ``mpsim converter serve`` and every --workers
    process start their daemon through this one path."""
    try:
        daemon = ConverterDaemon(config)  # reads the cookie secret: a bad file is the operator's to fix
        daemon.start()
    except (ConfigError, KernelSettingError) as err:
        print(f"{label}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR, None
    except OSError as err:
        print(f"{label}: error: {err.strerror or err}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR, None
    daemon.install_signal_handlers()
    return daemon.run(), daemon
