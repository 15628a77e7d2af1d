"""The PostgreSQL hot path of the points ledger: two prepared round trips per mutation, no ORM, no lock convoy.

Every order and checkout of a storefront goes through EarnForOrder, SpendPoints,
Redeem and their kin, so on PostgreSQL they skip SQLAlchemy's unit of work:

1. **Read** (`read_statement`): one prepared statement returns everything the
   use case's `MemberQuery` asks for (balances, lots, tier, the order's earning,
   the mall item, ...), the request id's idempotency record, ids reserved for
   the entries it will write, and the member's *version*: the `xmin` of their
   points balance row, which every change to the member rewrites (the member
   lock of `services.points.store` is such a write).
2. The use case runs on a `MemberBook` in Python: the same rules, the same code
   as on every other path (`services.points.book`).
3. **Write** (`write_statement`): one prepared statement with data-modifying
   CTEs writes every row the book changed and the idempotency record, gated on
   a compare-and-set of the member's version, and commits (autocommit).

No lock is held between the two trips, so a hot member or a hot mall item
never queues requests behind a round trip and a Python computation. If the
member changed in between, the compare-and-set writes nothing and the request
runs again; from its second attempt on it takes the member lock first
(BEGIN; SELECT ... FOR UPDATE; read; write; COMMIT), so a member hammered by
many clients still makes progress in arrival order.

Conditions that can only fail inside the write abort the whole statement with
an error instead of writing part of it: a twin request that committed first
(the idempotency primary key: the caller gets the twin's answer), and a mall
item whose stock would go below zero (a CHECK constraint: OUT_OF_STOCK), and
a caller whose deadline passed while the write waited for the member's row
(the write checks the time left against PostgreSQL's own clock once it holds
the row; a late write aborts, so it never commits after its caller gave up and
retried). Under the member lock, a transaction-local `statement_timeout` bounds
every statement instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from google.protobuf.message import Message
from loyalty.points.v1 import points_pb2

from services.common.db import Database
from services.common.deadlines import ensure_caller_waiting, seconds_left
from services.common.errors import DeadlineExceeded, Unavailable
from services.common.idempotency import IdempotencyRecord, replay_record
from services.points.book import (
    BalanceRow,
    EarningState,
    ItemState,
    LotState,
    LotSummary,
    LotUseState,
    MemberBook,
    MemberFacts,
    MemberQuery,
    PendingEarning,
    SpendState,
    TierState,
    TopUpState,
)
from services.points.domain import ACTIVE, PENDING, REFUNDED, Asset
from services.points.mall import out_of_stock
from services.points.store import EARNING_COLUMNS

T = TypeVar("T")
R = TypeVar("R", bound=Message)
ATTEMPTS = 6  # the first optimistic, the rest under the member lock (a retry only follows a lost race)
POINTS, REBATE = int(Asset.POINTS), int(Asset.REBATE)
# A redemption's response holds the item's stock after its own update, known only inside the write:
# the stored response is the rest of it followed by this field, written by SQL (protobuf merges
# concatenated messages). The stock is a 10-byte varint: the longest encoding, valid for every value.
REDEEM_ITEM_FIELD = points_pb2.RedeemResponse.DESCRIPTOR.fields_by_name["item"].number
ITEM_STOCK_FIELD = points_pb2.MallItem.DESCRIPTOR.fields_by_name["stock"].number
STOCK_SUFFIX_HEADER = bytes([REDEEM_ITEM_FIELD << 3 | 2, 11, ITEM_STOCK_FIELD << 3])
VARINT10 = (
    "(SELECT string_agg(set_byte('\\x00'::bytea, 0, (((%s >> (7 * i)) & 127) | CASE WHEN i < 9 THEN 128 ELSE 0 END)"
    "::int), ''::bytea ORDER BY i) FROM generate_series(0, 9) AS i)"
)


class LostRace(Exception):
    """The member changed between the read and the write: nothing was written, run again."""


class CorePathNeeded(Exception):
    """The use case needs something the hot path does not do (another member's book): use the Core path."""


class Statement:
    """A statement written with named parameters, turned once into PostgreSQL's own `$n` form.

    psycopg parses a query's placeholders on every execution when the query is
    longer than 4 KB or has more than 50 parameters, as ours do; a `RawCursor`
    sends the `$n` text as is. The column names of its result are read once.
    """

    PLACEHOLDER = re.compile(r"%\((\w+)\)s")

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        self.sql = self.PLACEHOLDER.sub(number, sql)
        self.names = tuple(names)
        self.columns: tuple[str, ...] | None = None

    def run(self, conn: psycopg.Connection[Any], params: dict[str, Any]) -> psycopg.RawCursor[Any]:
        cursor = psycopg.RawCursor(conn)
        cursor.execute(self.sql, [params[name] for name in self.names], prepare=True)
        return cursor

    def row(self, cursor: psycopg.RawCursor[Any]) -> dict[str, Any]:
        """The one row of a result, by column name."""
        values = cursor.fetchone()
        assert values is not None
        if self.columns is None:
            assert cursor.description is not None
            self.columns = tuple(column.name for column in cursor.description)
        return dict(zip(self.columns, values, strict=True))


SET_TIMEOUT = Statement("SELECT set_config('statement_timeout', %(ms)s, true)")
RESERVE_IDS = Statement("SELECT nextval('entries_id_seq') FROM generate_series(1, %(count)s::int)")


# ---------------------------------------------------------------- the read


@dataclass(frozen=True)
class ReadShape:
    """Which parts a read statement has; one prepared statement per shape."""

    by_order: bool
    lots: bool
    rolling: bool
    earning: bool
    earn_day: bool
    spends: bool
    item: bool
    top_up: bool
    request: bool
    ids: bool

    @staticmethod
    def of(query: MemberQuery, *, request: bool) -> ReadShape:
        return ReadShape(
            by_order=not query.customer_id,
            lots=bool(query.lots_of),
            rolling=query.rolling_since is not None,
            earning=bool(query.order_id),
            earn_day=query.earn_day is not None,
            spends=query.order_spends,
            item=bool(query.item_id),
            top_up=bool(query.top_up_id),
            request=request,
            ids=request,
        )


# The shop is the parameter itself, never m.shop_id: on Citus a constant shop_id is what routes each
# subquery to the member's shard (deploy/citus); the customer may come from the order, so it is m's.
MEMBER = "shop_id = %(shop)s AND {holder} = m.customer_id"
EARNING_FIELDS = EARNING_COLUMNS  # one list of an earning's columns for both paths
LOT_FIELDS = ("id", "asset", "transfer_id", "amount", "remaining", "earned_at", "expires_at")


def _arrays(alias: str, fields: Sequence[str], order: str) -> str:
    return ", ".join(f"array_agg({f} ORDER BY {order}) AS {alias}_{f}" for f in fields)


@lru_cache(maxsize=64)
def read_statement(shape: ReadShape) -> Statement:
    """The read statement of one shape."""
    if shape.by_order:
        member = "SELECT shop_id, customer_id FROM order_earnings WHERE shop_id = %(shop)s AND order_id = %(order)s"
    else:
        member = "SELECT %(shop)s::text AS shop_id, %(customer)s::text AS customer_id"
    columns = [
        "m.customer_id AS customer",
        "b.*",
        "s.expired_points, s.expired_rebate, s.soonest, ss.soonest_points",
        "p.*",
        "t.tier_code, t.since, t.reviewed_at",
    ]
    joins = [
        "LEFT JOIN LATERAL (SELECT array_agg(asset ORDER BY asset) AS balance_assets,"
        " array_agg(balance ORDER BY asset) AS balance_amounts, array_agg(updated_at ORDER BY asset) AS balance_stamps,"
        f" min(xmin::text) FILTER (WHERE asset = {POINTS}) AS version"
        f" FROM balances WHERE {MEMBER.format(holder='holder')}) b ON true",
        "LEFT JOIN LATERAL (SELECT"
        f" sum(remaining) FILTER (WHERE asset = {POINTS} AND expires_at <= %(now)s) AS expired_points,"
        f" sum(remaining) FILTER (WHERE asset = {REBATE} AND expires_at <= %(now)s) AS expired_rebate,"
        f" min(expires_at) FILTER (WHERE asset = {POINTS} AND expires_at > %(now)s) AS soonest"
        f" FROM lots WHERE {MEMBER.format(holder='customer_id')} AND asset IN ({POINTS}, {REBATE})"
        " AND remaining > 0) s ON true",
        "LEFT JOIN LATERAL (SELECT sum(remaining) AS soonest_points FROM lots"
        f" WHERE {MEMBER.format(holder='customer_id')} AND asset = {POINTS} AND remaining > 0"
        " AND expires_at = s.soonest) ss ON true",
        "LEFT JOIN LATERAL (SELECT "
        + _arrays("pending", ("order_id", "earned_points", "paid_minor", "refunded_minor"), "order_id")
        + f" FROM order_earnings WHERE {MEMBER.format(holder='customer_id')} AND state = {PENDING}) p ON true",
        "LEFT JOIN member_tiers t ON t.shop_id = %(shop)s AND t.customer_id = m.customer_id",
    ]
    if shape.lots:
        columns.append("l.*")
        joins.append(
            "LEFT JOIN LATERAL (SELECT "
            + _arrays("lot", LOT_FIELDS, "id")
            + f" FROM lots WHERE {MEMBER.format(holder='customer_id')} AND asset = ANY(%(lot_assets)s::int[])"
            " AND remaining > 0) l ON true"
        )
    if shape.rolling:
        columns.append(
            "(SELECT coalesce(sum(paid_minor - refunded_minor), 0) FROM order_earnings"
            f" WHERE {MEMBER.format(holder='customer_id')} AND state = {ACTIVE} AND paid_at >= %(since)s) AS rolling"
        )
    if shape.earning:
        columns.append(", ".join(f"e.{f} AS earning_{f}" for f in EARNING_FIELDS))
        joins.append("LEFT JOIN order_earnings e ON e.shop_id = %(shop)s AND e.order_id = %(order)s")
    if shape.earn_day:
        others = f"{MEMBER.format(holder='customer_id')} AND order_id <> %(order)s AND state <> {REFUNDED}"
        columns.append(f"NOT EXISTS (SELECT 1 FROM order_earnings WHERE {others}) AS first_order")
        columns.append(
            f"(SELECT coalesce(sum(earned_points), 0) FROM order_earnings WHERE {others}"
            " AND paid_at >= %(day_start)s AND paid_at < %(day_end)s) AS earned_today"
        )
    if shape.spends:
        spent = "SELECT transfer_id FROM order_spends WHERE shop_id = %(shop)s AND order_id = %(order)s"
        used = (
            f"SELECT lot_id FROM lot_uses WHERE shop_id = %(shop)s AND transfer_id IN ({spent}) AND amount > restored"
        )
        columns += ["sp.*", "u.*", "ul.*"]
        joins += [
            "LEFT JOIN LATERAL (SELECT "
            + _arrays("spend", ("transfer_id", "customer_id", "asset", "amount", "restored"), "transfer_id")
            + " FROM order_spends WHERE shop_id = %(shop)s AND order_id = %(order)s) sp ON true",
            "LEFT JOIN LATERAL (SELECT "
            + _arrays("use", ("id", "transfer_id", "lot_id", "amount", "restored"), "id")
            + f" FROM lot_uses WHERE shop_id = %(shop)s AND transfer_id IN ({spent}) AND amount > restored) u ON true",
            "LEFT JOIN LATERAL (SELECT "
            + _arrays("used_lot", LOT_FIELDS, "id")
            + f" FROM lots WHERE shop_id = %(shop)s AND id IN ({used})) ul ON true",
        ]
    if shape.item:
        columns.append(
            "i.item_id, i.name AS item_name, i.cost_points, i.stock, i.starts_at, i.ends_at, i.per_customer_limit,"
            " (SELECT coalesce(sum(quantity), 0) FROM redemptions WHERE shop_id = %(shop)s AND item_id = %(item)s"
            " AND customer_id = m.customer_id) AS item_taken"
        )
        joins.append("LEFT JOIN mall_items i ON i.shop_id = %(shop)s AND i.item_id = %(item)s")
    if shape.top_up:
        columns.append(
            "tu.top_up_id, tu.customer_id AS top_up_customer, tu.transfer_id AS top_up_transfer, tu.paid_minor"
            " AS top_up_paid, tu.bonus_minor AS top_up_bonus, tu.currency AS top_up_currency, tu.refunded_at"
            " AS top_up_refunded_at, tu.created_at AS top_up_created_at"
        )
        joins.append("LEFT JOIN top_ups tu ON tu.shop_id = %(shop)s AND tu.top_up_id = %(top_up)s")
    if shape.request:
        columns.append(
            "r.request_id AS replay_request_id, r.method AS replay_method, r.fingerprint AS replay_fingerprint,"
            " r.response AS replay_response"
        )
        joins.append("LEFT JOIN idempotency_records r ON r.shop_id = %(shop)s AND r.request_id = %(request_id)s")
    if shape.ids:
        columns.append("ARRAY(SELECT nextval('entries_id_seq') FROM generate_series(1, %(ids)s::int)) AS entry_ids")
    return Statement(
        f"WITH m AS ({member}) SELECT {', '.join(columns)} FROM (VALUES (1)) AS one (x) LEFT JOIN m ON true "
        + " ".join(joins)
    )


@lru_cache(maxsize=4)
def lock_statement(by_order: bool) -> Statement:
    """Takes the member lock (the hot path's second and later attempts) before the read."""
    if by_order:
        member = "(SELECT customer_id FROM order_earnings WHERE shop_id = %(shop)s AND order_id = %(order)s)"
    else:
        member = "%(customer)s"
    return Statement(
        f"SELECT 1 FROM balances WHERE shop_id = %(shop)s AND holder = {member} AND asset = {POINTS} FOR UPDATE"
    )


def read_params(query: MemberQuery, *, request_id: str, ids: int) -> dict[str, Any]:
    day_start, day_end = query.earn_day or (None, None)
    return {
        "shop": query.shop_id,
        "customer": query.customer_id,
        "order": query.order_id,
        "now": query.now,
        "lot_assets": sorted(int(a) for a in query.lots_of),
        "since": query.rolling_since,
        "day_start": day_start,
        "day_end": day_end,
        "item": query.item_id,
        "top_up": query.top_up_id,
        "request_id": request_id,
        "ids": ids,
    }


@dataclass
class Snapshot:
    """What one read returned: the member's facts, their version, a stored answer to replay, reserved ids."""

    facts: MemberFacts
    version: str | None
    replay: IdempotencyRecord | None
    entry_ids: list[int]


def _zip(row: dict[str, Any], prefix: str, fields: Sequence[str]) -> list[tuple[Any, ...]]:
    first = row[f"{prefix}_{fields[0]}"]
    if first is None:
        return []
    return list(zip(*(row[f"{prefix}_{f}"] for f in fields), strict=True))


def _lots(row: dict[str, Any], prefix: str) -> list[LotState]:
    return [
        LotState(lot_id, Asset(asset), transfer, amount, remaining, earned_at, expires_at)
        for lot_id, asset, transfer, amount, remaining, earned_at, expires_at in _zip(row, prefix, LOT_FIELDS)
    ]


def snapshot_of(query: MemberQuery, shape: ReadShape, row: dict[str, Any]) -> Snapshot:
    """The facts a read row holds, in the same form the Core path reads them."""
    facts = MemberFacts(
        shop_id=query.shop_id,
        customer_id=row["customer"] or "",
        now=query.now,
        lots_of=query.lots_of,
        rolling_since=query.rolling_since,
    )
    replay = None
    if shape.request and row["replay_method"] is not None:
        replay = IdempotencyRecord(
            shop_id=query.shop_id,
            request_id=row["replay_request_id"],
            method=row["replay_method"],
            fingerprint=row["replay_fingerprint"],
            response=row["replay_response"],
        )
    ids = list(row["entry_ids"]) if shape.ids else []
    if not facts.customer_id:
        return Snapshot(facts, None, replay, ids)
    for asset, amount, stamp in _zip(row, "balance", ("assets", "amounts", "stamps")):
        facts.balances[Asset(asset)] = BalanceRow(amount, stamp)
    facts.summary = LotSummary(
        int(row["expired_points"] or 0),
        row["soonest"],
        int(row["soonest_points"] or 0),
        int(row["expired_rebate"] or 0),
    )
    facts.pending = [
        PendingEarning(*values)
        for values in _zip(row, "pending", ("order_id", "earned_points", "paid_minor", "refunded_minor"))
    ]
    if row["tier_code"] is not None:
        facts.tier = TierState(row["tier_code"], row["since"], row["reviewed_at"])
    if shape.lots:
        facts.lots = _lots(row, "lot")
    if shape.rolling:
        facts.rolling_spend = int(row["rolling"])
    if shape.earning and row["earning_order_id"] is not None:
        facts.earning = EarningState(**{f: row[f"earning_{f}"] for f in EARNING_FIELDS})
    if shape.earn_day:
        facts.first_order, facts.earned_today = bool(row["first_order"]), int(row["earned_today"])
    if shape.spends:
        facts.spends = [
            SpendState(transfer, query.order_id, customer, Asset(asset), amount, restored)
            for transfer, customer, asset, amount, restored in _zip(
                row, "spend", ("transfer_id", "customer_id", "asset", "amount", "restored")
            )
        ]
        facts.lot_uses = [
            LotUseState(*values) for values in _zip(row, "use", ("id", "transfer_id", "lot_id", "amount", "restored"))
        ]
        known = {lot.id for lot in facts.lots}
        facts.lots += [lot for lot in _lots(row, "used_lot") if lot.id not in known]
    if shape.item and row["item_id"] is not None:
        facts.item = ItemState(
            row["item_id"],
            row["item_name"],
            row["cost_points"],
            row["stock"],
            row["starts_at"],
            row["ends_at"],
            row["per_customer_limit"],
            int(row["item_taken"]) if row["per_customer_limit"] else 0,
        )
    if shape.top_up and row["top_up_id"] is not None:
        facts.top_up = TopUpState(
            row["top_up_id"],
            row["top_up_customer"],
            row["top_up_transfer"],
            row["top_up_paid"],
            row["top_up_bonus"],
            row["top_up_currency"],
            row["top_up_refunded_at"],
            row["top_up_created_at"],
        )
    return Snapshot(facts, row["version"], replay, ids)


# ---------------------------------------------------------------- the write


@dataclass(frozen=True)
class WriteShape:
    """Which parts a write statement has; one prepared statement per shape."""

    balances: bool
    entries: bool
    new_lots: bool
    lot_changes: bool
    new_uses: bool
    use_changes: bool
    new_earning: bool
    earning_change: bool
    new_spends: bool
    spend_changes: bool
    tier: bool
    tier_moves: bool
    redemption: bool
    new_top_up: bool
    top_up_change: bool

    @staticmethod
    def of(book: MemberBook) -> WriteShape:
        return WriteShape(
            balances=bool(book.touched - {Asset.POINTS}),
            entries=bool(book.entries),
            new_lots=bool(book.new_lots),
            lot_changes=bool(book.changed_lots),
            new_uses=bool(book.new_lot_uses),
            use_changes=bool(book.changed_lot_uses),
            new_earning=book.earning is not None and book.earning_is_new,
            earning_change=book.earning is not None and book.earning_changed and not book.earning_is_new,
            new_spends=bool(book.new_spends),
            spend_changes=bool(book.changed_spends),
            tier=book.tier is not None and book.tier_changed,
            tier_moves=bool(book.tier_moves),
            redemption=book.redemption is not None,
            new_top_up=book.top_up is not None and book.top_up_is_new,
            top_up_change=book.top_up is not None and book.top_up_changed and not book.top_up_is_new,
        )


GATE = "EXISTS (SELECT FROM won)"
# Row sets travel as one JSON parameter, each read back with its column types: dumping one text is a
# fraction of the cost of dumping a dozen typed arrays, and the statement keeps few parameters.
ROW_SETS = {
    "balances": "asset int, balance bigint, updated_at timestamptz",
    "entries": "id bigint, transfer_id text, holder text, asset int, delta bigint, balance_after bigint, kind text,"
    " reason text, request_id text",
    "new_lots": "asset int, transfer_id text, amount bigint, remaining bigint, expires_at timestamptz",
    "lots": "id bigint, remaining bigint",
    "new_uses": "transfer_id text, lot_id bigint, amount bigint",
    "uses": "id bigint, restored bigint",
    "earning": "order_id text, customer_id text, fingerprint text, paid_at timestamptz, paid_minor bigint,"
    " currency text, earned_points bigint, earned_growth bigint, earned_rebate bigint, breakdown text,"
    " refunded_minor bigint, state int, activates_at timestamptz, activated_at timestamptz, created_at timestamptz",
    "new_spends": "transfer_id text, order_id text, asset int, amount bigint",
    "spends": "transfer_id text, restored bigint",
    "tier": "tier_code text, since timestamptz, reviewed_at timestamptz",
    "moves": "from_code text, to_code text, reason text",
    "top_up": "top_up_id text, transfer_id text, paid_minor bigint, bonus_minor bigint, currency text,"
    " refunded_at timestamptz",
}


def rows(name: str) -> str:
    """The JSON row set `name` of the write's changes, as a typed table."""
    return f"json_to_recordset(%(changes)s::json -> '{name}') AS t ({ROW_SETS[name]})"


@lru_cache(maxsize=128)
def write_statement(shape: WriteShape) -> Statement:
    """Every row a book of this shape changed, plus the idempotency record, gated on the member's version."""
    parts = [
        "kept AS (UPDATE balances SET balance = %(points)s, updated_at = %(points_at)s"
        f" WHERE shop_id = %(shop)s AND holder = %(member)s AND asset = {POINTS} AND xmin = %(version)s::text::xid"
        " RETURNING 1)",
        "created AS (INSERT INTO balances (shop_id, holder, asset, balance, updated_at)"
        f" SELECT %(shop)s, %(member)s, {POINTS}, %(points)s, %(points_at)s WHERE %(version)s::text IS NULL"
        " ON CONFLICT DO NOTHING RETURNING 1)",
        # The member is ours once `kept` or `created` returns its row, after any wait for the row lock;
        # a caller whose time ran out meanwhile gets a division by zero, which aborts every write (22012).
        "won AS (SELECT 1 / (CASE WHEN %(seconds_left)s::float8 IS NULL OR clock_timestamp()"
        " < statement_timestamp() + make_interval(secs => %(seconds_left)s::float8) THEN 1 ELSE 0 END) AS ours"
        " FROM (SELECT 1 FROM kept UNION ALL SELECT 1 FROM created) AS claimed)",
    ]
    if shape.redemption:  # before the record: the record's response ends with the stock this update leaves
        parts.append(
            "stock AS (UPDATE mall_items SET stock = stock - %(quantity)s WHERE shop_id = %(shop)s"
            f" AND item_id = %(item)s AND {GATE} RETURNING stock)"
        )
        parts.append(
            "redemption AS (INSERT INTO redemptions (shop_id, item_id, customer_id, quantity, points, transfer_id,"
            " created_at) SELECT %(shop)s, %(item)s, %(member)s, %(quantity)s, %(redeemed_points)s,"
            f" %(redeem_transfer)s, %(now)s WHERE {GATE})"
        )
        response = "%(response)s || " + VARINT10 % "(SELECT stock FROM stock)"
    else:
        response = "%(response)s"
    parts.append(
        "record AS (INSERT INTO idempotency_records (shop_id, request_id, method, fingerprint, response, created_at)"
        f" SELECT %(shop)s, %(request_id)s, %(method)s, %(fingerprint)s, {response}, %(recorded_at)s WHERE {GATE})"
    )
    if shape.balances:
        parts.append(
            "other_balances AS (INSERT INTO balances (shop_id, holder, asset, balance, updated_at)"
            f" SELECT %(shop)s, %(member)s, asset, balance, updated_at FROM {rows('balances')} WHERE {GATE}"
            " ON CONFLICT (shop_id, holder, asset) DO UPDATE SET balance = excluded.balance,"
            " updated_at = excluded.updated_at)"
        )
    if shape.entries:
        parts.append(
            "entries_in AS (INSERT INTO entries (id, shop_id, transfer_id, holder, asset, delta, balance_after, kind,"
            " reason, request_id, created_at) SELECT id, %(shop)s, transfer_id, holder, asset, delta, balance_after,"
            f" kind, reason, request_id, %(now)s FROM {rows('entries')} WHERE {GATE})"
        )
    if shape.new_lots:
        parts.append(
            "lots_in AS (INSERT INTO lots (shop_id, customer_id, asset, transfer_id, amount, remaining, earned_at,"
            " expires_at) SELECT %(shop)s, %(member)s, asset, transfer_id, amount, remaining, %(now)s, expires_at"
            f" FROM {rows('new_lots')} WHERE {GATE})"
        )
    if shape.lot_changes:
        parts.append(
            f"lots_set AS (UPDATE lots SET remaining = t.remaining FROM {rows('lots')}"
            f" WHERE lots.shop_id = %(shop)s AND lots.id = t.id AND {GATE})"
        )
    if shape.new_uses:
        parts.append(
            "uses_in AS (INSERT INTO lot_uses (shop_id, transfer_id, lot_id, amount, restored)"
            f" SELECT %(shop)s, transfer_id, lot_id, amount, 0 FROM {rows('new_uses')} WHERE {GATE})"
        )
    if shape.use_changes:
        parts.append(
            f"uses_set AS (UPDATE lot_uses SET restored = t.restored FROM {rows('uses')}"
            f" WHERE lot_uses.shop_id = %(shop)s AND lot_uses.id = t.id AND {GATE})"
        )
    if shape.new_earning:
        columns = ", ".join(EARNING_FIELDS)
        parts.append(
            f"earning_in AS (INSERT INTO order_earnings (shop_id, {columns}) SELECT %(shop)s, {columns}"
            f" FROM {rows('earning')} WHERE {GATE})"
        )
    if shape.earning_change:
        parts.append(
            "earning_set AS (UPDATE order_earnings SET state = t.state, activated_at = t.activated_at,"
            f" refunded_minor = t.refunded_minor FROM {rows('earning')} WHERE order_earnings.shop_id = %(shop)s"
            f" AND order_earnings.order_id = t.order_id AND {GATE})"
        )
    if shape.new_spends:
        parts.append(
            "spends_in AS (INSERT INTO order_spends (transfer_id, shop_id, order_id, customer_id, asset, amount,"
            f" restored) SELECT transfer_id, %(shop)s, order_id, %(member)s, asset, amount, 0 FROM {rows('new_spends')}"
            f" WHERE {GATE})"
        )
    if shape.spend_changes:
        parts.append(
            f"spends_set AS (UPDATE order_spends SET restored = t.restored FROM {rows('spends')}"
            f" WHERE order_spends.shop_id = %(shop)s AND order_spends.transfer_id = t.transfer_id AND {GATE})"
        )
    if shape.tier:
        parts.append(
            "tier_set AS (INSERT INTO member_tiers (shop_id, customer_id, tier_code, since, reviewed_at)"
            f" SELECT %(shop)s, %(member)s, tier_code, since, reviewed_at FROM {rows('tier')} WHERE {GATE}"
            " ON CONFLICT (shop_id, customer_id) DO UPDATE SET tier_code = excluded.tier_code, since = excluded.since,"
            " reviewed_at = excluded.reviewed_at)"
        )
    if shape.tier_moves:
        parts.append(
            "tier_moves_in AS (INSERT INTO tier_changes (shop_id, customer_id, from_code, to_code, reason, changed_at)"
            f" SELECT %(shop)s, %(member)s, from_code, to_code, reason, %(now)s FROM {rows('moves')} WHERE {GATE})"
        )
    if shape.new_top_up:
        parts.append(
            "top_up_in AS (INSERT INTO top_ups (shop_id, top_up_id, customer_id, transfer_id, paid_minor, bonus_minor,"
            " currency, refunded_at, created_at) SELECT %(shop)s, top_up_id, %(member)s, transfer_id, paid_minor,"
            f" bonus_minor, currency, NULL, %(now)s FROM {rows('top_up')} WHERE {GATE})"
        )
    if shape.top_up_change:
        parts.append(
            f"top_up_set AS (UPDATE top_ups SET refunded_at = t.refunded_at FROM {rows('top_up')}"
            f" WHERE top_ups.shop_id = %(shop)s AND top_ups.top_up_id = t.top_up_id AND {GATE})"
        )
    returned = "(SELECT stock FROM stock)" if shape.redemption else "NULL::bigint"
    return Statement(f"WITH {', '.join(parts)} SELECT EXISTS (SELECT FROM won), {returned}")


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} in a row set")


