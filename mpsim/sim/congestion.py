"""Congestion control for the packet-level transfer model: Reno, CUBIC (Linux's and RFC 9438's) and LIA.

Each algorithm is a small object that owns ``cwnd_segments`` and ``ssthresh_segments`` and is
told four things by its sender (:mod:`mpsim.sim.transfer`): an ACK acknowledged data, with
its RTT sample (``pkts_acked``, every such ACK), segments were acknowledged while the window
may grow (``on_ack``), a loss was detected and fast recovery starts (``on_congestion``), the
retransmission timer expired (``on_timeout``). The sender decides *when* the window may grow
(only when it is cwnd-limited and not in fast recovery) and runs Proportional Rate Reduction
itself during recovery, as Linux does; the algorithms only decide *how much*.

Units are segments (floats), like Linux's ``snd_cwnd``: the bulk transfer sends full-size
segments only (except the last one), so counting bytes would add nothing but divisions.

* :class:`Reno`: RFC 5681 with Linux's byte-counting choices. Slow start adds one segment per
  segment acknowledged (RFC 3465 ABC without the L=2 cap, as Linux ``tcp_slow_start``);
  congestion avoidance adds one segment per window of acknowledged segments (Linux
  ``tcp_cong_avoid_ai``), so delayed ACKs do not halve the growth; ssthresh after a loss is
  ``max(cwnd / 2, 2)`` from cwnd, not FlightSize (Linux ``tcp_reno_ssthresh``; the two agree
  whenever the flow is cwnd-limited, the only case where growth is allowed).
* :class:`Cubic` ("cubic", the default): CUBIC as Linux computes it, following
  ``net/ipv4/tcp_cubic.c`` of Linux 6.x (the file as of 6.3-6.18; HyStart as reworked in 5.8)
  and ``tcp_cong_avoid_ai``/``tcp_slow_start`` of ``net/ipv4/tcp_cong.c``. Integer windows;
  ``bictcp_update`` re-computes the per-ACK divisor ``cnt`` only when cwnd changed or more than
  HZ/32 jiffies passed, and that early return also skips the TCP-friendly (Reno estimate)
  catch-up; and it re-computes at most once per jiffy: within the jiffy of the last
  re-computation a changed cwnd keeps the old ``cnt`` (only the Reno estimate is updated), so at
  HZ = 250 a window can grow several segments on one ``cnt`` where HZ = 1000 re-computes after
  one. The jiffy rate is ``Cubic(hz=...)``, default 250 (CONFIG_HZ of the testbed's kernel and
  Kconfig's default; docs/sim.md); K = cbrt(cube_factor * (W_max - cwnd)) in 1/1024 s with
  cube_factor = 2^40 / 410 (C = 410/1024); time t = jiffies since the epoch plus the minimum
  delay, in 1/1024 s; target below the origin as a u32; ``cnt = cwnd / (target - cwnd)`` or
  ``100 cwnd``, at most 20 before the first loss, at most ``cwnd / (tcp_cwnd - cwnd)`` while the
  Reno estimate (one segment per ``15 cwnd / 8`` ACKed) is ahead, at least 2; the increase is
  ``tcp_cong_avoid_ai`` with ``snd_cwnd_cnt``. Beta 717/1024, fast convergence, no RFC 9438
  alpha switch (Linux has none). HyStart (``hystart_update``): rounds start at the first ACK
  past the previous round's end whatever cwnd is (Linux 6.14+, commit 25c1a9ca53db; before it a
  round began at the first ACK with cwnd 16, which shortened the measured ACK train); from cwnd
  16 in slow start, an ACK train (ACKs at most 2 ms apart) lasting more than (delay_min + 1 ms) / 2 since the round
  started, or the minimum of a round's first 8+ RTT samples above delay_min + clamp(delay_min/8,
  4 ms, 16 ms), sets ssthresh = cwnd. delay_min ignores samples in the first second of an epoch;
  a timeout resets all state (``cubictcp_state`` on TCP_CA_Loss). Differences from the kernel:
  the cube root is exact (Linux: a table and one Newton step, ~0.2% error), no undo
  (``tcp_reno_undo_cwnd``), no idle restart (``CA_EVENT_TX_START``: a bulk transfer never idles),
  ``hystart_ack_delay`` is its 1 ms cap.
* :class:`CubicRfc9438` ("cubic-rfc9438"): RFC 9438 in floating point (C = 0.4, beta = 0.7,
  fast convergence, the Reno-friendly region with alpha = 3(1-beta)/(1+beta) until W_est reaches
  cwnd_prior, then 1; target W_cubic(t + RTT) clamped to [cwnd, 1.5 cwnd]; after a timeout K = 0
  and W_max = cwnd at the start of the epoch, section 4.8). RTT in the target is the minimum RTT
  seen. No HyStart. It grows faster than Linux at small windows (the Reno-friendly region runs
  on every ACK), so at a few percent loss it predicts more goodput than the kernel delivers.
* :class:`Lia`: RFC 6356 Linked Increases for the subflows of one MPTCP connection: Reno slow
  start and Reno decrease per subflow, and the coupled congestion-avoidance increase
  ``min(alpha * acked / cwnd_total, acked / cwnd_i)`` with
  ``alpha = cwnd_total * max_i(cwnd_i / rtt_i^2) / (sum_i cwnd_i / rtt_i)^2`` computed on every
  ACK (the RFC allows once per loss or per RTT; per ACK is the exact value) from each member's
  smoothed RTT as of its last window increase. Subflows without an RTT sample yet are left out
  of alpha's sums.

No BBR: the kernel benchmark pins CUBIC (BBR ignores random loss up to a few percent, so the
model would have to be BBR to compare against an unpinned kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mpsim.proto.catalogue import Registry

#: RFC 6928 initial window, in segments.
INITIAL_CWND_SEGMENTS = 10
#: The smallest ssthresh after a reduction (RFC 5681 equation 4: 2 * SMSS).
MIN_SSTHRESH_SEGMENTS = 2.0


class CongestionControl:
    """Common state: a window in segments that the sender reads before every transmission.

    ``on_ack`` is called only when the sender was cwnd-limited and is not in fast recovery;
    ``acked_segments`` counts segments newly acknowledged, cumulatively or by SACK.
    """

    name = "base"

    def __init__(self, initial_cwnd_segments: float = INITIAL_CWND_SEGMENTS) -> None:
        if not initial_cwnd_segments >= 1:
            raise ValueError(f"initial_cwnd_segments must be >= 1, got {initial_cwnd_segments!r}")
        self.cwnd_segments = float(initial_cwnd_segments)
        self.ssthresh_segments = math.inf

    def _slow_start(self, acked_segments: float) -> float:
        """Grow up to ssthresh (Linux ``tcp_slow_start``); returns the acknowledgements left over."""
        cwnd = self.cwnd_segments
        if cwnd >= self.ssthresh_segments:
            return acked_segments
        grown = min(cwnd + acked_segments, self.ssthresh_segments)
        self.cwnd_segments = grown
        return acked_segments - (grown - cwnd)

    def on_ack(self, acked_segments: float, now: float, srtt_s: float, min_rtt_s: float) -> None:
        raise NotImplementedError

    def tcp_ext_counters(self) -> dict[str, int]:
        """The algorithm's own counters under Linux's TcpExt names (nstat), for comparing a
        model run's counters with a kernel run's; none here."""
        return {}

    def pkts_acked(self, now: float, acked_segments: int, rtt_s: float | None, snd_una: int, snd_nxt: int) -> None:
        """Every ACK that acknowledges data, in any state (Linux ``pkts_acked``): ``rtt_s`` is the
        RTT of the most recently sent segment it acknowledges (Linux ``ca_rtt_us``), or None;
        ``snd_una``/``snd_nxt`` are the sender's byte sequence numbers after the ACK."""

    def on_congestion(self, now: float) -> None:
        """A loss detected by SACK or duplicate ACKs: set ssthresh (the sender runs PRR to it)."""
        raise NotImplementedError

    def on_timeout(self, now: float, reduce_ssthresh: bool = True) -> None:
        """The retransmission timer expired: cwnd back to one segment, and ssthresh as for a loss
        unless the sender already reduced it for this episode (a back-off series, or an RTO
        during fast recovery: Linux ``tcp_enter_loss``)."""
        if reduce_ssthresh:
            self.on_congestion(now)
        self.cwnd_segments = 1.0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(cwnd_segments={self.cwnd_segments:.2f}, "
                f"ssthresh_segments={self.ssthresh_segments})")


