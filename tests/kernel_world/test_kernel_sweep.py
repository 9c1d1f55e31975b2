"""``mpsim sweep ... --on kernel`` (mpsim/experiment/sweep/, docs/kernel-world.md "Sweeps on the
kernel"): the refusals need nothing but Python; the tests taking the ``kernel_world`` fixture build
testbeds (root; a 2-point sweep takes about 10 s, its resumption under 1 s)."""

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mpsim.cli import main
from mpsim.experiment import sweep
from mpsim.experiment.sweep.executors import kernel_executor
from mpsim.experiment.sweep.store import SweepDir

MODELS = Path(__file__).resolve().parents[2] / "models" / "kernel"
CI_SCENARIO = str(MODELS / "ci_two_path.toml")
SHORT = ["--set", 'transfers=[{start_s=0.0, size_bytes=100000, direction="download"}]']
GRID = ["--grid", "paths.a.delay_s=0.005,0.01"]


# --- refused before anything starts, on any machine --------------------------------------------------


@pytest.mark.parametrize("option", [["--workers", "2"], ["--dask", "local"]])
def test_kernel_sweep_refuses_parallel_points_in_one_line(option, tmp_path, capsys):
    status = main(["sweep", CI_SCENARIO, *SHORT, *GRID, "--on", "kernel", *option, "--out", str(tmp_path / "s")])
    captured = capsys.readouterr()
    assert status == 2 and captured.err.count("\n") == 1
    assert "--on kernel runs points one after another" in captured.err and f"drop {option[0]}" in captured.err
    assert not (tmp_path / "s").exists() and captured.out == ""  # nothing started, not even the plan


def test_kernel_sweep_with_one_worker_is_not_refused_for_it():
    sweep.orchestrate.check_executor("kernel", 1, None)
    sweep.orchestrate.check_executor("model", 4, "local")  # the model's points may run in parallel


