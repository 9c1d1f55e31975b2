"""Running scenarios: every model runs and tells its story; the negotiation decides how a transfer
moves; the mix is drawn per network and attachment; results are the same bit for bit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mpsim.experiment import results, scenario as sc
from mpsim.experiment.simulation import Simulation
from mpsim.proto.catalogue import MIDDLEBOXES
from mpsim.sim.seeds import derive_seed
from mpsim.wire.pcap import read_pcap
from mpsim.wire.segment import decode_packet

OUTCOMES = {"converted", "mptcp", "tcp", "fallback_tcp", "failed"}
MODELS = sorted(p.stem for p in sc.models_dir().glob("*.toml"))
#: Overrides that keep each model quick in the test suite without changing what it shows.
SHORT = {"default": ("runs=2", "duration_s=12")}


def run(name: str, *overrides: str, **kwargs) -> results.Results:
    return results.run(sc.load(name, overrides), **kwargs)


def run_text(text: str, *overrides: str, **kwargs) -> results.Results:
    return results.run(sc.load_text(text, name="t", source="t.toml", overrides=overrides), **kwargs)


def by_variant(res: results.Results) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in res.rows("connections"):
        out.setdefault(row["variant"], []).append(row)
    return out


def counter(res: results.Results, variant: str, component: str, name: str) -> int:
    return next(r["value"] for r in res.rows("counters")
                if (r["variant"], r["component"], r["counter"]) == (variant, component, name))


@pytest.fixture(scope="module")
def model_results() -> dict[str, results.Results]:
    return {name: run(name, *SHORT.get(name, ())) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_and_every_request_ends_with_a_record(model_results, name):
    res = model_results[name]
    loaded = res.loaded
    rows = res.rows("connections")
    assert {row["outcome"] for row in rows} <= OUTCOMES
    for r in res.runs:  # one record per request the run started (arrivals, and a negotiation per transfer)
        scenario = loaded.variants[r.variant]
        started = len(Simulation(scenario, variant=r.variant, run_index=r.run_index).arrival_times()) + \
            len(scenario.transfers)
        assert [row["request_id"] for row in r.connections] == list(range(started))
    assert {row["variant"] for row in rows} | {t["variant"] for t in res.rows("transfers")} <= set(loaded.variants)
    assert not [row for row in rows if "unfinished" in row["detail"]]


def test_default_hybrid_access(model_results):
    res = model_results["default"]
    rows = res.rows("connections")
    outcomes = [row["outcome"] for row in rows]
    assert outcomes.count("converted") > len(rows) / 2  # most networks let the converter work
    assert all(row["network"].startswith("dsl:") and " lte:" in row["network"] for row in rows)
    transfers = res.rows("transfers")
    assert len(transfers) == 2 and all(t["completed"] for t in transfers)


def test_legacy_server_acks_the_signalling(model_results):
    rows = {v: r[0] for v, r in by_variant(model_results["legacy_server"]).items()}
    reset, cont, drop, on_path = rows["queue-reset"], rows["queue-continue"], rows["drop"], rows["proxy-on-path"]
    assert (reset["outcome"], reset["fallback_reason"], reset["rsts_sent"], reset["source_ports_used"]) == \
        ("fallback_tcp", "signal_acked_as_data", 1, 2)
    assert not reset["signal_leaked"]
    assert cont["signal_leaked"] and cont["source_ports_used"] == 1 and cont["rsts_sent"] == 0
    assert (drop["fallback_reason"], drop["rsts_sent"], drop["source_ports_used"]) == ("signal_not_acked", 1, 2)
    # With a proxy on the path, implicit mode works: one attempt, nothing leaked, the proxy taken for the server.
    assert (on_path["outcome"], on_path["attempts"], on_path["signal_leaked"]) == ("mptcp", 1, False)
    # The fallback costs a round trip: the first byte comes one client-server RTT later.
    assert reset["first_byte_rtts"] == pytest.approx(cont["first_byte_rtts"] + 1, abs=0.05)


def test_lost_rsts_leave_the_server_half_open(model_results):
    res = model_results["lost_rst"]
    for variant, rows in by_variant(res).items():
        assert all(r["source_ports_used"] == 2 and r["rsts_sent"] == 1 for r in rows)
        assert counter(res, variant, "client", "PortsAllocated") == 2 * len(rows)
    assert counter(res, "rst-delivered", "server", "ConnectionsOpenAtEnd") == 0
    assert counter(res, "rst-lost", "server", "ConnectionsOpenAtEnd") == 10
    assert counter(res, "rst-lost", "middlebox.dsl.drop-rst", "hits") >= 10


def test_reprobe_uses_the_converter_again_after_each_trigger(model_results):
    res = model_results["reprobe"]
    rows = res.rows("connections")
    # Per block: the converter is silent (fallback), then cached off (direct), then after the trigger, converted.
    expected = [("fallback_tcp", "converter_syn_timeout"), ("fallback_tcp", "converter_cached_off"),
                ("converted", None)]
    assert [(r["outcome"], r["fallback_reason"]) for r in rows] == expected * 4
    triggers = [(e["time_s"], e["detail"].split("trigger=")[1].split()[0]) for e in res.rows("events")
                if e["event"] == "CacheReprobed"]
    assert [t for _, t in triggers] == ["host_reboot", "network_attachment", "new_proxy_discovered", "timer_expiry"]
    for (trigger_s, _), converted in zip(triggers, rows[2::3]):
        assert converted["start_s"] > trigger_s and converted["via_proxy"]


def test_tfo_cookie_orderings(model_results):
    rows = by_variant(model_results["tfo_orderings"])
    fb = {v: [r["first_byte_time_s"] for r in rs] for v, rs in rows.items()}
    assert all(r["outcome"] in ("converted", "tcp") for rs in rows.values() for r in rs)
    # A cookie obtained directly does not help through the converter (bound to the client address) ...
    assert fb["before"][1] == pytest.approx(fb["same"][0], rel=1e-3)
    # ... the converter-bound cookie does: the server answers the SYN's data at once.
    for variant in ("before", "same", "after"):
        assert fb[variant][-1] < fb[variant][-2] - 0.01
    assert fb["after"][1] == pytest.approx(fb["after"][0], rel=1e-3)  # TFO turned on: asks first, gains later


def test_scheme_comparison_round_trips(model_results):
    res = model_results["scheme_comparison"]
    rows = {v: r[0] for v, r in by_variant(res).items()}
    s = res.loaded.base
    access, conv, server = s.paths["access"].delay_s, s.converter.delay_s, s.server.delay_s
    rtt_client_server = 2 * (access + server)
    rtt_client_conv, rtt_conv_server = 2 * (access + conv), 2 * (conv + server)
    plain = rows["plain"]
    assert plain["setup_rtts"] == pytest.approx(1, abs=1e-3) and plain["first_byte_rtts"] == pytest.approx(2, abs=1e-3)
    for variant in ("convert", "convert-socket", "syn-payload-eol", "mp-convert-option"):
        assert rows[variant]["outcome"] == "converted"
        # No round trip beyond client-converter plus converter-server (the request rides in the SYN).
        assert rows[variant]["setup_time_s"] <= (rtt_client_conv + rtt_conv_server) * 1.001
    assert rows["convert"]["first_byte_time_s"] < plain["first_byte_time_s"] - rtt_client_conv / 2
    socks = rows["socks5"]
    assert socks["outcome"] == "converted"
    assert socks["setup_time_s"] >= rows["convert"]["setup_time_s"] + 2 * rtt_client_conv * 0.999
    assert rows["mptcp"]["fallback_reason"] == "mp_capable_missing_synack"  # the server is a legacy one
    assert rtt_client_server == pytest.approx(plain["setup_time_s"], rel=1e-3)


def test_bulk_transfer_follows_the_negotiation(model_results):
    res = model_results["bulk_two_path"]
    transfers = {t["variant"]: t for t in res.rows("transfers")}
    convert, plain, lost = transfers["convert"], transfers["plain"], transfers["convert-lost"]
    assert (convert["outcome"], convert["subflows"], convert["paths"]) == ("converted", 2, "dsl lte")
    assert (plain["outcome"], plain["subflows"], plain["paths"]) == ("tcp", 1, "dsl")
    assert (lost["outcome"], lost["subflows"], lost["paths"]) == ("fallback_tcp", 1, "dsl")
    assert all(t["completed"] and t["bytes_delivered"] == t["bytes"] for t in transfers.values())
    assert all(int(b) > 0 for b in convert["subflow_bytes"].split())
    assert convert["goodput_bps"] > 1.5 * plain["goodput_bps"]  # DSL 20 + LTE 30 Mbit/s against DSL alone
    assert plain["goodput_bps"] < 20e6  # never above the DSL line
    assert transfers["convert-lia"]["goodput_bps"] < 50e6


# --- mechanics ----------------------------------------------------------------------------------------

BASE = """description = "mechanics"
duration_s = 40.0
[paths.a]
delay_s = 0.01
[paths.b]
delay_s = 0.02
[workload]
arrivals = "count"
count = 4
interval_s = 5.0
"""


def test_the_mix_is_drawn_per_network_at_each_attachment():
    always = BASE + '[[middlebox_mix]]\nmiddlebox = "strip-tfo"\nprob = 1.0\n'
    assert {r["network"] for r in run_text(always).rows("connections")} == {"a:strip-tfo b:strip-tfo"}
    never = BASE + '[[middlebox_mix]]\nmiddlebox = "strip-tfo"\nprob = 0.0\n'
    assert {r["network"] for r in run_text(never).rows("connections")} == {"a:clean b:clean"}
    coin = BASE + '[[middlebox_mix]]\nmiddlebox = "drop-rst"\nprob = 0.5\n' + "".join(
        f'[[events]]\nat_s = {t}\naction = "attach_network"\n' for t in (4.0, 9.0, 14.0))
    labels = [r["network"] for r in run_text(coin, "runs=4").rows("connections")]
    assert len(set(labels)) > 1  # the draws differ between attachments and networks
    assert labels == [r["network"] for r in run_text(coin, "runs=4").rows("connections")]  # seeded


def test_fixed_middleboxes_and_the_primary_path():
    res = run_text(BASE, "paths.b.middleboxes=drop-rst", "client.primary_path=b", "client.scheme=plain")
    rows = res.rows("connections")
    assert {r["network"] for r in rows} == {"b:drop-rst a:clean"}  # the primary path first
    rtt = 2 * (0.02 + 0.020)
    assert rows[0]["setup_time_s"] == pytest.approx(rtt, rel=0.01)  # negotiated on path b


def test_poisson_arrivals_are_seeded_and_capped():
    text = BASE.replace('arrivals = "count"', 'arrivals = "poisson"\nrate_per_s = 2.0').replace("count = 4\n", "")
    a = [r["start_s"] for r in run_text(text).rows("connections")]
    assert 40 < len(a) < 120 and a == sorted(a)
    assert a == [r["start_s"] for r in run_text(text).rows("connections")]
    assert a != [r["start_s"] for r in run_text(text, "seed=2").rows("connections")]
    assert len(run_text(text, "workload.count=5").rows("connections")) == 5


def test_events_come_before_arrivals_at_the_same_instant():
    text = BASE + '[[events]]\nat_s = 5.0\naction = "converter_down"\n'
    rows = run_text(text, "client.scheme=convert").rows("connections")
    assert rows[0]["outcome"] == "converted" and rows[1]["fallback_reason"] == "converter_syn_timeout"


def test_unfinished_requests_are_failed_with_a_detail():
    text = BASE + '[[events]]\nat_s = 0.0\naction = "converter_down"\n'
    rows = run_text(text, "client.scheme=socks5", "duration_s=6", "drain_s=0", "client.fallback=direct_tcp",
                    "workload.count=2").rows("connections")
    assert [r["outcome"] for r in rows] == ["failed", "failed"]
    assert all(r["detail"] == "unfinished when the simulation ended" for r in rows)


def test_seeds_derive_from_root_run_and_component():
    res = run("default", "runs=2", "duration_s=3", "transfers=[]")
    seeds = res.seeds()
    assert [s["run"] for s in seeds] == [0, 1]
    for entry in seeds:
        assert entry["seeds"]["client"] == derive_seed(1, entry["run"], "client")
        assert "middlebox_mix.dsl" in entry["seeds"] and "workload" in entry["seeds"]
    assert seeds[0]["seeds"]["client"] != seeds[1]["seeds"]["client"]
    assert res.manifest()["seeds"] == seeds


def test_same_scenario_and_seed_give_identical_results():
    first = run("default", *SHORT["default"]).json_text()
    assert first == run("default", *SHORT["default"]).json_text()
    assert first != run("default", *SHORT["default"], "seed=2").json_text()


def test_one_run_of_a_sweep_replays_alone():
    loaded = sc.load("default", ["runs=3", "duration_s=12"])
    sweep = [row for row in results.run(loaded).rows("connections") if row["run"] == 2]
    alone = Simulation(loaded.base, variant="base", run_index=2).run()
    assert sweep and sweep == results.Results(loaded, [alone]).rows("connections")


def test_write_tables_manifest_and_pcaps(tmp_path: Path):
    res = run("scheme_comparison", "seed=3", record_packets=True, variants=["convert"])
    written = res.write(tmp_path, pcap=True)
    names = {p.name for p in written}
    assert {"connections.csv", "transfers.csv", "counters.csv", "events.csv", "results.json", "manifest.json"} <= names
    with (tmp_path / "connections.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(results.CONNECTION_COLUMNS) and rows[0]["outcome"] == "converted"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["scenario"]["text"] == res.loaded.text and manifest["overrides"] == ["seed=3"]
    assert manifest["root_seed"] == 3 and manifest["scenario"]["file"] == "models/scheme_comparison.toml"
    assert set(manifest["variants"]) == set(res.loaded.variants)
    assert json.loads((tmp_path / "results.json").read_text()) == res.json_object()
    capture = tmp_path / "pcap" / "convert-run0-path.access.pcap"
    packets = [decode_packet(data) for _, data in read_pcap(capture.read_bytes())]
    first = packets[0].segment.payload
    assert first[0] == 1 and first[2:4] == bytes.fromhex("2263")  # the client's Convert SYN: version 1, magic


#: The boxes a Convert request to a working converter meets: its SYN carries data and MP_CAPABLE,
#: its SYN-ACK MP_CAPABLE; no RST, no TFO option, nothing to mirror.
ACTS_ON_CONVERT = {"strip-mptcp", "strip-mptcp-synack", "drop-unknown-option-syns", "drop-syn-data",
                   "drop-syn-data-or-unknown-options", "strip-syn-payload"}


#: The nine middleboxes scenarios named before the catalogue held every box (models/*.toml use them).
SCENARIO_MIDDLEBOXES = ("strip-mptcp", "strip-mptcp-synack", "drop-unknown-option-syns", "drop-syn-data",
                        "drop-syn-data-or-unknown-options", "strip-syn-payload", "strip-tfo", "drop-rst",
                        "mirror-mp-capable")


@pytest.mark.parametrize("kind", SCENARIO_MIDDLEBOXES)
def test_every_named_middlebox_is_built_placed_and_counted(kind):
    res = run_text(BASE, f"paths.a.middleboxes={kind}", "client.scheme=convert", "workload.count=1")
    row = res.rows("connections")[0]
    assert row["network"] == f"a:{kind} b:clean"
    hits = [r["value"] for r in res.rows("counters") if r["component"] == f"middlebox.a.{kind}"]
    assert len(hits) == 1 and (hits[0] > 0) == (kind in ACTS_ON_CONVERT)
    assert (row["outcome"] == "converted") == (kind not in ACTS_ON_CONVERT)


@pytest.mark.parametrize("kind", MIDDLEBOXES.names())
def test_every_registered_middlebox_is_usable_in_a_scenario(kind):
    # Fixed on a path and drawn by the mix, through the normal loader and --set overrides.
    res = run_text(BASE, f"paths.a.middleboxes={kind}", f'middlebox_mix=[{{middlebox = "{kind}", prob = 1.0}}]',
                   "client.scheme=convert", "workload.count=1")
    row = res.rows("connections")[0]
    assert row["network"] == f"a:{kind}+{kind} b:{kind}"
    assert row["outcome"] in OUTCOMES
    assert [r["component"] for r in res.rows("counters") if r["component"].startswith("middlebox.")] == \
        [f"middlebox.a.{kind}", f"middlebox.a.{kind}", f"middlebox.b.{kind}"]
