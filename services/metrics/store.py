"""Metrics queries and use cases; each function runs inside the caller's transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import (
    Date,
    any_,
    case,
    cast,
    delete,
    distinct,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, InternalError
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import ColumnElement, SQLColumnExpression

from services.common.clock import local_date
from services.common.db import (
    bulk_insert,
    insert_ignoring_conflicts,
    lock_keys,
    number_new_record,
    on_postgres,
    one_of,
)
from services.common.erasure import anonymous_id
from services.common.errors import FailedPrecondition, NotFound
from services.common.idempotency import is_repeat
from services.common.orders import PaidOrder
from services.metrics import domain
from services.metrics.definitions import Purchase
from services.metrics.fast import OrderColumns
from services.metrics.models import (
    ClvModelRecord,
    CustomerSummary,
    FeedbackRecord,
    Order,
    Refund,
    Shop,
    StaleSummary,
    StaleSummaryBatch,
)

# The SQL twins of `definitions.is_fully_refunded` and `definitions.net_amount`.
COUNTS = ~((Order.amount_minor > 0) & (Order.refunded_minor >= Order.amount_minor))
NET_AMOUNT = case((Order.refunded_minor >= Order.amount_minor, 0), else_=Order.amount_minor - Order.refunded_minor)

SETTLE_BATCH = 1000  # customers per settling transaction: bounded advisory locks and statement size
CONCURRENT_INSERT_ATTEMPTS = 8


@dataclass(frozen=True)
class BulkChunk:
    """A StreamOrders chunk whose summaries are deferred: its request id and when it arrived."""

    request_id: str
    received_at: datetime


class CurrencyMismatch(FailedPrecondition):
    reason = "CURRENCY_MISMATCH"


def shop_facts(session: Session, *, shop_id: str, currency: str, default_zone: str) -> Shop:
    """The shop's row, share-locked: its zone cannot change until the orders dated with it commit.

    The first order fixes a shop's currency, unless SetShopSettings did.
    """
    shop = locked_shop(session, shop_id, share=True)
    if shop is None:
        insert_ignoring_conflicts(
            session, Shop, [{"shop_id": shop_id, "currency": currency, "time_zone": default_zone}]
        )
        shop = locked_shop(session, shop_id, share=True)
        assert shop is not None
    if not shop.currency:  # a shop that set its zone before its first order
        shop.currency = currency
    if shop.currency != currency:
        raise currency_mismatch(shop, currency)
    return shop


def locked_shop(session: Session, shop_id: str, *, share: bool) -> Shop | None:
    """The shop's row, FOR SHARE (recording what its zone dates) or FOR UPDATE (changing its settings)."""
    return session.get(Shop, shop_id, with_for_update={"read": share}, populate_existing=True)


def currency_mismatch(shop: Shop, currency: str) -> CurrencyMismatch:
    return CurrencyMismatch(
        f"shop {shop.shop_id} records orders in {shop.currency}; got {currency}",
        metadata={"shop_currency": shop.currency, "order_currency": currency},
    )


def record_orders(
    session: Session,
    *,
    shop_id: str,
    orders: list[PaidOrder],
    default_zone: str,
    defer_summaries_for: BulkChunk | None = None,
) -> Counter[domain.Outcome]:
    """Upserts orders by id (bulk statements, no ORM objects); refreshes the summaries they touch, or marks them.

    `defer_summaries_for` (a bulk chunk) is the bulk-load path: the touched
    customers are marked stale in this transaction and `settle_summaries`
    recomputes each of them once (the summary worker, when the load goes quiet
    or the stream ends, or the first read), instead of once per chunk.
    """
    outcomes: Counter[domain.Outcome] = Counter()
    if not orders:
        return outcomes
    for currency in dict.fromkeys(o.currency for o in orders):  # the batch's first currency decides a new shop
        shop = shop_facts(session, shop_id=shop_id, currency=currency, default_zone=default_zone)
    zone = ZoneInfo(shop.time_zone)
    locked: set[str] | None = None  # None on the deferred path: it takes no summary locks
    if defer_summaries_for is None:
        # One writer per customer at a time: a summary is recomputed from the orders
        # this transaction can see, so a concurrent batch must wait, not interleave.
        # The customers the batch's known orders belong to now are locked in the same
        # sorted call: a correction moving an order away must not take a second lock
        # out of order (two such batches would deadlock).
        owners = session.scalars(
            select(Order.customer_id).where(
                Order.shop_id == shop_id, one_of(session, Order.order_id, [o.order_id for o in orders])
            )
        )
        locked = {o.customer_id for o in orders} | set(owners)
        lock_keys(session, f"summary:{shop_id}", sorted(locked))
    rows = [order_row(shop_id, order, zone) for order in orders]
    if len({o.order_id for o in orders}) == len(orders) and inserted_as_new(session, sorted(rows, key=by_order_id)):
        outcomes[domain.Outcome.INSERTED] += len(orders)
        touched = {o.customer_id for o in orders}
    else:
        touched = upsert_orders(session, shop_id, orders, rows, outcomes, locked=locked)
    if defer_summaries_for is not None:
        mark_stale(session, shop_id=shop_id, customer_ids=touched, chunk=defer_summaries_for)
    else:
        refresh_summaries(session, shop_id=shop_id, customer_ids=sorted(touched))
    return outcomes


