"""Recorded kernel runs reused by `mpsim compare --kernel-from` (mpsim/experiment/compare.py,
docs/kernel-world.md "Reusing recorded kernel runs"). A simulator run stands for the recorded
kernel side (the same tables with the same columns), so these need no root."""

import json
from pathlib import Path

import pandas as pd
import pytest

from mpsim.cli import main
from mpsim.experiment import compare, kernel_world, results
from mpsim.experiment.scenario import load

MODELS = Path(__file__).resolve().parents[2] / "models" / "kernel"
CI_SCENARIO = str(MODELS / "ci_two_path.toml")


#: A path measurement of no latency on every line of the CI scenario, so that the model compare
#: runs is the model that made the recording (tests/kernel_world/test_path_latency.py gives others).
NO_LATENCY = {"lines": {line: {"one_way_s": 0.0} for line in ("a", "b", "server")}}


def _recording(tmp_path: Path, overrides=(), runs: int = 2) -> Path:
    """A tiny recording: the model's run of the CI scenario with the shaper compare gives the model
    (the kernel world's tbf), stored as kernel runs would be."""
    loaded = load(CI_SCENARIO, [*overrides, f"runs={runs}"])
    model = results.run(loaded, shaper="tbf")
    kernel = kernel_world.KernelResults(loaded, model.runs,
                                        [kernel_world.KernelRun({}, {"client": {}}, {}, [], {}, path_latency=NO_LATENCY)
                                         for _ in model.runs], [])
    path = tmp_path / kernel_world.RECORD_FILE
    path.write_text(json.dumps(kernel.record()))
    return path


def test_a_recording_keeps_only_the_tables_compare_reads_per_variant_and_run(tmp_path):
    record = json.loads(_recording(tmp_path).read_text())
    assert record["format"] == 1 and set(record["columns"]) == {"connections", "transfers"}
    entry = record["variants"]["base"]
    assert sorted(entry["runs"]) == ["0", "1"]
    assert entry["built"]["paths.b.rate_down_bps"] == 10e6 and "converter.cpu_setup_s" not in entry["built"]
    assert len(entry["runs"]["1"]["transfers"]) == 1
    row = dict(zip(record["columns"]["transfers"], entry["runs"]["1"]["transfers"][0]))
    assert row["run"] == 1 and row["goodput_bps"] > 1e6


