"""SimNode: the SimPy driver gives the harness's packet times and events for the same machines,
keeps one live timer per node, and reports misuse clearly."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address

import pytest
import simpy

from mpsim.proto.client import ClientHost, ClientPolicy, Request
from mpsim.proto.harness import Harness, Router
from mpsim.proto.host import Transmit
from mpsim.proto.middlebox import DropSegments, SegmentClass, StripOptions
from mpsim.proto.server import ResponderApp, ServerHost, ServerKind
from mpsim.sim.link import Link, LinkDirection
from mpsim.sim.loss import Bernoulli
from mpsim.sim.node import SimNode
from mpsim.sim.seeds import component_rng
from mpsim.sim.trace import Trace
from mpsim.wire.options import TcpOptionKind
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

CLIENT, SERVER = IPv4Address("198.18.0.1"), IPv4Address("198.18.3.1")


# --- the same runs under the harness and under SimPy --------------------------------------------


def _machines(scheme: str, server_kind: ServerKind, seed: int):
    client = ClientHost("client", {"eth0": CLIENT}, rng=random.Random(seed), policy=ClientPolicy(scheme=scheme))
    server = ServerHost("server", SERVER, server_kind, rng=random.Random(seed + 1), app=ResponderApp(3000))
    router = Router({"east": ["198.18.3.0/24"], "west": ["198.18.0.0/24"]})
    return client, router, server


@dataclass
class Topology:
    """client --(access)-- router --(core)-- server, with per-direction filters on the access link."""

    scheme: str = "plain"
    server_kind: ServerKind = ServerKind.LEGACY_DROP
    access_delay_s: float = 0.010
    core_delay_s: float = 0.025
    up_filters: list = field(default_factory=list)
    down_filters: list = field(default_factory=list)
    requests_at_s: tuple[float, ...] = (0.0,)
    request: Request = Request(SERVER, 80, request_size_bytes=100, response_size_bytes=3000)
    until_s: float = 200.0
    seed: int = 11


def run_harness(topo: Topology):
    client, router, server = _machines(topo.scheme, topo.server_kind, topo.seed)
    harness = Harness()
    for name, machine in (("client", client), ("router", router), ("server", server)):
        harness.add(name, machine)
    harness.link("client", "eth0", "router", "west", topo.access_delay_s, a_to_b=topo.up_filters,
                 b_to_a=topo.down_filters)
    harness.link("router", "east", "server", "eth0", topo.core_delay_s)
    for at_s in topo.requests_at_s:
        harness.run(at_s)
        client.connect(topo.request, harness.now)
    harness.run(topo.until_s)
    deliveries = [(d.time_s, d.src, d.dst, d.packet) for d in harness.log if not d.dropped]
    return deliveries, harness.events, client


def build_sim(topo: Topology, trace: Trace):
    env = simpy.Environment()
    client, router, server = _machines(topo.scheme, topo.server_kind, topo.seed)
    nodes = {name: SimNode(env, name, machine, trace)
             for name, machine in (("client", client), ("router", router), ("server", server))}
    Link(env, nodes["client"], "eth0", nodes["router"], "west", name="access",
         forward=LinkDirection(env, "access-up", delay_s=topo.access_delay_s, filters=topo.up_filters),
         backward=LinkDirection(env, "access-down", delay_s=topo.access_delay_s, filters=topo.down_filters))
    Link(env, nodes["router"], "east", nodes["server"], "eth0", name="core",
         forward=LinkDirection(env, "core-up", delay_s=topo.core_delay_s),
         backward=LinkDirection(env, "core-down", delay_s=topo.core_delay_s))

    def workload():
        for at_s in topo.requests_at_s:
            yield env.timeout(at_s - env.now)
            nodes["client"].call(lambda now: client.connect(topo.request, now))

    env.process(workload())
    return env, nodes, client


def run_sim(topo: Topology):
    trace = Trace(record_packets=True)
    env, nodes, client = build_sim(topo, trace)
    env.run(until=topo.until_s)
    deliveries = [(r.time_s, r.src, r.dst, r.packet) for r in trace.packets if r.kind == "delivered"]
    return deliveries, [tuple(e) for e in trace.events], client


def _per_node(events):
    nodes = sorted({node for _, node, _ in events})
    return {node: [(t, e) for t, n, e in events if n == node] for node in nodes}


SCENARIOS = {
    "plain": Topology(),
    "mptcp-first-synack-lost": Topology(scheme="mptcp", server_kind=ServerKind.MPTCP_V1,
                                        down_filters=[DropSegments(SegmentClass.SYN_ACK, frozenset({1}))]),
    "mptcp-stripped-three-requests": Topology(scheme="mptcp", server_kind=ServerKind.MPTCP_V1,
                                              up_filters=[StripOptions({TcpOptionKind.MPTCP})],
                                              requests_at_s=(0.0, 0.0, 2.5)),
    "lost-request-data": Topology(up_filters=[DropSegments(SegmentClass.DATA, frozenset({1}))]),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_packet_times_and_events_as_the_harness(name):
    topo = SCENARIOS[name]
    # Filters keep state: each run gets its own copies.
    harness_result = run_harness(Topology(**{**topo.__dict__, **_fresh_filters(topo)}))
    sim_result = run_sim(Topology(**{**topo.__dict__, **_fresh_filters(topo)}))
    harness_deliveries, harness_events, harness_client = harness_result
    sim_deliveries, sim_events, sim_client = sim_result
    assert len(sim_deliveries) > 10
    assert sim_deliveries == harness_deliveries
    assert _per_node(sim_events) == _per_node(harness_events)
    assert sim_client.finished == harness_client.finished
    assert all(record.outcome != "failed" for record in sim_client.finished)
    assert len(sim_client.finished) == len(topo.requests_at_s)


def _fresh_filters(topo: Topology) -> dict:
    def copy(filters):
        return [type(f)(**{k: v for k, v in f.__dict__.items() if not k.startswith("_") and k not in ("seen", "hits")})
                for f in filters]
    return {"up_filters": copy(topo.up_filters), "down_filters": copy(topo.down_filters)}


def test_the_first_synack_loss_costs_one_syn_timeout():
    _, _, client = run_sim(SCENARIOS["mptcp-first-synack-lost"])
    (record,) = client.finished
    assert record.syns_sent == 2 and record.setup_time_s == pytest.approx(1.0 + 0.070)


# --- the one-timer property -------------------------------------------------------------------


def _live_timer_times(env: simpy.Environment, node: SimNode) -> list[float]:
    """Timer events of ``node`` still in SimPy's queue that would act (current generation)."""
    live = []
    for time_s, _priority, _eid, event in env._queue:
        for callback in event.callbacks or ():
            if (isinstance(callback, partial) and callback.func == node._on_timer
                    and callback.args[0] == node._timer_generation):
                live.append(time_s)
    return live


