"""The kernel benchmarks' results as files: JSON (everything), CSV (one row per measurement),
Markdown (the tables people read) and, for the model benchmark, a PNG of predicted against measured."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpsim.bench import write_json_and_markdown
from mpsim.bench.kernel.config import MIB
from mpsim.bench.kernel.measure import pct
from mpsim.provenance import short_revision


def _cell(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v, spec) for v in value) or "-"
    return str(value)


def _range(stats: dict, spec: str = ".2f") -> str:
    if not stats or stats.get("median") is None:
        return "-"
    return f"{stats['min']:{spec}} / {stats['median']:{spec}} / {stats['max']:{spec}}"


def _header(result: dict, title: str) -> list[str]:
    k, m, git = result["kernel"], result["machine"], result["git"]
    revision = (short_revision(git) if isinstance(git, dict) else git) or "no git"
    return [f"# {title}", "",
            f"mpsim {result['mpsim_version']} ({revision}), {result['date']}, scale `{result['scale']['name']}`, "
            f"{result['wall_s']:.0f} s. Linux {k['kernel_release']}, {k['cpus']} CPUs, Python {k['python']}; load "
            f"average {m['load_average_before'][0]:.1f} before, {m['load_average'][0]:.1f} after (other work shares "
            f"these cores). CUBIC pinned, tcp_rmem/tcp_wmem maxima 16 MiB, tcp_no_metrics_save=1, TFO 0x207. "
            "Every transfer's SHA-256 checked at the receiver: "
            f"{'all matched' if result['hashes_ok'] else 'MISMATCH'}. "
            f"Converter daemons: {result.get('daemon_build', 'pure Python')}.",
            ""]


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    align = ["---"] + ["---:"] * (len(columns) - 1)
    return [f"| {' | '.join(columns)} |", f"|{'|'.join(align)}|", *(f"| {' | '.join(r)} |" for r in rows)]


def _fastpath_markdown(result: dict) -> list[str]:
    lines = _header(result, "Kernel fast path: the converter against the direct kernel path and a peer relay")
    lines += ["Uploads client -> server, measured at the receiver; min / median / max over interleaved rounds; ratios "
              "computed per round against the direct runs of the same round. CPU s/GB: CPU seconds per 10^9 bytes. "
              "relay: the daemon's (or peer relay's) /proc/PID/stat, the relay pinned to CPU "
              f"{result['settings']['relay_cpu']} (every veth's receive softirq runs on CPU 0: rps_cpus=1); softirq: "
              "/proc/stat's softirq time, all CPUs (the packet processing of every hop); system: /proc/stat busy "
              "time, all CPUs, raw and net of the background measured just before each run; endpoints: the sender's "
              "and the receiver's own getrusage (the receiver hashes every byte); other load: busy CPUs of the "
              "machine in the 0.25 s before each run (2 = both cores busy with other work).", ""]
    keys = ("ratio_to_direct_mptcp", "ratio_to_direct_tcp", "relay_cpu_s_per_gb", "softirq_cpu_s_per_gb",
            "system_cpu_s_per_gb", "system_cpu_net_s_per_gb", "endpoints_cpu_s_per_gb", "background_busy_cpus")
    rows = [[s["session"], s["route"], str(s["runs"]), _range(s["goodput_mbps"], ".0f"),
             *(_range(s[k]) for k in keys), _cell(s["subflows"])] for s in result["summary"]]
    return lines + _table(["session", "route", "runs", "goodput Mbit/s", "/ direct MPTCP", "/ direct TCP",
                           "relay CPU s/GB", "softirq s/GB", "system CPU s/GB", "system net s/GB",
                           "endpoints CPU s/GB", "other load CPUs", "subflows"], rows)


def _placement(row: dict, cpu: int | None) -> str:
    """A churn row's relay placement as the table shows it."""
    placement = row.get("relay_placement")
    if placement is None:
        return "-"
    if row["route"].endswith("-workers"):
        return "unpinned (workers)"
    return f"pinned to CPU {cpu}" if placement == "pinned" else "unpinned"


def _placement_note(result: dict) -> str:
    choice = result.get("relay_cpu")
    if choice is None:  # recorded before --relay-cpu: every single-process relay was pinned
        return f"Every single-process relay pinned to CPU {result['settings']['relay_cpu']}."
    cpu = result["settings"]["relay_cpu"]
    said = {"pinned": f"pinned to CPU {cpu} (every veth's receive softirq runs on CPU 0: rps_cpus=1)",
            "unpinned": "unpinned (free to run on every CPU, like the direct routes' client and server)",
            "both": f"both pinned to CPU {cpu} (every veth's receive softirq runs on CPU 0) and unpinned, side by "
                    "side in the same interleaved rounds (their order flipping with the rounds')"}[choice]
    return (f"Relay CPU placement (--relay-cpu {choice}): the single-process relays (converter, mptcpize relay, "
            f"minimal relay) {said}; the --workers converter is never pinned; idle memory measured "
            f"{'pinned' if choice == 'pinned' else 'unpinned'}.")


