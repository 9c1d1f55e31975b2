"""Scenario files: the named TOML files in ``models/`` that users read, edit and run.

A scenario is one TOML document. Its tables are the parts of a simulation (the schema below, one
frozen dataclass per table): the ``client`` and its signalling scheme, the ``converter`` (the
proxy), the ``server``, the client's access ``paths`` (each a network with its own rates, delay,
loss and middleboxes), the ``middlebox_mix`` drawn per network at each attachment, the
``workload`` (connection arrivals), bulk ``transfers``, timed ``events`` (reboot, new network, new
proxy, converter outages, TFO switched on or off) and ``variants`` (named partial scenarios merged
over the base one, to compare schemes or orderings side by side).

Loading is strict, because a misspelt key that is silently ignored gives a plausible and wrong
result: every key must be in the schema (an unknown one is an error with a did-you-mean
suggestion), every value must have the schema's type and lie in its range, and each error is one
line naming the file (or the ``--set`` argument), the dotted key and what was expected::

    models/default.toml: client.schem: unknown key (did you mean client.scheme?)
    --set client.proxy_syn_retries=-1: client.proxy_syn_retries: expected an integer >= 0, got -1

``--set KEY=VALUE`` overrides any value by its dotted key (list items by index:
``transfers.0.size_bytes=1e6`` is refused as a float, ``transfers.0.size_bytes=1000000`` works). The
VALUE is read as a TOML value (``3``, ``2.5``, ``true``, ``["a", "b"]``, ``{model = "none"}``); what
does not parse as TOML is taken as a string, so ``client.scheme=convert`` needs no quotes, and a
list of names may be written ``a,b``. Overrides apply to every variant too (they win over it).

Components are named as the catalogue registers them (mpsim/proto/catalogue.py: middleboxes,
proxies, servers, schemes; mpsim/sim/congestion.py: congestion controls); a name is checked
against its registry when the scenario is loaded, so a newly registered component needs no edit
here (docs/design.md section 10).

Defaults come from the proto layer's own policy defaults (``ClientPolicy()``, ``TcpPolicy()``, ...),
so a scenario that leaves a knob out gets exactly what the machines do by default.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import math
import random
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from mpsim.errors import MpsimError
from mpsim.proto.cache import CachePolicy
from mpsim.proto.components import MIDDLEBOXES, PROXIES, SCHEMES, SERVERS, Placement, Registry, proxy_for_scheme
from mpsim.proto.client import ClientPolicy, FallbackTarget, SignalAckedAsData
from mpsim.proto.convert import ConverterPolicy
from mpsim.proto.mptcp import MP_CAPABLE_ACK_FORMS, MptcpPolicy
from mpsim.proto.relay import ConverterTiming
from mpsim.proto.server import ServerKind
from mpsim.proto.tcp import TcpPolicy
from mpsim.sim.congestion import CONGESTION_CONTROLS, LINUX_HZ, check_kernel_hz
from mpsim.sim.cpu import DEFAULT_RELAY_CPU_S_PER_GB, DEFAULT_SETUP_S
from mpsim.sim.loss import LossSpecError, loss_from_spec
from mpsim.sim.transfer import DEFAULT_RCV_BUF_BYTES, DEFAULT_SND_BUF_BYTES

#: Where named scenarios live: the repository's models/ directory, next to the package.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
#: Access networks a client may have (each gets a /24 of its own in the simulation).
MAX_PATHS = 16
#: Keys a variant may not set: they belong to the whole scenario.
VARIANT_FIXED_KEYS = ("variants", "description", "runs", "seed")
#: The variant name of a scenario that has no [variants] table.
BASE_VARIANT = "base"
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: The deepest nesting of arrays and tables a scenario (file, --set or --grid value) may have: real
#: ones use a handful of levels, and tomllib recurses (a few hundred levels end in RecursionError).
MAX_NESTING = 32
#: workload.max_requests: the default bound on requests per run, and the most it may be raised to
#: (each request keeps a connection record and its machines' state until the run ends).
MAX_REQUESTS_PER_RUN = 100_000
MAX_REQUESTS_PER_RUN_LIMIT = 10_000_000


class ScenarioError(MpsimError):
    """A scenario that cannot be loaded: ``source`` (file or --set argument), ``key``, ``expected``."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source, self.key, self.message = source, key, message


# --- names from the catalogue ---------------------------------------------------------------------


@dataclass(frozen=True)
class OneOf:
    """A schema marker: the value is a name registered in ``registry`` (or one of ``extra``).

    Read when a scenario is validated, not when this module is imported, so a component that a
    module registers later (a plug-in, a test's toy) is accepted with no edit here."""

    registry: Registry
    extra: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (*self.extra, *self.registry.names())


#: The proxy the client's scheme talks to (see :attr:`Scenario.proxy_kind`).
AUTO_PROXY = "auto"
SchemeName = Annotated[str, OneOf(SCHEMES)]
MiddleboxName = Annotated[str, OneOf(MIDDLEBOXES)]
ProxyName = Annotated[str, OneOf(PROXIES, (AUTO_PROXY,))]
ServerName = Annotated[str, OneOf(SERVERS)]
CongestionControlName = Annotated[str, OneOf(CONGESTION_CONTROLS)]


# --- enums only scenarios use (the proto layer's enums are used as they are) -------------------------