class NeedsGeneralPath(Exception):
    """The bulk fast path cannot record these orders (one failed the fast checks, or an id is known): nothing
    was written; record them through the detailed checks and `record_orders`, chunk by chunk."""


def record_streamed_chunk(
    session: Session,
    *,
    shop_id: str,
    currency: str,
    orders: Iterable[PaidOrder | None],
    default_zone: str,
    chunk: BulkChunk,
    all_new: bool = False,
) -> Counter[domain.Outcome]:
    """StreamOrders chunks, each order parsed as COPY streams the rows before it to PostgreSQL.

    The server inserts the first rows while Python parses the rest, instead of
    one waiting for the other. `orders` come in order-id order (the lock order
    of `by_order_id`), None where the fast checks refused one: then
    NeedsGeneralPath, nothing written. `currency` (the first order's) decides a
    new shop's currency; every order must match the shop's. A known or repeated
    order id is classified as `record_orders` does, unless `all_new` (several
    chunks at once, whose counts could not be told apart): then NeedsGeneralPath.
    Summaries are deferred as in `record_orders`.
    """
    shop = shop_facts(session, shop_id=shop_id, currency=currency, default_zone=default_zone)
    zone = ZoneInfo(shop.time_zone)
    parsed: list[PaidOrder] = []

    def rows() -> Iterator[OrderRow]:
        for order in orders:
            if order is None:
                raise NeedsGeneralPath
            if order.currency != shop.currency:
                raise currency_mismatch(shop, order.currency)  # no query: the connection is busy with the COPY
            parsed.append(order)
            yield order_row(shop_id, order, zone)

    outcomes: Counter[domain.Outcome] = Counter()
    pending = rows()
    if inserted_as_new(session, pending):
        outcomes[domain.Outcome.INSERTED] += len(parsed)
        touched = {o.customer_id for o in parsed}
    elif all_new:
        raise NeedsGeneralPath
    else:  # a known or repeated order id: classify them all
        for _ in pending:  # parses the orders the failed COPY had not reached
            pass
        rows_by_order = [order_row(shop_id, order, zone) for order in parsed]
        touched = upsert_orders(session, shop_id, parsed, rows_by_order, outcomes, locked=None)
    mark_stale(session, shop_id=shop_id, customer_ids=touched, chunk=chunk)
    return outcomes


ORDER_COLUMNS = (
    "shop_id",
    "order_id",
    "customer_id",
    "paid_at",
    "local_date",
    "amount_minor",
    "refunded_minor",
    "channel",
    "source",
    "fingerprint",
)
OrderRow = tuple[str, str, str, datetime, date, int, int, str, int, str]


def order_row(shop_id: str, order: PaidOrder, zone: ZoneInfo) -> OrderRow:
    """A new order's row, in ORDER_COLUMNS order."""
    return (
        shop_id,
        order.order_id,
        order.customer_id,
        order.paid_at,
        local_date(order.paid_at, zone),
        order.amount_minor,
        0,
        order.channel,
        order.source,
        order.fingerprint,
    )


def by_order_id(row: OrderRow) -> str:
    """The insert order of new orders.

    Two batches racing on the same new ids then wait on the lowest shared id
    instead of each holding a key the other needs.
    """
    return row[1]


def inserted_as_new(session: Session, rows: Iterable[OrderRow]) -> bool:
    """Inserts orders expected to be new (in `by_order_id` order) in one COPY under a savepoint.

    False, with nothing written, if any exists.

    A bulk load is almost all new orders: trying the insert first spares the
    lookup of a thousand ids per chunk; a batch holding a known order id (a
    resent stream, a correction) falls back to `upsert_orders`.
    """
    try:
        with session.begin_nested():
            bulk_insert(session, Order, ORDER_COLUMNS, rows)
    except (IntegrityError, InternalError):  # 23505 on PostgreSQL; Citus relays a worker's duplicate key as XX000
        return False  # whatever the code said, `upsert_orders` looks every id up and classifies each order
    return True


