"""Congestion control in isolation: Reno's increase and decrease, RFC 9438 CUBIC's curve with
fast convergence, the Reno-friendly region and the timeout rule, and LIA's alpha (RFC 6356)."""

from __future__ import annotations

import math

import pytest

from mpsim.sim.congestion import Cubic, CubicRfc9438, Lia, LiaCoupling, Reno, make_congestion_control

RTT_S = 0.1


def ack_rounds(cc, rounds: int, start_s: float = 0.0, rtt_s: float = RTT_S) -> float:
    """Acknowledge one window per RTT, one segment per ACK, for ``rounds`` RTTs; returns the time."""
    now = start_s
    for _ in range(rounds):
        acks = int(cc.cwnd_segments)
        for i in range(acks):
            cc.on_ack(1, now + rtt_s * i / acks, rtt_s, rtt_s)
        now += rtt_s
    return now


def test_reno_slow_start_doubles_per_round_and_stops_at_ssthresh():
    cc = Reno()
    assert cc.cwnd_segments == 10  # RFC 6928
    ack_rounds(cc, 3)
    assert cc.cwnd_segments == 80
    cc.ssthresh_segments = 100
    cc.on_ack(30, 1.0, RTT_S, RTT_S)  # 20 to reach ssthresh, the other 10 count in avoidance
    assert cc.cwnd_segments == pytest.approx(100 + 10 / 100)


def test_reno_avoidance_adds_one_segment_per_window_and_halves_on_loss():
    cc = Reno()
    cc.ssthresh_segments = cc.cwnd_segments = 40.0
    ack_rounds(cc, 10)
    assert cc.cwnd_segments == pytest.approx(50, abs=0.3)
    cc.on_congestion(2.0)
    assert cc.ssthresh_segments == pytest.approx(cc.cwnd_segments / 2)
    cc.cwnd_segments = 3.0
    cc.on_congestion(2.0)
    assert cc.ssthresh_segments == 2.0  # RFC 5681: never below 2 segments
    cc.on_timeout(3.0)
    assert cc.cwnd_segments == 1.0


def test_rfc9438_cubic_reduces_by_beta_and_returns_to_w_max_after_k():
    cc = CubicRfc9438()
    cc.cwnd_segments = 100.0
    cc.on_congestion(0.0)
    assert cc.ssthresh_segments == pytest.approx(70)
    assert cc.w_max_segments == 100
    cc.cwnd_segments = cc.ssthresh_segments  # what the sender does when recovery ends
    k_s = (30 / 0.4) ** (1 / 3)  # RFC 9438 equation 2
    now = ack_rounds(cc, int(k_s / RTT_S))
    assert cc.k_s == pytest.approx(k_s)
    # The curve is concave up to W_max (aimed one RTT ahead), then convex.
    assert cc.cwnd_segments == pytest.approx(100, rel=0.03)
    plateau = cc.cwnd_segments
    ack_rounds(cc, 20, now)
    assert cc.cwnd_segments - plateau > 3.0
    w_cubic_2s_later = 100 + 0.4 * (now + 2.0 - k_s) ** 3
    assert cc.cwnd_segments == pytest.approx(w_cubic_2s_later, rel=0.05)


def test_rfc9438_cubic_fast_convergence_lowers_w_max_when_losing_below_it():
    cc = CubicRfc9438()
    cc.cwnd_segments = 100.0
    cc.on_congestion(0.0)
    cc.cwnd_segments = 80.0  # a second loss before regaining W_max: a new flow is taking bandwidth
    cc.on_congestion(1.0)
    assert cc.w_max_segments == pytest.approx(80 * 1.7 / 2)
    plain = CubicRfc9438(fast_convergence=False)
    plain.cwnd_segments = 100.0
    plain.on_congestion(0.0)
    plain.cwnd_segments = 80.0
    plain.on_congestion(1.0)
    assert plain.w_max_segments == 80