class Reno(CongestionControl):
    """RFC 5681 Reno with Linux's byte counting (module docstring)."""

    name = "reno"

    def on_ack(self, acked_segments: float, now: float, srtt_s: float, min_rtt_s: float) -> None:
        acked = self._slow_start(acked_segments)
        if acked > 0:
            self.cwnd_segments += acked / self.cwnd_segments

    def on_congestion(self, now: float) -> None:
        self.ssthresh_segments = max(self.cwnd_segments / 2.0, MIN_SSTHRESH_SEGMENTS)


class CubicRfc9438(CongestionControl):
    """RFC 9438 CUBIC in floating point, the RFC's form ("cubic-rfc9438"; module docstring)."""

    name = "cubic-rfc9438"
    C = 0.4  # segments / s^3 (RFC 9438 section 5)
    BETA = 0.7

    def __init__(self, initial_cwnd_segments: float = INITIAL_CWND_SEGMENTS, *, fast_convergence: bool = True) -> None:
        super().__init__(initial_cwnd_segments)
        self.fast_convergence = fast_convergence
        self.w_max_segments = 0.0  # 0: no congestion yet, or reset by a timeout (K = 0 then)
        self.cwnd_prior_segments = 0.0
        self.epoch_start_s: float | None = None
        self.k_s = 0.0
        self.origin_segments = 0.0  # W_max of the current epoch's cubic curve
        self.w_est_segments = 0.0
        self.alpha_cubic = 3.0 * (1.0 - self.BETA) / (1.0 + self.BETA)

    def on_ack(self, acked_segments: float, now: float, srtt_s: float, min_rtt_s: float) -> None:
        acked = self._slow_start(acked_segments)
        if acked <= 0:
            return
        cwnd = self.cwnd_segments
        if self.epoch_start_s is None:
            # The epoch starts at the first ACK in congestion avoidance (RFC 9438 section 4.2).
            self.epoch_start_s = now
            self.w_est_segments = cwnd
            if self.w_max_segments > cwnd:
                self.k_s = ((self.w_max_segments - cwnd) / self.C) ** (1.0 / 3.0)
                self.origin_segments = self.w_max_segments
            else:  # after a timeout, or when cwnd already passed W_max: the curve starts here
                self.k_s = 0.0
                self.origin_segments = cwnd
        t_s = now - self.epoch_start_s
        alpha = 1.0 if self.w_est_segments >= self.cwnd_prior_segments else self.alpha_cubic
        self.w_est_segments += alpha * acked / cwnd
        w_cubic_now = self.origin_segments + self.C * (t_s - self.k_s) ** 3
        if w_cubic_now < self.w_est_segments:  # Reno-friendly region (section 4.3)
            self.cwnd_segments = self.w_est_segments
            return
        target = self.origin_segments + self.C * (t_s + min_rtt_s - self.k_s) ** 3
        target = min(max(target, cwnd), 1.5 * cwnd)
        self.cwnd_segments = cwnd + (target - cwnd) / cwnd * acked

    def on_congestion(self, now: float) -> None:
        cwnd = self.cwnd_segments
        self.cwnd_prior_segments = cwnd
        if self.fast_convergence and cwnd < self.w_max_segments:
            self.w_max_segments = cwnd * (1.0 + self.BETA) / 2.0  # release bandwidth to newer flows
        else:
            self.w_max_segments = cwnd
        self.ssthresh_segments = max(cwnd * self.BETA, MIN_SSTHRESH_SEGMENTS)
        self.epoch_start_s = None

    def on_timeout(self, now: float, reduce_ssthresh: bool = True) -> None:
        super().on_timeout(now, reduce_ssthresh)
        self.w_max_segments = 0.0  # section 4.8: K = 0, W_max = cwnd at the next epoch's start
        self.epoch_start_s = None


