"""Every named scenario's result tables and capture digests equal the recorded goldens, bit for bit.

Regenerate (one command, from the repository root; then review ``git diff tests/golden/data``):

    PYTHONPATH=$PWD python tests/golden/golden.py --write

What is recorded and how: see ``tests/golden/golden.py``. A speed-only change must keep these
files identical; a change meant to alter results regenerates them in the same commit.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mpsim.experiment import scenario

_spec = importlib.util.spec_from_file_location("golden", Path(__file__).with_name("golden.py"))
golden = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("golden", golden)
_spec.loader.exec_module(golden)


def test_every_named_scenario_has_goldens():
    recorded = {p.name.split(".")[0] for p in golden.DATA_DIR.glob("*")}
    assert recorded == set(scenario.scenario_names())


@pytest.mark.parametrize("name", scenario.scenario_names())
def test_scenario_tables_equal_goldens(name):
    for file_name, text in golden.scenario_files(name).items():
        expected = (golden.DATA_DIR / file_name).read_text(encoding="utf-8")
        if text != expected:
            got, want = text.splitlines(), expected.splitlines()
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            pytest.fail(f"{file_name} differs from the golden at line {first + 1}: "
                        f"got {got[first] if first < len(got) else '<end>'!r}, "
                        f"want {want[first] if first < len(want) else '<end>'!r}")
