"""32-bit TCP sequence number arithmetic (RFC 9293 section 3.4: comparisons are modulo 2**32)."""

SEQ_MOD = 1 << 32
_HALF = 1 << 31


def seq_add(seq: int, count: int) -> int:
    """``seq + count`` modulo 2**32."""
    return (seq + count) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """The signed distance ``a - b`` in sequence space, in ``[-2**31, 2**31)``."""
    return ((a - b + _HALF) % SEQ_MOD) - _HALF


# The comparisons spell out seq_diff rather than call it: they run several times per segment.
def seq_lt(a: int, b: int) -> bool:
    return ((a - b + _HALF) % SEQ_MOD) - _HALF < 0


def seq_le(a: int, b: int) -> bool:
    return ((a - b + _HALF) % SEQ_MOD) - _HALF <= 0


def seq_in_window(seq: int, start: int, size: int) -> bool:
    """True when ``start <= seq < start + size`` in sequence space."""
    return 0 <= ((seq - start + _HALF) % SEQ_MOD) - _HALF < size
