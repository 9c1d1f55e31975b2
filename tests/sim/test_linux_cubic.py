"""Linux CUBIC (net/ipv4/tcp_cubic.c, Linux 6.x) against traces worked by hand from its integer
arithmetic: K and the cubic target in 1/1024 s, the HZ/32 re-computation skip (these traces take HZ = 1000) that
also holds back the Reno-estimate catch-up, and HyStart's delay and ACK-train exits.

Constants: cube_factor = 2^40 // 410 = 2681735677; C = 410/1024; beta = 717/1024; the Reno
estimate grows one segment per (cwnd * 15) >> 3 ACKed segments.
"""

from __future__ import annotations

import pytest

from mpsim.sim.congestion import CUBE_FACTOR, CUBIC_FRIENDLY_BETA_SCALE, Cubic, integer_cube_root
from tests.sim.test_transfer import MIB, run_transfer

MSS = 1448


def test_fixed_point_constants():
    assert CUBE_FACTOR == 2681735677  # 1099511627776 // 410
    assert CUBIC_FRIENDLY_BETA_SCALE == 15  # 8 * 1741 // 3 = 4642; 4642 // 307 = 15
    # 4316^3 = 80397826496 <= 30 * cube_factor = 80452070310 < 4317^3 = 80453723013
    assert integer_cube_root(80452070310) == 4316
    assert integer_cube_root(4316 ** 3) == 4316 and integer_cube_root(4316 ** 3 - 1) == 4315


def loss_at_100_with_50ms() -> Cubic:
    cc = Cubic(hz=1000)
    cc.cwnd_segments = 100.0
    cc.pkts_acked(1.0, 1, 0.050, MSS, 100 * MSS)  # delay_min = 50000 us (no epoch yet: kept)
    cc.on_congestion(1.0)
    return cc


def test_window_after_a_loss_at_100_segments_follows_the_linux_curve():
    cc = loss_at_100_with_50ms()
    assert cc.delay_min_us == 50000
    # ssthresh = 100 * 717 // 1024 = 71700 // 1024 = 70; W_max = 100 (first loss)
    assert (cc.ssthresh_segments, cc.last_max_cwnd) == (70, 100)
    cc.cwnd_segments = 70.0  # fast recovery ends at ssthresh
    epoch = 20.0
    cc.on_ack(1, epoch, 0.05, 0.05)
    # K = cbrt(cube_factor * 30) = 4316/1024 s = 4.215 s (RFC 9438 with C = 0.4: 4.217 s).
    # t = (0 + 50 jiffies of delay_min) * 1024 // 1000 = 51; offs = 4265;
    # delta = 410 * 4265^3 >> 40 = 31808336946250 >> 40 = 28; target = 100 - 28 = 72;
    # cnt = 70 // (72 - 70) = 35 (one segment per 35 ACKed).
    assert (cc.k, cc.origin_point, cc.cnt, cc.cwnd_segments, cc.snd_cwnd_cnt) == (4316, 100, 35, 70, 1)
    # 2 s later at cwnd 80: t = 2050 * 1024 // 1000 = 2099; offs = 2217;
    # delta = 410 * 10896752313 >> 40 = 4; target = 96; cnt = 80 // 16 = 5.
    cc.cwnd_segments = 80.0
    cc.on_ack(1, epoch + 2.0, 0.05, 0.05)
    assert (cc.cnt, cc.snd_cwnd_cnt) == (5, 2)
    # 20 ms later, cwnd unchanged: within HZ/32 = 31 jiffies nothing is re-computed. (Computed,
    # it would be t = 2119, offs 2197, delta 3, target 97, cnt 80 // 17 = 4.)
    cc.on_ack(1, epoch + 2.020, 0.05, 0.05)
    assert (cc.cnt, cc.last_time, cc.cwnd_segments, cc.snd_cwnd_cnt) == (5, 22000, 80, 3)
    # 32 jiffies after the last computation: t = 2132 * 1024 // 1000 = 2183; offs = 2133;
    # delta = 410 * 9704486637 >> 40 = 3; target 97; cnt = 4; snd_cwnd_cnt 3 + 1 = 4 >= 4: cwnd 81.
    cc.on_ack(1, epoch + 2.032, 0.05, 0.05)
    assert (cc.cnt, cc.last_time, cc.cwnd_segments, cc.snd_cwnd_cnt) == (4, 22032, 81, 0)
    # At K: (4215 + 50) * 1024 // 1000 = 4316 = K, delta 0, target 100; cwnd 99: cnt 99.
    cc.cwnd_segments = 99.0
    cc.on_ack(1, epoch + 4.215, 0.05, 0.05)
    assert cc.cnt == 99
    # The plateau: 5 s in, t = 5171, offs = 855, delta = 410 * 625026375 >> 40 = 0: target 100,
    # not above cwnd 100, so cnt = 100 * cwnd: growth all but stops.
    cc.cwnd_segments = 100.0
    cc.on_ack(1, epoch + 5.0, 0.05, 0.05)
    assert cc.cnt == 10000
    # Convex region, 8 s in: t = 8243, offs = 3927, delta = 410 * 60559558983 >> 40 = 22;
    # target 122; cwnd 110: cnt = 110 // 12 = 9.
    cc.cwnd_segments = 110.0
    cc.on_ack(1, epoch + 8.0, 0.05, 0.05)
    assert cc.cnt == 9


