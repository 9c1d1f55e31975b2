"""What a proxy entry is: the settings every proxy host is built with, and where it sits.

Each proxy module registers a :class:`ProxyEntry` in :data:`mpsim.proto.catalogue.PROXIES` at its
bottom (RFC 8803 converter: mpsim/proto/convert.py, MP_CONVERT: mpsim/proto/mp_convert_proxy.py,
SOCKS5: mpsim/proto/socks5_proxy.py); the simulator, the truth table and the benchmarks all build
one through :func:`mpsim.proto.components.build_proxy_host` with the same :class:`ProxySettings`,
so a proxy is wired one way everywhere (its MPTCP extensions included). This module only defines
the types: it looks nothing up, so the proxy modules can import it.

Interfaces of a proxy host: ``up`` faces the router (and the client when beside it), ``down`` the
server side; on the path (:attr:`Placement.ON_PATH`) ``in`` faces the client and every packet of
the client's access path crosses the proxy.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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


#: What a converter node runs for a scheme that talks to no proxy (plain, mptcp): the converter.
DEFAULT_PROXY = "convert"
