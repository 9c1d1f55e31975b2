"""Packet-level bulk transfer: TCP or MPTCP from a sender to a receiver over simulated links.

One :class:`BulkTransfer` moves ``size_bytes`` of application data over one path (TCP) or one
subflow per path (MPTCP). A path is a pair of :class:`~mpsim.sim.link.LinkDirection`\\ s:
``forward`` carries data from the sender, ``backward`` carries the receiver's ACKs. The transfer
attaches its own endpoints to the links: each segment names the endpoint it is for, so several
transfers (and several subflows) may share a direction, which is how a shared bottleneck is
built. The result is a :class:`TransferRecord`.

What each side does
-------------------
Sender, per subflow (Linux as the reference where the RFCs leave a choice):

* congestion control from :mod:`mpsim.sim.congestion` (Reno, Linux CUBIC with HyStart, RFC 9438
  CUBIC, or LIA coupling across the subflows); the window grows only when the subflow was
  cwnd-limited (Linux ``tcp_is_cwnd_limited``: in slow start while cwnd < 2 x in flight) and
  only on an ACK that cumulatively acknowledges a segment, by all it newly delivered (Linux 6.x
  ``tcp_cong_control`` / ``tcp_may_raise_cwnd``, FLAG_DATA_ACKED; docs/sim.md "Linux's
  algorithms in the transfer model", window growth);
* a SACK scoreboard; pipe is Linux's ``packets_out - sacked_out - lost_out + retrans_out``; lost
  segments are retransmitted before new data (NextSeg rules 1 and 2). The scoreboard keeps the
  SACKed byte ranges; a segment counts as SACKed once those ranges cover it whole, and a segment
  an ACK covers in part stays unacknowledged and goes again from snd_una (a box that splits
  segments can deliver one part: Linux 6.x ``tcp_match_skb_to_sack``, which splits only
  multi-segment skbs (``tcp_fragment``), and ``tcp_clean_rtx_queue`` / ``tcp_trim_head`` in
  ``__tcp_retransmit_skb``; the model's records are single segments). Which segments are lost,
  by ``loss_detection``:

  - ``"rack-tlp"`` (the default): RACK-TLP, RFC 8985 as Linux 6.7-6.18 runs it
    (``net/ipv4/tcp_recovery.c``; ``tcp_schedule_loss_probe``, ``tcp_send_loss_probe`` and
    ``tcp_process_tlp_ack`` in ``tcp_output.c``/``tcp_input.c``; the shared transmit timer of
    ``tcp_timer.c``). A segment is lost once one sent after it was delivered and RACK.rtt +
    reo_wnd has passed since its sending; reo_wnd = min(min_rtt / 4, SRTT), 0 in recovery or
    with 3 or more segments SACKed unless reordering was seen (a hole filled by an original);
    a segment inside the window arms the reordering timer (wait + 2 ms). In Open state the
    transmit timer is the probe timeout, 2 SRTT + 2 ms (+ the 200 ms minimum RTO instead of
    2 ms with one segment out), 1 s without an RTT sample, never later than the RTO; a probe
    sends one new segment (plain TCP, cwnd ignored) or the last one again, at most one
    outstanding; an ACK beyond the probe of a retransmission reduces cwnd once (CWR).
    Simplified: no D-SACK (a duplicate's plain ACK ends a probe episode, as Linux's D-SACK
    would; no reo_wnd adaptation), no ``tp->reordering`` growth, timers not rounded to jiffies
    (docs/sim.md: rounded, the model sends five times the kernel's probes), an MPTCP subflow
    probes with the next segment committed to it (none: its last segment again);
  - ``"rfc6675"``: the RFC 6675 byte rule of IsLost alone (lost once more than (DupThresh - 1) =
    2 segments' worth of bytes above it are SACKed; the "DupThresh discontiguous blocks" rule
    and rescue retransmissions are left out), a retransmission declared lost when data sent
    after it is SACKed (Linux's pre-RACK ``tcp_mark_lost_retrans``), no probes.

  No D-SACK, no undo of spurious reductions;
* fast recovery with Proportional Rate Reduction (RFC 6937, as Linux ``tcp_cwnd_reduction``),
  cwnd = ssthresh when recovery ends;
* RTO per RFC 6298 with Linux's formula ``RTO = SRTT + max(4 RTTVAR, 200 ms)``, initial 1 s,
  exponential back-off to 120 s; RTT samples from the oldest newly acknowledged segment that
  was neither retransmitted (Karn) nor SACKed before, else from the oldest newly SACKed one
  (Linux ``seq_rtt``/``sack_rtt``); on expiry every unSACKed segment is marked lost, cwnd = 1,
  and ssthresh is reduced only by the first expiry of a back-off series and not when fast
  recovery already reduced it (Linux ``tcp_enter_loss``);
* a send buffer: the data the application has written and the peer has not acknowledged
  (DATA_ACK for MPTCP) never exceeds the connection's send buffer; the application writes as
  fast as the buffer allows. ``buffers="auto"`` (Linux's default) sizes it as Linux 6.x auto-tunes
  it; ``buffers="pinned"`` as after SO_SNDBUF (below).

Receiver, per subflow: in-order data goes up at once (an application that reads instantly,
unless a sink reads it: "Composing transfers" below); out-of-order segments wait in an interval list and are reported in SACK blocks (the block
holding the segment just received first, then the others from the highest down, as many as
the option space allows). A segment overlapping data already received or held keeps only its
new bytes (RFC 9293 3.10.7.4; a retransmission of a segment a box split, or several coalesced).
ACKs: quick ACK for the first 16 segments (Linux ``TCP_MAX_QUICKACKS``), then an ACK once more
than rcv_mss bytes arrived since the last one, else after 40 ms (``TCP_DELACK_MIN``):
Linux 6.x ``__tcp_ack_snd_check``, with rcv_mss measured as ``tcp_measure_rcv_mss`` does (the
largest segment, or the size of two equal smaller ones in a row: one ACK per two full segments,
or per two parts of split ones); immediate ACKs when a hole is filled, for in-order data while
out-of-order data is held, and for duplicates; a segment that is itself held out of order is
ACKed at once only three times per rcv_nxt, after that with SACK compression (Linux 4.18+,
``__tcp_ack_snd_check``: held back for min(1 ms, RTT / 20), at most 44 ACKs;
``_SubflowReceiver._compress_sack``). Not modelled: Linux sends the every-second-segment ACK only
if the window it would offer is not smaller than the last one (``__tcp_select_window(sk) >=
tp->rcv_wnd``), so with unread data it waits for the application's read (``tcp_cleanup_rbuf``)
or the socket's backlog (``tcp_backlog_ack_defer``): under loss, when flights arrive back to back
faster than the application reads, the kernel world's receivers ACK in-order data about once per
three segments (docs/kernel-facts.md); the model's application reads each segment as it arrives.
The advertised window is the receive buffer's as Linux offers it
("Receive window" below), relative to the cumulative (DATA_)ACK, and its right edge never moves
back (RFC 9293 3.8.6, Linux ``tcp_select_window``).

Receive window (Linux 6.18: ``include/net/tcp.h``, ``net/ipv4/tcp_input.c``,
``net/ipv4/tcp_output.c``, ``net/mptcp/protocol.c``; :class:`_ReceiveSpace`)
-------------------------------------------------------------------------------------------
* A socket offers only the payload share of its buffer memory: ``tcp_win_from_space(space) =
  space x scaling_ratio / 256``, the ratio being payload / truesize of the segment that last
  changed rcv_mss (``tcp_measure_rcv_mss``; 128, a half, before any). A received segment's skb
  costs ``RCV_SKB_TRUESIZE_BYTES`` (2304: measured on the kernel world's veths, where the
  kernel's window is 0.625 of its buffer for 1448-byte segments: ratio 160; 157 for MPTCP's
  1420). Simplified: one truesize per segment whatever its length or path.
* ``buffers="auto"``: the buffer (``sk_rcvbuf``) starts at tcp_rmem[1] (131072, at most
  ``rcv_buf_bytes``) with ``tcp_init_buffer_space``'s clamp (the buffer's window less one MSS:
  64088 with the default ratio) and grows by DRS towards ``rcv_buf_bytes`` (tcp_rmem[2]):
  on every read (``tcp_rcv_space_adjust``), once an RTT has passed since the measure began, the
  bytes read in it (less those still unread) are compared with the last measure and, if more,
  ``tcp_rcvbuf_grow`` (6.18) sets the buffer to ``tcp_space_from_win`` of twice them plus twice
  their growth over the last measure scaled by that window plus the out-of-order span (also on
  every segment held out of order), the clamp following; the first measure is 10 MSS.
  ``buffers="pinned"`` (or ``rcv_buffers="pinned"``): SO_RCVBUF doubled (``sock_setsockopt``),
  never grown (``SOCK_RCVBUF_LOCK``).
* ``rcv_ssthresh`` (per subflow, ``tcp_grow_window``) starts at the first offer (min of the
  buffer's window in whole MSS and the clamp) and grows by two MSS per segment up to the clamp;
  the window offered is the free space (``tcp_space``: the buffer less what is held out of order
  and not yet read) at most rcv_ssthresh, none when below one MSS or 1/16 of the buffer's window
  (``__tcp_select_window``).
* MPTCP: the window is the connection's (``mptcp_space``, ``__mptcp_space``: the msk's buffer and
  memory), with the smallest scaling_ratio of its subflows, bounded per ACK by the subflow's
  rcv_ssthresh, whose room is that subflow's own clamp. DRS is ``mptcp_rcv_space_adjust``: the
  largest of the subflows' RTTs, no ``inq``, and when the connection's buffer grows every
  subflow's grows with the same measure (``tcp_rcvbuf_grow(ssk, copied)``); the subflows' own
  out-of-order data grows their own buffers.
* Simplified: held and unread bytes are charged their payload (Linux coalesces queued skbs,
  ``tcp_try_coalesce`` / ``mptcp_try_coalesce``, freeing all but the payload's pages of each
  segment after the first of a run); the receiver's RTT estimate is the subflow sender's SRTT
  (Linux's ``tcp_rcv_rtt_measure_ts`` times the same round trip from the timestamp echo); the
  msk's ratio is taken over the joined subflows only; no window-scale rounding, no memory
  pressure, no quick-ACK that rcv_ssthresh growth arms, no ``tcp_clamp_window`` /
  ``tcp_collapse`` (a full buffer here only closes the window, which the clamp never lets data
  pass).

MPTCP (RFC 8684): one connection-level sequence space; the receiver reassembles by DSN into
the shared buffer (trimming data that overlaps what it already has, as a reinjection may) and
every ACK carries the DATA_ACK and the connection-level window. The sender follows upstream
Linux 6.6-6.18 (``net/mptcp/protocol.c``; ``scheduler="default"``, :class:`_ConnectionSender`):

* ``mptcp_subflow_get_send``: new data goes to the active subflow with the lowest *linger time*,
  ``sk_wmem_queued`` / averaged pacing rate; the pacing rate is ``tcp_update_pacing_rate``'s
  (mss x cwnd / SRTT x 200 % below ssthresh / 2, else 120 %), averaged over each burst by the
  queued bytes (``avg_pacing_rate``); nothing is sent if that subflow's buffer is full;
* ``__mptcp_push_pending`` / ``__subflow_push_pending`` / ``mptcp_sendmsg_frag``: the pick gets a
  burst of up to 65,428 bytes (``MPTCP_SEND_BURST_SIZE``, bounded by the connection window and
  the subflow's buffer) *committed to its own send queue*, whatever its cwnd, in whole data
  fragments (the application's bytes in 32 KiB page frags, ``struct mptcp_data_frag``): the burst
  and the buffer are checked only after each fragment, so a pick runs on to the next fragment
  boundary (up to a fragment past the burst or ``sk_sndbuf``; fragments are taken as aligned at
  every 32,768 bytes of the data sequence, without the 40-byte header each carries); the subflow sends
  from that queue as its cwnd allows (``tcp_write_xmit``), and a tail loss probe sends the next
  segment queued on it. Committed data never moves to another subflow (hence a slow subflow
  can hold megabytes of a pinned buffer while the fast one starves);
* memory: a queued segment costs its payload + 832 bytes (skb truesize with the testbed kernel's
  MAX_TCP_HEADER of 256; 896 on distribution kernels) in ``sk_wmem_queued``
  until cumulatively acknowledged; a subflow may queue while ``wmem_queued < sk_sndbuf``;
* ``mptcp_retransmit_timer`` / ``__mptcp_retrans``: a connection-level timer, restarted whenever
  the DATA_ACK advances, runs for the longest time left on any subflow's transmit timer
  (``mptcp_set_timeout``; 200 ms if none). On expiry the oldest unacknowledged 32 KiB fragment
  (a page frag, ``mptcp_data_frag``; up to what was sent) is re-sent on the first active subflow
  with nothing in flight and nothing queued (``mptcp_subflow_get_retrans``); the receiver drops
  the copy that arrives second;
* stale subflows (``mptcp_pm_subflow_chk_stale``, net/mptcp/pm.c, 6.18): each MPTCP timeout
  counts a period for every subflow with data in flight or queued; a subflow that has taken no
  ACK over more than ``stale_loss_cnt`` (4) of them is stale if another active subflow is not
  itself losing: everything not DATA_ACKed is sent again on the others
  (``__mptcp_retransmit_pending_data``), the stale subflow gets no new data until an ACK
  recovers it, and a counting subflow adds nothing to the timer's interval
  (``_ConnectionSender.check_stale``); a DATA_ACK beyond such a re-sent send head moves the head
  past it (``__mptcp_clean_una``);
* further subflows join with the MP_JOIN handshake (below, "Subflows joining").

``scheduler="lowest-rtt"`` keeps the older model (the out-of-tree Linux MPTCP's default): new
data straight to the lowest-SRTT subflow with cwnd space, nothing queued beyond cwnd, a segment
retransmitted only on its own subflow, no reinjection (a dead path stalls the connection).

Buffers. ``buffers="auto"``: ``snd_buf_bytes`` is tcp_wmem[2] (4 MiB); each subflow starts at
``tcp_init_buffer_space``'s 2 x 10 x 2304 bytes and grows as ``tcp_sndbuf_expand``
(``net/ipv4/tcp_input.c``): 2 x max(10, cwnd) x 2304 whenever an ACK frees data while cwnd is not
full (2304 = roundup_pow_of_two(1460 + MAX_TCP_HEADER 256 + 320) + 256, the testbed kernel's;
4352 on a distribution kernel, whose MAX_TCP_HEADER of 320 crosses the power of two:
``MAX_TCP_HEADER_BYTES``), never shrinking, at most tcp_wmem[2]; the connection's buffer is the
sum of its subflows' (``__mptcp_sync_sndbuf``, 6.7+), compared with the bytes not yet DATA_ACKed.
``buffers="pinned"``: SO_SNDBUF doubled (``sock_setsockopt``) for the connection and, synced, for
every subflow, no growth. Receive side: "Receive window" above. Plain TCP keeps a payload send buffer of
``snd_buf_bytes``.

Composing transfers
-------------------
A transfer is one leg of a longer one when its sending application is fed over time and its
receiving application reads only as fast as something downstream takes the bytes
(:class:`mpsim.sim.relay.RelayedTransfer`: a converter's two TCP legs with its relay between
them). ``BulkTransfer(source=..., sink=...)``:

* **source**: the sender's application has written only what ``source.pull(sender,
  room_bytes)`` handed over; every push first asks it for up to the send buffer's free room
  (``_ConnectionSender.send_buffer_room``: the buffer less what is written and not
  (DATA_)ACKed, as ``sk_stream_memory_free`` lets a writer in) and then sends as usual, except
  that written bytes reach the scheduler in whole segments, a shorter tail only once all that
  was sent is acknowledged or the stream is complete (Nagle, RFC 896: Linux's default without
  TCP_NODELAY; its Minshall refinement and autocorking are left out);
* **sink**: in-order bytes stay *unread* in the receive buffer until ``receiver.consume(n)``;
  ``sink.on_data(receiver, payload, offset, length)`` hears of each arrival. The advertised
  window is the free receive-buffer space, as Linux's ``tcp_space()`` (the buffer less
  ``sk_rmem_alloc``, which counts unread and out-of-order data alike), so it shrinks as unread
  bytes pile up and closes when the buffer is full. A read that opens the window
  "significantly" is announced at once (``tcp_cleanup_rbuf``, net/ipv4/tcp.c: the window last
  advertised at most half the clamp and the new one, at least one MSS, at least twice it; on
  every active subflow for MPTCP, ``mptcp_cleanup_rbuf``); else the next ACK carries it;
* **zero-window probes** (with a sink): when the peer's window refuses the next segment and
  nothing is in flight or queued, the sender arms Linux's probe timer (``tcp_check_probe_timer``:
  max(RTO, 200 ms), doubled per probe up to 120 s, ``tcp_probe0_when``) and on expiry sends a
  bare segment below ``snd_una`` (``tcp_xmit_probe_skb``), which the receiver answers with an
  ACK carrying its window; an ACK that opens the window ends it (``tcp_ack_probe``).

Without a source and a sink nothing of this runs and a transfer behaves as before. Modelled:
unread bytes close the window, window updates on reads (which also run DRS), probes. Not
modelled: window-scale rounding, ``tcp_cleanup_rbuf``'s other rule (a read sends an ACK already
scheduled at once when more than one MSS arrived since the last window update), MPTCP's
one-byte data probe (the model's MPTCP probes as TCP
does, on the first active subflow), a probe give-up after ``tcp_retries2``.

Header accounting (``size_bytes`` is the IP packet; the links add no framing)
------------------------------------------------------------------------------
* every segment: IPv4 20 + TCP 20 + NOP NOP Timestamps 12 = 52 bytes; over IPv6 (the flow's
  addresses say which) the fixed header is 40 (RFC 8200 section 3, no extension headers): 72;
* TCP data: 52 + ``mss_bytes`` payload (1448: a 1500-byte packet, the Linux MSS with
  timestamps on a 1500-byte MTU; IPv6: 72 + 1428);
* MPTCP data: 52 + DSS 28 (4 base + Data ACK 8 + DSN 8 + SSN 4 + data-level length 2 = 26,
  padded to 28; no checksum, Linux's defaults: 64-bit DSN and Data ACK) and a payload of
  ``mss_bytes - 28`` (Linux reserves the full DSS when it computes the MSS, so packets still
  fit the MTU: 1420 bytes of payload in a 1500-byte packet; IPv6: 1400);
* pure ACKs: 52, + 12 for the MPTCP DSS Data ACK, + 4 + 8 per SACK block (NOP NOP kind
  length); 40 bytes of option space allow 3 SACK blocks on TCP but only 1 on MPTCP (Linux puts
  the DSS before SACK and trims the blocks to what fits).

The kernel testbed shapes with tbf, which counts Ethernet framing (14 bytes more per packet):
compare goodput as a fraction of the shaped rate with 1448/1514 there and 1448/1500 here.

Subflows joining (RFC 8684 3.2 as Linux 6.x runs it; :mod:`mpsim.proto.join`, wired by :class:`_Join`)
-----------------------------------------------------------------------------------------------------
The initial subflow is the negotiated connection: established when the transfer starts. Every
further one is opened by the client (``joins_from``: the sender in an upload, the receiver in a
download) when the path manager runs, ``join_delay_s`` after the start (default 0: Linux's
in-kernel PM opens all "subflow" endpoints in one pass of its worker, scheduled when the
MP_CAPABLE connection becomes fully established, which the negotiated connection already is;
``mptcp_pm_create_subflow_or_signal_addr``, net/mptcp/pm_netlink.c, pm_kernel.c from 6.15) or at
its own ``subflow_start_s``. SYN + MP_JOIN (72 bytes: MSS, SACK-permitted, timestamps, NOP,
window scale, MP_JOIN 12), SYN-ACK + MP_JOIN (76, MP_JOIN 16), third ACK + MP_JOIN with the HMAC
(76, MP_JOIN 24), and the listener's fourth ACK (64, a DSS Data ACK). The client may send data
only after the fourth ACK (``__mptcp_subflow_active``), the server from the third ACK on; so an
upload's joined subflow sends 2 RTTs after its SYN, a download's 1.5 RTTs. The data sender starts
with the handshake's RTT sample. Lost SYNs go again on the client's SYN timer
(``syn_policy``, a :class:`~mpsim.proto.tcp.TcpPolicy`: initial 1 s, ``syn_linear_timeouts``,
give-up); a lost fourth ACK is repaired by the third ACK again after 2 SRTT. A join fails as
Linux fails it: a SYN-ACK without MP_JOIN (a box stripped it from the SYN, which then reached the
server as a plain SYN and got a plain SYN-ACK, or from the SYN-ACK) or a fourth ACK without DSS:
the client resets; a third ACK without MP_JOIN: the server resets; no SYN-ACK: given up. The
handshake's decisions and values are the sans-I/O machines' of :mod:`mpsim.proto.join`: the SYN
names the token of the server's key, the SYN-ACK and third ACK carry the HMACs of RFC 8684 3.2
from both keys (``mptcp_keys``; the simulation passes the negotiated connection's) and the nonces
(``join_rng``), and each side checks what it receives (a wrong HMAC or an unknown token resets
the subflow, as a stripped option does). The
other subflows then carry everything; ``TransferRecord.subflow_joined`` / ``subflow_join_s`` /
``subflow_join_failures`` record it. ``join_handshake=False`` keeps the older model: subflows
start established at their ``subflow_start_s`` (default 0).

Middleboxes on the data path (:mod:`mpsim.sim.light_filter`) may remove the DSS from data or
ACKs. RFC 8684 3.7, as the model applies it: data without a DSS mapping, or data ACKed without a
Data ACK, on a joined subflow or while another subflow is open: that subflow is reset (RST with
MP_TCPRST reason 6) and everything not DATA_ACKed is sent again on the others (Linux
``__mptcp_close_ssk`` -> ``__mptcp_retransmit_pending_data``); on the only subflow the connection
falls back to TCP (the infinite mapping: no more MPTCP options, no MPTCP-level retransmission).
Linux departs from this in one case (docs/kernel-departures.md section 3).

Simplifications
---------------
* No teardown of its own: no FIN/DATA_FIN (in a simulation the negotiated connection's proto
  machines close after the transfer and its joined subflows after them,
  mpsim/sim/transfer_close.py). The initial subflow starts established, its window the
  handshake's first offer ("Receive window"); joins are as above, but the listener has no SYN-ACK
  timer of its own (a retransmitted SYN gets a new SYN-ACK), and the plain connection a stripped
  SYN opens at the server is not modelled beyond its SYN-ACK. Subflows
  without an RTT sample (the initial one) pace as if their RTT were the initial RTO (Linux has
  the handshake's sample).
* Receive buffers: "Receive window" above says what is simplified. MPTCP send queues count
  truesize with one skb per segment
  (Linux builds larger skbs when GSO is on, which costs less overhead); the connection's send
  buffer counts payload (the msk's data fragments cost little more).
* Without a sink the receiving application reads instantly (a window never closes with
  nothing in flight then, so only a transfer with a sink probes a zero window).
* MPTCP: rcv_tstamp (stale detection) is the jiffy of the last ACK taken, from the transfer's
  start or the join (Linux: from the handshake); reinjection is one 32 KiB
  fragment per MPTCP timeout, on an idle subflow only; fragment edges at multiples of 32 KiB of
  DSN (Linux's depend on how the application writes); no backup subflows, no DATA_ACK-only
  window updates on idle subflows, no subflow that leaves; one ACK path per subflow (the
  reverse of its forward path).
* No pacing, no TSO/GSO, no ECN, no BBR (the kernel benchmark pins CUBIC); HyStart is part of
  Linux CUBIC (:class:`~mpsim.sim.congestion.Cubic`).
* The transfer itself draws no random numbers: loss and jitter live in the links, each with
  its own rng (:mod:`mpsim.sim.seeds`).
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_left
from collections import deque
from heapq import heappop, heappush
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from operator import attrgetter
from typing import Any

import simpy
from simpy.events import NORMAL

from mpsim.proto.join import JoinFailed, JoinInitiator, JoinKeys, JoinListener, JoinSegment, JoinSegmentKind
from mpsim.proto.tcp import TcpPolicy
from mpsim.sim.congestion import (INITIAL_CWND_SEGMENTS, LINUX_HZ, CongestionControl, LiaCoupling, check_kernel_hz,
                                  make_congestion_control)
from mpsim.sim.link import LIGHT_PACKET_TYPES, LinkDirection, schedule_call
from mpsim.sim.seeds import derive_seed

# --- header accounting (module docstring) ------------------------------------------------------
#: IPv4 20 + TCP 20 + NOP NOP Timestamps 12.
BASE_HEADER_BYTES = 52
#: The IP header by version: IPv4 without options, the IPv6 fixed header (RFC 8200 section 3).
IP_HEADER_BYTES = {4: 20, 6: 40}
TIMESTAMPS_OPTION_BYTES = 12
TCP_OPTION_SPACE_BYTES = 40
#: DSS with Data ACK (64-bit), DSN (64-bit), SSN and data-level length, no checksum: 26 + 2 padding.
DSS_DATA_OPTION_BYTES = 28
#: DSS with a 64-bit Data ACK only.
DSS_ACK_OPTION_BYTES = 12
SACK_BASE_BYTES = 4  # NOP NOP kind length
SACK_BLOCK_BYTES = 8
DEFAULT_MSS_BYTES = 1448
# --- the MP_JOIN handshake (module docstring, "Subflows joining") ---------------------------------
#: A Linux SYN's or SYN-ACK's options: MSS 4, SACK-permitted 2 + Timestamps 10, NOP + window scale 4.
SYN_OPTIONS_BYTES = 20
#: RFC 8684 3.2 (Linux TCPOLEN_MPTCP_MPJ_SYN / _SYNACK / _ACK, net/mptcp/protocol.h).
MP_JOIN_SYN_BYTES = 12
MP_JOIN_SYNACK_BYTES = 16
MP_JOIN_ACK_BYTES = 24
#: MP_TCPRST (RFC 8684 3.6) on the RST that resets a subflow.
MP_TCPRST_BYTES = 4
#: The MSS a SYN advertises: the payload beside the 12 timestamp bytes plus those bytes (1460).
SYN_MSS_OPTION_BYTES = DEFAULT_MSS_BYTES + TIMESTAMPS_OPTION_BYTES
#: The window scale Linux offers with tcp_rmem[2] = 6 MiB.
WINDOW_SCALE_SHIFT = 7
#: When the in-kernel path manager opens the further subflows, after the transfer's start.
#: Linux (net/mptcp/pm_netlink.c, pm_kernel.c from 6.15: ``mptcp_pm_create_subflow_or_signal_addr``)
#: opens one subflow per "subflow" endpoint in one pass of the PM worker, which the MP_CAPABLE
#: connection's becoming fully established schedules (``mptcp_pm_fully_established``, no timer).
#: The transfer starts on the negotiated connection, fully established already: 0.
DEFAULT_JOIN_DELAY_S = 0.0
#: Which side opens the further subflows (``BulkTransfer(joins_from=...)``): the client, which
#: is the data sender in an upload and the receiver in a download.
JOIN_INITIATORS = ("sender", "receiver")
#: The Linux MSS with timestamps on a 1500-byte MTU, by IP version: 1500 - IP - TCP 20 - 12.
MTU_BYTES = 1500
DEFAULT_MSS_BYTES_BY_VERSION = {version: MTU_BYTES - ip_bytes - 20 - TIMESTAMPS_OPTION_BYTES
                                for version, ip_bytes in IP_HEADER_BYTES.items()}

# --- Linux constants --------------------------------------------------------------------------
RTO_MIN_S = 0.2  # TCP_RTO_MIN
RTO_MAX_S = 120.0  # TCP_RTO_MAX
RTO_INITIAL_S = 1.0  # RFC 6298 2.1
DELAYED_ACK_S = 0.04  # TCP_DELACK_MIN
QUICKACK_SEGMENTS = 16  # TCP_MAX_QUICKACKS
DUPTHRESH = 3
#: SACK compression (net/ipv4/tcp_input.c ``__tcp_ack_snd_check``, Linux 4.18+; the defaults of
#: net.ipv4.tcp_comp_sack_nr and tcp_comp_sack_delay_ns): at most this many ACKs held back...
TCP_COMP_SACK_NR = 44
#: ...and for at most this long (or 5 % of the receiver's RTT estimate, whichever is shorter).
TCP_COMP_SACK_DELAY_S = 0.001
#: Linux TCP_FASTRETRANS_THRESH: the duplicate ACKs sent at once for one rcv_nxt before compressing.
TCP_FASTRETRANS_THRESH = 3
#: Linux TCP_MSS_DEFAULT: the receiver's rcv_mss before it has measured one (tcp_initialize_rcv_mss).
TCP_MSS_DEFAULT_BYTES = 536
#: Linux TCP_TIMEOUT_MIN_US: added to the RACK reordering timer and to the loss probe timeout
#: with more than one segment in flight (include/net/tcp.h, Linux 6.7 and later).
TIMEOUT_MIN_S = 0.002
#: Loss detection policies (``BulkTransfer(loss_detection=...)``).
LOSS_DETECTION_POLICIES = ("rack-tlp", "rfc6675")
#: Linux's default tcp_wmem / tcp_rmem maxima: what auto-tuning may reach.
DEFAULT_SND_BUF_BYTES = 4 * 1024 * 1024
DEFAULT_RCV_BUF_BYTES = 6 * 1024 * 1024
#: Linux tcp_wmem[1]: a socket's send buffer before tcp_init_buffer_space expands it.
TCP_WMEM_DEFAULT_BYTES = 16384
#: Linux MAX_TCP_HEADER (include/net/tcp.h: L1_CACHE_ALIGN(128 + MAX_HEADER)) depends on the kernel's
#: configuration through LL_MAX_HEADER and the tunnel drivers: 256 on the testbed's 6.18 kernel
#: (measured, docs/kernel-facts.md "Socket memory and pacing of the senders": an skb holding 100
#: bytes costs 932 in sk_wmem_queued, a subflow's first send buffer is 46080 = 2 x 10 x 2304), 320
#: on the usual x86-64 distribution kernels (LL_MAX_HEADER 96 plus tunnels), where the buffers
#: below are 896 and 4352.
MAX_TCP_HEADER_BYTES = 256
#: SKB_DATA_ALIGN(sizeof(struct sk_buff)) and SKB_DATA_ALIGN(sizeof(struct skb_shared_info)), x86-64 6.x.
SK_BUFF_BYTES = 256
SKB_SHARED_INFO_BYTES = 320
#: Memory a queued segment costs beyond its payload (skb truesize, tcp_stream_alloc_skb's head from
#: skb_small_head_cache, 6.3+): the MAX_TCP_HEADER head, struct sk_buff and skb_shared_info (832);
#: the model keeps one skb per segment (no GSO-sized skbs).
SKB_TRUESIZE_OVERHEAD_BYTES = MAX_TCP_HEADER_BYTES + SK_BUFF_BYTES + SKB_SHARED_INFO_BYTES
#: tcp_sndbuf_expand's per-segment charge (net/ipv4/tcp_input.c, 6.x): roundup_pow_of_two(mss_clamp
#: 1460 + MAX_TCP_HEADER + skb_shared_info) + sk_buff = 2048 + 256 (a MAX_TCP_HEADER of 320 crosses
#: the power of two: 4096 + 256, twice the buffer per segment of cwnd).
SNDBUF_PER_MSS_BYTES = (1 << (SYN_MSS_OPTION_BYTES + MAX_TCP_HEADER_BYTES + SKB_SHARED_INFO_BYTES - 1).bit_length()) \
    + SK_BUFF_BYTES
#: net/mptcp/protocol.h MPTCP_SEND_BURST_SIZE: 64 KiB less the TCP, IPv6 and fragment headers
#: and the option space.
MPTCP_SEND_BURST_BYTES = 65428
#: An MPTCP data fragment (struct mptcp_data_frag) lives in a 32 KiB page frag
#: (SKB_FRAG_PAGE_ORDER); __mptcp_retrans re-sends one such fragment at a time.
MPTCP_DFRAG_BYTES = 32768
#: net.mptcp.stale_loss_cnt's default (Documentation/networking/mptcp-sysctl.rst): a subflow with
#: data outstanding that has received no ACK over more than this many MPTCP-level retransmit
#: timeouts is stale (net/mptcp/pm.c ``mptcp_pm_subflows_chk_stale``).
MPTCP_STALE_LOSS_CNT = 4
#: subflow->stale_count is a u8 that saturates (``mptcp_pm_subflow_chk_stale``).
_STALE_COUNT_MAX = 255
# --- the receive window (module docstring, "Receive window") ----------------------------------------
#: Linux TCP_RMEM_TO_WIN_SCALE (include/net/tcp.h, 6.5+): scaling_ratio is payload / truesize in 1/256.
TCP_RMEM_TO_WIN_SCALE = 8
#: Linux TCP_DEFAULT_SCALING_RATIO: a socket assumes half its buffer is payload until it has measured
#: a segment (include/net/tcp.h, 6.6+).
TCP_DEFAULT_SCALING_RATIO = 1 << (TCP_RMEM_TO_WIN_SCALE - 1)
#: Linux tcp_rmem[1]: an auto-tuned socket's receive buffer when the connection is established.
TCP_RMEM_DEFAULT_BYTES = 131072
#: Memory one received segment costs in the receive buffer (skb truesize): a 2 KiB buffer holding
#: the frame plus struct sk_buff (256 bytes). Measured, not derived: on the kernel world's veths
#: (Linux 6.18, offloads off) ``ss -tmi`` shows rcv_ssthresh = window_clamp = 163840 with rb 262144
#: for 1448-byte segments, a scaling_ratio of 160/256, which any truesize from 2303 to 2316 gives.
RCV_SKB_TRUESIZE_BYTES = 2304
#: Linux TCP_INIT_CWND: tcp_init_buffer_space's first DRS measure is at most 10 advertised MSS.
TCP_INIT_CWND_SEGMENTS = 10
#: MPTCP packet schedulers (``BulkTransfer(scheduler=...)``).
SCHEDULERS = ("default", "lowest-rtt")
#: Buffer policies (``BulkTransfer(buffers=...)``): Linux's auto-tuning, or SO_SNDBUF/SO_RCVBUF set.
BUFFER_POLICIES = ("auto", "pinned")

#: Timers run after packet deliveries scheduled for the same instant (as SimNode's).
TIMER_PRIORITY = NORMAL + 1
FLAG_SYN = 0x02
FLAG_RST = 0x04
FLAG_PSH = 0x08
FLAG_ACK = 0x10

_OPEN, _RECOVERY, _LOSS = 0, 1, 2  # Linux TCP_CA_Open / TCP_CA_Recovery / TCP_CA_Loss
#: What the one transmit timer is armed for (Linux icsk_pending: ICSK_TIME_RETRANS, _LOSS_PROBE,
#: _REO_TIMEOUT share one timer).
_TIMER_RTO, _TIMER_TLP, _TIMER_REO = 0, 1, 2
_SEQ = attrgetter("seq")


def base_header_bytes(address: IPv4Address | IPv6Address) -> int:
    """IP + TCP + NOP NOP Timestamps of every segment of a flow from or to ``address``: 52 or 72."""
    return BASE_HEADER_BYTES - IP_HEADER_BYTES[4] + IP_HEADER_BYTES[address.version]


def sack_capacity(mptcp: bool) -> int:
    """SACK blocks that fit beside the timestamps (and the MPTCP Data ACK) in 40 option bytes."""
    room = TCP_OPTION_SPACE_BYTES - TIMESTAMPS_OPTION_BYTES - (DSS_ACK_OPTION_BYTES if mptcp else 0)
    return max(0, (room - SACK_BASE_BYTES) // SACK_BLOCK_BYTES)


class Segment:
    """A light TCP segment for the transfer model (plain attributes: thousands per second).

    ``seq`` is the subflow sequence number of the first payload byte, counted from 0 (the SYN
    is not modelled); ``ack`` the cumulative subflow ACK; ``sack_blocks`` a tuple of
    ``(left, right)`` or None; ``dsn``/``data_ack`` the MPTCP data sequence number and DATA_ACK
    (for TCP they equal ``seq``/``ack``); ``window_bytes`` the window advertised from
    ``data_ack``; ``payload`` the data itself (a memoryview) when the transfer carries real
    bytes, else None. ``dst_endpoint`` is the object whose ``receive(segment)`` the link
    delivers it to. ``mptcp``: the segment carries its MPTCP option (DSS; MP_JOIN on a join's
    SYN, SYN-ACK and third ACK; MP_TCPRST on a RST); a middlebox that strips it clears it
    (:mod:`mpsim.sim.light_filter`). A join's handshake segments have FLAG_SYN or are addressed
    to a join endpoint; their ``seq``/``ack`` are 0. Treat a segment as immutable once sent,
    except for what a route (:mod:`mpsim.sim.route`) stamps on it: ``route`` and ``hop`` (where
    it is on its route) and ``flow`` (the addresses, ports and sequence bases a capture shows on
    that hop, or None). ``join_option``, set only on a join's handshake segments: the MP_JOIN or
    MP_TCPRST option the join's machine built (:mod:`mpsim.proto.join`), which the other side
    checks and a capture shows while ``mptcp`` is set.
    """

    __slots__ = ("size_bytes", "dst_endpoint", "subflow_id", "seq", "payload_bytes", "ack", "sack_blocks",
                 "dsn", "data_ack", "window_bytes", "flags", "sent_s", "payload", "mptcp", "route", "hop", "flow",
                 "join_option")

    def __init__(self, size_bytes: int, dst_endpoint: Any, subflow_id: int, seq: int, payload_bytes: int, ack: int,
                 sack_blocks: tuple | None, dsn: int, data_ack: int, window_bytes: int, flags: int, sent_s: float,
                 payload: memoryview | None, mptcp: bool) -> None:
        self.size_bytes = size_bytes
        self.dst_endpoint = dst_endpoint
        self.subflow_id = subflow_id
        self.seq = seq
        self.payload_bytes = payload_bytes
        self.ack = ack
        self.sack_blocks = sack_blocks
        self.dsn = dsn
        self.data_ack = data_ack
        self.window_bytes = window_bytes
        self.flags = flags
        self.sent_s = sent_s
        self.payload = payload
        self.mptcp = mptcp
        # route, hop and flow stay unset until a route stamps them (Route.send): none of the cost
        # falls on a segment sent on a bare direction.

    def copy(self) -> Segment:
        """The same segment, route stamps included (a route relabels a copy, see mpsim.sim.route)."""
        twin = Segment(self.size_bytes, self.dst_endpoint, self.subflow_id, self.seq, self.payload_bytes, self.ack,
                       self.sack_blocks, self.dsn, self.data_ack, self.window_bytes, self.flags, self.sent_s,
                       self.payload, self.mptcp)
        twin.route, twin.hop, twin.flow = self.route, self.hop, getattr(self, "flow", None)
        option = getattr(self, "join_option", None)
        if option is not None:
            twin.join_option = option
        return twin

    def __repr__(self) -> str:
        kind = f"data seq={self.seq} len={self.payload_bytes}" if self.payload_bytes else f"ack={self.ack}"
        return f"<Segment sf{self.subflow_id} {kind} dsn={self.dsn} data_ack={self.data_ack} {self.size_bytes}B>"

    def to_ip_packet(self):
        """The segment as a wire ``IpPacket`` (for pcap files and middleboxes), with the header
        accounted above.

        Addresses and ports come from the segment's ``flow`` (set by its route: the connection
        the negotiation opened, mpsim.sim.route.Flow), sequence numbers plus the flow's bases (on
        a relay's TCP leg, ``flow.data_level``: the DSN and DATA_ACK, no MPTCP or SACK option);
        without a flow from the endpoints, sequence numbers offset by one for the SYN (ISN 0).
        A DSS's DSN, Data ACK and SSN continue the negotiated connection's (``flow.data_bases``:
        from its keys' IDSNs, RFC 8684 3.1 and 3.3), or count from 1 without one.
        Modulo 2**32; the window is scaled by 2**7; TSval is the send time in milliseconds; the
        payload is zeros when the transfer carries no real bytes. A join's SYN and SYN-ACK carry
        Linux's SYN options (MSS, SACK-permitted, timestamps, NOP, window scale) and MP_JOIN, with
        sequence numbers 0 (ISN 0: handshake numbers are not drawn); its third ACK MP_JOIN with
        the HMAC: the options the join's machine built (``join_option``: real tokens, nonces and
        HMACs from the connection's keys, RFC 8684 3.2); a RST MP_TCPRST (reason: middlebox
        interference).
        """
        from mpsim.wire.mptcp import Dss, MpTcpRst, MpTcpRstReason
        from mpsim.wire.options import MaximumSegmentSize, NoOperation, Sack, SackPermitted, Timestamps, WindowScale
        from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment

        mask = 0xFFFFFFFF
        endpoint = self.dst_endpoint
        flow = getattr(self, "flow", None)  # unset: never sent on a route
        # On a relay's plain TCP leg (flow.data_level) the bytes are the connection's stream: data-level
        # numbers, no MPTCP option, no subflow SACK.
        data_level = flow is not None and flow.data_level
        mptcp_option = self.mptcp and not data_level
        if flow is None:
            src_ip, src_port, dst_ip, dst_port = endpoint.remote_ip, endpoint.remote_port, endpoint.local_ip, \
                endpoint.local_port
            seq_base = ack_base = 1
        else:
            src_ip, src_port, dst_ip, dst_port = flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port
            seq_base, ack_base = flow.bases()
        flags = self.flags
        timestamps = Timestamps(int(self.sent_s * 1000) & mask, 0)
        seq, ack = (self.dsn, self.data_ack) if data_level else (self.seq, self.ack)
        seq, ack = (seq + seq_base) & mask, (ack + ack_base) & mask
        join_option = getattr(self, "join_option", None)  # a join's own option (mpsim.proto.join)
        if flags & FLAG_SYN:
            seq, ack = 0, 1 if flags & FLAG_ACK else 0
            options: list = [MaximumSegmentSize(SYN_MSS_OPTION_BYTES), SackPermitted(), timestamps, NoOperation(),
                             WindowScale(WINDOW_SCALE_SHIFT)]
            if mptcp_option and join_option is not None:
                options.append(join_option)
        else:
            options = [NoOperation(), NoOperation(), timestamps]
            if not mptcp_option:
                pass
            elif join_option is not None:  # a join's third ACK (MP_JOIN) or a RST (MP_TCPRST)
                options.append(join_option)
            elif flags & FLAG_RST:
                options.append(MpTcpRst(MpTcpRstReason.MIDDLEBOX_INTERFERENCE))
            elif self.payload_bytes:
                dsn_base, data_ack_base, ssn_base = flow.data_bases() if flow is not None else (1, 1, 1)
                options.append(Dss(data_ack=(self.data_ack + data_ack_base) & _MASK64,
                                   dsn=(self.dsn + dsn_base) & _MASK64, ssn=(self.seq + ssn_base) & mask,
                                   data_level_length_bytes=self.payload_bytes, data_ack_64_bit=True, dsn_64_bit=True))
            else:
                data_ack_base = flow.data_bases()[1] if flow is not None else 1
                options.append(Dss(data_ack=(self.data_ack + data_ack_base) & _MASK64, data_ack_64_bit=True))
        if self.sack_blocks and not data_level:
            # SACK blocks name the data sender's numbers, which this (reverse) segment's ACK carries.
            blocks = tuple(((left + ack_base) & mask, (right + ack_base) & mask) for left, right in self.sack_blocks)
            options += [NoOperation(), NoOperation(), Sack(blocks)]
        if self.payload is not None:
            payload = bytes(self.payload)
        else:
            payload = bytes(self.payload_bytes)
        # RFC 7323 2.2: the window of a SYN or SYN-ACK is never scaled.
        window = self.window_bytes if flags & FLAG_SYN else self.window_bytes >> WINDOW_SCALE_SHIFT
        segment = TcpSegment(src_port, dst_port, seq, ack, TcpFlags(flags), min(window, 0xFFFF), tuple(options),
                             payload)
        return IpPacket(src_ip, dst_ip, segment)


_MASK64 = (1 << 64) - 1  # DSNs and Data ACKs in a capture: 64-bit
#: Segment and _TxRecord built without their constructors on the per-packet path
#: (_SubflowSender._emit, send_new): plain classes with slots and no __new__ of their own.
_new_object = object.__new__
LIGHT_PACKET_TYPES.add(Segment)  # links read its size_bytes directly


def _ignore(segment: Segment) -> None:
    """The ``receive`` of a reset subflow endpoint: whatever still arrives is dropped."""


def _send_at(direction: Any, segment: Segment, now: float) -> None:
    """Send ``segment`` on ``direction`` at ``now`` (``env.now``): a LinkDirection or Route takes
    the time along (``send_light_at``: its first hop need not read ``env.now``, a property call
    per segment); anything else with a direction's ``send`` just gets the segment."""
    send_at = getattr(direction, "send_light_at", None)
    if send_at is None:
        direction.send(segment)
    else:
        send_at(segment, now)