def test_kernel_sweep_refuses_an_unbuildable_grid_value_naming_point_and_element(tmp_path, capsys):
    grid = ["--grid", "paths.a.middleboxes=[],strip-syn-payload"]
    status = main(["sweep", CI_SCENARIO, *SHORT, *grid, "--seeds", "2", "--on", "kernel",
                   "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "grid point g001 (paths.a.middleboxes=strip-syn-payload)" in err
    assert "variant 'base'" in err and "paths.a.middleboxes 'strip-syn-payload'" in err
    assert not (tmp_path / "s").exists()


def test_kernel_options_go_with_on_kernel(tmp_path, capsys):
    status = main(["sweep", CI_SCENARIO, *GRID, "--proxy-cmd", "microsocks", "--out", str(tmp_path / "s")])
    assert status == 2 and "go with --on kernel" in capsys.readouterr().err


def test_skip_unbuildable_leaves_variants_out_per_grid_point_and_refuses_an_empty_one(tmp_path):
    path = tmp_path / "boxed.toml"
    path.write_text(Path(CI_SCENARIO).read_text() + '\n[variants.open]\nclient.scheme = "mptcp"\n'
                    '[variants.boxed]\npaths.a.middleboxes = ["strip-syn-payload"]\n')
    with pytest.raises(sweep.SweepError, match=r"grid point g000 \(paths.a.delay_s=0.005\): cannot build variant "
                                               r"'boxed': paths.a.middleboxes 'strip-syn-payload'"):
        sweep.plan_sweep(str(path), ["paths.a.delay_s=0.005,0.01"], world="kernel")
    plan = sweep.plan_sweep(str(path), ["paths.a.delay_s=0.005,0.01"], world="kernel", skip_unbuildable=True)
    assert list(plan.kernel_skipped) == ["g000", "g001"]
    assert all(len(lines) == 1 and lines[0].startswith("boxed: paths.a.middleboxes 'strip-syn-payload'")
               for lines in plan.kernel_skipped.values())
    assert plan.task(plan.points[0]).skip_unbuildable  # the point leaves it out as mpsim run --on kernel does
    with pytest.raises(sweep.SweepError, match=r"grid point g001 \(client.scheme=syn-payload-eol\): no variant "
                                               r"can be built in the kernel: open: client.scheme 'syn-payload-eol'"):
        sweep.plan_sweep(str(path), ["client.scheme=mptcp,syn-payload-eol"], world="kernel", skip_unbuildable=True)


def test_the_world_is_in_a_kernel_sweeps_identity_and_a_changed_world_is_refused(tmp_path):
    model = sweep.plan_sweep(CI_SCENARIO, ["paths.a.delay_s=0.005,0.01"])
    kernel = sweep.plan_sweep(CI_SCENARIO, ["paths.a.delay_s=0.005,0.01"], world="kernel")
    assert "world" not in model.identity()  # a model sweep's hash is the one it had before kernel sweeps
    assert kernel.identity()["world"] == "kernel" and kernel.identity_hash() != model.identity_hash()
    directory = SweepDir(tmp_path)
    with directory.locked():
        directory.check_or_record(model)
        directory.check_or_record(model)  # the same sweep: resumed
        with pytest.raises(sweep.SweepError, match=r"holds a different sweep \(its world differ"):
            directory.check_or_record(kernel)
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record.get("world", "model") == "model"


# --- in the kernel -----------------------------------------------------------------------------------


def test_kernel_sweep_writes_the_model_sweeps_columns_and_resumes(kernel_world, tmp_path, capsys):
    kernel_dir, model_dir = tmp_path / "kernel", tmp_path / "model"
    assert main(["sweep", CI_SCENARIO, *SHORT, *GRID, "--on", "kernel", "--out", str(kernel_dir)]) == 0
    first = capsys.readouterr()
    assert "2 points run now, 0 already" in first.out and "sweep: 2/2 points, 0 failed" in first.err
    assert main(["sweep", CI_SCENARIO, *SHORT, *GRID, "--out", str(model_dir), "--workers", "1"]) == 0
    capsys.readouterr()
    for table in ("connections", "transfers", "points", "summary"):
        kernel = pd.read_parquet(kernel_dir / f"{table}.parquet")
        model = pd.read_parquet(model_dir / f"{table}.parquet")
        assert list(kernel.columns) == list(model.columns), table
        assert len(kernel) == len(model), table
    points = pd.read_parquet(kernel_dir / "points.parquet")
    assert points["status"].tolist() == ["ok", "ok"]
    assert points["seed"].tolist() == pd.read_parquet(model_dir / "points.parquet")["seed"].tolist()
    connections = pd.read_parquet(kernel_dir / "connections.parquet")
    assert connections["outcome"].tolist() == ["mptcp", "mptcp"]
    setup = connections.set_index("paths.a.delay_s")["setup_time_s"]
    assert setup[0.01] > setup[0.005] + 0.005  # the grid value reached the kernel: 10 ms more RTT on path a
    manifest = json.loads((kernel_dir / "manifest.json").read_text())
    assert manifest["world"] == "kernel" and manifest["sessions"][0]["executor"] == "kernel"
    assert manifest["kernel"]["sysctls"]["g001"]["base"]["client"]["net.ipv4.tcp_syn_linear_timeouts"] == "0"

    files = sorted((kernel_dir / "points").iterdir())
    stamps = [path.stat().st_mtime_ns for path in files]
    assert main(["sweep", CI_SCENARIO, *SHORT, *GRID, "--on", "kernel", "--out", str(kernel_dir)]) == 0
    assert "0 points run now, 2 already" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in files] == stamps  # not re-run, not rewritten
    assert main(["sweep", CI_SCENARIO, *SHORT, *GRID, "--out", str(kernel_dir)]) == 2  # the model in its DIR
    assert "its world differ" in capsys.readouterr().err


def test_an_interrupted_kernel_executor_removes_this_processs_namespaces(kernel_world):
    name = f"mps-{os.getpid()}-9999-leftover"  # as a teardown stopped half-way leaves one
    try:
        with pytest.raises(KeyboardInterrupt):
            with kernel_executor():
                subprocess.run(["ip", "netns", "add", name], check=True)
                raise KeyboardInterrupt
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    finally:  # should the executor not have removed it
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
