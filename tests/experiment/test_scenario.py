"""Scenario files: the schema refuses what it does not know, names the file and the key, and
--set overrides any value by its dotted key with the same checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mpsim.experiment import scenario as sc
from mpsim.experiment.scenario import Arrivals, ScenarioError
from mpsim.proto.cache import CachePolicy
from mpsim.proto.client import ClientPolicy
from mpsim.proto.tcp import TcpPolicy

MINIMAL = 'description = "test"\n'
MODEL_FILES = sorted(sc.models_dir().glob("*.toml"))


def load(text: str = MINIMAL, *overrides: str) -> sc.LoadedScenario:
    return sc.load_text(text, name="t", source="models/t.toml", overrides=overrides)


def error_of(text: str = MINIMAL, *overrides: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load(text, *overrides)
    return info.value


# --- the schema: file errors name the file, the key and what was expected ------------------------


@pytest.mark.parametrize("text,key,fragments", [
    # unknown keys, with a suggestion when one is close
    ('description = "x"\n[client]\nschem = "plain"\n', "client.schem", ["unknown key", "did you mean client.scheme?"]),
    ('description = "x"\nduration = 3\n', "duration", ["did you mean duration_s?"]),
    ('description = "x"\n[paths.dsl]\ndelay = 0.1\n', "paths.dsl.delay", ["did you mean paths.dsl.delay_s?"]),
    ('description = "x"\n[[transfers]]\nsize = 5\n', "transfers.0.size", ["unknown key", "transfers.0.size_bytes"]),
    ('description = "x"\n[zzz]\n', "zzz", ["unknown key (allowed: description, duration_s"]),
    # wrong types
    ('description = "x"\nduration_s = "ten"\n', "duration_s", ["expected a number > 0", "got 'ten'"]),
    ('description = "x"\nseed = 1.5\n', "seed", ["expected an integer >= 0, got 1.5"]),
    ('description = "x"\nruns = true\n', "runs", ["expected an integer >= 1", "got true"]),
    ('description = "x"\n[client]\nimplicit = 1\n', "client.implicit", ["expected true or false, got 1"]),
    ('description = "x"\n[paths.dsl]\nmiddleboxes = "drop-rst"\n', "paths.dsl.middleboxes",
     ["expected a list of names (strip-mptcp,"]),
    ('description = "x"\nclient = 3\n', "client", ["expected a table, got 3"]),
    # bad enum values
    ('description = "x"\n[client]\nscheme = "conver"\n', "client.scheme",
     ["expected one of plain, mptcp, mp-convert-option, syn-payload-eol, convert, socks5", "did you mean convert?"]),
    ('description = "x"\n[server]\nkind = "apache"\n', "server.kind", ["expected one of legacy_drop"]),
    ('description = "x"\n[paths.dsl]\nmiddleboxes = ["drop-rsts"]\n', "paths.dsl.middleboxes.0",
     ["did you mean drop-rst?"]),
    # out of range
    ('description = "x"\n[client]\nproxy_syn_retries = -1\n', "client.proxy_syn_retries",
     ["expected an integer >= 0 and <= 10, got -1"]),
    ('description = "x"\n[[middlebox_mix]]\nmiddlebox = "drop-rst"\nprob = 1.5\n', "middlebox_mix.0.prob",
     ["expected a number >= 0 and <= 1, got 1.5"]),
    ('description = "x"\n[paths.dsl]\nrate_down_bps = 0\n', "paths.dsl.rate_down_bps",
     ["expected a number > 0, got 0"]),
    ('description = "x"\nduration_s = nan\n', "duration_s", ["expected a number > 0"]),
    # missing keys
    ("duration_s = 3\n", "description", ["missing key (expected a string)"]),
    ('description = "x"\n[[middlebox_mix]]\nmiddlebox = "drop-rst"\n', "middlebox_mix.0.prob", ["missing key"]),
    # a loss table: the loss module's own checks, under the path's key
    ('description = "x"\n[paths.dsl]\nloss = { model = "bernoulli", loss_prob = 2 }\n', "paths.dsl.loss.loss_prob",
     ["probability in [0, 1], got 2"]),
    ('description = "x"\n[paths.dsl]\nloss = { model = "bernouli" }\n', "paths.dsl.loss.model", ["is not one of"]),
    # rules across keys
    ('description = "x"\n[client]\nprimary_path = "wifi"\n', "client.primary_path", ["one of the paths (dsl)"]),
    ('description = "x"\n[workload]\narrivals = "times"\n', "workload.at_s", ["non-empty list"]),
    ('description = "x"\n[workload]\narrivals = "count"\n', "workload.count", ["integer >= 1"]),
    ('description = "x"\nduration_s = 5\n[[events]]\nat_s = 7\naction = "reboot"\n', "events.0.at_s",
     ["[0, duration_s = 5), got 7"]),
    ('description = "x"\n[converter]\nkind = "convert"\nplacement = "on_path"\n', "converter.placement",
     ["only the MP_CONVERT proxy", "not convert"]),
    ('description = "x"\n[variants."a b"]\nclient.scheme = "plain"\n', "variants.a b", ["letters, digits"]),
    # variants: the error points into the variant
    ('description = "x"\n[variants.a]\nclient.schem = "plain"\n', "variants.a.client.schem",
     ["did you mean client.scheme?"]),
    ('description = "x"\n[variants.a]\nclient.scheme = "plan"\n', "variants.a.client.scheme", ["did you mean plain?"]),
    ('description = "x"\n[variants.a]\nseed = 3\n', "variants.a.seed", ["belongs to the whole scenario"]),
])
def test_file_errors_name_the_file_the_key_and_what_was_expected(text, key, fragments):
    err = error_of(text)
    message = str(err)
    assert message.startswith(f"models/t.toml: {key}: "), message
    assert err.key == key and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_invalid_toml_names_the_file_and_the_line():
    message = str(error_of('description = "x"\n[client\n'))
    assert message.startswith("models/t.toml: invalid TOML:") and "line 2" in message


def test_defaults_are_the_machines_defaults():
    scenario = load().base
    c = scenario.client
    policy, tcp, cache = ClientPolicy(), TcpPolicy(), CachePolicy()
    assert (c.scheme, c.fallback, c.proxy_syn_retries, c.reply_timeout_s, c.max_attempts) == \
        (policy.scheme, policy.fallback, policy.proxy_syn_retries, policy.reply_timeout_s, policy.max_attempts)
    assert (c.syn_retries, c.time_wait_s, c.off_reprobe_s) == (tcp.syn_retries, tcp.time_wait_s, cache.off_reprobe_s)
    assert list(scenario.paths) == ["dsl"] and scenario.primary_path == "dsl"
    assert scenario.workload.arrivals is Arrivals.ONE


def test_optional_numbers_take_none():
    assert load('description = "x"\n[client]\noff_reprobe_s = "none"\n').base.client.off_reprobe_s is None
    err = error_of('description = "x"\n[client]\noff_reprobe_s = "never"\n')
    assert 'expected a number > 0, or "none"' in str(err)


# --- --set ----------------------------------------------------------------------------------------


def test_set_overrides_nested_keys_lists_and_tables():
    loaded = load(MINIMAL, "client.scheme=mptcp", "paths.dsl.delay_s=0.05",
                  "paths.dsl.middleboxes=strip-mptcp,drop-rst",
                  'workload.schemes=["plain", "convert"]', 'paths.dsl.loss={model = "bernoulli", loss_prob = 0.01}',
                  "client.off_reprobe_s=none", "seed=7", "paths.lte={delay_s = 0.03}")
    s = loaded.base
    assert s.client.scheme == "mptcp" and s.paths["dsl"].delay_s == 0.05 and s.seed == 7
    assert s.paths["dsl"].middleboxes == ("strip-mptcp", "drop-rst")
    assert s.workload.schemes == ("plain", "convert")
    assert s.paths["dsl"].loss == {"model": "bernoulli", "loss_prob": 0.01}
    assert s.client.off_reprobe_s is None
    # A new path takes a whole table (a field of an unknown path is refused as a likely typo).
    assert list(s.paths) == ["dsl", "lte"] and s.paths["lte"].delay_s == 0.03
    assert loaded.overrides[0] == "client.scheme=mptcp"


def test_set_reaches_list_items_by_index():
    text = MINIMAL + "[[events]]\nat_s = 1\naction = \"reboot\"\n[[events]]\nat_s = 2\naction = \"reboot\"\n"
    assert load(text, "events.1.action=attach_network").base.events[1].action.value == "attach_network"
    message = str(error_of(text, "events.2.at_s=3"))
    assert message == "--set events.2.at_s=3: events.2: no item 2: the list has 2"
    assert "events: has no item 0" in str(error_of(MINIMAL, "events.0.at_s=1"))


@pytest.mark.parametrize("override,expected", [
    ("client.schem=convert", "--set client.schem=convert: client.schem: unknown key (did you mean client.scheme?)"),
    ("client.scheme=conver", "--set client.scheme=conver: client.scheme: expected one of plain"),
    ("duration_s=abc", "--set duration_s=abc: duration_s: expected a number > 0"),
    ("client.proxy_syn_retries=2.5",
     "--set client.proxy_syn_retries=2.5: client.proxy_syn_retries: expected an integer"),
    ("client.implicit=yes", "--set client.implicit=yes: client.implicit: expected true or false, got 'yes'"),
    ("paths.dsl.middleboxes=[1]", "--set paths.dsl.middleboxes=[1]: paths.dsl.middleboxes.0: expected one of"),
    ("client.scheme.x=1", "--set client.scheme.x=1: client.scheme.x: client.scheme is one of"),
    ("transfers.x.size_bytes=1", "--set transfers.x.size_bytes=1: transfers.x: expected a list index"),
    ("noequals", "--set noequals: expected KEY=VALUE"),
    ("client..scheme=plain", "--set client..scheme=plain: client..scheme: empty component"),
    ("paths.dls.delay_s=0.01", "--set paths.dls.delay_s=0.01: paths.dls: no such path (did you mean paths.dsl?)"),
])
def test_set_errors(override, expected):
    assert str(error_of(MINIMAL, override)).startswith(expected)


def test_set_wins_over_variants_and_can_target_one():
    text = MINIMAL + "[variants.a]\nclient.scheme = \"plain\"\n[variants.b]\nclient.scheme = \"mptcp\"\n"
    loaded = load(text, "client.scheme=socks5")
    assert [s.client.scheme for s in loaded.variants.values()] == ["socks5", "socks5"]
    loaded = load(text, "variants.b.client.scheme=convert")
    assert [s.client.scheme for s in loaded.variants.values()] == ["plain", "convert"]


def test_variants_merge_tables_key_by_key_and_replace_lists():
    text = MINIMAL + ("[paths.dsl]\ndelay_s = 0.05\nmiddleboxes = [\"drop-rst\"]\n"
                      "[variants.a]\npaths.dsl.middleboxes = []\n[variants.b]\nserver.kind = \"tfo\"\n")
    a, b = load(text).variants.values()
    assert (a.paths["dsl"].delay_s, a.paths["dsl"].middleboxes) == (0.05, ())
    assert b.paths["dsl"].middleboxes == ("drop-rst",) and b.server.kind == "tfo"
    assert a.variants == {} and list(load(MINIMAL).variants) == [sc.BASE_VARIANT]


# --- files and names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_every_model_loads_and_describes_itself(path: Path):
    loaded = sc.load(path.stem)
    assert loaded.source == f"models/{path.name}" and loaded.text == path.read_text(encoding="utf-8")
    assert len(loaded.description) > 20 and "\n" not in loaded.description
    for scenario in loaded.variants.values():
        assert dataclasses.is_dataclass(scenario)


def test_the_models_cover_the_situations():
    assert {"default", "legacy_server", "lost_rst", "reprobe", "tfo_orderings", "scheme_comparison",
            "bulk_two_path"} <= {p.stem for p in MODEL_FILES}
    assert [name for name, _ in sc.describe_all()] == sorted(p.stem for p in MODEL_FILES)


def test_a_file_with_a_mistake_is_reported_with_its_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text('description = "x"\n[client]\nscheme = "plain"\nfallbak = "direct_tcp"\n')
    with pytest.raises(ScenarioError) as info:
        sc.load("mine.toml")
    assert str(info.value) == "mine.toml: client.fallbak: unknown key (did you mean client.fallback?)"


def test_unknown_names_and_files():
    with pytest.raises(ScenarioError, match=r"no scenario of that name in .*models \(did you mean default\?\)"):
        sc.resolve("defualt")
    with pytest.raises(ScenarioError, match="no such scenario file"):
        sc.resolve("nowhere/x.toml")


def test_set_reaches_inside_a_loss_table():
    # A loss model is a free-form table: dotted keys reach into it and it is checked when built.
    loaded = load(MINIMAL, 'paths.dsl.loss={model = "bernoulli", loss_prob = 0.01}', "paths.dsl.loss.loss_prob=0.02")
    assert loaded.base.paths["dsl"].loss == {"model": "bernoulli", "loss_prob": 0.02}
    assert "missing key 'model'" in str(error_of(MINIMAL, "paths.dsl.loss.loss_prob=0.02"))
