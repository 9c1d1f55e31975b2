"""The receive window as Linux 6.18 computes it (mpsim/sim/transfer.py, "Receive window"):
scaling_ratio and tcp_win_from_space, tcp_init_buffer_space, DRS (tcp_rcvbuf_grow), the window
an ACK carries. Hand-worked traces; the kernel figures quoted are `ss -tmi` readings on the
kernel world's veths (Linux 6.18, 10 Mbit/s, 40 ms RTT)."""

from __future__ import annotations

import pytest
import simpy

from mpsim.sim.link import LinkDirection
from mpsim.sim.transfer import (BulkTransfer, _ReceiveSpace, measured_scaling_ratio, space_from_win,
                                win_from_space)
from mpsim.wire.segment import decode_packet, encode_packet
from tests.sim.test_partial_sack import Sink, data
from tests.sim.test_transfer import Tap

MIB = 1024 * 1024
MSS = 1448


def one_path(env, rate_bps=10e6, one_way_delay_s=0.02, ack_trace=None, name="p"):
    forward = LinkDirection(env, f"{name}-fwd", delay_s=one_way_delay_s, rate_bps=rate_bps,
                            queue_limit_bytes=62_500)
    backward = LinkDirection(env, f"{name}-bwd", delay_s=one_way_delay_s, rate_bps=rate_bps, trace=ack_trace)
    return forward, backward


def test_win_from_space_and_the_measured_ratio_worked_by_hand():
    # A 1448-byte segment in a 2304-byte skb: 1448 x 256 // 2304 = 370688 // 2304 = 160 (160.9);
    # MPTCP's 1420 bytes: 363520 // 2304 = 157. tcp_win_from_space(262144) = 262144 x 160 / 256 =
    # 163840: the kernel's rcv_ssthresh (= window_clamp) with rb 262144; with 157, 160768, the
    # MPTCP subflow's.
    assert measured_scaling_ratio(1448) == 160
    assert measured_scaling_ratio(1420) == 157
    assert measured_scaling_ratio(1) == 1  # never 0
    assert win_from_space(160, 262144) == 163840
    assert win_from_space(157, 262144) == 160768
    assert win_from_space(128, 131072) == 65536  # TCP_DEFAULT_SCALING_RATIO: half
    assert space_from_win(160, 163840) == 262144
    assert space_from_win(160, 810880) == 1297408


def test_a_fresh_socket_offers_what_the_kernels_does():
    # tcp_rmem[1] 131072 at the default ratio: a window of 65536; the clamp keeps one advmss in
    # reserve: 64088 (the kernel's rcv_ssthresh on a fresh connection); rcv_wnd 65536 rounded down
    # to 45 x 1448 = 65160, so rcv_ssthresh = min(65160, 64088); the first DRS measure
    # min(64088, 10 x 1448) = 14480 (the kernel's rcv_space).
    space = _ReceiveSpace(131072, 6 * MIB, True, MSS)
    assert space.window_clamp_bytes == 64088
    assert space.initial_rcv_ssthresh == 64088
    assert space.space_bytes == 14480
    space.set_ratio(160)  # the first segment measured: the clamp follows the buffer
    assert space.window_clamp_bytes == 81920


def test_a_drs_growth_step_worked_by_hand():
    # tcp_rcvbuf_grow (6.18): the last measure 14480, 57920 bytes read in the last RTT.
    # rcvwin = 2 x 57920 = 115840; grow = 115840 x (57920 - 14480) / 14480 = 347520;
    # rcvwin += 2 x 347520 -> 810880; rcvbuf = 810880 x 256 / 160 = 1297408; the clamp
    # 1297408 x 160 / 256 = 810880.
    space = _ReceiveSpace(131072, 6 * MIB, True, MSS)
    space.set_ratio(160)
    assert space.grow(57920) is True
    assert (space.space_bytes, space.rcvbuf_bytes, space.window_clamp_bytes) == (57920, 1297408, 810880)
    # The next RTT 100000: rcvwin = 200000 + 2 x (200000 x 42080 // 57920 = 145303) = 490606,
    # 784969 bytes of buffer: below the 1297408 already there, no change but the measure.
    assert space.grow(100000) is False
    assert (space.space_bytes, space.rcvbuf_bytes) == (100000, 1297408)
    # Out-of-order data adds its span: grow(100000) again, 60000 held beyond a hole:
    # rcvwin = 200000 + 0 + 60000 = 260000 -> 416000 bytes, still below.
    assert space.grow(100000, 60000) is False
    # tcp_rmem[2] caps it: 262144, clamp 163840.
    capped = _ReceiveSpace(131072, 262144, True, MSS)
    capped.set_ratio(160)
    assert capped.grow(57920) is True
    assert (capped.rcvbuf_bytes, capped.window_clamp_bytes) == (262144, 163840)
    # SO_RCVBUF (SOCK_RCVBUF_LOCK): the measure is kept, the buffer never grows.
    pinned = _ReceiveSpace(200000, 6 * MIB, False, MSS)
    assert pinned.grow(57920) is False
    assert (pinned.space_bytes, pinned.rcvbuf_bytes) == (57920, 200000)


