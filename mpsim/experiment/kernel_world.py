"""A scenario run in the kernel: ``mpsim run SCENARIO --on kernel`` (docs/kernel-world.md).

The scenario file stays the one description of the experiment; this module builds its topology in
network namespaces (:class:`mpsim.testbed.Testbed`), runs its workload with real sockets
(:mod:`mpsim.live.client_host`, whose decisions are the proto client's) and writes the simulator's
tables with the simulator's columns (:mod:`mpsim.experiment.results`).

How the scenario maps onto the kernel:

* Paths: one testbed path per scenario path, the primary first (the client's main route). Rate per
  direction: the testbed shapes both directions at ``rate_down_bps``; the up direction's tbf is then
  replaced with ``rate_up_bps`` (the same burst and queue rules). Queue: ``queue_bytes`` as time at
  each direction's rate. Loss: ``bernoulli`` and ``gilbert_elliott`` are drawn by the path's delay
  line, per direction from the seed of the model's link direction of that path and run index
  (:func:`loss_seeds`: common random numbers), for TCP frames only, armed just before the
  workload starts. Delay: the testbed's (netem, or the project's delay line). The server's
  one-way delay: the same delay line spliced into the converter-server link
  (:class:`ServerLinkDelay`).
* The converter is the testbed's converter namespace (the access router): ``convert`` runs the
  project's live converter, ``socks5`` a SOCKS5 server from the distribution (microsocks, made
  MPTCP by ``mptcpize``), or ``--proxy-cmd`` a program of the user's.
* Servers: :data:`SERVER_SOCKETS`; middleboxes: the testbed's catalogue mapping
  (:data:`mpsim.testbed.shaping.KERNEL_MIDDLEBOXES`); the mix is drawn with the simulator's
  seeded generator (``middlebox_mix.<path>``), so one run index meets the same networks in both.
* Kernel settings the model reads come from the scenario (:func:`kernel_sysctls`; pinned buffers:
  :func:`socket_buffers`, set by the client and server programs on their sockets) and go into the
  manifest.
* Before its workload each run measures its paths as built (:func:`measure_path_latency`: the
  forwarding latency its lines add to the configured delays), recorded with the run; ``mpsim
  compare`` gives it to the model's links (docs/kernel-world.md, "The path as built").

Everything else is refused before anything starts (:func:`unbuildable`), one line per element.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import fnmatch
import gzip
import dataclasses
import json
import math
import os
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsim.errors import MpsimError
from mpsim.experiment.results import CONNECTION_COLUMNS, Results
from mpsim.experiment.scenario import Arrivals, Buffers, LoadedScenario, Scenario
from mpsim.experiment.simulation import RunResult, loss_component, workload_arrival_times
from mpsim.proto.components import SCHEMES
from mpsim.proto.client import ClientPolicy
from mpsim.sim.seeds import component_rng, derive_seed

#: Schemes the kernel world can carry out on sockets (mpsim/live/client_host.py).
KERNEL_SCHEMES = {"plain": "TCP socket", "mptcp": "IPPROTO_MPTCP socket",
                  "convert": "the project's Convert client (SYN data by MSG_FASTOPEN)",
                  "socks5": "RFC 1928 on an MPTCP socket"}
#: Why the others cannot be carried out.
REFUSED_SCHEMES = {
    "mp-convert-option": "no kernel puts the MP_CONVERT option on the wire (Linux sends no MPTCP "
                         "sub-option it does not implement, and no proxy here reads one)",
    "syn-payload-eol": "no kernel proxy reads signalling options from a SYN payload",
}
#: Proxies the kernel world can run, by PROXIES name.
KERNEL_PROXIES = {"convert": "the live converter (mpsim converter serve)",
                  "socks5": "microsocks under mptcpize"}
#: The catalogue's servers as Linux builds them: (responder socket kind, net.ipv4.tcp_fastopen).
SERVER_SOCKETS = {"legacy_drop": ("tcp", "0x1"), "legacy_queue": ("tfo-no-cookie", "0x203"),
                  "tfo": ("tfo", "0x3"), "mptcp_v1": ("mptcp", "0x1"), "closed": (None, "0x1")}
KERNEL_CONGESTION_CONTROLS = ("reno", "cubic")
PROXY_PORT_DEFAULT = 1234
#: The kernel world's programs (client host, responder, proxy) run SCHED_FIFO, as the delay line
#: does: the endpoints stand for the model's, which take no time, and the proxy for a proxy machine
#: of its own, whose time per connection is its own work, not the wait behind other work on this
#: shared machine (at load 11-16 on 2 CPUs the live converter's set-up took 1.0-14.6 ms more than
#: the model's without SCHED_FIFO, 1.1-1.4 ms with it: benchmarks/results/proxy_calibration.md).
REALTIME = ["chrt", "-f", "10"] if shutil.which("chrt") else []
#: Scenario keys the kernel world does not build: the model's description of the machine and of the
#: kernel it copies (the converter's CPU per set-up and per byte, the jiffy rate of the model's
#: CUBIC), the run count and the words. A kernel run records their values as model-only
#: (manifest ``model_only``), and a recording of kernel runs is reused whatever they are
#: (``mpsim compare --kernel-from``: docs/kernel-world.md, "Reusing recorded kernel runs").
MODEL_ONLY_KEYS = ("description", "runs", "variants", "converter.cpu_setup_s", "converter.relay_cpu_s_per_gb",
                   "transfers.*.kernel_hz")
#: The file of a recording of kernel runs (``KernelResults.record``), in ``--out`` directories.
RECORD_FILE = "kernel_runs.json"
#: The tables a recording keeps: those ``mpsim compare`` reads.
RECORD_TABLES = ("connections", "transfers")
SETTLE_S = 0.3  # after the last record: let FINs and RSTs reach the captures
RST_GRACE_S = 0.002  # an RST the close itself sent is stamped within this of the close
CAPTURE_SNAPLEN_BYTES = 128  # headers and options, not payloads: a long transfer's capture stays small
#: Written into every pcapng file of a kernel run (its section comment), as the simulator writes
#: CAPTURE_NOTE into its own: how these captures differ from the simulator's of the same names.
KERNEL_CAPTURE_NOTE = (
    "mpsim kernel-world capture (docs/kernel-world.md, Captures): tcpdump on one device of the link, "
    "both directions, Ethernet frames cut at 128 bytes (frame.len is the packet's length), timestamps of "
    "the kernel's wall clock. path.NAME is captured at the client's end (its sends before the path's delay "
    "and loss, its receptions after them), server.link at the server's end. Real kernel packets: "
    "checksums, timestamps, payloads and retransmissions are Linux's.")


class KernelWorldError(MpsimError):
    """The kernel world cannot run what was asked (the message names it)."""


# --- what the kernel can build ---------------------------------------------------------------------


def _loss(spec: dict) -> tuple[float, tuple | None] | str:
    """(loss_prob, gilbert_elliott) for the testbed, or why not."""
    if not spec or spec.get("model") == "none":
        return 0.0, None
    if spec["model"] == "bernoulli":
        return float(spec["loss_prob"]), None
    if spec["model"] == "gilbert_elliott":
        return 0.0, (spec["p_good_to_bad"], spec["p_bad_to_good"], spec.get("loss_prob_good", 0.0),
                     spec.get("loss_prob_bad", 1.0))
    return f"loss model {spec['model']!r} (scripted drops have no kernel rule)"


def uses_proxy(scenario: Scenario) -> bool:
    """Whether a run of ``scenario`` starts a proxy: the converter is enabled and a scheme its
    requests use goes through one (what ``--proxy-cmd`` replaces)."""
    schemes = dict.fromkeys((scenario.client.scheme, *scenario.workload.schemes))
    return scenario.converter.enabled and any(SCHEMES.get(name).proxy for name in schemes if name in SCHEMES)


def proxy_cmd_problems(proxy_cmd: str) -> list[str]:
    """What is wrong with a ``--proxy-cmd`` before anything is built, one line each: no words, a
    placeholder other than {listen}, {allow}, {addr}, {port}, a program not found on PATH."""
    try:
        argv = fill_proxy_cmd(proxy_cmd, ("198.18.0.2", PROXY_PORT_DEFAULT), CLIENT_PREFIXES[4])
    except KernelWorldError as err:
        return [str(err)]
    program = argv[0]
    found = (os.access(program, os.X_OK) and not os.path.isdir(program)) if os.sep in program else \
        shutil.which(program) is not None
    return [] if found else [f"--proxy-cmd {proxy_cmd!r}: {program}: command not found"]


def unbuildable(scenario: Scenario, *, proxy_cmd: str | None = None) -> list[str]:
    """One line per element of ``scenario`` the kernel world cannot build, naming it (empty: all can)."""
    from mpsim.testbed.shaping import KERNEL_MIDDLEBOXES

    out = []
    s, c = scenario, scenario.client
    schemes = dict.fromkeys((c.scheme, *s.workload.schemes))
    for name in schemes:
        if name not in KERNEL_SCHEMES:
            out.append(f"client.scheme {name!r}: " + REFUSED_SCHEMES.get(name, "no socket form in the kernel world"))
    if uses_proxy(s):
        kind = s.proxy_kind
        if kind not in KERNEL_PROXIES and proxy_cmd is None:
            out.append(f"converter.kind {kind!r}: the kernel world runs {', '.join(KERNEL_PROXIES)} "
                       "(or --proxy-cmd)")
        if kind == "socks5" and proxy_cmd is None and shutil.which("microsocks") is None:
            out.append("converter.kind 'socks5': microsocks is not installed (apt-get install microsocks)")
        if getattr(s.converter.placement, "value", s.converter.placement) != "beside":
            out.append(f"converter.placement {s.converter.placement.value!r}: the testbed's converter is the "
                       "access router; an on-path proxy that intercepts is not built")
        if s.converter.delay_s:
            out.append(f"converter.delay_s={s.converter.delay_s:g}: the testbed's converter is the access router "
                       "and has no delay of its own (set converter.delay_s=0)")
        if s.converter.timing.value != "socket" and kind == "convert" and proxy_cmd is None:
            out.append(f"converter.timing {s.converter.timing.value!r}: the live converter answers in its first "
                       "bytes after the server's SYN-ACK (socket timing; set converter.timing=\"socket\")")
        cpus = os.cpu_count() or 1
        if s.converter.cores > cpus:  # converter_cores(): the model's cores are the machine's
            out.append(f"converter.cores={s.converter.cores}: this machine has {cpus} CPUs for the proxy "
                       f"(set converter.cores to at most {cpus})")
    if s.converter.households > 1:
        out.append(f"converter.households={s.converter.households}: the testbed has one client host "
                   "(set converter.households=1)")
    if c.implicit:
        out.append("client.implicit: implicit signalling needs an on-path proxy, which is not built")
    if c.mptcp.version != 1:
        out.append("client.mptcp.version 0: Linux speaks MPTCP v1 only")
    if c.mptcp.retry_with_v0:
        out.append("client.mptcp.retry_with_v0: Linux has no MPTCP v0")
    if c.mptcp.mp_capable_ack != "linux":
        out.append(f"client.mptcp.mp_capable_ack {c.mptcp.mp_capable_ack!r}: Linux's client places its keys "
                   "its own way (docs/kernel-departures.md 7)")
    if c.mptcp.syn_retrans_before_tcp_fallback is None:
        out.append("client.mptcp.syn_retrans_before_tcp_fallback 'none': Linux always drops MP_CAPABLE at some point")
    if s.server.kind not in SERVER_SOCKETS:
        out.append(f"server.kind {s.server.kind!r}: no Linux listener is built for it (buildable: "
                   f"{', '.join(SERVER_SOCKETS)})")
    if len(s.paths) > 8:
        out.append(f"paths: {len(s.paths)} paths, the testbed has at most 8")
    for name, p in s.paths.items():
        if p.jitter_s:
            out.append(f"paths.{name}.jitter_s: the model's jitter reorders, the delay line's never does")
        loss = _loss(p.loss)
        if isinstance(loss, str):
            out.append(f"paths.{name}.loss: {loss}")
        for box in p.middleboxes:
            if box not in KERNEL_MIDDLEBOXES:
                out.append(f"paths.{name}.middleboxes {box!r}: the testbed has no rule for it "
                           f"(buildable: {', '.join(KERNEL_MIDDLEBOXES)})")
    for i, entry in enumerate(s.middlebox_mix):
        if entry.prob > 0 and entry.middlebox not in KERNEL_MIDDLEBOXES:
            out.append(f"middlebox_mix[{i}] {entry.middlebox!r}: the testbed has no rule for it")
    for i, event in enumerate(s.events):
        out.append(f"events[{i}] {event.action.value} at {event.at_s:g} s: the kernel world runs no timed events")
    ccs = {t.congestion_control for t in s.transfers}
    for cc in sorted(ccs - set(KERNEL_CONGESTION_CONTROLS)):
        out.append(f"transfers congestion_control {cc!r}: Linux MPTCP has no coupled congestion control")
    if len(ccs) > 1:
        out.append(f"transfers: congestion controls {sorted(ccs)} differ; the testbed pins one per run")
    for key in ("snd_buf_bytes", "rcv_buf_bytes"):
        if len({getattr(t, key) for t in s.transfers}) > 1:
            out.append(f"transfers {key}: values differ; the kernel's buffer maxima are per namespace")
    if len({t.buffers for t in s.transfers}) > 1:
        out.append("transfers buffers: \"auto\" and \"pinned\" mixed; the endpoints pin every socket they open "
                   "or none (socket_buffers)")
    return out


# --- what a kernel run is the run of --------------------------------------------------------------


def flat_values(value: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved scenario (``as_plain``) as dotted keys: ``paths.a.delay_s``, ``transfers.0.size_bytes``;
    an empty table or list stays one value."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value:
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flat_values(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def model_only(key: str) -> bool:
    return any(key == pattern or key.startswith(pattern + ".") or fnmatch.fnmatchcase(key, pattern)
               for pattern in MODEL_ONLY_KEYS)


def built_values(scenario: Scenario) -> dict[str, Any]:
    """The scenario's resolved values the kernel world builds or reads (every key but
    :data:`MODEL_ONLY_KEYS`), as dotted keys: what a kernel run is the run of."""
    from mpsim.experiment.scenario import as_plain

    # Through JSON, so a recording read back compares equal (tuples become lists).
    return {k: v for k, v in json.loads(json.dumps(flat_values(as_plain(scenario)))).items() if not model_only(k)}


def model_only_values(scenario: Scenario) -> dict[str, Any]:
    from mpsim.experiment.scenario import as_plain

    return {k: v for k, v in flat_values(as_plain(scenario)).items() if model_only(k) and k not in ("variants",)}


# --- the plan ----------------------------------------------------------------------------------------


def arrival_times(scenario: Scenario, run_index: int) -> list[float]:
    """The simulator's request times for this run: the same function, the same seeded draws
    (component "workload")."""
    return workload_arrival_times(scenario.workload, scenario.duration_s,
                                  lambda: component_rng(scenario.seed, run_index, "workload"))


def path_names(scenario: Scenario) -> list[str]:
    primary = scenario.primary_path
    return [primary] + [name for name in scenario.paths if name != primary]


def drawn_middleboxes(scenario: Scenario, run_index: int) -> dict[str, tuple[str, ...]]:
    """Each path's boxes at the start: fixed ones, then the mix drawn as AccessNetwork.attach draws it."""
    out = {}
    for name in scenario.paths:
        rng = component_rng(scenario.seed, run_index, f"middlebox_mix.{name}")
        drawn = [entry.middlebox for entry in scenario.middlebox_mix if rng.random() < entry.prob]
        out[name] = (*scenario.paths[name].middleboxes, *drawn)
    return out


