"""A request larger than one SYN can carry: the part that fits rides in the SYN, the rest follows
the handshake (RFC 7413 4.1.3: without a cached MSS, 536 bytes of SYN data over IPv4)."""

import random

import pytest

from mpsim.proto.truth_table import NO_MIDDLEBOX, REQUEST, VARIANTS, build
from mpsim.proto.server import ServerKind

LARGE = 100_000  # far beyond one segment, and beyond an IP packet's 65,535 bytes


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.label in ("convert", "syn-payload-eol", "plain")],
                         ids=lambda v: v.label)
def test_a_large_request_is_split_between_the_syn_and_the_stream(variant):
    harness, client = build(variant.policy.scheme, NO_MIDDLEBOX, ServerKind.LEGACY_DROP, rngs=random.Random,
                            client_policy=variant.policy, timing=variant.timing, placement=variant.placement)
    request = type(REQUEST)(REQUEST.destination, REQUEST.port, request_size_bytes=LARGE, response_size_bytes=1000)
    client.connect(request, 0.0)
    harness.run(60.0)
    (record,) = client.finished
    assert record.outcome in ("converted", "tcp")
    assert record.bytes_delivered == 1000
    assert record.bytes_sent == LARGE  # every request byte went out once, signalling excluded
    syn_payloads = [len(d.packet.segment.payload) for d in harness.log
                    if d.src == "client" and d.packet.segment.flags & 0x02]
    assert syn_payloads and max(syn_payloads) <= 536