def test_the_advertised_window_in_a_capture_reflects_the_ratio():
    # TCP, tcp_rmem[2] = 256 KiB. The first data segment sets the ratio to 160 (clamp 81920 for
    # the 131072-byte buffer) and grows rcv_ssthresh from 64088 by 2 x 1448: the first ACK offers
    # 66984 (field 523 with window scale 7: 66944 on the wire). DRS then reaches the 262144 cap:
    # no ACK ever offers more than 163840 (field 1280), where the model offered 262144 before.
    env = simpy.Environment()
    acks = Tap()
    transfer = BulkTransfer(env, [one_path(env, ack_trace=acks)], 2 * MIB, rcv_buf_bytes=262144,
                            snd_buf_bytes=262144)
    env.run(until=transfer.done)
    windows = [p.window_bytes for _t, p in acks.sent]
    assert windows[0] == 66984
    fields = [decode_packet(encode_packet(p.to_ip_packet())).segment.window for _t, p in acks.sent]
    assert fields[0] == 66984 >> 7 == 523
    assert max(windows) == 163840 and max(fields) == 1280
    assert transfer.receiver.space.rcvbuf_bytes == 262144


def test_mptcp_window_is_the_connections_with_the_smallest_ratio():
    # Two subflows of 1420-byte segments: ratio 157 on each, so the connection's; capped at
    # 256 KiB the window never passes 262144 x 157 / 256 = 160768, and every subflow's buffer
    # followed the connection's growth (tcp_rcvbuf_grow on each subflow).
    env = simpy.Environment()
    acks = Tap()
    paths = [one_path(env, ack_trace=acks, name="a"), one_path(env, rate_bps=3e6, ack_trace=acks, name="b")]
    transfer = BulkTransfer(env, paths, 2 * MIB, mptcp=True, rcv_buf_bytes=262144, snd_buf_bytes=262144)
    env.run(until=transfer.done)
    receiver = transfer.receiver
    assert receiver.space.ratio == 157
    assert receiver.space.rcvbuf_bytes == 262144
    assert max(p.window_bytes for _t, p in acks.sent) == 160768
    assert all(sub.space.rcvbuf_bytes == 262144 and sub.space.window_clamp_bytes == 160768
               for sub in receiver.subflow_receivers)


def test_pinned_receive_buffer_is_doubled_and_never_grows():
    # SO_RCVBUF 100000: sk_rcvbuf 200000, window 200000 x 160 / 256 = 125000 at most.
    env = simpy.Environment()
    acks = Tap()
    transfer = BulkTransfer(env, [one_path(env, ack_trace=acks)], MIB, rcv_buf_bytes=100000, buffers="pinned")
    env.run(until=transfer.done)
    assert transfer.receiver.space.rcvbuf_bytes == 200000
    assert max(p.window_bytes for _t, p in acks.sent) == 125000


def test_drs_grows_the_buffer_once_per_rtt_from_what_was_read():
    # 10 Mbit/s, 40 ms RTT (plus queueing), tcp_rmem[2] 6 MiB: every growth step is taken at
    # least one receiver RTT (the sender's SRTT) after the measure began, with the bytes read
    # since; the buffer only grows, the clamp follows it, and it ends near the kernel's
    # 2535833 bytes (ss -tmi, same path) rather than at tcp_rmem[2].
    env = simpy.Environment()
    transfer = BulkTransfer(env, [one_path(env)], 3 * MIB)
    receiver = transfer.receiver
    steps = []
    original = _ReceiveSpace.grow

    def recording(space, new_space_bytes, ooo_bytes=0):
        if space is receiver.space and ooo_bytes == 0 and new_space_bytes != space.space_bytes:
            srtt_s = receiver.subflow_receivers[0].sender.srtt_s
            steps.append((env.now - receiver.space_time_s, srtt_s, new_space_bytes,
                          receiver.data_rcv_nxt - receiver.space_seq))
        return original(space, new_space_bytes, ooo_bytes)

    _ReceiveSpace.grow = recording
    try:
        env.run(until=transfer.done)
    finally:
        _ReceiveSpace.grow = original
    assert len(steps) >= 3
    for elapsed_s, srtt_s, new_space_bytes, read_bytes in steps:
        assert elapsed_s >= srtt_s and new_space_bytes == read_bytes
    space = receiver.space
    assert space.window_clamp_bytes == win_from_space(160, space.rcvbuf_bytes)
    assert 131072 < space.rcvbuf_bytes < 6 * MIB
    assert abs(space.rcvbuf_bytes - 2535833) < 0.2 * 2535833


