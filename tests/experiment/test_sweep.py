"""``mpsim sweep``: grids expand as documented, every point has a seed of its own and replays alone,
a killed sweep resumes without losing or recomputing a point, failures are recorded, and the
local pool and a Dask cluster give the same tables."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsim.cli import main
from mpsim.experiment import results, scenario as sc, sweep

REPO = Path(__file__).resolve().parents[2]
#: A quick scenario with randomness (Poisson arrivals, the middlebox mix), so seeds matter.
QUICK = ("--set", "runs=1", "--set", "duration_s=10")
SMALL_GRID = ("--grid", "paths.lte.delay_s=0.01,0.03", "--grid", "client.scheme=convert,plain")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("mpsim: error: ")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, (status, err)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def records(frame: pd.DataFrame, drop: tuple[str, ...] = ()) -> list[dict]:
    """Rows as plain values (NaN as None), for comparing tables that took different routes."""
    out = []
    for row in frame.drop(columns=list(drop)).to_dict("records"):
        out.append({k: None if v is None or (isinstance(v, float) and math.isnan(v)) else
                    (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> Path:
    """default x {lte delay 10, 30 ms} x {convert, plain} x 2 seeds = 8 points, on the local pool."""
    out = tmp_path_factory.mktemp("sweep") / "small"
    assert main(["sweep", "default", *QUICK, *SMALL_GRID, "--seeds", "2", "--workers", "2", "--csv",
                 "--out", str(out)]) == 0
    return out


# --- grid expansion ----------------------------------------------------------------------------------


def test_values_split_on_top_level_commas_only():
    assert sweep.split_values('a, b,[c, d],{x = 1, y = 2},"e,f", \'g,h\'') == \
        ["a", "b", "[c, d]", "{x = 1, y = 2}", '"e,f"', "'g,h'"]


@pytest.mark.parametrize("text, values", [
    ("1:10:3", ["1", "4", "7", "10"]),  # STOP lands exactly on a step: included
    ("0:10:3", ["0", "3", "6", "9"]),  # it does not: excluded
    ("0:1:0.25", ["0.0", "0.25", "0.5", "0.75", "1.0"]),
    ("0.1:0.3:0.1", ["0.1", "0.2", "0.3"]),  # decimal arithmetic: no 0.30000000000000004, 0.3 is not lost
    ("0:1:0.3", ["0.0", "0.3", "0.6", "0.9"]),
    ("10:0:-5", ["10", "5", "0"]),
    ("1e-3:3e-3:1e-3", ["0.001", "0.002", "0.003"]),
    ("5:5:1", ["5"]),
])
def test_ranges_include_start_and_stop_only_when_it_lands_exactly(text, values):
    assert sweep.expand_range(text) == values


@pytest.mark.parametrize("text, message", [("0:1:0", "STEP must not be 0"), ("0:1:-1", "no values")])
def test_bad_ranges_are_refused(text, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.expand_range(text)


def test_what_is_not_a_range_is_a_value():
    assert sweep.expand_range("convert") is None and sweep.expand_range("1:2") is None
    assert sweep.expand_range("12:30:00x") is None


@given(start=st.integers(-10**6, 10**6), step=st.integers(1, 10**4), count=st.integers(0, 200),
       scale=st.sampled_from(["1", "0.1", "0.001", "0.25"]), descending=st.booleans())
def test_float_ranges_have_no_accumulation_error(start, step, count, scale, descending):
    unit = Decimal(scale)
    start_d, step_d = start * unit, step * unit * (-1 if descending else 1)
    stop_d = start_d + count * step_d
    values = sweep.expand_range(f"{start_d}:{stop_d}:{step_d}")
    assert len(values) == count + 1
    assert [float(v) for v in values] == [float(start_d + i * step_d) for i in range(count + 1)]


def test_grid_values_are_read_like_set_values():
    axis = sweep.parse_grid("paths.dsl.delay_s=0.01,2:4:1")
    assert axis.texts == ("0.01", "2", "3", "4") and axis.values == (0.01, 2.0, 3.0, 4.0)  # one column type
    assert sweep.parse_grid("runs=1:3:1").values == (1, 2, 3)
    assert sweep.parse_grid("client.scheme=convert, plain").values == ("convert", "plain")
    assert sweep.parse_grid("client.tfo_to_server=true,false").values == (True, False)
    lists = sweep.parse_grid('paths.dsl.middleboxes=[],["strip-mptcp", "drop-rst"],strip-tfo')
    assert lists.values == ("[]", '["strip-mptcp", "drop-rst"]', "strip-tfo")  # lists: their text


@pytest.mark.parametrize("text, message", [
    ("runs", "expected KEY=V1,V2"), ("runs=1,,2", "an empty value"), ("runs=1,2,1", "the value 1 is given twice"),
    ("paths.dsl.delay_s=0.1,0.05:0.15:0.05", "the value 0.1 is given twice"),
])
def test_bad_grids_are_refused(text, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.parse_grid(text)


def test_the_plan_is_the_product_times_the_seeds():
    plan = sweep.plan_sweep("default", ["paths.lte.delay_s=0.01:0.04:0.01", "client.scheme=convert,plain,mptcp"],
                            seeds=3, overrides=["runs=1"])
    assert plan.grid_points == 12 and len(plan.points) == 36
    assert len({p.point_id for p in plan.points}) == 36
    first = plan.points[0]
    assert first.point_id == "g000-s000" and first.overrides == ("paths.lte.delay_s=0.01", "client.scheme=convert")
    assert plan.points[3].overrides == ("paths.lte.delay_s=0.01", "client.scheme=plain")  # the last key varies fastest
    assert plan.points[-1].overrides == ("paths.lte.delay_s=0.04", "client.scheme=mptcp")
    assert [p.seed_index for p in plan.points[:6]] == [0, 1, 2, 0, 1, 2]
    task = plan.task(plan.points[5])
    assert task.overrides == ("runs=1", *plan.points[5].overrides, f"seed={plan.points[5].seed}")


def test_every_point_has_its_own_reproducible_seed():
    grid = ["paths.lte.delay_s=0.01,0.02", "client.scheme=convert,plain"]
    plan = sweep.plan_sweep("default", grid, seeds=5)
    seeds = [p.seed for p in plan.points]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [p.seed for p in sweep.plan_sweep("default", grid, seeds=5).points]
    assert plan.root_seed == sc.load("default").base.seed  # the scenario's seed unless --seed says otherwise
    assert seeds != [p.seed for p in sweep.plan_sweep("default", grid, seeds=5, root_seed=2).points]
    # More seeds extend the sweep: the first points keep their ids and seeds.
    fewer = sweep.plan_sweep("default", grid, seeds=2).points
    assert {(p.point_id, p.seed) for p in fewer} <= {(p.point_id, p.seed) for p in plan.points}
    assert plan.points[7].seed == sweep.point_seed(plan.root_seed, 1, 2)


@pytest.mark.parametrize("grid, overrides, message", [
    (["client.schem=convert"], [], "--grid client.schem=convert: client.schem: unknown key (did you mean "
                                   "client.scheme?)"),
    (["client.scheme=convert,carrier-pigeon"], [],
     "--grid client.scheme=carrier-pigeon: client.scheme: expected one of"),
    (["client.proxy_syn_retries=1,-1"], [],
     "--grid client.proxy_syn_retries=-1: client.proxy_syn_retries: expected an integer >= 0"),
    (["seed=1,2"], [], "--seeds"),
    (["runs=1,2", "runs=3"], [], "given twice"),
    (["runs=1,2"], ["runs=1"], "also given by --set"),
    (["duration_s=10,20", "transfers.0.start_s=5,15"], [],  # each value is fine alone; one combination is not
     "--grid point duration_s=10 transfers.0.start_s=15: transfers.0.start_s: expected a time in [0, duration_s = 10)"),
])
def test_grid_errors_name_the_key_before_anything_runs(grid, overrides, message):
    with pytest.raises((sweep.SweepError, sc.ScenarioError)) as info:
        sweep.plan_sweep("default", grid, overrides=overrides)
    assert message in str(info.value)


def test_an_unknown_grid_key_is_a_one_line_error_and_nothing_is_written(capsys, tmp_path):
    status, out, err = cli(capsys, "sweep", "default", "--grid", "paths.dsl.delai_s=0.01,0.02", "--out", tmp_path / "x")
    assert_one_line_error(status, err, "--grid paths.dsl.delai_s=0.01", "paths.dsl.delai_s: unknown key (did you mean")
    assert not (tmp_path / "x").exists()


# --- running, replaying, tables ----------------------------------------------------------------------


def test_a_sweep_writes_tidy_tables_with_the_grid_beside_every_record(small_sweep):
    plan = sweep.plan_sweep("default", [SMALL_GRID[1], SMALL_GRID[3]], seeds=2, overrides=QUICK[1::2])
    conns = pd.read_parquet(small_sweep / "connections.parquet")
    transfers = pd.read_parquet(small_sweep / "transfers.parquet")
    points = pd.read_parquet(small_sweep / "points.parquet")
    front = ["point_id", "paths.lte.delay_s", "client.scheme", "seed_index", "seed"]
    assert list(conns.columns) == [*front, *results.CONNECTION_COLUMNS]
    assert list(transfers.columns) == [*front, *results.TRANSFER_COLUMNS]
    assert list(points["point_id"]) == [p.point_id for p in plan.points] and set(points["status"]) == {"ok"}
    assert set(conns["point_id"]) == set(points["point_id"]) and len(transfers) == 8  # one transfer per point
    assert (conns["scheme"] == conns["client.scheme"]).all()  # the grid value reached the run
    assert conns["paths.lte.delay_s"].dtype == float and conns["seed"].dtype == "int64"
    for name in ("connections", "transfers", "points", "summary"):
        assert (small_sweep / f"{name}.csv").stat().st_size > 0  # --csv
    manifest = json.loads((small_sweep / "manifest.json").read_text())
    assert manifest["scenario"]["text"] == sc.load("default").text and manifest["seeds"]["per_grid_point"] == 2
    assert manifest["grid"] == [{"key": "paths.lte.delay_s", "values": ["0.01", "0.03"]},
                                {"key": "client.scheme", "values": ["convert", "plain"]}]
    assert manifest["seeds"]["points"] == {p.point_id: p.seed for p in plan.points}
    assert {"hostname", "cpu_count", "platform", "python"} <= set(manifest["machine"])
    assert manifest["started"] <= manifest["ended"] and manifest["sessions"][0]["ran"] == 8


def test_one_point_replayed_alone_with_mpsim_run_gives_the_same_records(small_sweep, capsys):
    conns = pd.read_parquet(small_sweep / "connections.parquet")
    transfers = pd.read_parquet(small_sweep / "transfers.parquet")
    point = conns[conns["point_id"] == "g002-s001"]  # lte delay 30 ms, convert, seed index 1
    seed = int(point["seed"].iloc[0])
    status, out, _ = cli(capsys, "run", "default", *QUICK, "--set", "paths.lte.delay_s=0.03",
                         "--set", "client.scheme=convert", "--seed", seed, "--json")
    assert status == 0
    replay = json.loads(out)
    drop = ("point_id", "paths.lte.delay_s", "client.scheme", "seed_index", "seed")
    assert records(point, drop) == replay["connections"]
    assert records(transfers[transfers["point_id"] == "g002-s001"], drop) == replay["transfers"]
    # and the seeds matter: the other seed of the same grid point met other arrivals
    assert records(conns[conns["point_id"] == "g002-s000"], drop) != replay["connections"]


def test_the_summary_gives_mean_median_and_a_t_interval_over_seeds(small_sweep):
    summary = pd.read_parquet(small_sweep / "summary.parquet")
    conns = pd.read_parquet(small_sweep / "connections.parquet")
    assert set(summary["metric"]) == set(sweep.SUMMARY_METRICS) and len(summary) == 4 * 4
    row = summary[(summary["metric"] == "setup_time_s") & (summary["client.scheme"] == "plain") &
                  (summary["paths.lte.delay_s"] == 0.01)].iloc[0]
    part = conns[(conns["client.scheme"] == "plain") & (conns["paths.lte.delay_s"] == 0.01)]
    per_seed = part.groupby("seed_index")["setup_time_s"].mean()
    assert row["seeds"] == 2 and row["records"] == len(part)
    assert row["mean"] == pytest.approx(per_seed.mean()) and row["median"] == pytest.approx(per_seed.median())


def test_confidence_interval_is_the_student_t_interval():
    ci = sweep.confidence_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1 / math.sqrt(3)  # t(0.975, 2 dof) x s / sqrt(n), s = 1
    assert (ci["seeds"], ci["mean"], ci["median"]) == (3, 2.0, 2.0)
    assert ci["ci_low"] == pytest.approx(2 - half) and ci["ci_high"] == pytest.approx(2 + half)
    one = sweep.confidence_interval([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])


def test_rates_are_shares_of_requests_per_point():
    conns = pd.DataFrame({"point_id": ["a"] * 4 + ["b"] * 2, "k": [1] * 6, "variant": ["v"] * 6,
                          "seed_index": [0] * 4 + [1] * 2, "seed": [7] * 4 + [8] * 2,
                          "outcome": ["fallback_tcp", "converted", "converted", "failed", "fallback_tcp", "failed"],
                          "setup_time_s": [0.1, 0.2, 0.3, None, 0.5, None]})
    conns["first_byte_time_s"] = conns["setup_time_s"] * 2
    tables = {"connections": conns, "transfers": pd.DataFrame(columns=["point_id", "k", "variant", "seed_index",
                                                                      "seed", "goodput_bps"])}
    summary = sweep.summarize(tables, ["k"]).set_index("metric")
    assert summary.loc["fallback_rate", "mean"] == pytest.approx((0.25 + 0.5) / 2)
    assert summary.loc["setup_time_s", "mean"] == pytest.approx((0.2 + 0.5) / 2)  # per seed, then over seeds
    assert summary.loc["goodput_bps", "seeds"] == 0 and math.isnan(summary.loc["goodput_bps", "mean"])
    assert sweep.summarize(tables, ["k"], ["failure_rate"])["mean"].iloc[0] == pytest.approx((0.25 + 0.5) / 2)


def test_the_dask_path_gives_the_same_tables_as_the_local_pool(small_sweep, tmp_path):
    out = tmp_path / "dask"
    assert main(["sweep", "default", *QUICK, *SMALL_GRID, "--seeds", "2", "--dask", "local", "--workers", "2",
                 "--out", str(out)]) == 0
    for name in ("connections", "transfers", "summary"):
        pd.testing.assert_frame_equal(pd.read_parquet(small_sweep / f"{name}.parquet"),
                                      pd.read_parquet(out / f"{name}.parquet"))
    session = json.loads((out / "manifest.json").read_text())["sessions"][-1]
    assert session["executor"] == "dask local" and session["workers"] == 2


# --- resuming -----------------------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _children(pid: int) -> set[int]:
    return {child for child in _descendants(pid) if _parent(child) == pid}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_a_killed_sweep_resumes_without_losing_or_recomputing_a_point(tmp_path):
    out = tmp_path / "resume"
    # 16 points of about 0.3 s each on 2 workers: a few seconds, time to kill it in the middle
    command = [sys.executable, "-m", "mpsim", "sweep", "default", "--set", "runs=2", "--set", "duration_s=30",
               "--grid", "paths.lte.delay_s=0.01:0.08:0.01", "--seeds", "2", "--workers", "2", "--out", str(out)]
    points = out / "points"
    victim = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and victim.poll() is None and \
                len(list(points.glob("*.parquet")) if points.exists() else []) < 3:
            time.sleep(0.02)
        helpers = _descendants(victim.pid)  # the forkserver, the workers, the resource tracker
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in points.glob("*.parquet")}
    assert 3 <= len(before) < 16, f"the sweep was not caught in the middle: {len(before)} points done"
    assert not (out / "connections.parquet").exists()
    deadline = time.monotonic() + 15  # the workers notice the dead parent within a second or two
    while time.monotonic() < deadline and any(_alive(pid) for pid in helpers):
        time.sleep(0.1)
    assert helpers and not [pid for pid in helpers if _alive(pid)], "processes outlived the killed sweep"

    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert f"{16 - len(before)} points run now, {len(before)} already in" in finished.stdout
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in points.glob("*.parquet")}
    assert len(after) == 16 and {name: after[name] for name in before} == before  # untouched
    assert not list(points.glob(".*"))  # no temporary file left behind
    table = pd.read_parquet(out / "points.parquet")
    conns = pd.read_parquet(out / "connections.parquet")
    assert sorted(table["point_id"]) == sorted(name.removesuffix(".parquet") for name in after)
    assert table["point_id"].is_unique and (conns.groupby("point_id").size() == table.set_index("point_id")
                                            ["connections"]).all()
    sessions = json.loads((out / "manifest.json").read_text())["sessions"]
    assert [s["ran"] for s in sessions] == [16 - len(before)]  # the killed one wrote no manifest


def test_rerunning_a_finished_sweep_computes_nothing_and_more_seeds_add_only_the_new_points(tmp_path, capsys):
    out = tmp_path / "s"
    base = ["sweep", "scheme_comparison", "--variant", "convert", "--grid", "paths.access.delay_s=0.01,0.02",
            "--workers", "1", "--out", out]
    assert cli(capsys, *base)[0] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    status, stdout, _ = cli(capsys, *base)
    assert status == 0 and "0 points run now, 2 already in" in stdout
    status, stdout, _ = cli(capsys, *base, "--seeds", "3")
    assert status == 0 and "4 points run now, 2 already in" in stdout
    assert {name: (out / "points" / name).stat().st_mtime_ns for name in stamps} == stamps
    assert len(pd.read_parquet(out / "points.parquet")) == 6


@pytest.mark.parametrize("change, what", [
    (("--grid", "paths.access.delay_s=0.01,0.03"), "grid"),
    (("--grid", "paths.access.delay_s=0.01,0.02", "--set", "server.delay_s=0.01"), "overrides"),
    (("--grid", "paths.access.delay_s=0.01,0.02", "--seed", "9"), "root_seed"),
])
def test_a_different_sweep_in_the_same_directory_is_refused(tmp_path, capsys, change, what):
    out = tmp_path / "s"
    common = ["sweep", "scheme_comparison", "--variant", "convert", "--workers", "1", "--out", out]
    assert cli(capsys, *common, "--grid", "paths.access.delay_s=0.01,0.02")[0] == 0
    status, _, err = cli(capsys, *common, *change)
    assert_one_line_error(status, err, "holds a different sweep", what)


def test_a_changed_scenario_file_is_refused(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text(sc.models_dir().joinpath("scheme_comparison.toml").read_text())
    command = ["sweep", path, "--variant", "convert", "--grid", "paths.access.delay_s=0.01", "--workers", "1",
               "--out", tmp_path / "s"]
    assert cli(capsys, *command)[0] == 0
    path.write_text(path.read_text().replace("delay_s = 0.020", "delay_s = 0.025"))
    status, _, err = cli(capsys, *command)
    assert_one_line_error(status, err, "holds a different sweep", "scenario")


# --- failures, progress, warnings -------------------------------------------------------------------------


def failing_run_point(task: sweep.PointTask) -> sweep.PointOutcome:
    """The real point runner, but a simulator that breaks on an access delay of 20 ms (imported by
    name in the workers, as run_point is)."""
    if "paths.access.delay_s=0.02" in task.overrides:
        task = sweep.PointTask(task.point_id, "not = [valid toml", task.scenario_name, task.scenario_source,
                               task.overrides, task.variants)
    return sweep.run_point(task)


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep.orchestrate, "run_point", failing_run_point)
    out = tmp_path / "s"
    command = ["sweep", "scheme_comparison", "--variant", "convert", "--grid", "paths.access.delay_s=0.01:0.04:0.01",
               "--seeds", "2", "--workers", "2", "--out", out]
    status, stdout, err = cli(capsys, *command)
    assert status == 1 and "mpsim: 2 of 8 points failed" in err and "Traceback" not in err
    table = pd.read_parquet(out / "points.parquet")
    failed = table[table["status"] == "failed"]
    assert list(failed["paths.access.delay_s"]) == [0.02, 0.02]
    assert set(failed["error_type"]) == {"ScenarioError"} and failed["error_message"].str.contains("invalid TOML").all()
    assert (table[table["status"] == "ok"]["connections"] == 1).all()  # the others ran
    assert set(pd.read_parquet(out / "connections.parquet")["paths.access.delay_s"]) == {0.01, 0.03, 0.04}

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    status, stdout, err = cli(capsys, *command)  # failed points are finished points: not run again
    assert status == 1 and "0 points run now" in stdout and "2 of 8 points failed" in err
    monkeypatch.undo()  # the simulator is "fixed": --retry-failed runs the two again, and only them
    status, stdout, err = cli(capsys, *command, "--retry-failed")
    assert status == 0 and "2 points run now, 6 already in" in stdout
    changed = {p.name for p in (out / "points").iterdir() if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == set(failed["point_id"] + ".parquet")


def test_run_point_returns_the_error_it_meets():
    """The error as a worker records it: type, message and where (the real run_point, in process)."""
    plan = sweep.plan_sweep("scheme_comparison", ["paths.access.delay_s=0.01"], variants=["convert"])
    task = plan.task(plan.points[0])
    outcome = sweep.run_point(sweep.PointTask(task.point_id, task.scenario_text, task.scenario_name,
                                              task.scenario_source, (*task.overrides, "runs=0"), task.variants))
    assert outcome.error_type == "ScenarioError" and "runs" in outcome.error_message and outcome.connections is None
    assert "Traceback" in outcome.traceback and outcome.elapsed_s >= 0


def test_progress_rewrites_one_line_on_a_terminal_and_prints_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        bar = sweep.Progress(10, 2, stream, interval_s=0.0)
        bar.update(done=3, failed=1)
        bar.message("warning: a line of its own")
        bar.update(done=5, final=True)
    assert terminal.getvalue().startswith("\rsweep: 5/10 points, 1 failed") and "\n" not in terminal.getvalue()[:40]
    assert "warning: a line of its own\n" in terminal.getvalue() and terminal.getvalue().endswith("done\n")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[0].startswith("sweep: 5/10 points, 1 failed")
    assert "left" in lines[0] and "left" not in lines[-1] and lines[-1].endswith("done")


def test_big_and_slow_sweeps_are_announced(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep.orchestrate, "WARN_POINTS", 3)
    monkeypatch.setattr(sweep.orchestrate, "WARN_SECONDS", 0.0)
    monkeypatch.setattr(sweep.orchestrate, "ESTIMATE_AFTER_POINTS", 1)
    status, _, err = cli(capsys, "sweep", "scheme_comparison", "--variant", "convert", "--grid",
                         "paths.access.delay_s=0.01:0.05:0.01", "--workers", "1", "--out", tmp_path / "s")
    assert status == 0
    assert "warning: this sweep runs 5 points (5 grid points x 1 seeds, 0 already done)" in err
    assert "warning: at this pace the sweep needs about" in err


def test_workers_and_seeds_are_checked(tmp_path, capsys):
    for option, message in ((("--workers", "0"), "--workers 0"), (("--seeds", "0"), "--seeds 0"),
                            (("--dask", "tcp://192.0.2.1:8786", "--workers", "2"), "--workers sizes")):
        status, _, err = cli(capsys, "sweep", "scheme_comparison", "--grid", "runs=1", *option, "--out", tmp_path / "s")
        assert_one_line_error(status, err, message)
    assert not (tmp_path / "s").exists()


def test_a_sweep_directory_is_locked_while_a_sweep_works_in_it(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    plan = sweep.plan_sweep("scheme_comparison", ["runs=1"], variants=["convert"])
    (tmp_path / "points").mkdir()
    with open(tmp_path / ".lock", "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(sweep.SweepError, match="another sweep is running"):
            sweep.run_sweep(plan, tmp_path, workers=1)
    assert sweep.run_sweep(plan, tmp_path, workers=1).ran == 1  # free again


def test_interrupting_a_sweep_stops_its_workers_and_keeps_what_finished(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt in the parent) kills the pool; finished points stay, tables wait."""
    plan = sweep.plan_sweep("default", ["paths.lte.delay_s=0.01:0.07:0.01"], overrides=["runs=2", "duration_s=30"])
    real_write = sweep.write_point
    writes = []

    def interrupt_at_the_third(path, point, outcome):
        if len(writes) == 2:  # Ctrl-C as the third point comes back
            raise KeyboardInterrupt
        real_write(path, point, outcome)
        writes.append(path)

    monkeypatch.setattr(sweep.orchestrate, "write_point", interrupt_at_the_third)
    workers: set[int] = set()
    real_wait = sweep.orchestrate.cf.wait

    def wait_and_note_the_workers(*args, **kwargs):
        # the pool's processes: grandchildren (the forkserver, our child, forks them), not the helpers
        workers.update(_descendants(os.getpid()) - _children(os.getpid()))
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(sweep.orchestrate.cf, "wait", wait_and_note_the_workers)
    report = sweep.run_sweep(plan, tmp_path, workers=2)
    assert report.interrupted and report.ran == 2 and not report.tables
    assert sorted((tmp_path / "points").glob("*.parquet")) == sorted(writes)
    assert not (tmp_path / "connections.parquet").exists()
    assert json.loads((tmp_path / "manifest.json").read_text())["sessions"][-1]["status"] == "interrupted"
    assert len(workers) == 2 and not [pid for pid in workers if _alive(pid)]  # killed, not left to finish


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_sigterm_stops_a_sweep_like_ctrl_c(tmp_path):
    """kill PID: the workers stop, the finished points and the manifest stay, the status is 130."""
    out = tmp_path / "term"
    command = [sys.executable, "-m", "mpsim", "sweep", "default", "--set", "runs=2", "--set", "duration_s=30",
               "--grid", "paths.lte.delay_s=0.01:0.08:0.01", "--workers", "2", "--out", str(out)]
    victim = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and victim.poll() is None and \
                len(list((out / "points").glob("*.parquet")) if (out / "points").exists() else []) < 1:
            time.sleep(0.02)
        workers = {pid for pid in _descendants(victim.pid) if _parent(pid) != victim.pid}
        victim.send_signal(signal.SIGTERM)
        _, err = victim.communicate(timeout=30)
    finally:
        victim.kill()
        victim.wait()
    done = len(list((out / "points").glob("*.parquet")))
    assert victim.returncode == sweep.EXIT_INTERRUPTED and "interrupted:" in err and 1 <= done < 8, (done, err)
    assert json.loads((out / "manifest.json").read_text())["sessions"][-1]["status"] == "interrupted"
    assert workers and not [pid for pid in workers if _alive(pid)]  # killed on the way out, not orphaned