class Arrivals(enum.Enum):
    NONE = "none"  # no requests (a transfer-only scenario)
    ONE = "one"  # one request at start_s
    COUNT = "count"  # count requests, every interval_s from start_s
    POISSON = "poisson"  # a Poisson process of rate_per_s from start_s (seeded), at most count if count > 0
    TIMES = "times"  # one request at each of at_s


class Action(enum.Enum):
    """What an event does at its time."""

    REBOOT = "reboot"  # the client reboots: connections and volatile caches are lost (a re-probe trigger)
    ATTACH_NETWORK = "attach_network"  # new networks: middleboxes drawn again, caches re-probed (a trigger)
    DISCOVER_PROXY = "discover_proxy"  # the converter is announced afresh (DHCP): its cache entry dropped
    CONVERTER_DOWN = "converter_down"  # the converter stops answering (every packet to or from it is lost)
    CONVERTER_UP = "converter_up"
    TFO_ON = "tfo_on"  # the application turns TFO towards servers on (ClientPolicy.tfo_to_server)
    TFO_OFF = "tfo_off"


class Direction(enum.Enum):
    DOWNLOAD = "download"  # server to client (the bytes cross the paths' down directions)
    UPLOAD = "upload"


class Buffers(enum.Enum):
    """How a transfer's socket buffers are sized (mpsim.sim.transfer BUFFER_POLICIES)."""

    AUTO = "auto"  # Linux's auto-tuning: snd_buf_bytes/rcv_buf_bytes are tcp_wmem[2]/tcp_rmem[2]
    PINNED = "pinned"  # SO_SNDBUF/SO_RCVBUF set to snd_buf_bytes/rcv_buf_bytes (Linux doubles them)


# --- schema helpers ------------------------------------------------------------------------------


def knob(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, choices: tuple | None = None, check: Callable[[Any], None] | None = None,
         doc: str = "") -> Any:
    """A schema field: its default (none: the key is required), its range, the only values it may
    take (``choices``: a number that is one of a few, e.g. an IP version), an extra ``check``
    (raises ValueError or LossSpecError with what was expected), and ``doc``, its meaning in one
    line (docs/scenarios.md and the JSON Schema's descriptions are generated from it; the unit is
    the name's suffix, so the doc does not repeat it)."""
    meta = {"ge": ge, "gt": gt, "le": le, "choices": choices, "check": check, "doc": doc}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


_NO_META: Mapping[str, Any] = {"ge": None, "gt": None, "le": None, "choices": None, "check": None, "doc": ""}


def _check_loss(spec: Any) -> None:
    loss_from_spec(spec, random.Random(0))  # builds a throw-away model: the builder is the validator


# --- the schema ------------------------------------------------------------------------------------

_CP, _TP, _CV, _CONV, _MP = ClientPolicy(), TcpPolicy(), CachePolicy(), ConverterPolicy(), MptcpPolicy()


@dataclass(frozen=True, kw_only=True)
class MptcpSpec:
    """The client's MPTCP knobs (MptcpPolicy; Linux's net.mptcp sysctls, docs/kernel-facts.md)."""

    version: int = knob(_MP.version, ge=0, le=1, doc="MPTCP version the client offers: 1 (RFC 8684) or 0 (RFC 6824)")
    checksums: bool = knob(_MP.checksums, doc="ask for DSS checksums, the MP_CAPABLE A flag "
                                              "(net.mptcp.checksum_enabled)")
    syn_retrans_before_tcp_fallback: int | None = knob(
        _MP.syn_retrans_before_tcp_fallback, ge=0, le=100,
        doc="MP_CAPABLE SYN retransmissions before the next SYN goes out plain "
            "(net.mptcp.syn_retrans_before_tcp_fallback); \"none\": never drop MP_CAPABLE")
    blackhole_timeout_s: float = knob(_MP.blackhole_timeout_s, ge=0,
                                      doc="how long active MPTCP stays off after an MPTCP blackhole, doubled at "
                                          "each repeat (net.mptcp.blackhole_timeout); 0 disables the back-off")
    blackhole_max_exponent: int = knob(_MP.blackhole_max_exponent, ge=0, le=30,
                                       doc="the blackhole back-off doubles up to 2**this times blackhole_timeout_s")
    retry_with_v0: bool = knob(_MP.retry_with_v0, doc="retry with MPTCP v0 when a v1 SYN is answered without "
                                                      "MP_CAPABLE (Linux does not)")
    blackhole_reset_on_success: bool = knob(_MP.blackhole_reset_on_success,
                                            doc="a successful MPTCP connection resets the blackhole back-off (false: "
                                                "only one over loopback does, as Linux 6.12 merged it)")
    mp_capable_ack: str = knob(_MP.mp_capable_ack, choices=MP_CAPABLE_ACK_FORMS,
                               doc="where the client's keys go after its SYN data went out again without data: "
                                   "\"linux\" (6.18: nowhere, both ends fall back to TCP; docs/kernel-departures.md "
                                   "7) or \"rfc8684\" (the third ACK, RFC 8684 3.1)")