def deliver_segment(segment: Segment) -> None:
    """The ``deliver`` callback of every direction a transfer uses: hand the segment to its endpoint."""
    segment.dst_endpoint.receive(segment)


class _Timer:
    """One restartable deadline on one SimPy event at a time.

    SimPy events cannot be cancelled, and RTO deadlines move later on almost every ACK, so a
    later deadline keeps the pending event (which re-arms itself when it comes up early) and
    only an earlier one schedules a new event; superseded events do nothing.
    """

    __slots__ = ("env", "callback", "deadline_s", "_event", "_armed_s")

    def __init__(self, env: simpy.Environment, callback: Callable[[float], None]) -> None:
        self.env = env
        self.callback = callback
        self.deadline_s: float | None = None
        self._event = None
        self._armed_s = 0.0

    def set(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        if self._event is None or deadline_s < self._armed_s:
            self._armed_s = deadline_s
            self._event = schedule_call(self.env, deadline_s - self.env.now, self._fire, TIMER_PRIORITY)

    def cancel(self) -> None:
        self.deadline_s = None

    def _fire(self, event) -> None:
        if event is not self._event:
            return  # superseded by an earlier deadline
        self._event = None
        deadline_s = self.deadline_s
        if deadline_s is None:
            return
        now = self.env.now
        if deadline_s > now:  # moved later since this event was scheduled
            self._armed_s = deadline_s
            self._event = schedule_call(self.env, deadline_s - now, self._fire, TIMER_PRIORITY)
            return
        self.deadline_s = None
        self.callback(now)


class _TxRecord:
    """A sent, not yet cumulatively acknowledged segment on the sender's scoreboard."""

    __slots__ = ("seq", "end", "dsn", "payload", "sent_s", "sacked", "lost", "retrans", "ever_retrans",
                 "rtx_high_seq")

    def __init__(self, seq: int, end: int, dsn: int, payload: memoryview | None, sent_s: float) -> None:
        self.seq = seq
        self.end = end
        self.dsn = dsn
        self.payload = payload
        self.sent_s = sent_s
        self.sacked = False
        self.lost = False
        self.retrans = False  # a retransmission of it is in flight (Linux TCPCB_SACKED_RETRANS)
        self.ever_retrans = False
        self.rtx_high_seq = 0  # snd_nxt when last retransmitted


def _slice(segment: Segment, left: int, right: int) -> Segment:
    """The part [left, right) of a data segment (its DSN and payload moved with it)."""
    offset = left - segment.seq
    length = right - left
    payload = segment.payload
    return Segment(segment.size_bytes - segment.payload_bytes + length, segment.dst_endpoint, segment.subflow_id,
                   left, length, segment.ack, segment.sack_blocks, segment.dsn + offset, segment.data_ack,
                   segment.window_bytes, segment.flags, segment.sent_s,
                   None if payload is None else payload[offset:offset + length], segment.mptcp)


def _add_range(ranges: list[list[int]], left: int, right: int) -> list[tuple[int, int]]:
    """Merge [left, right) into sorted disjoint ``ranges`` in place; returns the newly covered pieces."""
    i = len(ranges)
    while i > 0 and ranges[i - 1][1] >= left:  # SACK news is usually at the right end: scan from there
        i -= 1
    j = i
    cursor = new_left = left
    new_right = right
    pieces = []
    while j < len(ranges) and ranges[j][0] <= right:
        range_left, range_right = ranges[j]
        if range_left > cursor:
            pieces.append((cursor, range_left))
        if range_right > cursor:
            cursor = range_right
        if range_left < new_left:
            new_left = range_left
        if range_right > new_right:
            new_right = range_right
        j += 1
    if cursor < right:
        pieces.append((cursor, right))
    ranges[i:j] = [[new_left, new_right]]
    return pieces


class _SubflowSender:
    """The sending side of one subflow: scoreboard, loss recovery, RTO, congestion control."""

    def __init__(self, conn: _ConnectionSender, subflow_id: int, forward: LinkDirection, cc: CongestionControl,
                 payload_max_bytes: int, rto_min_s: float, local_ip: IPv4Address | IPv6Address,
                 remote_ip: IPv4Address | IPv6Address, local_port: int, remote_port: int,
                 rack_tlp: bool = True) -> None:
        self.conn = conn
        self.rack_tlp = rack_tlp
        self.env = conn.env
        self.subflow_id = subflow_id
        self.forward = forward
        self.cc = cc
        self.payload_max_bytes = payload_max_bytes
        self.rto_min_s = rto_min_s
        self.local_ip, self.remote_ip, self.local_port, self.remote_port = local_ip, remote_ip, local_port, remote_port
        self.receiver: _SubflowReceiver | None = None  # set by BulkTransfer
        # MPTCP (net/mptcp/protocol.c): data the scheduler committed to this subflow and not yet
        # sent, as (dsn, length); its memory (unsent + unacknowledged, truesize) and send buffer.
        self.active = True  # False until the subflow has joined (its MP_JOIN handshake, _Join)
        self.closed = False  # reset (ConnectionSender.close_subflow)
        self.send_queue: deque[tuple[int, int]] = deque()
        self.wmem_queued = 0
        self.sndbuf_bytes = 0  # set by the connection (pinned, or tcp_init_buffer_space)
        self.sndbuf_locked = False
        self.avg_pacing_rate = 0.0  # bytes/s, mptcp_subflow_context.avg_pacing_rate
        # Stale-subflow detection (net/mptcp/pm.c, Linux 6.18; _ConnectionSender.check_stale):
        # tcp_sock.rcv_tstamp, the jiffy of the last ACK taken (established: the start), and the
        # subflow context's stale flag, stale_count and stale_rcv_tstamp.
        self.rcv_tstamp = conn.jiffies(conn.env.now)
        self.stale = False
        self.stale_count = 0
        self.stale_rcv_tstamp = 0
        self.data_header_bytes = base_header_bytes(local_ip) + (DSS_DATA_OPTION_BYTES if conn.mptcp else 0)
        self.snd_una = 0
        self.snd_nxt = 0
        self.rtx: list[_TxRecord] = []  # sent and not cumulatively acknowledged from index head on
        self.head = 0
        self.sacked_out = 0
        self.lost_out = 0
        self.retrans_out = 0
        self.sacked_ranges: list[list[int]] = []
        self.highest_sacked_end = 0
        self.lost_scan = 0  # records below this index are SACKed or marked lost
        self.retransmit_queue: deque[_TxRecord] = deque()
        self.retransmitted: deque[_TxRecord] = deque()  # in retransmission order, for lost-retransmit detection
        self.state = _OPEN
        self.recover_seq = 0
        self.prior_cwnd = 0.0
        self.prr_delivered = 0
        self.prr_out = 0
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.min_rtt_s = float("inf")
        self.rto_base_s = RTO_INITIAL_S
        self.rto_s = RTO_INITIAL_S
        self.backoffs = 0
        self.rto_timer = _Timer(self.env, self._on_xmit_timer)
        self.timer_kind = _TIMER_RTO
        # RACK (RFC 8985 / Linux tcp_recovery.c): the most recently sent segment delivered so far
        self.tsorted: deque[tuple[_TxRecord, float]] = deque()  # (record, send time) in sending order
        self.rack_xmit_s: float | None = None
        self.rack_end = 0
        self.rack_rtt_s = 0.0
        self.rack_advanced = False
        self._rack_best = (-1.0, 0)  # scratch: passed between receive() and _process_sack()
        self.reord_seen = False  # Linux tp->reord_seen: reordering observed on this subflow
        # TLP (Linux tcp_send_loss_probe): snd_nxt when the outstanding probe went out, or None
        self.tlp_high_seq: int | None = None
        self.tlp_retrans = False
        self._tlp_burst_s = -1.0  # the instant a probe was last scheduled with 2+ segments out
        # counters
        self.segments_sent = 0
        self.retransmissions = 0
        self.timeouts = 0
        self.fast_recoveries = 0
        self.loss_probes = 0
        self.reo_timeouts = 0

    # --- bookkeeping --------------------------------------------------------------------------

    def pipe(self) -> int:
        """Segments in flight, as Linux ``tcp_packets_in_flight``."""
        return len(self.rtx) - self.head - self.sacked_out - self.lost_out + self.retrans_out

    def _rtt_sample(self, rtt_s: float) -> None:
        if rtt_s < self.min_rtt_s:
            self.min_rtt_s = rtt_s
        if self.srtt_s is None:
            self.srtt_s = rtt_s
            self.rttvar_s = rtt_s / 2
        else:
            self.rttvar_s = 0.75 * self.rttvar_s + 0.25 * abs(self.srtt_s - rtt_s)
            self.srtt_s = 0.875 * self.srtt_s + 0.125 * rtt_s
        self.rto_base_s = min(self.srtt_s + max(4 * self.rttvar_s, self.rto_min_s), RTO_MAX_S)

    # --- sending ------------------------------------------------------------------------------

    def _emit(self, record: _TxRecord, now: float) -> None:
        conn = self.conn
        length = record.end - record.seq
        receiver = self.receiver
        # Segment(...) written out, once per data segment sent: calling a Python class goes through
        # C into a fresh interpreter frame for __init__ (about a thousand instructions; a helper
        # function's call would cost more than half of that again). tests/sim/
        # test_transfer_hot_path.py checks that this sets every slot the constructor sets.
        segment = _new_object(Segment)
        segment.size_bytes = self.data_header_bytes + length
        segment.dst_endpoint = receiver
        segment.subflow_id = self.subflow_id
        segment.seq = record.seq
        segment.payload_bytes = length
        segment.ack = 0
        segment.sack_blocks = None
        segment.dsn = record.dsn
        segment.data_ack = 0
        # The sender's own advertised window: nothing flows towards it, so its idle receive
        # buffer's first offer (both ends get the same buffer settings). Only captures read it; a
        # zero here showed every data segment as a TCP ZeroWindow in Wireshark.
        segment.window_bytes = receiver.conn.initial_window_bytes
        segment.flags = FLAG_ACK | FLAG_PSH
        segment.sent_s = now
        segment.payload = record.payload
        segment.mptcp = conn.mptcp_options
        _send_at(self.forward, segment, now)
        self.segments_sent += 1
        if self.state == _RECOVERY:
            self.prr_out += 1
        if self.rack_tlp:
            self.tsorted.append((record, now))
        if self.rto_timer.deadline_s is None:
            self._arm(_TIMER_RTO, now + self.rto_s)

    def send_new(self, dsn: int, length: int, payload: memoryview | None, now: float, probe: bool = False) -> None:
        seq = self.snd_nxt
        # _TxRecord(seq, seq + length, dsn, payload, now) written out, as _emit writes its Segment
        record = _new_object(_TxRecord)
        record.seq = seq
        record.end = seq + length
        record.dsn = dsn
        record.payload = payload
        record.sent_s = now
        record.sacked = False
        record.lost = False
        record.retrans = False
        record.ever_retrans = False
        record.rtx_high_seq = 0
        self.rtx.append(record)
        self.snd_nxt = seq + length
        self._emit(record, now)
        # Linux tcp_write_xmit re-arms the probe after each burst; within one instant, once two or
        # more segments are out, later segments of the burst give the same deadline.
        if self.rack_tlp and not probe and now != self._tlp_burst_s:
            self._schedule_loss_probe(now, advancing_rto=False)

    def commit(self, dsn: int, length: int) -> None:
        """Queue ``length`` bytes from ``dsn`` on this subflow (mptcp_sendmsg_frag): charged to
        its memory at once, sent when its cwnd allows (tcp_push / tcp_write_xmit)."""
        self.send_queue.append((dsn, length))
        self.wmem_queued += length + SKB_TRUESIZE_OVERHEAD_BYTES

    def transmit_queued(self, now: float) -> None:
        """tcp_write_xmit over the subflow's own queue: as many committed segments as cwnd allows."""
        queue = self.send_queue
        room = int(self.cc.cwnd_segments) - self.pipe()  # each segment sent adds one to pipe
        if not queue or room <= 0:
            return
        payload = self.conn.payload
        while queue and room > 0:
            dsn, length = queue.popleft()
            self.send_new(dsn, length, None if payload is None else payload[dsn:dsn + length], now)
            room -= 1

    def pacing_rate(self) -> float:
        """sk_pacing_rate as Linux ``tcp_update_pacing_rate`` (tcp_input.c) sets it, bytes/s:
        mss x max(cwnd, packets out) / SRTT x 200 % while cwnd < ssthresh / 2, else x 120 %.
        Without an RTT sample the initial RTO stands in for the handshake's sample Linux has."""
        cc = self.cc
        cwnd = cc.cwnd_segments
        ratio = 2.0 if cwnd < cc.ssthresh_segments / 2 else 1.2
        segments = max(cwnd, len(self.rtx) - self.head)
        return ratio * self.payload_max_bytes * segments / (self.srtt_s or RTO_INITIAL_S)

    def expand_sndbuf(self) -> None:
        """Linux ``tcp_sndbuf_expand`` (tcp_input.c, 6.x): room for twice max(10, cwnd) segments
        at SNDBUF_PER_MSS_BYTES each, never shrinking, at most tcp_wmem[2]."""
        want = 2 * max(INITIAL_CWND_SEGMENTS, int(self.cc.cwnd_segments)) * SNDBUF_PER_MSS_BYTES
        if want > self.sndbuf_bytes:
            self.sndbuf_bytes = min(want, self.conn.wmem_max_bytes)
            self.conn.sync_sndbuf()

    def send_retransmissions(self, now: float) -> None:
        """Lost segments first (RFC 6675 NextSeg rule 1), as far as cwnd allows."""
        queue = self.retransmit_queue
        while queue:
            if self.pipe() >= int(self.cc.cwnd_segments):
                return
            record = queue.popleft()
            if record.sacked or record.retrans or not record.lost or record.end <= self.snd_una:
                continue  # acknowledged meanwhile, or already on its way again
            if record.seq < self.snd_una:
                self._trim_head(record)
            record.retrans = True
            record.ever_retrans = True
            record.rtx_high_seq = self.snd_nxt
            record.sent_s = now
            self.retrans_out += 1
            self.retransmissions += 1
            if self.rack_tlp:
                self._emit(record, now)
                # Linux tcp_xmit_retransmit_queue: the RTO restarts when the head goes out again
                if record is self.rtx[self.head] and self.timer_kind != _TIMER_REO:
                    self._arm(_TIMER_RTO, now + self.rto_s)
            else:
                self.retransmitted.append(record)
                self._emit(record, now)

    def _trim_head(self, record: _TxRecord) -> None:
        """A segment acknowledged in part (a box split it and the ACK covers the first part)
        goes again from snd_una only: Linux ``__tcp_retransmit_skb`` trims the acknowledged
        head off (``tcp_trim_head``); ``tcp_clean_rtx_queue`` keeps a one-segment skb that an
        ACK covers in part whole until its end is acknowledged."""
        cut = self.snd_una - record.seq
        record.seq = self.snd_una
        record.dsn += cut
        if record.payload is not None:
            record.payload = record.payload[cut:]

    # --- acknowledgements ---------------------------------------------------------------------

    def receive(self, segment: Segment) -> None:
        """An ACK from the receiver."""
        now = self.env.now
        conn = self.conn
        if not segment.mptcp and conn.mptcp_options and self._acked_without_dss(now):
            return
        conn.on_data_ack(segment.data_ack, segment.window_bytes)
        if segment.ack >= self.snd_una:  # tcp_ack: any ACK not older than snd_una (old_ack skips it)
            self.rcv_tstamp = conn.jiffies(now)
        prior_pipe = self.pipe()
        delivered = 0
        rtt_s = None
        newest_sent_s = None  # of the most recently sent segment acknowledged (Linux ca_rtt_us)
        ack = segment.ack
        una_advanced = ack > self.snd_una
        rack_tlp = self.rack_tlp
        prior_fack = self.highest_sacked_end
        # RACK: the newest (send time, end) among the segments this ACK delivers (tcp_rack_advance)
        rack_best_s = self.rack_xmit_s if self.rack_xmit_s is not None else -1.0
        rack_best_end = self.rack_end
        data_acked = False  # Linux FLAG_DATA_ACKED: the cumulative ACK freed a whole segment
        if una_advanced:
            rtx = self.rtx
            i = first = self.head
            end = len(rtx)
            last_delivered = None
            retransmitted = False
            while i < end:
                record = rtx[i]
                if record.end > ack:
                    break
                if record.sacked:
                    self.sacked_out -= 1
                else:
                    delivered += 1
                    if record.lost:
                        self.lost_out -= 1
                    if record.retrans:
                        self.retrans_out -= 1
                        record.retrans = False
                    elif not record.ever_retrans:
                        newest_sent_s = record.sent_s
                        if rtt_s is None:
                            rtt_s = now - record.sent_s
                    if record.ever_retrans:
                        retransmitted = True
                    last_delivered = record
                i += 1
            if rack_tlp and last_delivered is not None:
                if not retransmitted and prior_fack <= rtx[first].seq:
                    # Sent in sequence order, no hole filled: the newest is the last one.
                    sent_s = last_delivered.sent_s
                    if sent_s > rack_best_s or (sent_s == rack_best_s and last_delivered.end > rack_best_end):
                        rack_best_s, rack_best_end = sent_s, last_delivered.end
                else:
                    for j in range(first, i):
                        record = rtx[j]
                        if record.sacked:
                            continue
                        sent_s = record.sent_s
                        if not record.ever_retrans:
                            if record.seq < prior_fack:
                                self.reord_seen = True  # a hole filled without a retransmission
                        elif now - sent_s < self.min_rtt_s - 1e-6:
                            sent_s = -1.0  # ambiguous: the original may have been delivered
                        if sent_s > rack_best_s or (sent_s == rack_best_s and record.end > rack_best_end):
                            rack_best_s, rack_best_end = sent_s, record.end
            self.head = i
            data_acked = i > first
            # tcp_clean_rtx_queue frees the acknowledged skbs (their payload and truesize overhead)
            self.wmem_queued -= ack - self.snd_una + (i - first) * SKB_TRUESIZE_OVERHEAD_BYTES
            self.snd_una = ack
            if i > self.lost_scan:
                self.lost_scan = i
            if rack_tlp:
                tsorted = self.tsorted
                while tsorted and tsorted[0][0].end <= ack:
                    tsorted.popleft()
            ranges = self.sacked_ranges
            while ranges and ranges[0][1] <= ack:
                ranges.pop(0)
            if ranges and ranges[0][0] < ack:
                ranges[0][0] = ack
            if i > 4096 and 2 * i > end:  # drop acknowledged records now and then, not per ACK
                del rtx[:i]
                self.lost_scan -= i
                self.head = 0
        newly_sacked = 0
        if segment.sack_blocks:
            self._rack_best = (rack_best_s, rack_best_end)
            newly_sacked, sack_rtt_s, sack_newest_sent_s = self._process_sack(segment.sack_blocks, now)
            rack_best_s, rack_best_end = self._rack_best
            delivered += newly_sacked
            if rtt_s is None:
                rtt_s = sack_rtt_s
            if sack_newest_sent_s is not None:
                newest_sent_s = sack_newest_sent_s
        if rack_tlp and rack_best_s >= 0 and (self.rack_xmit_s is None or rack_best_s != self.rack_xmit_s
                                              or rack_best_end != self.rack_end):
            self.rack_xmit_s = rack_best_s
            self.rack_end = rack_best_end
            self.rack_rtt_s = now - rack_best_s
            self.rack_advanced = True
        if rtt_s is not None:
            self._rtt_sample(rtt_s)
        if una_advanced:  # RFC 6298 5.3 (and the back-off ends: Linux clears icsk_backoff)
            self.backoffs = 0
            self.rto_s = self.rto_base_s
            if not rack_tlp:
                if self.head < len(self.rtx):
                    self.rto_timer.set(now + self.rto_s)
                else:
                    self.rto_timer.cancel()
        cc = self.cc
        if delivered:
            cc.pkts_acked(now, delivered, None if newest_sent_s is None else now - newest_sent_s, self.snd_una,
                          self.snd_nxt)
        reo_armed = False
        if rack_tlp:
            if self.tlp_high_seq is not None:
                self._process_tlp_ack(ack, una_advanced, newly_sacked, now)
            if self.rack_advanced:
                if self.sacked_out or self.state != _OPEN:
                    reo_armed = self._rack_mark_lost(now)
                else:  # in order and open: every segment sent before the newest delivered one is acked
                    self.rack_advanced = False
        elif self.sacked_out:
            self._mark_losses()
        state = self.state
        if state != _OPEN and self.snd_una >= self.recover_seq:
            if state == _RECOVERY:
                cc.cwnd_segments = cc.ssthresh_segments  # Linux tcp_end_cwnd_reduction
            self.state = state = _OPEN
        if state == _OPEN and self.lost_out:
            self._enter_recovery(now)
            state = _RECOVERY
        if state == _RECOVERY:
            self._prr(delivered, una_advanced)
        elif delivered and data_acked:
            # Linux tcp_cong_control grows the window only on an ACK that cumulatively
            # acknowledges data (tcp_may_raise_cwnd: FLAG_DATA_ACKED, with tp->reordering at the
            # sysctl's 3), by everything newly delivered, SACKed included; a SACK-only ACK in
            # Open or Loss state (a hole not yet marked lost, the RTO's retransmissions) grows
            # nothing, and what it delivered is not counted again when the hole fills.
            cwnd = cc.cwnd_segments
            # Grow only a window that limited the sending (Linux tcp_is_cwnd_limited).
            limited = 2 * prior_pipe > cwnd if cwnd < cc.ssthresh_segments else prior_pipe >= int(cwnd)
            if limited:
                cc.on_ack(delivered, now, self.srtt_s or 0.0, self.min_rtt_s if self.srtt_s else 0.0)
        probe_due = False
        if rack_tlp and una_advanced and not reo_armed:  # Linux tcp_set_xmit_timer
            self._tlp_burst_s = -1.0
            if self.state == _OPEN:
                # New data sent below re-arms the probe from its sending (tcp_write_xmit), which
                # supersedes this; so only when nothing goes out is it armed here.
                probe_due = True
            else:
                self._rearm_rto(now)
        if self.retransmit_queue:
            self.send_retransmissions(now)
        if una_advanced and conn.linux and not self.sndbuf_locked and self.pipe() < cc.cwnd_segments:
            self.expand_sndbuf()  # tcp_check_space -> tcp_new_space -> tcp_should_expand_sndbuf
        sent_before = self.segments_sent
        conn.push(now)
        if probe_due and self.segments_sent == sent_before:
            if not self._schedule_loss_probe(now, advancing_rto=True):
                self._rearm_rto(now)

    def _acked_without_dss(self, now: float) -> bool:
        """RFC 8684 3.7: data ACKed without a DSS Data ACK means a box strips MPTCP options.
        With other subflows open, this one is reset (RST with MP_TCPRST reason 6, middlebox
        interference) and the ACK ignored (True); on the only subflow the connection falls
        back to TCP and the ACK is taken as a TCP ACK (the model keeps its DATA_ACK, which the
        infinite mapping implies)."""
        conn = self.conn
        if any(other is not self and other.active for other in conn.subflows):
            self.reset_endpoint.out.send(Segment(RESET_BYTES, self.receiver.reset_endpoint, self.subflow_id, self.snd_nxt,
                                                 0, 0, None, 0, 0, 0, FLAG_RST, now, None, True))
            conn.close_subflow(self, now)
            return True
        conn.fall_back()
        return False

    def _on_reset(self, segment: Segment) -> None:
        """The receiver reset this subflow (it got data without a DSS mapping)."""
        self.conn.close_subflow(self, self.env.now)

    def _process_sack(self, blocks: tuple, now: float) -> tuple[int, float | None, float | None]:
        newly = 0
        oldest_sent_s = newest_sent_s = None
        snd_una = self.snd_una
        rack_tlp = self.rack_tlp
        prior_fack = self.highest_sacked_end
        rack_best_s, rack_best_end = self._rack_best
        rtx = self.rtx
        end_index = len(rtx)
        for left, right in blocks:
            if right <= snd_una:
                continue
            if left < snd_una:
                left = snd_una
            ranges = self.sacked_ranges
            for piece_left, piece_right in _add_range(ranges, left, right):
                # The merged SACKed range holding this piece: a record counts as SACKed only when
                # it lies inside it whole (Linux tcp_match_skb_to_sack: a one-segment skb is
                # in_sack only if the block covers it entirely; a box that split it may have
                # delivered one part only). Start from the record the piece's left edge falls in.
                k = len(ranges) - 1
                while ranges[k][0] > piece_left:
                    k -= 1
                range_left, range_right = ranges[k]
                i = bisect_left(rtx, piece_left, self.head, end_index, key=_SEQ)
                if i > self.head and rtx[i - 1].end > piece_left:
                    i -= 1
                while i < end_index:
                    record = rtx[i]
                    if record.seq >= piece_right:
                        break
                    if not record.sacked and record.end <= range_right and (record.seq >= range_left
                                                                             or range_left <= snd_una):
                        record.sacked = True
                        self.sacked_out += 1
                        newly += 1
                        if record.lost:
                            record.lost = False
                            self.lost_out -= 1
                        if record.retrans:
                            record.retrans = False
                            self.retrans_out -= 1
                        elif not record.ever_retrans:
                            if oldest_sent_s is None or record.sent_s < oldest_sent_s:
                                oldest_sent_s = record.sent_s
                            if newest_sent_s is None or record.sent_s > newest_sent_s:
                                newest_sent_s = record.sent_s
                        if rack_tlp:
                            sent_s = record.sent_s
                            if not record.ever_retrans:
                                if record.seq < prior_fack:
                                    self.reord_seen = True  # SACKed below data SACKed before: reordering
                            elif now - sent_s < self.min_rtt_s - 1e-6:  # Linux compares whole us
                                sent_s = -1.0
                            if sent_s > rack_best_s or (sent_s == rack_best_s and record.end > rack_best_end):
                                rack_best_s, rack_best_end = sent_s, record.end
                    i += 1
            if right > self.highest_sacked_end:
                self.highest_sacked_end = right
        self._rack_best = (rack_best_s, rack_best_end)
        retransmitted = self.retransmitted
        while retransmitted and retransmitted[0].rtx_high_seq < self.highest_sacked_end:
            record = retransmitted.popleft()
            if record.retrans:  # data sent after this retransmission arrived, so it is lost too
                record.retrans = False
                self.retrans_out -= 1
                self.retransmit_queue.append(record)
        return newly, None if oldest_sent_s is None else now - oldest_sent_s, newest_sent_s

    def _mark_losses(self) -> None:
        """RFC 6675 IsLost, byte rule: lost once more than (DupThresh - 1) * SMSS bytes above are SACKed."""
        need = (DUPTHRESH - 1) * self.payload_max_bytes
        for left, right in reversed(self.sacked_ranges):
            if right - left > need:
                threshold = right - need - 1  # more than `need` SACKed bytes lie above this point
                break
            need -= right - left
        else:
            return
        rtx = self.rtx
        i = max(self.lost_scan, self.head)
        end = len(rtx)
        while i < end:
            record = rtx[i]
            if record.end > threshold:
                break
            if not record.sacked and not record.lost:
                record.lost = True
                self.lost_out += 1
                self.retransmit_queue.append(record)
            i += 1
        self.lost_scan = i

    def _enter_recovery(self, now: float) -> None:
        self.state = _RECOVERY
        self.recover_seq = self.snd_nxt
        self.prior_cwnd = self.cc.cwnd_segments
        self.prr_delivered = 0
        self.prr_out = 0
        self.fast_recoveries += 1
        self.tlp_high_seq = None  # Linux tcp_init_cwnd_reduction
        self.cc.on_congestion(now)

    def _prr(self, delivered: int, una_advanced: bool) -> None:
        """Proportional Rate Reduction (RFC 6937), as Linux ``tcp_cwnd_reduction``."""
        self.prr_delivered += delivered
        pipe = self.pipe()
        ssthresh = self.cc.ssthresh_segments
        delta = ssthresh - pipe
        if delta < 0:
            send_count = -(-ssthresh * self.prr_delivered // self.prior_cwnd) - self.prr_out
        else:
            send_count = max(self.prr_delivered - self.prr_out, delivered)
            if una_advanced:
                send_count += 1
            send_count = min(delta, send_count)
        send_count = max(send_count, 0 if self.prr_out else 1)  # the fast retransmit goes out at once
        self.cc.cwnd_segments = float(pipe + int(send_count))

    def _on_rto(self, now: float) -> None:
        if self.head >= len(self.rtx):
            return
        self.tlp_high_seq = None
        self.cc.on_timeout(now, reduce_ssthresh=self.backoffs == 0 and self.state != _RECOVERY)
        self.timeouts += 1
        self.backoffs += 1
        queue = self.retransmit_queue
        queue.clear()
        self.retransmitted.clear()
        for i in range(self.head, len(self.rtx)):
            record = self.rtx[i]
            if record.sacked:
                continue
            record.retrans = False
            if not record.lost:
                record.lost = True
                self.lost_out += 1
            queue.append(record)
        self.retrans_out = 0
        self.lost_scan = len(self.rtx)
        self.state = _LOSS
        self.recover_seq = self.snd_nxt
        self.rto_s = min(self.rto_s * 2, RTO_MAX_S)
        self._arm(_TIMER_RTO, now + self.rto_s)
        self.send_retransmissions(now)
        self.conn.push(now)

    # --- the transmit timer, RACK and TLP (RFC 8985 as Linux 6.7-6.18 runs it) ------------------

    def _arm(self, kind: int, deadline_s: float) -> None:
        self.timer_kind = kind
        self.rto_timer.set(deadline_s)

    def _on_xmit_timer(self, now: float) -> None:
        kind = self.timer_kind
        if kind == _TIMER_TLP:
            self._send_loss_probe(now)
        elif kind == _TIMER_REO:
            self._on_reo_timeout(now)
        else:
            self._on_rto(now)

    def _rearm_rto(self, now: float, from_probe_or_reo: bool = False) -> None:
        """Linux ``tcp_rearm_rto``: the RTO from now, or, replacing a loss probe or reordering
        timer, from the head segment's last transmission."""
        if self.head >= len(self.rtx):
            self.rto_timer.cancel()
            return
        if from_probe_or_reo or (self.rto_timer.deadline_s is not None and self.timer_kind != _TIMER_RTO):
            delta_s = self.rtx[self.head].sent_s + self.rto_s - now
            self._arm(_TIMER_RTO, now + max(delta_s, 1e-6))
        else:
            self._arm(_TIMER_RTO, now + self.rto_s)

    def _schedule_loss_probe(self, now: float, advancing_rto: bool) -> bool:
        """Linux ``tcp_schedule_loss_probe`` (tcp_output.c): in Open state with data in flight,
        a probe timeout of 2 SRTT + 2 ms (+ the minimum RTO instead of 2 ms with one segment
        out: the receiver may delay its ACK), 1 s without an RTT sample, never after the RTO."""
        packets_out = len(self.rtx) - self.head
        if not packets_out or self.state != _OPEN:
            return False
        self._tlp_burst_s = now if packets_out > 1 and not advancing_rto else -1.0
        if self.srtt_s is not None:
            pto_s = 2 * self.srtt_s + (self.rto_min_s if packets_out == 1 else TIMEOUT_MIN_S)
        else:
            pto_s = RTO_INITIAL_S
        rto_delta_s = self.rto_s if advancing_rto else self.rtx[self.head].sent_s + self.rto_s - now
        if rto_delta_s > 0 and rto_delta_s < pto_s:
            pto_s = rto_delta_s
        self._arm(_TIMER_TLP, now + pto_s)
        return True

    def _send_loss_probe(self, now: float) -> None:
        """Linux ``tcp_send_loss_probe``: one new segment if there is one to send (cwnd ignored),
        else the last segment sent again; at most one probe outstanding; the RTO restarts."""
        if self.head >= len(self.rtx):
            return
        if self.tlp_high_seq is not None:
            self._rearm_rto(now, from_probe_or_reo=True)
            return
        if self.conn.send_probe(self, now):
            self.tlp_retrans = False
        else:
            record = self.rtx[-1]
            if record.seq < self.snd_una:
                self._trim_head(record)
            record.ever_retrans = True  # Linux __tcp_retransmit_skb: not counted in retrans_out
            record.sent_s = now
            self.retransmissions += 1
            self._emit(record, now)
            self.tlp_retrans = True
        self.tlp_high_seq = self.snd_nxt
        self.loss_probes += 1
        self._arm(_TIMER_RTO, now + self.rto_s)

    def _process_tlp_ack(self, ack: int, una_advanced: bool, newly_sacked: int, now: float) -> None:
        """Linux ``tcp_process_tlp_ack``: did the probe repair a loss? The model has no D-SACK,
        so an ACK that neither advances nor SACKs new data (the receiver's answer to a duplicate)
        ends the episode as Linux's D-SACK branch does."""
        high_seq = self.tlp_high_seq
        if ack < high_seq:
            return
        if not self.tlp_retrans:
            self.tlp_high_seq = None  # a probe of new data was acknowledged
        elif ack > high_seq:  # the probe repaired a loss: reduce once (CWR) and stay open
            self.tlp_high_seq = None
            cc = self.cc
            cc.on_congestion(now)
            cc.cwnd_segments = cc.ssthresh_segments
        elif not una_advanced and not newly_sacked:
            self.tlp_high_seq = None  # original and probe both arrived: no loss

    def _rack_reo_wnd(self) -> float:
        """Linux ``tcp_rack_reo_wnd``: min_rtt / 4 (at most SRTT); none in recovery or once
        DupThresh segments are SACKed, unless reordering was seen on this subflow."""
        if not self.reord_seen and (self.state != _OPEN or self.sacked_out >= DUPTHRESH):
            return 0.0
        return min(self.min_rtt_s / 4, self.srtt_s or 0.0)

    def _rack_detect_loss(self, now: float) -> float:
        """Linux ``tcp_rack_detect_loss``: every segment sent before the most recently sent one
        delivered is lost once RACK.rtt + reo_wnd has passed since it was sent; returns the
        longest wait still to go (0 if none)."""
        rack_xmit_s = self.rack_xmit_s
        if rack_xmit_s is None:
            return 0.0
        reo_wnd_s = self._rack_reo_wnd()
        deadline_base_s = self.rack_rtt_s + reo_wnd_s - now
        snd_una = self.snd_una
        queue = self.tsorted
        while queue:  # drop entries that no longer matter from the front
            record, sent_s = queue[0]
            if (record.end <= snd_una or record.sacked or record.sent_s != sent_s
                    or (record.lost and not record.retrans)):
                queue.popleft()
            else:
                break
        wait_s = 0.0
        rack_end = self.rack_end
        for record, sent_s in queue:
            if (record.end <= snd_una or record.sacked or record.sent_s != sent_s
                    or (record.lost and not record.retrans)):
                continue
            if not (rack_xmit_s > sent_s or (rack_xmit_s == sent_s and rack_end > record.end)):
                break  # sent after the newest delivered segment
            remaining_s = deadline_base_s + sent_s
            if remaining_s <= 1e-9:
                if record.retrans:  # a retransmission lost again (it is still counted in lost_out)
                    record.retrans = False
                    self.retrans_out -= 1
                else:
                    record.lost = True
                    self.lost_out += 1
                self.retransmit_queue.append(record)
            elif remaining_s > wait_s:
                wait_s = remaining_s
        return wait_s

    def _rack_mark_lost(self, now: float) -> bool:
        """Linux ``tcp_rack_mark_lost``; arms the reordering timer (wait + 2 ms) if some segment
        is still inside its window. Returns whether it did."""
        self.rack_advanced = False
        wait_s = self._rack_detect_loss(now)
        if wait_s > 0:
            self._arm(_TIMER_REO, now + min(wait_s + TIMEOUT_MIN_S, self.rto_s))
            return True
        return False

    def _on_reo_timeout(self, now: float) -> None:
        """Linux ``tcp_rack_reo_timeout``: mark what has waited long enough, start recovery."""
        self.reo_timeouts += 1
        prior_pipe = self.pipe()
        self._rack_detect_loss(now)
        if self.pipe() != prior_pipe:
            if self.state != _RECOVERY:
                self._enter_recovery(now)
                self._prr(1, False)
            self.send_retransmissions(now)
        if self.rto_timer.deadline_s is None or self.timer_kind != _TIMER_RTO:
            self._rearm_rto(now, from_probe_or_reo=True)


class _ConnectionSender:
    """The data-level sender: send buffer, connection window and the scheduler.

    MPTCP with ``scheduler="default"`` follows upstream Linux 6.x (net/mptcp/protocol.c,
    6.6-6.18): ``__mptcp_push_pending`` asks ``mptcp_subflow_get_send`` for the subflow with
    the lowest linger time (``sk_wmem_queued`` over its averaged pacing rate) among the active
    ones, stops if that one's send buffer is full (``sk_stream_memory_free``), and commits a
    burst of up to MPTCP_SEND_BURST_BYTES (bounded by the connection window) to the subflow's
    own send queue (``__subflow_push_pending`` / ``mptcp_sendmsg_frag``), whatever its cwnd;
    the subflow sends from that queue as its cwnd allows. Committed data stays on its subflow.
    The connection-level retransmit timer (``mptcp_retransmit_timer`` / ``__mptcp_retrans``)
    re-sends the oldest unacknowledged fragment on a subflow whose queues are empty
    (``mptcp_subflow_get_retrans``). ``scheduler="lowest-rtt"`` is the older model: new data
    straight to the lowest-SRTT subflow with cwnd space, nothing queued beyond cwnd, no
    reinjection.
    """

    def __init__(self, env: simpy.Environment, size_bytes: int, mptcp: bool, snd_buf_bytes: int,
                 initial_window_bytes: int, payload: bytes | None, scheduler: str = "default",
                 pinned: bool = False, source: Any = None, window_probes: bool = False,
                 kernel_hz: int = LINUX_HZ) -> None:
        self.env = env
        self.kernel_hz = kernel_hz  # the clock of the subflows' rcv_tstamp (stale detection)
        self.size_bytes = size_bytes
        # The application's data (module doc, "Composing transfers"): without a source it has
        # written all ``size_bytes`` at the start; with one, ``written_bytes`` is the end of what
        # the source has handed over so far (it is asked for more, as far as the send buffer has
        # room, at every push) and ``available_bytes`` the end the scheduler may send up to (Nagle).
        self.source = source
        self.written_bytes = self.available_bytes = size_bytes if source is None else 0
        self.window_probes = window_probes
        self.mptcp = mptcp
        self.snd_buf_bytes = snd_buf_bytes
        self.next_dsn = 0  # the send head: the next DSN to hand to a subflow
        # Linux msk->snd_nxt: the highest DSN handed to a subflow. Only a re-send of everything
        # not DATA_ACKed (_retransmit_pending_data) puts the send head below it.
        self.snd_nxt = 0
        self.data_una = 0
        self.right_edge = initial_window_bytes
        self.payload = memoryview(payload) if payload is not None else None
        self.subflows: list[_SubflowSender] = []
        self.linux = mptcp and scheduler == "default"
        self.pinned = pinned
        # Auto-tuned: tcp_wmem[2] bounds each subflow; pinned: SO_SNDBUF doubled (sock_setsockopt).
        self.wmem_max_bytes = snd_buf_bytes
        self.msk_sndbuf_bytes = 0
        # one bound method per connection: push runs on every ACK
        self.push = self._push_linux if self.linux else self._push_lowest_rtt  # type: ignore[method-assign]
        if source is not None or window_probes:
            self._push_scheduler = self.push
            self.push = self._push_supplied  # type: ignore[method-assign]
            # Linux's zero-window probe timer (ICSK_TIME_PROBE0), for a peer whose reader may stop
            self.persist_timer = _Timer(env, self._on_persist)
            self.persist_backoffs = 0
        if pinned and not mptcp:  # plain TCP after SO_SNDBUF: the payload limit follows the skb sizes
            self._push_unpinned = self.push
            self.push = self._push_pinned_tcp  # type: ignore[method-assign]
        self.window_probes_sent = 0
        self.rtx_timer = _Timer(env, self._on_rtx_timer)
        # msk->timer_ival: sampled by the scheduler (mptcp_subflow_get_send), TCP_RTO_MIN at first
        # (__mptcp_init_sock); every (re)arm of the MPTCP-level timer uses this stored value.
        self.timer_ival_s = RTO_MIN_S
        self.reinjected_bytes = 0
        self.mptcp_retransmit_timeouts = 0
        self.subflow_resets = 0
        self.subflows_stale = 0  # MPTcpExt SubflowStale
        self.subflows_recovered = 0  # MPTcpExt SubflowRecover
        self.fallen_back = False
        self.mptcp_options = mptcp  # the segments carry MPTCP options (until a fallback)

    def add_subflow(self, subflow: _SubflowSender) -> None:
        if self.pinned:
            subflow.sndbuf_bytes = 2 * self.snd_buf_bytes
            subflow.sndbuf_locked = True
        else:  # tcp_init_buffer_space: tcp_sndbuf_expand once the connection is established
            subflow.sndbuf_bytes = TCP_WMEM_DEFAULT_BYTES
        self.subflows.append(subflow)
        if not self.pinned:
            subflow.expand_sndbuf()
        self.sync_sndbuf()

    def sync_sndbuf(self) -> None:
        """The connection's send buffer, compared with the bytes not yet DATA_ACKed (the msk
        charges its data fragments, about their payload): pinned, SO_SNDBUF doubled; else the sum
        of the subflows' buffers (``__mptcp_sync_sndbuf``, Linux 6.7 and later)."""
        if self.pinned:
            self.msk_sndbuf_bytes = 2 * self.snd_buf_bytes
        else:
            self.msk_sndbuf_bytes = sum(s.sndbuf_bytes for s in self.subflows if s.active)

    def on_data_ack(self, data_ack: int, window_bytes: int) -> None:
        if data_ack > self.data_una:
            self.data_una = data_ack
            if self.linux:  # __mptcp_clean_una: progress restarts the MPTCP-level timer
                if data_ack > self.next_dsn:  # a re-send overtaken: the head skips what is acked
                    self.next_dsn = data_ack
                if data_ack < self.snd_nxt:  # with the interval the scheduler last sampled
                    self.rtx_timer.set(self.env.now + self.timer_ival_s)
                else:
                    self.rtx_timer.cancel()
        edge = data_ack + window_bytes
        if edge > self.right_edge:
            self.right_edge = edge

    def send_probe(self, subflow: _SubflowSender, now: float) -> bool:
        """A loss probe of new data (Linux sends the next unsent segment when the peer's window
        allows, whatever cwnd says): on plain TCP the next segment of the stream, on an MPTCP
        subflow the next one committed to it. Returns whether it sent."""
        if self.mptcp:
            if not subflow.send_queue:
                return False
            dsn, length = subflow.send_queue.popleft()
            subflow.send_new(dsn, length, None if self.payload is None else self.payload[dsn:dsn + length], now,
                             probe=True)
            return True
        dsn = self.next_dsn
        remaining = self.available_bytes - dsn
        if remaining <= 0:
            return False
        length = min(subflow.payload_max_bytes, remaining)
        end = dsn + length
        if end > self.right_edge or end - self.data_una > self.snd_buf_bytes:
            return False
        self.next_dsn = end
        subflow.wmem_queued += length + SKB_TRUESIZE_OVERHEAD_BYTES
        subflow.send_new(dsn, length, None if self.payload is None else self.payload[dsn:end], now, probe=True)
        return True

    def push(self, now: float) -> None:
        """Hand new data to the subflows (replaced per instance by the scheduler's own method)."""
        raise NotImplementedError

    def _push_pinned_tcp(self, now: float) -> None:
        """Plain TCP with SO_SNDBUF set: ``snd_buf_bytes`` (the payload the send buffer lets the
        application have written and not ACKed) becomes :meth:`pinned_tcp_payload_bytes` of now,
        then the push as usual."""
        self.snd_buf_bytes = self.pinned_tcp_payload_bytes()
        self._push_unpinned(now)

    def pinned_tcp_payload_bytes(self) -> int:
        """The payload plain TCP's locked send buffer (``sk_sndbuf``, twice SO_SNDBUF) holds, as
        Linux 6.18 fills it (net/ipv4/tcp.c ``tcp_sendmsg_locked``, net/ipv4/tcp_output.c
        ``tcp_tso_autosize``): the writer takes a new skb while ``sk_wmem_queued < sk_sndbuf``
        (``sk_stream_memory_free``) and fills it up to size_goal, the segments ``tcp_tso_autosize``
        gives (the pacing rate's bytes per 1,024 us, ``sk_pacing_shift`` 10, at most 64 KiB, at
        least ``tcp_min_tso_segs`` 2; TCP builds such GSO skbs whatever the device, which
        segments them in software); each skb costs its payload and SKB_TRUESIZE_OVERHEAD_BYTES
        until it is ACKed. So N = ceil(sk_sndbuf / (skb payload + overhead)) skbs of payload each.
        ``tcp_tso_rtt_log`` (9) adds 64 KiB >> (min_rtt in us >> 9): nothing above an RTT of about
        9 ms, all of it below 0.5 ms. Simplified: every skb full (a write's tail skb may be
        shorter), and of the size of now (Linux sized each when it was written)."""
        subflow = self.subflows[0]
        mss = subflow.payload_max_bytes
        paced_bytes = int(subflow.pacing_rate()) >> 10
        rtt_shift = int(subflow.min_rtt_s * 1e6) >> 9 if subflow.min_rtt_s < 1e3 else 32  # tcp_tso_rtt_log 9
        if rtt_shift < 32:
            paced_bytes += 65536 >> rtt_shift
        segments = max(2, min(paced_bytes, 65536) // mss)
        skb_bytes = segments * mss
        sndbuf = 2 * self.wmem_max_bytes
        return -(-sndbuf // (skb_bytes + SKB_TRUESIZE_OVERHEAD_BYTES)) * skb_bytes

    def _push_lowest_rtt(self, now: float) -> None:
        """Hand new data to the lowest-RTT subflow with cwnd space, while windows and buffer allow."""
        subflows = self.subflows
        payload = self.payload
        while True:
            remaining = self.available_bytes - self.next_dsn
            if remaining <= 0:
                return
            best = None
            best_rtt_s = 0.0
            for subflow in subflows:
                # pipe() < int(cwnd), inlined: this loop runs once per segment sent.
                if subflow.active and (len(subflow.rtx) - subflow.head - subflow.sacked_out - subflow.lost_out
                                       + subflow.retrans_out + 1 <= subflow.cc.cwnd_segments):
                    rtt_s = subflow.srtt_s or 0.0
                    if best is None or rtt_s < best_rtt_s:
                        best, best_rtt_s = subflow, rtt_s
            if best is None:
                return
            length = best.payload_max_bytes if remaining > best.payload_max_bytes else remaining
            dsn = self.next_dsn
            end = dsn + length
            # No partial segments to fit a window (sender-side silly window avoidance).
            if end > self.right_edge or end - self.data_una > self.snd_buf_bytes:
                return
            self.next_dsn = end
            best.wmem_queued += length + SKB_TRUESIZE_OVERHEAD_BYTES
            best.send_new(dsn, length, None if payload is None else payload[dsn:end], now)

    def select_subflow(self) -> _SubflowSender | None:
        """``mptcp_subflow_get_send``: the active subflow with the lowest linger time
        (wmem_queued / averaged pacing rate; the first on ties), None if its send buffer is full;
        a stale subflow is not active (:meth:`usable`).
        On the way it samples the MPTCP-level timer's interval (``__mptcp_set_timeout``, see the
        notes on the MPTCP-level retransmit timer below), whatever it returns."""
        best = None
        best_linger = 0.0
        now = self.env.now
        longest_s = 0.0
        for subflow in self.subflows:
            if not self.usable(subflow):
                continue
            deadline_s = subflow.rto_timer.deadline_s
            # mptcp_timeout_from_subflow: a subflow counting periods without progress adds nothing
            if deadline_s is not None and not subflow.stale_count and deadline_s - now > longest_s:
                longest_s = deadline_s - now
            if not subflow.avg_pacing_rate:
                subflow.avg_pacing_rate = subflow.pacing_rate()
            linger = subflow.wmem_queued / subflow.avg_pacing_rate
            if best is None or linger < best_linger:
                best, best_linger = subflow, linger
        self.timer_ival_s = longest_s if longest_s > 0 else RTO_MIN_S
        if best is None or best.wmem_queued >= best.sndbuf_bytes:
            return None
        return best

    def _push_linux(self, now: float) -> None:
        """``__mptcp_push_pending``: bursts to the scheduler's subflow, then each subflow sends."""
        for subflow in self.subflows:
            if subflow.send_queue:
                subflow.transmit_queued(now)
        msk_limit = self.data_una + self.msk_sndbuf_bytes  # what the application has written
        written_end = min(self.available_bytes, msk_limit)
        pushed = False
        while self.next_dsn < written_end and self.next_dsn < self.right_edge:
            subflow = self.select_subflow()
            if subflow is None:
                break
            burst = min(MPTCP_SEND_BURST_BYTES, self.right_edge - self.next_dsn)
            wmem = subflow.wmem_queued
            subflow.avg_pacing_rate = (subflow.avg_pacing_rate * wmem + subflow.pacing_rate() * burst) / (burst + wmem)
            mss = subflow.payload_max_bytes
            committed = 0
            # __subflow_push_pending: whole data fragments (the application's bytes in 32 KiB page
            # frags, MPTCP_DFRAG_BYTES) until the burst is spent or the subflow's buffer is full,
            # both checked only between fragments: a fragment once begun goes on this subflow
            # whatever its buffer (up to a fragment beyond sk_sndbuf). mptcp_sendmsg_frag never
            # crosses the connection window (and, in the model, sends no partial segment to fit
            # it: sender-side silly window avoidance).
            while True:
                dsn = self.next_dsn
                length = min(mss, written_end - dsn)
                if length <= 0 or dsn + length > self.right_edge:
                    break
                subflow.commit(dsn, length)
                self.next_dsn = dsn + length
                burst -= length
                committed += length
                if self.next_dsn // MPTCP_DFRAG_BYTES != dsn // MPTCP_DFRAG_BYTES and \
                        (burst <= 0 or subflow.wmem_queued >= subflow.sndbuf_bytes):
                    break
            subflow.transmit_queued(now)
            if not committed:
                break
            pushed = True
            if self.next_dsn > self.snd_nxt:
                self.snd_nxt = self.next_dsn
        # __mptcp_push_pending: only a push that handed data to a subflow starts an idle timer
        # (an armed one is left alone; DATA_ACK progress restarts it in __mptcp_clean_una)
        if pushed and self.rtx_timer.deadline_s is None:
            self.rtx_timer.set(now + self.timer_ival_s)

    # --- the MPTCP-level retransmit timer ------------------------------------------------------

    # ``mptcp_subflow_get_send`` / ``__mptcp_set_timeout`` (net/mptcp/protocol.c, Linux 6.18):
    # msk->timer_ival is the longest time still to run on an active subflow's pending transmit
    # timer (``mptcp_timeout_from_subflow``: RTO, loss probe or reordering timer), or
    # TCP_RTO_MIN when none is pending, sampled each time the scheduler runs. It is NOT
    # recomputed when the timer is re-armed: ``mptcp_reset_rtx_timer`` (on DATA_ACK progress in
    # ``__mptcp_clean_una``, on a push, on expiry in ``__mptcp_retrans``) uses the stored value.
    # Simplified: no stale subflows (whose timers Linux leaves out); the per-fragment
    # ``mptcp_set_timeout`` of ``__subflow_push_pending`` samples the same timers as the pick; the
    # model takes a DATA_ACK before the subflow's ACK processing and its push, so a restart uses
    # the interval of the previous push (Linux's ``ack_update_msk`` runs after ``tcp_ack`` and
    # calls ``__mptcp_check_push`` just before ``__mptcp_data_acked``); the timer is cancelled
    # once all data sent is DATA_ACKed, where Linux keeps it while unsent data remains (an expiry
    # then re-sends nothing).

    def _on_rtx_timer(self, now: float) -> None:
        """``mptcp_retransmit_timer`` -> ``__mptcp_retrans``: the oldest fragment not DATA_ACKed
        (up to the bytes already sent) goes again on the first active subflow with nothing in
        flight and nothing queued (``mptcp_subflow_get_retrans``); with none, only re-arm. The
        re-arm (``__mptcp_clean_una`` at its start) uses the stored ``timer_ival_s``. On the way
        every subflow with data in flight or queued counts a period without progress
        (:meth:`check_stale`), in the subflows' order, as ``mptcp_subflow_get_retrans`` does."""
        if self.data_una >= self.snd_nxt or self.fallen_back:
            return
        self.mptcp_retransmit_timeouts += 1
        pick = None
        for subflow in self.subflows:  # every subflow: each busy one counts a period (stale check)
            if not subflow.active:  # __mptcp_subflow_active: a stale subflow may be picked
                continue
            if subflow.head < len(subflow.rtx) or subflow.send_queue:
                self.check_stale(subflow, now)
            elif pick is None:
                pick = subflow
        if pick is not None:
            start = self.data_una
            end = min((start // MPTCP_DFRAG_BYTES + 1) * MPTCP_DFRAG_BYTES, self.next_dsn)
            dsn = start
            while dsn < end:
                length = min(pick.payload_max_bytes, end - dsn)
                pick.commit(dsn, length)
                dsn += length
            self.reinjected_bytes += end - start
            pick.transmit_queued(now)
        self.rtx_timer.set(now + self.timer_ival_s)

    # --- stale subflows (net/mptcp/pm.c and protocol.c, Linux 6.18) ------------------------------

    # A subflow whose path has gone quiet keeps the data committed to it; the MPTCP-level timer
    # re-sends only one fragment per expiry, on an idle subflow. Linux marks such a subflow stale
    # and re-sends everything not DATA_ACKed on the others: ``mptcp_subflow_get_retrans`` calls
    # ``mptcp_pm_subflow_chk_stale`` for every subflow with data in flight or queued. Its first call
    # records the subflow's ``rcv_tstamp`` (stale_count 1); each later one finding the same stamp
    # (no ACK since) counts one more, one finding another resets the count (and recovers a stale
    # subflow). Past ``stale_loss_cnt`` (4), so at the fifth period, ``mptcp_pm_subflows_chk_stale``
    # looks for another active subflow with stale_count below max(stale_loss_cnt - 1, 1); with
    # one, the subflow is stale (``MPTCP_MIB_SUBFLOWSTALE``), ``__mptcp_retransmit_pending_data``
    # marks everything not DATA_ACKed unsent, and ``__mptcp_push_pending`` sends it again on the
    # others. A stale subflow gets no new data (``mptcp_subflow_active`` is false while its
    # rcv_tstamp is unchanged) but still sends what it holds; its first ACK recovers it
    # (``mptcp_subflow_set_active``, ``MPTCP_MIB_SUBFLOWRECOVER``). A subflow with a count adds
    # nothing to the MPTCP-level timer's interval (``mptcp_timeout_from_subflow``). Simplified: no
    # backup subflows, so the pick for a reinjection ignores the counts (Linux consults them for a
    # backup only).

    def jiffies(self, now: float) -> int:
        """Linux ``tcp_jiffies32`` at ``now`` for this sender's CONFIG_HZ (rcv_tstamp's unit)."""
        return int(now * 1e6 + 0.5) * self.kernel_hz // 1_000_000

    def usable(self, subflow: _SubflowSender) -> bool:
        """``mptcp_subflow_active``: active and not stale; a stale subflow that has taken an ACK
        since it was marked recovers here."""
        if subflow.stale:
            if subflow.stale_rcv_tstamp == subflow.rcv_tstamp:
                return False
            subflow.stale = False
            self.subflows_recovered += 1
        return subflow.active

    def check_stale(self, subflow: _SubflowSender, now: float) -> None:
        """``mptcp_pm_subflow_chk_stale`` (net/mptcp/pm.c): one MPTCP-level timeout with data
        outstanding on ``subflow``; with no ACK since the last, the stale test."""
        if not subflow.stale_count:
            subflow.stale_rcv_tstamp = subflow.rcv_tstamp
            subflow.stale_count = 1
        elif subflow.stale_rcv_tstamp == subflow.rcv_tstamp:
            subflow.stale_count = min(subflow.stale_count + 1, _STALE_COUNT_MAX)
            self._mark_stale(subflow, now)
        else:
            subflow.stale_count = 0
            if subflow.stale:
                subflow.stale = False
                self.subflows_recovered += 1

    def _mark_stale(self, subflow: _SubflowSender, now: float) -> None:
        """``mptcp_pm_subflows_chk_stale``: stale once past stale_loss_cnt periods, if another
        active subflow is not itself losing (stale_count below max(stale_loss_cnt - 1, 1))."""
        if subflow.stale or subflow.stale_count <= MPTCP_STALE_LOSS_CNT:
            return
        active_max_loss_cnt = max(MPTCP_STALE_LOSS_CNT - 1, 1)
        for other in self.subflows:
            if other is not subflow and self.usable(other) and other.stale_count < active_max_loss_cnt:
                if subflow.head < len(subflow.rtx) or subflow.send_queue:
                    subflow.stale = True
                    self.subflows_stale += 1
                    self._retransmit_pending_data()
                self.push(now)
                return

    def _retransmit_pending_data(self) -> None:
        """``__mptcp_retransmit_pending_data``: everything not DATA_ACKed is marked unsent, so the
        scheduler sends it again from the DATA_ACK on (the receiver drops what it already has)."""
        if self.data_una < self.next_dsn:
            self.reinjected_bytes += self.next_dsn - self.data_una
            self.next_dsn = self.data_una

    def activate(self, subflow: _SubflowSender, now: float) -> None:
        """A subflow that joined late (its MP_JOIN handshake done) starts taking data."""
        subflow.active = True
        subflow.rcv_tstamp = self.jiffies(now)
        self.sync_sndbuf()
        self.push(now)

    def close_subflow(self, subflow: _SubflowSender, now: float) -> None:
        """A subflow is reset: it sends nothing more and what it held goes again on the others.
        Linux ``__mptcp_close_ssk`` -> ``__mptcp_retransmit_pending_data`` (net/mptcp/protocol.c,
        6.x): everything not yet DATA_ACKed is marked unsent, so the scheduler sends it again
        from the DATA_ACK on (the copies the receiver already has are dropped there)."""
        if subflow.closed:
            return
        subflow.closed = True
        subflow.active = False
        subflow.receive = _ignore  # late ACKs of a reset subflow change nothing
        subflow.rto_timer.cancel()
        subflow.send_queue.clear()
        subflow.retransmit_queue.clear()
        subflow.wmem_queued = 0
        self.subflow_resets += 1
        self._retransmit_pending_data()
        self.sync_sndbuf()
        self.push(now)

    def fall_back(self) -> None:
        """RFC 8684 3.7: the connection reverts to TCP on its only subflow (infinite mapping):
        no MPTCP option is sent any more and no MPTCP-level retransmission."""
        self.fallen_back = True
        self.mptcp_options = False
        self.rtx_timer.cancel()
        for subflow in self.subflows:
            subflow.data_header_bytes = BASE_HEADER_BYTES

    # --- data supplied over time, and the zero-window probe (module doc, "Composing transfers") ---

    def send_buffer_room(self) -> int:
        """Bytes the application may still write now: the send buffer (the connection's
        ``msk_sndbuf_bytes`` under the Linux scheduler, else ``snd_buf_bytes`` of payload) less
        what is written and not yet (DATA_)ACKed, as ``sk_stream_memory_free`` lets a writer in."""
        limit = self.data_una + (self.msk_sndbuf_bytes if self.linux else self.snd_buf_bytes)
        return min(limit, self.size_bytes) - self.written_bytes

    def _push_supplied(self, now: float) -> None:
        """A push that first takes what the source has (as far as the send buffer has room),
        then runs the scheduler, then checks whether a closed peer window needs the probe timer."""
        source = self.source
        if source is not None:
            room = self.send_buffer_room()
            if room > 0:
                self.written_bytes += source.pull(self, room)
            self._release_written()
        self._push_scheduler(now)
        if self.window_probes:
            self._check_persist(now)

    def _release_written(self) -> None:
        """Nagle's algorithm (RFC 896; Linux ``tcp_nagle_check`` without TCP_NODELAY): written
        bytes go to the scheduler in whole segments, a shorter tail only once everything sent
        is acknowledged or the stream is complete. Without it a relay that writes what each
        upstream segment brought (1,448 bytes into an MPTCP leg of 1,420-byte segments) sends a
        28-byte segment for every full one. Simplified: Linux's Minshall refinement (one short
        segment may be unacknowledged) and autocorking are left out."""
        written = self.written_bytes
        if written == self.size_bytes or self.data_una >= self.next_dsn:
            self.available_bytes = written
            return
        mss = self.subflows[0].payload_max_bytes
        whole = self.next_dsn + (written - self.next_dsn) // mss * mss
        if whole > self.available_bytes:
            self.available_bytes = whole

    def _window_blocked(self) -> bool:
        """Data written and unsent that the peer's window does not let out, with nothing in
        flight or queued on any subflow (so no ACK will come to open it): Linux's condition for
        ``tcp_check_probe_timer`` (no packets out, a send head the window refuses)."""
        remaining = self.available_bytes - self.next_dsn
        if remaining <= 0:
            return False
        subflows = self.subflows
        if self.next_dsn + min(subflows[0].payload_max_bytes, remaining) <= self.right_edge:
            return False
        return not any(s.active and (s.head < len(s.rtx) or s.send_queue) for s in subflows)

    def _check_persist(self, now: float) -> None:
        """Arm the probe timer when the window blocks the sender (``tcp_check_probe_timer``,
        net/ipv4/tcp_output.c: after ``tcp_probe0_base`` = max(RTO, TCP_RTO_MIN)); an ACK that
        opens the window ends it and clears the back-off (``tcp_ack_probe``, tcp_input.c)."""
        if self._window_blocked():
            if self.persist_timer.deadline_s is None:
                self.persist_timer.set(now + self._probe0_s())
        elif self.persist_timer.deadline_s is not None or self.persist_backoffs:
            self.persist_timer.cancel()
            self.persist_backoffs = 0

    def _probe0_s(self) -> float:
        """``tcp_probe0_when``: max(RTO, TCP_RTO_MIN) doubled per unanswered probe, at most TCP_RTO_MAX."""
        subflow = next((s for s in self.subflows if s.active), self.subflows[0])
        return min(max(subflow.rto_s, RTO_MIN_S) * 2 ** self.persist_backoffs, RTO_MAX_S)

    def _on_persist(self, now: float) -> None:
        """``tcp_probe_timer`` -> ``tcp_send_probe0`` -> ``tcp_xmit_probe_skb``: a bare segment
        with the sequence number below ``snd_una``, which the receiver answers at once with an
        ACK carrying its current window; then the timer again, backed off. Simplified: MPTCP
        probes the same way on the first active subflow (Linux's msk sends a one-byte data probe
        from ``mptcp_sendmsg_frag`` instead); no give-up after ``tcp_retries2`` probes."""
        if not self._window_blocked():
            self.persist_backoffs = 0
            return
        subflow = next((s for s in self.subflows if s.active), self.subflows[0])
        receiver = subflow.receiver
        header_bytes = BASE_HEADER_BYTES + (DSS_ACK_OPTION_BYTES if self.mptcp else 0)
        subflow.forward.send(Segment(header_bytes, receiver, subflow.subflow_id, subflow.snd_una - 1, 0, 0, None,
                                     self.data_una - 1, 0, receiver.conn.initial_window_bytes, FLAG_ACK, now, None,
                                     self.mptcp))
        self.window_probes_sent += 1
        self.persist_backoffs += 1
        self.persist_timer.set(now + self._probe0_s())


def win_from_space(scaling_ratio: int, space_bytes: int) -> int:
    """Linux ``__tcp_win_from_space`` (include/net/tcp.h, 6.6-6.18): the share of ``space_bytes``
    of buffer memory a socket offers as window, ``space x scaling_ratio / 256`` rounded down."""
    return (space_bytes * scaling_ratio) >> TCP_RMEM_TO_WIN_SCALE


def space_from_win(scaling_ratio: int, window_bytes: int) -> int:
    """Linux ``__tcp_space_from_win``: the buffer memory a window of payload needs (the inverse)."""
    return (window_bytes << TCP_RMEM_TO_WIN_SCALE) // scaling_ratio


def measured_scaling_ratio(payload_bytes: int, truesize_bytes: int = RCV_SKB_TRUESIZE_BYTES) -> int:
    """Linux ``tcp_measure_rcv_mss`` (net/ipv4/tcp_input.c, 6.6-6.18): payload / truesize of the
    segment that changed rcv_mss, in 1/256, at least 1."""
    return (payload_bytes << TCP_RMEM_TO_WIN_SCALE) // truesize_bytes or 1


class _ReceiveSpace:
    """One socket's receive-buffer state as Linux 6.18 keeps it: ``sk_rcvbuf``, ``scaling_ratio``,
    ``window_clamp`` and the DRS measure ``rcvq_space.space`` (module doc, "Receive window").

    ``tcp_init_buffer_space`` (net/ipv4/tcp_input.c): the clamp is the buffer's window
    (``tcp_full_space``) less one advertised MSS kept in reserve; the first measure is
    min(rcv_ssthresh, rcv_wnd, 10 advmss); ``tcp_select_initial_window`` offers the buffer's window
    rounded down to whole MSS. ``grow`` is ``tcp_rcvbuf_grow`` (6.18: "DRS is always one RTT late":
    twice the bytes copied in the last RTT, plus twice the growth over the previous RTT scaled by
    that window, plus the out-of-order span; at most tcp_rmem[2]; the clamp follows the buffer),
    and for the MPTCP connection ``mptcp_rcvbuf_grow`` (net/mptcp/protocol.c), the same without
    a clamp. ``auto`` is False after SO_RCVBUF (``SOCK_RCVBUF_LOCK``): no growth."""

    __slots__ = ("ratio", "rcvbuf_bytes", "rmem_max_bytes", "auto", "window_clamp_bytes", "space_bytes",
                 "initial_rcv_ssthresh")

    def __init__(self, rcvbuf_bytes: int, rmem_max_bytes: int, auto: bool, advmss_bytes: int) -> None:
        self.ratio = TCP_DEFAULT_SCALING_RATIO
        self.rcvbuf_bytes = rcvbuf_bytes
        self.rmem_max_bytes = rmem_max_bytes
        self.auto = auto
        full_bytes = win_from_space(self.ratio, rcvbuf_bytes)
        clamp_bytes = full_bytes
        if clamp_bytes > 2 * advmss_bytes:  # "Force reservation of one segment"
            clamp_bytes = max(2 * advmss_bytes, full_bytes - advmss_bytes)
        self.window_clamp_bytes = clamp_bytes
        rcv_wnd = full_bytes - full_bytes % advmss_bytes if full_bytes > advmss_bytes else full_bytes
        self.initial_rcv_ssthresh = min(rcv_wnd, clamp_bytes)
        self.space_bytes = min(self.initial_rcv_ssthresh, TCP_INIT_CWND_SEGMENTS * advmss_bytes)

    def set_ratio(self, ratio: int) -> None:
        """A new scaling_ratio; the clamp follows the buffer's window (6.10+)."""
        if ratio != self.ratio:
            self.ratio = ratio
            self.window_clamp_bytes = win_from_space(ratio, self.rcvbuf_bytes)

    def grow(self, new_space_bytes: int, ooo_bytes: int = 0) -> bool:
        """``tcp_rcvbuf_grow(sk, newval)``: True when the buffer grew."""
        old_bytes = self.space_bytes
        self.space_bytes = new_space_bytes
        if not self.auto:
            return False
        rcvwin = 2 * new_space_bytes
        rcvwin += 2 * (rcvwin * (new_space_bytes - old_bytes) // old_bytes)
        rcvwin += ooo_bytes
        rcvbuf = min(space_from_win(self.ratio, rcvwin), self.rmem_max_bytes)
        if rcvbuf > self.rcvbuf_bytes:
            self.rcvbuf_bytes = rcvbuf
            self.window_clamp_bytes = win_from_space(self.ratio, rcvbuf)
            return True
        return False


class _SubflowReceiver:
    """The receiving side of one subflow: reordering, SACK blocks, delayed ACKs."""

    def __init__(self, conn: _ConnectionReceiver, subflow_id: int, backward: LinkDirection, sender: _SubflowSender,
                 delayed_ack_s: float, quickack_segments: int, local_ip: IPv4Address | IPv6Address,
                 remote_ip: IPv4Address | IPv6Address, local_port: int, remote_port: int) -> None:
        self.conn = conn
        self.env = conn.env
        self.subflow_id = subflow_id
        self.backward = backward
        self.sender = sender
        self.delayed_ack_s = delayed_ack_s
        self.quickacks_left = quickack_segments
        self.quickack_max = quickack_segments
        # Linux pingpong mode (inet_csk_in_pingpong_mode): a socket that sent data within ato of a
        # receive ignores quick-ACK mode (``tcp_in_quickack_mode``); BulkTransfer(receiver_pingpong)
        # starts the initial subflow's receiver so, after the application's request/response.
        self.pingpong = False
        self.local_ip, self.remote_ip, self.local_port, self.remote_port = local_ip, remote_ip, local_port, remote_port
        self.mptcp = conn.mptcp
        self.sack_capacity = sack_capacity(conn.mptcp)
        self.ack_header_bytes = base_header_bytes(local_ip) + (DSS_ACK_OPTION_BYTES if conn.mptcp else 0)
        self.full_segment_bytes = sender.payload_max_bytes  # the advertised MSS (advmss)
        # Linux icsk_ack.rcv_mss (tcp_initialize_rcv_mss: at most TCP_MSS_DEFAULT before data)
        # and last_seg_size; rcv_wup: rcv_nxt when the last ACK went out.
        self.rcv_mss = min(TCP_MSS_DEFAULT_BYTES, self.full_segment_bytes)
        self.last_seg_bytes = 0
        self.rcv_wup = 0
        self.rcv_nxt = 0
        # The receive window (module doc, "Receive window"): plain TCP's subflow is the socket
        # whose buffer the connection keeps; an MPTCP subflow has its own (its clamp bounds its
        # rcv_ssthresh), grown when the connection's grows.
        self.space = conn.space if not conn.mptcp else conn.new_space()
        self.scaling_ratio = TCP_DEFAULT_SCALING_RATIO
        self.rcv_ssthresh = self.space.initial_rcv_ssthresh
        self.ooo: list[list[int]] = []  # out-of-order [left, right) ranges, sorted
        self.ooo_segments: dict[int, Segment] = {}  # by seq
        self.delack_timer = _Timer(self.env, self._on_delayed_ack)
        # SACK compression (_compress_sack): Linux tp->compressed_ack, compressed_ack_rcv_nxt,
        # dup_ack_counter and the compressed_ack_timer; the seq of the newest held segment, whose
        # SACK block goes first when the held-back ACK leaves.
        self.compressed_acks = 0
        self.compressed_ack_rcv_nxt = 0
        self.dup_ack_counter = 0
        self.compressed_latest_seq = 0
        self.comp_sack_timer = _Timer(self.env, self._on_compressed_ack)
        # counters
        self.bytes_in_order = 0
        self.duplicate_segments = 0
        self.acks_sent = 0
        self.acks_compressed = 0  # Linux LINUX_MIB_TCPACKCOMPRESSED (TcpExt TCPAckCompressed)
        self.resets_sent = 0

    def receive(self, segment: Segment) -> None:
        """A data segment from the sender."""
        if not segment.mptcp and self.mptcp and self._data_without_dss(segment):
            return
        seq = segment.seq
        length = segment.payload_bytes
        ooo = self.ooo
        latest = None
        if seq == self.rcv_nxt and (not ooo or seq + length <= ooo[0][0]):  # in order, nothing overlapped
            self.rcv_nxt = seq + length
            self.bytes_in_order += length
            self.conn.deliver(segment)
            self._measure_rcv_mss(segment)
            # tcp_event_data_recv grows rcv_ssthresh for segments of 128 bytes or more (no room
            # left under the clamp: nothing to do, tested here for speed)
            if length >= 128 and self.rcv_ssthresh < self.space.window_clamp_bytes:
                self._grow_window(length)
            if ooo and ooo[0][0] == self.rcv_nxt:  # a hole filled: take the range behind it
                self._drain()
                immediate = True
            elif ooo:
                immediate = True  # Linux ACKs every segment while out-of-order data is held
            elif self.quickacks_left > 0 and not self.pingpong:
                self.quickacks_left -= 1
                immediate = True
            else:
                # __tcp_ack_snd_check: more than one rcv_mss received since the last ACK
                immediate = self.rcv_nxt - self.rcv_wup > self.rcv_mss
        else:
            latest = self._receive_overlapping(segment)
            if latest is not None and seq > self.rcv_nxt and not self._ack_now():
                self._compress_sack(seq, latest)
                return
            immediate = True
        if immediate:
            self.send_ack(latest)
        elif self.delack_timer.deadline_s is None:
            self.delack_timer.set(self.env.now + self.delayed_ack_s)

    def _ack_now(self) -> bool:
        """The first test of Linux ``__tcp_ack_snd_check`` for a segment held out of order: more
        than rcv_mss received since the last ACK, or quick-ACK mode (which the ACK then uses up,
        ``tcp_dec_quickack_mode``)."""
        if self.rcv_nxt - self.rcv_wup > self.rcv_mss:
            return True
        if self.quickacks_left > 0 and not self.pingpong:
            self.quickacks_left -= 1
            return True
        return False

    def _compress_sack(self, seq: int, latest: int) -> None:
        """SACK compression, as Linux 6.18 runs it for a segment that leaves data held out of order
        (``__tcp_ack_snd_check`` in net/ipv4/tcp_input.c; ``tcp_event_ack_sent`` in tcp_output.c;
        ``tcp_compressed_ack_kick`` in tcp_timer.c): the first TCP_FASTRETRANS_THRESH (3) ACKs
        for one rcv_nxt go at once (the sender's duplicate-ACK threshold), later ones are held
        back until 44 are held (net.ipv4.tcp_comp_sack_nr) or a timer of min(1 ms
        (tcp_comp_sack_delay_ns), 5 % of the RTT) expires; any ACK sent meanwhile (in-order data,
        a filled hole) takes them along and stops the timer. The RTT is Linux's smaller of the
        receiver's estimate (here the sender's SRTT, module docstring) and its own srtt, which a
        receiver has from its handshake (here the sender's smallest RTT sample); none yet: 0.
        Simplified: the timer fires at its delay (Linux's hrtimer has 100 us of slack,
        tcp_comp_sack_slack_ns), no socket-owned-by-user deferral. At 50 Mbit/s (a segment every
        0.24 ms) one ACK per about four segments held; at 10 Mbit/s (1.2 ms) none is held."""
        if self.compressed_acks >= TCP_COMP_SACK_NR:
            self.send_ack(latest)
            return
        if self.compressed_ack_rcv_nxt != self.rcv_nxt:
            self.compressed_ack_rcv_nxt = self.rcv_nxt
            self.dup_ack_counter = 0
        if self.dup_ack_counter < TCP_FASTRETRANS_THRESH:
            self.dup_ack_counter += 1
            self.send_ack(latest)
            return
        self.compressed_acks += 1
        self.compressed_latest_seq = seq
        if self.comp_sack_timer.deadline_s is None:
            sender = self.sender
            rtt_s = sender.srtt_s or 0.0
            if sender.min_rtt_s < rtt_s:
                rtt_s = sender.min_rtt_s
            delay_s = min(TCP_COMP_SACK_DELAY_S, rtt_s / 20)
            self.comp_sack_timer.set(self.env.now + delay_s)

    def _range_holding(self, seq: int) -> int | None:
        """The index of the out-of-order range holding seq (its SACK block goes first), or None."""
        for i, (left, right) in enumerate(self.ooo):
            if left <= seq < right:
                return i
        return None

    def _on_compressed_ack(self, now: float) -> None:
        if self.compressed_acks:
            self.compressed_acks -= 1  # the ACK that goes now is not counted as compressed
            self.send_ack(self._range_holding(self.compressed_latest_seq))

    def _measure_rcv_mss(self, segment: Segment) -> None:
        """Linux ``tcp_measure_rcv_mss`` (net/ipv4/tcp_input.c, 6.x), run on in-order data: a
        segment at least rcv_mss long sets it (at most the advertised MSS); a shorter one of at
        least 536 bytes with its header sets it only when the previous one had the same size
        (payload plus the options beyond the timestamps: the DSS), so a box that splits every
        segment makes rcv_mss the parts' size. Simplified: the ICSK_ACK_PUSHED flag a short
        segment sets (an ACK when the application's read empties the queue) is not modelled."""
        length = segment.payload_bytes
        last = self.last_seg_bytes
        self.last_seg_bytes = 0
        if length >= self.rcv_mss:
            if length != self.rcv_mss:  # Linux divides only when rcv_mss changes
                self.scaling_ratio = measured_scaling_ratio(length)
                self.space.set_ratio(self.scaling_ratio)  # plain TCP: the connection's own
            self.rcv_mss = min(length, self.full_segment_bytes)
            return
        with_options = length + (DSS_DATA_OPTION_BYTES if segment.mptcp and self.mptcp else 0)
        # Linux: payload + the whole TCP header (20 + timestamps + DSS) >= TCP_MSS_DEFAULT + 20
        if with_options + 20 + TIMESTAMPS_OPTION_BYTES >= TCP_MSS_DEFAULT_BYTES + 20:
            self.last_seg_bytes = with_options
            if with_options == last:
                self.rcv_mss = with_options

    def _grow_window(self, length: int) -> None:
        """Linux ``tcp_grow_window`` (net/ipv4/tcp_input.c, 6.18): rcv_ssthresh, which bounds the
        window offered, grows by at least two advertised MSS (twice the segment) per segment
        whose truesize the window could hold, up to the clamp and the free buffer
        (``tcp_space``; an MPTCP subflow's own buffer, which holds nothing: the data moves to
        the connection at once). Segments whose truesize overhead is worse take the slow check
        (``__tcp_grow_window``). A growth arms a quick ACK (``icsk_ack.quick |= 1``): the
        segment's ACK goes at once unless the receiver is in pingpong mode, so in slow start,
        while DRS keeps room above rcv_ssthresh, every segment is ACKed (ACK trains 1.2 ms apart at
        10 Mbit/s, which HyStart's ACK-train test sees). Not modelled: ``__tcp_select_window``
        clearing quick-ACK mode when less than half the buffer is free (tried: no change on the
        10 + 3 and converter variants), memory pressure."""
        space = self.space
        room = space.window_clamp_bytes - self.rcv_ssthresh
        if not self.mptcp:
            free_room = self.conn.free_space_bytes() - self.rcv_ssthresh
            if free_room < room:
                room = free_room
        if room <= 0:
            return
        ratio = space.ratio
        advmss = self.conn.advmss_bytes
        if win_from_space(ratio, RCV_SKB_TRUESIZE_BYTES) <= length:
            incr = 2 * advmss
        else:
            incr = 0
            truesize_win = win_from_space(ratio, RCV_SKB_TRUESIZE_BYTES) >> 1
            window = win_from_space(ratio, space.rmem_max_bytes) >> 1
            while self.rcv_ssthresh <= window:
                if truesize_win <= length:
                    incr = 2 * self.rcv_mss
                    break
                truesize_win >>= 1
                window >>= 1
        if incr:
            self.rcv_ssthresh += min(room, max(incr, 2 * length))
            self.quickacks_left |= 1  # icsk_ack.quick |= 1: this segment's ACK goes at once

    def _receive_overlapping(self, segment: Segment) -> int | None:
        """A segment out of order, or overlapping data received already (a retransmission of a
        segment a box split, part of which arrived): RFC 9293 3.10.7.4, only the new bytes are
        kept; the parts before rcv_nxt or inside held ranges are duplicates. Linux keeps
        overlapping skbs in its out-of-order queue and skips the overlap when it moves them up
        (``tcp_data_queue_ofo``, ``tcp_ofo_queue``); the bytes delivered are the same. Returns the
        index of the out-of-order range holding the segment's newest part (for SACK), or None."""
        seq = segment.seq
        end = seq + segment.payload_bytes
        rcv_nxt = self.rcv_nxt
        if end <= rcv_nxt:
            self.duplicate_segments += 1
            self._enter_quickack_mode()
            return None
        left = seq if seq > rcv_nxt else rcv_nxt
        pieces = _add_range(self.ooo, left, end)
        if not pieces:
            self.duplicate_segments += 1
            return None
        conn = self.conn
        waiting = self.ooo_segments
        for piece_left, piece_right in pieces:
            part = segment if (piece_left, piece_right) == (seq, end) else _slice(segment, piece_left, piece_right)
            waiting[piece_left] = part
            conn.held_bytes += piece_right - piece_left
        if self.ooo[0][0] == self.rcv_nxt:
            self._drain()
        else:  # tcp_data_queue_ofo: rcv_ssthresh and the buffer grow for the held data too
            self._grow_window(segment.payload_bytes)
            self.space.grow(self.space.space_bytes, self.ooo[-1][1] - self.rcv_nxt)
        ooo = self.ooo
        newest = pieces[-1][0]
        for i in range(len(ooo) - 1, -1, -1):
            if ooo[i][0] <= newest:
                return i if newest < ooo[i][1] else None
        return None

    def _drain(self) -> None:
        """Pass up the out-of-order range that starts at rcv_nxt (its pieces tile it)."""
        conn = self.conn
        range_end = self.ooo.pop(0)[1]
        waiting = self.ooo_segments
        while self.rcv_nxt < range_end:
            queued = waiting.pop(self.rcv_nxt)
            conn.held_bytes -= queued.payload_bytes
            self.rcv_nxt += queued.payload_bytes
            self.bytes_in_order += queued.payload_bytes
            conn.deliver(queued)

    def _on_reset(self, segment: Segment) -> None:
        """The sender reset this subflow: nothing more is taken from it."""
        self.receive = _ignore  # type: ignore[method-assign]

    def _data_without_dss(self, segment: Segment) -> bool:
        """RFC 8684 3.7, data without a DSS mapping: with other subflows open (or on a joined
        subflow) the receiver resets this subflow (RST, MP_TCPRST reason 6) and drops the data
        (True); on the only subflow it falls back to TCP: from now on the subflow's bytes are the
        stream (the infinite mapping) and its ACKs carry no MPTCP option."""
        sender = self.sender
        if sender.subflow_id != 0 or any(other is not sender and other.active for other in sender.conn.subflows):
            self.receive = _ignore  # type: ignore[method-assign]
            self.backward.send(Segment(RESET_BYTES, sender.reset_endpoint, self.subflow_id, self.rcv_nxt, 0, 0, None,
                                       0, 0, 0, FLAG_RST, self.env.now, None, True))
            self.resets_sent += 1
            return True
        self.mptcp = False
        self.sack_capacity = sack_capacity(False)
        self.ack_header_bytes = BASE_HEADER_BYTES
        self.conn.fallen_back = True
        return False

    def _sack_blocks(self, latest: int | None) -> tuple | None:
        ooo = self.ooo
        if not ooo or not self.sack_capacity:
            return None
        blocks = []
        if latest is not None:
            blocks.append(tuple(ooo[latest]))
        for i in range(len(ooo) - 1, -1, -1):
            if len(blocks) >= self.sack_capacity:
                break
            if i != latest:
                blocks.append(tuple(ooo[i]))
        return tuple(blocks)

    def send_ack(self, latest: int | None = None) -> None:
        self.rcv_wup = self.rcv_nxt
        self.delack_timer.cancel()
        if self.compressed_acks:  # tcp_event_ack_sent: this ACK carries the held-back ones
            self.acks_compressed += self.compressed_acks
            self.compressed_acks = 0
            self.comp_sack_timer.cancel()
        conn = self.conn
        blocks = self._sack_blocks(latest)
        size_bytes = self.ack_header_bytes
        if blocks:
            size_bytes += SACK_BASE_BYTES + SACK_BLOCK_BYTES * len(blocks)
        data_ack = conn.data_rcv_nxt
        now = self.env.now
        _send_at(self.backward, Segment(size_bytes, self.sender, self.subflow_id, 0, 0, self.rcv_nxt, blocks, 0,
                                        data_ack, conn.window_bytes(self.rcv_ssthresh), FLAG_ACK, now, None,
                                        self.mptcp), now)
        self.acks_sent += 1

    def _enter_quickack_mode(self) -> None:
        """Linux ``tcp_enter_quickack_mode(sk, TCP_MAX_QUICKACKS)`` (net/ipv4/tcp_input.c, 6.18),
        run by ``tcp_data_queue`` for a segment wholly below rcv_nxt (a retransmission the receiver
        had: DelayedACKLost): leave pingpong mode, and ACK the next rcv_wnd / (2 rcv_mss) segments
        (at least 2, at most 16: ``tcp_incr_quickack``) at once."""
        self.pingpong = False
        conn = self.conn
        quickacks = (conn.right_edge - conn.data_rcv_nxt) // (2 * self.rcv_mss) or 2
        quickacks = min(quickacks, self.quickack_max)
        if quickacks > self.quickacks_left:
            self.quickacks_left = quickacks

    def _on_delayed_ack(self, now: float) -> None:
        # tcp_delack_timer_handler: a delayed ACK that had to wait for the timer ends pingpong mode
        self.pingpong = False
        self.send_ack()


class _ConnectionReceiver:
    """Data-level reassembly into the shared receive buffer, and the application reading it."""

    def __init__(self, env: simpy.Environment, size_bytes: int, mptcp: bool, rcv_buf_bytes: int,
                 hash_payload: bool, sink: Any = None, pinned: bool = False,
                 advmss_bytes: int = DEFAULT_MSS_BYTES) -> None:
        self.env = env
        self.size_bytes = size_bytes
        self.mptcp = mptcp
        self.rcv_buf_bytes = rcv_buf_bytes
        self.data_rcv_nxt = 0
        self.held_bytes = 0  # out of order, subflow- or connection-level
        # The receive window (module doc, "Receive window"): the buffer starts at tcp_rmem[1] and
        # DRS grows it towards rcv_buf_bytes (tcp_rmem[2]); SO_RCVBUF pins it at twice the value.
        self.pinned = pinned
        self.advmss_bytes = advmss_bytes
        self.space = self.new_space()
        self.space_seq = 0  # rcvq_space.seq: the bytes read when the current DRS measure began
        self.space_time_s = env.now  # rcvq_space.time
        self.rcv_rtt_s = 0.0  # MPTCP: msk->rcvq_space.rtt_us, the subflows' largest at the last check
        self.right_edge = self.space.initial_rcv_ssthresh
        # The window the handshake offers (``tcp_select_initial_window``, bounded by rcv_ssthresh);
        # also the data sender's own idle buffer's, which captures show on data segments.
        self.initial_window_bytes = self.space.initial_rcv_ssthresh
        self.pending: dict[int, Segment] = {}  # by DSN
        self.pending_heap: list[int] = []  # the DSNs of pending (and of some already taken: skipped)
        self.pending_end = 0  # the end of the furthest byte held in pending (the msk's ooo_last_skb)
        self.duplicate_bytes = 0
        self.fallen_back = False  # RFC 8684 3.7: data without a mapping on the only subflow
        self.finish_s: float | None = None
        self.hasher = hashlib.sha256() if hash_payload else None
        self.done = env.event()
        # The application (module doc, "Composing transfers"): without a sink it reads every byte
        # as it arrives in order; with one, in-order bytes stay unread in the receive buffer until
        # the sink takes them (``consume``), and the window shrinks by them.
        self.sink = sink
        self.unread_bytes = 0
        self.read_bytes = 0  # taken by a sink (an instant reader's is data_rcv_nxt)
        self.subflow_receivers: list[_SubflowReceiver] = []  # for window updates (set by BulkTransfer)
        self.window_updates = 0

    def new_space(self) -> _ReceiveSpace:
        """A socket's receive buffer as it starts: auto-tuned, tcp_rmem[1] (at most tcp_rmem[2]: the
        kernel world sets both so); pinned, twice SO_RCVBUF (``sock_setsockopt``), never grown."""
        if self.pinned:
            return _ReceiveSpace(2 * self.rcv_buf_bytes, DEFAULT_RCV_BUF_BYTES, False, self.advmss_bytes)
        return _ReceiveSpace(min(TCP_RMEM_DEFAULT_BYTES, self.rcv_buf_bytes), self.rcv_buf_bytes, True,
                             self.advmss_bytes)

    def free_space_bytes(self) -> int:
        """Linux ``tcp_space()`` (MPTCP: ``__mptcp_space``): the window of the buffer less the memory
        of what waits out of order and what the application has not read (``sk_rmem_alloc``).
        Held and unread bytes are charged their payload: Linux coalesces queued segments
        (``tcp_try_coalesce``, ``tcp_ooo_try_coalesce``, ``mptcp_try_coalesce``), which moves a
        segment's payload pages into the skb before it and frees the rest of its truesize.
        Simplified: the first skb of each run keeps its overhead in Linux, not here."""
        space = self.space
        return win_from_space(space.ratio, space.rcvbuf_bytes - self.held_bytes - self.unread_bytes)

    def select_window_bytes(self, rcv_ssthresh: int) -> int:
        """Linux ``__tcp_select_window`` (net/ipv4/tcp_output.c, 6.18; MPTCP's free space from
        ``mptcp_space``): the free space, none when it is below 1/16 of the buffer's window or one
        MSS (receiver SWS avoidance), at most rcv_ssthresh. Not modelled: window-scale rounding."""
        space = self.space
        ratio = space.ratio
        allowed = (space.rcvbuf_bytes * ratio) >> TCP_RMEM_TO_WIN_SCALE  # free_space_bytes, inlined
        free = ((space.rcvbuf_bytes - self.held_bytes - self.unread_bytes) * ratio) >> TCP_RMEM_TO_WIN_SCALE
        if free < (allowed >> 4) or free < self.advmss_bytes:
            return 0
        return free if free < rcv_ssthresh else rcv_ssthresh

    def window_bytes(self, rcv_ssthresh: int) -> int:
        """The window an ACK carries, from the cumulative (DATA_)ACK: its right edge never moves
        back (``tcp_select_window``; for MPTCP ``rcv_wnd_sent``)."""
        edge = self.data_rcv_nxt + self.select_window_bytes(rcv_ssthresh)
        if edge > self.right_edge:
            self.right_edge = edge
        return self.right_edge - self.data_rcv_nxt

    def _rcv_space_adjust(self, copied_seq: int, now: float) -> None:
        """DRS on a read, ``copied_seq`` being the bytes the application has read. Plain TCP:
        Linux ``tcp_rcv_space_adjust`` (net/ipv4/tcp_input.c, 6.18): once an RTT (the receiver's
        estimate) has passed since the measure began, the bytes read in it less those still
        unread (``inq``) are compared with the last measure; more grows the buffer
        (:meth:`_ReceiveSpace.grow`). MPTCP: ``mptcp_rcv_space_adjust`` (net/mptcp/protocol.c,
        6.18): the RTT is the largest of the subflows', the scaling_ratio the smallest (both
        taken at most once per RTT), no ``inq``; when the connection's buffer grows, every
        subflow's grows with the same measure (``tcp_rcvbuf_grow(ssk, copied)``). Simplified: the
        receiver's RTT estimate is the subflow sender's SRTT, where Linux measures the same round
        trip from the timestamp echo (``tcp_rcv_rtt_measure_ts``). ``now`` is ``env.now`` (read
        once by the caller: a property call per segment)."""
        elapsed_s = now - self.space_time_s
        space = self.space
        if self.mptcp:
            if elapsed_s < self.rcv_rtt_s:
                return
            rtt_s = 0.0
            ratio = 0
            for receiver in self.subflow_receivers:
                if receiver.sender.active:
                    srtt_s = receiver.sender.srtt_s
                    if srtt_s is not None and srtt_s > rtt_s:
                        rtt_s = srtt_s
                    if not ratio or receiver.scaling_ratio < ratio:
                        ratio = receiver.scaling_ratio
            self.rcv_rtt_s = rtt_s
            if ratio:
                space.ratio = ratio  # the msk has no clamp to follow it
            if not rtt_s or elapsed_s < rtt_s:
                return
            copied = copied_seq - self.space_seq
            if copied > space.space_bytes:
                if space.grow(copied, self._ooo_span_bytes()):
                    for receiver in self.subflow_receivers:
                        if receiver.sender.active:
                            sub = receiver.ooo
                            receiver.space.grow(copied, sub[-1][1] - receiver.rcv_nxt if sub else 0)
        else:
            srtt_s = self.subflow_receivers[0].sender.srtt_s
            if srtt_s is None or elapsed_s < srtt_s:
                return
            copied = copied_seq - self.space_seq - self.unread_bytes
            if copied > space.space_bytes:
                sub = self.subflow_receivers[0].ooo
                space.grow(copied, sub[-1][1] - self.subflow_receivers[0].rcv_nxt if sub else 0)
        self.space_seq = copied_seq
        self.space_time_s = now

    def _ooo_span_bytes(self) -> int:
        """From the next byte expected to the end of the furthest byte held out of order (DSN)."""
        if not self.pending:
            return 0
        return max(self.pending_end - self.data_rcv_nxt, 0)

    def deliver(self, segment: Segment) -> None:
        """Subflow-level in-order data: pass it up in DSN order. A reinjected fragment need not
        line up with the segments it repeats, so data may overlap what is already read or held:
        the overlap is dropped as a duplicate (as Linux's ``mptcp_data_queue_ofo`` trims it)."""
        dsn = segment.dsn
        rcv_nxt = self.data_rcv_nxt
        if dsn == rcv_nxt:
            self._read(segment, 0)
            if self.pending:
                self._drain()
        elif dsn > rcv_nxt:
            if dsn not in self.pending:
                self.pending[dsn] = segment
                heappush(self.pending_heap, dsn)
                self.held_bytes += segment.payload_bytes
                end = dsn + segment.payload_bytes
                if end > self.pending_end:
                    self.pending_end = end
                # mptcp_data_queue_ofo grows the buffer for what is held (6.18)
                self.space.grow(self.space.space_bytes, self._ooo_span_bytes())
            else:
                self.duplicate_bytes += segment.payload_bytes
        elif rcv_nxt < dsn + segment.payload_bytes:  # overlaps the next byte expected
            self._read(segment, rcv_nxt - dsn)
            if self.pending:
                self._drain()
        else:
            self.duplicate_bytes += segment.payload_bytes

    def _drain(self) -> None:
        """Read what waited for the bytes just read, trimming what they overlap."""
        pending = self.pending
        heap = self.pending_heap
        while pending:
            queued = pending.pop(self.data_rcv_nxt, None)
            if queued is None:
                if heap[0] >= self.data_rcv_nxt:
                    return
                queued = pending.pop(heappop(heap), None)
                if queued is None:
                    continue  # taken already by the exact lookup
                self.held_bytes -= queued.payload_bytes
                skip = self.data_rcv_nxt - queued.dsn
                if skip >= queued.payload_bytes:
                    self.duplicate_bytes += queued.payload_bytes
                else:
                    self._read(queued, skip)
                continue
            self.held_bytes -= queued.payload_bytes
            self._read(queued, 0)
        heap.clear()

    def _read(self, segment: Segment, skip: int) -> None:
        self.data_rcv_nxt += segment.payload_bytes - skip
        if self.hasher is not None:
            self.hasher.update(segment.payload[skip:] if skip else segment.payload)
        if skip:
            self.duplicate_bytes += skip
        if self.sink is not None:
            length = segment.payload_bytes - skip
            self.unread_bytes += length
            payload = segment.payload
            self.sink.on_data(self, None if payload is None else payload[skip:] if skip else payload,
                              self.data_rcv_nxt - length, length)
        else:
            now = self.env.now
            if now - self.space_time_s >= self.rcv_rtt_s:  # (MPTCP's early return, inlined)
                self._rcv_space_adjust(self.data_rcv_nxt, now)  # the instant reader has read it
        if self.data_rcv_nxt >= self.size_bytes and self.finish_s is None:
            self.finish_s = self.env.now
            self.done.succeed(self.finish_s)

    def consume(self, length: int) -> None:
        """The application reads ``length`` unread bytes (``tcp_recvmsg``), freeing buffer space;
        DRS runs (:meth:`_rcv_space_adjust`). If that opened the window "significantly", an ACK
        announces it at once, as Linux's ``tcp_cleanup_rbuf`` (net/ipv4/tcp.c) decides: the window
        last advertised is at most half the clamp (the first subflow's ``window_clamp``) and the
        new one (``__tcp_select_window``, with that subflow's rcv_ssthresh) at least twice it. MPTCP sends it on every
        active subflow (``mptcp_cleanup_rbuf`` -> ``mptcp_subflow_cleanup_rbuf``, simplified:
        Linux repeats the test per subflow). A new window below one segment counts as none
        (``__tcp_select_window``). Otherwise the next ACK carries the new window."""
        if not 0 < length <= self.unread_bytes:
            raise ValueError(f"consume: {length} bytes asked, {self.unread_bytes} unread")
        advertised = self.right_edge - self.data_rcv_nxt
        self.unread_bytes -= length
        self.read_bytes += length
        self._rcv_space_adjust(self.read_bytes, self.env.now)
        first = self.subflow_receivers[0] if self.subflow_receivers else None
        if first is not None and 2 * advertised <= first.space.window_clamp_bytes:
            new_window = self.select_window_bytes(first.rcv_ssthresh)
            # __tcp_select_window offers no window below one MSS (receiver-side SWS avoidance)
            if new_window >= first.full_segment_bytes and new_window >= 2 * advertised:
                self.window_updates += 1
                for receiver in self.subflow_receivers:
                    if receiver.sender.active:
                        receiver.send_ack()


# --- subflows joining: the MP_JOIN handshake, resets and fallback -----------------------------------

#: IP and TCP headers without options (the timestamps of BASE_HEADER_BYTES left out).
_BARE_HEADER_BYTES = BASE_HEADER_BYTES - TIMESTAMPS_OPTION_BYTES
JOIN_SYN_BYTES = _BARE_HEADER_BYTES + SYN_OPTIONS_BYTES + MP_JOIN_SYN_BYTES  # 72
JOIN_SYNACK_BYTES = _BARE_HEADER_BYTES + SYN_OPTIONS_BYTES + MP_JOIN_SYNACK_BYTES  # 76
PLAIN_SYNACK_BYTES = _BARE_HEADER_BYTES + SYN_OPTIONS_BYTES  # 60
JOIN_THIRD_ACK_BYTES = BASE_HEADER_BYTES + MP_JOIN_ACK_BYTES  # 76
JOIN_FOURTH_ACK_BYTES = BASE_HEADER_BYTES + DSS_ACK_OPTION_BYTES  # 64
RESET_BYTES = BASE_HEADER_BYTES + MP_TCPRST_BYTES  # 56
#: A SYN's window field (RFC 7323 2.2: never scaled): Linux's initial 64 KiB - 1.
SYN_WINDOW_BYTES = 65535


class _Endpoint:
    """Where a segment that the data path does not carry is delivered: a side of a join's
    handshake or a subflow's RST. It names the addresses its segments carry (for captures and
    middleboxes) and hands what arrives to ``handler``, so the data path's ``receive`` methods
    need no test for them."""

    join_listener = False

    def __init__(self, handler: Callable[[Segment], None], addresses: Any, out: Any) -> None:
        self.receive = handler
        self.local_ip, self.remote_ip = addresses.local_ip, addresses.remote_ip
        self.local_port, self.remote_port = addresses.local_port, addresses.remote_port
        self.out = out  # the direction this side sends on


class _ListenerEndpoint(_Endpoint):
    join_listener = True  # a third ACK addressed here carries MP_JOIN (Segment.to_ip_packet)


class _Join:
    """One further subflow's MP_JOIN handshake in the simulation: the sans-I/O machines of
    :mod:`mpsim.proto.join` (which decide what every segment carries, when each side may send and
    when the join fails; docs/protocols.md 3.2) wired to the subflow's directions and timers.

    It turns each :class:`~mpsim.proto.join.JoinSegment` into a light :class:`Segment` (sizes:
    the module docstring's header accounting; the MP_JOIN option rides along for captures and
    for the other side's checks, and counts as absent once a box has cleared ``mptcp``), feeds
    what arrives to the machine of that side, and on
    :class:`~mpsim.proto.join.SubflowFullyEstablished` at the data sender's side activates the
    subflow with the handshake's RTT. A failure on either side ends the join for the model: the
    initiator's machine stops at once (simplified: it would learn of the listener's reset from the
    RST) and the subflow, if active, is closed (``conn.close_subflow``). With one-way delays d
    (client to server) and d' (back), an upload's joined subflow sends its first data 2 (d + d')
    after its SYN, a download's 2 d + d' after it (the server, its data sender, is the listener).
    """

    def __init__(self, subflow: _SubflowSender, initiator_is_sender: bool, policy: TcpPolicy, keys: JoinKeys,
                 rng: Any) -> None:
        self.subflow = subflow
        self.env = subflow.env
        self.initiator_is_sender = initiator_is_sender
        receiver = subflow.receiver
        if initiator_is_sender:
            self.initiator = _Endpoint(self._at_initiator, subflow, subflow.forward)
            self.listener = _ListenerEndpoint(self._at_listener, receiver, receiver.backward)
        else:
            self.initiator = _Endpoint(self._at_initiator, receiver, receiver.backward)
            self.listener = _ListenerEndpoint(self._at_listener, subflow, subflow.forward)
        address_id = subflow.subflow_id & 0xFF
        self.client = JoinInitiator(keys, address_id, policy, rng)
        self.server = JoinListener(keys, address_id, rng)
        self.joined_s: float | None = None  # when the data sender could send on the subflow
        self.failure = ""
        self._syn_timer = _Timer(self.env, self._on_timer)
        self._ack_timer = _Timer(self.env, self._on_timer)

    # The handshake's record, read by tests and reports.
    @property
    def joined(self) -> bool:
        return self.joined_s is not None and not self.failure

    @property
    def state(self) -> str:
        return self.client.state

    def _window_bytes(self, side: _Endpoint) -> int:
        """The window a handshake ACK from ``side`` carries: the data receiver's current one, or
        the data sender's own idle receive buffer's first offer."""
        receiver = self.subflow.receiver
        receiving_side = self.listener if self.initiator_is_sender else self.initiator
        if side is receiving_side:
            return receiver.conn.window_bytes(receiver.rcv_ssthresh)
        return receiver.conn.initial_window_bytes

    @property
    def listener_state(self) -> str:
        return self.server.state

    @property
    def syn_times_s(self) -> list[float]:
        return self.client.syn_times_s

    @property
    def synack_s(self) -> float | None:
        return self.client.synack_s

    @property
    def third_ack_s(self) -> float | None:
        return self.server.third_ack_s

    @property
    def fourth_ack_s(self) -> float | None:
        return self.client.fourth_ack_s

    @property
    def handshake_rtt_s(self) -> float | None:
        return self.client.handshake_rtt_s

    @property
    def listener_rtt_s(self) -> float | None:
        return self.server.rtt_s

    @property
    def third_ack_retransmissions(self) -> int:
        return self.client.third_ack_retransmissions

    @property
    def plain_syns(self) -> int:
        return self.server.plain_syns

    def start(self, _event: Any = None) -> None:
        """The path manager opens the subflow: the first SYN + MP_JOIN."""
        self.client.start(self.env.now)
        self._flush()

    # --- wiring -------------------------------------------------------------------------------

    def _on_timer(self, now: float) -> None:
        self.client.handle_timer(now)
        self._flush()

    def _at_initiator(self, segment: Segment) -> None:
        now = self.env.now
        flags = segment.flags
        option = getattr(segment, "join_option", None) if segment.mptcp else None
        if flags & FLAG_RST:
            self.client.receive_rst(now)
        elif flags & FLAG_SYN:
            self.client.receive_synack(option, now)
        else:
            self.client.receive_ack(segment.mptcp, now)
        self._flush()

    def _at_listener(self, segment: Segment) -> None:
        now = self.env.now
        flags = segment.flags
        option = getattr(segment, "join_option", None) if segment.mptcp else None
        if flags & FLAG_RST:
            self.server.receive_rst(now)
        elif flags & FLAG_SYN:
            self.server.receive_syn(option, now)
        else:
            self.server.receive_ack(option, now)
        self._flush()

    def _flush(self) -> None:
        """Send what the machines produced, act on their events, follow the initiator's timer."""
        for machine, side in ((self.client, self.initiator), (self.server, self.listener)):
            for out in machine.pull_segments():
                self._send(side, out)
            for event in machine.pull_events():
                if isinstance(event, JoinFailed):
                    self._fail(event.reason)
                elif (machine is self.client) == self.initiator_is_sender and not self.failure:
                    self._activate(event.rtt_s)
        # Two timers (as Linux's SYN timer and 3rd-ACK timer are): each deadline on its own event.
        deadline_s = self.client.get_timer()
        state = self.client.state
        for timer, armed_in in ((self._syn_timer, "syn_sent"), (self._ack_timer, "pre_established")):
            if state != armed_in or deadline_s is None:
                timer.cancel()
            elif timer.deadline_s != deadline_s:
                timer.set(deadline_s)

    def _send(self, side: _Endpoint, out: JoinSegment) -> None:
        size_bytes, flags, syn_window = _JOIN_SEGMENTS[out.kind]
        mptcp = out.kind is not JoinSegmentKind.PLAIN_SYNACK
        window_bytes = SYN_WINDOW_BYTES if syn_window else 0 if out.kind is JoinSegmentKind.RST \
            else self._window_bytes(side)
        to = self.listener if side is self.initiator else self.initiator
        segment = Segment(size_bytes, to, self.subflow.subflow_id, 0, 0, 0, None, 0, 0, window_bytes, flags,
                          self.env.now, None, mptcp)
        if out.option is not None:
            segment.join_option = out.option
        side.out.send(segment)

    # --- outcomes -----------------------------------------------------------------------------

    def _activate(self, rtt_s: float) -> None:
        """The data sender may use the subflow; its handshake gave it an RTT sample (Linux
        ``tcp_ack_update_rtt`` on the SYN-ACK, ``tcp_synack_rtt_meas`` on the third ACK)."""
        now = self.env.now
        self.joined_s = now
        subflow = self.subflow
        subflow._rtt_sample(rtt_s)
        subflow.rto_s = subflow.rto_base_s  # tcp_set_rto once the handshake has a sample
        subflow.conn.activate(subflow, now)

    def _fail(self, reason: str) -> None:
        if self.failure:
            return
        self.failure = reason
        self.client.abort()
        subflow = self.subflow
        if subflow.active:
            subflow.conn.close_subflow(subflow, self.env.now)


#: Per handshake segment: (size_bytes, TCP flags, carries the unscaled SYN window).
_JOIN_SEGMENTS = {
    JoinSegmentKind.SYN: (JOIN_SYN_BYTES, FLAG_SYN, True),
    JoinSegmentKind.SYNACK: (JOIN_SYNACK_BYTES, FLAG_SYN | FLAG_ACK, True),
    JoinSegmentKind.PLAIN_SYNACK: (PLAIN_SYNACK_BYTES, FLAG_SYN | FLAG_ACK, True),
    JoinSegmentKind.THIRD_ACK: (JOIN_THIRD_ACK_BYTES, FLAG_ACK, False),
    JoinSegmentKind.FOURTH_ACK: (JOIN_FOURTH_ACK_BYTES, FLAG_ACK, False),
    JoinSegmentKind.RST: (RESET_BYTES, FLAG_RST, False),
}


@dataclass(frozen=True)
class TransferRecord:
    """The outcome of one bulk transfer (one table row; ``dataclasses.asdict`` gives the dict).

    ``duration_s`` runs from the start to the delivery of the last byte to the receiving
    application, or to the time of the query if the transfer is unfinished; ``goodput_bps`` is
    ``bytes_delivered * 8 / duration_s``. ``subflow_bytes`` counts the payload each subflow
    delivered in order at subflow level. ``payload_sha256`` is the hash of the delivered bytes
    when the transfer carried a payload. ``duplicate_bytes`` counts data the connection
    received twice at data level (zero without reinjection: subflow duplicates are discarded
    below it). ``subflows_stale`` / ``subflows_recovered`` count subflows marked stale and
    recovered (Linux's MPTcpExt SubflowStale / SubflowRecover; module docstring).
    """

    size_bytes: int
    bytes_delivered: int
    completed: bool
    start_s: float
    duration_s: float
    goodput_bps: float
    mptcp: bool
    subflows: int
    cc: str
    coupled: str
    snd_buf_bytes: int
    rcv_buf_bytes: int
    mss_bytes: int
    segments_sent: int
    retransmissions: int
    timeouts: int
    fast_recoveries: int
    loss_probes: int
    duplicate_bytes: int
    acks_sent: int
    subflow_bytes: tuple[int, ...]
    subflow_retransmissions: tuple[int, ...]
    subflow_srtt_s: tuple[float | None, ...]
    payload_sha256: str | None
    loss_detection: str = "rack-tlp"
    scheduler: str = "default"
    buffers: str = "auto"
    reinjected_bytes: int = 0
    mptcp_retransmit_timeouts: int = 0
    subflow_joined: tuple[bool, ...] = ()
    subflow_join_s: tuple[float | None, ...] = ()
    subflow_join_failures: tuple[str, ...] = ()
    subflow_resets: int = 0
    fallback: bool = False
    subflows_stale: int = 0
    subflows_recovered: int = 0
    #: The sender's counters under Linux's TcpExt names (nstat), summed over its subflows, as
    #: (name, value) pairs: TCPSackRecovery (fast recoveries), TCPLossProbes, TCPTimeouts (RTO
    #: expiries) and the congestion control's own (CUBIC: HyStart exits, ``tcp_ext_counters``).
    tcp_ext: tuple[tuple[str, int], ...] = ()


#: A SYN or SYN-ACK without MPTCP options: IPv4 and TCP headers and SYN_OPTIONS_BYTES (60).
HANDSHAKE_SEGMENT_BYTES = 20 + 20 + SYN_OPTIONS_BYTES


def _handshake_delay_s(direction: Any) -> float:
    """One way of a handshake over ``direction`` (a link direction or a route of them): every
    hop's delay and its serialisation of a SYN (HANDSHAKE_SEGMENT_BYTES), no queueing."""
    return sum(hop.delay_s + (HANDSHAKE_SEGMENT_BYTES * 8 / hop.rate_bps if hop.rate_bps else 0.0)
               for hop in getattr(direction, "hops", (direction,)))


def _attach(direction: LinkDirection) -> None:
    if direction.deliver is None:
        direction.deliver = deliver_segment
    elif direction.deliver is not deliver_segment:
        raise ValueError(f"link direction {direction.name!r} already delivers to {direction.deliver!r}; "
                         "a transfer needs directions of its own or shared with other transfers only")


class BulkTransfer:
    """Send ``size_bytes`` from a sender to a receiver over ``paths``, starting at ``env.now``.

    ``paths``: ``(forward, backward)`` LinkDirection pairs; one for TCP, one per subflow for
    MPTCP. A direction may be anything with a direction's ``send``, ``name`` and ``deliver``,
    e.g. a :class:`mpsim.sim.route.Route` (several hops, as the simulation builds them). ``cc``: "cubic" (Linux CUBIC, the kernel benchmark's pinned choice), "cubic-rfc9438" or
    "reno"; ``coupled``:
    "none" (per-subflow CC, upstream Linux) or "lia" (RFC 6356, needs ``cc="reno"``).
    ``loss_detection``: "rack-tlp" (Linux's default) or "rfc6675" (dupACK/SACK counting only;
    module docstring). ``scheduler`` (MPTCP): "default" (upstream Linux 6.x: lowest linger time,
    per-subflow send queues, reinjection) or "lowest-rtt" (the older model). ``buffers``: "auto"
    (Linux's auto-tuning; ``snd_buf_bytes`` is tcp_wmem[2], ``rcv_buf_bytes`` tcp_rmem[2]) or
    "pinned" (SO_SNDBUF = ``snd_buf_bytes``, SO_RCVBUF = ``rcv_buf_bytes``, doubled as Linux does);
    ``rcv_buffers`` sets the receiver's policy apart (SO_RCVBUF alone; None: as ``buffers``). Joins (module docstring, "Subflows joining"):
    ``join_handshake`` (default True: further subflows open with MP_JOIN), ``join_delay_s`` (when
    the path manager opens them), ``joins_from`` ("sender" or "receiver": the client's side),
    ``syn_policy`` (the client's SYN timers; default ``TcpPolicy()``), ``subflow_start_s`` (per
    path, the first entry 0: when its join starts, or with ``join_handshake=False`` when it
    starts established). ``kernel_hz``: the sending kernel's CONFIG_HZ (100, 250, 300 or 1000;
    default 250), the jiffy rate of Linux CUBIC (:class:`~mpsim.sim.congestion.Cubic`).
    ``receiver_pingpong``: the receiving application answered soon after a receive before the
    bulk (a request/response exchange), so its initial subflow starts in Linux's pingpong mode and
    sends no quick ACKs until a delayed ACK waits for its timer or a duplicate arrives.
    ``payload``: optional bytes of length ``size_bytes`` carried for real, so the receiver can
    hash what it delivers (slower; for tests and pcaps). ``addresses``: per path, the (sender,
    receiver) IP addresses its packets carry, all IPv4 or all IPv6 (the header accounting follows;
    default: IPv4 198.18.i.2 to 198.19.0.2; a route's ``flow`` overrides what a capture shows).
    ``mss_bytes``: default the Linux MSS of a 1500-byte MTU for that version (1448, 1428).
    ``mptcp_keys``: (client key, server key), the 64-bit MP_CAPABLE keys of the connection the
    joins join (the simulation passes the negotiated connection's), from which the joins'
    tokens and HMACs are computed; ``join_rng``: where the joins' nonces come from. Defaults: a
    generator seeded from ``name`` (:func:`mpsim.sim.seeds.derive_seed`), keys drawn from it.
    ``done`` is a SimPy event that
    succeeds when the last byte reaches the receiving application (with a ``sink``: the
    receiving socket). ``source`` / ``sink`` make the transfer one leg of a longer one (module
    doc, "Composing transfers"; :class:`mpsim.sim.relay.RelayedTransfer`): the sending
    application's bytes arrive over time from ``source.pull(sender, room_bytes) -> int``, and
    the receiving application reads only what ``sink`` takes (``sink.on_data(receiver, payload,
    offset, length)`` is told of every in-order arrival; it calls ``receiver.consume(n)``).
    """

    def __init__(self, env: simpy.Environment, paths: Sequence[tuple[LinkDirection, LinkDirection]], size_bytes: int,
                 *, cc: str = "cubic", coupled: str = "none", mptcp: bool = False,
                 snd_buf_bytes: int = DEFAULT_SND_BUF_BYTES, rcv_buf_bytes: int = DEFAULT_RCV_BUF_BYTES,
                 mss_bytes: int | None = None, initial_cwnd_segments: int = INITIAL_CWND_SEGMENTS,
                 rto_min_s: float = RTO_MIN_S, delayed_ack_s: float = DELAYED_ACK_S,
                 quickack_segments: int = QUICKACK_SEGMENTS, payload: bytes | None = None,
                 loss_detection: str = "rack-tlp", scheduler: str = "default", buffers: str = "auto",
                 rcv_buffers: str | None = None, subflow_start_s: Sequence[float] | None = None, join_handshake: bool = True,
                 join_delay_s: float = DEFAULT_JOIN_DELAY_S, joins_from: str = "sender",
                 syn_policy: TcpPolicy | None = None, kernel_hz: int = LINUX_HZ, name: str = "transfer",
                 source: Any = None, sink: Any = None,
                 addresses: Sequence[tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address]] | None = None,
                 mptcp_keys: tuple[int, int] | None = None, join_rng: Any = None,
                 handshake_rtt_sample: bool = False, receiver_pingpong: bool = False) -> None:
        paths = list(paths)
        if not paths:
            raise ValueError("a transfer needs at least one path")
        if addresses is None:
            addresses = [(IPv4Address(f"198.18.{index}.2"), IPv4Address("198.19.0.2")) for index in range(len(paths))]
        addresses = list(addresses)
        if len(addresses) != len(paths) or not all(
                isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(a, (IPv4Address, IPv6Address)) for a in pair)
                for pair in addresses) or len({a.version for pair in addresses for a in pair}) != 1:
            raise ValueError(f"addresses needs one (sender, receiver) pair per path, all IPv4 or all IPv6, "
                             f"got {addresses!r}")
        if mss_bytes is None:
            mss_bytes = DEFAULT_MSS_BYTES_BY_VERSION[addresses[0][0].version]
        if not mptcp and len(paths) != 1:
            raise ValueError(f"plain TCP uses one path, got {len(paths)}; pass mptcp=True for subflows")
        if type(size_bytes) is not int or size_bytes <= 0:
            raise ValueError(f"size_bytes must be a positive int, got {size_bytes!r}")
        if coupled not in ("none", "lia"):
            raise ValueError(f"coupled must be 'none' or 'lia', got {coupled!r}")
        check_kernel_hz(kernel_hz)
        if loss_detection not in LOSS_DETECTION_POLICIES:
            raise ValueError(f"loss_detection must be one of {LOSS_DETECTION_POLICIES}, got {loss_detection!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if buffers not in BUFFER_POLICIES:
            raise ValueError(f"buffers must be one of {BUFFER_POLICIES}, got {buffers!r}")
        if rcv_buffers is None:
            rcv_buffers = buffers
        elif rcv_buffers not in BUFFER_POLICIES:
            raise ValueError(f"rcv_buffers must be one of {BUFFER_POLICIES} or None, got {rcv_buffers!r}")
        if not isinstance(join_delay_s, (int, float)) or not join_delay_s >= 0:
            raise ValueError(f"join_delay_s must be a number >= 0, got {join_delay_s!r}")
        if joins_from not in JOIN_INITIATORS:
            raise ValueError(f"joins_from must be one of {JOIN_INITIATORS}, got {joins_from!r}")
        if syn_policy is not None and not isinstance(syn_policy, TcpPolicy):
            raise ValueError(f"syn_policy must be a TcpPolicy, got {syn_policy!r}")
        if mptcp_keys is not None and not (isinstance(mptcp_keys, tuple) and len(mptcp_keys) == 2):
            raise ValueError(f"mptcp_keys must be a (client key, server key) pair, got {mptcp_keys!r}")
        keys = None if mptcp_keys is None else JoinKeys(*mptcp_keys)  # refuses keys that are not 64-bit
        if join_handshake and len(paths) > 1:  # joins to come: their keys and nonces
            if join_rng is None:  # the transfer's own generator: the same name gives the same nonces
                join_rng = random.Random(derive_seed(0, 0, f"{name}.join"))
            if keys is None:
                keys = JoinKeys(join_rng.getrandbits(64), join_rng.getrandbits(64))
        starts_s = [0.0] + [float(join_delay_s)] * (len(paths) - 1) if subflow_start_s is None \
            else list(subflow_start_s)
        if len(starts_s) != len(paths) or any(not isinstance(t, (int, float)) or not t >= 0 for t in starts_s) \
                or starts_s[0] != 0:
            raise ValueError(f"subflow_start_s needs one delay >= 0 per path, the first 0 (the initial subflow), "
                             f"got {subflow_start_s!r}")
        payload_max_bytes = mss_bytes - (DSS_DATA_OPTION_BYTES if mptcp else 0)
        if type(mss_bytes) is not int or payload_max_bytes <= 0:
            raise ValueError(f"mss_bytes must be an int leaving room for payload, got {mss_bytes!r}")
        for field_name, value in (("snd_buf_bytes", snd_buf_bytes), ("rcv_buf_bytes", rcv_buf_bytes)):
            if type(value) is not int or value < payload_max_bytes:
                raise ValueError(f"{field_name} must be an int of at least one segment ({payload_max_bytes}), "
                                 f"got {value!r}")
        if payload is not None and len(payload) != size_bytes:
            raise ValueError(f"payload holds {len(payload)} bytes, size_bytes is {size_bytes}")
        self.env = env
        self.name = name
        self.size_bytes = size_bytes
        self.cc = cc
        self.coupled = coupled
        self.mptcp = mptcp
        self.snd_buf_bytes = snd_buf_bytes
        self.rcv_buf_bytes = rcv_buf_bytes
        self.mss_bytes = mss_bytes
        self.loss_detection = loss_detection
        self.scheduler = scheduler
        self.buffers = buffers
        self.start_s = env.now
        self.receiver = _ConnectionReceiver(env, size_bytes, mptcp, rcv_buf_bytes, payload is not None, sink=sink,
                                            pinned=rcv_buffers == "pinned", advmss_bytes=mss_bytes)
        self.sender = _ConnectionSender(env, size_bytes, mptcp, snd_buf_bytes, self.receiver.initial_window_bytes,
                                        payload, scheduler=scheduler, pinned=buffers == "pinned", source=source,
                                        window_probes=sink is not None, kernel_hz=kernel_hz)
        coupling = LiaCoupling() if coupled == "lia" else None
        self.joins: list[_Join | None] = []  # per path: its MP_JOIN handshake (None: the initial subflow)
        for index, (forward, backward) in enumerate(paths):
            _attach(forward)
            _attach(backward)
            client_ip, server_ip = addresses[index]
            client_port = 40000 + index
            subflow = _SubflowSender(self.sender, index, forward,
                                     make_congestion_control(cc, coupling, initial_cwnd_segments, kernel_hz),
                                     payload_max_bytes,
                                     rto_min_s, client_ip, server_ip, client_port, 5201,
                                     rack_tlp=loss_detection == "rack-tlp")
            subflow.receiver = _SubflowReceiver(self.receiver, index, backward, subflow, delayed_ack_s,
                                                quickack_segments, server_ip, client_ip, 5201, client_port)
            subflow.reset_endpoint = _Endpoint(subflow._on_reset, subflow, forward)
            subflow.receiver.reset_endpoint = _Endpoint(subflow.receiver._on_reset, subflow.receiver, backward)
            # The initial subflow is the negotiated connection, established when the bulk starts.
            subflow.active = index == 0 or (not join_handshake and starts_s[index] == 0)
            self.sender.add_subflow(subflow)
            join = None
            if index and join_handshake:
                assert keys is not None  # drawn above when there are joins
                join = _Join(subflow, joins_from == "sender", syn_policy or TcpPolicy(), keys, join_rng)
                schedule_call(env, starts_s[index], join.start, TIMER_PRIORITY)
            elif not subflow.active:
                schedule_call(env, starts_s[index], lambda _event, sf=subflow: self.sender.activate(sf, env.now))
            self.joins.append(join)
        self.receiver.subflow_receivers = [s.receiver for s in self.sender.subflows]
        if type(receiver_pingpong) is not bool:
            raise ValueError(f"receiver_pingpong must be True or False, got {receiver_pingpong!r}")
        # The receiving application answered within the delayed-ACK timeout of a receive before the
        # bulk (the request/response exchange): its socket, the initial subflow, is in pingpong
        # mode (Linux tcp_event_data_sent; docs/kernel-facts.md, "Receive window").
        self.sender.subflows[0].receiver.pingpong = receiver_pingpong
        if handshake_rtt_sample:
            # The negotiated connection's handshake gave the sender an RTT sample (Linux
            # tcp_ack_update_rtt on the SYN-ACK, tcp_synack_rtt_meas on the third ACK), as a
            # join's does (_Join._activate): SRTT, RTO and the pacing rate the MPTCP scheduler's
            # first picks weigh (mptcp_subflow_get_send) start from it.
            first = self.sender.subflows[0]
            forward, backward = paths[0]
            first._rtt_sample(_handshake_delay_s(forward) + _handshake_delay_s(backward))
            first.rto_s = first.rto_base_s
        self.sender.push(env.now)

    @property
    def done(self) -> simpy.Event:
        """Succeeds (with the finish time) when the last byte reaches the receiving application."""
        return self.receiver.done

    def result(self) -> TransferRecord:
        """The record so far: complete once ``done`` has triggered."""
        receiver = self.receiver
        subflows = self.sender.subflows
        completed = receiver.finish_s is not None
        end_s = receiver.finish_s if completed else self.env.now
        duration_s = end_s - self.start_s
        delivered = receiver.data_rcv_nxt
        return TransferRecord(
            size_bytes=self.size_bytes, bytes_delivered=delivered, completed=completed, start_s=self.start_s,
            duration_s=duration_s, goodput_bps=delivered * 8 / duration_s if duration_s > 0 else 0.0,
            mptcp=self.mptcp, subflows=len(subflows), cc=self.cc, coupled=self.coupled,
            snd_buf_bytes=self.snd_buf_bytes, rcv_buf_bytes=self.rcv_buf_bytes, mss_bytes=self.mss_bytes,
            segments_sent=sum(s.segments_sent for s in subflows),
            retransmissions=sum(s.retransmissions for s in subflows),
            timeouts=sum(s.timeouts for s in subflows),
            fast_recoveries=sum(s.fast_recoveries for s in subflows),
            loss_probes=sum(s.loss_probes for s in subflows),
            duplicate_bytes=receiver.duplicate_bytes,
            acks_sent=sum(s.receiver.acks_sent for s in subflows),
            subflow_bytes=tuple(s.receiver.bytes_in_order for s in subflows),
            subflow_retransmissions=tuple(s.retransmissions for s in subflows),
            subflow_srtt_s=tuple(s.srtt_s for s in subflows),
            payload_sha256=receiver.hasher.hexdigest() if receiver.hasher is not None else None,
            loss_detection=self.loss_detection, scheduler=self.scheduler, buffers=self.buffers,
            reinjected_bytes=self.sender.reinjected_bytes,
            mptcp_retransmit_timeouts=self.sender.mptcp_retransmit_timeouts,
            subflow_joined=tuple(join.joined if join is not None else not s.closed and s.active
                                 for join, s in zip(self.joins, subflows)),
            subflow_join_s=tuple(self.start_s if join is None else join.joined_s
                                 for join in self.joins),
            subflow_join_failures=tuple("" if join is None else join.failure for join in self.joins),
            subflow_resets=self.sender.subflow_resets,
            fallback=self.sender.fallen_back or receiver.fallen_back,
            subflows_stale=self.sender.subflows_stale, subflows_recovered=self.sender.subflows_recovered,
            tcp_ext=self._tcp_ext_counters(),
        )

    def _tcp_ext_counters(self) -> tuple[tuple[str, int], ...]:
        counters = {"TCPSackRecovery": 0, "TCPLossProbes": 0, "TCPTimeouts": 0}
        for subflow in self.sender.subflows:
            counters["TCPSackRecovery"] += subflow.fast_recoveries
            counters["TCPLossProbes"] += subflow.loss_probes
            counters["TCPTimeouts"] += subflow.timeouts
            for name, value in subflow.cc.tcp_ext_counters().items():
                counters[name] = counters.get(name, 0) + value
        return tuple(counters.items())
