"""Model against kernel over the scenario files in models/kernel:
``python benchmarks/kernel_world.py [--seeds N] [--quick] [--from DIR] [--kernel-only | --kernel-from DIR] [--jobs ...]``.

Runs ``mpsim compare`` on each job below (the scenario files are the benchmark: docs/kernel-world.md)
and writes ``benchmarks/results/kernel_world.md`` and ``kernel_world.csv``: per scenario, variant
and metric the model's value, the kernel's median and min-max over the run indices, and the
error, with what could not be compared. Variants under random loss run in jobs of their own with
``LOSSY_SEEDS`` run indices: the kernel's delay lines draw the model's loss streams run by run
(docs/kernel-world.md, "Loss: one stream for both worlds"), but past the first packets the two
packet sequences differ, so one run's goodput still varies 2-5x between draws; their
``goodput_paired`` rows compare the two worlds run by run. ``--quick`` runs the CI scenario only, with one seed;
``--from DIR`` builds the report from ``DIR/<job>/compare.json`` files written earlier by
``mpsim compare --out DIR/<job>`` (the same jobs, run one after another).

The kernel side of every job is recorded in ``KERNEL_RUNS/<job>.json`` (``kernel_runs.json`` of
``mpsim compare``: the connections and transfers tables per variant and run index, with the values
each variant was built from, the time, the commit and the machine). ``--kernel-only`` runs only the
kernel side and records it (root; no report); ``--kernel-from DIR`` reuses the recordings in DIR
(``benchmarks/results/kernel_runs``: the runs of the report) and runs only the model, so the report
follows model changes in a minute or two instead of half an hour; a job whose scenario, variants or
run indices changed since is refused by name (run ``--kernel-only --jobs JOB`` again for it).
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from mpsim.experiment import compare, kernel_world
from mpsim.experiment.scenario import load
from mpsim.provenance import git_revision, machine_facts

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
MODELS = ROOT / "models" / "kernel"
KERNEL_RUNS = RESULTS_DIR / "kernel_runs"
#: Variants under random loss: their goodput varies from one loss draw to the next in both worlds
#: (the two share their loss streams, but their packet sequences part after the first packets), so
#: they run with more run indices, in jobs of their own.
LOSSY = {"goodput.toml": ["tcp-10M-rtt40-loss0p5", "tcp-10M-rtt40-loss2", "mptcp-2x10-rtt40-loss0p5",
                          "tcp-50M-rtt40-loss0p5", "tcp-50M-rtt40-loss2", "mptcp-2x50-rtt40-loss2",
                          "mptcp-2x50-rtt0-loss2-upload", "mptcp-2x50-rtt40-loss2-upload"],
         "convert_paths.toml": ["convert-2x10-upload-loss2", "convert-2x50-upload-loss2"],
         "grid.toml": ["mptcp-10and3-rtt40-loss0p5", "tcp-10M-rtt40-loss0p5-ipv6", "mptcp-10and3-rtt40-loss2",
                       "mptcp-10and3-rtt40-loss0p5-upload", "tcp-10M-rtt40-loss2-ipv6"]}
LOSSY_SEEDS = 16
#: Variants with pinned socket buffers (SO_SNDBUF/SO_RCVBUF), recorded in a job of their own: the
#: 10 + 3 ones spread from run to run in the kernel (which subflow the scheduler commits megabytes
#: to: docs/kernel-departures.md, section 5), so they run with more run indices.
PINNED = {"goodput.toml": ["tcp-10M-rtt40-pinned-sndbuf", "tcp-10M-rtt40-pinned-rcvbuf",
                           "mptcp-10and3-rtt40-pinned-4M-upload", "mptcp-10and3-rtt40-pinned-256k-upload",
                           "mptcp-10and3-rtt0-pinned-4M-upload"],
          "convert_paths.toml": ["convert-2x10-upload-pinned-4M"]}
PINNED_SEEDS = 5
#: Variants the jobs over a whole file leave to their own jobs.
APART = {scenario: LOSSY.get(scenario, []) + PINNED.get(scenario, []) for scenario in {*LOSSY, *PINNED}}
#: (job name, scenario file, overrides, variants (None: all but the APART ones), run indices (None: --seeds))
JOBS = [
    ("goodput", "goodput.toml", [], None, None),
    ("goodput_loss", "goodput.toml", [], LOSSY["goodput.toml"], LOSSY_SEEDS),
    ("goodput_pinned", "goodput.toml", [], PINNED["goodput.toml"], PINNED_SEEDS),
    ("convert_two_path", "convert_two_path.toml", [], None, None),
    # microsocks's own time per set-up (benchmarks/results/proxy_calibration.md), as negotiation.toml's socks5 variants.
    ("socks5", "convert_two_path.toml", ["client.scheme=socks5", "converter.kind=socks5", "converter.cpu_setup_s=0.0010"],
     None, None),
    ("negotiation", "negotiation.toml", [], None, None),
    ("convert_paths", "convert_paths.toml", [], None, None),
    ("convert_paths_loss", "convert_paths.toml", [], LOSSY["convert_paths.toml"], LOSSY_SEEDS),
    ("convert_paths_pinned", "convert_paths.toml", [], PINNED["convert_paths.toml"], PINNED_SEEDS),
    ("grid", "grid.toml", [], None, None),
    ("grid_loss", "grid.toml", [], LOSSY["grid.toml"], LOSSY_SEEDS),
]
QUICK_JOBS = [("ci_two_path", "ci_two_path.toml", [], None, 1)]
#: What the grid asks for and the kernel world does not compare (docs/kernel-world.md, "What is refused").
NOT_COMPARED = [
    "middleboxes other than strip-mptcp-syn, strip-mptcp-synack, drop-mp-capable-syn, drop-syn-data: no kernel rule",
    "schemes mp-convert-option and syn-payload-eol: no kernel sends or reads their signalling",
    "middlebox x scheme pairs not in negotiation.toml: plain TCP through the MPTCP-option boxes (nothing to act "
    "on), mptcp and socks5 through drop-syn-data (they send no SYN data), socks5 through strip-mptcp-synack; of a "
    "box on one of two paths only strip-mptcp-syn (goodput.toml, convert_paths.toml)",
    "pinned buffers (SO_SNDBUF/SO_RCVBUF): one-path TCP downloads with a small send or receive buffer (40 ms), "
    "10 + 3 MPTCP uploads with deep queues (4 MiB at 40 ms and with no added delay, 256 KiB at 40 ms) and an "
    "upload through the converter at 4 MiB (the converter's sockets auto-tune); not under loss, over IPv6 or as "
    "downloads through a proxy",
    "RTTs 10 and 100 ms: compared for one-path TCP at 10 and 50 Mbit/s and MPTCP over 10 + 10 (downloads); loss, "
    "upload, IPv6, 10 + 3, capped buffers and middleboxes at 40 ms only, the proxies' transfers at 20 ms only "
    "(one axis at a time around a base, to keep the report near 40 minutes)",
    "IPv6 over two paths under loss, and SOCKS5 transfers over IPv6 (IPv6 under 0.5 and 2 % loss on one path, "
    "over 10 + 3 and through the converter as an upload are compared; two paths at 50 Mbit/s under 2 % loss as "
    "an upload and through the converter, 10 + 3 under 2 % loss and as an upload under 0.5 % are compared)",
    "downloads through the live converter other than the loss-free 10 + 10 one (under loss, a stripped join): "
    "Linux 6.18 drops data beyond the MPTCP receive window on a client leg opened with SYN data "
    "(docs/live-converter.md), which the model does not reproduce; the same cases are compared as uploads "
    "(and 10 + 3, and IPv6)",
    "SOCKS5 transfers other than the loss-free 10 + 10 and 10 + 3 downloads",
    "the proxies' CPU cost itself: the scenarios through a proxy give the model converter.cores = 1 and "
    "cpu_setup_s from a calibration on this machine (benchmarks/results/proxy_calibration.md), so their set-up "
    "times check one constant per connection across RTTs, paths and middleboxes, not its value; several "
    "connections at once through a proxy (queueing on its cores) are not compared",
    "coupled congestion control (lia): Linux MPTCP has none",
    "timed events (reboot, attach_network, converter_down): not built",
]


def _write_record(path: Path, record: dict) -> None:
    """One job's kernel side, compact (one line of JSON: the report's runs stay well below 2 MB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n", encoding="utf-8")


