"""IPv6 scenarios (``ip_version = 6``): the key, the address plan, every scheme negotiating
over IPv6 through the simulator with the outcomes it has on IPv4, and the transfer's IPv6
header accounting (docs/sim.md "Addresses")."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest
import simpy

from mpsim.experiment.scenario import ScenarioError, load
from mpsim.experiment.simulation import ADDRESS_PLANS, CONVERTER, SERVER_NODE, run_scenario
from mpsim.proto.components import SCHEMES
from mpsim.sim.link import LinkDirection
from mpsim.sim.trace import Trace
from mpsim.sim.transfer import BulkTransfer
from mpsim.wire.mptcp import Dss
from mpsim.wire.segment import IpPacket, decode_packet, encode_packet

V6 = ADDRESS_PLANS[6]
#: The columns that say what happened (times differ a little: IPv6 packets are 20 bytes longer).
OUTCOME_COLUMNS = ("outcome", "fallback_reason", "syns_sent", "rsts_sent", "attempts", "source_ports_used",
                   "via_proxy")


def _scenario(ip_version: int, *overrides: str):
    loaded = load("scheme_comparison", [f"ip_version={ip_version}", *overrides])
    return next(iter(loaded.variants.values()))


def _outcomes(result) -> list[tuple]:
    return [tuple(row[k] for k in OUTCOME_COLUMNS) for row in result.connections] + \
        [(t["outcome"], t["completed"], t["subflows"], t["bytes_delivered"]) for t in result.transfers]


def test_a_bad_ip_version_is_refused_by_name():
    with pytest.raises(ScenarioError, match=r"--set ip_version=5: ip_version: expected 4 or 6, got 5"):
        load("default", ["ip_version=5"])
    with pytest.raises(ScenarioError, match=r"ip_version: expected 4 or 6, got '6'"):
        load("default", ["ip_version='6'"])


def test_the_ipv6_plan_is_one_slash_64_per_role_in_the_benchmarking_range():
    bench = ipaddress.IPv6Network("2001:2::/48")  # RFC 5180
    hosts = [V6.converter_up, V6.converter_down, V6.server, V6.converter_in] + [V6.path(i) for i in range(16)]
    assert all(h in bench for h in hosts)
    assert len({V6.network(h) for h in hosts}) == len(hosts) and all(V6.network(h).prefixlen == 64 for h in hosts)
    # The subnet ID has the digits of the IPv4 plan's third octet.
    assert (str(V6.path(1)), str(ADDRESS_PLANS[4].path(1))) == ("2001:2:0:17::1", "198.18.17.1")


# Every scheme against servers that make it convert, fall back and fail; explicit and implicit
# for the schemes that can signal implicitly; with a NAT (NAPT66 on IPv6).
CASES = [(scheme, server, box, implicit)
         for scheme in SCHEMES.names()
         for server in ("legacy_drop", "mptcp_v1", "tfo", "closed")
         for box in ("", "nat", "strip-mptcp", "drop-syn-data")
         for implicit in ((False, True) if SCHEMES.get(scheme).implicit_capable else (False,))]


@pytest.mark.parametrize("scheme,server,box,implicit", CASES)
def test_every_scheme_negotiates_over_ipv6_as_over_ipv4(scheme, server, box, implicit):
    sets = [f"client.scheme={scheme}", f"server.kind={server}", "transfers=[{size_bytes = 100000}]"]
    sets += [f"paths.access.middleboxes={box}"] if box else []
    sets += ["client.implicit=true", "converter.placement=on_path"] if implicit else []
    v4 = run_scenario(_scenario(4, *sets), variant="v4", run_index=0)
    v6 = run_scenario(_scenario(6, *sets), variant="v6", run_index=0, record_packets=True)
    packets = [r.packet for r in v6.trace.packets if isinstance(r.packet, IpPacket)]
    assert packets and all(p.src.version == 6 and p.dst.version == 6 for p in packets)
    if scheme == "mp-convert-option" and not implicit:
        # An IPv6 destination in MP_CONVERT does not fit beside MP_CAPABLE in 40 option bytes
        # (docs/mp-convert.md): the client falls back before sending anything to the proxy.
        assert {row["fallback_reason"] for row in v6.connections} == {"signal_does_not_fit"}
        assert all(not row["via_proxy"] for row in v6.connections)
        return
    assert _outcomes(v6) == _outcomes(v4)


def test_the_converter_and_socks5_reach_the_ipv6_server_for_the_client():
    for scheme in ("convert", "socks5"):
        result = run_scenario(_scenario(6, f"client.scheme={scheme}"), variant=scheme, run_index=0,
                              record_packets=True)
        assert [row["outcome"] for row in result.connections] == ["converted"]
        # The proxy's own connection goes from its server-side address to the server, so it read
        # the IPv6 destination from the Connect TLV / the SOCKS5 CONNECT (ATYP 4).
        proxy_syns = {(r.packet.src, r.packet.dst) for r in result.trace.packets
                      if r.kind == "sent" and r.src == CONVERTER and isinstance(r.packet, IpPacket)
                      and r.packet.segment.flags & 0x12 == 0x02}  # SYN, not SYN-ACK
        assert proxy_syns == {(V6.converter_down, V6.server)}, scheme


def test_the_nat_translates_ipv6_to_its_public_address():
    result = run_scenario(_scenario(6, "client.scheme=plain", "paths.access.middleboxes=nat"), variant="nat",
                          run_index=0, record_packets=True)
    sources = {r.packet.src for r in result.trace.packets if r.kind == "delivered" and r.dst == SERVER_NODE}
    assert sources == {ipaddress.IPv6Address("2001:2:0:16::c8")}  # host 200 of the path's /64
    assert [row["outcome"] for row in result.connections] == ["tcp"]
    assert [row["destination"] for row in result.connections] == ["[2001:2:0:3::1]:80"]  # the port reads apart


# --- transfers -------------------------------------------------------------------------------------


def _sizes(mptcp: bool, addresses) -> tuple[list, Trace]:
    env = simpy.Environment()
    trace = Trace(record_packets=True)
    down = LinkDirection(env, "transfer.x.down", delay_s=0.01, rate_bps=10e6, trace=trace)
    up = LinkDirection(env, "transfer.x.up", delay_s=0.01, rate_bps=10e6, trace=trace)
    BulkTransfer(env, [(down, up)], 100_000, mptcp=mptcp, addresses=addresses, rcv_buf_bytes=1_000_000)
    env.run(until=10)
    return [r.packet for r in trace.packets if r.kind == "sent"], trace


V6_PAIR = [(ipaddress.IPv6Address("2001:2:0:3::1"), ipaddress.IPv6Address("2001:2:0:16::1"))]


@pytest.mark.parametrize("mptcp,payload_bytes,ack_bytes", [(False, 1428, 72), (True, 1400, 84)])
def test_ipv6_transfer_headers(mptcp, payload_bytes, ack_bytes):
    # Hand-worked: IPv6 40 + TCP 20 + NOP NOP Timestamps 12 = 72; a full packet is 1500 bytes,
    # so TCP carries 1500 - 72 = 1428 bytes and MPTCP, which reserves the 28-byte DSS, 1400.
    # A pure ACK is 72 bytes, + 12 with the MPTCP Data ACK (DSS 12).
    packets, _ = _sizes(mptcp, V6_PAIR)
    data = [p for p in packets if p.payload_bytes]
    acks = [p for p in packets if not p.payload_bytes and not p.sack_blocks]
    # MPTCP: a scheduler pick runs on to a 32 KiB data fragment's end (Linux
    # __subflow_push_pending), so it can reach the end of what the application has written, which
    # the connection's send buffer bounds: one short segment there (696 bytes at DSN 57400).
    assert {p.payload_bytes for p in data[:-1]} - {payload_bytes} == ({696} if mptcp else set())
    assert {p.size_bytes for p in data if p.payload_bytes == payload_bytes} == {1500}
    assert {p.size_bytes for p in acks} == {ack_bytes}
    for segment in data[:3] + acks[:3]:
        wire = segment.to_ip_packet()
        assert (wire.src, wire.dst) in (V6_PAIR[0], V6_PAIR[0][::-1])
        assert len(encode_packet(wire)) == segment.size_bytes  # the accounting is the wire's
        assert any(isinstance(o, Dss) for o in wire.segment.options) == mptcp


def test_ipv4_transfer_headers_are_unchanged():
    packets, _ = _sizes(True, None)
    data = [p for p in packets if p.payload_bytes]
    assert data[0].payload_bytes == 1420 and data[0].size_bytes == 1500
    assert data[0].to_ip_packet().src == ipaddress.IPv4Address("198.18.0.2")


def test_transfer_addresses_must_be_one_version_per_path():
    env = simpy.Environment()
    pair = (LinkDirection(env, "a", delay_s=0.01, rate_bps=1e6), LinkDirection(env, "b", delay_s=0.01, rate_bps=1e6))
    with pytest.raises(ValueError, match="all IPv4 or all IPv6"):
        BulkTransfer(env, [pair], 1000, addresses=[(V6_PAIR[0][0], ipaddress.IPv4Address("198.18.0.1"))])
    with pytest.raises(ValueError, match="one .sender, receiver. pair per path"):
        BulkTransfer(env, [pair], 1000, addresses=[("2001:2::1", "2001:2::2")])


def test_an_ipv6_scenario_transfer_uses_the_negotiations_addresses_and_decodes():
    result = run_scenario(_scenario(6, "client.scheme=convert", "transfers=[{size_bytes = 50000}]"),
                          variant="convert", run_index=0, record_packets=True)
    assert result.transfers[0]["outcome"] == "converted" and result.transfers[0]["completed"]
    # The transfer crosses the real links (mpsim.sim.route): its light segments on the access link.
    access = f"path.{result.transfers[0]['paths'].split()[0]}"
    records = [r for r in result.trace.packets
               if r.link == access and r.kind == "sent" and hasattr(r.packet, "dst_endpoint")]
    assert records
    wire = [r.packet.to_ip_packet() for r in records]
    assert {(p.src, p.dst) for p in wire if p.segment.payload} == {(V6.converter_up, V6.path(0))}
    for packet in wire[:20]:
        data = encode_packet(packet)
        decoded = decode_packet(data)  # options come back in canonical form (padding as EOL)
        assert (decoded.src, decoded.dst, decoded.segment.payload) == (packet.src, packet.dst, packet.segment.payload)
        assert encode_packet(decoded) == data


def test_tshark_reads_an_ipv6_transfer_capture(tmp_path):
    if shutil.which("tshark") is None:
        print("SKIP reason: tshark is not installed")
        pytest.skip("tshark is not installed")
    _, trace = _sizes(True, V6_PAIR)
    path = tmp_path / "v6.pcapng"
    path.write_bytes(trace.pcapng_bytes(["transfer.x.down", "transfer.x.up"]))
    done = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "separator=,", "-e", "ipv6.src",
                           "-e", "ipv6.dst", "-e", "tcp.len", "-e", "tcp.options.mptcp.datalvllen", "-Y", "tcp.len > 0",
                           "-c", "3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split(",") for line in done.stdout.split()]
    assert rows == [["2001:2:0:3::1", "2001:2:0:16::1", "1400", "1400"]] * 3


def test_every_ipv6_negotiation_packet_has_the_bytes_of_its_encoding():
    # As tests/golden/test_packet_bytes.py for IPv4: every variant of scheme_comparison (every
    # scheme) over IPv6; the lazily known length is the encoding's and the bytes decode back.
    from mpsim.experiment import results
    from mpsim.wire.options import canonical_options

    loaded = load("scheme_comparison", ["ip_version=6"])
    outcome = results.run(loaded, record_packets=True)
    packets = [r.packet for run in outcome.runs for r in run.trace.packets if isinstance(r.packet, IpPacket)]
    assert len(packets) > 50 and all(p.src.version == 6 for p in packets)
    for packet in packets:
        data = encode_packet(packet)
        assert packet.length_bytes == len(data) and data[0] >> 4 == 6
        decoded = decode_packet(data)
        assert decoded.segment.options == canonical_options(packet.segment.options) if packet.segment.options \
            else decoded.segment.options == ()
        assert (decoded.src, decoded.dst, decoded.segment.payload) == (packet.src, packet.dst, packet.segment.payload)


def test_ipv6_connections_advertise_and_send_the_ipv6_mss():
    # Linux: MSS = MTU - IP - TCP, so 1440 over IPv6 on a 1500-byte MTU (1460 over IPv4); with
    # Timestamps a full segment carries 1428 bytes (1448), a 1500-byte packet either way.
    for version, mss, payload in ((4, 1460, 1448), (6, 1440, 1428)):
        result = run_scenario(_scenario(version, "client.scheme=plain", "workload.response_size_bytes=5000"),
                              variant="plain", run_index=0, record_packets=True)
        sent = [r.packet for r in result.trace.packets if r.kind == "sent" and isinstance(r.packet, IpPacket)]
        advertised = {o.mss_bytes for p in sent if p.segment.flags & 0x02 for o in p.segment.options
                      if type(o).__name__ == "MaximumSegmentSize"}
        assert advertised == {mss}, version
        data = [p for p in sent if len(p.segment.payload) == payload]
        assert data and {p.length_bytes for p in data} == {1500}, version
