"""Bulk transfer: goodput against the bottleneck, the Mathis estimate and the buffer limit;
MPTCP aggregation, LIA's fairness and the lowest-RTT-first scheduler; loss recovery timing
(fast retransmit, RTO back-off, delayed ACKs); exactly-once delivery; header accounting
against the wire encoding; determinism."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st

from mpsim.sim.link import LinkDirection, schedule_call
from mpsim.sim.loss import Bernoulli, GilbertElliott
from mpsim.sim.seeds import component_rng
from mpsim.sim.transfer import BulkTransfer, Segment, _add_range, deliver_segment, sack_capacity
from mpsim.wire.segment import decode_packet, encode_packet

MSS = 1448
MPTCP_PAYLOAD = 1420
MIB = 2**20


def make_path(env, name, *, rate_bps, one_way_delay_s, queue_packets=None, loss=None, jitter_s=0.0, seed=1,
              trace=None):
    """A path whose forward direction is the bottleneck; ACKs return at the same rate and delay."""
    forward = LinkDirection(env, f"{name}-fwd", delay_s=one_way_delay_s, rate_bps=rate_bps,
                            queue_limit_packets=queue_packets, loss=loss, jitter_s=jitter_s,
                            rng=component_rng(seed, 0, f"{name}-jitter") if jitter_s else None, trace=trace)
    backward = LinkDirection(env, f"{name}-bwd", delay_s=one_way_delay_s, rate_bps=rate_bps, trace=trace)
    return forward, backward


def bernoulli(loss_prob, seed, name="loss"):
    return Bernoulli(loss_prob, component_rng(seed, 0, name))


def run_transfer(paths_spec, size_bytes, *, seed=1, until=None, **kwargs):
    env = simpy.Environment()
    paths = [make_path(env, f"p{i}", seed=seed, **spec) for i, spec in enumerate(paths_spec)]
    transfer = BulkTransfer(env, paths, size_bytes, **kwargs)
    env.run(until=until)
    return transfer.result()


def delay_first_copies(env, direction, delays):
    """Make ``direction`` deliver the first copy of the data segments ``delays`` names ({segment
    index: extra seconds}) that much later: reordering. Retransmissions arrive on time."""
    pending = {i * MSS: extra_s for i, extra_s in delays.items()}

    def deliver_late(segment):
        extra_s = pending.pop(segment.seq, None) if segment.payload_bytes else None
        if extra_s is None:
            deliver_segment(segment)
        else:
            schedule_call(env, extra_s, lambda _event: deliver_segment(segment))

    direction.deliver = deliver_late


class Tap:
    """A link trace that keeps (time, packet) of every packet offered."""

    record_packets = True

    def __init__(self):
        self.sent = []

    def packet(self, time_s, direction, kind, packet, packet_id, reason=None):
        if kind == "sent":
            self.sent.append((time_s, packet))


class DropSegments:
    """Drops the first ``copies`` copies of the data segments whose subflow seq is in ``seqs``."""

    def __init__(self, seqs, copies=1):
        self.pending = dict.fromkeys(seqs, copies)

    def drops(self, packet, now):
        if packet.payload_bytes and self.pending.get(packet.seq):
            self.pending[packet.seq] -= 1
            return True
        return False


class Blackout:
    """Drops everything offered in [start_s, end_s): a path that fails for a while."""

    def __init__(self, start_s, end_s):
        self.start_s, self.end_s = start_s, end_s

    def drops(self, packet, now):
        return self.start_s <= now < self.end_s


# --- single path ------------------------------------------------------------------------------

@pytest.mark.parametrize("cc", ["cubic", "reno"])
def test_single_path_goodput_reaches_the_bottleneck(cc):
    # 10 Mbit/s, 20 ms RTT, a queue of one BDP, buffers far above the BDP (25 KB).
    rate_bps = 10e6
    record = run_transfer([dict(rate_bps=rate_bps, one_way_delay_s=0.01, queue_packets=17)], 20 * MIB, cc=cc)
    ceiling_bps = rate_bps * MSS / 1500  # 52 header bytes per 1448 payload bytes, no link framing
    assert record.completed and record.bytes_delivered == 20 * MIB
    assert record.goodput_bps <= ceiling_bps
    assert record.goodput_bps > 0.98 * ceiling_bps  # slow start and the losses at queue overflow cost < 2%


@pytest.mark.parametrize("loss_prob", [0.005, 0.01])
def test_reno_follows_the_mathis_estimate_under_random_loss(loss_prob):
    """MSS/RTT * sqrt(3/2) / sqrt(p) on a path the loss, not the rate, limits.

    Tolerance +-25%: the constant sqrt(3/2) is for periodic loss; independent loss gives about
    1.31 instead (Ott, Kemperman and Mathis 1996), while each recovery costs an RTT without
    growth and some retransmissions are lost too, which the formula ignores; at these windows
    (10 to 17 segments) the model gives 0.83 to 0.9 of the estimate. RFC 9438 CUBIC must do
    better than Reno at the same loss rate (its beta is 0.7 and its Reno-friendly alpha switches
    to 1 once W_est regains cwnd_prior). Linux CUBIC has no such switch: at these windows its Reno
    estimate (alpha 3(1-0.7)/(1+0.7), beta 0.7) has Reno's Mathis constant, and its HZ/32 skip
    delays the catch-up, so it stays inside the same band, near Reno or below.
    """
    rtt_s = 0.02
    spec = dict(rate_bps=100e6, one_way_delay_s=rtt_s / 2, queue_packets=1000, loss=bernoulli(loss_prob, 7))
    reno = run_transfer([spec], 12 * MIB, cc="reno")
    mathis_bps = MSS * 8 / rtt_s * math.sqrt(1.5) / math.sqrt(loss_prob)
    assert 0.75 * mathis_bps < reno.goodput_bps < 1.25 * mathis_bps
    assert reno.fast_recoveries > 20 and reno.timeouts <= reno.fast_recoveries / 10
    spec["loss"] = bernoulli(loss_prob, 7)
    rfc_cubic = run_transfer([spec], 12 * MIB, cc="cubic-rfc9438")
    assert rfc_cubic.goodput_bps > 1.05 * reno.goodput_bps
    spec["loss"] = bernoulli(loss_prob, 7)
    linux_cubic = run_transfer([spec], 12 * MIB, cc="cubic")
    assert 0.7 * mathis_bps < linux_cubic.goodput_bps < min(1.25 * mathis_bps, rfc_cubic.goodput_bps)


def test_receive_buffer_limits_throughput_to_buffer_over_rtt_and_large_buffers_gain_50x():
    # 50 Mbit/s, 200 ms RTT: a BDP of 1.25 MB. A 16 KiB receive buffer (tcp_rmem[1] and [2]) offers
    # 16384 x 160/256 = 10240 bytes of window once the receiver has measured a 1448-byte segment
    # (scaling_ratio = 1448 x 256 // 2304 = 160): 7 whole segments per RTT.
    path = dict(rate_bps=50e6, one_way_delay_s=0.1, queue_packets=1000)
    small = run_transfer([path], 2 * MIB, rcv_buf_bytes=16 * 1024)
    window_bytes = (16384 * 160 // 256 // MSS) * MSS
    assert small.timeouts == 0 and small.retransmissions == 0
    # The odd segment of each flight waits for the 40 ms delayed-ACK timer: a few % below.
    assert 0.85 * window_bytes * 8 / 0.2 < small.goodput_bps <= window_bytes * 8 / 0.2
    large = run_transfer([path], 40 * MIB, rcv_buf_bytes=16 * MIB, snd_buf_bytes=16 * MIB)
    assert large.goodput_bps > 50 * small.goodput_bps
    # The send buffer limits the same way, counting payload: 11 segments per RTT.
    small_send = run_transfer([path], 2 * MIB, snd_buf_bytes=16 * 1024)
    send_window_bytes = (16 * 1024 // MSS) * MSS
    assert 0.85 * send_window_bytes * 8 / 0.2 < small_send.goodput_bps <= send_window_bytes * 8 / 0.2


def test_fast_retransmit_repairs_a_single_loss_within_an_rtt():
    env = simpy.Environment()
    tap = Tap()
    lost_seq = 30 * MSS  # in the second flight of slow start: hardly any queue yet
    forward, backward = make_path(env, "p", rate_bps=10e6, one_way_delay_s=0.01, trace=tap)
    forward.loss = DropSegments({lost_seq})
    transfer = BulkTransfer(env, [(forward, backward)], 2 * MIB, cc="cubic")
    env.run()
    record = transfer.result()
    assert (record.retransmissions, record.fast_recoveries, record.timeouts) == (1, 1, 0)
    sends = [t for t, p in tap.sent if p.payload_bytes and p.seq == lost_seq]
    assert len(sends) == 2
    # Three duplicate ACKs come back about one RTT (20 ms + a little queueing) later, not after an RTO.
    assert 0.02 < sends[1] - sends[0] < 0.03


def test_a_lost_retransmission_is_detected_without_a_timeout():
    # The retransmission is lost too; new data sent after it gets SACKed, which shows it lost.
    env = simpy.Environment()
    forward, backward = make_path(env, "p", rate_bps=10e6, one_way_delay_s=0.01)
    forward.loss = DropSegments({30 * MSS}, copies=2)
    transfer = BulkTransfer(env, [(forward, backward)], 2 * MIB)
    env.run()
    record = transfer.result()
    assert (record.retransmissions, record.fast_recoveries, record.timeouts) == (2, 1, 0)


def test_rto_backs_off_exponentially_through_a_path_outage():
    env = simpy.Environment()
    tap = Tap()
    forward, backward = make_path(env, "p", rate_bps=10e6, one_way_delay_s=0.01, queue_packets=50, trace=tap)
    forward.loss = Blackout(1.0, 4.0)
    data = random.Random(3).randbytes(4 * MIB)
    transfer = BulkTransfer(env, [(forward, backward)], len(data), payload=data)
    env.run()
    record = transfer.result()
    assert record.completed and record.payload_sha256 == hashlib.sha256(data).hexdigest()
    assert record.timeouts >= 3
    sends_per_seq = {}
    for time_s, packet in tap.sent:
        if packet.payload_bytes:
            sends_per_seq.setdefault(packet.seq, []).append(time_s)
    head = max(sends_per_seq.values(), key=len)  # the first unacknowledged segment at the outage
    gaps = [b - a for a, b in zip(head[1:], head[2:])]  # between retransmissions
    assert len(gaps) >= 2
    for earlier, later in zip(gaps, gaps[1:]):
        assert later == pytest.approx(2 * earlier, rel=1e-6)  # RFC 6298 5.5
    assert gaps[0] >= 0.2  # never below the minimum RTO (head[1] may be a fast retransmit)


def test_delayed_acks_every_second_segment_or_after_40_ms():
    # A receiver in pingpong mode (it answered a request before the bulk, as the kernel world's
    # do) sends no quick ACKs: one ACK per two full segments, and 2000 is even (no timer).
    record = run_transfer([dict(rate_bps=10e6, one_way_delay_s=0.01)], 2000 * MSS, cc="reno",
                          receiver_pingpong=True)
    assert record.segments_sent == 2000
    assert record.acks_sent == 2000 // 2
    # Otherwise 16 quick ACKs at the start, and one per segment that grows rcv_ssthresh
    # (tcp_grow_window) while DRS keeps room above it: far more (tests/sim/test_receive_window.py).
    quick_start = run_transfer([dict(rate_bps=10e6, one_way_delay_s=0.01)], 2000 * MSS, cc="reno")
    assert quick_start.acks_sent > 16 + (2000 - 16) // 2 + 100
    # A lone segment without quick ACKs is acknowledged by the 40 ms timer: the RTT sample shows it.
    lone = run_transfer([dict(rate_bps=None, one_way_delay_s=0.01)], 1000, quickack_segments=0)
    assert lone.subflow_srtt_s[0] == pytest.approx(0.02 + 0.04)
    quick = run_transfer([dict(rate_bps=None, one_way_delay_s=0.01)], 1000)
    assert quick.subflow_srtt_s[0] == pytest.approx(0.02)


# --- MPTCP ------------------------------------------------------------------------------------

def test_mptcp_uncoupled_goodput_is_the_sum_of_the_paths():
    paths = [dict(rate_bps=10e6, one_way_delay_s=0.01, queue_packets=50),
             dict(rate_bps=20e6, one_way_delay_s=0.02, queue_packets=100)]
    record = run_transfer(paths, 16 * MIB, mptcp=True, cc="cubic")
    ceiling_bps = 30e6 * MPTCP_PAYLOAD / 1500
    assert record.completed and record.subflows == 2
    assert record.goodput_bps > 0.93 * ceiling_bps
    assert record.subflow_bytes[1] / record.subflow_bytes[0] == pytest.approx(2.0, rel=0.15)
    single = run_transfer(paths[1:], 16 * MIB, cc="cubic")
    assert record.goodput_bps > 1.35 * single.goodput_bps


def test_mptcp_receive_window_is_shared_by_the_subflows():
    # Two equal paths, 100 ms RTT, 64 KiB connection-level buffer: its window per RTT in all, not
    # per subflow. The window: 65536 x 157/256 = 40192 bytes (1420-byte MPTCP segments:
    # scaling_ratio 1420 x 256 // 2304 = 157).
    paths = [dict(rate_bps=10e6, one_way_delay_s=0.05)] * 2
    record = run_transfer(paths, 2 * MIB, mptcp=True, rcv_buf_bytes=64 * 1024)
    window_bytes = 64 * 1024 * 157 // 256
    assert record.goodput_bps < window_bytes * 8 / 0.1
    assert record.goodput_bps > 0.85 * window_bytes * 8 / 0.1


@pytest.mark.parametrize("fast_first", [True, False])
@pytest.mark.parametrize("cc, share", [("cubic-rfc9438", 5), ("cubic", 2)])
def test_lowest_rtt_first_scheduler_prefers_the_faster_path(fast_first, cc, share):
    # Equal rates, RTT 20 vs 80 ms; a 128 KiB send buffer cannot fill both: the fast path gets most.
    # Nothing is lost, so without HyStart (cubic-rfc9438) the fast subflow's window grows in slow
    # start until the buffer is all on it; Linux CUBIC's HyStart leaves slow start early, on the
    # ACK train of a receiver that ACKs every segment growing its window (over 10.5 ms at 20 ms
    # RTT), and its window then grows by 5% per RTT, so the slow subflow gets the data the fast
    # one has no window for: a smaller, still large, share (2.1-2.2 here).
    fast = dict(rate_bps=10e6, one_way_delay_s=0.01, queue_packets=100)
    slow = dict(rate_bps=10e6, one_way_delay_s=0.04, queue_packets=100)
    paths = [fast, slow] if fast_first else [slow, fast]
    record = run_transfer(paths, 8 * MIB, mptcp=True, snd_buf_bytes=128 * 1024, cc=cc, scheduler="lowest-rtt")
    fast_bytes, slow_bytes = record.subflow_bytes if fast_first else record.subflow_bytes[::-1]
    assert fast_bytes > share * slow_bytes
    assert slow_bytes > 0


def shared_bottleneck_ratio(coupled, cc, seed, duration_s=40.0):
    """MPTCP (two subflows) over a competing TCP flow, in goodput, through one lossy bottleneck.

    Random loss (1%, 40 ms RTT) rather than queue overflow sets the windows: with drop-tail
    overflow alone the split depends on phase effects between the flows' bursts (Floyd and
    Jacobson 1992), which make any one deterministic run a poor witness of the average.
    """
    env = simpy.Environment()
    bottleneck = LinkDirection(env, "bottleneck", delay_s=0.02, rate_bps=1e9, queue_limit_packets=1000,
                               loss=bernoulli(0.01, seed))
    back = LinkDirection(env, "back", delay_s=0.02, rate_bps=1e9)
    mptcp = BulkTransfer(env, [(bottleneck, back), (bottleneck, back)], 10**9, mptcp=True, cc=cc, coupled=coupled)
    tcp = BulkTransfer(env, [(bottleneck, back)], 10**9, cc=cc)
    env.run(until=duration_s)
    return mptcp.result().goodput_bps / tcp.result().goodput_bps


def test_lia_takes_no_more_than_one_tcp_on_a_shared_bottleneck():
    # RFC 6356 goal 2. The fluid model gives LIA exactly one TCP's share for equal RTTs; two
    # independent sawtooths sum to a steadier total, so the model lands 0 to 20% above, seed to seed.
    lia = sum(shared_bottleneck_ratio("lia", "reno", seed) for seed in range(3)) / 3
    uncoupled = sum(shared_bottleneck_ratio("none", "reno", seed) for seed in range(3)) / 3
    assert 0.8 < lia < 1.25
    assert uncoupled > 1.6


# --- delivery, accounting, determinism --------------------------------------------------------

def lossy_reordering_transfer(mptcp, loss_detection):
    env = simpy.Environment()
    data = random.Random(5).randbytes(3 * MIB + 777)
    specs = [dict(rate_bps=20e6, one_way_delay_s=0.01, queue_packets=40, jitter_s=0.002,
                  loss=GilbertElliott(0.01, 0.3, rng=component_rng(9, 0, "ge0"))),
             dict(rate_bps=5e6, one_way_delay_s=0.03, queue_packets=40, loss=bernoulli(0.02, 9, "b1"))]
    paths = [make_path(env, f"p{i}", seed=9, **spec) for i, spec in enumerate(specs[: 2 if mptcp else 1])]
    transfer = BulkTransfer(env, paths, len(data), mptcp=mptcp, payload=data, loss_detection=loss_detection)
    env.run()
    record = transfer.result()
    assert record.completed and record.bytes_delivered == len(data)
    assert record.payload_sha256 == hashlib.sha256(data).hexdigest()
    # Data-level duplicates come only from the MPTCP-level timer's reinjections (none for TCP).
    assert record.duplicate_bytes <= record.reinjected_bytes
    assert len(data) <= sum(record.subflow_bytes) <= len(data) + record.reinjected_bytes
    assert record.retransmissions > 50  # the recovery machinery was exercised
    receivers = [subflow.receiver for subflow in transfer.sender.subflows]
    return sum(r.duplicate_segments for r in receivers)


@pytest.mark.parametrize("mptcp", [False, True])
def test_every_byte_is_delivered_once_in_order_despite_loss_and_reordering(mptcp):
    # Jitter of 2 ms reorders segments: the dupACK rule (RFC 6675) retransmits some spuriously,
    # and the receiver discards the duplicates; RACK's reordering window (min_rtt / 4 = 5 ms once
    # reordering was seen) waits for them, so it sends fewer spurious retransmissions.
    duplicates_rfc6675 = lossy_reordering_transfer(mptcp, "rfc6675")
    assert duplicates_rfc6675 > 0  # spurious retransmissions were discarded
    assert lossy_reordering_transfer(mptcp, "rack-tlp") < duplicates_rfc6675


def test_same_seeds_same_results_and_other_seeds_differ():
    def run(seed):
        spec = dict(rate_bps=20e6, one_way_delay_s=0.01, queue_packets=40, jitter_s=0.001, loss=bernoulli(0.01, seed))
        return run_transfer([spec, dict(spec, loss=bernoulli(0.01, seed, "l2"))], 2 * MIB, seed=seed, mptcp=True)

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("mptcp", [False, True])
def test_segment_sizes_are_their_wire_encoding(mptcp):
    env = simpy.Environment()
    tap = Tap()
    count = 2 if mptcp else 1
    paths = [make_path(env, f"p{i}", rate_bps=10e6, one_way_delay_s=0.01, trace=tap,
                       loss=bernoulli(0.1, 4, f"l{i}")) for i in range(count)]  # three holes at once on TCP
    data = bytes(range(256)) * 1000
    BulkTransfer(env, paths, len(data), mptcp=mptcp, payload=data)
    env.run()
    most_blocks = 0
    for _, segment in tap.sent:
        packet = decode_packet(encode_packet(segment.to_ip_packet()))
        assert len(encode_packet(packet)) == segment.size_bytes
        if segment.payload_bytes:
            assert packet.segment.payload == bytes(segment.payload)
            full = segment.payload_bytes == (MPTCP_PAYLOAD if mptcp else MSS)
            assert not full or segment.size_bytes == 1500
        most_blocks = max(most_blocks, len(segment.sack_blocks or ()))
    # Beside the timestamps: 3 SACK blocks on TCP, 1 on MPTCP (after the 12-byte DSS Data ACK).
    assert most_blocks == sack_capacity(mptcp) == (1 if mptcp else 3)


def test_invalid_configurations_are_refused():
    env = simpy.Environment()
    paths = [make_path(env, f"p{i}", rate_bps=1e6, one_way_delay_s=0.01) for i in range(2)]
    with pytest.raises(ValueError, match="mptcp=True"):
        BulkTransfer(env, paths, 1000)
    with pytest.raises(ValueError, match="LIA"):
        BulkTransfer(env, paths, 1000, mptcp=True, coupled="lia", cc="cubic")
    with pytest.raises(ValueError, match="rcv_buf_bytes"):
        BulkTransfer(env, paths[:1], 1000, rcv_buf_bytes=1000)
    with pytest.raises(ValueError, match="payload"):
        BulkTransfer(env, paths[:1], 1000, payload=b"x")
    foreign = LinkDirection(env, "foreign", delay_s=0.01, deliver=print)
    with pytest.raises(ValueError, match="already delivers"):
        BulkTransfer(env, [(foreign, paths[0][1])], 1000)
    assert paths[0][0].deliver is None or paths[0][0].deliver is deliver_segment


def test_unfinished_transfer_reports_progress():
    record = run_transfer([dict(rate_bps=10e6, one_way_delay_s=0.01)], 100 * MIB, until=2.0)
    assert not record.completed
    assert record.duration_s == 2.0
    assert 0 < record.bytes_delivered < 100 * MIB
    assert record.goodput_bps == pytest.approx(record.bytes_delivered * 8 / 2.0)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 20)), max_size=30))
def test_sack_scoreboard_ranges_merge_and_report_only_new_bytes(blocks):
    ranges = []
    covered = set()
    for left, width in blocks:
        pieces = _add_range(ranges, left, left + width)
        new = set().union(*(range(a, b) for a, b in pieces)) if pieces else set()
        assert new == set(range(left, left + width)) - covered
        covered |= new
        assert covered == set().union(*(range(a, b) for a, b in ranges))
        assert all(r[0] < r[1] for r in ranges)
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # sorted, disjoint, not adjacent


def test_segment_repr_and_slots():
    segment = Segment(52, None, 0, 0, 0, 1448, None, 0, 1448, 65535, 0x10, 0.0, None, False)
    assert "ack=1448" in repr(segment)
    with pytest.raises(AttributeError):
        segment.color = "red"  # __slots__: no per-packet dict