def _report_from(path: Path) -> dict:
    return json.loads(path.read_text())


def markdown(reports: dict[str, dict], seeds_note: str) -> str:
    facts, revision = machine_facts(), git_revision() or {}
    lines = ["# Model against kernel: the scenario files in models/kernel", "",
             f"mpsim {str(revision.get('commit', ''))[:10]}, "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {facts.get('platform', '')}, "
             f"{os.cpu_count()} CPUs shared with other work "
             f"(load average {os.getloadavg()[0]:.1f} when written). {seeds_note}", "",
             *targets(reports), "",
             "`mpsim compare` per job (docs/kernel-world.md): outcome agreement must be 100 %; counts are the "
             "largest absolute difference per request; times in client-server RTTs and goodput as |kernel median - "
             "model median| / model median; the kernel's min-max over the run indices beside it. "
             "What the differences come from: docs/kernel-world.md, \"Measured here\".", ""]
    for job, report in reports.items():
        lines += [f"## {job}: scenario {report['scenario']}, {report['seeds']} run index(es)", ""]
        if report.get("kernel_source"):
            lines += [report["kernel_source"], *report.get("notes", []), ""]
        lines += [
                  "| variant | metric | model | kernel median | kernel min-max | error |",
                  "|---|---|---:|---:|---:|---:|"]
        for row in report["rows"]:
            r = compare.Row(**row)
            spread = "-" if r.kernel_min is None else f"{compare._show(r.kernel_min)}-{compare._show(r.kernel_max)}"
            lines.append(f"| {r.variant} | {r.metric} | {compare._show(r.model)} | {compare._show(r.kernel)} | "
                         f"{spread} | {compare._error(r)} |")
        if report["mismatches"]:
            lines += ["", "Outcomes that disagree:", *(f"- {m}" for m in report["mismatches"])]
        if report["skipped"]:
            lines += ["", "Not built:", *(f"- {s}" for s in report["skipped"])]
        lines.append("")
    lines += ["## Not compared", "", *(f"- {line}" for line in NOT_COMPARED), ""]
    return "\n".join(lines)


