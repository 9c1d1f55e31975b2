"""The MPTCP data plane as upstream Linux 6.x runs it (net/mptcp/protocol.c): the lowest-linger-time
scheduler committing bursts to per-subflow send queues, a send buffer committed to a slow
subflow, reinjection by the MPTCP-level retransmit timer, and a subflow that joins late. The
expected values are worked by hand in each test from the kernel's arithmetic (docs/sim.md). The
subflows start established (``join_handshake=False``) so that the scheduler alone decides; the
MP_JOIN handshake has its own tests (tests/sim/test_mptcp_join.py)."""

from __future__ import annotations

import hashlib
import random

import pytest
import simpy

import mpsim.sim.transfer as transfer_module
from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import (MPTCP_SEND_BURST_BYTES, MPTCP_STALE_LOSS_CNT, SKB_TRUESIZE_OVERHEAD_BYTES,
                                SNDBUF_PER_MSS_BYTES, BulkTransfer)

PAYLOAD = 1420  # MPTCP payload per segment (1448 - DSS 28)
TRUESIZE = PAYLOAD + SKB_TRUESIZE_OVERHEAD_BYTES  # 2252 per queued full segment
MIB = 2**20


class Tap:
    """A link trace that keeps (time, packet) of every packet offered."""

    record_packets = True

    def __init__(self):
        self.sent = []

    def packet(self, time_s, direction, kind, packet, packet_id, reason=None):
        if kind == "sent":
            self.sent.append((time_s, packet))


class DropData:
    """A path that loses every data segment (ACKs pass)."""

    def drops(self, packet, now):
        return packet.payload_bytes > 0


def path(env, name, rate_bps, one_way_delay_s, *, queue_packets=None, loss=None, tap=None):
    forward = LinkDirection(env, f"{name}-fwd", delay_s=one_way_delay_s, rate_bps=rate_bps,
                            queue_limit_packets=queue_packets, loss=loss, trace=tap)
    backward = LinkDirection(env, f"{name}-bwd", delay_s=one_way_delay_s, rate_bps=rate_bps)
    return forward, backward


def queued_ranges(subflow):
    """The DSN ranges a subflow holds (sent and queued), merged."""
    pieces = sorted([(r.dsn, r.dsn + r.end - r.seq) for r in subflow.rtx[subflow.head:]]
                    + [(dsn, dsn + length) for dsn, length in subflow.send_queue])
    merged = []
    for left, right in pieces:
        if merged and merged[-1][1] == left:
            merged[-1][1] = right
        else:
            merged.append([left, right])
    return [tuple(r) for r in merged]


def test_first_bursts_fill_each_subflows_auto_tuned_buffer_in_turn():
    # Auto-tuned, with the testbed kernel's MAX_TCP_HEADER of 256 (docs/kernel-facts.md, "Socket
    # memory"): tcp_init_buffer_space gives each subflow 2 x 10 x 2304 = 46080 bytes (per segment
    # roundup_pow_of_two(1460 + 256 + 320) + 256), as ss showed on the kernel's subflows; a queued
    # segment costs 1420 + 832 = 2252. Without an RTT sample both pace at 2 x 1420 x 10 / 1 s =
    # 28400 B/s; both linger times are 0, so the first subflow gets the first burst. Linux
    # (__subflow_push_pending, net/mptcp/protocol.c 6.18) checks the burst and the buffer only
    # after each whole data fragment (the application's bytes in 32 KiB page frags): the buffer is
    # full after 21 segments (21 x 2252 = 47292 >= 46080), but the fragment 0-32768 goes on, so the
    # first subflow stops at the first fragment boundary crossed with its buffer full: segment 24
    # (23 x 1420 = 32660 < 32768 <= 34080), DSN 0-34080. Then the second subflow (linger 0 <
    # 54048 / 28400 = 1.9 s): from 34080 the boundary 65536 is crossed by its 23rd segment, DSN
    # 34080-66740. Then both are full: nothing more, though the msk buffer (2 x 46080) has room.
    # Each sends its initial window (10) and keeps 14 and 13 queued beyond its cwnd. (A
    # distribution kernel's MAX_TCP_HEADER of 320 crosses the power of two: 4352 per segment,
    # 87040 bytes, segments of 2316.)
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.01), path(env, "b", 10e6, 0.01)]
    # The receiver's buffer is pinned (SO_RCVBUF 6 MiB) so that its window does not bound the bursts.
    transfer = BulkTransfer(env, paths, MIB, mptcp=True, join_handshake=False, rcv_buffers="pinned")
    first, second = transfer.sender.subflows
    assert SNDBUF_PER_MSS_BYTES == 2304 and TRUESIZE == 2252
    assert first.sndbuf_bytes == second.sndbuf_bytes == 2 * 10 * SNDBUF_PER_MSS_BYTES == 46080
    assert queued_ranges(first) == [(0, 24 * PAYLOAD)]
    assert queued_ranges(second) == [(24 * PAYLOAD, 47 * PAYLOAD)]
    assert first.wmem_queued == 24 * TRUESIZE == 54048 and second.wmem_queued == 23 * TRUESIZE == 51796
    assert first.segments_sent == second.segments_sent == 10
    assert len(first.send_queue) == 14 and len(second.send_queue) == 13
    assert transfer.sender.select_subflow() is None  # both send buffers full
    # tcp_sndbuf_expand on ACKs that free data while cwnd is not full: 2 x cwnd x 2304, growing
    env.run(until=0.2)
    assert 46080 < first.sndbuf_bytes <= 2 * int(first.cc.cwnd_segments) * SNDBUF_PER_MSS_BYTES
    assert first.sndbuf_bytes % (2 * SNDBUF_PER_MSS_BYTES) == 0


