"""The kernel world's tests need root, network namespaces and the packages .ci/run installs; they
skip elsewhere with the reason, and in CI a missing package fails them instead."""

import pytest

from tests.namespace_skip import require


@pytest.fixture(scope="session")
def kernel_world():
    return require("kernel world", ("tcpdump", "microsocks", "mptcpize", "ping"),
                   rate=True, loss=True, strip=True, nft_middlebox=True, delay_line=True)
