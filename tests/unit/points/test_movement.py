"""Balance movements: debits never go below zero unless the caller allows debt."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.points.domain import InsufficientBalance, apply_delta


@given(balance=st.integers(0, 10**9), delta=st.integers(-(10**9), 10**9))
def test_movement_never_goes_negative_unless_allowed(balance: int, delta: int) -> None:
    if balance + delta < 0:
        with pytest.raises(InsufficientBalance):
            apply_delta(balance, delta)
        assert apply_delta(balance, delta, allow_negative=True).after == balance + delta
    else:
        assert apply_delta(balance, delta).after == balance + delta


def test_refusal_says_balance_and_request() -> None:
    with pytest.raises(InsufficientBalance) as caught:
        apply_delta(5, -9)
    assert caught.value.metadata == {"balance": "5", "requested": "9"}
