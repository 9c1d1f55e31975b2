"""The MP_JOIN handshake of one further subflow (RFC 8684 3.2) as Linux 6.x runs it, sans-I/O.

Two machines, one per side of the subflow (docs/protocols.md 3.2, docs/sim.md "Subflows joining"):

* :class:`JoinInitiator`, the host that opens the subflow (the client: Host A of RFC 8684
  figure 2): SYN + MP_JOIN with the listener's token and its random nonce R_A; on the SYN-ACK
  it checks the listener's truncated HMAC and answers with the third ACK carrying its own full
  HMAC; it may send data once the fourth ACK (an ACK with a DSS) arrives.
* :class:`JoinListener`, the host the subflow reaches (Host B): it checks the token of the
  SYN, answers SYN-ACK + MP_JOIN with its truncated HMAC and nonce R_B, checks the third ACK's
  HMAC, answers it with the fourth ACK and may send data from then on.

The values (RFC 8684 3.1, 3.2; :mod:`mpsim.wire.mptcp`): token = the most significant 32 bits of
SHA-256(key); the SYN-ACK's HMAC is the leftmost 64 bits of HMAC-SHA256(Key_B || Key_A,
R_B || R_A); the third ACK's the leftmost 160 bits of HMAC-SHA256(Key_A || Key_B, R_A || R_B).
Nonces come from the ``rng`` each machine is handed (nonzero, as Linux's
``__mptcp_subflow_connect`` draws the initiator's; the listener draws its own when the first
SYN arrives, ``subflow_req_create_thmac``, and keeps it for a retransmitted SYN).

Linux's choices, each followed here (net/mptcp/subflow.c, options.c, protocol.c, Linux 6.18):

* the initiator may send data only once the fourth ACK arrives (``__mptcp_subflow_active``: a
  ``request_join`` subflow is usable once ``fully_established``); the listener's subflow is
  fully established when the third ACK creates it (``subflow_syn_recv_sock``), so it may send
  from then on, and answers the third ACK at once with an ACK carrying a DSS
  (``check_fully_established``: the fourth ACK), and so every retransmitted third ACK too;
* the SYN goes again on the initiator's SYN timer (:meth:`TcpPolicy.syn_rto_s`, give-up
  :meth:`TcpPolicy.syn_given_up`); the third ACK goes again 2 SRTT (of the handshake's RTT)
  after it was sent without a fourth ACK (``schedule_3rdack_retransmission``), at most
  ``data_retries`` times, then the initiator resets; a SYN-ACK arriving after the third ACK
  (the answer to a retransmitted SYN) draws the third ACK again;
* failures (each ends the join; the owner's other subflows carry everything): a SYN-ACK
  without MP_JOIN (a box stripped it, or stripped the SYN's so a plain SYN reached the
  listener: ``subflow_finish_connect`` resets) or with a wrong HMAC (MPTcpExtJoinSynAckHMacFailure,
  reset), a fourth ACK without DSS (``check_fully_established``: reset), all at the initiator;
  a third ACK without MP_JOIN or with a wrong HMAC (``subflow_syn_recv_sock``,
  MPTcpExtJoinAckHMacFailure: reset), a SYN + MP_JOIN naming an unknown token
  (``subflow_token_join_request``, MPTcpExtJoinNoTokenFound: reset), at the listener; a RST
  from the other side; no SYN-ACK until the give-up (no RST then). A SYN whose MP_JOIN a box
  stripped reaches the listener as a plain SYN, which Linux's MPTCP listener accepts as a new
  plain TCP connection unrelated to this one: the listener answers it with a plain SYN-ACK
  (counted in ``plain_syns``) and lets the initiator's RST end it.

Simplified: the listener has no SYN-ACK timer of its own (a retransmitted SYN draws the
SYN-ACK again); the plain connection a stripped SYN opens is modelled no further than its
SYN-ACK; the address IDs are the owner's (the subflow's index); no backup flag.

Inputs: :meth:`JoinInitiator.start`, the ``receive_*`` methods (``option`` is the MP_JOIN the
segment carries, None when it carries none), :meth:`handle_timer` (at :meth:`get_timer`).
Outputs, pulled: :meth:`pull_segments` (:class:`JoinSegment`: what to send, the owner adds
headers, sequence numbers and windows), :meth:`pull_events` (:class:`SubflowFullyEstablished`,
:class:`JoinFailed`).
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from mpsim.proto.tcp import Rng, TcpPolicy
from mpsim.wire.mptcp import (
    JOIN_ACK_HMAC_BYTES,
    JOIN_SYN_ACK_HMAC_BYTES,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpTcpRst,
    MpTcpRstReason,
    join_hmac,
    key_token,
)

_KEY_BITS = 64


class JoinSegmentKind(enum.Enum):
    """The segments of the handshake (RFC 8684 figure 2), and the two that end one."""

    SYN = "syn"  # SYN + MP_JOIN (token, R_A)
    SYNACK = "synack"  # SYN-ACK + MP_JOIN (truncated HMAC_B, R_B)
    PLAIN_SYNACK = "plain_synack"  # the listener's answer to a SYN that lost its MP_JOIN
    THIRD_ACK = "third_ack"  # ACK + MP_JOIN (HMAC_A)
    FOURTH_ACK = "fourth_ack"  # ACK + DSS: the connection's Data ACK, which the owner fills in
    RST = "rst"  # RST + MP_TCPRST


@dataclass(frozen=True, slots=True)
class JoinSegment:
    """One segment a side sends: its kind and the MPTCP option it carries (None: a plain
    SYN-ACK, or the fourth ACK, whose DSS Data ACK is the connection's and the owner's)."""

    kind: JoinSegmentKind
    option: MpJoinSyn | MpJoinSynAck | MpJoinAck | MpTcpRst | None


@dataclass(frozen=True, slots=True)
class SubflowFullyEstablished:
    """This side may send data on the subflow from ``at_s``; ``rtt_s`` is the handshake's RTT
    sample it starts with (Linux ``tcp_ack_update_rtt`` on the SYN-ACK at the initiator,
    ``tcp_synack_rtt_meas`` on the third ACK at the listener)."""

    at_s: float
    rtt_s: float


@dataclass(frozen=True, slots=True)
class JoinFailed:
    """The join ended without a usable subflow; ``reset``: this side sent a RST."""

    at_s: float
    reason: str
    reset: bool


@dataclass(frozen=True, slots=True)
class JoinKeys:
    """The keys of the MPTCP connection being joined (RFC 8684 3.1: exchanged in MP_CAPABLE):
    ``initiator_key`` is Key_A, of the host opening the subflow; ``listener_key`` Key_B."""

    initiator_key: int
    listener_key: int

    def __post_init__(self) -> None:
        for name in ("initiator_key", "listener_key"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 1 << _KEY_BITS:
                raise ValueError(f"JoinKeys.{name} must be a 64-bit unsigned int, got {value!r}")

    def reversed(self) -> JoinKeys:
        return JoinKeys(self.listener_key, self.initiator_key)


def _nonce(rng: Rng) -> int:
    """A nonzero 32-bit random (Linux loops until ``local_nonce`` is nonzero)."""
    for _ in range(64):  # bounded: a zero draw has probability 2**-32
        value = rng.getrandbits(32)
        if value:
            return value
    raise ValueError("rng gave 64 zero nonces in a row; it is not random")


def _check_address_id(address_id: int) -> None:
    if type(address_id) is not int or not 0 <= address_id <= 0xFF:
        raise ValueError(f"address_id must be an int in 0..255, got {address_id!r}")


class _JoinOutputs:
    """What a join machine produced since it was last asked: segments to send and events."""

    def __init__(self) -> None:
        self._segments: list[JoinSegment] = []
        self._events: list[SubflowFullyEstablished | JoinFailed] = []

    def pull_segments(self) -> list[JoinSegment]:
        segments, self._segments = self._segments, []
        return segments

    def pull_events(self) -> list[SubflowFullyEstablished | JoinFailed]:
        events, self._events = self._events, []
        return events


class JoinInitiator(_JoinOutputs):
    """Host A's side of one MP_JOIN handshake (module doc). States: ``idle`` -> ``syn_sent`` ->
    ``pre_established`` -> ``joined``, or ``failed``."""

    def __init__(self, keys: JoinKeys, address_id: int, policy: TcpPolicy, rng: Rng) -> None:
        super().__init__()
        if not isinstance(keys, JoinKeys):
            raise ValueError(f"keys must be JoinKeys, got {keys!r}")
        if not isinstance(policy, TcpPolicy):
            raise ValueError(f"policy must be a TcpPolicy, got {policy!r}")
        _check_address_id(address_id)
        self.keys = keys
        self.address_id = address_id
        self.policy = policy
        self.nonce = _nonce(rng)  # R_A
        self.peer_nonce: int | None = None  # R_B, from the SYN-ACK
        self.state = "idle"
        self.failure = ""
        self.syn_times_s: list[float] = []
        self.synack_s: float | None = None
        self.fourth_ack_s: float | None = None
        self.handshake_rtt_s: float | None = None  # SYN -> SYN-ACK
        self.third_ack_retransmissions = 0
        self._timer_s: float | None = None

    # --- outputs (and pull_segments / pull_events, from _JoinOutputs) ------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due (the SYN or the third-ACK timer), or None."""
        return self._timer_s

    # --- inputs -------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The path manager opens the subflow: the first SYN + MP_JOIN."""
        if self.state != "idle":
            raise ValueError(f"join already started (state {self.state})")
        self.state = "syn_sent"
        self._send_syn(now)

    def handle_timer(self, now: float) -> None:
        if self._timer_s is None or now < self._timer_s:
            return
        self._timer_s = None
        if self.state == "syn_sent":
            retransmissions = len(self.syn_times_s) - 1
            if self.policy.syn_given_up(retransmissions, now - self.syn_times_s[0]):
                self._fail(now, f"no SYN-ACK to {len(self.syn_times_s)} SYNs", reset=False)
            else:
                self._send_syn(now)
        elif self.state == "pre_established":
            if self.third_ack_retransmissions >= self.policy.data_retries:
                self._fail(now, "no fourth ACK", reset=True)
            else:
                self.third_ack_retransmissions += 1
                self._send_third_ack(now)

    def receive_synack(self, option: MpJoinSynAck | None, now: float) -> None:
        """A SYN-ACK arrived; ``option``: its MP_JOIN, None if it carries none."""
        if self.state == "pre_established":
            self._send_third_ack(now)  # the answer to a retransmitted SYN: the third ACK again
            return
        if self.state != "syn_sent":
            return
        self._timer_s = None
        self.synack_s = now
        self.handshake_rtt_s = now - self.syn_times_s[-1]
        if option is None:
            self._fail(now, "SYN-ACK without MP_JOIN", reset=True)
            return
        expected = join_hmac(self.keys.listener_key, self.keys.initiator_key, option.sender_random,
                             self.nonce)[:JOIN_SYN_ACK_HMAC_BYTES]
        if not hmac.compare_digest(expected, option.sender_truncated_hmac):
            self._fail(now, "SYN-ACK with a wrong MP_JOIN HMAC", reset=True)
            return
        self.peer_nonce = option.sender_random
        self.state = "pre_established"
        self._send_third_ack(now)

    def receive_ack(self, has_dss: bool, now: float) -> None:
        """An ACK (the fourth) arrived; ``has_dss``: it carries a DSS."""
        if self.state != "pre_established":
            return
        self._timer_s = None
        self.fourth_ack_s = now
        if not has_dss:
            self._fail(now, "fourth ACK without DSS", reset=True)
            return
        self.state = "joined"
        assert self.handshake_rtt_s is not None  # set on the SYN-ACK that led here
        self._events.append(SubflowFullyEstablished(now, self.handshake_rtt_s))

    def receive_rst(self, now: float) -> None:
        if self.state in ("syn_sent", "pre_established", "joined"):
            self._fail(now, "reset by the listener", reset=False)

    def abort(self) -> None:
        """The owner ends the join (the other side failed it): nothing more is sent."""
        if self.state != "failed":
            self.state = "failed"
            self._timer_s = None

    # --- internals ----------------------------------------------------------------------------

    def _send_syn(self, now: float) -> None:
        self.syn_times_s.append(now)
        self._segments.append(JoinSegment(JoinSegmentKind.SYN, MpJoinSyn(
            self.address_id, key_token(self.keys.listener_key), self.nonce)))
        self._timer_s = now + self.policy.syn_rto_s(len(self.syn_times_s) - 1)

    def _send_third_ack(self, now: float) -> None:
        assert self.peer_nonce is not None and self.handshake_rtt_s is not None
        full = join_hmac(self.keys.initiator_key, self.keys.listener_key, self.nonce, self.peer_nonce)
        self._segments.append(JoinSegment(JoinSegmentKind.THIRD_ACK, MpJoinAck(full[:JOIN_ACK_HMAC_BYTES])))
        self._timer_s = now + 2 * self.handshake_rtt_s

    def _fail(self, now: float, reason: str, *, reset: bool) -> None:
        self.state = "failed"
        self.failure = reason
        self._timer_s = None
        if reset:
            self._segments.append(JoinSegment(JoinSegmentKind.RST, MpTcpRst(MpTcpRstReason.MIDDLEBOX_INTERFERENCE)))
        self._events.append(JoinFailed(now, reason, reset))


