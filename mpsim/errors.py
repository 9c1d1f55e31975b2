"""The root of every error mpsim raises on purpose.

Callers that want to catch "anything mpsim refused" catch :class:`MpsimError`; the layers below
define narrower classes (wire errors, protocol errors, scenario errors) under it.
"""


class MpsimError(Exception):
    """Base class for every error raised deliberately by mpsim."""
