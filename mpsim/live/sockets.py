"""Linux socket constants and helpers for the live converter and its client.

What Python's :mod:`socket` module lacks (MPTCP and TFO numbers, ``struct tcp_info`` and
``struct mptcp_info`` parsing), the kernel-setting checks with messages that say which value is
needed and why, and the reconstruction of a server's SYN-ACK options from what the socket API
reveals (RFC 8803 6.2.6 asks for them "as received"; see docs/live-converter.md for what cannot
be known). Numbers are from the Linux uapi headers and were checked on Linux 6.18
(docs/live-converter.md, "Measured").
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from mpsim.errors import MpsimError
from mpsim.wire.mptcp import MpCapable, MpCapableFlags
from mpsim.wire.options import MaximumSegmentSize, SackPermitted, Timestamps, WindowScale

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1  # getsockopt(SOL_MPTCP): struct mptcp_info; EOPNOTSUPP once the socket fell back to TCP
MPTCP_INFO_FLAG_FALLBACK = 0x1
MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 0x2
TCP_IS_MPTCP = 43  # getsockopt(SOL_TCP): 1 on an MPTCP socket that has not fallen back (Linux 5.16+)

TCP_FASTOPEN = 23  # listener: the TFO queue length
TCP_FASTOPEN_CONNECT = 30  # not in Python's socket module
TCP_FASTOPEN_NO_COOKIE = 34  # per socket: SYN data without a cookie (client) / accept it (listener)
MSG_FASTOPEN = 0x20000000

# struct tcp_info, tcpi_options bits (include/uapi/linux/tcp.h)
TCPI_OPT_TIMESTAMPS = 0x01
TCPI_OPT_SACK = 0x02
TCPI_OPT_WSCALE = 0x04
TCPI_OPT_ECN = 0x08
TCPI_OPT_ECN_SEEN = 0x10
TCPI_OPT_SYN_DATA = 0x20  # client: the SYN-ACK ACKed all SYN data; server: SYN data was accepted
TCPI_OPT_USEC_TS = 0x40
TCPI_OPT_TFO_CHILD = 0x80  # server: this socket was created by a Fast Open SYN

# net.ipv4.tcp_fastopen bits (Documentation/networking/ip-sysctl.rst)
TFO_CLIENT_ENABLE = 0x1
TFO_SERVER_ENABLE = 0x2
TFO_CLIENT_NO_COOKIE = 0x4
TFO_SERVER_COOKIE_NOT_REQD = 0x200

# SO_SNDBUF/SO_RCVBUF without the net.core.wmem_max/rmem_max cap (CAP_NET_ADMIN;
# include/uapi/asm-generic/socket.h); not in Python's socket module.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

SPLICE_F_MOVE = 0x1
SPLICE_F_NONBLOCK = 0x2
F_SETPIPE_SZ = 1031

#: The Timestamps option's 10 bytes padded to 12: what Linux takes off the MSS when TS is on.
TIMESTAMPS_ALIGNED_BYTES = 12
#: tcpi_fastopen_client_fail values (enum tcp_fastopen_client_fail), for messages.
FASTOPEN_CLIENT_FAIL = {0: "unspecified", 1: "no cookie available and cookie-less mode off",
                        2: "the SYN-ACK did not ACK the SYN data", 3: "the SYN was retransmitted (without its data)"}

_TCP_INFO_BYTES = 256  # more than any kernel's struct; the kernel returns what it has
_MPTCP_INFO_BYTES = 96


class KernelSettingError(MpsimError):
    """The kernel (its sysctls or its build) does not allow what was asked; the message says
    which setting, which value is needed and why."""


# --- struct tcp_info / struct mptcp_info ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """The fields of ``struct tcp_info`` mpsim reads (offsets of the uapi layout, stable since 4.x)."""

    state: int
    options: int
    snd_wscale: int  # the peer's Window Scale shift (valid with TCPI_OPT_WSCALE)
    rcv_wscale: int
    fastopen_client_fail: int
    snd_mss: int  # the MSS we send with: min(peer MSS, our route's), less aligned options, <= half the peer's window
    rcv_mss: int
    pmtu: int
    advmss: int
    bytes_received: int  # on a just-accepted Fast Open socket: the SYN payload
    bytes_acked: int

    @property
    def syn_data(self) -> bool:
        return bool(self.options & TCPI_OPT_SYN_DATA)


def parse_tcp_info(raw: bytes) -> TcpInfo:
    """``struct tcp_info`` bytes -> :class:`TcpInfo`. The first byte fields, then u32 from offset 8;
    tcpi_bytes_acked/received (u64 at 120/128) exist since Linux 4.1 (0 when shorter)."""
    if len(raw) < 88:
        raise ValueError(f"struct tcp_info is at least 88 bytes on any kernel mpsim supports, got {len(raw)}")
    state, _ca, _retrans, _probes, _backoff, options, wscale, flags7 = raw[:8]
    snd_mss, rcv_mss = struct.unpack_from("=II", raw, 16)
    pmtu = struct.unpack_from("=I", raw, 60)[0]
    advmss = struct.unpack_from("=I", raw, 84)[0]
    bytes_acked, bytes_received = struct.unpack_from("=QQ", raw, 120) if len(raw) >= 136 else (0, 0)
    return TcpInfo(state=state, options=options, snd_wscale=wscale & 0xF, rcv_wscale=wscale >> 4,
                   fastopen_client_fail=(flags7 >> 1) & 0x3, snd_mss=snd_mss, rcv_mss=rcv_mss, pmtu=pmtu,
                   advmss=advmss, bytes_received=bytes_received, bytes_acked=bytes_acked)


def tcp_info(sock: socket.socket) -> TcpInfo:
    """TCP_INFO of a TCP socket, or of an MPTCP socket's first subflow (the kernel forwards it)."""
    return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES))


