"""The RFC 8803 client on Linux sockets: :func:`convert_connect` and ``mpsim converter connect``.

The Convert message goes in the SYN payload (``sendto(MSG_FASTOPEN)`` on a TCP or MPTCP socket,
cookie-less by the per-socket ``TCP_FASTOPEN_NO_COOKIE``, so the sysctl needs only the client bit
0x1). Everything about the message and the reply is
:class:`mpsim.proto.convert.ConvertClientExchange`'s, the same object the simulated client uses:
this module builds no bytes and judges no reply itself. It checks through TCP_INFO
(``TCPI_OPT_SYN_DATA``) that the SYN-ACK ACKed the SYN payload (RFC 8803 8), reads the reply with
the exchange, and on an Error TLV or an invalid reply resets the connection (SO_LINGER 0, as
libconvert does) and raises :class:`ConvertError`.

The per-connection path keeps what the exchange concluded instead of asking again (docs/live-converter.md,
"Setup rate"): the Convert message of a (destination, Info, cookie) is built by the exchange once
and its bytes reused (:func:`convert_message`); a reply whose exact bytes the exchange already
judged a success for a Connect request is answered from that judgement (:func:`known_reply`),
every other reply (the first one, an Error, anything invalid or unusual) goes through a fresh
exchange; the kernel settings are checked only when the SYN carried no data or could not be sent,
to say why. Both memos are bounded and hold replies and messages, never connections.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import selectors
import socket
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from mpsim.errors import MpsimError
from mpsim.live.sockets import (
    FASTOPEN_CLIENT_FAIL,
    MSG_FASTOPEN,
    IPPROTO_MPTCP,
    TCP_FASTOPEN_NO_COOKIE,
    TCP_IS_MPTCP,
    TCPI_OPT_SYN_DATA,
    KernelSettingError,
    client_kernel_problems,
    family_of,
    mptcp_info,
    parse_endpoint,
    reset_close,
    stream_socket,
    tcp_info,
)
from mpsim.proto.convert import ConvertClientExchange, ConvertReply, ReplyStatus
from mpsim.proto.events import FallbackReason
from mpsim.wire.convert import CONVERT_MAGIC, CONVERT_VERSION, HEADER_BYTES, ConvertErrorCode

Endpoint = tuple[IPv4Address | IPv6Address, int]

EXIT_OK = 0
EXIT_CONVERT_ERROR = 1  # the converter refused (an Error TLV), or its reply was not valid
EXIT_USER_ERROR = 2  # usage or kernel settings
EXIT_NETWORK_ERROR = 3  # the converter could not be reached, or the connection broke


class ConvertError(MpsimError):
    """A Convert attempt failed after the converter was reached. ``code``: the Error TLV's code
    (a :class:`ConvertErrorCode` when known), None when there was no Error TLV (the SYN payload
    was not ACKed, the reply was missing or invalid); ``reply``: what the exchange concluded, with
    its advice (docs/protocols.md 8.3) and fallback reason."""

    def __init__(self, message: str, *, code: int | None = None, reply: ConvertReply | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply

    @property
    def fallback_reason(self) -> FallbackReason | None:
        return self.reply.fallback_reason if self.reply is not None else None


@dataclass(frozen=True, slots=True)
class ConvertedConnection:
    """A connection the converter relays to ``destination``; ``sock`` is blocking, and the
    server's bytes start at its next read."""

    sock: socket.socket
    reply: ConvertReply
    converter: Endpoint
    destination: Endpoint
    upstream_mptcp: bool  # our leg to the converter negotiated MPTCP
    syn_bytes: int  # bytes of the SYN payload, all ACKed by the SYN-ACK


def _is_mptcp(sock: socket.socket) -> bool:
    """Whether ``sock`` is an MPTCP connection that did not fall back: TCP_IS_MPTCP, one getsockopt
    (Linux 5.16+; before, MPTCP_INFO says it)."""
    if sock.proto != IPPROTO_MPTCP:
        return False
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, TCP_IS_MPTCP))
    except OSError:
        return mptcp_info(sock) is not None


#: Bound on each memo below (entries; a memo that is full is emptied and starts again).
_MEMO_ENTRIES = 256
_endpoints: dict[str, tuple[Endpoint, tuple[str, int]]] = {}
_messages: dict[tuple, bytes] = {}
_replies: dict[bytes, ConvertReply] = {}
#: The header of a Convert message in this version: its first byte and its magic (RFC 8803 6.1).
_MAGIC_BYTES = CONVERT_MAGIC.to_bytes(2, "big")
_TCP_INFO_OPTIONS_BYTES = 8  # struct tcp_info up to tcpi_options (byte 5) and the TFO failure bits (byte 7)


