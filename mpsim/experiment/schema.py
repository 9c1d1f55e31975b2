"""The scenario schema for editors and readers: a JSON Schema of a scenario file
(``mpsim scenario schema``) and the reference docs/scenarios.md, both generated from the schema
dataclasses of :mod:`mpsim.experiment.scenario` (types, ranges and defaults from each ``knob``,
meanings from its ``doc``, units from the key's suffix) and from the component registries, so
neither can drift from what the loader accepts.

The JSON Schema declares draft 2020-12 and uses only keywords that mean the same in draft 7
(numeric ``exclusiveMinimum``, ``$ref`` to ``#/$defs/...``, ``enum``, ``const``, ``oneOf``),
because Taplo (the TOML language server behind Even Better TOML) validates with a draft-7
implementation. It checks each key, type, range and name; the rules that involve several keys
(docs/scenarios.md lists them) stay with the loader, and so does the one difference JSON cannot
express: ``size_bytes = 1e6`` is a float, which the loader refuses for an integer key, while JSON
has one number type and ``1e6`` passes as an integer.

Names of components (schemes, middleboxes, proxies, servers, congestion controls) are the
registries' names when the schema is generated: a component registered by a plug-in appears in
the schema that ``mpsim scenario schema`` prints once it is imported.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from mpsim.experiment import scenario
from mpsim.proto.middlebox import SegmentClass
from mpsim.sim import loss

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Units by key suffix (the project's naming rule: names carry units), the most specific first.
#: Each: (suffix, the unit as tables show it, in words for descriptions).
UNIT_SUFFIXES: tuple[tuple[str, str, str], ...] = (
    ("_per_s", "1/s", "per second"),
    ("_bps", "bit/s", "bits per second"),
    ("_bytes", "bytes", "bytes"),
    ("_prob", "probability", "a probability, 0 to 1"),
    ("_s", "s", "seconds"),
)

#: The loss models of mpsim.sim.loss.loss_from_spec, by their ``model`` name: the class whose
#: docstring says what the model is. A test checks these are exactly the models loss_from_spec knows.
LOSS_MODELS: dict[str, type] = {"none": loss.NoLoss, "bernoulli": loss.Bernoulli,
                                "gilbert_elliott": loss.GilbertElliott, "scripted": loss.Scripted}
#: What each key of a loss table means (the loss module documents them in its classes' docstrings).
LOSS_KEY_DOCS: dict[str, str] = {
    "loss_prob": "the chance that each packet is lost",
    "p_good_to_bad": "per packet, the chance of moving from the good state to the bad one",
    "p_bad_to_good": "per packet, the chance of moving from the bad state to the good one "
                     "(1 / this is the mean burst length in packets)",
    "loss_prob_good": "the chance that a packet is lost in the good state",
    "loss_prob_bad": "the chance that a packet is lost in the bad state",
    "drops": "the rules: each selects segments to drop",
}
DROP_RULE_KEY_DOCS: dict[str, str] = {
    "segment_class": "which segments the rule matches",
    "occurrences": "1-based indices among the segments this rule matches (one or a list); left out: every match",
    "with_payload": "true: only segments carrying data; false: only those without; left out: both",
}


def unit_of(name: str) -> tuple[str, str] | None:
    """The unit of a key from its name: (short form, in words); None for a plain number or count."""
    if name == "prob" or name.startswith("p_"):
        return "probability", "a probability, 0 to 1"
    for suffix, short, words in UNIT_SUFFIXES:
        if name.endswith(suffix):
            return short, words
    return None


# --- type analysis, shared by both outputs --------------------------------------------------------------


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True): the loader takes the string "none" for None."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return next(a for a in typing.get_args(tp) if a is not type(None)), True
    return tp, False


def _names(tp: Any) -> tuple[str, ...] | None:
    """The allowed values of a name or enum type, else None."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tuple(m.value for m in tp)
    if typing.get_origin(tp) is Annotated:
        return next(m for m in tp.__metadata__ if isinstance(m, scenario.OneOf)).names()
    return None


#: What the names a registry does not hold mean (OneOf extras).
EXTRA_NAME_DOCS = {scenario.AUTO_PROXY: "the proxy the client's scheme talks to"}


def _name_docs(tp: Any) -> list[str] | None:
    """What each allowed name of a registry-backed type is (the entries' descriptions), else None."""
    if typing.get_origin(tp) is not Annotated:
        return None
    one_of = next(m for m in tp.__metadata__ if isinstance(m, scenario.OneOf))
    return [EXTRA_NAME_DOCS[name] if name in one_of.extra else getattr(one_of.registry.get(name), "description", "")
            for name in one_of.names()]


