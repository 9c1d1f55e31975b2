"""A scenario selects a transfer's buffer policy (``transfers.N.buffers``): Linux's auto-tuning
(the default) or buffers pinned with SO_SNDBUF/SO_RCVBUF, which Linux doubles."""

from __future__ import annotations

import pytest

from mpsim.experiment import scenario as sc
from mpsim.experiment import simulation
from mpsim.experiment.simulation import Simulation
from mpsim.sim import relay
from mpsim.sim.transfer import BulkTransfer

SCENARIO = """description = "two paths, one MPTCP transfer"
duration_s = 1.0
drain_s = 60.0
[client]
scheme = "convert"
upstream_mptcp = true
[converter]
kind = "convert"
delay_s = 0.0
[server]
delay_s = 0.0
[paths.path0]
delay_s = 0.005
[paths.path1]
delay_s = 0.005
[workload]
arrivals = "none"
[[transfers]]
size_bytes = 300000
"""


def built_transfer(monkeypatch, *overrides: str):
    built = []

    def recording(*args, **kwargs):
        built.append(BulkTransfer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(simulation, "BulkTransfer", recording)
    monkeypatch.setattr(relay, "BulkTransfer", recording)  # the legs of a transfer through the converter
    sim = Simulation(sc.load_text(SCENARIO, name="t", source="t.toml", overrides=overrides).base,
                     variant="base", run_index=0)
    sim.run()
    return built


@pytest.mark.parametrize("override, buffers, sndbuf", [
    ((), "auto", 2 * 10 * 2304),  # tcp_init_buffer_space: tcp_sndbuf_expand with cwnd 10
    (("transfers.0.buffers=\"pinned\"", "transfers.0.snd_buf_bytes=100000"), "pinned", 200000),
])
def test_scenario_selects_the_buffer_policy(monkeypatch, override, buffers, sndbuf):
    # An upload: the client's MPTCP leg is sent by the client, whose socket "pinned" is about.
    built = built_transfer(monkeypatch, "transfers.0.direction=\"upload\"", *override)
    assert built, "the scenario ran no bulk transfer"
    transfer = next(t for t in built if t.mptcp)  # the client's MPTCP leg
    assert transfer.buffers == buffers and transfer.result().buffers == buffers
    server_leg = next(t for t in built if not t.mptcp)  # the converter's TCP connection to the server
    # pinned: the endpoints' sockets; the converter's ends of both legs auto-tune (docs/sim.md "The relay")
    assert server_leg.buffers == "auto" and server_leg.receiver.pinned is (buffers == "pinned")
    assert not transfer.receiver.pinned
    # the first subflow's buffer as set at the start (auto-tuning only grows it)
    assert min(s.sndbuf_bytes for s in transfer.sender.subflows) >= sndbuf
    if buffers == "pinned":
        assert all(s.sndbuf_bytes == sndbuf for s in transfer.sender.subflows)


def test_a_bad_buffer_policy_is_a_one_line_error():
    with pytest.raises(sc.ScenarioError) as info:
        sc.load_text(SCENARIO, name="t", source="t.toml", overrides=("transfers.0.buffers=\"fixed\"",))
    assert "transfers.0.buffers" in str(info.value) and "\n" not in str(info.value)
