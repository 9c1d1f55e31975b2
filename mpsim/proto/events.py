"""Application-level facts the machines report (``Host.emit``), and the reasons they carry.

Past-tense dataclasses (docs/design.md section 5); reasons are enums. Connection-level TCP events
(Established, DataReceived, ...) live in tcp.py; these are what a scheme, a server or a converter
concluded. Modules add their own event classes next to their logic; the reason enums are shared
here so that results tables have one vocabulary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FallbackReason(enum.Enum):
    """Why a connection ended up as plain TCP (or without the converter) instead of what it asked for.

    The comment names the Linux MPTcpExt MIB counter where one exists.
    """

    MP_CAPABLE_MISSING_SYNACK = "mp_capable_missing_synack"  # MPCapableFallbackSYNACK
    MP_CAPABLE_MISSING_ACK = "mp_capable_missing_ack"  # MPCapableFallbackACK (passive side)
    MP_CAPABLE_SYN_DROPPED = "mp_capable_syn_dropped"  # MPCapableSYNTXDrop: MPC SYNs unanswered
    MPTCP_BLACKHOLE_BACKOFF = "mptcp_blackhole_backoff"  # MPCapableSYNTXDisabled
    MPTCP_VERSION_UNSUPPORTED = "mptcp_version_unsupported"  # the peer speaks another MPTCP version
    MPTCP_OPTION_INVALID = "mptcp_option_invalid"  # B set, no crypto bit, checksum conflict
    DSS_MISSING = "dss_missing"  # data ACKed without a DSS: infinite mapping (MPCapableDataFallback)
    CHECKSUM_FAILURE = "checksum_failure"  # DSS checksum failed: MP_FAIL (DSSCorruptionFallback)
    SIGNAL_ACKED_AS_DATA = "signal_acked_as_data"  # a legacy peer ACKed the signalling as data
    SIGNAL_NOT_ACKED = "signal_not_acked"  # RFC 8803 8: the SYN-ACK ACKed only ISN+1
    SIGNAL_DOES_NOT_FIT = "signal_does_not_fit"  # the option does not fit in 40 bytes
    CONVERTER_SYN_TIMEOUT = "converter_syn_timeout"  # no SYN-ACK from the converter
    CONVERTER_REFUSED = "converter_refused"  # RST from the converter address
    CONVERTER_UNREACHABLE = "converter_unreachable"  # ICMP destination unreachable for the converter
    CONVERTER_REPLY_MISSING = "converter_reply_missing"  # no valid Convert message came back
    CONVERTER_REPLY_INVALID = "converter_reply_invalid"  # malformed reply, duplicate or type-0 TLV
    CONVERTER_ERROR = "converter_error"  # an Error TLV (the code is in the event)
    CONVERTER_CACHED_OFF = "converter_cached_off"  # the cache said not to try the converter
    PROXY_FAILED = "proxy_failed"  # the SOCKS5 proxy refused or failed
    TFO_SYN_DATA_NOT_ACKED = "tfo_syn_data_not_acked"  # TCPFastOpenActiveFail


class Outcome(enum.Enum):
    """How a client's logical connection ended up (the ``outcome`` column of the results)."""

    CONVERTED = "converted"  # through a converter / MP_CONVERT proxy, as asked
    MPTCP = "mptcp"  # end-to-end MPTCP
    TCP = "tcp"  # plain TCP, as asked
    FALLBACK_TCP = "fallback_tcp"  # plain TCP (direct or via the proxy) after a fallback
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MptcpNegotiated:
    """MP_CAPABLE was exchanged on the SYN, SYN-ACK and third ACK of ``four_tuple``."""

    four_tuple: tuple
    version: int
    checksums: bool


@dataclass(frozen=True, slots=True)
class FellBackToTcp:
    """The connection continues (or restarts) as plain TCP; ``reason`` says why."""

    four_tuple: tuple
    reason: FallbackReason
