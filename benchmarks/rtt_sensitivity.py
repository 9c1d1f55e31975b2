"""How a variant's goodput in the model moves with the round trip, and which discrete decision moves it:
``python benchmarks/rtt_sensitivity.py SCENARIO VARIANT [--steps N] [--max-scale X]``.

Runs the model's side of ``mpsim compare`` (tbf shapers, the calibrated forwarding latency of each
line: ``compare.CALIBRATED_PATH_LATENCY_S``) with that latency scaled from 0 to ``--max-scale``
(default 2) in ``--steps`` steps (default 20): the round trip moves by a fraction of a millisecond,
as between two kernel runs. Per point it prints, as a markdown table to stdout: the goodput, the
transfer's duration, the bytes each subflow carried, when each path delivered its last data segment,
each subflow's HyStart exit (the detector and the window: ``tcp_cubic.c``'s MIB counters, per
subflow), retransmissions and RTOs. docs/sim.md ("How sensitive a two-path goodput is to the round
trip") reads these tables. A diagnostic, not a benchmark with results: nothing is written.

It reads the transfers' subflows after the run: ``Simulation(on_transfer_done=...)`` hands it each
finished transfer's object.
"""

import argparse
import sys
from pathlib import Path

from mpsim.experiment.compare import model_path_latency
from mpsim.experiment.scenario import load
from mpsim.experiment.simulation import Simulation


def _senders(transfer) -> list:
    """The connection senders of a transfer: its own, or its legs' (a relayed transfer)."""
    if hasattr(transfer, "sender") and hasattr(transfer.sender, "subflows"):
        return [transfer.sender]
    return [leg.sender for leg in vars(transfer).values()
            if hasattr(leg, "sender") and hasattr(leg.sender, "subflows")]


def _hystart(cc) -> str:
    if getattr(cc, "hystart_delay_detect", 0):
        return f"delay@{cc.hystart_delay_cwnd}"
    if getattr(cc, "hystart_train_detect", 0):
        return f"train@{cc.hystart_train_cwnd}"
    return "-"


def sweep(scenario_file: Path, variant: str, steps: int, max_scale: float) -> list[dict]:
    loaded = load(scenario_file)
    if variant not in loaded.variants:
        raise SystemExit(f"{scenario_file}: no variant {variant!r} (variants: {', '.join(loaded.variants)})")
    scenario = loaded.variants[variant]
    calibrated = model_path_latency(scenario, None)
    sender_node = "client" if "upload" in str(scenario.transfers[0].direction).lower() else "router"
    rows = []
    for step in range(steps + 1):
        scale = max_scale * step / steps
        latency = {line: (up * scale, down * scale) for line, (up, down) in calibrated.items()}
        finished: list = []
        simulation = Simulation(scenario, variant=variant, run_index=0, shaper="tbf", path_latency_s=latency,
                                record_packets=True, on_transfer_done=lambda row, t: finished.append(t))
        result = simulation.run()
        transfer = result.transfers[0]
        last_data = {}
        for record in result.trace.packets:
            if (record.kind == "delivered" and record.src == sender_node and record.link.startswith("path.")
                    and getattr(record.packet, "payload_bytes", 0) > 0):
                last_data[record.link.removeprefix("path.")] = record.time_s
        hystart = [" ".join(_hystart(s.cc) for s in sender.subflows)
                   for t in finished for sender in _senders(t)]
        first_path = next(iter(scenario.paths))
        # what the lines add to the round trip: the first path's and the server link's, each way
        added_s = sum(latency[first_path]) + sum(latency.get("server", (0.0, 0.0)))
        rows.append({"scale": scale, "rtt_added_ms": 1e3 * added_s,
                     "goodput_mbps": transfer["goodput_bps"] / 1e6, "duration_s": transfer["duration_s"],
                     "subflow_bytes": transfer["subflow_bytes"],
                     "last_data_s": " ".join(f"{p}:{t:.3f}" for p, t in sorted(last_data.items())),
                     "hystart": " / ".join(hystart), "retransmissions": transfer["retransmissions"],
                     "timeouts": transfer["timeouts"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", type=Path)
    parser.add_argument("variant")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-scale", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.steps > 1000:
        parser.error(f"--steps {args.steps}: expected 1-1000")
    if not 0 <= args.max_scale <= 100:
        parser.error(f"--max-scale {args.max_scale}: expected 0-100")
    rows = sweep(args.scenario, args.variant, args.steps, args.max_scale)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
