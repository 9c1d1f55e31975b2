"""System properties: a client, a proxy and a server driven together through random loss,
middleboxes, link delays, overlapping requests and re-probe triggers (docs/design.md section 7).

The topology is the truth table's (mpsim.proto.truth_table.build): client -- access link --
router (or the proxy, when it sits on the path) -- proxy / server, with the proxy each scheme
needs. Each example draws a variant, a server kind, policy knobs, link delays (some close to the
1 s SYN RTO, so that retransmission timers race with answers), middleboxes on the access link and
on the proxy-server link, and a bursty loss pattern per hop. A hypothesis state machine then
issues requests (also while others run, and after cache-changing outcomes), advances the clock,
fires re-probe triggers and toggles loss bursts.

Checked after every input of every machine: no deadline in the past. After every step: no MPTCP
extension is both negotiated and fallen back. At teardown, after a long quiet run: every request
ended with exactly one consistent record, and nothing is left behind that the run cannot explain.

Run ``pytest --hypothesis-show-statistics`` to see which outcomes and fallback reasons the
examples reached.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mpsim.proto.truth_table import (
    CLIENT,
    NO_MIDDLEBOX,
    PROXY_PORT,
    PROXY_UP,
    REQUEST,
    VARIANTS,
    Placement,
    Variant,
    build,
    table_servers,
)
from mpsim.proto.client import ConnectionFinished, FallbackTarget, SignalAckedAsData
from mpsim.proto.events import MptcpNegotiated, Outcome
from mpsim.proto.harness import Harness
from mpsim.proto.middlebox import (
    DropSegments,
    DropUnknownOptionSyns,
    MirrorMpCapable,
    Nat,
    RewritePayload,
    SegmentClass,
    SequenceRewriter,
    SplitSegments,
    StripMode,
    StripOptions,
    StripPayload,
    drop_rsts,
    drop_syns_with_data,
)
from mpsim.proto.mptcp import MptcpClientExtension, MptcpPolicy, MptcpServerExtension, MptcpState
from mpsim.proto.server import ServerApp, ServerHost, ServerKind
from mpsim.proto.tcp import TcpState

#: A proxy the client may be told about that nobody answers (the server's /24 is routed to it; the
#: unreachable server kind answers it with ICMP).
DEAD_PROXY = (IPv4Address("198.18.3.9"), PROXY_PORT)
MOVED_CLIENT = IPv4Address("198.18.0.2")  # the client's address after it moves to another network
QUIET_RUN_S = 4000.0  # longer than 15 data retransmissions at up to 120 s each, TIME-WAIT and FIN-WAIT-2
MPTCP_EXTENSIONS = (MptcpClientExtension, MptcpServerExtension)

# --- what a case is made of ---------------------------------------------------------------------

_CLASSES = st.frozensets(st.sampled_from(SegmentClass), min_size=1, max_size=2)
ONE_WAY_BOXES = st.one_of(
    st.tuples(st.just("strip-options"), st.sampled_from([(30,), (34,), (30, 34)]), _CLASSES,
              st.sampled_from(StripMode)),
    st.tuples(st.just("drop"), st.sampled_from(SegmentClass),
              st.none() | st.frozensets(st.integers(1, 4), min_size=1, max_size=3),
              st.sampled_from([None, True, False])),
    st.tuples(st.just("strip-payload"), _CLASSES),
    st.tuples(st.just("split"), st.none() | st.integers(1, 120)),
    st.tuples(st.just("rewrite-payload"), st.sampled_from([(b"REQ", b"GET"), (b"REQ 1000", b"R")]), _CLASSES),
    st.sampled_from([("drop-syns-with-data",), ("drop-rsts",), ("drop-unknown-option-syns",)]),
)
TWO_WAY_BOXES = st.one_of(st.sampled_from([("seq-rewrite",), ("mirror-mp-capable", True), ("mirror-mp-capable", False)]),
                          st.tuples(st.just("nat"), st.booleans(), st.sampled_from([None, 5.0, 60.0])))
#: A middlebox on one link: (spec, direction); "forward" is the initiator-to-responder hop.
BOXES = st.one_of(st.tuples(ONE_WAY_BOXES, st.sampled_from(["forward", "backward"])),
                  st.tuples(TWO_WAY_BOXES, st.just("both")))


def make_box(spec: tuple, rng: random.Random, link: str) -> Any:
    """A fresh policy object for a drawn spec (policies hold per-flow state); a NAT's public
    addresses are in the inside host's /24, so that the router sends the answers back to it."""
    match spec:
        case ("strip-options", kinds, classes, mode):
            return StripOptions(frozenset(kinds), classes, mode)
        case ("drop", segment_class, occurrences, with_payload):
            return DropSegments(segment_class, occurrences, with_payload)
        case ("strip-payload", classes):
            return StripPayload(classes)
        case ("split", first_bytes):
            return SplitSegments(first_bytes)
        case ("rewrite-payload", (pattern, replacement), classes):
            return RewritePayload(pattern, replacement, classes)
        case ("drop-syns-with-data",):
            return drop_syns_with_data()
        case ("drop-rsts",):
            return drop_rsts()
        case ("drop-unknown-option-syns",):
            return DropUnknownOptionSyns()
        case ("seq-rewrite",):
            return SequenceRewriter(rng)
        case ("mirror-mp-capable", with_rng):
            return MirrorMpCapable(rng if with_rng else None)
        case ("nat", paired, mapping_timeout_s):
            inside = "198.18.0" if link == "access" else "198.18.2"
            return Nat([IPv4Address(f"{inside}.{last}") for last in (100, 101)], paired=paired,
                       mapping_timeout_s=mapping_timeout_s)
    raise AssertionError(spec)


