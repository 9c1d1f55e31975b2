"""The statistics of mpsim.experiment.analysis against hand-computed values: Wilson intervals for
shares, t intervals clipped to what a metric can be, the units the text and the plots use, and
the loading of run directories and of several directories side by side."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mpsim.cli import main  # noqa: E402
from mpsim.experiment import analysis, plots  # noqa: E402

Z = 1.959963984540054  # the 97.5% point of the standard normal


def test_wilson_interval_matches_the_hand_computed_values():
    # 1 of 3: p = 1/3, z^2 = 3.8415; centre = (1/3 + z^2/6) / (1 + z^2/3) = 0.42689,
    # half = z sqrt(p(1-p)/3 + z^2/36) / (1 + z^2/3) = 0.36542
    low, high = analysis.wilson_interval(1, 3)
    assert low == pytest.approx(0.06149, abs=1e-4) and high == pytest.approx(0.79230, abs=1e-4)
    # 0 of 10: the interval starts at 0 exactly and ends at 2 z^2/20 / (1 + z^2/10) = 0.27753
    low, high = analysis.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx((Z * Z / 10) / (1 + Z * Z / 10), abs=1e-12)
    assert high == pytest.approx(0.27753, abs=1e-4)
    # 10 of 10 mirrors it; no trials, no interval
    assert analysis.wilson_interval(10, 10) == pytest.approx((1 - 0.27753, 1.0), abs=1e-4)
    assert all(math.isnan(v) for v in analysis.wilson_interval(0, 0))


def test_the_t_interval_is_clipped_to_the_valid_range():
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) x s / sqrt(n), s = 1
    ci = analysis.confidence_interval([1.0, 2.0, 3.0], bounds=(0.0, math.inf))
    assert ci["ci_low"] == 0.0 and ci["ci_high"] == pytest.approx(2 + half)  # 2 - 2.484 < 0: clipped
    assert analysis.confidence_interval([1.0, 2.0, 3.0])["ci_low"] == pytest.approx(2 - half)  # unbounded: not
    assert analysis.valid_range("setup_time_s") == (0.0, math.inf)
    assert analysis.valid_range("connections.syns_sent") == (0.0, math.inf)
    assert analysis.valid_range("fallback_rate") == (0.0, 1.0)
    assert analysis.valid_range("score") == (-math.inf, math.inf)


def three_seeds() -> dict[str, pd.DataFrame]:
    """One request per seed: seed 0 fell back, seeds 1 and 2 converted; setup times 1, 2, 300 ms."""
    conns = pd.DataFrame({"point_id": ["a", "b", "c"], "variant": ["v"] * 3, "seed_index": [0, 1, 2],
                          "seed": [7, 8, 9], "outcome": ["fallback_tcp", "converted", "converted"],
                          "setup_time_s": [0.001, 0.002, 0.300], "first_byte_time_s": [0.002, 0.004, 0.6],
                          "multipath": [False, True, True]})
    transfers = pd.DataFrame(columns=["point_id", "variant", "seed_index", "seed", "goodput_bps"])
    return {"connections": conns, "transfers": transfers}


def test_a_share_over_three_seeds_gets_a_wilson_interval_within_0_and_1():
    """The issue's case: 3 seeds printed `fallback % 33.3 +- 143.4`; now the interval of 1 in 3."""
    summary = analysis.summarize(three_seeds(), []).set_index("metric")
    row = summary.loc["fallback_rate"]
    assert row["mean"] == pytest.approx(1 / 3) and row["records"] == 3 and row["interval"] == "wilson"
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(analysis.wilson_interval(1, 3))
    setup = summary.loc["setup_time_s"]
    assert setup["interval"] == "t clipped" and setup["ci_low"] == 0.0  # the t interval reaches below 0
    boolean = analysis.summarize(three_seeds(), [], ["multipath"]).iloc[0]  # a boolean column is a share too
    assert boolean["interval"] == "wilson" and boolean["ci_high"] == pytest.approx(1 - 0.06149, abs=1e-4)
    text = analysis.format_summary(analysis.summarize(three_seeds(), []), [])
    assert "fallback rate (%)" in text and "33.3 [6.1, 79.2]" in text and "setup time (ms)" in text
    assert "±" not in text and "[0, " in text  # setup: 101 [0, 5xx] ms, never a negative time


def test_a_share_from_seeds_of_unequal_size_keeps_its_mean_inside_its_interval():
    """Seed 0: 1 fallback in 4 requests, seed 1: 1 in 2; the share reported is the mean of the
    seeds' shares, 0.375, and its interval the Wilson interval of 0.375 over all 6 requests."""
    conns = pd.DataFrame({"point_id": ["a"] * 4 + ["b"] * 2, "variant": ["v"] * 6, "seed_index": [0] * 4 + [1] * 2,
                          "seed": [7] * 4 + [8] * 2, "setup_time_s": [0.1] * 6,
                          "outcome": ["fallback_tcp", "converted", "converted", "converted", "fallback_tcp",
                                      "converted"]})
    tables = {"connections": conns, "transfers": three_seeds()["transfers"]}
    row = analysis.summarize(tables, [], ["fallback_rate"]).iloc[0]
    # p = 0.375, n = 6, z^2 = 3.8415: centre (p + z^2/12) / (1 + z^2/6) = 0.69762 / 1.64025 = 0.42379,
    # half z sqrt(p(1-p)/6 + z^2/144) / (1 + z^2/6) = 1.95996 x 0.25641 / 1.64025 = 0.30637
    assert row["mean"] == pytest.approx(0.375) and row["records"] == 6
    assert row["ci_low"] == pytest.approx(0.11742, abs=1e-4) and row["ci_high"] == pytest.approx(0.73017, abs=1e-4)


