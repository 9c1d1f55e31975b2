"""Kernel departures from RFC 8684, measured on this machine's kernel (docs/kernel-departures.md).

THESE TESTS DOCUMENT A KERNEL BEHAVIOUR, NOT THE MODEL'S AND NOT THE RFC'S. They assert what the
testbed's kernel (Linux 6.18) did when the departures page was written, so that a kernel that
behaves differently is noticed: a failure here means "re-measure and update
docs/kernel-departures.md", not "fix mpsim". Root and namespaces only (skipped elsewhere with
the reason); every peer runs with a timeout and every byte received is checked.

Cases (docs/kernel-departures.md sections 3 and 4):
- the MPTCP option stripped from non-SYN packets in one direction only (xt TCPOPTSTRIP in the
  middle namespace): server-to-client stripped, client-to-server stripped;
- the MPTcpExt Blackhole counter after a middlebox that drops MP_CAPABLE SYNs (the catalogue's
  "drop-mp-capable-syn", built by mpsim/testbed/shaping.py), and what it switches off.
"""

import json
import subprocess

import pytest

from mpsim.testbed import PathSpec, Testbed, counter_delta
from mpsim.testbed.shaping import KERNEL_MIDDLEBOXES, MPTCP_OPTION_KIND

from .conftest import start_ready

kernel = pytest.mark.usefixtures("testbed_available")
PORT = 5202
PEER_TIMEOUT_S = 8.0

# The server sends SIZE bytes of a counter pattern (4-byte big-endian words: a byte out of place
# shows where) and closes; the client reads until EOF or its deadline and reports the first
# offset that differs. Every socket operation is bounded; results are one JSON line.
PEER_PROGRAM = r'''
import json, socket, struct, sys, time
IPPROTO_MPTCP, SOL_MPTCP, MPTCP_INFO = 262, 284, 1
TIMEOUT_S = float(sys.argv[2])
mode, args = sys.argv[1], sys.argv[3:]

def pattern(size):
    return b"".join(struct.pack(">I", i) for i in range(size // 4 + 1))[:size]

def mptcp_active(s):
    try:
        s.getsockopt(SOL_MPTCP, MPTCP_INFO, 32)
        return True
    except OSError:
        return False    # the MPTCP socket fell back to TCP

if mode == "server":
    port, size = int(args[0]), int(args[1])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.settimeout(TIMEOUT_S)
    srv.bind(("0.0.0.0", port)); srv.listen(4)
    print("ready", flush=True)
    conn, _ = srv.accept(); conn.settimeout(TIMEOUT_S)
    result = {"sent_bytes": 0, "send_error": None}
    try:
        conn.sendall(pattern(size)); result["sent_bytes"] = size
        result["mptcp_after_send"] = mptcp_active(conn)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)    # the client's close (bounded by the timeout)
    except OSError as exc:
        result["send_error"] = type(exc).__name__
    result["mptcp_at_end"] = mptcp_active(conn)
    print(json.dumps(result), flush=True)
else:
    src, dst, port, size = args[0], args[1], int(args[2]), int(args[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    s.settimeout(TIMEOUT_S); s.bind((src, 0))
    start = time.monotonic()
    s.connect((dst, port))
    connect_s = time.monotonic() - start
    mptcp_at_connect = mptcp_active(s)
    got, deadline, timed_out = bytearray(), time.monotonic() + TIMEOUT_S, False
    s.settimeout(1.0)
    for _ in range(100000):
        if time.monotonic() > deadline:
            timed_out = True; break
        try:
            data = s.recv(1 << 16)
        except socket.timeout:
            continue
        except OSError as exc:
            break
        if not data:
            break
        got += data
    want = pattern(size)
    mismatch = next((i for i in range(min(len(got), size)) if got[i] != want[i]), None) \
        if bytes(got[:size]) != want[:len(got)] else None
    print(json.dumps({"connect_s": connect_s, "mptcp_at_connect": mptcp_at_connect,
                      "mptcp_at_end": mptcp_active(s), "received_bytes": len(got),
                      "first_wrong_byte": mismatch, "timed_out": timed_out,
                      "duration_s": time.monotonic() - start}), flush=True)
    s.close()
'''