def upsert_orders(
    session: Session,
    shop_id: str,
    orders: list[PaidOrder],
    rows: list[OrderRow],
    outcomes: Counter[domain.Outcome],
    *,
    locked: set[str] | None,
) -> set[str]:
    """Classifies each order against the stored one (new, duplicate, correction); returns the customers touched.

    `locked` holds the customers whose summary locks this transaction took
    (None on the deferred path, which takes none).

    A concurrent batch may insert one of these ids between the lookup and the
    insert (the lookup cannot lock a row that does not exist yet): the savepoint
    is rolled back and the batch classified again, now seeing that order. Each
    retry follows another transaction's commit, so the loop makes progress.
    """
    for attempt in range(1, CONCURRENT_INSERT_ATTEMPTS + 1):
        counted: Counter[domain.Outcome] = Counter()
        held = None if locked is None else set(locked)  # a lock taken in a rolled-back savepoint is not counted
        try:
            with session.begin_nested():
                touched = classify_and_write(session, shop_id, orders, rows, counted, locked=held)
        except (IntegrityError, InternalError):  # 23505 on PostgreSQL, XX000 from a Citus worker: classify again
            if attempt == CONCURRENT_INSERT_ATTEMPTS:
                raise
            continue
        outcomes.update(counted)
        return touched
    raise AssertionError("unreachable")


def classify_and_write(
    session: Session,
    shop_id: str,
    orders: list[PaidOrder],
    rows: list[OrderRow],
    outcomes: Counter[domain.Outcome],
    *,
    locked: set[str] | None,
) -> set[str]:
    ids = list({o.order_id for o in orders})
    stored = {
        order_id: (customer_id, fingerprint)
        for order_id, customer_id, fingerprint in session.execute(
            select(Order.order_id, Order.customer_id, Order.fingerprint)
            .where(Order.shop_id == shop_id, one_of(session, Order.order_id, ids))
            .order_by(Order.order_id)  # every batch locks rows in one order: no deadlock between two of them
            .with_for_update()
        )
    }
    new: dict[str, OrderRow] = {}
    changed: dict[str, dict[str, object]] = {}
    touched: set[str] = set()
    for order, row in zip(orders, rows, strict=True):
        before = stored.get(order.order_id)
        outcome = domain.classify_order(before[1] if before else None, order.fingerprint)
        outcomes[outcome] += 1
        if outcome is domain.Outcome.DUPLICATE:
            continue
        if before is not None:
            if locked is not None and before[0] not in locked:  # moved here since the owners were read: rare
                lock_keys(session, f"summary:{shop_id}", [before[0]])
                locked.add(before[0])
            touched.add(before[0])
        if order.order_id in new or before is None:
            new[order.order_id] = row
        else:
            changed[order.order_id] = {k: v for k, v in zip(ORDER_COLUMNS, row, strict=True) if k != "refunded_minor"}
        stored[order.order_id] = (order.customer_id, order.fingerprint)
        touched.add(order.customer_id)
    if new:  # looked up as new; one inserted by a concurrent call meanwhile fails this and `upsert_orders` retries
        bulk_insert(session, Order, ORDER_COLUMNS, sorted(new.values(), key=by_order_id))
    if changed:
        session.execute(update(Order), list(changed.values()))
    return touched


def mark_stale(session: Session, *, shop_id: str, customer_ids: Collection[str], chunk: BulkChunk) -> None:
    """One mark row for the chunk, naming every customer it touched (one row, not one per customer)."""
    if not customer_ids:  # a chunk of duplicates changed no summary
        return
    session.execute(
        insert(StaleSummaryBatch).values(
            shop_id=shop_id,
            request_id=chunk.request_id,
            customer_ids=ID_SEPARATOR.join(sorted(set(customer_ids))),
            marked_at=chunk.received_at,
        )
    )


def shops_to_settle(session: Session, *, now: datetime, quiet: timedelta, max_lag: timedelta) -> list[str]:
    """Shops with summaries due for settling.

    Expanded marks are always due. Chunk marks are due once the shop's loads have
    been quiet for `quiet` (a running load would mark the same customers again:
    settling them mid-stream is work thrown away and CPU taken from the load),
    or once the oldest has waited `max_lag` (a load that never pauses still
    settles). Reads never wait for either: `get_summary` settles its customer.
    """
    batches = StaleSummaryBatch.marked_at
    due = (
        select(StaleSummaryBatch.shop_id)
        .group_by(StaleSummaryBatch.shop_id)
        .having(or_(func.max(batches) <= now - quiet, func.min(batches) <= now - max_lag))
    )
    queued = select(StaleSummary.shop_id).distinct()
    return sorted(set(session.scalars(due)) | set(session.scalars(queued)))


