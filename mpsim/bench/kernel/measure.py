"""Measurements on the machine: CPU from /proc/PID/stat and /proc/stat, memory from /proc/slabinfo,
/proc/meminfo and /proc/PID/status, the expected hash of an upload, and summaries (min / median /
max, percentiles) and their formatting."""

from __future__ import annotations

import hashlib
import math
import os
import random
import statistics
import sys
from collections.abc import Sequence

from mpsim.bench.kernel.config import BLOCK_BYTES, BLOCK_SEED


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process and its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu_s() -> tuple[float, float]:
    """(busy, softirq) CPU seconds of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, values[6] / tick


def system_busy_s() -> float:
    return system_cpu_s()[0]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def slab_bytes() -> dict[str, int]:
    """Bytes in use per slab cache (active objects x object size), machine-wide."""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f.readlines()[2:]:
            name, active, _total, size = line.split()[:4]
            out[name] = int(active) * int(size)
    return out


def meminfo_bytes() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        rows = (line.split() for line in f)
        return {r[0].rstrip(":"): int(r[1]) * 1024 for r in rows if r[0].rstrip(":") in ("Slab", "SUnreclaim")}


def summary(values: Sequence[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


_digests: dict[int, str] = {}


def expected_sha256(size_bytes: int) -> str:
    """SHA-256 of what a sender of ``size_bytes`` sends (the seeded block, repeated)."""
    if size_bytes not in _digests:
        block = memoryview(random.Random(BLOCK_SEED).randbytes(BLOCK_BYTES))
        digest = hashlib.sha256()
        for offset in range(0, size_bytes, BLOCK_BYTES):
            digest.update(block[:min(BLOCK_BYTES, size_bytes - offset)])
        _digests[size_bytes] = digest.hexdigest()
    return _digests[size_bytes]


def not_root_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the kernel benchmarks need Linux network namespaces"
    if os.geteuid() != 0:
        return "the kernel benchmarks need root (network namespaces, qdiscs, netfilter)"
    return None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def relative_error(model: float | None, kernel: float | None) -> float | None:
    """(model - kernel) / kernel; None when either is missing or the kernel's is 0."""
    return (model - kernel) / kernel if model is not None and kernel else None


def ratios(rows: list[dict], config: str, baseline: str, key: str = "goodput_bps", name: str = "route") -> dict:
    """Summary of ``key`` of route ``config`` over route ``baseline``, paired per (session, round);
    rows named by their ``name`` field (``variant``: a route in one relay placement)."""
    by_round: dict = {}
    for row in rows:
        by_round.setdefault((row["session"], row["round"]), {})[row[name]] = row[key]
    values = [r[config] / r[baseline] for r in by_round.values() if r.get(config) and r.get(baseline)]
    return summary(values)