class JoinListener(_JoinOutputs):
    """Host B's side of one MP_JOIN handshake (module doc). States: ``listen`` ->
    ``synack_sent`` -> ``established``; ``plain`` (a SYN without MP_JOIN was answered as plain
    TCP); ``closed`` (reset)."""

    def __init__(self, keys: JoinKeys, address_id: int, rng: Rng) -> None:
        super().__init__()
        if not isinstance(keys, JoinKeys):
            raise ValueError(f"keys must be JoinKeys, got {keys!r}")
        _check_address_id(address_id)
        self.keys = keys
        self.address_id = address_id
        self._rng = rng
        self.token = key_token(keys.listener_key)  # what a SYN must name
        self.nonce: int | None = None  # R_B, drawn on the first SYN + MP_JOIN
        self.peer_nonce: int | None = None  # R_A
        self.state = "listen"
        self.failure = ""
        self.plain_syns = 0
        self.third_ack_s: float | None = None
        self.rtt_s: float | None = None  # SYN-ACK -> third ACK
        self._synack_sent_s = 0.0


    def receive_syn(self, option: MpJoinSyn | None, now: float) -> None:
        """A SYN arrived; ``option``: its MP_JOIN, None if it carries none."""
        if option is None:
            if self.state in ("listen", "plain"):
                self.state = "plain"
                self.plain_syns += 1
                self._segments.append(JoinSegment(JoinSegmentKind.PLAIN_SYNACK, None))
            return
        if self.state not in ("listen", "synack_sent"):
            return
        if option.receiver_token != self.token:
            self._reset(now, "MP_JOIN SYN with an unknown token")
            return
        if self.nonce is None:
            self.nonce = _nonce(self._rng)
        self.peer_nonce = option.sender_random
        self.state = "synack_sent"
        self._synack_sent_s = now
        truncated = join_hmac(self.keys.listener_key, self.keys.initiator_key, self.nonce,
                              option.sender_random)[:JOIN_SYN_ACK_HMAC_BYTES]
        self._segments.append(JoinSegment(JoinSegmentKind.SYNACK, MpJoinSynAck(self.address_id, truncated,
                                                                               self.nonce)))

    def receive_ack(self, option: MpJoinAck | None, now: float) -> None:
        """An ACK (the third, or its retransmission) arrived; ``option``: its MP_JOIN."""
        if self.state == "established":
            if option is not None:  # check_fully_established: answered with an ACK again
                self._segments.append(JoinSegment(JoinSegmentKind.FOURTH_ACK, None))
            return
        if self.state != "synack_sent":
            return
        if option is None:
            self._reset(now, "third ACK without MP_JOIN")
            return
        assert self.nonce is not None and self.peer_nonce is not None  # set with synack_sent
        expected = join_hmac(self.keys.initiator_key, self.keys.listener_key, self.peer_nonce,
                             self.nonce)[:JOIN_ACK_HMAC_BYTES]
        if not hmac.compare_digest(expected, option.sender_hmac):
            self._reset(now, "third ACK with a wrong MP_JOIN HMAC")
            return
        self.state = "established"
        self.third_ack_s = now
        self.rtt_s = now - self._synack_sent_s
        self._segments.append(JoinSegment(JoinSegmentKind.FOURTH_ACK, None))
        self._events.append(SubflowFullyEstablished(now, self.rtt_s))

    def receive_rst(self, now: float) -> None:
        was_established = self.state == "established"
        self.state = "closed"
        if was_established:
            self.failure = "reset by the initiator"
            self._events.append(JoinFailed(now, self.failure, False))

    def _reset(self, now: float, reason: str) -> None:
        self.state = "closed"
        self.failure = reason
        self._segments.append(JoinSegment(JoinSegmentKind.RST, MpTcpRst(MpTcpRstReason.MIDDLEBOX_INTERFERENCE)))
        self._events.append(JoinFailed(now, reason, True))
