"""The paths as built (docs/kernel-world.md, "The path as built"): the forwarding latency each
kernel run measures on its lines, recorded with the run and given to the model's links by
`mpsim compare`; the calibrated constants for recordings made before. The model-side tests need
no root; the measurement's test needs the kernel world and skips elsewhere with the reason."""

import json
import math
from pathlib import Path

import pytest

from mpsim.experiment import compare, kernel_world as world, results
from mpsim.experiment.scenario import load
from mpsim.experiment.simulation import Simulation

MODELS = Path(__file__).resolve().parents[2] / "models" / "kernel"
CI_SCENARIO = str(MODELS / "ci_two_path.toml")
CALIBRATION = str(MODELS / "proxy_calibration.toml")
SERVER_HOP_S = 2 * 60 * 8 / 1e9  # the SYN and the SYN-ACK (60 bytes each) at the server link's 1 Gbit/s


def _setup_and_first_byte_s(latency):
    scenario = load(CALIBRATION, ["runs=1"]).variants["direct"]
    row = Simulation(scenario, variant="direct", run_index=0, shaper="tbf", path_latency_s=latency).run().connections[0]
    return row["setup_time_s"], row["first_byte_time_s"], row["setup_rtts"]


def test_the_models_setup_at_a_given_path_latency_is_the_hand_worked_figure():
    # Path and server one-way delay 5 ms each (20 ms RTT); the access line forwards 0.1 ms late
    # each way and the server line 0.05 ms: the handshake crosses each twice, so the set-up is
    # 20 ms + 2 x (0.1 + 0.05) ms + the handshake's two packets at 1 Gbit/s (the access path's
    # tbf lets them through at once) = 20.30096 ms; in RTTs of the scenario's 20 ms, 1.015048.
    setup_s, first_byte_s, setup_rtts = _setup_and_first_byte_s({"access": (1e-4, 1e-4), "server": (5e-5, 5e-5)})
    assert setup_s == pytest.approx(0.020 + 2 * (1e-4 + 5e-5) + SERVER_HOP_S, abs=1e-12)
    assert setup_rtts == pytest.approx(1.015048, abs=1e-6)
    plain_setup_s, plain_first_byte_s, _ = _setup_and_first_byte_s(None)
    assert plain_setup_s == pytest.approx(0.020 + SERVER_HOP_S, abs=1e-12)
    # The first byte is two round trips: the latency counts twice as often.
    assert first_byte_s - plain_first_byte_s == pytest.approx(4 * (1e-4 + 5e-5), abs=1e-12)
    # Per direction: only the way a packet goes counts (the SYN-ACK's way here).
    setup_back_s, _, _ = _setup_and_first_byte_s({"server": (0.0, 3e-4)})
    assert setup_back_s == pytest.approx(0.020 + 3e-4 + SERVER_HOP_S, abs=1e-12)


@pytest.mark.parametrize("latency, named", [
    ({"c": (0.0, 0.0)}, "unknown line 'c'"),
    ({"server": (0.001,)}, "expected two latencies"),
    ({"access": (-1e-4, 0.0)}, "expected latencies in [0, 1) s"),
])
def test_a_bad_path_latency_is_refused_in_one_line(latency, named):
    scenario = load(CALIBRATION, ["runs=1"]).variants["direct"]
    with pytest.raises(ValueError, match=".*") as err:
        Simulation(scenario, variant="direct", run_index=0, path_latency_s=latency)
    assert named in str(err.value) and "\n" not in str(err.value)


def _recording(tmp_path: Path, one_way_s: dict | None, runs: int = 2) -> Path:
    """The model's run of the CI scenario stored as kernel runs would be, each run with the path
    measurement given (None: none, as in recordings made before it)."""
    loaded = load(CI_SCENARIO, [f"runs={runs}"])
    model = results.run(loaded, shaper="tbf")
    measured = {} if one_way_s is None else {"lines": {line: {"one_way_s": v} for line, v in one_way_s.items()}}
    kernel = world.KernelResults(loaded, model.runs, [world.KernelRun({}, {"client": {}}, {}, [], {},
                                                                                  path_latency=measured) for _ in model.runs], [])
    path = tmp_path / world.RECORD_FILE
    path.write_text(json.dumps(kernel.record()))
    return path


def _setup_rtts(report):
    return {r.metric: r for r in report.rows}["setup_rtts"].model


