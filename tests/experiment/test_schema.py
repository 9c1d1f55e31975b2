"""The generated scenario JSON Schema and reference (mpsim/experiment/schema.py) against the loader.

Every named scenario validates; every bounded knob's value just outside its range is refused by
both the schema and the loader, and the bound itself (when included) accepted by both; a handful
of whole-file mistakes get the same verdict from both, with the schema's error at (or above) the
key the loader names. The schema is checked under draft 2020-12, which it declares, and draft 7,
which Taplo's validator implements (docs/scenarios.md, "Editor completion").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import typing
from pathlib import Path

import pytest

from mpsim.cli import main
from mpsim.experiment import docgen, scenario, schema
from mpsim.proto.components import MIDDLEBOXES

jsonschema = pytest.importorskip("jsonschema", reason="the test extra installs jsonschema")

VALIDATORS = (jsonschema.Draft202012Validator, jsonschema.Draft7Validator)
MODEL_FILES = sorted(scenario.MODELS_DIR.glob("**/*.toml"))


@pytest.fixture(scope="module")
def generated() -> dict:
    return schema.json_schema()


def _errors(validator_class, schema_dict: dict, tree: dict) -> list:
    return list(validator_class(schema_dict).iter_errors(tree))


def _tables(cls=scenario.Scenario):
    """Every schema dataclass reachable from ``cls``."""
    seen = [cls]
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        for candidate in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(candidate) and candidate not in seen:
                seen += [t for t in _tables(candidate) if t not in seen]
    return seen


def test_every_knob_says_what_it_means():
    missing = [f"{cls.__name__}.{f.name}" for cls in _tables() for f in dataclasses.fields(cls)
               if not (f.metadata.get("doc") or "").strip()]
    assert not missing, f"knobs without doc= (docs/scenarios.md needs a meaning for each): {missing}"


@pytest.mark.parametrize(("name", "unit"), [
    ("delay_s", "s"), ("rate_per_s", "1/s"), ("rate_up_bps", "bit/s"), ("queue_bytes", "bytes"),
    ("loss_prob", "probability"), ("prob", "probability"), ("p_good_to_bad", "probability"), ("count", None),
    ("port", None), ("snd_buf_bytes", "bytes"),
])
def test_units_come_from_the_name(name, unit):
    assert (schema.unit_of(name) or (None,))[0] == unit


def test_descriptions_state_units_and_the_reference_shows_them(generated):
    converter = generated["$defs"]["ConverterSpec"]["properties"]
    assert converter["delay_s"]["description"].endswith("Unit: seconds.")
    assert converter["rate_bps"]["description"].endswith("Unit: bits per second.")
    assert "Unit" not in converter["port"]["description"]
    text = schema.reference_markdown()
    assert "| `workload.rate_per_s` | number | 1/s | > 0 | `1` |" in text
    assert "| `transfers.N.size_bytes` | integer | bytes | [1, 10_000_000_000] | required |" in text


@pytest.mark.parametrize("validator_class", VALIDATORS, ids=lambda v: v.__name__)
def test_the_schema_is_a_valid_json_schema(validator_class, generated):
    validator_class.check_schema(generated)


@pytest.mark.parametrize("validator_class", VALIDATORS, ids=lambda v: v.__name__)
@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: str(p.relative_to(scenario.MODELS_DIR)))
def test_every_named_scenario_validates(path, validator_class, generated):
    tree = tomllib.loads(path.read_text())
    assert [e.message for e in _errors(validator_class, generated, tree)] == []


def test_the_committed_schema_and_reference_are_generated():
    # test_docs.py regenerates every entry of docgen.GENERATED and fails on a stale file.
    assert docgen.GENERATED["scenarios.md"] is schema.reference_markdown
    assert docgen.GENERATED["scenario.schema.json"] is schema.json_schema_text


def test_names_are_the_registry_names_when_generated():
    toy = "toy-schema-test-box"
    assert toy not in json.dumps(schema.json_schema())
    MIDDLEBOXES.register(toy, MIDDLEBOXES.get("strip-tfo"))
    try:
        generated = schema.json_schema()
        assert toy in generated["$defs"]["MixEntry"]["properties"]["middlebox"]["enum"]
        assert toy in generated["$defs"]["PathSpec"]["properties"]["middleboxes"]["items"]["enum"]
    finally:
        MIDDLEBOXES.unregister(toy)


# --- the schema and the loader agree ------------------------------------------------------------------


def _base_tree() -> dict:
    """The default scenario with one item in every list, so that every knob has a place."""
    tree = tomllib.loads((scenario.MODELS_DIR / "default.toml").read_text())
    tree["events"] = [{"at_s": 1.0, "action": "reboot"}]
    return tree


def _leaves(cls=scenario.Scenario, prefix=()):
    """(key parts, type, metadata) of every scalar knob, with a concrete place in _base_tree()."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, (*prefix, f.name))
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            yield from _leaves(args[1], (*prefix, f.name, "dsl"))
        elif origin is tuple and dataclasses.is_dataclass(args[0]):
            yield from _leaves(args[0], (*prefix, f.name, 0))
        else:
            yield (*prefix, f.name), tp, f.metadata


