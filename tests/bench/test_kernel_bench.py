"""The kernel benchmarks' machinery runs end to end at the smallest scale and records what it measured.

Not a benchmark (benchmarks/kernel.py prints and records the figures) and no timing assertions: these
tests check that every benchmark completes on the testbed, that its result has the expected
structure, that every transfer's SHA-256 matched, and that the files are written. Root only (network
namespaces); elsewhere they skip with the reason. The model-only checks run everywhere.
"""

import json
import os

import pytest

from mpsim.bench import kernel
from mpsim.testbed import TestbedUnavailable

SMOKE = kernel.SCALES["smoke"]


def _unavailable_reason() -> str | None:
    reason = kernel.not_root_reason()
    if reason:
        return reason
    from mpsim.testbed import probe

    caps = probe()
    lacks = caps.missing(rate=True, loss=True, strip=True, nft_middlebox=True)
    if not caps.mptcp:
        lacks.append("MPTCP is not enabled in this kernel")
    return "; ".join(lacks) or None


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    reason = _unavailable_reason()
    if reason:
        pytest.skip(f"kernel benchmarks unavailable: {reason}")
    out, lines = {}, []
    try:
        for name in kernel.BENCHMARKS:   # about 20 s in all; setup with both relay placements (its default)
            out[name] = kernel.run(name, SMOKE, progress=lines.append)
    except TestbedUnavailable as err:
        pytest.skip(f"kernel benchmarks unavailable: {err}")
    out["files"] = [path for r in out.values() for path in kernel.write_results(r, tmp_path_factory.mktemp("kernel"))]
    out["progress"] = lines
    return out


def test_fastpath_measures_every_route_with_matching_hashes_and_relay_cpu(results):
    fast = results["fastpath"]
    assert fast["hashes_ok"] and all(r["hash_ok"] and r["received_bytes"] == r["bytes"] for r in fast["rows"])
    assert {s["route"] for s in fast["summary"]} == set(SMOKE.fast_configs) | set(SMOKE.shaped_configs)
    for row in fast["rows"]:
        assert row["goodput_bps"] > 0 and row["system_cpu_s_per_gb"] is not None
        relayed = kernel.ROUTES[row["route"]].relay is not None
        assert (row["relay_cpu_s_per_gb"] is not None) == relayed
        if row["route"] == "converter-auto":
            assert row["via_converter"] and row["subflows"] == 2   # MPTCP on the client's leg, both paths
    assert {"unshaped", "shaped"} == set(fast["testbeds"])
    assert "MPTcpExt.MPJoinSynTx" in fast["testbeds"]["unshaped"]["mptcp_counters_after"]["client"]


def test_setup_counts_connections_and_idle_memory(results):
    setup = results["setup"]
    assert setup["hashes_ok"]   # every echo came back intact
    assert {r["route"] for r in setup["churn"]} == set(SMOKE.churn_configs) | {"converter-auto-workers",
                                                                               "minimal-relay"}
    assert {r["route"] for r in setup["parallel"]} == {"direct-mptcp", "converter-auto", "converter-auto-workers"}
    for row in setup["churn"]:
        assert row["connections"] == SMOKE.churn_conns * SMOKE.churn_rounds and row["errors"] == 0
        assert row["fallbacks"] == 0  # every Convert answered (a relay's bad reply sends the client direct)
        relayed = row["route"] != "direct-mptcp"   # the daemon's (or its workers') CPU per conversion
        assert (row["relay_cpu_us_per_conn"]["median"] is not None) == relayed
        if relayed:
            assert row["relay_cpu_us_per_conn"]["min"] > 0
    for row in setup["parallel"]:
        assert row["connections"] > 0 and row["errors"] == 0
        assert row["setup_median_ms"] <= row["setup_p90_ms"]
    [memory] = setup["memory_rows"]
    assert memory["connections"] == SMOKE.idle_conns and memory["relay_rss_bytes_per_conn"] is not None