def test_compare_gives_the_models_lines_the_latency_each_kernel_run_measured(tmp_path):
    # ci_two_path: 20 ms RTT over path a and the server link. Recorded latencies 0.2 ms (a) and
    # 0.1 ms (server) each way: the model's set-up is 20 + 2 x 0.3 ms + the two handshake packets
    # on the server link (SYN and SYN-ACK with MP_CAPABLE v1, 68 bytes each at 1 Gbit/s: 1.088 us).
    path = _recording(tmp_path, {"a": 2e-4, "b": 0.0, "server": 1e-4})
    assert "path_latency" in json.loads(path.read_text())["variants"]["base"]["runs"]["1"]
    report = compare.compare(load(CI_SCENARIO, ["runs=2"]), kernel_from=path)
    assert _setup_rtts(report) == pytest.approx((0.020 + 2 * 3e-4 + 2 * 68 * 8 / 1e9) / 0.020, abs=1e-6)
    assert not report.notes
    zero = compare.compare(load(CI_SCENARIO, ["runs=2"]), kernel_from=_recording(tmp_path, {"a": 0.0, "b": 0.0,
                                                                                             "server": 0.0}))
    assert _setup_rtts(zero) == pytest.approx((0.020 + 2 * 68 * 8 / 1e9) / 0.020, abs=1e-6)


def test_a_recording_without_the_measurement_is_read_and_gets_the_calibrated_constants(tmp_path):
    report = compare.compare(load(CI_SCENARIO, ["runs=2"]), kernel_from=_recording(tmp_path, None))
    calibrated = compare.CALIBRATED_PATH_LATENCY_S
    one_way = calibrated["access, delay line"] + calibrated["server, delay line"]
    assert _setup_rtts(report) == pytest.approx((0.020 + 2 * one_way + 2 * 68 * 8 / 1e9) / 0.020, abs=1e-6)
    assert report.notes == ["No measurement of the paths as built in the recording (every variant: recorded before "
                            "it); the model's lines get the calibrated forwarding latency (CALIBRATED_PATH_LATENCY_S, "
                            "benchmarks/results/path_latency.md)."]


def test_line_kinds_follow_what_the_kernel_world_builds():
    loaded = load(str(MODELS / "goodput.toml"), [])
    assert compare.line_kinds(loaded.variants["tcp-10M-rtt10"]) == {"a": "access, no delay line",
                                                                     "server": "server, delay line"}
    assert compare.line_kinds(loaded.variants["tcp-10M-rtt40"])["a"] == "access, delay line"
    assert set(compare.CALIBRATED_PATH_LATENCY_S) == {f"{line}, {kind}" for line in ("access", "server")
                                                      for kind in ("delay line", "no delay line")}
    assert all(0 <= v < 0.001 for v in compare.CALIBRATED_PATH_LATENCY_S.values())


def test_each_kernel_run_measures_and_records_its_lines(kernel_world):
    loaded = load(CALIBRATION, ["runs=1", "paths.access.delay_s=0.01"])
    kernel = world.run_kernel(loaded, variants=["direct"], pcap=False)
    measured = kernel.kernel[0].path_latency
    lines = measured["lines"]
    assert set(lines) == {"access", "server"} and measured["echoes"] == world.PATH_ECHOES
    assert lines["server"]["configured_rtt_s"] == pytest.approx(0.010)
    assert lines["access"]["configured_rtt_s"] == pytest.approx(0.030)  # its route: path and server
    for line in lines.values():
        assert line["error"] is None and line["echoes"] == world.PATH_ECHOES
        # The echo cannot come back before the configured delay; the testbed adds well under 2 ms.
        assert line["rtt_min_s"] >= line["configured_rtt_s"] and 0 <= line["one_way_s"] < 0.002
        assert set(line["lateness_median_s"]) == {"a_to_b", "b_to_a"}  # both delay lines' own statistics
    assert lines["access"]["route_excess_s"] == pytest.approx(lines["access"]["excess_s"]
                                                              + lines["server"]["excess_s"])
    record = kernel.record()
    assert record["variants"]["direct"]["runs"]["0"]["path_latency"] == measured
    assert kernel.manifest()["kernel"][0]["path_latency"] == measured
    assert not math.isnan(kernel.connections["setup_time_s"].iloc[0])
