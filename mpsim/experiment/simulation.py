"""One run of a scenario: the SimPy topology, the workload, the events, and the records they leave.

The topology (one per variant and run index)::

    client --path "dsl"--\\                      /-- converter (up, down interfaces)
           --path "lte"---> router (access) ---<
                                                \\-- server

(with ``converter.placement = "on_path"`` the primary path ends at the converter's "in" side and
its "up" side takes the path's place at the router: every packet of that path crosses it).

* The **client** (:class:`~mpsim.proto.client.ClientHost`) has one interface per access path,
  the primary path first: the proto client negotiates from its first interface, so every
  connection attempt, plain TCP and the negotiation of a transfer use the primary path.
* Each **path** is a :class:`~mpsim.sim.link.Link` to the router with its own rates, delay,
  jitter, queue and loss per direction, and the path's middleboxes as filters: the fixed ones of
  the scenario plus the ``middlebox_mix`` drawn for that network at each attachment (the start,
  and every ``attach_network`` event), from the path's own seeded generator.
* The **converter** node runs the proxy the scenario asks for (RFC 8803 converter, MP_CONVERT
  proxy or SOCKS5), behind two links that a ``converter_down`` event turns into black holes.
* The **server** is a :class:`~mpsim.proto.server.ServerHost` of the scenario's kind answering
  every request of ``request_size_bytes`` with ``response_size_bytes``.

Seeds: every random component draws from ``component_rng(root seed, run index, name)``; the
names are listed in each run's ``seeds`` (and the manifest). Variants of one scenario share the
seeds of a run index (common random numbers: a scheme comparison sees the same networks).

Time: arrivals, transfers and events happen in [0, duration_s); the run then goes on until
every request and transfer has finished, for at most ``drain_s``. A request still unfinished
after that is ended as ``failed`` with the detail "unfinished when the simulation ended".

**Transfers and negotiation.** A bulk transfer starts like a request: the client negotiates a
connection with its scheme (one small request and response, as the workload's). When that
connection's record arrives, the outcome decides how the bulk data moves
(:class:`mpsim.sim.transfer.BulkTransfer`): ``converted`` or ``mptcp`` moves it with MPTCP, one
subflow per access path; anything else with single-path TCP on the primary path; ``failed``
moves nothing.

The bulk data crosses the negotiation's links (:mod:`mpsim.sim.route`): each subflow's data and
ACKs follow a :class:`~mpsim.sim.route.Route`, the real link directions a packet between the
same addresses crosses, worked out from the router's own table (``Router.port_for``, the lookup
its ``receive`` does) and, on the path, from the proxy's own forwarding rule (``forward_port``):

* direct: access link -> router -> server link (and back);
* through a proxy beside the router: the transfer is relayed
  (:class:`mpsim.sim.relay.RelayedTransfer`, docs/sim.md "The relay"): the client's subflows
  (or TCP) run access link -> router -> ``converter.up`` to the proxy node and end there; the
  proxy's own connection (TCP, or MPTCP when its connection to the server negotiated it) runs
  ``converter.down`` -> router -> server link; the proxy's relay buffer sits between the two, so
  a slow leg holds the other back through its window; the ACKs of each leg go the reverse way;
* ``placement = "on_path"``: the primary path's packets cross the proxy as the negotiation's
  do (client -> proxy "in" -> ``converter.down`` -> router -> server; the server's answers
  router -> ``converter.up`` -> proxy -> client); a converted connection's primary subflow ends
  at the proxy when it intercepted it, every other subflow addresses the proxy's "up" side,
  which the router reaches through the port facing it (relayed as beside the router).

So transfers share queues, rates, jitter and loss generators with the negotiation packets on
every link, the link counters count both, and the ``Outage`` filter (``converter_down``)
black-holes transfer data too. The access paths' middleboxes are wrapped
(:func:`mpsim.sim.light_filter.wrap_box`) so that transfer segments crossing those links meet
them too (a link filter sees light segments only if it says ``accepts_light_segments``). A
transfer's further subflows open with MP_JOIN handshakes from the client (the receiver of a
download), on the client's SYN policy (mpsim/sim/transfer.py, "Subflows joining"). Nodes never hand a
transfer segment to their machine. With ``converter.cores`` > 0 (:mod:`mpsim.sim.cpu`) a new
connection's SYN waits for a set-up job before the proxy sees it, and every chunk the proxy's
relay copies from one leg to the other is a per-byte job.

Captures (``capture_points`` lists the real links, and households' own access lines) show a
transfer with the addresses and ports of the connection its negotiation opened, continuing that
connection's sequence numbers after its last segment, and its MPTCP data sequence numbers and
Data ACKs from where the negotiation's mappings ended (from the keys' IDSNs); on the converter's
leg to the server, the converter's own connection to the server with its own sequence numbers,
continuing that connection's. Another subflow than the first is shown from its path's address
with the first subflow's port: its MP_JOIN handshake (ISN 0; token and HMACs from the negotiated
keys), then its data from 1. The transfer runs inside that connection's life: the client keeps
it open after the negotiation's response (``Request.keep_open``) and every connection the
transfer runs on closes after it, the data's origin first, with a DATA_FIN on MPTCP, through a
proxy in the order its relay closes the two legs (:mod:`mpsim.sim.transfer_close`). How
such a capture is simplified: :data:`CAPTURE_NOTE`, written into every pcapng file's comment.

``converter.households`` (default 1) makes one run serve several households: every household's
arrivals are drawn from a generator of its own and issued from the one client node (so their
negotiation packets share its access links), and every transfer runs once per household, all at
its ``start_s``. Household 0's transfer uses the paths' links; household h > 0 has an access
line of its own per path (``path.NAME.hH``: the path's rates, delay, jitter, queue and loss,
with generators of its own, ``loss.NAME.hH.up``; not the path's middleboxes) joined at the
router to the shared converter and server links.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import simpy

from mpsim.experiment.scenario import Action, Arrivals, Buffers, Direction, Scenario, TransferSpec, WorkloadSpec
from mpsim.sim.transfer_close import End, Leg, TransferClose, holdable
from mpsim.proto.cache import CachePolicy
from mpsim.proto.components import MIDDLEBOXES, SERVERS, Placement, ProxySettings, build_proxy_host
from mpsim.proto.client import ClientHost, ClientPolicy, ConnectionFinished, Request
from mpsim.proto.events import Outcome
from mpsim.proto.harness import Router
from mpsim.proto.middlebox import PASS, BuiltBox, Site, flow_of
from mpsim.proto.mptcp import MptcpClientExtension, MptcpPolicy, MptcpState
from mpsim.proto.server import ResponderApp
from mpsim.proto.tcp import TcpPolicy
from mpsim.sim.congestion import CONGESTION_CONTROLS
from mpsim.sim.cpu import Cpu
from mpsim.sim.light_filter import wrap_box
from mpsim.sim.link import Link, LinkDirection
from mpsim.sim.loss import loss_from_spec
from mpsim.sim.node import SimNode
from mpsim.sim.route import MAX_HOPS, Flow, Route, forward_segment
from mpsim.sim.seeds import component_rng, derive_seed
from mpsim.sim.trace import Trace
from mpsim.sim.relay import RelayedTransfer
from mpsim.sim.transfer import BulkTransfer
from mpsim.wire.segment import IpPacket, TcpFlags

_FIRST_PATH_NET = 16

CLIENT, ROUTER, CONVERTER, SERVER_NODE = "client", "router", "converter", "server"
SCENARIO = "scenario"  # the "node" of the scenario's own timed events in the trace


#: How a simulated capture departs from a real one (docs/sim.md "Routes", captures); the comment of every
#: pcapng file the simulation writes (Results.write_pcaps), so a reader of the file alone knows.
CAPTURE_NOTE = (
    "mpsim simulated capture (docs/sim.md, Routes). Simplified: a transfer's segments use the 4-tuple "
    "of the connection its negotiation opened, continuing its sequence numbers and MPTCP data sequence "
    "numbers; that connection closes after the transfer (FIN, with DATA_FIN on MPTCP), each sender's FIN "
    "leaving when its receiver has the last byte (Linux sends it with the last data, half a round trip "
    "earlier); the DATA_FIN rides on the first subflow's FIN (Linux sends it on an ACK first). Further "
    "MPTCP subflows have ISN 0 and close with FINs after the first (not retransmitted if lost); their "
    "MP_JOIN tokens and HMACs are computed from the negotiated keys. Transfer segments' timestamps echo 0; payloads are zeros unless "
    "the scenario carried real bytes.")


@dataclass(frozen=True)
class AddressPlan:
    """The addresses of one IP version (docs/sim.md "Addresses"): one network per role and per
    access path, host 1 in it. IPv4 from the benchmarking range 198.18.0.0/15 (RFC 2544), a /24
    each: role N is 198.18.N.0/24, path i 198.18.(16+i).0/24. IPv6 from the benchmarking range
    2001:2::/48 (RFC 5180), a /64 each with the same number written as the subnet ID's digits:
    role N is 2001:2:0:N::/64, path i 2001:2:0:(16+i)::/64, so 198.18.17.1 and 2001:2:0:17::1
    are the same host in the two plans."""

    ip_version: int

    def _host(self, net: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if self.ip_version == 4:
            return ipaddress.IPv4Address(f"198.18.{net}.1")
        return ipaddress.IPv6Address(f"2001:2:0:{net}::1")

    @property
    def prefix_length(self) -> int:
        return 24 if self.ip_version == 4 else 64

    @property
    def converter_up(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._host(1)

    @property
    def converter_down(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._host(2)

    @property
    def server(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._host(3)

    @property
    def converter_in(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._host(4)  # an on-path proxy's client-side interface

    def path(self, index: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self._host(_FIRST_PATH_NET + index)

    def network(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address
                ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{address}/{self.prefix_length}", strict=False)


ADDRESS_PLANS = {4: AddressPlan(4), 6: AddressPlan(6)}
_V4 = ADDRESS_PLANS[4]
CONVERTER_UP, CONVERTER_IN, CONVERTER_DOWN, SERVER = _V4.converter_up, _V4.converter_in, _V4.converter_down, _V4.server


def path_address(index: int, ip_version: int = 4) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ADDRESS_PLANS[ip_version].path(index)


def _net(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 64}", strict=False))


# --- middleboxes ---------------------------------------------------------------------------------


@dataclass
class AccessNetwork:
    """The network behind one access path: its fixed middleboxes plus those drawn at attachment
    (each a MIDDLEBOXES name, built by its catalogue entry)."""

    name: str
    fixed: tuple[str, ...]
    up: LinkDirection
    down: LinkDirection
    mix_rng: Any
    box_rng: Any
    site: Site = field(default_factory=Site)
    boxes: list[tuple[str, BuiltBox]] = field(default_factory=list)
    attachments: int = 0

    def attach(self, mix: tuple) -> None:
        """A new network: the boxes are built afresh, the mix drawn again (in file order)."""
        drawn = [entry.middlebox for entry in mix if self.mix_rng.random() < entry.prob]
        # Wrapped so that the transfers' light segments meet the boxes too (mpsim.sim.light_filter).
        self.boxes = [(kind, wrap_box(MIDDLEBOXES.get(kind).build(self.box_rng, self.site)))
                      for kind in (*self.fixed, *drawn)]
        self.up.filters = [box.up for _, box in self.boxes if box.up is not PASS]
        # The reply meets the boxes in reverse order, as it crosses them the other way round.
        self.down.filters = [box.down for _, box in reversed(self.boxes) if box.down is not PASS]
        self.attachments += 1

    def label(self) -> str:
        return "+".join(kind for kind, _ in self.boxes) or "clean"


class Outage:
    """A link filter that loses every packet while ``down``: the converter stops answering."""

    name = "outage"
    accepts_light_segments = True  # a converter that is down loses transfer data too

    def __init__(self) -> None:
        self.down = False
        self.hits = 0

    def __call__(self, packet: Any, now: float) -> list:
        if self.down:
            self.hits += 1
            return []
        return [packet]


# --- results of one run ------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What one (variant, run index) left: rows for the tables and the live objects for tools."""

    variant: str
    run_index: int
    seeds: dict[str, int]
    connections: list[dict]
    transfers: list[dict]
    counters: list[dict]
    events: list[dict]
    end_s: float
    trace: Trace | None = None
    simulation: Simulation | None = None


