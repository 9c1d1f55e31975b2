"""Plots of sweep results: the functions draw what the table says (means, intervals, one series
per hue) on the ax they are given, and ``mpsim plot`` saves every kind as PNG or SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mpsim.cli import main  # noqa: E402
from mpsim.experiment import analysis, plots  # noqa: E402


@pytest.fixture
def ax():
    figure, axes = plt.subplots()
    yield axes
    plt.close(figure)


def summary_table() -> pd.DataFrame:
    """delay 10/20/40 ms x scheme a/b, metric m = delay x 10 (+1 for b), CI +-1; plus a metric n."""
    rows = []
    for delay in (0.04, 0.01, 0.02):  # out of order on purpose: numbers are drawn sorted
        for scheme in ("a", "b"):
            mean = delay * 10 + (scheme == "b")
            rows.append({"delay_s": delay, "scheme": scheme, "variant": "base", "metric": "m", "seeds": 3,
                         "records": 9, "mean": mean, "median": mean, "ci_low": mean - 1, "ci_high": mean + 1})
    rows.append({"delay_s": 0.01, "scheme": "a", "variant": "base", "metric": "n", "seeds": 1, "records": 1,
                 "mean": 5.0, "median": 5.0, "ci_low": np.nan, "ci_high": np.nan})
    return pd.DataFrame(rows)


def samples_table() -> pd.DataFrame:
    return pd.DataFrame({"point_id": ["p0"] * 3 + ["p1"] * 2, "delay_s": [0.01] * 3 + [0.02] * 2,
                         "variant": ["base"] * 5, "seed_index": [0] * 5, "seed": [1] * 5, "metric": ["m"] * 5,
                         "value": [3.0, 1.0, 2.0, 5.0, 4.0]})


def test_line_draws_the_means_with_the_intervals_one_line_per_hue(ax):
    assert plots.line(summary_table(), x="delay_s", y="m", hue="scheme", ax=ax) is ax
    assert len(ax.containers) == 2 and [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    line, caps, (bars,) = ax.containers[0]
    assert list(line.get_xdata()) == [0.01, 0.02, 0.04]
    assert list(line.get_ydata()) == pytest.approx([0.1, 0.2, 0.4])
    ends = np.array([segment[:, 1] for segment in bars.get_segments()])  # each bar: from ci_low to ci_high
    np.testing.assert_allclose(ends, [[-0.9, 1.1], [-0.8, 1.2], [-0.6, 1.4]])
    assert ax.get_xlabel() == "delay_s" and "m" in ax.get_ylabel()


def test_line_puts_names_on_a_category_axis_and_a_single_seed_gets_no_bar(ax):
    table = summary_table()
    plots.line(table[table["delay_s"] == 0.01], x="scheme", y="m", ax=ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    other = plt.subplots()[1]
    try:
        plots.line(table, x="delay_s", y="n", ax=other)  # one seed: the interval is NaN
        ((line, caps, (bars,)),) = other.containers
        assert list(line.get_ydata()) == [5.0] and np.isnan(bars.get_segments()[0]).all()
    finally:
        plt.close(other.figure)


def test_a_column_left_out_of_x_and_hue_splits_the_series_rather_than_being_averaged(ax):
    plots.line(summary_table(), x="delay_s", y="m", ax=ax)
    assert len(ax.containers) == 2
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["a", "b"]


def test_bar_groups_by_x_with_a_bar_per_hue_and_leaves_gaps(ax):
    table = summary_table()
    table = table[~((table["delay_s"] == 0.02) & (table["scheme"] == "b"))]  # a missing combination
    assert plots.bar(table, x="delay_s", y="m", hue="scheme", ax=ax) is ax
    heights = [[p.get_height() for p in container.patches] for container in ax.containers
               if hasattr(container, "patches")]
    assert heights[0] == pytest.approx([0.1, 0.2, 0.4])
    assert heights[1][0] == pytest.approx(1.1) and np.isnan(heights[1][1]) and heights[1][2] == pytest.approx(1.4)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01", "0.02", "0.04"]


def test_heatmap_puts_x_across_and_hue_up(ax):
    assert plots.heatmap(summary_table(), x="delay_s", y="m", hue="scheme", ax=ax) is ax
    (image,) = ax.images
    np.testing.assert_allclose(image.get_array(), [[0.1, 0.2, 0.4], [1.1, 1.2, 1.4]])
    assert len(ax.texts) == 6 and ax.get_ylabel() == "scheme"


def test_heatmap_refuses_a_table_with_more_than_one_value_per_cell(ax):
    table = pd.concat([summary_table(), summary_table().assign(variant="other")])
    with pytest.raises(plots.PlotError, match=r"also varies in variant \(base, other\)"):
        plots.heatmap(table, x="delay_s", y="m", hue="scheme", ax=ax)
    with pytest.raises(plots.PlotError, match="needs hue"):
        plots.heatmap(summary_table(), x="delay_s", y="m", ax=ax)


def test_cdf_draws_each_group_of_values_as_a_step_curve_to_one(ax):
    assert plots.cdf(samples_table(), x="delay_s", y="m", ax=ax) is ax
    first, second = ax.lines
    assert list(first.get_xdata()) == [1.0, 2.0, 3.0] and list(first.get_ydata()) == pytest.approx([1 / 3, 2 / 3, 1])
    assert list(second.get_xdata()) == [4.0, 5.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0.01 (n=3)", "0.02 (n=2)"]


@pytest.mark.parametrize("call, message", [
    (lambda ax: plots.line(summary_table(), x="nope", y="m", ax=ax), "x='nope': no such column; available: delay_s, "
                                                                      "scheme, variant"),
    (lambda ax: plots.bar(summary_table(), x="delay_s", y="zz", ax=ax), "no such metric; it has m, n"),
    (lambda ax: plots.line(summary_table(), x="delay_s", y="m", hue="delay_s", ax=ax), "is also x"),
    (lambda ax: plots.cdf(summary_table(), x="delay_s", y="m", ax=ax), "not a samples"),
])
def test_plot_functions_name_what_is_wrong(ax, call, message):
    with pytest.raises(plots.PlotError) as info:
        call(ax)
    assert message in str(info.value)


# --- mpsim plot ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """Every scheme of scheme_comparison x 2 access delays x 2 server kinds, 2 seeds: 8 quick points."""
    out = tmp_path_factory.mktemp("plots") / "sweep"
    assert main(["sweep", "scheme_comparison", "--grid", "paths.access.delay_s=0.01,0.02", "--grid",
                 "server.kind=legacy_drop,legacy_queue", "--seeds", "2", "--workers", "2", "--out", str(out)]) == 0
    return out


def cli(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("kind, extra", [
    ("line", ("--hue", "variant")), ("bar", ("--hue", "variant")), ("cdf", ("--where", "variant=convert")),
    ("heatmap", ("--hue", "server.kind", "--where", "variant=socks5")),
])
@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_every_kind_is_saved_as_png_or_svg(sweep_dir, tmp_path, capsys, kind, extra, suffix):
    out = tmp_path / f"plot{suffix}"
    status, stdout, err = cli(capsys, "plot", sweep_dir, "--x", "paths.access.delay_s", "--y", "first_byte_time_s",
                              "--kind", kind, *extra, "-o", out)
    assert (status, err) == (0, "") and f"Plot saved to {out}" in stdout
    data = out.read_bytes()
    assert data.startswith({".png": b"\x89PNG", ".pdf": b"%PDF"}[suffix]) if suffix != ".svg" else b"<svg" in data[:2000]
    assert len(data) > 5000


def test_the_default_file_is_in_the_sweep_directory(sweep_dir, capsys):
    status, _, err = cli(capsys, "plot", sweep_dir, "--x", "server.kind", "--y", "connections.syns_sent",
                         "--hue", "variant", "--kind", "bar")
    assert (status, err) == (0, "")
    assert (sweep_dir / "plot-connections.syns_sent-vs-server.kind.png").stat().st_size > 5000


@pytest.mark.parametrize("argv, fragments", [
    (("--x", "paths.access.delai_s", "--y", "setup_time_s"),
     ("--x paths.access.delai_s: not a column", "available: paths.access.delay_s, server.kind, variant")),
    (("--x", "server.kind", "--hue", "scheme", "--y", "setup_time_s"), ("--hue scheme: not a column",)),
    (("--x", "server.kind", "--y", "setup_tim_s"),
     ("--y setup_tim_s: unknown metric", "available: setup_time_s, first_byte_time_s", "syns_sent")),
    (("--x", "server.kind", "--y", "outcome"), ("--y outcome: unknown metric",)),
    (("--x", "server.kind", "--y", "setup_time_s", "-o", "plot.txt"), ("-o plot.txt: expected a file name ending in "
                                                                     ".png, .svg, .pdf, .jpg",)),
    (("--x", "server.kind", "--y", "setup_time_s", "--kind", "heatmap", "--hue", "paths.access.delay_s"),
     ("also varies in variant", "--where")),
    (("--x", "server.kind", "--y", "setup_time_s", "--where", "variant=nope"), ("--where variant=nope: no rows",)),
])
def test_plot_errors_are_one_line_naming_the_problem(sweep_dir, capsys, argv, fragments):
    status, out, err = cli(capsys, "plot", sweep_dir, *argv)
    assert status == 2 and out == "" and err.count("\n") == 1 and err.startswith("mpsim: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_plot_of_a_directory_without_a_finished_sweep_says_so(tmp_path, capsys):
    status, _, err = cli(capsys, "plot", tmp_path, "--x", "a", "--y", "setup_time_s")
    assert status == 2 and "no sweep here" in err
    (tmp_path / "sweep.json").write_text('{"grid": [{"key": "a", "values": ["1"]}], "scenario": {"name": "x"}}')
    status, _, err = cli(capsys, "plot", tmp_path, "--x", "a", "--y", "setup_time_s")
    assert status == 2 and "has not finished" in err


def test_the_cli_draws_what_the_summary_says(sweep_dir):
    """The figure the CLI saves is drawn from analysis.summarize: same means, same intervals."""
    tables, keys = analysis.load_tables(sweep_dir)
    summary = analysis.summarize(tables, keys, ["first_byte_time_s"])
    figure, ax = plt.subplots()
    try:
        plots.line(summary[summary["variant"] == "socks5"], x="paths.access.delay_s", y="first_byte_time_s",
                   hue="server.kind", ax=ax)
        line = ax.containers[0][0]
        expected = summary[(summary["variant"] == "socks5") & (summary["server.kind"] == "legacy_drop")]
        # drawn in ms, as the summary text prints it
        assert list(line.get_ydata()) == pytest.approx(list(expected.sort_values("paths.access.delay_s")["mean"] * 1e3))
        assert (expected["mean"] > 0).all() and (expected["seeds"] == 2).all()
    finally:
        plt.close(figure)