def test_scheduler_picks_the_lowest_linger_time_not_the_lowest_queue():
    # Hand-set state. Subflow 0: SRTT 10 ms, cwnd 20 in slow start: pacing 2 x 1420 x 20 / 0.01 =
    # 5.68 MB/s; 100000 bytes queued linger 17.6 ms. Subflow 1: SRTT 100 ms, cwnd 10: 284000 B/s;
    # 20000 bytes linger 70.4 ms. Linux picks subflow 0 with five times the queue; at 500000 bytes
    # (88 ms) it picks subflow 1. After a loss (cwnd >= ssthresh / 2) the ratio is 120 %.
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.01), path(env, "b", 10e6, 0.05)]
    transfer = BulkTransfer(env, paths, 10 * PAYLOAD, mptcp=True, join_handshake=False, buffers="pinned", snd_buf_bytes=MIB)
    fast, slow = transfer.sender.subflows
    fast.srtt_s, fast.cc.cwnd_segments = 0.01, 20.0
    slow.srtt_s, slow.cc.cwnd_segments = 0.1, 10.0
    for subflow in (fast, slow):
        subflow.rtx.clear()
        subflow.head = 0
        subflow.avg_pacing_rate = 0.0
    assert fast.pacing_rate() == pytest.approx(5.68e6)
    assert slow.pacing_rate() == pytest.approx(284000)
    fast.wmem_queued, slow.wmem_queued = 100000, 20000
    assert transfer.sender.select_subflow() is fast
    fast.wmem_queued = 500000
    assert transfer.sender.select_subflow() is slow
    slow.cc.ssthresh_segments = 20.0
    assert slow.pacing_rate() == pytest.approx(1.2 * 1420 * 10 / 0.1)


def test_burst_averages_the_pacing_rate_over_the_queue():
    # avg = (avg x wmem + pace x burst) / (burst + wmem) at every pick (mptcp_subflow_get_send).
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.01), path(env, "b", 10e6, 0.01)]
    transfer = BulkTransfer(env, paths, 1000 * PAYLOAD, mptcp=True, join_handshake=False, buffers="pinned", snd_buf_bytes=4 * MIB)
    first = transfer.sender.subflows[0]
    # Pinned 4 MiB: each subflow may queue 8 MiB, the msk 8 MiB: bursts alternate (equal pacing).
    # A burst (65428 bytes) is checked only at the end of each 32 KiB data fragment: the first
    # is spent by segment 47 (46 x 1420 = 65320 < 65428), which also ends the fragment 32768-65536
    # (65320 < 65536 <= 66740): DSN 0-66740. The second starts at 66740: its burst still has 108
    # bytes when its 46th segment crosses 131072 (132060), so it goes on to the next boundary,
    # 163840, crossed by its 69th segment (164720).
    assert queued_ranges(first)[0] == (0, 47 * PAYLOAD)
    assert queued_ranges(transfer.sender.subflows[1])[0] == (47 * PAYLOAD, 116 * PAYLOAD)
    assert MPTCP_SEND_BURST_BYTES == 65428 and 46 * PAYLOAD < MPTCP_SEND_BURST_BYTES <= 47 * PAYLOAD
    assert first.avg_pacing_rate == pytest.approx(28400)