def test_the_hz32_skip_holds_back_the_reno_estimate_catch_up():
    cc = Cubic(hz=1000)
    cc.cwnd_segments = 10.0
    cc.pkts_acked(1.0, 1, 0.010, MSS, 10 * MSS)  # delay_min 10 ms
    cc.on_congestion(1.0)  # W_max 10
    cc.cwnd_segments = 12.0  # above W_max: K = 0, origin 12
    epoch = 5.0
    cc.on_ack(1, epoch, 0.01, 0.01)
    # t = 10 * 1024 // 1000 = 10: delta = 410 * 1000 >> 40 = 0, target 12 = cwnd: cnt = 1200.
    assert (cc.k, cc.origin_point, cc.cnt, cc.tcp_cwnd, cc.ack_cnt) == (0, 12, 1200, 12, 1)
    # A 30-segment (stretch) ACK 10 ms later: the Reno estimate would pass cwnd ((12*15)>>3 = 22
    # ACKed per segment), but the skip returns before it is updated.
    cc.on_ack(30, epoch + 0.010, 0.01, 0.01)
    assert (cc.cnt, cc.tcp_cwnd, cc.ack_cnt, cc.cwnd_segments) == (1200, 12, 31, 12)
    cc.on_ack(1, epoch + 0.031, 0.01, 0.01)
    assert (cc.cnt, cc.tcp_cwnd) == (1200, 12)
    # 32 jiffies on: re-computed; ack_cnt 33 > 22: tcp_cwnd 13, ack_cnt 11; max_cnt = 12 // 1 = 12;
    # tcp_cong_avoid_ai: snd_cwnd_cnt 32 >= 12 first, so cwnd 13 and snd_cwnd_cnt = 1.
    cc.on_ack(1, epoch + 0.032, 0.01, 0.01)
    assert (cc.cnt, cc.tcp_cwnd, cc.ack_cnt, cc.cwnd_segments, cc.snd_cwnd_cnt) == (12, 13, 11, 13, 1)


def test_slow_start_before_any_loss_and_the_20_cap():
    cc = Cubic(hz=1000)
    cc.on_ack(4, 0.1, 0.05, 0.05)  # slow start: one segment per segment ACKed
    assert cc.cwnd_segments == 14
    cc.ssthresh_segments = 16.0
    cc.on_ack(4, 0.2, 0.05, 0.05)  # 2 reach ssthresh, 2 go to congestion avoidance
    # no loss yet (W_max 0): K = 0, origin 16, target 16: cnt = 1600, capped to 20.
    assert (cc.cwnd_segments, cc.cnt, cc.snd_cwnd_cnt) == (16, 20, 2)


