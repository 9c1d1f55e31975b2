"""Segments a box split: partial SACK and partial cumulative ACK at the sender, overlapping
retransmissions at the receiver, and the delayed-ACK rule in bytes (mpsim/sim/transfer.py).

Hand-worked traces follow Linux 6.x (net/ipv4/tcp_input.c ``tcp_match_skb_to_sack``,
``tcp_clean_rtx_queue``, ``tcp_measure_rcv_mss``, ``__tcp_ack_snd_check``; tcp_output.c
``__tcp_retransmit_skb`` / ``tcp_trim_head``) and RFC 9293 3.10.7.4 (trimming)."""

from __future__ import annotations

import hashlib
import random

import pytest
import simpy

from mpsim.proto.catalogue import MIDDLEBOXES
from mpsim.proto.middlebox import PASS, Site
from mpsim.sim.light_filter import wrap_box
from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import FLAG_ACK, FLAG_PSH, BulkTransfer, Segment, measured_scaling_ratio

MSS = 1448
HALF = MSS // 2  # 724: what split-data makes of a full segment
MIB = 2**20


class Sink:
    """Stands in for a link direction: keeps what is sent."""

    def __init__(self):
        self.sent = []

    def send(self, segment):
        self.sent.append(segment)


def one_path_transfer(size_bytes=20 * MSS, payload=None):
    env = simpy.Environment()
    f = LinkDirection(env, "f", delay_s=0.01, rate_bps=10e6)
    b = LinkDirection(env, "b", delay_s=0.01, rate_bps=10e6)
    return env, BulkTransfer(env, [(f, b)], size_bytes, payload=payload)


def at_its_clamp(receiver):
    """Give a fresh receiver the ratio its full segments measure and rcv_ssthresh at the clamp
    that follows: no window growth, whose quick ACK (tcp_grow_window; tests/sim/test_receive_window.py)
    would send each segment's ACK at once, so the traces here show the other ACK rules alone."""
    receiver.scaling_ratio = measured_scaling_ratio(receiver.full_segment_bytes)
    receiver.space.set_ratio(receiver.scaling_ratio)
    receiver.rcv_ssthresh = receiver.space.window_clamp_bytes


def data(receiver, seq, length, payload=None):
    return Segment(52 + length, receiver, 0, seq, length, 0, None, seq, 0, 0, FLAG_ACK | FLAG_PSH, 0.0,
                   None if payload is None else memoryview(payload)[seq:seq + length], False)


def ack(sender, cumulative, blocks=None):
    return Segment(52, sender, 0, 0, 0, cumulative, blocks, 0, cumulative, 6 * MIB, FLAG_ACK, 0.0, None, False)


# --- the stall: split-data with queue loss ------------------------------------------------------

def split_transfer(mptcp, queue_packets, size_bytes=2 * MIB):
    """12 (+ 30) Mbit/s, 10 ms each way, split-data on every path, small drop-tail queues."""
    env = simpy.Environment()
    box = wrap_box(MIDDLEBOXES.get("split-data").build(random.Random(5), Site()))
    paths = []
    for i, rate_bps in enumerate((12e6, 30e6) if mptcp else (12e6,)):
        f = LinkDirection(env, f"f{i}", delay_s=0.01, rate_bps=rate_bps, queue_limit_packets=queue_packets)
        b = LinkDirection(env, f"b{i}", delay_s=0.01, rate_bps=rate_bps, queue_limit_packets=queue_packets)
        f.filters = [box.up]
        b.filters = [box.down] if box.down is not PASS else []
        paths.append((f, b))
    payload = random.Random(11).randbytes(size_bytes)
    transfer = BulkTransfer(env, paths, size_bytes, mptcp=mptcp, payload=payload)
    env.run(until=env.any_of([transfer.done, env.timeout(30)]))
    return transfer.result(), hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("mptcp", [False, True])
@pytest.mark.parametrize("queue_packets", [100, 20])
def test_split_segments_with_queue_loss_complete_with_every_byte(mptcp, queue_packets):
    # Before partial SACKs were handled the transfer stalled here (the sender took a
    # half-delivered segment as SACKed and never sent its other half).
    record, digest = split_transfer(mptcp, queue_packets)
    assert record.completed and record.payload_sha256 == digest
    assert record.retransmissions > 0  # the queues did drop parts
    assert record.duration_s < 5


# --- sender: partial SACK, partial cumulative ACK ------------------------------------------------

def test_a_sack_covering_part_of_a_segment_does_not_mark_it():
    env, transfer = one_path_transfer()
    env.run(until=0.001)  # the initial window (10 segments) is out
    sender = transfer.sender.subflows[0]
    assert sender.snd_nxt == 10 * MSS
    # Segment 1 ([1448, 2896)) lost its first half; its second half and segment 2 arrived.
    sender.receive(ack(sender, MSS, ((MSS + HALF, 3 * MSS),)))
    assert sender.sacked_out == 1 and not sender.rtx[1].sacked and sender.rtx[2].sacked
    # The retransmitted first half arrives: the union covers segment 1 whole (tcp_match_skb_to_sack's
    # in_sack for a one-segment skb is "inside the SACKed range").
    sender.receive(ack(sender, MSS, ((MSS, 3 * MSS),)))
    assert sender.sacked_out == 2 and sender.rtx[1].sacked
    # A block whose edge falls inside segment 4 and 5 marks neither.
    sender.receive(ack(sender, MSS, ((4 * MSS + 100, 5 * MSS + 100), (MSS, 3 * MSS))))
    assert sender.sacked_out == 2 and not sender.rtx[4].sacked and not sender.rtx[5].sacked