def _remember(memo: dict, key, value) -> None:
    if len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    memo[key] = value


def _as_endpoint(value: str | tuple, what: str) -> tuple[Endpoint, tuple[str, int]]:
    """(address, port) and the socket address for it; strings parsed once each."""
    if isinstance(value, str):
        known = _endpoints.get(value)
        if known is not None:
            return known
        try:
            endpoint = parse_endpoint(value)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
        known = (endpoint, (str(endpoint[0]), endpoint[1]))
        _remember(_endpoints, value, known)
        return known
    host, port = value
    endpoint = ip_address(host), int(port)
    return endpoint, (str(endpoint[0]), endpoint[1])


def convert_message(dest: Endpoint, *, info: bool = False, cookie: bytes | None = None) -> bytes:
    """The Convert message asking for ``dest`` (an Info TLV if ``info``, a Cookie TLV if ``cookie``):
    :meth:`ConvertClientExchange.syn_payload`'s bytes, built once per (destination, info, cookie)
    and then reused (bounded). Byte for byte the exchange's: tests/live/test_client_fastpath.py."""
    if cookie is not None and type(cookie) is not bytes:  # not a key; the exchange says what is wrong
        return ConvertClientExchange().syn_payload(dest[0], dest[1], info=info, cookie=cookie)
    key = (dest, info, cookie)
    message = _messages.get(key)
    if message is None:
        message = ConvertClientExchange().syn_payload(dest[0], dest[1], info=info, cookie=cookie)
        _remember(_messages, key, message)
    return message


def known_reply(message: bytes) -> ConvertReply | None:
    """The reply to a Connect request whose exact bytes a :class:`ConvertClientExchange` (with the
    default policy) already judged a success, or None: the caller then hands the bytes to a fresh
    exchange. Only successes are kept (:func:`_learn_reply`), so an Error TLV or an invalid reply
    is always judged afresh."""
    return _replies.get(message)


def _learn_reply(message: bytes, reply: ConvertReply) -> None:
    """Keep the exchange's judgement of ``message`` (the whole Convert message, nothing after it)
    when it is a success without application bytes: the same bytes get the same judgement."""
    if reply.status is ReplyStatus.CONVERTED and not reply.app_data and len(message) == message[1] * 4:
        _remember(_replies, bytes(message), reply)


def convert_open(converter: str | tuple, dest: str | tuple, *, mptcp: bool = False, cookie: bytes | None = None,
                 app_data: bytes = b"", timeout_s: float = 10.0, info: bool = False) -> ConvertedConnection:
    """Ask ``converter`` (``"ADDR:PORT"`` or ``(addr, port)``) for a connection to ``dest``; the
    Convert message (with ``cookie`` and, if ``info``, an Info TLV) and ``app_data`` go in the SYN.
    ``timeout_s`` bounds the whole exchange. Raises :class:`KernelSettingError` (this host cannot
    send SYN data), :class:`OSError` (the converter could not be reached) or :class:`ConvertError`."""
    deadline = time.monotonic() + timeout_s
    converter_ep, converter_address = _as_endpoint(converter, "converter")
    dest_ep, _ = _as_endpoint(dest, "destination")
    message = convert_message(dest_ep, info=info, cookie=cookie)
    payload = message + app_data if app_data else message
    sock = stream_socket(family_of(converter_ep[0]), mptcp=mptcp)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)  # no cookie towards a converter (RFC 8803 4.2)
        sock.setblocking(False)
        syn_bytes, reset = _connect_with_syn_data(sock, payload, converter_address, deadline, mptcp)
        if reset:
            # The converter replied and reset before this thread woke: the connection is over and
            # only why is left. The RFC 8803 8 SYN-ACK check cannot be made (an MPTCP socket's
            # TCP_INFO went with its reset subflow); the queued reply's Error TLV is the answer.
            reply = _read_reply(sock, dest_ep, info, cookie, deadline)
            if reply.error is not None:
                raise _error_for(reply)
            raise ConnectionResetError(errno.ECONNRESET, f"the converter at {converter_address[0]}:"
                                                         f"{converter_address[1]} reset the connection after its reply")
        # RFC 8803 8: the SYN-ACK must ACK the whole Convert message (TCPI_OPT_SYN_DATA: all SYN data ACKed)
        syn_data = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_OPTIONS_BYTES)[5] & TCPI_OPT_SYN_DATA
        if not syn_data or syn_bytes < len(message):
            exchange = _exchange(dest_ep, info, cookie)
            exchange.check_synack(syn_bytes if syn_data else 0, len(message))
            why = FASTOPEN_CLIENT_FAIL.get(tcp_info(sock).fastopen_client_fail, "unknown")
            raise ConvertError(f"the converter's SYN-ACK did not ACK the Convert message ({why}): per RFC 8803 8 "
                               f"stop using this converter (is net.ipv4.tcp_fastopen's server bit 0x2 set there?)",
                               reply=exchange.reply)
        if syn_bytes < len(payload):
            _send_all(sock, payload[syn_bytes:], deadline)  # app data beyond what fitted in the SYN
        reply = _read_reply(sock, dest_ep, info, cookie, deadline)
        if reply.must_reset:
            raise _error_for(reply)
        sock.setblocking(True)
        return ConvertedConnection(sock, reply, converter_ep, dest_ep, upstream_mptcp=_is_mptcp(sock),
                                   syn_bytes=syn_bytes)
    except BaseException:
        reset_close(sock)  # RFC 8803 6.2.8: after an Error TLV the client resets (libconvert: SO_LINGER 0 too)
        raise