def requests_plan(scenario: Scenario, run_index: int) -> list[dict]:
    """The requests in Simulation._schedule's order (at one instant: arrivals, then transfers)."""
    w = scenario.workload
    items = []
    for i, t in enumerate(arrival_times(scenario, run_index)):
        scheme = w.schemes[i % len(w.schemes)] if w.schemes else scenario.client.scheme
        items.append((t, 1, i, {"scheme": scheme, "transfer": None}))
    for i, spec in enumerate(scenario.transfers):
        items.append((spec.start_s, 2, i, {"scheme": scenario.client.scheme,
                                           "transfer": {"transfer_id": i, "size_bytes": spec.size_bytes,
                                                        "direction": spec.direction.value}}))
    items.sort(key=lambda item: (item[0], item[1], item[2]))
    return [{"at_s": t, "request_size_bytes": w.request_size_bytes, "response_size_bytes": w.response_size_bytes,
             **extra} for t, _, _, extra in items]


def kernel_sysctls(scenario: Scenario) -> dict[str, dict[str, str]]:
    """Per role, the sysctls the scenario sets (the model reads the same values)."""
    c, m = scenario.client, scenario.client.mptcp
    snd = scenario.transfers[0].snd_buf_bytes if scenario.transfers else None
    rcv = scenario.transfers[0].rcv_buf_bytes if scenario.transfers else None
    common = {}
    if snd:  # the model's default buffers (4 MiB, 6 MiB) are Linux's tcp_wmem / tcp_rmem maxima
        common["net.ipv4.tcp_wmem"] = f"4096 16384 {snd}"
        # tcp_rmem[1], a socket's first buffer, at most the maximum (the model starts there too)
        common["net.ipv4.tcp_rmem"] = f"4096 {min(131072, rcv)} {rcv}"
    client = {"net.ipv4.tcp_syn_retries": str(c.syn_retries),
              "net.ipv4.tcp_syn_linear_timeouts": str(c.syn_linear_timeouts),
              "net.ipv4.tcp_fastopen": "0x1",
              "net.mptcp.syn_retrans_before_tcp_fallback": str(m.syn_retrans_before_tcp_fallback),
              "net.mptcp.blackhole_timeout": str(int(m.blackhole_timeout_s)),
              "net.mptcp.checksum_enabled": "1" if m.checksums else "0"}
    server_fastopen = SERVER_SOCKETS.get(scenario.server.kind, (None, "0x1"))[1]
    return {"client": common | client, "converter": common | {"net.ipv4.tcp_fastopen": "0x3"},
            "server": common | {"net.ipv4.tcp_fastopen": server_fastopen}}