@dataclass(frozen=True)
class Case:
    """Everything drawn once per example (the state machine draws the rest step by step)."""

    variant: Variant
    mptcp_policy: MptcpPolicy
    server: ServerKind
    delays_s: tuple[float, float, float]  # access, proxy-server, router-server (one way)
    access_boxes: tuple = ()
    proxy_server_boxes: tuple = ()
    loss_runs: tuple = ()  # per hop of HOPS: ((drop?, packets), ...) consumed packet by packet, then no loss
    converter: tuple = ()  # ConverterPolicy changes, as (field, value) pairs (RFC 8803 converters only)
    tcp: tuple = ()  # TcpPolicy changes for every host
    tfo: tuple = ()  # the client's TfoPolicy changes
    seed: int = 1


def _pairs(changes: dict) -> tuple:
    return tuple(sorted(changes.items()))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    variant = draw(st.sampled_from(VARIANTS))
    policy = replace(variant.policy, **draw(st.fixed_dictionaries({}, optional={
        "fallback": st.sampled_from(FallbackTarget), "upstream_mptcp": st.booleans(),
        "convert_info_first": st.booleans(), "mptcp_to_server": st.booleans(), "tfo_to_server": st.booleans(),
        "signal_acked_as_data": st.sampled_from(SignalAckedAsData), "max_attempts": st.integers(1, 6),
        "proxy_syn_retries": st.integers(0, 3), "reply_timeout_s": st.sampled_from([0.05, 1.0, 10.0]),
        "response_timeout_s": st.sampled_from([2.0, 300.0]), "bypass_mptcp_servers": st.booleans()})))
    mptcp_policy = MptcpPolicy(retry_with_v0=draw(st.booleans()), checksums=draw(st.booleans()),
                               syn_retrans_before_tcp_fallback=draw(st.sampled_from([None, 0, 2])))
    delays = st.sampled_from([0.0, 0.001, 0.01, 0.25, 0.5, 1.0])
    hop_loss = st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=4).map(tuple)
    converter = st.fixed_dictionaries({}, optional={
        "require_cookie": st.booleans(), "issue_cookies": st.booleans(), "max_sessions": st.integers(0, 2),
        "resource_backoff_s": st.sampled_from([0, 1, 40]), "network_failure_backoff_s": st.sampled_from([0, 2]),
        "connect_timeout_s": st.sampled_from([0.5, 2.0, 30.0]), "message_timeout_s": st.sampled_from([0.5, 10.0]),
        "accept_syn_without_message": st.booleans(), "allow_hairpin": st.booleans(),
        "supported_kinds": st.sampled_from([(4, 8, 34), (4, 8, 30, 34), (30,), ()])})
    tcp = st.fixed_dictionaries({}, optional={
        "syn_retries": st.integers(0, 6), "synack_retries": st.integers(0, 5), "data_retries": st.integers(0, 15),
        "time_wait_s": st.sampled_from([0.0, 1.0, 60.0]), "timestamps": st.booleans(),
        "retransmit_syn_data": st.booleans(), "resend_unacked_syn_data": st.booleans()})
    tfo = st.fixed_dictionaries({}, optional={
        "cookieless": st.booleans(), "syn_loss_backoff_base_s": st.sampled_from([None, 1.0]),
        "negative_cache_s": st.sampled_from([None, 30.0]), "cookie_request_retry_s": st.sampled_from([None, 5.0])})
    return Case(replace(variant, policy=policy), mptcp_policy, draw(st.sampled_from(table_servers())),
                (draw(delays), draw(delays), draw(delays)),
                tuple(draw(st.lists(BOXES, max_size=2))), tuple(draw(st.lists(BOXES, max_size=2))),
                tuple(draw(hop_loss) for _ in HOPS), _pairs(draw(converter)), _pairs(draw(tcp)), _pairs(draw(tfo)),
                draw(st.integers(0, 2**32)))


