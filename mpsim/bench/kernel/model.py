"""Benchmark 3, the model against the kernel: the same scenario in the SimPy model and in the testbed.

Goodput over a grid of path rates x loss rates (both paths, MPTCP through the converter; plain TCP
on one path as the control that separates TCP from MPTCP and relay effects), and the middlebox
rules (strip MPTCP on SYN, drop MP_CAPABLE SYNs, drop SYNs with data): negotiation outcome, setup
time, SYN and RST counts (nftables counters on the client's output, SYN times from tshark when
installed), MPTcpExt counters against the model host's MIB.

The model side: :class:`LossAfterQueue` (one direction of a testbed path: tbf, then the loss rule)
is the testbed's path in the model's terms; the negotiation is a scenario built with the kernel's
knobs as keys (:func:`negotiation_scenario`) and the middlebox by its catalogue name, the one the
testbed builds (mpsim/testbed/shaping.py ``KERNEL_MIDDLEBOXES``). docs/kernel-bench.md explains
every disagreement.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mpsim.bench.kernel.config import L2_FACTOR, MIB, PEER_LIMIT_S, QUEUE_S, SHAPED_RATE_BPS, BenchError, Scale
from mpsim.bench.kernel.measure import pct, relative_error
from mpsim.bench.kernel.services import Peer, Services, new_testbed, peer_argv, testbed_facts, upload
from mpsim.experiment.scenario import Arrivals, ClientSpec, ConverterSpec, MptcpSpec
from mpsim.experiment.scenario import PathSpec as ScenarioPath
from mpsim.experiment.scenario import Scenario, ServerSpec, WorkloadSpec
from mpsim.experiment.simulation import CLIENT, Simulation
from mpsim.proto.catalogue import MIDDLEBOXES
from mpsim.proto.relay import ConverterTiming
from mpsim.sim.link import LinkDirection
from mpsim.sim.loss import Bernoulli
from mpsim.wire.segment import IpPacket, TcpFlags


def kernel_policy_values(sysctls: dict[str, str]) -> dict[str, int]:
    """The Linux knobs the model's policies copy, from the client namespace's sysctls (per-namespace
    values: a new namespace starts from the kernel's defaults, not from the root namespace's)."""
    names = {"syn_retrans_before_tcp_fallback": "net.mptcp.syn_retrans_before_tcp_fallback",
             "tcp_syn_retries": "net.ipv4.tcp_syn_retries",
             "tcp_syn_linear_timeouts": "net.ipv4.tcp_syn_linear_timeouts",
             "blackhole_timeout_s": "net.mptcp.blackhole_timeout"}
    return {knob: int(sysctls[name]) for knob, name in names.items() if sysctls.get(name, "").isdigit()}


class LossAfterQueue:
    """One direction of a testbed path in the model: tbf's drop-tail queue and rate, then the
    nftables loss rule (it runs after the shaper, so a lost packet has used the link), then the
    propagation delay. Quacks like a LinkDirection for BulkTransfer (``send``, ``deliver``)."""

    def __init__(self, env: Any, name: str, rate_bps: float, queue_bytes: int, delay_s: float, loss_prob: float,
                 rng: Any) -> None:
        self.shaper = LinkDirection(env, f"{name}.tbf", delay_s=0.0, rate_bps=rate_bps, queue_limit_bytes=queue_bytes,
                                    deliver=self._shaped)
        self.rest = LinkDirection(env, f"{name}.loss", delay_s=delay_s,
                                  loss=Bernoulli(loss_prob, rng) if loss_prob else None)

    def send(self, packet: Any) -> bool:
        return self.shaper.send(packet)

    def _shaped(self, packet: Any) -> None:
        self.rest.send(packet)

    @property
    def deliver(self) -> Any:
        return self.rest.deliver

    @deliver.setter
    def deliver(self, function: Any) -> None:
        self.rest.deliver = function

    def counters(self) -> dict[str, int]:
        return {"queue_drops": self.shaper.counters.packets_dropped_queue,
                "loss_drops": self.rest.counters.packets_dropped_loss, "sent": self.rest.counters.packets_sent}


@dataclass(frozen=True)
class ModelSettings:
    """How a testbed configuration maps onto the model (recorded with the results)."""

    one_way_delay_s: float  # half the testbed's measured base RTT: veth has no propagation delay
    # The testbed's tcp_rmem/tcp_wmem maxima, counted as the kernel counts them: the model's receive
    # buffer is truesize (2304 bytes per received skb) and offers scaling_ratio / 256 of it as
    # window, its subflows' send buffers charge 2304 per segment (docs/sim.md, "The receive
    # window"). It was 8 MiB while the model counted payload (about half); the figures are the
    # same with either, as auto-tuning stays far below both at these rates and delays.
    buffer_bytes: int = 16 * MIB
    rate_factor: float = L2_FACTOR  # tbf's L2 rate -> the model's IP-level rate
    queue_s: float = QUEUE_S


def model_goodput(settings: ModelSettings, rate_bps: float, loss_prob: float, size_bytes: int, *, mptcp: bool,
                  seed: int, rates_bps: Sequence[float] | None = None,
                  middleboxes: Sequence[str | None] = ()) -> dict[str, Any]:
    """The model's upload of size_bytes over the testbed's two paths (or path 0 alone for TCP):
    tbf rate and queue, loss after the queue on both directions, CUBIC, the kernel's buffers.
    ``rates_bps`` gives each path its own rate; ``middleboxes`` a catalogue box per path (None:
    none), acting on the transfer's segments before the shaper (mpsim/sim/light_filter.py)."""
    import random

    import simpy

    from mpsim.proto.middlebox import PASS, Site
    from mpsim.sim.light_filter import wrap_box
    from mpsim.sim.seeds import component_rng
    from mpsim.sim.transfer import BulkTransfer

    env = simpy.Environment()
    paths = []
    for index in range(2 if mptcp else 1):
        path_rate_bps = rates_bps[index] if rates_bps else rate_bps
        model_rate = path_rate_bps * settings.rate_factor
        queue_bytes = int(path_rate_bps / 8 * settings.queue_s * settings.rate_factor)
        pair = tuple(LossAfterQueue(env, f"path{index}.{d}", model_rate, queue_bytes, settings.one_way_delay_s,
                                    loss_prob, component_rng(seed, 0, f"loss.path{index}.{d}"))
                     for d in ("up", "down"))
        box_name = middleboxes[index] if index < len(middleboxes) else None
        if box_name:
            box = wrap_box(MIDDLEBOXES.get(box_name).build(random.Random(seed), Site()))
            pair[0].shaper.filters = [box.up] if box.up is not PASS else []
            pair[1].shaper.filters = [box.down] if box.down is not PASS else []
        paths.append(pair)
    transfer = BulkTransfer(env, paths, size_bytes, cc="cubic", mptcp=mptcp, snd_buf_bytes=settings.buffer_bytes,
                            rcv_buf_bytes=settings.buffer_bytes)
    env.run(until=env.any_of([transfer.done, env.timeout(600)]))
    record = transfer.result()
    counters = [p.counters() for pair in paths for p in pair]
    return {"goodput_bps": record.goodput_bps, "completed": record.completed, "retransmissions": record.retransmissions,
            "subflow_bytes": record.subflow_bytes, "subflow_joined": record.subflow_joined,
            "subflow_join_failures": record.subflow_join_failures,
            "timeouts": record.timeouts, "fast_recoveries": record.fast_recoveries, "subflows": record.subflows,
            "queue_drops": sum(c["queue_drops"] for c in counters),
            "loss_rate": sum(c["loss_drops"] for c in counters) / max(1, sum(c["sent"] for c in counters))}


