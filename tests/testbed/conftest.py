"""Fixtures for the kernel testbed tests, and the tiny peer programs they run in the namespaces.

The tests need root, `ip netns` and the packages .ci/run installs. Elsewhere they skip with the
reason; in CI (CI set, as root) a missing package fails instead, so a broken .ci/run cannot turn
them into silent skips.
"""

import json
import selectors
import subprocess
import sys
import time

import pytest

from tests.namespace_skip import require

PEER_TIMEOUT_S = 20.0  # no peer program may run longer (every socket operation is bounded by it)


@pytest.fixture(scope="session")
def testbed_available():
    return require("kernel testbed", rate=True, loss=True, strip=True, nft_middlebox=True)


# One program, several modes, run with `python -c PEER MODE ARGS...` inside a namespace. Servers
# print "ready" once listening and serve a bounded number of connections; every socket has a
# timeout; results are one JSON line on stdout.
PEER = r'''
import json, socket, struct, sys, time
IPPROTO_MPTCP, SOL_MPTCP, MPTCP_INFO, SO_RCVBUFFORCE = 262, 284, 1, 33  # not in Python's socket module
TIMEOUT_S = float(__TIMEOUT__)
mode, args = sys.argv[1], sys.argv[2:]

def stream_socket(proto, addr):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET   # an IPv6 testbed's addresses
    s = socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP if proto == "mptcp" else 0)
    s.settimeout(TIMEOUT_S)
    return s

def recv_until_eof(conn):
    """Bytes received until EOF and the time of the last byte; bounded by count and TIMEOUT_S."""
    total, deadline = 0, time.monotonic() + TIMEOUT_S
    for _ in range(1 << 20):
        data = conn.recv(1 << 16)
        if not data or time.monotonic() > deadline:
            break
        total += len(data)
    return total, time.monotonic()

def serve(proto, addr, port, count, kind, tfo):
    srv = stream_socket(proto, addr)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if tfo:
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    srv.bind((addr, int(port)))
    srv.listen(16)
    print("ready", flush=True)
    for _ in range(int(count)):
        conn, _peer = srv.accept()
        conn.settimeout(TIMEOUT_S)
        with conn:
            if kind == "echo":   # echo until EOF, in step
                for _ in range(1 << 20):
                    data = conn.recv(1 << 16)
                    if not data:
                        break
                    conn.sendall(data)
            else:                # sink: count until EOF, then report the receiver's timing
                first_chunk = conn.recv(1 << 16)
                first_s = time.monotonic()
                total, last_s = recv_until_eof(conn)
                conn.sendall(json.dumps({"bytes": total + len(first_chunk), "after_first_bytes": total,
                                         "duration_s": last_s - first_s}).encode())

def mptcp_subflows(s):
    try:
        return s.getsockopt(SOL_MPTCP, MPTCP_INFO, 32)[0]
    except OSError:
        return None     # fell back to TCP

def snd_mss(s):
    return struct.unpack_from("I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 16)[0]

def client(proto, src, dst, port, size_bytes, kind, tfo, wait_subflows):
    payload = bytes(range(256)) * (int(size_bytes) // 256 + 1)
    payload = payload[:int(size_bytes)]
    s = stream_socket(proto, src)
    s.bind((src, 0))
    start = time.monotonic()
    if tfo:   # data in the SYN (no cookie needed: tcp_fastopen has 0x4)
        sent = s.sendto(payload[:1000], socket.MSG_FASTOPEN, (dst, int(port)))
    else:
        s.connect((dst, int(port)))
        sent = 0
    connect_s = time.monotonic() - start
    subflows = None
    if wait_subflows:   # the path manager opens the extra subflows after the handshake
        s.sendall(payload[sent:sent + 1000]); sent += 1000
        for _ in range(100):
            subflows = mptcp_subflows(s)
            if subflows is None or subflows >= int(wait_subflows):
                break
            time.sleep(0.05)
    result = {"connect_s": connect_s, "snd_mss": snd_mss(s)}
    if kind == "echo":
        s.sendall(payload[sent:])
        s.shutdown(socket.SHUT_WR)
        got, _ = recv_until_eof(s)
        result |= {"sent_bytes": len(payload), "echoed_bytes": got}
    else:
        s.sendall(payload[sent:])
        s.shutdown(socket.SHUT_WR)
        result |= {"receiver": json.loads(s.recv(1 << 16))}
    result |= {"subflows": subflows if wait_subflows else mptcp_subflows(s), "total_s": time.monotonic() - start}
    s.close()
    print(json.dumps(result), flush=True)

def udp_send(src, dst, port, count, size_bytes):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    payload = b"x" * int(size_bytes)
    for i in range(int(count)):
        s.sendto(payload, (dst, int(port)))
        if i % 64 == 63:
            time.sleep(0.0005)   # let the receiver keep up: its socket buffer must not overflow
    print(json.dumps({"sent": int(count)}), flush=True)

def udp_count(addr, port, idle_s):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    s.bind((addr, int(port)))
    print("ready", flush=True)
    got, deadline = 0, time.monotonic() + TIMEOUT_S
    s.settimeout(TIMEOUT_S)
    while time.monotonic() < deadline:
        try:
            s.recv(2048)
        except socket.timeout:
            break
        got += 1
        s.settimeout(float(idle_s))
    print(json.dumps({"received": got}), flush=True)

{"serve": lambda: serve(*args[:4], args[4], args[5] == "tfo"),
 "client": lambda: client(*args[:5], args[5], args[6] == "tfo", int(args[7])),
 "udp-send": lambda: udp_send(*args),
 "udp-count": lambda: udp_count(*args)}[mode]()
'''.replace("__TIMEOUT__", str(PEER_TIMEOUT_S))


def peer(mode: str, *args) -> list[str]:
    return [sys.executable, "-c", PEER, mode, *map(str, args)]


def start_ready(tb, role: str, argv: list[str], timeout_s: float = 10.0) -> subprocess.Popen:
    """Start a peer server in `role` and wait (bounded) for its "ready" line."""
    proc = tb.popen(role, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if line.strip() == "ready":
                    return proc
                if not line:   # exited
                    break
    try:
        _, err = proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        err = "(still running)"
    raise AssertionError(f"{argv[3:]} in {role} not ready within {timeout_s} s: {err}")


def finish(proc: subprocess.Popen, timeout_s: float = 10.0) -> str:
    """The rest of a started peer's stdout once it exits (bounded)."""
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"peer failed ({proc.returncode}): {err}"
    return out


def run_peer(tb, role: str, argv: list[str], timeout_s: float = PEER_TIMEOUT_S + 5) -> dict:
    """Run a peer client to completion; its JSON result."""
    done = tb.run(role, argv, timeout_s=timeout_s)
    assert done.returncode == 0, f"{argv[3:]} in {role} failed ({done.returncode}): {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])