def socket_buffers(scenario: Scenario) -> dict[str, dict[str, int] | None] | None:
    """Per role, the SO_SNDBUF/SO_RCVBUF values its program sets on every socket it opens when the
    transfers' buffers are pinned (None: auto-tuned, only the sysctl maxima of
    :func:`kernel_sysctls`). The model's ``buffers = "pinned"`` is the endpoints' sockets: the
    client's and the server's, SO_SNDBUF = ``snd_buf_bytes`` and SO_RCVBUF = ``rcv_buf_bytes`` each,
    which Linux doubles (the model's buffers are the doubled bytes: docs/sim.md). A proxy's own
    sockets (the converter's two legs' ends) stay auto-tuned in both worlds: a proxy is a machine
    of its own with its own settings (docs/kernel-world.md, "Pinned socket buffers")."""
    if not scenario.transfers or scenario.transfers[0].buffers is not Buffers.PINNED:
        return None
    t = scenario.transfers[0]
    values = {"snd_buf_bytes": t.snd_buf_bytes, "rcv_buf_bytes": t.rcv_buf_bytes}
    return {"client": values, "converter": None, "server": dict(values)}


def client_plan(scenario: Scenario, run_index: int, proxy: tuple[str, int] | None, server: tuple[str, int]) -> dict:
    c = scenario.client
    policy = ClientPolicy(scheme=c.scheme)  # the defaults the schema does not expose
    drain = scenario.drain_s + scenario.duration_s
    return {
        "proxies": [list(proxy)] if proxy else [],
        "server": list(server),
        "policy": {"scheme": c.scheme, "fallback": c.fallback.value, "upstream_mptcp": c.upstream_mptcp,
                   "bypass_mptcp_servers": c.bypass_mptcp_servers, "tfo_to_server": c.tfo_to_server,
                   "convert_info_first": c.convert_info_first, "mptcp_to_server": c.mptcp_to_server,
                   "proxy_syn_retries": c.proxy_syn_retries,
                   "reply_timeout_s": c.reply_timeout_s, "max_attempts": c.max_attempts,
                   "response_timeout_s": min(policy.response_timeout_s or drain, drain)},
        "cache_policy": {"off_reprobe_s": c.off_reprobe_s,
                         "keep_cookies_on_new_network": c.keep_cookies_on_new_network},
        "requests": requests_plan(scenario, run_index),
        # The SYN retries end a connect by themselves; this only bounds the wait.
        "connect_wait_s": 130.0,
        "syn_linear_timeouts": c.syn_linear_timeouts,
        "deadline_s": drain,
        "socket_buffers": (socket_buffers(scenario) or {}).get("client"),
    }


# --- the pcap reading: SYNs, RSTs per local port ----------------------------------------------------


