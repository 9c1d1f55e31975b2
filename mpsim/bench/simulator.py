"""How fast the simulator runs, beside bare SimPy and ns.py, measured side by side in one run.

Measurements (each repeated in interleaved rounds; wall time from ``time.perf_counter``):

* ``bulk_flow``: one bulk TCP flow (:class:`mpsim.sim.transfer.BulkTransfer`, CUBIC) over a
  3-hop path, client - router - router - server: a :class:`~mpsim.sim.route.Route` of three
  :class:`~mpsim.sim.link.LinkDirection` hops per direction, each ``HOP_RATE_BPS`` and
  ``HOP_DELAY_S``, unbounded queues, the routers forwarding at once. The sender is limited by the receive window (``BULK_WINDOW_BYTES``),
  so nothing is lost. Counted: packets delivered end to end (data and ACKs).
* ``nspy_flow``: the closest ns.py equivalent, if ns.py is installed: its
  ``TCPPacketGenerator`` (Reno, window capped at the same bytes) and ``TCPSink`` through three
  ``Port`` (same rate, unbounded) + ``Wire`` (same delay) hops each way. How it differs:
  ns.py ACKs every segment (40-byte ACKs; mpsim delays ACKs, 52 bytes and up); its packets are
  ``PACKET_BYTES`` on the wire without header accounting; Reno slow start instead of CUBIC
  (both run loss-free up to the same window); one SimPy process per link element and per
  segment timer. Counted the same way: data packets and ACKs delivered end to end.
* ``simpy_pipeline``: the bare SimPy rate: a source offers one packet object every
  ``HOP_DELAY_S`` to three ``simpy.Store`` hops, each a process that gets a packet, holds it
  ``HOP_DELAY_S`` and puts it into the next store (unbounded stores, the puts not yielded on:
  the least SimPy lets a model do per packet and hop). Counted: packets out of the last hop.
* ``negotiations_*``: complete requests (handshake, 100-byte request, 1000-byte response, close)
  of a :class:`~mpsim.proto.client.ClientHost` against a :class:`~mpsim.proto.server.ServerHost`
  with a :class:`~mpsim.proto.server.ResponderApp`, one after the other: the next request
  starts at the instant the previous one finished. Schemes ``plain`` (TCP over one link, the
  3-hop path's 15 ms one way) and ``convert`` (RFC 8803 through a
  :class:`~mpsim.proto.convert.ConverterHost` between them, 10 ms from the client and 5 ms from
  the server, MPTCP on the client's leg); no routers, so every packet is one a negotiating
  machine sent or received. Drivers ``sim`` (:class:`~mpsim.sim.node.SimNode`, links with
  rates, a trace of events) and ``harness`` (:class:`~mpsim.proto.harness.Harness`, fixed delays).
* ``two_path_transfer``: 16 MiB over MPTCP on the two paths of ``models/bulk_two_path.toml``
  (DSL 20 Mb/s and LTE 30 Mb/s down, drop-tail queues, CUBIC, losses and recoveries
  included) through the converter as :mod:`mpsim.experiment.simulation` runs it: relayed
  (:class:`~mpsim.sim.relay.RelayedTransfer`), the client leg's subflows over the access path
  and the converter's "up" link, the converter's TCP connection over its "down" link and the
  server link (:func:`two_path_routes`), without the negotiation. Counted: wall seconds for the
  whole transfer.

Ratios are computed per round (the two rates of a ratio measured next to each other) and
reported as min and median over the rounds. Targets: bulk flow at least 5x ns.py and 0.5x the
bare pipeline, per wall-second at least 10,000 plain negotiations and 4,000 converted ones (one
core: everything runs in this process), the 16 MiB two-path transfer under 1 wall-second.

Each sample also records the CPU seconds of this process (``time.process_time``) beside the wall
seconds: on a machine shared with other work, the rate per CPU-second is the figure that says what
one core does; the targets are judged on wall seconds, as the issue that set them asks.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.machinery
import importlib.metadata
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import simpy

from mpsim import provenance
from mpsim.bench import write_json_and_markdown
from mpsim.proto.client import ClientHost, ClientPolicy, ConnectionFinished, Request
from mpsim.proto.harness import Harness
from mpsim.proto.components import ProxySettings, build_proxy_host
from mpsim.proto.server import ResponderApp, ServerHost, ServerKind
from mpsim.sim.link import Link, LinkDirection
from mpsim.sim.node import SimNode
from mpsim.sim.relay import RelayedTransfer
from mpsim.sim.route import Route, forward_segment
from mpsim.sim.trace import Trace
from mpsim.sim.transfer import BulkTransfer

HOPS = 3
HOP_RATE_BPS = 100e6
HOP_DELAY_S = 0.005
MSS_BYTES = 1448
PACKET_BYTES = 1500  # a full data packet on the wire (mpsim: 52 header + 1448 payload bytes)
BULK_WINDOW_BYTES = 512 * 1024  # above the path's 375 kB bandwidth-delay product: a small standing queue
MIB = 1024 * 1024

TARGET_NSPY_RATIO = 5.0
TARGET_PIPELINE_RATIO = 0.5
#: Negotiations per wall-second, by scheme: a plain one (one connection) and a converted one (two
#: connections, MPTCP on the client's leg).
TARGET_NEGOTIATIONS_PER_WALL_S = {"plain": 10_000, "convert": 4_000}
TARGET_TWO_PATH_WALL_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class BenchConfig:
    """How much each round simulates."""

    rounds: int = 5
    bulk_size_bytes: int = 16 * MIB  # ns.py sends as many full packets as mpsim's flow
    pipeline_packets: int = 40_000
    negotiations: int = 1000
    two_path_size_bytes: int = 16 * MIB

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(rounds=2, bulk_size_bytes=4 * MIB, pipeline_packets=10_000, negotiations=300,
                   two_path_size_bytes=16 * MIB)


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One timed run: ``count`` things (packets, negotiations, bytes) in ``wall_s`` seconds, which
    took ``cpu_s`` seconds of this process's CPU time (None: not measured)."""

    count: int
    wall_s: float
    cpu_s: float | None = None


