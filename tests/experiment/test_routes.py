"""A scenario's transfers cross the topology the negotiation uses (mpsim/sim/route.py, the
simulation module doc): the routes the router's table gives, queues shared with negotiation
packets, the converter outage, households' own access lines, the relay CPU on the route, and
captures of one flow on one link."""

from __future__ import annotations

import pytest

from mpsim.experiment import scenario as sc
from mpsim.experiment.simulation import CONVERTER_UP, Simulation
from mpsim.sim.link import LinkDirection
from mpsim.sim.relay import RelayedTransfer
from mpsim.sim.route import FoldedHops
from mpsim.wire.segment import IpPacket, TcpFlags

BASE = """
description = "routes test"
duration_s = 1.0
drain_s = 30.0
seed = 3
[client]
scheme = "convert"
primary_path = "dsl"
[converter]
kind = "convert"
delay_s = 0.002
[server]
kind = "legacy_drop"
delay_s = 0.015
[paths.dsl]
rate_down_bps = 20e6
rate_up_bps = 2e6
delay_s = 0.010
queue_bytes = 150_000
[paths.lte]
rate_down_bps = 30e6
rate_up_bps = 8e6
delay_s = 0.030
queue_bytes = 300_000
[workload]
arrivals = "none"
[[transfers]]
start_s = 0.0
size_bytes = 1_000_000
direction = "download"
congestion_control = "cubic"
"""


def _sim(*overrides: str, text: str = BASE, record_packets: bool = False) -> Simulation:
    scenario = sc.load_text(text, name="t", source="t.toml", overrides=overrides).base
    return Simulation(scenario, variant="", run_index=0, record_packets=record_packets)


def _routes(sim: Simulation, leg: str = "client_leg") -> list[tuple[list[str], list[str]]]:
    """(data hops, ACK hops) by name, per subflow of the first transfer still running (of its
    client or server leg when it is relayed through the proxy)."""
    _, transfer = sim._running[0]
    if isinstance(transfer, RelayedTransfer):
        transfer = getattr(transfer, leg)
    return [([h.name for h in sf.forward.hops], [h.name for h in sf.receiver.backward.hops])
            for sf in transfer.sender.subflows]


def _start_routes(sim: Simulation) -> list[tuple[list[str], list[str]]]:
    sim.env.process(sim._director())
    sim.env.run(until=0.5)  # negotiated, transfer running
    return _routes(sim)


def test_a_converted_download_runs_through_the_converter_node_on_the_real_links():
    # Relayed (mpsim.sim.relay): the client's subflows end at the converter, whose own
    # connection to the server is the server leg.
    sim = _sim()
    routes = _start_routes(sim)
    assert routes == [
        (["converter.up.out", "dsl.down"], ["dsl.up", "converter.up.in"]),
        (["converter.up.out", "lte.down"], ["lte.up", "converter.up.in"]),
    ]
    assert _routes(sim, "server_leg") == [(["server.out", "converter.down.in"], ["converter.down.out", "server.in"])]


def test_a_direct_upload_goes_access_router_server():
    routes = _start_routes(_sim("client.scheme=plain", "transfers.0.direction=upload"))
    assert routes == [(["dsl.up", "server.in"], ["server.out", "dsl.down"])]


def test_on_the_path_every_packet_of_the_primary_path_crosses_the_proxy():
    # Plain TCP through a proxy on the path: the router's table sends the server's packets for
    # the client's DSL address to the port where the proxy's "up" side sits; the proxy forwards
    # the client's packets out of its "down" side.
    routes = _start_routes(_sim("client.scheme=plain", "converter.kind=mp-convert", "converter.placement=on_path"))
    assert routes == [(["server.out", "converter.up.in", "dsl.down"], ["dsl.up", "converter.down.out", "server.in"])]


def test_on_the_path_a_second_subflow_reaches_the_proxy_through_the_router():
    sim = _sim("client.scheme=mp-convert-option", "converter.kind=mp-convert", "converter.placement=on_path")
    assert sim.router.port_for(CONVERTER_UP) == "access.dsl"  # the proxy's up side faces that port
    routes = _start_routes(sim)
    assert routes[1][1][:2] == ["lte.up", "converter.up.in"]


def test_transfer_segments_share_the_access_queue_with_negotiation_packets():
    # Requests issued while a transfer fills the DSL downlink wait behind its segments: their
    # set-up takes longer than without the transfer.
    text = BASE.replace('arrivals = "none"', 'arrivals = "times"\nat_s = [0.6, 0.7, 0.8]')

    def setup_times(*overrides: str) -> list[float]:
        rows = _sim("transfers.0.size_bytes=6_000_000", *overrides, text=text).run().connections
        return [row["setup_time_s"] for row in rows if row["start_s"] >= 0.5]

    slower = [a - b for a, b in zip(setup_times(), setup_times("transfers=[]"))]
    assert len(slower) == 3 and all(delta > 0.005 for delta in slower), slower