@dataclass(frozen=True)
class ScenarioAction:
    """A timed event of the scenario happened (the events table names it by its action)."""

    action: Action
    detail: str = ""


def _event_name(event: Any) -> str:
    return event.action.value if isinstance(event, ScenarioAction) else type(event).__name__


def _plain(value: Any) -> Any:
    """An event field as a table cell: enums by value, addresses as text, tuples flattened."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return "(" + " ".join(str(_plain(v)) for v in value) + ")"
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value):
        return type(value).__name__
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def event_detail(event: Any) -> str:
    if isinstance(event, ScenarioAction):
        return event.detail
    if isinstance(event, ConnectionFinished):
        r = event.record
        return f"request_id={r.request_id} outcome={r.outcome} fallback_reason={r.fallback_reason}"
    if not dataclasses.is_dataclass(event):
        return str(event)
    return " ".join(f"{f.name}={_plain(getattr(event, f.name))}" for f in dataclasses.fields(event)
                    if f.name != "record")


# --- the simulation -------------------------------------------------------------------------------------


def workload_arrival_times(workload: WorkloadSpec, duration_s: float, rng: Callable[[], Any]) -> list[float]:
    """One household's request times in [start_s, duration_s). ``rng`` makes the generator and is
    called only for random (poisson) arrivals, so a run records the seeds it used and no other;
    the kernel world (mpsim/experiment/kernel_world.py) draws the same times with it."""
    w = workload
    if w.arrivals is Arrivals.NONE:
        return []
    if w.arrivals is Arrivals.ONE:
        return [w.start_s] if w.start_s < duration_s else []
    if w.arrivals is Arrivals.COUNT:
        return [t for i in range(w.count) if (t := w.start_s + i * w.interval_s) < duration_s]
    if w.arrivals is Arrivals.TIMES:
        return sorted(w.at_s)
    generator, times, t = rng(), [], w.start_s
    while True:
        t += generator.expovariate(w.rate_per_s)
        if t >= duration_s or (w.count and len(times) >= w.count):
            return times
        times.append(t)


#: The server link's name in ``path_latency_s`` (the access paths go by their scenario names).
SERVER_LINE = "server"


def check_path_latency(scenario: Scenario, latency: Mapping[str, tuple[float, float]] | None
                       ) -> dict[str, tuple[float, float]]:
    """``Simulation(path_latency_s=...)``: per line (an access path's name, or ``"server"``) the
    forwarding latency the kernel world's testbed adds to each direction (access paths: up, down;
    the server link: in, out), in seconds, on top of the scenario's delays. ``mpsim compare`` gives
    the model the latency measured in each kernel run (docs/kernel-world.md, "The path as built");
    a plain run has none. The scenario's round trip stays the unit of ``*_rtts``: the latency is
    the testbed's, not the scenario's. A clear error for an unknown line or a bad value."""
    out: dict[str, tuple[float, float]] = {}
    for line, value in (latency or {}).items():
        if line != SERVER_LINE and line not in scenario.paths:
            raise ValueError(f"path_latency_s: unknown line {line!r} (lines: {SERVER_LINE}, {', '.join(scenario.paths)})")
        try:
            there_s, back_s = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"path_latency_s[{line!r}]: expected two latencies in seconds (each direction), "
                             f"got {value!r}") from None
        if not (0 <= there_s < 1 and 0 <= back_s < 1):
            raise ValueError(f"path_latency_s[{line!r}]: {value!r}: expected latencies in [0, 1) s")
        out[line] = (there_s, back_s)
    return out


#: How the access paths' links shape (``Simulation(shaper=...)``): "ideal" serializes at the rate;
#: "tbf" shapes as the kernel world's tbf qdiscs do (mpsim/sim/link.py: a token bucket of the
#: kernel world's burst, Ethernet framing counted, its queue limit), which ``mpsim compare`` uses.
SHAPERS = ("ideal", "tbf")


class Simulation:
    """One run of one scenario variant: build with the constructor, then :meth:`run`."""

    def __init__(self, scenario: Scenario, *, variant: str, run_index: int, record_packets: bool = False,
                 shaper: str = "ideal", path_latency_s: Mapping[str, tuple[float, float]] | None = None,
                 on_transfer_done: Callable[[dict, Any], None] | None = None) -> None:
        # on_transfer_done(row, transfer): each finished transfer's object, for a diagnostic that reads
        # its subflows after the run (benchmarks/rtt_sensitivity.py); the simulation keeps none.
        self.on_transfer_done = on_transfer_done
        if shaper not in SHAPERS:
            raise ValueError(f"shaper {shaper!r}: expected one of {', '.join(SHAPERS)}")
        self.shaper = shaper
        self.path_latency_s = check_path_latency(scenario, path_latency_s)
        self.scenario = scenario
        self.variant = variant
        self.run_index = run_index
        self.seeds: dict[str, int] = {}
        self.env = simpy.Environment()
        self.trace = Trace(record_packets=record_packets)
        self.nodes: dict[str, SimNode] = {}
        self.links: list[Link] = []
        self.networks: dict[str, AccessNetwork] = {}
        self.outage = Outage()
        self.networks_at_request: dict[int, str] = {}
        self.transfer_rows: list[dict] = []
        self._pending_transfers: dict[int, tuple[int, TransferSpec, int]] = {}  # request id -> (id, spec, household)
        self._running: list[tuple[dict, BulkTransfer | RelayedTransfer]] = []
        self._tcp_ext: dict[tuple[str, str], int] = {}  # (machine, TcpExt name) -> count (_count_tcp_ext)
        # (path, household) -> that household's own access line (up, down); household 0 uses the path's link
        self._household_access: dict[tuple[str, int], tuple[LinkDirection, LinkDirection]] = {}
        self._hops_cache: dict[tuple, list[LinkDirection]] = {}
        self.cpu: Cpu | None = None  # the converter's CPU, when converter.cores > 0
        self._outstanding = 0  # requests and transfers started and not finished
        self._scheduled_done = False
        self._all_done = self.env.event()
        self._build()

    # --- seeds ---------------------------------------------------------------------------------

    def rng(self, component: str) -> Any:
        self.seeds[component] = derive_seed(self.scenario.seed, self.run_index, component)
        return component_rng(self.scenario.seed, self.run_index, component)

    # --- topology ------------------------------------------------------------------------------

    @property
    def path_names(self) -> list[str]:
        """The access paths, the primary one first."""
        primary = self.scenario.primary_path
        return [primary] + [name for name in self.scenario.paths if name != primary]

    @property
    def on_path(self) -> bool:
        return self.scenario.converter.enabled and self.scenario.converter.placement is Placement.ON_PATH

    def _node(self, name: str, machine: Any) -> SimNode:
        node = SimNode(self.env, name, machine, trace=self.trace)
        self.nodes[name] = node
        return node

    def _direction(self, name: str, *, delay_s: float, rate_bps: float, jitter_s: float = 0.0,
                   queue_bytes: int | None = None, loss: dict | None = None, filters: tuple = (),
                   access: bool = False) -> LinkDirection:
        burst_bytes, framing_bytes = None, 0
        if access and self.shaper == "tbf":
            burst_bytes, queue_bytes, framing_bytes = tbf_shaper(rate_bps, queue_bytes)
        return LinkDirection(self.env, name, delay_s=delay_s, rate_bps=rate_bps, jitter_s=jitter_s,
                             rng=self.rng(f"jitter.{name}") if jitter_s else None, queue_limit_bytes=queue_bytes,
                             loss=loss_from_spec(loss, self.rng(loss_component(name))) if loss else None,
                             filters=filters, burst_bytes=burst_bytes, framing_bytes=framing_bytes)

    def _build(self) -> None:
        s = self.scenario
        plan = self.addresses = ADDRESS_PLANS[s.ip_version]
        addresses = {name: plan.path(i) for i, name in enumerate(s.paths)}
        client_addresses = {name: addresses[name] for name in self.path_names}
        proxies = ((plan.converter_up, s.converter.port),) if s.converter.enabled else ()
        c = s.client
        policy = ClientPolicy(scheme=c.scheme, fallback=c.fallback, upstream_mptcp=c.upstream_mptcp,
                              implicit=c.implicit, signal_acked_as_data=c.signal_acked_as_data,
                              bypass_mptcp_servers=c.bypass_mptcp_servers, convert_info_first=c.convert_info_first,
                              tfo_to_server=c.tfo_to_server, mptcp_to_server=c.mptcp_to_server,
                              proxy_syn_retries=c.proxy_syn_retries, reply_timeout_s=c.reply_timeout_s,
                              max_attempts=c.max_attempts)
        m = c.mptcp
        mptcp_policy = MptcpPolicy(version=m.version, checksums=m.checksums,
                                   syn_retrans_before_tcp_fallback=m.syn_retrans_before_tcp_fallback,
                                   blackhole_timeout_s=m.blackhole_timeout_s,
                                   blackhole_max_exponent=m.blackhole_max_exponent, retry_with_v0=m.retry_with_v0,
                                   blackhole_reset_on_success=m.blackhole_reset_on_success,
                                   mp_capable_ack=m.mp_capable_ack)
        self.client = ClientHost(CLIENT, client_addresses, rng=self.rng("client"), policy=policy, proxies=proxies,
                                 tcp_policy=TcpPolicy(syn_retries=c.syn_retries, time_wait_s=c.time_wait_s,
                                                      syn_linear_timeouts=c.syn_linear_timeouts),
                                 mptcp_policy=mptcp_policy,
                                 cache_policy=CachePolicy(off_reprobe_s=c.off_reprobe_s,
                                                          keep_cookies_on_new_network=c.keep_cookies_on_new_network))
        client_node = self._node(CLIENT, self.client)
        client_node.event_handlers.append(self._on_client_event)
        routes = {f"access.{name}": [_net(addresses[name])] for name in s.paths}
        # On the path the proxy's "up" side sits where the primary access link would, so its
        # address is reached through that port (a subflow from another path to the proxy).
        conv_up_port = f"access.{s.primary_path}" if self.on_path else "conv_up"
        routes.setdefault(conv_up_port, []).append(_net(plan.converter_up))
        routes |= {"conv_down": [_net(plan.converter_down)], "server": [_net(plan.server)]}
        self.router = Router(routes)
        router_node = self._node(ROUTER, self.router)
        self.converter = self._build_converter() if s.converter.enabled else None
        conv_node = self._node(CONVERTER, self.converter) if self.converter is not None else None
        for name in self.path_names:
            p = s.paths[name]
            extra_up_s, extra_down_s = self.path_latency_s.get(name, (0.0, 0.0))
            up = self._direction(f"{name}.up", delay_s=p.delay_s + extra_up_s, rate_bps=p.rate_up_bps,
                                 jitter_s=p.jitter_s, queue_bytes=p.queue_bytes, loss=p.loss, access=True)
            down = self._direction(f"{name}.down", delay_s=p.delay_s + extra_down_s, rate_bps=p.rate_down_bps,
                                   jitter_s=p.jitter_s, queue_bytes=p.queue_bytes, loss=p.loss, access=True)
            # On the path, the primary access link ends at the proxy's client side, not the router.
            far, far_port = (conv_node, "in") if self.on_path and name == s.primary_path else \
                (router_node, f"access.{name}")
            self.links.append(Link(self.env, client_node, name, far, far_port, forward=up, backward=down,
                                   name=f"path.{name}"))
            network = AccessNetwork(name, p.middleboxes, up, down, self.rng(f"middlebox_mix.{name}"),
                                    self.rng(f"middleboxes.{name}"), Site(plan.network(addresses[name])))
            network.attach(s.middlebox_mix)
            self.networks[name] = network
        if conv_node is not None:
            cv = s.converter
            # On the path, the proxy's "up" side faces the router where the primary access link would.
            up_port = f"access.{s.primary_path}" if self.on_path else "conv_up"
            for port, router_port in (("up", up_port), ("down", "conv_down")):
                there = self._direction(f"converter.{port}.in", delay_s=cv.delay_s, rate_bps=cv.rate_bps,
                                        filters=(self.outage,))
                back = self._direction(f"converter.{port}.out", delay_s=cv.delay_s, rate_bps=cv.rate_bps,
                                       filters=(self.outage,))
                self.links.append(Link(self.env, router_node, router_port, conv_node, port, forward=there,
                                       backward=back, name=f"converter.{port}"))
                if port == "up" and cv.cores:
                    self.cpu = Cpu(self.env, cv.cores, name="converter.cpu")
                    # New connections reach the proxy from the client side: on "up" beside the
                    # router, over the primary access link (its "in" side) on the path.
                    self.cpu.gate_setup(self.networks[s.primary_path].up if self.on_path else there,
                                        cv.cpu_setup_s)
        w, sv = s.workload, s.server
        self.server = SERVERS.get(sv.kind).create(SERVER_NODE, plan.server, self.rng("server"),
                                                  ResponderApp(w.response_size_bytes,
                                                               request_size_bytes=w.request_size_bytes), (sv.port,))
        server_node = self._node(SERVER_NODE, self.server)
        extra_in_s, extra_out_s = self.path_latency_s.get(SERVER_LINE, (0.0, 0.0))
        self.links.append(Link(self.env, router_node, "server", server_node, "eth0",
                               forward=self._direction("server.in", delay_s=sv.delay_s + extra_in_s,
                                                       rate_bps=sv.rate_bps),
                               backward=self._direction("server.out", delay_s=sv.delay_s + extra_out_s,
                                                        rate_bps=sv.rate_bps),
                               name="server.link"))

    def _build_converter(self) -> Any:
        cv = self.scenario.converter
        plan = self.addresses
        addresses = {"up": plan.converter_up, "down": plan.converter_down} | \
            ({"in": plan.converter_in} if self.on_path else {})
        settings = ProxySettings(port=cv.port, placement=cv.placement, timing=cv.timing,
                                 client_prefixes=tuple(_net(plan.path(i)) for i in range(len(self.scenario.paths))),
                                 require_cookie=cv.require_cookie, max_sessions=cv.max_sessions,
                                 connect_timeout_s=cv.connect_timeout_s, convert_mptcp=cv.convert_mptcp)
        return build_proxy_host(self.scenario.proxy_kind, CONVERTER, addresses, rng=self.rng("converter"),
                                settings=settings)

    # --- workload and events -----------------------------------------------------------------------

    def arrival_times(self) -> list[float]:
        """When requests start (seconds), in order; Poisson draws from the "workload" generator,
        and with ``converter.households`` > 1 household h > 0 draws its own from "workload.hH"."""
        times = self._household_arrival_times(0)
        for household in range(1, self.scenario.converter.households):
            times.extend(self._household_arrival_times(household))
        return sorted(times) if self.scenario.converter.households > 1 else times

    def _household_arrival_times(self, household: int) -> list[float]:
        component = "workload" if household == 0 else f"workload.h{household}"
        return workload_arrival_times(self.scenario.workload, self.scenario.duration_s,
                                      lambda: self.rng(component))

    def _schedule(self) -> list[tuple[float, int, Callable[[], None]]]:
        """Everything timed, in (time, kind, index) order: events before arrivals at one instant,
        so "reboot at t" and "request at t" means the request meets the rebooted host."""
        items: list[tuple[float, int, Callable[[], None]]] = []
        for i, event in enumerate(self.scenario.events):
            items.append((event.at_s, 0 * 1_000_000 + i, lambda e=event: self._act(e.action)))
        w = self.scenario.workload
        for i, t in enumerate(self.arrival_times()):
            scheme = w.schemes[i % len(w.schemes)] if w.schemes else None
            items.append((t, 1_000_000 + i, lambda s=scheme: self._request(s)))
        specs = self.scenario.transfers
        for household in range(self.scenario.converter.households):  # every household's transfers at once
            for j, spec in enumerate(specs):
                i = household * len(specs) + j
                items.append((spec.start_s, 2_000_000 + i,
                              lambda i=i, spec=spec, h=household: self._start_transfer(i, spec, h)))
        items.sort(key=lambda item: (item[0], item[1]))
        return items

    def _director(self):  # a SimPy process
        for at_s, _, action in self._schedule():
            if at_s > self.env.now:
                yield self.env.timeout(at_s - self.env.now)
            action()
        self._scheduled_done = True
        self._check_done()

    def _request(self, scheme: str | None, keep_open: bool = False) -> int:
        w = self.scenario.workload
        request = Request(self.addresses.server, self.scenario.server.port, request_size_bytes=w.request_size_bytes,
                          response_size_bytes=w.response_size_bytes, scheme=scheme, keep_open=keep_open)
        self._outstanding += 1
        networks = self.networks_label()
        # The record (ConnectionFinished) reaches _on_client_event only when the node flushes,
        # after connect has returned, even for a request that ends at once.
        request_id = self.nodes[CLIENT].call(lambda now: self.client.connect(request, now))
        self.networks_at_request[request_id] = networks
        return request_id

    def networks_label(self) -> str:
        return " ".join(f"{name}:{self.networks[name].label()}" for name in self.path_names)

    def _act(self, action: Action) -> None:
        client_node, now = self.nodes[CLIENT], self.env.now
        if action is Action.ATTACH_NETWORK:  # the new networks first, so that the trace shows them
            for network in self.networks.values():
                network.attach(self.scenario.middlebox_mix)
        # Into the trace before the machines react, so the events table reads cause, then effect.
        self.trace.event(now, SCENARIO, ScenarioAction(
            action, f"networks {self.networks_label()}" if action is Action.ATTACH_NETWORK else ""))
        match action:
            case Action.REBOOT:
                client_node.call(self.client.reboot)
            case Action.ATTACH_NETWORK:
                client_node.call(self.client.attach_network)
            case Action.DISCOVER_PROXY:
                if self.scenario.converter.enabled:
                    proxy = (self.addresses.converter_up, self.scenario.converter.port)
                    client_node.call(lambda t: self.client.discover_proxy(proxy, t))
            case Action.CONVERTER_DOWN | Action.CONVERTER_UP:
                self.outage.down = action is Action.CONVERTER_DOWN
            case Action.TFO_ON | Action.TFO_OFF:
                # The application's choice (TCP_FASTOPEN_CONNECT), read by every connection opened from now on.
                self.client.client_policy = replace(self.client.client_policy, tfo_to_server=action is Action.TFO_ON)

    # --- transfers ---------------------------------------------------------------------------------

    def _start_transfer(self, index: int, spec: TransferSpec, household: int = 0) -> None:
        self._outstanding += 1  # the transfer; its negotiation counts as a request of its own
        # The client keeps the negotiated connection open: the transfer runs inside its life
        # (mpsim.sim.transfer_close).
        request_id = self._request(None, keep_open=True)
        self._pending_transfers[request_id] = (index, spec, household)

    def _on_client_event(self, now: float, event: Any) -> None:
        if not isinstance(event, ConnectionFinished):
            return
        record = event.record
        self._outstanding -= 1
        pending = self._pending_transfers.pop(record.request_id, None)
        if pending is not None:
            self._begin_bulk(*pending[:2], record, now, household=pending[2])
        self._check_done()

    def _begin_bulk(self, index: int, spec: TransferSpec, record: Any, now: float, household: int = 0) -> None:
        """Move the transfer's bytes as the negotiation outcome allows (see the module doc)."""
        multipath = record.outcome in (Outcome.CONVERTED.value, Outcome.MPTCP.value)
        row = {"transfer_id": index, "request_id": record.request_id, "scheme": record.scheme,
               "outcome": record.outcome, "direction": spec.direction.value,
               "congestion_control": spec.congestion_control, "start_s": spec.start_s,
               "negotiated_s": now, "bytes": spec.size_bytes, "bytes_delivered": 0, "duration_s": None,
               "goodput_bps": None, "subflows": 0, "retransmissions": 0, "completed": False, "timeouts": 0,
               "subflow_bytes": "",
               "paths": " ".join(self.path_names if multipath else self.path_names[:1]),
               "via_converter": record.via_proxy, "client_leg_retransmissions": None,
               "server_leg_retransmissions": None}
        self.transfer_rows.append(row)
        if record.outcome == Outcome.FAILED.value:
            row["paths"] = ""
            self._transfer_done()
            return
        self._run_bulk(row, spec, multipath, household, record)

    # --- routes (mpsim/sim/route.py) --------------------------------------------------------------

    def _access(self, name: str, household: int) -> tuple[LinkDirection, LinkDirection]:
        """Access path ``name``'s (up, down) directions for one household: household 0 the path's
        link itself, household h > 0 a line of its own with the path's rates, delay, jitter,
        queue and loss (own generators, ``loss.NAME.hH.up``), not connected to a node: only the
        household's transfer segments cross it, then join the shared hops behind the router."""
        link = self.networks[name]
        if household == 0:
            return link.up, link.down
        key = (name, household)
        if key not in self._household_access:
            p = self.scenario.paths[name]
            pair = []
            extra_s = dict(zip(("up", "down"), self.path_latency_s.get(name, (0.0, 0.0))))
            for side, rate_bps, real in (("up", p.rate_up_bps, link.up), ("down", p.rate_down_bps, link.down)):
                own = self._direction(f"{name}.h{household}.{side}", delay_s=p.delay_s + extra_s[side],
                                      rate_bps=rate_bps,
                                      jitter_s=p.jitter_s, queue_bytes=p.queue_bytes, loss=p.loss, access=True)
                own.link_name, own.label = f"path.{name}.h{household}", real.label
                own.src_node, own.dst_node, own.dst_port = real.src_node, real.dst_node, real.dst_port
                own.trace, own.deliver = self.trace, forward_segment
                pair.append(own)
            self._household_access[key] = (pair[0], pair[1])
        return self._household_access[key]

    def _hops(self, start: LinkDirection, destination: ipaddress.IPv4Address, end_node: str) -> list[LinkDirection]:
        """The directions a packet for ``destination`` crosses from ``start`` until it reaches
        ``end_node``: at the router the port its table gives (Router.port_for, the lookup its
        receive does), at an on-path proxy the interface it forwards to (forward_port)."""
        key = (start.name, destination, end_node)
        if key in self._hops_cache:
            return self._hops_cache[key]
        hops = [start]
        while hops[-1].dst_node != end_node:
            here = hops[-1]
            node = self.nodes[here.dst_node]
            if node.machine is self.router:
                port = self.router.port_for(destination)
            elif node.name == CONVERTER and self.on_path:
                port = self.converter.forward_port(here.dst_port, destination)
            else:
                port = None
            if port is None or port not in node.ports or len(hops) >= MAX_HOPS:
                raise ValueError(f"no route from {start.name} to {destination} ending at {end_node}: "
                                 f"stuck at {node.name} after {len(hops)} hops")
            hops.append(node.ports[port])
        self._hops_cache[key] = hops
        return hops

    def _subflow_routes(self, name: str, household: int,
                        to_server_flow: Flow) -> tuple[tuple[list, list], tuple[list, list]]:
        """(hops, legs) towards the server and towards the client for the subflow on access path
        ``name`` of a transfer not through a proxy (through one: :meth:`_relay_routes`)."""
        client_address = self.client.interfaces[name]
        up, down = self._access(name, household)
        towards_server = self._hops(self.networks[name].up, self.addresses.server, SERVER_NODE)
        towards_client = self._hops(self.nodes[SERVER_NODE].ports["eth0"], client_address, CLIENT)
        towards_server = [up, *towards_server[1:]]
        towards_client = [*towards_client[:-1], down]
        n_up, n_down = len(towards_server), len(towards_client)
        return (towards_server, [to_server_flow] * n_up), (towards_client, [to_server_flow.reversed()] * n_down)

    def _flows(self, record: Any, index: int, name: str, *, pin_client: bool = False,
               pin_server: bool = False) -> tuple[Flow, Flow | None]:
        """What captures show for subflow ``index`` (mpsim.sim.route.Flow): on the client's leg
        the 4-tuple of the connection the negotiation opened (subflow 0 continuing its sequence
        numbers after its last segment; another subflow from its path's address, the same port,
        its own numbers after its MP_JOIN handshake's ISN 0), on the converter's leg to the
        server that connection's 4-tuple and sequence numbers for every subflow, carrying the
        data-level stream (the relay's TCP connection). ``pin_client`` / ``pin_server``: that
        leg's connections stay open through the transfer (mpsim.sim.transfer_close), so
        its numbers are fixed now (Flow.pinned); otherwise a capture reads them when it is made
        (after the connection's FIN, which then comes before the transfer)."""
        conn = self._client_conn(record)
        client_address = self.client.interfaces[name]
        if conn is None:  # no connection to follow: the addresses the packets would have
            far = self.addresses.converter_up if record.via_proxy else self.addresses.server
            client_flow = Flow(client_address, 40000 + index, far, self.scenario.server.port)
        elif index == 0:
            client_flow = Flow(conn.local_addr, conn.local_port, conn.remote_addr, conn.remote_port, conn=conn,
                               mptcp_conn=conn)
        else:  # through a proxy, to its "up" side (the address a proxy on the path has for them)
            client_flow = Flow(client_address, conn.local_port, self.addresses.converter_up if record.via_proxy else conn.remote_addr,
                               conn.remote_port, mptcp_conn=conn)
        if pin_client:  # the connection stays open through the transfer: its numbers as they stand now
            client_flow = client_flow.pinned()
        if not record.via_proxy:
            return client_flow, None
        downstream = self._downstream_of(conn)
        if downstream is None:  # the proxy no longer holds the session: its address, a made-up port
            return client_flow, Flow(self.addresses.converter_down, 40000, self.addresses.server, self.scenario.server.port, data_level=True)
        server_flow = Flow(downstream.local_addr, downstream.local_port, downstream.remote_addr,
                           downstream.remote_port, data_level=True, conn=downstream, mptcp_conn=downstream)
        return client_flow, server_flow.pinned() if pin_server else server_flow

    def _client_conn(self, record: Any) -> Any:
        """The client's connection the negotiation of ``record`` opened last, or None."""
        logical = self.client.logical.get(record.request_id) if record is not None else None
        return next((a.conn for a in reversed(logical.attempts) if a.conn is not None), None) \
            if logical is not None else None

    def _join_options(self, record: Any, row: dict) -> dict:
        """The keywords a transfer's MP_JOINs need (mpsim.proto.join): the keys the negotiation's
        MP_CAPABLE exchanged on the client's connection (client key, the far end's: the server's
        or the proxy's), so the joins' tokens and HMACs in captures verify against the
        negotiation's keys, and a generator of its own for the nonces (``transferN.join``)."""
        options: dict = {"join_rng": self.rng(f"transfer{row['transfer_id']}.join")}
        conn = self._client_conn(record)
        mptcp = next((e for e in conn.extensions if isinstance(e, MptcpClientExtension)), None) \
            if conn is not None else None
        if mptcp is not None and mptcp.local_key is not None and mptcp.peer_key is not None:
            options["mptcp_keys"] = (mptcp.local_key, mptcp.peer_key)
        return options

    def _downstream_of(self, conn: Any) -> Any:
        """The proxy's connection to the server for the client's connection ``conn``, if the
        proxy still holds the session (its relays)."""
        relay = self._relay_of(conn)
        return None if relay is None else relay.downstream

    def _relay_of(self, conn: Any) -> Any:
        """The proxy's relay (mpsim.proto.relay.Relay) of the client's connection ``conn``, if
        the proxy still holds the session."""
        if conn is None or self.converter is None:
            return None
        upstream_key = (conn.remote_addr, conn.remote_port, conn.local_addr, conn.local_port)
        for relay in getattr(self.converter, "relays", ()):
            if getattr(relay, "upstream_key", None) == upstream_key:
                return relay
        return None

    def capture_points(self) -> list[str]:
        """Names of the links a pcap file can be written for (Trace.write_pcap): the topology's,
        and the own access lines of households after the first."""
        own = sorted({d.link_name for pair in self._household_access.values() for d in pair})
        return [link.name for link in self.links] + own

    def _run_bulk(self, row: dict, spec: TransferSpec, multipath: bool, household: int = 0,
                  record: Any = None) -> None:
        if row["via_converter"]:
            self._run_relayed(row, spec, multipath, household, record)
            return
        paths: list = []
        tag = f"transfer{row['transfer_id']}"
        close_legs = self._close_legs(record, spec.direction)
        held = {tag_ for tag_, sender, receiver, _ in close_legs if holdable(sender.conn) and holdable(receiver.conn)}
        for index, name in enumerate(self.path_names if multipath else self.path_names[:1]):
            flows = self._flows(record, index, name, pin_client=bool(held & {"single", "client"}))
            (up_hops, up_legs), (down_hops, down_legs) = self._subflow_routes(name, household, flows[0])
            if spec.direction is Direction.DOWNLOAD:
                data, ack = (down_hops, down_legs), (up_hops, up_legs)
            else:
                data, ack = (up_hops, up_legs), (down_hops, down_legs)
            access = {self.networks[name].up, self.networks[name].down}
            paths.append((Route(f"{tag}.{name}.data", data[0], legs=data[1], volatile=access),
                          Route(f"{tag}.{name}.ack", ack[0], legs=ack[1], volatile=access)))
        cc, coupled = self._congestion_control(spec, multipath)
        names = self.path_names if multipath else self.path_names[:1]
        addresses = self._header_addresses([(self.client.interfaces[name], self.addresses.server) for name in names],
                                           spec.direction)
        transfer = BulkTransfer(self.env, paths, spec.size_bytes, cc=cc, coupled=coupled, mptcp=multipath,
                                snd_buf_bytes=spec.snd_buf_bytes, rcv_buf_bytes=spec.rcv_buf_bytes,
                                buffers=spec.buffers.value, addresses=addresses, handshake_rtt_sample=True,
                                # the request/response before the bulk: the receiver answered at once
                                # (download: the client's 13 bytes after the response header; upload:
                                # the server's response), pingpong mode (docs/kernel-facts.md)
                                receiver_pingpong=True,
                                # the client opens the further subflows (MP_JOIN) on its SYN timers
                                joins_from="receiver" if spec.direction is Direction.DOWNLOAD else "sender",
                                syn_policy=self.client.policy, kernel_hz=spec.kernel_hz,
                                name=f"transfer{row['transfer_id']}",
                                **(self._join_options(record, row) if multipath else {}))
        self._running.append((row, transfer))
        # (an on-path proxy that intercepted the connection: its two legs carry this one transfer)
        self._close_after(row, transfer, record, close_legs, {"single": transfer, "client": transfer,
                                                               "server": transfer})

    def _header_addresses(self, client_far: list, direction: Direction) -> list | None:
        """A transfer's (sender, receiver) addresses per path from (client side, far side) pairs,
        for its header accounting (IPv6: 72-byte headers, MSS 1428); None on IPv4, where the
        transfer's default placeholders give the same sizes (captures take a route's flow)."""
        if self.scenario.ip_version != 6:
            return None
        return client_far if direction is Direction.UPLOAD else [(far, near) for near, far in client_far]

    @staticmethod
    def _congestion_control(spec: TransferSpec, multipath: bool) -> tuple[str, str]:
        """(cc, coupled) for a transfer: a coupled control (LIA) links the subflows of one MPTCP
        connection over Reno's window; a single path has nothing to couple, so it runs Reno
        (RFC 6356 reduces to it)."""
        coupled = CONGESTION_CONTROLS.get(spec.congestion_control).coupled
        return ("reno" if coupled else spec.congestion_control,
                spec.congestion_control if coupled and multipath else "none")

    def _run_relayed(self, row: dict, spec: TransferSpec, multipath: bool, household: int, record: Any) -> None:
        """A transfer whose negotiation went through the proxy: the client leg (a subflow per
        path, or TCP on the primary path) over the routes between the client and the proxy, the
        proxy's own connection over the route between the proxy and the server, the proxy's
        relay between them (mpsim.sim.relay.RelayedTransfer; docs/sim.md "The relay"). The
        server leg is MPTCP when the proxy's connection to the server negotiated it (RFC 8803
        converter with ``converter.convert_mptcp``, asked by ``client.mptcp_to_server``); the
        relay's CPU cost, with ``converter.cores`` > 0, is a job per chunk it copies."""
        tag = f"transfer{row['transfer_id']}"
        client_paths: list = []
        server_flow: Flow | None = None
        intercepted_leg = None
        close_legs = self._close_legs(record, spec.direction)
        held = {tag_ for tag_, sender, receiver, _ in close_legs if holdable(sender.conn) and holdable(receiver.conn)}
        for index, name in enumerate(self.path_names if multipath else self.path_names[:1]):
            client_flow, server_leg_flow = self._flows(record, index, name, pin_client="client" in held,
                                                       pin_server="server" in held)
            (towards, towards_legs), (back, back_legs), server_leg = self._relay_routes(index, name, household,
                                                                                         client_flow)
            if index == 0:
                server_flow, intercepted_leg = server_leg_flow, server_leg
            access = {self.networks[name].up, self.networks[name].down}
            client_paths.append((Route(f"{tag}.{name}.to_converter", towards, legs=towards_legs, volatile=access),
                                 Route(f"{tag}.{name}.to_client", back, legs=back_legs, volatile=access)))
        # The proxy's connection carries its own TCP (or MPTCP) segments, not the client's stream.
        flow = None if server_flow is None else replace(server_flow, data_level=False)
        to_server, to_converter = intercepted_leg
        server_paths = [(Route(f"{tag}.server.to_server", to_server, legs=[flow] * len(to_server)),
                         Route(f"{tag}.server.to_converter", to_converter,
                               legs=[None if flow is None else flow.reversed()] * len(to_converter)))]
        cc, coupled = self._congestion_control(spec, multipath)
        cv = self.scenario.converter
        # Pinned buffers are the endpoints' sockets (the client's, the server's); the proxy's own ends
        # of the two legs keep Linux's auto-tuning: a proxy is a machine with its own settings, and
        # the kernel world pins what the client and server programs open (docs/sim.md "The relay").
        client_pins: dict = {}
        server_pins: dict = {}
        if spec.buffers is Buffers.PINNED:
            upload = spec.direction is Direction.UPLOAD
            client_pins = {"buffers": "pinned" if upload else "auto", "rcv_buffers": "auto" if upload else "pinned"}
            server_pins = {"buffers": "auto" if upload else "pinned", "rcv_buffers": "pinned" if upload else "auto"}
        transfer = RelayedTransfer(
            self.env, client_paths, server_paths, spec.size_bytes,
            direction="download" if spec.direction is Direction.DOWNLOAD else "upload", mptcp=multipath,
            server_mptcp=self._server_leg_mptcp(record), cc=cc, coupled=coupled,
            cpu=self.cpu, cpu_per_byte_s=cv.relay_cpu_s_per_gb / 1e9 if self.cpu is not None else 0.0,
            snd_buf_bytes=spec.snd_buf_bytes, rcv_buf_bytes=spec.rcv_buf_bytes, buffers=spec.buffers.value,
            kernel_hz=spec.kernel_hz,  # both legs' senders (the proxy's kernel too)
            handshake_rtt_sample=True,  # each leg's sender has its connection's handshake sample
            # the client opens the client leg's further subflows (MP_JOIN) on its SYN timers
            client_options={**client_pins,
                            "joins_from": "receiver" if spec.direction is Direction.DOWNLOAD else "sender",
                            "syn_policy": self.client.policy,
                            **(self._join_options(record, row) if multipath else {}),
                            "addresses": self._header_addresses(
                                [(self.client.interfaces[name], self.addresses.converter_up)
                                 for name in (self.path_names if multipath else self.path_names[:1])],
                                spec.direction)},
            server_options={**server_pins, "addresses": self._header_addresses(
                [(self.addresses.converter_down, self.addresses.server)], spec.direction)},
            name=tag)
        self._running.append((row, transfer))
        self._close_after(row, transfer, record, close_legs, {"client": transfer.client_leg,
                                                               "server": transfer.server_leg})

    def _relay_routes(self, index: int, name: str, household: int, client_flow: Flow) -> tuple:
        """The hops of a relayed transfer for the subflow on access path ``name``: (towards the
        proxy, its flows), (back to the client, its flows), and the proxy's connection's (towards
        the server, back to the proxy) hops."""
        client_address = self.client.interfaces[name]
        up, down = self._access(name, household)
        conv = self.nodes[CONVERTER]
        # A proxy on the path intercepts the primary path's connection when the client addressed
        # the server (implicit signalling); every other subflow, and every subflow of an explicit
        # scheme, addresses the proxy's "up" side (on the path: through the router's port facing it).
        intercepted = self.on_path and index == 0 and client_flow.dst_ip != self.addresses.converter_up
        client_side = "in" if intercepted else "up"
        leg1 = self._hops(self.networks[name].up, self.addresses.server if intercepted else self.addresses.converter_up, CONVERTER)
        leg2 = self._hops(conv.ports["down"], self.addresses.server, SERVER_NODE)
        back1 = self._hops(self.nodes[SERVER_NODE].ports["eth0"], client_address if intercepted else self.addresses.converter_down,
                           CONVERTER)
        back2 = self._hops(conv.ports[client_side], client_address, CLIENT)
        towards, back = [up, *leg1[1:]], [*back2[:-1], down]
        return ((towards, [client_flow] * len(towards)), (back, [client_flow.reversed()] * len(back)),
                (list(leg2), list(back1)))

    def _server_leg_mptcp(self, record: Any) -> bool:
        """Whether the proxy's connection to the server for this transfer negotiated MPTCP."""
        logical = self.client.logical.get(record.request_id) if record is not None else None
        conn = next((a.conn for a in reversed(logical.attempts) if a.conn is not None), None) \
            if logical is not None else None
        downstream = self._downstream_of(conn)
        return downstream is not None and any(getattr(ext, "state", None) is MptcpState.NEGOTIATED
                                              for ext in downstream.extensions)

    def _close_legs(self, record: Any, direction: Direction) -> list[tuple[str, End, End, bool]]:
        """The connections a transfer's legs run on, as (leg, sender, receiver, origin)
        (mpsim.sim.transfer_close): "single" between the client and its peer (the server,
        or an on-path proxy that intercepted the connection), or through a proxy "client" (client
        and proxy) and "server" (the proxy's connection and the server's); ``origin``: the sender
        wrote the data (it is no relay). Legs whose connections are unknown are left out."""
        conn = self._client_conn(record)
        if conn is None:
            return []
        client = End(self.nodes[CLIENT], conn)
        relay = self._relay_of(conn)
        download = direction is Direction.DOWNLOAD

        def leg(tag: str, near: End, far: End, *, near_origin: bool, far_origin: bool) -> tuple[str, End, End, bool]:
            # ``near`` is nearer the client; on a download data flows from ``far``
            return (tag, far, near, far_origin) if download else (tag, near, far, near_origin)

        def server_end(c: Any) -> End | None:
            found = self.server.connections.get((c.remote_addr, c.remote_port, c.local_addr, c.local_port))
            return None if found is None else End(self.nodes[SERVER_NODE], found)

        if relay is None and not record.via_proxy:
            peer = server_end(conn)
            return [] if peer is None else [leg("single", client, peer, near_origin=True, far_origin=True)]
        # Through the proxy, or intercepted by a proxy on the path (whose two connections then
        # carry a transfer modelled end to end: both legs end with it).
        if relay is None or relay.upstream is None:
            return []
        legs = [leg("client", client, End(self.nodes[CONVERTER], relay.upstream), near_origin=True, far_origin=False)]
        server = server_end(relay.downstream) if relay.downstream is not None else None
        if server is not None:
            legs.append(leg("server", End(self.nodes[CONVERTER], relay.downstream), server, near_origin=False,
                            far_origin=True))
        return legs

    def _close_after(self, row: dict, transfer: BulkTransfer | RelayedTransfer, record: Any,
                     close_legs: list[tuple[str, End, End, bool]], transfers: dict[str, BulkTransfer]) -> None:
        """The transfer runs until its last byte is read and the connections it ran on have
        closed after it (mpsim.sim.transfer_close); its row is filled at the former."""
        pending = {"done", "closed"}

        def finished(part: str) -> None:
            pending.discard(part)
            if not pending:
                self._transfer_done()

        def done(_event: Any) -> None:
            self._fill(row, transfer)
            self._count_tcp_ext(row, transfer)
            self._running.remove((row, transfer))
            if self.on_transfer_done is not None:
                self.on_transfer_done(row, transfer)
            finished("done")

        transfer.done.callbacks.append(done)
        conn = self._client_conn(record)
        TransferClose([Leg(sender, receiver, transfers[tag], origin) for tag, sender, receiver, origin in close_legs],
                      lambda: finished("closed"), kept_open=None if conn is None else End(self.nodes[CLIENT], conn))

    def _count_tcp_ext(self, row: dict, transfer: BulkTransfer | RelayedTransfer) -> None:
        """Adds a transfer's sender counters under Linux's TcpExt names (TransferRecord.tcp_ext)
        to its sending machine's, as nstat shows them in a kernel run: the server sends a
        download, the client an upload; through the converter each leg's sender counts its own."""
        record = transfer.result()
        download = row["direction"] == Direction.DOWNLOAD.value
        if isinstance(transfer, RelayedTransfer):
            legs = ((CONVERTER if download else CLIENT, record.client_leg),
                    (SERVER_NODE if download else CONVERTER, record.server_leg))
        else:
            legs = ((SERVER_NODE if download else CLIENT, record),)
        for machine, leg in legs:
            for name, value in leg.tcp_ext:
                self._tcp_ext[(machine, name)] = self._tcp_ext.get((machine, name), 0) + value

    @staticmethod
    def _fill(row: dict, transfer: BulkTransfer | RelayedTransfer) -> None:
        record = transfer.result()
        row.update(bytes_delivered=record.bytes_delivered, subflows=record.subflows,
                   retransmissions=record.retransmissions, completed=record.completed,
                   duration_s=record.duration_s if record.completed else None,
                   goodput_bps=record.goodput_bps if record.completed else None,
                   subflow_bytes=" ".join(map(str, record.subflow_bytes)), timeouts=record.timeouts)
        if isinstance(transfer, RelayedTransfer):  # each leg's sender (results.TRANSFER_COLUMNS)
            row.update(client_leg_retransmissions=record.client_leg.retransmissions,
                       server_leg_retransmissions=record.server_leg.retransmissions)

    def _transfer_done(self) -> None:
        self._outstanding -= 1
        self._check_done()

    def _check_done(self) -> None:
        if self._scheduled_done and self._outstanding == 0 and not self._all_done.triggered:
            self._all_done.succeed()

    # --- running -----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        s = self.scenario
        self.env.process(self._director())
        self.env.run(until=s.duration_s)
        if not self._all_done.triggered and s.drain_s > 0:
            self.env.run(until=self.env.any_of([self._all_done, self.env.timeout(s.drain_s)]))
        end_s = self.env.now
        self._abandon_unfinished(end_s)
        for row, transfer in list(self._running):  # cut short by the drain limit
            self._fill(row, transfer)
            self._count_tcp_ext(row, transfer)
        return RunResult(self.variant, self.run_index, dict(self.seeds), self._connection_rows(),
                         list(self.transfer_rows), self._counter_rows(), self._event_rows(), end_s, self.trace, self)

    def _abandon_unfinished(self, now: float) -> None:
        # abandon gives the record every field a finished one has (reboot does the same).
        for logical in list(self.client.logical.values()):
            if not logical.finished:
                self.nodes[CLIENT].call(lambda t, lc=logical: lc.abandon(t, "unfinished when the simulation ended"))

    def request_flows(self, request_id: int) -> list[tuple[str, tuple, list[str]]]:
        """(title, flow, nodes) for every connection of one request, for ladder diagrams: each
        attempt's connection, and after a proxied one the proxy's connection to the server.

        The proxy's connection is not tied to the client's in any record; it is the first SYN
        the proxy sends at or after the client's SYN reached it (the converter opens it on that
        SYN; SOCKS5 on the CONNECT request, later), not claimed by an earlier attempt. Needs a
        run with ``record_packets``."""
        logical = self.client.logical.get(request_id)
        if logical is None:
            return []
        proxy_syns = [(r.time_s, flow_of(r.packet)) for r in self.trace.packets
                      if r.kind == "sent" and r.src == CONVERTER and isinstance(r.packet, IpPacket)
                      and r.packet.segment.flags & TcpFlags.SYN and not r.packet.segment.flags & TcpFlags.ACK]
        claimed: set = set()
        flows = []
        for number, attempt in enumerate(logical.attempts, start=1):
            if attempt.conn is None:
                continue
            flow = attempt.conn.four_tuple
            far = CONVERTER if attempt.proxy is not None else SERVER_NODE
            nodes = [CLIENT, CONVERTER, ROUTER, SERVER_NODE] if self.on_path and far == SERVER_NODE else \
                [CLIENT, ROUTER, far]
            flows.append((f"attempt {number} ({attempt.kind}): {CLIENT} -> {far}", flow, nodes))
            if attempt.proxy is None:
                continue
            arrived = [r.time_s for r in self.trace.packets if r.kind == "delivered" and r.dst == CONVERTER
                       and isinstance(r.packet, IpPacket) and flow_of(r.packet) == flow]
            if not arrived:
                continue
            downstream = next((f for t, f in proxy_syns if t >= arrived[0] and f not in claimed), None)
            if downstream is not None:
                claimed.add(downstream)
                flows.append((f"attempt {number}, the proxy's connection: {CONVERTER} -> {SERVER_NODE}", downstream,
                              [CONVERTER, ROUTER, SERVER_NODE]))
        return flows

    def base_rtt_s(self) -> float:
        """Client-server round trip on the primary path without queueing (the unit of ``*_rtts``)."""
        p = self.scenario.paths[self.scenario.primary_path]
        return 2 * (p.delay_s + self.scenario.server.delay_s)

    def _connection_rows(self) -> list[dict]:
        rtt_s, rows = self.base_rtt_s(), []
        for record in sorted(self.client.finished, key=lambda r: r.request_id):
            row = dataclasses.asdict(record)
            for name in ("start_s", "setup_time_s", "first_byte_time_s", "completion_time_s"):
                row[name] = None if row[name] is None else float(row[name])  # SimPy's clock starts as int 0
            row["network"] = self.networks_at_request.get(record.request_id, "")
            row["transfer"] = any(t["request_id"] == record.request_id for t in self.transfer_rows)
            for name in ("setup_time_s", "first_byte_time_s"):
                value = row[name]
                row[name.replace("_time_s", "_rtts")] = None if value is None else round(value / rtt_s, 6) \
                    if rtt_s > 0 else math.nan
            rows.append(row)
        return rows

    def _counter_rows(self) -> list[dict]:
        rows: list[dict] = []

        def add(component: str, counter: str, value: Any) -> None:
            rows.append({"component": component, "counter": counter, "value": int(value)})

        machines = [(CLIENT, self.client), (SERVER_NODE, self.server)]
        if self.converter is not None:
            machines.insert(1, (CONVERTER, self.converter))
        for name, machine in machines:
            for counter, value in sorted(machine.mib.items()):
                add(name, counter, value)
            add(name, "RstsForUnknown", machine.rsts_for_unknown)
            add(name, "ConnectionsOpenAtEnd", len(machine.connections))
            # Transfer senders' counters under TcpExt names; like a kernel run's nstat deltas,
            # only those that moved.
            for (machine_name, counter), value in sorted(self._tcp_ext.items()):
                if machine_name == name and value:
                    add(name, counter, value)
        add(CLIENT, "PortsAllocated", self.client.ports.allocated)
        if self.converter is not None and hasattr(self.converter, "converter"):
            for counter, value in sorted(self.converter.converter.counters.items()):
                add(CONVERTER, f"convert_{counter}", value)
        add(ROUTER, "Unroutable", self.router.unroutable)
        for link in self.links:
            for direction in (link.forward, link.backward):
                for counter, value in direction.counters.as_dict().items():
                    add(f"link.{direction.name}", counter, value)
        for name, network in self.networks.items():  # the boxes of the last attachment
            for kind, box in network.boxes:
                add(f"middlebox.{name}.{kind}", "hits", sum(policy.hits for policy in box.policies))
        add("converter_outage", "packets_lost", self.outage.hits)
        if self.cpu is not None:
            for counter, value in self.cpu.counters().items():
                add("converter.cpu", counter, value)
        return rows

    def _event_rows(self) -> list[dict]:
        return [{"time_s": float(r.time_s), "node": r.node, "event": _event_name(r.event),
                 "detail": event_detail(r.event)} for r in self.trace.events]


