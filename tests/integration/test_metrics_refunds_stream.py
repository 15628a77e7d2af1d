"""Refunds and bulk streams through gRPC."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2 as m
from loyalty.metrics.v1 import metrics_pb2_grpc
from sqlalchemy import select

from services.metrics.models import Order
from tests.integration.test_metrics_definitions_rpc import d, rate_request
from tests.integration.test_metrics_rpc import order
from tests.support import Stack, bearer, details

A = bearer("admin")
PAID = datetime(2026, 1, 10, 4, tzinfo=UTC)


def metrics(stack: Stack) -> metrics_pb2_grpc.MetricsServiceStub:
    return metrics_pb2_grpc.MetricsServiceStub(stack.channel("metrics"))


def refund(refund_id: str, order_id: str, amount: int, currency: str = "CNY") -> m.Refund:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(2026, 1, 12, tzinfo=UTC))
    return m.Refund(
        refund_id=refund_id,
        order_id=order_id,
        refunded_at=stamp,
        amount=common_pb2.Money(amount_minor=amount, currency=currency),
    )


def refunds(stack: Stack, shop: str, request_id: str, *items: m.Refund) -> m.RecordRefundsResponse:
    response: m.RecordRefundsResponse = metrics(stack).RecordRefunds(
        m.RecordRefundsRequest(shop_id=shop, request_id=request_id, refunds=list(items)), metadata=A
    )
    return response


def seed(stack: Stack, shop: str) -> None:
    metrics(stack).RecordOrders(
        m.RecordOrdersRequest(
            shop_id=shop,
            request_id="seed",
            orders=[
                order("o1", "X", PAID, 1000),
                order("o2", "X", datetime(2026, 1, 20, 4, tzinfo=UTC), 500),
                order("o3", "Y", PAID, 300),
            ],
        ),
        metadata=A,
    )


def total(stack: Stack, shop: str, customer: str) -> tuple[int, int]:
    s = (
        metrics(stack)
        .GetCustomerSummary(m.GetCustomerSummaryRequest(shop_id=shop, customer_id=customer), metadata=A)
        .summary
    )
    return s.order_count, s.total_paid.amount_minor


def test_partial_then_full_refund(stack: Stack, uid: str) -> None:
    shop = f"rf-{uid}"
    seed(stack, shop)
    assert refunds(stack, shop, "r1", refund("rf1", "o1", 200)).applied == 1
    assert total(stack, shop, "X") == (2, 1300)
    refunds(stack, shop, "r2", refund("rf2", "o2", 500))  # o2 fully refunded: it leaves the summary
    assert total(stack, shop, "X") == (1, 800)
    january = {"period_start": d(date(2026, 1, 1)), "period_end": d(date(2026, 1, 31))}
    plain = (
        metrics(stack)
        .GetRepurchaseRate(rate_request(shop_id=shop, basis=m.REPURCHASE_BASIS_CUSTOMER, **january), metadata=A)
        .rate
    )
    with_refunded = (
        metrics(stack)
        .GetRepurchaseRate(
            rate_request(shop_id=shop, basis=m.REPURCHASE_BASIS_CUSTOMER, include_refunded=True, **january),
            metadata=A,
        )
        .rate
    )
    assert (plain.numerator, plain.denominator) == (0, 2)
    assert (with_refunded.numerator, with_refunded.denominator) == (1, 2)


def test_refund_replay_and_conflict(stack: Stack, uid: str) -> None:
    shop = f"rf-{uid}"
    seed(stack, shop)
    refunds(stack, shop, "r1", refund("rf1", "o1", 100))
    assert refunds(stack, shop, "r2", refund("rf1", "o1", 100)).duplicates == 1  # same refund, new batch
    assert total(stack, shop, "X") == (2, 1400)
    with pytest.raises(grpc.RpcError) as caught:
        refunds(stack, shop, "r3", refund("rf1", "o1", 150))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("items", "code", "text"),
    [
        ([refund("a", "o3", 301)], grpc.StatusCode.FAILED_PRECONDITION, "exceed"),
        ([refund("a", "o3", 200), refund("b", "o3", 101)], grpc.StatusCode.FAILED_PRECONDITION, "exceed"),
        ([refund("a", "nope", 1)], grpc.StatusCode.NOT_FOUND, "nope"),
        ([refund("a", "o3", 1, "USD")], grpc.StatusCode.FAILED_PRECONDITION, "USD"),
        ([refund("a", "o3", 0)], grpc.StatusCode.INVALID_ARGUMENT, "amount_minor"),
        ([refund("a", "o3", 1), refund("a", "o3", 2)], grpc.StatusCode.INVALID_ARGUMENT, "twice"),
    ],
)
def test_bad_refunds_change_nothing(
    stack: Stack, uid: str, items: list[m.Refund], code: grpc.StatusCode, text: str
) -> None:
    shop = f"rf-{uid}"
    seed(stack, shop)
    with pytest.raises(grpc.RpcError) as caught:
        refunds(stack, shop, "bad", *items)
    assert caught.value.code() == code
    assert text in details(caught.value)
    assert total(stack, shop, "Y") == (1, 300)


def test_concurrent_partial_refunds_never_exceed_the_payment(stack: Stack, uid: str) -> None:
    shop = f"rf-{uid}"
    seed(stack, shop)

    def attempt(i: int) -> bool:
        try:
            refunds(stack, shop, f"c{i}", refund(f"rf{i}", "o1", 70))
            return True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, details(exc)
            return False

    with ThreadPoolExecutor(8) as pool:
        applied = sum(pool.map(attempt, range(20)))
    assert applied == 14  # 14 × 70 = 980 ≤ 1000 < 15 × 70
    assert total(stack, shop, "X") == (2, 1000 - 980 + 500)


def chunk(request_id: str, shop: str, *orders: common_pb2.Order) -> m.StreamOrdersRequest:
    return m.StreamOrdersRequest(shop_id=shop, request_id=request_id, orders=list(orders))


def test_stream_totals_and_resend_is_all_duplicates(stack: Stack, uid: str) -> None:
    shop = f"st-{uid}"
    chunks = [
        chunk(f"c{c}", shop, *[order(f"o{c}-{i}", f"cust{i % 7}", PAID, 10) for i in range(300)]) for c in range(4)
    ]
    first = metrics(stack).StreamOrders(iter(chunks), metadata=A)
    assert (first.chunks, first.inserted, first.duplicates) == (4, 1200, 0)
    again = metrics(stack).StreamOrders(iter(chunks), metadata=A)
    assert (again.chunks, again.inserted, again.duplicates) == (4, 1200, 0)  # chunk replay: the first answers
    renamed = [chunk(f"new{c.request_id}", shop, *c.orders) for c in chunks]
    assert metrics(stack).StreamOrders(iter(renamed), metadata=A).duplicates == 1200


def test_a_bad_chunk_stops_the_stream_and_keeps_what_was_committed(stack: Stack, uid: str) -> None:
    shop = f"st-{uid}"
    good = chunk("g", shop, order("o1", "c", PAID, 10))
    bad = chunk("b", shop, order("o2", "c", PAID, -10))
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).StreamOrders(iter([good, bad, chunk("never", shop, order("o3", "c", PAID, 1))]), metadata=A)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert total(stack, shop, "c") == (1, 10)


def test_a_stream_may_not_switch_shops(stack: Stack, uid: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).StreamOrders(
            iter(
                [chunk("a", f"s1-{uid}", order("o1", "c", PAID, 1)), chunk("b", f"s2-{uid}", order("o2", "c", PAID, 1))]
            ),
            metadata=A,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_storm_of_duplicates_changes_nothing(stack: Stack, uid: str) -> None:
    """A bounded stand-in for the issue's 1 M duplicates: 20 chunks x 1,000 copies of 50 recorded orders."""
    shop = f"dup-{uid}"
    originals = [order(f"o{i}", f"c{i % 10}", PAID, 100 + i) for i in range(50)]
    metrics(stack).RecordOrders(m.RecordOrdersRequest(shop_id=shop, request_id="first", orders=originals), metadata=A)
    before = [total(stack, shop, f"c{k}") for k in range(10)]
    storm = [chunk(f"storm{c}", shop, *(originals[i % 50] for i in range(1000))) for c in range(20)]
    result = metrics(stack).StreamOrders(iter(storm), metadata=A)
    assert (result.chunks, result.inserted, result.duplicates, result.corrected) == (20, 0, 20_000, 0)
    assert [total(stack, shop, f"c{k}") for k in range(10)] == before


