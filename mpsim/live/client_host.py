"""A client host on Linux sockets whose decisions are the simulated client's: the kernel world's client.

``python -m mpsim.live.client_host PLAN.json OUT.json`` (in the client's network namespace) runs
a plan of requests at their times, each as a *logical connection* of one or more attempts, and
writes one record per request with the fields of :class:`mpsim.proto.client.ConnectionRecord`.

What is the kernel's and what is the model's (docs/kernel-world.md):

* The kernel does the packet-level TCP and MPTCP: handshakes, SYN retries (``net.ipv4.tcp_syn_retries``,
  or ``TCP_SYNCNT`` per socket for proxy attempts: ``ClientPolicy.proxy_syn_retries``), MPTCP's
  fallback (``net.mptcp.syn_retrans_before_tcp_fallback``), TFO, retransmissions, subflows.
* The decisions are the proto objects' the simulated client uses: the scheme is
  ``SCHEMES.get(name)`` (its ``proxy``, ``plain_tcp`` and ``proxy_refused_reason`` say what an
  attempt is and how a refusal reads); whether a proxy may be tried, what is cached after an
  answer and when a proxy is tried again are :class:`~mpsim.proto.cache.ClientCaches`'; the
  Convert message and the reading of its reply, with the reaction to every Error TLV, are
  :class:`~mpsim.proto.convert.ConvertClientExchange`'s; SOCKS5 is
  :class:`~mpsim.proto.socks5_proxy.Socks5ClientExchange`'s; the fallback target is
  :class:`~mpsim.proto.client.FallbackTarget`'s. This module carries them out on sockets, in the
  order :class:`~mpsim.proto.client.LogicalConnection` and the scheme modules take them, as the
  converter daemon carries out ``ConverterSession``.
* The outcome is decided as ``LogicalConnection._complete`` decides it, from what the sockets
  report: MPTCP negotiated (``MPTCP_INFO``), the proxy's answer, a fallback taken.

An MPTCP fallback's reason is read from the namespace's MPTcpExt counters around the attempt
(MPCapableSYNTXDrop: the MP_CAPABLE SYNs went unanswered; MPCapableFallbackSYNACK: the SYN-ACK
had no MP_CAPABLE; MPCapableSYNTXDisabled: the blackhole back-off), which is exact when requests
do not overlap in time; with overlapping requests a reason may be attributed to the wrong one.

Transfers: after its response, a request that carries a transfer sends ``DOWN n`` or ``UP n`` on
the same connection (:mod:`mpsim.live.responder` answers); the duration runs from the sender's
first byte to the receiver's last (CLOCK_MONOTONIC is shared by all network namespaces).
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from mpsim.live.sockets import (
    MSG_FASTOPEN,
    TCP_FASTOPEN_NO_COOKIE,
    mptcp_info,
    pin_buffers,
    reset_close,
    stream_socket,
    tcp_info,
)
from mpsim.proto.cache import CachePolicy, ClientCaches
from mpsim.proto.components import SCHEMES
from mpsim.proto.client import FallbackTarget
from mpsim.proto.convert import ConvertClientExchange, ConvertReaction, SynAckVerdict
from mpsim.proto.events import FallbackReason, Outcome
from mpsim.proto.socks5_proxy import Socks5ClientExchange
from mpsim.wire.convert import HEADER_BYTES, ConnectOption
from mpsim.wire.options import TcpOptionKind
from mpsim.wire.socks5 import Socks5Reply

GIVE_UP_MARGIN_S = 0.05  # abort this much before the next SYN would leave
STAMP_BYTES = 32  # a download starts with the server's send time, as text, in this many bytes
CHUNK_BYTES = 65536
#: MPTcpExt counters whose increase during an attempt names why MPTCP fell back (first match wins).
FALLBACK_COUNTERS = (("MPCapableSYNTXDisabled", FallbackReason.MPTCP_BLACKHOLE_BACKOFF),
                     ("MPCapableSYNTXDrop", FallbackReason.MP_CAPABLE_SYN_DROPPED),
                     ("MPCapableFallbackSYNACK", FallbackReason.MP_CAPABLE_MISSING_SYNACK),
                     ("MPCapableDataFallback", FallbackReason.DSS_MISSING))
SOCKS5_SERVER_ANSWERS = frozenset({Socks5Reply.NETWORK_UNREACHABLE, Socks5Reply.HOST_UNREACHABLE,
                                   Socks5Reply.CONNECTION_REFUSED})


def syn_give_up_s(retries: int, linear_timeouts: int, initial_rto_s: float = 1.0) -> float:
    """When a connect with ``retries`` SYN retransmissions gives up: the model's schedule
    (mpsim.proto.tcp.TcpConnection._back_off: the first ``linear_timeouts`` retransmissions keep
    the initial RTO, later ones double it). MPTCP sockets refuse TCP_SYNCNT (ENOPROTOOPT on 6.18),
    so a proxy attempt's own retry budget is this deadline, reached just before the SYN the
    namespace's tcp_syn_retries would still send."""
    rto_s, t_s = initial_rto_s, 0.0
    for retransmission in range(1, retries + 1):
        t_s += rto_s
        if retransmission > linear_timeouts:
            rto_s *= 2
    return t_s + rto_s