def loss_component(direction: str) -> str:
    """The seed component of a link direction's loss stream (``derive_seed(seed, run, ...)``); an
    access path's directions are ``<path>.up`` and ``<path>.down``. The kernel world's delay lines
    draw from the same streams (mpsim/experiment/kernel_world.py ``loss_seeds``)."""
    return f"loss.{direction}"


def tbf_shaper(rate_bps: float, queue_bytes: int | None) -> tuple[int, int, int]:
    """(burst, queue limit, framing) in bytes of the tbf the kernel world puts on an access
    direction of this rate and queue (mpsim/testbed/shaping.py ``PathSpec.tbf_sizes``: burst
    max(15 KB, 1 ms at the rate), limit the queue's time at the rate but at least the burst and two
    frames; tbf counts the 14-byte Ethernet header)."""
    from mpsim.testbed.shaping import MTU_FRAME_BYTES, PathSpec

    queue_s = (queue_bytes or 0) * 8 / rate_bps
    burst_bytes, limit_bytes = PathSpec(rate_bps=int(rate_bps), queue_s=min(max(queue_s, 1e-6), 10.0)).tbf_sizes()
    return burst_bytes, limit_bytes, MTU_FRAME_BYTES - 1500


def run_scenario(scenario: Scenario, *, variant: str, run_index: int, record_packets: bool = False,
                 shaper: str = "ideal", path_latency_s: Mapping[str, tuple[float, float]] | None = None) -> RunResult:
    return Simulation(scenario, variant=variant, run_index=run_index, record_packets=record_packets,
                      shaper=shaper, path_latency_s=path_latency_s).run()