class _Clock:
    """Wall and CPU time from one start, for a :class:`Sample`."""

    def __init__(self) -> None:
        self.wall_start_s = time.perf_counter()
        self.cpu_start_s = time.process_time()

    def sample(self, count: int) -> Sample:
        return Sample(count, time.perf_counter() - self.wall_start_s, time.process_time() - self.cpu_start_s)


# --- the bulk flow over three hops -----------------------------------------------------------------


def _three_hops(env: simpy.Environment, name: str) -> Route:
    """Three rated hops as a :class:`~mpsim.sim.route.Route` (routers that forward at once: each
    hop delivers to the route, as a node does for a light segment)."""
    return Route(name, [LinkDirection(env, f"{name}{i}", delay_s=HOP_DELAY_S, rate_bps=HOP_RATE_BPS,
                                      deliver=forward_segment) for i in range(HOPS)])


def _delivered(route: Route) -> int:
    return route.hops[-1].counters.packets_delivered


def bulk_flow(size_bytes: int) -> Sample:
    """One window-limited CUBIC flow of ``size_bytes`` over three hops; packets delivered end to end."""
    env = simpy.Environment()
    forward, backward = _three_hops(env, "up"), _three_hops(env, "down")
    start_s = time.perf_counter()
    transfer = BulkTransfer(env, [(forward, backward)], size_bytes, rcv_buf_bytes=BULK_WINDOW_BYTES)
    env.run()
    wall_s = time.perf_counter() - start_s
    record = transfer.result()
    if not record.completed or record.retransmissions:
        raise RuntimeError(f"the benchmark flow should complete without loss: {record}")
    return Sample(_delivered(forward) + _delivered(backward), wall_s)


def nspy_available() -> bool:
    try:
        import ns.packet.tcp_generator  # noqa: F401  (the ns.py distribution's import name is ns)
    except ImportError:
        return False
    return True


