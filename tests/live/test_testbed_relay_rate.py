"""Relay goodput over two shaped MPTCP subflows (root only; skipped with the reason elsewhere).

Why downloads through the converter ran at 1-4 Mbit/s where two 10 Mbit/s paths give 18.5
(docs/live-converter.md "Downloads over a client leg opened with SYN data", docs/kernel-facts.md
"MPTCP connections opened with SYN data"):

1. The kernel alone, no converter: an MPTCP download on a connection opened with data in the SYN
   (TCP Fast Open, as every Convert connection is, RFC 8803 4.2) loses segments at the receiver as
   beyond its MPTCP receive window (``MPTcpExtNoDSSInWindow``) and the sender waits for MPTCP-level
   retransmissions (``MPTcpExtMPTCPRetrans``); the same download on a connection opened without SYN
   data has neither and runs at the two-path rate. This test characterises Linux 6.18: when it
   fails, the kernel changed, and the converter's figures and the docs need measuring again.
2. The daemon's relay is not the bottleneck: with the Convert message sent after the handshake
   (which the daemon accepts, docs/live-converter.md deviation 4), downloads and uploads through the
   converter reach at least 90 % of the same transfer end-to-end over MPTCP on the same testbed.
   (With write readiness removed on purpose, the download moving only on the 0.2 s re-check, it
   failed at 0.90: 16.8 of 18.7 Mbit/s; the client leg's 600 KB send buffer covers 0.2 s.)

Every run builds its own testbed (a fresh path manager: a second subflow for the first connection)
and checks every byte; each wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys

import pytest

from mpsim.testbed import PathSpec, Testbed

from . import ROOT
from .test_testbed_convert import (  # noqa: F401 (live_testbed, testbed_available: fixtures)
    NamespacedConverter, finish, live_testbed, report, start_ready, testbed_available)

CONVERT_PORT = 5000
SERVER_PORT = 8080
RATE_BPS = 10_000_000      # per path and direction, as models/kernel/convert_two_path.toml
DELAY_S = 0.005
SIZE_BYTES = 8 * 2**20
REQUEST_BYTES = 16         # what the client sends before the download (it must send something
#                            while established, or its path manager adds no subflow)
PROGRAM_TIMEOUT_S = 60.0   # every socket operation of the programs
RUN_TIMEOUT_S = 90.0
READY_TIMEOUT_S = 20.0
#: Through the converter, at least this share of the end-to-end goodput (measured 0.998 down, 1.005 up).
MIN_RATIO = 0.9
#: End-to-end without SYN data, at least this share of the two paths' sum (measured 0.93-0.94).
MIN_TWO_PATH_SHARE = 0.8

# The server: an MPTCP listener (TCP_FASTOPEN on it: SYN data accepted); for one connection, sends
# DOWN pseudo-random bytes (seed 7) then FIN while reading UP bytes (with DOWN 0, FIN after them);
# one JSON line with what it read and the time from its first byte to its last.
SERVER = r'''
import hashlib, json, random, socket, sys, threading, time
timeout_s, addr = float(sys.argv[1]), sys.argv[2]
port, down_bytes, up_bytes = map(int, sys.argv[3:6])
REQUEST_BYTES = 16
down = random.Random(7).randbytes(down_bytes)
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)   # IPPROTO_MPTCP
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_TCP, 23, 16)   # TCP_FASTOPEN
srv.bind((addr, port))
srv.listen(8)
srv.settimeout(timeout_s)
print("ready", flush=True)
conn, peer = srv.accept()
conn.settimeout(timeout_s)
errors = []
def send():
    try:
        if down:   # with nothing to send, FIN only after the upload (an early DATA_FIN: no subflow)
            conn.sendall(down)
            conn.shutdown(socket.SHUT_WR)
    except OSError as err:
        errors.append(f"send: {err}")
sender = threading.Thread(target=send, daemon=True)
sender.start()
digest, got, first, last = hashlib.sha256(), 0, None, None
try:
    while got < up_bytes:
        data = conn.recv(1 << 18)
        if not data:
            break
        last = time.monotonic()
        first = first or last
        digest.update(data)
        got += len(data)
except OSError as err:
    errors.append(f"recv: {err}")
sender.join(timeout_s)
if not down:
    conn.shutdown(socket.SHUT_WR)
print(json.dumps({"peer": peer[0], "received_bytes": got, "received_sha256": digest.hexdigest(),
                  "errors": errors, "receive_s": (last - first) if got > REQUEST_BYTES else None}), flush=True)
'''

# The client, over MPTCP, by MODE: "plain" (connect, then send), "syn-data" (the first bytes in
# the SYN: sendto(MSG_FASTOPEN) with TCP_FASTOPEN_NO_COOKIE), "convert" (convert_open: the Convert
# message in the SYN) or "convert-after" (connect, then the Convert message, then the reply).
# Sends UP pseudo-random bytes (seed 8) while reading DOWN bytes; half-closes after the upload, or
# after the download (a client that half-closes at once gets no second subflow); one JSON line with
# the time from the first byte received to the last. Neither side waits for a FIN.
CLIENT = r'''
import hashlib, ipaddress, json, random, socket, sys, threading, time
timeout_s, (root, mode, via, dest) = float(sys.argv[1]), sys.argv[2:6]
up_bytes, down_bytes = int(sys.argv[6]), int(sys.argv[7])
sys.path.insert(0, root)
from mpsim.live.client import _read_reply, convert_message, convert_open
host, _, port = dest.rpartition(":")
via_host, _, via_port = via.rpartition(":")
up = random.Random(8).randbytes(up_bytes)
early, sent = b"", 0
if mode == "convert":
    conn = convert_open(via, dest, mptcp=True, timeout_s=timeout_s)
    sock, early = conn.sock, conn.reply.app_data
else:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    sock.settimeout(timeout_s)
    if mode == "syn-data":
        sock.setsockopt(socket.IPPROTO_TCP, 34, 1)   # TCP_FASTOPEN_NO_COOKIE
        sent = sock.sendto(up[:16], 0x20000000, (via_host, int(via_port)))   # MSG_FASTOPEN
    else:
        sock.connect((via_host, int(via_port)))
    if mode == "convert-after":
        dest_ep = (ipaddress.ip_address(host), int(port))
        sock.sendall(convert_message(dest_ep))
        sock.setblocking(False)
        early = _read_reply(sock, dest_ep, False, None, time.monotonic() + timeout_s).app_data
        sock.setblocking(True)
sock.settimeout(timeout_s)
errors = []
def send():
    try:
        sock.sendall(up[sent:])
        if not down_bytes:
            sock.shutdown(socket.SHUT_WR)
    except OSError as err:
        errors.append(f"send: {err}")
sender = threading.Thread(target=send, daemon=True)
sender.start()
digest, got, first, last = hashlib.sha256(early), len(early), None, None
try:
    while got < down_bytes:
        data = sock.recv(1 << 18)
        if not data:
            break
        last = time.monotonic()
        first = first or last
        digest.update(data)
        got += len(data)
except OSError as err:
    errors.append(f"recv: {err}")
sender.join(timeout_s)
if down_bytes:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as err:
        errors.append(f"shutdown: {err}")
print(json.dumps({"received_bytes": got, "received_sha256": digest.hexdigest(), "errors": errors,
                  "receive_s": (last - first) if got > 1 else None}), flush=True)
sock.close()
'''

MPTCP_COUNTERS = ("MPTcpExtNoDSSInWindow", "MPTcpExtMPTCPRetrans", "MPTcpExtMPJoinAckRx", "MPTcpExtMPJoinSynAckRx")


def payload_sha256(seed: int, size: int) -> str:
    return hashlib.sha256(random.Random(seed).randbytes(size)).hexdigest()


def mptcp_counters(tb: Testbed, role: str) -> dict[str, int]:
    done = tb.run(role, ["nstat", "-az", *MPTCP_COUNTERS], timeout_s=10)
    assert done.returncode == 0, done.stderr
    values = {line.split()[0]: int(line.split()[1]) for line in done.stdout.splitlines()[1:] if line.split()}
    return {name: values.get(name, 0) for name in MPTCP_COUNTERS}


def shaped_testbed() -> Testbed:
    """Two 10 Mbit/s paths, 5 ms each way, the kernel's buffer sizes, TFO on, no MPTCP blackhole
    back-off (as the kernel world builds it)."""
    paths = [PathSpec(rate_bps=RATE_BPS, delay_s=DELAY_S), PathSpec(rate_bps=RATE_BPS, delay_s=DELAY_S)]
    return Testbed(paths=paths, tfo=True, tcp_buffer_max_bytes=None, sysctls={"net.mptcp.blackhole_timeout": "0"})


def transfer(mode: str, *, down_bytes: int, up_bytes: int, converter: bool) -> dict:
    """One connection in a fresh testbed: with ``converter``, client -> daemon -> server (in the
    server namespace); else client -> server in the converter namespace (end to end). Bytes checked
    against the seeds; goodput of each direction that carried bytes and the MPTCP counters."""
    with shaped_testbed() as tb:
        a = tb.addresses
        role, addr = ("server", a.server) if converter else ("converter", a.converter[0])
        server = start_ready(tb, role, [sys.executable, "-c", SERVER, str(PROGRAM_TIMEOUT_S), addr, str(SERVER_PORT),
                                        str(down_bytes), str(up_bytes)], timeout_s=READY_TIMEOUT_S)
        daemon = None
        if converter:
            daemon = NamespacedConverter(tb, "--listen", f"{a.converter[0]}:{CONVERT_PORT}", *(
                arg for c in a.client for arg in ("--allow", f"{c.rsplit('.', 1)[0]}.0/24")))
        try:
            if daemon:
                daemon.wait_for("listening", timeout_s=READY_TIMEOUT_S)
            via = f"{a.converter[0]}:{CONVERT_PORT if converter else SERVER_PORT}"
            done = tb.run("client", [sys.executable, "-c", CLIENT, str(PROGRAM_TIMEOUT_S), str(ROOT), mode, via,
                                     f"{addr}:{SERVER_PORT}", str(up_bytes), str(down_bytes)], timeout_s=RUN_TIMEOUT_S)
            assert done.returncode == 0, f"client failed ({done.returncode}): {done.stderr}"
            client = json.loads(done.stdout.strip().splitlines()[-1])
            served = json.loads(finish(server, timeout_s=RUN_TIMEOUT_S).strip().splitlines()[-1])
            counters = {r: mptcp_counters(tb, r) for r in ("client", "converter")}
            if daemon:
                daemon.stop()
        finally:
            if daemon:
                daemon.kill()
    assert not client["errors"] and not served["errors"], (client, served)
    assert client["received_bytes"] == down_bytes and client["received_sha256"] == payload_sha256(7, down_bytes)
    assert served["received_bytes"] == up_bytes and served["received_sha256"] == payload_sha256(8, up_bytes)
    assert served["peer"] == (a.converter_server_side if converter else a.client[0]), served
    return {"down_mbps": down_bytes * 8 / client["receive_s"] / 1e6 if client["receive_s"] else None,
            "up_mbps": up_bytes * 8 / served["receive_s"] / 1e6 if served["receive_s"] else None, "counters": counters}


@pytest.mark.usefixtures("live_testbed")
def test_an_mptcp_download_opened_with_syn_data_loses_segments_beyond_the_receive_window():
    plain = transfer("plain", down_bytes=SIZE_BYTES, up_bytes=REQUEST_BYTES, converter=False)
    syn_data = transfer("syn-data", down_bytes=SIZE_BYTES, up_bytes=REQUEST_BYTES, converter=False)
    report("kernel alone", {"plain": plain, "syn_data": syn_data})
    for run in (plain, syn_data):   # both with a second subflow
        assert run["counters"]["converter"]["MPTcpExtMPJoinAckRx"] == 1, run
    # Without SYN data: no drop, no MPTCP-level retransmission, near the two paths' sum.
    assert plain["counters"]["client"]["MPTcpExtNoDSSInWindow"] == 0, plain
    assert plain["counters"]["converter"]["MPTcpExtMPTCPRetrans"] == 0, plain
    assert plain["down_mbps"] >= MIN_TWO_PATH_SHARE * 2 * RATE_BPS / 1e6, plain
    # With SYN data (Linux 6.18): the receiver drops segments as outside its MPTCP window and the
    # sender retransmits at the MPTCP level (measured over 8 MiB: 5-4800 drops, 1-232 retransmissions,
    # 1.2-18.6 Mbit/s).
    # How much that costs varies from run to run (the goodput is reported, not asserted).
    assert syn_data["counters"]["client"]["MPTcpExtNoDSSInWindow"] > 0, syn_data
    assert syn_data["counters"]["converter"]["MPTcpExtMPTCPRetrans"] > 0, syn_data


@pytest.mark.usefixtures("live_testbed")
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_the_converter_relays_at_the_end_to_end_mptcp_goodput(direction):
    down_bytes, up_bytes = (SIZE_BYTES, REQUEST_BYTES) if direction == "download" else (0, SIZE_BYTES)
    key = "down_mbps" if direction == "download" else "up_mbps"
    direct = transfer("plain", down_bytes=down_bytes, up_bytes=up_bytes, converter=False)
    converted = transfer("convert-after", down_bytes=down_bytes, up_bytes=up_bytes, converter=True)
    report(direction, {"direct": direct, "converted": converted})
    assert converted["counters"]["converter"]["MPTcpExtMPJoinAckRx"] == 1, converted   # two subflows
    assert converted[key] >= MIN_RATIO * direct[key], (direct, converted)
