"""Loss models for link directions: each decides, per packet, whether the link loses it.

Every model has ``drops(packet, now) -> bool`` and draws only from the ``rng`` it was given (see
:mod:`mpsim.sim.seeds`). A :class:`~mpsim.sim.link.LinkDirection` asks its model once per packet
that passed the middlebox filters, before the queue, so a lost packet never occupies the queue.

* :class:`NoLoss` never drops.
* :class:`Bernoulli` drops each packet independently with ``loss_prob``.
* :class:`GilbertElliott` is the two-state Markov model of bursty loss (Gilbert 1960, Elliott
  1963), advanced once per packet.
* :class:`Scripted` drops chosen negotiation segments ("the first SYN-ACK", "every SYN with data",
  "the RST", "the 3rd data segment"), classified with :mod:`mpsim.proto.middlebox`.

Random models apply to every packet on the link (negotiation ``IpPacket``s, ICMP messages and the
light packets of :mod:`mpsim.sim.transfer` alike); :class:`Scripted` applies to ``IpPacket``s only.

Simplifications: loss is per packet, independent of its size and of the queue (no bit errors,
no correlation with congestion); the Gilbert-Elliott chain advances per packet, not per unit of
time, so a quiet link does not move between states.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mpsim.errors import MpsimError
from mpsim.proto.loss import BernoulliLoss, GilbertElliottLoss, Rng, check_prob
from mpsim.proto.middlebox import SegmentClass, SegmentClassifier
from mpsim.wire.segment import IpPacket


class LossModel(Protocol):
    def drops(self, packet: Any, now: float) -> bool: ...


class LossSpecError(MpsimError, ValueError):
    """A loss specification (from a scenario file) that cannot be built; ``key`` names the culprit."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NoLoss:
    """A loss-free link."""

    def drops(self, packet: Any, now: float) -> bool:
        return False

    def __repr__(self) -> str:
        return "NoLoss()"


class Bernoulli(BernoulliLoss):
    """Independent loss: each packet is dropped with probability ``loss_prob``.

    The process is :class:`mpsim.proto.loss.BernoulliLoss`, shared with the testbed's delay line."""

    def drops(self, packet: Any, now: float) -> bool:
        # Inlined lost(): one call less per packet on the links' hot path.
        return self.rng.random() < self.loss_prob

    def __repr__(self) -> str:
        return f"Bernoulli(loss_prob={self.loss_prob})"


class GilbertElliott(GilbertElliottLoss):
    """Bursty loss: a GOOD and a BAD state, each with its own loss probability.

    The chain is :class:`mpsim.proto.loss.GilbertElliottLoss` (its docstring has the formulas),
    shared with the testbed's delay line."""

    def drops(self, packet: Any, now: float) -> bool:
        return self.lost()

    def __repr__(self) -> str:
        return (f"GilbertElliott(p_good_to_bad={self.p_good_to_bad}, p_bad_to_good={self.p_bad_to_good}, "
                f"loss_prob_good={self.loss_prob_good}, loss_prob_bad={self.loss_prob_bad})")


@dataclass(frozen=True)
class DropRule:
    """Which segments a :class:`Scripted` model drops.

    ``occurrences``: 1-based indices among the segments this rule matches on the link direction
    (None: every match). ``with_payload``: True for segments carrying data only, False for those
    without, None for both. Examples: the first SYN-ACK ``DropRule(SegmentClass.SYN_ACK, {1})``,
    every SYN with data ``DropRule(SegmentClass.SYN, with_payload=True)``, the RST
    ``DropRule(SegmentClass.RST, {1})``, the 3rd data segment ``DropRule(SegmentClass.DATA, {3})``.
    """

    segment_class: SegmentClass
    occurrences: frozenset[int] | None = None
    with_payload: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.segment_class, SegmentClass):
            raise ValueError(f"segment_class must be a SegmentClass, got {self.segment_class!r}")
        if self.occurrences is not None:
            occurrences = frozenset(self.occurrences)
            if not occurrences or not all(type(n) is int and n >= 1 for n in occurrences):
                raise ValueError(f"occurrences must be 1-based ints (None: every match), got {self.occurrences!r}")
            object.__setattr__(self, "occurrences", occurrences)
        if self.with_payload is not None and type(self.with_payload) is not bool:
            raise ValueError(f"with_payload must be True, False or None, got {self.with_payload!r}")


class Scripted:
    """Drops the segments its :class:`DropRule`\\ s select; other packets are never dropped.

    Only ``IpPacket``\\ s are classified (ICMP messages and light transfer packets pass). Each rule
    counts its own matches, also those another rule dropped, so rules do not interfere. The third
    ACK is recognised per flow as :class:`~mpsim.proto.middlebox.SegmentClassifier` does; segments
    dropped by the link's filters before this stage are not seen, hence not counted.
    """

    def __init__(self, rules: Iterable[DropRule]) -> None:
        self.rules = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, DropRule):
                raise ValueError(f"Scripted takes DropRule values, got {rule!r}")
        self.matched = [0] * len(self.rules)  # matches per rule so far
        self.dropped = [0] * len(self.rules)  # drops per rule so far
        self._classifier = SegmentClassifier()

    def drops(self, packet: Any, now: float) -> bool:
        if not isinstance(packet, IpPacket):
            return False
        classes = self._classifier.classify(packet)  # once per packet: it tracks third ACKs
        has_payload = bool(packet.segment.payload)
        lost = False
        for index, rule in enumerate(self.rules):
            if rule.segment_class not in classes:
                continue
            if rule.with_payload is not None and has_payload is not rule.with_payload:
                continue
            self.matched[index] += 1
            if rule.occurrences is None or self.matched[index] in rule.occurrences:
                self.dropped[index] += 1
                lost = True
        return lost

    def __repr__(self) -> str:
        return f"Scripted({list(self.rules)!r})"