def catalogue_middlebox(middlebox: str) -> str | None:
    """The catalogue name (mpsim/proto/catalogue.py) of a benchmark middlebox: itself, or the
    testbed's Middlebox field spelling (``drop_mp_capable_syn``) read as ``drop-mp-capable-syn``;
    None for ``none``. An unknown name is the catalogue's one-line error."""
    if middlebox == "none":
        return None
    name = middlebox.replace("_", "-")
    MIDDLEBOXES.get(name)
    return name


#: The upstream selftest simult_flows.sh (tools/testing/selftests/net/mptcp): 16 MiB over two paths
#: with 1000-packet queues, and the time it allows; (label, path rates, bound in s).
SIMULT_FLOWS_CASES = (("10+10", (10e6, 10e6), 7.906), ("10+3", (10e6, 3e6), 11.921))
SIMULT_FLOWS_BYTES = 16 * MIB
SIMULT_FLOWS_QUEUE_PACKETS = 1000
#: Fixed 8 MiB buffers in the kernel: what SO_SNDBUF/SO_RCVBUF of 4 MiB give (doubled), set through
#: the namespace's tcp_wmem/tcp_rmem (the peer programs set no socket buffer).
FIXED_BUFFER_SYSCTLS = {"net.ipv4.tcp_wmem": "4096 8388608 8388608", "net.ipv4.tcp_rmem": "4096 8388608 8388608"}


