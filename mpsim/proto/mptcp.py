"""MPTCP negotiation on one TCP connection (RFC 8684 v1, RFC 6824 v0), with Linux's fallback logic.

Two :class:`~mpsim.proto.tcp.TcpExtension` classes ride on the initial subflow (joins and extra
subflows are :mod:`mpsim.proto.join`'s; a DATA_FIN goes with the FIN only with
``data_fin_on_close``, which the simulation sets on connections that carry a transfer):

* :class:`MptcpClientExtension`, the active opener: MP_CAPABLE on the SYN, a plain SYN after
  ``syn_retrans_before_tcp_fallback`` unanswered MP_CAPABLE retransmissions, and the per-host
  blackhole back-off of Linux (:class:`MptcpBlackholeState`); the SYN-ACK check; both keys on the
  third ACK and on the first data segment (RFC 8684 3.1).
* :class:`MptcpServerExtension`, the passive opener: a v1 listener (as Linux) or a v0-only one.

Once the handshake is through, both run the same data phase (RFC 8684 3.3 and 3.7): a DSS mapping
on every data segment and a Data ACK on every segment. Data ACKed without a DSS Data ACK, or data
arriving without a mapping, means a middlebox strips options: the connection falls back (the
sending side announces it with one infinite mapping). A DSS checksum that does not match the
payload draws MP_FAIL; the peer answers with MP_FAIL and an infinite mapping. MP_FASTCLOSE with our
key resets the connection; with another key it is ignored.

Each extension's :class:`MptcpState` says where it is; ``negotiated`` and ``fallback_reason`` derive
from it, and FALLEN_BACK has no way out, so a connection is never both and never returns to MPTCP
(RFC 8684 3.7). Counters go to the host's MIB under Linux's MPTcpExt names (:class:`MptcpMib`).
Past-tense facts (:class:`~mpsim.proto.events.MptcpNegotiated`,
:class:`~mpsim.proto.events.FellBackToTcp`) wait in :meth:`pull_events` for the owner to emit.

Choices where the RFCs leave room or where the model simplifies:

* A SYN-ACK is valid with exactly the version we sent: a v1 SYN carries no key, so a v0 answer
  cannot complete a v0 handshake (Linux falls back too, packetdrill ``*_wrongver``). A v1 listener
  answers any SYN version >= 1 with v1 (RFC 8684 3.1) and ignores v0 SYNs, as Linux does.
* Checksums are used when either SYN asks (the A flag); nobody refuses them (Linux accepts them).
* Invalid MP_CAPABLE options (B set, no acceptable crypto bit, a wrong key echoed) count as absent
  (RFC 8684 3.7 item 4); the fallback reason still says what was wrong.
* Our mappings cover one segment each, with 64-bit DSNs and 64-bit Data ACKs; checksums are
  verified for mappings that cover exactly the segment's payload. SYN data in either direction is
  outside the data sequence space (RFC 8684 appendix B.2, Linux ``ssn_offset``).
* MP_FAIL: the side that detects the bad checksum falls back at once and repeats MP_FAIL on its
  segments until the answer (MP_FAIL or an infinite mapping) arrives; the infinite mapping and the
  answer ride on the next segment the other side sends (an extension cannot force one).
* MP_FASTCLOSE is sent once on an ACK (option A); its retransmission is not modelled.
* Linux 6.18 puts the client's keys only on the segment that starts where its last SYN ended
  (``MptcpPolicy.mp_capable_ack = "linux"``, the default): after a data-less SYN retransmission
  answered by a SYN-ACK that acknowledged the first SYN's data, no segment does, and both ends
  fall back; ``"rfc8684"`` sends them on the third ACK (docs/kernel-departures.md 7).

The v0 retry (``MptcpPolicy.retry_with_v0``): a v0-only listener answers a keyless v1 SYN without
MP_CAPABLE, which looks exactly like stripping. With the knob set, the client resets that
connection instead of continuing as TCP (``on_synack`` aborts it) and sets ``retry_policy``; the
scheme layer then opens a new connection (a new source port) with
``MptcpClientExtension(..., policy=ext.retry_policy)``, whose SYN carries a v0 MP_CAPABLE with
the key. Only if that one negotiates v0 can the first failure be labelled
``FallbackReason.MPTCP_VERSION_UNSUPPORTED``.
"""

from __future__ import annotations

import enum
import struct
from collections import Counter
from dataclasses import dataclass, replace

from mpsim.proto.errors import LocalProtocolError
from mpsim.proto.events import FallbackReason, FellBackToTcp, MptcpNegotiated
from mpsim.proto.seqnum import seq_diff, seq_lt
from mpsim.proto.tcp import Rng, TcpConnection, TcpExtension
from mpsim.wire.mptcp import (
    Dss,
    MpCapable,
    MpCapableFlags,
    MpCapableForm,
    MpFail,
    MpFastclose,
    key_idsn,
    key_token,
)
from mpsim.wire.segment import TcpFlags, TcpSegment, internet_checksum

_FIN_FLAG = int(TcpFlags.FIN)

_DSN_MODULUS = 1 << 64
_SSN_MODULUS = 1 << 32
_F = MpCapableFlags
# Crypto negotiation bits: D..H in v1 (C became "no subflows to this address"), C..H in v0.
_CRYPTO_BITS = {1: _F.D | _F.E | _F.F | _F.G | _F.H, 0: _F.C | _F.D | _F.E | _F.F | _F.G | _F.H}


