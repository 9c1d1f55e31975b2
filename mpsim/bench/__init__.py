"""Benchmark machinery behind ``benchmarks/`` and ``mpsim bench``: functions that measure and
return results (dicts and DataFrames) and a ``main(argv)`` per benchmark, so an installed mpsim
can run them too (e.g. :mod:`mpsim.bench.simulator`: simulator speed beside bare SimPy and ns.py).
"""