# --- the system under test ----------------------------------------------------------------------

#: Where the boxes and the loss sit: each link by the (machine, port) that starts its forward hop.
LINKS = {"access": ("client", "eth0"), "proxy-server": ("proxy", "down")}
HOPS = tuple((link, direction) for link in LINKS for direction in ("forward", "backward"))


@dataclass
class Loss:
    """Bursty loss on one hop: the drawn runs first (packet by packet), and a burst switch that
    drops everything while on."""

    runs: list = field(default_factory=list)
    burst: bool = False

    def __call__(self, packet: Any, now: float) -> list:
        drop = self.burst
        if self.runs:
            lose, count = self.runs[0]
            drop = drop or lose
            self.runs[0] = (lose, count - 1)
            if count <= 1:
                self.runs.pop(0)
        return [] if drop else [packet]


class Watched:
    """A machine as the harness sees it, checking after every input that its deadline is not in the
    past (after a timer: not even now, or the harness would spin on it). Raises at once, so that
    the failure points at the input that left the deadline behind."""

    def __init__(self, name: str, machine: Any) -> None:
        self.name, self.machine = name, machine

    def check(self, now: float, after: str) -> None:
        deadline = self.machine.get_timer()
        assert deadline is None or deadline > now or after != "timer" and deadline == now, \
            f"{self.name}: deadline {deadline} after {after} at {now}"

    def receive(self, port: str, packet: Any, now: float) -> None:
        self.machine.receive(port, packet, now)
        self.check(now, "receive")

    def handle_timer(self, now: float) -> None:
        self.machine.handle_timer(now)
        self.check(now, "timer")

    def get_timer(self) -> float | None:
        return self.machine.get_timer()

    def outgoing(self, now: float) -> list:
        return self.machine.outgoing(now)

    def next_event(self) -> Any:
        return self.machine.next_event()


