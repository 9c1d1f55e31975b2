"""A scenario's transfer through the converter is relayed (mpsim/sim/relay.py; the simulation
module doc): the client leg ends at the converter, the converter's own connection carries the
bytes to the server, MPTCP only when that connection negotiated it."""

from __future__ import annotations

import pytest

from mpsim.experiment import scenario as sc
from mpsim.experiment.simulation import Simulation
from mpsim.sim.relay import RelayedTransfer
from tests.experiment.test_routes import BASE

# The two-path converted download of the routes tests (cubic, the default, named there).
SCENARIO = BASE


def _running_transfer(*overrides: str):
    scenario = sc.load_text(SCENARIO, name="t", source="t.toml", overrides=overrides).base
    sim = Simulation(scenario, variant="", run_index=0)
    sim.env.process(sim._director())
    sim.env.run(until=0.5)  # negotiated, transfer running
    row, transfer = sim._running[0]
    return sim, row, transfer


@pytest.mark.parametrize("overrides, server_mptcp", [
    ((), False),
    # the converter offers MPTCP upstream, the client asks for it, the server speaks it
    (("converter.convert_mptcp=true", "client.mptcp_to_server=true", "server.kind=mptcp_v1"), True),
    # asked, but the converter does not convert MPTCP: its connection to the server is TCP
    (("client.mptcp_to_server=true", "server.kind=mptcp_v1"), False),
])
def test_the_server_leg_is_mptcp_only_when_the_converters_connection_negotiated_it(overrides, server_mptcp):
    sim, row, transfer = _running_transfer(*overrides)
    assert row["via_converter"] and isinstance(transfer, RelayedTransfer)
    assert transfer.server_mptcp is server_mptcp and transfer.server_leg.mptcp is server_mptcp
    assert transfer.mptcp and len(transfer.client_leg.sender.subflows) == 2
    sim.env.run(until=20)
    record = transfer.result()
    assert record.completed and record.server_leg.subflows == 1  # one address towards the server


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_the_transfer_row_is_end_to_end(direction, monkeypatch):
    scenario = sc.load_text(SCENARIO, name="t", source="t.toml", overrides=(f"transfers.0.direction={direction!r}",))
    sim = Simulation(scenario.base, variant="", run_index=0)
    records = []
    original = RelayedTransfer.result

    def recording(self):
        records.append(original(self))
        return records[-1]

    monkeypatch.setattr(RelayedTransfer, "result", recording)
    (row,) = sim.run().transfers
    record = records[-1]
    assert row["completed"] and row["duration_s"] == record.duration_s and row["subflows"] == 2
    assert row["retransmissions"] == record.client_leg.retransmissions + record.server_leg.retransmissions
    assert row["subflow_bytes"] == " ".join(map(str, record.client_leg.subflow_bytes))
    # end to end: the final receiver's last byte, after the upstream leg's
    upstream = record.server_leg if direction == "download" else record.client_leg
    assert record.duration_s >= upstream.duration_s


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_each_legs_retransmissions_have_their_own_columns(direction):
    # 2 % loss on the access path (both ways) touches the client leg only: the client leg's sender
    # retransmits, the server leg's (proxy to server, loss-free) does not; the sum is the old column.
    scenario = sc.load_text(SCENARIO, name="t", source="t.toml", overrides=(
        f"transfers.0.direction={direction!r}", "paths.dsl.loss={model='bernoulli', loss_prob=0.02}",
        "paths.lte.loss={model='bernoulli', loss_prob=0.02}"))
    (row,) = Simulation(scenario.base, variant="", run_index=0).run().transfers
    assert row["client_leg_retransmissions"] > 0 and row["server_leg_retransmissions"] == 0
    assert row["retransmissions"] == row["client_leg_retransmissions"] + row["server_leg_retransmissions"]


def test_a_transfer_without_a_proxy_has_no_leg_columns():
    scenario = sc.load_text(SCENARIO, name="t", source="t.toml", overrides=("client.scheme='mptcp'",))
    (row,) = Simulation(scenario.base, variant="", run_index=0).run().transfers
    assert not row["via_converter"] and row["completed"]
    assert row["client_leg_retransmissions"] is None and row["server_leg_retransmissions"] is None


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_pinned_buffers_are_the_endpoints_sockets_and_the_proxys_auto_tune(direction):
    # buffers = "pinned" is SO_SNDBUF/SO_RCVBUF on the client's and the server's sockets (what the
    # kernel world's programs set); the converter's two ends keep auto-tuning.
    upload = direction == "upload"
    sim, row, transfer = _running_transfer(f"transfers.0.direction={direction!r}", "transfers.0.buffers='pinned'")
    client, server = transfer.client_leg, transfer.server_leg
    # The client's socket is the client leg's sender on an upload and its receiver on a download.
    assert client.sender.pinned is upload and client.receiver.pinned is not upload
    assert server.sender.pinned is not upload and server.receiver.pinned is upload
    endpoint_sender = client.sender if upload else server.sender
    assert endpoint_sender.msk_sndbuf_bytes == 2 * sim.scenario.transfers[0].snd_buf_bytes or not endpoint_sender.mptcp
    endpoint_receiver = server.receiver if upload else client.receiver
    assert endpoint_receiver.space.rcvbuf_bytes == 2 * sim.scenario.transfers[0].rcv_buf_bytes
