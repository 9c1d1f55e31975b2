"""The simulator benchmark's machinery runs end to end on tiny sizes and reports what it measured.
(The benchmark itself is not a test: benchmarks/simulator.py prints and records the figures.)"""

import json

import pytest

from mpsim.bench import simulator

TINY = simulator.BenchConfig(rounds=2, bulk_size_bytes=256 * 1024, pipeline_packets=300, negotiations=5,
                             two_path_size_bytes=256 * 1024)


def test_each_measurement_counts_what_it_simulated():
    data_packets = -(-256 * 1024 // simulator.MSS_BYTES)
    assert data_packets < simulator.bulk_flow(256 * 1024).count < 2 * data_packets  # data, and delayed ACKs
    assert simulator.simpy_pipeline(300).count == 300
    for scheme in ("plain", "convert"):  # each checks every request ended as expected
        assert simulator.negotiations_sim(scheme, 5).count == 5
        assert simulator.negotiations_harness(scheme, 5).count == 5
    assert simulator.two_path_transfer(256 * 1024).count == 256 * 1024


def test_nspy_flow_delivers_every_packet_and_its_ack():
    pytest.importorskip("ns.packet.tcp_generator")
    assert simulator.nspy_flow(50).count == 100


def test_results_hold_rounds_ratios_targets_and_the_machine():
    results = simulator.run(TINY, with_nspy=False)
    assert set(results["measurements"]) == {
        "bulk_flow", "simpy_pipeline", "negotiations_plain_sim", "negotiations_plain_harness",
        "negotiations_convert_sim", "negotiations_convert_harness", "two_path_transfer"}
    assert all(len(m["wall_s"]) == 2 for m in results["measurements"].values())
    ratio = results["ratios"]["bulk_flow_vs_simpy_pipeline"]
    assert len(ratio["per_round"]) == 2 and ratio["min"] <= ratio["median"]
    assert "bulk_flow_vs_nspy" not in results["ratios"]
    assert {"python", "cpu_model", "date_utc", "packages"} <= set(results["machine"])
    assert results["machine"]["compiled_modules"] == []  # the tests run pure Python
    assert "two_path_transfer" in results["targets"] and "negotiations_plain_sim" in results["targets"]
    table = simulator.results_table(results)
    assert len(table) == 14 and {"measurement", "round", "wall_s", "per_wall_s"} <= set(table.columns)
    report = simulator.markdown(results)
    assert "| bulk_flow_vs_simpy_pipeline | >= 0.5x |" in report and "no ns.py comparison" in report
    assert "Build: pure Python" in report


def test_the_report_names_a_compiled_build():
    results = simulator.run(TINY, with_nspy=False)
    results["machine"]["compiled_modules"] = ["mpsim.proto.tcp", "mpsim.wire.segment"]
    assert "Build: compiled with mypyc (`make fast`): mpsim.proto.tcp, mpsim.wire.segment;" in simulator.markdown(results)


def test_main_writes_the_json_and_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(simulator.BenchConfig, "quick", classmethod(lambda cls: TINY))
    assert simulator.main(["--quick", "--rounds", "1", "--no-nspy", "--quiet", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "simulator.json").read_text())
    assert results["config"]["rounds"] == 1
    assert (tmp_path / "simulator.md").read_text() in capsys.readouterr().out