# --- scenario files -----------------------------------------------------------------------------

_MODEL_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # model -> (required, optional)
    "none": (frozenset(), frozenset()),
    "bernoulli": (frozenset({"loss_prob"}), frozenset()),
    "gilbert_elliott": (frozenset({"p_good_to_bad", "p_bad_to_good"}), frozenset({"loss_prob_good", "loss_prob_bad"})),
    "scripted": (frozenset({"drops"}), frozenset()),
}
_RULE_KEYS = (frozenset({"segment_class"}), frozenset({"occurrences", "with_payload"}))


def _check_keys(spec: Mapping[str, Any], required: frozenset[str], optional: frozenset[str], where: str) -> None:
    for key in sorted(spec):
        if key not in required | optional:
            allowed = ", ".join(sorted(required | optional)) or "none"
            raise LossSpecError(f"{where}: unknown key {key!r} (allowed: {allowed})", key)
    for key in sorted(required):
        if key not in spec:
            raise LossSpecError(f"{where}: missing key {key!r}", key)


def _rule_from_spec(spec: Any, index: int) -> DropRule:
    where = f"loss model 'scripted', drops[{index}]"
    if not isinstance(spec, Mapping):
        raise LossSpecError(f"{where}: expected a mapping, got {spec!r}", "drops")
    _check_keys(spec, *_RULE_KEYS, where)
    classes = {c.value: c for c in SegmentClass}
    if spec["segment_class"] not in classes:
        raise LossSpecError(f"{where}: segment_class {spec['segment_class']!r} is not one of "
                            f"{', '.join(sorted(classes))}", "segment_class")
    occurrences = spec.get("occurrences")
    if isinstance(occurrences, int) and not isinstance(occurrences, bool):
        occurrences = [occurrences]  # "occurrences: 1" reads naturally in a scenario file
    try:
        return DropRule(classes[spec["segment_class"]], None if occurrences is None else frozenset(occurrences),
                        spec.get("with_payload"))
    except (TypeError, ValueError) as err:
        key = "occurrences" if "occurrences" in str(err) else "with_payload"
        raise LossSpecError(f"{where}: {err}", key) from None


def loss_from_spec(spec: Mapping[str, Any] | None, rng: Rng) -> LossModel:
    """Build a loss model from its scenario-file form; ``rng`` feeds the random models.

    Forms (None or an empty mapping mean no loss)::

        {"model": "none"}
        {"model": "bernoulli", "loss_prob": 0.01}
        {"model": "gilbert_elliott", "p_good_to_bad": 0.01, "p_bad_to_good": 0.3,
         "loss_prob_good": 0.0, "loss_prob_bad": 1.0}          # the last two optional
        {"model": "scripted", "drops": [{"segment_class": "syn_ack", "occurrences": [1]},
                                        {"segment_class": "syn", "with_payload": true}]}

    Segment classes are the values of :class:`~mpsim.proto.middlebox.SegmentClass` (syn, syn_ack,
    third_ack, data, rst, fin, any). Raises :class:`LossSpecError` naming the bad key.
    """
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return NoLoss()
    if not isinstance(spec, Mapping):
        raise LossSpecError(f"a loss specification must be a mapping, got {spec!r}")
    if "model" not in spec:
        raise LossSpecError(f"loss specification {dict(spec)!r}: missing key 'model' "
                            f"(one of {', '.join(sorted(_MODEL_KEYS))})", "model")
    model = spec["model"]
    if model not in _MODEL_KEYS:
        raise LossSpecError(f"loss model {model!r} is not one of {', '.join(sorted(_MODEL_KEYS))}", "model")
    params = {k: v for k, v in spec.items() if k != "model"}
    _check_keys(params, *_MODEL_KEYS[model], f"loss model {model!r}")
    if model == "none":
        return NoLoss()
    if model == "scripted":
        drops = params["drops"]
        if isinstance(drops, (str, bytes, Mapping)) or not isinstance(drops, Iterable):
            raise LossSpecError(f"loss model 'scripted': drops must be a list of rules, got {drops!r}", "drops")
        return Scripted([_rule_from_spec(rule, i) for i, rule in enumerate(drops)])
    for key, value in params.items():
        try:
            check_prob(key, value)
        except ValueError as err:
            raise LossSpecError(f"loss model {model!r}: {err}", key) from None
    try:
        if model == "bernoulli":
            return Bernoulli(params["loss_prob"], rng)
        return GilbertElliott(**params, rng=rng)
    except ValueError as err:
        raise LossSpecError(f"loss model {model!r}: {err}", "p_good_to_bad") from None