def pcap_flags(path: Path, client_addresses: set[str]) -> dict[int, dict[str, list[float]]]:
    """{client port: {"syns": [times], "rsts": [times]}} for packets the client sent (Ethernet +
    IPv4 or IPv6 with TCP right after the fixed header, pcap format; times in seconds of the
    capture's clock, CLOCK_REALTIME)."""
    data = path.read_bytes() if path.exists() else b""
    out: dict[int, dict[str, list[float]]] = {}
    if len(data) < 24:
        return out
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, incl = struct.unpack_from(endian + "III", data, offset)
        stamp = seconds + fraction * 1e-6
        frame = data[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        ip = frame[14:]
        if frame[12:14] == b"\x86\xdd" and len(ip) >= 40 + 14 and ip[6] == 6:  # IPv6, next header TCP
            ihl, src = 40, socket.inet_ntop(socket.AF_INET6, ip[8:24])
        elif frame[12:14] == b"\x08\x00" and len(ip) >= 20 and ip[9] == 6 and len(ip) >= (ip[0] & 0x0F) * 4 + 14:
            ihl, src = (ip[0] & 0x0F) * 4, socket.inet_ntoa(ip[12:16])
        else:
            continue
        if src not in client_addresses:
            continue
        sport = struct.unpack_from("!H", ip, ihl)[0]
        flags = ip[ihl + 13]
        times = out.setdefault(sport, {"syns": [], "rsts": []})
        if flags & 0x02 and not flags & 0x10:
            times["syns"].append(stamp)
        if flags & 0x04:
            times["rsts"].append(stamp)
    return out


# --- running ----------------------------------------------------------------------------------------------


@dataclass
class KernelRun:
    """What one (variant, run index) left in the kernel, beside its RunResult."""

    facts: dict
    sysctls: dict
    middleboxes: dict
    proxy_argv: list[str]
    pcaps: dict[str, bytes]  # file name -> pcapng bytes (KERNEL_CAPTURE_NOTE); empty unless kept
    # Pinned buffers: per role, what its program set and what its socket reported back (doubled)
    socket_buffers: dict | None = None
    #: The paths as built: each line's measured forwarding latency (:func:`measure_path_latency`).
    path_latency: dict = dataclasses.field(default_factory=dict)


#: How a recording's lossy variant drew its losses: the model's streams (:func:`loss_seeds`). A
#: recording without it drew them independently (nftables' own random numbers).
LOSS_STREAMS = "model"


def loss_seeds(scenario: Scenario, run_index: int) -> dict[str, tuple[int, int]]:
    """{path: (up seed, down seed)} for every path with random loss: the seeds the simulator gives
    the loss models of that path's link directions (``loss.<path>.up`` / ``.down``,
    mpsim/experiment/simulation.py), so the delay line draws the model's stream."""
    return {name: (derive_seed(scenario.seed, run_index, loss_component(f"{name}.up")),
                   derive_seed(scenario.seed, run_index, loss_component(f"{name}.down")))
            for name in path_names(scenario) if isinstance(_loss(scenario.paths[name].loss), tuple)
            and _loss(scenario.paths[name].loss) != (0.0, None)}


def _testbed_paths(scenario: Scenario, boxes: dict[str, tuple[str, ...]], run_index: int = 0) -> list[Any]:
    """One testbed PathSpec per scenario path, the primary first; random loss drawn by the delay line
    from the model's seeds of ``run_index`` (:func:`loss_seeds`)."""
    from mpsim.testbed.shaping import KERNEL_MIDDLEBOXES, Middlebox, PathSpec

    seeds = loss_seeds(scenario, run_index)
    out = []
    for name in path_names(scenario):
        p = scenario.paths[name]
        flags: dict[str, Any] = {}
        for box in boxes[name]:
            for field in dataclasses.fields(Middlebox):
                value = getattr(KERNEL_MIDDLEBOXES[box].box, field.name)
                if value:
                    flags[field.name] = value
        loss_prob, ge = _loss(p.loss)
        out.append(PathSpec(rate_bps=int(p.rate_down_bps), queue_s=p.queue_bytes * 8 / p.rate_down_bps,
                            loss_prob=loss_prob, gilbert_elliott=ge, loss_seeds=seeds.get(name),
                            delay_s=p.delay_s,
                            middlebox=Middlebox(**flags) if flags else None))
    return out


def _up_rate_commands(scenario: Scenario) -> list[list[str]]:
    """Replace each path's up-direction tbf (at the converter) with the path's up rate."""
    from mpsim.testbed.shaping import PathSpec as TbPath
    from mpsim.testbed.shaping import ifb_name

    out = []
    for i, name in enumerate(path_names(scenario)):
        p = scenario.paths[name]
        if p.rate_up_bps == p.rate_down_bps:
            continue
        spec = TbPath(rate_bps=int(p.rate_up_bps), queue_s=p.queue_bytes * 8 / p.rate_up_bps)
        burst, limit = spec.tbf_sizes()
        out.append(["tc", "qdisc", "replace", "dev", ifb_name(f"path{i}"), "root", "tbf", "rate",
                    f"{spec.rate_bps}bit", "burst", str(burst), "limit", str(limit)])
    return out


class ServerLinkDelay:
    """The server's one-way delay on the converter-server link: the testbed delays client links
    only, so this splices the testbed's delay line (mpsim/testbed/delay.py) into that link the way
    the testbed splices it into a path: a namespace ``<prefix>-sdelay`` holding the server's old
    veth end and a new veth to the server, neither with an address (an L2 wire). The delay line
    is started with ``tb.popen`` (killed with the testbed); the namespace is deleted here."""

    def __init__(self, tb: Any, delay_s: float) -> None:
        self.tb, self.delay_s = tb, delay_s
        self.ns = f"{tb.prefix}-sdelay"
        self.proc: subprocess.Popen | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="mpsim-sdelay-")
        self.stats_path = os.path.join(self._scratch.name, "stats.json")

    def __enter__(self) -> ServerLinkDelay:
        from mpsim.testbed import delay as delay_mod
        from mpsim.testbed.probe import ns_argv, run_command

        tb, d = self.tb, self.ns
        server, converter = tb.ns["server"], tb.ns["converter"]
        run_command(["ip", "netns", "add", d])
        try:
            run_command(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"], ns=d)
            run_command(["ip", "-n", server, "link", "set", "converter", "netns", d])
            run_command(["ip", "-n", d, "link", "set", "converter", "name", "c"])
            run_command(["ip", "-n", d, "link", "add", "s", "type", "veth", "peer", "name", "converter",
                         "netns", server])
            for ns, dev in ((d, "c"), (d, "s"), (server, "converter"), (converter, "server")):
                # A frame read from a packet socket carries no checksum where the sender left it to
                # the NIC: the devices facing the line compute it in software (as the testbed does).
                run_command(["ethtool", "-K", dev, "tso", "off", "gso", "off", "tx", "off"], ns=ns)
                run_command(["ip", "-n", ns, "link", "set", dev, "up"])
            run_command(["tee", "/sys/class/net/c/queues/rx-0/rps_cpus", "/sys/class/net/s/queues/rx-0/rps_cpus"],
                        ns=d, input_text="1\n")
            run_command(["tee", "/sys/class/net/converter/queues/rx-0/rps_cpus"], ns=server, input_text="1\n")
            v6 = tb.ip_version == 6
            run_command(["ip", "-n", server, "addr", "add", f"{tb.addresses.server}/{64 if v6 else 24}", "dev",
                         "converter", *(["nodad"] if v6 else [])])
            run_command(["ip", "-n", server, *(["-6"] if v6 else []), "route", "replace", "default", "via",
                         tb.addresses.converter_server_side])
            self.proc = subprocess.Popen(ns_argv(d, delay_mod.argv("c", "s", self.delay_s, seed=101,
                                                                   stats_path=self.stats_path)),
                                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL)
            if self.proc.stdout.readline().strip() != b"ready":
                raise KernelWorldError("the server link's delay line did not start")
            # Resolve the neighbours across the line now, so that no request pays for ARP.
            for ns, address in ((converter, tb.addresses.server), (server, tb.addresses.converter_server_side)):
                run_command(["ping", "-c", "1", "-W", "2", address], ns=ns)
        except BaseException:
            self.close()
            raise
        return self

    def stats(self, timeout_s: float = 3.0) -> dict | None:
        """The line's statistics (mpsim/testbed/delay.py: lateness per direction), written on request."""
        from mpsim.testbed import delay as delay_mod

        if self.proc is None or self.proc.poll() is not None:
            return None
        asked = (delay_mod.read_stats(self.stats_path) or {}).get("dumps", 0)
        os.kill(self.proc.pid, 10)  # SIGUSR1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = delay_mod.read_stats(self.stats_path)
            if stats and stats.get("dumps", 0) > asked:
                return stats
            time.sleep(0.01)
        return None

    def close(self) -> None:
        from mpsim.testbed.probe import run_command

        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(2)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, 9)
            self.proc.stdout.close()
            self.proc = None
        for pid in run_command(["ip", "netns", "pids", self.ns], check=False).stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        run_command(["ip", "netns", "del", self.ns], check=False)
        self._scratch.cleanup()

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: Echo round trips per line in a run's path measurement (:func:`measure_path_latency`).
PATH_ECHOES = 10
PATH_ECHO_INTERVAL_S = 0.01