def stored_order_ids(stack: Stack, shop: str) -> set[str]:
    db = stack.services["metrics"].db
    return db.run(lambda s: set(s.scalars(select(Order.order_id).where(Order.shop_id == shop))))


def test_an_order_refused_after_the_chunk_began_streaming_names_its_field_and_writes_nothing(
    stack: Stack, uid: str
) -> None:
    """Orders are parsed while the ones before them (in id order) already stream into the database."""
    shop = f"late-{uid}"
    good = [order(f"o{i:03d}", f"c{i % 9}", PAID, 10 + i) for i in range(300)]
    bad = order("o999", "c1", PAID, -5)  # last in id order, first in the request
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).StreamOrders(iter([chunk("late", shop, bad, *good)]), metadata=A)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "orders[0].paid.amount_minor" in details(caught.value)  # the index in the request, not in id order
    assert stored_order_ids(stack, shop) == set()
    result = metrics(stack).StreamOrders(iter([chunk("late", shop, *good)]), metadata=A)  # same id, now valid
    assert result.inserted == 300
    assert stored_order_ids(stack, shop) == {o.order_id for o in good}


def test_a_currency_change_inside_a_streaming_chunk_writes_nothing(stack: Stack, uid: str) -> None:
    shop = f"cur-{uid}"
    orders = [order(f"o{i:03d}", "c", PAID, 10) for i in range(200)] + [order("o999", "c", PAID, 10, "USD")]
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).StreamOrders(iter([chunk("mixed", shop, *orders)]), metadata=A)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "records orders in CNY; got USD" in details(caught.value)
    assert stored_order_ids(stack, shop) == set()