class System:
    """The truth table's topology with a case's knobs, delays, middleboxes and loss on it."""

    def __init__(self, case: Case) -> None:
        v = case.variant
        self.harness, self.client = build(v.policy.scheme, NO_MIDDLEBOX, case.server, rngs=random.Random, seed=case.seed,
                                          client_policy=v.policy, timing=v.timing, placement=v.placement)
        h = self.harness
        self.proxy, self.server = h.machines["proxy"], h.machines["server"]
        self.client.mptcp_policy = self.client.mptcp_blackhole.policy = case.mptcp_policy
        if hasattr(self.proxy, "converter"):
            self.proxy.converter.policy = replace(self.proxy.converter.policy, **dict(case.converter))
        for host in (self.client, self.proxy, self.server):
            host.policy = replace(host.policy, **dict(case.tcp))
        self.proxy.downstream_policy = replace(self.proxy.downstream_policy, **dict(case.tcp))
        self.client.tfo.policy = replace(self.client.tfo.policy, **dict(case.tfo))
        self.hops = {}
        for link, forward_key in LINKS.items():
            forward = h.hops[forward_key]
            self.hops[(link, "forward")] = forward
            self.hops[(link, "backward")] = h.hops[(forward.dst, forward.dst_port)]
        for (link, _), hop in self.hops.items():
            hop.delay_s = case.delays_s[0 if link == "access" else 1]
        h.hops[("server", "eth0")].delay_s = h.hops[("router", "s")].delay_s = case.delays_s[2]
        self.loss = {hop: Loss(list(runs)) for hop, runs in zip(HOPS, case.loss_runs)}
        for hop in HOPS:
            self.hops[hop].filters = [self.loss[hop]]
        rng = random.Random(case.seed)
        self.boxes = []
        for link, boxes in (("access", case.access_boxes), ("proxy-server", case.proxy_server_boxes)):
            for spec, direction in boxes:
                box = make_box(spec, rng, link)
                self.boxes.append(box)
                if direction in ("forward", "both"):
                    self.hops[(link, "forward")].filters.append(box.forward)
                if direction in ("backward", "both"):
                    self.hops[(link, "backward")].filters.append(box.backward if direction == "both" else box)
        self.watched = {name: Watched(name, m) for name, m in h.machines.items()}
        h.machines.update(self.watched)
        self.issued: list[int] = []
        self.vanished: list[str] = []  # peers that forgot their connections without a word

    @property
    def now(self) -> float:
        return self.harness.now

    def request(self, scheme: str | None) -> None:
        self.issued.append(self.client.connect(replace(REQUEST, scheme=scheme), self.now))
        self.watched["client"].check(self.now, "connect")

    def trigger(self, name: str) -> None:
        if name == "reboot":
            self.client.reboot(self.now)
            self.vanished.append("client")
        elif name == "attach_network":
            self.client.attach_network(self.now)
        elif name == "move_network":  # a new address: connections on the old one are gone
            address = MOVED_CLIENT if self.client.interfaces["eth0"] != MOVED_CLIENT else CLIENT
            self.client.attach_network(self.now, {"eth0": address})
            self.vanished.append("client")
        elif name == "server_restart":
            self.restart_server()
        elif name == "discover_proxy":
            self.client.discover_proxy((PROXY_UP, PROXY_PORT), self.now)
        else:
            self.client.discover_proxy(DEAD_PROXY, self.now)
        self.watched["client"].check(self.now, name)

    def restart_server(self) -> None:
        """The server process restarts: its connections and its application's memory are gone
        (no RST: it no longer knows them), its listeners are back at once."""
        self.server.connections.clear()
        self.server.owners.clear()
        for memory in vars(self.server.app).values():
            if isinstance(memory, (dict, set)):
                memory.clear()
        self.vanished.append("server")

    def mptcp_extensions(self) -> list[Any]:
        """Every MPTCP extension in reach: the client's attempts', and those of live connections."""
        found = [a.mptcp for lc in self.client.logical.values() for a in lc.attempts if a.mptcp is not None]
        for host in (self.client, self.proxy, self.server):
            found += [e for c in host.connections.values() for e in c.extensions if isinstance(e, MPTCP_EXTENSIONS)]
        return found

    # --- the checks ------------------------------------------------------------------------------

    def check_step(self) -> None:
        for machine in self.watched.values():
            machine.check(self.now, "step")
        for ext in self.mptcp_extensions():
            assert not (ext.negotiated and ext.fallback_reason is not None), ext.__dict__
            assert (ext.state is MptcpState.FALLEN_BACK) == (ext.fallback_reason is not None), ext.state
        assert all(lc.deadline is None for lc in self.client.logical.values() if lc.finished)

    def finish(self) -> None:
        """Lift the loss bursts, run until everything is quiet, and check what is left."""
        for loss in self.loss.values():
            loss.burst = False
        self.harness.run(self.now + QUIET_RUN_S)
        self.check_step()
        self.check_records()
        self.check_leftovers()

    def check_records(self) -> None:
        assert Counter(r.request_id for r in self.client.finished) == Counter(self.issued)
        finished_events = self.harness.events_of("client", ConnectionFinished)
        assert sorted(e.record.request_id for e in finished_events) == sorted(self.issued)
        for record in self.client.finished:
            check_record(record, REQUEST.response_size_bytes)
            event(f"outcome {record.outcome} {record.fallback_reason or record.detail}")
            if record.mptcp and record.outcome != "failed" and not any(isinstance(b, Nat) for b in self.boxes):
                self.check_peer_negotiated(record)
        event(f"{len(self.issued)} requests")

    def check_peer_negotiated(self, record: Any) -> None:
        """MPTCP on the client's leg takes two: the far end of that leg (server, or proxy) reported
        MptcpNegotiated for the same connection during the request."""
        local, local_port, remote, remote_port = self.client.logical[record.request_id].attempts[-1].conn.four_tuple
        peer_view = (remote, remote_port, local, local_port)
        end_s = record.start_s + record.completion_time_s
        assert any(isinstance(e, MptcpNegotiated) and e.four_tuple == peer_view and record.start_s <= t <= end_s
                   for t, name, e in self.harness.events if name != "client"), record

    def check_leftovers(self) -> None:
        """The client keeps nothing. The proxy and the server keep only idle connections (no
        timer: nothing left to send), as TCP without keep-alive does, and only when the run can
        explain why the peer went away without a word: a host rebooted, restarted or moved, or
        packets were lost or altered (a lost RST; a timeout, which sends none). A proxy keeps
        only the sessions of those connections."""
        assert self.client.connections == {}, _states(self.client)
        explained = bool(self.vanished) or any(d.dropped for d in self.harness.log) \
            or any(getattr(box, "hits", 0) for box in self.boxes)
        for host in (self.proxy, self.server):
            for conn in host.connections.values():
                assert explained, _states(host)
                assert conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT), _states(host)
                assert conn.get_timer() is None, _states(host)
                event(f"idle leftover on {host.name}")
        live = set(map(id, self.proxy.connections.values()))
        for relay in self.proxy.relays:
            assert {id(relay.upstream), id(relay.downstream)} & live, relay.session.state
            assert relay.session.get_timer() is None, relay.session.state
        if hasattr(self.proxy, "converter") and not self.proxy.relays:
            assert self.proxy.converter.active_sessions == 0


