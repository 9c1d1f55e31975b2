"""RACK-TLP in the transfer sender (RFC 8985 as Linux 6.7 to 6.18 runs it: net/ipv4/tcp_recovery.c,
tcp_schedule_loss_probe / tcp_send_loss_probe in tcp_output.c, the timer in tcp_timer.c) against
traces worked by hand, and the RFC 6675 dupACK-only policy kept for comparison.

The path: 100 Mbit/s, 25 ms each way, no loss unless a test drops or delays a segment. A data
segment is 1,500 bytes: 120 us on the wire; a pure ACK 52 bytes (4.16 us), with one SACK block
64 bytes (5.12 us). The first 16 segments are ACKed at once (quick ACKs).
"""

from __future__ import annotations

import pytest
import simpy

from mpsim.sim.transfer import BulkTransfer
from tests.sim.test_transfer import MSS, DropSegments, Tap, delay_first_copies, make_path

ONE_WAY_S = 0.025
DATA_WIRE_S = 1500 * 8 / 100e6  # 120 us
ACK_WIRE_S = 52 * 8 / 100e6  # 4.16 us
SACK_ACK_WIRE_S = 64 * 8 / 100e6  # 5.12 us


def transfer_on_one_path(segments, loss_detection, *, drop=(), delays=None):
    """``segments`` full segments; ``drop``: seqs (in segments) whose first copy is lost;
    ``delays``: {segment index: extra seconds} for the first copy (it arrives late: reordering)."""
    env = simpy.Environment()
    tap = Tap()
    forward, backward = make_path(env, "p", rate_bps=100e6, one_way_delay_s=ONE_WAY_S, trace=tap,
                                  loss=DropSegments([i * MSS for i in drop]) if drop else None)
    transfer = BulkTransfer(env, [(forward, backward)], segments * MSS, loss_detection=loss_detection)
    if delays:
        delay_first_copies(env, forward, delays)
    env.run()
    sent = [(t, p.seq // MSS) for t, p in tap.sent if p.payload_bytes]
    return transfer, sent


def rfc6298_srtt(samples_s):
    """SRTT and RTTVAR after these samples (RFC 6298 2.2 and 2.3)."""
    srtt, rttvar = samples_s[0], samples_s[0] / 2
    for sample in samples_s[1:]:
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - sample)
        srtt = 0.875 * srtt + 0.125 * sample
    return srtt, rttvar


def test_a_tail_loss_is_repaired_by_a_probe_and_fast_recovery_not_an_rto():
    # Ten segments leave at 0 (the initial window); segments 8 and 9 (the tail) are lost.
    # Segment k arrives at 25 ms + (k + 1) x 120 us and is ACKed at once: RTT_k = 50.00416 ms +
    # (k + 1) x 120 us. After the 8th ACK (k = 7, at 50.96416 ms) two segments are out, so the
    # probe timeout is 2 SRTT + 2 ms (far below the RTO, SRTT + max(4 RTTVAR, 200 ms)).
    transfer, sent = transfer_on_one_path(10, "rack-tlp", drop=(8, 9))
    rtts = [2 * ONE_WAY_S + ACK_WIRE_S + (k + 1) * DATA_WIRE_S for k in range(8)]
    srtt, _ = rfc6298_srtt(rtts)
    last_ack_s = rtts[7]
    probe_s = last_ack_s + 2 * srtt + 0.002
    # The probe: no new data, so the last segment (9) again. It arrives above the hole at 8:
    # the receiver SACKs it. RACK: the newest delivered segment went out at probe_s; segment 8
    # went out at 0, more than RACK.rtt + min_rtt / 4 before now: lost. Recovery retransmits it.
    sack_s = probe_s + DATA_WIRE_S + 2 * ONE_WAY_S + SACK_ACK_WIRE_S
    finish_s = sack_s + DATA_WIRE_S + ONE_WAY_S
    assert sent[10:] == [(pytest.approx(probe_s, abs=1e-9), 9), (pytest.approx(sack_s, abs=1e-9), 8)]
    record = transfer.result()
    assert record.completed and record.duration_s == pytest.approx(finish_s, abs=1e-9)
    assert (record.timeouts, record.loss_probes, record.fast_recoveries, record.retransmissions) == (0, 1, 1, 2)


def test_without_rack_tlp_the_same_tail_loss_waits_for_the_rto():
    # RFC 6675 alone: no SACK arrives (nothing after the lost tail), so the RTO, restarted by the
    # last ACK: SRTT + max(4 RTTVAR, 200 ms) after it.
    transfer, sent = transfer_on_one_path(10, "rfc6675", drop=(8, 9))
    rtts = [2 * ONE_WAY_S + ACK_WIRE_S + (k + 1) * DATA_WIRE_S for k in range(8)]
    srtt, rttvar = rfc6298_srtt(rtts)
    rto_s = srtt + max(4 * rttvar, 0.2)
    assert sent[10] == (pytest.approx(rtts[7] + rto_s, abs=1e-9), 8)
    record = transfer.result()
    assert (record.timeouts, record.loss_probes) == (1, 0)
    rack = transfer_on_one_path(10, "rack-tlp", drop=(8, 9))[0].result()
    assert record.duration_s > rack.duration_s + 0.1


@pytest.mark.parametrize("loss_detection, spurious", [("rack-tlp", 0), ("rfc6675", 1)])
def test_rack_waits_out_reordering_within_its_window(loss_detection, spurious):
    # Segment 8 arrives 0.2 ms late, behind segment 9: one SACK (fewer than DupThresh), then the
    # hole fills without a retransmission, so RACK has seen reordering. In the second flight
    # (segments 10 to 29, sent as the first ACKs return) segment 20 is 5 ms late and 9 segments
    # overtake it. The dupACK rule marks it lost at the third SACKed segment and retransmits it
    # spuriously (a fast recovery for nothing); RACK waits RACK.rtt + min_rtt / 4 (12.5 ms) after
    # its sending, longer than its 5 ms delay, so it arrives first.
    transfer, sent = transfer_on_one_path(30, loss_detection, delays={8: 0.0002, 20: 0.005})
    record = transfer.result()
    subflow = transfer.sender.subflows[0]
    assert record.completed
    assert (record.retransmissions, record.fast_recoveries) == (spurious, spurious)
    assert subflow.receiver.duplicate_segments == spurious
    if loss_detection == "rack-tlp":
        assert subflow.reord_seen and subflow.reo_timeouts == 0


def test_rack_marks_a_segment_lost_once_its_reordering_window_has_passed():
    # The same, with segment 20 30 ms late: RACK's reordering timer fires at about
    # send time + RACK.rtt + min_rtt / 4 + 2 ms and retransmits it (spuriously, as the original
    # is only late): no earlier than 50 + 12.5 ms after it was sent, and within the spread of
    # the segments SACKed behind it (about 1 ms) plus the 2 ms timer slack plus the 1 ms for
    # which the receiver holds the SACKs after the third for that hole (SACK compression,
    # tests/sim/test_sack_compression.py), which RACK.rtt takes in.
    transfer, sent = transfer_on_one_path(30, "rack-tlp", delays={8: 0.0002, 20: 0.030})
    first_20, again_20 = [t for t, index in sent if index == 20]
    min_rtt_s = 2 * ONE_WAY_S + ACK_WIRE_S + DATA_WIRE_S
    waited_s = again_20 - first_20
    assert min_rtt_s + min_rtt_s / 4 < waited_s < min_rtt_s + min_rtt_s / 4 + 0.002 + 0.0015 + 0.001
    subflow = transfer.sender.subflows[0]
    assert subflow.reo_timeouts == 1 and transfer.result().retransmissions == 1


def test_loss_detection_policy_is_checked():
    env = simpy.Environment()
    forward, backward = make_path(env, "p", rate_bps=1e6, one_way_delay_s=0.01)
    with pytest.raises(ValueError, match="loss_detection"):
        BulkTransfer(env, [(forward, backward)], 1000, loss_detection="fack")


def test_a_probe_sends_new_data_when_there_is_some():
    # 20 segments; the whole initial window (0 to 9) is lost, so no RTT sample exists: the probe
    # timeout is 1 s (TCP_TIMEOUT_INIT), the same instant as the RTO, and the probe wins. There is
    # unsent data, so the probe is segment 10 (cwnd ignored), not a retransmission. Its SACK comes
    # back 50.12512 ms later; RACK marks 0 to 9 lost (sent a second before it) and recovery starts
    # with segment 0 (PRR: pipe 0, one segment).
    transfer, sent = transfer_on_one_path(20, "rack-tlp", drop=range(10))
    sack_s = 1.0 + DATA_WIRE_S + 2 * ONE_WAY_S + SACK_ACK_WIRE_S
    assert sent[10:12] == [(1.0, 10), (pytest.approx(sack_s, abs=1e-9), 0)]
    record = transfer.result()
    assert record.completed and (record.timeouts, record.loss_probes, record.fast_recoveries) == (0, 1, 1)
