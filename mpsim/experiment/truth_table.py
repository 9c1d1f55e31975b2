"""Client scheme x middlebox x server -> outcome: every combination run on the real machines.

One small topology, run by the deterministic harness: a client behind an access link (where the
middlebox sits, in both directions), a router, a proxy (RFC 8803 converter, MP_CONVERT proxy or
SOCKS5 proxy, depending on the scheme; beside the router, or on the client's path for implicit
mode) and a server of the chosen kind. One-way delays are fixed
so that times convert exactly to round trips: client-router 10 ms, router-server 20 ms, router-proxy
0 ms, so the client-proxy RTT is 20 ms, the proxy-server RTT 40 ms and the client-server RTT 60 ms.

Each case runs one request (100 bytes up, 1000 bytes down) and reports the client's
:class:`~mpsim.proto.client.ConnectionRecord` plus the first-byte time in client-server RTTs.
``python -m mpsim.experiment.truth_table`` prints the whole table as Markdown (docs/truth-table.md is
that output).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from mpsim.proto.client import ClientHost, ClientPolicy, ConnectionRecord, Request, SignalAckedAsData
from mpsim.proto.convert import ConverterHost, ConverterPolicy, ConverterTiming
from mpsim.proto.harness import Harness, PacketFilter, Router
from mpsim.proto.middlebox import (
    BASIC_OPTION_KINDS,
    PASS,
    DropUnknownOptionSyns,
    MirrorMpCapable,
    Nat,
    Policy,
    SegmentClass,
    SequenceRewriter,
    SplitSegments,
    StripOptions,
    StripPayload,
    drop_rsts,
    drop_syns_with_data,
)
from mpsim.proto.mp_convert_proxy import MpConvertProxyHost, MpConvertProxyPolicy
from mpsim.proto.mptcp import MptcpClientExtension, MptcpServerExtension
from mpsim.proto.server import ResponderApp, ServerHost, ServerKind
from mpsim.proto.socks5_proxy import Socks5ProxyHost, Socks5ProxyPolicy
from mpsim.wire.options import TcpOptionKind

CLIENT = IPv4Address("198.18.0.1")
PROXY_UP = IPv4Address("198.18.1.1")
PROXY_IN = IPv4Address("198.18.4.1")  # an on-path proxy's client-side interface
PROXY_DOWN = IPv4Address("198.18.2.1")
SERVER = IPv4Address("198.18.3.1")
NAT_PUBLIC = IPv4Address("198.18.0.200")  # inside the client's prefix, so the converter still serves it
PROXY_PORT = 1234
SERVER_PORT = 80
ACCESS_DELAY_S = 0.010
SERVER_DELAY_S = 0.020
CLIENT_SERVER_RTT_S = 2 * (ACCESS_DELAY_S + SERVER_DELAY_S)
REQUEST = Request(SERVER, SERVER_PORT, request_size_bytes=100, response_size_bytes=1000)


@dataclass(frozen=True, slots=True)
class Middlebox:
    """A named middlebox for the access link: a policy per direction."""

    name: str
    description: str
    build: Callable[[], tuple[PacketFilter, PacketFilter]]


def _both(policy_factory: Callable[[], Policy]) -> Callable[[], tuple[PacketFilter, PacketFilter]]:
    return lambda: (policy_factory(), policy_factory())


def _up(policy_factory: Callable[[], Policy]) -> Callable[[], tuple[PacketFilter, PacketFilter]]:
    return lambda: (policy_factory(), PASS)


def _two_way(box_factory: Callable[[], object]) -> Callable[[], tuple[PacketFilter, PacketFilter]]:
    def build() -> tuple[PacketFilter, PacketFilter]:
        box = box_factory()
        return box.forward, box.backward

    return build


# Two-way boxes draw from their own generator: the same seed gives the same table.
MIDDLEBOX_SEED = 7

MIDDLEBOXES = (
    Middlebox("none", "a clean path", lambda: (PASS, PASS)),
    Middlebox("strip-mptcp", "removes MPTCP options from every segment, both ways",
              _both(lambda: StripOptions({TcpOptionKind.MPTCP}))),
    Middlebox("strip-mptcp-synack", "removes MPTCP options from SYN-ACKs",
              lambda: (PASS, StripOptions({TcpOptionKind.MPTCP}, classes={SegmentClass.SYN_ACK}))),
    Middlebox("drop-unknown-option-syns", "drops SYNs carrying options it does not know (MPTCP)",
              _up(lambda: DropUnknownOptionSyns(BASIC_OPTION_KINDS))),
    Middlebox("drop-syn-data", "drops SYNs that carry data", _up(drop_syns_with_data)),
    Middlebox("strip-syn-payload", "delivers SYNs without their data", _up(lambda: StripPayload({SegmentClass.SYN}))),
    Middlebox("drop-rst", "drops RSTs both ways", _both(drop_rsts)),
    Middlebox("seq-rewrite", "shifts sequence numbers by a random offset per flow (and back)",
              _two_way(lambda: SequenceRewriter(random.Random(MIDDLEBOX_SEED)))),
    Middlebox("nat", "translates the client's address and port (a CGN)",
              _two_way(lambda: Nat([NAT_PUBLIC]))),
    Middlebox("split-data", "splits every data segment in two, both ways", _both(SplitSegments)),
    Middlebox("mirror-mpc", "copies the SYN's MP_CAPABLE into a SYN-ACK that has none (with a key)",
              _two_way(lambda: MirrorMpCapable(random.Random(MIDDLEBOX_SEED)))),
)

SERVERS = (ServerKind.LEGACY_DROP, ServerKind.LEGACY_QUEUE, ServerKind.TFO, ServerKind.MPTCP_V1,
           ServerKind.MPTCP_V0, ServerKind.CLOSED, ServerKind.UNREACHABLE)


class Placement(enum.Enum):
    """Where the proxy sits: beside the router (the client addresses it), or on the client's path
    (an implicit MP_CONVERT proxy intercepting SYNs addressed to the server)."""

    BESIDE = "beside"
    ON_PATH = "on_path"


@dataclass(frozen=True, slots=True)
class Variant:
    """A client configuration the table compares: a scheme with its policy, the proxy's timing and
    where the proxy sits."""

    label: str
    policy: ClientPolicy
    timing: ConverterTiming = ConverterTiming.RFC
    placement: Placement = Placement.BESIDE


VARIANTS = (
    Variant("plain", ClientPolicy(scheme="plain")),
    Variant("mptcp", ClientPolicy(scheme="mptcp")),
    Variant("convert", ClientPolicy(scheme="convert")),
    Variant("convert (socket timing)", ClientPolicy(scheme="convert"), ConverterTiming.SOCKET),
    Variant("mp-convert-option", ClientPolicy(scheme="mp-convert-option")),
    Variant("mp-convert-option (implicit, proxy on path)",
            ClientPolicy(scheme="mp-convert-option", implicit=True), placement=Placement.ON_PATH),
    Variant("syn-payload-eol", ClientPolicy(scheme="syn-payload-eol")),
    Variant("syn-payload-eol (implicit, no proxy on path)",
            ClientPolicy(scheme="syn-payload-eol", implicit=True)),
    Variant("syn-payload-eol (implicit, no proxy, continue)",
            ClientPolicy(scheme="syn-payload-eol", implicit=True,
                         signal_acked_as_data=SignalAckedAsData.CONTINUE)),
    Variant("socks5", ClientPolicy(scheme="socks5")),
)


@dataclass(frozen=True, slots=True)
class CaseResult:
    label: str
    scheme: str
    middlebox: str
    server: ServerKind
    record: ConnectionRecord | None

    @property
    def first_byte_rtts(self) -> float | None:
        """First-byte time in client-server RTTs (1 RTT handshake + 1 RTT request = 2.0 for TCP)."""
        t = None if self.record is None else self.record.first_byte_time_s
        return None if t is None else round(t / CLIENT_SERVER_RTT_S, 3)


def _server(kind: ServerKind, rng: random.Random) -> ServerHost:
    app = ResponderApp(REQUEST.response_size_bytes, request_size_bytes=REQUEST.request_size_bytes)
    return ServerHost("server", SERVER, kind, rng=rng, app=app, ports=(SERVER_PORT,))


def _proxy(scheme: str, rng: random.Random, timing: ConverterTiming, placement: Placement):
    """The proxy the scheme talks to: an RFC 8803 converter unless the scheme needs another."""
    if placement is Placement.ON_PATH:
        return MpConvertProxyHost("proxy", {"in": PROXY_IN, "up": PROXY_UP, "down": PROXY_DOWN}, rng=rng,
                                  client_interface="in", server_interfaces=("down",),
                                  policy=MpConvertProxyPolicy(implicit=True, timing=timing))
    interfaces = {"up": PROXY_UP, "down": PROXY_DOWN}
    if scheme in ("mp-convert-option", "syn-payload-eol"):
        return MpConvertProxyHost("proxy", interfaces, rng=rng, client_interface="up", server_interfaces=("down",),
                                  policy=MpConvertProxyPolicy(explicit_ports=(PROXY_PORT,), timing=timing))
    if scheme == "socks5":
        return Socks5ProxyHost("proxy", interfaces, rng=rng, server_interfaces=("down",),
                               policy=Socks5ProxyPolicy(port=PROXY_PORT))
    mib = None

    def upstream(packet):
        return (MptcpServerExtension(rng=rng, mib=mib),)

    def downstream(request):
        return (MptcpClientExtension(rng=rng, mib=mib),) if request.mptcp else ()

    host = ConverterHost("proxy", interfaces, rng=rng, convert_port=PROXY_PORT, server_interfaces=("down",),
                         policy=ConverterPolicy(allowed_client_prefixes=("198.18.0.0/24",), timing=timing),
                         upstream_extensions=upstream, downstream_extensions=downstream)
    mib = host.mib
    return host


def build(scheme: str, middlebox: Middlebox, server_kind: ServerKind, *, seed: int = 1,
          client_policy: ClientPolicy | None = None, timing: ConverterTiming = ConverterTiming.RFC,
          placement: Placement = Placement.BESIDE) -> tuple[Harness, ClientHost]:
    """The topology for one case; the caller runs it."""
    rng = random.Random(seed)
    harness = Harness()
    policy = client_policy or ClientPolicy(scheme=scheme)
    client = harness.add("client", ClientHost("client", {"eth0": CLIENT}, rng=rng, policy=policy,
                                              proxies=((PROXY_UP, PROXY_PORT),)))
    routes = {"c": ["198.18.0.0/24"], "p_up": ["198.18.1.0/24"], "p_down": ["198.18.2.0/24"], "s": ["198.18.3.0/24"]}
    if placement is Placement.ON_PATH:
        routes["c"] += routes.pop("p_up")  # the proxy's client side sits behind port "c" with the client
    harness.add("router", Router(routes))
    harness.add("proxy", _proxy(scheme, rng, timing, placement))
    harness.add("server", _server(server_kind, rng))
    up, down = middlebox.build()
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


def run_variant(variant: Variant, middlebox: Middlebox, server_kind: ServerKind, *, seed: int = 1) -> CaseResult:
    """One request through one case."""
    harness, client = build(variant.policy.scheme, middlebox, server_kind, seed=seed, client_policy=variant.policy,
                            timing=variant.timing, placement=variant.placement)
    client.connect(REQUEST, 0.0)
    harness.run(300.0)
    return CaseResult(variant.label, variant.policy.scheme, middlebox.name, server_kind,
                      client.finished[0] if client.finished else None)


def all_cases(seed: int = 1) -> list[CaseResult]:
    """Every variant x middlebox x server, in table order."""
    return [run_variant(v, m, s, seed=seed) for v in VARIANTS for m in MIDDLEBOXES for s in SERVERS]
