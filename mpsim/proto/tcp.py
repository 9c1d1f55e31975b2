"""One TCP connection as a sans-I/O state machine (RFC 9293, with Linux choices as policy).

What it models, because the negotiation depends on it: the three-way handshake with options and
SYN data (in the SYN and in the SYN-ACK), SYN and SYN-ACK retransmission with exponential
back-off, RST generation and acceptance (RFC 9293 3.10.7 with the RFC 5961 challenge ACK), FIN
close in every order, TIME-WAIT, and reliable in-order data with cumulative ACKs and an RFC 6298
retransmission timer.

What it simplifies, because bulk transfer is the simulator's business (mpsim.sim has congestion
control, SACK recovery and delayed ACKs):

- no congestion window: the sender is limited by the peer's window only;
- out-of-order segments are dropped and answered with a duplicate ACK; a retransmission timeout
  resends one segment from SND.UNA, so every lost data segment costs one RTO (no fast retransmit);
- every segment carrying data or a FIN is ACKed at once; SACK-Permitted is negotiated but no
  SACK blocks are sent;
- data is delivered as soon as it is in order, so the advertised window never shrinks: no
  persist timer, no zero-window probes, no SND.WL1/WL2 check; no keepalive, no urgent data;
- timestamps are sent and echoed (and decide a TIME-WAIT reopen, RFC 6191) but no PAWS check;
- the MSS is reduced by the Timestamps option (1448-byte segments, like Linux) but not by
  extension options;
- simultaneous open is not supported (a SYN without ACK in SYN-SENT is ignored); in SYN-RECEIVED
  only the retransmitted SYN is answered (a SYN-ACK at once), other SYNs are ignored;
- challenge ACKs are not rate-limited; SYN-ACK retransmissions repeat their payload;
- :meth:`close` shuts our sending side: data still arriving in FIN-WAIT is delivered, and
  FIN-WAIT-2 ends after ``fin_wait_2_timeout_s`` of silence from the peer (Linux's orphan rule).

Protocol extensions (MPTCP, TFO, the signalling schemes) plug in as :class:`TcpExtension` objects
that add options and inspect segments; the connection calls them at fixed points.

Inputs: :meth:`TcpConnection.active` / :meth:`TcpConnection.passive` (opens), :meth:`receive`,
:meth:`send`, :meth:`close`, :meth:`abort`, :meth:`handle_timer`. Outputs, pulled: :meth:`pull_packets`
(IP packets to emit), :meth:`pull_events` (past-tense facts), :meth:`get_timer` (one deadline).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.seqnum import seq_add, seq_diff, seq_in_window, seq_le, seq_lt
from mpsim.wire.options import (
    TCP_OPTION_SPACE_BYTES,
    MaximumSegmentSize,
    NoOperation,
    SackPermitted,
    Timestamps,
    WindowScale,
    option_space_bytes,
    options_length_bytes,
)
from mpsim.wire.segment import IpPacket, TcpFlags, TcpSegment, trusted_packet, trusted_segment

try:  # read only by the optional compiled build (docs/sim.md "Performance"); mypy brings mypy_extensions
    from mypy_extensions import mypyc_attr
except ImportError:  # pure Python without it: the mark means nothing
    def mypyc_attr(*attrs: str, **kwattrs: object):  # type: ignore[no-redef,misc]
        return lambda cls: cls

IpAddress = IPv4Address | IPv6Address

_MIN_SND_MSS_BYTES = 48  # Linux net.ipv4.tcp_min_snd_mss: a smaller advertised MSS is raised to this


_ICMP_FRAGMENTATION_NEEDED = 4  # RFC 792; the codes themselves live with the ICMP message in middlebox.py


class Rng(Protocol):
    """The random source a machine is handed (a seeded ``random.Random`` in practice)."""

    def getrandbits(self, k: int, /) -> int: ...

    def random(self) -> float: ...


class TcpState(enum.Enum):
    """RFC 9293 section 3.3.2 connection states."""

    CLOSED = "CLOSED"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    # Enum hashes by name in Python code; states are looked up in sets and dicts on every segment,
    # so they hash by identity (C code). Iteration order of those sets was never fixed: str hashes
    # are salted per process as well.
    __hash__ = object.__hash__


SYNCHRONIZED = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.CLOSE_WAIT,
                          TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT})
# States in which queued data and our FIN may still have to go out (CLOSING: the peer's FIN came
# before ours was sent, e.g. while the window held our data back).
_SENDS_DATA = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_1, TcpState.CLOSING,
                         TcpState.LAST_ACK})
_SENDS_FIN = frozenset({TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK})
_CAN_SEND = frozenset({TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})


class SynDataMode(enum.Enum):
    """What a passive opener does with data carried in a SYN (docs/protocols.md 8.6 item 5)."""

    DROP = "drop"  # Linux without TFO: the SYN-ACK ACKs ISN+1 only and the data is discarded
    QUEUE = "queue"  # RFC 793 as some stacks read it: ACKed in the SYN-ACK, delivered once ESTABLISHED
    ACCEPT = "accept"  # TFO with a valid cookie (or cookie-less): ACKed and delivered at once


@dataclass(frozen=True, slots=True)
class TcpPolicy:
    """The knobs where RFCs leave a choice; defaults follow Linux 6.x (docs/protocols.md 5, 8.4)."""

    initial_rto_s: float = 1.0  # TCP_TIMEOUT_INIT
    min_rto_s: float = 0.2  # TCP_RTO_MIN
    max_rto_s: float = 120.0  # TCP_RTO_MAX
    syn_retries: int = 6  # net.ipv4.tcp_syn_retries: SYNs at 0, 1, 3, 7, 15, 31, 63 s
    # net.ipv4.tcp_syn_linear_timeouts (newer kernels; 4 on the 6.18 testbed kernel): the first N
    # SYN retransmissions wait the initial RTO without doubling, so SYNs at 0, 1, 2, 3, 4, 5, 7, ... s,
    # and Linux adds N to the retry limit (give-up rule: TcpConnection._syn_given_up).
    # 0 keeps the classic exponential schedule the RFCs and most deployed stacks follow.
    syn_linear_timeouts: int = 0
    synack_retries: int = 5  # net.ipv4.tcp_synack_retries
    data_retries: int = 15  # net.ipv4.tcp_retries2
    time_wait_s: float = 60.0  # TCP_TIMEWAIT_LEN; RFC 9293 says 2*MSL = 240 s
    mss_bytes: int = 1460  # over IPv4; an IPv6 connection's is 20 less (IPV6_EXTRA_HEADER_BYTES)
    receive_window_bytes: int = 65535 * 4
    window_scale_shift: int | None = 7  # None: do not offer window scaling
    timestamps: bool = True
    sack_permitted: bool = True
    resend_unacked_syn_data: bool = True  # Linux TFO client: unACKed SYN data goes out after the handshake
    retransmit_syn_data: bool = False  # Linux: a retransmitted SYN carries no data (RFC 7413 4.2.2)
    # RFC 6298 5.7 (Linux TCP_TIMEOUT_FALLBACK): the RTO once data flows when the handshake gave no RTT sample
    unsampled_handshake_rto_s: float = 3.0
    # Linux net.ipv4.tcp_fin_timeout: FIN-WAIT-2 ends after this long without a segment from the peer
    # (None: wait for the peer's FIN forever, as RFC 9293 does)
    fin_wait_2_timeout_s: float | None = 60.0
    # False: the SYN is resent only by retransmit_syn(), never by the timer, and the owner bounds
    # the wait (a converter mirroring its client's SYN retransmissions, RFC 8803 9.3)
    syn_retransmission_timer: bool = True

    def syn_rto_s(self, retransmissions: int) -> float:
        """The SYN timer armed after ``retransmissions`` SYN retransmissions (0: the first SYN):
        the initial RTO, kept for the first ``syn_linear_timeouts`` retransmissions and doubled
        after each later one, at most ``max_rto_s`` (Linux ``tcp_retransmit_timer``, 6.5-6.18)."""
        doublings = max(0, retransmissions - self.syn_linear_timeouts)
        return min(self.initial_rto_s * 2 ** min(doublings, 64), self.max_rto_s)

    def syn_given_up(self, retransmissions: int, elapsed_s: float) -> bool:
        """Linux ``tcp_write_timeout`` for SYN-SENT (net/ipv4/tcp_timer.c, Linux 6.5 to 6.18), asked
        when the timer expires after ``retransmissions`` SYN retransmissions, ``elapsed_s`` after
        the first SYN.

        Two limits, either ends the attempt: a count, ``syn_retries + syn_linear_timeouts``
        retransmissions (Linux adds the linear count to the limit), and a time,
        ``retransmits_timed_out``: ``(2^(syn_retries+1) - 1)`` initial RTOs since the first SYN
        (``tcp_model_timeout``, the duration of an exponential schedule of ``syn_retries``
        retransmissions; past ``ilog2(max_rto / initial_rto)`` doublings the rest count
        ``max_rto`` each), checked only once a SYN was retransmitted. With linear timeouts the
        time limit usually comes first: retries 2, linear 4 sends SYNs at 0, 1, 2, 3, 4, 5 s and
        gives up at 7 s; with linear 0 both limits agree (3 SYNs, 7 s), as the RFC schedule does.
        """
        if retransmissions >= self.syn_retries + self.syn_linear_timeouts:
            return True
        if retransmissions == 0:
            return False
        doublings = int(math.log2(self.max_rto_s / self.initial_rto_s) + 1e-9)  # ilog2
        boundary = self.syn_retries
        if boundary <= doublings:
            timeout_s = ((2 << boundary) - 1) * self.initial_rto_s
        else:
            timeout_s = ((2 << doublings) - 1) * self.initial_rto_s + (boundary - doublings) * self.max_rto_s
        return elapsed_s >= timeout_s - 1e-9  # 1 ns: float sums of RTOs

    def __post_init__(self) -> None:
        if not 0 < self.min_rto_s <= self.initial_rto_s <= self.max_rto_s:
            raise ValueError("need 0 < min_rto_s <= initial_rto_s <= max_rto_s")
        if min(self.syn_retries, self.synack_retries, self.data_retries, self.syn_linear_timeouts) < 0:
            raise ValueError("retry counts must be >= 0")
        if self.time_wait_s < 0 or not 88 <= self.mss_bytes <= 65495:
            raise ValueError("time_wait_s must be >= 0 and mss_bytes in 88..65495")
        if self.unsampled_handshake_rto_s <= 0 or (self.fin_wait_2_timeout_s or 0) < 0:
            raise ValueError("unsampled_handshake_rto_s must be > 0 and fin_wait_2_timeout_s >= 0")


# --- events: past-tense facts the connection reports to its owner --------------------------------


@dataclass(frozen=True, slots=True)
class Established:
    """The handshake completed. ``syn_data_acked_bytes``: how much of our SYN data the peer ACKed."""

    syn_data_acked_bytes: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer sent FIN: no more data will arrive."""