class MptcpMib(enum.StrEnum):
    """The Linux MPTcpExt counters (net/mptcp/mib.c) the extensions increment in ``host.mib``."""

    MPCapableSYNTX = "MPCapableSYNTX"  # a connection sent SYN+MP_CAPABLE (once per connection)
    MPCapableSYNRX = "MPCapableSYNRX"  # a valid SYN+MP_CAPABLE arrived
    MPCapableSYNACKRX = "MPCapableSYNACKRX"
    MPCapableACKRX = "MPCapableACKRX"  # the third ACK (or first data) carried MP_CAPABLE
    MPCapableFallbackSYNACK = "MPCapableFallbackSYNACK"
    MPCapableFallbackACK = "MPCapableFallbackACK"
    MPCapableSYNTXDrop = "MPCapableSYNTXDrop"  # MP_CAPABLE dropped from a SYN retransmission
    MPCapableSYNTXDisabled = "MPCapableSYNTXDisabled"  # the blackhole back-off said plain TCP
    MPCapableDataFallback = "MPCapableDataFallback"  # data without DSS (either direction)
    Blackhole = "Blackhole"
    InfiniteMapTx = "InfiniteMapTx"
    InfiniteMapRx = "InfiniteMapRx"
    DataCsumErr = "DataCsumErr"
    MPFailTx = "MPFailTx"
    MPFailRx = "MPFailRx"
    MPFastcloseTx = "MPFastcloseTx"
    MPFastcloseRx = "MPFastcloseRx"


#: MptcpPolicy.mp_capable_ack's values: Linux's form (the default) and the RFC's.
MP_CAPABLE_ACK_FORMS = ("linux", "rfc8684")


@dataclass(frozen=True, slots=True)
class MptcpPolicy:
    """MPTCP knobs; defaults follow Linux (docs/protocols.md 6.1 and 6.2)."""

    version: int = 1  # 1: RFC 8684; 0: RFC 6824, for v0-only peers
    checksums: bool = False  # the A flag (net.mptcp.checksum_enabled)
    # MP_CAPABLE SYN retransmissions before the next SYN goes out plain; None: never drop MP_CAPABLE
    # (Linux: values >= 128)
    syn_retrans_before_tcp_fallback: int | None = 2
    blackhole_timeout_s: float = 3600.0  # net.mptcp.blackhole_timeout; 0 disables the back-off
    blackhole_max_exponent: int = 6  # the back-off doubles up to 2**6 times the timeout
    retry_with_v0: bool = False  # a v1 SYN answered without MP_CAPABLE: retry with v0 (Linux: no)
    # True: a successful MPTCP connection over a non-loopback path resets the back-off (the intent,
    # and kernels after the Sep 2025 fix); False: only one over loopback does (v6.12 as merged,
    # so real successes never reset it).
    blackhole_reset_on_success: bool = True
    # Where the client puts both keys after its SYN data went out again without data
    # (docs/kernel-departures.md 7). "linux" (Linux 6.18 net/mptcp/options.c: MP_CAPABLE only on
    # the segment starting where the last SYN written ended, mptcp_syn_options'
    # snd_isn; after a data-less retransmission whose SYN-ACK acknowledged the first SYN's data
    # no segment starts there, so the keys never go and both ends fall back on the first data);
    # "rfc8684": on the third ACK and the first data whatever SYN went last (RFC 8684 3.1).
    mp_capable_ack: str = "linux"

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise ValueError(f"MPTCP version must be 0 or 1, got {self.version!r}")
        if self.mp_capable_ack not in MP_CAPABLE_ACK_FORMS:
            raise ValueError(f"mp_capable_ack must be one of {', '.join(MP_CAPABLE_ACK_FORMS)}, "
                             f"got {self.mp_capable_ack!r}")
        if self.syn_retrans_before_tcp_fallback is not None and self.syn_retrans_before_tcp_fallback < 0:
            raise ValueError("syn_retrans_before_tcp_fallback must be >= 0 or None")
        if self.blackhole_timeout_s < 0 or self.blackhole_max_exponent < 0:
            raise ValueError("blackhole_timeout_s and blackhole_max_exponent must be >= 0")


class MptcpBlackholeState:
    """Linux's per-host "active MPTCP disabled" state (net/mptcp/ctrl.c), shared by the client
    connections of one host: after ``times`` blackholes, the last at ``stamp_s``, active MPTCP is
    off until ``stamp_s + blackhole_timeout_s * 2**min(times - 1, blackhole_max_exponent)``."""

    def __init__(self, policy: MptcpPolicy | None = None) -> None:
        self.policy = policy or MptcpPolicy()
        self.times = 0
        self.stamp_s: float | None = None

    def disabled_until_s(self) -> float | None:
        """When the current back-off ends, or None when there is none."""
        if not self.policy.blackhole_timeout_s or not self.times or self.stamp_s is None:
            return None
        multiplier = 1 << min(self.times - 1, self.policy.blackhole_max_exponent)
        return self.stamp_s + multiplier * self.policy.blackhole_timeout_s

    def should_disable(self, now: float) -> bool:
        """Whether a connection opened at ``now`` must go out as plain TCP."""
        until_s = self.disabled_until_s()
        return until_s is not None and now < until_s

    def record_blackhole(self, now: float) -> None:
        """A plain SYN got through after MP_CAPABLE SYNs did not (mptcp_active_disable)."""
        self.times += 1
        self.stamp_s = now

    def record_success(self, *, loopback: bool = False) -> None:
        """An active MPTCP connection was established (mptcp_active_enable)."""
        if loopback != self.policy.blackhole_reset_on_success:
            self.times = 0


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """The next numbers of a connection's two byte streams (:meth:`stream_position`): the DSN of
    the next byte it sends and of the next it expects, and the relative subflow sequence numbers
    (SSN, RFC 8684 3.3) of its next byte and the peer's."""

    local_dsn: int
    peer_dsn: int
    local_ssn: int
    peer_ssn: int


