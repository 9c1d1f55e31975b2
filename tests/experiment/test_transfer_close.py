"""A transfer runs inside the life of the connection its negotiation opened, which closes after it
(mpsim/sim/transfer_close.py, docs/sim.md "Routes"): on every 4-tuple a capture shows no
data after a FIN of that direction, the FINs continue the sequence numbers after the transfer's
last byte, an MPTCP connection ends with a DATA_FIN (RFC 8684 3.3.3: on a segment without data,
subflow sequence number 0, data-level length 1, the DSN after the stream's last byte), and
through a converter the two legs close in the order its relay closes them
(mpsim/proto/relay.py: a FIN from one side becomes a FIN on the other)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mpsim.experiment.simulation import CONVERTER_DOWN, CONVERTER_UP, SERVER, path_address
from mpsim.wire.mptcp import Dss
from mpsim.wire.segment import TcpFlags, decode_packet, encode_packet
from tests.experiment.test_routes import _sim

SIZE = 200_000
CLIENT_DSL = path_address(0)


def _run(*overrides: str):
    sim = _sim(f"transfers.0.size_bytes={SIZE}", *overrides, record_packets=True)
    result = sim.run()
    return sim, result


def _captured(sim, link):
    """(time, decoded IpPacket) of every packet a capture of ``link`` holds, in capture order."""
    return [(t, decode_packet(encode_packet(p if hasattr(p, "segment") else p.to_ip_packet())))
            for t, p in sim.trace.packets_at(link)]


def _direction(ip):
    return ip.src, ip.segment.src_port, ip.dst, ip.segment.dst_port


def _dss(ip):
    return next((o for o in ip.segment.options if isinstance(o, Dss)), None)


def _fins(packets, src):
    return [(t, ip) for t, ip in packets if ip.src == src and ip.segment.flags & TcpFlags.FIN]


def _check_no_data_after_fin(packets):
    """Per direction of every 4-tuple: nothing with payload after its FIN, and the FIN's sequence
    number the next after the highest byte sent (the numbers continue through the transfer).
    Returns the directions that sent a FIN."""
    closed = {}
    for index, (_, ip) in enumerate(packets):
        seg = ip.segment
        if seg.flags & TcpFlags.SYN:
            continue
        key = _direction(ip)
        if key in closed:
            assert not seg.payload, f"data after the FIN of {key} (packet {index}, seq {seg.seq})"
        if seg.flags & TcpFlags.FIN:
            # a SYN takes one number before its data (SYN data: a Convert request, TFO)
            ends = [(p.segment.seq + len(p.segment.payload) + bool(p.segment.flags & TcpFlags.SYN)) & 0xFFFFFFFF
                    for _, p in packets[:index] if _direction(p) == key
                    and (p.segment.payload or p.segment.flags & TcpFlags.SYN)]
            assert ends and seg.seq == max(ends), f"{key}: FIN at {seg.seq}, data up to {max(ends, default=None)}"
            closed.setdefault(key, index)
    return set(closed)


@pytest.fixture(scope="module")
def converted_download():
    return _run()


@pytest.fixture(scope="module")
def converted_upload():
    return _run("transfers.0.direction=upload")


@pytest.mark.parametrize("link", ["path.dsl", "path.lte", "converter.up", "converter.down", "server.link"])
def test_a_converted_download_shows_no_data_after_a_fin(converted_download, link):
    sim, result = converted_download
    assert result.transfers[0]["completed"] and result.transfers[0]["outcome"] == "converted"
    packets = _captured(sim, link)
    closed = _check_no_data_after_fin(packets)
    # both directions of the negotiated connection (of the joined subflow on the LTE path, of the
    # converter's connection to the server; the converter's client side carries both subflows)
    assert len(closed) == (4 if link == "converter.up" else 2), closed
    # the last packet of each capture is the close's, not the transfer's
    assert not packets[-1][1].segment.payload


def test_the_mptcp_leg_ends_with_data_fins_after_the_last_byte(converted_download):
    sim, _ = converted_download
    # both subflows, in time order (the DATA_FIN must follow every mapping of either)
    packets = sorted(_captured(sim, "path.dsl") + _captured(sim, "path.lte"), key=lambda item: item[0])
    dsl = _captured(sim, "path.dsl")
    for src in (CONVERTER_UP, CLIENT_DSL):
        (_, fin), = _fins(dsl, src)
        dss = _dss(fin)
        # RFC 8684 3.3.3: a DATA_FIN on a segment without data: SSN 0, data-level length 1
        assert dss is not None and dss.data_fin and dss.ssn == 0 and dss.data_level_length_bytes == 1
    (_, down_fin), = _fins(dsl, CONVERTER_UP)
    (_, client_fin), = _fins(dsl, CLIENT_DSL)
    # the converter's DATA_FIN: the DSN after its stream's last byte, on either subflow; that
    # stream is the negotiation's response, then the transfer
    mapped = [d.dsn + d.data_level_length_bytes for _, ip in packets if ip.src == CONVERTER_UP
              and ip.segment.payload and (d := _dss(ip)) is not None and d.dsn is not None]
    assert _dss(down_fin).dsn == max(mapped)
    first_data = next(d for _, ip in packets if ip.src == CONVERTER_UP and ip.segment.payload
                      and (d := _dss(ip)) is not None and d.dsn is not None)
    assert _dss(down_fin).dsn == first_data.dsn + 1000 + SIZE
    # the client sent only its Convert request (SYN data, before the data sequence space): its
    # DATA_FIN takes the DSN the converter's Data ACKs expected all along
    client_fin_s = _fins(dsl, CLIENT_DSL)[0][0]
    converter_acks = {d.data_ack for t, ip in packets if ip.src == CONVERTER_UP and t < client_fin_s
                      and (d := _dss(ip)) is not None and d.data_ack is not None}
    assert converter_acks == {_dss(client_fin).dsn}
    # each side's Data ACK covers the other's DATA_FIN (it takes one DSN)
    assert _dss(client_fin).data_ack == _dss(down_fin).dsn + 1
    last_ack = [ip for _, ip in dsl if ip.src == CONVERTER_UP][-1]
    assert _dss(last_ack).data_ack == _dss(client_fin).dsn + 1


def test_the_joined_subflow_closes_after_the_first(converted_download):
    # Linux closes every subflow once the MPTCP connection is closed (both DATA_FINs exchanged):
    # the joined subflow's FINs follow the first subflow's close (here the client's, which
    # closed second: its FIN has just been ACKed), their Data ACKs cover both DATA_FINs.
    sim, _ = converted_download
    dsl, lte = _captured(sim, "path.dsl"), _captured(sim, "path.lte")
    lte_client = path_address(1)
    (converter_fin_s, converter_fin), = _fins(lte, CONVERTER_UP)
    (client_fin_s, client_fin), = _fins(lte, lte_client)
    last_ack_s, last_ack = lte[-1]
    assert last_ack.src == lte_client and last_ack.segment.flags == TcpFlags.ACK
    assert last_ack.segment.ack == converter_fin.segment.seq + 1
    assert converter_fin.segment.ack == client_fin.segment.seq + 1
    # the converter's ACK of the client's FIN on the first subflow, one DSL delay before it arrives
    first_closed_s = dsl[-1][0] + 0.010
    assert dsl[-1][1].src == CONVERTER_UP and not dsl[-1][1].segment.payload
    assert first_closed_s == pytest.approx(client_fin_s, abs=1e-3)
    assert client_fin_s < converter_fin_s < last_ack_s
    (_, dsl_converter_fin), = _fins(dsl, CONVERTER_UP)
    (_, dsl_client_fin), = _fins(dsl, CLIENT_DSL)
    assert _dss(client_fin).data_ack == _dss(dsl_converter_fin).dsn + 1
    assert _dss(converter_fin).data_ack == _dss(dsl_client_fin).dsn + 1


def test_the_server_leg_is_plain_tcp_and_closes_with_fin_alone(converted_download):
    sim, _ = converted_download
    packets = _captured(sim, "server.link")
    for src in (SERVER, CONVERTER_DOWN):
        (_, fin), = _fins(packets, src)
        assert _dss(fin) is None


def _fin_times(sim):
    dsl, server = _captured(sim, "path.dsl"), _captured(sim, "server.link")
    (server_fin, _), = _fins(server, SERVER)
    (converter_down_fin, _), = _fins(server, CONVERTER_DOWN)
    (client_fin, _), = _fins(dsl, CLIENT_DSL)
    (converter_up_fin, _), = _fins(dsl, CONVERTER_UP)
    return server_fin, converter_down_fin, client_fin, converter_up_fin


def test_through_the_converter_a_download_closes_from_the_server_on(converted_download):
    # the server (the data's origin) closes after its last byte; the converter passes the FIN on
    # to the client once it has sent the client everything; the client answers; the converter
    # then closes its connection to the server (mpsim/proto/relay.py: a FIN becomes a FIN)
    sim, result = converted_download
    server_fin, converter_down_fin, client_fin, converter_up_fin = _fin_times(sim)
    assert server_fin < converter_up_fin < client_fin < converter_down_fin
    # the client leg's FIN leaves when the client has read the last byte (the transfer's end)
    row = result.transfers[0]
    converter_sent = [t for t, ip in _captured(sim, "converter.up") if ip.src == CONVERTER_UP
                      and ip.dst == CLIENT_DSL and ip.segment.flags & TcpFlags.FIN]
    assert converter_sent == [pytest.approx(row["negotiated_s"] + row["duration_s"], abs=1e-9)]


def test_through_the_converter_an_upload_closes_from_the_client_on(converted_upload):
    sim, result = converted_upload
    assert result.transfers[0]["completed"]
    server_fin, converter_down_fin, client_fin, converter_up_fin = _fin_times(sim)
    assert client_fin < converter_down_fin < server_fin < converter_up_fin
    for link in ("path.dsl", "server.link"):
        assert len(_check_no_data_after_fin(_captured(sim, link))) == 2


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_a_plain_tcp_transfer_closes_after_its_data(direction):
    sim, result = _run("client.scheme=plain", f"transfers.0.direction={direction}")
    row = result.transfers[0]
    assert row["completed"] and row["outcome"] == "tcp" and not row["via_converter"]
    packets = _captured(sim, "path.dsl")
    assert len(_check_no_data_after_fin(packets)) == 2
    origin, peer = (SERVER, CLIENT_DSL) if direction == "download" else (CLIENT_DSL, SERVER)
    (origin_fin_s, _), = _fins(packets, origin)
    (peer_fin_s, _), = _fins(packets, peer)
    assert origin_fin_s < peer_fin_s
    # sent when the receiver has the last byte; the capture of the access link sees a download's
    # FIN one server-link delay after the server sent it
    sent_s = row["negotiated_s"] + row["duration_s"] + (0.015 if direction == "download" else 0.0)
    assert origin_fin_s == pytest.approx(sent_s, abs=1e-3)
    # the run lasted until the close was through
    assert result.end_s >= peer_fin_s


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_wireshark_sees_the_data_fin_and_no_data_after_a_fin(converted_download, tmp_path):
    sim, _ = converted_download
    path = tmp_path / "close.pcapng"
    path.write_bytes(sim.trace.pcapng_bytes(["path.dsl", "path.lte", "server.link"]))
    fields = ["frame.interface_name", "tcp.stream", "ip.src", "tcp.flags.fin", "tcp.len",
              "tcp.options.mptcp.datafin.flag", "tcp.analysis.lost_segment", "tcp.analysis.out_of_order"]
    analysis = ["-o", "mptcp.analyze_mptcp:TRUE"]
    out = subprocess.run(["tshark", "-r", str(path), *analysis, "-T", "fields", *sum((["-e", f] for f in fields), [])],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = [dict(zip(fields, line.split("\t"))) for line in out.splitlines() if line]
    finished: set = set()
    data_fins = 0
    for row in rows:
        key = (row["frame.interface_name"], row["tcp.stream"], row["ip.src"])
        if int(row["tcp.len"] or 0):
            assert key not in finished, f"Wireshark: data after a FIN on {key}"
        if row["tcp.flags.fin"] in ("1", "True"):
            finished.add(key)
            data_fins += row["tcp.options.mptcp.datafin.flag"] in ("1", "True")
        # the numbers continue: Wireshark finds no gap and nothing out of order
        assert not row["tcp.analysis.lost_segment"] and not row["tcp.analysis.out_of_order"], row
    # both directions of the client's two subflows and of the converter's connection
    assert len(finished) == 6
    assert data_fins == 2  # the MPTCP connection's two DATA_FINs
    # and its TCP and MPTCP analysis finds nothing to warn about in the whole capture
    warnings = subprocess.run(["tshark", "-r", str(path), *analysis, "-Y", "_ws.expert.severity >= warning",
                               "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message"],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    assert not warnings.strip(), warnings


@pytest.mark.parametrize("overrides", [
    ("client.scheme=mptcp", "server.kind=mptcp_v1"),  # MPTCP end to end, no proxy
    ("client.scheme=mptcp", "server.kind=mptcp_v1", "transfers.0.direction=upload"),
    # a proxy on the path intercepts the MP_CAPABLE SYN (implicit): its two connections carry
    # the transfer, which is modelled end to end
    ("client.scheme=mp-convert-option", "converter.kind=mp-convert", "converter.placement=on_path",
     "client.implicit=true"),
])
def test_other_mptcp_connections_close_after_their_transfer(overrides):
    sim, result = _run(*overrides)
    row = result.transfers[0]
    assert row["completed"] and row["outcome"] == "mptcp"
    # the close went through within the scenario's second, not at the drain limit
    assert result.end_s == 1.0
    assert [e["event"] for e in result.events].count("WatchedConnectionClosed") >= 1
    # (an intercepted connection's transfer runs end to end in the model, so the server link
    # shows it with the client side's numbers: only the client side is checked there)
    on_path = "converter.placement=on_path" in overrides
    for link in ("path.dsl", "path.lte") + (() if on_path else ("server.link",)):
        # both directions of each subflow (the server link carries both subflows)
        closed = _check_no_data_after_fin(_captured(sim, link))
        assert len(closed) == (4 if link == "server.link" else 2), (link, closed)
    dsl = _captured(sim, "path.dsl")
    for src in (CLIENT_DSL, SERVER):
        (_, fin), = _fins(dsl, src)
        assert _dss(fin).data_fin
    # the joined subflow closes once: one FIN each way
    assert sum(1 for _, ip in _captured(sim, "path.lte") if ip.segment.flags & TcpFlags.FIN) == 2


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_a_client_that_rebooted_mid_transfer_sends_no_close(direction):
    # The reboot forgets the connection (no RST, no FIN: a host that lost its memory cannot
    # close what it no longer knows); the light transfer still completes, and the run does not
    # wait for a close that cannot come: it ends with the transfer (or the scenario's second).
    from tests.experiment.test_routes import BASE

    text = BASE + '\n[[events]]\nat_s = 0.3\naction = "reboot"\n'
    sim = _sim("transfers.0.size_bytes=500000", "client.scheme=plain", f"transfers.0.direction={direction}",
               text=text, record_packets=True)
    result = sim.run()
    row = result.transfers[0]
    assert row["completed"]
    assert result.end_s == pytest.approx(max(1.0, row["negotiated_s"] + row["duration_s"]))
    assert not _fins(_captured(sim, "path.dsl"), CLIENT_DSL)


def test_an_outage_and_loss_with_data_sent_again_still_end_in_a_data_fin_after_the_last_byte():
    # The converter is unreachable for most of the transfer on a lossy DSL path: the first
    # subflow carries data again (more subflow sequence space than data-level bytes, found by
    # seed 2); its DATA_FIN still takes the DSN after the stream's last byte.
    from tests.experiment.test_routes import BASE

    text = BASE.replace("duration_s = 1.0", "duration_s = 3.0") + \
        '\n[[events]]\nat_s = 0.2\naction = "converter_down"\n[[events]]\nat_s = 2.5\naction = "converter_up"\n'
    sim = _sim("seed=2", f"transfers.0.size_bytes={SIZE}", "paths.dsl.loss={model='bernoulli', loss_prob=0.02}",
               text=text, record_packets=True)
    result = sim.run()
    assert result.transfers[0]["completed"]
    transfer = sim.transfer_rows[0]
    dsl = _captured(sim, "path.dsl")
    packets = sorted(dsl + _captured(sim, "path.lte"), key=lambda item: item[0])
    (_, fin), = _fins(dsl, CONVERTER_UP)
    mapped = [d.dsn + d.data_level_length_bytes for _, ip in packets if ip.src == CONVERTER_UP
              and ip.segment.payload and (d := _dss(ip)) is not None and d.dsn is not None]
    assert _dss(fin).data_fin and _dss(fin).dsn == max(mapped)
    assert transfer["completed"] and len(_check_no_data_after_fin(dsl)) == 2
