"""Every packet a simulation carries, of every scheme, has the bytes anyone can look at.

The machines exchange packet objects and encode nothing (docs/sim.md, "Performance"): a packet's
length is worked out when it is built, and its bytes are produced only for a capture. These tests
take every packet of the scenarios that exercise every signalling scheme (``scheme_comparison``)
and middleboxes that edit options and payloads (``default``, ``legacy_server``), and check that
the lazily known length is the length of the eager encoding, and that the encoding decodes back
to the very packet (so nothing the object holds is lost or invented on the wire; options compared
in the canonical form the decoder gives, e.g. the implicit EOL of a full option space).
"""

from __future__ import annotations

import dataclasses

import pytest

from mpsim.experiment import results, scenario
from mpsim.wire.options import canonical_options
from mpsim.wire.segment import IpPacket, decode_packet, encode_packet

# (scenario, how many of its runs): every variant of each
CASES = [("scheme_comparison", 1), ("legacy_server", 1), ("default", 2)]


def _packets(name: str, runs: int) -> list[tuple[str, IpPacket]]:
    loaded = scenario.load(name, [f"runs={runs}"])
    outcome = results.run(loaded, record_packets=True)
    return [(run.variant, record.packet) for run in outcome.runs for record in run.trace.packets
            if isinstance(record.packet, IpPacket)]


@pytest.mark.parametrize("name,runs", CASES)
def test_lazy_lengths_and_bytes_equal_the_eager_encoding(name, runs):
    packets = _packets(name, runs)
    variants = {variant for variant, _ in packets}
    assert len(packets) > 50 and variants == set(scenario.load(name, []).variants)
    for variant, packet in packets:
        data = encode_packet(packet)
        assert packet.length_bytes == len(data), (variant, packet)
        ip_header_bytes = (data[0] & 0x0F) * 4 if packet.src.version == 4 else 40
        assert packet.segment.header_length_bytes == (data[ip_header_bytes + 12] >> 4) * 4
        decoded = decode_packet(data)
        assert decoded.segment.options == canonical_options(packet.segment.options) if packet.segment.options \
            else decoded.segment.options == (), (variant, packet)
        assert dataclasses.replace(decoded, segment=dataclasses.replace(
            decoded.segment, options=packet.segment.options, option_padding=packet.segment.option_padding)) == packet
        assert encode_packet(decoded) == data


def test_every_scheme_is_covered():
    from mpsim.proto.catalogue import SCHEMES

    variants = scenario.load("scheme_comparison", []).variants.values()
    assert {v.client.scheme for v in variants} >= set(SCHEMES.names())