def test_a_recorded_kernel_side_is_reused_and_only_the_model_runs(tmp_path, capsys):
    _recording(tmp_path)
    status = main(["compare", CI_SCENARIO, "--seeds", "2", "--kernel-from", str(tmp_path),
                   "--tolerance", "goodput=0", "--tolerance", "syns=0", "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "Kernel side recorded" in out.out and "run indices 0-1 of 2 recorded" in out.out
    rows = pd.read_csv(tmp_path / "cmp" / "compare.csv").set_index("metric")
    assert rows.loc["goodput", "error"] == 0.0 and rows.loc["goodput", "samples"] == 2
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["kernel_source"].startswith("Kernel side")
    assert not (tmp_path / "cmp" / kernel_world.RECORD_FILE).exists()  # nothing ran in the kernel: nothing new
    # Fewer run indices than recorded: the first ones.
    report = compare.compare(load(CI_SCENARIO, ["runs=1"]), kernel_from=tmp_path)
    goodput = {r.metric: r for r in report.rows}["goodput"]
    assert goodput.error == 0.0 and goodput.samples == 1


def test_model_only_keys_do_not_refuse_a_recording(tmp_path):
    _recording(tmp_path)
    loaded = load(CI_SCENARIO, ["runs=2", "converter.cpu_setup_s=0.002", "transfers.0.kernel_hz=1000",
                                "description='another'"])
    report = compare.compare(loaded, kernel_from=tmp_path)
    assert report.kernel_source and {r.metric for r in report.rows} >= {"outcome", "goodput"}


@pytest.mark.parametrize("args, named", [
    (["--set", "paths.a.delay_s=0.02"], "paths.a.delay_s is 0.02 here, 0.005 in the recording"),
    (["--seeds", "3"], "run index 2 is not recorded (recorded: 0, 1; use --seeds 2 or fewer)"),
    (["--set", "seed=2"], "seed is 2 here, 1 in the recording"),
    (["--proxy-cmd", "microsocks -p {port}"], "recorded with --proxy-cmd None"),
])
def test_a_recording_of_another_scenario_or_run_is_refused_in_one_line(tmp_path, capsys, args, named):
    _recording(tmp_path)
    argv = ["compare", CI_SCENARIO, "--kernel-from", str(tmp_path)]
    if "--seeds" not in args:
        argv += ["--seeds", "2"]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "--kernel-from" in err and "\n" not in err, err


def test_a_missing_variant_or_a_file_that_is_no_recording_is_refused(tmp_path, capsys):
    path = _recording(tmp_path)
    record = json.loads(path.read_text())
    record["variants"]["other"] = record["variants"].pop("base")
    path.write_text(json.dumps(record))
    assert main(["compare", CI_SCENARIO, "--seeds", "2", "--kernel-from", str(path)]) == 2
    assert "variant 'base' is not recorded (recorded: other)" in capsys.readouterr().err
    path.write_text("{}")
    assert main(["compare", CI_SCENARIO, "--kernel-from", str(path)]) == 2
    assert "not a recording of kernel runs" in capsys.readouterr().err
    assert main(["compare", CI_SCENARIO, "--kernel-from", str(tmp_path / "nowhere")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_a_key_the_recording_predates_is_named_not_refused(tmp_path):
    path = _recording(tmp_path)
    record = json.loads(path.read_text())
    del record["variants"]["base"]["built"]["client.max_attempts"]  # as if the key were added since
    path.write_text(json.dumps(record))
    report = compare.compare(load(CI_SCENARIO, ["runs=2"]), kernel_from=path)
    assert report.notes == ["base: keys the recording predates, taken as not changing the kernel: "
                            "client.max_attempts = 6"]


def test_a_variant_recorded_apart_names_when_and_where(tmp_path):
    # A variant measured later and added to an older recording keeps its own stamp, and the report
    # says so rather than giving it the file's.
    path = _recording(tmp_path)
    record = json.loads(path.read_text())
    record["variants"]["base"].update(measured_utc="2026-12-08T01:51:56+00:00",
                                      git={"commit": "4ffe9e82a7d6" + "0" * 28, "dirty": False})
    path.write_text(json.dumps(record))
    report = compare.compare(load(CI_SCENARIO, ["runs=2"]), kernel_from=path)
    assert report.notes == ["base: kernel side recorded 2026-12-08T01:51:56+00:00 at mpsim 4ffe9e82a7"]


LOSSY = ["paths.a.loss={model=\"bernoulli\", loss_prob=0.02}", "transfers.0.size_bytes=300000"]


def test_a_lossy_recording_is_paired_run_by_run_and_an_older_one_is_named(tmp_path):
    """A lossy variant's recording says it drew the model's loss streams, and compare then pairs the
    goodputs by run index (goodput_paired: kernel / model with the same draws); a recording without
    the mark is read with a note and no paired row (docs/kernel-world.md, "Loss: one stream for both
    worlds")."""
    path = _recording(tmp_path, LOSSY, runs=3)
    record = json.loads(path.read_text())
    assert record["variants"]["base"]["loss_streams"] == kernel_world.LOSS_STREAMS
    # The stand-in kernel is the model with its goodputs scaled per run: the pairing must see the scale.
    scale = {0: 0.5, 1: 1.0, 2: 2.0}
    columns = record["columns"]["transfers"]
    for run, entry in record["variants"]["base"]["runs"].items():
        for row in entry["transfers"]:
            row[columns.index("goodput_bps")] *= scale[int(run)]
    path.write_text(json.dumps(record))
    loaded = load(CI_SCENARIO, [*LOSSY, "runs=3"])
    rows = {r.metric: r for r in compare.compare(loaded, kernel_from=path).rows}
    paired = rows["goodput_paired"]
    assert (paired.kernel, paired.kernel_min, paired.kernel_max, paired.samples) == pytest.approx((1.0, 0.5, 2.0, 3))
    assert paired.error == pytest.approx(0.0)
    del record["variants"]["base"]["loss_streams"]
    path.write_text(json.dumps(record))
    report = compare.compare(loaded, kernel_from=path)
    assert "goodput_paired" not in {r.metric for r in report.rows}
    assert report.notes == ["base: the recorded kernel runs drew their losses independently of the model's "
                            "(recorded before the delay line drew the model's loss streams)"]
    # A loss-free variant has no paired row either (nothing drawn).
    _recording(tmp_path)
    assert "goodput_paired" not in {r.metric for r in compare.compare(load(CI_SCENARIO, ["runs=2"]),
                                                                      kernel_from=tmp_path).rows}


def _benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_world.py"
    spec = importlib.util.spec_from_file_location("kernel_world_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_rebuilds_its_report_from_recorded_kernel_runs(tmp_path, capsys):
    bench = _benchmark()
    runs = tmp_path / "runs"
    runs.mkdir()
    _recording(runs, runs=1).rename(runs / "ci_two_path.json")  # the quick job's name
    assert bench.main(["--quick", "--kernel-from", str(runs), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "kernel_world.md").read_text()
    assert "Kernel side recorded" in text and "goodput within 5 % (loss-free) 1/1" in text
    record = json.loads((runs / "ci_two_path.json").read_text())
    record["variants"]["base"]["built"]["seed"] = 7  # recorded from another root seed
    (runs / "ci_two_path.json").write_text(json.dumps(record))
    assert bench.main(["--quick", "--kernel-from", str(runs), "--out", str(tmp_path / "out")]) == 2
    assert "seed is 1 here, 7 in the recording" in capsys.readouterr().err


def test_the_reports_recorded_kernel_runs_are_small_and_fit_the_scenarios_now():
    """benchmarks/results/kernel_runs holds the kernel side of the report's jobs: well below 2 MB
    together, and reusable for the scenario files as they are (a changed built value needs the
    kernel run again: `python benchmarks/kernel_world.py --kernel-only --jobs JOB`)."""
    bench = _benchmark()
    files = sorted(bench.KERNEL_RUNS.glob("*.json"))
    assert {f.stem for f in files} == {job[0] for job in bench.JOBS}
    assert sum(f.stat().st_size for f in files) < 2_000_000
    for job, scenario, overrides, wanted, seeds in bench.JOBS:
        loaded = load(str(bench.MODELS / scenario), [*overrides, f"runs={seeds or 3}"])
        names = wanted or [n for n in loaded.variants if n not in bench.APART.get(scenario, [])]
        recorded = compare.recorded_kernel(loaded, bench.KERNEL_RUNS / f"{job}.json", variants=names)
        assert recorded.variants == names and len(recorded.connections) >= len(names) * (seeds or 3), job
        assert not recorded.unpaired, f"{job}: recorded before the kernel drew the model's loss streams"
