"""Sequence number comparisons modulo 2**32 (RFC 9293 section 3.4): the inlined comparisons agree
with the signed distance, and wrap where hand-worked cases say."""

from hypothesis import given
from hypothesis import strategies as st

from mpsim.proto.seqnum import seq_add, seq_diff, seq_in_window, seq_le, seq_lt

SEQ = st.integers(0, 2**32 - 1)


@given(SEQ, SEQ, st.integers(0, 2**31))
def test_comparisons_agree_with_the_signed_distance(a, b, size):
    assert seq_lt(a, b) == (seq_diff(a, b) < 0)
    assert seq_le(a, b) == (seq_diff(a, b) <= 0)
    assert seq_in_window(a, b, size) == (0 <= seq_diff(a, b) < size)


def test_hand_worked_wraps():
    assert seq_lt(0xFFFFFFFF, 0) and not seq_lt(0, 0xFFFFFFFF)  # 0 is one past 2**32 - 1
    assert seq_diff(0, 0xFFFFFFFF) == 1 and seq_add(0xFFFFFFFF, 2) == 1
    assert seq_lt(0, 0x80000000)  # the distance -2**31 counts as "before"
    assert not seq_lt(0, 0x7FFFFFFF + 1 + 1)  # 2**31 + 1 ahead wraps to 2**31 - 1 behind
    assert seq_le(5, 5) and not seq_lt(5, 5)
    assert seq_in_window(0, 0xFFFFFFF0, 32) and not seq_in_window(0xFFFFFFEF, 0xFFFFFFF0, 32)