def test_a_segment_that_grows_rcv_ssthresh_is_acked_at_once():
    """Linux 6.18 ``tcp_grow_window`` (net/ipv4/tcp_input.c) arms a quick ACK whenever it grows
    rcv_ssthresh (``icsk_ack.quick |= 1``); ``__tcp_ack_snd_check`` then sends that segment's ACK
    at once (quick-ACK mode) and ``tcp_dec_quickack_mode`` uses it up. Hand-worked: a fresh
    socket (clamp = rcv_ssthresh = 64088, nothing to grow) with its 16 start-up quick ACKs spent.
    Segment 1 (1448 bytes) is measured: scaling_ratio 160, the clamp 81920 and tcp_space 81920,
    room 17832; a 2304-byte truesize gives 1440 <= 1448 of window, so each segment adds
    2 x advmss = 2896: segments 1-6 take rcv_ssthresh to 81464, segment 7 the last 456 (81920).
    So segments 1-7 are ACKed one by one; from segment 8 rcv_ssthresh is at the clamp and the
    rule is one ACK per more than rcv_mss received: after 9 and 11 (without the quick ACK: after 2,
    4, 6, 8, 10). docs/kernel-facts.md, "Receive window"."""
    env = simpy.Environment()
    transfer = BulkTransfer(env, [one_path(env)], 200 * MSS)
    receiver = transfer.sender.subflows[0].receiver
    sink = Sink()
    receiver.backward = sink
    receiver.quickacks_left = 0
    assert receiver.space.window_clamp_bytes == receiver.rcv_ssthresh == 64088
    ssthresh = []
    for k in range(11):
        receiver.receive(data(receiver, k * MSS, MSS))
        ssthresh.append(receiver.rcv_ssthresh)
    assert receiver.space.window_clamp_bytes == 81920
    assert ssthresh == [64088 + 2896 * k for k in range(1, 7)] + [81920] * 5
    assert [s.ack // MSS for s in sink.sent] == [1, 2, 3, 4, 5, 6, 7, 9, 11]
    assert receiver.quickacks_left == 0


def test_pingpong_mode_holds_the_quick_acks_until_a_delayed_ack_or_a_duplicate():
    """Linux 6.18: ``tcp_in_quickack_mode`` is false in pingpong mode (a socket that sent data within
    ato of a receive: the kernel world's receivers answer a request before the bulk), so the quick
    ACK ``tcp_grow_window`` arms waits; ``tcp_delack_timer_handler`` leaves pingpong mode when a
    delayed ACK had to wait for its timer, and ``tcp_data_queue`` runs
    ``tcp_enter_quickack_mode(sk, TCP_MAX_QUICKACKS)`` for a segment wholly below rcv_nxt (leave
    pingpong mode; quick = min(rcv_wnd / (2 rcv_mss), 16)). Hand-worked on the fresh socket of
    the test above (its own segments 1 s away): segments 1-3 grow rcv_ssthresh but only 2 is ACKed
    (one ACK per more than rcv_mss); 3 waits for the 40 ms timer, which ends pingpong mode; 4 and 5
    still grow rcv_ssthresh (to 78568) and are ACKed at once."""
    env = simpy.Environment()
    transfer = BulkTransfer(env, [one_path(env, one_way_delay_s=1.0)], 200 * MSS, receiver_pingpong=True)
    receiver = transfer.sender.subflows[0].receiver
    assert receiver.pingpong and receiver.quickacks_left == 16  # held, not used
    sink = Sink()
    receiver.backward = sink
    for k in range(3):
        receiver.receive(data(receiver, k * MSS, MSS))
    assert [s.ack // MSS for s in sink.sent] == [2]
    env.run(until=0.041)
    assert [(s.ack // MSS, round(s.sent_s, 3)) for s in sink.sent] == [(2, 0.0), (3, 0.04)]
    assert not receiver.pingpong
    for k in range(3, 5):
        receiver.receive(data(receiver, k * MSS, MSS))
    assert [s.ack // MSS for s in sink.sent] == [2, 3, 4, 5] and receiver.rcv_ssthresh == 64088 + 5 * 2896
    # A duplicate in pingpong mode: out of it, 16 quick ACKs (the window, about 78 KB, holds
    # 27 x 2 rcv_mss), the duplicate's own ACK at once.
    receiver.pingpong, receiver.quickacks_left = True, 0
    receiver.receive(data(receiver, 0, MSS))
    assert not receiver.pingpong and receiver.quickacks_left == 16 and sink.sent[-1].ack == 5 * MSS
