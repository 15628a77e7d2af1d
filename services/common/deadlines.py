"""The caller's deadline, for mutations that must not commit after the caller gave up.

A client whose call times out retries with the same request_id. If the first
attempt was still queued or waiting for a lock, the retry may run first and be
refused, and the first attempt would then commit a change the caller was told
did not happen. So every idempotent mutation checks, after its reads and locks
and just before it records its response, that its caller is still waiting.
Nothing here imports grpc: the interceptor sets the deadline, domain code reads it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from services.common.errors import DeadlineExceeded

_deadline: ContextVar[float | None] = ContextVar("caller_deadline", default=None)
# The server learns the deadline a transit time after the client set it, so it
# gives up this much early: a commit never lands after the client saw the timeout.
MARGIN_SECONDS = 0.02
# gRPC reports a call without a deadline as one centuries away; waits and
# timeouts overflow on such values, so anything past this counts as none. Kept
# under PostgreSQL's largest statement_timeout (2**31 - 1 ms, about 24.8 days),
# so a time left from here always fits one.
NO_DEADLINE_SECONDS = 24 * 24 * 3600.0


@contextmanager
def caller_deadline(seconds_left: float | None) -> Iterator[None]:
    """Makes the caller's remaining time visible to the code run inside; None means no deadline."""
    if seconds_left is None or seconds_left >= NO_DEADLINE_SECONDS:
        token = _deadline.set(None)
    else:
        token = _deadline.set(time.monotonic() + seconds_left - MARGIN_SECONDS)
    try:
        yield
    finally:
        _deadline.reset(token)


def seconds_left() -> float | None:
    """How long the caller still waits (never negative); None when it set no deadline."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def ensure_caller_waiting() -> None:
    """Raises DeadlineExceeded when the caller's deadline has passed (the transaction then rolls back)."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(
            "the caller's deadline passed before this request could commit; nothing was changed, "
            "retry with the same request_id",
            reason="DEADLINE_PASSED",
        )