def test_send_buffer_committed_to_a_slow_subflow_starves_the_fast_one():
    # Pinned SO_SNDBUF 96 KiB: the msk and each subflow may hold 2 x 98304 = 196608 bytes.
    # Slow path 1 Mbit/s, 100 ms one way; fast path 10 Mbit/s, 5 ms. At t=0 (no RTT samples, equal
    # pacing): the slow subflow takes the first burst, 47 segments = DSN 0-66740 (wmem 47 x 2252 =
    # 105844); the fast one the second, which runs to the fragment boundary 163840 (the previous
    # test): 66740-164720, 69 segments (wmem 155388). The slow subflow (lower linger now) takes
    # the rest the msk buffer allows, 164720-196608 (22 segments and 648 bytes; its buffer, 105844
    # + 22 x 2252 + 1480 < 196608, is not full). Half the buffer sits on the slow subflow. The
    # fast subflow sends its 69 segments in a few RTTs and then has nothing new to send: nothing
    # can be DATA_ACKed before the slow path's first segment has crossed (12 ms + 100 ms), so until
    # then the buffer stays full (the DATA_ACK then comes back on the fast subflow's ACKs, of
    # its tail loss probe, in 5 ms).
    env = simpy.Environment()
    paths = [path(env, "slow", 1e6, 0.1), path(env, "fast", 10e6, 0.005)]
    transfer = BulkTransfer(env, paths, 4 * MIB, mptcp=True, join_handshake=False, buffers="pinned", snd_buf_bytes=96 * 1024)
    slow, fast = transfer.sender.subflows
    assert queued_ranges(slow) == [(0, 47 * PAYLOAD), (116 * PAYLOAD, 196608)]
    assert queued_ranges(fast) == [(47 * PAYLOAD, 116 * PAYLOAD)]
    env.run(until=0.11)
    assert transfer.sender.data_una == 0 and transfer.sender.next_dsn == 196608
    assert fast.segments_sent == 69 and not fast.send_queue
    assert fast.receiver.bytes_in_order == 69 * PAYLOAD
    env.run(until=0.3)
    assert transfer.sender.data_una > 0 and fast.segments_sent > 51  # the slow path's ACK freed the buffer


def _simult_flows_duration_s(buffers: str, sample: list | None = None) -> float:
    # The upstream selftest's unbalanced case: 16 MiB over 10 + 3 Mbit/s with 1000-packet queues.
    env = simpy.Environment()
    paths = [path(env, "fast", 10e6, 0.0001, queue_packets=1000), path(env, "slow", 3e6, 0.0001, queue_packets=1000)]
    transfer = BulkTransfer(env, paths, 16 * MIB, mptcp=True, join_handshake=False, buffers=buffers,
                            snd_buf_bytes=4 * MIB, rcv_buf_bytes=4 * MIB)
    if sample is not None:
        def probe():
            for _ in range(100):
                sample.append(transfer.sender.subflows[1].wmem_queued)
                yield env.timeout(0.1)
        env.process(probe())
    env.run(until=env.any_of([transfer.done, env.timeout(60)]))
    assert transfer.result().completed
    return transfer.result().duration_s


def test_pinned_buffers_on_unbalanced_paths_commit_megabytes_to_the_slow_subflow():
    # With SO_SNDBUF 4 MiB (8 MiB after Linux doubles it) the slow subflow's queue reaches
    # megabytes (its pacing rate counts its bloated cwnd), its data waits seconds in it, and the
    # fast subflow idles on a full connection buffer: the transfer takes longer than with auto-
    # tuned buffers, which cap each subflow's queue near 2 x cwnd segments (tcp_sndbuf_expand).
    slow_wmem = []
    pinned_s = _simult_flows_duration_s("pinned", slow_wmem)
    auto_s = _simult_flows_duration_s("auto")
    assert auto_s < 11.921  # the selftest's bound
    assert pinned_s > 1.15 * auto_s
    assert max(slow_wmem) > 2_000_000


