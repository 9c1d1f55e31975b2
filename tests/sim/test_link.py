"""Link directions: exact serialization and propagation times, drop-tail queues, filters before
loss, jitter, counters, and packet sizes equal to the encoded length."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st

from mpsim.proto.middlebox import IcmpUnreachable, IcmpUnreachableCode, StripOptions
from mpsim.sim.link import Link, LinkDirection, packet_size_bytes
from mpsim.sim.loss import Bernoulli, DropRule, Scripted
from mpsim.sim.trace import Trace, icmp_bytes
from mpsim.proto.middlebox import SegmentClass
from mpsim.wire.mp_convert import MpConvert
from mpsim.wire.mptcp import Dss, MpCapable, MpCapableFlags
from mpsim.wire.options import (
    EndOfOptionList,
    Experimental,
    FastOpen,
    MaximumSegmentSize,
    NoOperation,
    Sack,
    SackPermitted,
    TcpOptionKind,
    Timestamps,
    UnknownOption,
    WindowScale,
    encode_options,
)
from mpsim.wire.errors import WireError
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, encode_packet

A, B = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")


@dataclass(frozen=True)
class Light:
    """A transfer-style packet: only a size."""

    size_bytes: int
    tag: int = 0


def _direction(env, **kwargs):
    arrivals = []
    kwargs.setdefault("delay_s", 0.005)
    direction = LinkDirection(env, "d", deliver=lambda p: arrivals.append((env.now, p)), **kwargs)
    return direction, arrivals


def _send_at(env, direction, time_s, packet):
    def go():
        yield env.timeout(time_s)
        direction.send(packet)
    env.process(go())


def test_one_packet_takes_serialization_plus_delay():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=10e6)
    direction.send(Light(1500))
    env.run()
    assert arrivals == [(1500 * 8 / 10e6 + 0.005, Light(1500))]
    assert arrivals[0][0] == pytest.approx(0.0062, abs=1e-15)


def test_back_to_back_packets_queue_fifo():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=10e6)
    for tag in range(3):
        direction.send(Light(1500, tag))
    _send_at(env, direction, 0.010, Light(500, 3))  # the link is idle again by then
    env.run()
    assert [p.tag for _, p in arrivals] == [0, 1, 2, 3]
    assert [t for t, _ in arrivals] == pytest.approx([0.0062, 0.0074, 0.0086, 0.010 + 0.0004 + 0.005], abs=1e-12)


def test_a_packet_sent_while_the_link_is_busy_waits_for_the_last_bit():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=8e6)  # 1 byte per microsecond
    direction.send(Light(1000))  # on the wire until t = 1 ms
    _send_at(env, direction, 0.0004, Light(200, 1))
    env.run()
    assert [t for t, _ in arrivals] == pytest.approx([0.001 + 0.005, 0.0012 + 0.005], abs=1e-12)


def test_packet_queue_overflow_drops_exactly_the_excess():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=10e6, queue_limit_packets=5)
    accepted = [direction.send(Light(1500, tag)) for tag in range(10)]
    # One on the wire, five waiting, four dropped: the last ones (drop-tail).
    assert accepted == [True] * 6 + [False] * 4
    assert direction.queued_packets() == 5 and direction.queued_bytes() == 7500
    env.run()
    assert [p.tag for _, p in arrivals] == list(range(6))
    c = direction.counters
    assert (c.packets_sent, c.packets_delivered, c.packets_dropped_queue, c.bytes_dropped_queue) == (10, 6, 4, 6000)


def test_the_queue_drains_as_packets_leave():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=10e6, queue_limit_packets=2)
    for tag in range(3):  # one on the wire, two waiting: full
        direction.send(Light(1500, tag))
    env.run(until=0.0012)  # the first has left, the second is on the wire: one waits
    assert direction.queued_packets() == 1
    assert direction.send(Light(1500, 3)) and not direction.send(Light(1500, 4))
    env.run()
    assert [p.tag for _, p in arrivals] == [0, 1, 2, 3]


def test_byte_queue_limit():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=1e6, queue_limit_bytes=3000)
    sizes = [1500, 1500, 1400, 100, 200, 40]  # waiting: 1500, 1400, 100 = 3000; then nothing fits
    accepted = [direction.send(Light(size)) for size in sizes]
    assert accepted == [True, True, True, True, False, False]
    env.run()
    assert direction.counters.bytes_dropped_queue == 240 and direction.counters.bytes_delivered == 4500


def test_infinite_rate_never_queues():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=None, queue_limit_packets=0)
    for tag in range(100):
        assert direction.send(Light(9000, tag))
    env.run()
    assert {t for t, _ in arrivals} == {0.005} and [p.tag for _, p in arrivals] == list(range(100))


def test_zero_packet_queue_keeps_only_the_packet_on_the_wire():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=1e6, queue_limit_packets=0)
    assert [direction.send(Light(100)) for _ in range(3)] == [True, False, False]


def test_jitter_stays_in_bounds_reorders_and_repeats_with_the_seed():
    def run(seed):
        env = simpy.Environment()
        direction, arrivals = _direction(env, delay_s=0.010, jitter_s=0.005, rng=random.Random(seed))
        for tag in range(200):
            _send_at(env, direction, tag * 0.0001, Light(100, tag))
        env.run()
        return arrivals

    arrivals = run(1)
    assert all(0.010 <= t - p.tag * 0.0001 < 0.015 for t, p in arrivals)
    tags = [p.tag for _, p in arrivals]
    assert tags != sorted(tags)  # 5 ms of jitter over 0.1 ms spacing reorders
    assert run(1) == arrivals and run(2) != arrivals


def test_jitter_needs_its_own_rng():
    with pytest.raises(ValueError, match="rng"):
        LinkDirection(simpy.Environment(), "d", delay_s=0.01, jitter_s=0.001)


@pytest.mark.parametrize("kwargs", [{"delay_s": -1}, {"delay_s": 0, "rate_bps": 0},
                                    {"delay_s": 0, "queue_limit_bytes": 10, "queue_limit_packets": 1},
                                    {"delay_s": 0, "queue_limit_packets": -1}, {"delay_s": 0, "jitter_s": -0.1}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        LinkDirection(simpy.Environment(), "d", **kwargs)


# --- filters and loss --------------------------------------------------------------------------


def _syn(seq: int = 0, payload: bytes = b"", options: tuple = ()) -> IpPacket:
    return IpPacket(A, B, TcpSegment(40000, 80, seq, 0, TcpFlags.SYN, 1000, options=options, payload=payload))


class Recorder:
    """A loss model that drops nothing and remembers what it was asked about."""

    def __init__(self):
        self.seen = []

    def drops(self, packet, now):
        self.seen.append(packet)
        return False


def test_filters_run_before_loss_and_loss_sees_their_output():
    env = simpy.Environment()
    loss = Recorder()
    strip = StripOptions({TcpOptionKind.MPTCP})
    drop_odd = lambda packet, now: [] if packet.segment.seq % 2 else [packet]  # noqa: E731
    direction, arrivals = _direction(env, loss=loss, filters=[drop_odd, strip])
    mpc = (MpCapable(1, MpCapableFlags.H),)
    for seq in range(4):
        direction.send(_syn(seq, options=mpc))
    env.run()
    assert [p.segment.seq for p in loss.seen] == [0, 2]  # the dropped ones never reached the loss stage
    assert all(p.segment.options == () for p in loss.seen)  # and it saw the stripped packets
    assert [p for _, p in arrivals] == loss.seen
    c = direction.counters
    assert (c.packets_sent, c.packets_dropped_filter, c.packets_dropped_loss, c.packets_delivered) == (4, 2, 0, 2)


def test_a_filter_drop_is_not_a_loss_draw():
    # With filters before loss, a scripted "first SYN" loss hits the first SYN that passed them.
    env = simpy.Environment()
    loss = Scripted([DropRule(SegmentClass.SYN, {1})])
    direction, arrivals = _direction(env, loss=loss, filters=[lambda p, now: [] if p.segment.seq == 0 else [p]])
    for seq in range(3):
        direction.send(_syn(seq))
    env.run()
    assert [p.segment.seq for _, p in arrivals] == [2]
    c = direction.counters
    assert (c.packets_dropped_filter, c.packets_dropped_loss) == (1, 1)


def test_filters_skip_light_packets_but_see_icmp():
    env = simpy.Environment()
    seen = []
    direction, arrivals = _direction(env, filters=[lambda p, now: seen.append(p) or [p]])
    icmp = IcmpUnreachable(_syn(), IcmpUnreachableCode.HOST_UNREACHABLE)
    direction.send(Light(100))
    direction.send(icmp)
    env.run()
    assert seen == [icmp] and len(arrivals) == 2


def test_a_lost_packet_does_not_occupy_the_link():
    env = simpy.Environment()
    direction, arrivals = _direction(env, rate_bps=1e6, loss=Bernoulli(1.0, random.Random(0)))
    direction.send(Light(1000))
    assert direction.busy_until_s == 0.0
    direction.loss = Bernoulli(0.0, random.Random(0))
    direction.send(Light(1000))
    env.run()
    assert arrivals == [(0.008 + 0.005, Light(1000))]


def test_a_filter_that_splits_delivers_both_parts():
    env = simpy.Environment()
    halves = lambda p, now: [replace(p, segment=replace(p.segment, payload=p.segment.payload[:2])),  # noqa: E731
                             replace(p, segment=replace(p.segment, payload=p.segment.payload[2:]))]
    direction, arrivals = _direction(env, rate_bps=8e6, filters=[halves])
    direction.send(_syn(payload=b"abcd"))
    env.run()
    assert [p.segment.payload for _, p in arrivals] == [b"ab", b"cd"]
    assert [t for t, _ in arrivals] == pytest.approx([42e-6 + 0.005, 84e-6 + 0.005])  # 42 bytes each
    assert direction.counters.packets_sent == 1 and direction.counters.packets_delivered == 2


def test_unconnected_direction_refuses_to_deliver():
    env = simpy.Environment()
    LinkDirection(env, "loose", delay_s=0.001).send(Light(1))
    with pytest.raises(RuntimeError, match="loose"):
        env.run()


# --- Link -------------------------------------------------------------------------------------


class Port:
    """A node stand-in that records what reaches it."""

    def __init__(self, name):
        self.name, self.ports, self.received, self.trace = name, {}, [], None

    def attach(self, port, direction):
        self.ports[port] = direction

    def receive(self, port, packet):
        self.received.append((port, packet))


def test_link_wires_both_directions_and_names_them():
    env = simpy.Environment()
    a, b = Port("a"), Port("b")
    trace = Trace(record_packets=True)
    forward = LinkDirection(env, "ab", delay_s=0.01)
    backward = LinkDirection(env, "ba", delay_s=0.02)
    link = Link(env, a, "p0", b, "q0", forward=forward, backward=backward, trace=trace)
    assert a.ports == {"p0": forward} and b.ports == {"q0": backward}
    a.ports["p0"].send(Light(10, 1))
    b.ports["q0"].send(Light(10, 2))
    env.run()
    assert b.received == [("q0", Light(10, 1))] and a.received == [("p0", Light(10, 2))]
    assert link.name == "a:p0-b:q0"
    delivered = [(r.time_s, r.link, r.direction, r.src, r.dst) for r in trace.packets if r.kind == "delivered"]
    assert delivered == [(0.01, "a:p0-b:q0", "forward", "a", "b"), (0.02, "a:p0-b:q0", "backward", "b", "a")]
    with pytest.raises(ValueError, match="already connected"):
        Link(env, a, "p1", b, "q1", forward=forward, backward=LinkDirection(env, "x", delay_s=0))


# --- sizes ------------------------------------------------------------------------------------

_u32 = st.integers(0, 2**32 - 1)
_options = st.one_of(
    st.builds(MaximumSegmentSize, st.integers(0, 0xFFFF)),
    st.just(NoOperation()),
    st.just(SackPermitted()),
    st.builds(Timestamps, _u32, _u32),
    st.builds(WindowScale, st.integers(0, 14)),
    st.builds(FastOpen, st.sampled_from([b"", b"abcd", bytes(8), bytes(16)])),
    st.builds(Sack, st.lists(st.tuples(_u32, _u32), min_size=1, max_size=4).map(tuple)),
    st.builds(MpCapable, st.just(1), st.just(MpCapableFlags.H), st.one_of(st.none(), st.integers(0, 2**64 - 1))),
    st.builds(Dss, data_ack=st.one_of(st.none(), _u32)),
    st.builds(lambda port: MpConvert(IPv4Address("192.0.2.1"), port).to_option(), st.integers(1, 65535)),
    st.builds(Experimental, st.sampled_from([253, 254]), st.binary(max_size=12)),
    st.builds(UnknownOption, st.integers(40, 250), st.binary(max_size=10)),
)


@st.composite
def _segments(draw):
    options = tuple(draw(st.lists(_options, max_size=8)))
    raw = len(encode_options(options, limit_bytes=None, pad=False))
    padding = b""
    if draw(st.booleans()) and raw < 40:
        # An EOL followed by nonzero padding, which encodes (and must be sized) as given.
        options += (EndOfOptionList(),)
        raw += 1
        padding = draw(st.binary(min_size=-raw % 4, max_size=-raw % 4).filter(lambda b: any(b)) if raw % 4
                       else st.just(b"\x01\x00\x00\x00"))
    try:
        segment = TcpSegment(draw(st.integers(0, 65535)), 80, draw(_u32), draw(_u32),
                             TcpFlags(draw(st.integers(0, 0x1FF))), 1000, options=options,
                             payload=draw(st.binary(max_size=300)), option_padding=padding)
        segment.header_length_bytes  # raises beyond 40 bytes of options
        return segment
    except WireError:
        return TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5)  # over the 40 bytes: a plain segment instead


_packets = st.one_of(
    st.builds(IpPacket, st.just(A), st.just(B), _segments(),
              ipv4_options=st.integers(0, 10).flatmap(lambda w: st.binary(min_size=4 * w, max_size=4 * w))),
    st.builds(IpPacket, st.just(IPv6Address("2001:db8::1")), st.just(IPv6Address("2001:db8::2")), _segments()),
)


@given(_packets)
def test_packet_size_is_the_encoded_length(packet):
    assert packet_size_bytes(packet) == len(encode_packet(packet))


@given(_packets)
def test_icmp_size_matches_its_encoding(packet):
    message = IcmpUnreachable(packet, IcmpUnreachableCode.PORT_UNREACHABLE)
    assert packet_size_bytes(message) == len(icmp_bytes(message))


def test_icmp_sizes():
    syn = _syn(payload=b"x" * 100)
    assert packet_size_bytes(IcmpUnreachable(syn, IcmpUnreachableCode.HOST_UNREACHABLE)) == 56
    syn6 = IpPacket(IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2"), syn.segment)
    assert packet_size_bytes(IcmpUnreachable(syn6, 3)) == 48 + 40 + 20 + 100
    big = replace(syn6, segment=replace(syn.segment, payload=b"x" * 3000))
    assert packet_size_bytes(IcmpUnreachable(big, 3)) == 1280


def test_light_packets_use_their_size():
    assert packet_size_bytes(Light(1234)) == 1234


def test_schedule_call_orders_by_time_then_priority_then_scheduling():
    # Timers (NORMAL + 1) at time t run after every packet arrival (NORMAL) at t, even one
    # scheduled later; equal priorities keep their scheduling order.
    from simpy.events import NORMAL

    from mpsim.sim.link import schedule_call

    env = simpy.Environment()
    order: list[tuple[float, str]] = []
    schedule_call(env, 1.0, lambda e: order.append((env.now, "timer-a")), NORMAL + 1)
    schedule_call(env, 1.0, lambda e: order.append((env.now, "arrival-a")))
    schedule_call(env, 0.5, lambda e: order.append((env.now, "early")), NORMAL + 1)
    schedule_call(env, 1.0, lambda e: order.append((env.now, "timer-b")), NORMAL + 1)
    schedule_call(env, 1.0, lambda e: order.append((env.now, "arrival-b")))
    env.run()
    assert order == [(0.5, "early"), (1.0, "arrival-a"), (1.0, "arrival-b"), (1.0, "timer-a"), (1.0, "timer-b")]
    with pytest.raises(ValueError, match="delay_s must be >= 0"):
        schedule_call(env, -0.1, lambda e: None)


def test_link_module_sets_no_private_simpy_fields():
    # The links use SimPy's public API (env.schedule, an Event subclass); no code
    # assigns another object's _ok/_value.
    import ast
    import inspect

    import mpsim.sim.link as link_module

    tree = ast.parse(inspect.getsource(link_module))
    assigned = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store) and node.attr in {"_ok", "_value", "_defused"}]
    assert not assigned, f"mpsim/sim/link.py assigns SimPy private fields {assigned}"


def _light_segment(size_bytes: int):
    from mpsim.sim.transfer import Segment
    return Segment(size_bytes, None, 0, 0, size_bytes - 52, 0, None, 0, 0, 65535, 0x10, 0.0, None, False)


class _PassLight:
    """A filter that takes light segments and passes them: it sends them down the general path."""
    accepts_light_segments = True

    def __call__(self, packet, now):
        return [packet]


@pytest.mark.parametrize("filters", [(), (_PassLight(),)], ids=["fast-path", "general-path"])
def test_light_segments_queue_drop_and_arrive_alike_on_both_paths(filters):
    # LinkDirection.send has a fast path for light segments on a direction with nothing that
    # filters them, drops them at random or records them: it must do what the general path does.
    env = simpy.Environment()
    arrived = []
    direction = LinkDirection(env, "d", delay_s=0.01, rate_bps=8e6, queue_limit_packets=2, filters=filters,
                              deliver=lambda segment: arrived.append((env.now, segment.size_bytes)))
    accepted = [direction.send(_light_segment(1000)) for _ in range(5)]
    env.run()
    # 1 ms per packet: one on the wire, two queued, two dropped at the queue
    assert accepted == [True, True, True, False, False]
    assert arrived == [(pytest.approx(0.011), 1000), (pytest.approx(0.012), 1000), (pytest.approx(0.013), 1000)]
    counters = direction.counters
    assert (counters.packets_sent, counters.bytes_sent) == (5, 5000)
    assert (counters.packets_dropped_queue, counters.bytes_dropped_queue) == (2, 2000)
    assert (counters.packets_delivered, counters.bytes_delivered) == (3, 3000)


class _PassPacket:
    """A filter that passes every packet: it sends IP packets down the general path."""

    def __call__(self, packet, now):
        return [packet]


@pytest.mark.parametrize("filters", [(), (_PassPacket(),)], ids=["fast-path", "general-path"])
def test_ip_packets_queue_drop_and_arrive_alike_on_both_paths(filters):
    # A negotiating machine's IP packet on a direction with nothing that filters it, drops it at
    # random or records it takes the short path of LinkDirection.send: the same as the general one.
    packet = IpPacket(IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"),
                      TcpSegment(1, 2, 3, 4, TcpFlags.ACK, 5, (), bytes(960)))  # 1000 bytes on the wire
    env = simpy.Environment()
    arrived = []
    direction = LinkDirection(env, "d", delay_s=0.01, rate_bps=8e6, queue_limit_packets=2, filters=filters,
                              deliver=lambda p: arrived.append((env.now, p)))
    accepted = [direction.send(packet) for _ in range(5)]
    env.run()
    assert accepted == [True, True, True, False, False]
    assert arrived == [(pytest.approx(0.011), packet), (pytest.approx(0.012), packet), (pytest.approx(0.013), packet)]
    counters = direction.counters
    assert (counters.packets_sent, counters.bytes_sent) == (5, 5000)
    assert (counters.packets_dropped_queue, counters.bytes_dropped_queue) == (2, 2000)
    assert (counters.packets_delivered, counters.bytes_delivered) == (3, 3000)


def test_a_light_arrival_is_armed_again_for_later_segments():
    # LinkDirection.send_light_at arms a processed LightArrival again rather than making a new
    # event per segment: segments one after the other (each arrived before the next is sent)
    # all ride one event, and arrive when and as they should.
    env = simpy.Environment()
    arrived = []
    direction = LinkDirection(env, "d", delay_s=0.01, rate_bps=8e6,
                              deliver=lambda segment: arrived.append((env.now, segment)))
    segments = [_light_segment(1000 + i) for i in range(4)]

    def offer():
        for segment in segments:
            direction.send(segment)
            yield env.timeout(0.02)

    env.process(offer())
    env.run()
    assert [s for _, s in arrived] == segments
    assert [t for t, _ in arrived] == pytest.approx([0.02 * i + 0.01 + (1000 + i) * 8 / 8e6 for i in range(4)])
    assert len(direction._spare_arrivals) == 1  # one event for all four