def oldest_stale_mark(session: Session) -> datetime | None:
    """When the oldest chunk still waiting for the settler arrived (any shop); None when none waits."""
    return session.scalar(select(func.min(StaleSummaryBatch.marked_at)))


ID_SEPARATOR = "\n"  # ids match ID_PATTERN: none holds a newline

# The chunk marks become the settler's per-customer queue in one statement, one
# row per customer however many chunks named it (the row keeps the first chunk's id).
EXPAND_STALE_BATCHES = text(
    """
    WITH moved AS (
        DELETE FROM stale_summary_batches WHERE shop_id = :shop_id RETURNING request_id, customer_ids
    )
    INSERT INTO stale_summaries (shop_id, customer_id, request_id)
    SELECT :shop_id, customer_id, min(request_id)
      FROM moved, unnest(string_to_array(customer_ids, E'\\n')) AS customer_id
     GROUP BY customer_id
    ON CONFLICT DO NOTHING
    """
)


def expand_stale_batches(session: Session, *, shop_id: str) -> None:
    """Moves the shop's chunk marks into per-customer marks; a chunk committing meanwhile keeps its row for later."""
    if on_postgres(session):
        session.execute(EXPAND_STALE_BATCHES, {"shop_id": shop_id})
        return
    moved = session.execute(
        delete(StaleSummaryBatch)
        .where(StaleSummaryBatch.shop_id == shop_id)
        .returning(StaleSummaryBatch.request_id, StaleSummaryBatch.customer_ids)
    ).all()
    first_chunk: dict[str, str] = {}
    for request_id, customer_ids in moved:
        for customer_id in customer_ids.split(ID_SEPARATOR):
            first_chunk[customer_id] = min(request_id, first_chunk.get(customer_id, request_id))
    marks = [{"shop_id": shop_id, "customer_id": c, "request_id": r} for c, r in first_chunk.items()]
    insert_ignoring_conflicts(session, StaleSummary, marks)


def in_stale_batches(session: Session, *, shop_id: str, customer_id: str) -> bool:
    """True if a chunk mark not yet expanded names the customer."""
    if on_postgres(session):
        named = exists().where(
            StaleSummaryBatch.shop_id == shop_id,
            literal(customer_id) == any_(func.string_to_array(StaleSummaryBatch.customer_ids, ID_SEPARATOR)),
        )
        return bool(session.scalar(named.select()))
    batches = session.scalars(select(StaleSummaryBatch.customer_ids).where(StaleSummaryBatch.shop_id == shop_id))
    return any(customer_id in customer_ids.split(ID_SEPARATOR) for customer_ids in batches)


# A loose index scan: one index probe per distinct customer, whatever the planner
# believes about a queue table that fills and drains faster than ANALYZE runs.
NEXT_STALE_CUSTOMERS = text(
    """
    WITH RECURSIVE stale(customer_id) AS (
        (SELECT customer_id FROM stale_summaries
          WHERE shop_id = :shop_id AND customer_id > :after ORDER BY customer_id LIMIT 1)
        UNION ALL
        SELECT (SELECT s.customer_id FROM stale_summaries AS s
                 WHERE s.shop_id = :shop_id AND s.customer_id > stale.customer_id ORDER BY s.customer_id LIMIT 1)
          FROM stale WHERE stale.customer_id IS NOT NULL
    )
    SELECT customer_id FROM stale WHERE customer_id IS NOT NULL LIMIT :limit
    """
)


def next_stale_customers(session: Session, *, shop_id: str, after: str, limit: int) -> list[str]:
    """Up to `limit` distinct customers with stale marks, in id order after `after`."""
    if on_postgres(session):
        found = session.scalars(NEXT_STALE_CUSTOMERS, {"shop_id": shop_id, "after": after, "limit": limit})
        return list(found)
    query = (
        select(StaleSummary.customer_id)
        .distinct()
        .where(StaleSummary.shop_id == shop_id, StaleSummary.customer_id > after)
        .order_by(StaleSummary.customer_id)
        .limit(limit)
    )
    return list(session.scalars(query))


def settle_summaries(session: Session, *, shop_id: str, after: str = "", limit: int = SETTLE_BATCH) -> list[str]:
    """Recomputes up to `limit` stale summaries of the shop, in id order after `after`; returns those customers.

    Correct beside concurrent chunks because the marks are deleted before the
    summaries are recomputed: every mark this deletes was committed with its
    orders, so the recomputation (a later statement) sees them; a mark
    committed afterwards stays for the next settle.
    """
    stale = next_stale_customers(session, shop_id=shop_id, after=after, limit=limit)
    if stale:
        session.execute(
            delete(StaleSummary)
            .where(StaleSummary.shop_id == shop_id, one_of(session, StaleSummary.customer_id, stale))
            .execution_options(synchronize_session=False)  # no ORM objects to keep in step: skip the RETURNING
        )
        lock_keys(session, f"summary:{shop_id}", stale)
        refresh_summaries(session, shop_id=shop_id, customer_ids=stale)
    return stale