@dataclass(frozen=True, slots=True)
class MptcpInfo:
    """The fields of ``struct mptcp_info`` mpsim reads."""

    subflows: int  # additional subflows (the initial one is not counted)
    flags: int
    csum_enabled: bool
    bytes_sent: int
    bytes_received: int

    @property
    def remote_key_received(self) -> bool:
        return bool(self.flags & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED)


def parse_mptcp_info(raw: bytes) -> MptcpInfo:
    """``struct mptcp_info`` bytes: six u8, u32 flags at 8, ..., u8 csum_enabled at 42, u64
    bytes_sent/received at 56/64 (Linux 6.5+; 0 when shorter)."""
    if len(raw) < 43:
        raise ValueError(f"struct mptcp_info is at least 43 bytes, got {len(raw)}")
    flags = struct.unpack_from("=I", raw, 8)[0]
    sent, received = struct.unpack_from("=QQ", raw, 56) if len(raw) >= 72 else (0, 0)
    return MptcpInfo(subflows=raw[0], flags=flags, csum_enabled=bool(raw[42]), bytes_sent=sent,
                     bytes_received=received)


def mptcp_info(sock: socket.socket) -> MptcpInfo | None:
    """MPTCP_INFO, or None when the connection is not MPTCP: a TCP socket, or an MPTCP socket
    that fell back to TCP (the kernel then answers EOPNOTSUPP; measured on 6.18)."""
    if sock.proto != IPPROTO_MPTCP:
        return None
    try:
        if not sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP):
            return None  # fallen back (a converter's usual TCP server): no error to raise and catch
    except OSError:
        pass  # a kernel before 5.16: MPTCP_INFO's answer below says it
    try:
        info = parse_mptcp_info(sock.getsockopt(SOL_MPTCP, MPTCP_INFO, _MPTCP_INFO_BYTES))
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOPROTOOPT):
            return None
        raise
    return None if info.flags & MPTCP_INFO_FLAG_FALLBACK else info


# --- the server's SYN-ACK options, rebuilt ------------------------------------------------------


def reconstruct_synack_options(info: TcpInfo, mptcp: MptcpInfo | None) -> tuple:
    """The server's SYN-ACK options as far as TCP_INFO and MPTCP_INFO reveal them (RFC 8803 6.2.6
    wants them as received; the socket API does not keep them). Canonical order, no NOP padding.

    * MSS: ``snd_mss`` plus the 12 bytes Linux takes off for Timestamps. That is the server's MSS
      unless our route's MTU or half the server's window is smaller (loopback: 32768 + 12).
    * SACK-Permitted, Window Scale (with the server's shift): present when both SYNs carried them,
      so only known when our own SYN offered them (net.ipv4.tcp_sack / tcp_window_scaling).
    * Timestamps: presence as above; TSval and TSecr are not exposed: sent as 0.
    * MP_CAPABLE: when the downstream connection is MPTCP (the server's key was received), in its
      4-byte form: the server's key is not exposed; the A flag from csum_enabled, H (HMAC-SHA256)
      as RFC 8684 v1 requires.
    * Anything else the server sent (TFO cookie, experimental options, ...) cannot be known.
    """
    timestamps = bool(info.options & TCPI_OPT_TIMESTAMPS)
    mss_bytes = min(info.snd_mss + (TIMESTAMPS_ALIGNED_BYTES if timestamps else 0), 0xFFFF)
    options: list = [MaximumSegmentSize(mss_bytes)]
    if info.options & TCPI_OPT_SACK:
        options.append(SackPermitted())
    if timestamps:
        options.append(Timestamps(0, 0))
    if info.options & TCPI_OPT_WSCALE:
        options.append(WindowScale(info.snd_wscale))
    if mptcp is not None and mptcp.remote_key_received:
        flags = MpCapableFlags.H | (MpCapableFlags.A if mptcp.csum_enabled else 0)
        options.append(MpCapable(1, flags))
    return tuple(options)