# --- Linux CUBIC (net/ipv4/tcp_cubic.c, Linux 6.x; module docstring) ---------------------------
#: Linux's jiffy rate (CONFIG_HZ) assumed by default: 250, Kconfig's default and the testbed
#: kernel's (6.18, ``CONFIG_HZ=250``); Fedora and Ubuntu's generic kernels use 1000. It is the
#: clock of bictcp_update's HZ/32 re-computation interval, of its once-per-jiffy rule and of its
#: epoch arithmetic; at a 1 ms RTT and 2 % loss it changes goodput by a third (docs/sim.md).
LINUX_HZ = 250
#: CONFIG_HZ values a Linux kernel can be built with (kernel/Kconfig.hz).
LINUX_HZ_CHOICES = (100, 250, 300, 1000)
#: tcp_cubic.c's time unit for K and t: 2^10 per second (BICTCP_HZ).
BICTCP_HZ_SHIFT = 10
#: beta = 717/1024 (BICTCP_BETA_SCALE), about 0.7.
LINUX_CUBIC_BETA = 717
BICTCP_BETA_SCALE = 1024
#: C = bic_scale * 10 / 1024 = 410/1024 (about 0.4) segments per second cubed: ``cube_rtt_scale``.
CUBE_RTT_SCALE = 41 * 10
#: 2^40 / 410: turns (W_max - cwnd) into K^3 in (1/1024 s)^3 (``cube_factor`` at module load).
CUBE_FACTOR = (1 << (10 + 3 * BICTCP_HZ_SHIFT)) // CUBE_RTT_SCALE
#: The Reno estimate grows one segment per ``cwnd * 15 / 8`` segments acknowledged:
#: 8 (1024 + 717) / 3 / (1024 - 717), in integers, as the kernel's ``beta_scale``.
CUBIC_FRIENDLY_BETA_SCALE = 8 * (BICTCP_BETA_SCALE + LINUX_CUBIC_BETA) // 3 // (BICTCP_BETA_SCALE - LINUX_CUBIC_BETA)
HYSTART_LOW_WINDOW = 16
HYSTART_MIN_SAMPLES = 8
HYSTART_DELAY_MIN_US = 4000
HYSTART_DELAY_MAX_US = 16000
HYSTART_ACK_DELTA_US = 2000
#: ``hystart_ack_delay``: min(1 ms, 4 GSO-size (64 KiB) skbs at the pacing rate). The pacing rate
#: in slow start is 2 cwnd/SRTT, so the 1 ms cap holds below about 260 MB/s; the model uses the cap.
HYSTART_ACK_DELAY_US = 1000


