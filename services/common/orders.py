"""The shared `Order` contract, validated once for metrics, points and cycle delivery."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from loyalty.common.v1 import common_pb2

from services.common.convert import from_timestamp
from services.common.errors import Violations
from services.common.validation import (
    CURRENCY_EXPONENTS,
    EARLIEST_INSTANT,
    ID_PATTERN,
    LATEST_INSTANT,
    MAX_AMOUNT_MINOR,
    check_amount,
    check_currency,
    check_id,
    check_instant,
    check_text,
)

MAX_ITEMS = 200
# How far after the server's clock a payment time may be (clocks disagree, zones get
# mixed up): beyond it the order is refused, or it would count in today's numbers.
MAX_PAID_AHEAD = timedelta(hours=24)


class OrderLine(NamedTuple):
    sku: str
    category: str
    quantity: int
    amount_minor: int


class PaidOrder(NamedTuple):
    """An immutable parsed order (a NamedTuple: a bulk load builds millions, at half a frozen dataclass's cost)."""

    order_id: str
    customer_id: str
    paid_at: datetime
    amount_minor: int
    currency: str
    channel: str
    source: int
    lines: tuple[OrderLine, ...]
    fingerprint: str


ORDER_SOURCES = frozenset(common_pb2.OrderSource.values())
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST_SECONDS = int(EARLIEST_INSTANT.timestamp())
LATEST_SECONDS = int(LATEST_INSTANT.timestamp())


def paid_by(now: datetime) -> int:
    """The latest payment time (epoch seconds) an order received at `now` may carry."""
    return int((now + MAX_PAID_AHEAD).timestamp())


def plainly_valid_order(order: common_pb2.Order, not_after: int = LATEST_SECONDS) -> PaidOrder | None:
    """The parsed order when every check of `checked_order` passes, decided without building one field path.

    The bulk-load fast path: a million-order stream is almost all valid, and the
    detailed checks spend most of their time naming fields nobody reads. Each
    field is read once (a protobuf attribute read costs more than the check).
    None means "run the detailed checks", never "invalid"; a property test holds
    that an order returned here is exactly what the detailed checks return.
    `not_after` is `paid_by(now)` in epoch seconds (the default: no clock, no limit).
    """
    order_id = order.order_id
    customer_id = order.customer_id
    paid = order.paid
    amount_minor = paid.amount_minor
    currency = paid.currency
    stamp = order.paid_at  # unset reads as 1970-01-01, a valid instant: HasField tells them apart
    seconds = stamp.seconds
    nanos = stamp.nanos
    channel = order.channel
    source = order.source
    items = order.items
    if not (
        EARLIEST_SECONDS <= seconds < LATEST_SECONDS
        and seconds <= not_after
        and (seconds or nanos or order.HasField("paid_at"))
        and 0 <= nanos < 1_000_000_000
        and 0 <= amount_minor <= MAX_AMOUNT_MINOR
        and currency in CURRENCY_EXPONENTS
        and len(channel) <= 32
        and source in ORDER_SOURCES
        and ID_PATTERN.match(order_id)
        and ID_PATTERN.match(customer_id)
    ):
        return None
    lines: tuple[OrderLine, ...] = ()
    if items:
        if len(items) > MAX_ITEMS:
            return None
        lines = order_lines(items)
        for line, item in zip(lines, items, strict=True):
            if not (
                len(line.sku) <= 64
                and len(line.category) <= 64
                and 1 <= line.quantity <= 100_000
                and 0 <= line.amount_minor <= MAX_AMOUNT_MINOR
                and item.paid.currency in ("", currency)
            ):
                return None
        if sum(line.amount_minor for line in lines) > amount_minor:
            return None
    return PaidOrder(
        order_id,
        customer_id,
        # in range and nanos >= 0: what Timestamp.ToDatetime computes, without its checks
        UNIX_EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000),
        amount_minor,
        currency,
        channel,
        source or common_pb2.ORDER_SOURCE_NORMAL,
        lines,
        order_fingerprint(order),
    )


def parse_order(v: Violations, order: common_pb2.Order, path: str, *, now: datetime) -> PaidOrder | None:
    """A validated order received at `now`, or None with every problem recorded in `v`."""
    latest = paid_by(now)
    return plainly_valid_order(order, latest) or checked_order(v, order, path, not_after=latest)


def checked_order(
    v: Violations, order: common_pb2.Order, path: str, *, not_after: int = LATEST_SECONDS
) -> PaidOrder | None:
    """The detailed checks: every problem recorded in `v` with the field it concerns."""
    before = len(v.found)
    check_id(v, order.order_id, f"{path}.order_id")
    check_id(v, order.customer_id, f"{path}.customer_id")
    paid_at = from_timestamp(v, order.paid_at, f"{path}.paid_at", present=order.HasField("paid_at"))
    if paid_at is not None:
        check_instant(v, paid_at, f"{path}.paid_at")
        if order.paid_at.seconds > not_after:  # in whole seconds, as the fast check judges it
            v.add(
                f"{path}.paid_at",
                f"is more than {MAX_PAID_AHEAD.total_seconds() / 3600:g} h after the server's clock; "
                "record an order once it is paid",
            )
    check_amount(v, order.paid.amount_minor, f"{path}.paid.amount_minor")
    check_currency(v, order.paid.currency, f"{path}.paid.currency")
    check_text(v, order.channel, f"{path}.channel", max_length=32)
    v.check(order.source in ORDER_SOURCES, f"{path}.source", "unknown order source")
    v.check(len(order.items) <= MAX_ITEMS, f"{path}.items", f"at most {MAX_ITEMS} items")
    lines_total = 0
    for i, item in enumerate(order.items[:MAX_ITEMS]):
        item_path = f"{path}.items[{i}]"
        check_text(v, item.sku, f"{item_path}.sku", max_length=64)
        check_text(v, item.category, f"{item_path}.category", max_length=64)
        v.check(1 <= item.quantity <= 100_000, f"{item_path}.quantity", "must be 1..100000")
        check_amount(v, item.paid.amount_minor, f"{item_path}.paid.amount_minor")
        v.check(
            item.paid.currency in ("", order.paid.currency),
            f"{item_path}.paid.currency",
            "must be empty or the order's currency",
        )
        lines_total += item.paid.amount_minor
    v.check(lines_total <= order.paid.amount_minor, f"{path}.items", "line amounts exceed the order's paid amount")
    if len(v.found) > before or paid_at is None:
        return None
    return paid_order(order, paid_at)


def paid_order(order: common_pb2.Order, paid_at: datetime) -> PaidOrder:
    """The parsed form of an order that passed the checks."""
    return PaidOrder(
        order_id=order.order_id,
        customer_id=order.customer_id,
        paid_at=paid_at,
        amount_minor=order.paid.amount_minor,
        currency=order.paid.currency,
        channel=order.channel,
        source=order.source or common_pb2.ORDER_SOURCE_NORMAL,
        lines=order_lines(order.items),
        fingerprint=order_fingerprint(order),
    )


def order_lines(items: Sequence[common_pb2.OrderItem]) -> tuple[OrderLine, ...]:
    return tuple(OrderLine(i.sku, i.category, i.quantity, i.paid.amount_minor) for i in items)


def order_fingerprint(order: common_pb2.Order) -> str:
    """The digest of the order's canonical bytes: a resent order matches it, a changed one does not."""
    return hashlib.sha256(order.SerializeToString(deterministic=True)).hexdigest()
