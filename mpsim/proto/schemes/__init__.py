"""The signalling schemes, one module each, registered in :data:`mpsim.proto.catalogue.SCHEMES`.

Importing this package registers the six schemes the project models, in the order the tables
show them (docs/design.md section 4). The interface is :mod:`mpsim.proto.schemes.base`; how to add
a scheme: docs/adding-a-scheme.md.
"""

from mpsim.proto.schemes import plain, mptcp, mp_convert_option, syn_payload_eol, convert, socks5  # noqa: F401  (registers)
from mpsim.proto.schemes.base import SchemeSyn, SignallingScheme, register

__all__ = ["SchemeSyn", "SignallingScheme", "register"]
