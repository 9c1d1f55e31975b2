"""mpsim: design, simulate and validate MPTCP proxies (RFC 8803 transport converters).

Layers, importing only downward (docs/design.md section 2):
``mpsim.wire`` (bytes <-> frozen dataclasses), ``mpsim.proto`` (sans-I/O state machines),
``mpsim.sim`` (SimPy models), and the experiment layer (scenarios, sweeps, CLI).
"""

__version__ = "0.1.0"
