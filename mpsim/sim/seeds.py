"""Seeds for every random component of a run, derived from (root seed, run index, component name).

Each component (a loss model, a jitter source, a host's ISNs and ports) draws from its own
``random.Random``, so a single run of a sweep replays alone with the same numbers, and adding a
component to a scenario does not shift the draws of the others (docs/design.md section 6).

The derivation is SHA-256 over a fixed text form, not ``hash()``: Python salts string hashes per
process, and the seeds must be the same on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import random

#: Seeds are 64-bit: plenty for ``random.Random`` and exact in JSON readers that use int64.
SEED_BITS = 64


def _check_int(field: str, value: int) -> None:
    # bool is an int subclass; a True seed is almost certainly a mistake in a scenario file.
    if type(value) is not int:
        raise TypeError(f"{field} must be an int, got {value!r}")


def derive_seed(root_seed: int, run_index: int, component: str) -> int:
    """A 64-bit seed for ``component`` in run ``run_index`` of the sweep seeded with ``root_seed``.

    The text hashed is ``"mpsim-seed/v1|<root_seed>|<run_index>|<component>"``: the two integers
    cannot contain ``|``, so distinct inputs always give distinct texts.
    """
    _check_int("root_seed", root_seed)
    _check_int("run_index", run_index)
    if not isinstance(component, str) or not component:
        raise TypeError(f"component must be a non-empty str, got {component!r}")
    text = f"mpsim-seed/v1|{root_seed}|{run_index}|{component}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[: SEED_BITS // 8], "big")


def component_rng(root_seed: int, run_index: int, component: str) -> random.Random:
    """A fresh generator for one component, seeded with :func:`derive_seed`."""
    return random.Random(derive_seed(root_seed, run_index, component))
