"""The catalogue filled: every built-in component registered, and lookups that need them all.

mpsim/proto/catalogue.py holds the registries and imports none of the components (they import it
to register themselves, at the bottom of the module that defines each one). This module sits above
both: importing it imports every built-in component module, so the registries it re-exports are
complete. Code that *reads* the catalogue (the scenario schema, the simulator, the truth table,
the testbed, the benchmarks) imports the registries from here; code that *adds* to it imports
mpsim/proto/catalogue.py. That keeps the imports one-way (tests/test_layering.py forbids cycles).

A new component module is added to :data:`BUILT_IN_MODULES` (or, for a signalling scheme,
dropped into mpsim/proto/schemes/, which imports every module in it); a component defined
elsewhere (a user's own, a test's toy) is registered by importing its module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The modules that register the built-in components: imported for that effect.
import mpsim.proto.convert  # noqa: F401  (PROXIES: convert)
import mpsim.proto.middlebox  # noqa: F401  (MIDDLEBOXES)
import mpsim.proto.mp_convert_proxy  # noqa: F401  (PROXIES: mp-convert)
import mpsim.proto.schemes  # noqa: F401  (SCHEMES: every module of the package)
import mpsim.proto.server  # noqa: F401  (SERVERS)
import mpsim.proto.socks5_proxy  # noqa: F401  (PROXIES: socks5)
from mpsim.proto.catalogue import MIDDLEBOXES, PROXIES, SCHEMES, SERVERS, Registry, UnknownComponentError
from mpsim.proto.proxies import DEFAULT_PROXY, Placement, ProxyEntry, ProxySettings
from mpsim.proto.tcp import IpAddress, Rng

#: The modules above, by name (for the docs and the test that every registry is filled by them).
BUILT_IN_MODULES = ("mpsim.proto.convert", "mpsim.proto.middlebox", "mpsim.proto.mp_convert_proxy",
                    "mpsim.proto.schemes", "mpsim.proto.server", "mpsim.proto.socks5_proxy")

__all__ = ["BUILT_IN_MODULES", "MIDDLEBOXES", "PROXIES", "SCHEMES", "SERVERS", "Registry",
           "UnknownComponentError", "build_proxy_host", "proxy_for_scheme", "DEFAULT_PROXY", "Placement",
           "ProxyEntry", "ProxySettings"]


def build_proxy_host(kind: str, name: str, addresses: Mapping[str, IpAddress], *, rng: Rng,
                     settings: ProxySettings) -> Any:
    """The host of proxy ``kind`` (a :data:`PROXIES` name) with the given interface addresses."""
    entry: ProxyEntry = PROXIES.get(kind)
    if settings.on_path and not entry.on_path:
        raise ValueError(f"proxy {kind!r} cannot sit on the path (placement on_path); "
                         f"those that can: {', '.join(n for n, e in PROXIES.items() if e.on_path)}")
    wanted = {"up", "down"} | ({"in"} if settings.on_path else set())
    if set(addresses) != wanted:
        raise ValueError(f"proxy {kind!r} needs the interfaces {sorted(wanted)}, got {sorted(addresses)}")
    return entry.create(name, dict(addresses), rng, settings)



def proxy_for_scheme(scheme: str, placement: Placement = Placement.BESIDE) -> str:
    """The PROXIES name a converter node runs for clients of ``scheme``: the proxy the scheme
    names (``DEFAULT_PROXY`` for one that names none); on the path, that proxy if it can sit
    there, else the first registered one that can (only an intercepting proxy works there)."""
    wanted = SCHEMES.get(scheme).proxy or DEFAULT_PROXY
    if placement is Placement.ON_PATH and not PROXIES.get(wanted).on_path:
        wanted = next((name for name, entry in PROXIES.items() if entry.on_path), wanted)
    return wanted