def test_the_sweep_benchmark_runs_every_configuration_and_compares_their_tables(tmp_path):
    from mpsim.bench import sweep as bench

    tiny = {"overrides": ["runs=1", "duration_s=10"], "grid": ["paths.lte.delay_s=0.01,0.02"], "seeds": 1}
    results = bench.run(rounds=1, workers=2, spec=tiny)
    assert [row["configuration"] for row in results["results"]] == [
        "local, 1 worker", "local, 2 workers", "dask LocalCluster, 2 workers"]
    assert results["identical_tables"] and results["sweep"]["points"] == 2
    assert all(s["points"] == 2 and s["wall_s"] > 0 for samples in results["samples"].values() for s in samples)
    assert results["results"][0]["speedup_median"] == 1.0 and len(results["attainable_speedup"]) == 1
    json_path, md_path = bench.write_results(results, tmp_path)
    assert json.loads(json_path.read_text())["target"]["speedup"] == pytest.approx(1.8)
    assert "| dask LocalCluster, 2 workers |" in md_path.read_text()


def unstorable_run_point(task: sweep.PointTask) -> sweep.PointOutcome:
    """A point whose records Parquet cannot hold (an arbitrary Python object in a column)."""
    outcome = sweep.run_point(task)
    if task.point_id.startswith("g001"):
        outcome.connections["detail"] = [object()] * len(outcome.connections)
    return outcome


def test_records_that_cannot_be_stored_fail_their_point_only(tmp_path):
    plan = sweep.plan_sweep("scheme_comparison", ["paths.access.delay_s=0.01,0.02"], variants=["convert"])
    report = sweep.run_sweep(plan, tmp_path, workers=1, point_runner=unstorable_run_point)
    points = pd.read_parquet(tmp_path / "points.parquet").set_index("point_id")
    assert report.failed == 1 and points.loc["g000-s000", "status"] == "ok"
    assert points.loc["g001-s000", "error_message"].startswith("its records could not be stored")


def test_a_damaged_point_file_is_named(tmp_path, capsys):
    command = ["sweep", "scheme_comparison", "--variant", "convert", "--grid", "paths.access.delay_s=0.01,0.02",
               "--workers", "1", "--out", tmp_path]
    assert cli(capsys, *command)[0] == 0
    (tmp_path / "points" / "g001-s000.parquet").write_bytes(b"not parquet")
    status, _, err = cli(capsys, *command)
    assert_one_line_error(status, err, "g001-s000.parquet: unreadable point file", "delete it")
