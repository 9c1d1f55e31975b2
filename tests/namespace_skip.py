"""When the tests that need root and network namespaces can run, shared by the testbed and the
kernel-world tests: elsewhere they skip with the reason, and in CI (CI set, as root) a missing
package fails them instead, so a broken .ci/run cannot turn them into silent skips."""

import os
import shutil
import subprocess
import sys

import pytest


def unavailable_reason(what: str, tools: tuple[str, ...], **capabilities: bool) -> tuple[str | None, bool]:
    """(why `what` cannot run here, whether CI should fail on it rather than skip).

    ``tools`` are commands that must be on PATH; ``capabilities`` go to the testbed probe's
    ``missing`` (rate, loss, strip, nft_middlebox, delay_line)."""
    if not sys.platform.startswith("linux"):
        return f"the {what} needs Linux network namespaces", False
    if os.geteuid() != 0:
        return f"the {what} needs root (network namespaces, qdiscs, netfilter)", False
    if shutil.which("ip") is None:
        return "`ip` is missing (apt-get install iproute2)", True
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work on this machine", False
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install, see .ci/run)", True
    from mpsim.testbed import probe

    caps = probe()
    lacks = caps.missing(**capabilities)
    if not caps.mptcp:
        lacks.append("MPTCP is not enabled in this kernel")
    return ("; ".join(lacks) or None), bool(lacks)


def require(what: str, tools: tuple[str, ...] = (), **capabilities: bool) -> bool:
    """Skip (or in CI, fail on a missing package) unless `what` can run; then remove leftovers of
    killed earlier runs (their owner PIDs are gone; live parallel runs are kept)."""
    reason, tool_missing = unavailable_reason(what, tools, **capabilities)
    if reason:
        if tool_missing and os.environ.get("CI"):
            pytest.fail(f"{what} prerequisites missing in CI (check .ci/run): {reason}")
        pytest.skip(f"{what} unavailable: {reason}")
    from mpsim.testbed import cleanup_stale

    cleanup_stale("mps")
    return True
