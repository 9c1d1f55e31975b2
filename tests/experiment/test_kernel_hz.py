"""``transfers.N.kernel_hz``: the sending kernel's CONFIG_HZ reaches Linux CUBIC (mpsim.sim.congestion
``Cubic(hz=...)``) through the scenario, BulkTransfer and make_congestion_control; the kernel world
records the running kernel's HZ (mpsim/experiment/kernel_world.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import simpy

from mpsim.experiment import results, scenario as sc
from mpsim.experiment.kernel_world import running_kernel_hz
from mpsim.experiment.scenario import ScenarioError
from mpsim.sim.congestion import LINUX_HZ, Cubic, make_congestion_control
from mpsim.sim.link import LinkDirection
from mpsim.sim.loss import Bernoulli
from mpsim.sim.seeds import component_rng
from mpsim.sim.transfer import BulkTransfer

# One plain TCP download over a 50 Mbit/s path with 2 % random loss on its data direction.
LOSSY = '''description = "2 % loss"
duration_s = 1.0
drain_s = 60.0
[client]
scheme = "plain"
[paths.dsl]
rate_down_bps = 50e6
rate_up_bps = 50e6
delay_s = 0.010
loss = { model = "bernoulli", loss_prob = 0.02 }
[workload]
arrivals = "none"
[[transfers]]
size_bytes = 4_000_000
'''


def transfer_rows(*overrides):
    loaded = sc.load_text(LOSSY, name="t", source="t.toml", overrides=overrides)
    return loaded, results.run(loaded).rows("transfers")


def test_a_bad_kernel_hz_is_refused_by_name_with_the_allowed_values():
    for bad in ("500", "0", "true", '"250"'):
        with pytest.raises(ScenarioError) as info:
            sc.load_text(LOSSY, name="t", source="t.toml", overrides=(f"transfers.0.kernel_hz={bad}",))
        message = str(info.value)
        assert "transfers.0.kernel_hz" in message and "\n" not in message
        if bad in ("500", "0"):
            assert "100, 250, 300, 1000" in message
    with pytest.raises(ValueError, match="kernel_hz must be one of Linux's CONFIG_HZ values 100, 250, 300, 1000"):
        BulkTransfer(simpy.Environment(), [(None, None)], 1000, kernel_hz=200)


def test_the_default_is_250_and_leaves_results_unchanged():
    loaded, default_rows = transfer_rows()
    assert loaded.base.transfers[0].kernel_hz == LINUX_HZ == 250
    _, explicit_rows = transfer_rows("transfers.0.kernel_hz=250")
    assert default_rows == explicit_rows
    assert isinstance(make_congestion_control("cubic"), Cubic) and make_congestion_control("cubic").hz == 250


def test_hz_1000_changes_a_transfer_at_2_percent_loss():
    # The scenario path: the kernel_hz key reaches the transfer's CUBIC.
    _, rows_250 = transfer_rows()
    _, rows_1000 = transfer_rows("transfers.0.kernel_hz=1000")
    assert rows_250[0]["completed"] and rows_1000[0]["completed"]
    assert rows_250[0]["duration_s"] != rows_1000[0]["duration_s"]
    # The same directly on BulkTransfer: every subflow's CUBIC runs at the rate given.
    records = {}
    for hz in (250, 1000):
        env = simpy.Environment()
        forward = LinkDirection(env, "f", delay_s=0.01, rate_bps=50e6,
                                loss=Bernoulli(0.02, component_rng(1, 0, "loss")))
        backward = LinkDirection(env, "b", delay_s=0.01, rate_bps=50e6)
        transfer = BulkTransfer(env, [(forward, backward)], 4_000_000, kernel_hz=hz)
        assert transfer.sender.subflows[0].cc.hz == hz
        env.run()
        records[hz] = transfer.result()
    assert records[250].completed and records[1000].completed
    assert records[250].duration_s != records[1000].duration_s


def test_the_running_kernels_hz_is_read_from_its_config(tmp_path: Path):
    plain = tmp_path / "config-6.18"
    plain.write_text("# comment\nCONFIG_HZ_1000=y\nCONFIG_HZ=1000\n")
    packed = tmp_path / "config.gz"
    packed.write_bytes(gzip.compress(b"CONFIG_HZ_300=y\nCONFIG_HZ=300\n"))
    assert running_kernel_hz([tmp_path / "missing", plain]) == 1000
    assert running_kernel_hz([tmp_path / "missing", packed]) == 300
    assert running_kernel_hz([tmp_path / "missing"]) == "unknown"
    (tmp_path / "empty").write_text("CONFIG_HZ_250=y\n")
    assert running_kernel_hz([tmp_path / "empty"]) == "unknown"


def test_a_relayed_transfer_runs_both_legs_at_the_kernel_hz_given():
    from mpsim.sim.relay import RelayedTransfer

    env = simpy.Environment()
    client = (LinkDirection(env, "c-up", delay_s=0.005, rate_bps=100e6),
              LinkDirection(env, "c-down", delay_s=0.005, rate_bps=100e6))
    server = (LinkDirection(env, "s-up", delay_s=0.005, rate_bps=100e6),
              LinkDirection(env, "s-down", delay_s=0.005, rate_bps=100e6))
    transfer = RelayedTransfer(env, [client], [server], 100_000, mptcp=False, kernel_hz=1000)
    assert transfer.client_leg.sender.subflows[0].cc.hz == transfer.server_leg.sender.subflows[0].cc.hz == 1000