@pytest.fixture
def distribution_kernel_skbs(monkeypatch):
    """A distribution kernel's skb sizes (MAX_TCP_HEADER 320): 4352 bytes of send buffer per
    segment of cwnd, 896 of truesize per queued segment (mpsim/sim/transfer.py). The two tests
    below were worked by hand with them: with the testbed kernel's smaller buffers the first
    subflow holds less than one 32 KiB fragment and the second reinjection never happens."""
    monkeypatch.setattr(transfer_module, "SNDBUF_PER_MSS_BYTES", 4096 + 256)
    monkeypatch.setattr(transfer_module, "SKB_TRUESIZE_OVERHEAD_BYTES", 896)


def test_reinjection_after_a_subflow_timeout_delivers_each_byte_once(distribution_kernel_skbs):
    # Path A loses every data segment; path B is clean (10 Mbit/s, 10 ms each way). 76 segments:
    # at t=0 A takes DSN 0-66740 and B 66740-107920 (as in the first test, with 87040-byte
    # buffers of 2316-byte segments: A's burst runs to the fragment boundary 65536, 47 segments;
    # B gets the remaining 29). B's data arrives at
    # once but nothing is DATA_ACKed (DSN 0 is missing). The MPTCP-level timer was armed at t=0 for
    # the longest subflow timer, 1 s (no RTT sample). At 1 s A fires its loss probe (lost too) and
    # re-arms its RTO to 2 s; the MPTCP timer finds B idle (nothing in flight, nothing queued) and
    # re-sends the oldest fragment, DSN 0-32768 (one 32 KiB page frag), on B at exactly 1 s. Each
    # DATA_ACK advance restarts the MPTCP timer for the interval the scheduler last sampled, 1 s
    # (Linux 6.18 __mptcp_clean_una -> mptcp_reset_rtx_timer uses msk->timer_ival; nothing is left
    # to schedule, so it is not sampled again). The last advance, to 32768, comes with the
    # receiver's ACK of the 24th segment: the 23rd arrives at 1 + 23 x 1.2 ms + 10 ms = 1.0376 s and
    # waits (one segment's worth unacknowledged), the 108-byte 24th (188 bytes, 0.1504 ms) makes
    # 1528 bytes > rcv_mss 1420 unacknowledged, so it is ACKed at once (Linux __tcp_ack_snd_check
    # counts bytes), at 1.0377504 s; the ACK (64 bytes, 0.0512 ms) arrives at 1.0478016 s. The
    # timer fires 1 s later, 2.0478016 s, and re-sends the next
    # fragment, 32768-65536, on B: the same 23 segments and 108 bytes, the DATA_ACK advancing to
    # 65536 on the ACK that arrives 23 x 1.2 ms + 0.1504 ms + 10 ms + 0.0512 ms + 10 ms later, and
    # the timer 1 s after that, 3.0956032 s, re-sends the fragment 65536-98304 (up to the bytes
    # sent). Its first segment, 65536-66956, closes the hole: its 216 bytes above 66740 (B's own
    # data, held) are a duplicate the receiver drops, and the transfer is complete (the rest of
    # the fragment arrives after it). Every byte reaches the application once, in the order
    # written.
    env = simpy.Environment()
    tap_b = Tap()
    paths = [path(env, "a", 10e6, 0.01, loss=DropData()), path(env, "b", 10e6, 0.01, tap=tap_b)]
    data = random.Random(5).randbytes(76 * PAYLOAD)
    transfer = BulkTransfer(env, paths, len(data), mptcp=True, join_handshake=False, payload=data,
                            rcv_buffers="pinned")  # as in the first test
    env.run(until=env.any_of([transfer.done, env.timeout(30)]))
    record = transfer.result()
    assert record.completed and record.payload_sha256 == hashlib.sha256(data).hexdigest()
    assert record.subflow_bytes[0] == 0
    assert record.reinjected_bytes == 98304 and record.duplicate_bytes == 65536 + PAYLOAD - 47 * PAYLOAD == 216
    reinjected = [(t, p.dsn) for t, p in tap_b.sent if p.payload_bytes and p.dsn < 47 * PAYLOAD]
    assert reinjected[0] == (pytest.approx(1.0), 0)
    second_s = 1.0 + 23 * 1500 * 8 / 10e6 + 188 * 8 / 10e6 + 0.01 + 64 * 8 / 10e6 + 0.01 + 1.0
    assert second_s == pytest.approx(2.0478016)
    assert [t for t, dsn in reinjected if dsn == 32768][0] == pytest.approx(second_s)
    third_s = second_s + 23 * 1500 * 8 / 10e6 + 188 * 8 / 10e6 + 0.01 + 64 * 8 / 10e6 + 0.01 + 1.0
    assert third_s == pytest.approx(3.0956032)
    assert [t for t, dsn in reinjected if dsn == 65536][0] == pytest.approx(third_s)
    # one segment of 1500 bytes at 10 Mbit/s after that, + 10 ms
    assert record.duration_s == pytest.approx(third_s + 1500 * 8 / 10e6 + 0.01)