def test_never_more_than_one_live_timer_event_per_node_and_never_late():
    # Random loss both ways and several requests: deadlines move often.
    topo = Topology(scheme="mptcp", server_kind=ServerKind.MPTCP_V1, requests_at_s=(0.0, 0.3, 0.3, 4.0))
    rng = random.Random(5)
    topo.up_filters = [lambda p, now: [] if rng.random() < 0.2 else [p]]
    topo.down_filters = [lambda p, now: [] if rng.random() < 0.2 else [p]]
    env, nodes, client = build_sim(topo, Trace())
    steps = 0
    while env.peek() < 300.0:
        env.step()
        steps += 1
        for node in nodes.values():
            live = _live_timer_times(env, node)
            deadline = node.machine.get_timer()
            assert len(live) <= 1 and live == ([] if node.wakeup_s is None else [node.wakeup_s])
            if deadline is not None:  # the one live wake-up comes at the deadline or before it (lazy)
                assert live and live[0] <= max(deadline, env.now)
    assert steps > 100
    assert nodes["client"].early_wakeups > 0 and nodes["client"].timers_fired > 0  # re-arming happened
    assert len(client.finished) == 4


@dataclass
class Scripted:
    """A machine with a settable deadline; records timer calls."""

    deadline_s: float | None = None
    fired: list = field(default_factory=list)
    received: list = field(default_factory=list)
    to_send: list = field(default_factory=list)
    events: list = field(default_factory=list)
    keep_deadline: bool = False

    def receive(self, port, packet, now):
        self.received.append((now, port, packet))

    def handle_timer(self, now):
        self.fired.append(now)
        if not self.keep_deadline:
            self.deadline_s = None

    def get_timer(self):
        return self.deadline_s

    def outgoing(self, now):
        out, self.to_send = self.to_send, []
        return out

    def next_event(self):
        return self.events.pop(0) if self.events else None


