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

The bulk data does not cross the negotiation's links: a BulkTransfer sends light segments over
one (forward, backward) pair of link directions per subflow, delivered to its own endpoints,
while the negotiation's links deliver to the nodes. So each access path gets a *transfer path*:
one hop with the access path's rate (the bottleneck), queue, jitter and loss model (its own
generators), and the whole one-way delay from the server, through the converter when the
negotiation went through it (access + server link + 2 x converter link; once when the
converter is on the path). Transfers on one access path share its transfer path, hence its
queue; they do not share queues with the (few, small) negotiation packets. The access paths'
middleboxes are wrapped (:func:`mpsim.sim.light_filter.wrap_box`) so that transfer segments
crossing those links meet them too; the one-hop transfer paths carry none yet. A transfer's
further subflows open with MP_JOIN handshakes from the client (the receiver of a download), on
the client's SYN policy (mpsim/sim/transfer.py, "Subflows joining"). The converter relays at
line rate: its buffers and its second TCP leg to the server are not modelled in the transfer
(the subflows run end to end) -- unless ``converter.cores`` > 0 gives it a CPU
(:mod:`mpsim.sim.cpu`): then a new connection's SYN waits for a set-up job before the proxy sees
it, and each converted subflow's data waits for a per-byte relay job before its transfer path.

``converter.households`` (default 1) makes one run serve several households: every household's
arrivals are drawn from a generator of its own and issued from the one client node (so their
negotiation packets share its access links), and every transfer runs once per household, all at
its ``start_s``, each household's on transfer paths of its own (``transfer.hN.<path>``).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import simpy

from mpsim.experiment.scenario import Action, Arrivals, Direction, Scenario, TransferSpec, WorkloadSpec
from mpsim.proto.cache import CachePolicy
from mpsim.proto.components import MIDDLEBOXES, SERVERS, Placement, ProxySettings, build_proxy_host
from mpsim.proto.client import ClientHost, ClientPolicy, ConnectionFinished, Request
from mpsim.proto.events import Outcome
from mpsim.proto.harness import Router
from mpsim.proto.middlebox import PASS, BuiltBox, Site, flow_of
from mpsim.proto.mptcp import MptcpPolicy
from mpsim.proto.server import ResponderApp
from mpsim.proto.tcp import TcpPolicy
from mpsim.sim.congestion import CONGESTION_CONTROLS
from mpsim.sim.cpu import Cpu, RelayStage
from mpsim.sim.light_filter import wrap_box
from mpsim.sim.link import Link, LinkDirection
from mpsim.sim.loss import loss_from_spec
from mpsim.sim.node import SimNode
from mpsim.sim.seeds import component_rng, derive_seed
from mpsim.sim.trace import Trace
from mpsim.sim.transfer import BulkTransfer
from mpsim.wire.segment import IpPacket, TcpFlags

# Addresses from the benchmarking range (RFC 2544), one /24 per role; path i gets 198.18.(16+i).0/24.
CONVERTER_UP = ipaddress.IPv4Address("198.18.1.1")
CONVERTER_IN = ipaddress.IPv4Address("198.18.4.1")  # an on-path proxy's client-side interface
CONVERTER_DOWN = ipaddress.IPv4Address("198.18.2.1")
SERVER = ipaddress.IPv4Address("198.18.3.1")
_FIRST_PATH_NET = 16

CLIENT, ROUTER, CONVERTER, SERVER_NODE = "client", "router", "converter", "server"
SCENARIO = "scenario"  # the "node" of the scenario's own timed events in the trace


def path_address(index: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"198.18.{_FIRST_PATH_NET + index}.1")


def _net(address: ipaddress.IPv4Address) -> str:
    return str(ipaddress.ip_network(f"{address}/24", strict=False))


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


