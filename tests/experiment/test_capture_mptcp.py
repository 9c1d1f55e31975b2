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

from mpsim.wire.mptcp import Dss, MpCapable, MpJoinAck, MpJoinSyn, MpJoinSynAck
from mpsim.wire.segment import decode_packet, encode_packet
from mpsim.experiment.simulation import CONVERTER_UP
from tests.experiment.test_routes import _sim


def _captured(sim, link, *, transfer=None):
    """The packets of ``link`` as a capture decodes them (negotiation and transfer alike; only
    the transfer's with ``transfer=True``, only the negotiation's with False)."""
    out = []
    for _, packet in sim.trace.packets_at(link):
        negotiation = hasattr(packet, "segment")
        if transfer is None or transfer != negotiation:
            out.append(decode_packet(encode_packet(packet if negotiation else packet.to_ip_packet())))
    return out


def _keys(sim):
    """(client key, converter key) from the v1 MP_CAPABLE third ACK (both keys, RFC 8684 3.1)."""
    third = next(o for p in _captured(sim, "path.dsl") for o in p.segment.options
                 if isinstance(o, MpCapable) and o.receiver_key is not None)
    return third.sender_key.to_bytes(8, "big"), third.receiver_key.to_bytes(8, "big")


def _option(ip, kind):
    return next((o for o in ip.segment.options if isinstance(o, kind)), None)


@pytest.fixture(scope="module")
def sim():
    sim = _sim(record_packets=True)
    sim.run()
    return sim


def test_the_join_verifies_against_the_negotiated_keys(sim):
    lte = _captured(sim, "path.lte")
    key_a, key_b = _keys(sim)
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


def test_the_transfers_dsns_continue_the_negotiated_connections(sim):
    # RFC 8684 3.1/3.3: the converter's IDSN is the low 64 bits of SHA-256(its key); its first
    # byte is IDSN + 1. The download's first data continues the DSN where the negotiation's last
    # mapping (the 1000-byte response) ended, on both subflows; the client's Data ACKs on both
    # acknowledge the converter's stream, up to the end of the transfer.
    key_a, key_b = _keys(sim)
    idsn_b = int.from_bytes(hashlib.sha256(key_b).digest()[-8:], "big")
    idsn_a = int.from_bytes(hashlib.sha256(key_a).digest()[-8:], "big")
    size = 1_000_000
    negotiation = [(p, _option(p, Dss)) for p in _captured(sim, "path.dsl", transfer=False)]
    # the response's mapping (the converter's DATA_FIN, after the transfer, is the close's)
    last = [d for p, d in negotiation if p.src == CONVERTER_UP and d is not None and d.dsn is not None
            and not d.data_fin][-1]
    start = last.dsn + last.data_level_length_bytes
    assert start == idsn_b + 1 + 1000
    for link in ("path.dsl", "path.lte"):
        packets = [(p, _option(p, Dss)) for p in _captured(sim, link, transfer=True)]
        data = [d for p, d in packets if p.src == CONVERTER_UP and d is not None and d.dsn is not None]
        assert data and all(start <= d.dsn and d.dsn + d.data_level_length_bytes <= start + size for d in data)
        acks = [d.data_ack for p, d in packets if p.dst == CONVERTER_UP and d is not None and d.data_ack is not None]
        # (+ 1: the converter's DATA_FIN, which the joined subflow's close acknowledges)
        assert acks and all(start <= a <= start + size + 1 for a in acks)
        # the converter's Data ACK acknowledges the client's stream (its request, then nothing more)
        back = {d.data_ack for p, d in packets if p.src == CONVERTER_UP and d is not None and d.data_ack is not None}
        assert back and all(idsn_a < a <= idsn_a + 1 + 200 for a in back)
    first = next(d for p, d in (( p, _option(p, Dss)) for p in _captured(sim, "path.dsl", transfer=True))
                 if p.src == CONVERTER_UP and d is not None and d.dsn is not None)
    assert first.dsn == start


@pytest.mark.skipif(shutil.which("capinfos") is None, reason="capinfos (Wireshark) is not installed")
def test_a_written_capture_says_how_it_is_simplified(tmp_path):
    from mpsim.experiment import results
    from mpsim.experiment import scenario as sc
    from mpsim.experiment.simulation import CAPTURE_NOTE
    from tests.experiment.test_routes import BASE

    loaded = sc.load_text(BASE, name="t", source="t.toml", overrides=["transfers.0.size_bytes=20000"])
    written = results.run(loaded, record_packets=True).write_pcaps(tmp_path)
    assert written
    comment = subprocess.run(["capinfos", "-k", str(written[0])], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    assert "closes after the transfer" in CAPTURE_NOTE and CAPTURE_NOTE in " ".join(comment.split())