def _setup_markdown(result: dict) -> list[str]:
    cpu = result["settings"]["relay_cpu"]
    lines = _header(result, "Kernel setup: connection rate, setup latency and idle memory through the converter")
    lines += ["Sequential connections (set up, echo 100 bytes and check it, close) from one client process, "
              f"{result['scale']['churn_conns']} per route and round, routes interleaved; setup = until the path can "
              "carry data (direct: connect(); converter: the Convert reply read). Connections/s and the ratio (per "
              "round) min / median / max; latencies over every connection. "
              f"{_placement_note(result)}", ""]
    lines += _table(["route", "relay CPU", "connections", "per s", "/ direct MPTCP", "relay CPU us/conn",
                     "client CPU us/conn", "setup median ms", "setup p90 ms", "connection median ms", "errors"],
                    [[r["route"], _placement(r, cpu), str(r["connections"]), _range(r["connections_per_s"], ".0f"),
                      _range(r["rate_ratio_to_direct_mptcp"]), _range(r.get("relay_cpu_us_per_conn"), ".0f"),
                      _range(r.get("client_cpu_us_per_conn"), ".0f"), _cell(r["setup_median_ms"], ".3f"),
                      _cell(r["setup_p90_ms"], ".3f"), _cell(r["connection_median_ms"], ".3f"), str(r["errors"])]
                     for r in result["churn"]])
    lines += ["", "Relay CPU: the daemon's (or workers', or the mptcpize relay's) utime + stime per connection "
              "(single-threaded processes from /proc/PID/schedstat), the measure of the per-connection path that the "
              "machine's load does not scale the way it scales the wall rate; client CPU: the churn client's own. "
              "minimal-relay: the ceiling of a Python converter, the fewest system calls a Convert relay makes (accept, "
              "read the request, connect, reply with a bare header, recv/send, shutdown, close) in one epoll loop, "
              "without any of the converter's checks, limits, timers or SO_LINGER (placed like every single-process "
              "relay)."]
    if result.get("parallel"):
        lines += ["", f"Parallel: {result['workers']} churn clients at once, {result['scale']['churn_conns']} connections "
                  f"per route and round in all; the converter as one process and with --workers {result['workers']}.",
                  ""]
        lines += _table(["route", "relay CPU", "connections", "per s", "/ direct MPTCP", "setup median ms",
                         "setup p90 ms", "errors"],
                        [[r["route"], _placement(r, cpu), str(r["connections"]), _range(r["connections_per_s"], ".0f"),
                          _range(r["rate_ratio_to_direct_mptcp"]), _cell(r["setup_median_ms"], ".3f"),
                          _cell(r["setup_p90_ms"], ".3f"), str(r["errors"])] for r in result["parallel"]])
    lines += ["", f"Idle connections ({result['scale']['idle_conns']} held at once, each after one 100-byte echo): "
              "slab bytes in use (/proc/slabinfo, machine-wide: client, relay and server sockets together) per "
              "connection, min / median / max over rounds; drift-corrected: against the mean of before and after the "
              "close. The proxy's share = the route's drift-corrected median minus the endpoints' sockets (half of "
              "direct MPTCP: the client's MPTCP socket and two subflows; half of direct TCP: the server's TCP "
              "socket).", ""]
    return lines + _table(["route", "rounds", "slab KB/conn", "drift-corrected KB/conn", "proxy share KB/conn",
                           "relay RSS KB/conn"],
                          [[m["route"], str(m["rounds"]), _range(m["slab_kb_per_conn"], ".1f"),
                            _range(m["slab_kb_per_conn_drift_corrected"], ".1f"),
                            _cell(m["proxy_share_kb_per_conn"], ".1f"), _range(m["relay_rss_kb_per_conn"], ".1f")]
                           for m in result["memory"]])


