"""Common random numbers for loss: the kernel world's delay line draws the model's loss stream.

For one scenario, run index and path direction, the decisions of the delay line the kernel world
would start (the command line the testbed builds from the kernel world's PathSpec, parsed as the
delay line parses it) equal the drops of the model's link direction of that path
(docs/kernel-world.md, "Loss: one stream for both worlds"). No root needed: no namespace is made,
the frames are built here.
"""

import struct

import pytest

from mpsim.experiment import kernel_world
from mpsim.experiment.scenario import load
from mpsim.experiment.simulation import Simulation
from mpsim.testbed import Testbed
from mpsim.testbed import delay

SCENARIO = "models/kernel/convert_paths.toml"
VARIANT = "convert-2x10-upload-loss2"
SMALL = ["transfers=[{start_s=0.0, size_bytes=300_000, direction=\"upload\"}]"]   # a few hundred packets suffice


class Recording:
    """Wraps a link direction's loss model and keeps every decision it makes, in order."""

    def __init__(self, inner):
        self.inner, self.decisions = inner, []

    def drops(self, packet, now):
        lost = self.inner.drops(packet, now)
        self.decisions.append(lost)
        return lost


def model_drops(scenario, variant: str, run_index: int) -> dict[tuple[str, str], list[bool]]:
    """{(path, "up"/"down"): the model link direction's loss decisions, in order} over one run."""
    sim = Simulation(scenario, variant=variant, run_index=run_index)
    recorders = {}
    for name, network in sim.networks.items():
        for direction in ("up", "down"):
            link = getattr(network, direction)
            recorders[name, direction] = link.loss = Recording(link.loss)
    sim.run()
    return {key: rec.decisions for key, rec in recorders.items()}


def ipv4_tcp_frame(seq: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, seq & 0xFFFF, 0, 64, 6, 0, bytes([198, 18, 0, 1]),
                     bytes([198, 19, 0, 2]))
    return b"\x02" * 12 + b"\x08\x00" + ip + struct.pack("!HHIIHHHH", 40000, 5201, seq, 0, 0x5010, 512, 0, 0)


def ipv6_tcp_frame(seq: int) -> bytes:
    ip = struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64, b"\x20\x01\x00\x02" + bytes(12),
                     b"\x20\x01\x00\x02" + bytes(11) + b"\x02")
    return b"\x02" * 12 + b"\x86\xdd" + ip + struct.pack("!HHIIHHHH", 40000, 5201, seq, 0, 0x5010, 512, 0, 0)


ARP = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
ICMP_ECHO = b"\x02" * 12 + b"\x08\x00" + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 84, 1, 0, 64, 1, 0,
                                                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])) + bytes(64)
NEIGHBOUR_SOLICITATION = b"\x33\x33\xff\x00\x00\x02" + b"\x02" * 6 + b"\x86\xdd" + struct.pack(
    "!IHBB16s16s", 6 << 28, 32, 58, 255, bytes(16), bytes(16)) + bytes(32)


def delay_line_directions(scenario, run_index: int) -> list[tuple[delay.Direction, delay.Direction]]:
    """Per testbed path, the delay line's two directions (a to b: up) as the kernel world builds them."""
    boxes = kernel_world.drawn_middleboxes(scenario, run_index)
    tb = Testbed(paths=kernel_world._testbed_paths(scenario, boxes, run_index), loss_held=True)  # nothing built
    out = []
    for i in range(len(tb.paths)):
        opts = delay.parser().parse_args(tb.delay_line_argv(i)[3:])   # after `python -m mpsim.testbed.delay`
        ab, ba = delay.direction_losses(opts.loss, opts.seed, delay.parse_loss_seeds(opts.loss_seeds))
        out.append(tuple(delay.Direction(name, None, None, loss, None, 10, loss_tcp_only=opts.loss_tcp_only,
                                         loss_armed=not opts.loss_held)
                         for name, loss in (("a_to_b", ab), ("b_to_a", ba))))
    return out


def kernel_decisions(direction: delay.Direction, count: int, tcp_frame) -> list[bool]:
    """The line's decisions for ``count`` TCP frames, with ARP, an echo request and a neighbour
    solicitation between them, none of which may be lost or take a draw."""
    decisions = []
    for n in range(count):
        if n % 7 == 0:
            for other in (ARP, ICMP_ECHO, NEIGHBOUR_SOLICITATION):
                assert not direction.loses(other)
        decisions.append(direction.loses(tcp_frame(n)))
    assert direction.drawn == count
    return decisions


@pytest.mark.parametrize("overrides, tcp_frame", [
    (SMALL, ipv4_tcp_frame),
    (SMALL + ["ip_version=6"], ipv6_tcp_frame),
    (SMALL + ["paths.a.loss={model=\"gilbert_elliott\", p_good_to_bad=0.02, p_bad_to_good=0.5}"], ipv4_tcp_frame),
])
def test_the_delay_line_decides_as_the_model_link_of_its_path_and_direction(overrides, tcp_frame):
    loaded = load(SCENARIO, overrides)
    scenario, run_index = loaded.variants[VARIANT], 5
    drops = model_drops(scenario, VARIANT, run_index)
    lines = delay_line_directions(scenario, run_index)
    names = kernel_world.path_names(scenario)
    assert len(lines) == len(names) == 2
    for i, name in enumerate(names):
        for direction, line in zip(("up", "down"), lines[i]):
            model = drops[name, direction]
            assert model, (name, direction)
            line.loss_armed = True   # the kernel world arms the loss just before the workload
            assert kernel_decisions(line, len(model), tcp_frame) == model, (name, direction)
    assert sum(map(len, drops.values())) > 300 and sum(map(sum, drops.values())) >= 5   # real sequences, lossy


def test_a_held_line_draws_nothing_until_armed():
    loaded = load(SCENARIO, SMALL)
    scenario = loaded.variants[VARIANT]
    up, _down = delay_line_directions(scenario, 0)[0]
    assert not up.loss_armed
    assert not any(up.loses(ipv4_tcp_frame(n)) for n in range(500)) and up.drawn == 0
    up.loss_armed = True
    model = model_drops(scenario, VARIANT, 0)["a", "up"]
    assert kernel_decisions(up, len(model), ipv4_tcp_frame) == model


def test_other_run_indices_and_paths_draw_other_streams():
    """The seeds follow the run index and the path direction (what the model's links do)."""
    scenario = load(SCENARIO, SMALL).variants[VARIANT]
    seeds = {run: kernel_world.loss_seeds(scenario, run) for run in (0, 1)}
    every = [seed for run in seeds.values() for pair in run.values() for seed in pair]
    assert len(set(every)) == len(every) == 8
    assert set(seeds[0]) == {"a", "b"}
    assert kernel_world.loss_seeds(load(SCENARIO).variants["convert-2x10-upload"], 0) == {}


def test_bad_loss_seeds_are_one_clear_line():
    with pytest.raises(delay.DelayLineError, match="--loss-seeds '1'"):
        delay.parse_loss_seeds("1")
    with pytest.raises(delay.DelayLineError, match="two integers"):
        delay.parse_loss_seeds(f"1,{2**64}")