def test_setup_runs_each_single_process_relay_pinned_and_unpinned_in_the_same_rounds(results):
    setup = results["setup"]
    assert setup["relay_cpu"] == "both"   # the default
    assert [(r["route"], r["relay_placement"]) for r in setup["churn"]] == [
        ("direct-mptcp", None), ("converter-auto", "pinned"), ("converter-auto", "unpinned"),
        ("converter-auto-workers", "unpinned"), ("minimal-relay", "pinned"), ("minimal-relay", "unpinned")]
    assert [(r["route"], r["relay_placement"]) for r in setup["parallel"]] == [
        ("direct-mptcp", None), ("converter-auto", "pinned"), ("converter-auto", "unpinned"),
        ("converter-auto-workers", "unpinned")]
    every_cpu = sorted(os.sched_getaffinity(0))
    for row in setup["churn_rows"] + setup["parallel_rows"]:   # the placement the relay really had
        if row["relay_placement"] is None:
            assert row["relay_cpus_allowed"] is None
        elif row["relay_placement"] == "pinned" and len(every_cpu) > 1:
            assert row["relay_cpus_allowed"] == [kernel.RELAY_CPU], row["variant"]
        else:
            assert row["relay_cpus_allowed"] == every_cpu, row["variant"]
    for row in setup["churn"]:
        if row["relay_placement"] is not None:
            assert row["rate_ratio_to_direct_mptcp"]["median"] > 0   # paired with its round's direct MPTCP
    table = kernel.markdown(setup)
    assert "--relay-cpu both" in table
    assert f"| converter-auto | pinned to CPU {kernel.RELAY_CPU} |" in table
    assert "| converter-auto | unpinned |" in table and "| direct-mptcp | - |" in table


