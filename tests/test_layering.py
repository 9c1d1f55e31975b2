"""The layering rule of docs/design.md section 2.

1. wire and proto are pure (no I/O, no clocks, no global randomness, no simulator). Checked twice:
   statically (every import statement, with ast) and at run time (a fresh interpreter imports the
   packages and reports what got loaded that a bare interpreter did not already have).
2. Every import inside the package points down the layers
   wire <- proto <- {sim, live, testbed} <- experiment <- {bench, cli}, and no modules import
   each other in a cycle (static, with ast: function-level and TYPE_CHECKING imports count too).
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PURE_PACKAGES = ["mpsim/wire", "mpsim/proto"]
FORBIDDEN = {"simpy", "asyncio", "socket", "time", "random", "threading", "os", "numpy", "select",
             "selectors", "subprocess", "pandas", "scipy", "matplotlib"}


def imported_top_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def pure_files() -> list[pathlib.Path]:
    files = [p for pkg in PURE_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert files, "no source files found under the pure packages"
    return files


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_layers_import_nothing_forbidden(path):
    bad = imported_top_modules(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; wire/proto must stay sans-I/O"


def test_static_check_detects_forbidden_import(tmp_path):
    # The checker itself must be able to fail.
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom time import monotonic\nfrom . import sibling\n")
    assert imported_top_modules(sample) == {"os", "time"}


PROBE = """
import json, sys
before = set(sys.modules)
import mpsim.wire, mpsim.proto
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_fresh_interpreter_loads_no_io_or_simulator_modules():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT)
    newly_loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    bad = newly_loaded & {"simpy", "asyncio", "socket", "numpy", "time", "random", "threading"}
    assert not bad, f"importing mpsim.wire/mpsim.proto loaded {sorted(bad)}"


# --- the direction of every import inside the package, and no cycles ---------------------------------
#
# Layers (docs/design.md section 2), each listing the layers it may import. sim, live and testbed
# are three drivers of the same machines: none imports another. The CLI is the one door to
# everything, so it may also start the benchmarks. Top-level modules are placed by hand: a new
# one fails test_every_module_has_a_layer until someone decides where it belongs.

BELOW_DRIVERS = {"base", "wire", "proto", "provenance"}
MAY_IMPORT: dict[str, set[str]] = {
    "base": set(),  # mpsim/__init__.py (the version) and mpsim/errors.py (the root error class)
    "wire": {"base"},
    "proto": {"base", "wire"},
    "provenance": {"base"},  # facts about the code and the machine (git revision, kernel, CPUs)
    "sim": BELOW_DRIVERS,
    "live": BELOW_DRIVERS,
    "testbed": BELOW_DRIVERS,
    "experiment": BELOW_DRIVERS | {"sim", "live", "testbed"},
    "bench": BELOW_DRIVERS | {"sim", "live", "testbed", "experiment"},
    "cli": BELOW_DRIVERS | {"sim", "live", "testbed", "experiment", "bench"},
}
SUBPACKAGE_LAYERS = {"wire", "proto", "sim", "live", "testbed", "experiment", "bench"}
TOP_LEVEL_LAYERS = {
    "mpsim": "base",
    "mpsim.errors": "base",
    "mpsim.provenance": "provenance",
    "mpsim.syn_budget": "proto",  # pure: SYNs built from wire codecs and the proto schemes
    "mpsim.cli": "cli",
    "mpsim.__main__": "cli",
    "mpsim.wireshark": "cli",  # ships the Lua dissector and installs it; only the CLI uses it
    "mpsim.api": "cli",  # the Python API (docs/api.md): the top of the stack, beside the CLI
}


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {module_name(root, p): p for p in sorted((root / "mpsim").rglob("*.py"))}


#: Whether imports under ``if TYPE_CHECKING:`` count for cycles. They never run, but a cycle through
#: them is still two modules that need each other; the issue asks for none, so they count. (For the
#: direction of the layers they always count: a type named from a higher layer is a dependency.)
CYCLES_COUNT_TYPE_ONLY_IMPORTS = True


def _type_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside the body of an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            inside.update(id(n) for statement in node.body for n in ast.walk(statement))
    return inside


#: The one import that runs against the layers on purpose: the package's PEP 562 ``__getattr__``
#: (mpsim/__init__.py) imports the Python API (mpsim/api.py) when ``mpsim.run`` & co are first
#: used, so that ``mpsim.load(...)`` works while ``import mpsim.wire`` loads nothing above wire.
#: It never runs on an import of a submodule; test_package_facade_is_lazy_only checks that it
#: is the only such import and that it sits inside ``__getattr__``.
FACADE = ("mpsim", "__getattr__")


def _facade_nodes(name: str, tree: ast.AST) -> set[int]:
    if name != FACADE[0]:
        return set()
    return {id(n) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == FACADE[1] for n in ast.walk(node)}