def test_mptcp_timer_interval_is_sampled_by_the_scheduler_not_at_rearm(distribution_kernel_skbs):
    # Linux 6.18 net/mptcp/protocol.c: mptcp_subflow_get_send samples msk->timer_ival (the longest
    # time left on an active subflow's pending transmit timer, TCP_RTO_MIN if none) every time it
    # runs; mptcp_reset_rtx_timer re-arms with that stored value. Same paths as above. At t=0 the
    # first pick (A) sees no timer pending: 0.2 s; A then sends and arms its 1 s timer, so the
    # second pick (B) samples 1 s; the push arms the MPTCP timer for 1 s. Nothing is left to
    # schedule afterwards, so the interval stays 1 s, and after the reinjection at 1 s (when A's
    # RTO was re-armed to 2 s) the last DATA_ACK advance at 1.0478016 s (the previous test) sets the
    # deadline to 2.0478016 s, not to A's 2 s (what re-sampling at each re-arm would give).
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.01, loss=DropData()), path(env, "b", 10e6, 0.01)]
    transfer = BulkTransfer(env, paths, 76 * PAYLOAD, mptcp=True, join_handshake=False, rcv_buffers="pinned")
    sender = transfer.sender
    env.run(until=0.5)
    assert sender.timer_ival_s == pytest.approx(1.0)
    assert sender.rtx_timer.deadline_s == pytest.approx(1.0)
    env.run(until=1.5)
    assert sender.reinjected_bytes == 32768
    assert sender.subflows[0].rto_timer.deadline_s == pytest.approx(2.0)
    assert sender.timer_ival_s == pytest.approx(1.0)
    assert sender.rtx_timer.deadline_s == pytest.approx(2.0478016)


def test_stale_count_marks_a_subflow_stale_after_stale_loss_cnt_periods_and_an_ack_recovers_it(distribution_kernel_skbs):
    # net/mptcp/pm.c (Linux 6.18) mptcp_pm_subflow_chk_stale, driven by hand: both subflows hold
    # data in flight (t = 1 ms: their first bursts are out, no ACK back yet). The first call records
    # A's rcv_tstamp (count 1); each further call with the same stamp counts one more; the test
    # "stale_count > stale_loss_cnt (4)" first holds at the fifth call, and only while another
    # active subflow has stale_count below max(4 - 1, 1) = 3. Stale: everything not DATA_ACKed is
    # marked unsent (the send head back to the DATA_ACK, 0) and pushed again on B; A is not usable
    # (mptcp_subflow_active) until an ACK changes its rcv_tstamp, which recovers it.
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.01), path(env, "b", 10e6, 0.01)]
    transfer = BulkTransfer(env, paths, MIB, mptcp=True, join_handshake=False, rcv_buffers="pinned")
    sender = transfer.sender
    a, b = sender.subflows
    env.run(until=0.001)
    assert MPTCP_STALE_LOSS_CNT == 4
    sent_before = sender.snd_nxt
    # first bursts to the fragment boundaries (the first test, with the fixture's 87040-byte
    # buffers and 2316-byte segments): A 0-66740 (47 segments, burst spent at the boundary
    # 65536), B 66740-132060 (46: at the boundary 131072 its buffer, 46 x 2316, is full)
    assert sent_before == 93 * PAYLOAD and sender.data_una == 0
    b.stale_count = 2  # B is an alternative (2 < 3)
    for count in (1, 2, 3, 4):  # not past stale_loss_cnt yet
        sender.check_stale(a, env.now)
        assert a.stale_count == count and not a.stale
    b.stale_count = 3  # B losing as well: no alternative, A stays
    sender.check_stale(a, env.now)
    assert a.stale_count == 5 and not a.stale
    b.stale_count = 2  # an alternative again: the next period marks A
    sender.check_stale(a, env.now)
    assert a.stale_count == 6 and a.stale and sender.subflows_stale == 1
    assert sender.reinjected_bytes == sent_before  # all of it, from DATA_ACK 0
    assert not sender.usable(a) and sender.usable(b)
    assert sender.select_subflow() is not a
    # B's buffer is full (46 x 2316 = 106536 >= 87040), so the push could hand nothing over yet:
    # the send head waits at the DATA_ACK for B's ACKs to make room
    assert b.wmem_queued == 46 * (PAYLOAD + 896) and sender.next_dsn == 0 and sender.snd_nxt == sent_before
    a.rcv_tstamp += 1  # an ACK on A, one jiffy later
    assert sender.usable(a) and not a.stale and sender.subflows_recovered == 1
    sender.check_stale(a, env.now)  # a new stamp: the count starts again
    assert a.stale_count == 0