def _model_markdown(result: dict) -> list[str]:
    lines = _header(result, "The model against the kernel")
    s, rtt = result["model_settings"], result["base_rtt"]
    lines += [f"Model: one-way delay {s['one_way_delay_s'] * 1e6:.1f} us per path (half the testbed's base RTT: "
              f"{rtt['rtt_min_s'] * 1e6:.0f} us, the shortest of {rtt['samples']} connects to a closed port), rate x "
              f"1500/1514, queue {s['queue_s'] * 1e3:.0f} ms at rate, loss after the queue on both directions, CUBIC, "
              f"buffers {s['buffer_bytes'] // MIB} MiB. Kernel knobs copied: {result['kernel_knobs']}. Error = "
              "(model - kernel) / kernel. Ceiling: rate x 1420/1514 per path for MPTCP (DSS), x 1448/1514 for TCP. "
              "Explanations: docs/kernel-bench.md.", ""]
    grid = sorted((r for r in result["rows"] if r["kind"] in ("grid", "grid-tcp")),
                  key=lambda r: r["kind"] == "grid-tcp")  # MPTCP rows first, then the TCP control
    lines += _table(["point", "transfer", "rep", "kernel Mbit/s", "model Mbit/s", "error", "kernel / ceiling",
                     "model / ceiling", "loss kernel", "loss model", "RTOs kernel", "TLPs kernel", "RTOs model",
                     "recoveries kernel", "recoveries model", "path 0 share k / m", "MPTCP reinjections k"],
                    [[r["point"], r["transfer"], str(r["rep"]), f"{r['goodput_kernel_mbps']:.2f}",
                      f"{r['goodput_model_mbps']:.2f}", pct(r["goodput_error"]), f"{r['kernel_per_ceiling']:.3f}",
                      f"{r['model_per_ceiling']:.3f}", f"{r['loss_rate_kernel']:.2%}", f"{r['loss_rate_model']:.2%}",
                      *(str(r[k]) for k in ("rto_kernel", "tlp_kernel", "rto_model", "fast_recoveries_kernel",
                                            "fast_recoveries_model")),
                      f"{r['path0_share_kernel']:.2f} / {r['path0_share_model']:.2f}",
                      str(r["mptcp_reinjections_kernel"])] for r in grid])
    lines += ["", "Middlebox rules on path 0 (both paths 50 Mbit/s): the client's view (kernel: the live client and "
              "its namespace's counters; model: ClientHost's record and MIB). SYN times: every SYN the client sent "
              "(the kernel's include MP_JOIN), relative to the first.", ""]
    joins = [r for r in result["rows"] if r["kind"] == "join-strip"]
    if joins:
        lines += _table(["point", "kernel Mbit/s", "model Mbit/s", "error", "kernel subflows (join SYNs)",
                         "kernel bytes per path", "model bytes per subflow", "model join"],
                        [[r["point"], f"{r['goodput_kernel_mbps']:.2f}", f"{r['goodput_model_mbps']:.2f}",
                          pct(r["goodput_error"]), f"{r['subflows_kernel']} ({r['join_syns_kernel']})",
                          _cell(r["path_rx_bytes_kernel"], "d"), _cell(r["subflow_bytes_model"], "d"),
                          ", ".join(f or "joined" for f in r["subflow_join_failures_model"])] for r in joins]) + [""]
    return lines + _table(["middlebox", "outcome kernel / model", "via converter k / m", "setup ms kernel / model",
                           "SYNs k / m", "RSTs k / m", "SYN times s kernel", "SYN times s model", "MPTcpExt differing",
                           "goodput k / m Mbit/s", "error"],
                          [[r["middlebox"], f"{r['outcome_kernel']} / {r['outcome_model']}",
                            f"{r['via_converter_kernel']} / {r['via_converter_model']}",
                            f"{1e3 * r['setup_kernel_s']:.2f} / {1e3 * r['setup_model_s']:.2f}",
                            f"{r['syns_kernel']} (+{r['join_syns_kernel']} join) / {r['syns_model']}",
                            f"{r['rsts_kernel']} / {r['rsts_model']}", _cell(r["syn_times_kernel_s"], ".2f"),
                            _cell(r["syn_times_model_s"], ".2f"), ", ".join(r["mptcp_counters_differ"]) or "none",
                            f"{r['goodput_kernel_mbps']:.1f} / {r['goodput_model_mbps']:.1f}",
                            pct(r["goodput_error"])] for r in result["rows"] if r["kind"] == "middlebox"])