def test_timeout_forgets_w_max_and_delay_min():
    cc = loss_at_100_with_50ms()
    cc.on_timeout(2.0, reduce_ssthresh=False)
    assert (cc.cwnd_segments, cc.ssthresh_segments) == (1, 70)
    assert (cc.last_max_cwnd, cc.delay_min_us, cc.epoch_start, cc.hystart_found) == (0, 0, None, False)


def hystart_round_start(cc: Cubic, now_s: float, rtt_s: float) -> None:
    cc.cwnd_segments = 20.0  # at least hystart_low_window (16), in slow start
    cc.pkts_acked(now_s, 1, rtt_s, MSS, 20 * MSS)


@pytest.mark.parametrize("rtt_ms, exits", [(45, False), (46, True)])
def test_hystart_leaves_slow_start_on_a_delay_increase(rtt_ms, exits):
    cc = Cubic(hz=1000)
    hystart_round_start(cc, 1.0, 0.040)  # delay_min 40000 us; the round ends at snd_nxt = 20 MSS
    assert cc.delay_min_us == 40000 and cc.end_seq == 20 * MSS
    # Next round (snd_una past end_seq): ACKs 5 ms apart (no ACK train), RTT 40 + rtt_ms - 40 ms.
    # Threshold: delay_min + clamp(40000 >> 3 = 5000, 4000, 16000) = 45000 us; the first 8 samples
    # only count, the 9th compares the round's minimum.
    now = 1.05
    for i in range(9):
        assert cc.ssthresh_segments == float("inf")
        cc.pkts_acked(now + 0.005 * i, 1, rtt_ms / 1000, 21 * MSS + i * MSS, 40 * MSS)
        if i == 0:
            assert cc.end_seq == 40 * MSS and cc.round_start_us == 1_050_000
    assert cc.sample_cnt == 8
    assert cc.hystart_found is exits
    assert cc.ssthresh_segments == (20.0 if exits else float("inf"))
    # Linux counts the exit by its detector and adds the window it happened at (hystart_update).
    assert cc.tcp_ext_counters() == {"TCPHystartTrainDetect": 0, "TCPHystartTrainCwnd": 0,
                                     "TCPHystartDelayDetect": int(exits), "TCPHystartDelayCwnd": 20 * exits}


@pytest.mark.parametrize("gap_ms, exits", [(1.0, True), (3.0, False)])
def test_hystart_leaves_slow_start_on_an_ack_train(gap_ms, exits):
    cc = Cubic(hz=1000)
    hystart_round_start(cc, 1.0, 0.040)
    # Next round: ACKs 0.5 ms apart at an unchanged RTT. Threshold (delay_min + 1 ms) >> 1 = 20500 us
    # (the 1 ms is hystart_ack_delay's cap): the ACK 21 ms after the round started is the first past
    # it. One gap of more than 2 ms (hystart_ack_delta) ends the train for the rest of the round.
    start = 1.05
    times = ([start + 0.0005 * i for i in range(9)]
             + [start + 0.004 + gap_ms / 1000 + 0.0005 * i for i in range(40)])
    seen_exit_at = None
    for i, now in enumerate(times):
        cc.pkts_acked(now, 1, 0.040, 21 * MSS + i * MSS, 200 * MSS)
        if cc.hystart_found and seen_exit_at is None:
            seen_exit_at = round((now - start) * 1000, 3)
    if exits:
        assert seen_exit_at == 21.0  # 21000 us > 20500 us; at 20.5 ms not yet
        assert cc.ssthresh_segments == 20.0
    else:
        assert seen_exit_at is None and cc.ssthresh_segments == float("inf")
    assert cc.tcp_ext_counters() == {"TCPHystartTrainDetect": int(exits), "TCPHystartTrainCwnd": 20 * exits,
                                     "TCPHystartDelayDetect": 0, "TCPHystartDelayCwnd": 0}


