"""The optional compiled build (`make fast`, docs/sim.md "Performance") gives the same results bit
for bit: tests/golden, run in a fresh interpreter that imports mpsim from build/fast.

Skipped when the build is absent (pure Python is the one required way to run: CI and a fresh
clone have no build/fast). A build whose Python sources differ from the repository's is stale:
that fails, naming the files, since its results would say nothing about the code under test.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST_DIR = ROOT / "build" / "fast"
#: The modules the Makefile's FAST_MODULES compiles.
COMPILED = ("mpsim.wire.segment", "mpsim.proto.seqnum", "mpsim.proto.tcp", "mpsim.proto.host",
            "mpsim.proto.mptcp", "mpsim.proto.relay", "mpsim.proto.client", "mpsim.proto.server",
            "mpsim.proto.convert", "mpsim.live.sockets", "mpsim.live.relay", "mpsim.live.converter")


def _compiled_modules_present() -> bool:
    return all(list((FAST_DIR / module.replace(".", "/")).parent.glob(module.rsplit(".", 1)[1] + ".*.so"))
               for module in COMPILED)


def _stale_sources() -> list[str]:
    """Python files of the package whose build/fast copy differs from the repository's, or is missing."""
    stale = []
    for source in sorted((ROOT / "mpsim").rglob("*.py")):
        relative = source.relative_to(ROOT)
        copy = FAST_DIR / relative
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            stale.append(str(relative))
    return stale


def test_makefile_compiles_the_modules_this_test_checks():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    text = makefile.split("FAST_MODULES :=", 1)[1].replace("\\\n", " ").split("\n", 1)[0]
    listed = tuple(path[: -len(".py")].replace("/", ".") for path in text.split())
    assert listed == COMPILED


@pytest.mark.skipif(not _compiled_modules_present(), reason="no compiled build in build/fast (`make fast`)")
def test_compiled_build_reproduces_the_goldens():
    stale = _stale_sources()
    assert not stale, f"build/fast is stale (run `make fast` again): {', '.join(stale[:5])}"
    # -P: the repository root (the working directory) must not shadow build/fast on sys.path.
    program = (
        "import importlib, sys, pytest\n"
        f"for name in {COMPILED!r}:\n"
        "    path = importlib.import_module(name).__file__\n"
        "    if not path.endswith('.so'):\n"
        "        sys.exit(f'{name} is not compiled: {path}')\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/golden']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(FAST_DIR)}
    done = subprocess.run([sys.executable, "-P", "-c", program], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, f"tests/golden with the compiled build:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"


@pytest.mark.skipif(not _compiled_modules_present(), reason="no compiled build in build/fast (`make fast`)")
def test_compiled_converter_daemon_passes_the_live_tests():
    """The daemon's hot modules compiled (mpsim.live.*): its shortcuts against the general paths,
    the session memos, and the daemon itself on real sockets (those need root: they skip without
    it, as in the pure-Python run). The daemons the live tests start import the compiled build too
    (tests/live/__init__.py starts them with the tests' own package)."""
    stale = _stale_sources()
    assert not stale, f"build/fast is stale (run `make fast` again): {', '.join(stale[:5])}"
    program = (
        "import importlib, sys, pytest\n"
        "for name in ('mpsim.live.converter', 'mpsim.live.relay', 'mpsim.proto.convert'):\n"
        "    path = importlib.import_module(name).__file__\n"
        "    if not path.endswith('.so'):\n"
        "        sys.exit(f'{name} is not compiled: {path}')\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/live/test_hot_path.py',\n"
        "                      'tests/proto/test_convert_memo.py', 'tests/live/test_converter.py']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(FAST_DIR)}
    done = subprocess.run([sys.executable, "-P", "-c", program], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, f"live tests with the compiled build:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
