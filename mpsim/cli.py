"""The ``mpsim`` command line.

* ``mpsim run [SCENARIO|FILE]``: the main job. Runs a scenario (models/NAME.toml or a file; default
  ``default``) in the simulator, prints a summary and writes the result tables (``--out DIR``) or
  prints them as JSON (``--json``).
* ``mpsim ladder SCENARIO``: the ladder diagram of one request's connections.
* ``mpsim sweep SCENARIO --grid KEY=VALUES ... --out DIR``: the scenario over a grid of values times
  N seeds, locally in parallel or on Dask; resumable; result tables, a summary and a manifest.
* ``mpsim plot DIR... --x KEY --y METRIC``: a plot of the results of a sweep or a run (or several,
  compared), saved as PNG, SVG, PDF ... by the file's suffix.
* ``mpsim scenarios``: the named scenarios, one line each.
* ``mpsim scenario schema [--out FILE]``: the JSON Schema of a scenario file, for editor completion
  (docs/scenarios.md is the reference generated from the same schema).
* ``mpsim wire decode KIND HEX...``: bytes (as pasted from Wireshark) to JSON on stdout.
* ``mpsim wire encode KIND JSON``: JSON back to a hex stream.
* ``mpsim wireshark install [--dir DIR]``: copy the bundled Wireshark dissector (mpsim.lua) into
  Wireshark's personal Lua plugin folder; ``--print-path`` shows where the bundled file is.
* ``mpsim wire budget``: the codec demonstration of :mod:`mpsim.syn_budget`: what each signalling
  scheme puts in the SYN, and (without ``--destination``) one real Convert SYN, dumped and decoded.

Exit status: 0 on success, 2 for anything the user can fix (usage, a scenario that does not load,
bytes that do not decode, JSON that does not describe a value), with one line on stderr naming
the problem and where it is. ``mpsim sweep`` exits with 1 when points failed (it prints how many)
or a worker died, and 130 when interrupted (the same command resumes). A reader of stdout that
leaves early (``| head``) ends any command quietly with 141, as SIGPIPE does to other tools.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsim import __version__, syn_budget
from mpsim.errors import MpsimError
from mpsim.wire import jsonform
from mpsim.wire.convert import ConvertMessage, decode_convert, encode_convert
from mpsim.wire.errors import WireError
from mpsim.wire.mp_convert import MpConvert, decode_mp_convert
from mpsim.wire.mptcp import MptcpOption, decode_mptcp_option
from mpsim.wire.options import decode_options, encode_options
from mpsim.wire.segment import IpPacket, decode_packet, encode_packet
from mpsim.wire.syn_payload import SynPayloadOption, SynPayloadSignal, decode_syn_payload, encode_syn_payload

EXIT_USER_ERROR = 2  # argparse's status for usage errors; bad bytes and bad JSON are the user's to fix too
#: The reader of stdout left (``mpsim sweep ... | head -1``): the status a shell reports for a process
#: ended by SIGPIPE, as coreutils give, and not 1, which ``mpsim sweep`` uses for failed points.
EXIT_BROKEN_PIPE = 128 + 13


class CliError(MpsimError):
    """A problem with what the user gave; printed as one line, exit status 2."""


@dataclass(frozen=True, slots=True)
class WireKind:
    """One KIND of ``mpsim wire decode`` / ``encode``: its codec and the type its JSON describes."""

    help: str
    decode: Callable[[bytes, argparse.Namespace], Any]
    json_type: Any
    encode: Callable[[Any], bytes]


WIRE_KINDS: dict[str, WireKind] = {
    "options": WireKind(
        "a TCP option list, as in a TCP header (encoding pads it to 4-byte words, at most 40 bytes)",
        lambda data, args: decode_options(data), tuple[SynPayloadOption, ...], encode_options,
    ),
    "mptcp": WireKind(
        "one whole MPTCP option (kind 30), RFC 8684",
        lambda data, args: decode_mptcp_option(data), MptcpOption, lambda value: value.encode(),
    ),
    "mp-convert": WireKind(
        "one MP_CONVERT option (mpsim's private MP_EXPERIMENTAL layout, docs/mp-convert.md)",
        lambda data, args: decode_mp_convert(data), MpConvert, lambda value: value.encode(),
    ),
    "syn-payload": WireKind(
        "a SYN payload under the EOL scheme: options, an EOL byte, then data",
        lambda data, args: decode_syn_payload(data), SynPayloadSignal, encode_syn_payload,
    ),
    "convert": WireKind(
        "one RFC 8803 Convert message: header and TLVs, nothing after them",
        lambda data, args: decode_convert(data), ConvertMessage, encode_convert,
    ),
    "segment": WireKind(
        "a whole IPv4 or IPv6 packet carrying TCP (Wireshark: the IP layer, copied as a hex stream)",
        lambda data, args: decode_packet(data, verify_checksums=args.verify_checksums), IpPacket, encode_packet,
    ),
}


def _kinds_help() -> str:
    return "\n".join(f"  {name:<12} {kind.help}" for name, kind in WIRE_KINDS.items())


# --- input --------------------------------------------------------------------------------------


def _read_argument(words: Sequence[str]) -> str:
    """The text of the positional words, or of stdin when the only word is ``-``."""
    if list(words) == ["-"]:
        return sys.stdin.read()
    return " ".join(words)


def parse_destination(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``ADDRESS:PORT``, with an IPv6 address in brackets: ``192.0.2.1:80``, ``[2001:db8::1]:443``."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS:PORT with a port in 0..65535")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r} in {text!r} is not an IP address") from None
    if address.version == 6 and not bracketed:
        # "2001:db8::1:443" is itself an IPv6 address: only brackets say where the port starts.
        raise argparse.ArgumentTypeError(f"write an IPv6 destination as [ADDRESS]:PORT, e.g. [{address}]:{port_text}")
    if address.version == 4 and bracketed:
        raise argparse.ArgumentTypeError(f"brackets are for IPv6 addresses; write {address}:{port_text}")
    return address, int(port_text)


# --- commands -----------------------------------------------------------------------------------


def _load(args: argparse.Namespace):
    """The scenario named on the command line, with --set and --seed applied (--seed wins)."""
    from mpsim.experiment import scenario  # the simulator stack loads only for the commands that need it

    if args.seed is not None and args.seed < 0:  # named as typed, not as the --set it becomes
        raise CliError(f"--seed {args.seed}: expected an integer >= 0")
    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    loaded = scenario.load(args.scenario, overrides)
    for name in getattr(args, "variants", None) or ():
        if name not in loaded.variants:
            raise CliError(f"--variant {name}: scenario {loaded.name} has variants {', '.join(loaded.variants)}")
    return loaded


def _run(args: argparse.Namespace) -> int:
    from mpsim.experiment import results

    if args.pcap and args.out is None:
        raise CliError("--pcap writes files: give --out DIR too")
    loaded = _load(args)
    if args.on == "kernel":
        outcome = _run_kernel(args, loaded)
    else:
        if args.proxy_cmd or args.skip_unbuildable:
            raise CliError("--proxy-cmd and --skip-unbuildable go with --on kernel")
        bar = None
        if sys.stderr.isatty():  # a terminal watches: simulations done and the time left, as a sweep shows
            from mpsim.experiment.sweep.progress import Progress

            total = loaded.base.runs * len(args.variants or loaded.variants)
            bar = Progress(total, 0, sys.stderr, label="run", unit="simulations", count_failures=False)
            bar.update()
        outcome = results.run(loaded, variants=args.variants, record_packets=args.pcap,
                              on_simulation_done=None if bar is None else lambda: bar.update(done=1))
        if bar is not None:
            bar.update(final=True)
    try:
        written = outcome.write(args.out, pcap=args.pcap) if args.out is not None else []
    except OSError as err:  # a directory that cannot be made or written: the user's to fix
        raise CliError(f"--out {args.out}: {err.strerror or err}") from None
    if args.json:
        sys.stdout.write(outcome.json_text())
        return 0
    print(outcome.summary())
    print()
    if written:
        print(f"Tables written to {args.out}: " + ", ".join(p.name for p in written if p.parent == args.out) +
              (f", and {sum(p.suffix == '.pcapng' for p in written)} captures (pcapng) in {args.out / 'pcap'}" if args.pcap
               else ""))
    else:
        print("Save the tables (CSV, JSON, manifest) with --out DIR; print them as JSON with --json.")
    return 0


def _run_kernel(args: argparse.Namespace, loaded: Any) -> Any:
    """``mpsim run --on kernel``: the scenario built in namespaces (mpsim/experiment/kernel_world.py)."""
    from mpsim.experiment import kernel_world

    try:
        return kernel_world.run_kernel(loaded, variants=args.variants, skip_unbuildable=args.skip_unbuildable,
                                       proxy_cmd=args.proxy_cmd, pcap=True, keep_pcaps=args.pcap,
                                       progress=lambda line: print(line, file=sys.stderr))
    except kernel_world.KernelWorldError as err:
        raise CliError(str(err)) from None


def _compare(args: argparse.Namespace) -> int:
    """``mpsim compare``: the scenario in the model and in the kernel, metric by metric."""
    from mpsim.experiment import compare, kernel_world

    if args.seeds < 1:
        raise CliError(f"--seeds {args.seeds}: at least 1")
    args.overrides = list(args.overrides) + [f"runs={args.seeds}"]
    try:
        tolerances = compare.parse_tolerances(args.tolerances)
    except ValueError as err:
        raise CliError(str(err)) from None
    loaded = _load(args)
    try:
        report = compare.compare(loaded, variants=args.variants, proxy_cmd=args.proxy_cmd,
                                 skip_unbuildable=args.skip_unbuildable, kernel_from=args.kernel_from,
                                 progress=lambda line: print(line, file=sys.stderr))
    except kernel_world.KernelWorldError as err:
        raise CliError(str(err)) from None
    print(report.text())
    if args.out is not None:
        try:
            written = report.write(args.out, tolerances)
        except OSError as err:
            raise CliError(f"--out {args.out}: {err.strerror or err}") from None
        print(f"\nWritten to {args.out}: " + ", ".join(p.name for p in written))
    failures = report.check(tolerances)
    for line in failures:
        print(f"mpsim compare: {line}", file=sys.stderr)
    return 1 if failures else 0


def _ladder(args: argparse.Namespace) -> int:
    from mpsim.experiment import plots
    from mpsim.experiment.simulation import Simulation
    from mpsim.sim.trace import ladder_figure, ladder_rows, ladder_text

    if args.variants and len(args.variants) > 1:
        raise CliError("ladder draws one variant: give --variant once")
    if args.png is not None:
        try:
            plots.check_figure_path(args.png, "--png")  # before the run, not after it
        except plots.PlotError as err:
            raise CliError(str(err)) from None
    loaded = _load(args)
    variant = args.variants[0] if args.variants else next(iter(loaded.variants))
    if not 0 <= args.run < loaded.base.runs:
        raise CliError(f"--run {args.run}: scenario {loaded.name} has runs 0..{loaded.base.runs - 1}")
    simulation = Simulation(loaded.variants[variant], variant=variant, run_index=args.run, record_packets=True)
    result = simulation.run()
    requests = [row["request_id"] for row in result.connections]
    if args.conn not in requests:
        raise CliError(f"--conn {args.conn}: the run has requests {_ranges(requests) or 'none'}")
    row = next(r for r in result.connections if r["request_id"] == args.conn)
    print(f"Scenario {loaded.name}, variant {variant}, run {args.run}, request {args.conn}: {row['outcome']}"
          + (f" ({row['fallback_reason']})" if row["fallback_reason"] else "")
          + f", {row['attempts']} attempt(s), networks {row['network']}")
    flows = simulation.request_flows(args.conn)
    for title, flow, nodes in flows:
        print(f"\n{title}")
        print(ladder_text(simulation.trace, flow, nodes))
    if args.png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        heights = [1.2 + 0.32 * max(4, len(ladder_rows(simulation.trace, flow, nodes))) for _, flow, nodes in flows]
        figure, axes = plt.subplots(len(flows), 1, figsize=(12, sum(heights)), squeeze=False,
                                    gridspec_kw={"height_ratios": heights})
        for ax, (title, flow, nodes) in zip(axes[:, 0], flows):
            ladder_figure(simulation.trace, flow, nodes, ax=ax)
            ax.set_title(title, fontsize=9)
        figure.tight_layout()
        try:
            plots.save_figure(figure, args.png, "--png")
        except plots.PlotError as err:
            raise CliError(str(err)) from None
        finally:
            plt.close(figure)
        print(f"\nLadder saved to {args.png}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import signal
    import threading

    from mpsim.experiment import analysis, sweep

    try:
        sweep.orchestrate.check_executor(args.on, args.workers, args.dask)  # before minutes of planning
        plan = sweep.plan_sweep(args.scenario, args.grid, seeds=args.seeds, root_seed=args.seed,
                                overrides=args.overrides, variants=args.variants or (),
                                world="kernel" if args.on == "kernel" else "model",
                                proxy_cmd=args.proxy_cmd, skip_unbuildable=args.skip_unbuildable)
    except sweep.SweepError as err:
        raise CliError(str(err)) from None
    grid = " x ".join(f"{axis.key} ({len(axis.texts)})" for axis in plan.axes) or "no grid"
    print(f"mpsim {__version__}: sweep of scenario {plan.loaded.name}"
          f"{' in the kernel' if plan.world == 'kernel' else ''}: {grid}, {plan.seeds} seed"
          f"{'s' if plan.seeds != 1 else ''} each: {len(plan.points)} point{'s' if len(plan.points) != 1 else ''} "
          f"(root seed {plan.root_seed})",
          flush=True)

    def terminate(signum: int, frame: Any) -> None:  # kill(1): stop workers and close clusters as Ctrl-C does
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        report = sweep.run_sweep(plan, args.out, workers=args.workers, dask=args.dask, csv=args.csv,
                                 retry_failed=args.retry_failed, progress=sys.stderr)
    except sweep.WorkerLost as err:
        print(f"mpsim: error: {err}", file=sys.stderr)
        return 1
    except sweep.SweepError as err:
        raise CliError(str(err)) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if report.interrupted:
        return sweep.EXIT_INTERRUPTED
    print(f"{report.ran} points run now, {report.reused} already in {args.out}; "
          f"{report.total - report.failed} of {report.total} ran without error")
    print()
    print(analysis.format_summary(report.summary, plan.grid_keys))
    print()
    print(f"Tables written to {args.out}: " + ", ".join(path.name for path in report.tables.values()) +
          ", manifest.json; point files in points/")
    if report.failed:
        print(f"mpsim: {report.failed} of {report.total} points failed: their errors are in "
              f"{args.out / 'points.parquet'} (error_type, error_message) and in each point's file", file=sys.stderr)
        return 1
    return 0


def _plot(args: argparse.Namespace) -> int:
    from mpsim.experiment import analysis, plots

    kind_function, data_kind = plots.KINDS[args.kind]
    out = args.output or args.dirs[0] / f"plot-{args.y}-vs-{args.x}.png"
    try:
        plots.check_figure_path(out, "-o")
        tables, keys = analysis.load_many(args.dirs)
        columns = [*keys, "variant"]
        for option, column in (("--x", args.x), ("--hue", args.hue)):
            if column is not None and column not in columns:
                raise CliError(f"{option} {column}: not a column of the results; available: {', '.join(columns)}")
        tables = analysis.where(tables, args.where, columns)
    except (analysis.AnalysisError, plots.PlotError) as err:
        raise CliError(str(err)) from None
    try:
        data = analysis.metric_samples(tables, args.y, keys) if data_kind == "samples" else \
            analysis.summarize(tables, keys, [args.y])
    except analysis.AnalysisError as err:
        raise CliError(f"--y {args.y}: {err}") from None
    if data.empty or (data_kind == "summary" and data["mean"].isna().all()):
        raise CliError(f"--y {args.y}: the results have no values of this metric to plot")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, and the same pixels everywhere
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 5))
    try:
        kind_function(data, x=args.x, y=args.y, hue=args.hue, ax=ax, log=args.log)
        names = ", ".join(dict.fromkeys(analysis.scenario_name(d) for d in args.dirs))
        what = "distribution of every value" if data_kind == "samples" else "mean over seeds, 95% interval"
        ax.set_title(f"{names}: {analysis.display_label(args.y)} vs {args.x}\n{what}"
                     + (f"; where {', '.join(w.strip() for w in args.where)}" if args.where else ""), fontsize=10)
        figure.tight_layout()
        plots.save_figure(figure, out, "-o")
    except plots.PlotError as err:
        raise CliError(str(err)) from None
    finally:
        plt.close(figure)
    print(f"Plot saved to {out}")
    return 0


def _ranges(numbers: list[int]) -> str:
    return f"{min(numbers)}..{max(numbers)}" if numbers else ""


def _scenarios(args: argparse.Namespace) -> int:
    from mpsim.experiment import scenario

    entries = scenario.describe_all()
    if not entries:
        raise CliError(f"no scenario files in {scenario.models_dir()}")
    width = max(len(name) for name, _ in entries)
    for name, description in entries:
        print(f"{name.ljust(width)}  {description}")
    return 0


def _scenario_schema(args: argparse.Namespace) -> int:
    from mpsim.experiment import schema

    text = schema.json_schema_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise CliError(f"--out {args.out}: {err.strerror or err}") from None
    print(f"wrote the scenario schema to {args.out} (an editor's TOML plugin reads it: docs/scenarios.md)")
    return 0


def _wireshark(args: argparse.Namespace) -> int:
    from mpsim import wireshark

    try:
        if args.print_path:
            print(wireshark.bundled_dissector_path())
            return 0
        target = wireshark.install(args.dir)
    except wireshark.WiresharkInstallError as err:
        raise CliError(str(err)) from None
    print(f"installed the mpsim dissector as {target}")
    print("Wireshark and tshark load it at their next start (check: tshark -G protocols | grep -w convert)")
    return 0


def _budget(args: argparse.Namespace) -> int:
    print(syn_budget.format_budget(args.destinations or syn_budget.DEFAULT_DESTINATIONS))
    if not args.destinations:  # the whole demonstration: one real Convert SYN, dumped and decoded
        print()
        print(syn_budget.format_convert_syn())
    return 0


def _decode(args: argparse.Namespace) -> int:
    kind = WIRE_KINDS[args.kind]
    if not args.verify_checksums and args.kind != "segment":
        raise CliError("--no-verify-checksums applies to KIND segment only")
    try:
        data = jsonform.hex_to_bytes(_read_argument(args.hex))
    except jsonform.JsonFormError as err:
        raise CliError(f"HEX: {err.message}") from None
    if not data:
        raise CliError("HEX holds no bytes")
    try:
        value = kind.decode(data, args)
    except WireError as err:
        raise CliError(f"{err}{_decode_hint(args.kind, data)}") from None  # the message names the structure
    print(jsonform.format_json(jsonform.to_jsonable(value)))
    return 0


def _decode_hint(kind_name: str, data: bytes) -> str:
    """A hint for the commonest paste mistake: a whole Ethernet frame where the IP packet belongs."""
    ethertype = data[12:14]
    if kind_name == "segment" and ethertype in (b"\x08\x00", b"\x86\xdd"):
        return "; this looks like an Ethernet frame: copy the IP layer instead, or drop the first 14 bytes"
    return ""


def _encode(args: argparse.Namespace) -> int:
    kind = WIRE_KINDS[args.kind]
    text = _read_argument([args.json])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    try:
        raw = kind.encode(jsonform.from_jsonable(kind.json_type, data))
    except (jsonform.JsonFormError, WireError) as err:
        raise CliError(str(err)) from None  # a JSON path, or the structure that does not fit
    print(raw.hex())
    return 0


def _scenario_error() -> type[MpsimError]:
    """ScenarioError, imported only if a command got that far (``mpsim wire`` stays light)."""
    module = sys.modules.get("mpsim.experiment.scenario")
    return module.ScenarioError if module is not None else CliError


# Delegated tools: (command, action) -> (module, function name), imported only when used so that
# `mpsim run` does not pay for them.
_DELEGATED = {
    "converter": {"serve": ("mpsim.live.serve", "serve_main"), "connect": ("mpsim.live.client", "connect_main"),
                  "rotate-secret": ("mpsim.live.cookies", "rotate_main")},
    "bench": {"sim": ("mpsim.bench.simulator", "main"), "sweep": ("mpsim.bench.sweep", "main"),
              "kernel": ("mpsim.bench.kernel", "main")},
}


def _delegate(args: argparse.Namespace) -> int:
    module_name, function_name = _DELEGATED[args.command][args.action]
    function = getattr(importlib.import_module(module_name), function_name)
    # Tools that print their own usage take the name they are called by.
    takes_prog = "prog" in inspect.signature(function).parameters
    try:
        return function(list(args.rest), **({"prog": f"mpsim {args.command} {args.action}"} if takes_prog else {}))
    except SystemExit as exit_:  # their argparse: --help, usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_USER_ERROR)


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand stores its function as ``handler``."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mpsim", description="Design, simulate and validate MPTCP proxies (RFC 8803 transport converters)."
    )
    parser.add_argument("--version", action="version", version=f"mpsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="the main job: run a scenario, print a summary, write the result tables",
        formatter_class=raw,
        description="Run a scenario in the simulator: the named scenario models/SCENARIO.toml or a TOML file\n"
                    "(default: default). Prints the outcomes, setup times and throughput; --out DIR writes the\n"
                    "tables (connections, transfers, counters, events as CSV; results.json; manifest.json).\n"
                    "A scenario that does not load exits with status 2 and one line naming the file, the key\n"
                    "and what was expected.",
        epilog="examples:\n"
               "  mpsim run\n"
               "  mpsim run scheme_comparison --json\n"
               "  mpsim run default --seed 7 --set client.scheme=mptcp --set workload.rate_per_s=2 --out results/\n"
               "  mpsim run my-scenario.toml --out results/ --pcap",
    )
    _scenario_arguments(run, default="default")
    run.add_argument("--out", type=Path, metavar="DIR", help="write the result tables (and captures) here")
    run.add_argument("--pcap", action="store_true", help="also write a pcapng capture per link that carried packets into "
                     "DIR/pcap, named VARIANT-runN-LINK.pcapng (docs/wireshark.md; --on kernel: tcpdump's, "
                     "docs/kernel-world.md \"Captures\")")
    run.add_argument("--json", action="store_true",
                     help="print the results as one JSON object (connections, transfers, counters) instead")
    run.add_argument("--on", choices=("sim", "kernel"), default="sim",
                     help="where to run it: the simulator (default) or the kernel, in network namespaces (root; "
                          "docs/kernel-world.md)")
    run.add_argument("--skip-unbuildable", action="store_true",
                     help="with --on kernel: leave out the variants the kernel cannot build (named in the manifest) "
                          "instead of refusing")
    run.add_argument("--proxy-cmd", metavar="COMMAND",
                     help="with --on kernel: run this proxy in the converter namespace instead of the scenario's "
                          "({listen} {allow} {addr} {port} are filled in)")
    run.set_defaults(handler=_run)

    compare_ = commands.add_parser(
        "compare", help="run a scenario in the model and in the kernel and compare them metric by metric",
        formatter_class=raw,
        description="Run SCENARIO in the simulator and in the kernel (root; network namespaces), --seeds N run\n"
                    "indices each, and report per metric: outcome agreement (must be exact), SYN / RST / port\n"
                    "counts, setup and first-byte times in RTTs, goodput error against the kernel's spread.\n"
                    "Exit 1 when outcomes disagree or a --tolerance is exceeded, 2 for what the user can fix.",
        epilog="examples:\n"
               "  mpsim compare models/kernel/two_path_10_3.toml --seeds 3 --tolerance goodput=0.05\n"
               "  mpsim compare my.toml --tolerance setup_rtts=0.05 --tolerance syns=0 --out cmp/")
    _scenario_arguments(compare_, default=None)
    compare_.add_argument("--seeds", type=int, default=1, metavar="N", help="run indices 0..N-1 in both worlds")
    compare_.add_argument("--tolerance", dest="tolerances", action="append", default=[], metavar="METRIC=VALUE",
                          help="fail (exit 1) beyond it: setup_rtts, first_byte_rtts, goodput, goodput_paired (relative error, "
                               "e.g. 0.05) or syns, rsts, ports (absolute difference); repeatable")
    compare_.add_argument("--out", type=Path, metavar="DIR", help="write the table (CSV, JSON) and the figure here")
    compare_.add_argument("--skip-unbuildable", action="store_true",
                          help="leave out the variants the kernel cannot build, naming them")
    compare_.add_argument("--proxy-cmd", metavar="COMMAND", help="a third-party proxy in place of the scenario's")
    compare_.add_argument("--kernel-from", type=Path, metavar="DIR",
                          help="reuse kernel runs recorded earlier (DIR/kernel_runs.json, written by --out here or by "
                               "mpsim run --on kernel --out) and run only the model; refused unless the variants, their "
                               "values and the run indices are the recorded ones (no root needed)")
    compare_.set_defaults(handler=_compare)

    ladder = commands.add_parser(
        "ladder", help="the ladder diagram of one request's connections",
        description="Run a scenario and draw the ladder diagram of request N (the request_id of the connections "
                    "table): every attempt's connection and, through a proxy, the proxy's connection to the server.",
    )
    _scenario_arguments(ladder, default=None)
    ladder.add_argument("--conn", type=int, default=0, metavar="N", help="the request to draw (default 0)")
    ladder.add_argument("--run", type=int, default=0, metavar="I", help="the run index (default 0)")
    ladder.add_argument("--png", type=Path, metavar="FILE",
                        help="also save the diagram as an image: .png, .svg, .pdf, .jpg ... by its suffix")
    ladder.set_defaults(handler=_ladder)

    sweep = commands.add_parser(
        "sweep", help="run a scenario over a grid of values and seeds; result tables and a summary",
        formatter_class=raw,
        description="Run a scenario for every combination of the --grid values, N seeds each; every point is\n"
                    "a whole mpsim run (the --set overrides, the point's values, a seed of its own derived\n"
                    "from the root seed). Points run in parallel on every core, or on Dask (--on kernel: one\n"
                    "after another, each a whole mpsim run --on kernel; root). Writes DIR/points/\n"
                    "(one file per point), connections, transfers, points and summary tables (Parquet; CSV with\n"
                    "--csv) and manifest.json. Running the same command again runs only the missing points.\n\n"
                    "VALUES: V1,V2,... read as --set reads a value (a list value as a TOML list: '[\"a\", \"b\"]'),\n"
                    "or START:STOP:STEP: START, START+STEP, ... up to STOP, which is included only when it\n"
                    "lands exactly on a step (0:1:0.25 gives 0, 0.25, 0.5, 0.75, 1).\n\n"
                    "Exit status: 0 when every point ran; 1 when some failed (the count is printed; errors are\n"
                    "in DIR/points.parquet); 2 for a grid or scenario that does not load; 130 if interrupted.",
        epilog="examples:\n"
               "  mpsim sweep default --set runs=1 --grid paths.lte.delay_s=0.01:0.05:0.01 --seeds 5 --out sweeps/lte\n"
               "  mpsim sweep scheme_comparison --grid paths.access.delay_s=0.005,0.01,0.02 "
               "--grid server.kind=legacy_drop,legacy_queue --out sweeps/schemes --csv\n"
               "  mpsim sweep default --grid converter.delay_s=0:0.02:0.005 --seeds 10 --dask local --out sweeps/conv\n"
               "  mpsim sweep models/kernel/ci_two_path.toml --grid paths.a.delay_s=0.005,0.02 --on kernel "
               "--out sweeps/k",
    )
    _scenario_arguments(sweep, default=None)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=VALUES",
                       help="a key and its values: V1,V2,... or START:STOP:STEP (repeatable: the product)")
    sweep.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per grid point (default 1)")
    sweep.add_argument("--workers", type=int, metavar="K",
                       help="processes (default: every core; with --dask local: its workers)")
    sweep.add_argument("--dask", metavar="ADDRESS|local",
                       help="run the points on a dask.distributed scheduler, or on a LocalCluster started here")
    sweep.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the points and tables go")
    sweep.add_argument("--csv", action="store_true", help="also write the tables as CSV")
    sweep.add_argument("--retry-failed", action="store_true",
                       help="run again the points that failed before (a finished point is otherwise kept)")
    sweep.add_argument("--on", choices=("sim", "kernel"), default="sim",
                       help="where each point runs: the simulator (default) or the kernel, in network namespaces, "
                            "one point after another (root; docs/kernel-world.md)")
    sweep.add_argument("--skip-unbuildable", action="store_true",
                       help="with --on kernel: leave out the variants the kernel cannot build (named) instead of "
                            "refusing")
    sweep.add_argument("--proxy-cmd", metavar="COMMAND",
                       help="with --on kernel: run this proxy in the converter namespace instead of the scenario's")
    sweep.set_defaults(handler=_sweep)

    plot = commands.add_parser(
        "plot", help="plot the results of sweeps or runs (PNG, SVG, PDF ...)", formatter_class=raw,
        description="Plot metric Y of a sweep (or a run's --out DIR, or several side by side) against grid key X\n"
                    "(or variant, or source for several DIRs), in ms, Mbit/s or % as the summary prints it:\n"
                    "line, bar and heatmap show the mean over seeds with its 95% interval (Wilson for shares of\n"
                    "requests, Student t clipped to the valid range otherwise); cdf shows the distribution of every\n"
                    "value, a curve per value of X (an outlier does not squash it: the axis ends at the 99th\n"
                    "percentile and says so, or use --log).\nMETRIC: setup_time_s, first_byte_time_s, fallback_rate, failure_rate,\n"
                    "goodput_bps, or any numeric column of the connections or transfers tables.",
        epilog="examples:\n"
               "  mpsim plot sweeps/lte --x paths.lte.delay_s --y goodput_bps\n"
               "  mpsim plot sweeps/schemes --x paths.access.delay_s --y first_byte_time_s --hue variant -o fb.svg\n"
               "  mpsim plot sweeps/schemes --kind heatmap --x paths.access.delay_s --hue server.kind "
               "--y setup_time_s --where variant=convert -o heatmap.pdf\n"
               "  mpsim plot results/a results/b --x variant --hue source --y setup_time_s --kind bar",
    )
    plot.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                      help="the --out DIR of a sweep or of an mpsim run; several to compare (a source column "
                           "tells them apart: --hue source)")
    plot.add_argument("--x", required=True, metavar="KEY", help="a grid key, or variant")
    plot.add_argument("--y", required=True, metavar="METRIC", help="what to plot (see above)")
    plot.add_argument("--hue", metavar="KEY", help="a grid key or variant: a series per value (heatmap: rows)")
    plot.add_argument("--kind", choices=("line", "cdf", "bar", "heatmap"), default="line",
                      help="the kind of plot (default line)")
    plot.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                      help="keep only the rows where a grid key (or variant) has this value (repeatable)")
    plot.add_argument("--log", action="store_true",
                      help="the metric's axis on a log scale (cdf: the x axis; heatmap: the colours)")
    plot.add_argument("-o", "--output", type=Path, metavar="FILE",
                      help="the image file: .png, .svg, .pdf, .jpg ... by its suffix (default "
                           "DIR/plot-<y>-vs-<x>.png in the first DIR)")
    plot.set_defaults(handler=_plot)

    # Tools with command lines of their own: the arguments after the action go to them unparsed.
    converter = commands.add_parser(
        "converter", help="the live RFC 8803 converter and its client, on Linux sockets",
        description="mpsim converter serve --listen ADDR:PORT [--allow PREFIX ...] ...: run the converter daemon.\n"
                    "mpsim converter connect CONVERTER DEST [--mptcp] [--cookie HEX]: connect through one.\n"
                    "mpsim converter rotate-secret FILE: a new cookie secret, the previous one kept (then SIGHUP).\n"
                    "Add --help after the action for its options (docs/live-converter.md has the details).",
        formatter_class=raw)
    converter.add_argument("action", choices=sorted(_DELEGATED["converter"]))
    converter.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    converter.set_defaults(handler=_delegate)

    bench = commands.add_parser(
        "bench", help="benchmarks: the simulator, sweep scaling, the kernel converter against the model",
        description="mpsim bench sim [--quick]: simulator speed side by side with bare SimPy and ns.py.\n"
                    "mpsim bench sweep: sweep speed-up with 1 and all workers, locally and on Dask.\n"
                    "mpsim bench kernel fastpath|setup|model|all [--quick]: the live converter in network\n"
                    "namespaces (root needed). Add --help after the action for its options.",
        formatter_class=raw)
    bench.add_argument("action", choices=sorted(_DELEGATED["bench"]))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    bench.set_defaults(handler=_delegate)

    scenarios = commands.add_parser("scenarios", help="list the named scenarios",
                                    description="The scenario files in models/, with their description.")
    scenarios.set_defaults(handler=_scenarios)

    scenario_group = commands.add_parser(
        "scenario", help="the scenario file format: its JSON Schema",
        description="The scenario file format. docs/scenarios.md is its reference (every key's type, unit, range,\n"
                    "default and meaning), generated from the same schema.", formatter_class=raw)
    scenario_commands = scenario_group.add_subparsers(dest="scenario_command", required=True, metavar="ACTION")
    schema_command = scenario_commands.add_parser(
        "schema", help="print the JSON Schema of a scenario file (for editor completion in TOML)",
        description="Print (or write with --out) the JSON Schema (draft 2020-12) of a scenario file: every key\n"
                    "with its type, range, default, meaning and unit, and the registered component names. Editors\n"
                    "read it through Taplo (Even Better TOML in VS Code): put `#:schema PATH` at the top of a\n"
                    "scenario file (PATH relative to the file), or use the repository's .taplo.toml.",
        epilog="examples:\n"
               "  mpsim scenario schema --out scenario.schema.json\n"
               "  mpsim scenario schema | python -m json.tool --sort-keys",
        formatter_class=raw)
    schema_command.add_argument("--out", type=Path, metavar="FILE", help="write the schema here instead of stdout")
    schema_command.set_defaults(handler=_scenario_schema)

    wire = commands.add_parser("wire", help="decode and encode wire formats; the SYN budget",
                               description="Byte-exact wire formats: decode, encode, and the SYN budget.")
    wire_commands = wire.add_subparsers(dest="wire_command", required=True, metavar="WIRE_COMMAND")

    decode = wire_commands.add_parser(
        "decode", help="bytes (hex) to JSON", formatter_class=raw,
        description="Decode bytes to JSON on stdout. Bytes that do not decode exit with status 2 and one line\n"
                    "naming the problem and its byte offset.\n\n"
                    "HEX as Wireshark gives it: a hex stream, or bytes set off by spaces or colons (one word or\n"
                    "many), 0x prefixes, hex dumps with offsets ('Copy as Hex Dump', hexdump -C, xxd); - reads\n"
                    f"stdin.\n\nKINDs:\n{_kinds_help()}",
        epilog="examples:\n"
               "  mpsim wire decode options 02 04 05 b4 04 02 08 0a 00 00 00 01 00 00 00 00 01 03 03 07\n"
               "  mpsim wire decode convert 01:06:22:63:0a:05:00:50:00:00:00:00:00:00:00:00:00:00:ff:ff:c0:00:02:01\n"
               "  mpsim wire decode segment --no-verify-checksums - < packet.hex",
    )
    decode.add_argument("kind", choices=WIRE_KINDS, metavar="KIND", help="what the bytes are (see above)")
    decode.add_argument("hex", nargs="+", metavar="HEX", help="the bytes in hex, or - for stdin")
    decode.add_argument("--no-verify-checksums", dest="verify_checksums", action="store_false",
                        help="segment only: skip the IPv4 and TCP checksums (captures with checksum offload)")
    decode.set_defaults(handler=_decode)

    encode = wire_commands.add_parser(
        "encode", help="JSON to bytes (hex)", formatter_class=raw,
        description="Encode the JSON form of a value, as decode prints it, to a hex stream on stdout. JSON that\n"
                    "does not describe a value exits with status 2 and the path of the problem (tlvs[0].port).\n"
                    "For convert, total_length (32-bit words) may be left out; if given it must match the TLVs.\n\n"
                    f"KINDs:\n{_kinds_help()}",
        epilog="example:\n"
               "  mpsim wire encode convert '{\"version\": 1, \"tlvs\": [{\"type\": \"connect\", \"port\": 80, "
               "\"address\": \"192.0.2.1\", \"options\": []}]}'",
    )
    encode.add_argument("kind", choices=WIRE_KINDS, metavar="KIND", help="what the JSON describes (see above)")
    encode.add_argument("json", metavar="JSON", help="the value as JSON, or - for stdin")
    encode.set_defaults(handler=_encode)

    budget = wire_commands.add_parser(
        "budget", help="what each signalling scheme puts in the SYN (the codec demonstration)",
        description="For each signalling scheme: the SYN's option bytes out of 40, its payload bytes, "
                    "whether it fits, and the round trips to the first response byte; without --destination, "
                    "then one real RFC 8803 Convert SYN, dumped and decoded.",
    )
    budget.add_argument("--destination", dest="destinations", action="append", type=parse_destination,
                        metavar="ADDRESS:PORT",
                        help="the server to reach, e.g. 192.0.2.1:80 or [2001:db8::1]:443; repeatable "
                             "(default: both of these)")
    budget.set_defaults(handler=_budget)

    wireshark = commands.add_parser(
        "wireshark", help="the Wireshark dissector for Convert, MP_CONVERT and SYN-payload options",
        description="mpsim ships a Lua dissector (docs/wireshark.md). Use it once with\n"
                    "  tshark -X lua_script:$(mpsim wireshark install --print-path) -r capture.pcapng\n"
                    "or install it for every Wireshark start.",
        formatter_class=raw)
    wireshark_commands = wireshark.add_subparsers(dest="wireshark_command", required=True, metavar="ACTION")
    install = wireshark_commands.add_parser(
        "install", help="copy the dissector into Wireshark's personal Lua plugin folder",
        description="Copy mpsim.lua into Wireshark's personal Lua plugin folder (the one `tshark -G folders`\n"
                    "names, else ~/.local/lib/wireshark/plugins, or %APPDATA%\\Wireshark\\plugins on Windows)\n"
                    "and print where it went. An existing copy is replaced.",
        formatter_class=raw)
    install.add_argument("--dir", type=Path, metavar="DIR", help="install into this folder instead")
    install.add_argument("--print-path", action="store_true",
                         help="only print the path of the bundled mpsim.lua (for tshark -X lua_script:PATH)")
    install.set_defaults(handler=_wireshark)
    return parser


def _scenario_arguments(parser: argparse.ArgumentParser, *, default: str | None) -> None:
    if default is None:
        parser.add_argument("scenario", metavar="SCENARIO", help="a scenario name (mpsim scenarios) or a TOML file")
    else:
        parser.add_argument("scenario", nargs="?", default=default, metavar="SCENARIO",
                            help=f"a scenario name (mpsim scenarios) or a TOML file (default: {default})")
    parser.add_argument("--seed", type=int, metavar="N", help="the root seed (default: the scenario's seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario value by its dotted key, e.g. client.scheme=convert (repeatable)")
    parser.add_argument("--variant", dest="variants", action="append", metavar="NAME",
                        help="only this variant of the scenario (repeatable; ladder: the one to draw)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors, --help, --version: argparse has printed them
        return int(exit_.code or 0)
    try:
        return args.handler(args)
    except (CliError, _scenario_error()) as err:
        print(f"mpsim: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # `mpsim run | head`: the reader left. Point stdout at /dev/null so that the interpreter's
        # final flush does not fail again, and end quietly as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except RecursionError:  # input nested past every check: one line, not thousands of frames
        print("mpsim: error: the input is nested too deeply to read (arrays or tables in arrays ...)",
              file=sys.stderr)
        return EXIT_USER_ERROR