#: TCP_INFO up to and including tcpi_snd_mss (u32 at 16): all reconstruct_synack_options reads of it.
_SYNACK_INFO_BYTES = 20
_SYNACK_MEMO_ENTRIES = 256


class SynAckOptions:
    """:func:`reconstruct_synack_options` of a connected socket, read with one 20-byte TCP_INFO
    (and MPTCP's answers) and remembered by exactly the bytes and flags it depends on: a server
    answers every connection with the same options, so the tuple (and its reply, memoised by the
    session on it) is built once. ``tests/live/test_hot_path.py`` checks that the remembered answer
    equals the full parse's for any ``struct tcp_info``."""

    def __init__(self) -> None:
        self._memo: dict[tuple, tuple] = {}

    def __call__(self, sock: socket.socket) -> tuple[tuple, MptcpInfo | None]:
        """(the server's SYN-ACK options as far as they can be known, the MPTCP_INFO or None)."""
        mptcp = mptcp_info(sock)
        return self.from_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _SYNACK_INFO_BYTES), mptcp), mptcp

    def from_info(self, raw: bytes, mptcp: MptcpInfo | None) -> tuple:
        """The options for TCP_INFO bytes ``raw`` (at least the first 20) and ``mptcp``."""
        if len(raw) < _SYNACK_INFO_BYTES:
            raise ValueError(f"struct tcp_info: need its first {_SYNACK_INFO_BYTES} bytes, got {len(raw)}")
        key = (raw[5], raw[6] & 0xF, raw[16:20],
               None if mptcp is None else (mptcp.remote_key_received, mptcp.csum_enabled))
        options = self._memo.get(key)
        if options is None:
            # options, the wscale byte and snd_mss are all the reconstruction reads; the rest of
            # the struct (zero here) does not enter it.
            info = parse_tcp_info(raw[:_SYNACK_INFO_BYTES].ljust(88, b"\0"))
            options = reconstruct_synack_options(info, mptcp)
            if len(self._memo) >= _SYNACK_MEMO_ENTRIES:
                self._memo.clear()
            self._memo[key] = options
        return options


# --- errno -> Convert error ---------------------------------------------------------------------

#: What a connect() errno says about the ICMP Destination Unreachable behind it (inverting
#: icmp_err_convert / icmpv6_err_convert; the Code itself is not exposed): the lowest code that
#: maps to the errno. The same errnos come from local routes (unreachable, prohibit).
_ICMP_CODE_FOR_ERRNO: dict[int, dict[int, int]] = {
    socket.AF_INET: {errno.ENETUNREACH: 0, errno.EHOSTUNREACH: 1, errno.ENOPROTOOPT: 2, errno.EHOSTDOWN: 7,
                     errno.ENONET: 8, errno.EACCES: 13, errno.EPERM: 13},
    socket.AF_INET6: {errno.ENETUNREACH: 0, errno.EACCES: 1, errno.EPERM: 1, errno.EHOSTUNREACH: 3},
}


def icmp_code_for_errno(family: int, error: int) -> int | None:
    """The Error 97 Value for a connect() failure, or None if the errno is no unreachability."""
    codes = _ICMP_CODE_FOR_ERRNO.get(family)
    return None if codes is None else codes.get(error)


# --- sysctls --------------------------------------------------------------------------------------


def read_sysctl(name: str) -> str | None:
    """A sysctl of the caller's network namespace (``net.ipv4.tcp_fastopen``), None if absent.
    Read with bare os calls: the client checks four of them before every connection, and
    pathlib's text I/O cost more than the reads themselves."""
    try:
        fd = os.open("/proc/sys/" + name.replace(".", "/"), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return None
    try:
        return os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)


def _int_sysctl(name: str) -> int | None:
    value = read_sysctl(name)
    return int(value, 0) if value is not None else None