def test_converter_down_black_holes_transfer_data():
    text = BASE + '[[events]]\nat_s = 0.3\naction = "converter_down"\n'
    result = _sim("drain_s=3", text=text).run()
    transfer = result.transfers[0]
    assert not transfer["completed"] and 0 < transfer["bytes_delivered"] < transfer["bytes"]
    lost = {row["counter"]: row["value"] for row in result.counters if row["component"] == "converter_outage"}
    assert lost["packets_lost"] > 50  # transfer segments (the negotiation had ended at 0.1 s)


def test_each_household_has_its_own_access_line():
    one = _sim("client.scheme=plain").run().transfers[0]
    sim = _sim("client.scheme=plain", "converter.households=2", "paths.dsl.loss={model='bernoulli', loss_prob=0.0}")
    result = sim.run()
    rows = result.transfers
    own_down, own_up = sim._access("dsl", 1)
    assert own_down is not sim.networks["dsl"].up and own_up is not sim.networks["dsl"].down
    assert own_up.counters.packets_delivered > 500 and sim.networks["dsl"].down.counters.packets_delivered > 500
    # Each household's 1 MB gets its own 20 Mbit/s line: as fast as one household alone (a shared
    # downlink would halve it); the loss generator of the household's line has its own seed name.
    assert all(row["goodput_bps"] > 0.95 * one["goodput_bps"] for row in rows)
    assert "loss.dsl.h1.down" in result.seeds
    assert "path.dsl.h1" in sim.capture_points()


def test_the_relay_cpu_job_is_the_converters_relay_copying_between_the_legs():
    # 1 us per byte caps the converter's relay of one connection at 8 Mbit/s of payload, below
    # what two paths would carry: the relay copies each chunk on the CPU (mpsim.sim.relay), and
    # no route carries a per-segment stage any more.
    sim = _sim("converter.cores=1", "converter.relay_cpu_s_per_gb=1000", "client.scheme=convert")
    sim.env.process(sim._director())
    sim.env.run(until=0.5)
    _, transfer = sim._running[0]
    assert isinstance(transfer, RelayedTransfer) and transfer.relay.cpu is sim.cpu
    for leg in (transfer.client_leg, transfer.server_leg):
        for subflow in leg.sender.subflows:
            # every step is a hop (or folded hops): nothing charges the CPU per segment
            assert all(isinstance(step, (LinkDirection, FoldedHops)) for step in subflow.forward.steps)
    sim.env.run(until=30)
    capped = transfer.result()
    free = _sim().run().transfers[0]
    assert capped.completed and capped.goodput_bps < 8e6 and capped.relay_cpu_jobs > 0
    assert sim.cpu.busy_s >= 1_000_000 * 1e-6  # every byte copied once, plus the set-ups
    assert free["goodput_bps"] > 1.5 * capped.goodput_bps


def test_a_capture_of_the_access_link_holds_the_negotiation_and_the_transfer_of_one_flow():
    sim = _sim(record_packets=True)
    sim.run()
    records = sim.trace.packets_at("path.dsl")
    negotiation = [p for _, p in records if isinstance(p, IpPacket)]
    transfer = [p.to_ip_packet() for _, p in records if not isinstance(p, IpPacket)]

    def flow(ip):
        return ip.src, ip.segment.src_port, ip.dst, ip.segment.dst_port

    to_client = {flow(p) for p in negotiation if p.src == CONVERTER_UP}
    assert len(to_client) == 1 and {flow(p) for p in transfer if p.src == CONVERTER_UP} == to_client
    # The transfer continues the converter's sequence numbers where its last negotiation segment
    # before it ended (its FIN comes after the transfer: tests/experiment/test_transfer_close.py).
    first_s = next(t for t, p in records if not isinstance(p, IpPacket))
    last = [p.segment for t, p in records if isinstance(p, IpPacket) and p.src == CONVERTER_UP and t < first_s][-1]
    next_seq = (last.seq + len(last.payload) + bool(last.flags & (TcpFlags.SYN | TcpFlags.FIN))) & 0xFFFFFFFF
    first_data = next(p.segment for p in transfer if p.src == CONVERTER_UP and p.segment.payload)
    assert first_data.seq == next_seq
    # The server link shows the converter's own connection to the server, on the same 4-tuple as its negotiation.
    server_side = sim.trace.packets_at("server.link")
    assert {flow(p) for _, p in server_side if isinstance(p, IpPacket) and p.segment.src_port == 80} == \
        {flow(p.to_ip_packet()) for _, p in server_side if not isinstance(p, IpPacket) and p.payload_bytes}
    assert sim.trace.pcap_bytes("path.dsl")  # encodes


def test_same_seed_same_result_with_routes():
    overrides = ("converter.households=2", "converter.cores=1",
                 "paths.lte.loss={model='bernoulli', loss_prob=0.01}", "paths.dsl.jitter_s=0.002")
    first, second = _sim(*overrides).run(), _sim(*overrides).run()
    assert first.transfers == second.transfers and first.counters == second.counters
    assert first.connections == second.connections
