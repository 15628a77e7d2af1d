"""Timestamps are built in integers; they must equal protobuf's own conversion everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.common.convert import to_timestamp


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_to_timestamp_is_protobufs_conversion(moment: datetime, offset_minutes: int) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    expected = Timestamp()
    expected.FromDatetime(aware.astimezone(UTC))
    assert to_timestamp(aware) == expected
    assert to_timestamp(aware).ToDatetime(tzinfo=UTC) == aware


def test_to_timestamp_of_nothing_is_nothing() -> None:
    assert to_timestamp(None) is None
