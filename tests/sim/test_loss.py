"""Loss models: rates converge to their formulas, bursts have the promised length, scripted drops
hit exactly the chosen segments, and scenario specs build or fail naming the bad key."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest

from mpsim.proto.middlebox import SegmentClass
from mpsim.sim.loss import (
    Bernoulli,
    DropRule,
    GilbertElliott,
    LossSpecError,
    NoLoss,
    Scripted,
    loss_from_spec,
)
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

A, B = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")


def _losses(model, packets: int) -> list[bool]:
    return [model.drops(None, 0.0) for _ in range(packets)]


def test_no_loss():
    assert not any(_losses(NoLoss(), 1000))


def test_bernoulli_rate_within_a_binomial_bound():
    packets, loss_prob = 100_000, 0.01
    lost = sum(_losses(Bernoulli(loss_prob, random.Random(1)), packets))
    sd = (packets * loss_prob * (1 - loss_prob)) ** 0.5  # 31.5 packets
    assert abs(lost - packets * loss_prob) < 4 * sd


@pytest.mark.parametrize(("loss_prob", "expected"), [(0.0, 0), (1.0, 500)])
def test_bernoulli_extremes(loss_prob, expected):
    assert sum(_losses(Bernoulli(loss_prob, random.Random(2)), 500)) == expected


def _runs(losses: list[bool]) -> list[int]:
    """Lengths of the runs of consecutive losses."""
    runs, current = [], 0
    for lost in losses:
        if lost:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


def test_gilbert_elliott_mean_matches_the_formula():
    model = GilbertElliott(0.01, 0.2, loss_prob_good=0.001, loss_prob_bad=0.5, rng=random.Random(3))
    expected = (0.2 * 0.001 + 0.01 * 0.5) / (0.01 + 0.2)  # 0.02476
    assert model.mean_loss_prob == pytest.approx(expected)
    packets = 400_000
    rate = sum(_losses(model, packets)) / packets
    # Losses are correlated, so the binomial bound is too tight; the stay in BAD (5 packets on
    # average, half of them lost) inflates the variance about fivefold.
    assert rate == pytest.approx(expected, rel=0.06)


def test_gilbert_elliott_bursts_last_one_over_p_bad_to_good():
    model = GilbertElliott(0.02, 0.25, rng=random.Random(4))  # Gilbert: GOOD never loses, BAD always
    losses = _losses(model, 200_000)
    runs = _runs(losses)
    assert sum(runs) / len(runs) == pytest.approx(1 / 0.25, rel=0.05)
    # A loss is followed by a loss with probability 1 - p_bad_to_good, far above the mean rate.
    after_loss = [b for a, b in zip(losses, losses[1:]) if a]
    assert sum(after_loss) / len(after_loss) == pytest.approx(0.75, abs=0.02)
    mean = sum(losses) / len(losses)
    assert mean == pytest.approx(0.02 / 0.27, rel=0.06)
    # Independent loss at the same mean has bursts of 1 / (1 - mean), about 1.08 packets.
    bernoulli_runs = _runs(_losses(Bernoulli(mean, random.Random(5)), 200_000))
    assert sum(bernoulli_runs) / len(bernoulli_runs) < 1.2


def test_gilbert_elliott_starts_in_the_stationary_state():
    # Symmetric chain: half the models must start in BAD, so half lose their first packet.
    first_losses = sum(GilbertElliott(0.1, 0.1, rng=random.Random(seed)).drops(None, 0.0) for seed in range(2000))
    assert abs(first_losses - 1000) < 4 * (2000 * 0.25) ** 0.5


@pytest.mark.parametrize("args", [(0.0, 0.0), (1.5, 0.1), (0.1, -0.1), (0.1, 0.1, 2.0)])
def test_gilbert_elliott_refuses_bad_parameters(args):
    with pytest.raises(ValueError):
        GilbertElliott(*args, rng=random.Random(0))


# --- scripted ---------------------------------------------------------------------------------


def _seg(flags: TcpFlags, payload: bytes = b"", forward: bool = True, seq: int = 0) -> IpPacket:
    src, dst, sport, dport = (A, B, 40000, 80) if forward else (B, A, 80, 40000)
    return IpPacket(src, dst, TcpSegment(sport, dport, seq, 0, flags, 1000, payload=payload))


SYN, SYN_ACK, ACK, RST = TcpFlags.SYN, TcpFlags.SYN | TcpFlags.ACK, TcpFlags.ACK, TcpFlags.RST
SCRIPT = [  # (name, packet)
    ("syn1", _seg(SYN, b"hello")),
    ("syn2", _seg(SYN)),
    ("synack1", _seg(SYN_ACK, forward=False)),
    ("synack2", _seg(SYN_ACK, forward=False)),
    ("third-ack", _seg(ACK)),
    *[(f"data{i}", _seg(ACK | TcpFlags.PSH, b"x" * 10, seq=i)) for i in range(1, 6)],
    ("pure-ack", _seg(ACK)),
    ("rst", _seg(RST)),
    ("syn3", _seg(SYN, b"again", seq=7)),
]


def _dropped(rules: list[DropRule]) -> list[str]:
    model = Scripted(rules)
    return [name for name, packet in SCRIPT if model.drops(packet, 0.0)]


@pytest.mark.parametrize(("rule", "expected"), [
    (DropRule(SegmentClass.SYN_ACK, {1}), ["synack1"]),
    (DropRule(SegmentClass.SYN, with_payload=True), ["syn1", "syn3"]),
    (DropRule(SegmentClass.SYN, with_payload=False), ["syn2"]),
    (DropRule(SegmentClass.RST, {1}), ["rst"]),
    (DropRule(SegmentClass.DATA, {3}), ["data3"]),
    (DropRule(SegmentClass.DATA, {2, 5}), ["data2", "data5"]),
    (DropRule(SegmentClass.THIRD_ACK), ["third-ack"]),
    (DropRule(SegmentClass.ANY, {2}), ["syn2"]),
])
def test_scripted_drops_exactly_the_chosen_segments(rule, expected):
    assert _dropped([rule]) == expected


def test_scripted_rules_count_independently():
    # The first rule drops every SYN; the second still counts them, and drops its 2nd.
    rules = [DropRule(SegmentClass.SYN), DropRule(SegmentClass.ANY, {3})]
    assert _dropped(rules) == ["syn1", "syn2", "synack1", "syn3"]


def test_scripted_ignores_what_is_not_an_ip_packet():
    class Light:
        size_bytes = 1500

    model = Scripted([DropRule(SegmentClass.ANY)])
    assert not model.drops(Light(), 0.0)
    assert model.drops(_seg(SYN), 0.0) and model.matched == [1] and model.dropped == [1]


@pytest.mark.parametrize("kwargs", [{"occurrences": {0}}, {"occurrences": set()}, {"occurrences": {1.0}},
                                    {"with_payload": 1}])
def test_drop_rule_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        DropRule(SegmentClass.SYN, **kwargs)


# --- scenario specs ---------------------------------------------------------------------------


def test_specs_build_each_model():
    rng = random.Random(0)
    assert isinstance(loss_from_spec(None, rng), NoLoss)
    assert isinstance(loss_from_spec({}, rng), NoLoss)
    assert isinstance(loss_from_spec({"model": "none"}, rng), NoLoss)
    bernoulli = loss_from_spec({"model": "bernoulli", "loss_prob": 0.02}, rng)
    assert isinstance(bernoulli, Bernoulli) and bernoulli.loss_prob == 0.02 and bernoulli.rng is rng
    ge = loss_from_spec({"model": "gilbert_elliott", "p_good_to_bad": 0.01, "p_bad_to_good": 0.3,
                         "loss_prob_bad": 0.8}, rng)
    assert (ge.p_good_to_bad, ge.p_bad_to_good, ge.loss_prob_good, ge.loss_prob_bad) == (0.01, 0.3, 0.0, 0.8)
    scripted = loss_from_spec({"model": "scripted", "drops": [
        {"segment_class": "syn_ack", "occurrences": [1]},
        {"segment_class": "syn", "with_payload": True},
        {"segment_class": "rst", "occurrences": 1},
    ]}, rng)
    assert scripted.rules == (DropRule(SegmentClass.SYN_ACK, {1}), DropRule(SegmentClass.SYN, with_payload=True),
                              DropRule(SegmentClass.RST, {1}))


@pytest.mark.parametrize(("spec", "key", "words"), [
    ({"loss_prob": 0.1}, "model", "missing key 'model'"),
    ({"model": "bernouli"}, "model", "'bernouli' is not one of"),
    ({"model": "bernoulli", "loss_pro": 0.1}, "loss_pro", "unknown key 'loss_pro'"),
    ({"model": "bernoulli"}, "loss_prob", "missing key 'loss_prob'"),
    ({"model": "bernoulli", "loss_prob": 1.5}, "loss_prob", "probability"),
    ({"model": "bernoulli", "loss_prob": "0.1"}, "loss_prob", "probability"),
    ({"model": "gilbert_elliott", "p_good_to_bad": 0.1}, "p_bad_to_good", "missing key"),
    ({"model": "gilbert_elliott", "p_good_to_bad": 0.1, "p_bad_to_good": 0.1, "loss_prob_bad": True},
     "loss_prob_bad", "probability"),
    ({"model": "scripted", "drops": {"segment_class": "syn"}}, "drops", "list of rules"),
    ({"model": "scripted", "drops": [{"segment_class": "synack"}]}, "segment_class", "'synack' is not one of"),
    ({"model": "scripted", "drops": [{"segment_class": "syn", "occurrences": [0]}]}, "occurrences", "1-based"),
    ({"model": "scripted", "drops": [{"segment_class": "syn", "nth": 2}]}, "nth", "unknown key 'nth'"),
    ({"model": "scripted", "drops": [{"segment_class": "syn", "with_payload": "yes"}]}, "with_payload", "True"),
])
def test_bad_specs_name_the_key(spec, key, words):
    with pytest.raises(LossSpecError, match=words) as info:
        loss_from_spec(spec, random.Random(0))
    assert info.value.key == key