def settle_customer(session: Session, *, shop_id: str, customer_id: str) -> bool:
    """Settles one customer's summary if a bulk load left it stale (the read path); True if it was.

    The chunk marks are read before the expanded ones: a settler expanding them
    meanwhile commits the expanded marks before their chunk marks vanish, so
    one of the two reads sees the customer (the other order can miss both).
    A chunk mark naming the customer stays for the settler (it names others
    too); the summary is recomputed now all the same, and again, identically,
    later. A settle running elsewhere holds the expanded marks it is deleting:
    this waits for it, then finds them gone and reads the summary it wrote.
    """
    named = in_stale_batches(session, shop_id=shop_id, customer_id=customer_id)
    deleted = session.execute(
        delete(StaleSummary)
        .where(StaleSummary.shop_id == shop_id, StaleSummary.customer_id == customer_id)
        .execution_options(synchronize_session=False)
    )
    if not named and not int(getattr(deleted, "rowcount", 0) or 0):
        return False
    lock_keys(session, f"summary:{shop_id}", [customer_id])
    refresh_summaries(session, shop_id=shop_id, customer_ids=[customer_id])
    return True


def refresh_summaries(session: Session, *, shop_id: str, customer_ids: list[str]) -> None:
    """Recomputes these customers' summaries in SQL, from their orders only (the incremental path).

    The same definition as `domain.summarize`, which `rebuild_summaries` uses; a
    test holds the two to identical rows.
    """
    if not customer_ids:
        return
    session.execute(
        delete(CustomerSummary)
        .where(CustomerSummary.shop_id == shop_id, one_of(session, CustomerSummary.customer_id, customer_ids))
        .execution_options(synchronize_session=False)
    )
    aggregate = (
        select(
            Order.shop_id,
            Order.customer_id,
            func.count(),
            func.count(distinct(Order.local_date)),
            func.sum(NET_AMOUNT),
            func.min(Order.paid_at),
            func.max(Order.paid_at),
        )
        .where(Order.shop_id == shop_id, one_of(session, Order.customer_id, customer_ids), COUNTS)
        .group_by(Order.shop_id, Order.customer_id)
    )
    session.execute(
        insert(CustomerSummary).from_select(
            [
                "shop_id",
                "customer_id",
                "order_count",
                "purchase_days",
                "total_minor",
                "first_order_at",
                "last_order_at",
            ],
            aggregate,
        )
    )


def recompute_summaries_in_python(session: Session, *, shop_id: str, customer_ids: list[str]) -> None:
    """The reference path: load the orders and apply `domain.summarize` (used by the full rebuild)."""
    if not customer_ids:
        return
    facts: dict[str, list[domain.OrderFact]] = {c: [] for c in customer_ids}
    rows = session.execute(
        select(Order.customer_id, Order.paid_at, Order.local_date, Order.amount_minor, Order.refunded_minor).where(
            Order.shop_id == shop_id, one_of(session, Order.customer_id, customer_ids)
        )
    )
    for customer_id, paid_at, day, amount, refunded in rows:
        facts[customer_id].append(domain.OrderFact(customer_id, paid_at, day, amount, refunded))
    session.execute(
        delete(CustomerSummary).where(
            CustomerSummary.shop_id == shop_id, one_of(session, CustomerSummary.customer_id, customer_ids)
        )
    )
    for customer_id in customer_ids:
        summary = domain.summarize(customer_id, facts[customer_id])
        if summary is not None:
            session.add(
                CustomerSummary(
                    shop_id=shop_id,
                    customer_id=customer_id,
                    order_count=summary.order_count,
                    purchase_days=summary.purchase_days,
                    total_minor=summary.total_minor,
                    first_order_at=summary.first_order_at,
                    last_order_at=summary.last_order_at,
                )
            )


def get_summary(session: Session, *, shop_id: str, customer_id: str) -> tuple[CustomerSummary, str] | None:
    """The customer's summary, settled first if a bulk load left it stale."""
    settle_customer(session, shop_id=shop_id, customer_id=customer_id)
    summary = session.get(CustomerSummary, (shop_id, customer_id))
    if summary is None:
        return None
    shop = session.get(Shop, shop_id)
    return summary, shop.currency if shop else ""


@dataclass(frozen=True)
class ShopSettings:
    time_zone: str
    currency: str  # "" until an order or SetShopSettings fixes it
    default_zone: bool  # the shop never chose a zone: it is the service's default


