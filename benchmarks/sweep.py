"""Sweep scaling, one worker against every core and a Dask LocalCluster: ``python benchmarks/sweep.py [--quick]``.

A thin entry point: the measurements live in :mod:`mpsim.bench.sweep`. Writes
``benchmarks/results/sweep.json`` and ``sweep.md`` unless ``--out`` says elsewhere.
"""

import sys
from pathlib import Path

from mpsim.bench.sweep import main

RESULTS_DIR = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(arg == "--out" or arg.startswith("--out=") for arg in argv):
        argv += ["--out", str(RESULTS_DIR)]
    sys.exit(main(argv))