def model_simult_flows(settings: ModelSettings, rates_bps: Sequence[float], buffers: str) -> dict[str, Any]:
    """The model's simult_flows upload: MPTCP over tbf-like paths with 1000-packet queues;
    buffers "auto" (the kernel's tcp_wmem/tcp_rmem maxima) or "pinned" (SO_SNDBUF/SO_RCVBUF 4 MiB)."""
    import simpy

    from mpsim.sim.transfer import BulkTransfer

    env = simpy.Environment()
    paths = [tuple(LossAfterQueue(env, f"path{i}.{d}", rate * settings.rate_factor, SIMULT_FLOWS_QUEUE_PACKETS * 1500,
                                  settings.one_way_delay_s, 0.0, None) for d in ("up", "down"))
             for i, rate in enumerate(rates_bps)]
    buf_bytes = 4 * MIB if buffers == "pinned" else settings.buffer_bytes
    transfer = BulkTransfer(env, paths, SIMULT_FLOWS_BYTES, cc="cubic", mptcp=True, buffers=buffers,
                            snd_buf_bytes=buf_bytes, rcv_buf_bytes=buf_bytes)
    env.run(until=env.any_of([transfer.done, env.timeout(600)]))
    record = transfer.result()
    return {"duration_s": record.duration_s, "completed": record.completed, "subflow_bytes": record.subflow_bytes,
            "timeouts": record.timeouts, "reinjected_bytes": record.reinjected_bytes}


def simult_flows(settings: ModelSettings, reps: int, log_dir: Path, progress: Callable[[str], None]) -> list[dict]:
    """The simult_flows cases in the kernel (direct MPTCP, auto-tuned; 10+3 also with fixed 8 MiB
    buffers) and in the model (auto; pinned 4 MiB), docs/kernel-departures.md, section 5."""
    from mpsim.bench.kernel.config import TESTBED_SYSCTLS
    from mpsim.testbed import PathSpec, Testbed, counter_delta

    rows = []
    cases = [(label, rates, bound, "auto") for label, rates, bound in SIMULT_FLOWS_CASES]
    cases.append(("10+3", SIMULT_FLOWS_CASES[1][1], None, "pinned"))
    for label, rates, bound, buffers in cases:
        paths = [PathSpec(rate_bps=int(r), queue_s=SIMULT_FLOWS_QUEUE_PACKETS * 1514 * 8 / r) for r in rates]
        sysctls = TESTBED_SYSCTLS | (FIXED_BUFFER_SYSCTLS if buffers == "pinned" else {})
        model = model_simult_flows(settings, rates, buffers)
        with Testbed(paths=paths, tfo=True, cc="cubic", sysctls=sysctls) as tb:
            services = Services(tb, log_dir)
            services.start_sinks(reps + 2, PEER_LIMIT_S * (reps + 2))
            for rep in range(reps):
                before = tb.counters("client")
                up = upload(tb, services, "direct-mptcp", SIMULT_FLOWS_BYTES, log_dir, sample_cpu=False)
                deltas = counter_delta(before, tb.counters("client"))
                kernel_s = SIMULT_FLOWS_BYTES * 8 / up["goodput_bps"]
                rows.append({"case": label, "buffers": buffers, "rep": rep, "bound_s": bound, "kernel_s": kernel_s,
                             "model_s": model["duration_s"], "error": relative_error(model["duration_s"], kernel_s),
                             "hash_ok": up["hash_ok"], "subflows_kernel": up["subflows"],
                             "mptcp_retrans_kernel": deltas.get("MPTcpExt.MPTCPRetrans", 0),
                             "rto_kernel": deltas.get("TcpExt.TCPTimeouts", 0), "model": model})
                progress(f"simult_flows {label} {buffers} rep {rep + 1}: kernel {kernel_s:.3f} s, "
                         f"model {model['duration_s']:.3f} s (bound {bound} s)")
    return rows