def _at(env, time_s, fn):
    def go():
        yield env.timeout(time_s - env.now)
        fn()
    env.process(go())


def test_a_moved_deadline_fires_once_at_its_new_time():
    env = simpy.Environment()
    machine = Scripted(deadline_s=1.0)
    node = SimNode(env, "n", machine)
    node.flush()

    def move(deadline_s):
        machine.deadline_s = deadline_s
    # Later: the 1.0 wake-up stays, comes up early and schedules one for 2.0.
    _at(env, 0.5, lambda: node.call(lambda now: move(2.0)))
    _at(env, 1.5, lambda: node.call(lambda now: move(1.75)))  # earlier: the 2.0 wake-up goes stale
    env.run(until=5)
    assert machine.fired == [1.75] and node.timers_scheduled == 3
    assert node.early_wakeups == 1 and node.stale_timers == 1


def test_a_deadline_moved_later_many_times_costs_one_early_wakeup():
    env = simpy.Environment()
    machine = Scripted(deadline_s=1.0)
    node = SimNode(env, "n", machine)
    node.flush()
    for index in range(1, 10):  # an RTO restarted on every ACK: 1.1, 1.2, ... 1.9
        _at(env, index * 0.1, lambda index=index: node.call(
            lambda now: setattr(machine, "deadline_s", 1.0 + index * 0.1)))
    env.run(until=5)
    assert machine.fired == [1.9] and node.timers_scheduled == 2 and node.early_wakeups == 1
    assert node.stale_timers == 0


def test_a_cleared_deadline_never_fires():
    env = simpy.Environment()
    machine = Scripted(deadline_s=1.0)
    node = SimNode(env, "n", machine)
    node.flush()
    _at(env, 0.5, lambda: node.call(lambda now: setattr(machine, "deadline_s", None)))
    env.run(until=5)
    # The 1.0 wake-up stays pending, comes up and finds no deadline.
    assert machine.fired == [] and node.early_wakeups == 1 and node.live_timers == 0


def test_a_deadline_in_the_past_fires_at_once():
    env = simpy.Environment()
    machine = Scripted()
    node = SimNode(env, "n", machine)
    _at(env, 3.0, lambda: node.call(lambda now: setattr(machine, "deadline_s", now - 2.0)))
    env.run(until=5)
    assert machine.fired == [3.0]


def test_packet_before_timer_at_the_same_instant():
    env = simpy.Environment()
    order = []
    sender, receiver = Scripted(), Scripted(deadline_s=0.5)
    receiver.receive = lambda port, packet, now: order.append(("receive", now))
    receiver.handle_timer = lambda now: (order.append(("timer", now)), setattr(receiver, "deadline_s", None))
    a, b = SimNode(env, "a", sender), SimNode(env, "b", receiver)
    Link(env, a, "p", b, "q", forward=LinkDirection(env, "f", delay_s=0.5),
         backward=LinkDirection(env, "b", delay_s=0.5))
    b.flush()  # arms b's timer first, so only the priority can put the packet ahead
    sender.to_send.append(Transmit("p", _packet()))
    a.flush()
    env.run()
    assert order == [("receive", 0.5), ("timer", 0.5)]