class MptcpState(enum.Enum):
    """Where an extension is; the RFC 8684 fallback rules are the edges of :data:`TRANSITIONS`."""

    EXPECT_SYN = "expect_syn"  # passive: nothing received yet
    EXPECT_SYNACK = "expect_synack"  # active: SYN with MP_CAPABLE sent
    EXPECT_ACK = "expect_ack"  # passive: SYN-ACK with MP_CAPABLE sent, the third ACK decides
    NEGOTIATED = "negotiated"
    PLAIN = "plain"  # passive: the SYN did not ask for MPTCP
    FALLEN_BACK = "fallen_back"


TRANSITIONS: dict[MptcpState, frozenset[MptcpState]] = {
    MptcpState.EXPECT_SYN: frozenset({MptcpState.PLAIN, MptcpState.EXPECT_ACK, MptcpState.FALLEN_BACK}),
    MptcpState.EXPECT_SYNACK: frozenset({MptcpState.NEGOTIATED, MptcpState.FALLEN_BACK}),
    MptcpState.EXPECT_ACK: frozenset({MptcpState.NEGOTIATED, MptcpState.FALLEN_BACK}),
    MptcpState.NEGOTIATED: frozenset({MptcpState.FALLEN_BACK}),
    MptcpState.PLAIN: frozenset(),
    MptcpState.FALLEN_BACK: frozenset(),  # RFC 8684 3.7: the connection never returns to MPTCP
}


def dss_checksum(dsn: int, ssn: int, data_level_length_bytes: int, payload: bytes) -> int:
    """The DSS checksum (RFC 8684 3.3.1): the Internet checksum over a pseudo-header (the 64-bit
    DSN, the 32-bit relative subflow sequence number, the data-level length, 16 zero bits) and the
    data the mapping covers."""
    header = struct.pack("!QIHH", dsn % _DSN_MODULUS, ssn % _SSN_MODULUS, data_level_length_bytes, 0)
    return internet_checksum(header + payload)


def _find(segment: TcpSegment, option_type: type):
    return next((o for o in segment.options if isinstance(o, option_type)), None)


def _widen(value: int, is_64_bit: bool, expected: int) -> int:
    """A 32-bit DSN or Data ACK as the 64-bit value nearest ``expected`` (RFC 8684 3.3.1)."""
    if is_64_bit:
        return value
    delta = (value - expected) % _SSN_MODULUS
    if delta >= _SSN_MODULUS // 2:
        delta -= _SSN_MODULUS
    return (expected + delta) % _DSN_MODULUS


def _flags_valid(flags: MpCapableFlags, version: int, *, exact: bool) -> bool:
    """B must be 0; the initiator lists acceptable crypto bits (H must be one), the responder and
    the third ACK carry exactly one, H (RFC 8684 3.1; H is HMAC-SHA1 in v0)."""
    crypto = flags & _CRYPTO_BITS[min(version, 1)]
    return not flags & _F.B and (crypto == _F.H if exact else bool(crypto & _F.H))


