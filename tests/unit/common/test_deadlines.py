"""A mutation refuses to commit once its caller's deadline (less the transit margin) has passed."""

from __future__ import annotations

import pytest

from services.common.deadlines import MARGIN_SECONDS, caller_deadline, ensure_caller_waiting
from services.common.errors import DeadlineExceeded


def test_no_deadline_never_refuses() -> None:
    ensure_caller_waiting()
    with caller_deadline(None):
        ensure_caller_waiting()


def test_time_left_lets_the_commit_through() -> None:
    with caller_deadline(60.0):
        ensure_caller_waiting()


@pytest.mark.parametrize("seconds_left", [0.0, MARGIN_SECONDS / 2])
def test_a_passed_deadline_or_one_inside_the_margin_refuses(seconds_left: float) -> None:
    with caller_deadline(seconds_left), pytest.raises(DeadlineExceeded) as refused:
        ensure_caller_waiting()
    assert refused.value.reason == "DEADLINE_PASSED"


def test_the_deadline_ends_with_its_call() -> None:
    with caller_deadline(0.0):
        pass
    ensure_caller_waiting()


def test_a_time_left_of_centuries_counts_as_no_deadline() -> None:
    """What gRPC's time_remaining() reports for a call that set no deadline."""
    from services.common.deadlines import NO_DEADLINE_SECONDS, seconds_left

    with caller_deadline(NO_DEADLINE_SECONDS * 1000):
        assert seconds_left() is None
    with caller_deadline(60.0):
        left = seconds_left()
        assert left is not None
        assert left <= 60.0