def _echo_rtts_s(tb: Any, role: str, to: str, source: str | None, count: int) -> subprocess.Popen:
    from mpsim.testbed import echo

    # By its file, isolated (-I): it needs only the standard library, and skipping the package's
    # imports starts it in 0.2 s instead of 1.3-1.9 s on this loaded machine, once per kernel run.
    argv = [*REALTIME, sys.executable, "-I", echo.__file__, "--to", to, "--count", str(count),
            "--interval-s", repr(PATH_ECHO_INTERVAL_S), *(["--from", source] if source else [])]
    return tb.popen(role, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure_path_latency(tb: Any, scenario: Scenario, server_line: ServerLinkDelay | None = None,
                         count: int = PATH_ECHOES) -> dict:
    """The paths as built (docs/kernel-world.md, "The path as built"): ICMP echo round trips
    (:mod:`mpsim.testbed.echo`, kernel receive timestamps) from each client path's address to the
    server and from the converter to the server, against the configured round trips. What they
    exceed it by is what the testbed adds to every round trip on that route: the delay lines'
    lateness, the veths, the forwarding, the IFB shapers and the stacks up to the kernel's echo
    reply. Per line: ``server`` (converter - server) is the second echo's excess, each access path
    its route's excess less the server's; ``one_way_s`` halves it for each direction (the echo
    measures the round trip only; the delay lines' own lateness per direction is recorded beside it,
    ``lateness_median_s``). The routes' echoes run at once (started apart by a share of the
    interval, as they share the server line), in ``count`` + 1 round trips of the longest route
    (each echo waits for its reply, so each crosses idle lines, as a handshake does)."""
    names = path_names(scenario)
    server_delay = scenario.server.delay_s
    routes = [("server", "converter", tb.addresses.server, None, 2 * server_delay)]
    for i, name in enumerate(names):
        routes.append((name, "client", tb.addresses.server, tb.addresses.client[i],
                       2 * (scenario.paths[name].delay_s + server_delay)))
    measured, procs = {}, {}
    for line, role, to, source, _configured in routes:
        # All routes at once (one round trip's time, not one per route, per kernel run), started
        # apart by a share of the interval so that their echoes do not reach the shared server
        # line together.
        procs[line] = _echo_rtts_s(tb, role, to, source, count + 1)
        time.sleep(PATH_ECHO_INTERVAL_S / len(routes))
    for line, role, to, source, configured in routes:
        proc = procs[line]
        try:
            text, err = proc.communicate(timeout=10 + (count + 1) * (PATH_ECHO_INTERVAL_S + configured))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            text, err = proc.communicate()
        rtts = json.loads(text)["rtts_s"][1:] if proc.returncode == 0 and text.strip() else []  # the 1st: ARP
        measured[line] = {"configured_rtt_s": configured, "echoes": len(rtts),
                          "rtt_min_s": min(rtts) if rtts else None,
                          "rtt_median_s": statistics.median(rtts) if rtts else None,
                          "rtt_max_s": max(rtts) if rtts else None,
                          "excess_s": statistics.median(rtts) - configured if rtts else None,
                          "error": None if rtts else (err.strip()[-200:] or "no echo replies")}
    lines = {"server": measured["server"]}
    server_excess = measured["server"]["excess_s"]
    for name in names:
        route = measured[name]
        own = None if route["excess_s"] is None or server_excess is None else route["excess_s"] - server_excess
        lines[name] = route | {"route_excess_s": route["excess_s"], "excess_s": own}
    for line in lines.values():
        line["one_way_s"] = None if line["excess_s"] is None else max(0.0, line["excess_s"]) / 2
    # The lines write their statistics when their loop next wakes (up to half a second when idle):
    # the server line's are asked for beside the paths' lines, not after them.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        server_stats = pool.submit(server_line.stats) if server_line is not None else None
        lateness = tb.delay_line_stats() if getattr(tb, "_delay_lines", None) else {}
        server_stats = server_stats.result() if server_stats is not None else None
    for i, name in enumerate(names):
        stats = lateness.get(i)
        if stats:
            lines[name]["lateness_median_s"] = {d: v["lateness"].get("median_s")
                                                for d, v in stats["directions"].items()}
    if server_stats:
        lines["server"]["lateness_median_s"] = {d: v["lateness"].get("median_s")
                                                for d, v in server_stats["directions"].items()}
    return {"method": "icmp echo (mpsim.testbed.echo)", "echoes": count, "lines": lines}


def wait_listening(tb: Any, role: str, address: str, port: int, timeout_s: float,
                   proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """The readiness check: a TCP connect from ``role``'s namespace succeeds. With the proxy's
    ``proc`` (and its ``log``), a proxy that exits first is reported at once, with its status and
    the last line it wrote, rather than after the whole wait."""
    family = "AF_INET6" if ":" in address else "AF_INET"
    probe = (f"import socket,sys\ns=socket.socket(socket.{family});s.settimeout(1)\n"
             f"sys.exit(s.connect_ex(({address!r},{port})))")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = tb.run(role, [sys.executable, "-c", probe], timeout_s=5)
        if done.returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            said = _first_lines(log)
            raise KernelWorldError(f"the proxy exited with status {proc.returncode} before listening on "
                                   f"{endpoint_text(address, port)}" + (f": {said}" if said else ""))
        time.sleep(0.1)
    raise KernelWorldError(f"nothing listens on {endpoint_text(address, port)} after {timeout_s:g} s "
                           "(the proxy did not start)")


def _first_lines(log: Path | None, count: int = 3) -> str:
    """A program's first ``count`` non-empty log lines joined by " / " (at most 240 characters; a
    usage text or an error comes first), or ""."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log else []
    except OSError:
        return ""
    text = " / ".join(lines[:count]) + (f" (+{len(lines) - count} lines)" if len(lines) > count else "")
    return text if len(text) <= 240 else text[:237] + "..."


def endpoint_text(address: str, port: int) -> str:
    """ADDR:PORT, an IPv6 address in brackets ([ADDR]:PORT)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


#: The clients' prefix a proxy allows, by IP version: the testbed's benchmarking range.
CLIENT_PREFIXES = {4: "198.18.0.0/15", 6: "2001:2::/48"}


def fill_proxy_cmd(proxy_cmd: str, listen: tuple[str, int], allow: str) -> list[str]:
    """``--proxy-cmd`` as argv: {listen} (ADDR:PORT, IPv6 [ADDR]:PORT), {addr}, {port} and {allow}
    (the clients' prefix) filled in; a clear error for another placeholder."""
    fields = {"listen": endpoint_text(*listen), "allow": allow, "addr": listen[0], "port": str(listen[1])}
    try:
        words = shlex.split(proxy_cmd)
    except ValueError as err:  # an unclosed quote
        raise KernelWorldError(f"--proxy-cmd {proxy_cmd!r}: {err}") from None
    try:
        argv = [word.format(**fields) for word in words]
    except (KeyError, IndexError, ValueError) as err:
        raise KernelWorldError(f"--proxy-cmd {proxy_cmd!r}: bad placeholder {err}; use {{listen}}, {{allow}}, "
                               "{addr}, {port}") from None
    if not argv:
        raise KernelWorldError("--proxy-cmd is empty")
    return argv


def proxy_argv(scenario: Scenario, listen: tuple[str, int], allow: str, proxy_cmd: str | None) -> list[str]:
    """The proxy's command line: --proxy-cmd with {listen}, {allow}, {addr}, {port} filled in, or the
    scenario's proxy."""
    if proxy_cmd is not None:
        return fill_proxy_cmd(proxy_cmd, listen, allow)
    cv = scenario.converter
    if scenario.proxy_kind == "socks5":
        return ["mptcpize", "run", "microsocks", "-i", listen[0], "-p", str(listen[1])]
    # Through the command line, which names the daemon's module wherever it lives.
    argv = [sys.executable, "-m", "mpsim", "converter", "serve", "--listen", endpoint_text(*listen),
            "--allow", allow, "--connect-timeout", f"{cv.connect_timeout_s:g}", "--quiet"]
    if cv.require_cookie:
        argv.append("--require-cookie")
    if cv.max_sessions:
        argv += ["--max-conns", str(cv.max_sessions)]
    if cv.cores:  # converter_cores(): one serving process per modelled core
        argv += ["--workers", str(cv.cores)]
    return argv


def converter_cores(scenario: Scenario, proxy_cmd: str | None = None) -> str:
    """How the kernel world builds ``converter.cores`` (recorded in the manifest). The model's
    cores are processors of the proxy machine; here the proxy runs on this machine's CPUs, shared
    with everything else. The live converter gets one serving process per core (``--workers N``;
    each is single-threaded); 0 (the CPU not modelled) runs its default, one process. A SOCKS5
    server or a ``--proxy-cmd`` program runs as it is (microsocks: a thread per connection, on any
    CPU), so there the value describes the model only. ``cpu_setup_s`` and ``relay_cpu_s_per_gb``
    are never built: they are the model's description of what the proxy costs on this machine
    (docs/kernel-world.md, "The proxy's CPU")."""
    cores = scenario.converter.cores
    if proxy_cmd is not None:
        return f"{cores}: model only (--proxy-cmd runs as it is)"
    if scenario.proxy_kind == "socks5":
        return f"{cores}: model only (microsocks runs a thread per connection)"
    if scenario.proxy_kind == "convert":
        return f"{cores}: the live converter with --workers {cores}" if cores else \
            "0: the CPU not modelled; the live converter with one process"
    return f"{cores}: no proxy built"


def run_once(scenario: Scenario, *, variant: str, run_index: int, work: Path, proxy_cmd: str | None = None,
             pcap: bool = True, keep_pcaps: bool = False) -> tuple[RunResult, KernelRun]:
    """Build the scenario's testbed, run its workload, tear it down; the simulator's rows.

    ``pcap``: capture every link (:func:`capture_points`); the SYN and RST columns are read from
    the paths' captures (empty without). ``keep_pcaps``: also keep the captures, as pcapng bytes
    named as the simulator names its files (``<variant>-run<N>-<link>.pcapng``), in the
    KernelRun (for ``--pcap``; a comparison does not keep them, so memory stays bounded)."""
    from mpsim.testbed import Testbed
    from mpsim.testbed.probe import run_command

    boxes = drawn_middleboxes(scenario, run_index)
    paths = _testbed_paths(scenario, boxes, run_index)
    cc = scenario.transfers[0].congestion_control if scenario.transfers else "cubic"
    sysctls = kernel_sysctls(scenario)
    work.mkdir(parents=True, exist_ok=True)
    seeds = {f"middlebox_mix.{name}": derive_seed(scenario.seed, run_index, f"middlebox_mix.{name}")
             for name in scenario.paths}
    if scenario.workload.arrivals is Arrivals.POISSON:
        seeds["workload"] = derive_seed(scenario.seed, run_index, "workload")
    for name, (up, down) in loss_seeds(scenario, run_index).items():
        seeds[loss_component(f"{name}.up")], seeds[loss_component(f"{name}.down")] = up, down
    with contextlib.ExitStack() as stack:
        # Loss held until the workload starts: the bring-up's probes take none of the model's draws.
        tb = stack.enter_context(Testbed(paths=paths, cc=cc, tcp_buffer_max_bytes=None, delay_check_pings=3,
                                         sysctls={"net.mptcp.blackhole_timeout": "0"},
                                         ip_version=scenario.ip_version, loss_held=True))
        server_line = stack.enter_context(ServerLinkDelay(tb, scenario.server.delay_s)) \
            if scenario.server.delay_s else None
        for role, values in sysctls.items():
            run_command(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())], ns=tb.ns[role])
        for argv in _up_rate_commands(scenario):
            run_command(argv, ns=tb.ns["converter"])
        server_kind, _ = SERVER_SOCKETS[scenario.server.kind]
        server = (tb.addresses.server, scenario.server.port)
        logs = []
        pinned = socket_buffers(scenario)
        buffers_read: dict[str, Any] = {}
        if server_kind is not None:
            log = open(work / f"{variant}-run{run_index}-server.log", "wb")
            logs.append(log)
            pin = [] if pinned is None else ["--sndbuf", str(pinned["server"]["snd_buf_bytes"]),
                                             "--rcvbuf", str(pinned["server"]["rcv_buf_bytes"])]
            proc = tb.popen("server", [*REALTIME, sys.executable, "-m", "mpsim.live.responder", "--listen",
                                       endpoint_text(*server), "--socket", server_kind, "--request-bytes",
                                       str(scenario.workload.request_size_bytes), *pin],
                            stdout=subprocess.PIPE, stderr=log)
            ready = proc.stdout.readline().split()
            if not ready or ready[0] != b"ready":
                raise KernelWorldError(f"the server program did not start (see {log.name})")
            if pinned is not None:  # "ready sndbuf=N rcvbuf=M": what the listener reports back
                buffers_read["server"] = {f"SO_{key.decode().upper()}": int(value)
                                          for key, value in (field.split(b"=") for field in ready[1:])}
        proxy, argv = None, []
        needs_proxy = scenario.converter.enabled and any(
            SCHEMES.get(r["scheme"]).proxy for r in requests_plan(scenario, run_index))
        if needs_proxy:
            proxy = (tb.addresses.converter[0], scenario.converter.port)
            argv = proxy_argv(scenario, proxy, CLIENT_PREFIXES[scenario.ip_version], proxy_cmd)
            log = open(work / f"{variant}-run{run_index}-proxy.log", "wb")
            logs.append(log)
            proxy_proc = tb.popen("converter", [*REALTIME, *argv], stdout=log, stderr=log)
            # From the converter's own namespace: the probe crosses no access path, so it can
            # neither be lost nor leave packets in flight when the loss is armed.
            wait_listening(tb, "converter", proxy[0], proxy[1], 15.0, proxy_proc, Path(log.name))
        captures, pcaps = [], {}  # pcaps: link -> (raw pcap file, role, device)
        capture = capture_argv() if pcap else None
        if capture is not None:
            for link, (role, device) in capture_points(scenario).items():
                path = work / f"{variant}-run{run_index}-{link}.pcap"
                pcaps[link] = (path, role, device)
                log = open(work / f"{variant}-run{run_index}-capture.{link}.log", "wb")
                logs.append(log)
                captures.append(tb.popen(role, capture(device, str(path)), stdout=log, stderr=log))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(p.exists() and p.stat().st_size >= 24
                                                          for p, _, _ in pcaps.values()):
                time.sleep(0.05)
            missing = [str(p) for p, _, _ in pcaps.values() if not p.exists()]
            if missing:
                raise KernelWorldError(f"the packet capture did not start writing {', '.join(missing)}")
        # Before the workload, so the echoes meet idle lines (as a connection's handshake does).
        path_latency = measure_path_latency(tb, scenario, server_line)
        before = {role: tb.counters(role) for role in ("client", "converter", "server")}
        snmp_before = {role: _retrans_segs(tb, role) for role in ("client", "converter", "server")}
        plan = client_plan(scenario, run_index, proxy, server)
        plan_path = work / f"{variant}-run{run_index}-plan.json"
        out_path = work / f"{variant}-run{run_index}-client.json"
        plan_path.write_text(json.dumps(plan, indent=1))
        tb.arm_loss()   # from here the n-th TCP packet of a path direction meets the model's n-th draw
        timeout_s = plan["deadline_s"] + 30
        done = tb.run("client", [*REALTIME, sys.executable, "-m", "mpsim.live.client_host", str(plan_path),
                                 str(out_path)], timeout_s=timeout_s)
        if done.returncode != 0:
            raise KernelWorldError(f"the client program failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
        time.sleep(SETTLE_S)
        after = {role: tb.counters(role) for role in ("client", "converter", "server")}
        snmp_after = {role: _retrans_segs(tb, role) for role in ("client", "converter", "server")}
        for proc in captures:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        facts = tb.facts()
        for log in logs:
            log.close()
    client_out = json.loads(out_path.read_text())
    flags: dict[int, dict[str, list[float]]] = {}
    # The client's own links only: on the server link a direct connection's packets pass again.
    for link in (f"path.{name}" for name in path_names(scenario) if f"path.{name}" in pcaps):
        for port, times in pcap_flags(pcaps[link][0], set(facts["addresses"]["client"])).items():
            total = flags.setdefault(port, {"syns": [], "rsts": []})
            total["syns"] += times["syns"]
            total["rsts"] += times["rsts"]
    result = _rows(scenario, variant, run_index, seeds, client_out, flags, before, after, snmp_before, snmp_after,
                   boxes, bool(pcaps))
    captured = {f"{variant}-run{run_index}-{link}.pcapng": kernel_pcapng(path, link, role, device)
                for link, (path, role, device) in pcaps.items() if keep_pcaps and path.exists()}
    if pinned is not None:
        buffers_read["client"] = client_out.get("socket_buffers_read")
        pinned = {role: None if values is None else {**values, "read_back": buffers_read.get(role)}
                  for role, values in pinned.items()}
    return result, KernelRun(facts, sysctls, {k: list(v) for k, v in boxes.items()}, argv, captured, pinned,
                             path_latency)


def capture_points(scenario: Scenario) -> dict[str, tuple[str, str]]:
    """Link name -> (namespace role, device) of its capture: the simulator's link names
    (``path.NAME`` per access path, ``server.link``), each captured at its endpoint's end: the
    client's device of each path (``pathI``, before the path's delay line), the server's device
    towards the converter (behind the server's delay line, if any)."""
    points = {f"path.{name}": ("client", f"path{i}") for i, name in enumerate(path_names(scenario))}
    points["server.link"] = ("server", "converter")
    return points


def kernel_pcapng(path: Path, link: str, role: str, device: str) -> bytes:
    """A kernel run's raw capture (tcpdump's pcap) as the pcapng the simulator's files are: one
    interface named as the link, described by where it was captured, KERNEL_CAPTURE_NOTE as the
    section comment. A record cut short by the capture's stop is left out."""
    from mpsim.wire.pcap import LINKTYPE_ETHERNET, PcapngInterface, pcap_as_pcapng

    interface = PcapngInterface(link, LINKTYPE_ETHERNET, f"{role} namespace, device {device}")
    return pcap_as_pcapng(path.read_bytes(), interface, comment=KERNEL_CAPTURE_NOTE, partial_ok=True)


def capture_argv() -> Any:
    """A function (interface, file) -> argv of a packet capture writing pcap with 128-byte
    snapshots: tcpdump (what .ci/run installs) or dumpcap; None when neither is installed (the
    SYN and RST columns are then empty)."""
    snap = str(CAPTURE_SNAPLEN_BYTES)
    if shutil.which("tcpdump"):
        return lambda dev, path: ["tcpdump", "-q", "--immediate-mode", "-i", dev, "-s", snap, "-U", "-Z", "root",
                                          "-w", path]
    if shutil.which("dumpcap"):
        return lambda dev, path: ["dumpcap", "-q", "-i", dev, "-s", snap, "-P", "-w", path]
    return None


def _retrans_segs(tb: Any, role: str) -> int:
    done = tb.run(role, ["cat", "/proc/net/snmp"], timeout_s=5)
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("Tcp:")]
    if len(lines) < 2:
        return 0
    return int(dict(zip(lines[0][1:], lines[1][1:])).get("RetransSegs", 0))


