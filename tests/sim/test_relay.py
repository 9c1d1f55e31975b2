"""The converter's relay between two TCP legs (mpsim/sim/relay.py, docs/sim.md "The relay"):
back-pressure from a full relay buffer and receive buffer into the upstream window, window
updates when the reader frees space (Linux tcp_cleanup_rbuf), zero-window probes, the slow leg
setting the pace, a lossy leg not spilling over, the relay CPU's per-byte cost, and the bytes
arriving intact. The expected values are worked by hand in each test."""

from __future__ import annotations

import hashlib
import random

import pytest
import simpy

from mpsim.sim.cpu import Cpu
from mpsim.sim.link import LinkDirection
from mpsim.sim.loss import Bernoulli
from mpsim.sim.relay import DEFAULT_RELAY_BUFFER_BYTES, RelayedTransfer
from mpsim.sim.transfer import BulkTransfer

MSS = 1448  # TCP payload per segment


class Tap:
    """A link trace that keeps (time, packet) of every packet offered, and calls ``probe`` then."""

    record_packets = True

    def __init__(self, probe=None):
        self.sent = []
        self.probe = probe

    def packet(self, time_s, direction, kind, packet, packet_id, reason=None):
        if kind == "sent":
            self.sent.append((time_s, packet))
            if self.probe is not None:
                self.probe(packet)


class DropData:
    """Loses every data segment (ACKs and window probes pass)."""

    def drops(self, packet, now):
        return packet.payload_bytes > 0


def direction(env, name, rate_bps, delay_s, **kwargs):
    return LinkDirection(env, name, delay_s=delay_s, rate_bps=rate_bps, **kwargs)


