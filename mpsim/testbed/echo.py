"""ICMP echo round trips with microsecond resolution: the testbed's measure of a path as built.

    python -m mpsim.testbed.echo --to ADDR [--from ADDR] [--count N] [--interval-s S] [--timeout-s T]

prints one JSON object: ``{"to": ADDR, "sent": N, "rtts_s": [...]}``. ping (iputils) prints
round trips of 10 to 100 ms in 0.1 ms steps and above 100 ms in whole milliseconds, too coarse for
the testbed's forwarding latency (tenths of a millisecond per round trip: docs/kernel-world.md,
"The path as built"). Here the send time is read just before ``sendto`` and the reply's time is
the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME like ``time.time()``), so the
prober's own wake-up is not in the figure, as ping's is not (it timestamps the same way). The
echo reply is made by the far kernel in softirq, as a SYN-ACK is: no process wakes up there.

It imports only the standard library, so the kernel world runs it by its file (``python -I
.../echo.py``), without the package's start-up. IPv4 (raw ICMP, RFC 792 checksum computed here) and IPv6 (raw ICMPv6, RFC 4443: the kernel fills
the checksum). Root (CAP_NET_RAW). Bounded: ``count`` requests, each waited for at most
``timeout_s``; a lost or late reply is left out of ``rtts_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence

SO_TIMESTAMPNS = 35
MAX_COUNT = 10_000


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP (type 8) or ICMPv6 (type 128) echo request; IPv6's checksum is the kernel's."""
    if family == socket.AF_INET6:
        return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def round_trips(to: str, *, source: str | None = None, count: int = 10, interval_s: float = 0.01,
                timeout_s: float = 2.0) -> list[float]:
    """``count`` echo round trips to ``to`` (seconds; lost ones left out), one after another."""
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count={count}: expected 1..{MAX_COUNT}")
    if not 0 <= interval_s <= 10 or not 0 < timeout_s <= 60:
        raise ValueError(f"interval_s={interval_s}, timeout_s={timeout_s}: expected 0..10 and 0..60 s")
    family = socket.AF_INET6 if ":" in to else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    reply_type = 129 if family == socket.AF_INET6 else 0
    ident = os.getpid() & 0xFFFF
    out = []
    with socket.socket(family, socket.SOCK_RAW, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if source:
            s.bind((source, 0))
        for seq in range(count):
            payload = struct.pack("!Q", seq) + bytes(48)
            sent = time.time()
            s.sendto(echo_request(family, ident, seq, payload), (to, 0))
            deadline = sent + timeout_s
            while True:
                left = deadline - time.time()
                if left <= 0 or not select.select([s], [], [], left)[0]:
                    break
                data, ancillary, _flags, _addr = s.recvmsg(2048, socket.CMSG_SPACE(16))
                icmp = data if family == socket.AF_INET6 else data[(data[0] & 0x0F) * 4:]
                if len(icmp) < 8 or icmp[0] != reply_type or struct.unpack_from("!HH", icmp, 4) != (ident, seq):
                    continue  # another prober's reply, or an older one of ours
                stamp = next((struct.unpack("qq", value[:16]) for level, kind, value in ancillary
                              if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)
                received = stamp[0] + stamp[1] * 1e-9 if stamp else time.time()
                out.append(received - sent)
                break
            time.sleep(max(0.0, sent + interval_s - time.time()))
    return out


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpsim.testbed.echo",
                                     description="ICMP echo round trips with kernel receive timestamps "
                                                 "(docs/kernel-world.md, \"The path as built\").")
    parser.add_argument("--to", required=True, help="the address to echo")
    parser.add_argument("--from", dest="source", help="the source address (which path)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval-s", type=float, default=0.01)
    parser.add_argument("--timeout-s", type=float, default=2.0)
    ns = parser.parse_args(args)
    try:
        rtts = round_trips(ns.to, source=ns.source, count=ns.count, interval_s=ns.interval_s, timeout_s=ns.timeout_s)
    except (ValueError, OSError) as err:
        print(f"mpsim.testbed.echo: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"to": ns.to, "sent": ns.count, "rtts_s": rtts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