def _with(tree: dict, parts: tuple, value) -> dict:
    out = copy.deepcopy(tree)
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[parts[-1]] = value
    return out


def _loader_accepts(tree: dict) -> bool:
    """Each key alone, as the schema checks it: the loader's per-key coercion, not its cross-key rules."""
    try:
        scenario._build(scenario.Scenario, tree, "")
    except scenario._Invalid:
        return False
    return True


def _bound_cases():
    for parts, tp, meta in _leaves():
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is not None and type(None) in typing.get_args(tp) \
            else tp
        key = ".".join(map(str, parts))
        step = 1 if inner is int else 1e-3
        if meta.get("ge") is not None:
            yield pytest.param(parts, inner(meta["ge"]), True, id=f"{key}=ge")
            yield pytest.param(parts, inner(meta["ge"] - step), False, id=f"{key}<ge")
        if meta.get("gt") is not None:
            yield pytest.param(parts, inner(meta["gt"]), False, id=f"{key}=gt")
        if meta.get("le") is not None:
            yield pytest.param(parts, inner(meta["le"]), True, id=f"{key}=le")
            yield pytest.param(parts, inner(meta["le"] + step), False, id=f"{key}>le")
        if inner in (int, float) or typing.get_origin(inner) is typing.Annotated:
            yield pytest.param(parts, "not-a-valid-value", False, id=f"{key}=string")
        if inner is bool:
            yield pytest.param(parts, 1, False, id=f"{key}=1")


@pytest.mark.parametrize(("parts", "value", "valid"), list(_bound_cases()))
def test_each_knob_alone_gets_the_same_verdict_from_the_schema_and_the_loader(parts, value, valid, generated):
    tree = _with(_base_tree(), parts, value)
    assert _loader_accepts(tree) is valid
    for validator_class in VALIDATORS:
        assert (not _errors(validator_class, generated, tree)) is valid, validator_class.__name__


def _load(tree_text: str) -> scenario.ScenarioError | None:
    try:
        scenario.load_text(tree_text, name="t", source="t.toml")
    except scenario.ScenarioError as err:
        return err
    return None


BASE = 'description = "t"\n'
CASES = [
    # (what, TOML text, valid)
    ("the smallest scenario", BASE, True),
    ("a misspelt key", BASE + "[client]\nschem = \"convert\"\n", False),
    ("a misspelt table", BASE + "[clinet]\nscheme = \"convert\"\n", False),
    ("a wrong type", BASE + "[client]\nproxy_syn_retries = \"two\"\n", False),
    ("out of range", BASE + "[client]\nproxy_syn_retries = -1\n", False),
    ("an exclusive bound", BASE + "[converter]\nrate_bps = 0\n", False),
    ("an unknown scheme", BASE + "[client]\nscheme = \"convrt\"\n", False),
    ("an unknown congestion control", BASE + "[[transfers]]\nsize_bytes = 1000\ncongestion_control = \"bbr\"\n",
     False),
    ("a transfer without its size", BASE + "[[transfers]]\nstart_s = 1.0\n", False),
    ("no description", "seed = 3\n", False),
    ("\"none\" for an optional knob", BASE + "[client.mptcp]\nsyn_retrans_before_tcp_fallback = \"none\"\n", True),
    ("another word for it", BASE + "[client.mptcp]\nsyn_retrans_before_tcp_fallback = \"never\"\n", False),
    ("a loss model", BASE + "[paths.dsl]\nloss = {model = \"gilbert_elliott\", p_good_to_bad = 0.01, "
                            "p_bad_to_good = 0.3}\n", True),
    ("a loss model missing its key", BASE + "[paths.dsl]\nloss = {model = \"bernoulli\"}\n", False),
    ("a loss probability out of range", BASE + "[paths.dsl]\nloss = {model = \"bernoulli\", loss_prob = 1.5}\n",
     False),
    ("a loss model with a stray key", BASE + "[paths.dsl]\nloss = {model = \"none\", loss_prob = 0.1}\n", False),
    ("a scripted loss", BASE + "[paths.dsl]\nloss = {model = \"scripted\", drops = [{segment_class = \"syn_ack\", "
                               "occurrences = 1}, {segment_class = \"syn\", with_payload = true}]}\n", True),
    ("a scripted loss with an unknown class", BASE + "[paths.dsl]\nloss = {model = \"scripted\", drops = "
                                                     "[{segment_class = \"synack\"}]}\n", False),
    ("a variant", BASE + "[variants.fast]\nserver = {delay_s = 0.001}\n", True),
    ("a variant setting the seed", BASE + "[variants.fast]\nseed = 3\n", False),
    ("a variant with a space in its name", BASE + "[variants.\"a b\"]\nserver = {delay_s = 0.001}\n", False),
    ("a variant with a misspelt key", BASE + "[variants.fast]\nserver = {delay = 0.001}\n", False),
    ("a list of names", BASE + "[paths.dsl]\nmiddleboxes = [\"strip-tfo\", \"nat\"]\n", True),
    ("a list with an unknown name", BASE + "[paths.dsl]\nmiddleboxes = [\"strip-tfo\", \"natt\"]\n", False),
    ("no paths", BASE + "paths = {}\n", False),
    ("an event action", BASE + "[[events]]\nat_s = 1.0\naction = \"rebot\"\n", False),
]


