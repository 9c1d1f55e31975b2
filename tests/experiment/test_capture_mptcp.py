"""A capture of a two-path converted transfer verifies as Wireshark would verify it (docs/sim.md
"Subflows joining"): the joined subflow's MP_JOIN names the token of the key the negotiation's
MP_CAPABLE carried, and its HMACs recompute from the two keys and the nonces the capture shows
(RFC 8684 3.1, 3.2; computed here with hashlib/hmac from the captured bytes, not with mpsim)."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess

import pytest

from mpsim.wire.mptcp import MpCapable, MpJoinAck, MpJoinSyn, MpJoinSynAck
from mpsim.wire.segment import decode_packet, encode_packet
from tests.experiment.test_routes import _sim


def _captured(sim, link):
    """The packets of ``link`` as a capture decodes them (negotiation and transfer alike)."""
    out = []
    for _, packet in sim.trace.packets_at(link):
        ip = packet if hasattr(packet, "segment") else packet.to_ip_packet()
        out.append(decode_packet(encode_packet(ip)))
    return out


def _option(ip, kind):
    return next((o for o in ip.segment.options if isinstance(o, kind)), None)


@pytest.fixture(scope="module")
def sim():
    sim = _sim(record_packets=True)
    sim.run()
    return sim


def test_the_join_verifies_against_the_negotiated_keys(sim):
    dsl, lte = _captured(sim, "path.dsl"), _captured(sim, "path.lte")
    # v1 third ACK: both keys (RFC 8684 3.1): the client's (sender) and the converter's (receiver).
    third = next(_option(p, MpCapable) for p in dsl
                 if _option(p, MpCapable) is not None and _option(p, MpCapable).receiver_key is not None)
    key_a, key_b = third.sender_key.to_bytes(8, "big"), third.receiver_key.to_bytes(8, "big")
    syn = next(p for p in lte if isinstance(_option(p, MpJoinSyn), MpJoinSyn))
    synack = next(p for p in lte if isinstance(_option(p, MpJoinSynAck), MpJoinSynAck))
    ack = next(p for p in lte if isinstance(_option(p, MpJoinAck), MpJoinAck))
    assert syn.src == synack.dst == ack.src  # the client's lte address
    join_syn, join_synack, join_ack = _option(syn, MpJoinSyn), _option(synack, MpJoinSynAck), _option(ack, MpJoinAck)
    assert join_syn.receiver_token == int.from_bytes(hashlib.sha256(key_b).digest()[:4], "big")
    r_a, r_b = join_syn.sender_random.to_bytes(4, "big"), join_synack.sender_random.to_bytes(4, "big")
    assert join_synack.sender_truncated_hmac == hmac.new(key_b + key_a, r_b + r_a, hashlib.sha256).digest()[:8]
    assert join_ack.sender_hmac == hmac.new(key_a + key_b, r_a + r_b, hashlib.sha256).digest()[:20]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_wireshark_puts_both_subflows_in_one_mptcp_connection(sim, tmp_path):
    path = tmp_path / "two_paths.pcapng"
    path.write_bytes(sim.trace.pcapng_bytes(["path.dsl", "path.lte"]))
    fields = subprocess.run(
        ["tshark", "-r", str(path), "-o", "mptcp.analyze_mptcp:TRUE", "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 1 && mptcp",
         "-T", "fields", "-e", "frame.interface_name", "-e", "tcp.stream", "-e", "mptcp.stream"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    rows = {tuple(line.split("\t")) for line in fields if line}
    by_link = {link: (tcp_stream, mptcp_stream) for link, tcp_stream, mptcp_stream in rows}
    assert set(by_link) == {"path.dsl", "path.lte"}, rows
    # two TCP connections, one MPTCP connection: Wireshark matched the join's token to the key
    assert by_link["path.dsl"][0] != by_link["path.lte"][0]
    assert by_link["path.dsl"][1] == by_link["path.lte"][1] != ""