def test_a_partial_cumulative_ack_keeps_the_segment_and_resends_only_its_tail():
    env, transfer = one_path_transfer()
    env.run(until=0.001)
    sender = transfer.sender.subflows[0]
    sink = Sink()
    sender.forward = sink
    sender.receive(ack(sender, HALF))  # the first half of segment 0 arrived, the rest was dropped
    assert sender.snd_una == HALF and sender.head == 0 and sender.rtx[0].seq == 0  # kept whole
    sender._on_rto(env.now)
    first = sink.sent[0]
    # __tcp_retransmit_skb trims the acknowledged head: [724, 1448), its DSN moved with it.
    assert (first.seq, first.payload_bytes, first.dsn) == (HALF, MSS - HALF, HALF)
    sender.receive(ack(sender, MSS))
    assert sender.head == 1 and sender.snd_una == MSS


# --- receiver: overlapping retransmissions -------------------------------------------------------

def test_receiver_keeps_the_new_part_of_an_overlapping_retransmission():
    payload = random.Random(2).randbytes(20 * MSS)
    env, transfer = one_path_transfer(payload=payload)
    receiver = transfer.sender.subflows[0].receiver
    sink = Sink()
    receiver.backward = sink
    receiver.receive(data(receiver, 0, MSS, payload))
    receiver.receive(data(receiver, MSS + HALF, HALF, payload))  # second half of segment 1
    assert receiver.rcv_nxt == MSS and sink.sent[-1].sack_blocks == ((MSS + HALF, 2 * MSS),)
    receiver.receive(data(receiver, 3 * MSS, MSS, payload))  # segment 3
    # Segment 1 again, whole: [1448, 2172) is new, [2172, 2896) a duplicate, and it ends at the hole.
    receiver.receive(data(receiver, MSS, MSS, payload))
    assert receiver.rcv_nxt == 2 * MSS and sink.sent[-1].ack == 2 * MSS
    assert sink.sent[-1].sack_blocks == ((3 * MSS, 4 * MSS),)
    # A retransmission of segments 1-3 coalesced into one ([1448, 5792)): only [2896, 4344) is new.
    receiver.receive(data(receiver, MSS, 3 * MSS, payload))
    assert receiver.rcv_nxt == 4 * MSS and receiver.ooo == [] and sink.sent[-1].sack_blocks is None
    # Out of order and overlapping what is held: [5792, 7240) held, then [5068, 7964) arrives.
    receiver.receive(data(receiver, 4 * MSS + MSS, MSS, payload))
    receiver.receive(data(receiver, 4 * MSS + HALF, 2 * MSS, payload))
    assert receiver.ooo == [[4 * MSS + HALF, 6 * MSS + HALF]]
    receiver.receive(data(receiver, 4 * MSS, HALF, payload))
    assert receiver.rcv_nxt == 6 * MSS + HALF and receiver.conn.held_bytes == 0
    assert receiver.conn.data_rcv_nxt == 6 * MSS + HALF
    receiver.conn.hasher.update(b"")  # the bytes passed up are the source's, in order
    assert receiver.conn.hasher.digest() == hashlib.sha256(payload[:6 * MSS + HALF]).digest()


# --- receiver: delayed ACKs in bytes --------------------------------------------------------------

def test_split_traffic_is_acked_every_two_parts_as_linux_measures_rcv_mss():
    env, transfer = one_path_transfer(size_bytes=100 * MSS)
    receiver = transfer.sender.subflows[0].receiver
    sink = Sink()
    receiver.backward = sink
    receiver.quickacks_left = 0
    at_its_clamp(receiver)
    # Hand-worked (tcp_measure_rcv_mss, __tcp_ack_snd_check: ACK when rcv_nxt - rcv_wup > rcv_mss):
    # full segments: rcv_mss 536 -> 1448, an ACK every second segment.
    for i in range(4):
        receiver.receive(data(receiver, i * MSS, MSS))
    assert receiver.rcv_mss == MSS and [s.ack for s in sink.sent] == [2 * MSS, 4 * MSS]
    # Halves: the first (724 + 32 header >= 556) is remembered; the second, of equal size, sets
    # rcv_mss to 724 before the ACK check (tcp_event_data_recv runs before tcp_ack_snd_check), and
    # 1448 bytes > 724 are unacknowledged: an ACK; so one ACK per two halves, none on the timer.
    seq = 4 * MSS
    for _ in range(8):
        receiver.receive(data(receiver, seq, HALF))
        seq += HALF
    assert receiver.rcv_mss == HALF
    assert [s.ack for s in sink.sent[2:]] == [4 * MSS + 2 * k * HALF for k in (1, 2, 3, 4)]
    assert receiver.delack_timer.deadline_s is None
    # One half alone waits for the 40 ms timer (724 is not more than rcv_mss).
    receiver.receive(data(receiver, seq, HALF))
    assert len(sink.sent) == 6 and receiver.delack_timer.deadline_s is not None