@dataclass(frozen=True, slots=True)
class ResetReceived:
    """An acceptable RST arrived. ``refused``: in SYN-SENT, i.e. nobody listens there."""

    refused: bool


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Retransmissions ran out (``what`` is "syn", "synack" or "data"), or the peer stayed silent
    in FIN-WAIT-2 for ``TcpPolicy.fin_wait_2_timeout_s`` (``what`` is "fin_wait_2")."""

    what: str


@dataclass(frozen=True, slots=True)
class Unreachable:
    """An ICMP Destination Unreachable ended the connection attempt (``icmp_code``, RFC 792)."""

    icmp_code: int


@dataclass(frozen=True, slots=True)
class SynRetransmissionReceived:
    """The peer retransmitted its SYN while our SYN-ACK was withheld (RFC 8803 9.3 needs this)."""


class CloseReason(enum.Enum):
    TIME_WAIT_EXPIRED = "time_wait_expired"  # we closed first; 2*MSL (policy) has passed
    LAST_ACK = "last_ack"  # the peer closed first and ACKed our FIN
    RESET_RECEIVED = "reset_received"
    ABORTED = "aborted"  # we sent RST (or gave up in SYN-SENT)
    TIMED_OUT = "timed_out"
    UNREACHABLE = "unreachable"  # an ICMP error while connecting
    REOPENED = "reopened"  # in TIME-WAIT, a new SYN took the 4-tuple over (RFC 1122 4.2.2.13)


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is gone; ``reason`` says how."""

    reason: CloseReason

    @property
    def clean(self) -> bool:
        """Closed by the FIN exchange: the 4-tuple may be reused at once."""
        return self.reason in (CloseReason.TIME_WAIT_EXPIRED, CloseReason.LAST_ACK, CloseReason.REOPENED)


TcpEvent = (Established | DataReceived | PeerClosed | ResetReceived | TimedOut | Unreachable
            | SynRetransmissionReceived | Closed)


# Compiled, a class refuses interpreted subclasses: the extensions of proto/ are not compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class TcpExtension:
    """Hooks through which a protocol extension shapes a connection. Defaults do nothing.

    ``on_synack`` may return a reason string: the connection then aborts with an RST (the way a
    client refuses a SYN-ACK that ACKed what it should not have). So may ``on_segment`` on a
    synchronized connection (MPTCP: an MP_FASTCLOSE carrying our key resets the connection).
    """

    def syn_options(self, conn: TcpConnection, retransmission: int) -> tuple:
        return ()

    def synack_options(self, conn: TcpConnection, syn: TcpSegment) -> tuple:
        return ()

    def segment_options(self, conn: TcpConnection, flags: TcpFlags, payload_bytes: int) -> tuple:
        return ()

    def options_for_segment(self, conn: TcpConnection, seq: int, flags: TcpFlags, payload: bytes) -> tuple:
        """What the connection calls for every non-SYN segment it sends. Extensions that need the
        sequence number and the bytes (an MPTCP DSS mapping and its checksum) override this one;
        the default defers to :meth:`segment_options`."""
        return self.segment_options(conn, flags, len(payload))

    def on_syn(self, conn: TcpConnection, syn: TcpSegment) -> None:
        return None

    def on_synack(self, conn: TcpConnection, synack: TcpSegment) -> str | None:
        return None

    def on_segment(self, conn: TcpConnection, segment: TcpSegment) -> str | None:
        return None

    def allows_early_data(self, conn: TcpConnection) -> bool:
        """Whether a passive connection that accepted SYN data may send before the third ACK."""
        return True


def reset_for(packet: IpPacket) -> IpPacket | None:
    """The RST a host sends for a segment that matches no connection (RFC 9293 3.10.7.1)."""
    seg = packet.segment
    if seg.flags & TcpFlags.RST:
        return None
    if seg.flags & TcpFlags.ACK:
        rst = TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, TcpFlags.RST, 0)
    else:
        rst = TcpSegment(seg.dst_port, seg.src_port, 0, seq_add(seg.seq, seg.sequence_space_bytes),
                         TcpFlags.RST | TcpFlags.ACK, 0)
    return IpPacket(packet.dst, packet.src, rst)