def shop_settings(session: Session, *, shop_id: str, default_zone: str) -> ShopSettings:
    shop = session.get(Shop, shop_id)
    if shop is None:
        return ShopSettings(default_zone, "", True)
    return ShopSettings(shop.time_zone, shop.currency, shop.zone_set_at is None)


@dataclass(frozen=True)
class ZoneChange:
    """What moving a shop to a new zone touched."""

    orders_redated: int = 0
    feedback_redated: int = 0
    summaries_queued: int = 0


def set_shop_settings(
    session: Session,
    *,
    shop_id: str,
    time_zone: str,
    currency: str,
    default_zone: str,
    now: datetime,
    mark: str,
) -> tuple[ShopSettings, ZoneChange | None]:
    """Sets the non-empty fields; a new zone re-dates the shop's orders and feedback and queues their summaries.

    The row lock (FOR UPDATE) waits for orders being recorded under the old
    zone (they hold it FOR SHARE) and holds new ones back until this commits,
    so every order is dated in exactly one zone. Summaries are queued, not
    recomputed here: the settler recomputes them under its own locks, and the
    only reader of a summary settles it first (`get_summary`). `mark` is the
    request id the queue rows carry.
    """
    shop = locked_shop(session, shop_id, share=False)
    if shop is None:
        row = {"shop_id": shop_id, "currency": currency, "time_zone": time_zone or default_zone}
        insert_ignoring_conflicts(session, Shop, [row])
        shop = locked_shop(session, shop_id, share=False)
        assert shop is not None
    if currency and shop.currency and shop.currency != currency:
        raise CurrencyMismatch(
            f"shop {shop_id} keeps its money in {shop.currency}; its currency cannot change to {currency}",
            metadata={"shop_currency": shop.currency, "requested_currency": currency},
        )
    shop.currency = shop.currency or currency
    change = None
    if time_zone:
        if time_zone != shop.time_zone:
            change = redate_shop(session, shop_id=shop_id, zone=ZoneInfo(time_zone), mark=mark)
        shop.time_zone = time_zone
        shop.zone_set_at = now
    session.flush()
    return ShopSettings(shop.time_zone, shop.currency, shop.zone_set_at is None), change


# The SQL twin of `services.common.clock.local_date`: a UTC instant's calendar day in a zone.
def local_day_in(column: SQLColumnExpression[datetime], zone: str) -> ColumnElement[date]:
    return cast(func.timezone(zone, column), Date)


def redate_shop(session: Session, *, shop_id: str, zone: ZoneInfo, mark: str) -> ZoneChange:
    """Moves every order and feedback answer of the shop to its local day in `zone`; queues the summaries that
    counted a moved order's day (a summary's purchase days are distinct local days)."""
    moved_customers: set[str] = set()
    counts = []
    dated = (
        (Order, Order.order_id, Order.paid_at),
        (FeedbackRecord, FeedbackRecord.feedback_id, FeedbackRecord.given_at),
    )
    for model, key, instant in dated:
        if on_postgres(session):
            new_day = local_day_in(instant, zone.key)
            moved: Iterable[str] = session.execute(
                update(model)
                .where(model.shop_id == shop_id, model.local_date != new_day)
                .values(local_date=new_day)
                .returning(model.customer_id)
                .execution_options(synchronize_session=False)
            ).scalars()
        else:  # SQLite knows no zones: the Python rule, row by row
            moved = redate_in_python(session, model, key, instant, shop_id=shop_id, zone=zone)
        customers = list(moved)
        counts.append(len(customers))
        if model is Order:
            moved_customers.update(customers)
    marks = [{"shop_id": shop_id, "customer_id": c, "request_id": mark} for c in sorted(moved_customers)]
    insert_ignoring_conflicts(session, StaleSummary, marks)
    return ZoneChange(orders_redated=counts[0], feedback_redated=counts[1], summaries_queued=len(marks))


def redate_in_python(
    session: Session,
    model: type[Order] | type[FeedbackRecord],
    key: InstrumentedAttribute[str],
    instant: InstrumentedAttribute[datetime],
    *,
    shop_id: str,
    zone: ZoneInfo,
) -> list[str]:
    """`redate_shop`'s path where the database has no zone rules; returns the customers of the moved rows."""
    rows = session.execute(select(key, model.customer_id, instant, model.local_date).where(model.shop_id == shop_id))
    moved = [(k, customer, local_date(at, zone)) for k, customer, at, day in rows if local_date(at, zone) != day]
    for k, _customer, day in moved:
        session.execute(update(model).where(model.shop_id == shop_id, key == k).values(local_date=day))
    return [customer for _k, customer, _day in moved]


