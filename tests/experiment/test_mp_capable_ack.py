"""``client.mptcp.mp_capable_ack`` through a whole scenario (docs/kernel-departures.md 7): the
seed of the kernel world's pairing test loses the first Convert SYN-ACK on path a
(tests/kernel_world, ``_seed_losing_the_first_synack``: seed 43). Linux's form gives what the
kernel gave there (fallback to TCP, ``dss_missing``); the RFC's form converts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpsim.cli import main

SCENARIO = str(Path(__file__).resolve().parents[2] / "models" / "kernel" / "convert_paths.toml")


def _connection(capsys, form: str) -> dict:
    status = main(["run", SCENARIO, "--json", "--variant", "convert-2x10-upload-loss2", "--set", "seed=43",
                   "--set", "runs=1", "--set", 'transfers=[{start_s=0.0, size_bytes=200000, direction="upload"}]',
                   "--set", f"client.mptcp.mp_capable_ack={form}"])
    assert status == 0
    (row,) = json.loads(capsys.readouterr().out)["connections"]
    return row


@pytest.mark.parametrize(("form", "outcome", "reason"), [("linux", "fallback_tcp", "dss_missing"),
                                                         ("rfc8684", "converted", None)])
def test_a_lost_convert_synack_falls_back_only_in_linux_form(capsys, form, outcome, reason):
    row = _connection(capsys, form)
    assert (row["outcome"], row["fallback_reason"]) == (outcome, reason)
    assert row["syns_sent"] == 2 and row["setup_rtts"] > 50  # the lost SYN-ACK: one RTO in both forms


def test_an_unknown_form_is_refused_by_name(capsys):
    status = main(["run", SCENARIO, "--set", "client.mptcp.mp_capable_ack=rfc"])
    err = capsys.readouterr().err
    assert status == 2 and "client.mptcp.mp_capable_ack" in err
