"""SYN retransmission and give-up as Linux counts them with ``tcp_syn_linear_timeouts``
(net/ipv4/tcp_timer.c, Linux 6.5 to 6.18: ``tcp_retransmit_timer``, ``tcp_write_timeout``,
``retransmits_timed_out``, ``tcp_model_timeout``), against schedules worked by hand.

Hand-worked, initial RTO 1 s, TCP_RTO_MAX 120 s (ilog2(120) = 6 doublings):
* retries 2, linear 4: count limit 2 + 4 = 6 retransmissions, time limit (2^3 - 1) x 1 s = 7 s.
  The RTO stays 1 s while the back-off count is <= 4, so SYNs at 0, 1, 2, 3, 4, 5 (after the
  6th SYN the back-off is 5 > 4: the RTO doubles to 2 s); the timer at 7 s finds 5 < 6
  retransmissions but 7 s >= 7 s since the first SYN: ETIMEDOUT at 7 s, 6 SYNs.
* retries 2, linear 0: RTOs 1, 2, 4: SYNs at 0, 1, 3; at 7 s both limits are reached. 3 SYNs.
* retries 6, linear 4: SYNs at 0, 1, 2, 3, 4, 5, 7, 11, 19, 35, 67; the timer at 67 + 64 = 131 s
  finds 10 retransmissions (the count limit; the time limit, 127 s, passed meanwhile).
"""

from __future__ import annotations

import pytest

from mpsim.proto.tcp import CloseReason, TcpConnection, TcpPolicy, TimedOut
from mpsim.wire.segment import TcpFlags
from tests.proto.test_tcp import CLIENT_ADDR, SERVER_ADDR


def syn_schedule(policy: TcpPolicy) -> tuple[list[float], float | None]:
    """Every SYN's send time against a silent peer, and when the connection gave up."""
    conn = TcpConnection.active(CLIENT_ADDR, 40000, SERVER_ADDR, 80, iss=1, policy=policy, now=0.0)
    times = [0.0]
    conn.pull_packets()
    for _ in range(50):
        now = conn.get_timer()
        if now is None:
            break
        conn.handle_timer(now)
        times += [now for p in conn.pull_packets() if p.segment.flags & TcpFlags.SYN]
        if any(isinstance(e, TimedOut) for e in conn.pull_events()):
            return times, now
    return times, None


@pytest.mark.parametrize("retries, linear, syn_times, give_up_s", [
    (2, 4, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 7.0),
    (2, 0, [0.0, 1.0, 3.0], 7.0),
    (6, 4, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 11.0, 19.0, 35.0, 67.0], 131.0),
    (6, 0, [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0], 127.0),
    (0, 0, [0.0], 1.0),  # the count limit at once (the time limit needs a retransmission first)
    (0, 4, [0.0, 1.0], 2.0),  # time limit (2^1 - 1) x 1 s, checked once a SYN was retransmitted
])
def test_syn_give_up_as_linux_counts_linear_timeouts(retries, linear, syn_times, give_up_s):
    policy = TcpPolicy(syn_retries=retries, syn_linear_timeouts=linear)
    times, given_up_s = syn_schedule(policy)
    assert times == syn_times
    assert given_up_s == pytest.approx(give_up_s)


def test_the_time_limit_counts_max_rto_past_the_doublings():
    # initial RTO 1 s, max RTO 4 s: ilog2(4) = 2 doublings; retries 3 > 2, so the time limit is
    # (2^3 - 1) x 1 + (3 - 2) x 4 = 11 s. SYNs at 0, 1, 3, 7 (RTOs 1, 2, 4, then capped at 4):
    # the timer at 11 s finds 3 retransmissions (the count limit) at the time limit.
    policy = TcpPolicy(syn_retries=3, initial_rto_s=1.0, max_rto_s=4.0, min_rto_s=0.2)
    times, given_up_s = syn_schedule(policy)
    assert times == [0.0, 1.0, 3.0, 7.0] and given_up_s == pytest.approx(11.0)
    # With 6 linear timeouts the count limit is 9, the time limit still 11 s: SYNs every second
    # until the back-off passes 6, then the timer at 11 s ends it on time alone.
    times, given_up_s = syn_schedule(TcpPolicy(syn_retries=3, syn_linear_timeouts=6, initial_rto_s=1.0,
                                               max_rto_s=4.0, min_rto_s=0.2))
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 9.0] and given_up_s == pytest.approx(13.0)