def nspy_flow(packets: int) -> Sample:
    """ns.py's TCP generator and sink over three Port + Wire hops each way (see the module docstring)."""
    from ns.flow.cc import TCPReno
    from ns.flow.flow import Flow
    from ns.packet.tcp_generator import TCPPacketGenerator
    from ns.packet.tcp_sink import TCPSink
    from ns.port.port import Port
    from ns.port.wire import Wire

    window_bytes = BULK_WINDOW_BYTES // MSS_BYTES * PACKET_BYTES

    class WindowCappedReno(TCPReno):
        def ack_received(self, rtt: float = 0, current_time: float = 0) -> None:
            super().ack_received(rtt, current_time)
            self.cwnd = min(self.cwnd, window_bytes)

    env = simpy.Environment()
    flow = Flow(fid=0, src="client", dst="server", size=packets * PACKET_BYTES, start_time=0,
                finish_time=float("inf"))
    cc = WindowCappedReno(mss=PACKET_BYTES, cwnd=10 * PACKET_BYTES, ssthresh=2**62)
    start_s = time.perf_counter()
    sender = TCPPacketGenerator(env, flow, cc, element_id="client")
    sender.mss = PACKET_BYTES
    sink = TCPSink(env, rec_arrivals=False, rec_waits=False)

    def chain(source: Any, destination: Any) -> Any:
        for _ in range(HOPS):
            port, wire = Port(env, rate=HOP_RATE_BPS), Wire(env, delay_dist=lambda: HOP_DELAY_S)
            source.out, port.out = port, wire
            source = wire
        source.out = destination
        return source

    last_data_wire = chain(sender, sink)
    last_ack_wire = chain(sink, sender)
    env.run()
    wall_s = time.perf_counter() - start_s
    if sink.packets_received[0] != packets:
        raise RuntimeError(f"ns.py delivered {sink.packets_received[0]} of {packets} packets")
    return Sample(last_data_wire.packets_rec + last_ack_wire.packets_rec, wall_s)


# --- bare SimPy --------------------------------------------------------------------------------------


class _Packet:
    __slots__ = ("seq", "size_bytes")

    def __init__(self, seq: int, size_bytes: int) -> None:
        self.seq = seq
        self.size_bytes = size_bytes


def simpy_pipeline(packets: int) -> Sample:
    """``packets`` packet objects through three Store hops (see the module docstring)."""
    env = simpy.Environment()
    stores = [simpy.Store(env) for _ in range(HOPS)]
    delivered = 0

    def source():
        inbox = stores[0]
        for seq in range(packets):
            yield env.timeout(HOP_DELAY_S)
            inbox.put(_Packet(seq, PACKET_BYTES))

    def hop(index: int):
        nonlocal delivered
        inbox = stores[index]
        outbox = stores[index + 1] if index + 1 < HOPS else None
        while True:
            packet = yield inbox.get()
            yield env.timeout(HOP_DELAY_S)
            if outbox is not None:
                outbox.put(packet)
            else:
                delivered += 1

    start_s = time.perf_counter()
    env.process(source())
    for index in range(HOPS):
        env.process(hop(index))
    env.run()
    wall_s = time.perf_counter() - start_s
    if delivered != packets:
        raise RuntimeError(f"the pipeline delivered {delivered} of {packets} packets")
    return Sample(delivered, wall_s)


# --- negotiations ------------------------------------------------------------------------------------

CLIENT = IPv4Address("198.18.0.1")
CONVERTER_UP = IPv4Address("198.18.1.1")
CONVERTER_DOWN = IPv4Address("198.18.2.1")
SERVER = IPv4Address("198.18.3.1")
CONVERTER_PORT = 1234
REQUEST = Request(SERVER, 80, request_size_bytes=100, response_size_bytes=1000)
EXPECTED_OUTCOME = {"plain": "tcp", "convert": "converted"}


class BackToBack:
    """A workload machine around a ClientHost: ``count`` requests one after the other, the next
    started at the instant the previous one finished (as a timer due at once, so any driver
    runs it). Everything else goes to the client."""

    def __init__(self, client: ClientHost, request: Request, count: int) -> None:
        self.client = client
        self.request = request
        self.count = count
        self.started = 0
        self.start_due_s: float | None = 0.0
        self._now_s = 0.0

    def receive(self, port: str, packet: Any, now: float) -> None:
        self.client.receive(port, packet, now)

    def handle_timer(self, now: float) -> None:
        if self.start_due_s is not None and self.start_due_s <= now:
            self.start_due_s = None
            self.started += 1
            self.client.connect(self.request, now)
        self.client.handle_timer(now)

    def get_timer(self) -> float | None:
        deadline = self.client.get_timer()
        if self.start_due_s is not None and (deadline is None or self.start_due_s < deadline):
            return self.start_due_s
        return deadline

    def outgoing(self, now: float) -> list:
        self._now_s = now
        return self.client.outgoing(now)

    def next_event(self) -> Any | None:
        event = self.client.next_event()
        if isinstance(event, ConnectionFinished) and self.started < self.count:
            self.start_due_s = self._now_s
        return event