def _states(host: Any) -> dict:
    return {key: (c.state.name, c.get_timer()) for key, c in host.connections.items()}


def check_record(record: Any, response_size_bytes: int) -> None:
    """One logical connection's record is consistent with its outcome."""
    outcome = Outcome(record.outcome)
    assert record.source_ports_used == record.attempts, record
    assert record.syns_sent >= record.source_ports_used, record
    times = [t for t in (record.setup_time_s, record.first_byte_time_s, record.completion_time_s) if t is not None]
    assert times == sorted(times) and all(t >= 0 for t in times), record
    if outcome is Outcome.FAILED:
        assert record.fallback_reason or record.detail, record
        assert record.completion_time_s is None, record
        return
    assert record.bytes_delivered == response_size_bytes, record
    assert None not in (record.setup_time_s, record.first_byte_time_s, record.completion_time_s), record
    if outcome is Outcome.TCP:
        assert record.fallback_reason is None and not record.mptcp and not record.via_proxy, record
    elif outcome is Outcome.MPTCP:
        assert record.mptcp and not record.via_proxy, record
    elif outcome is Outcome.FALLBACK_TCP:  # fallen back: a reason, and never MPTCP on the client's leg
        assert record.fallback_reason is not None and not record.mptcp, record
    else:
        assert record.via_proxy, record


# --- the state machine --------------------------------------------------------------------------

#: A request may override the variant's scheme with a direct one (the proxy only speaks the variant's).
SCHEMES = st.sampled_from([None, "plain", "mptcp"])
TRIGGERS = st.sampled_from(["reboot", "attach_network", "move_network", "discover_proxy", "discover_dead_proxy",
                            "server_restart"])
ADVANCES_S = st.sampled_from([0.0, 0.005, 0.03, 0.5, 1.0, 3.0, 12.0, 45.0])


