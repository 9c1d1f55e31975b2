"""Random loss processes, pure: each decision is drawn from the ``rng`` the caller gives.

One definition for the two places that lose packets at random: the simulator's links
(:mod:`mpsim.sim.loss`, which adds the per-packet ``drops(packet, now)`` interface) and the
testbed's delay line (:mod:`mpsim.testbed.delay`, one decision per Ethernet frame). Both make the
same decisions from the same random stream, so a scenario's loss spec means one thing in both
worlds (docs/kernel-world.md).

* :class:`BernoulliLoss`: each packet lost independently with ``loss_prob``.
* :class:`GilbertElliottLoss`: the two-state Markov model of bursty loss (Gilbert 1960, Elliott
  1963), advanced once per packet.
"""

from __future__ import annotations

import math
from typing import Protocol


class Rng(Protocol):
    def random(self) -> float: ...


def check_prob(field_name: str, value: float) -> None:
    """Refuse anything but a number in [0, 1] (booleans and NaN included), naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{field_name} must be a probability in [0, 1], got {value!r}")


class BernoulliLoss:
    """Independent loss: each packet is lost with probability ``loss_prob``."""

    def __init__(self, loss_prob: float, rng: Rng) -> None:
        check_prob("loss_prob", loss_prob)
        self.loss_prob = float(loss_prob)
        self.rng = rng

    @property
    def mean_loss_prob(self) -> float:
        return self.loss_prob

    def lost(self) -> bool:
        # Always draw, even for loss_prob 0 or 1, so the stream position depends on packets only.
        return self.rng.random() < self.loss_prob


class GilbertElliottLoss:
    """Bursty loss: a GOOD and a BAD state, each with its own loss probability.

    Per packet: the packet is lost with the current state's probability, then the chain moves
    GOOD->BAD with ``p_good_to_bad`` or BAD->GOOD with ``p_bad_to_good``. The first state is
    drawn from the stationary distribution, so the expected loss is the same from the first
    packet on:

        P(BAD) = p_good_to_bad / (p_good_to_bad + p_bad_to_good)
        mean loss = (1 - P(BAD)) * loss_prob_good + P(BAD) * loss_prob_bad

    A stay in BAD lasts 1 / p_bad_to_good packets on average (geometric); with the defaults
    (loss_prob_good 0, loss_prob_bad 1, the "Gilbert" model) that is the mean loss burst length.
    """

    def __init__(self, p_good_to_bad: float, p_bad_to_good: float, loss_prob_good: float = 0.0,
                 loss_prob_bad: float = 1.0, *, rng: Rng) -> None:
        for name, value in (("p_good_to_bad", p_good_to_bad), ("p_bad_to_good", p_bad_to_good),
                            ("loss_prob_good", loss_prob_good), ("loss_prob_bad", loss_prob_bad)):
            check_prob(name, value)
        if p_good_to_bad + p_bad_to_good == 0:
            raise ValueError("p_good_to_bad and p_bad_to_good cannot both be 0 (the chain would never move)")
        self.p_good_to_bad = float(p_good_to_bad)
        self.p_bad_to_good = float(p_bad_to_good)
        self.loss_prob_good = float(loss_prob_good)
        self.loss_prob_bad = float(loss_prob_bad)
        self.rng = rng
        self.bad = rng.random() < self.bad_state_prob

    @property
    def bad_state_prob(self) -> float:
        """The stationary probability of the BAD state."""
        return self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)

    @property
    def mean_loss_prob(self) -> float:
        """The long-run fraction of packets lost (the formula in the class docstring)."""
        bad = self.bad_state_prob
        return (1.0 - bad) * self.loss_prob_good + bad * self.loss_prob_bad

    def lost(self) -> bool:
        # The loss decision first, then the transition: the order of draws both worlds share.
        random = self.rng.random
        lost = random() < (self.loss_prob_bad if self.bad else self.loss_prob_good)
        self.bad = random() >= self.p_bad_to_good if self.bad else random() < self.p_good_to_bad
        return lost