@dataclass(frozen=True, kw_only=True)
class ClientSpec:
    """The client host: ClientPolicy, and the TcpPolicy / CachePolicy knobs scenarios vary."""

    scheme: SchemeName = knob(_CP.scheme, doc="the signalling scheme each request uses to reach its server")
    fallback: FallbackTarget = knob(_CP.fallback, doc="where a request goes when its proxy attempt fails")
    upstream_mptcp: bool = knob(_CP.upstream_mptcp, doc="offer MP_CAPABLE towards the proxy (the point of converting)")
    implicit: bool = knob(_CP.implicit, doc="an implicit-capable scheme signals to the server itself, for a proxy "
                                            "on the path to intercept")
    signal_acked_as_data: SignalAckedAsData = knob(
        _CP.signal_acked_as_data, doc="what to do when a host that is not a proxy ACKed the signalling as SYN data: "
                                      "reset and fall back, or continue with the bytes leaked")
    bypass_mptcp_servers: bool = knob(_CP.bypass_mptcp_servers, doc="go direct to servers learned to be MPTCP-capable "
                                                                    "(RFC 8803 5)")
    convert_info_first: bool = knob(_CP.convert_info_first, doc="send an Info TLV on the first connection to each "
                                                                "converter")
    tfo_to_server: bool = knob(_CP.tfo_to_server, doc="use TCP Fast Open towards servers: directly, or through the "
                                                      "converter's Connect TLV")
    mptcp_to_server: bool = knob(_CP.mptcp_to_server, doc="ask the converter for MPTCP towards the server (RFC 8803 7; "
                                                          "a converter that cannot answers Error 33)")
    proxy_syn_retries: int = knob(_CP.proxy_syn_retries, ge=0, le=10,
                                  doc="SYN retransmissions to a proxy before giving up on it")
    reply_timeout_s: float = knob(_CP.reply_timeout_s, gt=0,
                                  doc="how long to wait for the Convert or SOCKS5 reply after the handshake")
    max_attempts: int = knob(_CP.max_attempts, ge=1, le=50, doc="connection attempts (fallbacks and retries) one "
                                                                "request may make")
    syn_retries: int = knob(_TP.syn_retries, ge=0, le=20, doc="SYN retransmissions before a connection attempt "
                                                             "fails (net.ipv4.tcp_syn_retries)")
    syn_linear_timeouts: int = knob(_TP.syn_linear_timeouts, ge=0, le=20,
                                    doc="the first N SYN retransmissions wait the initial RTO without doubling "
                                        "(net.ipv4.tcp_syn_linear_timeouts)")
    time_wait_s: float = knob(_TP.time_wait_s, ge=0, doc="how long a closed connection's ports stay in TIME-WAIT")
    off_reprobe_s: float | None = knob(_CV.off_reprobe_s, gt=0,
                                       doc="how long a cached \"proxy off\" verdict lasts before a re-probe; "
                                           "\"none\": until another trigger (reboot, new network, new proxy)")
    keep_cookies_on_new_network: bool = knob(_CV.keep_cookies_on_new_network,
                                             doc="keep converter cookies across a network change (they may be "
                                                 "bound to the old client address)")
    primary_path: str = knob("", doc="the path that negotiation (and single-path TCP) uses; \"\": the first "
                                     "of [paths]")
    mptcp: MptcpSpec = knob(MptcpSpec(), doc="the client's MPTCP knobs")


@dataclass(frozen=True, kw_only=True)
class ConverterSpec:
    """The proxy: which one, its policy, and where it sits (one-way delay from the access router)."""

    enabled: bool = knob(True, doc="false: the client knows no proxy")
    kind: ProxyName = knob(AUTO_PROXY, doc="the proxy the converter node runs; \"auto\": the one the client's "
                                           "scheme talks to")
    timing: ConverterTiming = knob(_CONV.timing, doc="when the converter answers the client's SYN: \"rfc\" waits for "
                                                     "the server's SYN-ACK (RFC 8803 4.2), \"socket\" answers at once "
                                                     "as Linux sockets do")
    require_cookie: bool = knob(_CONV.require_cookie, doc="the converter demands a Cookie TLV (RFC 8803 6.2.7)")
    max_sessions: int = knob(_CONV.max_sessions, ge=0, doc="sessions the converter holds at once; beyond: Error 64")
    connect_timeout_s: float = knob(_CONV.connect_timeout_s, gt=0,
                                    doc="no SYN-ACK from the server by then: the converter answers Error 65")
    convert_mptcp: bool = knob(False, doc="the RFC 8803 converter also offers MPTCP towards servers")
    placement: Placement = knob(Placement.BESIDE, doc="\"beside\" the access router (the client addresses it) or "
                                                      "\"on_path\" (it intercepts)")
    delay_s: float = knob(0.0, ge=0, le=10, doc="one-way delay between the access router and the converter")
    rate_bps: float = knob(1e9, gt=0, doc="link rate between the access router and the converter, each way")
    port: int = knob(1234, ge=1, le=65535, doc="the TCP port the converter listens on")
    # Its capacity (mpsim.sim.cpu, docs/sim.md "The converter's capacity"); the costs' defaults come
    # from `mpsim bench kernel` on the project's machine.
    cores: int = knob(0, ge=0, le=1024, doc="CPU cores of the converter; 0: its CPU is not modelled (infinitely "
                                            "fast, as before)")
    cpu_setup_s: float = knob(DEFAULT_SETUP_S, ge=0, le=10, doc="one core's time per connection set-up")
    relay_cpu_s_per_gb: float = knob(DEFAULT_RELAY_CPU_S_PER_GB, ge=0, le=10_000,
                                     doc="CPU time to relay 10^9 payload bytes (seconds per GB)")
    households: int = knob(1, ge=1, le=10_000, doc="households this converter serves: the workload's arrivals are "
                                                   "drawn once per household (all from the one client node), every "
                                                   "transfer runs once per household, each on access lines of its "
                                                   "own joined to the shared converter and server links")