def _rows(scenario: Scenario, variant: str, run_index: int, seeds: dict, client_out: dict,
          flags: dict[int, dict[str, list[float]]], before: dict, after: dict, snmp_before: dict, snmp_after: dict,
          boxes: dict, have_pcaps: bool) -> RunResult:
    names = path_names(scenario)
    p0 = scenario.paths[scenario.primary_path]
    rtt_s = 2 * (p0.delay_s + scenario.server.delay_s)
    network = " ".join(f"{name}:{'+'.join(boxes[name]) or 'clean'}" for name in names)
    transfers_by_request = {}
    plan_requests = requests_plan(scenario, run_index)
    connections = []
    for record in client_out["records"]:
        request = plan_requests[record["request_id"]]
        row = {k: record.get(k) for k in CONNECTION_COLUMNS if k in record}
        ports = record.get("ports", [])
        if have_pcaps:
            closed = record.get("closed_wall", {})
            row["syns_sent"] = sum(len(flags.get(p, {}).get("syns", [])) for p in ports)
            # An RST after the socket was closed answered a stray segment: the host's, not the connection's.
            row["rsts_sent"] = sum(sum(t <= closed.get(str(p), math.inf) + RST_GRACE_S
                                       for t in flags.get(p, {}).get("rsts", [])) for p in ports)
        else:
            row["syns_sent"] = row["rsts_sent"] = None
        row["source_ports_used"] = len(ports)
        if record["outcome"] != "failed":
            row["completion_time_s"] = record["end_s"] - record["start_s"]
        row["start_s"] = request["at_s"]  # the planned time (the thread starts it within a millisecond)
        row["network"] = network
        row["transfer"] = request["transfer"] is not None
        for name in ("setup_time_s", "first_byte_time_s"):
            value = row.get(name)
            row[name.replace("_time_s", "_rtts")] = None if value is None else round(value / rtt_s, 6) \
                if rtt_s > 0 else math.nan
        connections.append(row)
        if request["transfer"] is not None:
            transfers_by_request[record["request_id"]] = (request["transfer"], record)
    transfers = []
    for result in client_out["transfers"]:
        spec_plan, record = transfers_by_request[result["request_id"]]
        spec = scenario.transfers[spec_plan["transfer_id"]]
        multipath = record["outcome"] in ("converted", "mptcp")
        direction = spec.direction.value
        sender = "client" if direction == "upload" else ("converter" if record["via_proxy"] else "server")
        # Through the converter each leg has its own data sender (the client leg: client or
        # converter; the server leg: converter or server), counted apart and together, as the
        # simulation's RelayedTransfer counts them; exact with one transfer per run (below).
        legs = ({"client": sender, "server": "converter" if direction == "upload" else "server"}
                if record["via_proxy"] else {})
        single = len(scenario.transfers) == 1
        leg_retransmissions = {leg: snmp_after[who] - snmp_before[who] if single else None
                               for leg, who in legs.items()}
        transfers.append({
            "transfer_id": spec_plan["transfer_id"], "request_id": record["request_id"], "scheme": record["scheme"],
            "outcome": record["outcome"], "direction": direction, "congestion_control": spec.congestion_control,
            "paths": " ".join(names if multipath else names[:1]), "subflows": result["subflows"],
            "bytes": spec.size_bytes, "bytes_delivered": result["bytes_delivered"], "completed": result["completed"],
            "start_s": spec.start_s, "negotiated_s": result["negotiated_s"], "duration_s": result["duration_s"],
            "goodput_bps": result["goodput_bps"],
            # The sending namespace's Tcp RetransSegs over the run (through the converter: both
            # legs' senders'): exact with one transfer per run.
            "retransmissions": (sum(leg_retransmissions.values()) if legs else snmp_after[sender] - snmp_before[sender])
            if single else None,
            # Its TcpExt TCPTimeouts (RTOs, every subflow's), exact with one transfer per run as above.
            "timeouts": after[sender].get("TcpExt.TCPTimeouts", 0) - before[sender].get("TcpExt.TCPTimeouts", 0)
            if single else None,
            "subflow_bytes": "", "via_converter": record["via_proxy"],
            "client_leg_retransmissions": leg_retransmissions.get("client"),
            "server_leg_retransmissions": leg_retransmissions.get("server")})
    for spec_index, spec in enumerate(scenario.transfers):  # a failed negotiation moves nothing
        if not any(t["transfer_id"] == spec_index for t in transfers):
            record = next((r for r in client_out["records"]
                           if plan_requests[r["request_id"]]["transfer"]
                           and plan_requests[r["request_id"]]["transfer"]["transfer_id"] == spec_index), None)
            transfers.append({"transfer_id": spec_index, "request_id": record["request_id"] if record else None,
                              "scheme": scenario.client.scheme, "outcome": record["outcome"] if record else "failed",
                              "direction": spec.direction.value, "congestion_control": spec.congestion_control,
                              "paths": "", "subflows": 0, "bytes": spec.size_bytes, "bytes_delivered": 0,
                              "completed": False, "start_s": spec.start_s, "negotiated_s": None, "duration_s": None,
                              "goodput_bps": None, "retransmissions": 0, "timeouts": 0, "subflow_bytes": "",
                              "via_converter": bool(record and record["via_proxy"]),
                              "client_leg_retransmissions": None, "server_leg_retransmissions": None})
    transfers.sort(key=lambda t: t["transfer_id"])
    counters = []
    for role in ("client", "converter", "server"):
        for key, value in sorted(after[role].items()):
            group, _, name = key.partition(".")
            delta = value - before[role].get(key, 0)
            if group in ("MPTcpExt", "TcpExt") and delta:
                counters.append({"component": role, "counter": name, "value": int(delta)})
            elif group in ("nft", "iptables") and key.endswith(".packets"):
                counters.append({"component": f"rule.{role}", "counter": name.removesuffix(".packets"),
                                 "value": int(delta)})
    events = [{"time_s": float(r["end_s"]), "node": "client", "event": "ConnectionFinished",
               "detail": f"request_id={r['request_id']} outcome={r['outcome']} "
                         f"fallback_reason={r['fallback_reason']}"} for r in client_out["records"]]
    events.sort(key=lambda e: e["time_s"])
    end_s = max([e["time_s"] for e in events], default=0.0)
    return RunResult(variant, run_index, seeds, connections, transfers, counters, events, end_s)


