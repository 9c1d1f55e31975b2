"""A transfer's initial subflow starts with the RTT sample its connection's handshake gave
(``BulkTransfer(handshake_rtt_sample=True)``, what a scenario's transfers use): Linux takes one from
the SYN-ACK (``tcp_ack_update_rtt``) or, on the listener, the third ACK (``tcp_synack_rtt_meas``),
so the MPTCP scheduler's first picks weigh a pacing rate of cwnd 10 over that RTT
(``mptcp_subflow_get_send``, net/mptcp/protocol.c 6.18), not over the 1 s initial RTO."""

from __future__ import annotations

import pytest
import simpy

from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import BulkTransfer

PAYLOAD = 1420  # MPTCP data per segment


def paths(env, count=2):
    return [(LinkDirection(env, f"p{i}-fwd", delay_s=0.020, rate_bps=10e6, queue_limit_packets=1000),
             LinkDirection(env, f"p{i}-bwd", delay_s=0.020, rate_bps=10e6)) for i in range(count)]


@pytest.mark.parametrize("sample", [True, False])
def test_the_first_picks_weigh_the_handshakes_rtt(sample):
    env = simpy.Environment()
    transfer = BulkTransfer(env, paths(env), 4 * 2**20, mptcp=True, buffers="pinned", snd_buf_bytes=2**20,
                            handshake_rtt_sample=sample)
    first = transfer.sender.subflows[0]
    if sample:
        # 20 ms each way plus a 60-byte SYN's 48 us at 10 Mbit/s each way: 40.096 ms; RTTVAR half of
        # it, so RTO = SRTT + max(4 x 20.048 ms, 200 ms) = 240.096 ms.
        assert first.srtt_s == pytest.approx(0.040096) and first.rto_s == pytest.approx(0.240096)
        # Slow start: pacing 2.0 x 1420 x 10 / 0.040096 = 708,300 B/s; the first burst's average.
        assert first.avg_pacing_rate == pytest.approx(2.0 * PAYLOAD * 10 / 0.040096)
    else:  # no sample: the initial RTO of 1 s stands in, a pacing rate 25 times too low
        assert first.srtt_s is None and first.avg_pacing_rate == pytest.approx(2.0 * PAYLOAD * 10 / 1.0)


@pytest.mark.parametrize("scheme", ["mptcp", "convert"])
def test_a_scenarios_transfers_start_with_the_sample(monkeypatch, scheme):
    # Direct and through the converter (both legs): every BulkTransfer a scenario builds has it.
    from mpsim.experiment import scenario as sc
    from mpsim.experiment import simulation
    from mpsim.sim import relay

    built = []

    def recording(*args, **kwargs):
        built.append(kwargs.get("handshake_rtt_sample"))
        return BulkTransfer(*args, **kwargs)

    monkeypatch.setattr(simulation, "BulkTransfer", recording)
    monkeypatch.setattr(relay, "BulkTransfer", recording)
    text = f"""description = "one transfer"
[client]
scheme = "{scheme}"
upstream_mptcp = true
[converter]
delay_s = 0.0
[server]
kind = "mptcp_v1"
[paths.a]
[paths.b]
[workload]
arrivals = "none"
[[transfers]]
size_bytes = 100000
"""
    simulation.Simulation(sc.load_text(text, name="t", source="t.toml").base, variant="", run_index=0).run()
    assert built == ([True] if scheme == "mptcp" else [True, True])
