"""The shared order contract: the bulk fast path never lets through what the detailed checks would refuse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty.common.v1 import common_pb2

from services.common.errors import Violations
from services.common.orders import (
    EARLIEST_SECONDS,
    LATEST_SECONDS,
    MAX_PAID_AHEAD,
    checked_order,
    parse_order,
    plainly_valid_order,
)

ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True),
    st.sampled_from(["", "a b", "x" * 65, "abc\n", "订单", "a/b"]),
)
amounts = st.one_of(st.integers(0, 10**6), st.sampled_from([-1, 10**15, 10**15 + 1, 2**62]))
currencies = st.sampled_from(["CNY", "JPY", "", "cny", "XXX", "CN"])
seconds = st.one_of(
    st.integers(-5, 5),  # around 1970-01-01, the earliest accepted
    st.integers(4_102_444_800 - 5, 4_102_444_800 + 5),  # around 2100-01-01
    st.integers(1_600_000_000, 1_800_000_000),
    st.sampled_from([-62_135_596_800, 253_402_300_799, 0]),
)
nanos = st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 1_000_000_000]))


@st.composite
def orders(draw: st.DrawFn) -> common_pb2.Order:
    order = common_pb2.Order(
        order_id=draw(ids),
        customer_id=draw(ids),
        paid=common_pb2.Money(amount_minor=draw(amounts), currency=draw(currencies)),
        channel=draw(st.sampled_from(["", "mini_program", "x" * 32, "x" * 33])),
        source=draw(st.sampled_from([0, 1, 2, 3, 99])),  # type: ignore[arg-type]  # 99: unknown on purpose
    )
    if draw(st.booleans()):
        order.paid_at.seconds = draw(seconds)
        order.paid_at.nanos = draw(nanos)
    for _ in range(draw(st.integers(0, 3))):
        order.items.add(
            sku=draw(st.sampled_from(["milk", "x" * 64, "x" * 65])),
            category=draw(st.sampled_from(["dairy", "", "y" * 65])),
            quantity=draw(st.sampled_from([1, 2, 0, 100_000, 100_001, -1])),
            paid=common_pb2.Money(
                amount_minor=draw(st.integers(-1, 400)), currency=draw(st.sampled_from(["", "CNY", "JPY"]))
            ),
        )
    return order


@settings(max_examples=3_000, deadline=None)
@given(orders(), st.one_of(st.none(), st.integers(-2, 2)))
def test_the_fast_path_accepts_only_what_the_detailed_checks_accept(
    order: common_pb2.Order, ahead_of_clock: int | None
) -> None:
    """`ahead_of_clock`: the server's limit (`paid_by(now)`) that many seconds before the payment, or none."""
    not_after = LATEST_SECONDS if ahead_of_clock is None else order.paid_at.seconds - ahead_of_clock
    fast = plainly_valid_order(order, not_after)
    v = Violations()
    detailed = checked_order(v, order, "o", not_after=not_after)
    if fast is not None:
        assert v.found == []
        assert fast == detailed
    if ahead_of_clock is not None and EARLIEST_SECONDS <= not_after - 86_400 < LATEST_SECONDS:
        now = datetime.fromtimestamp(not_after, UTC) - MAX_PAID_AHEAD
        assert parse_order(Violations(), order, "o", now=now) == detailed


def test_an_order_paid_more_than_a_day_ahead_of_the_clock_is_refused_by_name() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    order = common_pb2.Order(order_id="o-1", customer_id="c", paid=common_pb2.Money(amount_minor=1, currency="CNY"))
    order.paid_at.FromDatetime(now + MAX_PAID_AHEAD)
    assert parse_order(Violations(), order, "o", now=now) is not None  # a clock a day behind is tolerated
    order.paid_at.FromDatetime(now + MAX_PAID_AHEAD + timedelta(seconds=1))
    v = Violations()
    assert parse_order(v, order, "o", now=now) is None
    assert [(f.field, "after the server's clock" in f.description) for f in v.found] == [("o.paid_at", True)]


def test_history_from_1970_is_accepted() -> None:
    order = common_pb2.Order(order_id="cdnow-1", customer_id="c", paid=common_pb2.Money(amount_minor=1, currency="USD"))
    order.paid_at.FromDatetime(datetime(1997, 1, 1, tzinfo=UTC))
    assert parse_order(Violations(), order, "o", now=datetime(2026, 12, 3, tzinfo=UTC)) is not None


def test_a_valid_order_parses_the_same_on_both_paths() -> None:
    order = common_pb2.Order(
        order_id="o-1", customer_id="c-1", paid=common_pb2.Money(amount_minor=500, currency="CNY"), channel="h5"
    )
    order.paid_at.FromDatetime(datetime(2026, 3, 1, 23, 59, tzinfo=UTC))
    order.items.add(sku="milk", category="dairy", quantity=2, paid=common_pb2.Money(amount_minor=300))
    fast = plainly_valid_order(order)
    assert fast == checked_order(Violations(), order, "o")
    assert fast is not None
    assert fast.paid_at == datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    assert (fast.order_id, fast.amount_minor, fast.lines[0].quantity) == ("o-1", 500, 2)


def test_an_id_with_a_trailing_newline_is_refused() -> None:
    order = common_pb2.Order(order_id="o-1\n", customer_id="c", paid=common_pb2.Money(amount_minor=1, currency="CNY"))
    order.paid_at.FromDatetime(datetime(2026, 3, 1, tzinfo=UTC))
    v = Violations()
    assert plainly_valid_order(order) is None
    assert parse_order(v, order, "o", now=datetime(2026, 3, 2, tzinfo=UTC)) is None
    assert [f.field for f in v.found] == ["o.order_id"]
