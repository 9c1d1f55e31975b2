"""Routes (mpsim/sim/route.py): light segments forwarded hop by hop over real link directions,
sharing their queues with negotiation packets, and the filter rule for light segments."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
import simpy

from mpsim.sim.link import Link, LinkDirection
from mpsim.sim.node import SimNode
from mpsim.sim.route import Flow, FoldedHops, Route, forward_segment
from mpsim.sim.transfer import BulkTransfer, Segment
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

A, B = IPv4Address("198.18.0.1"), IPv4Address("198.18.3.1")
RATE_BPS = 8e6  # 1000 bytes take 1 ms


class Recorder:
    """A machine that keeps what it receives and sends nothing."""

    def __init__(self) -> None:
        self.received: list = []

    def receive(self, port, packet, now):
        self.received.append((now, packet))

    def outgoing(self, now):
        return []

    def next_event(self):
        return None

    def get_timer(self):
        return None


class Endpoint:
    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.arrivals: list[float] = []

    def receive(self, segment: Segment) -> None:
        self.arrivals.append(self.env.now)


def _segment(endpoint: Endpoint, size_bytes: int = 1000) -> Segment:
    return Segment(size_bytes, endpoint, 0, 0, size_bytes - 52, 0, None, 0, 0, 65535, 0x18, 0.0, None, False)


def _ip_packet(size_bytes: int = 1000) -> IpPacket:
    packet = IpPacket(A, B, TcpSegment(40000, 80, 1, 1, TcpFlags.ACK, 1000, payload=bytes(size_bytes - 40)))
    assert packet.length_bytes == size_bytes
    return packet


def _three_hops():
    """a --h1 (1 ms, 8 Mbit/s)--> r1 --h2 (2 ms, 8 Mbit/s)--> r2 --h3 (3 ms, no rate)--> b, each a
    Link between SimNodes whose machines record what reaches them."""
    env = simpy.Environment()
    machines = {name: Recorder() for name in ("a", "r1", "r2", "b")}
    nodes = {name: SimNode(env, name, machine) for name, machine in machines.items()}
    h1 = LinkDirection(env, "h1", delay_s=0.001, rate_bps=RATE_BPS)
    h2 = LinkDirection(env, "h2", delay_s=0.002, rate_bps=RATE_BPS)
    h3 = LinkDirection(env, "h3", delay_s=0.003)
    for (x, y), fwd in ((("a", "r1"), h1), (("r1", "r2"), h2), (("r2", "b"), h3)):
        Link(env, nodes[x], "out", nodes[y], "in", forward=fwd,
             backward=LinkDirection(env, f"{fwd.name}-back", delay_s=0.001))
    return env, machines, (h1, h2, h3)


def test_a_segment_crosses_three_hops_and_reaches_only_its_endpoint():
    env, machines, hops = _three_hops()
    endpoint = Endpoint(env)
    route = Route("r", hops, fold=False)
    assert route.send(_segment(endpoint))
    env.run()
    # h1: 1 ms serialization + 1 ms; h2: 1 + 2 ms; h3: 3 ms (no rate).
    assert endpoint.arrivals == pytest.approx([0.008])
    assert all(not m.received for m in machines.values())  # no machine ever saw the light segment
    assert [h.counters.packets_delivered for h in hops] == [1, 1, 1]


def test_a_segment_queues_behind_a_negotiation_packet_on_a_shared_hop():
    env, machines, (h1, h2, h3) = _three_hops()
    endpoint = Endpoint(env)
    route = Route("r", (h1, h2, h3), fold=False)
    route.send(_segment(endpoint))
    # A negotiation packet offered to h2 at 1.5 ms holds it until 2.5 ms; the segment arrives at
    # r1 at 2 ms and waits: it leaves h2 at 3.5 ms (not 3), reaches r2 at 5.5 and b at 8.5 ms.
    env.process(_offer_at(env, 0.0015, h2, _ip_packet()))
    env.run()
    assert endpoint.arrivals == pytest.approx([0.0085])
    assert [t for t, _ in machines["r2"].received] == pytest.approx([0.0045])  # the packet went to r2's machine


def test_a_negotiation_packet_queues_behind_a_segment_on_a_shared_hop():
    env, machines, (h1, h2, h3) = _three_hops()
    endpoint = Endpoint(env)
    Route("r", (h1, h2, h3), fold=False).send(_segment(endpoint))
    # The segment occupies h2 from 2 to 3 ms; the packet offered at 2.5 ms leaves at 4 ms.
    env.process(_offer_at(env, 0.0025, h2, _ip_packet()))
    env.run()
    assert endpoint.arrivals == pytest.approx([0.008])
    assert [t for t, _ in machines["r2"].received] == pytest.approx([0.006])


def _offer_at(env, at_s, direction, packet):
    yield env.timeout(at_s)
    direction.send(packet)


def test_hops_without_a_queue_fold_into_one_delay_and_keep_their_counters():
    env, machines, (h1, h2, h3) = _three_hops()
    h2.rate_bps = None  # h2 and h3: pure delay
    endpoint = Endpoint(env)
    route = Route("r", (h1, h2, h3))
    assert route.steps[0] is h1 and isinstance(route.steps[1], FoldedHops) and len(route.steps) == 2
    route.send(_segment(endpoint))
    env.run()
    assert endpoint.arrivals == pytest.approx([0.002 + 0.002 + 0.003])
    assert [h.counters.packets_delivered for h in (h1, h2, h3)] == [1, 1, 1]
    # A hop named volatile (its filters may change) is never folded.
    assert len(Route("v", (h1, h2, h3), volatile={h3}).steps) == 3


class CountingFilter:
    def __init__(self, drop: bool = False) -> None:
        self.seen: list = []
        self.drop = drop

    def __call__(self, packet, now):
        self.seen.append(packet)
        return [] if self.drop else [packet]


class LightFilter(CountingFilter):
    accepts_light_segments = True


def test_only_filters_that_accept_light_segments_see_them():
    env = simpy.Environment()
    plain, light = CountingFilter(drop=True), LightFilter()
    direction = LinkDirection(env, "d", delay_s=0.001, filters=[light, plain], deliver=forward_segment)
    endpoint = Endpoint(env)
    segment = _segment(endpoint)
    Route("r", [direction], fold=False).send(segment)
    env.run()
    assert plain.seen == [] and light.seen == [segment]  # the dropping filter never saw it: it passed
    assert endpoint.arrivals == pytest.approx([0.001])
    packet = _ip_packet()
    direction.deliver = lambda p: None
    direction.send(packet)
    assert plain.seen == [packet] and light.seen == [segment, packet]


def test_a_filter_that_accepts_light_segments_can_drop_them():
    env = simpy.Environment()
    direction = LinkDirection(env, "d", delay_s=0.001, filters=[LightFilter(drop=True)], deliver=forward_segment)
    endpoint = Endpoint(env)
    assert not Route("r", [direction]).send(_segment(endpoint))
    env.run()
    assert endpoint.arrivals == [] and direction.counters.packets_dropped_filter == 1


def test_a_bulk_transfer_over_routes_completes_with_the_hops_delays():
    env, _, (h1, h2, h3) = _three_hops()
    back = [LinkDirection(env, f"b{i}", delay_s=d, rate_bps=RATE_BPS * 10, deliver=forward_segment)
            for i, d in enumerate((0.003, 0.002, 0.001))]
    transfer = BulkTransfer(env, [(Route("data", (h1, h2, h3)), Route("ack", back))], 200_000)
    env.run(until=transfer.done)
    record = transfer.result()
    assert record.completed and record.retransmissions == 0
    # The first RTT sample: 1 ms + 2 ms + 3 ms + the 1 ms serialization per rated hop there,
    # plus the ACK's 6 ms back: SRTT starts above 14 ms.
    assert record.subflow_srtt_s[0] > 0.014


def test_a_route_relabels_a_recorded_segment_where_the_flow_changes():
    from mpsim.sim.trace import Trace

    env = simpy.Environment()
    trace = Trace(record_packets=True)
    first = LinkDirection(env, "first", delay_s=0.001, deliver=forward_segment, trace=trace)
    second = LinkDirection(env, "second", delay_s=0.001, deliver=forward_segment, trace=trace)
    leg1 = Flow(A, 40000, IPv4Address("198.18.1.1"), 1234, seq_base=1000, ack_base=5000)
    leg2 = Flow(IPv4Address("198.18.2.1"), 50000, B, 80, seq_base=7, ack_base=9, data_level=True)
    endpoint = Endpoint(env)
    segment = Segment(1000, endpoint, 1, 100, 948, 0, None, 3000, 0, 65535, 0x18, 0.0, None, True)
    Route("r", [first, second], legs=[leg1, leg2]).send(segment)
    env.run()
    on_first = trace.packets_at("first")[0][1].to_ip_packet()
    on_second = trace.packets_at("second")[0][1].to_ip_packet()
    assert (on_first.src, on_first.segment.src_port, on_first.segment.seq) == (A, 40000, 1100)
    # The relay's TCP leg: its 4-tuple, the data-level sequence number (DSN 3000 + 7), no DSS.
    assert (on_second.src, on_second.segment.dst_port, on_second.segment.seq) == (IPv4Address("198.18.2.1"), 80, 3007)
    assert not any(type(o).__name__ == "Dss" for o in on_second.segment.options)
    assert any(type(o).__name__ == "Dss" for o in on_first.segment.options)


def test_bad_routes_are_refused_with_a_clear_message():
    env = simpy.Environment()
    d = LinkDirection(env, "d", delay_s=0.0)
    with pytest.raises(ValueError, match="at least one hop"):
        Route("r", [])
    with pytest.raises(ValueError, match="one flow per hop"):
        Route("r", [d], legs=[])



class _PassLight:
    """Passes everything, light segments included: it puts a hop on the general path of
    LinkDirection.send (no arrival time passed on; the node or forward_segment moves segments on)."""

    accepts_light_segments = True

    def __call__(self, packet, now):
        return [packet]


def _queued_route_run(filters):
    """Seven segments offered over 1.2 ms to three rated hops, h1 bounded at 3 packets, h2 (to a
    SimNode, through a Link) at 2,500 bytes; returns what was accepted, dropped, delivered, and
    the arrival instants."""
    env = simpy.Environment()
    nodes = [SimNode(env, name, Recorder()) for name in ("r1", "r2")]
    h1 = LinkDirection(env, "h1", delay_s=0.0013, rate_bps=RATE_BPS, queue_limit_packets=3, filters=filters,
                       deliver=forward_segment)
    h2 = LinkDirection(env, "h2", delay_s=0.0021, rate_bps=RATE_BPS / 3, queue_limit_bytes=2500, filters=filters)
    h3 = LinkDirection(env, "h3", delay_s=0.0007, rate_bps=RATE_BPS * 1.7, filters=filters,
                       deliver=forward_segment)
    Link(env, nodes[0], "out", nodes[1], "in", forward=h2, backward=LinkDirection(env, "h2-back", delay_s=0.001))
    endpoint = Endpoint(env)
    route = Route("r", (h1, h2, h3), fold=False)
    offered = []

    def offer():
        for index, size_bytes in enumerate([1000, 600, 1500, 1000, 80, 1000, 700]):
            offered.append(route.send_light_at(_segment(endpoint, size_bytes), env.now))  # as a transfer sends
            yield env.timeout(0.0004 * (index % 3))

    env.process(offer())
    assert h2.light_forwarder is h2.deliver  # into a SimNode: the direction moves segments on itself
    env.run()
    assert nodes[1].machine.received == []
    return (offered, [h.counters.packets_dropped_queue for h in (h1, h2, h3)],
            [h.counters.packets_delivered for h in (h1, h2, h3)], endpoint.arrivals)


def test_segments_cross_queued_hops_alike_on_the_short_and_the_general_path():
    # LinkDirection.send_light_at (a direction's light segments, the arrival time passed on from
    # hop to hop by Route.arrived_at, past forward_segment and a SimNode's port) must give what
    # the general path gives, to the last bit of every arrival time: the same drops at bounded
    # queues, the same order, the same instants.
    short = _queued_route_run(())
    general = _queued_route_run((_PassLight(),))
    assert short == general  # exactly, floats included
    offered, dropped, delivered, arrivals = short
    assert offered == [True, True, True, True, True, True, False] and dropped == [1, 2, 0]
    assert delivered == [6, 4, 4] and len(arrivals) == 4
    # The first by hand: 1 ms + 1.3 ms on h1, 3 ms + 2.1 ms on h2, 1000 * 8 / 13.6e6 s + 0.7 ms on h3.
    assert arrivals[0] == pytest.approx(0.0081 + 1000 * 8 / (RATE_BPS * 1.7))


def test_a_replaced_deliver_is_called_again():
    # A direction moves segments on itself only while its deliver is the one known to forward
    # them: a gate put in front of a node's port (mpsim.sim.cpu) gets every segment.
    env, machines, (h1, h2, h3) = _three_hops()
    assert all(h.light_forwarder is h.deliver for h in (h1, h2, h3))
    seen = []
    inner = h2.deliver
    h2.deliver = lambda packet: (seen.append(packet), inner(packet))
    endpoint = Endpoint(env)
    segment = _segment(endpoint)
    Route("r", (h1, h2, h3), fold=False).send(segment)
    env.run()
    assert seen == [segment] and endpoint.arrivals == pytest.approx([0.008])
