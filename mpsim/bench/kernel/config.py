"""What the kernel benchmarks run: ports, sizes, scales and routes (data only, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from mpsim.errors import MpsimError

GB = 1e9  # CPU seconds per GB: per 10^9 payload bytes
MIB = 1 << 20
BLOCK_BYTES = MIB
BLOCK_SEED = 8803
PEER_LIMIT_S = 120.0  # bound on every socket operation and loop of a peer program
CONVERT_TIMEOUT_S = 15.0  # the live client's bound on one Convert exchange (then: direct TCP)
SINK_PORTS = {"tcp": 5001, "mptcp": 5002}
ECHO_PORTS = {"tcp": 7001, "mptcp": 7002}
CONVERTER_PORTS = {"splice": 6001, "copy": 6002, "auto": 6003}
RELAY_PORT = 6004
L2_FACTOR = 1500 / 1514  # tbf counts 1514-byte frames for 1500-byte IP packets (docs/testbed.md)
SHAPED_RATE_BPS = 50_000_000
QUEUE_S = 0.05  # the testbed's default tbf queue, as time at rate
#: Sysctls recorded besides the testbed's: what changes SYN timing, loss recovery and buffers.
EXTRA_SYSCTLS = ("net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_no_metrics_save", "net.ipv4.tcp_recovery",
                 "net.ipv4.tcp_early_retrans", "net.ipv4.tcp_adv_win_scale", "net.ipv4.tcp_thin_linear_timeouts")
#: Every testbed: CUBIC pinned (Testbed default), 16 MiB buffer maxima, TFO for the Convert SYN,
#: and no route metrics cache, so that one run's ssthresh never seeds the next.
TESTBED_SYSCTLS = {"net.ipv4.tcp_no_metrics_save": "1"}
BENCHMARKS = ("fastpath", "setup", "model", "abuse")


class BenchError(MpsimError):
    """A benchmark step failed; the message says which, with the peer's stderr."""


@dataclass(frozen=True)
class Scale:
    """How much each benchmark does (``full``, ``quick``, and ``smoke`` for the test suite)."""

    name: str
    fast_bytes: int  # one unshaped upload
    fast_rounds: int  # interleaved rounds over the configurations
    fast_configs: tuple[str, ...]
    shaped_s: float  # a shaped upload lasts about this long at its configuration's ceiling
    shaped_rounds: int
    shaped_configs: tuple[str, ...]
    churn_conns: int  # sequential connections per configuration and round
    churn_rounds: int
    churn_configs: tuple[str, ...]
    idle_conns: int  # idle connections held at once per memory measurement
    memory_rounds: int
    memory_configs: tuple[str, ...]
    grid_rates_bps: tuple[int, ...]
    grid_losses: tuple[float, ...]
    grid_s: float  # a grid upload lasts about this long at the aggregate ceiling
    grid_reps: int  # kernel uploads per grid point (the model runs as many seeds)
    middleboxes: tuple[str, ...]


ALL_FAST = ("direct-tcp", "direct-mptcp", "converter-splice", "converter-copy", "converter-auto", "peer-relay")
PROXY_COMPARISON = ("direct-tcp", "direct-mptcp", "converter-auto", "peer-relay")
MEMORY_ROUTES = ("direct-tcp", "direct-mptcp", "converter-splice", "converter-copy", "peer-relay")
#: Catalogue names (mpsim/proto/catalogue.py) of the middleboxes the testbed builds (KERNEL_MIDDLEBOXES).
ALL_MIDDLEBOXES = ("none", "strip-mptcp-syn", "drop-mp-capable-syn", "drop-syn-data")
GRID = {"grid_rates_bps": (10_000_000, 50_000_000), "grid_losses": (0.0, 0.005, 0.02)}
SCALES = {
    "full": Scale("full", fast_bytes=512 * MIB, fast_rounds=7, fast_configs=ALL_FAST,
                  shaped_s=3.0, shaped_rounds=3, shaped_configs=PROXY_COMPARISON,
                  churn_conns=400, churn_rounds=3, churn_configs=PROXY_COMPARISON,
                  idle_conns=500, memory_rounds=3, memory_configs=MEMORY_ROUTES,
                  **GRID, grid_s=4.0, grid_reps=2, middleboxes=ALL_MIDDLEBOXES),
    "quick": Scale("quick", fast_bytes=96 * MIB, fast_rounds=3, fast_configs=ALL_FAST,
                   shaped_s=1.5, shaped_rounds=1, shaped_configs=PROXY_COMPARISON,
                   churn_conns=100, churn_rounds=2, churn_configs=PROXY_COMPARISON,
                   idle_conns=200, memory_rounds=1, memory_configs=MEMORY_ROUTES,
                   **GRID, grid_s=1.5, grid_reps=1, middleboxes=ALL_MIDDLEBOXES),
    # the test suite's: every code path once, in about 15 s
    "smoke": Scale("smoke", fast_bytes=8 * MIB, fast_rounds=1, fast_configs=("direct-mptcp", "converter-auto",
                                                                             "peer-relay"),
                   shaped_s=0.5, shaped_rounds=1, shaped_configs=("converter-auto",),
                   churn_conns=10, churn_rounds=1, churn_configs=("direct-mptcp", "converter-auto"),
                   idle_conns=10, memory_rounds=1, memory_configs=("converter-copy",),
                   grid_rates_bps=(50_000_000,), grid_losses=(0.0,), grid_s=0.5, grid_reps=1,
                   middleboxes=("strip-mptcp-syn",)),
}


@dataclass(frozen=True)
class Route:
    """How a client reaches the server: ``direct`` (connect to ``target``) or ``convert`` (ask the
    converter at ``target``); the client's and the server's socket protocol; who relays."""

    kind: str
    client_proto: str
    server_proto: str
    relay: str | None  # "splice" / "copy" / "auto" (the daemon), "peer" (mptcpize relay), None


ROUTES = {
    "direct-tcp": Route("direct", "tcp", "tcp", None),
    "direct-mptcp": Route("direct", "mptcp", "mptcp", None),
    "converter-splice": Route("convert", "mptcp", "tcp", "splice"),
    "converter-copy": Route("convert", "mptcp", "tcp", "copy"),
    "converter-auto": Route("convert", "mptcp", "tcp", "auto"),
    "peer-relay": Route("direct", "mptcp", "tcp", "peer"),
}


#: Where ``mpsim bench kernel setup --relay-cpu`` puts the single-process relays (the converter, the
#: mptcpize relay, the minimal relay): both pinned to services.RELAY_CPU (away from CPU 0, where every
#: veth's receive processing runs) and unpinned (every CPU, like the direct routes' client and
#: server), side by side in the same rounds; or only one of them. Both is the default because
#: neither placement is neutral: pinning costs the single-threaded converter 1.4-4x in rate as the
#: machine's load rises (it cannot leave a busy CPU 1), while it helps the threaded mptcpize relay
#: on a quiet machine (presumably its threads then wake each other on one CPU: 0.47 / 0.34 of direct MPTCP pinned
#: against 0.23 / 0.24 unpinned in two runs at load 1-4), so either one alone picks the winner
#: (docs/live-converter.md, "Setup rate, workers and abuse").
RELAY_PLACEMENTS = ("both", "unpinned", "pinned")