def write_params(book: MemberBook, version: str | None, record: dict[str, Any]) -> dict[str, Any]:
    """The write statement's parameters: scalars, and every changed row in one JSON document of row sets."""
    points = book.balances.get(Asset.POINTS, BalanceRow(0, None))
    changes: dict[str, list[dict[str, Any]]] = {
        "balances": [
            {"asset": int(a), "balance": book.balances[a].balance, "updated_at": book.balances[a].updated_at}
            for a in sorted(book.touched - {Asset.POINTS})
        ],
        "entries": [{"id": e.id, **e.columns()} for e in book.entries],
        "new_lots": [
            {
                "asset": int(lot.asset),
                "transfer_id": lot.transfer_id,
                "amount": lot.amount,
                "remaining": lot.remaining,
                "expires_at": lot.expires_at,
            }
            for lot in book.new_lots
        ],
        "lots": [{"id": i, "remaining": book.lots[i].remaining} for i in sorted(book.changed_lots)],
        "new_uses": [{"transfer_id": u.transfer_id, "lot_id": u.lot_id, "amount": u.amount} for u in book.new_lot_uses],
        "uses": [{"id": i, "restored": book.lot_uses[i].restored} for i in sorted(book.changed_lot_uses)],
        "new_spends": [
            {"transfer_id": x.transfer_id, "order_id": x.order_id, "asset": int(x.asset), "amount": x.amount}
            for x in book.new_spends
        ],
        "spends": [{"transfer_id": t, "restored": book.spends[t].restored} for t in sorted(book.changed_spends)],
        "moves": [{"from_code": m.from_code, "to_code": m.to_code, "reason": m.reason} for m in book.tier_moves],
    }
    if book.earning is not None:
        changes["earning"] = [{f: getattr(book.earning, f) for f in EARNING_FIELDS}]
    if book.tier is not None:
        changes["tier"] = [
            {"tier_code": book.tier.code, "since": book.tier.since, "reviewed_at": book.tier.reviewed_at}
        ]
    if book.top_up is not None:
        t = book.top_up
        changes["top_up"] = [
            {
                "top_up_id": t.top_up_id,
                "transfer_id": t.transfer_id,
                "paid_minor": t.paid_minor,
                "bonus_minor": t.bonus_minor,
                "currency": t.currency,
                "refunded_at": t.refunded_at,
            }
        ]
    params: dict[str, Any] = {
        "shop": book.shop_id,
        "member": book.customer_id,
        "version": version,
        "points": points.balance,
        "points_at": points.updated_at,
        "now": book.now,
        "request_id": record["request_id"],
        "method": record["method"],
        "fingerprint": record["fingerprint"],
        "response": record["response"],
        "recorded_at": record["created_at"],
        "changes": json.dumps({k: v for k, v in changes.items() if v}, default=_json_value),
    }
    if book.redemption is not None:
        r = book.redemption
        params.update(
            item=r.item_id,
            quantity=r.quantity,
            redeemed_points=r.points,
            redeem_transfer=r.transfer_id,
            response=record["response"] + STOCK_SUFFIX_HEADER,
        )
    return params


