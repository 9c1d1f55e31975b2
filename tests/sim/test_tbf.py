"""A link direction shaping as Linux's token bucket filter (mpsim/sim/link.py, ``burst_bytes``).

Hand-worked against net/sched/sch_tbf.c (Linux 6.18): the bucket starts full (``tbf_change``), a
packet leaves once the bucket holds its length (``tbf_dequeue``: tokens refill at the rate, at most
to the burst) and the device behind takes no time; the child queue (bfifo) refuses a packet whose
length would take its backlog beyond the limit (``tbf_enqueue``). Lengths are framed: 1500 IP
bytes are 1514 on the veth and the IFB the kernel world shapes on. The kernel world's tbf for
10 Mbit/s: burst 15,000 bytes (mpsim/testbed/shaping.py)."""

from __future__ import annotations

import pytest
import simpy

from mpsim.experiment.simulation import Simulation, tbf_shaper
from mpsim.experiment.scenario import load
from mpsim.sim.link import LinkDirection

from tests.sim.test_link import Light, _direction, _send_at

FRAME_S = 1514 * 8 / 10e6  # 1211.2 us for one framed 1500-byte packet at 10 Mbit/s


def tbf(env, **kwargs):
    return _direction(env, delay_s=0.0, rate_bps=10e6, burst_bytes=15_000, framing_bytes=14, **kwargs)


def test_a_full_bucket_lets_nine_frames_through_at_once_then_paces_at_the_rate():
    env = simpy.Environment()
    direction, arrivals = tbf(env, queue_limit_bytes=2 * 1514)
    for tag in range(12):
        direction.send(Light(1500, tag))
    env.run()
    # 9 x 1514 = 13,626 of 15,000 tokens: nine leave at 0. The tenth lacks 140 bytes: 112 us.
    # The bucket is then empty, so the eleventh waits a whole frame (1211.2 us). The twelfth would
    # take the backlog (tenth and eleventh waiting: 3028 bytes) beyond 3028: dropped at enqueue.
    times = [t for t, _ in arrivals]
    assert times[:9] == [0.0] * 9
    assert times[9] == pytest.approx(140 * 8 / 10e6, abs=1e-12)
    assert times[10] == pytest.approx(140 * 8 / 10e6 + FRAME_S, abs=1e-12)
    assert [p.tag for _, p in arrivals] == list(range(11))
    assert direction.counters.packets_dropped_queue == 1


def test_the_bucket_refills_at_the_rate_up_to_the_burst():
    env = simpy.Environment()
    direction, arrivals = tbf(env)
    for tag in range(10):  # empties the bucket: the tenth leaves at 112 us with 0 tokens left
        direction.send(Light(1500, tag))
    # Half a frame's time after that (605.6 us) the bucket holds 757 bytes: the next waits for
    # the other 757, leaving one frame time after the tenth.
    _send_at(env, direction, 112e-6 + FRAME_S / 2, Light(1500, 10))
    # A second later the bucket is full again (15,000, not more): nine at once, the tenth 112 us later.
    for tag in range(11, 21):
        _send_at(env, direction, 1.0, Light(1500, tag))
    env.run()
    times = [t for t, _ in arrivals]
    assert times[10] == pytest.approx(112e-6 + FRAME_S, abs=1e-12)
    assert times[11:20] == [pytest.approx(1.0, abs=1e-12)] * 9
    assert times[20] == pytest.approx(1.0 + 112e-6, abs=1e-12)


def test_without_a_bucket_a_direction_serializes_as_before_and_framing_counts_on_the_rate():
    env = simpy.Environment()
    plain, plain_arrivals = _direction(env, delay_s=0.0, rate_bps=10e6)
    framed, framed_arrivals = _direction(env, delay_s=0.0, rate_bps=10e6, framing_bytes=14)
    for _ in range(2):
        plain.send(Light(1500))
        framed.send(Light(1500))
    env.run()
    assert [t for t, _ in plain_arrivals] == [pytest.approx(k * 1500 * 8 / 10e6, abs=1e-12) for k in (1, 2)]
    assert [t for t, _ in framed_arrivals] == [pytest.approx(k * FRAME_S, abs=1e-12) for k in (1, 2)]


@pytest.mark.parametrize("kwargs, match", [({"burst_bytes": 0, "rate_bps": 1e6}, "burst_bytes"),
                                           ({"burst_bytes": 15_000}, "needs a rate_bps"),
                                           ({"framing_bytes": -1}, "framing_bytes")])
def test_bad_shaper_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinkDirection(simpy.Environment(), "d", delay_s=0.0, **kwargs)


def test_compare_mode_shapes_the_access_paths_as_the_kernel_world_builds_them():
    # The kernel world's tbf for 10 Mbit/s with a 62,500-byte queue, and for 3 Mbit/s with 18,750:
    # burst max(15,000, 1 ms at the rate), limit max(the queue, burst + two frames).
    assert tbf_shaper(10e6, 62_500) == (15_000, 62_500, 14)
    assert tbf_shaper(3e6, 18_750) == (15_000, 18_750, 14)
    assert tbf_shaper(50e6, 312_500) == (15_000, 312_500, 14)
    scenario = load("models/kernel/goodput.toml").variants["mptcp-10and3-rtt40"]
    ideal = Simulation(scenario, variant="mptcp-10and3-rtt40", run_index=0)
    shaped = Simulation(scenario, variant="mptcp-10and3-rtt40", run_index=0, shaper="tbf")
    assert {link.name: link.forward.burst_bytes for link in ideal.links if link.name.startswith("path.")} == \
        {"path.a": None, "path.b": None}
    b = next(link for link in shaped.links if link.name == "path.b")
    assert (b.forward.burst_bytes, b.forward.queue_limit_bytes, b.forward.framing_bytes) == (15_000, 18_750, 14)
    assert (b.backward.burst_bytes, b.backward.framing_bytes) == (15_000, 14)
    with pytest.raises(ValueError, match="shaper"):
        Simulation(scenario, variant="mptcp-10and3-rtt40", run_index=0, shaper="htb")
