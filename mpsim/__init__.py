"""mpsim: design, simulate and validate MPTCP proxies (RFC 8803 transport converters).

Layers, importing only downward (docs/design.md section 2):
``mpsim.wire`` (bytes <-> frozen dataclasses), ``mpsim.proto`` (sans-I/O state machines),
``mpsim.sim`` (SimPy models), and the experiment layer (scenarios, sweeps, CLI).

The Python API (docs/api.md) is reached from here: ``mpsim.load``, ``mpsim.run``, ``mpsim.sweep``,
``mpsim.open_results``, ``mpsim.summarize``, ``mpsim.samples``, ``mpsim.plot``. They live in
:mod:`mpsim.api` (the top of the stack, beside the CLI) and are imported on first use, so that
``import mpsim.wire`` loads no simulator, pandas or matplotlib.
"""

__version__ = "0.1.0"

#: The names of the Python API, each an attribute of :mod:`mpsim.api`.
API = ("ApiError", "RunResults", "SweepResults", "confidence_interval", "load", "open_results", "plot", "run",
       "samples", "summarize", "sweep", "toml_value", "wilson_interval")


def __getattr__(name: str):
    if name in API:
        from mpsim import api  # noqa: PLC0415 - on first use only (see the module doc)

        return getattr(api, name)
    raise AttributeError(f"module 'mpsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