def peer(*args) -> list[str]:
    import sys
    return [sys.executable, "-c", PEER_PROGRAM, args[0], str(PEER_TIMEOUT_S), *map(str, args[1:])]


def strip_non_syn(tb: Testbed, from_role: str) -> None:
    """TCPOPTSTRIP of the MPTCP option on every non-SYN packet that enters the converter (here a
    router) from ``from_role``'s side: "server" strips server-to-client, "client" client-to-server."""
    device = "server" if from_role == "server" else "path0"
    tb.run("converter", ["iptables", "-t", "mangle", "-A", "PREROUTING", "-i", device, "-p", "tcp",
                         "--tcp-flags", "SYN", "NONE", "-m", "comment", "--comment", "strip_non_syn",
                         "-j", "TCPOPTSTRIP", "--strip-options", str(MPTCP_OPTION_KIND)],
           timeout_s=10, check=True)


def stripped_packets(tb: Testbed) -> int:
    done = tb.run("converter", ["iptables", "-t", "mangle", "-L", "PREROUTING", "-v", "-x", "-n"],
                  timeout_s=10, check=True)
    return sum(int(line.split()[0]) for line in done.stdout.splitlines() if "strip_non_syn" in line)


def download(tb: Testbed, size_bytes: int) -> tuple[dict, dict, dict]:
    """One MPTCP download server -> client; (client result, server result, counter deltas)."""
    before = {role: tb.counters(role) for role in ("client", "server")}
    server = start_ready(tb, "server", peer("server", PORT, size_bytes))
    done = tb.run("client", peer("client", tb.addresses.client[0], tb.addresses.server, PORT, size_bytes),
                  timeout_s=PEER_TIMEOUT_S * 3)
    assert done.returncode == 0, done.stderr
    client = json.loads(done.stdout.strip().splitlines()[-1])
    try:
        out, _ = server.communicate(timeout=PEER_TIMEOUT_S * 2)
    except subprocess.TimeoutExpired:
        out = "{}"
    lines = [line for line in out.splitlines() if line.startswith("{")]
    server_result = json.loads(lines[-1]) if lines else {}
    deltas = {role: counter_delta(before[role], tb.counters(role)) for role in before}
    return client, server_result, deltas


def mib(deltas: dict, role: str, name: str) -> int:
    return deltas[role].get(f"MPTcpExt.{name}", 0)


SIZE_BYTES = 1_000_000


@kernel
def test_kernel_strip_server_to_client_data_corrupts_the_clients_bytes():
    """Documents a kernel behaviour (docs/kernel-departures.md 3): the client falls back, the
    server stays in MPTCP, and the client application reads wrong bytes."""
    with Testbed(paths=[PathSpec()]) as tb:
        strip_non_syn(tb, "server")
        client, server, deltas = download(tb, SIZE_BYTES)
        print(json.dumps({"client": client, "server": server, "stripped": stripped_packets(tb),
                          "client_mib": {k: v for k, v in deltas["client"].items() if k.startswith("MPTcpExt")},
                          "server_mib": {k: v for k, v in deltas["server"].items() if k.startswith("MPTcpExt")}}))
        assert stripped_packets(tb) > 0
        assert client["mptcp_at_connect"]  # the handshake's options passed (SYNs are not stripped)
        assert not client["mptcp_at_end"]  # the client fell back to TCP ...
        assert mib(deltas, "client", "MPCapableDataFallback") == 1  # (data without a DSS mapping)
        assert server.get("mptcp_at_end") is True  # ... the server did not ...
        # (its data ACKed without a DATA_ACK is no fallback trigger for it, and no counter)
        assert mib(deltas, "server", "MPCapableDataFallback") == 0 and mib(deltas, "server", "MPCapableFallbackACK") == 0
        assert mib(deltas, "server", "MPTCPRetrans") > 0  # ... and retransmits at the MPTCP level ...
        # ... which the fallen-back client reads as new stream bytes: wrong from about 64 KB on.
        assert client["first_wrong_byte"] is not None and 16_000 <= client["first_wrong_byte"] < SIZE_BYTES


