"""mpsim/sim/light_filter.py: catalogue middleboxes acting on transfer segments, mapped back onto
light segments (drop, strip, split, coalesce, seq-rewrite, nat), with the delivered bytes checked
against the source where the box must not corrupt them, and no conversion where a box cannot act."""

from __future__ import annotations

import hashlib
import random

import pytest
import simpy

from mpsim.proto.catalogue import MIDDLEBOXES
from mpsim.proto.middlebox import PASS, Coalesce, DropSegments, SegmentClass, Site
from mpsim.sim.light_filter import Interest, LightFilter, interest_of, wrap_box
from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import BulkTransfer, Segment

MIB = 2**20


def build(kind):
    return wrap_box(MIDDLEBOXES.get(kind).build(random.Random(5), Site()))


def transfer_through(kind, *, mptcp=False, size_bytes=MIB, queue_packets=None, download=False):
    """One path (or two, the box on the second) with ``kind`` on it; returns (record, digest, box)."""
    env = simpy.Environment()
    paths = []
    box = build(kind)
    for i in range(2 if mptcp else 1):
        f = LinkDirection(env, f"f{i}", delay_s=0.01, rate_bps=10e6, queue_limit_packets=queue_packets)
        b = LinkDirection(env, f"b{i}", delay_s=0.01, rate_bps=10e6, queue_limit_packets=queue_packets)
        if i == (1 if mptcp else 0):
            up, down = (b, f) if download else (f, b)  # the box's up side faces the client
            up.filters = [box.up] if box.up is not PASS else []
            down.filters = [box.down] if box.down is not PASS else []
        paths.append((f, b))
    data = random.Random(11).randbytes(size_bytes)
    transfer = BulkTransfer(env, paths, size_bytes, mptcp=mptcp, payload=data,
                            joins_from="receiver" if download else "sender")
    env.run(until=env.any_of([transfer.done, env.timeout(30)]))
    return transfer.result(), hashlib.sha256(data).hexdigest(), box


@pytest.mark.parametrize("kind", ["split-data", "coalesce", "seq-rewrite", "nat", "strip-tfo", "drop-rst"])
@pytest.mark.parametrize("mptcp", [False, True])
def test_boxes_that_must_not_corrupt_deliver_every_byte(kind, mptcp):
    record, digest, box = transfer_through(kind, mptcp=mptcp)
    assert record.completed and record.payload_sha256 == digest
    if mptcp:
        assert record.subflow_joined == (True, True) and record.subflow_bytes[1] > 0


@pytest.mark.parametrize("kind", ["seq-rewrite", "nat"])
def test_two_way_boxes_on_a_download(kind):
    record, digest, box = transfer_through(kind, mptcp=True, download=True)
    assert record.completed and record.payload_sha256 == digest and record.subflow_bytes[1] > 0
    assert box.policies[0].hits > 0  # the box did act on the transfer's segments


def test_split_maps_each_part_to_its_sequence_and_dsn():
    box = build("split-data")
    env = simpy.Environment()
    f = LinkDirection(env, "f", delay_s=0.01, rate_bps=10e6)
    b = LinkDirection(env, "b", delay_s=0.01, rate_bps=10e6)
    transfer = BulkTransfer(env, [(f, b)], 2840, mptcp=True, payload=bytes(range(256)) * 11 + bytes(24))
    sender = transfer.sender.subflows[0]
    segment = Segment(80 + 1420, sender.receiver, 0, 1420, 1420, 0, None, 1420, 0, 0, 0x18, 0.0,
                      memoryview(bytes(range(256)) * 5 + bytes(140)), True)
    head, tail = box.up(segment, 0.0)
    assert (head.seq, head.payload_bytes, head.dsn) == (1420, 710, 1420)
    assert (tail.seq, tail.payload_bytes, tail.dsn) == (2130, 710, 2130)
    assert bytes(head.payload) + bytes(tail.payload) == bytes(segment.payload)
    assert head.size_bytes == tail.size_bytes == 80 + 710  # each part keeps the full DSS


def test_coalesce_merges_a_batch_into_one_segment():
    env = simpy.Environment()
    f = LinkDirection(env, "f", delay_s=0.01, rate_bps=10e6)
    b = LinkDirection(env, "b", delay_s=0.01, rate_bps=10e6)
    transfer = BulkTransfer(env, [(f, b)], 2840, mptcp=True)
    sender = transfer.sender.subflows[0]
    parts = [Segment(80 + 1420, sender.receiver, 0, i * 1420, 1420, 0, None, i * 1420, 0, 0, 0x18, 0.0,
                     memoryview(bytes([i]) * 1420), True) for i in range(2)]
    adapter = LightFilter(Coalesce())
    (merged,) = adapter.process(parts, 0.0)
    assert (merged.seq, merged.dsn, merged.payload_bytes) == (0, 0, 2840)
    assert bytes(merged.payload) == bytes(1420) + bytes([1]) * 1420
    assert merged.size_bytes == 80 + 2840