def test_a_chunk_mixing_new_known_changed_and_repeated_orders_counts_each(stack: Stack, uid: str) -> None:
    """The chunk's COPY fails on the known id and the chunk is classified order by order, in one transaction."""
    shop = f"mix-{uid}"
    metrics(stack).StreamOrders(
        iter([chunk("a", shop, order("o2", "x", PAID, 10), order("o4", "x", PAID, 40))]), metadata=A
    )
    mixed = chunk(
        "b",
        shop,
        order("o1", "y", PAID, 1),  # new
        order("o2", "x", PAID, 10),  # duplicate
        order("o3", "y", PAID, 3),  # new, then repeated below
        order("o4", "y", PAID, 44),  # correction: moved to y, amount changed
        order("o3", "y", PAID, 3),
    )
    result = metrics(stack).StreamOrders(iter([mixed]), metadata=A)
    assert (result.inserted, result.duplicates, result.corrected) == (2, 2, 1)
    assert total(stack, shop, "x") == (1, 10)
    assert total(stack, shop, "y") == (3, 48)


def test_chunks_received_before_a_stream_fails_are_kept(stack: Stack, uid: str) -> None:
    """Chunks are committed in groups; a failure while a group is gathered still applies what came before it."""
    shop = f"gf-{uid}"
    first = [chunk(f"c{n}", shop, order(f"o{n}", "c", PAID, 10)) for n in range(2)]
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).StreamOrders(iter([*first, chunk("x", f"other-{uid}", order("o9", "c", PAID, 1))]), metadata=A)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_order_ids(stack, shop) == {"o0", "o1"}


def test_chunks_committed_together_count_as_they_would_one_by_one(stack: Stack, uid: str) -> None:
    shop = f"gt-{uid}"
    chunks = [
        chunk(f"c{n}", shop, *[order(f"o{n}-{i}", f"k{i % 5}", PAID, 10 + i) for i in range(50)]) for n in range(9)
    ]
    first = metrics(stack).StreamOrders(iter(chunks), metadata=A)
    assert (first.chunks, first.inserted, first.duplicates) == (9, 450, 0)
    repeat = chunk("again", shop, order("o0-0", "k0", PAID, 10), order("o0-1", "k1", PAID, 99))  # dup, correction
    new = chunk("new", shop, order("p1", "k0", PAID, 5))
    twice = chunk("twice", shop, order("p1", "k0", PAID, 5))  # the order the chunk before recorded
    mixed = metrics(stack).StreamOrders(iter([new, repeat, twice]), metadata=A)
    assert (mixed.chunks, mixed.inserted, mixed.duplicates, mixed.corrected) == (3, 1, 2, 1)
    replayed = metrics(stack).StreamOrders(
        iter([*chunks[:2], chunk("fresh", shop, order("p2", "k2", PAID, 7))]), metadata=A
    )
    assert (replayed.chunks, replayed.inserted, replayed.duplicates) == (3, 101, 0)  # two replies replayed, one new
    assert total(stack, shop, "k1") == (90, sum(10 + i for i in range(1, 50, 5)) * 9 - 11 + 99)


@pytest.mark.parametrize("size", [0, 1001])
def test_a_chunk_of_no_orders_or_too_many_is_refused_after_the_chunks_before_it(
    stack: Stack, uid: str, size: int
) -> None:
    shop = f"sz-{uid}"
    bad = chunk("bad", shop, *[order(f"b{i}", "c", PAID, 1) for i in range(size)])
    with pytest.raises(grpc.RpcError) as caught:
        metrics(stack).StreamOrders(iter([chunk("good", shop, order("o1", "c", PAID, 10)), bad]), metadata=A)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must hold 1..1000 orders" in details(caught.value)
    assert stored_order_ids(stack, shop) == {"o1"}
