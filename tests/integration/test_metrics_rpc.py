"""Metrics ingestion through gRPC: duplicates, corrections, shop-local days, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.support import Stack, bearer, details

W = bearer("writer")


def order(order_id: str, customer: str, paid_at: datetime, amount: int, currency: str = "CNY") -> common_pb2.Order:
    stamp = Timestamp()
    stamp.FromDatetime(paid_at)
    return common_pb2.Order(
        order_id=order_id,
        customer_id=customer,
        paid_at=stamp,
        paid=common_pb2.Money(amount_minor=amount, currency=currency),
    )


def record(
    stack: Stack, request_id: str, *orders: common_pb2.Order, shop_id: str = "shop-a"
) -> metrics_pb2.RecordOrdersResponse:
    stub = stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub)
    response: metrics_pb2.RecordOrdersResponse = stub.RecordOrders(
        metrics_pb2.RecordOrdersRequest(shop_id=shop_id, request_id=request_id, orders=list(orders)), metadata=W
    )
    return response


def summary(stack: Stack, customer: str) -> metrics_pb2.CustomerSummary:
    stub = stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub)
    found: metrics_pb2.CustomerSummary = stub.GetCustomerSummary(
        metrics_pb2.GetCustomerSummaryRequest(shop_id="shop-a", customer_id=customer), metadata=W
    ).summary
    return found


def test_orders_on_one_shanghai_day_count_as_one_purchase_day(stack: Stack, uid: str) -> None:
    # 16:30 UTC on the 1st is 00:30 on the 2nd in Shanghai; 15:59 UTC is 23:59 on the 1st.
    result = record(
        stack,
        f"{uid}-b",
        order(f"{uid}-1", uid, datetime(2026, 3, 1, 15, 59, tzinfo=UTC), 1000),
        order(f"{uid}-2", uid, datetime(2026, 3, 1, 16, 30, tzinfo=UTC), 2000),
        order(f"{uid}-3", uid, datetime(2026, 3, 2, 2, 0, tzinfo=UTC), 500),
    )
    assert (result.inserted, result.duplicates, result.corrected) == (3, 0, 0)
    s = summary(stack, uid)
    assert (s.order_count, s.purchase_days, s.total_paid.amount_minor, s.total_paid.currency) == (3, 2, 3500, "CNY")
    assert s.first_order_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, 15, 59, tzinfo=UTC)


def test_same_order_again_is_duplicate_and_changed_order_is_correction(stack: Stack, uid: str) -> None:
    first = order(f"{uid}-1", uid, datetime(2026, 3, 1, 4, tzinfo=UTC), 1000)
    record(stack, f"{uid}-a", first)
    again = record(stack, f"{uid}-b", first)
    assert (again.inserted, again.duplicates) == (0, 1)
    changed = record(stack, f"{uid}-c", order(f"{uid}-1", uid, datetime(2026, 3, 1, 4, tzinfo=UTC), 800))
    assert changed.corrected == 1
    assert summary(stack, uid).total_paid.amount_minor == 800


def test_correction_moving_an_order_to_another_customer_updates_both(stack: Stack, uid: str) -> None:
    record(
        stack,
        f"{uid}-a",
        order(f"{uid}-1", f"{uid}-x", datetime(2026, 3, 1, 4, tzinfo=UTC), 1000),
        order(f"{uid}-2", f"{uid}-x", datetime(2026, 3, 2, 4, tzinfo=UTC), 1000),
    )
    record(stack, f"{uid}-b", order(f"{uid}-2", f"{uid}-y", datetime(2026, 3, 2, 4, tzinfo=UTC), 1000))
    assert summary(stack, f"{uid}-x").order_count == 1
    assert summary(stack, f"{uid}-y").order_count == 1


def test_unknown_customer_summary_is_not_found(stack: Stack, uid: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        summary(stack, uid)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_other_currency_than_the_shops_is_failed_precondition_and_nothing_written(stack: Stack, uid: str) -> None:
    shop = f"shop-{uid}"
    admin = bearer("admin")
    stub = stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub)
    stub.RecordOrders(
        metrics_pb2.RecordOrdersRequest(
            shop_id=shop, request_id="a", orders=[order("o1", "c", datetime(2026, 3, 1, tzinfo=UTC), 100)]
        ),
        metadata=admin,
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordOrders(
            metrics_pb2.RecordOrdersRequest(
                shop_id=shop,
                request_id="b",
                orders=[
                    order("o2", "c", datetime(2026, 3, 2, tzinfo=UTC), 100),
                    order("o3", "c", datetime(2026, 3, 2, tzinfo=UTC), 100, "USD"),
                ],
            ),
            metadata=admin,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = stub.GetCustomerSummary(
        metrics_pb2.GetCustomerSummaryRequest(shop_id=shop, customer_id="c"), metadata=admin
    ).summary
    assert found.order_count == 1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: setattr(o.paid, "amount_minor", -1), "orders[0].paid.amount_minor"),
        (lambda o: setattr(o.paid, "currency", "XXX"), "orders[0].paid.currency"),
        (lambda o: setattr(o.paid, "currency", ""), "orders[0].paid.currency"),
        (lambda o: setattr(o, "customer_id", ""), "orders[0].customer_id"),
        (lambda o: o.paid_at.FromDatetime(datetime(1, 1, 1, tzinfo=UTC)), "orders[0].paid_at"),
        (lambda o: o.paid_at.FromDatetime(datetime(9999, 12, 31, tzinfo=UTC)), "orders[0].paid_at"),
        (lambda o: o.ClearField("paid_at"), "orders[0].paid_at"),
        (lambda o: o.paid_at.FromDatetime(datetime.now(UTC) + timedelta(days=30)), "orders[0].paid_at"),
        (lambda o: o.items.add(sku="a", quantity=0, paid=common_pb2.Money(amount_minor=1)), "orders[0].items[0]"),
        (lambda o: o.items.add(sku="a", quantity=1, paid=common_pb2.Money(amount_minor=10**6)), "orders[0].items"),
    ],
)
def test_bad_orders_are_invalid_argument_and_nothing_is_written(
    stack: Stack, uid: str, mutate: object, field: str
) -> None:
    good = order(f"{uid}-ok", uid, datetime(2026, 3, 1, tzinfo=UTC), 100)
    bad = order(f"{uid}-bad", uid, datetime(2026, 3, 1, tzinfo=UTC), 100)
    mutate(bad)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as caught:
        record(stack, uid, good, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field.replace("orders[0]", "orders[1]", 1) in details(caught.value)
    with pytest.raises(grpc.RpcError):
        summary(stack, uid)


def test_history_from_1997_is_accepted_and_a_future_chunk_is_refused_in_a_stream(stack: Stack, uid: str) -> None:
    assert record(stack, uid, order(f"{uid}-cdnow", uid, datetime(1997, 1, 1, tzinfo=UTC), 100)).inserted == 1
    assert summary(stack, uid).order_count == 1
    stub = stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub)
    ahead = order(f"{uid}-ahead", uid, datetime.now(UTC) + timedelta(days=30), 100)
    chunk = metrics_pb2.StreamOrdersRequest(shop_id="shop-a", request_id=f"{uid}-s", orders=[ahead])
    with pytest.raises(grpc.RpcError) as caught:
        stub.StreamOrders(iter([chunk]), metadata=W)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "orders[0].paid_at: is more than 24 h after the server's clock" in details(caught.value)
    assert summary(stack, uid).order_count == 1


def test_empty_and_oversized_batches_are_invalid(stack: Stack, uid: str) -> None:
    for orders in ([], [order(f"{uid}-{i}", uid, datetime(2026, 3, 1, tzinfo=UTC), 1) for i in range(1001)]):
        with pytest.raises(grpc.RpcError) as caught:
            record(stack, uid, *orders)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_batches_with_the_same_new_orders_count_each_order_once(stack: Stack, uid: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # The shop must exist already: creating its row would serialise the batches.
    record(stack, f"{uid}-seed", order(f"{uid}-seed", f"{uid}-seed", datetime(2026, 4, 1, tzinfo=UTC), 100))
    # Large overlapping batches so the transactions really run at the same time.
    count = 400
    orders = [order(f"{uid}-{i}", f"{uid}-c{i % 3}", datetime(2026, 4, 1, tzinfo=UTC), 100) for i in range(count)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda n: record(stack, f"{uid}-batch{n}", *orders), range(6)))
    assert sum(r.inserted for r in results) == count
    assert sum(r.duplicates for r in results) == count * 5
    assert sum(summary(stack, f"{uid}-c{k}").order_count for k in range(3)) == count


def test_a_new_shop_takes_the_currency_of_its_first_order(stack: Stack, uid: str) -> None:
    shop = f"cur-{uid}"
    stub = stack.stub("metrics", metrics_pb2_grpc.MetricsServiceStub)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordOrders(
            metrics_pb2.RecordOrdersRequest(
                shop_id=shop,
                request_id="a",
                orders=[
                    order("o1", "c", datetime(2026, 3, 1, tzinfo=UTC), 100, "USD"),
                    order("o2", "c", datetime(2026, 3, 1, tzinfo=UTC), 100, "CNY"),
                ],
            ),
            metadata=bearer("admin"),
        )
    assert "records orders in USD; got CNY" in details(caught.value)


def test_concurrent_batches_for_one_customer_keep_an_exact_summary(stack: Stack, uid: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    record(stack, f"{uid}-seed", order(f"{uid}-seed", uid, datetime(2026, 4, 1, tzinfo=UTC), 1))
    batches = [
        [order(f"{uid}-{b}-{i}", uid, datetime(2026, 4, 2, tzinfo=UTC), 10 + b) for i in range(5)] for b in range(40)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: record(stack, f"{uid}-b{b}", *batches[b]), range(len(batches))))
    s = summary(stack, uid)
    assert s.order_count == 1 + 5 * 40
    assert s.total_paid.amount_minor == 1 + sum(5 * (10 + b) for b in range(40))