class _MptcpExtension(TcpExtension):
    """The state, counters and data phase the client and the server share."""

    def __init__(self, *, rng: Rng, mib: Counter, policy: MptcpPolicy | None, state: MptcpState) -> None:
        self.policy = policy or MptcpPolicy()
        self.mib = mib
        self._rng = rng
        self.state = state
        self.fallback_reason: FallbackReason | None = None
        self.version = self.policy.version
        self.checksums = self.policy.checksums  # the negotiated value once NEGOTIATED
        self.local_key: int | None = None
        self.peer_key: int | None = None
        self.fastclose_received = False
        self._events: list[MptcpNegotiated | FellBackToTcp] = []
        # Data phase. SYN data (ours, peer's) sits before the data sequence space.
        self._local_ssn_offset_bytes = 0
        self._peer_ssn_offset_bytes = 0
        # Data a simulated transfer carried on other subflows (carry_data): the DSN of a byte on
        # this subflow is then IDSN + SSN + the shift.
        self._local_dsn_shift_bytes = 0
        self._peer_dsn_shift_bytes = 0
        #: Send a DATA_FIN with our FIN (RFC 8684 3.3.3); set for a connection that carries a
        #: simulated transfer (docs/sim.md "Routes"); other connections close with FIN alone.
        self.data_fin_on_close = False
        self._peer_data_fin = False  # the peer's DATA_FIN arrived: it takes one DSN, our Data ACK covers it
        self._peer_dss_seen = False  # a DSS arrived: the peer has our key (handshake confirmed)
        self._mapping_seen = False  # a mapping arrived: the peer's options reach us on data
        self._data_ack_seen = False  # a Data ACK covered our data: our options reach the peer
        self._first_data_seq: int | None = None
        self._peer_data_ack: int | None = None  # the latest Data ACK from the peer (64-bit)
        self._infinite_mapping_pending = False
        self._mp_fail_dsn: int | None = None  # MP_FAIL to put on our next segment(s)
        self._awaiting_fail_response = False  # we detected the bad checksum; the peer must answer
        self._fastclose_pending = False
        # (key, version) -> IDSN: a SHA-256 (v0 SHA-1) per key, asked on every data segment; keys
        # and the version change only during the handshake, so this holds at most a few entries.
        self._idsn_by_key: dict[tuple[int, int], int] = {}

    def _idsn(self, key: int) -> int:
        found = self._idsn_by_key.get((key, self.version))
        if found is None:
            found = self._idsn_by_key[(key, self.version)] = key_idsn(key, self.version)
        return found

    # --- reporting ----------------------------------------------------------------------------

    @property
    def negotiated(self) -> bool:
        """MPTCP is in use on this connection right now."""
        return self.state is MptcpState.NEGOTIATED

    @property
    def local_token(self) -> int | None:
        return None if self.local_key is None else key_token(self.local_key, self.version)

    @property
    def peer_token(self) -> int | None:
        return None if self.peer_key is None else key_token(self.peer_key, self.version)

    @property
    def local_idsn(self) -> int | None:
        return None if self.local_key is None else self._idsn(self.local_key)

    @property
    def peer_idsn(self) -> int | None:
        return None if self.peer_key is None else self._idsn(self.peer_key)

    # Where the keys are known (MPTCP negotiated): the IDSNs as ints, which the compiled build
    # (docs/sim.md "Performance") needs its arithmetic to be typed as.
    @property
    def _negotiated_local_idsn(self) -> int:
        if self.local_key is None:
            raise RuntimeError("MPTCP negotiated without a local key")  # a bug, not input
        return self._idsn(self.local_key)

    @property
    def _negotiated_peer_idsn(self) -> int:
        if self.peer_key is None:
            raise RuntimeError("MPTCP negotiated without a peer key")  # a bug, not input
        return self._idsn(self.peer_key)

    def stream_position(self, conn: TcpConnection) -> StreamPosition | None:
        """Where the connection's data-level and subflow numbers stand now, for whoever continues
        the connection's streams (a simulated transfer's captures, docs/sim.md "Routes"), or None
        without both keys. Counted as this extension's own mappings count them: SYN data outside
        the data sequence space, a FIN without DATA_FIN takes a subflow number and no DSN, and
        what :meth:`carry_data` counted on other subflows is in the DSNs."""
        if self.local_key is None or self.peer_key is None:
            return None
        local_dsn = (self._idsn(self.local_key) + 1 + conn.bytes_sent - self._local_ssn_offset_bytes
                     + self._local_dsn_shift_bytes) % _DSN_MODULUS
        peer_dsn = (self._idsn(self.peer_key) + 1 + conn.bytes_received - self._peer_ssn_offset_bytes
                    + self._peer_dsn_shift_bytes) % _DSN_MODULUS
        return StreamPosition(local_dsn, peer_dsn,
                              (seq_diff(conn.snd_nxt, conn.iss) - self._local_ssn_offset_bytes) % _SSN_MODULUS,
                              (seq_diff(conn.rcv_nxt, conn.irs) - self._peer_ssn_offset_bytes) % _SSN_MODULUS)

    def carry_data(self, sent_subflow_bytes: int, sent_data_bytes: int, received_subflow_bytes: int,
                   received_data_bytes: int) -> None:
        """A simulated transfer moved ``sent_data_bytes`` of our data-level stream and
        ``sent_subflow_bytes`` of subflow sequence space on this connection's subflow (the rest
        on joined subflows; more than the data level when data went again on it, reinjected),
        and received likewise (docs/sim.md "Routes"); with :meth:`TcpConnection.carry_stream`
        for the subflow's own numbers, the DSNs and Data ACKs this connection sends next
        continue after them (its DATA_FIN included)."""
        if min(sent_subflow_bytes, sent_data_bytes, received_subflow_bytes, received_data_bytes) < 0:
            raise ValueError("carry_data needs byte counts >= 0")
        self._local_dsn_shift_bytes += sent_data_bytes - sent_subflow_bytes
        self._peer_dsn_shift_bytes += received_data_bytes - received_subflow_bytes

    def pull_events(self) -> list[MptcpNegotiated | FellBackToTcp]:
        """The facts since the last call, for the owner to pass on with ``host.emit``."""
        events, self._events = self._events, []
        return events

    # --- commands -----------------------------------------------------------------------------

    def send_fastclose(self, conn: TcpConnection, now: float) -> None:
        """Close the whole MPTCP connection abruptly (RFC 8684 3.5, option A): an ACK carrying the
        peer's key; the peer answers with RST. The caller flushes with ``host.collect(conn, now)``."""
        if not self.negotiated:
            raise LocalProtocolError(f"MP_FASTCLOSE needs an MPTCP connection, this one is {self.state.value}")
        self._fastclose_pending = True
        self._count(MptcpMib.MPFastcloseTx)
        conn.send_ack(now)

    # --- transitions --------------------------------------------------------------------------

    def _move(self, state: MptcpState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"illegal MPTCP transition {self.state.value} -> {state.value}")  # a bug
        self.state = state

    def _negotiate(self, conn: TcpConnection) -> None:
        self._move(MptcpState.NEGOTIATED)
        self._events.append(MptcpNegotiated(conn.four_tuple, self.version, self.checksums))

    def _fall_back(self, conn: TcpConnection, reason: FallbackReason, counter: MptcpMib | None = None) -> None:
        self._move(MptcpState.FALLEN_BACK)
        self.fallback_reason = reason
        self._events.append(FellBackToTcp(conn.four_tuple, reason))
        if counter is not None:
            self._count(counter)

    def _count(self, counter: MptcpMib) -> None:
        self.mib[counter] += 1

    def _mpc_flags(self) -> MpCapableFlags:
        return _F.H | (_F.A if self.checksums else 0)

    # --- sending ------------------------------------------------------------------------------

    def options_for_segment(self, conn: TcpConnection, seq: int, flags: TcpFlags, payload: bytes) -> tuple:
        if self._fastclose_pending:
            return (MpFastclose(self.peer_key),)  # type: ignore[arg-type]  # set when fastclose was asked for
        if self.state is MptcpState.FALLEN_BACK:
            return self._fallback_signals()
        if self.state is not MptcpState.NEGOTIATED:
            return ()
        if payload and self._first_data_seq is None:
            self._first_data_seq = seq
        ssn = seq_diff(seq, conn.iss) - self._local_ssn_offset_bytes
        handshake = self._handshake_options(ssn, payload)
        if handshake is not None:
            return handshake
        data_ack = self._data_ack_to_send(conn)
        # the SYN is DSN idsn, so ssn 1 is idsn + 1
        dsn = (self._negotiated_local_idsn + ssn + self._local_dsn_shift_bytes) % _DSN_MODULUS
        if not payload and int(flags) & _FIN_FLAG and self.data_fin_on_close:
            # RFC 8684 3.3.3: a DATA_FIN on a segment without data maps subflow sequence number 0
            # and data-level length 1, its DSN the DATA_FIN's own (the next after our last byte).
            checksum = dss_checksum(dsn, 0, 1, b"") if self.checksums else None
            return (Dss(data_ack=data_ack, dsn=dsn, ssn=0, data_level_length_bytes=1, checksum=checksum,
                        data_ack_64_bit=True, dsn_64_bit=True, data_fin=True),)
        if not payload:
            return (Dss(data_ack=data_ack, data_ack_64_bit=True),)
        checksum = dss_checksum(dsn, ssn, len(payload), payload) if self.checksums else None
        # Built once with every field (not a bare Data ACK then dataclasses.replace): a data segment's DSS.
        return (Dss(data_ack=data_ack, dsn=dsn, ssn=ssn % _SSN_MODULUS, data_level_length_bytes=len(payload),
                    checksum=checksum, data_ack_64_bit=True, dsn_64_bit=True),)

    def _handshake_options(self, ssn: int, payload: bytes) -> tuple | None:
        """MP_CAPABLE forms that replace the DSS until the handshake is confirmed (client only)."""
        return None

    def _data_ack_to_send(self, conn: TcpConnection) -> int:
        # Every byte delivered in order was mapped (or we would have fallen back).
        return (self._negotiated_peer_idsn + 1 + conn.bytes_received - self._peer_ssn_offset_bytes
                + self._peer_dsn_shift_bytes + (1 if self._peer_data_fin else 0)) % _DSN_MODULUS

    def _fallback_signals(self) -> tuple:
        """The only MPTCP options a fallen-back connection sends: MP_FAIL, one infinite mapping."""
        options: list = []
        if self._mp_fail_dsn is not None:
            options.append(MpFail(self._mp_fail_dsn))
            self._count(MptcpMib.MPFailTx)
            if not self._awaiting_fail_response:
                self._mp_fail_dsn = None  # our answer goes once; a detector repeats until answered
        if self._infinite_mapping_pending:
            self._infinite_mapping_pending = False
            # Retroactive from the latest point the peer DATA_ACKed (RFC 8684 3.7).
            dsn = self._peer_data_ack if self._peer_data_ack is not None else (self._negotiated_local_idsn + 1) % _DSN_MODULUS
            ssn = (dsn - self._negotiated_local_idsn) % _SSN_MODULUS
            options.append(Dss(dsn=dsn, ssn=ssn, data_level_length_bytes=0, dsn_64_bit=True,
                               checksum=0 if self.checksums else None))
            self._count(MptcpMib.InfiniteMapTx)
        return tuple(options)

    # --- receiving ----------------------------------------------------------------------------

    def on_segment(self, conn: TcpConnection, segment: TcpSegment) -> str | None:
        if segment.flags & TcpFlags.SYN:
            return None  # the handshake hooks saw it
        if self.state is MptcpState.NEGOTIATED:
            return self._on_mptcp_segment(conn, segment)
        if self.state is MptcpState.FALLEN_BACK and self._awaiting_fail_response:
            self._on_fail_response(segment)
        return None

    def _on_mptcp_segment(self, conn: TcpConnection, seg: TcpSegment) -> str | None:
        # The first option of each type, found in one pass (every segment of a connection comes here).
        fastclose = dss = fail = mpc = None
        for option in seg.options:
            if isinstance(option, Dss):
                dss = option if dss is None else dss
            elif isinstance(option, MpCapable):
                mpc = option if mpc is None else mpc
            elif isinstance(option, MpFastclose):
                fastclose = option if fastclose is None else fastclose
            elif isinstance(option, MpFail):
                fail = option if fail is None else fail
        if fastclose is not None and fastclose.receiver_key == self.local_key:
            self._count(MptcpMib.MPFastcloseRx)
            self.fastclose_received = True
            return "mp_fastclose"  # the connection resets (a wrong key is ignored, RFC 8684 3.5)
        if dss is not None:
            self._peer_dss_seen = True
            if dss.data_fin:
                self._peer_data_fin = True
        if fail is not None:
            # The peer's checksum check failed on our data: answer with MP_FAIL and an infinite
            # mapping, and both sides revert to TCP (RFC 8684 3.7).
            self._count(MptcpMib.MPFailRx)
            self._mp_fail_dsn = self._peer_dsn_expected(conn)
            self._infinite_mapping_pending = True
            self._fall_back(conn, FallbackReason.CHECKSUM_FAILURE)
            return None
        self._on_mapping(conn, seg, dss, mpc)
        if self.negotiated:
            self._on_data_ack(conn, seg, dss)
        return None

    def _peer_dsn_expected(self, conn: TcpConnection, seq: int | None = None) -> int:
        """The data sequence number of the peer's byte at ``seq`` (default: the next one)."""
        ssn = seq_diff(conn.rcv_nxt if seq is None else seq, conn.irs) - self._peer_ssn_offset_bytes
        return (self._negotiated_peer_idsn + ssn + self._peer_dsn_shift_bytes) % _DSN_MODULUS

    def _peer_mapping(self, conn: TcpConnection, seg: TcpSegment, dss: Dss | None,
                      mpc: MpCapable | None) -> tuple | None:
        """(dsn, ssn, data-level length, checksum) of the mapping the segment carries, if any
        (``dss`` and ``mpc``: the segment's first DSS and MP_CAPABLE)."""
        if dss is not None and dss.dsn is not None:
            dsn = _widen(dss.dsn, dss.dsn_64_bit, self._peer_dsn_expected(conn, seg.seq))
            return dsn, dss.ssn, dss.data_level_length_bytes, dss.checksum
        if mpc is not None and mpc.data_level_length_bytes is not None:  # the first data, RFC 8684 3.1
            return (self._negotiated_peer_idsn + 1) % _DSN_MODULUS, 1, mpc.data_level_length_bytes, mpc.checksum
        return None

    def _on_mapping(self, conn: TcpConnection, seg: TcpSegment, dss: Dss | None, mpc: MpCapable | None) -> None:
        mapping = self._peer_mapping(conn, seg, dss, mpc)
        if mapping is None:
            if seg.payload and not self._mapping_seen:
                # The first data came without DSS: options are stripped on data (Linux fallback).
                self._fall_back(conn, FallbackReason.DSS_MISSING, MptcpMib.MPCapableDataFallback)
            return
        dsn, ssn, length_bytes, checksum = mapping
        if length_bytes == 0:
            self._count(MptcpMib.InfiniteMapRx)
            self._fall_back(conn, FallbackReason.DSS_MISSING)
            return
        self._mapping_seen = True
        if self.checksums and seg.payload and length_bytes == len(seg.payload):
            if checksum is None or checksum != dss_checksum(dsn, ssn, length_bytes, seg.payload):
                # Single subflow: MP_FAIL on the ACK, and TCP from here (RFC 8684 3.7).
                self._count(MptcpMib.DataCsumErr)
                self._mp_fail_dsn = dsn
                self._awaiting_fail_response = True
                self._fall_back(conn, FallbackReason.CHECKSUM_FAILURE)

    def _on_data_ack(self, conn: TcpConnection, seg: TcpSegment, dss: Dss | None) -> None:
        acks_our_data = self._first_data_seq is not None and seq_lt(self._first_data_seq, seg.ack)
        if dss is not None and dss.data_ack is not None:
            expected = (self._negotiated_local_idsn + seq_diff(seg.ack, conn.iss) - self._local_ssn_offset_bytes
                        + self._local_dsn_shift_bytes) % _DSN_MODULUS
            self._peer_data_ack = _widen(dss.data_ack, dss.data_ack_64_bit, expected)
            self._data_ack_seen = self._data_ack_seen or acks_our_data
        elif acks_our_data and not self._data_ack_seen:
            # Data ACKed without a Data ACK: this path strips options (RFC 8684 3.7), so one last
            # DSS with an infinite mapping, then no MPTCP options.
            self._infinite_mapping_pending = True
            self._fall_back(conn, FallbackReason.DSS_MISSING, MptcpMib.MPCapableDataFallback)

    def _on_fail_response(self, seg: TcpSegment) -> None:
        dss = _find(seg, Dss)
        answered = False
        if _find(seg, MpFail) is not None:
            self._count(MptcpMib.MPFailRx)
            answered = True
        if dss is not None and dss.is_infinite_mapping:
            self._count(MptcpMib.InfiniteMapRx)
            answered = True
        if answered:
            self._awaiting_fail_response = False
            self._mp_fail_dsn = None


