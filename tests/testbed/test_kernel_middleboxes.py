"""The testbed's kernel builds of catalogue middleboxes (mpsim/testbed/shaping.py): keyed by the
catalogue's names, and a clear error for the others. No root needed: nothing is built here."""

import pytest

from mpsim.proto.catalogue import MIDDLEBOXES, UnknownComponentError
from mpsim.testbed import TestbedError
from mpsim.testbed.shaping import KERNEL_MIDDLEBOXES, Middlebox, kernel_middlebox


def test_every_kernel_build_is_a_registered_middlebox_with_one_rule():
    assert KERNEL_MIDDLEBOXES and set(KERNEL_MIDDLEBOXES) <= set(MIDDLEBOXES.names())
    for name, build in KERNEL_MIDDLEBOXES.items():
        assert isinstance(build.box, Middlebox) and build.box != Middlebox(), name
        assert build.box.uses_iptables != build.box.uses_nft, name  # one mechanism each
        assert ("TCPOPTSTRIP" in build.mechanism) == build.box.uses_iptables, name
        assert kernel_middlebox(name) is build


@pytest.mark.parametrize("name", [n for n in MIDDLEBOXES.names() if n not in KERNEL_MIDDLEBOXES])
def test_a_middlebox_the_kernel_cannot_build_is_reported_by_name(name):
    with pytest.raises(TestbedError) as info:
        kernel_middlebox(name)
    message = str(info.value)
    assert message.startswith(f"the testbed cannot build middlebox {name!r} in the kernel")
    assert all(buildable in message for buildable in KERNEL_MIDDLEBOXES)


def test_an_unknown_name_is_the_catalogues_error():
    with pytest.raises(UnknownComponentError, match="did you mean drop-syn-data"):
        kernel_middlebox("drop-syn-dta")