def _machines(scheme: str, count: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    client = ClientHost("client", {"eth0": CLIENT}, rng=rng, policy=ClientPolicy(scheme=scheme),
                        proxies=((CONVERTER_UP, CONVERTER_PORT),))
    machines: dict[str, Any] = {
        "client": BackToBack(client, REQUEST, count),
        "server": ServerHost("server", SERVER, ServerKind.LEGACY_DROP, rng=rng,
                             app=ResponderApp(REQUEST.response_size_bytes,
                                              request_size_bytes=REQUEST.request_size_bytes)),
    }
    if scheme == "convert":
        machines["converter"] = build_proxy_host(
            "convert", "converter", {"up": CONVERTER_UP, "down": CONVERTER_DOWN}, rng=rng,
            settings=ProxySettings(port=CONVERTER_PORT, client_prefixes=("198.18.0.0/24",)))
    return machines


# (a, a_port, b, b_port, one-way delay) per scheme
_LINKS = {
    "plain": [("client", "eth0", "server", "eth0", HOPS * HOP_DELAY_S)],
    "convert": [("client", "eth0", "converter", "up", (HOPS - 1) * HOP_DELAY_S),
                     ("converter", "down", "server", "eth0", HOP_DELAY_S)],
}


def _check_records(client: ClientHost, scheme: str, count: int) -> None:
    outcomes = {record.outcome for record in client.finished}
    if len(client.finished) != count or outcomes != {EXPECTED_OUTCOME[scheme]}:
        raise RuntimeError(f"{scheme}: {len(client.finished)} of {count} requests finished, outcomes {outcomes}")


def negotiations_sim(scheme: str, count: int) -> Sample:
    """``count`` back-to-back requests with SimNodes and links (rates, queues, a trace of events)."""
    env = simpy.Environment()
    trace = Trace()
    clock = _Clock()
    machines = _machines(scheme, count)
    nodes = {name: SimNode(env, name, machine, trace) for name, machine in machines.items()}
    for a, a_port, b, b_port, delay_s in _LINKS[scheme]:
        Link(env, nodes[a], a_port, nodes[b], b_port,
             forward=LinkDirection(env, f"{a}-{b}", delay_s=delay_s, rate_bps=HOP_RATE_BPS),
             backward=LinkDirection(env, f"{b}-{a}", delay_s=delay_s, rate_bps=HOP_RATE_BPS))
    nodes["client"].flush()  # arms the workload's first start
    env.run()
    sample = clock.sample(count)
    _check_records(machines["client"].client, scheme, count)
    return sample


def negotiations_harness(scheme: str, count: int) -> Sample:
    """``count`` back-to-back requests in the deterministic harness (fixed delays, no rates)."""
    harness = Harness()
    clock = _Clock()
    machines = _machines(scheme, count)
    for name, machine in machines.items():
        harness.add(name, machine)
    for a, a_port, b, b_port, delay_s in _LINKS[scheme]:
        harness.link(a, a_port, b, b_port, delay_s)
    harness.run(float("inf"), max_steps=10**9)
    sample = clock.sample(count)
    _check_records(machines["client"].client, scheme, count)
    return sample


# --- the two-path transfer -------------------------------------------------------------------------

# models/bulk_two_path.toml: (name, down rate, up rate, one-way delay, queue bytes) of the access
# paths; the converter's and the server's links (rate, one-way delay) as the scenario sets them.
TWO_PATHS = [("dsl", 20e6, 2e6, 0.010, 150_000), ("lte", 30e6, 8e6, 0.030, 300_000)]
TWO_PATH_CONVERTER = (1e9, 0.002)
TWO_PATH_SERVER = (1e9, 0.015)


def two_path_routes(env: simpy.Environment) -> tuple[list[tuple[Route, Route]], list[tuple[Route, Route]]]:
    """The routes of a converted transfer over both paths, as the simulation builds them: per
    client path (towards the converter: access path, converter up side; back), and the
    converter's connection (towards the server: converter down side, server link; back); the
    converter's up link is shared by both subflows."""
    def hop(name: str, rate_bps: float, delay_s: float, queue_bytes: int | None = None) -> LinkDirection:
        return LinkDirection(env, name, delay_s=delay_s, rate_bps=rate_bps, queue_limit_bytes=queue_bytes,
                             deliver=forward_segment)
    (cv_bps, cv_s), (sv_bps, sv_s) = TWO_PATH_CONVERTER, TWO_PATH_SERVER
    server_out, server_in = hop("server.out", sv_bps, sv_s), hop("server.in", sv_bps, sv_s)
    down_in, down_out = hop("converter.down.in", cv_bps, cv_s), hop("converter.down.out", cv_bps, cv_s)
    up_in, up_out = hop("converter.up.in", cv_bps, cv_s), hop("converter.up.out", cv_bps, cv_s)
    client_routes = []
    for name, down_bps, up_bps, delay_s, queue_bytes in TWO_PATHS:
        access_down = hop(f"{name}.down", down_bps, delay_s, queue_bytes)
        access_up = hop(f"{name}.up", up_bps, delay_s, queue_bytes)
        client_routes.append((Route(f"{name}.to_converter", [access_up, up_in]),
                              Route(f"{name}.to_client", [up_out, access_down])))
    server_routes = [(Route("server.to_server", [down_out, server_in]), Route("server.to_converter",
                                                                             [server_out, down_in]))]
    return client_routes, server_routes


def two_path_transfer(size_bytes: int) -> Sample:
    """A relayed download of ``size_bytes``: MPTCP over DSL and LTE to the client, TCP from the
    server to the converter (CUBIC everywhere); counts bytes."""
    env = simpy.Environment()
    start_s = time.perf_counter()
    client_routes, server_routes = two_path_routes(env)
    transfer = RelayedTransfer(env, client_routes, server_routes, size_bytes, direction="download", mptcp=True)
    env.run()
    wall_s = time.perf_counter() - start_s
    record = transfer.result()
    if not record.completed:
        raise RuntimeError(f"the two-path transfer did not complete: {record}")
    return Sample(record.bytes_delivered, wall_s)


# --- running the rounds ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Measurement:
    name: str
    unit: str  # what ``count`` counts
    run: Callable[[], Sample]


def measurements(config: BenchConfig, *, with_nspy: bool = True) -> list[Measurement]:
    found = [
        Measurement("bulk_flow", "packets", lambda: bulk_flow(config.bulk_size_bytes)),
        Measurement("simpy_pipeline", "packets", lambda: simpy_pipeline(config.pipeline_packets)),
    ]
    if with_nspy and nspy_available():
        data_packets = -(-config.bulk_size_bytes // MSS_BYTES)
        found.append(Measurement("nspy_flow", "packets", lambda: nspy_flow(data_packets)))
    for scheme in ("plain", "convert"):
        found.append(Measurement(f"negotiations_{scheme}_sim", "negotiations",
                                 lambda scheme=scheme: negotiations_sim(scheme, config.negotiations)))
        found.append(Measurement(f"negotiations_{scheme}_harness", "negotiations",
                                 lambda scheme=scheme: negotiations_harness(scheme, config.negotiations)))
    found.append(Measurement("two_path_transfer", "bytes", lambda: two_path_transfer(config.two_path_size_bytes)))
    return found


def run_rounds(config: BenchConfig, *, with_nspy: bool = True, progress: Callable[[str], None] | None = None
               ) -> dict[str, list[Sample]]:
    """Every measurement once per round, in an order rotated each round; samples by measurement."""
    todo = measurements(config, with_nspy=with_nspy)
    samples: dict[str, list[Sample]] = {m.name: [] for m in todo}
    for round_index in range(config.rounds):
        shift = round_index % len(todo)
        for measurement in todo[shift:] + todo[:shift]:
            gc.collect()
            sample = measurement.run()
            samples[measurement.name].append(sample)
            if progress is not None:
                progress(f"round {round_index + 1}/{config.rounds} {measurement.name}: {sample.count} "
                         f"{measurement.unit} in {sample.wall_s:.3f} s")
    return samples


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(config: BenchConfig, samples: dict[str, list[Sample]], units: dict[str, str]) -> dict[str, Any]:
    """The results dict: per measurement the wall times and rates, the per-round ratios, the targets."""
    results: dict[str, Any] = {"machine": machine_facts(), "config": {
        **dataclasses.asdict(config), "hops": HOPS, "hop_rate_bps": HOP_RATE_BPS, "hop_delay_s": HOP_DELAY_S,
        "bulk_window_bytes": BULK_WINDOW_BYTES}}
    per_measurement = {}
    for name, runs in samples.items():
        rates = [s.count / s.wall_s for s in runs]
        per_measurement[name] = {"unit": units[name], "count": runs[0].count,
                                 "wall_s": [s.wall_s for s in runs], "wall_s_spread": _spread([s.wall_s for s in runs]),
                                 "per_wall_s": rates, "per_wall_s_spread": _spread(rates)}
        if all(s.cpu_s for s in runs):
            cpu_rates = [s.count / s.cpu_s for s in runs]
            per_measurement[name].update({"cpu_s": [s.cpu_s for s in runs], "per_cpu_s": cpu_rates,
                                          "per_cpu_s_spread": _spread(cpu_rates)})
    results["measurements"] = per_measurement

    def ratio(numerator: str, denominator: str, target: float) -> dict[str, Any] | None:
        if numerator not in samples or denominator not in samples:
            return None
        values = [a.count / a.wall_s / (b.count / b.wall_s) for a, b in zip(samples[numerator], samples[denominator])]
        spread = _spread(values)
        return {"numerator": numerator, "denominator": denominator, "per_round": values, **spread,
                "target": target, "met": spread["median"] >= target}

    results["ratios"] = {key: value for key, value in {
        "bulk_flow_vs_nspy": ratio("bulk_flow", "nspy_flow", TARGET_NSPY_RATIO),
        "bulk_flow_vs_simpy_pipeline": ratio("bulk_flow", "simpy_pipeline", TARGET_PIPELINE_RATIO),
    }.items() if value is not None}
    targets = {}
    for name, spread in per_measurement.items():
        if name.startswith("negotiations_"):
            median = spread["per_wall_s_spread"]["median"]
            target = TARGET_NEGOTIATIONS_PER_WALL_S[name.split("_")[1]]
            targets[name] = {"target_per_wall_s": target, "median_per_wall_s": median, "met": median >= target}
            if "per_cpu_s_spread" in spread:
                targets[name]["median_per_cpu_s"] = spread["per_cpu_s_spread"]["median"]
    if "two_path_transfer" in per_measurement:
        median = per_measurement["two_path_transfer"]["wall_s_spread"]["median"]
        targets["two_path_transfer"] = {"target_wall_s": TARGET_TWO_PATH_WALL_S, "median_wall_s": median,
                                        "met": median < TARGET_TWO_PATH_WALL_S}
    for name, ratio_result in results["ratios"].items():
        targets[name] = {"target_ratio": ratio_result["target"], "median_ratio": ratio_result["median"],
                         "met": ratio_result["met"]}
    results["targets"] = targets
    return results


def run(config: BenchConfig, *, with_nspy: bool = True, progress: Callable[[str], None] | None = None
        ) -> dict[str, Any]:
    """Run every measurement ``config.rounds`` times and summarize (see :func:`summarize`)."""
    units = {m.name: m.unit for m in measurements(config, with_nspy=with_nspy)}
    return summarize(config, run_rounds(config, with_nspy=with_nspy, progress=progress), units)


def results_table(results: dict[str, Any]):
    """One row per measurement and round: ``measurement, round, unit, count, wall_s, per_wall_s``."""
    import pandas as pd

    rows = [{"measurement": name, "round": index, "unit": m["unit"], "count": m["count"], "wall_s": wall_s,
             "per_wall_s": rate}
            for name, m in results["measurements"].items()
            for index, (wall_s, rate) in enumerate(zip(m["wall_s"], m["per_wall_s"]))]
    return pd.DataFrame(rows)


# --- reporting ---------------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def compiled_modules() -> list[str]:
    """The mpsim modules this process loaded as compiled extensions (the optional ``make fast``
    build, docs/sim.md "Performance"); empty for pure Python."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(name for name, module in list(sys.modules.items())
                  if name.startswith("mpsim.") and str(getattr(module, "__file__", "") or "").endswith(suffixes))


def machine_facts() -> dict[str, Any]:
    facts = provenance.machine_facts()
    keys = ("date_utc", "cpu_model", "cpu_count", "python", "python_implementation", "platform", "mpsim")
    return {**{k: facts[k] for k in keys}, "git_revision": provenance.short_revision(provenance.git_revision()),
            "packages": {name: _version(name) for name in ("simpy", "numpy", "ns.py")},
            "compiled_modules": compiled_modules()}


def markdown(results: dict[str, Any]) -> str:
    """A short report: the machine, a table of rates, the ratios and the targets."""
    machine = results["machine"]
    packages = ", ".join(f"{name} {version or 'absent'}" for name, version in machine["packages"].items())
    lines = [
        "# Simulator benchmark",
        "",
        f"{machine['date_utc']}, {machine['cpu_model']} ({machine['cpu_count']} CPUs), "
        f"Python {machine['python']}, mpsim {machine['mpsim']} ({machine['git_revision'] or 'no git'}), {packages}.",
        f"{results['config']['rounds']} interleaved rounds; wall time from time.perf_counter, one process.",
        _build_line(machine.get("compiled_modules") or []),
        "",
        "| measurement | count | unit | wall s (min / median) | per wall-second (median / max) "
        "| per CPU-second (median) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, m in results["measurements"].items():
        wall, rate = m["wall_s_spread"], m["per_wall_s_spread"]
        cpu = f"{m['per_cpu_s_spread']['median']:,.0f}" if "per_cpu_s_spread" in m else "-"
        lines.append(f"| {name} | {m['count']} | {m['unit']} | {wall['min']:.3f} / {wall['median']:.3f} | "
                     f"{rate['median']:,.0f} / {rate['max']:,.0f} | {cpu} |")
    lines += ["", "| target | required | measured (median) | met |", "|---|---:|---:|---|"]
    for name, target in results["targets"].items():
        if "target_ratio" in target:
            required, measured = f">= {target['target_ratio']:g}x", f"{target['median_ratio']:.2f}x"
            spread = results["ratios"][name]
            measured += f" (min {spread['min']:.2f}x)"
        elif "target_wall_s" in target:
            required, measured = f"< {target['target_wall_s']:g} s", f"{target['median_wall_s']:.3f} s"
        else:
            required, measured = f">= {target['target_per_wall_s']:,}/s", f"{target['median_per_wall_s']:,.0f}/s"
            if "median_per_cpu_s" in target:
                measured += f" ({target['median_per_cpu_s']:,.0f}/CPU-s)"
        lines.append(f"| {name} | {required} | {measured} | {'yes' if target['met'] else 'no'} |")
    if "bulk_flow_vs_nspy" not in results["ratios"]:
        why = "skipped (--no-nspy)" if nspy_available() else "not installed (`pip install mpsim[bench]`)"
        lines += ["", f"ns.py {why}: no ns.py comparison."]
    return "\n".join(lines) + "\n"


def _build_line(compiled: Sequence[str]) -> str:
    if not compiled:
        return "Build: pure Python (the default)."
    return f"Build: compiled with mypyc (`make fast`): {', '.join(compiled)}; the rest pure Python."


def write_results(results: dict[str, Any], out_dir: Path, stem: str = "simulator") -> tuple[Path, Path]:
    """``out_dir/simulator.json`` and ``out_dir/simulator.md``."""
    return write_json_and_markdown(results, markdown(results), out_dir, stem)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpsim bench sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 rounds: a few seconds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 2)")
    parser.add_argument("--no-nspy", action="store_true", help="skip the ns.py comparison")
    parser.add_argument("--out", type=Path, help="write simulator.json and simulator.md into this directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    config = BenchConfig.quick() if args.quick else BenchConfig()
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        config = dataclasses.replace(config, rounds=args.rounds)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    results = run(config, with_nspy=not args.no_nspy, progress=progress)
    print(markdown(results), end="")
    if args.out is not None:
        for path in write_results(results, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