def converter_kernel_problems(*, mptcp: bool = True) -> list[str]:
    """What in this network namespace stops a converter from taking Convert messages in SYNs."""
    problems = []
    tfo = _int_sysctl("net.ipv4.tcp_fastopen")
    if tfo is None:
        problems.append("net.ipv4.tcp_fastopen is missing: this kernel has no TCP Fast Open, so a Convert "
                        "message in the SYN payload (RFC 8803 4.2) cannot be accepted")
    elif not tfo & TFO_SERVER_ENABLE:
        problems.append(
            f"net.ipv4.tcp_fastopen={tfo:#x} lacks the server bit 0x2: the kernel then ACKs only the SYN of a "
            f"Convert request and every client must reset and stop using this converter (RFC 8803 8); run "
            f"`sysctl -w net.ipv4.tcp_fastopen={tfo | TFO_SERVER_ENABLE:#x}` in the converter's network namespace "
            f"(cookie-less mode comes from the listener's TCP_FASTOPEN_NO_COOKIE, so 0x200 is not needed)")
    for name in ("net.ipv4.ip_nonlocal_bind", "net.ipv6.ip_nonlocal_bind"):
        if _int_sysctl(name) == 1:  # the local-destination probe binds: with this on, every bind succeeds
            problems.append(f"{name}=1 makes every address look local to this host, so the converter could not "
                            f"tell its own addresses from others; run `sysctl -w {name}=0` in its network namespace")
    if mptcp and _int_sysctl("net.mptcp.enabled") != 1:
        problems.append("net.mptcp.enabled is not 1: MPTCP sockets cannot be created, so MPTCP clients cannot "
                        "be converted; run `sysctl -w net.mptcp.enabled=1` (or pass --no-mptcp)")
    return problems


def client_kernel_problems(*, mptcp: bool) -> list[str]:
    """What in this network namespace stops a Convert client from sending SYN data."""
    problems = []
    tfo = _int_sysctl("net.ipv4.tcp_fastopen")
    if tfo is None or not tfo & TFO_CLIENT_ENABLE:
        shown = "missing" if tfo is None else f"{tfo:#x}"
        problems.append(
            f"net.ipv4.tcp_fastopen={shown} lacks the client bit 0x1: without it no data goes in a SYN, and the "
            f"Convert message must (RFC 8803 4.2); run `sysctl -w net.ipv4.tcp_fastopen="
            f"{(tfo or 0) | TFO_CLIENT_ENABLE:#x}` (cookie-less sending, 0x4, is set per socket by mpsim)")
    for name in ("net.ipv4.ip_nonlocal_bind", "net.ipv6.ip_nonlocal_bind"):
        if _int_sysctl(name) == 1:  # the local-destination probe binds: with this on, every bind succeeds
            problems.append(f"{name}=1 makes every address look local to this host, so the converter could not "
                            f"tell its own addresses from others; run `sysctl -w {name}=0` in its network namespace")
    if mptcp and _int_sysctl("net.mptcp.enabled") != 1:
        problems.append("net.mptcp.enabled is not 1: an MPTCP socket cannot be created; run "
                        "`sysctl -w net.mptcp.enabled=1` or connect without --mptcp")
    return problems


# --- addresses and sockets ----------------------------------------------------------------------


