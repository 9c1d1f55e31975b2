"""Kernel benchmarks on the namespace testbed (root only): ``python benchmarks/kernel.py fastpath|setup|model|all [--quick]``.

A thin entry point: the measurements live in :mod:`mpsim.bench.kernel` (``mpsim bench kernel``
runs the same). Writes ``benchmarks/results/kernel_<benchmark>.json``, ``.csv`` and ``.md`` (and
``kernel_model.png``) unless ``--out`` says elsewhere; docs/kernel-bench.md explains the figures.
"""

import sys
from pathlib import Path

from mpsim.bench.kernel import main

RESULTS_DIR = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(arg == "--out" or arg.startswith("--out=") for arg in argv):
        argv += ["--out", str(RESULTS_DIR)]
    sys.exit(main(argv, prog="benchmarks/kernel.py"))