@dataclass(frozen=True, kw_only=True)
class ServerSpec:
    """The server the requests and transfers go to."""

    kind: ServerName = knob(ServerKind.LEGACY_DROP.value, doc="the server's TCP stack (MPTCP, TFO, what it does with "
                                                              "SYN data)")
    port: int = knob(80, ge=1, le=65535, doc="the TCP port the server listens on")
    delay_s: float = knob(0.020, ge=0, le=10, doc="one-way delay between the access router and the server")
    rate_bps: float = knob(1e9, gt=0, doc="link rate between the access router and the server, each way")


@dataclass(frozen=True, kw_only=True)
class PathSpec:
    """One access network of the client: its link to the access router, both directions."""

    rate_up_bps: float = knob(10e6, gt=0, doc="link rate from the client to the access router")
    rate_down_bps: float = knob(50e6, gt=0, doc="link rate from the access router to the client")
    delay_s: float = knob(0.010, ge=0, le=10, doc="one-way propagation delay, each direction")
    jitter_s: float = knob(0.0, ge=0, le=1, doc="up to this much extra delay per packet (it reorders)")
    queue_bytes: int = knob(256_000, ge=1500, doc="the link's queue, each direction")
    loss: dict = knob({}, check=_check_loss, doc="packet loss, each direction: a loss model table; {}: none")
    middleboxes: tuple[MiddleboxName, ...] = knob((), doc="middleboxes always on this path, besides what "
                                                          "middlebox_mix draws")


@dataclass(frozen=True, kw_only=True)
class MixEntry:
    """A middlebox that each access network holds with probability ``prob``, drawn afresh (seeded)
    at every attachment: at the start and at each attach_network event."""

    middlebox: MiddleboxName = knob(doc="the middlebox drawn")
    prob: float = knob(ge=0, le=1, doc="the chance that an access network holds it at each attachment")


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """Connection arrivals: each is one request (request_size_bytes up, response_size_bytes down)."""

    arrivals: Arrivals = knob(Arrivals.ONE, doc="how requests arrive: none, one at start_s, count every interval_s, "
                                                "poisson at rate_per_s, or at the times at_s")
    start_s: float = knob(0.0, ge=0, doc="when the first request may arrive")
    count: int = knob(0, ge=0, doc="arrivals \"count\": how many requests; \"poisson\": at most this many (0: no "
                                   "limit)")
    interval_s: float = knob(1.0, gt=0, doc="arrivals \"count\": the time between requests")
    rate_per_s: float = knob(1.0, gt=0, doc="arrivals \"poisson\": the mean rate of requests")
    max_requests: int = knob(MAX_REQUESTS_PER_RUN, ge=1, le=MAX_REQUESTS_PER_RUN_LIMIT,
                             doc="the most requests one run may start (a bound on its memory); raise it for a "
                                 "bigger workload")
    at_s: tuple[float, ...] = knob((), doc="arrivals \"times\": the request times")
    schemes: tuple[SchemeName, ...] = knob((), doc="request i uses schemes[i % length]; []: client.scheme for all")
    request_size_bytes: int = knob(100, ge=1, le=1_000_000, doc="what each request sends")
    response_size_bytes: int = knob(1000, ge=0, le=100_000_000, doc="what each request reads back")


@dataclass(frozen=True, kw_only=True)
class TransferSpec:
    """A bulk transfer: negotiated like a request, then moved by mpsim.sim.transfer. A converted or
    mptcp outcome moves it with MPTCP over every path; any other outcome with TCP on the primary path."""

    start_s: float = knob(0.0, ge=0, doc="when the transfer's connection is opened")
    size_bytes: int = knob(ge=1, le=10_000_000_000, doc="how much the transfer moves")
    direction: Direction = knob(Direction.DOWNLOAD, doc="download: server to client; upload: client to server")
    congestion_control: CongestionControlName = knob("cubic", doc="the sender's congestion control (LIA couples "
                                                                  "the subflows)")
    snd_buf_bytes: int = knob(DEFAULT_SND_BUF_BYTES, ge=1500, doc="the sender's socket buffer (net.ipv4.tcp_wmem)")
    rcv_buf_bytes: int = knob(DEFAULT_RCV_BUF_BYTES, ge=1500, doc="the receiver's socket buffer (net.ipv4.tcp_rmem)")
    buffers: Buffers = knob(Buffers.AUTO, doc="\"auto\": Linux's send-buffer auto-tuning up to snd_buf_bytes (MPTCP: "
                                               "per subflow, tcp_sndbuf_expand) and receive-buffer auto-tuning "
                                               "(DRS) from tcp_rmem[1] up to rcv_buf_bytes; \"pinned\": "
                                               "SO_SNDBUF and SO_RCVBUF, doubled as Linux does, never grown")
    kernel_hz: int = knob(LINUX_HZ, check=check_kernel_hz,
                          doc="the sending kernel's CONFIG_HZ (100, 250, 300 or 1000: Debian 250, "
                              "Fedora and Ubuntu generic 1000), the jiffy rate of Linux CUBIC's window updates; "
                              "a relayed transfer's two legs both use it")


