"""When the transfer sender may grow its window, as Linux 6.x decides it (net/ipv4/tcp_input.c,
Linux 6.7 to 6.18: ``tcp_cong_control`` runs the congestion control's increase only if
``tcp_may_raise_cwnd``, which with ``tp->reordering`` at the sysctl's 3 asks for FLAG_DATA_ACKED,
an ACK that cumulatively acknowledges a whole segment; the increase is by every segment the ACK
newly delivered, SACKed ones included). A SACK-only ACK (a hole not yet marked lost: Linux's
Disorder state, which the model keeps as Open) grows nothing, and what it delivered does not
count again when the hole fills. docs/sim.md, "Linux's algorithms in the transfer model" (window growth).

The path (as tests/sim/test_rack_tlp.py's): 100 Mbit/s, 25 ms each way; a data segment is 1,500
bytes, 120 us on the wire; the first 16 segments are ACKed at once (quick ACKs).
"""

from __future__ import annotations

import simpy

from mpsim.sim.transfer import BulkTransfer
from tests.sim.test_transfer import MSS, Tap, delay_first_copies, make_path

ONE_WAY_S = 0.025


def first_flight(delays):
    """Ten segments at 0 (the initial window); ``delays``: {segment index: extra seconds} for
    its first copy. Runs to 75 ms: every ACK of the first flight is in (by about 51.2 ms), none
    of the second (about 100 ms). Returns the sender's cwnd and the data segments sent."""
    env = simpy.Environment()
    tap = Tap()
    forward, backward = make_path(env, "p", rate_bps=100e6, one_way_delay_s=ONE_WAY_S, trace=tap)
    transfer = BulkTransfer(env, [(forward, backward)], 200 * MSS)
    delay_first_copies(env, forward, delays)
    env.run(until=0.075)
    subflow = transfer.sender.subflows[0]
    sent = sum(1 for _t, p in tap.sent if p.payload_bytes)
    return subflow.cc.cwnd_segments, sent, subflow


def test_in_order_slow_start_grows_by_every_segment_acknowledged():
    # Ten ACKs, each cumulatively acknowledging one segment: cwnd 10 + 10 = 20, and each ACK
    # released its segment plus one: 10 + 20 segments sent.
    cwnd, sent, subflow = first_flight({})
    assert (cwnd, sent) == (20, 30)
    assert subflow.fast_recoveries == 0


def test_a_sack_only_ack_does_not_grow_the_window():
    # Segment 2 arrives 200 us late (at 25.56 ms, after segment 3 at 25.48 ms, before segment 4
    # at 25.60 ms). The ACKs: 1, 2 (each +1: cwnd 12); ACK 2 with SACK 3-4 (segment 3
    # delivered, no segment cumulatively acknowledged: no growth; one SACKed segment, so RACK's
    # reordering window min_rtt / 4 keeps segment 2 from being marked lost); ACK 4 (segment 2
    # newly delivered, segment 3 was counted on the SACK: +1, cwnd 13); ACKs 5 to 10 (+6): 19.
    # Sent: the ten, then 19 in flight once everything is acknowledged: 29. Growing on the
    # SACK-only ACK as well (the model before) gives 20 and 30.
    cwnd, sent, subflow = first_flight({2: 200e-6})
    assert (cwnd, sent) == (19, 29)
    assert (subflow.fast_recoveries, subflow.retransmissions) == (0, 0)
    assert subflow.reord_seen  # the hole was filled by the original: reordering, not loss