#: Linux derives the MSS it advertises from the route's MTU less the IP and TCP headers
#: (tcp_mtu_to_mss): on the same 1500-byte MTU an IPv6 connection's is 20 bytes smaller (1440).
IPV6_EXTRA_HEADER_BYTES = 20


def mss_for(policy: TcpPolicy, local_addr: IpAddress) -> int:
    """The MSS a connection from ``local_addr`` advertises and sends with: ``policy.mss_bytes``
    over IPv4, 20 less over IPv6."""
    return policy.mss_bytes - (IPV6_EXTRA_HEADER_BYTES if local_addr.version == 6 else 0)


def _syn_options(policy: TcpPolicy, *, sack: bool, timestamps: bool, window_scale: bool,
                 mss_bytes: int | None = None) -> tuple:
    """The base options of a SYN or SYN-ACK, offering what ``policy`` allows and the flags permit
    (``mss_bytes``: the connection's, :func:`mss_for`; default the policy's).
    Linux's order (tcp_options_write): mss, sackOK, TS, nop, wscale; without TS mss, nop, nop,
    sackOK, nop, wscale; without SACK mss, nop, nop, TS, nop, wscale."""
    options: list = [MaximumSegmentSize(policy.mss_bytes if mss_bytes is None else mss_bytes)]
    offer_sack = policy.sack_permitted and sack
    if policy.timestamps and timestamps:
        options += [SackPermitted()] if offer_sack else [NoOperation(), NoOperation()]
        options.append(Timestamps(0, 0))  # the values are filled in when the segment is sent
    elif offer_sack:
        options += [NoOperation(), NoOperation(), SackPermitted()]
    if policy.window_scale_shift is not None and window_scale:
        options += [NoOperation(), WindowScale(policy.window_scale_shift)]
    return tuple(options)


def syn_base_options(policy: TcpPolicy) -> tuple:
    """The options an active opener's SYN carries before any extension adds its own."""
    return _syn_options(policy, sack=True, timestamps=True, window_scale=True)


# The options of every segment after the handshake when both sides use timestamps (values filled
# in when the segment is sent); option values are immutable, so one tuple serves every connection.
_TIMESTAMPED_OPTIONS = (NoOperation(), NoOperation(), Timestamps(0, 0))
_TIMESTAMPED_OPTIONS_BYTES = option_space_bytes(_TIMESTAMPED_OPTIONS)
_FIN_BIT = int(TcpFlags.FIN)
_SYN_BIT = int(TcpFlags.SYN)
_RST_BIT = int(TcpFlags.RST)
_ACK_BIT = int(TcpFlags.ACK)
_ACK_PSH = TcpFlags.ACK | TcpFlags.PSH


def _fit_options(base: tuple, extra: tuple) -> tuple:
    """Base TCP options plus extension options within 40 bytes. Like Linux with MPTCP+TFO on a
    SYN-ACK (RFC 8684 appendix B), Timestamps go first when space runs out; if it still does not
    fit, the OptionSpaceError surfaces when the packet is built."""
    if not extra:
        return base  # the base options take 20 bytes at most (a SYN's MSS, SACK-Permitted, TS, WS)
    options = base + extra
    if option_space_bytes(options) > TCP_OPTION_SPACE_BYTES:
        trimmed = tuple(o for o in options if not isinstance(o, Timestamps))
        if option_space_bytes(trimmed) <= TCP_OPTION_SPACE_BYTES:
            return trimmed
    return options


@dataclass
class _Peer:
    mss_bytes: int = 536  # RFC 9293 3.7.1 default when no MSS option arrives
    window_shift: int | None = None
    timestamps: bool = False
    sack_permitted: bool = False
    ts_recent: int = 0


