"""The abuse benchmark's attacker, run in the client namespace as
``python -m mpsim.bench.kernel.attacker TARGET SLOW GARBAGE RESETTING SYN_PPS FORBIDDEN DURATION_S``
(stdlib only, like :mod:`mpsim.bench.kernel.peer`; every loop bounded in time).

At once, until DURATION_S or a line on stdin: SLOW connections that send a Convert header and then
one byte every 0.5 s (re-opened when the converter drops them); GARBAGE connections whose SYN
carries bytes that are not Convert (re-opened as they are refused); RESETTING clients per second
that send a valid-looking request for a FORBIDDEN destination and reset at once, and requests for
the FORBIDDEN destinations (comma-separated ADDR:PORT: the converter's own addresses) that wait
for their answer; and a SYN flood of SYN_PPS raw SYNs per second from random ports of this host (the
converter's SYN-ACKs are answered by this kernel with RST). Prints one JSON line of what it did.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import select
import socket
import struct
import sys
import time

MSG_FASTOPEN = 0x20000000
TCP_FASTOPEN_NO_COOKIE = 34
HEADER_ONLY = bytes((1, 255, 0x22, 0x63))  # RFC 8803 6.1: version 1, 255 words promised, magic 0x2263
GARBAGE = b"GET / HTTP/1.1\r\nHost: converter\r\n\r\n"


def convert_request(address: str, port: int) -> bytes:
    """A Convert message with one Connect TLV (RFC 8803 6.1, 6.2.3), the address IPv4-mapped."""
    mapped = bytes(10) + b"\xff\xff" + socket.inet_aton(address)
    return bytes((1, 6, 0x22, 0x63)) + bytes((10, 5)) + struct.pack("!H", port) + mapped


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_packet(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """An IPv4 SYN (RFC 791 header, RFC 9293 3.1 segment with an MSS option), checksums filled."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 6 << 4, 0x02, 64240, 0, 0) + b"\x02\x04\x05\xb4"
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, socket.IPPROTO_TCP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


def open_fast(dest: tuple[str, int], payload: bytes, source: str | None = None) -> socket.socket:
    """A non-blocking IPv4 client: ``payload`` in its SYN (cookie-less Fast Open), or a plain
    connect when empty; from ``source`` when given. The hardening tests use it too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if source is not None:
        sock.bind((source, 0))
    if payload:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_NO_COOKIE, 1)
        try:
            sock.sendto(payload, MSG_FASTOPEN, dest)
        except (BlockingIOError, InterruptedError):
            pass
    else:
        sock.connect_ex(dest)
    return sock


def dead(sock: socket.socket) -> bool:
    try:
        return sock.recv(64, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as err:
        return err.errno != errno.ENOTCONN


def main(argv: list[str]) -> None:
    target, slow_n, garbage_n, resetting_per_s, syn_pps, forbidden, duration_s = argv
    host, port = target.rsplit(":", 1)
    dest = (host, int(port))
    forbidden_dests = [(a, int(p)) for a, p in (d.rsplit(":", 1) for d in forbidden.split(",") if d)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) if float(syn_pps) > 0 else None
    source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    source.connect(dest)
    src_addr = source.getsockname()[0]
    source.close()
    done = {"slow_opened": 0, "garbage_opened": 0, "resetting": 0, "forbidden_requests": 0,
            "forbidden_answers": {}, "syns_sent": 0}
    slow: list[socket.socket] = []
    garbage: list[socket.socket] = []
    waiting: list[socket.socket] = []
    rng = random.Random(8803)
    print(json.dumps("ready"), flush=True)
    start = time.monotonic()
    end = start + float(duration_s)
    last_trickle = last_tick = last_garbage = start
    while time.monotonic() < end:
        if select.select([sys.stdin], [], [], 0)[0]:
            break
        now = time.monotonic()
        tick_s, last_tick = now - last_tick, now
        alive = []
        for sock in slow:
            if dead(sock):
                sock.close()
            else:
                alive.append(sock)
        slow = alive
        if now - last_trickle >= 0.5:
            last_trickle = now
            for sock in slow:
                try:
                    sock.send(b"\0")
                except OSError:
                    pass
        if now - last_garbage >= 0.1:  # a new batch of garbage ten times a second
            last_garbage = now
            for sock in garbage:
                sock.close()
            garbage = []
        try:
            while len(slow) < int(slow_n):
                slow.append(open_fast(dest, HEADER_ONLY))
                done["slow_opened"] += 1
            while len(garbage) < int(garbage_n):
                garbage.append(open_fast(dest, GARBAGE))
                done["garbage_opened"] += 1
            for _ in range(max(1, round(float(resetting_per_s) * tick_s))):
                if forbidden_dests:
                    sock = open_fast(dest, convert_request(*rng.choice(forbidden_dests)))
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    done["resetting"] += 1
            if forbidden_dests and len(waiting) < 20:
                waiting.append(open_fast(dest, convert_request(*rng.choice(forbidden_dests))))
                done["forbidden_requests"] += 1
        except OSError:
            pass  # out of ports or descriptors for a moment
        still = []
        for sock in waiting:
            try:
                answer = sock.recv(64)
            except (BlockingIOError, InterruptedError):
                still.append(sock)
                continue
            except OSError:
                answer = b""
            code = str(answer[6]) if len(answer) >= 8 and answer[4] == 30 else "none"
            done["forbidden_answers"][code] = done["forbidden_answers"].get(code, 0) + 1
            sock.close()
        waiting = still
        if raw is not None:
            for _ in range(int(float(syn_pps) * tick_s)):
                packet = syn_packet(src_addr, host, rng.randrange(20000, 60000), int(port), rng.getrandbits(32))
                try:
                    raw.sendto(packet, (host, 0))
                    done["syns_sent"] += 1
                except OSError:
                    break
        time.sleep(0.02)
    for sock in slow + garbage + waiting:
        sock.close()
    print(json.dumps(done | {"wall_s": time.monotonic() - start}), flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as err:  # the benchmark reads one JSON line either way
        print(json.dumps({"failed": f"{type(err).__name__}: {err}"}), flush=True)
        os._exit(1)