def negotiation_scenario(settings: ModelSettings, middlebox: str, rate_bps: float, knobs: dict[str, int]) -> Scenario:
    """The Convert negotiation as a scenario: the testbed's two paths, the middlebox on path 0, and
    the kernel's knobs (MPTCP fallback and blackhole, SYN retries and linear timeouts) as keys."""
    rate = rate_bps * settings.rate_factor
    path = ScenarioPath(rate_up_bps=rate, rate_down_bps=rate, delay_s=settings.one_way_delay_s,
                        queue_bytes=int(rate_bps / 8 * settings.queue_s * settings.rate_factor))
    box = catalogue_middlebox(middlebox)
    return Scenario(
        description=f"kernel benchmark: Convert through {middlebox}", duration_s=1.0, drain_s=120.0,
        # The live client waits on the kernel's SYN retries (tcp_syn_retries), not on a proxy budget.
        client=ClientSpec(scheme="convert", upstream_mptcp=True, proxy_syn_retries=knobs["tcp_syn_retries"],
                          syn_retries=knobs["tcp_syn_retries"],
                          # the kernel's SYN schedule (tcp_syn_linear_timeouts: 0, 1, 2, 3 s on this kernel)
                          syn_linear_timeouts=knobs.get("tcp_syn_linear_timeouts", 0),
                          mptcp=MptcpSpec(syn_retrans_before_tcp_fallback=knobs["syn_retrans_before_tcp_fallback"],
                                          blackhole_timeout_s=knobs["blackhole_timeout_s"])),
        converter=ConverterSpec(kind="convert", timing=ConverterTiming.SOCKET, delay_s=0.0),
        server=ServerSpec(delay_s=0.0),
        paths={"path0": replace(path, middleboxes=(box,) if box else ()), "path1": path},
        workload=WorkloadSpec(arrivals=Arrivals.ONE))


def model_negotiation(settings: ModelSettings, middlebox: str, rate_bps: float,
                      knobs: dict[str, int]) -> dict[str, Any]:
    """The Convert negotiation in the SimPy scenario model, with the kernel's knobs: outcome,
    setup time, SYN and RST counts and times, the client host's MIB."""
    sim = Simulation(negotiation_scenario(settings, middlebox, rate_bps, knobs), variant="kernel-bench", run_index=0,
                     record_packets=True)
    result = sim.run()
    record = result.connections[0]
    syn_times, rsts = [], 0
    for r in sim.trace.packets:
        if r.kind == "sent" and r.src == CLIENT and isinstance(r.packet, IpPacket):
            flags = r.packet.segment.flags
            if flags & TcpFlags.SYN and not flags & TcpFlags.ACK:
                syn_times.append(float(r.time_s))
            rsts += bool(flags & TcpFlags.RST)
    return {"outcome": record["outcome"], "fallback_reason": record["fallback_reason"],
            "via_converter": record["via_proxy"], "mptcp": record["mptcp"], "setup_s": record["setup_time_s"],
            "syns": record["syns_sent"], "rsts": record["rsts_sent"], "rst_packets": rsts,
            "syn_times_s": [round(t - syn_times[0], 4) for t in syn_times],
            "mib": {f"MPTcpExt.{k}": int(v) for k, v in sim.client.mib.items()}}


CLIENT_COUNTERS_NFT = """table ip mpsim_bench {
  counter syn_out { }
  counter syn_join_out { }
  counter rst_out { }
  chain output {
    type filter hook output priority 0; policy accept;
    tcp flags & (syn|ack) == syn tcp option mptcp subtype 1 counter name "syn_join_out"
    tcp flags & (syn|ack) == syn counter name "syn_out"
    tcp flags & rst == rst counter name "rst_out"
  }
}
"""


def _client_packet_counters(tb: Any) -> dict[str, int]:
    from mpsim.testbed.probe import run_command
    from mpsim.testbed.shaping import parse_nft_counters

    text = run_command(["nft", "-j", "list", "counters", "table", "ip", "mpsim_bench"], ns=tb.ns["client"]).stdout
    return {k.removesuffix(".packets"): v for k, v in parse_nft_counters(text).items() if k.endswith(".packets")}