@dataclass(frozen=True, kw_only=True)
class EventSpec:
    """Something that happens to the client or the converter at a time."""

    at_s: float = knob(ge=0, doc="when it happens (before duration_s)")
    action: Action = knob(doc="reboot (the client: connections and volatile caches lost), attach_network "
                              "(middleboxes drawn again), discover_proxy (the converter announced afresh), "
                              "converter_down, converter_up, tfo_on, tfo_off (TFO towards servers)")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One scenario, as the simulation builds it (a variant already merged in)."""

    description: str = knob(doc="one line saying what the scenario shows (mpsim scenarios lists it)")
    duration_s: float = knob(60.0, gt=0, le=1e6, doc="arrivals, transfers and events happen before it")
    drain_s: float = knob(300.0, ge=0, le=1e6, doc="then at most this long for what is under way to finish")
    seed: int = knob(1, ge=0, doc="the root seed; every component's seed derives from it")
    runs: int = knob(1, ge=1, le=10_000, doc="independent runs (run index 0..runs-1), each with its own draws")
    ip_version: int = knob(4, choices=(4, 6), doc="the address family of every host and packet: 4 (from "
                                                  "198.18.0.0/15, RFC 2544) or 6 (from 2001:2::/48, RFC 5180; "
                                                  "docs/sim.md \"Addresses\")")
    client: ClientSpec = knob(ClientSpec(), doc="the client host")
    converter: ConverterSpec = knob(ConverterSpec(), doc="the proxy")
    server: ServerSpec = knob(ServerSpec(), doc="the server")
    paths: dict[str, PathSpec] = knob({"dsl": {}}, doc="the client's access networks, by name (1 to 16)")
    middlebox_mix: tuple[MixEntry, ...] = knob((), doc="middleboxes drawn per access network at each attachment")
    workload: WorkloadSpec = knob(WorkloadSpec(), doc="the requests")
    transfers: tuple[TransferSpec, ...] = knob((), doc="bulk transfers")
    events: tuple[EventSpec, ...] = knob((), doc="timed events")
    variants: dict[str, dict] = knob({}, doc="name -> a partial scenario merged over this one; each is run and "
                                             "reported side by side")

    @property
    def primary_path(self) -> str:
        return self.client.primary_path or next(iter(self.paths))

    @property
    def proxy_kind(self) -> str:
        """The PROXIES name the converter node runs; "auto" is the one the client's scheme talks to."""
        kind = self.converter.kind
        if kind != AUTO_PROXY:
            return kind
        return proxy_for_scheme(self.client.scheme, self.converter.placement)


# --- coercion: a TOML tree into the schema -----------------------------------------------------------


def _type_name(tp: Any, meta: Mapping[str, Any] = _NO_META) -> str:
    """What a value of ``tp`` must be, in words (the 'expected ...' of an error)."""
    bounds = " and ".join(f"{op} {meta[name]:g}" for name, op in (("ge", ">="), ("gt", ">"), ("le", "<="))
                          if meta.get(name) is not None)
    bounds = f" {bounds}" if bounds else ""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in args if a is not type(None))
        return f"{_type_name(inner, meta)}, or \"none\""
    if tp is bool:
        return "true or false"
    if tp is int and meta.get("choices"):
        return " or ".join(str(c) for c in meta["choices"])
    if tp is int:
        return f"an integer{bounds}"
    if tp is float:
        return f"a number{bounds}"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(m.value for m in tp)
    if origin is Annotated:
        return "one of " + ", ".join(_one_of(tp).names())
    if origin is tuple:
        return f"a list of {_plural(args[0])}"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def _one_of(tp: Any) -> OneOf:
    return next(m for m in tp.__metadata__ if isinstance(m, OneOf))


