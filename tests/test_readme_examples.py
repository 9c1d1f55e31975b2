"""The README's examples stay true: its ``mpsim run``, ``ladder``, ``scenarios``, ``scenario`` and
``wire`` commands run as written (in a temporary directory, so their output folders land there),
and the ``--set`` examples in its prose load on the default scenario.

The sweep, plot, bench and converter commands are left to their own tests (they take minutes or
root). A ``run`` of a scenario with several runs gets ``--set runs=1`` appended, so that the main
job's twelve households do not cost the suite a minute: the keys, values and scenario are still
the README's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mpsim.cli import main
from mpsim.experiment import scenario

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = {"run", "ladder", "scenarios", "scenario", "wire"}


def _shell_lines(text: str) -> list[str]:
    """The command lines of the README's ```sh blocks, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def _mpsim_commands(text: str) -> list[list[str]]:
    commands = []
    for line in _shell_lines(text):
        words = shlex.split(line, comments=True)
        if words and words[0].endswith("bin/mpsim") and words[1:] and words[1] in QUICK:
            commands.append(words[1:])
    return commands


COMMANDS = _mpsim_commands(README.read_text())


def test_the_readme_has_the_examples_this_test_runs():
    kinds = {argv[0] for argv in COMMANDS}
    assert {"run", "scenarios", "wire", "scenario"} <= kinds, kinds
    assert sum(argv[:2] == ["wire", "decode"] for argv in COMMANDS) >= 4


def _quick(argv: list[str]) -> list[str]:
    if argv[0] != "run":
        return argv
    name = next((word for word in argv[1:] if not word.startswith("-")), "default")
    return argv + ["--set", "runs=1"] if scenario.load(name).base.runs > 1 else argv


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv)[:80] for argv in COMMANDS])
def test_a_readme_command_runs(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(_quick(argv))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.strip(), "the command printed nothing"


def test_the_capture_the_readme_opens_in_tshark_is_one_its_run_writes(tmp_path, monkeypatch, capsys):
    """The tshark example reads a capture that an earlier example writes, by its real name."""
    text = README.read_text()
    reads = [line for line in _shell_lines(text) if line.startswith("tshark ")]
    assert reads, "the README no longer opens a capture with tshark"
    monkeypatch.chdir(tmp_path)
    writers = [argv for argv in COMMANDS if argv[0] == "run" and "--pcap" in argv]
    assert writers, "no README example writes captures (run --pcap)"
    for argv in writers:
        assert main(_quick(argv)) == 0
    capsys.readouterr()
    for line in reads:
        words = shlex.split(line, comments=True)
        capture = words[words.index("-r") + 1]
        assert (tmp_path / capture).is_file(), f"{capture}: no README example writes it"


def test_the_set_examples_in_the_prose_load_on_the_default_scenario():
    # `KEY=VALUE` in backquotes, possibly wrapped over a line (`paths.lte.loss={model="bernoulli",\n loss_prob=0.01}`).
    examples = [" ".join(m.split()) for m in re.findall(r"`([a-z_]+(?:\.[A-Za-z0-9_]+)+=[^`]+)`", README.read_text())]
    assert len(examples) >= 3, examples
    for example in examples:
        scenario.load("default", [example])  # raises ScenarioError, naming the example, if it does not load
