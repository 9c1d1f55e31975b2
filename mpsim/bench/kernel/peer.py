"""The peer programs of the kernel benchmarks, run inside the testbed's namespaces:
``python -m mpsim.bench.kernel.peer MODE ARGS...`` (sink, send, echo, churn, hold, relay, rtt,
bare-convert).

Standard library only, plus the limit from :mod:`mpsim.bench.kernel.config` and :mod:`mpsim.live.client` for the Convert client (imported where used),
so that a peer starts fast and measures the kernel, not mpsim. Every socket operation and every loop
is bounded in count and time (``LIMIT_S``); results go to stdout as one JSON line each, a failure as
``{"failed": ...}`` with exit status 1. The caller (:mod:`mpsim.bench.kernel.services`) starts each
peer in its own session and kills its process group when the testbed closes.
"""

import hashlib
import json
import random
import resource
import select
import selectors
import socket
import sys
import threading
import time

IPPROTO_MPTCP, SOL_MPTCP, MPTCP_INFO = 262, 284, 1  # not all exported by Python's socket module
from mpsim.bench.kernel.config import PEER_LIMIT_S as LIMIT_S  # bound on every socket operation and loop
_print_lock = threading.Lock()


def out(obj):
    with _print_lock:
        print(json.dumps(obj), flush=True)


def cpu_s(who=resource.RUSAGE_SELF):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def endpoint(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def stream(proto):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if proto == "mptcp" else 0)
    s.settimeout(LIMIT_S)
    return s


def listener(proto, address, backlog=1024):
    s = stream(proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(endpoint(address))
    s.listen(backlog)
    return s


def mptcp_subflows(s):
    """Subflows of an MPTCP connection (the initial one included); 0 for TCP or a fallback."""
    if s.proto != IPPROTO_MPTCP:
        return 0
    try:
        raw = s.getsockopt(SOL_MPTCP, MPTCP_INFO, 96)
    except OSError:
        return 0
    return 0 if int.from_bytes(raw[8:12], "little") & 1 else raw[0] + 1  # MPTCP_INFO_FLAG_FALLBACK


def wait_stdin(timeout_s):
    if select.select([sys.stdin], [], [], timeout_s)[0]:
        sys.stdin.readline()


def connect(kind, proto, target, dest, timeout_s):
    """(socket, facts). direct: connect to target. convert: ask the converter at target for dest;
    when the exchange fails, fall back to plain TCP to dest (the model's FallbackTarget.DIRECT_TCP)."""
    from mpsim.live.client import ConvertError, convert_open
    start = time.monotonic()
    if kind == "direct":
        s = stream(proto)
        s.connect(endpoint(target))
        return s, {"setup_s": time.monotonic() - start, "via_converter": False, "convert_error": None}
    try:
        c = convert_open(target, dest, mptcp=proto == "mptcp", timeout_s=timeout_s)
        c.sock.settimeout(LIMIT_S)
        return c.sock, {"setup_s": time.monotonic() - start, "via_converter": True, "convert_error": None}
    except (ConvertError, OSError) as err:
        error = f"{type(err).__name__}: {err}"
    s = stream("tcp")
    s.connect(endpoint(dest))
    return s, {"setup_s": time.monotonic() - start, "via_converter": False, "convert_error": error}


def sink(proto, address, count, lifetime_s):
    """Accept up to count connections (a thread each); hash what arrives until EOF; one JSON line each."""
    srv, end = listener(proto, address), time.monotonic() + float(lifetime_s)

    def serve(conn, peer):
        conn.settimeout(LIMIT_S)
        buf = bytearray(1 << 18)
        view, cpu0, digest = memoryview(buf), cpu_s(resource.RUSAGE_THREAD), hashlib.sha256()
        total, first_bytes, first_s, last_s, error = 0, 0, None, None, None
        deadline = time.monotonic() + LIMIT_S
        try:
            while time.monotonic() < deadline:
                n = conn.recv_into(buf)
                if not n:
                    break
                last_s = time.monotonic()
                if first_s is None:
                    first_s, first_bytes = last_s, n
                total += n
                digest.update(view[:n])
        except OSError as err:
            error = f"{type(err).__name__}: {err}"
        conn.close()
        span_s = last_s - first_s if first_s is not None else 0.0
        out({"bytes": total, "sha256": digest.hexdigest(), "peer": f"{peer[0]}:{peer[1]}", "span_s": span_s,
             "goodput_bps": (total - first_bytes) * 8 / span_s if span_s > 0 else None,
             "cpu_s": cpu_s(resource.RUSAGE_THREAD) - cpu0, "error": error})

    out("ready")
    for _ in range(int(count)):
        srv.settimeout(max(0.1, end - time.monotonic()))
        try:
            conn, peer = srv.accept()
        except socket.timeout:
            break
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


def send(kind, proto, target, dest, size, seed, timeout_s):
    """One upload of size bytes (the seeded block repeated); waits for "go" on stdin once connected
    (the caller samples CPU counters around the transfer only), then for the server's EOF."""
    block = memoryview(random.Random(int(seed)).randbytes(1 << 20))
    size = int(size)
    s, facts = connect(kind, proto, target, dest, float(timeout_s))
    out({"connected": True, **facts})
    wait_stdin(LIMIT_S)
    start, cpu0 = time.monotonic(), cpu_s()
    for offset in range(0, size, len(block)):
        s.sendall(block[:min(len(block), size - offset)])
    subflows = mptcp_subflows(s)
    s.shutdown(socket.SHUT_WR)
    for _ in range(1000):  # the server's EOF: every byte arrived
        if not s.recv(65536):
            break
    s.close()
    out({"done": True, "sent_bytes": size, "send_s": time.monotonic() - start, "subflows": subflows,
         "cpu_s": cpu_s() - cpu0, **facts})


def echo(proto, address, lifetime_s):
    """Echo every connection until its EOF (any number at once), for lifetime_s at most."""
    srv, end = listener(proto, address), time.monotonic() + float(lifetime_s)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    out("ready")
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.5):
            if key.fileobj is srv:
                for _ in range(64):
                    try:
                        conn, _peer = srv.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
                if data:
                    conn.setblocking(True)
                    conn.settimeout(LIMIT_S)
                    conn.sendall(data)
                    conn.setblocking(False)
                    continue
            except OSError:
                pass
            sel.unregister(conn)
            conn.close()