def _registries() -> dict[str, Any]:
    """Every registry a scenario names components from, by the schema type that uses it, in schema order."""
    out: dict[str, Any] = {}
    for _, cls, _ in _sections():
        for _, tp, _, _ in _fields(cls):
            inner = _optional(tp)[0]
            inner = typing.get_args(inner)[0] if typing.get_origin(inner) is tuple else inner
            if typing.get_origin(inner) is Annotated:
                registry = next(m for m in inner.__metadata__ if isinstance(m, scenario.OneOf)).registry
                out.setdefault(registry.kind, inner)
    return out


def _is_table_map(tp: Any) -> bool:
    return typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1])


def _is_table_list(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0])


def _fields(cls: type) -> Iterator[tuple[str, Any, Mapping[str, Any], dataclasses.Field]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        yield f.name, hints[f.name], f.metadata, f


def _default(f: dataclasses.Field) -> Any:
    """The field's default as plain data; MISSING when the key is required."""
    if f.default is not dataclasses.MISSING:
        return scenario.as_plain(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return scenario.as_plain(f.default_factory())
    return dataclasses.MISSING


def _describe(doc: str, name: str) -> str:
    unit = unit_of(name)
    text = doc[:1].upper() + doc[1:] if doc else ""
    text = text if not text or text.endswith(".") else text + "."
    return f"{text} Unit: {unit[1]}." if unit else text


# --- the JSON Schema ------------------------------------------------------------------------------------


def _bounds(meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, keyword in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum")):
        if meta.get(key) is not None:
            out[keyword] = meta[key]
    return out


def _value_schema(tp: Any, meta: Mapping[str, Any], name: str, defs: dict[str, Any]) -> dict[str, Any]:
    inner, optional = _optional(tp)
    if optional:
        return {"anyOf": [_value_schema(inner, meta, name, defs), {"const": "none"}]}
    names = _names(tp)
    if names is not None:
        out: dict[str, Any] = {"type": "string", "enum": list(names)}
        docs = _name_docs(tp)
        if docs is not None:  # Taplo's extension: shown when completing or hovering a name
            out["x-taplo"] = {"docs": {"enumValues": docs}}
        return out
    if tp is bool:
        return {"type": "boolean"}
    if tp is int and meta.get("choices"):
        return {"type": "integer", "enum": list(meta["choices"])}
    if tp is int:
        return {"type": "integer", **_bounds(meta)}
    if tp is float:
        return {"type": "number", **_bounds(meta)}
    if tp is str:
        return {"type": "string"}
    if dataclasses.is_dataclass(tp):
        return {"$ref": f"#/$defs/{_table_def(tp, defs)}"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return {"type": "array", "items": _value_schema(args[0], scenario._NO_META, name, defs)}
    if tp == dict[str, dict]:  # variants: name -> a partial scenario
        defs.setdefault("Variant", _variant_def(defs))
        return {"type": "object", "propertyNames": {"pattern": f"^{scenario._VARIANT_NAME.pattern}$"},
                "additionalProperties": {"$ref": "#/$defs/Variant"}}
    if origin is dict:
        out = {"type": "object", "additionalProperties": _value_schema(args[1], scenario._NO_META, name, defs)}
        if name == "paths":
            out.update(minProperties=1, maxProperties=scenario.MAX_PATHS)
        return out
    if tp is dict and name == "loss":
        defs.setdefault("Loss", _loss_def())
        return {"$ref": "#/$defs/Loss"}
    raise TypeError(f"schema type {tp!r} of {name} has no JSON Schema form")  # a new kind of knob: add it here


def _property(name: str, tp: Any, meta: Mapping[str, Any], f: dataclasses.Field, defs: dict[str, Any]
              ) -> dict[str, Any]:
    out = {"description": _describe(meta.get("doc", ""), name), **_value_schema(tp, meta, name, defs)}
    default = _default(f)
    if default is not dataclasses.MISSING and not dataclasses.is_dataclass(_optional(tp)[0]):
        out["default"] = "none" if default is None else default
    return out


def _table_def(cls: type, defs: dict[str, Any]) -> str:
    name = cls.__name__
    if name not in defs:
        defs[name] = {}  # reserve it first: a table may refer to itself
        properties, required = {}, []
        for key, tp, meta, f in _fields(cls):
            properties[key] = _property(key, tp, meta, f, defs)
            if _default(f) is dataclasses.MISSING:
                required.append(key)
        defs[name] = {"type": "object", "description": " ".join((cls.__doc__ or "").split()),
                      "properties": properties, "additionalProperties": False,
                      **({"required": required} if required else {})}
    return name


def _variant_def(defs: dict[str, Any]) -> dict[str, Any]:
    """A variant: any scenario key but those fixed for the whole scenario, none required (tables
    merge key by key into the base; lists and loss tables replace the base's whole)."""
    properties = {key: _property(key, tp, meta, f, defs) for key, tp, meta, f in _fields(scenario.Scenario)
                  if key not in scenario.VARIANT_FIXED_KEYS}
    return {"type": "object", "description": "A partial scenario merged over the base one; it cannot set "
                                             + ", ".join(scenario.VARIANT_FIXED_KEYS) + ".",
            "properties": properties, "additionalProperties": False}


def _probability(key: str) -> dict[str, Any]:
    return {"description": _describe(LOSS_KEY_DOCS[key], key), "type": "number", "minimum": 0, "maximum": 1}


def _loss_def() -> dict[str, Any]:
    model_keys = loss._MODEL_KEYS  # (required, optional) per model: the loader's own table
    optional_defaults = {name: p.default for name, p in inspect.signature(loss.GilbertElliott).parameters.items()
                         if p.default is not inspect.Parameter.empty}
    rule = {"type": "object", "additionalProperties": False, "required": ["segment_class"], "properties": {
        "segment_class": {"description": _describe(DROP_RULE_KEY_DOCS["segment_class"], "segment_class"),
                          "type": "string", "enum": [c.value for c in SegmentClass]},
        "occurrences": {"description": _describe(DROP_RULE_KEY_DOCS["occurrences"], "occurrences"),
                        "anyOf": [{"type": "integer", "minimum": 1},
                                  {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1}}]},
        "with_payload": {"description": _describe(DROP_RULE_KEY_DOCS["with_payload"], "with_payload"),
                         "type": "boolean"}}}
    choices: list[dict[str, Any]] = [{"description": "No loss.", "type": "object", "maxProperties": 0}]
    for model, cls in LOSS_MODELS.items():
        required, optional = model_keys[model]
        properties: dict[str, Any] = {"model": {"description": "The loss model.", "const": model}}
        for key in sorted(required) + sorted(optional):
            if key == "drops":
                properties[key] = {"description": _describe(LOSS_KEY_DOCS[key], key), "type": "array",
                                   "items": rule}
            else:
                properties[key] = _probability(key)
                if key in optional_defaults:
                    properties[key]["default"] = optional_defaults[key]
        choices.append({"description": _model_doc(cls), "type": "object", "properties": properties,
                        "required": ["model", *sorted(required)], "additionalProperties": False})
    return {"description": "Packet loss on the path, the same model each direction (mpsim.sim.loss).",
            "oneOf": choices}


def _model_doc(cls: type) -> str:
    """The first paragraph of a loss class's docstring, its reST roles as Markdown code."""
    text = " ".join(inspect.getdoc(cls).split("\n\n")[0].split()).replace("\\ ", "")
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`")


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a scenario file, as a dict."""
    defs: dict[str, Any] = {}
    root = _table_def(scenario.Scenario, defs)
    body = defs.pop(root)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "mpsim scenario",
            **body, "description": "A scenario file of mpsim (models/*.toml); reference: docs/scenarios.md.",
            "$defs": dict(sorted(defs.items()))}


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# --- the reference (docs/scenarios.md) ---------------------------------------------------------------------


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:_}"  # TOML's digit separator: 10_000_000_000 reads at a glance
    return str(value)


def _toml(value: Any) -> str:
    """A default as it would be written in a scenario file."""
    if value is None:
        return '"none"'
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return _number(value)


def _type_words(tp: Any) -> str:
    inner, optional = _optional(tp)
    if optional:
        return f'{_type_words(inner)} or "none"'
    if _names(tp) is not None:
        return "name"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        item = args[0]
        return "list of tables" if dataclasses.is_dataclass(item) else \
            "list of names" if _names(item) is not None else f"list of {_type_words(item)}s"
    if dataclasses.is_dataclass(tp) or origin is dict or tp is dict:
        return "table"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]


def _range_words(tp: Any, meta: Mapping[str, Any]) -> str:
    inner, _ = _optional(tp)
    names = _names(inner) if typing.get_origin(inner) is not tuple else _names(typing.get_args(inner)[0])
    if names is not None:
        return ", ".join(f"`{n}`" for n in names)
    if meta.get("choices"):
        return ", ".join(f"`{c}`" for c in meta["choices"])
    low = f"[{_number(meta['ge'])}" if meta.get("ge") is not None else \
        f"({_number(meta['gt'])}" if meta.get("gt") is not None else None
    high = _number(meta["le"]) if meta.get("le") is not None else None
    if low and high:
        return f"{low}, {high}]"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    if high:
        return f"<= {high}"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section_rows(cls: type, prefix: str, links: Mapping[str, str]) -> list[str]:
    rows = ["| key | type | unit | range | default | meaning |", "|---|---|---|---|---|---|"]
    for name, tp, meta, f in _fields(cls):
        default = _default(f)
        inner = _optional(tp)[0]
        if default is dataclasses.MISSING:
            shown = "required"
        elif dataclasses.is_dataclass(inner):
            shown = ""
        else:
            shown = f"`{_toml(default)}`"
        unit = unit_of(name)
        meaning = meta.get("doc", "")
        if f"{prefix}{name}" in links:
            meaning += f" ({links[f'{prefix}{name}']})"
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{prefix}{name}`", _type_words(tp), unit[0] if unit else "", _range_words(tp, meta), shown,
            meaning)) + " |")
    return rows


