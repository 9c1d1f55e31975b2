"""SACK compression at the receiver (mpsim/sim/transfer.py, ``_SubflowReceiver._compress_sack``).

Hand-worked traces follow Linux 6.18: net/ipv4/tcp_input.c ``__tcp_ack_snd_check`` (the first
TCP_FASTRETRANS_THRESH = 3 ACKs for one rcv_nxt at once, then up to net.ipv4.tcp_comp_sack_nr = 44
held back for min(tcp_comp_sack_delay_ns = 1 ms, 5 % of the RTT)), net/ipv4/tcp_output.c
``tcp_event_ack_sent`` (any ACK sent takes the held-back ones along, counted in TCPAckCompressed,
and stops the timer) and net/ipv4/tcp_timer.c ``tcp_compressed_ack_kick`` (the timer's ACK is not
counted as compressed). docs/sim.md, "Linux's algorithms in the transfer model"."""

from __future__ import annotations

import pytest
import simpy

from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import BulkTransfer

from tests.sim.test_partial_sack import MSS, Sink, at_its_clamp, data


def receiver_with_a_hole(rtt_s=0.040):
    """A receiver that has taken segments 0 and 1 (one ACK, for 2 MSS) and holds nothing; its
    sender's RTT samples say rtt_s (the receiver's estimate and its handshake srtt)."""
    env = simpy.Environment()
    f = LinkDirection(env, "f", delay_s=0.01, rate_bps=50e6)
    b = LinkDirection(env, "b", delay_s=0.01, rate_bps=50e6)
    transfer = BulkTransfer(env, [(f, b)], 200 * MSS)
    sender = transfer.sender.subflows[0]
    sender.srtt_s = sender.min_rtt_s = rtt_s
    receiver = sender.receiver
    sink = Sink()
    receiver.backward = sink
    receiver.quickacks_left = 0
    at_its_clamp(receiver)
    receiver.receive(data(receiver, 0, MSS))
    receiver.receive(data(receiver, MSS, MSS))
    assert [s.ack for s in sink.sent] == [2 * MSS]
    return env, receiver, sink


def arrive(env, receiver, at_s, seq_index):
    """Segment seq_index arrives at at_s. Every trace here ends before 10 ms, when the transfer's
    own first segment would reach the receiver over its link."""
    if at_s > env.now:
        env.run(until=at_s)
    receiver.receive(data(receiver, seq_index * MSS, MSS))


def test_out_of_order_acks_after_the_third_are_held_for_1_ms_at_50_mbit_s():
    env, receiver, sink = receiver_with_a_hole()
    # Segment 2 is lost; 3..9 arrive 0.25 ms apart (50 Mbit/s), 10 at 2.0 ms, then 2 again at 2.5 ms.
    for k in range(3, 10):
        arrive(env, receiver, 0.001 + (k - 3) * 0.00025, k)
    # 3, 4, 5: dup_ack_counter 1, 2, 3 -> sent at once, each SACKing what is held so far.
    assert [s.ack for s in sink.sent[1:]] == [2 * MSS] * 3
    assert [s.sack_blocks for s in sink.sent[1:]] == [((3 * MSS, (k + 1) * MSS),) for k in (3, 4, 5)]
    # 6 (at 1.75 ms) starts the timer: min(1 ms, 40 ms / 20); 7, 8, 9 join it (4 held).
    assert receiver.compressed_acks == 4 and receiver.comp_sack_timer.deadline_s == pytest.approx(0.00275)
    env.run(until=0.0028)
    # One ACK at 2.75 ms for all four: it SACKs 3..9; three of the four count as compressed.
    assert len(sink.sent) == 5 and sink.sent[-1].sent_s == pytest.approx(0.00275)
    assert sink.sent[-1].sack_blocks == ((3 * MSS, 10 * MSS),)
    assert receiver.acks_compressed == 3 and receiver.compressed_acks == 0
    # 10 at 3.0 ms: rcv_nxt has not moved, so it is held (timer at 4.0 ms) ...
    arrive(env, receiver, 0.003, 10)
    assert len(sink.sent) == 5 and receiver.comp_sack_timer.deadline_s == pytest.approx(0.004)
    # ... until the retransmission of 2 fills the hole at 3.5 ms: an ACK at once for everything,
    # which takes the held one along and stops the timer.
    arrive(env, receiver, 0.0035, 2)
    assert sink.sent[-1].ack == 11 * MSS and sink.sent[-1].sack_blocks is None
    assert receiver.acks_compressed == 4 and receiver.comp_sack_timer.deadline_s is None
    env.run(until=0.0095)
    assert len(sink.sent) == 6