def _abuse_markdown(result: dict) -> list[str]:
    lines = _header(result, "Kernel abuse: good clients of an attacked converter")
    attack = result["attack"]
    lines += [f"Attack from the good clients' own address: {attack['slow_clients']} slow clients, "
              f"{attack['garbage_clients_per_batch']} garbage clients {attack['garbage_batches_per_s']} times a second, "
              f"{attack['resetting_clients_per_s']} resetting forbidden-destination requests a second, a SYN flood of "
              f"{attack['syn_flood_pps']} SYNs a second (what the attacker managed: {attack['done']}).", ""]
    rows = []
    for phase, good in result["good_clients"].items():
        rows.append([phase.replace("_", " "), f"{good['served']}/{good['attempted']}", f"{good['success_rate']:.3f}",
                     _cell(1e3 * good["setup_p50_s"] if good["setup_p50_s"] is not None else None, ".2f"),
                     _cell(1e3 * good["setup_p90_s"] if good["setup_p90_s"] is not None else None, ".2f"),
                     str(good["fallbacks"]), str(good["errors"])])
    lines += _table(["good clients", "served", "success rate", "setup p50 ms", "setup p90 ms", "fallbacks", "errors"],
                    rows)
    d = result["daemon"]
    samples = [("before", d["before"]), *((f"during {i + 1}", s) for i, s in enumerate(d["during"])),
               ("after", d["after"])]
    lines += ["", "The daemon:", ""]
    lines += _table(["when", "descriptors", "RSS MB"], [[name, str(s["fds"]), f"{s['rss_bytes'] / 1e6:.1f}"]
                                                       for name, s in samples])
    counters = result["testbeds"]["abuse"]["daemon_counters"].get("auto", {})
    shown = ("accepted", "converted", "refused_at_accept", "garbage_reset", "slow_requests", "pending_dropped_oldest",
             "pending_dropped_per_source", "forbidden_destinations", "error_not_authorized", "accept_paused")
    lines += ["", "SYNs the converter's namespace sent to its own addresses (must be 0): "
              f"{result['forbidden_syns']}. Daemon counters: " + ", ".join(f"{k} {counters.get(k, '0')}"
                                                                            for k in shown) + "."]
    return lines


def markdown(result: dict) -> str:
    write = {"kernel-fastpath": _fastpath_markdown, "kernel-setup": _setup_markdown, "kernel-model": _model_markdown,
             "kernel-abuse": _abuse_markdown}
    return "\n".join(write[result["benchmark"]](result) + [""])


def csv_rows(result: dict) -> list[dict]:
    if result["benchmark"] == "kernel-fastpath":
        return result["rows"]
    if result["benchmark"] == "kernel-setup":
        churn = [{k: v for k, v in r.items() if not k.endswith("_us")} | {"table": "churn"}
                 for r in result["churn_rows"] + result.get("parallel_rows", [])]
        return churn + [r | {"table": "memory"} for r in result["memory_rows"]]
    if result["benchmark"] == "kernel-abuse":
        return [{"phase": phase, **{k: v for k, v in good.items() if k != "error_examples"}}
                for phase, good in result["good_clients"].items()]
    return [{k: v for k, v in r.items() if k != "counter_deltas_kernel"} for r in result["rows"]]


def plot_model(result: dict, path: Path) -> None:
    """Predicted against measured goodput with the y = x line, and the error per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [1, 1.3]})
    styles = {"grid": ("o", "tab:blue", "MPTCP via converter, 2 paths"), "grid-tcp": ("^", "tab:green", "TCP direct"),
              "middlebox": ("s", "tab:orange", "middlebox rules"),
              "join-strip": ("D", "tab:red", "MP_JOIN stripped on path 1")}
    for kind, (marker, colour, label) in styles.items():
        mine = [r for r in rows if r["kind"] == kind]
        ax.scatter([r["goodput_kernel_mbps"] for r in mine], [r["goodput_model_mbps"] for r in mine], marker=marker,
                   color=colour, label=label)
    top = max([r["goodput_kernel_mbps"] for r in rows] + [r["goodput_model_mbps"] for r in rows]) * 1.08
    ax.plot([0, top], [0, top], color="grey", linewidth=1, label="y = x")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="kernel goodput (Mbit/s)", ylabel="model goodput (Mbit/s)",
           title="Goodput: model against kernel")
    ax.legend()
    labels = [r["point"] if r["kind"] in ("middlebox", "join-strip") else
              f"{r['point']}, {'TCP' if r['kind'] == 'grid-tcp' else 'MPTCP'} #{r['rep']}" for r in rows]
    errors = [100 * (r["goodput_error"] or 0.0) for r in rows]
    ax_err.barh(range(len(rows)), errors, color=[styles[r["kind"]][1] for r in rows])
    ax_err.set_yticks(range(len(rows)), labels, fontsize=8)
    ax_err.axvline(0, color="grey", linewidth=1)
    ax_err.invert_yaxis()
    ax_err.set(xlabel="error (model - kernel) / kernel (%)", title="Error per point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(result: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / result["benchmark"].replace("-", "_")
    paths = [*write_json_and_markdown(result, markdown(result), out_dir, stem.name), stem.with_suffix(".csv")]
    rows = csv_rows(result)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(paths[2], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in row.items()})
    if result["benchmark"] == "kernel-model":
        paths.append(stem.with_suffix(".png"))
        plot_model(result, paths[-1])
    return paths
