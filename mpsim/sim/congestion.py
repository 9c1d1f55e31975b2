"""Congestion control for the packet-level transfer model: Reno, CUBIC and the LIA coupling.

Each algorithm is a small object that owns ``cwnd_segments`` and ``ssthresh_segments`` and is
told three things by its sender (:mod:`mpsim.sim.transfer`): segments were acknowledged
(``on_ack``), a loss was detected and fast recovery starts (``on_congestion``), the
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
* :class:`Cubic`: RFC 9438 (C = 0.4, beta = 0.7, fast convergence, the Reno-friendly region
  with alpha = 3(1-beta)/(1+beta) until W_est reaches cwnd_prior, then 1; target
  W_cubic(t + RTT) clamped to [cwnd, 1.5 cwnd]; after a timeout K = 0 and W_max = cwnd at the
  start of the epoch, section 4.8). RTT in the target is the minimum RTT seen, as Linux's
  ``delay_min``. Not modelled: HyStart (Linux enables it by default; it leaves slow start on a
  delay increase, which matters for short transfers over deep queues), and the per-RTT ACK
  train / ``tcp_friendliness`` details of Linux ``bictcp_update``.
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


class Cubic(CongestionControl):
    """RFC 9438 CUBIC (module docstring for what is and is not modelled)."""

    name = "cubic"
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


def make_congestion_control(cc: str, coupling: LiaCoupling | None = None,
                            initial_cwnd_segments: float = INITIAL_CWND_SEGMENTS) -> CongestionControl:
    """One subflow's algorithm: ``cc`` is "reno" or "cubic"; with a ``coupling``, LIA (Reno-based)."""
    if coupling is not None:
        if cc != "reno":
            raise ValueError(f"LIA (RFC 6356) couples Reno's increase; use cc='reno' with coupled='lia', not {cc!r}")
        return Lia(coupling, initial_cwnd_segments)
    if cc == "reno":
        return Reno(initial_cwnd_segments)
    if cc == "cubic":
        return Cubic(initial_cwnd_segments)
    raise ValueError(f"cc must be 'reno' or 'cubic', got {cc!r}")


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
    CongestionControlEntry("cubic", "CUBIC (RFC 9438 form, no HyStart)", lambda c, w: Cubic(w)),
    CongestionControlEntry("lia", "RFC 6356 linked increases over Reno (MPTCP; one path: Reno)",
                           lambda c, w: Lia(c if c is not None else LiaCoupling(), w), coupled=True),
):
    CONGESTION_CONTROLS.register(_entry.name, _entry)
