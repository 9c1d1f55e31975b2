"""Policies set at build time: the scenario keys that replace patching a built Simulation.

mpsim/bench/kernel.py used to build a Simulation and then replace the client's MPTCP policy, its
SYN schedule (tcp_syn_linear_timeouts) and append a middlebox of its own to a path's filters.
Each of those is now a scenario key; the test below builds one simulation the old way and one
from the keys, and requires the same run packet for packet."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mpsim.experiment import results, scenario as sc
from mpsim.experiment.simulation import CLIENT, Simulation
from mpsim.proto.middlebox import DropMpCapableSyns
from mpsim.proto.mptcp import MptcpBlackholeState, MptcpPolicy
from mpsim.sim.transfer import DEFAULT_RCV_BUF_BYTES, DEFAULT_SND_BUF_BYTES
from mpsim.wire.segment import IpPacket, TcpFlags

# The kernel benchmark's negotiation model: Convert (socket timing) over two paths.
BENCH = """description = "kernel benchmark: Convert through drop-mp-capable-syn"
duration_s = 1.0
drain_s = 120.0
[client]
scheme = "convert"
upstream_mptcp = true
proxy_syn_retries = 6
syn_retries = 6
[converter]
kind = "convert"
timing = "socket"
delay_s = 0.0
[server]
delay_s = 0.0
[paths.path0]
delay_s = 0.005
[paths.path1]
delay_s = 0.005
[workload]
arrivals = "one"
"""
KERNEL_KNOBS = {"syn_retrans_before_tcp_fallback": 3, "blackhole_timeout_s": 0, "tcp_syn_linear_timeouts": 4}


def load(*overrides: str) -> sc.Scenario:
    return sc.load_text(BENCH, name="bench", source="bench.toml", overrides=overrides).base


def syn_trace(sim: Simulation) -> list[tuple[float, int]]:
    return [(float(r.time_s), r.packet.segment.seq) for r in sim.trace.packets
            if r.kind == "sent" and r.src == CLIENT and isinstance(r.packet, IpPacket)
            and r.packet.segment.flags & TcpFlags.SYN]


def run(sim: Simulation) -> tuple:
    """The records (less the network label: the patched box was not in it), SYNs and the MIB."""
    result = sim.run()
    connections = [{k: v for k, v in row.items() if k != "network"} for row in result.connections]
    return connections, syn_trace(sim), sorted(sim.client.mib.items())


def patched_the_old_way() -> Simulation:
    """What mpsim/bench/kernel.py model_negotiation did after building the simulation."""
    sim = Simulation(load(), variant="kernel-bench", run_index=0, record_packets=True)
    sim.client.mptcp_policy = MptcpPolicy(syn_retrans_before_tcp_fallback=KERNEL_KNOBS["syn_retrans_before_tcp_fallback"],
                                          blackhole_timeout_s=KERNEL_KNOBS["blackhole_timeout_s"])
    sim.client.mptcp_blackhole = MptcpBlackholeState(sim.client.mptcp_policy)
    sim.client.policy = replace(sim.client.policy, syn_linear_timeouts=KERNEL_KNOBS["tcp_syn_linear_timeouts"])
    box = DropMpCapableSyns()
    sim.networks["path0"].up.filters.append(box.forward)
    sim.networks["path0"].down.filters.append(box)
    return sim


def built_from_keys() -> Simulation:
    scenario = load(f"client.mptcp.syn_retrans_before_tcp_fallback={KERNEL_KNOBS['syn_retrans_before_tcp_fallback']}",
                    f"client.mptcp.blackhole_timeout_s={KERNEL_KNOBS['blackhole_timeout_s']}",
                    f"client.syn_linear_timeouts={KERNEL_KNOBS['tcp_syn_linear_timeouts']}",
                    "paths.path0.middleboxes=drop-mp-capable-syn")
    return Simulation(scenario, variant="kernel-bench", run_index=0, record_packets=True)


def test_the_keys_give_the_run_the_patches_gave():
    old, new = run(patched_the_old_way()), run(built_from_keys())
    assert new == old
    connections, syns, _ = new
    # The knobs matter here: MP_CAPABLE SYNs dropped 1 + 3 times at linear 1 s intervals, then a
    # plain one (its data not ACKed: reset), then the direct connection.
    assert [round(t, 6) for t, _ in syns[:5]] == [0.0, 1.0, 2.0, 3.0, 4.0] and len(syns) == 6
    assert (connections[0]["outcome"], connections[0]["fallback_reason"]) == ("fallback_tcp", "signal_not_acked")


def test_the_defaults_are_the_policies_defaults():
    s = load()
    m = s.client.mptcp
    assert MptcpPolicy(version=m.version, checksums=m.checksums,
                       syn_retrans_before_tcp_fallback=m.syn_retrans_before_tcp_fallback,
                       blackhole_timeout_s=m.blackhole_timeout_s, blackhole_max_exponent=m.blackhole_max_exponent,
                       retry_with_v0=m.retry_with_v0, blackhole_reset_on_success=m.blackhole_reset_on_success,
                       mp_capable_ack=m.mp_capable_ack) \
        == MptcpPolicy()
    sim = Simulation(s, variant="base", run_index=0)
    assert sim.client.mptcp_policy == MptcpPolicy() and sim.client.policy.syn_linear_timeouts == 0


def test_default_socket_buffers_are_the_transfers():
    text = BENCH + "[[transfers]]\nsize_bytes = 200000\n"
    default = sc.load_text(text, name="t", source="t.toml").base.transfers[0]
    assert (default.snd_buf_bytes, default.rcv_buf_bytes) == (DEFAULT_SND_BUF_BYTES, DEFAULT_RCV_BUF_BYTES)


@pytest.mark.parametrize("key", ["snd_buf_bytes", "rcv_buf_bytes"])
def test_a_small_socket_buffer_slows_the_transfer(key):
    # 20 kB in flight per 10 ms round trip is 16 Mbit/s at most, below the 50 Mbit/s path.
    text = BENCH + "[[transfers]]\nsize_bytes = 2000000\n"

    def duration_s(*overrides: str) -> float:
        sim = Simulation(sc.load_text(text, name="t", source="t.toml", overrides=overrides).base,
                         variant="base", run_index=0)
        sim.run()
        (row,) = sim.transfer_rows
        assert row["completed"]
        return row["duration_s"]

    assert duration_s(f"transfers.0.{key}=20000") > 1.5 * duration_s()


@pytest.mark.parametrize("override, message", [
    ("client.mptcp.version=2", "client.mptcp.version: expected an integer >= 0 and <= 1, got 2"),
    ("client.mptcp.syn_retrans=1", "client.mptcp.syn_retrans: unknown key (did you mean "
                                   "client.mptcp.syn_retrans_before_tcp_fallback?)"),
    ("client.syn_linear_timeouts=-1", "client.syn_linear_timeouts: expected an integer >= 0 and <= 20, got -1"),
    ("transfers=[{size_bytes = 1000, congestion_control = \"bbr\"}]",
     "transfers.0.congestion_control: expected one of reno, cubic, cubic-rfc9438, lia, got 'bbr'"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(sc.ScenarioError) as info:
        load(override)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_results_of_a_keyed_scenario_through_the_normal_runner():
    res = results.run(sc.load_text(BENCH, name="bench", source="bench.toml",
                                   overrides=("paths.path0.middleboxes=drop-mp-capable-syn",)))
    assert res.rows("connections")[0]["network"] == "path0:drop-mp-capable-syn path1:clean"
