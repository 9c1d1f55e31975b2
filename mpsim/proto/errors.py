"""Errors of the state machines (docs/design.md section 3).

Middlebox interference, fallback and refusals are ordinary inputs leading to ordinary states and
events, never exceptions. Exceptions are for misuse by the local caller (:class:`LocalProtocolError`:
sending on a closed connection, connecting twice) and for peer input the machine cannot survive
(:class:`RemoteProtocolError`).
"""

from mpsim.errors import MpsimError


class ProtocolError(MpsimError):
    """A state machine refused an input."""


class LocalProtocolError(ProtocolError):
    """The local caller used a machine wrongly; the machine's state did not change."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the machine cannot survive."""
