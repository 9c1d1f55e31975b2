"""TCP option kind numbers, in a module of their own.

Both the option-list codec (:mod:`mpsim.wire.options`) and the MPTCP option codec
(:mod:`mpsim.wire.mptcp`) need these numbers, and the list codec hands kind 30 to the MPTCP
codec; keeping the numbers here lets the imports run one way only: options -> mptcp -> option_kinds.
"""

from enum import IntEnum


class TcpOptionKind(IntEnum):
    """TCP option kinds (IANA "TCP Option Kind Numbers"; experimental names per RFC 4727/6994)."""

    EOL = 0
    NOP = 1
    MSS = 2
    WINDOW_SCALE = 3
    SACK_PERMITTED = 4
    SACK = 5
    TIMESTAMPS = 8
    TCP_AO = 29
    MPTCP = 30
    TFO = 34
    EXPERIMENTAL_1 = 253
    EXPERIMENTAL_2 = 254