def test_a_counting_subflow_adds_nothing_to_the_mptcp_timer_interval(distribution_kernel_skbs):
    # mptcp_timeout_from_subflow: a subflow with stale_count > 0 contributes 0 to msk->timer_ival.
    # A on a 100 ms path (RTO armed for 1 s, no sample), B on a 10 ms one: at t = 0.3 s both
    # have transmit timers pending (B, whose receiver ACKs every segment that grows its
    # window, is idle by 0.35 s); A's runs longer. Counting A, the interval is B's time left.
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.1, loss=DropData()), path(env, "b", 10e6, 0.01)]
    transfer = BulkTransfer(env, paths, MIB, mptcp=True, join_handshake=False, rcv_buffers="pinned")
    sender = transfer.sender
    a, b = sender.subflows
    env.run(until=0.3)
    left_a, left_b = a.rto_timer.deadline_s - env.now, b.rto_timer.deadline_s - env.now
    assert left_a > left_b > 0
    sender.select_subflow()
    assert sender.timer_ival_s == pytest.approx(left_a)
    a.stale_count = 1
    sender.select_subflow()
    assert sender.timer_ival_s == pytest.approx(left_b)


def test_a_dead_path_goes_stale_at_the_fifth_mptcp_timeout_and_its_data_is_sent_again(distribution_kernel_skbs):
    # Path A (10 Mbit/s, 10 ms) loses every data segment, so A never gets an ACK and its
    # rcv_tstamp stays at the start; B (2 Mbit/s, 10 ms) is clean. A holds DSN 0-66740 (47
    # segments, its first burst, whole 32 KiB fragments as in the first test); the send buffer
    # (the sum of the subflows' buffers) lets B send while the DATA_ACK stays 0. MPTCP-level
    # timeouts (mptcp_retransmit_timer), each a period of A without progress (net/mptcp/pm.c
    # mptcp_pm_subflow_chk_stale, Linux 6.18):
    #  1st, 1 s: A's count 1 (its stamp recorded); B busy, nothing re-sent;
    #  2nd-3rd: counts 2-3; B is busy at each (it has data in flight), so the head fragment is
    #       not re-sent on it (__mptcp_retrans wants a subflow with nothing in flight);
    #  4th: count 4; with B's cwnd at 37 (read from the run, not worked by hand: cwnd grows on
    #       cumulative ACKs only, HyStart's rounds start at the first ACK, and B's receiver ACKs
    #       every segment that grows its rcv_ssthresh) B's buffer is 2 x 37 x 4352 = 322048, A's
    #       87040, so the send head stopped at 87040 + 322048 = 409088
    #       (the msk buffer over DATA_ACK 0), and B, holding 409088 - 66740 bytes, has sent and
    #       got ACKs for all of them: idle, it takes the head fragment 0-32768 again, and the
    #       DATA_ACK moves to 32768 (A's data from there is still missing);
    #  5th: count 5 > stale_loss_cnt 4, and B (count below 3) is an alternative: A is stale and
    #       everything not DATA_ACKed is marked unsent and pushed again on B
    #       (__mptcp_retransmit_pending_data, __mptcp_push_pending): the send head had reached
    #       32768 + 409088, so 409088 bytes are re-sent. B's copy of 32768-66740 fills the hole
    #       and the DATA_ACK jumps over the re-sent send head, which skips to it
    #       (__mptcp_clean_una) instead of re-sending acknowledged data.
    # Each byte reaches the application once, in order; A never recovers (no ACK ever comes).
    env = simpy.Environment()
    data = random.Random(7).randbytes(1_000_000)
    paths = [path(env, "a", 10e6, 0.01, loss=DropData()), path(env, "b", 2e6, 0.01)]
    transfer = BulkTransfer(env, paths, len(data), mptcp=True, join_handshake=False, payload=data, rcv_buffers="pinned")
    sender = transfer.sender
    a, b = sender.subflows
    fire = sender.rtx_timer.callback
    expiries = []

    def expiry(now):
        before = (sender.data_una, sender.snd_nxt, sender.reinjected_bytes, b.sndbuf_bytes)
        fire(now)
        expiries.append((now, before, a.stale_count, b.stale_count, a.stale, sender.reinjected_bytes))
        assert sender.next_dsn >= sender.data_una  # never a send head below the DATA_ACK

    sender.rtx_timer.callback = expiry
    env.run(until=env.any_of([transfer.done, env.timeout(60)]))
    record = transfer.result()
    assert record.completed and record.payload_sha256 == hashlib.sha256(data).hexdigest()
    assert expiries[0][0] == pytest.approx(1.0)
    assert [e[2] for e in expiries[:5]] == [1, 2, 3, 4, 5]
    assert [e[4] for e in expiries[:5]] == [False, False, False, False, True]
    assert [e[5] for e in expiries[:4]] == [0, 0, 0, 32768]
    now, (data_una, snd_nxt, reinjected, b_sndbuf), _, b_count, _, after = expiries[4]
    assert b_sndbuf == 2 * 37 * 4352 == 322048  # the distribution kernel's skb sizes (fixture)
    assert (data_una, snd_nxt, reinjected) == (32768, 32768 + 87040 + 322048, 32768)
    assert b_count < 3 and after - reinjected == 409088
    assert record.subflows_stale == 1 and record.subflows_recovered == 0
    assert not sender.usable(a) and record.subflow_bytes[0] == 0