def _exchange(dest: Endpoint, info: bool, cookie: bytes | None) -> ConvertClientExchange:
    """A fresh exchange that has sent the request :func:`convert_message` gave (the slow path)."""
    exchange = ConvertClientExchange()
    exchange.syn_payload(dest[0], dest[1], info=info, cookie=cookie)
    return exchange


def convert_connect(converter: str | tuple, dest: str | tuple, *, mptcp: bool = False, cookie: bytes | None = None,
                    app_data: bytes = b"", timeout_s: float = 10.0) -> socket.socket:
    """:func:`convert_open`, returning only the connected socket."""
    return convert_open(converter, dest, mptcp=mptcp, cookie=cookie, app_data=app_data, timeout_s=timeout_s).sock


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(errno.ETIMEDOUT, f"timed out {what}")
    return left


def _wait(sock: socket.socket, events: int, deadline: float, what: str) -> None:
    # poll(2), not a selectors.DefaultSelector: one socket, once, needs no epoll instance to be
    # created and closed around it (that was a third of the client's system calls per connection).
    poller = select.poll()
    poller.register(sock, (select.POLLIN if events & selectors.EVENT_READ else 0)
                    | (select.POLLOUT if events & selectors.EVENT_WRITE else 0))
    if not poller.poll(1e3 * _remaining(deadline, what)):  # milliseconds; an error or hang-up counts as ready
        raise TimeoutError(errno.ETIMEDOUT, f"timed out {what}")


def _connect_with_syn_data(sock: socket.socket, payload: bytes, address: tuple[str, int], deadline: float,
                           mptcp: bool) -> tuple[int, bool]:
    """SYN with ``payload`` (what fits), wait for the handshake; the bytes that went in the SYN,
    and whether the converter has already reset the connection after queuing a reply.
    When no data could go in the SYN, the kernel settings say why (checked only then: a sysctl
    read per connection cost more than the Convert message)."""
    try:
        syn_bytes = sock.sendto(payload, MSG_FASTOPEN, address)
    except BlockingIOError:  # EINPROGRESS with nothing in the SYN: TFO refused by this kernel's state
        syn_bytes = 0
    except OSError as err:  # EOPNOTSUPP without the client bit of net.ipv4.tcp_fastopen
        _raise_kernel_problems(mptcp)
        raise OSError(err.errno, f"cannot send the Convert SYN to {address[0]}:{address[1]}: {err.strerror}") from None
    if syn_bytes == 0:
        _raise_kernel_problems(mptcp)
    _wait(sock, selectors.EVENT_WRITE, deadline, "connecting to the converter")
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    # ECONNRESET here means the handshake completed and the converter then reset: a refusal (Error
    # 32 at accept) is its reply and a reset at once, both in before a client on a busy machine
    # wakes. The reply is still queued: read it (RFC 8803 6.2.8) rather than report no converter.
    reset = error == errno.ECONNRESET and _queued(sock)
    if error and not reset:
        raise OSError(error, f"cannot reach the converter at {address[0]}:{address[1]}: {os.strerror(error)}")
    if syn_bytes == 0:
        raise ConvertError("the kernel put no data in the SYN (TFO off for this destination: SYN-data losses "
                           "back-off or blackhole detection); the Convert message must be in the SYN (RFC 8803 4.2)")
    return syn_bytes, reset


