"""``mpsim run``, ``mpsim ladder`` and ``mpsim scenarios``: what users type and what they get back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpsim.cli import main
from mpsim.experiment import scenario as sc

QUICK = ("--set", "runs=1", "--set", "duration_s=10")
CONNECTION_FIELDS = {"scheme", "outcome", "fallback_reason", "setup_time_s", "first_byte_time_s", "syns_sent",
                     "rsts_sent", "source_ports_used", "bytes_sent", "bytes_delivered"}
TRANSFER_FIELDS = {"bytes", "duration_s", "goodput_bps", "subflows", "retransmissions"}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, out: str, err: str, *fragments: str) -> None:
    assert status == 2 and out == "", (status, out, err)
    assert err.startswith("mpsim: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_run_without_arguments_runs_the_default_scenario(capsys):
    status, out, err = cli(capsys, "run")
    assert (status, err) == (0, "")
    assert out.startswith("mpsim ") and "scenario default" in out and sc.load("default").description in out
    assert "converted" in out and "setup ms" in out and "goodput Mbit/s" in out
    assert "--out DIR" in out  # says how to keep the tables


def test_json_has_the_promised_shape(capsys):
    status, out, err = cli(capsys, "run", "bulk_two_path", "--json", "--variant", "convert", "--variant", "plain")
    assert (status, err) == (0, "")
    data = json.loads(out)
    assert data["scenario"] == "bulk_two_path" and data["variants"] == ["convert", "convert-lia", "plain",
                                                                       "convert-lost"]
    assert len(data["connections"]) == 2 and len(data["transfers"]) == 2
    for row in data["connections"]:
        assert CONNECTION_FIELDS <= set(row) and row["outcome"] in {"converted", "mptcp", "tcp", "fallback_tcp",
                                                                      "failed"}
    for row in data["transfers"]:
        assert TRANSFER_FIELDS <= set(row) and row["subflows"] in (1, 2) and row["goodput_bps"] > 0
    assert {r["variant"] for r in data["transfers"]} == {"convert", "plain"}


def test_set_and_seed_reach_the_scenario(capsys):
    status, out, _ = cli(capsys, "run", "scheme_comparison", "--json", "--variant", "convert", "--seed", "5",
                         "--set", "paths.access.delay_s=0.02")
    data = json.loads(out)
    assert status == 0 and data["root_seed"] == 5
    assert data["overrides"] == ["paths.access.delay_s=0.02", "seed=5"]
    assert data["connections"][0]["setup_time_s"] == pytest.approx(2 * (0.02 + 0.02), rel=1e-3)


def test_out_writes_the_tables(capsys, tmp_path):
    status, out, _ = cli(capsys, "run", "legacy_server", "--out", str(tmp_path / "res"), "--pcap")
    assert status == 0 and f"Tables written to {tmp_path / 'res'}" in out
    assert (tmp_path / "res" / "connections.csv").is_file() and (tmp_path / "res" / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "res" / "pcap").iterdir())[0].endswith(".pcapng")


@pytest.mark.parametrize("argv,fragments", [
    (["run", "defualt"], ["defualt: no scenario of that name", "did you mean default?"]),
    (["run", "--set", "client.schem=convert"],
     ["--set client.schem=convert: client.schem: unknown key (did you mean client.scheme?)"]),
    (["run", "--set", "client.scheme=3"], ["client.scheme: expected one of plain"]),
    (["run", "--seed", "-1"], ["--seed -1: expected an integer >= 0"]),
    (["run", "--pcap"], ["--pcap writes files: give --out DIR too"]),
    (["run", "scheme_comparison", "--variant", "quic"],
     ["--variant quic: scenario scheme_comparison has variants plain"]),
    (["ladder", "scheme_comparison", "--variant", "convert", "--conn", "3"], ["--conn 3: the run has requests 0..0"]),
])
def test_user_errors_are_one_line_with_status_2(capsys, argv, fragments):
    assert_one_line_error(*cli(capsys, *argv), *fragments)


def test_a_bad_scenario_file_names_the_file_and_the_key(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mine.toml").write_text('description = "mine"\n[paths.dsl]\nrate_down_bps = -5\n')
    assert_one_line_error(*cli(capsys, "run", "mine.toml"),
                          "mine.toml: paths.dsl.rate_down_bps: expected a number > 0, got -5")


def test_ladder_prints_each_connection_of_a_request(capsys, tmp_path):
    png = tmp_path / "ladder.png"
    status, out, err = cli(capsys, "ladder", "scheme_comparison", "--variant", "convert", "--png", str(png))
    assert (status, err) == (0, "")
    assert "request 0: converted" in out
    assert "attempt 1 (convert): client -> converter" in out and "the proxy's connection: converter -> server" in out
    assert "SYN seq=0 <MSS,SACK_PERM,TS,WS,MPC> len=" in out and "[Convert Connect" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ladder_of_a_fallback_shows_both_attempts(capsys):
    status, out, _ = cli(capsys, "ladder", "legacy_server", "--variant", "queue-reset")
    assert status == 0 and "attempt 1 (syn_payload_eol): client -> server" in out
    assert "attempt 2 (direct): client -> server" in out and "RST" in out


def test_scenarios_lists_every_model_with_its_description(capsys):
    status, out, err = cli(capsys, "scenarios")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == sc.scenario_names()
    for (name, description), line in zip(sc.describe_all(), lines):
        assert line.endswith(description)


def test_the_codec_demonstration_is_reachable_as_wire_budget(capsys):
    status, out, _ = cli(capsys, "wire", "budget")
    assert status == 0 and "Destination [2001:db8::1]:443" in out and "One RFC 8803 Convert SYN" in out


def python_m_mpsim(*argv: str, hash_seed: str) -> subprocess.CompletedProcess:
    # A different string-hash seed per process: results must not depend on set or dict-of-str order.
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    return subprocess.run([sys.executable, "-m", "mpsim", *argv], capture_output=True, text=True, timeout=300, env=env)


def test_json_is_identical_across_processes():
    argv = ("run", "default", *QUICK, "--json")
    first, second = python_m_mpsim(*argv, hash_seed="1"), python_m_mpsim(*argv, hash_seed="2")
    assert first.returncode == 0 and first.stderr == ""
    assert first.stdout == second.stdout


@pytest.mark.parametrize("argv, usage", [
    (["converter", "serve", "--help"], "usage: mpsim converter serve"),
    (["converter", "connect", "--help"], "usage: mpsim converter connect"),
    (["bench", "kernel", "--help"], "usage: mpsim bench kernel"),
])
def test_delegated_tools_are_reachable_with_their_own_help(argv, usage, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(usage)


def test_a_delegated_tool_with_an_unknown_action_is_a_usage_error(capsys):
    assert main(["bench", "nonsense"]) == 2
    assert "invalid choice" in capsys.readouterr().err