class MptcpClientExtension(_MptcpExtension):
    """MPTCP for an active opener; one instance per connection, created just before ``host.open``.

    ``blackhole`` is the host's shared :class:`MptcpBlackholeState` (None: no back-off). Keys come
    from ``rng``; counters go to ``mib`` (``host.mib``).
    """

    def __init__(self, *, rng: Rng, mib: Counter, policy: MptcpPolicy | None = None,
                 blackhole: MptcpBlackholeState | None = None) -> None:
        super().__init__(rng=rng, mib=mib, policy=policy, state=MptcpState.EXPECT_SYNACK)
        self.blackhole = blackhole
        self.local_key = rng.getrandbits(64)
        self.retry_policy: MptcpPolicy | None = None  # set when the scheme should retry with v0
        self._last_syn_retransmission = 0
        self._plain_syn_retransmission: int | None = None  # the first SYN without MP_CAPABLE
        self._keys_never_sent = False  # Linux: the segment that would carry our keys never goes

    def syn_options(self, conn: TcpConnection, retransmission: int) -> tuple:
        self._last_syn_retransmission = retransmission
        if retransmission == 0:
            if self.blackhole is not None and self.blackhole.should_disable(conn.now_s):
                self._fall_back(conn, FallbackReason.MPTCP_BLACKHOLE_BACKOFF, MptcpMib.MPCapableSYNTXDisabled)
                return ()
            self._count(MptcpMib.MPCapableSYNTX)
            return (self._syn_mp_capable(),)
        if self.state is not MptcpState.EXPECT_SYNACK:
            return ()
        limit = self.policy.syn_retrans_before_tcp_fallback
        if limit is not None and retransmission > limit:
            # Linux mptcp_active_detect_blackhole: with the default 2, SYN+MPC at 0, 1 and 3 s and a
            # plain SYN at 7 s; should that very SYN be answered, MPTCP is blackholed.
            self._plain_syn_retransmission = retransmission
            self._fall_back(conn, FallbackReason.MP_CAPABLE_SYN_DROPPED, MptcpMib.MPCapableSYNTXDrop)
            return ()
        return (self._syn_mp_capable(),)

    def _syn_mp_capable(self) -> MpCapable:
        # v1 keeps the key for the third ACK; v0 puts it in the SYN.
        return MpCapable(self.version, self._mpc_flags(), sender_key=self.local_key if self.version == 0 else None)

    def on_synack(self, conn: TcpConnection, synack: TcpSegment) -> str | None:
        self._local_ssn_offset_bytes = conn.syn_data_acked_bytes
        self._peer_ssn_offset_bytes = len(synack.payload)
        if self.state is MptcpState.FALLEN_BACK:
            # An answer to the first plain SYN, with no timeout since: MPTCP is blocked, TCP is not
            # (Linux: mpc_drop still set). An MP_CAPABLE in it is ignored: no way back to MPTCP.
            if self._plain_syn_retransmission == self._last_syn_retransmission:
                self._count(MptcpMib.Blackhole)
                if self.blackhole is not None:
                    self.blackhole.record_blackhole(conn.now_s)
            return None
        mpc = _find(synack, MpCapable)
        reason = self._synack_problem(mpc)
        if reason is not None:
            self._fall_back(conn, reason, MptcpMib.MPCapableFallbackSYNACK)
            if mpc is None and self.policy.retry_with_v0 and self.version == 1:
                self.retry_policy = replace(self.policy, version=0, retry_with_v0=False)
                return "mptcp_retry_v0"  # reset; the scheme reopens with retry_policy
            return None
        self._count(MptcpMib.MPCapableSYNACKRX)
        # Linux (docs/kernel-departures.md 7): the last SYN was a data-less retransmission, so
        # MP_CAPABLE goes only on a segment at ISN+1; the SYN-ACK acknowledged the first SYN's
        # data, so every segment from now on starts after it.
        self._keys_never_sent = (self.policy.mp_capable_ack == "linux" and self._last_syn_retransmission > 0
                                 and not conn.policy.retransmit_syn_data and conn.syn_data_acked_bytes > 0)
        self.peer_key = mpc.sender_key
        self.checksums = self.policy.checksums or bool(mpc.flags & _F.A)
        self._negotiate(conn)
        if self.blackhole is not None:
            self.blackhole.record_success(loopback=conn.remote_addr.is_loopback)
        return None

    def _synack_problem(self, mpc: MpCapable | None) -> FallbackReason | None:
        if mpc is None:
            return FallbackReason.MP_CAPABLE_MISSING_SYNACK
        if mpc.version != self.version:
            return FallbackReason.MPTCP_VERSION_UNSUPPORTED
        if mpc.form not in (MpCapableForm.SYN_ACK, MpCapableForm.SYN_OR_SYN_ACK) or not _flags_valid(
                mpc.flags, mpc.version, exact=True):
            return FallbackReason.MPTCP_OPTION_INVALID
        return None

    def _handshake_options(self, ssn: int, payload: bytes) -> tuple | None:
        if self._peer_dss_seen or self._keys_never_sent:
            return None  # a DSS (Data ACK, mapping) instead, as on any established segment
        # Until the peer shows (with a DSS) that it has our key, repeat both keys: on ACKs the
        # 20-byte form, on the first data byte the form with the data-level length (RFC 8684 3.1).
        if not payload:
            return (MpCapable(self.version, self._mpc_flags(), self.local_key, self.peer_key),)
        if ssn == 1 and self.version == 1:
            dsn = (self._negotiated_local_idsn + 1) % _DSN_MODULUS
            checksum = dss_checksum(dsn, 1, len(payload), payload) if self.checksums else None
            return (MpCapable(1, self._mpc_flags(), self.local_key, self.peer_key, len(payload), checksum),)
        return None