class SystemMachine(RuleBasedStateMachine):
    system: System

    @initialize(case=cases(), scheme=SCHEMES)
    def build(self, case: Case, scheme: str | None) -> None:
        self.system = System(case)
        self.system.request(scheme)

    @rule(scheme=SCHEMES)
    def request(self, scheme: str | None) -> None:
        self.system.request(scheme)

    @rule(scheme=SCHEMES, dt_s=ADVANCES_S)
    def request_then_advance(self, scheme: str | None, dt_s: float) -> None:
        self.system.request(scheme)
        self.advance(dt_s)

    @rule(dt_s=ADVANCES_S)
    def advance(self, dt_s: float) -> None:
        self.system.harness.run(self.system.now + dt_s)

    @rule(trigger=TRIGGERS)
    def trigger(self, trigger: str) -> None:
        self.system.trigger(trigger)

    @rule(hop=st.sampled_from(HOPS))
    def toggle_loss_burst(self, hop: tuple[str, str]) -> None:
        self.system.loss[hop].burst = not self.system.loss[hop].burst

    @invariant()
    def consistent(self) -> None:
        self.system.check_step()

    def teardown(self) -> None:
        if hasattr(self, "system"):
            self.system.finish()


TestSystem = SystemMachine.TestCase
# About 25 ms an example: 300 examples in CI take under 10 s.
TestSystem.settings = settings(max_examples=300 if os.environ.get("CI") else 100, stateful_step_count=30,
                               deadline=None)


# --- failures the machine found, as minimal reproductions ------------------------------------------


def _run_one(scheme: str, server: ServerKind | ServerHost, *, down: list | None = None) -> tuple[Harness, Any]:
    """One request through the truth table's topology: ``down`` filters the access link towards
    the client; a ServerHost given as ``server`` replaces the truth table's."""
    harness, client = build(scheme, NO_MIDDLEBOX, server if isinstance(server, ServerKind) else ServerKind.CLOSED,
                            rngs=random.Random)
    if isinstance(server, ServerHost):
        harness.machines["server"] = server
    harness.hops[("router", "c")].filters = down or []
    client.connect(REQUEST, 0.0)
    harness.run(QUIET_RUN_S)
    return harness, client


def test_a_blackholed_response_ends_the_request():
    # Every data segment from the server is lost: the server gives up after its retransmissions
    # (without an RST, as Linux), and the client, with nothing outstanding, hears nothing more.
    _, client = _run_one("plain", ServerKind.LEGACY_DROP, down=[DropSegments(SegmentClass.DATA)])
    assert [r.outcome for r in client.finished] == ["failed"]


def test_an_icmp_error_ends_the_request():
    _, client = _run_one("plain", ServerKind.UNREACHABLE)
    assert [r.outcome for r in client.finished] == ["failed"]


class _HangUp(ServerApp):
    """Reads the request and closes without answering."""

    def on_data(self, host: Any, conn: Any, data: bytes, now: float) -> None:
        conn.close(now)


def test_a_response_cut_short_is_no_success():
    server = ServerHost("server", REQUEST.destination, ServerKind.LEGACY_DROP, rng=random.Random(1), app=_HangUp())
    _, client = _run_one("plain", server)
    [record] = client.finished
    assert record.bytes_delivered == 0
    assert record.outcome == "failed", record


def test_the_on_path_topology_routes_every_proxy_address():
    variant = next(v for v in VARIANTS if v.placement is Placement.ON_PATH)
    policy = replace(variant.policy, fallback=FallbackTarget.OTHER_PROXY)
    harness, client = build(policy.scheme, NO_MIDDLEBOX, ServerKind.LEGACY_DROP, rngs=random.Random, client_policy=policy,
                            placement=variant.placement)
    client.discover_proxy((IPv4Address("198.18.1.2"), PROXY_PORT), 0.0)  # beside the on-path proxy's address
    client.connect(replace(REQUEST, scheme="convert"), 0.0)  # refused by the proxy, then the other one
    harness.run(QUIET_RUN_S)
    assert len(client.finished) == 1