@pytest.mark.parametrize(("what", "text", "valid"), CASES, ids=[c[0] for c in CASES])
def test_whole_files_get_the_same_verdict_and_the_same_key(what, text, valid, generated):
    loader_error = _load(text)
    assert (loader_error is None) is valid, loader_error
    tree = tomllib.loads(text)
    for validator_class in VALIDATORS:
        errors = _errors(validator_class, generated, tree)
        assert (not errors) is valid, (validator_class.__name__, [e.message for e in errors])
        if loader_error is not None and loader_error.key:
            # The schema reports a key at or above the loader's (an unknown key is an error of its table).
            paths = {".".join(map(str, e.absolute_path)) for e in errors}
            assert any(loader_error.key == p or loader_error.key.startswith(p + ".") or not p for p in paths), \
                (loader_error.key, paths)


def test_the_schema_cannot_tell_an_integral_float_from_an_integer(generated):
    # The documented difference (docs/scenarios.md): JSON has one number type.
    text = BASE + "[[transfers]]\nsize_bytes = 1e6\n"
    assert _load(text) is not None
    assert not _errors(jsonschema.Draft202012Validator, generated, tomllib.loads(text))


# --- the command ------------------------------------------------------------------------------------


def test_mpsim_scenario_schema_prints_and_writes_the_schema(tmp_path: Path, capsys):
    assert main(["scenario", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema.json_schema()
    out = tmp_path / "new" / "scenario.schema.json"
    assert main(["scenario", "schema", "--out", str(out)]) == 0
    assert out.read_text() == schema.json_schema_text()
    assert str(out) in capsys.readouterr().out


def test_mpsim_scenario_schema_to_an_unwritable_place_is_one_line(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["scenario", "schema", "--out", str(blocker / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpsim: error: --out ") and err.count("\n") == 1


def test_mpsim_scenarios_still_lists_the_named_scenarios(capsys):
    assert main(["scenarios"]) == 0
    assert "default" in capsys.readouterr().out


def test_every_registered_name_is_described_in_the_schema_and_the_reference(generated):
    from mpsim.proto.components import PROXIES, SCHEMES, SERVERS
    from mpsim.sim.congestion import CONGESTION_CONTROLS

    text = schema.reference_markdown()
    for registry in (SCHEMES, MIDDLEBOXES, PROXIES, SERVERS, CONGESTION_CONTROLS):
        for name in registry.names():
            assert f"| `{name}` | {registry.get(name).description} |" in text, (registry.kind, name)
    kind = generated["$defs"]["ServerSpec"]["properties"]["kind"]
    assert kind["x-taplo"]["docs"]["enumValues"] == [SERVERS.get(n).description for n in kind["enum"]]
    proxy = generated["$defs"]["ConverterSpec"]["properties"]["kind"]
    assert len(proxy["x-taplo"]["docs"]["enumValues"]) == len(proxy["enum"]) == len(PROXIES.names()) + 1