def test_a_timer_that_never_clears_is_reported():
    env = simpy.Environment()
    node = SimNode(env, "stuck", Scripted(deadline_s=1.0, keep_deadline=True))
    node.flush()
    with pytest.raises(RuntimeError, match="'stuck'.*t=1.0"):
        env.run(until=2)


def _packet() -> IpPacket:
    return IpPacket(CLIENT, SERVER, TcpSegment(40000, 80, 1, 0, TcpFlags.SYN, 1000))


def test_sending_on_an_unlinked_port_names_node_and_port():
    env = simpy.Environment()
    machine = Scripted(to_send=[Transmit("wlan0", _packet())])
    node = SimNode(env, "phone", machine)
    node.attach("eth0", LinkDirection(env, "d", delay_s=0))
    with pytest.raises(KeyError, match="'phone' sent on port 'wlan0'.*linked ports: 'eth0'"):
        node.flush()


def test_call_runs_at_now_returns_and_flushes_and_events_reach_trace_and_handlers():
    env = simpy.Environment()
    trace = Trace()
    machine = Scripted()
    node = SimNode(env, "n", machine, trace)
    seen = []
    node.event_handlers.append(lambda now, event: seen.append((now, event)))
    direction = LinkDirection(env, "d", delay_s=0.0, deliver=lambda p: None)
    node.attach("eth0", direction)

    def command(now):
        machine.to_send.append(Transmit("eth0", _packet()))
        machine.events.append(("did", now))
        return "result"
    _at(env, 2.0, lambda: seen.append(("returned", node.call(command))))
    env.run()
    assert seen == [(2.0, ("did", 2.0)), ("returned", "result")]
    assert trace.events == [(2.0, "n", ("did", 2.0))]
    assert direction.counters.packets_sent == 1


def test_attaching_a_port_twice_is_refused():
    env = simpy.Environment()
    node = SimNode(env, "n", Scripted())
    node.attach("eth0", LinkDirection(env, "d", delay_s=0))
    with pytest.raises(ValueError, match="already has a link"):
        node.attach("eth0", LinkDirection(env, "e", delay_s=0))


# --- determinism ------------------------------------------------------------------------------


def _seeded_run(root_seed: int):
    """Client and server over a lossy, jittery link; every random source from the seeds."""
    env = simpy.Environment()
    trace = Trace(record_packets=True)
    rng = partial(component_rng, root_seed, 0)
    client = ClientHost("client", {"eth0": CLIENT}, rng=rng("host:client"), policy=ClientPolicy(scheme="plain"))
    server = ServerHost("server", SERVER, ServerKind.LEGACY_DROP, rng=rng("host:server"), app=ResponderApp(20_000))
    a, b = SimNode(env, "client", client, trace), SimNode(env, "server", server, trace)
    Link(env, a, "eth0", b, "eth0",
         forward=LinkDirection(env, "up", delay_s=0.02, rate_bps=2e6, queue_limit_packets=20, jitter_s=0.002,
                               rng=rng("jitter:up"), loss=Bernoulli(0.05, rng("loss:up"))),
         backward=LinkDirection(env, "down", delay_s=0.02, rate_bps=2e6, queue_limit_packets=20, jitter_s=0.002,
                                rng=rng("jitter:down"), loss=Bernoulli(0.05, rng("loss:down"))))

    def workload():
        for _ in range(5):
            a.call(lambda now: client.connect(Request(SERVER, 80, 100, 20_000), now))
            yield env.timeout(0.5)
    env.process(workload())
    env.run(until=300)
    return trace, client.finished


def test_same_seeds_give_identical_traces():
    (trace1, records1), (trace2, records2) = _seeded_run(3), _seeded_run(3)
    assert any(r.reason == "loss" for r in trace1.packets)  # the run was random at all
    assert trace1.packets == trace2.packets and trace1.events == trace2.events and records1 == records2


def test_another_root_seed_gives_another_trace():
    assert _seeded_run(3)[0].packets != _seeded_run(4)[0].packets
