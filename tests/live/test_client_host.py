"""The kernel world's client (mpsim/live/client_host.py): how it names an MPTCP attempt's fallback
from the namespace's MPTcpExt counters. No sockets or root needed: the counters and MPTCP_INFO are
replaced by the values the kernel gave in the case of docs/kernel-departures.md 7."""

from __future__ import annotations

import pytest

from mpsim.live import client_host
from mpsim.live.client_host import ClientHostRunner, Logical, fallback_reason_from_counters
from mpsim.proto.events import FallbackReason


@pytest.mark.parametrize(("grown", "reason"), [
    ((), FallbackReason.MP_CAPABLE_MISSING_SYNACK),
    (("MPCapableFallbackSYNACK",), FallbackReason.MP_CAPABLE_MISSING_SYNACK),
    (("MPCapableDataFallback",), FallbackReason.DSS_MISSING),
    (("MPCapableSYNTXDrop", "MPCapableDataFallback"), FallbackReason.MP_CAPABLE_SYN_DROPPED),
    (("MPCapableSYNTXDisabled",), FallbackReason.MPTCP_BLACKHOLE_BACKOFF),
])
def test_the_first_counter_that_grew_names_the_fallback(grown, reason):
    before = {"MPCapableSYNTX": 4, "MPCapableDataFallback": 2, "MPCapableSYNACKRX": 3}
    after = dict(before, MPCapableSYNTX=5, MPCapableSYNACKRX=4)  # every attempt counts these
    for name in grown:
        after[name] = before.get(name, 0) + 1
    assert fallback_reason_from_counters(before, after) is reason


def test_a_counter_absent_before_and_zero_after_has_not_grown():
    assert fallback_reason_from_counters({}, {"MPCapableDataFallback": 0}) is FallbackReason.MP_CAPABLE_MISSING_SYNACK


def test_the_verdict_reads_the_counters_when_it_is_taken_not_at_connect(monkeypatch):
    """Kernel departures 7: connect() returns before the converter's first data arrives; the
    client's MPCapableDataFallback is counted only then (net/mptcp/options.c
    check_fully_established). A verdict taken after the Convert reply must see it."""
    at_connect = {"MPCapableSYNTX": 1, "MPCapableSYNACKRX": 1, "MPCapableDataFallback": 0}
    after_reply = dict(at_connect, MPCapableDataFallback=1)
    monkeypatch.setattr(client_host, "mptcp_counters", lambda: after_reply)
    monkeypatch.setattr(client_host, "mptcp_info", lambda sock: None)  # fallen back: no MPTCP_INFO
    lc = Logical(0, None, 0.0, {})
    ClientHostRunner._mptcp_verdict(object.__new__(ClientHostRunner), lc, None, True, {"MPCapableSYNTX": 0,
                                    "MPCapableSYNACKRX": 0, "MPCapableDataFallback": 0})
    assert not lc.mptcp and lc.fallback_reason is FallbackReason.DSS_MISSING


def test_an_attempt_still_mptcp_has_no_fallback_reason(monkeypatch):
    monkeypatch.setattr(client_host, "mptcp_counters", lambda: {"MPCapableDataFallback": 9})
    monkeypatch.setattr(client_host, "mptcp_info", lambda sock: object())
    lc = Logical(0, None, 0.0, {})
    ClientHostRunner._mptcp_verdict(object.__new__(ClientHostRunner), lc, None, True, {})
    assert lc.mptcp and lc.fallback_reason is None