def echo_once(s, message):
    s.sendall(message)
    got = b""
    for _ in range(100):
        chunk = s.recv(len(message) - len(got))
        got += chunk
        if not chunk or len(got) == len(message):
            break
    if got != message:
        raise OSError(f"the echo ({len(got)} bytes) is not what was sent")


def churn(kind, proto, target, dest, count, timeout_s):
    """count connections one after the other: set up, echo 100 bytes, close."""
    import mpsim.live.client  # imported before the clock starts
    message, setups, totals, fallbacks, errors = b"x" * 100, [], [], 0, []
    cpu0, start = cpu_s(), time.monotonic()
    for _ in range(int(count)):
        if time.monotonic() - start > LIMIT_S:
            break
        t0 = time.monotonic()
        try:
            s, facts = connect(kind, proto, target, dest, float(timeout_s))
            t1 = time.monotonic()
            echo_once(s, message)
            s.close()
        except OSError as err:
            errors.append(f"{type(err).__name__}: {err}")
            continue
        if facts["convert_error"] is not None:
            fallbacks += 1
            errors.append(f"fell back to direct TCP after {t1 - t0:.3f} s: {facts['convert_error']}")
        setups.append(t1 - t0)
        totals.append(time.monotonic() - t0)
    out({"done": True, "connections": len(setups), "wall_s": time.monotonic() - start, "setup_s": setups,
         "total_s": totals, "fallbacks": fallbacks, "errors": errors[:5], "error_count": len(errors) - fallbacks,
         "cpu_s": cpu_s() - cpu0})


def hold(kind, proto, target, dest, count, timeout_s):
    """Open count connections (each echoes 100 bytes once), report, keep them idle until a line on
    stdin (or LIMIT_S), then close them all."""
    import resource as r
    soft, hard = r.getrlimit(r.RLIMIT_NOFILE)
    r.setrlimit(r.RLIMIT_NOFILE, (min(hard, max(soft, 2 * int(count) + 64)), hard))
    socks, errors = [], 0
    for _ in range(int(count)):
        try:
            s, _facts = connect(kind, proto, target, dest, float(timeout_s))
            echo_once(s, b"y" * 100)
            socks.append(s)
        except OSError:
            errors += 1
    time.sleep(0.2)  # late MP_JOINs
    out({"held": len(socks), "errors": errors, "subflows": sum(mptcp_subflows(s) for s in socks)})
    wait_stdin(LIMIT_S)
    for s in socks:
        s.close()
    out({"closed": len(socks)})


