"""The truth table (scheme x middlebox x server), checked against expectations derived by hand.

Each row below is derived from the protocol rules and the truth table's topology, not read off
docs/truth-table.md; the comment above it is the derivation. Topology
(mpsim.proto.truth_table): client --10 ms-- router --0 ms-- proxy, router --20 ms-- server,
the middlebox on the client's access link (both directions); an on-path proxy sits at the
router's end of the access link. So the client-proxy RTT is 20 ms, the proxy-server RTT 40 ms and
the client-server RTT 60 ms. A request sends 100 bytes and reads 1000; the server answers once it
has the 100 bytes. Client rules used throughout (mpsim.proto.client): SYNs to a proxy at 0, 1 and
3 s, given up at 7 s (``proxy_syn_retries`` 2, RTO doubling from 1 s); a direct SYN retried 6
times (0, 1, 3, 7, 15, 31, 63 s); a fallback opens a new connection (a new source port) at once;
Linux does not resend SYN data on a SYN retransmission.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from mpsim.proto.truth_table import (
    ACCESS_DELAY_S,
    SERVER_DELAY_S,
    VARIANTS,
    all_cases,
    run_variant,
    table_middleboxes,
    table_servers,
)
from mpsim.proto.events import FallbackReason, Outcome
from mpsim.proto.server import ServerKind

CP_RTT_S = 2 * ACCESS_DELAY_S  # client-proxy (router-proxy is 0 ms)
PS_RTT_S = 2 * SERVER_DELAY_S  # proxy-server
CS_RTT_S = CP_RTT_S + PS_RTT_S  # client-server
DIRECT_TCP_S = 2 * CS_RTT_S  # handshake, then request and response
PROXY_GIVES_UP_S = 7.0  # the third SYN to a proxy (3 s) times out after a 4 s RTO
MPC_DROPPED_S = 7.0  # Linux: MP_CAPABLE SYNs at 0, 1, 3 s, the plain one at 7 s

VARIANT = {v.label: v for v in VARIANTS}


@dataclass(frozen=True)
class Row:
    variant: str
    middlebox: str
    server: str
    outcome: str
    reason: str | None
    first_byte_s: float | None
    syns: int
    rsts: int  # sent by the client
    ports: int


ROWS = [
    # --- plain -----------------------------------------------------------------------------------
    # Handshake (1 RTT), then the request with the third ACK and the response (1 RTT).
    Row("plain", "none", "legacy_drop", "tcp", None, DIRECT_TCP_S, 1, 0, 1),
    # Nothing in a plain SYN for a middlebox that strips MPTCP or drops SYN data to act on.
    Row("plain", "strip-mptcp", "mptcp_v1", "tcp", None, DIRECT_TCP_S, 1, 0, 1),
    Row("plain", "drop-syn-data", "legacy_queue", "tcp", None, DIRECT_TCP_S, 1, 0, 1),
    # RST in SYN-SENT: refused, and plain TCP has nothing to fall back to.
    Row("plain", "none", "closed", "failed", None, None, 1, 0, 1),
    # The RSTs are dropped: the SYN is retried 6 times (7 SYNs) and the connection times out.
    Row("plain", "drop-rst-both-ways", "closed", "failed", None, None, 7, 0, 1),
    # ICMP unreachable ends SYN-SENT at once (Linux).
    Row("plain", "none", "unreachable", "failed", None, None, 1, 0, 1),
    # --- mptcp -----------------------------------------------------------------------------------
    Row("mptcp", "none", "mptcp_v1", "mptcp", None, DIRECT_TCP_S, 1, 0, 1),
    # A legacy SYN-ACK has no MP_CAPABLE: the same connection goes on as TCP (RFC 8684 3.7).
    Row("mptcp", "none", "legacy_drop", "fallback_tcp", "mp_capable_missing_synack", DIRECT_TCP_S, 1, 0, 1),
    # A v1 SYN carries no key; a v0-only listener ignores it, which looks like stripping.
    Row("mptcp", "none", "mptcp_v0", "fallback_tcp", "mp_capable_missing_synack", DIRECT_TCP_S, 1, 0, 1),
    Row("mptcp", "strip-mptcp", "mptcp_v1", "fallback_tcp", "mp_capable_missing_synack", DIRECT_TCP_S, 1, 0, 1),
    # MP_CAPABLE SYNs at 0, 1, 3 s are dropped; the plain SYN at 7 s passes (same port):
    # 4 SYNs, and the first byte 2 RTTs after 7 s.
    Row("mptcp", "drop-unknown-option-syns", "legacy_drop", "fallback_tcp", "mp_capable_syn_dropped",
        MPC_DROPPED_S + DIRECT_TCP_S, 4, 0, 1),
    # A forged MP_CAPABLE in the SYN-ACK makes the client believe in MPTCP; the legacy server ACKs
    # the data without a DSS Data ACK: infinite mapping, fallback (RFC 8684 3.7), no time lost.
    Row("mptcp", "mirror-mp-capable", "legacy_drop", "fallback_tcp", "dss_missing", DIRECT_TCP_S, 1, 0, 1),
    # The same forgery is harmless when the server really is MPTCP (it then sends its own option).
    Row("mptcp", "mirror-mp-capable", "mptcp_v1", "mptcp", None, DIRECT_TCP_S, 1, 0, 1),
    # --- convert, RFC timing ------------------------------------------------------------------------
    # The request rides in the SYN after the Connect TLV. The converter opens the server leg at
    # once (no TFO cookie: the request waits for the server's SYN-ACK), answers the client when
    # the server has, and relays the request: 10 ms to the converter, 40 ms server handshake,
    # 40 ms request and response, 10 ms back = 1 client-proxy RTT + 2 proxy-server RTTs.
    Row("convert", "none", "legacy_drop", "converted", None, CP_RTT_S + 2 * PS_RTT_S, 1, 0, 1),
    # RST from the server: Error 96 in the reply; the client resets (RFC 8803 6.2.8) and, since
    # this is the server's answer, gives up rather than try it directly.
    Row("convert", "none", "closed", "failed", "converter_error", None, 1, 1, 1),
    # The MPTCP options are stripped on the client leg: relayed as plain TCP, same timing.
    Row("convert", "strip-mptcp", "legacy_drop", "fallback_tcp", "mp_capable_missing_synack",
        CP_RTT_S + 2 * PS_RTT_S, 1, 0, 1),
    # No payload, no Convert message: an RFC-timing converter ignores the SYN (section 6). Its
    # retransmissions carry no data either, so the client gives up at 7 s and goes direct.
    Row("convert", "strip-syn-payload", "legacy_drop", "fallback_tcp", "converter_syn_timeout",
        PROXY_GIVES_UP_S + DIRECT_TCP_S, 4, 0, 2),
    Row("convert", "drop-syn-data", "mptcp_v1", "fallback_tcp", "converter_syn_timeout",
        PROXY_GIVES_UP_S + DIRECT_TCP_S, 4, 0, 2),
    # --- convert, socket timing --------------------------------------------------------------------
    # The kernel answers the SYN at once; the reply and the response follow the server's SYN-ACK
    # exactly as with RFC timing, so the first byte comes at the same time.
    Row("convert (socket timing)", "none", "legacy_drop", "converted", None, CP_RTT_S + 2 * PS_RTT_S, 1, 0, 1),
    # The SYN-ACK (at 20 ms) ACKs ISN+1 only: RST, converter off (RFC 8803 8), direct TCP at once.
    Row("convert (socket timing)", "strip-syn-payload", "tfo", "fallback_tcp", "signal_not_acked",
        CP_RTT_S + DIRECT_TCP_S, 2, 1, 2),
    # The first SYN is dropped; the data-less retransmission at 1 s is answered, ISN+1 only.
    Row("convert (socket timing)", "drop-syn-data", "legacy_drop", "fallback_tcp", "signal_not_acked",
        1.0 + CP_RTT_S + DIRECT_TCP_S, 3, 1, 2),
    # --- mp-convert-option (explicit) --------------------------------------------------------------
    # The destination rides in the options, the request after the handshake. The client's
    # SYN-ACK waits for the server's (10 + 40 + 10 ms = 1 client-server RTT), then the request
    # crosses the proxy to the server and back (another one).
    Row("mp-convert-option", "none", "legacy_drop", "converted", None, DIRECT_TCP_S, 1, 0, 1),
    # Nothing in the SYN payload: a middlebox dropping SYN data changes nothing.
    Row("mp-convert-option", "drop-syn-data", "legacy_queue", "converted", None, DIRECT_TCP_S, 1, 0, 1),
    # MP_CONVERT is an MPTCP option (kind 30): stripped, the proxy sees no signal and answers
    # RST (no error message exists): refused at 20 ms, direct TCP on a new port.
    Row("mp-convert-option", "strip-mptcp", "legacy_drop", "fallback_tcp", "converter_refused",
        CP_RTT_S + DIRECT_TCP_S, 2, 0, 2),
    # The server's RST comes back as the proxy's RST: the client cannot tell who refused, so it
    # tries the server directly, which refuses too.
    Row("mp-convert-option", "none", "closed", "failed", "converter_refused", None, 2, 0, 2),
    # --- mp-convert-option, implicit, proxy on the path ----------------------------------------------
    # The proxy answers as the server, with MP_CAPABLE and nothing else: an MPTCP connection as
    # far as the client can tell. Same timing as explicit: 2 client-server RTTs.
    Row("mp-convert-option (implicit, proxy on path)", "none", "legacy_drop", "mptcp", None, DIRECT_TCP_S, 1, 0, 1),
    # The server refuses; the proxy answers the client's SYN with RST, as the server would: an
    # RST to an implicit SYN is the server's answer, so the request ends.
    Row("mp-convert-option (implicit, proxy on path)", "none", "closed", "failed", None, None, 1, 0, 1),
    # The SYN-ACK's MP_CAPABLE is stripped: the client continues as TCP (60 ms), and its third
    # ACK without MP_CAPABLE makes the proxy, bound by the I flag, reset both legs (RST at 80 ms).
    # The request goes again unsignalled on a new port, forwarded by the proxy: 80 ms + 2 RTTs.
    Row("mp-convert-option (implicit, proxy on path)", "strip-mptcp-synack", "legacy_drop", "fallback_tcp",
        "mp_capable_missing_synack", CS_RTT_S + CP_RTT_S + DIRECT_TCP_S, 2, 0, 2),
    # --- syn-payload-eol (explicit) ----------------------------------------------------------------
    # The request follows the signalling and its EOL in the SYN payload: the same timing as convert.
    Row("syn-payload-eol", "none", "legacy_drop", "converted", None, CP_RTT_S + 2 * PS_RTT_S, 1, 0, 1),
    # The payload is the signalling: stripped, the proxy finds none and answers RST.
    Row("syn-payload-eol", "strip-syn-payload", "legacy_drop", "fallback_tcp", "converter_refused",
        CP_RTT_S + DIRECT_TCP_S, 2, 0, 2),
    # The first SYN is dropped; its retransmission at 1 s carries no payload, hence no signal.
    Row("syn-payload-eol", "drop-syn-data", "legacy_drop", "fallback_tcp", "converter_refused",
        1.0 + CP_RTT_S + DIRECT_TCP_S, 3, 0, 2),
    # --- syn-payload-eol, implicit, no proxy ---------------------------------------------------------
    # The server's stack drops SYN data (Linux without TFO), so its SYN-ACK ACKs ISN+1 only: the
    # client resets (else Linux would resend the signalling as data) and goes direct at 60 ms.
    Row("syn-payload-eol (implicit, no proxy on path)", "none", "legacy_drop", "fallback_tcp", "signal_not_acked",
        CS_RTT_S + DIRECT_TCP_S, 2, 1, 2),
    Row("syn-payload-eol (implicit, no proxy on path)", "none", "mptcp_v1", "fallback_tcp", "signal_not_acked",
        CS_RTT_S + DIRECT_TCP_S, 2, 1, 2),
    # A stack that queues SYN data ACKs the whole payload: the signalling became data. RESET: RST
    # and a direct connection at 60 ms.
    Row("syn-payload-eol (implicit, no proxy on path)", "none", "legacy_queue", "fallback_tcp",
        "signal_acked_as_data", CS_RTT_S + DIRECT_TCP_S, 2, 1, 2),
    # CONTINUE: the connection carries on. The queued SYN data (signalling and request) reaches the
    # application with the third ACK, so the response starts as for plain TCP.
    Row("syn-payload-eol (implicit, no proxy, continue)", "none", "legacy_queue", "fallback_tcp",
        "signal_acked_as_data", DIRECT_TCP_S, 1, 0, 1),
    # --- socks5 ---------------------------------------------------------------------------------------
    # Handshake with the proxy (20 ms), greeting and method (20 ms), CONNECT to the proxy (10 ms),
    # the server handshake (40 ms), the reply (10 ms); then the request to the server and back
    # (60 ms): plain TCP's 120 ms plus 2 client-proxy RTTs. The client leg is MPTCP: converted.
    Row("socks5", "none", "legacy_drop", "converted", None, DIRECT_TCP_S + 2 * CP_RTT_S, 1, 0, 1),
    Row("socks5", "strip-mptcp", "mptcp_v1", "fallback_tcp", "mp_capable_missing_synack",
        DIRECT_TCP_S + 2 * CP_RTT_S, 1, 0, 1),
    # Reply 0x05 (connection refused) is the server's answer: reset, and the request ends.
    Row("socks5", "none", "closed", "failed", "proxy_failed", None, 1, 1, 1),
    # The MP_CAPABLE SYNs to the proxy (0, 1, 3 s) are dropped; the proxy is given up at 7 s
    # before any plain SYN would go: direct TCP.
    Row("socks5", "drop-unknown-option-syns", "legacy_drop", "fallback_tcp", "converter_syn_timeout",
        PROXY_GIVES_UP_S + DIRECT_TCP_S, 4, 0, 2),
]


def _run(row: Row):
    case = run_variant(VARIANT[row.variant], row.middlebox, ServerKind(row.server), rngs=random.Random)
    assert case.record is not None
    return case.record


def _check(row: Row) -> None:
    record = _run(row)
    actual = (record.outcome, record.fallback_reason, record.syns_sent, record.rsts_sent, record.source_ports_used)
    assert actual == (row.outcome, row.reason, row.syns, row.rsts, row.ports)
    if row.first_byte_s is None:
        assert record.first_byte_time_s is None
    else:
        assert record.first_byte_time_s == pytest.approx(row.first_byte_s, abs=1e-9)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.variant}|{r.middlebox}|{r.server}" for r in ROWS])
def test_row(row):
    _check(row)


# --- disagreements with the code ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["mp-convert-option (implicit, proxy on path)",
                                     "syn-payload-eol (implicit, no proxy on path)"])
def test_an_implicit_syn_refused_by_the_server_after_mpc_was_dropped_ends_the_request(variant):
    # MP_CAPABLE SYNs at 0, 1, 3 s are dropped (and the signalling with them: MP_CONVERT goes only
    # with MP_CAPABLE, the SYN payload only on the first SYN); the plain SYN at 7 s went to the
    # server itself and was refused. The client's module doc: "an RST to an implicit SYN, which
    # went to the server ... ends the request: trying the server directly would be refused again".
    # So as for mptcp | drop-unknown-option-syns | closed: failed after 4 SYNs on 1 port (the
    # reason may fairly name the dropped MP_CAPABLE or nothing).
    record = _run(Row(variant, "drop-unknown-option-syns", "closed", "failed", None, None, 4, 0, 1))
    assert (record.outcome, record.syns_sent, record.rsts_sent, record.source_ports_used) == ("failed", 4, 0, 1)
    assert record.fallback_reason in (None, "mp_capable_syn_dropped")


# --- the whole table --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases():
    return all_cases(rngs=random.Random)


def test_every_case_has_a_record_with_a_known_outcome_and_reason(cases):
    assert len(cases) == len(VARIANTS) * len(table_middleboxes()) * len(table_servers())
    outcomes = {o.value for o in Outcome}
    reasons = {r.value for r in FallbackReason} | {None}
    assert all(c.record is not None and c.record.outcome in outcomes and c.record.fallback_reason in reasons
               for c in cases)


def test_records_are_consistent_with_their_outcome(cases):
    """What each outcome means (docs/proto.md "Outcomes"): asked-for outcomes carry no fallback
    reason and a fallback always has one; every outcome but failed got the whole response; the
    proxy and MPTCP flags match; each attempt is one source port and costs at least one SYN."""
    def problems(r) -> list[str]:
        found = []
        if (r.outcome in ("tcp", "mptcp", "converted") and r.fallback_reason is not None) \
                or (r.outcome == "fallback_tcp" and r.fallback_reason is None):
            found.append("reason")
        if r.outcome != "failed" and (r.first_byte_time_s is None or r.bytes_delivered != 1000):
            found.append("response")
        if r.outcome == "converted" and not (r.via_proxy and r.mptcp):
            found.append("converted flags")
        if r.outcome == "mptcp" and (r.via_proxy or not r.mptcp):
            found.append("mptcp flags")
        if r.outcome in ("tcp", "fallback_tcp") and r.mptcp:
            found.append("tcp flags")
        if not r.syns_sent >= r.source_ports_used == r.attempts >= 1:
            found.append("counts")
        return found

    bad = {(c.label, c.middlebox, c.server.value): p for c in cases if (p := problems(c.record))}
    assert not bad


def test_plain_tcp_has_nothing_to_fall_back_from(cases):
    plain = [c.record for c in cases if c.label == "plain"]
    assert {r.outcome for r in plain} == {"tcp", "failed"} and {r.fallback_reason for r in plain} == {None}