def running_kernel_hz(config_paths: list[Path] | None = None) -> int | str:
    """The running kernel's CONFIG_HZ (the jiffy rate of its CUBIC, ``transfers.N.kernel_hz`` in a
    scenario), from /boot/config-<release> or /proc/config.gz; "unknown" if neither is readable
    or names it. Recorded in the manifest only: a kernel of another HZ is not refused."""
    if config_paths is None:
        config_paths = [Path(f"/boot/config-{os.uname().release}"), Path("/proc/config.gz")]
    for path in config_paths:
        try:
            raw = path.read_bytes()
            text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", "replace")
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        for line in text.splitlines():
            if line.startswith("CONFIG_HZ=") and line[len("CONFIG_HZ="):].strip().isdigit():
                return int(line[len("CONFIG_HZ="):])
    return "unknown"


class KernelResults(Results):
    """The simulator's tables from kernel runs; the manifest adds what the kernel was."""

    def __init__(self, loaded: LoadedScenario, runs: list[RunResult], kernel: list[KernelRun],
                 skipped: list[str], proxy_cmd: str | None = None, *, started_utc: str | None = None,
                 revision: dict | None = None) -> None:
        super().__init__(loaded, runs)
        self.kernel = kernel
        self.skipped = skipped
        self.proxy_cmd = proxy_cmd
        # When the runs started and the code they ran (a commit made while they run is not theirs).
        self.measured_utc = started_utc or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.revision = revision

    def manifest(self) -> dict[str, Any]:
        manifest = super().manifest()
        manifest["world"] = "kernel"
        manifest["skipped_unbuildable"] = self.skipped
        # The model's CUBIC uses each transfer's kernel_hz; what this kernel runs, to compare.
        manifest["running_kernel_hz"] = running_kernel_hz()
        manifest["kernel"] = [{"variant": run.variant, "run": run.run_index, "sysctls": k.sysctls,
                               "socket_buffers": k.socket_buffers,
                               "middleboxes": k.middleboxes, "proxy_argv": k.proxy_argv,
                               "pcaps": sorted(k.pcaps), "path_latency": k.path_latency, "testbed": k.facts}
                              for run, k in zip(self.runs, self.kernel)]
        if any(k.pcaps for k in self.kernel):  # how these files differ from the simulator's of the same names
            manifest["capture_note"] = KERNEL_CAPTURE_NOTE
        names = list(dict.fromkeys(run.variant for run in self.runs))
        manifest["model_only"] = {name: model_only_values(self.loaded.variants[name]) for name in names}
        manifest["converter_cores"] = {name: converter_cores(self.loaded.variants[name], self.proxy_cmd)
                                       for name in names}
        return manifest

    def record(self) -> dict[str, Any]:
        """The recording ``mpsim compare --kernel-from`` reuses: per variant, the values it was
        built from (:func:`built_values`) and, per run index, the rows of :data:`RECORD_TABLES`
        (columns once), with when, at which commit and on which machine they were measured."""
        from mpsim.experiment.results import TABLES
        from mpsim.provenance import git_revision, machine_facts

        facts = machine_facts()
        variants: dict[str, Any] = {}
        for run, k in zip(self.runs, self.kernel):
            entry = variants.setdefault(run.variant, {"built": built_values(self.loaded.variants[run.variant]),
                                                      "sysctls": k.sysctls, "runs": {}})
            if k.socket_buffers is not None:
                entry.setdefault("socket_buffers", {})[str(run.run_index)] = k.socket_buffers
            if loss_seeds(self.loaded.variants[run.variant], run.run_index):
                entry["loss_streams"] = LOSS_STREAMS
            entry["runs"][str(run.run_index)] = {table: [] for table in RECORD_TABLES}
            if k.path_latency:  # the paths as built (docs/kernel-world.md); older recordings lack it
                entry["runs"][str(run.run_index)]["path_latency"] = k.path_latency
        for table in RECORD_TABLES:  # rows() gives JSON's cells (NaN as null), run by run
            for row in self.rows(table):
                variants[row["variant"]]["runs"][str(row["run"])][table].append(list(row.values()))
        return {"format": 1, "scenario": self.loaded.name, "file": self.loaded.source,
                "overrides": list(self.loaded.overrides), "measured_utc": self.measured_utc,
                "git": self.revision or git_revision(), "proxy_cmd": self.proxy_cmd,
                "machine": {key: facts.get(key) for key in ("platform", "cpu_model", "cpu_count", "load_average")},
                "running_kernel_hz": running_kernel_hz(), "skipped_unbuildable": self.skipped,
                "columns": {table: list(TABLES[table]) for table in RECORD_TABLES}, "variants": variants}

    def write(self, out_dir: Path, *, pcap: bool = False) -> list[Path]:
        written = super().write(out_dir, pcap=pcap)
        path = out_dir / RECORD_FILE
        path.write_text(json.dumps(self.record(), separators=(",", ":"), allow_nan=False) + "\n", encoding="utf-8")
        return [*written, path]

    def write_pcaps(self, pcap_dir: Path) -> list[Path]:
        """The kept captures (``run_kernel(keep_pcaps=True)``), one pcapng per link and run,
        named as the simulator's (``<variant>-run<N>-<link>.pcapng``); KERNEL_CAPTURE_NOTE in each
        says how they differ from the simulator's. Nothing was kept: nothing is written."""
        pcap_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for k in self.kernel:
            for name, data in sorted(k.pcaps.items()):
                (pcap_dir / name).write_bytes(data)
                written.append(pcap_dir / name)
        return written


