"""The testbed's paths as built: what they add to every round trip on this machine (root):
``python benchmarks/path_latency.py [--runs N]``.

Runs the direct request of models/kernel/proxy_calibration.toml in the kernel at four client-server
round trips built as models/kernel/goodput.toml builds them (path + server one-way delay): 0 (no
delay line at all), 10 ms (the server's line only), 40 and 100 ms (both lines), N run indices each.
Each kernel run measures its lines before the request (``kernel_world.measure_path_latency``: ICMP
echo round trips with kernel timestamps against the configured ones, and the delay lines' own
lateness). Writes ``benchmarks/results/path_latency.{md,json}``:

* per line kind (an access path with or without a delay line, the server link with or without
  one) the one-way forwarding latency, median over every run of every round trip: the constants
  ``mpsim compare`` gives the model for kernel recordings made before each run recorded its own
  (``compare.CALIBRATED_PATH_LATENCY_S``; docs/kernel-world.md, "The path as built");
* per round trip, the same per run, to check that one constant holds at every RTT;
* the kernel's set-up and first-byte times against the model's without and with the measured
  latency: what the path does not explain is the hosts' own time (the connect's wake-up, the
  server program's accept and read), which the model does not have.

It holds for this machine under its load (recorded); another machine needs its own run.
"""

import datetime
import os
import statistics
import sys
from pathlib import Path

from mpsim.experiment import compare, kernel_world, results
from mpsim.experiment.scenario import load
from mpsim.provenance import git_revision, machine_facts, short_revision

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "models" / "kernel" / "proxy_calibration.toml"
RESULTS_DIR = ROOT / "benchmarks" / "results"
#: (name, path one-way delay, server one-way delay): goodput.toml's RTTs, and none.
ROUND_TRIPS = [("rtt0", 0.0, 0.0), ("rtt10", 0.0, 0.005), ("rtt40", 0.015, 0.005), ("rtt100", 0.045, 0.005)]


def _ms(values: list[float]) -> str:
    return " / ".join(f"{v * 1e3:.3f}" for v in (min(values), statistics.median(values), max(values))) \
        if values else "-"


def calibrate(runs: int, progress=None) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()[0]
    out = {"scenario": str(SCENARIO.relative_to(ROOT)), "runs": runs,
           "started_utc": started.isoformat(timespec="seconds"), "git": short_revision(git_revision()),
           "machine": {k: machine_facts()[k] for k in ("platform", "cpu_count")}, "round_trips": {}}
    kinds: dict[str, list[float]] = {}
    for name, path_delay_s, server_delay_s in ROUND_TRIPS:
        loaded = load(str(SCENARIO), [f"paths.access.delay_s={path_delay_s}", f"server.delay_s={server_delay_s}",
                                      f"runs={runs}"])
        scenario = loaded.variants["direct"]
        kernel = kernel_world.run_kernel(loaded, variants=["direct"], pcap=False, progress=progress)
        measured = {run.run_index: k.path_latency for run, k in zip(kernel.runs, kernel.kernel)}
        plain = results.run(loaded, variants=["direct"], shaper="tbf")
        built = results.run(loaded, variants=["direct"], shaper="tbf",
                            path_latency=lambda _v, i: compare.model_path_latency(scenario, measured[i]))
        entry = {"path_delay_s": path_delay_s, "server_delay_s": server_delay_s, "lines": {}, "times": {}}
        for line, kind in compare.line_kinds(scenario).items():
            one_way = [m["lines"][line]["one_way_s"] for m in measured.values()
                       if m["lines"].get(line, {}).get("one_way_s") is not None]
            lateness = [v for m in measured.values()
                        for v in (m["lines"].get(line, {}).get("lateness_median_s") or {}).values() if v is not None]
            entry["lines"][line] = {"kind": kind, "one_way_s": one_way, "lateness_median_s": lateness}
            kinds.setdefault(kind, []).extend(one_way)
        for column in ("setup_time_s", "first_byte_time_s"):
            k_values = {r["run"]: r[column] for r in kernel.connections.to_dict("records")}
            m_plain = {r["run"]: r[column] for r in plain.connections.to_dict("records")}
            m_built = {r["run"]: r[column] for r in built.connections.to_dict("records")}
            entry["times"][column] = {"kernel_s": [k_values[i] for i in sorted(k_values)],
                                      "excess_over_model_s": [k_values[i] - m_plain[i] for i in sorted(k_values)],
                                      "excess_over_model_with_path_s": [k_values[i] - m_built[i]
                                                                        for i in sorted(k_values)]}
        out["round_trips"][name] = entry
    out["one_way_s"] = {kind: statistics.median(values) for kind, values in kinds.items() if values}
    out["seconds"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())
    out["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return out


def markdown(result: dict) -> str:
    lines = ["# The testbed's paths as built: forwarding latency per line (calibration)", "",
             f"mpsim {result['git']}, {result['started_utc']}, {result['machine']['platform']}, "
             f"{result['machine']['cpu_count']} CPUs shared with other work (load average {result['load_average'][0]} "
             f"before, {result['load_average'][1]} after), {result['runs']} run indices per round trip, "
             f"{result['seconds']} s. `python benchmarks/path_latency.py --runs {result['runs']}` over the direct "
             f"request of `{result['scenario']}`.", "",
             "One-way forwarding latency per line kind (half the ICMP echo round trip's excess over the configured "
             "one; an access path's is its route's excess less the server link's), median over every run: the "
             "constants `mpsim compare` gives the model for recordings without their own measurement "
             "(`CALIBRATED_PATH_LATENCY_S` in mpsim/experiment/compare.py):", "",
             "| line kind | one-way ms |", "|---|---:|"]
    for kind, value in sorted(result["one_way_s"].items()):
        lines.append(f"| {kind} | {value * 1e3:.3f} |")
    lines += ["", "Per round trip (min / median / max over the run indices, ms): each line's one-way latency and the "
              "delay lines' own lateness (send time against due time, median per direction and run):", "",
              "| RTT | line | kind | one-way | delay line lateness |", "|---|---|---|---:|---:|"]
    for name, entry in result["round_trips"].items():
        for line, v in entry["lines"].items():
            lines.append(f"| {name} | {line} | {v['kind']} | {_ms(v['one_way_s'])} | {_ms(v['lateness_median_s'])} |")
    lines += ["", "The kernel's set-up and first-byte times minus the model's, without the path's latency and with "
              "each run's measured latency (min / median / max, ms):", "",
              "| RTT | set-up: kernel - model | with the path | first byte: kernel - model | with the path |",
              "|---|---:|---:|---:|---:|"]
    for name, entry in result["round_trips"].items():
        s, f = entry["times"]["setup_time_s"], entry["times"]["first_byte_time_s"]
        lines.append(f"| {name} | {_ms(s['excess_over_model_s'])} | {_ms(s['excess_over_model_with_path_s'])} | "
                     f"{_ms(f['excess_over_model_s'])} | {_ms(f['excess_over_model_with_path_s'])} |")
    lines += ["", "What remains with the path is the hosts' own time, the same at every RTT (it is there at 0 ms "
              "too): the connect's completion waking the client (set-up), the server program's accept and read "
              "and the client's read (first byte). The model's hosts take no time; docs/kernel-world.md, "
              "\"The path as built\".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from proxy_calibration import calibration_main  # a sibling script: benchmarks/ is sys.path[0]

    return calibration_main("path_latency", __doc__, 5, calibrate, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
