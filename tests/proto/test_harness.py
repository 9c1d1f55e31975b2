"""The deterministic harness (mpsim.proto.harness): exact hop delays, filters, timer order, and
identical runs for identical seeds."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from mpsim.proto.harness import Delivery, Harness, drop_matching
from mpsim.proto.host import Acceptance, Host, Transmit
from mpsim.proto.tcp import DataReceived, Established, PeerClosed
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

CLIENT_ADDR = IPv4Address("198.18.0.1")
SERVER_ADDR = IPv4Address("198.18.0.2")


@dataclass
class Clock:
    """A machine with scripted deadlines and packets, recording when it was called."""

    deadlines: list = field(default_factory=list)
    to_send: list = field(default_factory=list)  # Transmits emitted at the next flush
    fired: list = field(default_factory=list)
    received: list = field(default_factory=list)
    never_done: bool = False

    def receive(self, port, packet, now):
        self.received.append((now, port, packet))

    def handle_timer(self, now):
        self.fired.append(now)
        if not self.never_done:
            self.deadlines.pop(0)

    def get_timer(self):
        return self.deadlines[0] if self.deadlines else None

    def outgoing(self, now):
        out, self.to_send = self.to_send, []
        return out

    def next_event(self):
        return None


def _packet(seq: int = 1) -> IpPacket:
    return IpPacket(CLIENT_ADDR, SERVER_ADDR, TcpSegment(40000, 80, seq, 0, TcpFlags.SYN, 1000))


def test_packets_arrive_after_exactly_the_hop_delay():
    harness = Harness()
    a = harness.add("a", Clock(to_send=[Transmit("p", _packet())]))
    b = harness.add("b", Clock())
    harness.link("a", "p", "b", "q", 0.125)
    harness.run(1.0)
    assert b.received == [(0.125, "q", _packet())]
    assert harness.log == [Delivery(0.125, "a", "b", _packet())]
    assert harness.now == 1.0 and a.received == []


def test_filters_drop_duplicate_and_log():
    harness = Harness()
    harness.add("a", Clock(to_send=[Transmit("p", _packet(1)), Transmit("p", _packet(2))]))
    b = harness.add("b", Clock())
    twice = lambda packet, now: [packet, packet]  # noqa: E731
    harness.link("a", "p", "b", "q", 0.01, a_to_b=[drop_matching(lambda p: p.segment.seq == 1), twice])
    harness.run(1.0)
    assert [p.segment.seq for _, _, p in b.received] == [2, 2]
    assert harness.log[0] == Delivery(0.0, "a", "b", _packet(1), dropped=True)  # logged when sent


def test_drop_matching_stops_after_count():
    keep_two = drop_matching(lambda p: True, count=2)
    assert [keep_two(_packet(), 0.0) for _ in range(4)] == [[], [], [_packet()], [_packet()]]


def test_timers_fire_in_order_and_a_late_deadline_never_moves_the_clock_back():
    harness = Harness()
    early = harness.add("early", Clock(deadlines=[1.0, 0.5]))  # the second deadline is already past
    late = harness.add("late", Clock(deadlines=[2.0]))
    harness.run(3.0)
    assert early.fired == [1.0, 1.0] and late.fired == [2.0]


def test_packet_before_timer_at_the_same_instant():
    harness = Harness()
    harness.add("a", Clock(to_send=[Transmit("p", _packet())]))
    b = harness.add("b", Clock(deadlines=[0.5]))
    calls = []
    b.receive = lambda port, packet, now: calls.append(("receive", now))
    b.handle_timer = lambda now: (calls.append(("timer", now)), b.deadlines.pop(0))
    harness.link("a", "p", "b", "q", 0.5)
    harness.run(1.0)
    assert calls == [("receive", 0.5), ("timer", 0.5)]


def test_a_machine_that_never_clears_its_timer_is_reported():
    harness = Harness()
    harness.add("stuck", Clock(deadlines=[1.0], never_done=True))
    with pytest.raises(RuntimeError):
        harness.run(2.0, max_steps=100)


def test_a_filter_that_commands_a_machine_without_input_arms_its_timer():
    # The harness asks a machine for its deadline again only after an input, output or event,
    # or after a filter ran: a filter may command any machine (here one with no links at all).
    harness = Harness()
    a = harness.add("a", Clock(deadlines=[0.125]))
    a.handle_timer = lambda now: (a.deadlines.pop(0), a.to_send.append(Transmit("p", _packet())))
    harness.add("b", Clock())
    bystander = harness.add("bystander", Clock())

    def arm_bystander(packet, now):
        bystander.deadlines.append(now + 0.25)
        return [packet]

    harness.link("a", "p", "b", "q", 0.5, a_to_b=[arm_bystander])
    harness.run(1.0)
    assert bystander.fired == [0.375]


@dataclass
class Reporter(Clock):
    """Reports an event when ``trigger`` is set (by another machine), arming its own deadline as it
    does, as the benchmark's back-to-back driver starts its next request when it reports the last."""

    trigger: bool = False
    now: float = 0.0

    def next_event(self):
        if not self.trigger:
            return None
        self.trigger = False
        self.deadlines.append(self.now + 0.25)
        return "reported"