def internal_imports(root: pathlib.Path, *, type_only: bool = True) -> dict[str, dict[str, int]]:
    """module -> {imported package module: line}, for every import anywhere in the file (module
    level, in functions, and under TYPE_CHECKING unless ``type_only`` is False), relative ones
    resolved, plus string literals that name a package module exactly (what
    importlib.import_module is given, as the CLI's table of benchmarks is). ``from a.b import c``
    counts as importing a.b.c when that is a module."""
    modules = package_modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        found: dict[str, int] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = (set() if type_only else _type_only_nodes(tree)) | _facade_nodes(name, tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                targets = [node.value]
            for target in targets:
                if target.split(".")[0] == "mpsim" and target != name:
                    found.setdefault(target, node.lineno)
        graph[name] = found
    return graph


def layer_of(module: str) -> str | None:
    if module in TOP_LEVEL_LAYERS:
        return TOP_LEVEL_LAYERS[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGE_LAYERS else None


def layering_violations(root: pathlib.Path) -> list[str]:
    bad = []
    for module, imports in sorted(internal_imports(root).items()):
        source = layer_of(module)
        for target, line in sorted(imports.items()):
            dest = layer_of(target)
            if source is None or dest is None or (dest != source and dest not in MAY_IMPORT[source]):
                bad.append(f"{module} (layer {source}) imports {target} (layer {dest}) at line {line}")
    return bad


def import_cycles(root: pathlib.Path, *, type_only: bool = CYCLES_COUNT_TYPE_ONLY_IMPORTS) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {m: sorted(targets) for m, targets in internal_imports(root, type_only=type_only).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_every_module_has_a_layer():
    unplaced = [m for m in package_modules(ROOT) if layer_of(m) is None]
    assert not unplaced, f"modules without a layer (place them in TOP_LEVEL_LAYERS and docs/design.md section 2): {unplaced}"


def test_imports_point_down_the_layers():
    bad = layering_violations(ROOT)
    assert not bad, "imports against the direction of docs/design.md section 2:\n" + "\n".join(bad)


def test_no_import_cycles_between_package_modules():
    cycles = import_cycles(ROOT)
    assert not cycles, f"import cycles: {cycles}"


def test_syn_budget_is_as_pure_as_proto():
    bad = imported_top_modules(ROOT / "mpsim" / "syn_budget.py") & FORBIDDEN
    assert not bad, f"mpsim/syn_budget.py (layer proto) imports {sorted(bad)}"


def _plant(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({"mpsim/wire/codec.py": "from mpsim.proto import host\n", "mpsim/proto/host.py": ""},
     "mpsim.wire.codec (layer wire) imports mpsim.proto.host (layer proto) at line 1"),
    ({"mpsim/sim/link.py": "def f():\n    from ..live import sockets\n", "mpsim/live/sockets.py": ""},
     "mpsim.sim.link (layer sim) imports mpsim.live.sockets (layer live) at line 2"),
    ({"mpsim/proto/catalogue.py": "import mpsim.experiment.scenario\n", "mpsim/experiment/scenario.py": ""},
     "mpsim.proto.catalogue (layer proto) imports mpsim.experiment.scenario (layer experiment) at line 1"),
    ({"mpsim/experiment/run.py": "NAME = 'mpsim.cli'\n", "mpsim/cli.py": ""},
     "mpsim.experiment.run (layer experiment) imports mpsim.cli (layer cli) at line 1"),
    ({"mpsim/helpers.py": "from mpsim import errors\n", "mpsim/errors.py": ""},
     "mpsim.helpers (layer None) imports mpsim.errors (layer base) at line 1"),
])
def test_layering_check_catches_a_planted_bad_import(tmp_path, files, expected):
    root = _plant(tmp_path, {"mpsim/__init__.py": "", **files})
    assert expected in layering_violations(root)


def test_cycle_check_catches_a_planted_cycle(tmp_path):
    root = _plant(tmp_path, {
        "mpsim/__init__.py": "",
        "mpsim/wire/__init__.py": "",
        "mpsim/wire/options.py": "def decode():\n    from mpsim.wire.mptcp import decode_mptcp\n",
        "mpsim/wire/mptcp.py": "from mpsim.wire.kinds import KIND\n",
        "mpsim/wire/kinds.py": "from . import options\n",
        "mpsim/wire/alone.py": "from mpsim.wire import kinds\n",
    })
    assert import_cycles(root) == [["mpsim.wire.kinds", "mpsim.wire.mptcp", "mpsim.wire.options"]]


def test_type_only_imports_are_told_apart(tmp_path):
    root = _plant(tmp_path, {
        "mpsim/__init__.py": "",
        "mpsim/proto/__init__.py": "",
        "mpsim/proto/client.py": "from mpsim.proto import schemes\n",
        "mpsim/proto/schemes.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mpsim.proto.client import C\n",
    })
    assert import_cycles(root, type_only=True) == [["mpsim.proto.client", "mpsim.proto.schemes"]]
    assert import_cycles(root, type_only=False) == []


def test_package_facade_is_lazy_only():
    # mpsim/__init__.py may reach above the base layer only inside its __getattr__ (FACADE), and
    # importing the package or a pure layer must not run it.
    tree = ast.parse((ROOT / "mpsim" / "__init__.py").read_text())
    facade = _facade_nodes("mpsim", tree)
    outside = [node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               and id(node) not in facade]
    inside = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) in facade]
    assert outside == [], f"mpsim/__init__.py imports at lines {outside} outside __getattr__"
    assert len(inside) == 1, "the facade imports exactly one module, mpsim.api"
    probe = "import sys, mpsim, mpsim.wire, mpsim.proto; print('mpsim.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
