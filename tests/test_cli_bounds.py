"""Bounded input: what would eat memory or time without output, or end in a traceback, is refused
with one line naming the bound (and how to raise it) before anything is built; a reader that
leaves early, a point file copied over another, image names, help texts, and the progress of a
long ``mpsim run`` on a terminal."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpsim.cli import main
from mpsim.experiment import scenario as sc

REPO = Path(__file__).resolve().parents[1]
DEEP = "[" * 500 + "]" * 500


def cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2 and err.startswith("mpsim: error: ") and err.count("\n") == 1, (status, err)
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("overrides, fragments", [
    (["workload.rate_per_s=inf"], ["workload.rate_per_s: expected a finite number, got inf"]),
    (["workload.rate_per_s=1e9"], ["workload.rate_per_s: about 3e+10 requests per run (rate_per_s 1e+09 x 30 s)",
                                   "more than workload.max_requests = 100000", "raise workload.max_requests"]),
    (['workload.arrivals="count"', "workload.count=1000000000", "workload.interval_s=1e-6"],
     ["workload.count: about 1e+09 requests per run", "workload.max_requests"]),
    (["paths.dsl.delay_s=-inf"], ["expected a finite number"]),
])
def test_unbounded_workloads_are_refused_naming_the_bound(capsys, overrides, fragments):
    argv = ["run", "default", "--set", "duration_s=30"]
    for text in overrides:
        argv += ["--set", text]
    started = time.monotonic()
    assert_one_line_error(*cli(capsys, *argv)[::2], *fragments)
    assert time.monotonic() - started < 10  # refused at load, not after filling memory


def test_the_request_bound_can_be_raised_and_a_bounded_poisson_count_passes():
    loaded = sc.load("default", ["duration_s=30", "workload.rate_per_s=5000", "workload.max_requests=200000"])
    assert loaded.base.workload.max_requests == 200000
    sc.load("default", ["duration_s=30", "workload.rate_per_s=1e9", "workload.count=10"])  # at most 10
    with pytest.raises(sc.ScenarioError, match="workload.max_requests: expected an integer >= 1 and <= 1e[+]07"):
        sc.load("default", ["workload.max_requests=100000000"])


def test_deep_nesting_is_one_line_from_a_file_a_set_and_a_grid(capsys, tmp_path):
    deep_file = tmp_path / "deep.toml"
    deep_file.write_text('description = "x"\n# [[[ in a comment and "[[[" in a string do not count\n'
                         f's = "{"[" * 100}"\n[client]\nscheme = {DEEP}\n')
    for argv, fragment in ((["run", deep_file], f"{deep_file}: arrays or tables nested more than 32 deep (line 5)"),
                           (["run", "--set", f"paths.dsl.middleboxes={DEEP}"], "nested more than 32 deep"),
                           (["sweep", "default", "--grid", f"paths.dsl.middleboxes=[],{DEEP}", "--out",
                             tmp_path / "s"], "--grid paths.dsl.middleboxes=[[["),
                           (["run", "--set", "paths.dsl.middleboxes=" + "{a = " * 450 + "1" + "}" * 450],
                            "nested more than 32 deep")):
        assert_one_line_error(*cli(capsys, *argv)[::2], fragment)
    assert not (tmp_path / "s").exists()


def test_huge_grids_and_seed_counts_are_refused_from_their_sizes_at_once(capsys, tmp_path):
    started = time.monotonic()
    status, _, err = cli(capsys, "sweep", "default", "--grid", "runs=1:100:1", "--grid", "duration_s=1:1000:1",
                         "--grid", "paths.dsl.delay_s=0.001:0.1:0.001", "--out", tmp_path / "s")
    assert_one_line_error(status, err, "the sweep would run 10000000 points (100 (runs) x 1000 (duration_s) x "
                                       "100 (paths.dsl.delay_s) x 1 seeds), more than 1000000")
    status, _, err = cli(capsys, "sweep", "default", "--grid", "runs=1,2", "--seeds", 10**12, "--out", tmp_path / "s")
    assert_one_line_error(status, err, "--seeds 1000000000000: more than 1000000 points")
    status, _, err = cli(capsys, "sweep", "default", "--grid", "seed=0:1e12:1", "--out", tmp_path / "s")
    assert_one_line_error(status, err, "range 0:1e12:1: 1000000000001 values, more than 100000")
    assert time.monotonic() - started < 20 and not (tmp_path / "s").exists()


def test_a_long_axis_is_checked_at_its_ends_and_extremes_not_value_by_value(monkeypatch):
    from mpsim.experiment.sweep import plan as plan_module

    checked = []
    real = plan_module._check_load
    monkeypatch.setattr(plan_module, "_check_load", lambda loaded, extra, source: (checked.append(extra[0]),
                                                                                   real(loaded, extra, source)))
    plan = plan_module.plan_sweep("default", ["paths.dsl.delay_s=0:2:0.001"])  # 2001 values, ~6 ms a load
    assert len(plan.points) == 2001 and len(checked) == 2 * plan_module.CHECK_AXIS_ENDS
    assert "paths.dsl.delay_s=0.0" in checked and "paths.dsl.delay_s=2.0" in checked
    values = [f"{i / 1000:g}" for i in range(300)]
    values[150] = "11"  # past the schema's 10 s, in the middle of the axis: the largest number is checked
    with pytest.raises(plan_module.SweepError, match=r"--grid paths.dsl.delay_s=11: paths.dsl.delay_s: expected"):
        plan_module.plan_sweep("default", ["paths.dsl.delay_s=" + ",".join(values)])
    checked.clear()
    plan_module.plan_sweep("default", ["paths.dsl.delay_s=0:0.15:0.001"])  # 151 values: each alone
    assert len(checked) == 151


def test_a_point_file_copied_over_another_is_detected(capsys, tmp_path):
    out = tmp_path / "s"
    argv = ["sweep", "scheme_comparison", "--variant", "convert", "--grid", "paths.access.delay_s=0.01,0.02",
            "--workers", "1", "--out", out]
    assert cli(capsys, *argv)[0] == 0
    shutil.copy(out / "points" / "g000-s000.parquet", out / "points" / "g001-s000.parquet")
    assert_one_line_error(*cli(capsys, *argv)[::2], "g001-s000.parquet: holds point g000-s000 with seed",
                          "but the plan has point g001-s000", "delete it")


def test_figure_names_follow_one_rule_for_plot_and_ladder(capsys, tmp_path):
    started = time.monotonic()
    status, _, err = cli(capsys, "ladder", "scheme_comparison", "--variant", "convert", "--png", tmp_path / "x.txt")
    assert_one_line_error(status, err, f"--png {tmp_path / 'x.txt'}: expected a file name ending in .png, .svg, .pdf")
    out = tmp_path / "missing" / "folder" / "ladder.jpg"
    status, stdout, err = cli(capsys, "ladder", "scheme_comparison", "--variant", "convert", "--png", out)
    assert (status, err) == (0, "") and out.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, folders made
    assert time.monotonic() - started < 60


def test_bench_sweep_help_names_the_command_it_was_called_by(capsys):
    status, out, _ = cli(capsys, "bench", "sweep", "--help")
    assert status == 0 and out.startswith("usage: mpsim bench sweep") and "benchmarks/sweep.py" not in out


def test_negative_seed_is_reported_as_the_option_typed(capsys, tmp_path):
    assert_one_line_error(*cli(capsys, "run", "--seed", "-5")[::2], "--seed -5: expected an integer >= 0")
    assert_one_line_error(*cli(capsys, "sweep", "default", "--seed", "-5", "--out", tmp_path)[::2], "--seed -5")
    assert "--set seed" not in cli(capsys, "ladder", "default", "--seed", "-5")[2]


def test_a_sweep_piped_into_head_exits_as_sigpipe_not_as_failed_points(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "mpsim", "sweep", "scheme_comparison", "--variant", "convert", "--grid",
         "paths.access.delay_s=0.01,0.02", "--workers", "1", "--out", str(tmp_path / "s")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()  # `| head -1`: one line, then the reader is gone
    process.stdout.close()
    assert process.wait(timeout=120) == 141
    err = process.stderr.read().decode()
    assert "Traceback" not in err and (tmp_path / "s" / "connections.parquet").exists()  # the sweep finished


def test_a_long_run_shows_progress_on_a_terminal_only(capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["run", "scheme_comparison", "--set", "runs=2"]) == 0
    text = terminal.getvalue()
    variants = len(sc.load("scheme_comparison").variants)
    assert text.startswith(f"\rrun: 0/{2 * variants} simulations") and text.rstrip().endswith("done")
    assert f"run: {2 * variants}/{2 * variants} simulations" in text and "failed" not in text
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["run", "scheme_comparison", "--set", "runs=2"]) == 0
    assert capsys.readouterr().err == ""  # not a terminal: nothing on stderr