# ---------------------------------------------------------------- running a use case


Plan = Callable[[MemberBook, Callable[[str], MemberBook]], T]


def _no_other_books(customer_id: str) -> MemberBook:
    raise CorePathNeeded(f"the use case needs the book of member {customer_id} too")


def _timeout_ms() -> int | None:
    """The caller's time left as a statement timeout; None when it waits for ever."""
    left = seconds_left()
    return None if left is None else max(1, int(left * 1000))


class HotPath:
    """Member use cases on PostgreSQL in two prepared round trips (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, query: MemberQuery) -> MemberFacts:
        shape = ReadShape.of(query, request=False)
        statement = read_statement(shape)
        with _database_errors(), self.db.autocommit_pool.connection() as conn:
            row = statement.row(statement.run(conn, read_params(query, request_id="", ids=0)))
            return snapshot_of(query, shape, row).facts

    def mutate(
        self,
        query: MemberQuery,
        request_id: str,
        plan: Plan[T],
        respond: Callable[[MemberBook, T], Message],
        record: Callable[[Message], dict[str, Any]],
        replay: Callable[[IdempotencyRecord], Message],
    ) -> Message:
        """Runs `plan` on the member's book and writes it, optimistically first, then under the member lock."""
        shape = ReadShape.of(query, request=True)
        read = read_statement(shape)
        params = read_params(query, request_id=request_id, ids=query.entry_ids)
        for attempt in range(ATTEMPTS):
            locked = attempt > 0
            ensure_caller_waiting()
            try:
                with _database_errors(), self.db.autocommit_pool.connection() as conn:
                    snapshot = self._read(conn, read, params, query, shape, locked=locked)
                    if snapshot.replay is not None:
                        self._end(conn, commit=False)
                        return replay(snapshot.replay)
                    book = MemberBook(snapshot.facts)
                    outcome = plan(book, _no_other_books)
                    ids = snapshot.entry_ids
                    if len(ids) < len(book.entries):
                        ids += self._reserve(conn, len(book.entries) - len(ids))
                    book.assign_entry_ids(ids)
                    response = respond(book, outcome)
                    ensure_caller_waiting()
                    stock = self._write(conn, book, snapshot.version, record(response), locked=locked)
                if book.item is not None and stock is not None:
                    book.item.stock = stock
                    return respond(book, outcome)
                return response
            except LostRace:
                continue
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == "idempotency_records_pkey":
                    continue  # a twin with this request id committed first: the next read replays its answer
                continue  # a concurrent request inserted a row this one inserts too: the next read sees it
        raise Unavailable("the member changed under every attempt; retry with the same request_id", reason="CONTENTION")

    def _read(
        self,
        conn: psycopg.Connection[Any],
        statement: Statement,
        params: dict[str, Any],
        query: MemberQuery,
        shape: ReadShape,
        *,
        locked: bool,
    ) -> Snapshot:
        """The member's snapshot; under the member lock (taken first, in the same trip) when `locked`."""
        if not locked:
            return snapshot_of(query, shape, statement.row(statement.run(conn, params)))
        timeout = _timeout_ms()
        with conn.pipeline():
            conn.execute("BEGIN")
            if timeout is not None:
                SET_TIMEOUT.run(conn, {"ms": str(timeout)})
            lock_statement(shape.by_order).run(conn, params)
            cursor = statement.run(conn, params)
        return snapshot_of(query, shape, statement.row(cursor))

    def _reserve(self, conn: psycopg.Connection[Any], count: int) -> list[int]:
        """More entry ids than the read reserved (a debit that first expires many due lots)."""
        return [int(value) for (value,) in RESERVE_IDS.run(conn, {"count": count}).fetchall()]

    def _write(
        self,
        conn: psycopg.Connection[Any],
        book: MemberBook,
        version: str | None,
        record: dict[str, Any],
        *,
        locked: bool,
    ) -> int | None:
        """Writes the book; the new stock of a redeemed item, if any. LostRace when the member changed."""
        statement = write_statement(WriteShape.of(book))
        params = write_params(book, version, record)
        params["seconds_left"] = None if locked else seconds_left()  # under the lock: statement_timeout, set with BEGIN
        try:
            if not locked:
                cursor = statement.run(conn, params)
            else:
                with conn.pipeline():
                    cursor = statement.run(conn, params)
                    conn.execute("COMMIT")
        except psycopg.errors.DivisionByZero as exc:  # the `won` gate: the caller's deadline passed
            raise _deadline_passed() from exc
        except psycopg.errors.CheckViolation as exc:
            if book.redemption is not None and exc.diag.constraint_name == "ck_mall_items_stock_not_negative":
                raise out_of_stock(book.redemption.item_id, book.redemption.quantity) from exc
            raise
        values = cursor.fetchone()
        assert values is not None
        won, stock = values
        if not won:
            raise LostRace()
        return None if stock is None else int(stock)

    def _end(self, conn: psycopg.Connection[Any], *, commit: bool) -> None:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("COMMIT" if commit else "ROLLBACK")


def _deadline_passed() -> DeadlineExceeded:
    return DeadlineExceeded(
        "the caller's deadline passed before this request could commit; nothing was changed, "
        "retry with the same request_id",
        reason="DEADLINE_PASSED",
    )


@contextmanager
def _database_errors() -> Iterator[None]:
    """psycopg's errors as the statuses the guard answers with (SQLAlchemy's are mapped there already)."""
    try:
        yield
    except psycopg.errors.QueryCanceled as exc:
        raise _deadline_passed() from exc
    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
        raise LostRace() from None
    except psycopg.OperationalError as exc:
        raise Unavailable(
            "database unavailable, retry with the same request_id", reason="DATABASE_UNAVAILABLE"
        ) from exc


__all__ = ["CorePathNeeded", "HotPath", "LostRace", "replay_record"]
