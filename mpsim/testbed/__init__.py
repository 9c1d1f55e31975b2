"""The kernel testbed: network namespaces with veth paths, rate, loss, delay and middlebox emulation
(delay through netem where the kernel has it, else the project's delay line, :mod:`mpsim.testbed.delay`).

Linux only, as root. See docs/testbed.md for the topology, the emulation methods and their
measured accuracy, and what this kernel cannot emulate.
"""

from mpsim.testbed.netns import Addresses, Testbed, cleanup_stale, counter_delta, list_namespaces
from mpsim.testbed.probe import Capabilities, TestbedError, TestbedUnavailable, probe
from mpsim.testbed.shaping import Middlebox, PathSpec

__all__ = ["Addresses", "Capabilities", "Middlebox", "PathSpec", "Testbed", "TestbedError",
           "TestbedUnavailable", "cleanup_stale", "counter_delta", "list_namespaces", "probe"]