def targets(reports: dict[str, dict]) -> list[str]:
    """The issue's targets, counted over every variant of every job: outcomes, SYN and RST counts
    agree 100 %; setup and first-byte times within 5 %; goodput within 5 % loss-free and 15 %
    under random loss (a variant with "loss" in its name), and there also run by run
    (``goodput_paired``: the median of kernel / model with the same loss draws)."""
    tally: dict[str, list[int]] = {}

    def count(name: str, ok: bool) -> None:
        tally.setdefault(name, [0, 0])[0] += ok
        tally[name][1] += 1

    for report in reports.values():
        for row in report["rows"]:
            error, metric, variant = row["error"], row["metric"], row["variant"]
            if error is None:
                continue
            if metric == "outcome":
                count("outcomes agree", error == 1.0)
            elif metric in ("syns", "rsts"):
                count(f"{metric.upper()[:-1]}s agree", error == 0)
            elif metric in ("setup_rtts", "first_byte_rtts"):
                count(f"{metric} within 5 %", error <= 0.05)
            elif metric == "goodput":
                lossy = "loss" in variant
                count(f"goodput within {'15 % (random loss)' if lossy else '5 % (loss-free)'}",
                      error <= (0.15 if lossy else 0.05))
            elif metric == "goodput_paired":   # the median of kernel / model per run, the same loss draws
                count("paired goodput within 15 % (random loss)", error <= 0.15)
    return ["Against the targets (variants meeting it / variants compared): "
            + "; ".join(f"{name} {ok}/{total}" for name, (ok, total) in tally.items()) + "."]


