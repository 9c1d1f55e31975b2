"""A middlebox added as a plug-in: one new module, no edit anywhere else (docs/adding-components.md).

The toy module is written to a temporary directory and imported from there, as a user's own
module would be; registering its box makes it a name the scenario schema accepts, the simulator
places and counts, and the truth table runs. Unregistered, the name is refused again."""

from __future__ import annotations

import importlib.util
import random
import sys
import textwrap

import pytest

from mpsim.experiment import results, scenario as sc
from mpsim.proto import truth_table
from mpsim.proto.catalogue import MIDDLEBOXES

TOY = "toy-drop-first-syn"
TOY_MODULE = f'''
"""A box that drops the first SYN it sees and nothing else (a one-off loss of the handshake)."""

from mpsim.proto.middlebox import Policy, SegmentClass, register_middlebox, segment_classes, up_only
from mpsim.wire.segment import IpPacket


class DropFirstSyn(Policy):
    name = "{TOY}"
    description = "drops the first SYN it sees"

    def __init__(self):
        self.seen_syn = False

    def apply(self, packet, now):
        if isinstance(packet, IpPacket) and SegmentClass.SYN in segment_classes(packet.segment) \\
                and not self.seen_syn:
            self.seen_syn = True
            self.hits += 1
            return []
        return [packet]


register_middlebox("{TOY}", DropFirstSyn.description, lambda rng, site: up_only(DropFirstSyn()))
'''
SCENARIO = """description = "a toy middlebox on one of two paths"
duration_s = 10.0
[client]
scheme = "convert"
[paths.a]
delay_s = 0.01
[paths.b]
delay_s = 0.02
[workload]
arrivals = "one"
"""


@pytest.fixture
def toy_registered(tmp_path):
    path = tmp_path / "toy_middlebox.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_middlebox", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers the box
    try:
        yield module
    finally:
        MIDDLEBOXES.unregister(TOY)
        sys.modules.pop("toy_middlebox", None)


def test_a_toy_middlebox_runs_in_the_simulator_and_the_truth_table(toy_registered, tmp_path):
    assert TOY in MIDDLEBOXES and TOY in truth_table.table_middleboxes()
    scenario_file = tmp_path / "toy.toml"
    scenario_file.write_text(SCENARIO)
    # The simulator: loaded by the normal loader with --set overrides, placed on path a, counted.
    loaded = sc.load(str(scenario_file), [f"paths.a.middleboxes={TOY}", "client.scheme=plain"])
    res = results.run(loaded)
    (row,) = res.rows("connections")
    assert row["network"] == f"a:{TOY} b:clean"
    hits = {r["component"]: r["value"] for r in res.rows("counters") if r["component"].startswith("middlebox.")}
    assert hits == {f"middlebox.a.{TOY}": 1}
    # Plain TCP: the first SYN is lost, the retransmission 1 s later (Linux's initial RTO) passes.
    assert (row["outcome"], row["syns_sent"]) == ("tcp", 2)
    assert row["setup_time_s"] == pytest.approx(1.0 + 2 * (0.01 + 0.020), abs=1e-3)
    # The truth table: the same box on its access link, with the same effect.
    plain = next(v for v in truth_table.VARIANTS if v.label == "plain")
    case = truth_table.run_variant(plain, TOY, "legacy_drop", rngs=random.Random)
    assert case.middlebox == TOY and case.record.outcome == "tcp" and case.record.syns_sent == 2
    assert case.record.first_byte_time_s == pytest.approx(1.0 + 2 * truth_table.CLIENT_SERVER_RTT_S, abs=1e-9)


def test_without_its_module_the_name_is_refused():
    # Before the toy's module is imported, or after the fixture unregistered it.
    assert TOY not in MIDDLEBOXES and TOY not in truth_table.table_middleboxes()
    with pytest.raises(sc.ScenarioError) as info:
        sc.load_text(SCENARIO, name="t", source="t.toml", overrides=[f"paths.a.middleboxes={TOY}"])
    assert str(info.value).startswith(f"--set paths.a.middleboxes={TOY}: paths.a.middleboxes.0: expected one of ")
