"""The Python API (docs/api.md): exported from the package top level, loaded on first use, and the
same numbers as the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import mpsim  # noqa: E402
from mpsim.cli import main  # noqa: E402
from mpsim.errors import MpsimError  # noqa: E402
from mpsim.experiment.scenario import ScenarioError  # noqa: E402


def test_the_api_is_exported_from_the_top_level_and_loaded_on_first_use():
    code = ("import sys, mpsim, mpsim.wire; assert 'pandas' not in sys.modules and 'mpsim.api' not in sys.modules; "
            "mpsim.run; assert 'mpsim.api' in sys.modules; print(sorted(mpsim.API))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("load", "run", "sweep", "open_results", "summarize", "samples", "plot"):
        assert name in result.stdout and callable(getattr(mpsim, name))
    with pytest.raises(AttributeError):
        mpsim.no_such_thing  # noqa: B018


@pytest.mark.parametrize("value, text", [
    (True, "true"), (3, "3"), (0.25, "0.25"), ("convert", '"convert"'), (["a", 1], '["a", 1]'),
    ({"model": "bernoulli", "loss_prob": 0.01}, '{"model" = "bernoulli", "loss_prob" = 0.01}'),
])
def test_python_values_are_written_as_the_toml_set_reads(value, text):
    assert mpsim.toml_value(value) == text


def test_load_applies_overrides_from_a_dict_and_names_mistakes():
    loaded = mpsim.load("default", set={"runs": 2, "paths.lte.loss": {"model": "bernoulli", "loss_prob": 0.01},
                                        "paths.dsl.middleboxes": ["strip-mptcp"]}, seed=7)
    assert loaded.base.runs == 2 and loaded.base.seed == 7
    assert loaded.base.paths["lte"].loss["loss_prob"] == 0.01
    with pytest.raises(ScenarioError, match="client.schem: unknown key"):
        mpsim.load("default", set={"client.schem": "convert"})
    with pytest.raises(mpsim.ApiError, match="finite"):
        mpsim.load("default", set={"workload.rate_per_s": float("inf")})


def test_run_gives_the_records_mpsim_run_json_prints(capsys):
    result = mpsim.run("scheme_comparison", set={"paths.access.delay_s": 0.02}, seed=5, variants=["convert"])
    assert main(["run", "scheme_comparison", "--set", "paths.access.delay_s=0.02", "--seed", "5", "--variant",
                 "convert", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(result.connections) == len(printed["connections"])
    assert list(result.connections["setup_time_s"]) == [row["setup_time_s"] for row in printed["connections"]]
    summary = mpsim.summarize(result, ["setup_time_s", "fallback_rate"]).set_index("metric")
    assert summary.loc["fallback_rate", "interval"] == "wilson"


def test_sweep_summarize_and_plot_match_the_command_line(tmp_path, capsys):
    grid = {"paths.access.delay_s": [0.01, 0.02]}
    result = mpsim.sweep("scheme_comparison", grid=grid, seeds=2, variants=["convert", "mptcp"], workers=2)
    assert result.keys == ["paths.access.delay_s"] and len(result.points) == 4 and result.out is None
    out = tmp_path / "cli"
    assert main(["sweep", "scheme_comparison", "--grid", "paths.access.delay_s=0.01,0.02", "--seeds", "2",
                 "--variant", "convert", "--variant", "mptcp", "--workers", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    from_cli = pd.read_parquet(out / "summary.parquet")
    pd.testing.assert_frame_equal(mpsim.summarize(result), from_cli, check_dtype=False)
    pd.testing.assert_frame_equal(mpsim.summarize(mpsim.open_results(out)), from_cli, check_dtype=False)
    mptcp = mpsim.summarize(result, ["fallback_rate"], where=["variant=mptcp"])
    assert (mptcp["mean"] == 1.0).all() and (mptcp["ci_high"] == 1.0).all()
    figure, ax = plt.subplots()
    try:
        assert mpsim.plot(result, x="paths.access.delay_s", y="setup_time_s", hue="variant", ax=ax) is ax
        assert ax.get_ylabel().startswith("setup time (ms)")
    finally:
        plt.close(figure)
    with pytest.raises(mpsim.ApiError, match="kind='pie'"):
        mpsim.plot(result, x="variant", y="setup_time_s", kind="pie")


def test_sweep_on_kernel_is_planned_as_the_command_line_plans_it():
    # The kernel world's refusals come before anything runs, root or not: an unknown world, and
    # an unbuildable grid value named by its point (as `mpsim sweep --on kernel` names it).
    with pytest.raises(mpsim.ApiError, match="on='cloud'"):
        mpsim.sweep("default", grid={"client.scheme": ["convert"]}, on="cloud")
    with pytest.raises(MpsimError, match="strip-syn-payload"):
        mpsim.sweep("models/kernel/ci_two_path.toml",
                    grid={"paths.a.middleboxes": [["strip-syn-payload"]]}, on="kernel")
