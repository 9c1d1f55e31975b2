"""A model run's counters table carries each transfer sender's counters under Linux's TcpExt names
(TransferRecord.tcp_ext), on the machine that sent the data, as a kernel run's nstat deltas are
listed (mpsim/experiment/kernel_world.py): the server for a download, the client for an upload;
only counters that moved. docs/sim.md, "Linux's algorithms in the transfer model" (counters named as Linux's)."""

from __future__ import annotations

import mpsim
from mpsim.experiment import simulation


def _run_with_records(variant, set_=None):
    records = []
    original = simulation.Simulation._count_tcp_ext

    def spy(self, row, transfer):
        records.append(transfer.result())
        original(self, row, transfer)

    simulation.Simulation._count_tcp_ext = spy
    try:
        run = mpsim.run("models/kernel/goodput.toml", set={"runs": 1, **(set_ or {})}, variants=[variant])
    finally:
        simulation.Simulation._count_tcp_ext = original
    counters = {(r.component, r.counter): r.value for r in run.counters.itertuples()}
    return counters, records


def test_a_download_counts_on_the_server_and_an_upload_on_the_client():
    for variant, sender, receiver in (("tcp-10M-rtt40", "server", "client"),
                                      ("tcp-10M-rtt40-upload", "client", "server")):
        counters, (record,) = _run_with_records(variant)
        expected = {name: value for name, value in record.tcp_ext if value}
        # 10 Mbit/s, 40 ms, a 62.5 kB queue: HyStart's delay detector ends slow start (once).
        assert expected["TCPHystartDelayDetect"] == 1
        assert {name: value for (machine, name), value in counters.items()
                if machine == sender and name in dict(record.tcp_ext)} == expected
        assert not any(machine == receiver and name in dict(record.tcp_ext) for machine, name in counters)


def test_counters_add_up_over_a_runs_transfers_and_subflows():
    counters, records = _run_with_records("tcp-10M-rtt40-loss2")
    (record,) = records
    assert counters[("server", "TCPSackRecovery")] == record.fast_recoveries > 0
    assert counters.get(("server", "TCPTimeouts"), 0) == record.timeouts
    assert counters.get(("server", "TCPLossProbes"), 0) == record.loss_probes
