"""Plain TCP with SO_SNDBUF set (``buffers="pinned"``): how much payload the locked send buffer lets
the application have written and not ACKed, as Linux 6.18 fills it (net/ipv4/tcp.c
``tcp_sendmsg_locked``, net/ipv4/tcp_output.c ``tcp_tso_autosize``; docs/sim.md, "Linux's
algorithms in the transfer model"). The expected values are worked by hand below."""

from __future__ import annotations

import simpy

from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import SKB_TRUESIZE_OVERHEAD_BYTES, BulkTransfer

MSS = 1448


def one_path(env, rate_bps=10e6, one_way_delay_s=0.020):
    return [(LinkDirection(env, "fwd", delay_s=one_way_delay_s, rate_bps=rate_bps, queue_limit_packets=1000),
             LinkDirection(env, "bwd", delay_s=one_way_delay_s, rate_bps=rate_bps))]


def test_the_payload_limit_is_whole_skbs_of_tso_autosize_segments():
    env = simpy.Environment()
    transfer = BulkTransfer(env, one_path(env), 10_000_000, mptcp=False, buffers="pinned", snd_buf_bytes=32768)
    sender, subflow = transfer.sender, transfer.sender.subflows[0]
    assert SKB_TRUESIZE_OVERHEAD_BYTES == 832
    # Slow start, cwnd 10, SRTT 40 ms: pacing 2.0 x 1448 x 10 / 0.040 = 724,000 B/s; >> 10 = 707 bytes
    # per 1,024 us, under one MSS: tcp_min_tso_segs, 2 segments (2,896 bytes) per skb. sk_sndbuf =
    # 2 x 32,768 = 65,536: a new skb while wmem_queued < 65,536, each 2,896 + 832 = 3,728:
    # 65,536 / 3,728 = 17.6, so 18 skbs, 52,128 bytes of payload.
    subflow.srtt_s, subflow.min_rtt_s = 0.040, 0.040
    subflow.cc.cwnd_segments, subflow.cc.ssthresh_segments = 10, 1e9
    assert sender.pinned_tcp_payload_bytes() == 18 * 2 * MSS == 52128
    # Congestion avoidance, cwnd 200, SRTT 50 ms: 1.2 x 1448 x 200 / 0.050 = 6,950,400 B/s; >> 10 =
    # 6,787 bytes: 4 segments (5,792) per skb, 6,624 with the overhead: 65,536 / 6,624 = 9.9, 10 skbs.
    subflow.srtt_s = 0.050
    subflow.cc.cwnd_segments, subflow.cc.ssthresh_segments = 200, 100
    assert sender.pinned_tcp_payload_bytes() == 10 * 4 * MSS == 57920
    # Below about 9 ms of min RTT tcp_tso_rtt_log adds 64 KiB >> (min_rtt_us >> 9): at 1 ms,
    # 1,000 >> 9 = 1, 32,768 more bytes: (6,787 + 32,768) // 1,448 = 27 segments (39,096) per skb;
    # 65,536 / 39,928 = 1.6: 2 skbs.
    subflow.min_rtt_s = 0.001
    assert sender.pinned_tcp_payload_bytes() == 2 * 27 * MSS


def test_a_small_pinned_send_buffer_limits_goodput_to_its_payload_per_rtt():
    # SO_SNDBUF 8 KiB: sk_sndbuf 16,384; 2-segment skbs (pacing well under 2.9 MB/s) of 3,728 bytes:
    # 16,384 / 3,728 = 4.4, 5 skbs, 14,480 bytes in flight per round trip: 40 ms, plus 2.4 ms to
    # serialise the skb an ACK frees at 10 Mbit/s, plus the first round trip's start: 40-45 ms,
    # 14,480 x 8 / 0.045 = 2.57 to 14,480 x 8 / 0.040 = 2.90 Mbit/s, far below the path's 10.
    env = simpy.Environment()
    transfer = BulkTransfer(env, one_path(env), 1_000_000, mptcp=False, buffers="pinned", snd_buf_bytes=8192,
                            rcv_buf_bytes=1 << 20)
    in_flight = []

    def watch():
        sender = transfer.sender
        while not transfer.done.triggered:
            in_flight.append(sender.next_dsn - sender.data_una)
            yield env.timeout(0.005)

    env.process(watch())
    env.run(until=transfer.done)
    record = transfer.result()
    assert max(in_flight) == 5 * 2 * MSS == 14480
    assert 14480 * 8 / 0.045 < record.goodput_bps < 14480 * 8 / 0.040
    # Auto-tuned, the same path runs at its rate: the limit above is the pinned buffer's.
    env = simpy.Environment()
    auto = BulkTransfer(env, one_path(env), 1_000_000, mptcp=False, rcv_buf_bytes=1 << 20)
    env.run(until=auto.done)
    assert auto.result().goodput_bps > 2.5 * record.goodput_bps
