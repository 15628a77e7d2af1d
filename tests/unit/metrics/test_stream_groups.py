"""StreamOrders gathers chunks in groups; a failing stream still yields what came before the failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loyalty.metrics.v1 import metrics_pb2 as m

from services.metrics.servicer import groups_of


def chunks(count: int, *, fail_after: bool = False) -> Iterator[m.StreamOrdersRequest]:
    for n in range(count):
        yield m.StreamOrdersRequest(request_id=f"c{n}")
    if fail_after:
        raise ConnectionError("the client went away")


def ids(group: list[m.StreamOrdersRequest]) -> list[str]:
    return [c.request_id for c in group]


def test_groups_hold_consecutive_chunks_and_the_last_may_be_short() -> None:
    assert [ids(g) for g in groups_of(chunks(5), 2)] == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert [ids(g) for g in groups_of(chunks(0), 2)] == []


def test_a_failing_stream_yields_the_chunks_before_the_failure_then_raises() -> None:
    groups = groups_of(chunks(3, fail_after=True), 2)
    assert ids(next(groups)) == ["c0", "c1"]
    assert ids(next(groups)) == ["c2"]
    with pytest.raises(ConnectionError):
        next(groups)
