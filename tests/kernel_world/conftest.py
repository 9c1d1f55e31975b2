"""The kernel world's tests need root, network namespaces and the packages .ci/run installs; they
skip elsewhere with the reason, and in CI a missing package fails them instead."""

import os
import shutil
import subprocess
import sys

import pytest


def _unavailable() -> tuple[str | None, bool]:
    if not sys.platform.startswith("linux"):
        return "the kernel world needs Linux network namespaces", False
    if os.geteuid() != 0:
        return "the kernel world needs root (network namespaces, qdiscs, netfilter)", False
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work on this machine", False
    missing = [tool for tool in ("tcpdump", "microsocks", "mptcpize", "ping") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install, see .ci/run)", True
    from mpsim.testbed import probe

    caps = probe()
    lacks = caps.missing(rate=True, loss=True, strip=True, nft_middlebox=True, delay_line=True)
    if not caps.mptcp:
        lacks.append("MPTCP is not enabled in this kernel")
    return ("; ".join(lacks) or None), bool(lacks)


@pytest.fixture(scope="session")
def kernel_world():
    reason, tool_missing = _unavailable()
    if reason:
        if tool_missing and os.environ.get("CI"):
            pytest.fail(f"kernel world prerequisites missing in CI (check .ci/run): {reason}")
        pytest.skip(f"kernel world unavailable: {reason}")
    from mpsim.testbed import cleanup_stale

    cleanup_stale("mps")
    return True