def load_purchases(session: Session, *, shop_id: str, until: date, customer_id: str | None = None) -> list[Purchase]:
    """The shop's orders on or before `until` (shop-local), as metric facts.

    A straightforward full read: correct for any shop and the reference the
    fast path of the metrics issue is checked against.
    """
    rows = session.execute(
        select(Order.order_id, Order.customer_id, Order.local_date, Order.amount_minor, Order.refunded_minor).where(
            Order.shop_id == shop_id,
            Order.local_date <= until,
            *([Order.customer_id == customer_id] if customer_id is not None else []),
        )
    )
    return [Purchase(*row) for row in rows]


def save_clv_model(session: Session, record: ClvModelRecord) -> ClvModelRecord:
    number_new_record(session, record)
    session.add(record)
    session.flush()
    return record


def current_clv_model(session: Session, *, shop_id: str) -> ClvModelRecord | None:
    return session.scalars(
        select(ClvModelRecord).where(ClvModelRecord.shop_id == shop_id).order_by(ClvModelRecord.id.desc()).limit(1)
    ).first()


@dataclass(frozen=True)
class RefundFact:
    refund_id: str
    order_id: str
    amount_minor: int
    currency: str
    refunded_at: datetime


class RefundExceedsPayment(FailedPrecondition):
    reason = "REFUND_EXCEEDS_PAYMENT"


def record_refunds(session: Session, *, shop_id: str, refunds: list[RefundFact]) -> Counter[str]:
    """Applies new refunds (once per refund_id) and refreshes the customers they touch."""
    outcomes: Counter[str] = Counter()
    order_ids = sorted({r.order_id for r in refunds})
    # Lock the customers first (as record_orders does), then the orders themselves.
    customers = set(
        session.scalars(select(Order.customer_id).where(Order.shop_id == shop_id, Order.order_id.in_(order_ids)))
    )
    lock_keys(session, f"summary:{shop_id}", sorted(customers))
    orders = {
        o.order_id: o
        for o in session.scalars(
            select(Order).where(Order.shop_id == shop_id, Order.order_id.in_(order_ids)).with_for_update()
        )
    }
    missing = [i for i in order_ids if i not in orders]
    if missing:
        raise NotFound(
            f"refunds name unrecorded orders: {', '.join(missing[:10])}",
            reason="ORDER_NOT_FOUND",
            metadata={"order_ids": ",".join(missing[:10])},
        )
    lock_keys(session, f"summary:{shop_id}", sorted({o.customer_id for o in orders.values()} - customers))
    shop = session.get(Shop, shop_id)
    known = {
        r.refund_id: r
        for r in session.scalars(
            select(Refund).where(Refund.shop_id == shop_id, Refund.refund_id.in_([r.refund_id for r in refunds]))
        )
    }
    for refund in refunds:
        if shop is not None and refund.currency != shop.currency:
            raise CurrencyMismatch(
                f"shop {shop_id} records orders in {shop.currency}; got {refund.currency}",
                metadata={"shop_currency": shop.currency, "refund_currency": refund.currency},
            )
        existing = known.get(refund.refund_id)
        if existing is not None and is_repeat(
            (existing.order_id, existing.amount_minor, existing.refunded_at),
            (refund.order_id, refund.amount_minor, refund.refunded_at),
            key_name="refund_id",
            key=refund.refund_id,
        ):
            outcomes["duplicate"] += 1
            continue
        order = orders[refund.order_id]
        if order.refunded_minor + refund.amount_minor > order.amount_minor:
            raise RefundExceedsPayment(
                f"order {order.order_id} was paid {order.amount_minor}, already refunded {order.refunded_minor}; "
                f"refund {refund.refund_id} of {refund.amount_minor} would exceed it",
                metadata={"order_id": order.order_id, "refundable": str(order.amount_minor - order.refunded_minor)},
            )
        order.refunded_minor += refund.amount_minor
        row = Refund(
            shop_id=shop_id,
            refund_id=refund.refund_id,
            order_id=refund.order_id,
            amount_minor=refund.amount_minor,
            refunded_at=refund.refunded_at,
        )
        session.add(row)
        known[refund.refund_id] = row
        outcomes["applied"] += 1
    session.flush()
    refresh_summaries(session, shop_id=shop_id, customer_ids=sorted({o.customer_id for o in orders.values()}))
    return outcomes


def shop_currency(session: Session, *, shop_id: str) -> str:
    shop = session.get(Shop, shop_id)
    return shop.currency if shop else ""


@dataclass(frozen=True)
class FeedbackFact:
    feedback_id: str
    customer_id: str
    order_id: str
    score: int
    comment: str
    given_at: datetime


