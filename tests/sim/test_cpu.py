"""The converter's CPU (mpsim/sim/cpu.py): hand-worked queueing cases, the relay's byte-rate cap,
and the scenario keys that switch it on (docs/sim.md, "The converter's capacity")."""

import simpy
import pytest

from mpsim.experiment import scenario as sc
from mpsim.experiment.simulation import Simulation
from mpsim.sim.cpu import Cpu
from mpsim.sim.relay import RelayedTransfer
from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import BulkTransfer


def _ends(cores: int, costs: list[float]) -> list[float]:
    env = simpy.Environment()
    cpu = Cpu(env, cores)
    ends: list[float] = []
    for cost in costs:
        cpu.after(cost, lambda: ends.append(env.now))
    env.run()
    return ends


def test_n_simultaneous_setups_on_one_core_end_at_k_times_cost():
    # Five set-ups of 2 ms offered at once: the k-th ends k x 2 ms later.
    assert _ends(1, [0.002] * 5) == pytest.approx([0.002, 0.004, 0.006, 0.008, 0.010])


def test_two_cores_take_jobs_in_pairs_first_come_first_served():
    # Costs 3, 1, 1, 1 ms on two cores: jobs 1 and 2 start at 0; job 3 takes the core job 2
    # frees at 1 ms (ends 2), job 4 the same core at 2 ms (ends 3); job 1 ends at 3.
    assert sorted(_ends(2, [0.003, 0.001, 0.001, 0.001])) == pytest.approx([0.001, 0.002, 0.003, 0.003])


def test_a_job_offered_later_waits_only_for_the_remaining_work():
    env = simpy.Environment()
    cpu = Cpu(env, 1)
    assert cpu.reserve(0.010) == pytest.approx(0.010)
    env.run(until=0.004)
    assert cpu.reserve(0.001) == pytest.approx(0.011)  # waits 6 ms, then 1 ms
    env.run(until=0.020)
    assert cpu.reserve(0.001) == pytest.approx(0.021)  # idle core: no wait
    assert cpu.wait_s_max == pytest.approx(0.006)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_cores_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="cores must be a positive int"):
        Cpu(simpy.Environment(), bad)


def _relayed_goodput_bps(per_byte_s: float, size_bytes: int = 2_000_000) -> float:
    # One connection through the converter's relay (mpsim.sim.relay), each copied chunk a CPU job.
    env = simpy.Environment()
    cpu = Cpu(env, 1)

    def path(name: str) -> tuple[LinkDirection, LinkDirection]:
        return tuple(LinkDirection(env, f"{name}.{way}", delay_s=0.005, rate_bps=1e9, queue_limit_bytes=10_000_000)
                     for way in ("fwd", "back"))

    transfer = RelayedTransfer(env, [path("client")], [path("server")], size_bytes, direction="upload", mptcp=False,
                               cpu=cpu, cpu_per_byte_s=per_byte_s, snd_buf_bytes=4_000_000, rcv_buf_bytes=4_000_000)
    env.run(until=transfer.done)
    return transfer.result().goodput_bps


def test_per_byte_cost_caps_one_relays_goodput_at_one_over_the_cost():
    # 1 us per byte: at most 10^6 payload bytes/s = 8 Mbit/s through a 1 Gbit/s path.
    cap_bps = 8 / 1e-6
    goodput_bps = _relayed_goodput_bps(1e-6)
    assert goodput_bps <= cap_bps
    assert goodput_bps > 0.9 * cap_bps  # the slow start's first round trips cost the rest
    # Without the cost the same path delivers far more: the cap is the relay's, not the path's.
    assert _relayed_goodput_bps(0.0) > 5 * cap_bps


CAPACITY = """
description = "capacity test"
duration_s = 1.0
drain_s = 30.0
[client]
scheme = "convert"
[converter]
kind = "convert"
cores = 1
cpu_setup_s = 0.005
relay_cpu_s_per_gb = 0.0
[server]
kind = "legacy_drop"
delay_s = 0.010
[paths.dsl]
rate_down_bps = 10e9   # fast links: the SYNs arrive within microseconds of each other
rate_up_bps = 10e9
delay_s = 0.010
[workload]
arrivals = "times"
at_s = [0.1, 0.1, 0.1, 0.1]
request_size_bytes = 100
response_size_bytes = 100
"""


def _setup_times(overrides: tuple[str, ...] = ()) -> list[float]:
    scenario = sc.load_text(CAPACITY, name="t", source="t.toml", overrides=overrides).base
    result = Simulation(scenario, variant="", run_index=0).run()
    assert all(row["outcome"] == "converted" for row in result.connections)
    return sorted(row["setup_time_s"] for row in result.connections)


def test_simultaneous_conversions_queue_on_the_converter_core():
    # Four Convert SYNs reach the converter together; each costs 5 ms of its one core, so the
    # k-th connection is set up k x 5 ms after it would be without the cost.
    free = _setup_times(("converter.cores=0",))
    costly = _setup_times()
    assert free == pytest.approx([free[0]] * 4, abs=1e-5)
    assert [b - a for a, b in zip(free, costly)] == pytest.approx([0.005, 0.010, 0.015, 0.020], abs=1e-5)
    # Two cores: pairs.
    two = _setup_times(("converter.cores=2",))
    assert [b - a for a, b in zip(free, two)] == pytest.approx([0.005, 0.005, 0.010, 0.010], abs=1e-5)


def test_households_repeat_the_workload_and_the_transfers():
    text = CAPACITY + """
[[transfers]]
start_s = 0.2
size_bytes = 100_000
"""
    scenario = sc.load_text(text, name="t", source="t.toml", overrides=("converter.households=3",)).base
    result = Simulation(scenario, variant="", run_index=0).run()
    assert len(result.connections) == 3 * 4 + 3  # three households' requests and transfer negotiations
    assert len(result.transfers) == 3 and all(row["completed"] for row in result.transfers)
    counters = {(r["component"], r["counter"]): r["value"] for r in result.counters}
    assert counters[("converter.cpu", "jobs")] >= 15


@pytest.mark.parametrize("key, value", [("converter.cores", "-1"), ("converter.cpu_setup_s", "-0.1"),
                                        ("converter.households", "0")])
def test_bad_capacity_keys_are_refused(key, value):
    with pytest.raises(sc.ScenarioError, match=key.split(".")[1]):
        sc.load_text(CAPACITY, name="t", source="t.toml", overrides=(f"{key}={value}",))
