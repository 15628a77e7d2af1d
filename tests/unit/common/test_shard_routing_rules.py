"""The judge of tests/shard_routing.py: which statements stay on one shard when tables are distributed by shop."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import Executable

from services.cycle_delivery import store as cycle_store
from services.cycle_delivery.models import DeliveryRecord, SubscriptionRecord
from services.points import fast
from tests.shard_routing import routing_of

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def problem(sql: str, params: Any = None) -> str:
    return routing_of(sql).problem({} if params is None else params)


def compiled(statement: Executable) -> tuple[str, dict[str, Any]]:
    done = statement.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[attr-defined,no-untyped-call]
    return str(done), dict(done.params)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM lots WHERE shop_id = %(s)s AND id = %(i)s",
        "SELECT * FROM lots WHERE lots.shop_id = %(s)s AND lots.id IN (%(a)s, %(b)s)",
        "SELECT * FROM lots AS l JOIN lot_uses AS u ON u.shop_id = l.shop_id AND u.lot_id = l.id"
        " WHERE l.shop_id = %(s)s",
        "UPDATE lots SET remaining = 0 WHERE shop_id = %(s)s AND id = 3",
        "DELETE FROM idempotency_records WHERE shop_id = %(s)s AND created_at < %(t)s",
        "INSERT INTO entries (shop_id, id) VALUES (%(s)s, 1), (%(s)s, 2)",
        "INSERT INTO customer_summaries (shop_id, customer_id) SELECT orders.shop_id, orders.customer_id FROM orders"
        " WHERE orders.shop_id = %(s)s GROUP BY orders.shop_id, orders.customer_id",
        "SELECT * FROM orders WHERE shop_id IN (%(s)s) AND order_id = ANY(%(ids)s)",
        # SQLAlchemy's batched INSERT ... RETURNING (insertmanyvalues), rows in a VALUES list
        "INSERT INTO entries (shop_id, holder) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES (%(shop_id__0)s::VARCHAR,"
        " %(holder__0)s::VARCHAR, 0), (%(shop_id__1)s::VARCHAR, %(holder__1)s::VARCHAR, 1)) AS imp_sen(p0, p1,"
        " sen_counter) ORDER BY sen_counter RETURNING entries.id",
        "COPY orders (shop_id, order_id) FROM STDIN (FORMAT BINARY)",
        "SELECT * FROM outbox_events WHERE delivered_at IS NULL FOR UPDATE SKIP LOCKED",  # coordinator-local
        "CREATE INDEX ix_x ON lots (expires_at)",  # DDL: Citus propagates it
    ],
)
def test_single_shop_statements_pass(sql: str) -> None:
    params = {"s": "shop-1", "i": 1, "a": 1, "b": 2, "t": NOW, "ids": ["o"], "shop_id__0": "shop-1"}
    assert problem(sql, {**params, "shop_id__1": "shop-1", "holder__0": "x", "holder__1": "y"}) == ""


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT * FROM lots WHERE id = %(i)s", "lots is not filtered on one shop_id"),
        (
            "UPDATE lots SET remaining = t.remaining FROM json_to_recordset(%(c)s::json) AS t (id bigint, remaining"
            " bigint) WHERE lots.id = t.id",
            "lots is not filtered",
        ),
        ("SELECT * FROM lots WHERE shop_id = %(s)s OR id = 1", "lots is not filtered"),
        ("SELECT * FROM lots WHERE shop_id = ANY(%(shops)s)", "lots is not filtered"),
        ("SELECT * FROM lots AS l JOIN lot_uses AS u ON u.lot_id = l.id WHERE l.shop_id = %(s)s", "lot_uses is not"),
        ("DELETE FROM idempotency_records WHERE created_at < %(t)s", "idempotency_records is not filtered"),
        ("INSERT INTO entries (id, holder) VALUES (1, 'x')", "INSERT INTO entries does not name shop_id"),
        ("COPY orders (order_id) FROM STDIN (FORMAT BINARY)", "COPY into orders without shop_id"),
        (
            "WITH m AS (SELECT %(s)s::text AS shop_id) SELECT * FROM (VALUES (1)) AS one (x) LEFT JOIN m ON true"
            " LEFT JOIN LATERAL (SELECT * FROM lots WHERE shop_id = m.shop_id) l ON true",
            "lots is not filtered",
        ),
    ],
)
def test_statements_that_would_fan_out_are_named(sql: str, why: str) -> None:
    assert why in problem(sql, {"s": "shop-1", "i": 1, "c": "[]", "t": NOW, "shops": ["a", "b"]})


def test_two_shops_in_one_statement_are_caught_from_the_parameters() -> None:
    sql = "SELECT * FROM lots AS l JOIN lot_uses AS u ON true WHERE l.shop_id = %(a)s AND u.shop_id = %(b)s"
    assert problem(sql, {"a": "shop-1", "b": "shop-1"}) == ""
    assert "2 values" in problem(sql, {"a": "shop-1", "b": "shop-2"})
    rows = "INSERT INTO entries (shop_id, id) VALUES (%(s0)s, 1), (%(s1)s, 2)"
    assert "2 values" in problem(rows, {"s0": "shop-1", "s1": "shop-2"})
    batched = (
        "INSERT INTO entries (shop_id, holder) SELECT p0::VARCHAR, p1 FROM (VALUES (%(s0)s, 'a', 0), (%(s1)s, 'b', 1))"
        " AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter"
    )
    assert "2 values" in problem(batched, {"s0": "shop-1", "s1": "shop-2"})
    assert problem(batched, {"s0": "shop-1", "s1": "shop-1"}) == ""
    # executemany: each parameter set is its own statement, so a batch may span shops row by row
    assert problem("SELECT * FROM lots WHERE shop_id = %(s)s", [{"s": "a"}, {"s": "b"}]) == ""


def shapes(fields: int) -> list[tuple[bool, ...]]:
    """Each part alone and in pairs, and all parts at once: every join and CTE the statement builder can emit."""
    picked = [
        tuple(i in chosen for i in range(fields))
        for n in (0, 1, 2)
        for chosen in itertools.combinations(range(fields), n)
    ]
    return [*picked, (True,) * fields]


def test_the_hot_paths_statements_are_single_shard_in_every_shape() -> None:
    """The points hot path's prepared statements (fast.py); its parameters are positional ($n)."""
    one_shop = ["shop-1"] * 64
    for bits in shapes(len(fast.ReadShape.__dataclass_fields__)):
        assert problem(fast.read_statement(fast.ReadShape(*bits)).sql, one_shop) == "", bits
    for bits in shapes(len(fast.WriteShape.__dataclass_fields__)):
        assert problem(fast.write_statement(fast.WriteShape(*bits)).sql, one_shop) == "", bits


def test_the_delivery_claim_is_per_shop_and_the_old_cross_shop_claim_is_not() -> None:
    query: Select[Any] = (
        select(DeliveryRecord)
        .join(SubscriptionRecord, cycle_store.SUBSCRIPTION_OF_DELIVERY)
        .where(
            DeliveryRecord.shop_id == "shop-1", SubscriptionRecord.shop_id == "shop-1", *cycle_store.due_conditions(NOW)
        )
        .with_for_update(skip_locked=True, of=DeliveryRecord)
    )
    sql, params = compiled(query)
    assert problem(sql, params) == ""
    across = (
        select(DeliveryRecord)
        .join(SubscriptionRecord, cycle_store.SUBSCRIPTION_OF_DELIVERY)
        .where(*cycle_store.due_conditions(NOW))
        .with_for_update(skip_locked=True, of=DeliveryRecord)
    )
    sql, params = compiled(across)
    assert "deliveries is not filtered on one shop_id" in problem(sql, params)