def test_hystart_waits_for_the_low_window():
    cc = Cubic(hz=1000)
    cc.cwnd_segments = 15.0
    cc.pkts_acked(1.0, 1, 0.040, MSS, 15 * MSS)
    for i in range(30):
        cc.pkts_acked(1.05 + 0.001 * i, 1, 0.080, 16 * MSS + i * MSS, 40 * MSS)
    assert not cc.hystart_found and cc.ssthresh_segments == float("inf")


def test_a_hystart_round_starts_at_its_first_ack_even_below_the_low_window():
    # Linux 6.14+ (commit 25c1a9ca53db, net/ipv4/tcp_cubic.c hystart_update): the round is reset
    # on the first ACK past the previous round's end whatever cwnd is; only the detectors wait
    # for cwnd 16. A round starts at 1.05 s with cwnd 12 (the ACK acknowledges past end_seq =
    # 20 MSS); ACKs follow 0.5 ms apart at an unchanged 40 ms RTT, cwnd + 1 per ACK (slow start,
    # as the sender would grow it), so cwnd reaches 16 on the fifth ACK (1.052 s). The ACK train
    # is measured from the round's start: the first ACK more than (40000 + 1000) >> 1 = 20500 us
    # after 1.05 s is the one at 1.071 s, cwnd 12 + 42 = 54. Starting the round at the first ACK
    # with cwnd 16 (before the fix, and the model before) would exit 2 ms later, at cwnd 58.
    cc = Cubic(hz=1000)
    cc.cwnd_segments = 12.0
    cc.pkts_acked(1.0, 1, 0.040, MSS, 20 * MSS)  # delay_min 40000 us; round end 20 MSS
    assert cc.end_seq == 20 * MSS
    start = 1.05
    exit_at = None
    for i in range(80):
        now = start + 0.0005 * i
        cc.pkts_acked(now, 1, 0.040, 21 * MSS + i * MSS, 200 * MSS)
        if i == 0:
            assert cc.round_start_us == 1_050_000 and cc.end_seq == 200 * MSS
        if cc.hystart_found:
            exit_at = (round((now - start) * 1000, 3), cc.cwnd_segments)
            break
        cc.cwnd_segments += 1
    assert exit_at == (21.0, 54.0)
    assert cc.ssthresh_segments == 54.0
    assert cc.tcp_ext_counters()["TCPHystartTrainCwnd"] == 54


def test_hystart_spares_a_deep_queue_the_slow_start_overshoot():
    """10 Mbit/s, 40 ms RTT, a 1,000-packet queue (1.2 s): without HyStart slow start fills the
    queue and loses hundreds of segments; Linux CUBIC leaves slow start when the queueing delay
    reaches 5 ms (delay_min / 8) and loses nothing."""
    path = dict(rate_bps=10e6, one_way_delay_s=0.02, queue_packets=1000)
    linux = run_transfer([path], 8 * MIB, cc="cubic")
    rfc = run_transfer([path], 8 * MIB, cc="cubic-rfc9438")
    assert linux.completed and linux.retransmissions == 0 and linux.timeouts == 0
    assert rfc.retransmissions > 500
    assert linux.subflow_srtt_s[0] < rfc.subflow_srtt_s[0] / 2


def test_window_over_the_first_100_ms_of_an_epoch_with_one_ack_per_ms():
    """cwnd 70 after the loss at 100 (K = 4316), delay_min 50 ms, one segment ACKed per ms.

    j = 0: t = 50 * 1024 // 1000 = 51, target 72, cnt 35. snd_cwnd_cnt reaches 35 at j = 34:
    cwnd 71. j = 35 (cwnd changed): t = 85 * 1024 // 1000 = 87, offs 4229, delta = 410 x 4229^3
    >> 40 = 28, target 72, cnt = 71 // 1 = 71. j = 67 (32 jiffies later): t = 119, offs 4197,
    delta 27, target 73, cnt = 71 // 2 = 35; snd_cwnd_cnt is then 33, reaches 35 at j = 69:
    cwnd 72. j = 70: t = 122, offs 4194, delta 27, target 73, cnt = 72. No re-computation until
    j = 102, so at j = 99 cwnd is 72 with snd_cwnd_cnt 30. The Reno estimate never moves
    (100 ACKed < (70 x 15) >> 3 = 131).
    """
    cc = loss_at_100_with_50ms()
    cc.cwnd_segments = 70.0
    epoch = 20.0
    cwnd, cnt = [], []
    for j in range(100):
        cc.on_ack(1, epoch + j / 1000, 0.05, 0.05)
        cwnd.append(cc.cwnd_segments)
        cnt.append(cc.cnt)
    assert (cwnd[33], cwnd[34], cnt[34], cnt[35]) == (70, 71, 35, 71)
    assert (cnt[66], cnt[67], cwnd[68], cwnd[69], cnt[70]) == (71, 35, 71, 72, 72)
    assert (cwnd[99], cc.snd_cwnd_cnt, cnt[99], cc.tcp_cwnd) == (72, 30, 72, 70)
    assert cc.last_time == 20070  # the last re-computation