def mptcp_counters() -> dict[str, int]:
    """This namespace's MPTcpExt counters (/proc/net/netstat)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    out: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        prefix, _, rest = names.partition(":")
        if prefix == "MPTcpExt":
            out.update(zip(rest.split(), map(int, values.partition(":")[2].split())))
    return out


def fallback_reason_from_counters(before: dict[str, int], after: dict[str, int]) -> FallbackReason:
    """The reason of an MPTCP attempt that ended as plain TCP: the first of FALLBACK_COUNTERS that
    grew between the two snapshots; none grew: the SYN-ACK came without MP_CAPABLE (the kernel's
    MPCapableFallbackSYNACK is the last resort's own counter, listed for when it does count)."""
    return next((reason for name, reason in FALLBACK_COUNTERS if after.get(name, 0) > before.get(name, 0)),
                FallbackReason.MP_CAPABLE_MISSING_SYNACK)


class AttemptFailed(Exception):
    """The current attempt cannot carry the request; ``reason`` None: nothing to fall back from."""

    def __init__(self, detail: str, reason: FallbackReason | None = None, *, ends_request: bool = False,
                 handled: bool = False) -> None:
        super().__init__(detail)
        self.detail, self.reason, self.ends_request = detail, reason, ends_request
        self.handled = handled  # the caches already learned from the answer (a Convert or SOCKS5 reaction)


@dataclass
class Logical:
    """One request as it runs: what LogicalConnection keeps, for the record."""

    request_id: int
    scheme: Any
    start: float
    request: dict
    ports: list[int] = field(default_factory=list)
    attempts: int = 0
    fallback_reason: FallbackReason | None = None
    via_proxy: bool = False
    mptcp: bool = False
    converter_error: int | None = None
    setup_s: float | None = None
    first_byte_s: float | None = None
    delivered: int = 0
    detail: str = ""
    kinds: list[str] = field(default_factory=list)
    counters_before: dict = field(default_factory=dict)
    connected_at: float = 0.0
    closed_wall: dict = field(default_factory=dict)  # port -> time.time() when the socket was closed


class ClientHostRunner:
    """Runs a plan (see :func:`main`); one thread per request, the proto objects shared under a lock."""

    def __init__(self, plan: dict) -> None:
        self.plan = plan
        p = plan["policy"]
        self.policy = p
        self.fallback = FallbackTarget(p["fallback"])
        self.proxies = [(ip_address(a), int(port)) for a, port in plan["proxies"]]
        self.server = (ip_address(plan["server"][0]), int(plan["server"][1]))
        self.caches = ClientCaches(CachePolicy(**plan.get("cache_policy", {})))
        self.converters_seen: set = set()
        self.converter_tfo_cookies: dict = {}  # (converter, server) -> the server's cookie, learned through it
        self.lock = threading.Lock()
        self.t0 = 0.0
        self.records: list[dict] = []
        self.transfers: list[dict] = []
        # A scenario's pinned buffers (docs/kernel-world.md, "Pinned socket buffers"): SO_SNDBUF and
        # SO_RCVBUF on every socket this host opens; what the kernel reported back, once.
        self.pinned = plan.get("socket_buffers")
        self.buffers_read: dict | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- the run -------------------------------------------------------------------------------------

    def run(self) -> dict:
        self.t0 = time.monotonic()
        threads = []
        for request_id, request in enumerate(self.plan["requests"]):
            delay = request["at_s"] - self.now()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=self._one, args=(request_id, request), daemon=True)
            thread.start()
            threads.append(thread)
        end = self.t0 + self.plan["deadline_s"]
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        with self.lock:
            records = sorted(self.records, key=lambda r: r["request_id"])
            finished = {r["request_id"] for r in records}
            for request_id, request in enumerate(self.plan["requests"]):
                if request_id not in finished:  # still running at the deadline: ended as the simulator ends it
                    records.append(self._record(Logical(request_id, SCHEMES.get(request["scheme"]), 0.0, request),
                                                Outcome.FAILED, "unfinished when the run ended"))
        return {"t0_monotonic": self.t0, "records": records, "transfers": self.transfers,
                "socket_buffers_read": self.buffers_read}

    def _pin(self, sock: socket.socket) -> None:
        if not self.pinned:
            return
        snd, rcv = pin_buffers(sock, self.pinned["snd_buf_bytes"], self.pinned["rcv_buf_bytes"])
        with self.lock:
            if self.buffers_read is None:
                self.buffers_read = {"SO_SNDBUF": snd, "SO_RCVBUF": rcv}

    def _one(self, request_id: int, request: dict) -> None:
        counters = mptcp_counters()
        lc = Logical(request_id, SCHEMES.get(request["scheme"]), self.now(), request, counters_before=counters)
        try:
            outcome, sock = self._connect(lc)
        except Exception as err:  # a bug or a surprise: the record says what, the run goes on
            outcome, sock = Outcome.FAILED, None
            lc.detail = lc.detail or f"client error: {type(err).__name__}: {err}"
        if sock is not None and request.get("transfer"):
            self._transfer(lc, sock, request["transfer"])
        if sock is not None:
            self._end(lc, sock, reset=False)
        with self.lock:
            self.records.append(self._record(lc, outcome, lc.detail))

    def _record(self, lc: Logical, outcome: Outcome, detail: str) -> dict:
        r = lc.request
        return {"request_id": lc.request_id, "scheme": lc.scheme.name,
                "destination": f"[{self.server[0]}]:{self.server[1]}" if self.server[0].version == 6
                else f"{self.server[0]}:{self.server[1]}", "outcome": outcome.value,
                "fallback_reason": lc.fallback_reason.value if lc.fallback_reason else None,
                "start_s": lc.start, "setup_time_s": lc.setup_s, "first_byte_time_s": lc.first_byte_s,
                "completion_time_s": None, "bytes_sent": r["request_size_bytes"] if lc.setup_s is not None else 0,
                "bytes_delivered": lc.delivered, "attempts": lc.attempts, "via_proxy": lc.via_proxy,
                "mptcp": lc.mptcp, "converter_error": lc.converter_error, "signal_leaked": False,
                "detail": detail, "ports": lc.ports, "attempt_kinds": lc.kinds,
                "closed_wall": {str(k): v for k, v in lc.closed_wall.items()},
                "end_s": self.now(), "outcome_ok": outcome is not Outcome.FAILED}

    # --- the lifecycle: LogicalConnection's order of decisions -----------------------------------------

    def _connect(self, lc: Logical) -> tuple[Outcome, socket.socket | None]:
        scheme, dest = lc.scheme, self.server
        if scheme.name == "convert" and self.policy["bypass_mptcp_servers"]:
            with self.lock:
                bypass = self.caches.server_mptcp_capable(dest[0])
            if bypass:
                lc.detail = "bypassed the converter: server known MPTCP-capable"
                return self._direct(lc, mptcp=True)
        if scheme.proxy is None:
            return self._direct(lc, mptcp=scheme.name == "mptcp")
        tried: list = []
        while True:
            with self.lock:
                proxy = next((p for p in self.proxies if p not in tried and self.caches.proxy_usable(p, self.now())),
                             None)
            if proxy is None:
                return self._fall_back(lc, FallbackReason.CONVERTER_CACHED_OFF if self.proxies else
                                       FallbackReason.PROXY_FAILED, tried)
            tried.append(proxy)
            try:
                sock = self._via_proxy(lc, proxy)
            except AttemptFailed as failure:
                if failure.ends_request:
                    lc.fallback_reason = lc.fallback_reason or failure.reason
                    lc.detail = failure.detail
                    return Outcome.FAILED, None
                if not failure.handled:  # LogicalConnection._attempt_failed: the proxy is marked off
                    with self.lock:
                        self.caches.mark_off(proxy, self.now(),
                                             failure.reason or FallbackReason.CONVERTER_REPLY_INVALID)
                lc.fallback_reason = lc.fallback_reason or failure.reason
                if lc.attempts >= self.policy["max_attempts"]:
                    lc.detail = "too many attempts"
                    return Outcome.FAILED, None
                if self.fallback is FallbackTarget.OTHER_PROXY:
                    continue  # the next usable proxy, else direct TCP (the loop's end)
                return self._direct(lc, mptcp=self.fallback is FallbackTarget.DIRECT_MPTCP)
            return self._exchange_request(lc, sock, via_proxy=True)

    def _fall_back(self, lc: Logical, reason: FallbackReason, tried: list) -> tuple[Outcome, socket.socket | None]:
        lc.fallback_reason = lc.fallback_reason or reason
        return self._direct(lc, mptcp=self.fallback is FallbackTarget.DIRECT_MPTCP)

    # --- attempts ------------------------------------------------------------------------------------

    def _open(self, lc: Logical, address: tuple, *, mptcp: bool, syn_payload: bytes, syncnt: int | None,
              no_cookie: bool, kind: str) -> tuple[socket.socket, int, dict]:
        """One attempt's socket: connected (SYN data: what the kernel put in the SYN), and the
        namespace's MPTcpExt counters from before its SYN, for _mptcp_verdict. Raises
        AttemptFailed(detail) with no reason on a timeout or refusal; the caller reads it."""
        lc.attempts += 1
        lc.kinds.append(kind)
        # The first attempt uses the snapshot taken before the request's clock started: reading
        # /proc takes a fraction of a millisecond, which is no part of the connection's setup.
        before = lc.counters_before if lc.attempts == 1 else mptcp_counters()
        sock = stream_socket(socket.AF_INET6 if address[0].version == 6 else socket.AF_INET, mptcp=mptcp)
        if no_cookie:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
        self._pin(sock)  # before the SYN: its window is the pinned buffer's
        sock.bind(("", 0))
        lc.ports.append(sock.getsockname()[1])
        target = (str(address[0]), address[1])
        sock.setblocking(False)
        syn_bytes = 0
        try:
            if syn_payload:
                try:
                    syn_bytes = sock.sendto(syn_payload, MSG_FASTOPEN, target)
                except BlockingIOError:
                    syn_bytes = 0
            else:
                sock.connect_ex(target)
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_WRITE)
                wait_s = self.plan["connect_wait_s"] if syncnt is None else \
                    syn_give_up_s(syncnt, self.plan["syn_linear_timeouts"]) - GIVE_UP_MARGIN_S
                selector.select(wait_s)
            lc.connected_at = self.now()
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error == 0:
                try:
                    sock.getpeername()
                except OSError:
                    error = errno.ETIMEDOUT
        except OSError as err:
            error = err.errno or errno.EIO
        if error:
            self._end(lc, sock, reset=error != errno.ETIMEDOUT)
            detail = "refused" if error == errno.ECONNREFUSED else "timed out (syn)" \
                if error == errno.ETIMEDOUT else f"unreachable ({errno.errorcode.get(error, error)})"
            raise AttemptFailed(detail)
        sock.setblocking(True)
        # Again once connected: an MPTCP socket copies the values to the subflows it has
        # (mptcp_sol_socket_sync_intval), the first included; joins take them when they join.
        self._pin(sock)
        return sock, syn_bytes, before

    def _end(self, lc: Logical, sock: socket.socket, *, reset: bool) -> None:
        """Close an attempt's socket, noting when (wall clock, as the captures stamp packets): an
        RST the kernel sends later for that port answers a stray segment, which the model counts
        as the host's (RstsForUnknown), not the connection's. A connect that timed out is closed
        without SO_LINGER 0: the model's abort in SYN-SENT sends nothing (MPTCP would send an RST)."""
        try:
            port = sock.getsockname()[1]
        except OSError:
            port = None
        if reset:
            reset_close(sock)
        else:
            sock.close()
        if port:
            lc.closed_wall[port] = time.time()

    def _mptcp_verdict(self, lc: Logical, sock: socket.socket, mptcp: bool, before: dict) -> None:
        """Whether the attempt is still MPTCP, and if not, why: the first fallback counter the
        namespace counted since ``before``. The counters are read here, when the verdict is taken,
        not when connect() returns: a fallback on the first data (MPCapableDataFallback, counted
        in net/mptcp/options.c check_fully_established when the peer's first segment arrives with
        no MPTCP option) comes after the handshake, e.g. a Convert reply after a SYN retransmitted
        without its data (docs/kernel-departures.md 7)."""
        on = mptcp and mptcp_info(sock) is not None
        lc.mptcp = on
        if mptcp and not on and lc.fallback_reason is None:
            lc.fallback_reason = fallback_reason_from_counters(before, mptcp_counters())

    def _direct(self, lc: Logical, *, mptcp: bool) -> tuple[Outcome, socket.socket | None]:
        tfo = self.policy["tfo_to_server"]
        payload = _payload(lc.request)
        try:
            sock, syn_bytes, before = self._open(lc, self.server, mptcp=mptcp, syn_payload=payload if tfo else b"",
                                                syncnt=None, no_cookie=False, kind="direct")
        except AttemptFailed as failure:
            lc.detail = failure.detail
            return Outcome.FAILED, None
        self._mptcp_verdict(lc, sock, mptcp, before)
        lc.via_proxy = False
        lc.setup_s = lc.connected_at - lc.start
        if syn_bytes < len(payload):
            sock.sendall(payload[syn_bytes:])
        return self._read_response(lc, sock, via_proxy=False, sent=True)

    def _via_proxy(self, lc: Logical, proxy: tuple) -> socket.socket:
        scheme = lc.scheme
        upstream = self.policy["upstream_mptcp"]
        syncnt = self.policy["proxy_syn_retries"]
        if scheme.name == "convert":
            return self._convert(lc, proxy, upstream, syncnt)
        if scheme.name == "socks5":
            return self._socks5(lc, proxy, upstream, syncnt)
        raise AttemptFailed(f"scheme {scheme.name!r} has no socket form", ends_request=True)

    def _refused(self, lc: Logical, failure: AttemptFailed) -> AttemptFailed:
        """A proxy attempt's SYN went unanswered or was refused: LogicalConnection._failure_reason."""
        if failure.detail.startswith("timed out"):
            failure.reason = FallbackReason.CONVERTER_SYN_TIMEOUT
        elif failure.detail == "refused":
            failure.reason = lc.scheme.proxy_refused_reason
        else:
            failure.reason = FallbackReason.CONVERTER_UNREACHABLE
        return failure

    def _convert(self, lc: Logical, proxy: tuple, upstream: bool, syncnt: int) -> socket.socket:
        """The convert scheme's open() and on_reply(), on a socket (mpsim/proto/schemes/convert.py)."""
        for _ in range(self.policy["max_attempts"]):
            with self.lock:
                entry = self.caches.proxy(proxy, self.now())
                first_time = proxy not in self.converters_seen
                self.converters_seen.add(proxy)
                cookie, unsupported = entry.cookie, entry.unsupported_kinds
            exchange = ConvertClientExchange()
            app_data = _payload(lc.request)
            payload = exchange.syn_payload(self.server[0], self.server[1],
                                           info=self.policy["convert_info_first"] and first_time, cookie=cookie,
                                           options=self._connect_options(proxy, unsupported), app_data=app_data)
            message_bytes = len(payload) - exchange.app_data_bytes
            try:
                sock, syn_bytes, before = self._open(lc, proxy, mptcp=upstream, syn_payload=payload, syncnt=syncnt,
                                                    no_cookie=True, kind="convert")
            except AttemptFailed as failure:
                raise self._refused(lc, failure) from None
            acked = syn_bytes if tcp_info(sock).syn_data else 0
            if exchange.check_synack(acked, message_bytes) is not SynAckVerdict.PAYLOAD_ACKED:
                self._end(lc, sock, reset=True)
                raise AttemptFailed("SYN-ACK refused", exchange.reply.fallback_reason)
            if syn_bytes < len(payload):
                sock.sendall(payload[syn_bytes:])
            sock.settimeout(self.policy["reply_timeout_s"])
            reply = None
            try:
                header = _recv_exact(sock, HEADER_BYTES)
                if len(header) == HEADER_BYTES:
                    reply = exchange.receive(header)
                    if reply is None:
                        reply = exchange.receive(_recv_exact(sock, header[1] * 4 - HEADER_BYTES))
            except OSError:
                reply = None
            if reply is None:
                self._end(lc, sock, reset=True)
                raise AttemptFailed("no Convert reply", exchange.reply_missing().fallback_reason)
            if not reply.must_reset:
                with self.lock:
                    if reply.supported_kinds is not None:
                        self.caches.store_supported_kinds(proxy, reply.supported_kinds)
                    if reply.server_options:
                        self.caches.learn_server(self.server[0], mptcp_capable=reply.server_mptcp_capable,
                                                 learned_via="extended_tcp_header")
                    if reply.server_tfo_cookie:
                        self.converter_tfo_cookies[(proxy, self.server[0])] = reply.server_tfo_cookie
                    self.caches.mark_usable(proxy)
                lc.setup_s = self.now() - lc.start  # before the verdict's /proc read, no part of the set-up
                self._mptcp_verdict(lc, sock, upstream, before)
                lc.via_proxy = True
                lc.pending_app_data = reply.app_data  # type: ignore[attr-defined]
                return sock
            self._end(lc, sock, reset=True)  # RFC 8803 6.2.8: reset on any Error TLV, then act per code
            if reply.error is not None:
                lc.converter_error = reply.error.code
            reaction = reply.advice.reaction
            with self.lock:
                if reaction is ConvertReaction.RETRY_WITH_COOKIE:
                    self.caches.store_cookie(proxy, reply.advice.cookie)
                    continue
                if reaction is ConvertReaction.RETRY_WITHOUT_OPTIONS:
                    self.caches.store_unsupported_kinds(proxy, reply.advice.kinds)
                    continue
                if reaction is ConvertReaction.BACK_OFF:
                    self.caches.mark_backoff(proxy, self.now(), reply.advice.back_off_s)
                    raise AttemptFailed(reaction.value, reply.fallback_reason, handled=True)
                if reaction in (ConvertReaction.REPORT_REFUSED, ConvertReaction.REPORT_UNREACHABLE):
                    raise AttemptFailed(reaction.value, reply.fallback_reason, ends_request=True)
                if reply.error is not None and reply.error.code == 32:
                    self.caches.mark_not_authorized(proxy, self.now())
                else:
                    self.caches.mark_off(proxy, self.now(),
                                         reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID)
            raise AttemptFailed(reaction.value, reply.fallback_reason or FallbackReason.CONVERTER_REPLY_INVALID,
                                handled=True)
        raise AttemptFailed("too many attempts", ends_request=True)

    def _connect_options(self, proxy: tuple, unsupported: tuple[int, ...]) -> tuple[ConnectOption, ...]:
        """The convert scheme's extended Connect entries (RFC 8803 7; Convert._connect_options_for):
        MPTCP towards the server, the server's TFO (a cookie learned through this converter), minus
        the kinds the converter refused (Error 33)."""
        options: tuple[ConnectOption, ...] = ()
        if self.policy["mptcp_to_server"] and TcpOptionKind.MPTCP not in unsupported:
            options += (ConnectOption(TcpOptionKind.MPTCP),)
        if self.policy["tfo_to_server"] and TcpOptionKind.TFO not in unsupported:
            with self.lock:
                cookie = self.converter_tfo_cookies.get((proxy, self.server[0]), b"")
            options += (ConnectOption(TcpOptionKind.TFO, cookie),)
        return options

    def _socks5(self, lc: Logical, proxy: tuple, upstream: bool, syncnt: int) -> socket.socket:
        """The socks5 scheme on a socket (mpsim/proto/schemes/socks5.py)."""
        exchange = Socks5ClientExchange(self.server[0], self.server[1])
        try:
            sock, _, before = self._open(lc, proxy, mptcp=upstream, syn_payload=b"", syncnt=syncnt, no_cookie=False,
                                        kind="socks5")
        except AttemptFailed as failure:
            raise self._refused(lc, failure) from None
        sock.settimeout(self.policy["reply_timeout_s"])
        try:
            sock.sendall(exchange.greeting())
            while exchange.result is None:
                data = sock.recv(512)
                if not data:
                    break
                request = exchange.receive(data)
                if request:
                    sock.sendall(request)
        except OSError:
            pass
        result = exchange.result
        if result is None:
            self._end(lc, sock, reset=True)
            raise AttemptFailed("no SOCKS5 reply", lc.scheme.reply_missing_reason(None))
        if not result.succeeded:
            self._end(lc, sock, reset=True)
            code = result.reply_code
            lc.converter_error = code
            with self.lock:
                if code in SOCKS5_SERVER_ANSWERS:
                    raise AttemptFailed(f"socks5 reply {code:#04x}", FallbackReason.PROXY_FAILED, ends_request=True)
                if code == Socks5Reply.CONNECTION_NOT_ALLOWED:
                    self.caches.mark_not_authorized(proxy, self.now())
                elif code in (Socks5Reply.GENERAL_FAILURE, Socks5Reply.TTL_EXPIRED):
                    self.caches.mark_backoff(proxy, self.now(), 0.0)
                else:
                    self.caches.mark_off(proxy, self.now(), FallbackReason.PROXY_FAILED)
            raise AttemptFailed(f"socks5 reply {code:#04x}", FallbackReason.PROXY_FAILED, handled=True)
        with self.lock:
            self.caches.mark_usable(proxy)
        lc.setup_s = self.now() - lc.start  # before the verdict's /proc read, no part of the set-up
        self._mptcp_verdict(lc, sock, upstream, before)
        lc.via_proxy = True
        lc.pending_app_data = result.app_data  # type: ignore[attr-defined]
        sock.sendall(_payload(lc.request))
        return sock

    # --- the request and the response ----------------------------------------------------------------

    def _exchange_request(self, lc: Logical, sock: socket.socket, *, via_proxy: bool
                          ) -> tuple[Outcome, socket.socket | None]:
        return self._read_response(lc, sock, via_proxy=via_proxy, sent=True)

    def _read_response(self, lc: Logical, sock: socket.socket, *, via_proxy: bool, sent: bool
                       ) -> tuple[Outcome, socket.socket | None]:
        wanted = lc.request["response_size_bytes"]
        sock.settimeout(self.policy["response_timeout_s"])
        early = getattr(lc, "pending_app_data", b"")
        if early:
            lc.first_byte_s = self.now() - lc.start
            lc.delivered += len(early)
        try:
            while lc.delivered < wanted:
                data = sock.recv(min(CHUNK_BYTES, wanted - lc.delivered))
                if not data:
                    break
                if lc.first_byte_s is None:
                    lc.first_byte_s = self.now() - lc.start
                lc.delivered += len(data)
        except OSError as err:
            lc.detail = "reset" if isinstance(err, ConnectionResetError) else f"timed out ({err})"
            self._end(lc, sock, reset=True)
            return Outcome.FAILED, None
        if lc.delivered < wanted:
            lc.detail = f"peer closed after {lc.delivered} response bytes"
            self._end(lc, sock, reset=True)
            return Outcome.FAILED, None
        # LogicalConnection._complete's decision.
        if via_proxy and (lc.mptcp or not self.policy["upstream_mptcp"]):
            outcome = Outcome.CONVERTED
        elif not via_proxy and lc.mptcp:
            outcome = Outcome.MPTCP
        elif lc.scheme.plain_tcp and lc.fallback_reason is None:
            outcome = Outcome.TCP
        else:
            outcome = Outcome.FALLBACK_TCP
        return outcome, sock

    def _transfer(self, lc: Logical, sock: socket.socket, transfer: dict) -> None:
        size, direction = transfer["size_bytes"], transfer["direction"]
        row = {"request_id": lc.request_id, "transfer_id": transfer["transfer_id"], "negotiated_s": self.now(),
               "bytes_delivered": 0, "completed": False, "duration_s": None, "goodput_bps": None,
               "subflows": 0, "retransmissions": 0, "error": ""}
        sock.settimeout(self.plan["deadline_s"])
        try:
            if direction == "download":
                sock.sendall(f"DOWN {size}\n".encode())
                stamp = _recv_exact(sock, STAMP_BYTES)
                got = len(stamp)
                buffer = bytearray(CHUNK_BYTES)
                while got < size:
                    n = sock.recv_into(buffer, min(CHUNK_BYTES, size - got))
                    if not n:
                        break
                    got += n
                end = time.monotonic()
                row["bytes_delivered"] = got
                if got == size:
                    row.update(completed=True, duration_s=end - float(stamp.decode()))
            else:
                sock.sendall(f"UP {size}\n".encode())
                start = time.monotonic()
                block = bytes(CHUNK_BYTES)
                left = size
                while left:
                    left -= sock.send(block[:min(left, CHUNK_BYTES)])
                line = _recv_line(sock)
                if line.startswith(b"DONE "):
                    row.update(bytes_delivered=size, completed=True, duration_s=float(line.split()[1]) - start)
        except (OSError, ValueError) as err:
            row["error"] = f"{type(err).__name__}: {err}"
        info = mptcp_info(sock)
        row["subflows"] = 1 + (info.subflows if info is not None else 0)
        # Retransmissions are counted by the runner in the sending namespace (TCP_INFO sees one subflow).
        if row["completed"] and row["duration_s"] and row["duration_s"] > 0:
            row["goodput_bps"] = row["bytes_delivered"] * 8 / row["duration_s"]
        with self.lock:
            self.transfers.append(row)


def _payload(request: dict) -> bytes:
    """mpsim.proto.client.Request.payload's bytes: the responder reads the response size from them."""
    return (b"REQ " + str(request["response_size_bytes"]).encode() + b"\n").ljust(request["request_size_bytes"], b".")


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _recv_line(sock: socket.socket, limit: int = 256) -> bytes:
    data = bytearray()
    while len(data) < limit and not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def main(argv: list[str] | None = None) -> int:
    """``python -m mpsim.live.client_host PLAN.json OUT.json``: 0 when the plan ran (whatever the
    outcomes), 2 for a plan that cannot be read."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m mpsim.live.client_host PLAN.json OUT.json", file=sys.stderr)
        return 2
    try:
        plan = json.loads(Path(args[0]).read_text())
    except (OSError, ValueError) as err:
        print(f"mpsim.live.client_host: error: cannot read the plan {args[0]}: {err}", file=sys.stderr)
        return 2
    result = ClientHostRunner(plan).run()
    Path(args[1]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