def relay(listen, upstream, count, lifetime_s):
    """A plain TCP port-forwarding copy relay (socat-like), a thread per direction; run under
    `mptcpize run`, its sockets are MPTCP sockets."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(endpoint(listen))
    srv.listen(1024)
    end = time.monotonic() + float(lifetime_s)

    def pump(a, b):
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        try:
            for _ in range(1 << 30):
                n = a.recv_into(buf)
                if not n:
                    break
                b.sendall(view[:n])
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    out("ready")
    for _ in range(int(count)):
        srv.settimeout(max(0.1, end - time.monotonic()))
        try:
            a, _peer = srv.accept()
        except socket.timeout:
            break
        a.settimeout(LIMIT_S)
        b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        b.settimeout(LIMIT_S)
        try:
            b.connect(endpoint(upstream))
        except OSError:
            a.close()
            continue
        for x, y in ((a, b), (b, a)):
            threading.Thread(target=pump, args=(x, y), daemon=True).start()


def rtt(destination, count):
    """Minimum and median time of a TCP connect to a closed port (SYN out, RST back)."""
    samples = []
    for _ in range(int(count)):
        s = socket.socket()
        s.settimeout(2)
        t0 = time.monotonic()
        try:
            s.connect((destination, 9))
        except ConnectionRefusedError:
            samples.append(time.monotonic() - t0)
        except OSError:
            pass
        s.close()
    samples.sort()
    out({"rtt_min_s": samples[0], "rtt_median_s": samples[len(samples) // 2], "samples": len(samples)})


def bare_convert(listen, lifetime_s):
    """The ceiling of a Python converter on one core (the setup benchmark's ``minimal-relay``): the
    fewest system calls a Convert relay can make, in one epoll loop. Accept (the Convert message is
    in the SYN data, RFC 8803 4.2), read it, a non-blocking MPTCP connect to its Connect TLV's IPv4
    destination, on EPOLLOUT reply with a bare Convert header (RFC 8803 5: version 1, Total Length
    1 word, magic 0x2263), then relay with recv/send and pass each end on with shutdown(SHUT_WR).
    Nothing else: no authorization, destination checks, limits, timers, Error TLVs, SO_LINGER or
    counters, and it assumes what the churn client sends: one Connect TLV for an IPv4 address,
    and reads small enough for the other socket's send buffer (100 bytes). Not a converter: a
    measure of what the live converter's checks and bookkeeping cost."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.setsockopt(socket.IPPROTO_TCP, 23, 1024)  # TCP_FASTOPEN: the server side, queue length
    lst.setsockopt(socket.IPPROTO_TCP, 34, 1)  # TCP_FASTOPEN_NO_COOKIE: SYN data without a cookie
    lst.bind(endpoint(listen))
    lst.listen(1024)
    lst.setblocking(False)
    poller = select.epoll()
    poller.register(lst.fileno(), select.EPOLLIN)
    reply, listener_fd = b"\x01\x01\x22\x63", lst.fileno()
    conns = {}  # fd -> [socket, the other leg's socket, client bytes after the request (until connected), EOF read]
    out("ready")
    end = time.monotonic() + float(lifetime_s)

    def drop(*socks):
        for sock in socks:
            conns.pop(sock.fileno(), None)
            sock.close()  # closing takes it out of the epoll set

    while time.monotonic() < end:
        for fd, _mask in poller.poll(1.0):
            if fd == listener_fd:
                for _ in range(64):
                    try:
                        up, _peer = lst.accept()
                    except BlockingIOError:
                        break
                    up.setblocking(False)
                    try:
                        request = up.recv(1020)
                        # the Connect TLV right after the 4-byte header: type, length, port, IPv4-mapped address
                        destination = (socket.inet_ntoa(request[20:24]), int.from_bytes(request[6:8], "big"))
                        down = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, IPPROTO_MPTCP)
                    except OSError:
                        up.close()
                        continue
                    down.connect_ex(destination)
                    conns[down.fileno()] = [down, up, request[request[1] * 4:], False]
                    poller.register(down.fileno(), select.EPOLLOUT)
                continue
            entry = conns.get(fd)
            if entry is None:
                continue
            sock, other, early, _eof = entry
            try:
                if early is not None:  # the downstream connect finished
                    sock.getpeername()  # ENOTCONN if it failed: no reply then
                    other.send(reply)
                    if early:
                        sock.send(early)
                    entry[2] = None
                    poller.modify(fd, select.EPOLLIN)
                    conns[other.fileno()] = [other, sock, None, False]
                    poller.register(other.fileno(), select.EPOLLIN)
                    continue
                data = sock.recv(65536)
                if data:
                    other.send(data)
                    continue
                other.shutdown(socket.SHUT_WR)
            except OSError:  # refused, reset: both legs go
                drop(sock, other)
                continue
            poller.unregister(fd)
            entry[3] = True
            if conns[other.fileno()][3]:
                drop(sock, other)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        modes = {"sink": sink, "send": send, "echo": echo, "churn": churn, "hold": hold, "relay": relay, "rtt": rtt,
                 "bare-convert": bare_convert}
        modes[mode](*args)
    except Exception as err:
        out({"failed": f"{type(err).__name__}: {err}"})
        sys.exit(1)