class SynCapture:
    """tshark in the client namespace printing the times of SYNs and RSTs (optional: only when
    tshark is installed); started before and read after a run."""

    def __init__(self, tb: Any, log_dir: Path) -> None:
        self.peer: Peer | None = None
        self.client_addresses = set(tb.addresses.client)
        if shutil.which("tshark") is None:
            return
        argv = ["tshark", "-i", "any", "-l", "-n", "-f", "tcp[tcpflags] & (tcp-syn|tcp-rst) != 0", "-T", "fields",
                "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.flags.syn", "-e", "tcp.flags.ack",
                "-e", "tcp.flags.reset"]
        self.peer = Peer(tb, "client", argv, log_dir, "tshark")
        try:
            self.peer.wait_log("Capturing on", 20)
        except BenchError:
            self.peer.stop()
            self.peer = None

    def times(self) -> dict[str, list[float]] | None:
        if self.peer is None:
            return None
        time.sleep(0.3)
        self.peer.stop()
        syns, rsts = [], []
        for _ in range(10_000):
            line = self.peer.line(0.2)
            if line is None:
                break
            fields = line.split("\t")
            if len(fields) < 5 or fields[1] not in self.client_addresses:
                continue
            t, syn, ack, rst = float(fields[0]), fields[2] in ("1", "True"), fields[3] in ("1", "True"), \
                fields[4] in ("1", "True")
            if syn and not ack:
                syns.append(t)
            if rst:
                rsts.append(t)
        t0 = min(syns) if syns else 0.0
        return {"syn_times_s": [round(t - t0, 4) for t in syns], "rst_times_s": [round(t - t0, 4) for t in rsts]}


def _live_outcome(up: dict[str, Any]) -> str:
    """The model's outcome words for what the live client saw (mpsim.proto.events.Outcome)."""
    if up["received_bytes"] != up["bytes"]:
        return "failed"
    if up["via_converter"]:
        return "converted" if up["subflows"] > 0 else "fallback_tcp"
    return "fallback_tcp"


MPTCP_COMPARED = ("MPTcpExt.MPCapableSYNTX", "MPTcpExt.MPCapableSYNACKRX", "MPTcpExt.MPCapableFallbackSYNACK",
                  "MPTcpExt.MPCapableSYNTXDrop", "MPTcpExt.MPCapableDataFallback", "MPTcpExt.Blackhole",
                  "MPTcpExt.MPCapableSYNTXDisabled")


def _kernel_point(paths: list[Any], transfers: Sequence[tuple[str, int]], reps: int, log_dir: Path, *, capture: bool,
                  measure_rtt: bool = False) -> dict[str, Any]:
    """``reps`` rounds of uploads (route, bytes) on a fresh testbed, the converter with relay auto;
    per upload the client's SYN and RST counts and every namespace's counter deltas."""
    from mpsim.testbed import counter_delta
    from mpsim.testbed.probe import run_command

    with new_testbed(paths) as tb:
        run_command(["nft", "-f", "-"], ns=tb.ns["client"], input_text=CLIENT_COUNTERS_NFT)
        rtt = None
        if measure_rtt:
            probe = Peer(tb, "client", peer_argv("rtt", tb.addresses.server, 50), log_dir, "rtt")
            rtt = probe.json(30, "rtt result")
        services = Services(tb, log_dir)
        services.start_sinks(2 * reps * len(transfers) + 4, PEER_LIMIT_S * (reps * len(transfers) + 2))
        services.start_daemon("auto")
        uploads = []
        for _rep, (route, size_bytes) in ((r, t) for r in range(reps) for t in transfers):
            capture_run = SynCapture(tb, log_dir) if capture else None
            packets0, counters0 = _client_packet_counters(tb), {r: tb.counters(r) for r in tb.ns}
            rx0 = _path_rx_bytes(tb)
            up = upload(tb, services, route, size_bytes, log_dir, sample_cpu=False)
            packets1, rx1 = _client_packet_counters(tb), _path_rx_bytes(tb)
            deltas = {r: counter_delta(counters0[r], tb.counters(r)) for r in tb.ns}
            up |= {"outcome": _live_outcome(up), "syns": packets1["syn_out"] - packets0["syn_out"]
                   - (packets1["syn_join_out"] - packets0["syn_join_out"]),
                   "join_syns": packets1["syn_join_out"] - packets0["syn_join_out"],
                   "rsts": packets1["rst_out"] - packets0["rst_out"], "counter_deltas": deltas,
                   "path_rx_bytes": [b - a for a, b in zip(rx0, rx1)],
                   "capture": capture_run.times() if capture_run else None}
            uploads.append(up)
        facts = testbed_facts(tb) | {"daemon_counters": services.daemon_counters()}
    return {"uploads": uploads, "facts": facts, "rtt": rtt}


