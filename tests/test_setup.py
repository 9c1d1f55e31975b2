"""The set-up the README promises: `make run` installs what running needs and no test tools,
`make test` adds them, CI runs exactly `make test`, the README's examples write only into folders
that .gitignore covers, and the package metadata uses the SPDX license string (no setuptools
deprecation warning on install)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dry_run(target: str, tmp_path: Path) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # A venv path that does not exist: make shows every step it would take on a fresh machine.
    # Run by `make test` (as CI does), this make is a sub-make: without the parent's flags and with
    # --no-print-directory it prints only the commands, as on a user's terminal.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_run_installs_no_test_tools_and_make_test_does(tmp_path):
    run = dry_run("run", tmp_path)
    assert "pip install --quiet -e ." in run and "[test]" not in run and "-m pytest" not in run
    assert run.strip().splitlines()[-1].endswith("/bin/mpsim run")
    test = dry_run("test", tmp_path)
    assert "pip install --quiet -e '.[test]'" in test and test.strip().splitlines()[-1].endswith("-m pytest -q")


def test_ci_runs_exactly_make_test():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert lines[-1] == "make test"


def test_the_license_is_an_spdx_string():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a table is deprecated by setuptools (PEP 639)
    (setuptools,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=(\d+)", setuptools).group(1)) >= 77  # the first to read the string


def ignored_roots() -> list[str]:
    """The rooted folders .gitignore lists ("/out/" -> "out/")."""
    return [line.strip().lstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()
            if line.strip().startswith("/") and line.strip().endswith("/")]


def test_readme_examples_write_into_ignored_folders():
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        commands += [line.split("#")[0] for line in block.replace("\\\n", " ").splitlines() if "mpsim " in line]
    written = []
    for command in commands:
        words = shlex.split(command)
        for option, value in zip(words, words[1:]):
            if option in ("--out", "--png", "-o", "--output"):
                written.append(value)
    assert len(written) >= 6, written  # run --out, ladder --png, sweeps, plot -o
    roots = ignored_roots()
    outside = [path for path in written if not any(path.startswith(root) for root in roots)]
    assert not outside, f"README examples write outside the folders .gitignore covers ({roots}): {outside}"
