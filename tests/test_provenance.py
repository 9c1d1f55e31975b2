"""mpsim/provenance.py: the one place machine facts and the git revision come from."""

import os
import platform
import subprocess
from pathlib import Path

from mpsim import __version__, provenance

ROOT = Path(__file__).resolve().parent.parent


def test_machine_facts_describe_this_machine_with_the_shared_keys():
    facts = provenance.machine_facts()
    assert {"date_utc", "hostname", "cpu_model", "cpu_count", "usable_cpus", "load_average", "platform",
            "kernel_release", "kernel_version", "machine", "python", "python_implementation", "mpsim"} == set(facts)
    assert facts["kernel_release"] == platform.release() and facts["python"] == platform.python_version()
    assert facts["cpu_count"] == os.cpu_count() and 1 <= facts["usable_cpus"] <= facts["cpu_count"]
    assert facts["mpsim"] == __version__ and facts["date_utc"].endswith("+00:00")


def test_git_revision_is_the_checkouts_head_or_none_outside_git(tmp_path):
    revision = provenance.git_revision()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:   # an installed copy, not a checkout
        assert revision is None
    else:
        assert revision["commit"] == head.stdout.strip() and isinstance(revision["dirty"], bool)
    assert provenance.git_revision(tmp_path) is None


def test_short_revision_is_ten_digits_and_says_dirty():
    assert provenance.short_revision({"commit": "0123456789abcdef", "dirty": True}) == "0123456789-dirty"
    assert provenance.short_revision({"commit": "0123456789abcdef", "dirty": False}) == "0123456789"
    assert provenance.short_revision(None) is None


def test_every_recorded_result_takes_its_facts_from_here():
    """No second collector: the modules that record machine facts or the revision call provenance,
    and no module of the package but provenance.py collects them itself."""
    for module in ("mpsim/experiment/results.py", "mpsim/experiment/sweep/orchestrate.py",
                   "mpsim/experiment/sweep/store.py", "mpsim/bench/simulator.py", "mpsim/bench/sweep.py",
                   "mpsim/bench/kernel/__init__.py", "mpsim/testbed/probe.py"):
        assert "provenance" in (ROOT / module).read_text(), module
    for path in sorted((ROOT / "mpsim").rglob("*.py")):
        if path.name == "provenance.py":
            continue
        text = path.read_text()
        module = str(path.relative_to(ROOT))
        assert "platform.python_version()" not in text and "/proc/cpuinfo" not in text, module
        assert "def git_revision" not in text and "def _git_revision" not in text, module