def test_at_10_mbit_s_every_out_of_order_segment_is_still_acked():
    """1.2 ms between segments: each held ACK leaves on its 1 ms timer before the next arrives."""
    env, receiver, sink = receiver_with_a_hole()
    for k in range(3, 9):
        arrive(env, receiver, 0.001 + (k - 3) * 0.0012, k)
    env.run(until=0.0095)
    times = [round(s.sent_s * 1e4) / 1e4 for s in sink.sent[1:]]
    # 3, 4, 5 at once; 6, 7, 8 each 1 ms after they arrived.
    assert times == [0.001, 0.0022, 0.0034, 0.0056, 0.0068, 0.008]
    assert receiver.acks_compressed == 0


def test_the_hold_is_5_percent_of_the_rtt_when_that_is_shorter_and_44_acks_at_most():
    env, receiver, sink = receiver_with_a_hole(rtt_s=0.010)
    # 50 segments out of order at one instant: 3 sent, 44 held, the 48th finds 44 held and goes
    # at once (taking them along: 44 compressed), the 49th and 50th wait for the timer again,
    # now 0.5 ms (10 ms / 20).
    env.run(until=0.001)
    for k in range(3, 53):
        receiver.receive(data(receiver, k * MSS, MSS))
    assert len(sink.sent) == 1 + 3 + 1 and receiver.acks_compressed == 44
    assert receiver.compressed_acks == 2 and receiver.comp_sack_timer.deadline_s == pytest.approx(0.0015)
    env.run(until=0.002)
    assert len(sink.sent) == 6 and sink.sent[-1].sack_blocks == ((3 * MSS, 53 * MSS),)
    assert receiver.acks_compressed == 45


def test_a_fresh_hole_after_progress_gets_its_three_acks_at_once_again():
    env, receiver, sink = receiver_with_a_hole()
    for k in (3, 4, 5, 6):  # 3 at once, the fourth held
        arrive(env, receiver, 0.001, k)
    assert len(sink.sent) == 4 and receiver.compressed_acks == 1
    # 2 arrives: hole filled, ACK at once; then 8 (7 lost): a new rcv_nxt, so its ACK goes at once.
    arrive(env, receiver, 0.0012, 2)
    arrive(env, receiver, 0.0013, 8)
    assert [s.ack for s in sink.sent[4:]] == [7 * MSS, 7 * MSS] and receiver.compressed_acks == 0


def test_quick_ack_mode_acks_held_data_at_once_and_is_used_up_by_it():
    """In quick-ACK mode (the first TCP_MAX_QUICKACKS segments) ``__tcp_ack_snd_check`` sends at
    once before any compression; each ACK sent uses one up (``tcp_dec_quickack_mode``)."""
    env, receiver, sink = receiver_with_a_hole()
    receiver.quickacks_left = 2
    for k in (3, 4, 5, 6, 7, 8):  # 3, 4: quick ACKs; 5, 6, 7: the three duplicates; 8: held
        arrive(env, receiver, 0.001, k)
    assert receiver.quickacks_left == 0 and len(sink.sent) == 1 + 5
    assert receiver.dup_ack_counter == 3 and receiver.compressed_acks == 1