def _plural(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "names (" + ", ".join(m.value for m in tp) + ")"
    if typing.get_origin(tp) is Annotated:
        return "names (" + ", ".join(_one_of(tp).names()) + ")"
    return {float: "numbers", int: "integers", str: "strings"}.get(tp, "tables")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else \
        repr(value) if not isinstance(value, (dict, list)) else "a table" if isinstance(value, dict) else "a list"


def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _unknown(key: str, name: str, allowed: Sequence[str]) -> str:
    # A unit left off ("delay" for delay_s, "size" for size_bytes) is the commonest slip.
    close = [a for a in allowed if a.startswith(name + "_")][:1] or difflib.get_close_matches(name, allowed, n=1)
    prefix = key.rpartition(".")[0]
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else \
        f" (allowed: {', '.join(allowed)})"
    return f"unknown key{hint}"


class _Invalid(Exception):
    """Raised inside coercion with the dotted key; turned into a ScenarioError with the source."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


def _coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any] = _NO_META) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    expected = f"expected {_type_name(tp, meta)}, got {_show(value)}"
    if origin in (types.UnionType, typing.Union):
        if value == "none":
            return None
        try:
            return _coerce(value, next(a for a in args if a is not type(None)), key, meta)
        except _Invalid as err:
            raise _Invalid(err.key, expected) from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(key, expected)
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, expected)
        result: Any = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(key, expected)
        result = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise _Invalid(key, expected)
        if math.isinf(value):  # no quantity of a scenario is infinite (an unbounded rate would eat memory)
            raise _Invalid(key, f"expected a finite number, got {_show(value)}")
        result = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise _Invalid(key, expected)
        result = value
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = {m.value: m for m in tp}
        if value not in members:
            close = difflib.get_close_matches(str(value), list(members), n=1) if isinstance(value, str) else []
            raise _Invalid(key, expected + (f" (did you mean {close[0]}?)" if close else ""))
        result = members[value]
    elif origin is Annotated:
        names = _one_of(tp).names()
        if not isinstance(value, str) or value not in names:
            close = difflib.get_close_matches(str(value), names, n=1) if isinstance(value, str) else []
            raise _Invalid(key, expected + (f" (did you mean {close[0]}?)" if close else ""))
        result = value
    elif origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(key, expected)
        return tuple(_coerce(item, args[0], f"{key}.{i}") for i, item in enumerate(value))
    elif origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(key, expected)
        return {name: _coerce(item, args[1], f"{key}.{name}") for name, item in value.items()}
    elif tp is dict:
        if not isinstance(value, dict):
            raise _Invalid(key, expected)
        result = value
    else:  # pragma: no cover - a schema field of a type this function does not know
        raise TypeError(f"schema type {tp!r} at {key} is not supported")
    _check_range(result, key, meta, expected)
    return result


def _check_range(value: Any, key: str, meta: Mapping[str, Any], expected: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (meta["ge"] is not None and not value >= meta["ge"]) or (meta["gt"] is not None and not value > meta["gt"]) \
                or (meta["le"] is not None and not value <= meta["le"]):
            raise _Invalid(key, expected)
    if meta.get("choices") and value not in meta["choices"]:
        raise _Invalid(key, expected)
    if meta["check"] is not None:
        try:
            meta["check"](value)
        except LossSpecError as err:
            raise _Invalid(f"{key}.{err.key}" if err.key else key, str(err)) from None
        except ValueError as err:
            raise _Invalid(key, str(err)) from None


def _build(cls: type, table: dict, prefix: str) -> Any:
    fields = _fields(cls)
    dotted = (prefix + ".") if prefix else ""
    for name in table:
        if name not in fields:
            raise _Invalid(dotted + name, _unknown(dotted + name, name, list(fields)))
    values = {}
    for name, (tp, f) in fields.items():
        if name in table:
            values[name] = _coerce(table[name], tp, dotted + name, f.metadata or _NO_META)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Invalid(dotted + name, f"missing key (expected {_type_name(tp, f.metadata)})")
        elif dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict and dataclasses.is_dataclass(
                typing.get_args(tp)[1]):
            # Nested tables are coerced from their raw defaults, so defaults pass the same checks.
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            values[name] = default if dataclasses.is_dataclass(default) else _coerce(default, tp, dotted + name)
    return cls(**values)


def _cross_check(scenario: Scenario) -> None:
    """Rules that involve more than one key."""
    if not 1 <= len(scenario.paths) <= MAX_PATHS:
        raise _Invalid("paths", f"expected 1 to {MAX_PATHS} paths (a table per access network), "
                                f"got {len(scenario.paths)}")
    if scenario.client.primary_path and scenario.client.primary_path not in scenario.paths:
        raise _Invalid("client.primary_path", f"expected one of the paths ({', '.join(scenario.paths)}), "
                                              f"got {scenario.client.primary_path!r}")
    if scenario.converter.placement is Placement.ON_PATH and not PROXIES.get(scenario.proxy_kind).on_path:
        on_path = " or the ".join(f'{entry.title} (converter.kind = "{name}")'
                                  for name, entry in PROXIES.items() if entry.on_path)
        raise _Invalid("converter.placement", f"expected \"beside\": only the {on_path} intercepts on the path, "
                                              f"not {scenario.proxy_kind}")
    w = scenario.workload
    if w.arrivals is Arrivals.COUNT and w.count < 1:
        raise _Invalid("workload.count", "expected an integer >= 1 when arrivals is \"count\"")
    if w.arrivals is Arrivals.TIMES and not w.at_s:
        raise _Invalid("workload.at_s", "expected a non-empty list of times when arrivals is \"times\"")
    _check_request_bound(w, scenario.duration_s)
    for name, times in (("workload.at_s", w.at_s), ("events", [e.at_s for e in scenario.events]),
                        ("transfers", [t.start_s for t in scenario.transfers])):
        for i, t in enumerate(times):
            if not 0 <= t < scenario.duration_s:
                key = name if name == "workload.at_s" else f"{name}.{i}.{'at_s' if name == 'events' else 'start_s'}"
                raise _Invalid(key, f"expected a time in [0, duration_s = {scenario.duration_s:g}), got {t:g}")


def _check_request_bound(w: WorkloadSpec, duration_s: float) -> None:
    """Refuse a workload that would start more than ``max_requests`` requests in one run."""
    span_s = max(0.0, duration_s - w.start_s)
    if w.arrivals is Arrivals.POISSON:
        expected = w.rate_per_s * span_s
        key, how = "workload.rate_per_s", f"rate_per_s {w.rate_per_s:g} x {span_s:g} s"
        if w.count and w.count < expected:
            expected, key, how = w.count, "workload.count", f"count {w.count}"
    elif w.arrivals is Arrivals.COUNT:
        expected, key, how = w.count, "workload.count", f"count {w.count}"
    elif w.arrivals is Arrivals.TIMES:
        expected, key, how = len(w.at_s), "workload.at_s", f"{len(w.at_s)} times"
    else:
        return
    if expected > w.max_requests:
        raise _Invalid(key, f"about {expected:.3g} requests per run ({how}), more than workload.max_requests = "
                            f"{w.max_requests} (a bound on a run's memory); raise workload.max_requests (at most "
                            f"{MAX_REQUESTS_PER_RUN_LIMIT}) or ask for fewer requests")


def check_nesting(text: str, source: str, key: str = "") -> None:
    """Refuse TOML text with arrays or tables nested more than :data:`MAX_NESTING` deep, before
    tomllib (which recurses) reads it. Brackets inside strings and comments do not count."""
    depth, i, n, line = 0, 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else ch
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                if text[i] == "\\" and quote[0] == '"':
                    i += 1
                line += text[i] == "\n" if i < n else 0
                i += 1
            i += len(quote)
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if ch == "\n":
            line += 1
        elif ch in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise ScenarioError(source, key, f"arrays or tables nested more than {MAX_NESTING} deep "
                                                 f"(line {line})")
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1


# --- loading -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoadedScenario:
    """A scenario file as loaded: where it came from, its text, the overrides, and each variant built."""

    name: str
    path: Path | None
    source: str  # how errors and the manifest name it: models/NAME.toml for a named scenario
    text: str
    overrides: tuple[str, ...]
    tree: dict  # the raw TOML tree with the overrides applied (variants not merged)
    variants: dict[str, Scenario]  # variant name -> scenario; {BASE_VARIANT: ...} without [variants]

    @property
    def base(self) -> Scenario:
        return next(iter(self.variants.values()))

    @property
    def description(self) -> str:
        return self.base.description


def models_dir() -> Path:
    return MODELS_DIR


def scenario_names() -> list[str]:
    """The named scenarios in models/, sorted."""
    return sorted(p.stem for p in models_dir().glob("*.toml"))


def resolve(name_or_file: str) -> Path:
    """A scenario name (``default``) or a file path (``my.toml``, ``models/x.toml``) to its file."""
    candidate = Path(name_or_file)
    if candidate.suffix == ".toml" or len(candidate.parts) > 1:
        if not candidate.is_file():
            raise ScenarioError(name_or_file, "", "no such scenario file")
        return candidate
    path = models_dir() / f"{name_or_file}.toml"
    if not path.is_file():
        names = scenario_names()
        close = difflib.get_close_matches(name_or_file, names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"named scenarios: {', '.join(names) or 'none'}"
        raise ScenarioError(name_or_file, "", f"no scenario of that name in {_display(models_dir())} ({hint})")
    return path


def _display(path: Path) -> str:
    """A path as a user would type it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``KEY=VALUE`` to (key parts, value): a TOML value, else the raw string."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise ScenarioError(f"--set {text}", "", "expected KEY=VALUE, e.g. client.scheme=convert")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ScenarioError(f"--set {text}", key, "empty component in the dotted key")
    check_nesting(raw, f"--set {text}", key.strip())
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def _schema_at(parts: list[str], source: str) -> Any:
    """The schema type at a dotted key (unknown components are errors with a suggestion)."""
    tp: Any = Scenario
    for depth, part in enumerate(parts):
        key = ".".join(parts[: depth + 1])
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            tp = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            fields = _fields(tp)
            if part not in fields:
                raise ScenarioError(source, key, _unknown(key, part, list(fields)))
            tp = fields[part][0]
            if tp == dict[str, dict] and depth + 1 < len(parts):  # variants.NAME.<a scenario key>
                return _schema_at(parts[depth + 2:], source) if depth + 2 < len(parts) else dict
        elif origin is tuple:
            if not part.isdigit():
                raise ScenarioError(source, key, f"expected a list index (0, 1, ...), got {part!r}")
            tp = args[0]
        elif origin is dict:
            tp = args[1]
        elif tp is dict:  # a free-form table (a loss model): its keys are checked when it is built
            return typing.Any
        else:
            raise ScenarioError(source, key, f"{'.'.join(parts[:depth])} is {_type_name(tp)}, not a table")
    return tp


def _set_in(tree: dict, parts: list[str], value: Any, source: str) -> None:
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        key = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise ScenarioError(source, key, f"no item {index}: the list has {len(node)}")
            node = node[index]
        else:
            if part not in node and parts[depth + 1].isdigit():
                raise ScenarioError(source, key, f"has no item {parts[depth + 1]}: the file gives none (write the "
                                                 "whole list, e.g. --set 'events=[{at_s = 1, action = \"reboot\"}]')")
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ScenarioError(source, key, "is a value, not a table")
    last = parts[-1]
    if isinstance(node, list):
        if int(last) >= len(node):
            raise ScenarioError(source, ".".join(parts), f"no item {last}: the list has {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


_DEFAULT_PATHS = {f.name: f for f in dataclasses.fields(Scenario)}["paths"].default_factory()


def apply_override(tree: dict, text: str) -> None:
    """Apply one ``--set KEY=VALUE`` to a raw tree, checking the key against the schema."""
    source = f"--set {text}"
    parts, value = parse_override(text)
    # The file's paths, or the schema's default ones when the file names none.
    paths = tree["paths"] if isinstance(tree.get("paths"), dict) else _DEFAULT_PATHS
    if len(parts) > 2 and parts[0] == "paths" and parts[1] not in paths:
        # A field of a path that does not exist is a typo far more often than a new path (which
        # takes a whole table: --set paths.NAME={...}).
        close = difflib.get_close_matches(parts[1], list(paths), n=1)
        hint = f"did you mean paths.{close[0]}?" if close else f"paths: {', '.join(paths) or 'none'}"
        raise ScenarioError(source, ".".join(parts[:2]), f"no such path ({hint})")
    tp = _schema_at(parts, source)
    if typing.get_origin(tp) is tuple and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]  # a,b for a list of names
    _set_in(tree, parts, value, source)


def _merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: tables merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        # A loss table is one model: a variant's {model = "none"} replaces the base's Bernoulli
        # rather than inheriting its loss_prob.
        mergeable = isinstance(value, dict) and isinstance(out.get(key), dict) and key != "loss"
        out[key] = _merge(out[key], value) if mergeable else copy.deepcopy(value)
    return out


def _within(tree: dict, key: str) -> bool:
    """Whether ``key`` (or a table above it) is written in ``tree``."""
    node: Any = tree
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def build(tree: dict, source: str) -> Scenario:
    """Validate a whole tree (variants not merged) into a Scenario; errors name ``source``."""
    try:
        scenario = _build(Scenario, tree, "")
        _cross_check(scenario)
    except _Invalid as err:
        raise ScenarioError(source, err.key, err.message) from None
    return scenario


def _blame(overrides: Sequence[str], key: str, source: str) -> str:
    """The --set that wrote ``key`` (or a table above or below it), else the file with its overrides."""
    for text_set in reversed(overrides):
        written = text_set.partition("=")[0].strip()
        if key == written or key.startswith(written + ".") or written.startswith(key + "."):
            return f"--set {text_set}"
    return f"{source} with " + " ".join(f"--set {o}" for o in overrides)


def load_text(text: str, *, name: str, source: str, overrides: Sequence[str] = (), path: Path | None = None
              ) -> LoadedScenario:
    """Load a scenario from TOML text; ``source`` names it in errors (a file path)."""
    check_nesting(text, source)
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(source, "", f"invalid TOML: {err}") from None
    build(tree, source)  # the file alone first, so that its own mistakes are reported against it
    overrides = tuple(overrides)
    for text_set in overrides:
        apply_override(tree, text_set)  # the key must exist and the value parse
    if overrides:  # then all of them together: one may need another (duration_s and the times in it)
        try:
            _cross_check(_build(Scenario, tree, ""))
        except _Invalid as err:
            raise ScenarioError(_blame(overrides, err.key, source), err.key, err.message) from None
    variants_tree = tree.get("variants") or {}
    variants: dict[str, Scenario] = {}
    if not variants_tree:
        variants[BASE_VARIANT] = build(tree, source)
    base_tree = {k: v for k, v in tree.items() if k != "variants"}
    for variant, partial in variants_tree.items():
        if not _VARIANT_NAME.fullmatch(variant):
            raise ScenarioError(source, f"variants.{variant}", "expected a name of letters, digits, '-', '_' or '.' "
                                                              "(it names result rows and files)")
        if not isinstance(partial, dict):
            raise ScenarioError(source, f"variants.{variant}", f"expected a table, got {_show(partial)}")
        for forbidden in VARIANT_FIXED_KEYS:
            if forbidden in partial:
                raise ScenarioError(source, f"variants.{variant}.{forbidden}",
                                    "a variant cannot change this (it belongs to the whole scenario)")
        merged = _merge(base_tree, partial)
        for text_set in overrides:  # the command line wins over the file, variants included
            if not text_set.startswith("variants."):
                apply_override(merged, text_set)
        try:
            scenario = _build(Scenario, merged, "")
            _cross_check(scenario)
        except _Invalid as err:
            if _within(partial, err.key):
                raise ScenarioError(source, f"variants.{variant}.{err.key}", err.message) from None
            where = _blame(overrides, err.key, source) if overrides else source
            raise ScenarioError(f"{where} (variant {variant})", err.key, err.message) from None
        variants[variant] = scenario
    return LoadedScenario(name=name, path=path, source=source, text=text, overrides=overrides, tree=tree,
                          variants=variants)


def load(name_or_file: str, overrides: Sequence[str] = ()) -> LoadedScenario:
    """Load a named scenario (models/NAME.toml) or a file, with ``--set`` overrides."""
    path = resolve(name_or_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(_display(path), "", f"cannot read: {err}") from None
    source = f"models/{path.name}" if path.resolve().parent == models_dir().resolve() else _display(path)
    return load_text(text, name=path.stem, source=source, overrides=overrides, path=path)


def describe_all() -> list[tuple[str, str]]:
    """(name, description) of every named scenario; a file that does not load says why."""
    out = []
    for name in scenario_names():
        try:
            description = load(name).description
        except ScenarioError as err:
            description = f"(does not load: {err})"
        out.append((name, " ".join(description.split())))
    return out


def as_plain(value: Any) -> Any:
    """A scenario (or part of it) as plain JSON-able data: enums by value, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value