def test_display_units_and_labels():
    assert analysis.display_unit("setup_time_s") == (1e3, "ms")
    assert analysis.display_unit("transfers.goodput_bps") == (1e-6, "Mbit/s")
    assert analysis.display_unit("failure_rate") == (100.0, "%")
    assert analysis.display_unit("syns_sent") == (1.0, "")
    assert analysis.display_label("first_byte_time_s") == "first byte time (ms)"
    assert analysis.display_label("goodput_bps") == "goodput (Mbit/s)"
    assert analysis.display_label("connections.syns_sent") == "connections.syns sent"


def test_a_cdf_with_one_outlier_ends_at_the_99th_percentile_and_says_so():
    values = [0.010 + 0.0001 * i for i in range(199)] + [30.0]  # 200 setup times, one 30 s outlier
    samples = pd.DataFrame({"point_id": "p", "k": 1, "variant": "v", "seed_index": 0, "seed": 1,
                            "metric": "setup_time_s", "value": values})
    figure, (clipped, logged) = plt.subplots(1, 2)
    try:
        plots.cdf(samples, x="k", y="setup_time_s", ax=clipped)
        p99 = np.percentile(np.array(values) * 1e3, 99)
        assert clipped.get_xlim()[1] == pytest.approx(p99 * 1.05) and p99 < 100  # ms, not squashed to 30,000
        assert clipped.get_xlabel() == "setup time (ms)"
        (note,) = clipped.texts
        assert "99th percentile" in note.get_text() and "2 values beyond" in note.get_text()
        plots.cdf(samples, x="k", y="setup_time_s", ax=logged, log=True)
        assert logged.get_xscale() == "log" and not logged.texts
    finally:
        plt.close(figure)


# --- run directories, several directories ------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, delay in (("near", "0.005"), ("far", "0.05")):
        assert main(["run", "scheme_comparison", "--set", "runs=3", "--set", f"paths.access.delay_s={delay}",
                     "--out", str(root / name)]) == 0
    return root / "near", root / "far"


def test_a_run_directory_loads_with_its_run_indices_as_replicates(two_runs):
    tables, keys = analysis.load_tables(two_runs[0])
    conns = tables["connections"]
    assert keys == [] and list(conns.columns[:3]) == ["point_id", "seed_index", "seed"]
    assert sorted(set(conns["seed_index"])) == [0, 1, 2]
    summary = analysis.summarize(tables, keys, ["setup_time_s"])
    assert (summary["seeds"] == 3).all() and set(summary["variant"]) == set(conns["variant"])


def test_several_directories_are_told_apart_by_a_source_column(two_runs):
    tables, keys = analysis.load_many(list(two_runs))
    assert keys == ["source"] and set(tables["connections"]["source"]) == {"near", "far"}
    summary = analysis.summarize(tables, keys, ["setup_time_s"]).set_index(["source", "variant"])
    assert summary.loc[("far", "plain"), "mean"] > summary.loc[("near", "plain"), "mean"] + 0.05  # 2 x 45 ms more


def test_mpsim_plot_draws_runs_side_by_side_as_pdf_with_the_filters_in_the_title(two_runs, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "cmp.pdf"  # missing folders are made
    status = main(["plot", *map(str, two_runs), "--x", "variant", "--hue", "source", "--y", "setup_time_s",
                   "--kind", "bar", "--where", "variant=plain", "--log", "-o", str(out)])
    stdout, err = capsys.readouterr()
    assert (status, err) == (0, "") and out.read_bytes().startswith(b"%PDF")


def test_plot_title_units_and_log_axis(two_runs, tmp_path, monkeypatch):
    seen = {}
    real = plots.save_figure

    def keep(figure, path, option, **kw):
        ax = figure.axes[0]
        seen.update(title=ax.get_title(), ylabel=ax.get_ylabel(), yscale=ax.get_yscale())
        return real(figure, path, option, **kw)

    monkeypatch.setattr(plots, "save_figure", keep)
    assert main(["plot", str(two_runs[1]), "--x", "variant", "--y", "first_byte_time_s", "--where",
                 "variant=convert", "--log", "-o", str(tmp_path / "p.svg")]) == 0
    assert seen["ylabel"] == "first byte time (ms), mean, 95% CI" and seen["yscale"] == "log"
    assert "where variant=convert" in seen["title"] and "scheme_comparison" in seen["title"]
