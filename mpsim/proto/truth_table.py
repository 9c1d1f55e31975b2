"""Client scheme x middlebox x server -> outcome: every combination run on the real machines.

One small topology, run by the deterministic harness: a client behind an access link (where the
middlebox sits, in both directions), a router, a proxy (RFC 8803 converter, MP_CONVERT proxy or
SOCKS5 proxy, depending on the scheme; beside the router, or on the client's path for implicit
mode) and a server of the chosen kind. One-way delays are fixed
so that times convert exactly to round trips: client-router 10 ms, router-server 20 ms, router-proxy
0 ms, so the client-proxy RTT is 20 ms, the proxy-server RTT 40 ms and the client-server RTT 60 ms.

Every component comes from the catalogue (mpsim/proto/catalogue.py), so a component registered
by a new module appears here with no edit: the client rows are the variants each registered
scheme declares (``SignallingScheme.truth_table_variants``, ordered by the schemes'
``truth_table_rank``, then in registration order), each against a clean path ("none"), then every
registered middlebox, against every registered server.

Randomness comes in, as everywhere in proto: every function that builds or runs cases takes
``rngs``, a function from a seed to a generator (``random.Random`` in practice); a case's hosts
share ``rngs(seed)`` and a box that draws gets ``rngs(MIDDLEBOX_SEED)``, so a seed gives one table.

Each case runs one request (100 bytes up, 1000 bytes down) and reports the client's
:class:`~mpsim.proto.client.ConnectionRecord` plus the first-byte time in client-server RTTs.
``python -m mpsim.experiment.docgen`` writes the whole table to docs/truth-table.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from mpsim.proto.components import MIDDLEBOXES, SCHEMES, SERVERS, Placement, ProxySettings, build_proxy_host, proxy_for_scheme
from mpsim.proto.client import ClientHost, ClientPolicy, ConnectionRecord, Request
from mpsim.proto.harness import Harness, Router
from mpsim.proto.middlebox import PASS, BuiltBox, Site
from mpsim.proto.relay import ConverterTiming
from mpsim.proto.schemes import SignallingScheme, TableVariant
from mpsim.proto.server import ResponderApp, ServerHost, ServerKind
from mpsim.proto.tcp import Rng

#: A source of seeded generators: seed -> generator (``random.Random``).
RngSource = Callable[[int], Rng]

CLIENT = IPv4Address("198.18.0.1")
CLIENT_NETWORK = IPv4Network("198.18.0.0/24")  # a NAT takes its public address from it (host .200)
PROXY_UP = IPv4Address("198.18.1.1")
PROXY_IN = IPv4Address("198.18.4.1")  # an on-path proxy's client-side interface
PROXY_DOWN = IPv4Address("198.18.2.1")
SERVER = IPv4Address("198.18.3.1")
PROXY_PORT = 1234
SERVER_PORT = 80
ACCESS_DELAY_S = 0.010
SERVER_DELAY_S = 0.020
CLIENT_SERVER_RTT_S = 2 * (ACCESS_DELAY_S + SERVER_DELAY_S)
REQUEST = Request(SERVER, SERVER_PORT, request_size_bytes=100, response_size_bytes=1000)

#: The clean path's name in the table: no middlebox on the access link.
NO_MIDDLEBOX = "none"
# Boxes that draw (sequence offsets, keys) get their own generator: the same seed, the same table.
MIDDLEBOX_SEED = 7


def table_middleboxes() -> tuple[str, ...]:
    """The table's middlebox column: a clean path, then every registered middlebox."""
    return (NO_MIDDLEBOX, *MIDDLEBOXES.names())


def table_servers() -> tuple[ServerKind | str, ...]:
    """The table's server column: every registered server (ServerKind members as such)."""
    kinds = {kind.value: kind for kind in ServerKind}
    return tuple(kinds.get(name, name) for name in SERVERS.names())


def middlebox_description(name: str) -> str:
    return "a clean path" if name == NO_MIDDLEBOX else MIDDLEBOXES.get(name).description


def access_box(name: str, rngs: RngSource) -> BuiltBox:
    """A fresh box of a registered name (or "none") for the client's access link."""
    if name == NO_MIDDLEBOX:
        return BuiltBox(PASS, PASS, ())
    return MIDDLEBOXES.get(name).build(rngs(MIDDLEBOX_SEED), Site(CLIENT_NETWORK))


@dataclass(frozen=True, slots=True)
class Variant:
    """A client configuration the table compares: a scheme with its policy, the proxy's timing and
    where the proxy sits."""

    label: str
    policy: ClientPolicy
    timing: ConverterTiming = ConverterTiming.RFC
    placement: Placement = Placement.BESIDE


def _variant(scheme: SignallingScheme, declared: TableVariant) -> Variant:
    try:
        policy = ClientPolicy(scheme=scheme.name, **declared.policy)
    except TypeError as error:  # a field ClientPolicy does not have
        raise ValueError(f"scheme {scheme.name!r}, truth-table variant {declared.label!r}: "
                         f"bad ClientPolicy fields {sorted(declared.policy)}: {error}") from None
    return Variant(declared.label, policy, declared.timing, declared.placement)


