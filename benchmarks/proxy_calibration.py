"""The proxy programs' time per connection set-up on this machine (root):
``python benchmarks/proxy_calibration.py [--runs N]``.

Runs models/kernel/proxy_calibration.toml (one request through the live converter, one through
microsocks, one direct; 20 ms RTT) N times in the kernel and once per run index in the model
without the converter's CPU (``converter.cores = 0``), and writes
``benchmarks/results/proxy_calibration.{md,json}``: per variant the kernel's set-up time minus the
model's (the model ``mpsim compare`` runs: tbf shaping and each kernel run's measured path latency,
docs/kernel-world.md "The path as built"), run by run, and per proxy its own time, the median
difference less the direct request's median difference (the hosts' own time, which any connection
has). That is
the figure the models/kernel scenarios through a proxy give the model as ``converter.cpu_setup_s``
with ``converter.cores = 1`` (docs/kernel-world.md, "The proxy's CPU"). It holds for this machine
under its load; another machine needs its own run.
"""

import argparse
import datetime
import json
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
PROXIES = ("convert", "socks5")


def _setup_s(frame, variant: str) -> dict[int, float]:
    rows = frame[frame["variant"] == variant]
    return {int(r["run"]): float(r["setup_time_s"]) for r in rows.to_dict("records")
            if r["outcome"] != "failed" and r["setup_time_s"] == r["setup_time_s"]}


def calibrate(runs: int, progress=None) -> dict:
    loaded = load(str(SCENARIO), [f"runs={runs}"])
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.timezone.utc)
    kernel = kernel_world.run_kernel(loaded, pcap=False, progress=progress)
    # The model mpsim compare runs: the kernel world's tbf and each run's measured path latency
    # (docs/kernel-world.md, "The path as built"), so the direct request's remaining difference is
    # the hosts' own time and a proxy's beyond it its own.
    measured = {(r.variant, r.run_index): k.path_latency for r, k in zip(kernel.runs, kernel.kernel)}
    model = results.run(loaded, shaper="tbf",
                        path_latency=lambda variant, run: compare.model_path_latency(loaded.variants[variant],
                                                                                     measured.get((variant, run))))
    out = {"scenario": str(SCENARIO.relative_to(ROOT)), "runs": runs, "started_utc": started.isoformat(timespec="seconds"),
           "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()),
           "git": short_revision(git_revision()), "machine": {k: machine_facts()[k] for k in ("platform", "cpu_count")},
           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "variants": {}, "cpu_setup_s": {}}
    for variant in loaded.variants:
        k, m = _setup_s(kernel.connections, variant), _setup_s(model.connections, variant)
        excess = [k[i] - m[i] for i in sorted(k) if i in m]
        out["variants"][variant] = {"kernel_setup_s": [k[i] for i in sorted(k)], "model_setup_s": m.get(0),
                                    "model_setup_s_per_run": [m[i] for i in sorted(m)], "excess_s": excess}
    direct = statistics.median(out["variants"]["direct"]["excess_s"])
    for proxy in PROXIES:
        excess = out["variants"][proxy]["excess_s"]
        out["cpu_setup_s"][proxy] = {"median": statistics.median(excess) - direct,
                                     "min": min(excess) - direct, "max": max(excess) - direct}
    out["direct_excess_s"] = direct
    return out


def markdown(result: dict) -> str:
    ms = lambda s: f"{s * 1e3:.2f}"  # noqa: E731
    lines = ["# The proxy programs' time per connection set-up (calibration)", "",
             f"mpsim {result['git']}, {result['started_utc']}, {result['machine']['platform']}, "
             f"{result['machine']['cpu_count']} CPUs shared with other work (load average {result['load_average'][0]} "
             f"before, {result['load_average'][1]} after), {result['runs']} run indices, {result['seconds']} s. "
             f"`python benchmarks/proxy_calibration.py --runs {result['runs']}` over `{result['scenario']}`.", "",
             "Kernel set-up time minus the model's (the model without the converter's CPU), per run index, ms:", "",
             "| variant | model ms | kernel ms min / median / max | kernel - model ms min / median / max |",
             "|---|---:|---:|---:|"]
    for name, v in result["variants"].items():
        k, e = v["kernel_setup_s"], v["excess_s"]
        lines.append(f"| {name} | {ms(v['model_setup_s'])} | {ms(min(k))} / {ms(statistics.median(k))} / "
                     f"{ms(max(k))} | {ms(min(e))} / {ms(statistics.median(e))} / {ms(max(e))} |")
    lines += ["", f"The model is the one `mpsim compare` runs: the kernel world's tbf shaping and each kernel run's "
              "measured forwarding latency on its lines (docs/kernel-world.md, \"The path as built\"). The direct "
              f"request's remaining difference ({ms(result['direct_excess_s'])} ms median) is the hosts' own time "
              "(the connect's completion waking the client), which any connection has; the rest is the proxy "
              "program's own time per set-up "
              "(accepting, reading the request, connecting to the server, answering: CPU and the wake-ups of a "
              "freshly started process on a loaded machine):", "",
              "| proxy | converter.cpu_setup_s (cores = 1) ms: min / median / max |", "|---|---:|"]
    for proxy, c in result["cpu_setup_s"].items():
        lines.append(f"| {proxy} | {ms(c['min'])} / {ms(c['median'])} / {ms(c['max'])} |")
    lines += ["", "The models/kernel scenarios through a proxy set `converter.cores = 1` and `converter.cpu_setup_s` "
              "to the medians (rounded to 0.1 ms). They describe this machine under this load; another machine "
              "needs its own run.", ""]
    return "\n".join(lines)


def calibration_main(name: str, doc: str, default_runs: int, calibrate_runs, markdown_of,
                     argv: list[str] | None) -> int:
    """The command line both calibrations share (this one and benchmarks/path_latency.py):
    ``--runs N --out DIR``, progress on stderr, ``DIR/<name>.json`` and ``.md`` written."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=default_runs)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    try:
        result = calibrate_runs(args.runs, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except kernel_world.KernelWorldError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / name
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown_of(result))
    print(markdown_of(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return calibration_main("proxy_calibration", __doc__, 8, calibrate, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
