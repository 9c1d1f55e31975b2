"""Simulator speed, side by side with bare SimPy and ns.py: ``python benchmarks/simulator.py [--quick]``.

A thin entry point: the measurements live in :mod:`mpsim.bench.simulator` (``mpsim bench sim``
runs the same). Writes ``benchmarks/results/simulator.json`` and ``simulator.md`` unless
``--out`` says elsewhere. ns.py is optional: ``pip install -e .[bench]``.
"""

import sys
from pathlib import Path

from mpsim.bench.simulator import main

RESULTS_DIR = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(arg == "--out" or arg.startswith("--out=") for arg in argv):
        argv += ["--out", str(RESULTS_DIR)]
    sys.exit(main(argv))