def record_feedback(session: Session, *, shop_id: str, answers: list[FeedbackFact], default_zone: str) -> Counter[str]:
    shop = locked_shop(session, shop_id, share=True)  # dated in one zone: see `set_shop_settings`
    zone = ZoneInfo(shop.time_zone if shop else default_zone)
    known = {
        f.feedback_id: f
        for f in session.scalars(
            select(FeedbackRecord).where(
                FeedbackRecord.shop_id == shop_id, FeedbackRecord.feedback_id.in_([a.feedback_id for a in answers])
            )
        )
    }
    outcomes: Counter[str] = Counter()
    for answer in answers:
        existing = known.get(answer.feedback_id)
        if existing is not None and is_repeat(
            (existing.customer_id, existing.order_id, existing.score, existing.comment, existing.given_at),
            (answer.customer_id, answer.order_id, answer.score, answer.comment, answer.given_at),
            key_name="feedback_id",
            key=answer.feedback_id,
        ):
            outcomes["duplicate"] += 1
            continue
        row = FeedbackRecord(
            shop_id=shop_id,
            feedback_id=answer.feedback_id,
            customer_id=answer.customer_id,
            order_id=answer.order_id,
            score=answer.score,
            comment=answer.comment,
            given_at=answer.given_at,
            local_date=local_date(answer.given_at, zone),
        )
        session.add(row)
        known[answer.feedback_id] = row
        outcomes["recorded"] += 1
    session.flush()
    return outcomes


def scores_between(session: Session, *, shop_id: str, start: date, end: date) -> list[int]:
    return list(
        session.scalars(
            select(FeedbackRecord.score).where(
                FeedbackRecord.shop_id == shop_id, FeedbackRecord.local_date >= start, FeedbackRecord.local_date <= end
            )
        )
    )


def rebuild_summaries(session: Session, *, shop_id: str) -> int:
    """Recomputes every customer summary of a shop from its orders; returns how many customers it saw."""
    customers = sorted(set(session.scalars(select(Order.customer_id).where(Order.shop_id == shop_id))))
    lock_keys(session, f"summary:{shop_id}", customers)
    session.execute(delete(CustomerSummary).where(CustomerSummary.shop_id == shop_id))
    for marks in (StaleSummary, StaleSummaryBatch):  # everything is recomputed below
        session.execute(delete(marks).where(marks.shop_id == shop_id))
    for start in range(0, len(customers), 500):
        recompute_summaries_in_python(session, shop_id=shop_id, customer_ids=customers[start : start + 500])
    return len(customers)


def shop_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Shop.shop_id).order_by(Shop.shop_id)))


def load_columns(session: Session, *, shop_id: str, until: date, include_refunded: bool = False) -> OrderColumns:
    """The shop's orders on or before `until` as numpy columns (net amounts) for `services.metrics.fast`.

    Customers are numbered in sorted id order, as the reference definitions list them.
    """
    query = select(Order.customer_id, Order.local_date, NET_AMOUNT).where(
        Order.shop_id == shop_id, Order.local_date <= until
    )
    if not include_refunded:
        query = query.where(COUNTS)
    rows = session.execute(query).all()
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return OrderColumns.from_arrays(empty, empty, 0, amounts=empty)
    ids, days, amounts = zip(*rows, strict=True)
    names, codes = np.unique(np.array(ids, dtype=object), return_inverse=True)
    day_numbers = np.array(days, dtype="datetime64[D]").astype(np.int64)
    return OrderColumns.from_arrays(
        codes.astype(np.int64), day_numbers, len(names), [str(n) for n in names], np.array(amounts, dtype=np.int64)
    )


def erase_customer(session: Session, *, shop_id: str, customer_id: str) -> tuple[str, int]:
    """Moves the customer's orders and feedback to the shared anonymous id and clears comments; numbers stay."""
    anonymous = anonymous_id(shop_id, customer_id)
    rows = 0
    for statement in (
        update(Order).where(Order.shop_id == shop_id, Order.customer_id == customer_id).values(customer_id=anonymous),
        update(FeedbackRecord)
        .where(FeedbackRecord.shop_id == shop_id, FeedbackRecord.customer_id == customer_id)
        .values(customer_id=anonymous, comment=""),
    ):
        rows += int(getattr(session.execute(statement), "rowcount", 0) or 0)
    expand_stale_batches(session, shop_id=shop_id)  # a chunk mark may name the customer among others
    session.execute(  # the mark names the customer: it goes; the anonymous id's summary is refreshed below
        delete(StaleSummary).where(StaleSummary.shop_id == shop_id, StaleSummary.customer_id == customer_id)
    )
    refresh_summaries(session, shop_id=shop_id, customer_ids=[customer_id, anonymous])
    session.flush()
    return anonymous, rows