class MptcpServerExtension(_MptcpExtension):
    """MPTCP for a passive opener; a listener puts a fresh one in each ``Acceptance``.

    ``policy.version`` 1 is a v1 listener (Linux: v0 SYNs are plain TCP); 0 is a v0-only listener
    (RFC 6824: a keyless v1 SYN MP_CAPABLE is ignored).
    """

    def __init__(self, *, rng: Rng, mib: Counter, policy: MptcpPolicy | None = None) -> None:
        super().__init__(rng=rng, mib=mib, policy=policy, state=MptcpState.EXPECT_SYN)

    def on_syn(self, conn: TcpConnection, syn: TcpSegment) -> None:
        mpc = _find(syn, MpCapable)
        if mpc is None:
            self._move(MptcpState.PLAIN)
            return
        reason = self._syn_problem(mpc)
        if reason is not None:
            self._fall_back(conn, reason)  # Linux ignores such an option without a counter
            return
        self._count(MptcpMib.MPCapableSYNRX)
        if self.version == 0:
            self.peer_key = mpc.sender_key
        self.checksums = self.policy.checksums or bool(mpc.flags & _F.A)
        self.local_key = self._rng.getrandbits(64)
        self._move(MptcpState.EXPECT_ACK)

    def _syn_problem(self, mpc: MpCapable) -> FallbackReason | None:
        # A listener answers with a version <= the one asked; a v0 SYN must carry the key, a v1 one not.
        if mpc.version < self.version or (self.version == 0 and mpc.version != 0):
            return FallbackReason.MPTCP_VERSION_UNSUPPORTED
        wanted_form = MpCapableForm.SYN_OR_SYN_ACK if self.version == 0 else MpCapableForm.SYN
        if mpc.form is not wanted_form or not _flags_valid(mpc.flags, self.version, exact=False):
            return FallbackReason.MPTCP_OPTION_INVALID
        return None

    def synack_options(self, conn: TcpConnection, syn: TcpSegment) -> tuple:
        if self.state is not MptcpState.EXPECT_ACK:
            return ()
        return (MpCapable(self.version, self._mpc_flags(), sender_key=self.local_key),)

    def on_segment(self, conn: TcpConnection, segment: TcpSegment) -> str | None:
        if self.state is MptcpState.EXPECT_ACK and not segment.flags & TcpFlags.SYN:
            # The ACK that completed the handshake: what it and the SYN carried is outside the
            # data sequence space (SYN-ACK data it did not ACK is resent inside it).
            self._local_ssn_offset_bytes = seq_diff(conn.snd_una, conn.iss) - 1
            self._peer_ssn_offset_bytes = seq_diff(conn.rcv_nxt, conn.irs) - 1
            mpc = _find(segment, MpCapable)
            reason = self._third_ack_problem(mpc)
            if reason is not None:
                # RFC 8684 3.7 item 3: the third packet decides; without MP_CAPABLE, plain TCP.
                # Linux counts it where it sees it: a listener that took SYN data made the subflow
                # at the SYN (TFO), so the ACK reaches net/mptcp/options.c check_fully_established
                # (MPCapableDataFallback), not subflow_syn_recv_sock (MPCapableFallbackACK)
                # (docs/kernel-departures.md 7).
                counter = MptcpMib.MPCapableDataFallback if self._peer_ssn_offset_bytes > 0 \
                    else MptcpMib.MPCapableFallbackACK
                self._fall_back(conn, reason, counter)
                return None
            self._count(MptcpMib.MPCapableACKRX)
            self.peer_key = mpc.sender_key
            self._negotiate(conn)
        return super().on_segment(conn, segment)

    def allows_early_data(self, conn: TcpConnection) -> bool:
        # The data sequence space is fixed by the third ACK (the SSN offsets above), so data sent
        # before it would carry no mapping and make the client fall back.
        return self.state is not MptcpState.EXPECT_ACK

    def _third_ack_problem(self, mpc: MpCapable | None) -> FallbackReason | None:
        if mpc is None:
            return FallbackReason.MP_CAPABLE_MISSING_ACK
        if mpc.version != self.version:
            return FallbackReason.MPTCP_VERSION_UNSUPPORTED
        if mpc.form not in (MpCapableForm.ACK, MpCapableForm.DATA) or not _flags_valid(
                mpc.flags, self.version, exact=True) or mpc.receiver_key != self.local_key or (
                self.version == 0 and mpc.sender_key != self.peer_key):
            return FallbackReason.MPTCP_OPTION_INVALID  # the handshake is compromised (RFC 8684 3.1)
        return None
