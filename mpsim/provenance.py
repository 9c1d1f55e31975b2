"""Where a result came from: the machine it was measured on and the mpsim revision that made it.

One place for these facts, so that every recorded result (scenario runs, sweeps, the benchmarks,
the testbed's facts) describes its machine with the same keys. Standard library only: importable
from every layer above proto (sim, live, testbed, experiment, bench, cli).
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from mpsim import __version__

#: The checkout mpsim runs from (the repository root when run from a clone).
_CHECKOUT = Path(__file__).resolve().parents[1]


def git_revision(directory: Path | None = None) -> dict[str, Any] | None:
    """The commit of the checkout mpsim runs from, and whether it has local changes; None outside git."""
    where = directory or _CHECKOUT
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def short_revision(revision: dict[str, Any] | None) -> str | None:
    """``git_revision()`` as people read it: ten hex digits, ``-dirty`` with local changes."""
    if not revision:
        return None
    return f"{revision['commit'][:10]}{'-dirty' if revision.get('dirty') else ''}"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_facts() -> dict[str, Any]:
    """The machine and interpreter a result was measured with, at the moment of the call.

    Keys: ``date_utc``, ``hostname``, ``cpu_model``, ``cpu_count``, ``usable_cpus``, ``load_average``
    (1, 5, 15 min; other work shares the cores), ``platform``, ``kernel_release``, ``kernel_version``,
    ``machine`` (architecture), ``python``, ``python_implementation``, ``mpsim`` (version).
    """
    uname = platform.uname()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "load_average": load,
        "platform": platform.platform(),
        "kernel_release": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "mpsim": __version__,
    }