def _sections() -> list[tuple[str, type, str]]:
    """(heading as TOML writes the table, class, dotted-key prefix) in reading order."""
    out: list[tuple[str, type, str]] = []

    def walk(cls: type, heading: str, prefix: str) -> None:
        out.append((heading, cls, prefix))
        for name, tp, _, _ in _fields(cls):
            if dataclasses.is_dataclass(tp):
                walk(tp, f"[{prefix}{name}]", f"{prefix}{name}.")
            elif _is_table_map(tp):
                walk(typing.get_args(tp)[1], f"[{prefix}{name}.NAME]", f"{prefix}{name}.NAME.")
            elif _is_table_list(tp):
                walk(typing.get_args(tp)[0], f"[[{prefix}{name}]]", f"{prefix}{name}.N.")

    walk(scenario.Scenario, "Top level", "")
    return out


def _anchor(heading: str) -> str:
    return "".join(c for c in heading.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _loss_rows() -> list[str]:
    schema = _loss_def()
    rows = ["| `model` | key | type | range | default | meaning |", "|---|---|---|---|---|---|",
            "| (none) | | | | | `{}`: no loss |"]
    for model, choice in zip(LOSS_MODELS, schema["oneOf"][1:]):
        rows.append(f"| `{model}` | | | | | {_cell(choice['description'])} |")
        required = set(choice["required"])
        for key, prop in choice["properties"].items():
            if key == "model":
                continue
            kind = "list of tables" if prop.get("type") == "array" else "number"
            bounds = "[0, 1]" if kind == "number" else ""
            default = "required" if key in required else f"`{_number(prop['default'])}`"
            rows.append(f"| `{model}` | `{key}` | {kind} | {bounds} | {default} | {_cell(LOSS_KEY_DOCS[key])} |")
    rows += ["", "A rule of `drops`:", "", "| key | type | range | default | meaning |", "|---|---|---|---|---|",
             f"| `segment_class` | name | {', '.join(f'`{c.value}`' for c in SegmentClass)} | required | "
             f"{DROP_RULE_KEY_DOCS['segment_class']} |",
             f"| `occurrences` | integer or list of integers | >= 1 | every match | "
             f"{_cell(DROP_RULE_KEY_DOCS['occurrences'])} |",
             f"| `with_payload` | boolean | | both | {_cell(DROP_RULE_KEY_DOCS['with_payload'])} |"]
    return rows


CROSS_KEY_RULES = (
    f"`paths` holds 1 to {scenario.MAX_PATHS} access networks, and `client.primary_path` (when not empty) names "
    "one of them.",
    "`converter.placement = \"on_path\"` needs a proxy that intercepts on the path.",
    "`workload.count` is at least 1 when `workload.arrivals = \"count\"`, and `workload.at_s` is not empty when "
    "it is `\"times\"`.",
    "Every time in `workload.at_s`, `events.N.at_s` and `transfers.N.start_s` lies in [0, `duration_s`).",
    "A variant cannot set " + ", ".join(f"`{k}`" for k in scenario.VARIANT_FIXED_KEYS) + ", and its name is "
    "letters, digits, `-`, `_` or `.`.",
    "A `gilbert_elliott` loss model cannot have both `p_good_to_bad` and `p_bad_to_good` at 0.",
    "An integer key refuses a float: `size_bytes = 1e6` is an error, `size_bytes = 1_000_000` works (JSON, and "
    "so the JSON Schema, cannot tell them apart).",
    "No number may be infinite or NaN (`inf`, `nan`).",
    "A run starts at most `workload.max_requests` requests: `rate_per_s` x (`duration_s` - `start_s`) for "
    "`poisson` (or its `count` when smaller), `count` for `count`, the length of `at_s` for `times`.",
    f"Arrays and tables nest at most {scenario.MAX_NESTING} deep (in a file, a `--set` or a `--grid`).",
)


def reference_markdown() -> str:
    """docs/scenarios.md."""
    sections = _sections()
    links = {prefix.rstrip(".").removesuffix(".NAME").removesuffix(".N"): f"see [`{heading}`](#{_anchor(heading)})"
             for heading, _, prefix in sections[1:]}
    links["paths.NAME.loss"] = "see [loss models](#loss-models)"
    links["variants"] = "see [`[variants.NAME]`](#variantsname)"
    out = [
        "# Scenario reference",
        "",
        "Generated by `python -m mpsim.experiment.docgen` from the scenario schema "
        "(`mpsim/experiment/scenario.py`: each key's type, range, default and meaning) and the component "
        "registries; a test fails when this file is stale. A scenario is one TOML file (the named ones are in "
        "`models/`, `mpsim scenarios` lists them); every key below may be left out unless its default says "
        "*required*, and `--set KEY=VALUE` overrides one by the dotted key shown (`NAME` is a path or "
        "variant name, `N` a list index from 0).",
        "",
        "Units are in the key's name: `_s` seconds, `_bps` bits per second, `_bytes` bytes, `_per_s` per "
        "second, `_prob` (and `prob`) a probability from 0 to 1. Numbers without a unit are counts or "
        "indices. A range `[a, b]` includes its ends, `(a` excludes `a`. Names are those registered when this "
        "file was generated.",
        "",
        "## Editor completion",
        "",
        "`mpsim scenario schema --out FILE` writes a JSON Schema (draft 2020-12) of a scenario file; "
        "[docs/scenario.schema.json](scenario.schema.json) is the same schema for the built-in components. "
        "With Taplo or the Even Better TOML extension for VS Code, name it at the top of a scenario file:",
        "",
        "```toml",
        "#:schema ../docs/scenario.schema.json",
        "description = \"...\"",
        "```",
        "",
        "(a path relative to the TOML file, or an absolute one), or for every file in `models/` at once with "
        "the repository's `.taplo.toml`, which maps `models/**/*.toml` to it. The editor then completes keys, "
        "shows each key's meaning, unit and default, and marks unknown keys, wrong types, values out of range "
        "and unknown component names. The schema checks each key alone; the loader also checks these rules "
        "across keys:",
        "",
        *[f"- {rule}" for rule in CROSS_KEY_RULES],
        "",
    ]
    for heading, cls, prefix in sections:
        out += [f"## {heading}", ""]
        doc = " ".join((cls.__doc__ or "").split())
        if doc:
            out += [doc.replace("``", "`"), ""]
        out += _section_rows(cls, prefix, links)
        out.append("")
    out += ["## Component names", "",
            "The names a name key takes are those registered in the catalogue (`mpsim/proto/catalogue.py`; "
            "congestion controls in `mpsim/sim/congestion.py`) when this file was generated; a component "
            "registered later (docs/design.md section 10) is a valid name as soon as its module is imported.",
            ""]
    for kind, tp in _registries().items():
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "es" if kind.endswith("x") else kind + "s"
        out += [f"### {plural[:1].upper() + plural[1:]}", "", "| name | what it is |", "|---|---|"]
        out += [f"| `{name}` | {_cell(doc)} |" for name, doc in zip(_names(tp), _name_docs(tp))]
        out.append("")
    out += ["## [variants.NAME]", "",
            "A variant is a partial scenario: any key above except "
            + ", ".join(f"`{k}`" for k in scenario.VARIANT_FIXED_KEYS) + ", merged over the base scenario "
            "(tables key by key; a list or a loss table replaces the base's whole). Each variant is run and "
            "reported side by side; `--set` overrides apply to every variant and win over it.", ""]
    out += ["## Loss models", "",
            "`paths.NAME.loss` is a table naming its `model` (`mpsim/sim/loss.py`); the same model applies to "
            "each direction, with its own random draws. A variant's loss table replaces the base one whole.", ""]
    out += _loss_rows()
    return "\n".join(out) + "\n"