def check_root() -> None:
    if os.geteuid() != 0:
        raise KernelWorldError("--on kernel needs root (network namespaces)")


def run_kernel(loaded: LoadedScenario, *, variants: list[str] | None = None, skip_unbuildable: bool = False,
               proxy_cmd: str | None = None, pcap: bool = True, keep_pcaps: bool = False,
               progress: Any = None) -> KernelResults:
    """Every variant (or those named) and run index of ``loaded`` in the kernel. Unbuildable
    variants are refused (KernelWorldError naming the first element) or, with
    ``skip_unbuildable``, left out and named in the manifest."""
    from mpsim.testbed.probe import TestbedError

    names = list(variants) if variants else list(loaded.variants)
    if proxy_cmd is not None and proxy_cmd_problems(proxy_cmd):
        raise KernelWorldError(proxy_cmd_problems(proxy_cmd)[0])
    problems = {name: unbuildable(loaded.variants[name], proxy_cmd=proxy_cmd) for name in names}
    skipped = []
    for name in names:
        if problems[name]:
            if not skip_unbuildable:
                raise KernelWorldError(f"cannot build variant {name!r} in the kernel: {problems[name][0]}"
                                       + (f" (and {len(problems[name]) - 1} more)" if len(problems[name]) > 1 else ""))
            skipped += [f"{name}: {line}" for line in problems[name]]
    names = [name for name in names if not problems[name]]
    if not names:
        raise KernelWorldError("no variant can be built in the kernel: " + "; ".join(skipped[:3])
                               + (f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""))
    if proxy_cmd is not None and not any(uses_proxy(loaded.variants[name]) for name in names):
        raise KernelWorldError(f"--proxy-cmd: no variant of scenario {loaded.name} runs through a proxy "
                               "(converter.enabled = false or a direct client.scheme): nothing would run it")
    check_root()  # after the refusals: what cannot be built is said on any machine
    from mpsim.provenance import git_revision

    started_utc, revision = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), git_revision()
    runs, kernel = [], []
    # MPSIM_KERNEL_WORK=DIR keeps the work files (plans, the client's JSON, program logs) there.
    keep = os.environ.get("MPSIM_KERNEL_WORK")
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="mpsim-kernel-")) as scratch:
        for run_index in range(loaded.base.runs):
            for name in names:
                if progress:
                    progress(f"kernel: variant {name} run {run_index}")
                try:
                    result, k = run_once(loaded.variants[name], variant=name, run_index=run_index,
                                         work=Path(scratch) / "work", proxy_cmd=proxy_cmd, pcap=pcap,
                                         keep_pcaps=keep_pcaps and pcap)
                except TestbedError as err:  # the machine cannot build it (probe) or a command failed
                    raise KernelWorldError(f"variant {name!r} run {run_index}: "
                                           + " ".join(str(err).split())) from None
                runs.append(result)
                kernel.append(k)
    return KernelResults(loaded, runs, kernel, skipped, proxy_cmd, started_utc=started_utc, revision=revision)