def test_coalesced_parts_after_a_dsn_gap_arrive_without_a_mapping():
    # Subflow-contiguous parts (seq 0 and 1420) whose DSNs jump (0, then 5680: another subflow's
    # burst in between): the wire segment keeps the first DSS, so the second part has no mapping.
    env = simpy.Environment()
    f = LinkDirection(env, "f", delay_s=0.01, rate_bps=10e6)
    b = LinkDirection(env, "b", delay_s=0.01, rate_bps=10e6)
    transfer = BulkTransfer(env, [(f, b)], 2840, mptcp=True)
    sender = transfer.sender.subflows[0]
    parts = [Segment(80 + 1420, sender.receiver, 0, i * 1420, 1420, 0, None, dsn, 0, 0, 0x18, 0.0,
                     memoryview(bytes([i]) * 1420), True) for i, dsn in enumerate((0, 5680))]
    head, tail = LightFilter(Coalesce()).process(parts, 0.0)
    assert (head.seq, head.dsn, head.payload_bytes, head.mptcp) == (0, 0, 1420, True)
    assert (tail.seq, tail.dsn, tail.payload_bytes, tail.mptcp) == (1420, 5680, 1420, False)
    assert bytes(head.payload) == bytes(1420) and bytes(tail.payload) == bytes([1]) * 1420
    assert head.size_bytes + tail.size_bytes == 80 + 2840  # the merged packet's bytes, no more


def test_drop_maps_to_dropped():
    adapter = LightFilter(DropSegments(SegmentClass.DATA))
    env = simpy.Environment()
    f = LinkDirection(env, "f", delay_s=0.01, rate_bps=10e6)
    b = LinkDirection(env, "b", delay_s=0.01, rate_bps=10e6)
    transfer = BulkTransfer(env, [(f, b)], 2840)
    sender = transfer.sender.subflows[0]
    data = Segment(52 + 1448, sender.receiver, 0, 0, 1448, 0, None, 0, 0, 0, 0x18, 0.0, None, False)
    ack = Segment(52, sender, 0, 0, 0, 1448, None, 0, 1448, 65535, 0x10, 0.0, None, False)
    assert adapter(data, 0.0) == [] and adapter(ack, 0.0) == [ack]
    assert adapter.conversions == 1  # the pure ACK was never converted


def test_strip_marks_the_segment_without_mptcp_options():
    box = build("strip-mptcp")
    env = simpy.Environment()
    f = LinkDirection(env, "f", delay_s=0.01, rate_bps=10e6)
    b = LinkDirection(env, "b", delay_s=0.01, rate_bps=10e6)
    transfer = BulkTransfer(env, [(f, b)], 2840, mptcp=True)
    sender = transfer.sender.subflows[0]
    data = Segment(80 + 1420, sender.receiver, 0, 0, 1420, 0, None, 0, 0, 0, 0x18, 0.0, None, True)
    (out,) = box.up(data, 0.0)
    assert not out.mptcp and out.size_bytes == 52 + 1420 and (out.seq, out.dsn) == (0, 0)


def test_seq_rewrite_is_consistent_on_the_way_back():
    # The join's SYN gets a random offset; its data is shifted, its ACKs shifted back: the light
    # segments come out as they went in.
    record, digest, box = transfer_through("seq-rewrite", mptcp=True)
    rewriter = box.policies[0]
    assert rewriter.hits > 0 and any(offset for _, offset in rewriter._flows.values())
    assert record.payload_sha256 == digest and record.retransmissions == 0


def test_no_conversion_of_pure_acks_by_a_box_that_acts_on_data():
    record, digest, box = transfer_through("split-data", mptcp=True)
    assert box.down.conversions == 0  # the ACK direction: pure ACKs only
    assert box.up.conversions > 0
    assert interest_of(box.up.policy) == Interest.DATA
    assert interest_of(MIDDLEBOXES.get("drop-mp-capable-syn").build(random.Random(1), Site()).up) == Interest.CONTROL


def test_negotiation_packets_still_reach_the_policy():
    from ipaddress import IPv4Address

    from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment
    box = build("drop-rst")
    rst = IpPacket(IPv4Address("198.18.0.1"), IPv4Address("198.18.3.1"), TcpSegment(1, 2, 0, 0, TcpFlags.RST, 0))
    assert box.up(rst, 0.0) == [] and box.up.conversions == 0
