"""The signalling schemes, one module each, registered in :data:`mpsim.proto.catalogue.SCHEMES`.

Importing this package imports every module in it, and each module registers its scheme: the six
the project models first, in the order the tables show them (docs/design.md section 4), then any
other module of the package in name order. So a new scheme is one new module here and nothing
else (docs/design.md section 9). The interface is :mod:`mpsim.proto.schemes.base`, which also
holds what the client's lifecycle and the schemes share (the :class:`Attempt` record, the
:data:`Proxy` address, :class:`SignalAckedAsData`) and the protocols naming what a scheme may use
of the client (:class:`SchemeLifecycle`): the client imports this package, never the reverse.
"""

from __future__ import annotations

import importlib
import pkgutil

from mpsim.proto.schemes.base import (
    Attempt,
    Proxy,
    SchemeHost,
    SchemeLifecycle,
    SchemePolicy,
    SchemeRequest,
    SchemeSyn,
    SignalAckedAsData,
    SignallingScheme,
    SynAckJudge,
    TableVariant,
    register,
)

__all__ = ["BUILT_IN", "Attempt", "Proxy", "SchemeHost", "SchemeLifecycle", "SchemePolicy", "SchemeRequest",
           "SchemeSyn", "SignalAckedAsData", "SignallingScheme", "SynAckJudge", "TableVariant", "load_schemes",
           "register"]

#: The built-in schemes' modules, in registration order.
BUILT_IN = ("plain", "mptcp", "mp_convert_option", "syn_payload_eol", "convert", "socks5")


def load_schemes() -> tuple[str, ...]:
    """Import every scheme module of this package (the built-in ones first); returns the module
    names. Importing a module again does nothing, so this may be called more than once."""
    others = sorted(m.name for m in pkgutil.iter_modules(__path__)
                    if m.name not in BUILT_IN and m.name != "base" and not m.name.startswith("_"))
    names = (*BUILT_IN, *others)
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


load_schemes()
