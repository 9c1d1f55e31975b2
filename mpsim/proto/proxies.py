"""Building a proxy host by name: the one place a converter, MP_CONVERT or SOCKS5 host is made.

Each proxy module registers an entry in :data:`mpsim.proto.catalogue.PROXIES` at its bottom
(RFC 8803 converter: mpsim/proto/convert.py, MP_CONVERT: mpsim/proto/mp_convert_proxy.py, SOCKS5:
mpsim/proto/socks5_proxy.py); the simulator, the truth table and the benchmarks all call
:func:`build_proxy_host` with the same :class:`ProxySettings`, so a proxy is wired one way
everywhere (its MPTCP extensions included).

Interfaces of a proxy host: ``up`` faces the router (and the client when beside it), ``down`` the
server side; on the path (:attr:`Placement.ON_PATH`) ``in`` faces the client and every packet of
the client's access path crosses the proxy.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mpsim.proto.catalogue import PROXIES, SCHEMES
from mpsim.proto.relay import ConverterTiming
from mpsim.proto.tcp import IpAddress, Rng


class Placement(enum.Enum):
    """Where the proxy sits."""

    BESIDE = "beside"  # beside the access router: the client addresses it
    ON_PATH = "on_path"  # on the client's access path (implicit MP_CONVERT interception)


@dataclass(frozen=True, kw_only=True)
class ProxySettings:
    """What every proxy is told; a proxy uses the knobs that apply to it. ``None``: the proxy's
    own policy default."""

    port: int
    placement: Placement = Placement.BESIDE
    client_prefixes: tuple[str, ...] = ()  # the converter's internal realm (RFC 8803 9.1)
    timing: ConverterTiming = ConverterTiming.RFC
    require_cookie: bool | None = None
    max_sessions: int | None = None
    connect_timeout_s: float | None = None
    convert_mptcp: bool = False  # the RFC 8803 converter also offers MPTCP towards servers

    @property
    def on_path(self) -> bool:
        return self.placement is Placement.ON_PATH


@dataclass(frozen=True, slots=True)
class ProxyEntry:
    """A proxy by name: ``create(name, addresses, rng, settings)`` builds its host.
    ``addresses`` maps the interfaces ``up``, ``down`` and, on the path, ``in`` to addresses.
    ``on_path`` says whether it can sit on the client's path; ``title`` names it in messages."""

    name: str
    title: str
    description: str
    create: Callable[[str, Mapping[str, IpAddress], Rng, ProxySettings], Any]
    on_path: bool = False


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


#: What a converter node runs for a scheme that talks to no proxy (plain, mptcp): the converter.
DEFAULT_PROXY = "convert"


def proxy_for_scheme(scheme: str, placement: Placement = Placement.BESIDE) -> str:
    """The PROXIES name a converter node runs for clients of ``scheme``: the proxy the scheme
    names (``DEFAULT_PROXY`` for one that names none); on the path, that proxy if it can sit
    there, else the first registered one that can (only an intercepting proxy works there)."""
    wanted = SCHEMES.get(scheme).proxy or DEFAULT_PROXY
    if placement is Placement.ON_PATH and not PROXIES.get(wanted).on_path:
        wanted = next((name for name, entry in PROXIES.items() if entry.on_path), wanted)
    return wanted