def test_without_reinjection_a_dead_path_stalls_the_old_scheduler():
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.01, loss=DropData()), path(env, "b", 10e6, 0.01)]
    transfer = BulkTransfer(env, paths, 76 * PAYLOAD, mptcp=True, join_handshake=False, scheduler="lowest-rtt")
    env.run(until=30)
    assert not transfer.result().completed


def test_a_subflow_joins_after_its_start_delay():
    # Without the MP_JOIN handshake (join_handshake=False) subflow_start_s is when the subflow starts
    # established (here 0.25 s): before it the second path carries nothing; at 0.25 s the joined subflow adds its 46080-byte buffer
    # to the connection's and takes the next burst at once.
    env = simpy.Environment()
    taps = [Tap(), Tap()]
    paths = [path(env, "a", 10e6, 0.01, tap=taps[0]), path(env, "b", 10e6, 0.01, tap=taps[1])]
    # The receiver's buffer pinned (SO_RCVBUF 6 MiB): the window leaves room for the new subflow's burst.
    transfer = BulkTransfer(env, paths, 4 * MIB, mptcp=True, join_handshake=False, subflow_start_s=(0.0, 0.25),
                            rcv_buffers="pinned")
    env.run(until=0.25)
    assert not taps[1].sent
    next_dsn = transfer.sender.next_dsn
    env.run(until=env.any_of([transfer.done, env.timeout(30)]))
    first_time, first_packet = next((t, p) for t, p in taps[1].sent if p.payload_bytes)
    assert first_time == pytest.approx(0.25) and first_packet.dsn >= next_dsn
    assert transfer.result().subflow_bytes[1] > MIB


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheduler="blest"), "scheduler must be one of"),
    (dict(buffers="fixed"), "buffers must be one of"),
    (dict(rcv_buffers="fixed"), "rcv_buffers must be one of"),
    (dict(subflow_start_s=(0.1, 0.0)), "subflow_start_s"),
    (dict(subflow_start_s=(0.0,)), "subflow_start_s"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    env = simpy.Environment()
    paths = [path(env, "a", 10e6, 0.01), path(env, "b", 10e6, 0.01)]
    with pytest.raises(ValueError, match=message):
        BulkTransfer(env, paths, 1000, mptcp=True, **kwargs)
