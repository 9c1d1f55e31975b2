"""The layering rule of docs/design.md section 2: wire and proto are pure (no I/O, no clocks, no global
randomness, no simulator). Checked twice: statically (every import statement, with ast) and at
run time (a fresh interpreter imports the packages and reports what got loaded that a bare
interpreter did not already have)."""

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