def integer_cube_root(value: int) -> int:
    """floor(value ** (1/3)) for a non-negative int, exactly (Newton's method on integers).

    Linux's ``cubic_root`` uses a 64-entry table and one Newton step (about 0.2% average
    error); the model takes the exact root of the same fixed-point quantity, so its K can be
    a unit (1/1024 s) or two away from the kernel's.
    """
    if value < 0:
        raise ValueError(f"cube root of a negative value {value!r}")
    if value < 2:
        return value
    x = 1 << ((value.bit_length() + 2) // 3)  # above the root: Newton descends from here
    while True:
        y = (2 * x + value // (x * x)) // 3
        if y >= x:
            break
        x = y
    while x * x * x > value:
        x -= 1
    while (x + 1) ** 3 <= value:
        x += 1
    return x


def _jiffies(now_s: float, hz: int = LINUX_HZ) -> int:
    """Linux ``tcp_jiffies32``: whole ticks of 1/``hz`` s of the microsecond clock."""
    return int(now_s * 1e6 + 0.5) * hz // 1_000_000


class Cubic(CongestionControl):
    """CUBIC as Linux computes it: ``net/ipv4/tcp_cubic.c`` (Linux 6.x, unchanged in substance
    since 5.8's HyStart rework), with HyStart; the default "cubic" (module docstring)."""

    name = "cubic"

    def __init__(self, initial_cwnd_segments: float = INITIAL_CWND_SEGMENTS, *, fast_convergence: bool = True,
                 hystart: bool = True, tcp_friendliness: bool = True, hz: int = LINUX_HZ) -> None:
        if hz not in LINUX_HZ_CHOICES:
            raise ValueError(f"hz must be one of Linux's CONFIG_HZ values {LINUX_HZ_CHOICES}, got {hz!r}")
        super().__init__(int(initial_cwnd_segments))
        self.hz = hz
        self.fast_convergence = fast_convergence
        self.hystart = hystart
        self.tcp_friendliness = tcp_friendliness
        self.snd_cwnd_cnt = 0  # tcp_sock.snd_cwnd_cnt: ACKed segments toward the next increase
        self.snd_nxt = 0  # as last reported by the sender (HyStart's round end)
        self.hystart_found = False
        # Linux's HyStart MIB counters (hystart_update): exits by each detector and the sum of
        # the windows at which they happened (TCPHystartTrainDetect/Cwnd, TCPHystartDelayDetect/Cwnd).
        self.hystart_train_detect = self.hystart_train_cwnd = 0
        self.hystart_delay_detect = self.hystart_delay_cwnd = 0
        self._reset()
        self._hystart_reset(0, 0)

    def _reset(self) -> None:
        """``bictcp_reset``: everything but HyStart's round state."""
        self.cnt = 0  # segments ACKed per one-segment increase
        self.last_max_cwnd = 0  # W_max, after fast convergence
        self.last_cwnd = 0
        self.last_time = 0  # jiffies of the last re-computation
        self.origin_point = 0
        self.k = 0  # in 1/1024 s
        self.delay_min_us = 0
        self.epoch_start: int | None = None  # jiffies; Linux uses 0 for "no epoch"
        self.ack_cnt = 0
        self.tcp_cwnd = 0  # the Reno estimate
        self.hystart_found = False

    def _hystart_reset(self, now_us: int, snd_nxt: int) -> None:
        """``bictcp_hystart_reset``: a new round of HyStart's two detectors."""
        self.round_start_us = self.last_ack_us = now_us
        self.end_seq = snd_nxt
        self.curr_rtt_us: float = math.inf
        self.sample_cnt = 0

    @property
    def k_s(self) -> float:
        return self.k / 1024.0

    # --- per ACK ------------------------------------------------------------------------------

    def pkts_acked(self, now: float, acked_segments: int, rtt_s: float | None, snd_una: int, snd_nxt: int) -> None:
        """``cubictcp_acked``: the minimum delay and HyStart, on every ACK that acknowledges data."""
        self.snd_nxt = snd_nxt
        if rtt_s is None:
            return
        now_us = int(now * 1e6 + 0.5)
        if self.epoch_start is not None and now_us * self.hz // 1_000_000 - self.epoch_start < self.hz:
            return  # Linux discards delay samples for 1 s after a reduction starts an epoch
        delay_us = max(int(rtt_s * 1e6 + 0.5), 1)
        if self.delay_min_us == 0 or self.delay_min_us > delay_us:
            self.delay_min_us = delay_us
        if self.hystart and not self.hystart_found and self.cwnd_segments < self.ssthresh_segments:
            self._hystart_update(now_us, delay_us, snd_una, snd_nxt)

    def _hystart_update(self, now_us: int, delay_us: int, snd_una: int, snd_nxt: int) -> None:
        """``hystart_update``: leave slow start (ssthresh = cwnd) on an ACK train lasting half the
        minimum delay, or on a round's minimum RTT rising by clamp(delay_min / 8, 4, 16) ms."""
        if snd_una > self.end_seq:
            self._hystart_reset(now_us, snd_nxt)
        # Rounds start at their first ACK whatever the window; only the detectors wait for
        # hystart_low_window (Linux 6.14+, commit 25c1a9ca53db "tcp_cubic: fix incorrect HyStart
        # round start detection"; before it, a round began at the first ACK with cwnd >= 16).
        if self.cwnd_segments < HYSTART_LOW_WINDOW:
            return
        # ACK train: ACKs no more than 2 ms apart since the round started, for longer than
        # (delay_min + ack delay) / 2 (halved: no pacing, sk_pacing_status is SK_PACING_NONE).
        if now_us - self.last_ack_us <= HYSTART_ACK_DELTA_US:
            self.last_ack_us = now_us
            threshold_us = (self.delay_min_us + HYSTART_ACK_DELAY_US) >> 1
            if now_us - self.round_start_us > threshold_us:
                self.hystart_found = True
                self.hystart_train_detect += 1
                self.hystart_train_cwnd += int(self.cwnd_segments)
                self.ssthresh_segments = self.cwnd_segments
        if self.curr_rtt_us > delay_us:
            self.curr_rtt_us = delay_us
        if self.sample_cnt < HYSTART_MIN_SAMPLES:
            self.sample_cnt += 1
        else:
            allowance_us = min(max(self.delay_min_us >> 3, HYSTART_DELAY_MIN_US), HYSTART_DELAY_MAX_US)
            if self.curr_rtt_us > self.delay_min_us + allowance_us:
                self.hystart_found = True
                self.hystart_delay_detect += 1
                self.hystart_delay_cwnd += int(self.cwnd_segments)
                self.ssthresh_segments = self.cwnd_segments

    def tcp_ext_counters(self) -> dict[str, int]:
        return {"TCPHystartTrainDetect": self.hystart_train_detect, "TCPHystartTrainCwnd": self.hystart_train_cwnd,
                "TCPHystartDelayDetect": self.hystart_delay_detect, "TCPHystartDelayCwnd": self.hystart_delay_cwnd}

    def on_ack(self, acked_segments: float, now: float, srtt_s: float, min_rtt_s: float) -> None:
        """``cubictcp_cong_avoid`` (the sender calls it only when cwnd-limited and in Open)."""
        acked = int(acked_segments)
        if self.cwnd_segments < self.ssthresh_segments:  # tcp_in_slow_start
            acked = int(self._slow_start(acked))
            if acked <= 0:
                return
        cwnd = int(self.cwnd_segments)
        self._update(cwnd, acked, _jiffies(now, self.hz))
        self._cong_avoid_ai(self.cnt, acked)

    def _update(self, cwnd: int, acked: int, jiffies: int) -> None:
        """``bictcp_update``: re-compute ``cnt`` from the cubic curve and the Reno estimate."""
        self.ack_cnt += acked
        if self.last_cwnd == cwnd and jiffies - self.last_time <= self.hz // 32:
            return  # same window within HZ/32: keep cnt, and skip the Reno catch-up as well
        if self.epoch_start is None or jiffies != self.last_time:  # at most once per jiffy
            self.last_cwnd = cwnd
            self.last_time = jiffies
            if self.epoch_start is None:
                self.epoch_start = jiffies
                self.ack_cnt = acked
                self.tcp_cwnd = cwnd
                if self.last_max_cwnd <= cwnd:
                    self.k = 0
                    self.origin_point = cwnd
                else:
                    self.k = integer_cube_root(CUBE_FACTOR * (self.last_max_cwnd - cwnd))
                    self.origin_point = self.last_max_cwnd
            # t is aimed one minimum delay ahead, in 1/1024 s (usecs_to_jiffies rounds up).
            t = jiffies - self.epoch_start + -(-self.delay_min_us * self.hz // 1_000_000)
            t = (t << BICTCP_HZ_SHIFT) // self.hz
            offs = self.k - t if t < self.k else t - self.k
            delta = (CUBE_RTT_SCALE * offs * offs * offs) >> (10 + 3 * BICTCP_HZ_SHIFT)
            if t < self.k:
                target = (self.origin_point - delta) & 0xFFFFFFFF  # u32, as the kernel's
            else:
                target = self.origin_point + delta
            self.cnt = cwnd // (target - cwnd) if target > cwnd else 100 * cwnd
            if self.last_max_cwnd == 0 and self.cnt > 20:
                self.cnt = 20  # no loss yet: at least 5% growth per RTT
        if self.tcp_friendliness:
            delta = (cwnd * CUBIC_FRIENDLY_BETA_SCALE) >> 3
            if self.ack_cnt > delta:
                steps = (self.ack_cnt - 1) // delta
                self.ack_cnt -= steps * delta
                self.tcp_cwnd += steps
            if self.tcp_cwnd > cwnd:
                max_cnt = cwnd // (self.tcp_cwnd - cwnd)
                if self.cnt > max_cnt:
                    self.cnt = max_cnt
        if self.cnt < 2:
            self.cnt = 2  # at most one segment per two ACKed: 1.5x per RTT

    def _cong_avoid_ai(self, w: int, acked: int) -> None:
        """Linux ``tcp_cong_avoid_ai`` (net/ipv4/tcp_cong.c): one segment per ``w`` ACKed."""
        if self.snd_cwnd_cnt >= w:
            self.snd_cwnd_cnt = 0
            self.cwnd_segments += 1
        self.snd_cwnd_cnt += acked
        if self.snd_cwnd_cnt >= w:
            steps = self.snd_cwnd_cnt // w
            self.snd_cwnd_cnt -= steps * w
            self.cwnd_segments += steps

    # --- reductions ---------------------------------------------------------------------------

    def on_congestion(self, now: float) -> None:
        """``cubictcp_recalc_ssthresh`` (and ``tcp_init_cwnd_reduction`` clearing snd_cwnd_cnt)."""
        cwnd = int(self.cwnd_segments)
        self.epoch_start = None
        if cwnd < self.last_max_cwnd and self.fast_convergence:
            self.last_max_cwnd = cwnd * (BICTCP_BETA_SCALE + LINUX_CUBIC_BETA) // (2 * BICTCP_BETA_SCALE)
        else:
            self.last_max_cwnd = cwnd
        self.ssthresh_segments = float(max(cwnd * LINUX_CUBIC_BETA // BICTCP_BETA_SCALE, 2))
        self.snd_cwnd_cnt = 0

    def on_timeout(self, now: float, reduce_ssthresh: bool = True) -> None:
        """``tcp_enter_loss``: ssthresh first, then ``cubictcp_state(TCP_CA_Loss)`` forgets
        everything (W_max, delay_min, the epoch) and starts a new HyStart round."""
        super().on_timeout(now, reduce_ssthresh)
        ssthresh = self.ssthresh_segments
        self._reset()
        self.ssthresh_segments = ssthresh
        self._hystart_reset(int(now * 1e6 + 0.5), self.snd_nxt)
        self.snd_cwnd_cnt = 0


class LiaCoupling:
    """The subflows of one MPTCP connection whose increases RFC 6356 links."""

    def __init__(self) -> None:
        self.members: list[Lia] = []

    @property
    def cwnd_total_segments(self) -> float:
        return sum(member.cwnd_segments for member in self.members)

    def alpha(self) -> float:
        """RFC 6356 section 3 alpha, over the members that have an RTT sample."""
        best = 0.0
        denominator = 0.0
        for member in self.members:
            if member.srtt_s:
                best = max(best, member.cwnd_segments / (member.srtt_s * member.srtt_s))
                denominator += member.cwnd_segments / member.srtt_s
        if denominator == 0.0:
            return 1.0
        return self.cwnd_total_segments * best / (denominator * denominator)


class Lia(Reno):
    """One subflow's share of RFC 6356 LIA; ``coupling`` holds the connection's subflows."""

    name = "lia"

    def __init__(self, coupling: LiaCoupling, initial_cwnd_segments: float = INITIAL_CWND_SEGMENTS) -> None:
        super().__init__(initial_cwnd_segments)
        self.coupling = coupling
        self.srtt_s = 0.0  # 0 until the sender reports a sample
        coupling.members.append(self)

    def on_ack(self, acked_segments: float, now: float, srtt_s: float, min_rtt_s: float) -> None:
        self.srtt_s = srtt_s
        acked = self._slow_start(acked_segments)
        if acked <= 0:
            return
        coupling = self.coupling
        total = coupling.cwnd_total_segments
        self.cwnd_segments += min(coupling.alpha() * acked / total, acked / self.cwnd_segments)


def check_kernel_hz(hz: Any) -> None:
    """A kernel's CONFIG_HZ: one of :data:`LINUX_HZ_CHOICES`, else ValueError naming them."""
    if type(hz) is not int or hz not in LINUX_HZ_CHOICES:
        raise ValueError(f"kernel_hz must be one of Linux's CONFIG_HZ values "
                         f"{', '.join(map(str, LINUX_HZ_CHOICES))}, got {hz!r}")


def make_congestion_control(cc: str, coupling: LiaCoupling | None = None,
                            initial_cwnd_segments: float = INITIAL_CWND_SEGMENTS,
                            hz: int = LINUX_HZ) -> CongestionControl:
    """One subflow's algorithm: ``cc`` is "reno", "cubic" (Linux) or "cubic-rfc9438"; with a ``coupling``, LIA (Reno-based).
    ``hz`` is the sending kernel's CONFIG_HZ (checked for every ``cc``; only Linux CUBIC counts jiffies)."""
    check_kernel_hz(hz)
    if coupling is not None:
        if cc != "reno":
            raise ValueError(f"LIA (RFC 6356) couples Reno's increase; use cc='reno' with coupled='lia', not {cc!r}")
        return Lia(coupling, initial_cwnd_segments)
    if cc == "reno":
        return Reno(initial_cwnd_segments)
    if cc == "cubic":
        return Cubic(initial_cwnd_segments, hz=hz)
    if cc == "cubic-rfc9438":
        return CubicRfc9438(initial_cwnd_segments)
    raise ValueError(f"cc must be 'reno', 'cubic' or 'cubic-rfc9438', got {cc!r}")


@dataclass(frozen=True, slots=True)
class CongestionControlEntry:
    """A congestion control by name: ``create(coupling, initial_cwnd_segments)`` builds one
    subflow's algorithm; a ``coupled`` one links the subflows of an MPTCP connection through the
    :class:`LiaCoupling` its sender passes (a single-path transfer passes a coupling of one)."""

    name: str
    description: str
    create: Callable[[LiaCoupling | None, float], CongestionControl]
    coupled: bool = False


#: Every congestion control a scenario can name (mpsim/proto/catalogue.py has the other kinds).
CONGESTION_CONTROLS: Registry[CongestionControlEntry] = Registry("congestion control")
for _entry in (
    CongestionControlEntry("reno", "RFC 5681 with Linux's byte counting", lambda c, w: Reno(w)),
    CongestionControlEntry("cubic", "CUBIC as Linux tcp_cubic.c computes it, with HyStart (Linux's default)",
                           lambda c, w: Cubic(w)),
    CongestionControlEntry("cubic-rfc9438", "CUBIC in RFC 9438's floating-point form, no HyStart",
                           lambda c, w: CubicRfc9438(w)),
    CongestionControlEntry("lia", "RFC 6356 linked increases over Reno (MPTCP; one path: Reno)",
                           lambda c, w: Lia(c if c is not None else LiaCoupling(), w), coupled=True),
):
    CONGESTION_CONTROLS.register(_entry.name, _entry)