def figure_bands(job: str) -> dict[str, float]:
    """The targets of :func:`targets` as the figure's tolerance bands (a job of lossy variants ends in "_loss")."""
    lossy = 0.15 if job.endswith("_loss") else 0.05
    return {"setup_rtts": 0.05, "first_byte_rtts": 0.05, "goodput": lossy, "goodput_paired": lossy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/kernel_world.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the CI scenario only, one seed")
    parser.add_argument("--from", dest="source", type=Path, help="build the report from earlier compare outputs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--note", default="", help="a sentence for the header (e.g. how long the jobs took)")
    world = parser.add_mutually_exclusive_group()
    world.add_argument("--kernel-only", action="store_true",
                       help="run only the kernel side and record it in --kernel-runs (root; no report)")
    world.add_argument("--kernel-from", type=Path, metavar="DIR",
                       help="reuse the kernel side recorded in DIR/<job>.json; run only the model")
    parser.add_argument("--kernel-runs", type=Path, default=KERNEL_RUNS, metavar="DIR",
                        help="where the kernel side of each job is recorded (default %(default)s)")
    parser.add_argument("--jobs", help="comma-separated job names (default: all)")
    args = parser.parse_args(argv)
    jobs = QUICK_JOBS if args.quick else JOBS
    if args.jobs:
        unknown = set(args.jobs.split(",")) - {job[0] for job in jobs}
        if unknown:
            parser.error(f"--jobs: unknown {', '.join(sorted(unknown))} (jobs: {', '.join(j[0] for j in jobs)})")
        jobs = [job for job in jobs if job[0] in args.jobs.split(",")]
    seeds = 1 if args.quick else args.seeds
    reports = {}
    for job, scenario, overrides, wanted, job_seeds in jobs:
        loaded = load(str(MODELS / scenario), [*overrides, f"runs={job_seeds or seeds}"])
        names = wanted or [name for name in loaded.variants if name not in APART.get(scenario, [])]
        if args.kernel_only:
            started = time.monotonic()
            try:
                kernel = kernel_world.run_kernel(loaded, variants=names,
                                                 progress=lambda line: print(line, file=sys.stderr, flush=True))
            except kernel_world.KernelWorldError as err:
                print(f"{job}: {err}", file=sys.stderr)
                return 2
            _write_record(args.kernel_runs / f"{job}.json", kernel.record())
            print(f"{job}: kernel side recorded in {args.kernel_runs / f'{job}.json'} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            continue
        if args.source is not None:
            path = args.source / job / "compare.json"
            if path.exists():
                report = _report_from(path)
                report["rows"] = [row for row in report["rows"] if row["variant"] in names]
                reports[job] = report
                args.out.mkdir(parents=True, exist_ok=True)
                compare.Report(scenario=report["scenario"], seeds=report["seeds"],
                               rows=[compare.Row(**row) for row in report["rows"]]).figure(
                    args.out / f"kernel_world-{job}.png", figure_bands(job))
            continue
        try:
            report = compare.compare(loaded, variants=names,
                                     kernel_from=None if args.kernel_from is None else args.kernel_from / f"{job}.json",
                                     progress=lambda line: print(line, file=sys.stderr, flush=True))
        except kernel_world.KernelWorldError as err:
            print(f"{job}: {err}", file=sys.stderr)
            return 2
        if report.kernel_record is not None:  # recorded once, in --kernel-runs
            _write_record(args.kernel_runs / f"{job}.json", report.kernel_record)
            report.kernel_record = None
        args.out.mkdir(parents=True, exist_ok=True)
        report.figure(args.out / f"kernel_world-{job}.png", figure_bands(job))  # its rows go into kernel_world.csv
        reports[job] = report.as_dict()
    if args.kernel_only:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    own_seeds = args.source or args.kernel_from or any(job[4] for job in jobs)  # the lossy jobs have their own
    note = "Run indices per job: see each heading." if own_seeds else f"{seeds} run index(es) per job."
    note = f"{note} {args.note}".strip()
    (args.out / "kernel_world.md").write_text(markdown(reports, note))
    rows = [{"job": job, **row} for job, report in reports.items() for row in report["rows"]]
    pd.DataFrame(rows).to_csv(args.out / "kernel_world.csv", index=False, lineterminator="\n")
    print(f"written: {args.out / 'kernel_world.md'}, {args.out / 'kernel_world.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
