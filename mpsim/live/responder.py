"""The kernel world's server: answers requests the way the model's ``ResponderApp`` does, on sockets.

``python -m mpsim.live.responder --listen ADDR:PORT --socket KIND --request-bytes N`` prints
``ready`` once it listens, then serves until killed. Per connection: read the request (its first
line is ``REQ <response bytes>``, then padding to N bytes in all: mpsim.proto.client.Request's
payload), answer with that many bytes; then, for a transfer, ``DOWN n`` (send n bytes, the first
32 the send time on CLOCK_MONOTONIC as text) or ``UP n`` (read n bytes, answer ``DONE <time of
the last byte>``), until the peer closes.

Socket kinds (the catalogue's servers as Linux builds them, docs/kernel-world.md): ``tcp`` (a
plain listener; with the namespace's tcp_fastopen lacking the server bit, SYN data is not taken:
legacy_drop), ``tfo`` (TCP_FASTOPEN on the listener: SYN data taken with a valid cookie),
``tfo-no-cookie`` (also TCP_FASTOPEN_NO_COOKIE: SYN data taken without one: legacy_queue),
``mptcp`` (an IPPROTO_MPTCP listener: mptcp_v1).

``--sndbuf N --rcvbuf M`` (a scenario's ``buffers = "pinned"``): SO_SNDBUF and SO_RCVBUF on the
listener (accepted sockets inherit them, the SYN-ACK's window is the pinned buffer's) and again on
each accepted socket (an MPTCP socket copies them to its subflows); ``ready`` then carries what the
listener reports back (``ready sndbuf=2N rcvbuf=2M``: Linux doubles them).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

from mpsim.live.sockets import TCP_FASTOPEN, TCP_FASTOPEN_NO_COOKIE, parse_endpoint, pin_buffers, stream_socket

SOCKET_KINDS = ("tcp", "tfo", "tfo-no-cookie", "mptcp")
STAMP_BYTES = 32
CHUNK_BYTES = 65536
MAX_TRANSFER_BYTES = 10_000_000_000


class Reader:
    """Buffered reads from one connection: the request in as few recv calls as the segments
    allow (a per-byte read would add the interpreter's time to every first-byte measurement)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.buffer = conn, bytearray()

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.conn.recv(max(CHUNK_BYTES, count - len(self.buffer)))
            if not chunk:
                break
            self.buffer += chunk
        out, self.buffer = bytes(self.buffer[:count]), self.buffer[count:]
        return out

    def line(self, limit: int = 256) -> bytes:
        while b"\n" not in self.buffer and len(self.buffer) < limit:
            chunk = self.conn.recv(CHUNK_BYTES)
            if not chunk:
                break
            self.buffer += chunk
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        out, self.buffer = bytes(self.buffer[:end]), self.buffer[end:]
        return out

    def drain(self, count: int) -> int:
        """Read and discard ``count`` bytes (fewer at EOF); returns how many came."""
        got = min(count, len(self.buffer))
        del self.buffer[:got]
        scratch = bytearray(CHUNK_BYTES)
        while got < count:
            n = self.conn.recv_into(scratch, min(CHUNK_BYTES, count - got))
            if not n:
                break
            got += n
        return got


def serve_connection(conn: socket.socket, request_bytes: int, buffers: tuple[int, int] | None = None) -> None:
    try:
        if buffers is not None:
            pin_buffers(conn, *buffers)
        _serve(conn, request_bytes)
    except (OSError, ValueError):  # the peer reset or sent nonsense: this connection only
        pass
    finally:
        conn.close()


def _serve(conn: socket.socket, request_bytes: int) -> None:
    reader = Reader(conn)
    request = reader.exactly(request_bytes)
    if not request.startswith(b"REQ "):
        return
    conn.sendall(b"R" * int(request.split(b"\n", 1)[0].split()[1]))
    for _ in range(16):  # a few transfers per connection at most
        command = reader.line().split()
        if len(command) != 2 or not command[1].isdigit() or int(command[1]) > MAX_TRANSFER_BYTES:
            return
        size = int(command[1])
        if command[0] == b"DOWN":
            stamp = f"{time.monotonic():.9f}".encode().ljust(STAMP_BYTES)
            conn.sendall(stamp[:size])
            left, block = size - min(size, STAMP_BYTES), bytes(CHUNK_BYTES)
            while left:
                left -= conn.send(block[:min(left, CHUNK_BYTES)])
        elif command[0] == b"UP":
            if reader.drain(size) == size:
                conn.sendall(f"DONE {time.monotonic():.9f}\n".encode())
        else:
            return


def listener(address: str, kind: str, buffers: tuple[int, int] | None = None) -> socket.socket:
    host, port = parse_endpoint(address)
    sock = stream_socket(socket.AF_INET6 if host.version == 6 else socket.AF_INET, mptcp=kind == "mptcp")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if buffers is not None:
        pin_buffers(sock, *buffers)
    if kind in ("tfo", "tfo-no-cookie"):
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, 64)
    if kind == "tfo-no-cookie":
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
    sock.bind((str(host), port))
    sock.listen(128)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpsim.live.responder",
                                     description="answer mpsim requests and transfers (the kernel world's server)")
    parser.add_argument("--listen", required=True, metavar="ADDR:PORT")
    parser.add_argument("--socket", choices=SOCKET_KINDS, default="tcp")
    parser.add_argument("--request-bytes", type=int, required=True)
    parser.add_argument("--sndbuf", type=int, metavar="BYTES", help="SO_SNDBUF on every socket (pinned buffers)")
    parser.add_argument("--rcvbuf", type=int, metavar="BYTES", help="SO_RCVBUF on every socket (pinned buffers)")
    args = parser.parse_args(argv)
    if (args.sndbuf is None) != (args.rcvbuf is None) or any(v is not None and v < 1 for v in (args.sndbuf, args.rcvbuf)):
        parser.error("--sndbuf and --rcvbuf go together, each a positive byte count")
    buffers = None if args.sndbuf is None else (args.sndbuf, args.rcvbuf)
    sock = listener(args.listen, args.socket, buffers)
    if buffers is None:
        print("ready", flush=True)
    else:
        print(f"ready sndbuf={sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)} "
              f"rcvbuf={sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}", flush=True)
    while True:
        conn, _ = sock.accept()
        conn.settimeout(600.0)  # bounded: a peer that vanished does not keep a thread for ever
        threading.Thread(target=serve_connection, args=(conn, args.request_bytes, buffers), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