def _queued(sock: socket.socket) -> bool:
    """Whether bytes wait to be read (a peek; the socket is non-blocking)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def _raise_kernel_problems(mptcp: bool) -> None:
    problems = client_kernel_problems(mptcp=mptcp)
    if problems:
        raise KernelSettingError("; ".join(problems))


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            _wait(sock, selectors.EVENT_WRITE, deadline, "sending")


def _recv_exact(sock: socket.socket, count: int, deadline: float) -> bytes:
    """``count`` bytes, fewer only at EOF."""
    data = bytearray()
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except BlockingIOError:
            _wait(sock, selectors.EVENT_READ, deadline, "waiting for the Convert reply")
            continue
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _read_reply(sock: socket.socket, dest: Endpoint, info: bool, cookie: bytes | None,
                deadline: float) -> ConvertReply:
    """The reply, read exactly (header, then Total Length words), as libconvert does: the server's
    first bytes stay in the socket for the application. A message whose bytes an exchange already
    judged a success gets that judgement (:func:`known_reply`); anything else goes to a fresh
    exchange, fed the same bytes in the same two reads."""
    # The reply cannot be there yet (the converter connects to the server first): wait, then read,
    # rather than a read that fails with EAGAIN before the wait.
    _wait(sock, selectors.EVENT_READ, deadline, "waiting for the Convert reply")
    header = _recv_exact(sock, HEADER_BYTES, deadline)
    if (len(header) == HEADER_BYTES and header[0] == CONVERT_VERSION and header[1]
            and header[2:] == _MAGIC_BYTES):
        message = header + _recv_exact(sock, header[1] * 4 - HEADER_BYTES, deadline)
        reply = _replies.get(message)
        if reply is not None:
            return reply
        exchange = _exchange(dest, info, cookie)
        reply = exchange.receive(message)
        if reply is None:
            return exchange.reply_missing()  # EOF inside the message
        _learn_reply(message, reply)
        return reply
    exchange = _exchange(dest, info, cookie)  # not this version's header: the exchange says what it is
    reply = exchange.receive(header) if len(header) == HEADER_BYTES else None
    if reply is None and len(header) == HEADER_BYTES:
        rest = _recv_exact(sock, header[1] * 4 - HEADER_BYTES, deadline)  # Total Length counts 32-bit words
        reply = exchange.receive(rest)
    return reply if reply is not None else exchange.reply_missing()


def _error_for(reply: ConvertReply) -> ConvertError:
    if reply.error is None:
        reason = reply.fallback_reason.value if reply.fallback_reason else "invalid"
        return ConvertError(f"no valid Convert reply ({reason}): the connection was reset", reply=reply)
    code = reply.error.known_code if reply.error.known_code is not None else reply.error.code
    name = reply.error.known_code.name if reply.error.known_code is not None else "unknown code"
    detail = f", value {reply.error.value}" if reply.error.value else ""
    reaction = reply.advice.reaction.value if reply.advice else "reset"
    return ConvertError(f"converter answered Error {reply.error.code} ({name}{detail}); advice: {reaction}",
                        code=code, reply=reply)


# --- the command line ---------------------------------------------------------------------------------


def describe(connection: ConvertedConnection) -> list[str]:
    """The reply summary ``--info`` prints, one ``key=value`` per line."""
    reply = connection.reply
    options = " ".join(o.name for o in reply.server_options)
    lines = [f"status={reply.status.value}",
             f"destination={_show(connection.destination)}",
             f"upstream_mptcp={int(connection.upstream_mptcp)}",
             f"syn_data_acked_bytes={connection.syn_bytes}",
             f"server_mptcp={int(reply.server_mptcp_capable)}",
             f"server_options={options or '-'}"]
    for option in reply.server_options:
        lines.append(f"server_option.{option.name}={option!r}")
    if reply.supported_kinds is not None:
        lines.append(f"converter_supported_kinds={','.join(map(str, reply.supported_kinds)) or '-'}")
    return lines


def _show(endpoint: Endpoint) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _copy_stdio(sock: socket.socket, idle_timeout_s: float) -> int:
    """stdin -> socket, socket -> stdout, until the socket's EOF; stdin's EOF half-closes."""
    sock.setblocking(False)
    stdin_fd, stdout = sys.stdin.fileno(), sys.stdout.buffer
    stdin_open = True
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        try:
            selector.register(stdin_fd, selectors.EVENT_READ)
        except (PermissionError, ValueError):  # a regular file cannot be polled: read it at once
            stdin_open = _pour_file(sock, stdin_fd)
        while True:
            ready = selector.select(idle_timeout_s)
            if not ready:
                print("mpsim converter connect: error: idle for too long", file=sys.stderr)
                return EXIT_NETWORK_ERROR
            for key, _ in ready:
                if key.fileobj is sock:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        stdout.flush()
                        return EXIT_OK
                    stdout.write(data)
                    stdout.flush()
                elif stdin_open:
                    pending = os.read(stdin_fd, 65536)
                    if not pending:
                        stdin_open = False
                        selector.unregister(stdin_fd)
                        sock.shutdown(socket.SHUT_WR)
                        continue
                    sock.setblocking(True)  # a short blocking write keeps this loop simple
                    sock.sendall(pending)
                    sock.setblocking(False)


def _pour_file(sock: socket.socket, fd: int) -> bool:
    sock.setblocking(True)
    while data := os.read(fd, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.setblocking(False)
    return False


def connect_parser(prog: str = "mpsim converter connect") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Connect to DEST through an RFC 8803 converter (the Convert message in the SYN), "
                               "then copy stdin to the connection and the connection to stdout.")
    parser.add_argument("converter", metavar="CONVERTER", help="the converter, ADDR:PORT ([ADDR]:PORT for IPv6)")
    parser.add_argument("dest", metavar="DEST", help="the server, ADDR:PORT (an address: RFC 8803 signals no names)")
    parser.add_argument("--mptcp", action="store_true", help="MPTCP to the converter (default plain TCP)")
    parser.add_argument("--cookie", metavar="HEX", help="a Cookie TLV (RFC 8803 6.2.7), from an earlier Error 3")
    parser.add_argument("--info", action="store_true",
                        help="print the reply summary (key=value lines) instead of copying data, and ask the "
                             "converter which TCP extensions it supports")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="for the Convert exchange (default 10)")
    parser.add_argument("--idle-timeout", type=float, default=300.0, metavar="S",
                        help="give up when nothing moves for this long while copying (default 300)")
    return parser


def connect_main(argv: list[str] | None = None, *, prog: str = "mpsim converter connect") -> int:
    """``mpsim converter connect``: exit 0 when the copy ended with the server's EOF (or --info
    printed), 1 for a Convert error (one line naming the Error), 2 for usage or kernel settings,
    3 when the converter could not be reached or the connection broke."""
    args = connect_parser(prog).parse_args(argv)
    try:
        cookie = bytes.fromhex(args.cookie) if args.cookie is not None else None
    except ValueError:
        print(f"{prog}: error: --cookie {args.cookie!r} is not hex", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.timeout <= 0 or args.idle_timeout <= 0:
        print(f"{prog}: error: timeouts must be positive", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        connection = convert_open(args.converter, args.dest, mptcp=args.mptcp, cookie=cookie,
                                  timeout_s=args.timeout, info=args.info)
    except (ValueError, KernelSettingError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ConvertError as err:
        cookie_hint = ""
        if err.code == ConvertErrorCode.MISSING_COOKIE and err.reply and err.reply.advice:
            cookie_hint = f"; retry with --cookie {err.reply.advice.cookie.hex()}"
        print(f"{prog}: error: {err}{cookie_hint}", file=sys.stderr)
        return EXIT_CONVERT_ERROR
    except OSError as err:
        print(f"{prog}: error: {err.strerror or err}", file=sys.stderr)
        return EXIT_NETWORK_ERROR
    with connection.sock as sock:
        if args.info:
            print("\n".join(describe(connection)))
            return EXIT_OK
        try:
            return _copy_stdio(sock, args.idle_timeout)
        except OSError as err:
            print(f"{prog}: error: {err.strerror or err}", file=sys.stderr)
            return EXIT_NETWORK_ERROR


if __name__ == "__main__":
    sys.exit(connect_main(sys.argv[1:]))