@kernel
def test_kernel_strip_client_to_server_falls_back_cleanly():
    """Documents a kernel behaviour (docs/kernel-departures.md 3): a clean fallback, every byte right."""
    with Testbed(paths=[PathSpec()]) as tb:
        strip_non_syn(tb, "client")
        client, server, deltas = download(tb, SIZE_BYTES)
        print(json.dumps({"client": client, "server": server, "stripped": stripped_packets(tb),
                          "client_mib": {k: v for k, v in deltas["client"].items() if k.startswith("MPTcpExt")},
                          "server_mib": {k: v for k, v in deltas["server"].items() if k.startswith("MPTcpExt")}}))
        assert stripped_packets(tb) > 0
        assert client["received_bytes"] == SIZE_BYTES and client["first_wrong_byte"] is None
        assert not client["timed_out"] and server["send_error"] is None
        assert not client["mptcp_at_end"] and server["mptcp_at_end"] is False  # both ends fell back
        assert mib(deltas, "server", "MPCapableFallbackACK") == 1  # the server's: no DSS on the third ACK
        assert mib(deltas, "server", "MPTCPRetrans") == 0


@kernel
def test_kernel_blackhole_counts_the_answered_plain_syn_and_disables_active_mptcp():
    """Documents a kernel behaviour (docs/kernel-departures.md 4): MP_CAPABLE SYNs dropped (the
    catalogue's drop-mp-capable-syn), the plain SYN that follows is answered: Blackhole counts at
    that SYN-ACK, in the stack, whatever the application does next, and the next connect of the
    namespace goes out as plain TCP at once (MPCapableSYNTXDisabled)."""
    box = KERNEL_MIDDLEBOXES["drop-mp-capable-syn"].box
    with Testbed(paths=[PathSpec(middlebox=box)],
                 sysctls={"net.mptcp.syn_retrans_before_tcp_fallback": "2",
                          "net.ipv4.tcp_syn_linear_timeouts": "4", "net.mptcp.blackhole_timeout": "3600"}) as tb:
        first, _, first_deltas = download(tb, 10_000)
        second, _, second_deltas = download(tb, 10_000)
        dropped = tb.counters("converter").get("nft.mb_path0_up_drop_mpc_syn.packets")
        print(json.dumps({"first": first, "second": second, "dropped": dropped,
                          "first_mib": {k: v for k, v in first_deltas["client"].items() if k.startswith("MPTcpExt")},
                          "second_mib": {k: v for k, v in second_deltas["client"].items() if k.startswith("MPTcpExt")}}))
        # Three MP_CAPABLE SYNs at 0, 1 and 2 s (linear timeouts), dropped; the plain SYN at 3 s passes.
        assert dropped == 3
        assert 2.9 < first["connect_s"] < 4.0 and not first["mptcp_at_connect"]
        assert first["first_wrong_byte"] is None and first["received_bytes"] == 10_000
        assert mib(first_deltas, "client", "MPCapableSYNTX") == 1  # counted once, at the first SYN
        assert mib(first_deltas, "client", "MPCapableSYNTXDrop") == 1  # MP_CAPABLE left out of the third retry
        assert mib(first_deltas, "client", "Blackhole") == 1
        # The next connection: no MP_CAPABLE at all, no wait.
        assert second["connect_s"] < 0.5 and not second["mptcp_at_connect"]
        assert mib(second_deltas, "client", "MPCapableSYNTXDisabled") == 1
        assert mib(second_deltas, "client", "MPCapableSYNTX") == 0