def _path_rx_bytes(tb: Any) -> list[int]:
    """Bytes the converter received on each path's veth (the uploads' data, framing included)."""
    from mpsim.testbed.probe import run_command

    files = [f"/sys/class/net/path{i}/statistics/rx_bytes" for i in range(len(tb.paths))]
    return [int(v) for v in run_command(["cat", *files], ns=tb.ns["converter"]).stdout.split()]


def _tcp_ext(deltas: dict[str, int], *names: str) -> int:
    return sum(deltas.get(f"TcpExt.{n}", 0) for n in names)


def model_vs_kernel(scale: Scale, log_dir: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    from mpsim.testbed import PathSpec
    from mpsim.testbed.shaping import kernel_middlebox

    rows, testbeds = [], {}
    calibration: dict[str, Any] = {}

    def kernel_point(paths: list[Any], transfers: list[tuple[str, int]], reps: int, capture: bool) -> dict[str, Any]:
        point = _kernel_point(paths, transfers, reps, log_dir, capture=capture, measure_rtt=not calibration)
        if not calibration:  # the model's propagation delay: half the base RTT measured in the first testbed
            # (a lone SYN and its RST pass tbf at once on the bucket's tokens: no serialization to take off)
            calibration.update(settings=ModelSettings(one_way_delay_s=point["rtt"]["rtt_min_s"] / 2),
                               base_rtt=point["rtt"], knobs=kernel_policy_values(point["facts"]["sysctls"]["client"]))
        return point

    for rate_bps in scale.grid_rates_bps:
        for loss_prob in scale.grid_losses:
            label = f"{rate_bps / 1e6:g} Mbit/s, loss {loss_prob:.1%}"
            # MPTCP through the converter over both paths, and the control: plain TCP on path 0, no proxy
            transfers = [("converter-auto", int(2 * rate_bps * 1420 / 1514 / 8 * scale.grid_s)),
                         ("direct-tcp", int(rate_bps * 1448 / 1514 / 8 * scale.grid_s))]
            point = kernel_point([PathSpec(rate_bps=rate_bps, loss_prob=loss_prob, queue_s=QUEUE_S)] * 2, transfers,
                                 scale.grid_reps, capture=False)
            settings = calibration["settings"]
            testbeds[label] = point["facts"]
            for index, up in enumerate(point["uploads"]):
                rep, mptcp = index // len(transfers), up["route"] == "converter-auto"
                model = model_goodput(settings, rate_bps, loss_prob, up["bytes"], mptcp=mptcp, seed=rep + 1)
                rows.append(_grid_row(label, rate_bps, loss_prob, rep, up, model, point["facts"]["loss_counters"]))
                progress(f"model {label} {up['route']} rep {rep + 1}: kernel {up['goodput_bps'] / 1e6:.2f} Mbit/s, "
                         f"model {model['goodput_bps'] / 1e6:.2f} Mbit/s ({pct(rows[-1]['goodput_error'])})")
    for middlebox in scale.middleboxes:
        box = kernel_middlebox(catalogue_middlebox(middlebox)).box if middlebox != "none" else None
        paths = [PathSpec(rate_bps=SHAPED_RATE_BPS, queue_s=QUEUE_S, middlebox=box),
                 PathSpec(rate_bps=SHAPED_RATE_BPS, queue_s=QUEUE_S)]
        size_bytes = int(SHAPED_RATE_BPS * 1420 / 1514 / 8 * scale.grid_s)  # scale.grid_s on one path
        point = kernel_point(paths, [("converter-auto", size_bytes)], 1, capture=True)
        settings = calibration["settings"]
        testbeds[f"middlebox {middlebox}"] = point["facts"]
        up = point["uploads"][0]
        negotiation = model_negotiation(settings, middlebox, SHAPED_RATE_BPS, calibration["knobs"])
        multipath = negotiation["outcome"] == "converted"
        model = model_goodput(settings, SHAPED_RATE_BPS, 0.0, size_bytes, mptcp=multipath, seed=1)
        rows.append(_middlebox_row(middlebox, size_bytes, up, negotiation, model))
        progress(f"model middlebox {middlebox}: kernel {rows[-1]['outcome_kernel']} in {up['setup_s']:.4f} s, "
                 f"model {negotiation['outcome']} in {negotiation['setup_s']:.4f} s; goodput "
                 f"{pct(rows[-1]['goodput_error'])}")
    if "strip-mptcp-syn" in scale.middleboxes and calibration:
        rows.append(join_strip_point(scale, kernel_point, calibration["settings"], progress))
    if calibration and scale.name != "smoke":
        simult = simult_flows(calibration["settings"], 2 if scale.name == "full" else 1, log_dir, progress)
    else:
        simult = []
    return {"rows": rows, "simult_flows": simult, "testbeds": testbeds, "kernel_knobs": calibration.get("knobs"),
            "base_rtt": calibration.get("base_rtt"),
            "model_settings": dataclasses.asdict(calibration["settings"]) if calibration else None,
            "hashes_ok": all(r["hash_ok"] for r in rows)}


#: The issue's case: MPTCP options stripped from SYNs on the second of two paths (12 + 30 Mbit/s),
#: an upload through the converter: the MP_JOIN there fails and the first path carries everything.
JOIN_STRIP_RATES_BPS = (12_000_000, 30_000_000)


def join_strip_point(scale: Scale, kernel_point: Callable[..., dict[str, Any]], settings: ModelSettings,
                     progress: Callable[[str], None]) -> dict[str, Any]:
    """strip-mptcp-syn on path 1 only: the kernel's and the model's goodput and subflows."""
    from mpsim.testbed import PathSpec
    from mpsim.testbed.shaping import kernel_middlebox

    box = kernel_middlebox("strip-mptcp-syn").box
    paths = [PathSpec(rate_bps=JOIN_STRIP_RATES_BPS[0], queue_s=QUEUE_S),
             PathSpec(rate_bps=JOIN_STRIP_RATES_BPS[1], queue_s=QUEUE_S, middlebox=box)]
    size_bytes = int(sum(JOIN_STRIP_RATES_BPS) * 1420 / 1514 / 8 * scale.grid_s)
    up = kernel_point(paths, [("converter-auto", size_bytes)], 1, False)["uploads"][0]
    model = model_goodput(settings, JOIN_STRIP_RATES_BPS[0], 0.0, up["bytes"], mptcp=True, seed=1,
                          rates_bps=JOIN_STRIP_RATES_BPS, middleboxes=(None, "strip-mptcp-syn"))
    row = {"kind": "join-strip", "point": "strip-mptcp-syn on path 1, 12 + 30 Mbit/s", "route": up["route"],
           "middlebox": "strip-mptcp-syn", "bytes": up["bytes"], "hash_ok": up["hash_ok"],
           "goodput_kernel_mbps": up["goodput_bps"] / 1e6, "goodput_model_mbps": model["goodput_bps"] / 1e6,
           "goodput_error": relative_error(model["goodput_bps"], up["goodput_bps"]),
           "subflows_kernel": up["subflows"], "join_syns_kernel": up["join_syns"],
           "path_rx_bytes_kernel": up["path_rx_bytes"], "subflow_bytes_model": model["subflow_bytes"],
           "subflow_joined_model": model["subflow_joined"],
           "subflow_join_failures_model": model["subflow_join_failures"]}
    progress(f"model join-strip: kernel {row['goodput_kernel_mbps']:.2f} Mbit/s, model "
             f"{row['goodput_model_mbps']:.2f} Mbit/s ({pct(row['goodput_error'])})")
    return row


def _grid_row(label: str, rate_bps: float, loss_prob: float, rep: int, up: dict, model: dict,
              loss: dict) -> dict[str, Any]:
    mptcp = up["route"] == "converter-auto"
    ceiling = 2 * rate_bps * 1420 / 1514 if mptcp else rate_bps * 1448 / 1514
    deltas = up["counter_deltas"]["client"]
    measured_loss = [d["dropped_packets"] / d["seen_packets"] for p in loss.values() for d in p.values()
                     if d["seen_packets"]]
    return {
        "kind": "grid" if mptcp else "grid-tcp", "point": label, "route": up["route"],
        "transfer": "MPTCP via converter, 2 paths" if mptcp else "TCP direct, path 0", "rate_mbps": rate_bps / 1e6,
        "loss_prob": loss_prob, "middlebox": "none", "rep": rep, "bytes": up["bytes"], "hash_ok": up["hash_ok"],
        "goodput_kernel_mbps": up["goodput_bps"] / 1e6, "goodput_model_mbps": model["goodput_bps"] / 1e6,
        "goodput_error": relative_error(model["goodput_bps"], up["goodput_bps"]),
        "kernel_per_ceiling": up["goodput_bps"] / ceiling, "model_per_ceiling": model["goodput_bps"] / ceiling,
        "outcome_kernel": up["outcome"] if mptcp else "tcp", "outcome_model": None,  # transfers only here
        "subflows_kernel": up["subflows"], "subflows_model": model["subflows"],
        "syns_kernel": up["syns"], "join_syns_kernel": up["join_syns"], "rsts_kernel": up["rsts"],
        "loss_rate_kernel": statistics.mean(measured_loss) if measured_loss else 0.0,
        "loss_rate_model": model["loss_rate"],
        "rto_kernel": _tcp_ext(deltas, "TCPTimeouts"), "rto_model": model["timeouts"],
        "tlp_kernel": _tcp_ext(deltas, "TCPLossProbes"),
        "hystart_exits_kernel": _tcp_ext(deltas, "TCPHystartTrainDetect", "TCPHystartDelayDetect"),
        "path0_share_kernel": up["path_rx_bytes"][0] / max(1, sum(up["path_rx_bytes"])),
        "path0_share_model": model["subflow_bytes"][0] / max(1, sum(model["subflow_bytes"])),
        "mptcp_reinjections_kernel": deltas.get("MPTcpExt.MPTCPRetrans", 0),
        "duplicate_data_kernel": up["counter_deltas"]["converter"].get("MPTcpExt.DuplicateData", 0),
        "syn_retransmissions_kernel": _tcp_ext(deltas, "TCPSynRetrans"),
        "receiver_zero_window_kernel": up["counter_deltas"]["converter"].get("TcpExt.TCPFromZeroWindowAdv", 0),
        "fast_recoveries_kernel": _tcp_ext(deltas, "TCPSackRecovery", "TCPRenoRecovery"),
        "fast_recoveries_model": model["fast_recoveries"], "retransmissions_model": model["retransmissions"],
        "queue_drops_model": model["queue_drops"], "counter_deltas_kernel": up["counter_deltas"],
    }


def _middlebox_row(middlebox: str, size_bytes: int, up: dict, negotiation: dict, model: dict) -> dict[str, Any]:
    deltas = up["counter_deltas"]["client"]
    kernel_counters = {k: deltas.get(k, 0) for k in MPTCP_COMPARED}
    model_counters = {k: negotiation["mib"].get(k, 0) for k in MPTCP_COMPARED}
    capture = up["capture"] or {}
    return {
        "kind": "middlebox", "point": f"middlebox {middlebox}", "route": up["route"],
        "transfer": "through the converter, else TCP direct", "rate_mbps": SHAPED_RATE_BPS / 1e6, "loss_prob": 0.0,
        "middlebox": middlebox, "rep": 0, "bytes": size_bytes, "hash_ok": up["hash_ok"],
        "goodput_kernel_mbps": up["goodput_bps"] / 1e6, "goodput_model_mbps": model["goodput_bps"] / 1e6,
        "goodput_error": relative_error(model["goodput_bps"], up["goodput_bps"]),
        "outcome_kernel": up["outcome"], "outcome_model": negotiation["outcome"],
        "outcome_agrees": up["outcome"] == negotiation["outcome"],
        "via_converter_kernel": up["via_converter"], "via_converter_model": negotiation["via_converter"],
        "fallback_reason_model": negotiation["fallback_reason"], "convert_error_kernel": up["convert_error"],
        "subflows_kernel": up["subflows"], "subflows_model": model["subflows"],
        "setup_kernel_s": up["setup_s"], "setup_model_s": negotiation["setup_s"],
        "syns_kernel": up["syns"], "syns_model": negotiation["syns"], "join_syns_kernel": up["join_syns"],
        "rsts_kernel": up["rsts"], "rsts_model": negotiation["rsts"],
        "syn_times_kernel_s": capture.get("syn_times_s"), "syn_times_model_s": negotiation["syn_times_s"],
        "fastopen_kernel": {k.removeprefix("TcpExt."): v for k, v in deltas.items() if "FastOpen" in k},
        "mptcp_counters_kernel": kernel_counters, "mptcp_counters_model": model_counters,
        "mptcp_counters_differ": sorted(k.removeprefix("MPTcpExt.") for k in MPTCP_COMPARED
                                        if kernel_counters[k] != model_counters[k]),
        "server_connections_kernel": up["server_connections"], "counter_deltas_kernel": up["counter_deltas"],
    }