def parse_endpoint(text: str) -> tuple[IPv4Address | IPv6Address, int]:
    """``A.B.C.D:PORT`` or ``[V6]:PORT`` -> (address, port). Addresses only: RFC 8803 signals no names."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not ADDR:PORT (IPv6: [ADDR]:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, [ADDR]:PORT")
    try:
        address = ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (RFC 8803 carries addresses, not names)") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 0xFFFF:
        raise ValueError(f"{text!r}: the port must be 0..65535")
    return address, int(port_text)


def peer_address(sockaddr: tuple) -> IPv4Address | IPv6Address:
    """A peer's address as the converter's policy sees it: IPv4 clients of a dual-stack listener
    arrive as ::ffff:a.b.c.d and are checked against IPv4 prefixes."""
    address = ip_address(sockaddr[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def family_of(address: IPv4Address | IPv6Address) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def stream_socket(family: int, *, mptcp: bool, nonblocking: bool = False) -> socket.socket:
    """A TCP or MPTCP stream socket (``nonblocking``: created so, without another system call);
    a missing MPTCP is a :class:`KernelSettingError`."""
    kind = socket.SOCK_STREAM | socket.SOCK_NONBLOCK if nonblocking else socket.SOCK_STREAM
    try:
        return socket.socket(family, kind, IPPROTO_MPTCP if mptcp else 0)
    except OSError as err:
        if mptcp and err.errno in (errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.EINVAL):
            raise KernelSettingError(f"cannot create an MPTCP socket ({err.strerror}): is net.mptcp.enabled 1 "
                                     f"and MPTCP built into this kernel?") from None
        raise


def pin_buffers(sock: socket.socket, snd_buf_bytes: int, rcv_buf_bytes: int) -> tuple[int, int]:
    """SO_SNDBUF = ``snd_buf_bytes`` and SO_RCVBUF = ``rcv_buf_bytes`` (the FORCE forms, which skip the
    net.core.wmem_max/rmem_max cap, where the process may use them; else the plain ones, capped), as
    a scenario's ``buffers = "pinned"`` asks (docs/kernel-world.md, "Pinned socket buffers"). Linux
    doubles the value (``sock_setsockopt``: room for the skb overhead) and locks the buffer
    (SOCK_SNDBUF_LOCK / SOCK_RCVBUF_LOCK: no auto-tuning). On an MPTCP socket the kernel copies both
    to every subflow, present and joining (net/mptcp/sockopt.c, Linux 6.18:
    ``mptcp_sol_socket_sync_intval``, ``sync_socket_options``). Returns what the socket reports back
    (SO_SNDBUF, SO_RCVBUF): twice the values unless capped."""
    for force, plain, size in ((SO_SNDBUFFORCE, socket.SO_SNDBUF, snd_buf_bytes),
                               (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcv_buf_bytes)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def reset_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): what RFC 8803 asks of a client after an Error TLV, and what a
    converter sends upstream when the server reset. On MPTCP this is MP_FASTCLOSE, and it avoids
    the ~60 s an MPTCP socket with unread data otherwise lingers."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already reset by the peer: close() sends nothing more anyway
    sock.close()


def delivered_locally(address: IPv4Address | IPv6Address) -> bool:
    """Would this host deliver a connection to ``address`` to itself (one of its own unicast
    addresses, a ``local`` route, a directed broadcast of one of its subnets)?

    Asked of the kernel at each call, so it is always current: ``bind()`` of a datagram socket to
    the address succeeds exactly when the address is local (IPv4: the local routing table says
    RTN_LOCAL or broadcast; IPv6: an address of this host), given ip_nonlocal_bind=0, which the
    converter checks at start. An IPv4-mapped address is asked as IPv4. Errors other than "not
    an address of this host" count as local: the converter refuses when in doubt.
    """
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    probe = socket.socket(family_of(address), socket.SOCK_DGRAM)
    try:
        probe.bind((str(address), 0))
    except OSError as err:
        # EINVAL: a link-local address without a scope, which no connect() can reach either
        return err.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL)
    finally:
        probe.close()
    return True


#: rtnetlink multicast groups (linux/rtnetlink.h): address and route changes, IPv4 and IPv6.
_RTMGRP_LOCAL_CHANGES = 0x10 | 0x40 | 0x100 | 0x400  # IPV4_IFADDR, IPV4_ROUTE, IPV6_IFADDR, IPV6_ROUTE
_LOCAL_CACHE_ENTRIES = 4096


class LocalAddressCheck:
    """:func:`delivered_locally` with its answers cached until the host's addresses or routes
    change: an rtnetlink socket subscribed to those changes (:attr:`sock`, for the caller's
    selector) empties the cache whenever anything arrives on it (:meth:`on_readable`). Without
    rtnetlink (no permission, not Linux) every call asks the kernel."""

    def __init__(self) -> None:
        self._cache: dict[IPv4Address | IPv6Address, bool] = {}
        try:
            self.sock: socket.socket | None = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self.sock.bind((0, _RTMGRP_LOCAL_CHANGES))
            self.sock.setblocking(False)
        except (OSError, AttributeError):
            self.sock = None

    def __call__(self, address: IPv4Address | IPv6Address) -> bool:
        if self.sock is None:
            return delivered_locally(address)
        local = self._cache.get(address)
        if local is None:
            if len(self._cache) >= _LOCAL_CACHE_ENTRIES:
                self._cache.clear()
            local = self._cache[address] = delivered_locally(address)
        return local

    def on_readable(self) -> None:
        """Something changed (or the notification queue overflowed): forget every answer."""
        assert self.sock is not None
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        except OSError:  # ENOBUFS: notifications were lost, which the clear below covers too
            pass
        self._cache.clear()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