class Simulation:
    """One run of one scenario variant: build with the constructor, then :meth:`run`."""

    def __init__(self, scenario: Scenario, *, variant: str, run_index: int, record_packets: bool = False) -> None:
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
        self._running: list[tuple[dict, BulkTransfer]] = []
        self._transfer_paths: dict[tuple[str, Direction, bool, int], tuple[LinkDirection, LinkDirection]] = {}
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
                   queue_bytes: int | None = None, loss: dict | None = None, filters: tuple = ()) -> LinkDirection:
        return LinkDirection(self.env, name, delay_s=delay_s, rate_bps=rate_bps, jitter_s=jitter_s,
                             rng=self.rng(f"jitter.{name}") if jitter_s else None, queue_limit_bytes=queue_bytes,
                             loss=loss_from_spec(loss, self.rng(f"loss.{name}")) if loss else None,
                             filters=filters)

    def _build(self) -> None:
        s = self.scenario
        addresses = {name: path_address(i) for i, name in enumerate(s.paths)}
        client_addresses = {name: addresses[name] for name in self.path_names}
        proxies = ((CONVERTER_UP, s.converter.port),) if s.converter.enabled else ()
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
                                   blackhole_reset_on_success=m.blackhole_reset_on_success)
        self.client = ClientHost(CLIENT, client_addresses, rng=self.rng("client"), policy=policy, proxies=proxies,
                                 tcp_policy=TcpPolicy(syn_retries=c.syn_retries, time_wait_s=c.time_wait_s,
                                                      syn_linear_timeouts=c.syn_linear_timeouts),
                                 mptcp_policy=mptcp_policy,
                                 cache_policy=CachePolicy(off_reprobe_s=c.off_reprobe_s,
                                                          keep_cookies_on_new_network=c.keep_cookies_on_new_network))
        client_node = self._node(CLIENT, self.client)
        client_node.event_handlers.append(self._on_client_event)
        routes = {f"access.{name}": [_net(addresses[name])] for name in s.paths}
        routes |= {"conv_up": [_net(CONVERTER_UP)], "conv_down": [_net(CONVERTER_DOWN)], "server": [_net(SERVER)]}
        self.router = Router(routes)
        router_node = self._node(ROUTER, self.router)
        self.converter = self._build_converter() if s.converter.enabled else None
        conv_node = self._node(CONVERTER, self.converter) if self.converter is not None else None
        for name in self.path_names:
            p = s.paths[name]
            up = self._direction(f"{name}.up", delay_s=p.delay_s, rate_bps=p.rate_up_bps, jitter_s=p.jitter_s,
                                 queue_bytes=p.queue_bytes, loss=p.loss)
            down = self._direction(f"{name}.down", delay_s=p.delay_s, rate_bps=p.rate_down_bps, jitter_s=p.jitter_s,
                                   queue_bytes=p.queue_bytes, loss=p.loss)
            # On the path, the primary access link ends at the proxy's client side, not the router.
            far, far_port = (conv_node, "in") if self.on_path and name == s.primary_path else \
                (router_node, f"access.{name}")
            self.links.append(Link(self.env, client_node, name, far, far_port, forward=up, backward=down,
                                   name=f"path.{name}"))
            network = AccessNetwork(name, p.middleboxes, up, down, self.rng(f"middlebox_mix.{name}"),
                                    self.rng(f"middleboxes.{name}"), Site(ipaddress.IPv4Network(_net(addresses[name]))))
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
        self.server = SERVERS.get(sv.kind).create(SERVER_NODE, SERVER, self.rng("server"),
                                                  ResponderApp(w.response_size_bytes,
                                                               request_size_bytes=w.request_size_bytes), (sv.port,))
        server_node = self._node(SERVER_NODE, self.server)
        self.links.append(Link(self.env, router_node, "server", server_node, "eth0",
                               forward=self._direction("server.in", delay_s=sv.delay_s, rate_bps=sv.rate_bps),
                               backward=self._direction("server.out", delay_s=sv.delay_s, rate_bps=sv.rate_bps),
                               name="server.link"))

    def _build_converter(self) -> Any:
        cv = self.scenario.converter
        addresses = {"up": CONVERTER_UP, "down": CONVERTER_DOWN} | ({"in": CONVERTER_IN} if self.on_path else {})
        settings = ProxySettings(port=cv.port, placement=cv.placement, timing=cv.timing,
                                 client_prefixes=tuple(_net(path_address(i)) for i in range(len(self.scenario.paths))),
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

    def _request(self, scheme: str | None) -> int:
        w = self.scenario.workload
        request = Request(SERVER, self.scenario.server.port, request_size_bytes=w.request_size_bytes,
                          response_size_bytes=w.response_size_bytes, scheme=scheme)
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
                    proxy = (CONVERTER_UP, self.scenario.converter.port)
                    client_node.call(lambda t: self.client.discover_proxy(proxy, t))
            case Action.CONVERTER_DOWN | Action.CONVERTER_UP:
                self.outage.down = action is Action.CONVERTER_DOWN
            case Action.TFO_ON | Action.TFO_OFF:
                # The application's choice (TCP_FASTOPEN_CONNECT), read by every connection opened from now on.
                self.client.client_policy = replace(self.client.client_policy, tfo_to_server=action is Action.TFO_ON)

    # --- transfers ---------------------------------------------------------------------------------

    def _start_transfer(self, index: int, spec: TransferSpec, household: int = 0) -> None:
        self._outstanding += 1  # the transfer; its negotiation counts as a request of its own
        request_id = self._request(None)
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
               "via_converter": record.via_proxy}
        self.transfer_rows.append(row)
        if record.outcome == Outcome.FAILED.value:
            row["paths"] = ""
            self._transfer_done()
            return
        self._run_bulk(row, spec, multipath, household)

    def _transfer_path(self, name: str, direction: Direction, via_converter: bool,
                       household: int = 0) -> tuple[LinkDirection, LinkDirection]:
        """The (data, ACK) directions that stand for access path ``name`` of one household (see
        the module doc)."""
        key = (name, direction, via_converter, household)
        if key not in self._transfer_paths:
            s, p = self.scenario, self.scenario.paths[name]
            # Beside the router the proxy adds its link twice (there and back out); on the primary
            # path every packet crosses it once, converted or not.
            on_path = self.on_path and name == s.primary_path
            hops = 1 if on_path else 2 if via_converter else 0
            delay_s = p.delay_s + s.server.delay_s + hops * s.converter.delay_s
            tag = f"transfer.{f'h{household}.' if household else ''}{name}{'.via_converter' if via_converter else ''}"
            down = self._direction(f"{tag}.down", delay_s=delay_s, rate_bps=p.rate_down_bps, jitter_s=p.jitter_s,
                                   queue_bytes=p.queue_bytes, loss=p.loss)
            up = self._direction(f"{tag}.up", delay_s=delay_s, rate_bps=p.rate_up_bps, jitter_s=p.jitter_s,
                                 queue_bytes=p.queue_bytes, loss=p.loss)
            down.trace = up.trace = self.trace  # packets recorded (for pcap files) only when the trace asks
            self._transfer_paths[key] = (down, up) if direction is Direction.DOWNLOAD else (up, down)
        return self._transfer_paths[key]

    def capture_points(self) -> list[str]:
        """Names of the links and lone directions a pcap file can be written for (Trace.write_pcap)."""
        lone = [d.name for pair in self._transfer_paths.values() for d in pair]
        return [link.name for link in self.links] + sorted(set(lone))

    def _run_bulk(self, row: dict, spec: TransferSpec, multipath: bool, household: int = 0) -> None:
        paths: list = [self._transfer_path(name, spec.direction, row["via_converter"], household)
                       for name in (self.path_names if multipath else self.path_names[:1])]
        if self.cpu is not None and row["via_converter"]:
            # The relay's per-byte cost: each subflow's data waits for the converter's CPU first
            # (mpsim.sim.cpu.RelayStage; docs/sim.md "The converter's capacity").
            per_byte_s = self.scenario.converter.relay_cpu_s_per_gb / 1e9
            paths = [(RelayStage(self.cpu, data, per_byte_s), ack) for data, ack in paths]
        # A coupled control (LIA) links the subflows of one MPTCP connection over Reno's window;
        # a single path has nothing to couple, so it runs Reno (RFC 6356 reduces to it).
        coupled = CONGESTION_CONTROLS.get(spec.congestion_control).coupled
        transfer = BulkTransfer(self.env, paths, spec.size_bytes, cc="reno" if coupled else spec.congestion_control,
                                coupled=spec.congestion_control if coupled and multipath else "none", mptcp=multipath,
                                snd_buf_bytes=spec.snd_buf_bytes, rcv_buf_bytes=spec.rcv_buf_bytes,
                                buffers=spec.buffers.value,
                                # the client opens the further subflows (MP_JOIN) on its SYN timers
                                joins_from="receiver" if spec.direction is Direction.DOWNLOAD else "sender",
                                syn_policy=self.client.policy, kernel_hz=spec.kernel_hz,
                                name=f"transfer{row['transfer_id']}")
        self._running.append((row, transfer))
        transfer.done.callbacks.append(lambda _event: self._bulk_done(row, transfer))

    def _bulk_done(self, row: dict, transfer: BulkTransfer) -> None:
        self._fill(row, transfer)
        self._running.remove((row, transfer))
        self._transfer_done()

    @staticmethod
    def _fill(row: dict, transfer: BulkTransfer) -> None:
        record = transfer.result()
        row.update(bytes_delivered=record.bytes_delivered, subflows=record.subflows,
                   retransmissions=record.retransmissions, completed=record.completed,
                   duration_s=record.duration_s if record.completed else None,
                   goodput_bps=record.goodput_bps if record.completed else None,
                   subflow_bytes=" ".join(map(str, record.subflow_bytes)), timeouts=record.timeouts)

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


def run_scenario(scenario: Scenario, *, variant: str, run_index: int, record_packets: bool = False) -> RunResult:
    return Simulation(scenario, variant=variant, run_index=run_index, record_packets=record_packets).run()