def test_relay_cpu_goes_with_setup_only_and_names_its_choices(capsys):
    with pytest.raises(SystemExit):
        kernel.main(["fastpath", "--relay-cpu", "both"])
    assert "--relay-cpu goes with setup" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kernel.main(["setup", "--relay-cpu", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_model_rows_compare_goodput_negotiation_and_counters(results):
    model = results["model"]
    assert model["hashes_ok"]
    grid = [r for r in model["rows"] if r["kind"] in ("grid", "grid-tcp")]
    boxes = [r for r in model["rows"] if r["kind"] == "middlebox"]
    points = len(SMOKE.grid_rates_bps) * len(SMOKE.grid_losses) * SMOKE.grid_reps
    assert [r["kind"] for r in grid].count("grid") == [r["kind"] for r in grid].count("grid-tcp") == points
    assert [r["middlebox"] for r in boxes] == list(SMOKE.middleboxes)
    for row in grid + boxes:
        assert row["goodput_kernel_mbps"] > 0 and row["goodput_model_mbps"] > 0
        assert row["goodput_error"] is not None
    for row in boxes:   # strip MPTCP from the SYN: converted, but the client's leg fell back to TCP
        assert row["outcome_kernel"] == row["outcome_model"] == "fallback_tcp"
        assert row["mptcp_counters_kernel"]["MPTcpExt.MPCapableFallbackSYNACK"] == 1
    assert model["kernel_knobs"]["syn_retrans_before_tcp_fallback"] >= 0
    assert 0 < model["model_settings"]["one_way_delay_s"] < 0.01


def test_results_are_written_as_json_csv_markdown_and_a_plot(results):
    names = {path.name for path in results["files"]}
    for name in kernel.BENCHMARKS:
        assert {f"kernel_{name}.json", f"kernel_{name}.csv", f"kernel_{name}.md"} <= names
    assert "kernel_model.png" in names
    stored = json.loads(next(p for p in results["files"] if p.name == "kernel_model.json").read_text())
    assert stored["kernel"]["kernel_release"] == os.uname().release
    assert stored["settings"]["congestion_control"] == "cubic"
    assert all(t["congestion_control"] == "cubic" for t in stored["testbeds"].values())


def test_not_root_is_a_clear_message_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert kernel.main(["all", "--quick"]) == 2
    assert "root" in capsys.readouterr().err


def test_model_goodput_of_a_lossless_path_is_its_ceiling():
    settings = kernel.ModelSettings(one_way_delay_s=20e-6)
    size = int(10_000_000 * 1420 / 1514 / 8 * 2)
    result = kernel.model_goodput(settings, 10_000_000, 0.0, size, mptcp=True, seed=1)
    ceiling = 2 * 10_000_000 * 1420 / 1514
    assert result["completed"] and result["subflows"] == 2
    assert 0.97 < result["goodput_bps"] / ceiling <= 1.001


def test_model_goodput_with_mp_join_stripped_on_the_second_path():
    # The case (12 + 30 Mbit/s, strip on path 1): the join fails and path 0 carries
    # everything at its ceiling, as the kernel did (11.3 Mbit/s); without the box, both paths.
    settings = kernel.ModelSettings(one_way_delay_s=20e-6)
    size = int(42_000_000 * 1420 / 1514 / 8 * 2)
    stripped = kernel.model_goodput(settings, 0, 0.0, size, mptcp=True, seed=1, rates_bps=(12e6, 30e6),
                                    middleboxes=(None, "strip-mptcp-syn"))
    assert stripped["completed"] and stripped["subflow_bytes"][1] == 0
    assert stripped["subflow_join_failures"] == ("", "SYN-ACK without MP_JOIN")
    assert 0.97 < stripped["goodput_bps"] / (12e6 * 1420 / 1514) <= 1.001
    clean = kernel.model_goodput(settings, 0, 0.0, size, mptcp=True, seed=1, rates_bps=(12e6, 30e6))
    assert clean["subflow_joined"] == (True, True) and clean["goodput_bps"] > 3 * stripped["goodput_bps"]


def test_model_negotiation_takes_the_kernels_knobs():
    settings = kernel.ModelSettings(one_way_delay_s=20e-6)
    knobs = {"syn_retrans_before_tcp_fallback": 2, "tcp_syn_retries": 6, "tcp_syn_linear_timeouts": 4,
             "blackhole_timeout_s": 3600}
    clean = kernel.model_negotiation(settings, "none", 50_000_000, knobs)
    assert clean["outcome"] == "converted" and clean["syns"] == 1 and clean["rsts"] == 0
    dropped = kernel.model_negotiation(settings, "drop_mp_capable_syn", 50_000_000, knobs)
    # With the kernel's tcp_syn_linear_timeouts=4: MP_CAPABLE SYNs at 0, 1, 2 s and a plain one at
    # 3 s, as captured in the testbed; without it, the classic 0, 1, 3, 7 s.
    assert dropped["outcome"] == "fallback_tcp" and dropped["syn_times_s"][:4] == [0.0, 1.0, 2.0, 3.0]
    classic = kernel.model_negotiation(settings, "drop_mp_capable_syn", 50_000_000,
                                       {**knobs, "tcp_syn_linear_timeouts": 0})
    assert classic["syn_times_s"][:4] == [0.0, 1.0, 3.0, 7.0]
    assert dropped["mib"]["MPTcpExt.MPCapableSYNTXDrop"] == 1


def test_abuse_serves_every_good_client_and_sends_no_forbidden_syn(results):
    abuse = results["abuse"]
    for phase in ("without_attack", "under_attack"):
        good = abuse["good_clients"][phase]
        assert good["success_rate"] == 1.0 and good["setup_p90_s"] <= 2.0, good
    done = abuse["attack"]["done"]
    assert done["garbage_opened"] > 0 and done["slow_opened"] > 0 and done["syns_sent"] > 0
    assert set(done["forbidden_answers"]) <= {"32", "1"}  # own addresses: 32; loopback: 1 (RFC 8803 6.2.5)
    assert abuse["forbidden_syns"] == 0
    daemon = abuse["daemon"]
    assert max(s["fds"] for s in daemon["during"]) > daemon["before"]["fds"] >= daemon["after"]["fds"]


def test_daemons_use_a_compiled_build_only_when_it_is_current(tmp_path):
    """build/fast is used when every compiled daemon module is there and the daemon's sources
    (live, proto, wire, the top level) equal the package's; a changed source makes it stale."""
    from mpsim.bench.kernel.services import daemon_package

    root = tmp_path / "repo"
    for rel in ("mpsim/__init__.py", "mpsim/live/converter.py", "mpsim/proto/convert.py", "mpsim/bench/x.py"):
        for base in (root, root / "build" / "fast"):
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_text(f"# {rel}\n")
    assert daemon_package(root) == (str(root), "pure Python (no compiled build: `make fast` builds one)")
    for module in ("live/converter", "live/relay", "live/sockets", "proto/convert", "proto/relay"):
        (root / "build" / "fast" / "mpsim" / f"{module}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert daemon_package(root) == (str(root / "build" / "fast"), "compiled (build/fast, mypyc)")
    (root / "mpsim" / "bench" / "x.py").write_text("# the bench changed: the daemon does not import it\n")
    assert daemon_package(root)[0] == str(root / "build" / "fast")
    (root / "mpsim" / "live" / "converter.py").write_text("# changed after make fast\n")
    assert daemon_package(root) == (str(root), "pure Python (build/fast is stale, 1 files differ: `make fast` again)")
