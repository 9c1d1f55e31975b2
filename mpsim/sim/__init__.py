"""The SimPy driver of the proto machines: links, loss, nodes, traces (docs/sim.md).

The only package that imports SimPy. Submodules: :mod:`~mpsim.sim.seeds`, :mod:`~mpsim.sim.loss`,
:mod:`~mpsim.sim.link`, :mod:`~mpsim.sim.node`, :mod:`~mpsim.sim.trace` (and ``transfer``).
"""

from mpsim.sim.link import Link, LinkCounters, LinkDirection, packet_size_bytes
from mpsim.sim.loss import Bernoulli, DropRule, GilbertElliott, LossSpecError, NoLoss, Scripted, loss_from_spec
from mpsim.sim.node import SimNode
from mpsim.sim.seeds import component_rng, derive_seed
from mpsim.sim.trace import Trace, ladder_figure, ladder_text

__all__ = [
    "Bernoulli", "DropRule", "GilbertElliott", "Link", "LinkCounters", "LinkDirection", "LossSpecError", "NoLoss",
    "Scripted", "SimNode", "Trace", "component_rng", "derive_seed", "ladder_figure", "ladder_text",
    "loss_from_spec", "packet_size_bytes",
]