class TcpConnection:
    """One connection, active or passive. Create with :meth:`active` or :meth:`passive`."""

    def __init__(self, local_addr: IpAddress, local_port: int, remote_addr: IpAddress, remote_port: int, *,
                 iss: int, policy: TcpPolicy, extensions: tuple[TcpExtension, ...] = ()) -> None:
        self.local_addr, self.local_port = local_addr, local_port
        self.remote_addr, self.remote_port = remote_addr, remote_port
        self.policy = policy
        self.extensions = list(extensions)
        self.state = TcpState.CLOSED
        self.iss = iss
        self.irs = 0
        self.snd_una = iss
        self.snd_nxt = iss
        self._snd_max = iss  # the highest SND.NXT so far: bytes below it were sent before
        self.rcv_nxt = 0
        self.peer_window_bytes = 0
        self.peer = _Peer()
        self._tx = bytearray()  # unACKed and unsent stream bytes, from snd_una's first data byte
        self._fin_queued = False
        # hold_close: the owner's close() waits until release_close (a simulated transfer runs on
        # the connection outside this machine, docs/sim.md "Routes").
        self._close_held = False
        self._close_asked = False
        self._syn_payload_bytes = 0
        self._queued_syn_data = b""  # SynDataMode.QUEUE: delivered once ESTABLISHED
        self._synack_withheld = False
        self._synack_payload_bytes = 0  # data our SYN-ACK carries; it heads _tx until ACKed
        self._fast_opened = False  # passive, SYN data accepted (TFO, a converter): may answer before the third ACK
        self._packets: list[IpPacket] = []
        self._events: list[TcpEvent] = []
        self._deadline: float | None = None
        self._now_s = 0.0  # the latest time an input brought, for segments sent without one at hand
        self._rto_s = policy.initial_rto_s
        self._srtt_s: float | None = None
        self._rttvar_s = 0.0
        self._syn_first_s: float | None = None  # when the first SYN went out (give-up time limit)
        self._rtt_probe: tuple[int, float] | None = None  # (seq that must be ACKed, send time)
        self._last_stamped: tuple | None = None  # (options, TSval, TSecr, stamped options), see _stamp
        self._retransmissions_in_row = 0
        # Counters the results tables report.
        self.syns_sent = 0
        self.rsts_sent = 0
        self.retransmissions = 0
        self.bytes_sent = 0  # application bytes put on the wire, first transmissions only
        self.bytes_received = 0  # application bytes delivered in order
        self.syn_options_sent: tuple = ()
        self.synack: TcpSegment | None = None  # the SYN-ACK as received (active side)
        self.syn: TcpSegment | None = None  # the SYN as received (passive side)

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def active(cls, local_addr: IpAddress, local_port: int, remote_addr: IpAddress, remote_port: int, *,
               iss: int, policy: TcpPolicy, now: float, syn_payload: bytes = b"",
               extensions: tuple[TcpExtension, ...] = ()) -> TcpConnection:
        """Send a SYN (with ``syn_payload`` as SYN data) and enter SYN-SENT."""
        conn = cls(local_addr, local_port, remote_addr, remote_port, iss=iss, policy=policy, extensions=extensions)
        conn._tx += syn_payload
        conn._syn_payload_bytes = len(syn_payload)
        conn._now_s = now
        conn._move(TcpState.SYN_SENT)
        conn._send_syn(now, retransmission=0)
        return conn

    @classmethod
    def passive(cls, syn_packet: IpPacket, *, iss: int, policy: TcpPolicy, now: float,
                syn_data_mode: SynDataMode = SynDataMode.DROP, withhold_synack: bool = False,
                extensions: tuple[TcpExtension, ...] = ()) -> TcpConnection:
        """Answer a SYN and enter SYN-RECEIVED. With ``withhold_synack`` the SYN-ACK waits for
        :meth:`send_synack` (a converter that answers only once the server has, RFC 8803 4.2)."""
        syn = syn_packet.segment
        conn = cls(syn_packet.dst, syn.dst_port, syn_packet.src, syn.src_port, iss=iss, policy=policy,
                   extensions=extensions)
        conn.syn = syn
        conn._now_s = now
        conn._move(TcpState.SYN_RECEIVED)
        conn.irs = syn.seq
        conn._learn_peer_options(syn)
        conn.peer_window_bytes = syn.window  # never scaled on a SYN (RFC 7323 2.2)
        for ext in conn.extensions:
            ext.on_syn(conn, syn)
        conn.rcv_nxt = seq_add(syn.seq, 1)
        if syn.payload and syn_data_mode is not SynDataMode.DROP:
            conn.rcv_nxt = seq_add(conn.rcv_nxt, len(syn.payload))
            if syn_data_mode is SynDataMode.ACCEPT:
                conn._fast_opened = True
                conn._deliver(syn.payload)
            else:
                conn._queued_syn_data = syn.payload
        conn.snd_nxt = conn._snd_max = seq_add(iss, 1)
        conn._synack_withheld = withhold_synack
        if not withhold_synack:
            conn._send_synack(now, retransmission=0)
        return conn

    def send_synack(self, now: float, payload: bytes = b"") -> None:
        """Release a withheld SYN-ACK, optionally carrying data (the Convert reply)."""
        if self.state is not TcpState.SYN_RECEIVED or not self._synack_withheld:
            raise LocalProtocolError(f"no withheld SYN-ACK to send in state {self.state.name}")
        self._now_s = now
        self._synack_withheld = False
        # The payload goes before anything the owner queued meanwhile; kept in _tx until ACKed, it
        # is resent as ordinary data if the peer's ACK covers the SYN only.
        self._tx[:0] = payload
        self._synack_payload_bytes = len(payload)
        self.snd_nxt = self._snd_max = seq_add(self.iss, 1 + len(payload))
        self.bytes_sent += len(payload)
        self._send_synack(now, retransmission=0)
        if self._may_send_early():
            self._transmit_new(now)  # what the owner queued while the SYN-ACK was held back

    # --- commands ---------------------------------------------------------------------------

    def send(self, data: bytes, now: float) -> None:
        """Queue application bytes; they go out as the peer's window allows."""
        if self.state not in _CAN_SEND or self._fin_queued:
            after_close = " after close" if self._fin_queued else ""
            raise LocalProtocolError(f"cannot send in state {self.state.name}{after_close}")
        self._now_s = now
        self._tx += data
        if self.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) or self._may_send_early():
            self._transmit_new(now)

    def _may_send_early(self) -> bool:
        """RFC 7413 4.2.2 (Linux: a Fast Open child socket is writable in SYN-RECV): once the SYN-ACK
        is out, a connection that accepted SYN data may send before the handshake completes, which
        is where TFO saves its round trip; an extension that cannot map such data yet vetoes it."""
        return self.state is TcpState.SYN_RECEIVED and self._fast_opened and not self._synack_withheld \
            and all(ext.allows_early_data(self) for ext in self.extensions)

    def close(self, now: float) -> None:
        """Send FIN after the queued data (graceful close). In SYN-SENT the attempt is simply
        dropped (RFC 9293 3.10.4); in SYN-RECEIVED the FIN waits for the handshake. Closing twice
        is harmless; closing a CLOSED connection is an error (the state does not change)."""
        if self.state is TcpState.CLOSED:
            raise LocalProtocolError("cannot close: the connection is already closed")
        self._now_s = now
        if self.state is TcpState.SYN_SENT:
            self._finish(now, CloseReason.ABORTED)
            return
        if self._fin_queued:
            return
        if self._close_held:
            self._close_asked = True  # release_close carries it out
            return
        self._fin_queued = True
        if self.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            self._move(TcpState.FIN_WAIT_1 if self.state is TcpState.ESTABLISHED else TcpState.LAST_ACK)
            self._transmit_new(now)

    def hold_close(self) -> None:
        """From now on :meth:`close` only notes that the owner asked, until :meth:`release_close`.

        For a simulation that carries a transfer's bytes on this connection outside the machine
        (light segments, docs/sim.md "Routes"): the application has not written or read them all
        yet, so its FIN must wait, whoever asks for it (the client, the server's application,
        a proxy's relay coupling the FINs of its two legs)."""
        self._close_held = True

    def release_close(self, now: float) -> None:
        """Lift :meth:`hold_close`; a close asked meanwhile happens now (FIN after the queued data)."""
        self._close_held = False
        if self._close_asked and self.state is not TcpState.CLOSED:
            self._close_asked = False
            self.close(now)

    def carry_stream(self, sent_bytes: int, received_bytes: int) -> None:
        """Count ``sent_bytes`` as sent and ACKed and ``received_bytes`` as received in order,
        without segments: bytes a simulated transfer moved on this connection outside the
        machine (docs/sim.md "Routes"), so that what the connection sends next (its FIN)
        continues the sequence numbers after them. Only on a synchronized connection with
        nothing of its own unacknowledged and no FIN yet (the transfer ran while it was idle)."""
        if sent_bytes < 0 or received_bytes < 0:
            raise ValueError(f"carry_stream needs byte counts >= 0, got {sent_bytes}, {received_bytes}")
        if self.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) or self._fin_queued \
                or self.snd_una != self.snd_nxt or self._tx:
            raise LocalProtocolError(f"cannot carry stream bytes in state {self.state.name}"
                                     f"{' with unacknowledged data' if self._tx or self.snd_una != self.snd_nxt else ''}")
        self.snd_una = self.snd_nxt = self._snd_max = seq_add(self.snd_nxt, sent_bytes)
        self.rcv_nxt = seq_add(self.rcv_nxt, received_bytes)
        self.bytes_sent += sent_bytes
        self.bytes_received += received_bytes

    @property
    def idle(self) -> bool:
        """Synchronized, nothing unacknowledged and no FIN sent or asked: :meth:`carry_stream` may run."""
        return self.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT) and not self._fin_queued \
            and self.snd_una == self.snd_nxt and not self._tx

    def abort(self, now: float) -> None:
        """Send RST (if the peer can know us) and forget the connection. Does nothing on a
        CLOSED connection, so that owners may abort unconditionally when cleaning up."""
        if self.state is TcpState.CLOSED:
            return
        self._now_s = now
        if self.state in (TcpState.SYN_SENT, TcpState.TIME_WAIT):
            self._finish(now, CloseReason.ABORTED)
            return
        if not (self.state is TcpState.SYN_RECEIVED and self._synack_withheld):
            self._send_rst(self.snd_nxt)
        self._finish(now, CloseReason.ABORTED)

    def icmp_unreachable(self, icmp_code: int, now: float) -> None:
        """An ICMP Destination Unreachable quoting our segment. Linux (tcp_v4_err) ends a connection
        in SYN-SENT on it, whatever the code except Fragmentation Needed (a PMTU matter);
        synchronized connections keep retransmitting (RFC 5461: the errors are soft there)."""
        if self.state is not TcpState.SYN_SENT or icmp_code == _ICMP_FRAGMENTATION_NEEDED:
            return
        self._now_s = now
        self._events.append(Unreachable(icmp_code))
        self._finish(now, CloseReason.UNREACHABLE)

    def send_ack(self, now: float) -> None:
        """Send a bare ACK now, with the extensions' options (MPTCP MP_FASTCLOSE rides on one)."""
        if self.state not in SYNCHRONIZED or self.state is TcpState.TIME_WAIT:
            raise LocalProtocolError(f"cannot send an ACK in state {self.state.name}")
        self._now_s = now
        self._emit_with_extensions(self.snd_nxt, TcpFlags.ACK, now=now)

    # --- outputs ----------------------------------------------------------------------------

    def pull_packets(self) -> list[IpPacket]:
        packets, self._packets = self._packets, []
        return packets

    def pull_events(self) -> list[TcpEvent]:
        events, self._events = self._events, []
        return events

    def pull_output(self) -> tuple[list[IpPacket], list[TcpEvent]] | None:
        """:meth:`pull_packets` and :meth:`pull_events` in one call, or None when both are empty
        (the host asks after every input, and mostly the second time finds nothing)."""
        if not self._packets and not self._events:
            return None
        output = (self._packets, self._events)
        self._packets, self._events = [], []
        return output

    def get_timer(self) -> float | None:
        return self._deadline

    def may_reopen(self, syn: TcpSegment) -> bool:
        """Whether a SYN arriving in TIME-WAIT may start a new incarnation of this 4-tuple: its
        sequence number lies above the old RCV.NXT (RFC 1122 4.2.2.13, RFC 9293 MAY-2) or, with
        timestamps, its TSval is newer than the last one seen (RFC 6191, as Linux does)."""
        if self.state is not TcpState.TIME_WAIT or syn.flags & (TcpFlags.ACK | TcpFlags.RST) \
                or not syn.flags & TcpFlags.SYN:
            return False
        if seq_lt(self.rcv_nxt, syn.seq):
            return True
        ts_values = [o.ts_value for o in syn.options if isinstance(o, Timestamps)]
        return self.peer.timestamps and bool(ts_values) and seq_lt(self.peer.ts_recent, ts_values[0])

    def end_time_wait(self, now: float) -> None:
        """Leave TIME-WAIT early because a SYN that :meth:`may_reopen` accepted starts a new
        connection on this 4-tuple (Closed(REOPENED) tells the owner)."""
        if self.state is not TcpState.TIME_WAIT:
            raise LocalProtocolError(f"not in TIME-WAIT but {self.state.name}")
        self._now_s = now
        self._finish(now, CloseReason.REOPENED)

    @property
    def four_tuple(self) -> tuple[IpAddress, int, IpAddress, int]:
        return (self.local_addr, self.local_port, self.remote_addr, self.remote_port)

    @property
    def syn_data_acked_bytes(self) -> int:
        """SYN data (ours) that the SYN-ACK acknowledged; meaningful once past SYN-SENT."""
        if self.synack is None:
            return 0
        return max(0, min(self._syn_payload_bytes, seq_diff(self.synack.ack, self.iss) - 1))

    # --- timer ------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._now_s = now
        self._deadline = None
        if self.state is TcpState.TIME_WAIT:
            self._finish(now, CloseReason.TIME_WAIT_EXPIRED)
            return
        if self.state is TcpState.FIN_WAIT_2:
            self._time_out(now, "fin_wait_2")
            return
        self._retransmissions_in_row += 1
        self._back_off()
        self._rtt_probe = None  # Karn: no RTT sample from a retransmitted segment
        if self.state is TcpState.SYN_SENT:
            if self._syn_given_up(now, self._retransmissions_in_row - 1):
                self._time_out(now, "syn")
            else:
                self._send_syn(now, retransmission=self._retransmissions_in_row)
        elif self.state is TcpState.SYN_RECEIVED:
            if self._retransmissions_in_row > self.policy.synack_retries:
                self._time_out(now, "synack")
            else:
                self._send_synack(now, retransmission=self._retransmissions_in_row)
        elif self._retransmissions_in_row > self.policy.data_retries:
            self._time_out(now, "data")
        else:
            self._retransmit_head(now)

    def _syn_given_up(self, now: float, retransmissions: int) -> bool:
        """Whether the SYN attempt ends now (the rule is the policy's: :meth:`TcpPolicy.syn_given_up`)."""
        if retransmissions and self._syn_first_s is None:
            return retransmissions >= self.policy.syn_retries + self.policy.syn_linear_timeouts
        elapsed_s = 0.0 if self._syn_first_s is None else now - self._syn_first_s
        return self.policy.syn_given_up(retransmissions, elapsed_s)

    def retransmit_syn(self, now: float) -> None:
        """Retransmit the SYN now, as a timer expiry would (back-off, no RTT sample), for an owner
        that paces SYNs itself: a converter mirroring its client (RFC 8803 9.3)."""
        if self.state is not TcpState.SYN_SENT:
            raise LocalProtocolError(f"no SYN to retransmit in state {self.state.name}")
        self._now_s = now
        self._retransmissions_in_row += 1
        self._back_off()
        self._rtt_probe = None  # Karn
        self._send_syn(now, retransmission=self._retransmissions_in_row)

    def _back_off(self) -> None:
        """Double the RTO after a timeout, except for the SYN retransmissions Linux keeps linear."""
        linear = self.state is TcpState.SYN_SENT and self._retransmissions_in_row <= self.policy.syn_linear_timeouts
        if not linear:
            self._rto_s = min(self._rto_s * 2, self.policy.max_rto_s)

    def _handshake_done(self) -> None:
        """Enter ESTABLISHED; without an RTT sample (a SYN or SYN-ACK was retransmitted) the RTO
        starts at the RFC 6298 5.7 fallback rather than the initial 1 s."""
        self._move(TcpState.ESTABLISHED)
        self._retransmissions_in_row = 0
        self._rto_s = self._computed_rto() if self._srtt_s is not None else self.policy.unsampled_handshake_rto_s
        self._deadline = None

    def _time_out(self, now: float, what: str) -> None:
        self._events.append(TimedOut(what))
        self._finish(now, CloseReason.TIMED_OUT)

    def _arm(self, now: float, delay_s: float) -> None:
        self._deadline = now + delay_s

    # --- receiving --------------------------------------------------------------------------

    def receive(self, packet: IpPacket, now: float) -> None:
        """Process one segment addressed to this connection's 4-tuple."""
        seg = packet.segment
        self._now_s = now
        handler = _HANDLERS.get(self.state)
        if handler is not None:
            handler(self, seg, now)

    def _on_syn_sent(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        ack_ok = bool(flags & TcpFlags.ACK) and seq_lt(self.iss, seg.ack) and seq_le(seg.ack, self.snd_nxt)
        if flags & TcpFlags.ACK and not ack_ok:
            if not flags & TcpFlags.RST:
                self._send_rst(seg.ack)  # RFC 9293 3.10.7.3: an unacceptable ACK draws a RST
            return
        if flags & TcpFlags.RST:
            if ack_ok:
                self._events.append(ResetReceived(refused=True))
                self._finish(now, CloseReason.RESET_RECEIVED)
            return
        if not (flags & TcpFlags.SYN and ack_ok):
            return  # a bare SYN (simultaneous open) is not modelled; nothing else is acceptable
        self.synack = seg
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        self._learn_peer_options(seg)
        self.peer_window_bytes = seg.window
        self._sample_rtt(seg.ack, now)
        for ext in self.extensions:
            reason = ext.on_synack(self, seg)
            if reason is not None:
                self.snd_nxt = seg.ack
                self._send_rst(seg.ack)
                self._finish(now, CloseReason.ABORTED)
                return
        acked = self.syn_data_acked_bytes
        if not self.policy.resend_unacked_syn_data:
            del self._tx[acked: self._syn_payload_bytes]  # given up: the owner resends what it needs
        del self._tx[:acked]
        self.snd_una = self.snd_nxt = seg.ack
        self._handshake_done()
        self._events.append(Established(syn_data_acked_bytes=acked))
        if seg.payload:
            self.rcv_nxt = seq_add(self.rcv_nxt, len(seg.payload))
            self._deliver(seg.payload)
        for ext in self.extensions:
            ext.on_segment(self, seg)
        # Like Linux (tcp_send_syn_data), unACKed SYN data and queued data ride on the ACK of the
        # SYN-ACK; a pure ACK goes out only when there is nothing to send.
        if not self._transmit_new(now):
            self._send_ack()

    def _on_syn_received(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        if flags & TcpFlags.RST:
            if seq_in_window(seg.seq, self.rcv_nxt, self._rcv_wnd()) or seg.seq == self.rcv_nxt:
                self._events.append(ResetReceived(refused=False))
                self._finish(now, CloseReason.RESET_RECEIVED)
            return
        if flags & TcpFlags.SYN:
            if seg.seq == self.irs and not flags & TcpFlags.ACK:
                if self._synack_withheld:
                    self._events.append(SynRetransmissionReceived())
                else:
                    # The peer's SYN timer fired first: answer at once, like Linux (inet_rtx_syn_ack),
                    # as a retransmission (Karn: no RTT sample) that leaves our own timer alone.
                    deadline_s = self._deadline
                    self._send_synack(now, retransmission=self._retransmissions_in_row + 1)
                    self._deadline, self._rtt_probe = deadline_s, None
            return
        if not flags & TcpFlags.ACK or self._synack_withheld:
            return
        if not (seq_lt(self.snd_una, seg.ack) and seq_le(seg.ack, self.snd_nxt)):
            self._send_rst(seg.ack)
            return
        self._sample_rtt(seg.ack, now)
        self.snd_una = seq_add(self.iss, 1)  # only the SYN: SYN-ACK data is ACKed like any data below
        self._handshake_done()
        self._events.append(Established(syn_data_acked_bytes=0))
        if self._queued_syn_data:
            self._deliver(self._queued_syn_data)
            self._queued_syn_data = b""
        if self._fin_queued:
            self._move(TcpState.FIN_WAIT_1)  # close() came during the handshake: the FIN goes now
        self._on_synchronized(seg, now)

    def _on_synchronized(self, seg: TcpSegment, now: float) -> None:
        flags = int(seg.flags)  # plain int tests: TcpFlags' own operators are Python code
        if flags & _RST_BIT:
            self._on_rst(seg, now)
            return
        if flags & _SYN_BIT:
            # RFC 5961 4.2: a SYN on a synchronized connection draws a challenge ACK, never a
            # reset (in TIME-WAIT, Linux answers a SYN it does not accept the same way; the host
            # decides beforehand whether the SYN may reopen the pair).
            self._send_ack()
            return
        if not flags & _ACK_BIT:
            return
        if self.state is TcpState.TIME_WAIT:
            if flags & _FIN_BIT:
                self._send_ack()
                self._arm(now, self.policy.time_wait_s)
            return
        if seq_lt(self.snd_nxt, seg.ack):
            self._send_ack()  # ACKs something not yet sent (RFC 9293 3.10.7.4)
            return
        if seq_lt(self.snd_una, seg.ack):
            self._on_ack_advance(seg, now)
        if self.state not in SYNCHRONIZED:
            return
        # No SND.WL1/WL2 check: our receive window never shrinks, so a reordered old segment
        # cannot close the window it opened.
        self.peer_window_bytes = seg.window << (self.peer.window_shift or 0)
        self._note_timestamp(seg)
        for ext in self.extensions:
            if ext.on_segment(self, seg) is not None:
                self.abort(now)  # the extension refused the connection (MP_FASTCLOSE with our key)
                return
        self._on_payload_and_fin(seg, now)
        if self.state in _SENDS_DATA:
            self._transmit_new(now)
        elif self.state is TcpState.FIN_WAIT_2:
            self._arm_fin_wait_2(now)  # the timeout counts from the peer's last segment

    def _on_rst(self, seg: TcpSegment, now: float) -> None:
        if seg.seq == self.rcv_nxt:
            self._events.append(ResetReceived(refused=False))
            self._finish(now, CloseReason.RESET_RECEIVED)
        elif seq_in_window(seg.seq, self.rcv_nxt, self._rcv_wnd()):
            self._send_ack()  # RFC 5961 3.2: in window but not exact: challenge ACK

    def _on_ack_advance(self, seg: TcpSegment, now: float) -> None:
        acked = seq_diff(seg.ack, self.snd_una)
        fin_seq = self._fin_seq()
        data_acked = min(acked, len(self._tx))
        del self._tx[:data_acked]
        self.snd_una = seg.ack
        self._sample_rtt(seg.ack, now)
        self._retransmissions_in_row = 0
        self._rto_s = self._computed_rto()
        fin_acked = self._fin_queued and fin_seq is not None and seq_lt(fin_seq, seg.ack)
        if fin_acked:  # everything we sent is ACKed: the timer now guards the close, not data
            if self.state is TcpState.FIN_WAIT_1:
                self._move(TcpState.FIN_WAIT_2)
                self._arm_fin_wait_2(now)
            elif self.state is TcpState.CLOSING:
                self._enter_time_wait(now)
            elif self.state is TcpState.LAST_ACK:
                self._finish(now, CloseReason.LAST_ACK)
            return
        self._deadline = None if self.snd_una == self.snd_nxt else now + self._rto_s

    def _on_payload_and_fin(self, seg: TcpSegment, now: float) -> None:
        payload = seg.payload
        fin = int(seg.flags) & _FIN_BIT
        offset = seq_diff(self.rcv_nxt, seg.seq)
        if payload:
            if offset < 0:
                self._send_ack()  # out of order: dropped here, a duplicate ACK asks for the gap
                return
            fresh = payload[offset:]
            if fresh and self.state in (TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2):
                self.rcv_nxt = seq_add(self.rcv_nxt, len(fresh))
                self._deliver(fresh)
            if not fin:
                self._send_ack()
                return
        if fin:
            if seq_add(seg.seq, len(payload)) != self.rcv_nxt:
                self._send_ack()
                return
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            self._events.append(PeerClosed())
            self._send_ack()
            if self.state is TcpState.ESTABLISHED:
                self._move(TcpState.CLOSE_WAIT)
            elif self.state is TcpState.FIN_WAIT_1:
                self._move(TcpState.CLOSING)
            elif self.state is TcpState.FIN_WAIT_2:
                self._enter_time_wait(now)

    # --- sending ----------------------------------------------------------------------------

    def _base_options(self, syn: bool) -> tuple:
        p = self.policy
        if syn:
            active = self.state is TcpState.SYN_SENT
            return _syn_options(p, sack=active or self.peer.sack_permitted, timestamps=active or self.peer.timestamps,
                                window_scale=active or self.peer.window_shift is not None,
                                mss_bytes=mss_for(p, self.local_addr))
        return _TIMESTAMPED_OPTIONS if self.peer.timestamps and p.timestamps else ()

    def _stamp(self, options: tuple, now: float) -> tuple:
        ts_value = int(now * 1000) % (1 << 32)  # a 1 kHz timestamp clock, like Linux
        ts_recent = self.peer.ts_recent
        # Segments sent within one clock tick carry equal options: the last stamped tuple is
        # reused (option values are immutable), which spares the option objects and their checks.
        last = self._last_stamped
        if last is not None and last[0] is options and last[1] == ts_value and last[2] == ts_recent:
            return last[3]
        stamped = tuple([Timestamps(ts_value, ts_recent) if isinstance(o, Timestamps) else o for o in options])
        self._last_stamped = (options, ts_value, ts_recent, stamped)
        return stamped

    def _window_field(self, syn: int) -> int:
        shift = 0 if syn or self.peer.window_shift is None else (self.policy.window_scale_shift or 0)
        return min(self._rcv_wnd() >> shift, 0xFFFF)

    def _rcv_wnd(self) -> int:
        return self.policy.receive_window_bytes

    def _emit(self, seq: int, flags: TcpFlags, payload: bytes = b"", options: tuple = (), *,
              now: float | None = None, stamped: bool = False) -> None:
        now = self._now_s if now is None else now
        bits = int(flags)  # plain int tests: TcpFlags' own operators are Python code
        ack = self.rcv_nxt if bits & _ACK_BIT else 0
        # _window_field, inlined (once per segment sent).
        shift = 0 if bits & _SYN_BIT or self.peer.window_shift is None else (self.policy.window_scale_shift or 0)
        window = min(self._rcv_wnd() >> shift, 0xFFFF)
        # Built from the connection's own state, so without the constructors' field checks.
        segment = trusted_segment(self.local_port, self.remote_port, seq, ack, flags, window,
                                  self._stamp(options, now) if options and not stamped else options, payload)
        self._packets.append(trusted_packet(self.local_addr, self.remote_addr, segment))

    def _send_syn(self, now: float, retransmission: int) -> None:
        extra = tuple(o for ext in self.extensions for o in ext.syn_options(self, retransmission))
        options = _fit_options(self._base_options(syn=True), extra)
        with_data = retransmission == 0 or self.policy.retransmit_syn_data
        payload = bytes(self._tx[: self._syn_payload_bytes]) if with_data else b""
        # SND.NXT never moves back: a SYN-ACK may still ACK the data of the first SYN when a
        # data-less retransmission went out meanwhile (a slow path, not a lost SYN).
        end = seq_add(self.iss, 1 + len(payload))
        if seq_lt(self.snd_nxt, end):
            self.snd_nxt = self._snd_max = end
        self.syn_options_sent = options
        self._emit(self.iss, TcpFlags.SYN, payload, options, now=now)
        self.syns_sent += 1
        if retransmission:
            self.retransmissions += 1
        elif payload:
            self.bytes_sent += len(payload)
        if retransmission == 0:
            self._rtt_probe = (seq_add(self.iss, 1), now)
            if self._syn_first_s is None:
                self._syn_first_s = now  # Linux tcp_connect: retrans_stamp
        if self.policy.syn_retransmission_timer:
            self._arm(now, self._rto_s)

    def _send_synack(self, now: float, retransmission: int) -> None:
        assert self.syn is not None
        extra = tuple(o for ext in self.extensions for o in ext.synack_options(self, self.syn))
        options = _fit_options(self._base_options(syn=True), extra)
        payload = bytes(self._tx[: self._synack_payload_bytes])
        self._emit(self.iss, TcpFlags.SYN | TcpFlags.ACK, payload, options, now=now)
        if retransmission:
            self.retransmissions += 1
        else:
            self._rtt_probe = (seq_add(self.iss, 1), now)
        self._arm(now, self._rto_s)

    def _send_ack(self) -> None:
        self._emit_with_extensions(self.snd_nxt, TcpFlags.ACK)

    def _emit_with_extensions(self, seq: int, flags: TcpFlags, payload: bytes = b"", now: float | None = None) -> None:
        extensions = self.extensions
        if not extensions:
            self._emit(seq, flags, payload, self._base_options(syn=False), now=now)
            return
        if len(extensions) == 1:  # mostly MPTCP alone: its tuple as it is
            extra = extensions[0].options_for_segment(self, seq, flags, payload)
            if type(extra) is not tuple:
                extra = tuple(extra)
        else:
            extra = tuple(o for ext in extensions for o in ext.options_for_segment(self, seq, flags, payload))
        base = self._base_options(syn=False)
        if len(extra) == 1 and base is _TIMESTAMPED_OPTIONS and type(extra[0]) is not Timestamps:
            # The usual MPTCP segment: NOP, NOP, Timestamps and one DSS. When the DSS fits beside
            # them, _fit_options would keep base + extra, and _stamp would change only the
            # Timestamps of the base: stamp the shared base tuple (reused within a clock tick)
            # and append the DSS, rather than size and stamp a new tuple per segment.
            extra_bytes = options_length_bytes(extra)
            if _TIMESTAMPED_OPTIONS_BYTES + extra_bytes + -extra_bytes % 4 <= TCP_OPTION_SPACE_BYTES:
                stamped = self._stamp(base, self._now_s if now is None else now) + extra
                self._emit(seq, flags, payload, stamped, now=now, stamped=True)
                return
        self._emit(seq, flags, payload, _fit_options(base, extra), now=now)

    def _send_rst(self, seq: int) -> None:
        self._packets.append(trusted_packet(self.local_addr, self.remote_addr,
                                            trusted_segment(self.local_port, self.remote_port, seq, 0, TcpFlags.RST,
                                                            0, (), b"")))
        self.rsts_sent += 1

    def _effective_mss(self) -> int:
        """Payload bytes per segment: the smaller MSS less the options every segment carries
        (Linux sends 1448-byte segments with Timestamps on a 1500-byte path)."""
        base = self._base_options(syn=False)
        options_bytes = _TIMESTAMPED_OPTIONS_BYTES if base is _TIMESTAMPED_OPTIONS else option_space_bytes(base)
        return min(mss_for(self.policy, self.local_addr), self.peer.mss_bytes) - options_bytes

    def _fin_seq(self) -> int | None:
        """The sequence number of our FIN, once everything queued before it is known."""
        if not self._fin_queued:
            return None
        return seq_add(self.snd_una, len(self._tx))

    def _transmit_new(self, now: float) -> bool:
        """Send what the peer's window allows, then the FIN when everything else is out. Bytes
        below the highest sequence number sent so far (SYN data the SYN-ACK did not ACK) count
        as retransmissions. Returns whether anything was sent."""
        mss = 0  # worked out once there is something to send: mostly there is not (a pure ACK came)
        emitted = False
        # In SYN-RECEIVED (early data) our unACKed SYN still holds the first sequence number.
        syn_unacked = 1 if self.state is TcpState.SYN_RECEIVED else 0
        while True:
            sent = seq_diff(self.snd_nxt, self.snd_una) - syn_unacked
            unsent = len(self._tx) - sent
            room = self.peer_window_bytes - sent
            if unsent <= 0 or room <= 0:
                break
            if not mss:
                mss = self._effective_mss()
            size = min(mss, unsent, room)
            chunk = bytes(self._tx[sent: sent + size])
            last = size == unsent
            flags = _ACK_PSH if last else TcpFlags.ACK
            self._emit_with_extensions(self.snd_nxt, flags, chunk, now)
            emitted = True
            end = seq_add(self.snd_nxt, size)
            fresh_bytes = max(0, seq_diff(end, self._snd_max))
            if fresh_bytes < size:
                self.retransmissions += 1
            elif self._rtt_probe is None:  # Karn: time only first transmissions
                self._rtt_probe = (end, now)
            self.bytes_sent += fresh_bytes
            self.snd_nxt = end
            if seq_lt(self._snd_max, end):
                self._snd_max = end
        fin_seq = self._fin_seq()
        if fin_seq is not None and self.snd_nxt == fin_seq and self.state in _SENDS_FIN:
            self._emit_with_extensions(self.snd_nxt, TcpFlags.FIN | TcpFlags.ACK, now=now)
            emitted = True
            self.snd_nxt = self._snd_max = seq_add(self.snd_nxt, 1)
        if self.snd_nxt != self.snd_una and self._deadline is None:
            self._arm(now, self._rto_s)
        return emitted

    def _retransmit_head(self, now: float) -> None:
        """Go back to snd_una: resend one segment (or the FIN) and back off the timer."""
        self.retransmissions += 1
        # Only what was sent: bytes beyond SND.NXT (held back by the window) wait for _transmit_new.
        size = min(self._effective_mss(), len(self._tx), seq_diff(self.snd_nxt, self.snd_una))
        fin_seq = self._fin_seq()
        if size:
            flags = TcpFlags.ACK | TcpFlags.PSH
            self._emit_with_extensions(self.snd_una, flags, bytes(self._tx[:size]), now)
        elif fin_seq is not None and self.snd_nxt != self.snd_una:
            self._emit_with_extensions(fin_seq, TcpFlags.FIN | TcpFlags.ACK, now=now)
        self._arm(now, self._rto_s)

    # --- bookkeeping ------------------------------------------------------------------------

    def _learn_peer_options(self, seg: TcpSegment) -> None:
        for option in seg.options:
            if isinstance(option, MaximumSegmentSize):
                self.peer.mss_bytes = max(option.mss_bytes, _MIN_SND_MSS_BYTES)
            elif isinstance(option, WindowScale):
                self.peer.window_shift = min(option.shift_count, 14)  # RFC 7323 2.3
            elif isinstance(option, Timestamps):
                self.peer.timestamps = True
                self.peer.ts_recent = option.ts_value
            elif isinstance(option, SackPermitted):
                self.peer.sack_permitted = True
        if self.policy.window_scale_shift is None:
            self.peer.window_shift = None  # scaling needs both sides' option (RFC 7323 2.2)
        if not self.policy.timestamps:
            self.peer.timestamps = False

    def _deliver(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self._events.append(DataReceived(bytes(data)))

    def _sample_rtt(self, ack: int, now: float) -> None:
        if self._rtt_probe is None or seq_lt(ack, self._rtt_probe[0]):
            return
        sample_s = now - self._rtt_probe[1]
        self._rtt_probe = None
        if self._srtt_s is None:  # RFC 6298 2.2
            self._srtt_s, self._rttvar_s = sample_s, sample_s / 2
        else:  # RFC 6298 2.3
            self._rttvar_s = 0.75 * self._rttvar_s + 0.25 * abs(self._srtt_s - sample_s)
            self._srtt_s = 0.875 * self._srtt_s + 0.125 * sample_s

    def _computed_rto(self) -> float:
        if self._srtt_s is None:
            return self.policy.initial_rto_s
        return min(max(self._srtt_s + 4 * self._rttvar_s, self.policy.min_rto_s), self.policy.max_rto_s)

    @property
    def srtt_s(self) -> float | None:
        """The smoothed RTT (RFC 6298), None before the first sample."""
        return self._srtt_s

    @property
    def rto_s(self) -> float:
        """The current retransmission timeout, back-off included."""
        return self._rto_s

    @property
    def now_s(self) -> float:
        """The time of the latest input; extension hooks take no clock and read it here (TFO
        time-stamps a SYN loss with it)."""
        return self._now_s

    def _arm_fin_wait_2(self, now: float) -> None:
        timeout_s = self.policy.fin_wait_2_timeout_s
        self._deadline = None if timeout_s is None else now + timeout_s

    def _note_timestamp(self, seg: TcpSegment) -> None:
        """RFC 7323 4.3: remember the TSval of an in-sequence segment, to echo it back."""
        if self.peer.timestamps and seq_le(seg.seq, self.rcv_nxt):
            for option in seg.options:
                if isinstance(option, Timestamps) and seq_le(self.peer.ts_recent, option.ts_value):
                    self.peer.ts_recent = option.ts_value

    def _move(self, state: TcpState) -> None:
        if state not in TCP_TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal TCP transition {self.state.name} -> {state.name}")  # a bug, not input
        self.state = state

    def _enter_time_wait(self, now: float) -> None:
        self._move(TcpState.TIME_WAIT)
        self._arm(now, self.policy.time_wait_s)

    def _finish(self, now: float, reason: CloseReason) -> None:
        self._move(TcpState.CLOSED)
        self._deadline = None
        self._events.append(Closed(reason))


#: The legal state changes and what causes them (RFC 9293 Figure 5; LISTEN is the host's
#: listener, not a connection state here). ``TcpConnection._move`` enforces it, and the state
#: diagram in docs/state-diagrams.md is generated from it.
TCP_TRANSITIONS: dict[TcpState, dict[TcpState, str]] = {
    TcpState.CLOSED: {TcpState.SYN_SENT: "connect: send SYN", TcpState.SYN_RECEIVED: "SYN at a listener: send SYN-ACK"},
    TcpState.SYN_SENT: {TcpState.ESTABLISHED: "acceptable SYN-ACK: send ACK",
                        TcpState.CLOSED: "RST, ICMP unreachable, SYN retries exhausted, abort, or close"},
    # close() in SYN-RECEIVED queues the FIN: the ACK of our SYN moves to ESTABLISHED, then at
    # once to FIN-WAIT-1 (RFC 9293 Figure 5 draws that as one edge).
    TcpState.SYN_RECEIVED: {TcpState.ESTABLISHED: "ACK of our SYN",
                            TcpState.CLOSED: "RST, SYN-ACK retries exhausted, or abort"},
    TcpState.ESTABLISHED: {TcpState.FIN_WAIT_1: "close: send FIN", TcpState.CLOSE_WAIT: "FIN: ACK it",
                           TcpState.CLOSED: "RST, data retries exhausted, or abort"},
    # A segment with the peer's FIN and the ACK of ours passes through FIN-WAIT-2 (the ACK is
    # processed before the FIN, RFC 9293 3.10.7.4), so there is no direct edge to TIME-WAIT.
    TcpState.FIN_WAIT_1: {TcpState.FIN_WAIT_2: "ACK of our FIN", TcpState.CLOSING: "FIN: ACK it",
                          TcpState.CLOSED: "RST, retries, or abort"},
    TcpState.FIN_WAIT_2: {TcpState.TIME_WAIT: "FIN: ACK it",
                          TcpState.CLOSED: "RST, FIN-WAIT-2 timeout, or abort"},
    TcpState.CLOSE_WAIT: {TcpState.LAST_ACK: "close: send FIN", TcpState.CLOSED: "RST, retries, or abort"},
    TcpState.CLOSING: {TcpState.TIME_WAIT: "ACK of our FIN", TcpState.CLOSED: "RST, retries, or abort"},
    TcpState.LAST_ACK: {TcpState.CLOSED: "ACK of our FIN, RST, retries, or abort"},
    TcpState.TIME_WAIT: {TcpState.CLOSED: "2*MSL (policy time_wait_s) elapsed, or reopened by a new SYN"},
}


_HANDLERS = {
    TcpState.SYN_SENT: TcpConnection._on_syn_sent,
    TcpState.SYN_RECEIVED: TcpConnection._on_syn_received,
    **{state: TcpConnection._on_synchronized for state in SYNCHRONIZED},
}