def test_a_deadline_armed_while_reporting_an_event_is_seen():
    harness = Harness()
    harness.add("a", Clock(to_send=[Transmit("p", _packet())]))
    b = harness.add("b", Clock())
    reporter = harness.add("reporter", Reporter())

    def receive(port, packet, now):
        reporter.trigger, reporter.now = True, now

    b.receive = receive
    harness.link("a", "p", "b", "q", 0.5)
    harness.run(1.0)
    assert harness.events_of("reporter") == ["reported"] and reporter.fired == [0.75]


def test_sending_on_an_unlinked_port_is_an_error():
    harness = Harness()
    harness.add("a", Clock(to_send=[Transmit("nowhere", _packet())]))
    with pytest.raises(KeyError):
        harness.run(1.0)


# --- determinism: same seed, same run ------------------------------------------------------------


@dataclass
class Echo:
    """Server side: a listener whose connections echo what they receive and close after the client."""

    trace: list

    def on_syn(self, host, packet, now):
        return Acceptance(self)

    def on_tcp_event(self, host, conn, event, now):
        self.trace.append((now, "server", conn.remote_port, event))
        if isinstance(event, DataReceived):
            conn.send(event.data, now)
        elif isinstance(event, PeerClosed):
            conn.close(now)


@dataclass
class Talker:
    """Client side: sends a request once established and closes when the echo is complete."""

    request: bytes
    trace: list
    echoed: bytearray = field(default_factory=bytearray)

    def on_tcp_event(self, host, conn, event, now):
        self.trace.append((now, "client", conn.local_port, event))
        if isinstance(event, Established):
            conn.send(self.request, now)
        elif isinstance(event, DataReceived):
            self.echoed += event.data
            if len(self.echoed) == len(self.request):
                conn.close(now)


def _run(seed: int) -> tuple[list[Delivery], list]:
    """Three echo connections over a link losing 20% each way; the seed drives ISNs, ports and loss."""
    rng = random.Random(seed)
    harness = Harness()
    client = harness.add("client", Host("client", {"eth0": CLIENT_ADDR}, rng=rng))
    server = harness.add("server", Host("server", {"eth0": SERVER_ADDR}, rng=rng))
    loss_rng = random.Random(seed + 1)
    lossy = lambda packet, now: [] if loss_rng.random() < 0.2 else [packet]  # noqa: E731
    harness.link("client", "eth0", "server", "eth0", 0.02, a_to_b=[lossy], b_to_a=[lossy])
    trace: list = []
    server.listen(80, Echo(trace))
    for i in range(3):
        client.open(Talker(bytes([i]) * 5000, trace), CLIENT_ADDR, SERVER_ADDR, 80, 0.0)
    harness.run(600.0)
    return harness.log, trace


def test_same_seed_gives_identical_runs():
    (first_log, first_trace), (second_log, second_trace) = _run(7), _run(7)
    assert len(first_log) > 50 and any(d.dropped for d in first_log)
    assert sum(isinstance(e, Established) for *_, e in first_trace) == 6  # the run did something
    assert first_log == second_log and first_trace == second_trace


def test_another_seed_gives_another_run():
    assert _run(7)[0] != _run(8)[0]