def variants() -> tuple[Variant, ...]:
    """The table's client rows, from the schemes registered now: each scheme's declared variants
    (:meth:`~mpsim.proto.schemes.SignallingScheme.truth_table_variants`), the schemes ordered by
    ``truth_table_rank``, then in registration order."""
    ranked = sorted(enumerate(SCHEMES.items()), key=lambda item: (item[1][1].truth_table_rank, item[0]))
    rows = tuple(_variant(scheme, declared) for _, (_, scheme) in ranked for declared in scheme.truth_table_variants())
    labels = [v.label for v in rows]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"truth-table variant labels declared by more than one scheme: {', '.join(repeated)}")
    return rows


def __getattr__(name: str) -> tuple[Variant, ...]:
    # ``VARIANTS``, for the callers that read a tuple: the variants of the schemes registered at the
    # moment it is read (a fixed tuple would miss a scheme registered after this module's import).
    if name == "VARIANTS":
        return variants()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class CaseResult:
    label: str
    scheme: str
    middlebox: str
    server: ServerKind | str
    record: ConnectionRecord | None

    @property
    def first_byte_rtts(self) -> float | None:
        """First-byte time in client-server RTTs (1 RTT handshake + 1 RTT request = 2.0 for TCP)."""
        t = None if self.record is None else self.record.first_byte_time_s
        return None if t is None else round(t / CLIENT_SERVER_RTT_S, 3)


def _server_name(kind: ServerKind | str) -> str:
    return kind.value if isinstance(kind, ServerKind) else kind


def _server(kind: ServerKind | str, rng: Rng) -> ServerHost:
    app = ResponderApp(REQUEST.response_size_bytes, request_size_bytes=REQUEST.request_size_bytes)
    return SERVERS.get(_server_name(kind)).create("server", SERVER, rng, app, (SERVER_PORT,))


def _proxy(scheme: str, rng: Rng, timing: ConverterTiming, placement: Placement):
    """The proxy the scheme talks to (an RFC 8803 converter unless the scheme needs another)."""
    addresses = {"up": PROXY_UP, "down": PROXY_DOWN} | ({"in": PROXY_IN} if placement is Placement.ON_PATH else {})
    settings = ProxySettings(port=PROXY_PORT, placement=placement, client_prefixes=(str(CLIENT_NETWORK),),
                             timing=timing)
    return build_proxy_host(proxy_for_scheme(scheme, placement), "proxy", addresses, rng=rng, settings=settings)


def build(scheme: str, middlebox: str, server_kind: ServerKind | str, *, rngs: RngSource, seed: int = 1,
          client_policy: ClientPolicy | None = None, timing: ConverterTiming = ConverterTiming.RFC,
          placement: Placement = Placement.BESIDE) -> tuple[Harness, ClientHost]:
    """The topology for one case; the caller runs it. ``middlebox``: a registered name or "none"."""
    rng = rngs(seed)
    harness = Harness()
    policy = client_policy or ClientPolicy(scheme=scheme)
    client = harness.add("client", ClientHost("client", {"eth0": CLIENT}, rng=rng, policy=policy,
                                              proxies=((PROXY_UP, PROXY_PORT),)))
    routes = {"c": [str(CLIENT_NETWORK)], "p_up": ["198.18.1.0/24"], "p_down": ["198.18.2.0/24"], "s": ["198.18.3.0/24"]}
    if placement is Placement.ON_PATH:
        routes["c"] += routes.pop("p_up")  # the proxy's client side sits behind port "c" with the client
    harness.add("router", Router(routes))
    harness.add("proxy", _proxy(scheme, rng, timing, placement))
    harness.add("server", _server(server_kind, rng))
    up, down, _ = access_box(middlebox, rngs)
    if placement is Placement.ON_PATH:
        # client - access link - proxy "in" | proxy "up" - router: every packet crosses the proxy.
        harness.link("client", "eth0", "proxy", "in", ACCESS_DELAY_S, a_to_b=[up], b_to_a=[down])
        harness.link("proxy", "up", "router", "c", 0.0)
    else:
        harness.link("client", "eth0", "router", "c", ACCESS_DELAY_S, a_to_b=[up], b_to_a=[down])
        harness.link("proxy", "up", "router", "p_up", 0.0)
    harness.link("proxy", "down", "router", "p_down", 0.0)
    harness.link("server", "eth0", "router", "s", SERVER_DELAY_S)
    return harness, client


def run_variant(variant: Variant, middlebox: str, server_kind: ServerKind | str, *, rngs: RngSource,
                seed: int = 1) -> CaseResult:
    """One request through one case."""
    harness, client = build(variant.policy.scheme, middlebox, server_kind, rngs=rngs, seed=seed,
                            client_policy=variant.policy, timing=variant.timing, placement=variant.placement)
    client.connect(REQUEST, 0.0)
    harness.run(300.0)
    return CaseResult(variant.label, variant.policy.scheme, middlebox, server_kind,
                      client.finished[0] if client.finished else None)


def all_cases(*, rngs: RngSource, seed: int = 1) -> list[CaseResult]:
    """Every variant x middlebox x server, in table order."""
    return [run_variant(v, m, s, rngs=rngs, seed=seed)
            for v in variants() for m in table_middleboxes() for s in table_servers()]