def test_rfc9438_cubic_is_reno_friendly_at_small_windows_and_short_rtts():
    # 1 ms RTT: the cubic curve barely moves in 100 RTTs (K is about 2 s); W_est grows by
    # alpha_cubic per RTT until it regains cwnd_prior, then by one segment per RTT (section 4.3).
    cc = CubicRfc9438()
    cc.cwnd_segments = 10.0
    cc.on_congestion(0.0)
    cc.cwnd_segments = cc.ssthresh_segments
    alpha = 3 * (1 - 0.7) / (1 + 0.7)
    now = ack_rounds(cc, 5, rtt_s=0.001)
    assert cc.cwnd_segments == pytest.approx(7 + 5 * alpha, rel=0.05)
    ack_rounds(cc, 95, now, rtt_s=0.001)
    rounds_at_alpha = 3 / alpha
    assert cc.cwnd_segments == pytest.approx(10 + (100 - rounds_at_alpha), rel=0.05)
    assert cc.cwnd_segments > 2 * (10 + 0.4 * (0.1 - cc.k_s) ** 3)  # far above the cubic curve


def test_rfc9438_cubic_after_timeout_starts_its_curve_at_the_current_window():
    cc = CubicRfc9438()
    cc.cwnd_segments = 100.0
    cc.on_timeout(0.0)
    assert cc.cwnd_segments == 1.0
    assert cc.ssthresh_segments == pytest.approx(70)
    cc.cwnd_segments = 70.0  # slow start done
    cc.on_ack(1, 5.0, RTT_S, RTT_S)
    assert cc.k_s == 0.0  # RFC 9438 section 4.8: K = 0, W_max = cwnd at the epoch start
    assert cc.origin_segments == 70.0


def test_lia_alpha_matches_rfc6356_formula():
    coupling = LiaCoupling()
    fast, slow = Lia(coupling), Lia(coupling)
    fast.cwnd_segments, fast.srtt_s = 20.0, 0.02
    slow.cwnd_segments, slow.srtt_s = 40.0, 0.1
    total = 60.0
    expected = total * max(20 / 0.02**2, 40 / 0.1**2) / (20 / 0.02 + 40 / 0.1) ** 2
    assert coupling.alpha() == pytest.approx(expected)
    fast.ssthresh_segments = slow.ssthresh_segments = 1.0
    before = slow.cwnd_segments
    slow.on_ack(1, 1.0, 0.1, 0.1)
    assert slow.cwnd_segments - before == pytest.approx(min(expected / total, 1 / 40))


def test_lia_subflows_together_grow_no_faster_than_one_reno_flow():
    # Two subflows with equal RTTs (a shared bottleneck): one window of ACKs on each.
    coupling = LiaCoupling()
    members = [Lia(coupling), Lia(coupling)]
    for member, cwnd in zip(members, (10.0, 30.0)):
        member.cwnd_segments = member.ssthresh_segments = cwnd
        member.srtt_s = RTT_S
    before = coupling.cwnd_total_segments
    for member in members:
        for _ in range(int(member.cwnd_segments)):
            member.on_ack(1, 1.0, RTT_S, RTT_S)
    growth = coupling.cwnd_total_segments - before
    assert 0.5 < growth <= 1.0  # alpha = max/total = 0.75: one Reno flow would add exactly 1
    assert growth == pytest.approx(0.75, rel=0.02)


def test_make_congestion_control_choices():
    assert isinstance(make_congestion_control("reno"), Reno)
    assert isinstance(make_congestion_control("cubic"), Cubic)
    assert isinstance(make_congestion_control("cubic-rfc9438"), CubicRfc9438)
    assert isinstance(make_congestion_control("reno", LiaCoupling()), Lia)
    with pytest.raises(ValueError, match="LIA"):
        make_congestion_control("cubic", LiaCoupling())
    with pytest.raises(ValueError, match="bbr"):
        make_congestion_control("bbr")
    with pytest.raises(ValueError):
        Reno(initial_cwnd_segments=0)
    assert math.isinf(Reno().ssthresh_segments)


def test_a_timeout_in_a_back_off_series_keeps_ssthresh():
    for cc in (Reno(), Cubic(), CubicRfc9438()):
        cc.cwnd_segments = 60.0
        cc.on_timeout(0.0)
        beta = 0.5 if cc.name == "reno" else 0.7
        assert (cc.cwnd_segments, cc.ssthresh_segments) == (1.0, pytest.approx(60 * beta))
        ssthresh = cc.ssthresh_segments
        cc.on_timeout(1.0, reduce_ssthresh=False)
        assert (cc.cwnd_segments, cc.ssthresh_segments) == (1.0, ssthresh)