def epoch_after_a_loss_at_3(hz: int) -> Cubic:
    """A loss at cwnd 3 (W_max 3, ssthresh max(3 * 717 >> 10, 2) = 2), recovery over at cwnd 2."""
    cc = Cubic(hz=hz)
    cc.cwnd_segments = 3.0
    cc.pkts_acked(1.0, 1, 0.0003, MSS, 3 * MSS)  # delay_min 300 us (no epoch yet: kept)
    cc.on_congestion(1.0)
    cc.cwnd_segments = 2.0
    assert (cc.last_max_cwnd, cc.ssthresh_segments) == (3, 2)
    return cc


@pytest.mark.parametrize("hz, windows, cnts", [
    # HZ = 250 (4 ms jiffies): only the epoch's first ACK (jiffy 500) re-computes; the next three
    # fall in the same jiffy, keep cnt 2 and grow cwnd one segment per 2 ACKed; the fifth (jiffy
    # 501) re-computes: t = (1 + 1) * 1024 // 250 = 8, target still 3 < 6, cnt = 600.
    (250, [3, 4, 5, 6, 6], [2, 2, 2, 2, 600]),
    # HZ = 1000 (1 ms jiffies): the second ACK is a new jiffy with a new cwnd: re-computed,
    # t = 2 * 1024 // 1000 = 2, target 3 = cwnd, cnt 300; then cwnd 3 is unchanged within HZ/32.
    (1000, [3, 3, 3, 3, 3], [2, 300, 300, 300, 300]),
])
def test_the_once_per_jiffy_rule_lets_a_small_window_grow_at_hz_250(hz, windows, cnts):
    """bictcp_update re-computes cnt at most once per jiffy ("goto tcp_friendliness" when
    tcp_jiffies32 == last_time) and last_cwnd is only set by a re-computation, so within the
    jiffy of an epoch's start a growing window keeps the first cnt. Epoch start, cwnd 2 after a
    loss at 3: K = cbrt(2681735677 * 1) = 1389; t = usecs_to_jiffies(300 us) = 1 jiffy, 4/1024 s
    at HZ 250 (1/1024 s at HZ 1000); offs 1385 (1388), delta = 410 * offs^3 >> 40 = 0 either way:
    target 3, cnt = 2 // (3 - 2) = 2. The Reno estimate (one per (cwnd * 15) >> 3 ACKed) stays
    behind: ack_cnt 4, 6, 8, 10 against 5, 7, 9, 11. Each ACK covers 2 segments (delayed ACKs)."""
    cc = epoch_after_a_loss_at_3(hz)
    seen_windows, seen_cnts = [], []
    for now in (2.0, 2.001, 2.002, 2.0035, 2.0045):
        cc.on_ack(2, now, 0.0005, 0.0003)
        seen_windows.append(int(cc.cwnd_segments))
        seen_cnts.append(cc.cnt)
    assert (cc.k, cc.origin_point, cc.tcp_cwnd) == (1389, 3, 2)
    assert seen_windows == windows and seen_cnts == cnts


def test_hz_must_be_a_linux_config_hz():
    with pytest.raises(ValueError, match="CONFIG_HZ"):
        Cubic(hz=200)