def test_window_closes_once_relay_buffer_and_receive_buffer_are_full():
    # Upload, TCP both legs, 100 Mbit/s and 5 ms each way; the server leg loses every data
    # segment, so nothing ever leaves the converter. Converter: receive buffer R = 8 segments
    # (11584 bytes, tcp_rmem[1] = [2]: no growth), relay buffer B = 4, send buffer S = 4.
    # The receive window (mpsim/sim/transfer.py, "Receive window"): before any data the buffer's
    # window is 11584 x 128/256 = 5792, the clamp one MSS less, 4344: the client's first window is
    # 3 segments. The first segment sets scaling_ratio = 1448 x 256 // 2304 = 160: the buffer's
    # window is 7240, and rcv_ssthresh grows to it. Each segment arrives (quick ACK) while the
    # relay still has room, so the ACK sees one unread segment: window (11584 - 1448) x 160/256 =
    # 6335, its right edge moving up one segment per ACK. The relay reads each at once: the first
    # 4 go on into the send buffer (and out, to be lost), the next 4 fill the relay buffer. From
    # the 9th segment on nothing is read: ACK k >= 10 sees k - 8 unread, window
    # (16 - k) x 1448 x 160/256 = (16 - k) x 905; at ACK 15 that is 905, below one MSS, so
    # __tcp_select_window offers nothing new and the edge stays at 14 x 1448 + 1810: 362 bytes,
    # less than a segment. The client sends exactly 15 segments, then waits: its zero-window
    # probes (one bare segment below snd_una) come after RTO, 2 RTO, 4 RTO, each answered with
    # the same 362.
    env = simpy.Environment()
    acks, data = Tap(), Tap()
    client = (direction(env, "c-up", 100e6, 0.005, trace=data), direction(env, "c-down", 100e6, 0.005, trace=acks))
    server = (direction(env, "s-up", 100e6, 0.005, loss=DropData()), direction(env, "s-down", 100e6, 0.005))
    transfer = RelayedTransfer(env, [client], [server], 100 * MSS, mptcp=False, relay_buffer_bytes=4 * MSS,
                               client_options={"rcv_buf_bytes": 8 * MSS}, server_options={"snd_buf_bytes": 4 * MSS})
    env.run(until=2.5)
    windows = [(p.ack // MSS, p.window_bytes) for _t, p in acks.sent]
    assert windows[:15] == [(k, 6335) for k in range(1, 10)] + [(k, (16 - k) * 905) for k in range(10, 15)] + [(15, 362)]
    assert windows[15:] == [(15, 362)] * 3  # the answers to three probes
    sent = [p for _t, p in data.sent]
    assert [p.seq for p in sent if p.payload_bytes] == [k * MSS for k in range(15)]
    assert [p.seq for _t, p in data.sent[:4]] == [0, MSS, 2 * MSS, 3 * MSS] and data.sent[3][0] > 0.01
    probes = [t for t, p in data.sent if not p.payload_bytes]
    last_ack_arrival_s = acks.sent[14][0] + 52 * 8 / 100e6 + 0.005
    rto_s = transfer.client_leg.sender.subflows[0].rto_s
    assert rto_s > 0.2
    assert probes == pytest.approx([last_ack_arrival_s + rto_s, last_ack_arrival_s + 3 * rto_s,
                                    last_ack_arrival_s + 7 * rto_s])
    relay = transfer.relay
    assert relay.held_bytes == relay.high_water_bytes == 4 * MSS
    assert transfer.client_leg.receiver.unread_bytes == 7 * MSS
    assert transfer.server_leg.sender.written_bytes == 4 * MSS
    record = transfer.result()
    assert not record.completed and record.client_window_probes == 3
    assert record.client_leg.retransmissions == 0 and record.client_leg.timeouts == 0


def test_download_back_pressure_closes_the_servers_window():
    # The same converter on a download: the server leg is upstream, the client leg loses every
    # data segment towards the client. Same hand-worked windows, now on the server leg's ACKs.
    env = simpy.Environment()
    acks = Tap()
    client = (direction(env, "c-up", 100e6, 0.005), direction(env, "c-down", 100e6, 0.005, loss=DropData()))
    server = (direction(env, "s-up", 100e6, 0.005, trace=acks), direction(env, "s-down", 100e6, 0.005))
    transfer = RelayedTransfer(env, [client], [server], 100 * MSS, direction="download", mptcp=False,
                               relay_buffer_bytes=4 * MSS, server_options={"rcv_buf_bytes": 8 * MSS},
                               client_options={"snd_buf_bytes": 4 * MSS})
    env.run(until=0.2)
    windows = [(p.ack // MSS, p.window_bytes) for _t, p in acks.sent]
    assert windows == [(k, 6335) for k in range(1, 10)] + [(k, (16 - k) * 905) for k in range(10, 15)] + [(15, 362)]
    assert transfer.relay.high_water_bytes == 4 * MSS


class CountingSink:
    """A reader that takes nothing until told to."""

    def on_data(self, receiver, payload, offset, length):
        pass


def test_a_read_announces_the_window_only_when_it_doubles():
    # Linux tcp_cleanup_rbuf (net/ipv4/tcp.c): after a read, an ACK goes out at once if the
    # window last advertised is at most half the clamp and the new one at least twice it.
    # Receive buffer 8 segments (11584 bytes, no growth; its window 11584 x 160/256 = 7240, the
    # clamp), nothing read: k unread segments leave (8 - k) x 905 of window; the 7th leaves 905,
    # below one MSS, so the edge stays where the 6th's ACK put it: 362 bytes, and the sender
    # stops. rcv_ssthresh stopped at 6335 (the free space when the first segment arrived).
    # Reading one segment at a time (all in one instant), from 7 unread: 6 left -> 1810
    # (ACK: 2 x 362 <= 7240 and 1810 >= 2 x 362), 5 -> 2715 (no: < 2 x 1810), 4 -> 3620 (ACK),
    # 3 -> 4525 (no), 2 -> 5430, 1 -> 6335 and 0 -> 6335 (rcv_ssthresh): none reaches 7240.
    env = simpy.Environment()
    acks = Tap()
    paths = [(direction(env, "fwd", 100e6, 0.005), direction(env, "bwd", 100e6, 0.005, trace=acks))]
    transfer = BulkTransfer(env, paths, 100 * MSS, rcv_buf_bytes=8 * MSS, sink=CountingSink())
    env.run(until=0.05)
    receiver = transfer.receiver
    assert [p.window_bytes for _t, p in acks.sent] == [(8 - k) * 905 for k in range(1, 7)] + [362]
    assert receiver.unread_bytes == 7 * MSS
    before = len(acks.sent)
    announced = []
    for _ in range(7):
        receiver.consume(MSS)
        announced.append(acks.sent[-1][1].window_bytes if len(acks.sent) > before else None)
        before = len(acks.sent)
    assert announced == [1810, None, 3620, None, None, None, None]
    assert receiver.window_updates == 2
    with pytest.raises(ValueError, match="consume: 1 bytes asked, 0 unread"):
        receiver.consume(1)


def _bulk_duration_s(rate_bps, size_bytes, **options):
    env = simpy.Environment()
    paths = [(direction(env, "f", rate_bps, 0.005, queue_limit_packets=100), direction(env, "b", rate_bps, 0.005))]
    transfer = BulkTransfer(env, paths, size_bytes, **options)
    env.run(until=env.any_of([transfer.done, env.timeout(60)]))
    return transfer.result().duration_s


@pytest.mark.parametrize("way", ["upload", "download"])
def test_the_slow_leg_sets_the_pace_and_the_fast_one_waits(way):
    # Client leg 50 Mbit/s, server leg 5 Mbit/s (5 ms each way, 100-packet queues), 2 MB,
    # converter buffers 64 KiB each way and the default 64 KiB relay buffer. Upload: the slow
    # leg is downstream of the relay; download: upstream, so the fast client leg downstream
    # idles. Either way the transfer takes what 2 MB over the slow leg alone takes, plus the
    # fast leg's share (at most a few ms), and the fast upstream leg never retransmits: it
    # waits on the window. The converter's receive buffer keeps bytes unread (2 or more
    # segments when an ACK leaves) only while the relay buffer is full and the downstream send
    # buffer has no room; the ACK-clocked window then stays a few segments wide (below a quarter
    # of the 64 KiB buffer) rather than closing.
    size = 2_000_000
    data = random.Random(3).randbytes(size)
    env = simpy.Environment()
    fast, slow = 50e6, 5e6
    checks = {"held_back": 0, "min_window": 65536}

    def check_closed(ack):
        receiver = transfer.relay.upstream.receiver
        checks["min_window"] = min(checks["min_window"], ack.window_bytes)
        sender = transfer.relay.downstream.sender  # the relay writes no more than its send buffer takes
        assert sender.written_bytes - sender.data_una <= 65536
        if receiver.unread_bytes >= 2 * MSS:
            relay = transfer.relay
            assert relay.held_bytes + relay.copying_bytes == DEFAULT_RELAY_BUFFER_BYTES
            assert relay.downstream.sender.send_buffer_room() <= 0
            checks["held_back"] += 1

    tap = Tap(check_closed)
    if way == "upload":
        client = (direction(env, "c-up", fast, 0.005, queue_limit_packets=100),
                  direction(env, "c-down", fast, 0.005, trace=tap))
        server = (direction(env, "s-up", slow, 0.005, queue_limit_packets=100), direction(env, "s-down", slow, 0.005))
        options = {"client_options": {"rcv_buf_bytes": 65536}, "server_options": {"snd_buf_bytes": 65536}}
    else:
        client = (direction(env, "c-up", fast, 0.005), direction(env, "c-down", fast, 0.005, queue_limit_packets=100))
        server = (direction(env, "s-up", slow, 0.005), direction(env, "s-down", slow, 0.005, queue_limit_packets=100))
        options = {"client_options": {"snd_buf_bytes": 65536}, "server_options": {"rcv_buf_bytes": 65536}}
    transfer = RelayedTransfer(env, [client], [server], size, direction=way, mptcp=False, payload=data, **options)
    env.run(until=env.any_of([transfer.done, env.timeout(60)]))
    record = transfer.result()
    assert record.completed and record.payload_sha256 == hashlib.sha256(data).hexdigest()
    alone_s = _bulk_duration_s(slow, size, snd_buf_bytes=65536, rcv_buf_bytes=65536)
    assert alone_s <= record.duration_s <= alone_s * 1.02
    fast_leg = record.client_leg if way == "upload" else record.server_leg
    if way == "upload":  # the fast leg upstream: held back by the window, never lost
        assert fast_leg.retransmissions == 0 and fast_leg.timeouts == 0
        assert checks["held_back"] > 0 and checks["min_window"] < 65536 / 4
        assert transfer.client_leg.receiver.window_updates > 0
        # it finishes no earlier than the slow leg's time for what the converter cannot hold
        held_bytes = 65536 + DEFAULT_RELAY_BUFFER_BYTES + 65536
        assert fast_leg.duration_s >= (size - held_bytes) * 8 / slow
        assert record.relay_high_water_bytes == DEFAULT_RELAY_BUFFER_BYTES
    else:  # the slow leg upstream: each segment passes the relay at once, the fast leg keeps up
        assert record.relay_high_water_bytes == MSS
        assert record.client_leg.retransmissions == 0 and record.client_window_probes == 0


def test_a_lossy_server_leg_leaves_the_client_subflows_waiting_not_retransmitting():
    # Upload over two clean client paths (MPTCP, 20 + 20 Mbit/s) into a server leg of 10 Mbit/s
    # losing 2 % of its data: the server leg recovers its losses; the client leg's subflows see
    # the converter's window close (64 KiB buffers) and wait, with no loss of their own to repair.
    env = simpy.Environment()
    size = 1_500_000
    data = random.Random(7).randbytes(size)
    client_paths = [(direction(env, f"c{i}-up", 20e6, 0.01, queue_limit_packets=100),
                     direction(env, f"c{i}-down", 20e6, 0.01)) for i in range(2)]
    server = (direction(env, "s-up", 10e6, 0.005, queue_limit_packets=100, loss=Bernoulli(0.02, random.Random(1))),
              direction(env, "s-down", 10e6, 0.005))
    transfer = RelayedTransfer(env, client_paths, [server], size, payload=data,
                               client_options={"rcv_buf_bytes": 65536}, server_options={"snd_buf_bytes": 65536})
    env.run(until=env.any_of([transfer.done, env.timeout(60)]))
    record = transfer.result()
    assert record.completed and record.payload_sha256 == hashlib.sha256(data).hexdigest()
    assert record.server_leg.retransmissions > 0
    assert record.client_leg.retransmissions == 0 and record.client_leg.timeouts == 0
    assert record.client_leg.reinjected_bytes == 0
    assert record.subflows == 2 and all(record.subflow_bytes)
    assert transfer.client_leg.receiver.window_updates > 0  # the window closed and reopened


def test_the_relay_cpu_cost_shows_in_the_duration():
    # One core at 0.5 us per byte relays 2 MB/s (16 Mbit/s), below both 100 Mbit/s legs: 1 MB
    # takes at least 0.5 s of CPU, every byte copied once (busy time = size x cost), and the
    # transfer ends within a few ms of the last job (one segment's transmission and a 5 ms
    # leg). Without the CPU it takes about a tenth of that.
    size = 1_000_000
    per_byte_s = 0.5e-6

    def run(with_cpu):
        env = simpy.Environment()
        client = (direction(env, "c-up", 100e6, 0.005, queue_limit_packets=100), direction(env, "c-down", 100e6, 0.005))
        server = (direction(env, "s-up", 100e6, 0.005, queue_limit_packets=100), direction(env, "s-down", 100e6, 0.005))
        cpu = Cpu(env, 1) if with_cpu else None
        transfer = RelayedTransfer(env, [client], [server], size, mptcp=False, cpu=cpu,
                                   cpu_per_byte_s=per_byte_s if with_cpu else 0.0)
        env.run(until=env.any_of([transfer.done, env.timeout(60)]))
        return transfer.result(), cpu

    record, cpu = run(True)
    assert record.completed
    assert cpu.busy_s == pytest.approx(size * per_byte_s)
    assert cpu.jobs == record.relay_cpu_jobs > 1
    assert size * per_byte_s < record.duration_s < size * per_byte_s + 0.1
    free, _ = run(False)
    assert free.duration_s < record.duration_s / 4 and free.relay_cpu_jobs == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"direction": "sideways"}, "direction must be one of"),
    ({"relay_buffer_bytes": 0}, "relay_buffer_bytes must be a positive int"),
    ({"cpu_per_byte_s": 1e-9}, "cpu_per_byte_s > 0 needs a cpu"),
    ({"cpu_per_byte_s": -1.0}, "cpu_per_byte_s must be >= 0"),
    ({"client_options": {"window": 3}}, "unknown client_options window"),
    ({"payload": b"abc"}, "payload holds 3 bytes, size_bytes is 10000"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    env = simpy.Environment()
    pair = (direction(env, "a", 1e6, 0.01), direction(env, "b", 1e6, 0.01))
    with pytest.raises(ValueError, match=message):
        RelayedTransfer(env, [pair], [pair], 10_000, mptcp=False, **kwargs)


def test_nagle_keeps_a_relayed_mptcp_leg_from_sending_short_segments():
    # Download through the relay: the server leg is TCP (1,448-byte segments), the client leg
    # MPTCP (1,420-byte payloads). The relay writes what each server segment brought, 1,448
    # bytes; without Nagle each write would leave a 28-byte segment behind its full one (about
    # one short segment per full one). With Nagle (RFC 896, Linux's default) only two are short:
    # the first write's tail, sent while nothing was in flight (28 bytes), and the stream's
    # last bytes: after the 28, 999,972 = 704 x 1,420 + 292, so 706 data segments in all.
    env = simpy.Environment()
    tap = Tap()
    client = (direction(env, "c-up", 50e6, 0.005), direction(env, "c-down", 50e6, 0.005, trace=tap,
                                                                 queue_limit_packets=100))
    server = (direction(env, "s-up", 100e6, 0.005), direction(env, "s-down", 100e6, 0.005, queue_limit_packets=100))
    transfer = RelayedTransfer(env, [client], [server], 1_000_000, direction="download", mptcp=True)
    env.run(until=env.any_of([transfer.done, env.timeout(60)]))
    assert transfer.result().completed
    sizes = [p.payload_bytes for _t, p in tap.sent if p.payload_bytes]
    assert len(sizes) == 706 and sum(sizes) == 1_000_000  # nothing lost, nothing sent twice
    assert [size for size in sizes if size < 1420] == [28, 1_000_000 - 28 - 704 * 1420]
    assert 1_000_000 - 28 - 704 * 1420 == 292
