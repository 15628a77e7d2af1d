"""Points storage on SQLAlchemy Core: programs, member books, and the set-based reads.

The member ledger rules live in `services.points.book`; this module reads a
member's facts into a book (`load_member`) and writes what the book changed
(`save_member`), inside the caller's transaction. It is the storage path of
the embedded SQLite default and of every PostgreSQL use case off the hot path
(`services.points.fast` serves the hot path on PostgreSQL with the same books).

Locking rule: every change to a member's balances, lots, earnings or
redemptions first takes `lock_member`, a write to the member's points balance
row (created when missing). One member's mutations are therefore serial on
every replica, while different members never wait on each other; the write
also changes the row's version, which is what the hot path's optimistic
writes check. Mall stock is changed with a conditional update after the
member lock, so the lock order is always member -> item.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty.points.v1 import points_pb2
from sqlalchemy import ColumnElement, Table, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from services.common.db import on_postgres, with_new_ids
from services.common.errors import FailedPrecondition, NotFound, Violations
from services.points.book import (
    LOT_ASSETS,
    BalanceRow,
    EarningState,
    ItemState,
    LotState,
    LotUseState,
    MemberBook,
    MemberFacts,
    MemberQuery,
    PendingEarning,
    SpendState,
    TierState,
    TopUpState,
    summarize_lots,
)
from services.points.domain import ACTIVE, PENDING, REFUNDED, Asset
from services.points.mall import out_of_stock
from services.points.models import (
    Balance,
    Entry,
    Lot,
    LotUse,
    MallItemRecord,
    MemberTier,
    OrderEarning,
    OrderSpend,
    ProgramRecord,
    Redemption,
    TierChange,
    TopUpRecord,
)
from services.points.program import ProgramRules, program_rules, with_defaults


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


BALANCES, ENTRIES, LOTS, LOT_USES = _table(Balance), _table(Entry), _table(Lot), _table(LotUse)
EARNINGS, SPENDS, TIERS, TIER_CHANGES = _table(OrderEarning), _table(OrderSpend), _table(MemberTier), _table(TierChange)
ITEMS, REDEMPTIONS, TOP_UPS = _table(MallItemRecord), _table(Redemption), _table(TopUpRecord)
EARNING_COLUMNS = (
    "order_id",
    "customer_id",
    "fingerprint",
    "paid_at",
    "paid_minor",
    "currency",
    "earned_points",
    "earned_growth",
    "earned_rebate",
    "breakdown",
    "refunded_minor",
    "state",
    "activates_at",
    "activated_at",
    "created_at",
)


# ---------------------------------------------------------------- program


def load_program(session: Session, *, shop_id: str, default_zone: str) -> tuple[points_pb2.Program, ProgramRules]:
    """The shop's program and its rules; the defaults for a shop that never set one."""
    record = session.get(ProgramRecord, shop_id)
    program = points_pb2.Program()
    if record is not None:
        program.ParseFromString(record.body)
    program = with_defaults(program, default_zone)
    rules = program_rules(Violations(), program)
    if rules is None:  # stored programs were validated; this only fails if the zone database changed
        raise FailedPrecondition(f"the stored program of shop {shop_id} no longer validates; set it again")
    return program, rules


def save_program(session: Session, *, shop_id: str, program: points_pb2.Program, now: datetime) -> None:
    record = session.get(ProgramRecord, shop_id)
    body = program.SerializeToString(deterministic=True)
    if record is None:
        session.add(ProgramRecord(shop_id=shop_id, body=body, updated_at=now))
    else:
        record.body, record.updated_at = body, now
    session.flush()


# ---------------------------------------------------------------- member books


def _upsert(session: Session, table: Table) -> Any:
    return (pg_insert if on_postgres(session) else sqlite_insert)(table)


def lock_member(session: Session, *, shop_id: str, customer_id: str) -> None:
    """Takes the member lock: the points balance row, created if missing, written and so locked until commit."""
    statement = _upsert(session, BALANCES).values(
        shop_id=shop_id, holder=customer_id, asset=int(Asset.POINTS), balance=0
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[BALANCES.c.shop_id, BALANCES.c.holder, BALANCES.c.asset],
            set_={"balance": BALANCES.c.balance},  # a no-op update: it takes the row lock and a new row version
        )
    )


def _member(table: Table, shop_id: str, customer_id: str, column: str = "customer_id") -> ColumnElement[bool]:
    return and_(table.c.shop_id == shop_id, table.c[column] == customer_id)


def _earning(row: Any) -> EarningState:
    return EarningState(**{name: getattr(row, name) for name in EARNING_COLUMNS})


def _lot(row: Any) -> LotState:
    return LotState(row.id, Asset(row.asset), row.transfer_id, row.amount, row.remaining, row.earned_at, row.expires_at)


def _earning_row(session: Session, shop_id: str, order_id: str) -> Any:
    return session.execute(
        select(EARNINGS).where(EARNINGS.c.shop_id == shop_id, EARNINGS.c.order_id == order_id)
    ).first()


def load_member(session: Session, query: MemberQuery, *, lock: bool = True) -> MemberFacts:
    """The member's facts `query` asks for, read in the caller's transaction (after the member lock when `lock`).

    A query by order whose earning does not exist gives facts with no
    customer and no earning: the use case answers NOT_FOUND.
    """
    shop_id, now = query.shop_id, query.now
    customer_id = query.customer_id
    if not customer_id:
        found = _earning_row(session, shop_id, query.order_id)
        if found is None:
            return MemberFacts(shop_id=shop_id, customer_id="", now=now)
        customer_id = found.customer_id
    if lock:
        lock_member(session, shop_id=shop_id, customer_id=customer_id)
    facts = MemberFacts(
        shop_id=shop_id, customer_id=customer_id, now=now, lots_of=query.lots_of, rolling_since=query.rolling_since
    )
    for asset, balance, updated_at in session.execute(
        select(BALANCES.c.asset, BALANCES.c.balance, BALANCES.c.updated_at).where(
            _member(BALANCES, shop_id, customer_id, "holder")
        )
    ):
        facts.balances[Asset(asset)] = BalanceRow(balance, updated_at)
    live = [
        _lot(row)
        for row in session.execute(
            select(LOTS).where(
                _member(LOTS, shop_id, customer_id),
                LOTS.c.remaining > 0,
                LOTS.c.asset.in_([int(a) for a in {*query.lots_of, Asset.POINTS, Asset.REBATE}]),
            )
        )
    ]
    facts.lots = [lot for lot in live if lot.asset in query.lots_of]
    facts.summary = summarize_lots((lot for lot in live if lot.asset not in query.lots_of), now)
    facts.pending = [
        PendingEarning(row.order_id, row.earned_points, row.paid_minor, row.refunded_minor)
        for row in session.execute(
            select(EARNINGS).where(_member(EARNINGS, shop_id, customer_id), EARNINGS.c.state == PENDING)
        )
    ]
    tier = session.execute(select(TIERS).where(_member(TIERS, shop_id, customer_id))).first()
    if tier is not None:
        facts.tier = TierState(tier.tier_code, tier.since, tier.reviewed_at)
    if query.rolling_since is not None:
        facts.rolling_spend = int(
            session.scalar(
                select(func.coalesce(func.sum(EARNINGS.c.paid_minor - EARNINGS.c.refunded_minor), 0)).where(
                    _member(EARNINGS, shop_id, customer_id),
                    EARNINGS.c.state == ACTIVE,
                    EARNINGS.c.paid_at >= query.rolling_since,
                )
            )
            or 0
        )
    if query.order_id:
        row = _earning_row(session, shop_id, query.order_id)
        facts.earning = _earning(row) if row is not None else None
    if query.earn_day is not None:
        _load_earn_facts(session, facts, query)
    if query.order_spends:
        _load_order_spends(session, facts, query.order_id)
    if query.item_id:
        _load_item(session, facts, query.item_id)
    if query.top_up_id:
        record = session.execute(
            select(TOP_UPS).where(TOP_UPS.c.shop_id == shop_id, TOP_UPS.c.top_up_id == query.top_up_id)
        ).first()
        if record is not None:
            facts.top_up = TopUpState(
                record.top_up_id,
                record.customer_id,
                record.transfer_id,
                record.paid_minor,
                record.bonus_minor,
                record.currency,
                record.refunded_at,
                record.created_at,
            )
    return facts


def _load_earn_facts(session: Session, facts: MemberFacts, query: MemberQuery) -> None:
    """Whether the member earned on another order before, and the points other orders earned that local day."""
    assert query.earn_day is not None
    others = (
        _member(EARNINGS, facts.shop_id, facts.customer_id),
        EARNINGS.c.order_id != query.order_id,
        EARNINGS.c.state != REFUNDED,
    )
    facts.first_order = session.execute(select(EARNINGS.c.order_id).where(*others).limit(1)).first() is None
    day_start, day_end = query.earn_day
    facts.earned_today = int(
        session.scalar(
            select(func.coalesce(func.sum(EARNINGS.c.earned_points), 0)).where(
                *others, EARNINGS.c.paid_at >= day_start, EARNINGS.c.paid_at < day_end
            )
        )
        or 0
    )


def _load_order_spends(session: Session, facts: MemberFacts, order_id: str) -> None:
    """What was spent toward the order, the lot uses of those spends not given back yet, and their lots."""
    spends = session.execute(
        select(SPENDS)
        .where(SPENDS.c.shop_id == facts.shop_id, SPENDS.c.order_id == order_id)
        .order_by(SPENDS.c.transfer_id)
    ).all()
    facts.spends = [
        SpendState(s.transfer_id, s.order_id, s.customer_id, Asset(s.asset), s.amount, s.restored) for s in spends
    ]
    if not spends:
        return
    uses = session.execute(
        select(LOT_USES).where(
            LOT_USES.c.shop_id == facts.shop_id,
            LOT_USES.c.transfer_id.in_([s.transfer_id for s in spends]),
            LOT_USES.c.amount > LOT_USES.c.restored,
        )
    ).all()
    facts.lot_uses = [LotUseState(u.id, u.transfer_id, u.lot_id, u.amount, u.restored) for u in uses]
    known = {lot.id for lot in facts.lots}
    wanted = sorted({u.lot_id for u in uses} - known)
    if wanted:
        facts.lots += [
            _lot(row)
            for row in session.execute(select(LOTS).where(LOTS.c.shop_id == facts.shop_id, LOTS.c.id.in_(wanted)))
        ]


def _load_item(session: Session, facts: MemberFacts, item_id: str) -> None:
    row = session.execute(select(ITEMS).where(ITEMS.c.shop_id == facts.shop_id, ITEMS.c.item_id == item_id)).first()
    if row is None:
        return
    taken = 0
    if row.per_customer_limit:
        taken = int(
            session.scalar(
                select(func.coalesce(func.sum(REDEMPTIONS.c.quantity), 0)).where(
                    REDEMPTIONS.c.shop_id == facts.shop_id,
                    REDEMPTIONS.c.item_id == item_id,
                    REDEMPTIONS.c.customer_id == facts.customer_id,
                )
            )
            or 0
        )
    facts.item = ItemState(
        row.item_id, row.name, row.cost_points, row.stock, row.starts_at, row.ends_at, row.per_customer_limit, taken
    )


def save_member(session: Session, book: MemberBook) -> None:
    """Writes everything the book changed, in the caller's transaction (which holds the member lock).

    Entries get their ids here, in posting order. A redemption takes its units
    with a conditional update: fewer left than asked is OUT_OF_STOCK, and the
    transaction must then roll back.
    """
    shop_id, customer_id = book.shop_id, book.customer_id
    if book.redemption is not None:  # first: a refusal here must not follow any other write
        taken = session.execute(
            update(ITEMS)
            .where(
                ITEMS.c.shop_id == shop_id,
                ITEMS.c.item_id == book.redemption.item_id,
                ITEMS.c.stock >= book.redemption.quantity,
            )
            .values(stock=ITEMS.c.stock - book.redemption.quantity)
            .returning(ITEMS.c.stock)
        ).first()
        if taken is None:
            raise out_of_stock(book.redemption.item_id, book.redemption.quantity)
        assert book.item is not None
        book.item.stock = int(taken.stock)
        r = book.redemption
        session.execute(
            insert(REDEMPTIONS),
            with_new_ids(
                session,
                REDEMPTIONS,
                [
                    {
                        "shop_id": shop_id,
                        "item_id": r.item_id,
                        "customer_id": customer_id,
                        "quantity": r.quantity,
                        "points": r.points,
                        "transfer_id": r.transfer_id,
                        "created_at": book.now,
                    }
                ],
            ),
        )
    assets = sorted({Asset.POINTS, *book.touched})
    upsert = _upsert(session, BALANCES)
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[BALANCES.c.shop_id, BALANCES.c.holder, BALANCES.c.asset],
            set_={"balance": upsert.excluded.balance, "updated_at": upsert.excluded.updated_at},
        ),
        [
            {
                "shop_id": shop_id,
                "holder": customer_id,
                "asset": int(asset),
                "balance": book.balance(asset),
                "updated_at": book.balances[asset].updated_at if asset in book.balances else None,
            }
            for asset in assets
        ],
    )
    if book.entries:
        ids = session.scalars(
            insert(ENTRIES).returning(ENTRIES.c.id, sort_by_parameter_order=True),
            with_new_ids(
                session,
                ENTRIES,
                [{"shop_id": shop_id, **e.columns(), "created_at": e.created_at} for e in book.entries],
            ),
        ).all()
        book.assign_entry_ids(ids)
    if book.new_lots:
        session.execute(
            insert(LOTS),
            with_new_ids(
                session,
                LOTS,
                [
                    {
                        "shop_id": shop_id,
                        "customer_id": customer_id,
                        "asset": int(lot.asset),
                        "transfer_id": lot.transfer_id,
                        "amount": lot.amount,
                        "remaining": lot.remaining,
                        "earned_at": lot.earned_at,
                        "expires_at": lot.expires_at,
                    }
                    for lot in book.new_lots
                ],
            ),
        )
    if book.changed_lots:
        session.execute(
            update(LOTS)
            .where(LOTS.c.shop_id == shop_id, LOTS.c.id == bindparam("lot_id"))
            .values(remaining=bindparam("new_remaining")),
            [{"lot_id": i, "new_remaining": book.lots[i].remaining} for i in sorted(book.changed_lots)],
        )
    if book.new_lot_uses:
        session.execute(
            insert(LOT_USES),
            with_new_ids(
                session,
                LOT_USES,
                [
                    {
                        "shop_id": shop_id,
                        "transfer_id": u.transfer_id,
                        "lot_id": u.lot_id,
                        "amount": u.amount,
                        "restored": 0,
                    }
                    for u in book.new_lot_uses
                ],
            ),
        )
    if book.changed_lot_uses:
        session.execute(
            update(LOT_USES)
            .where(LOT_USES.c.shop_id == shop_id, LOT_USES.c.id == bindparam("use_id"))
            .values(restored=bindparam("new_restored")),
            [{"use_id": i, "new_restored": book.lot_uses[i].restored} for i in sorted(book.changed_lot_uses)],
        )
    _save_earning(session, book)
    if book.new_spends:
        session.execute(
            insert(SPENDS),
            [
                {
                    "transfer_id": s.transfer_id,
                    "shop_id": shop_id,
                    "order_id": s.order_id,
                    "customer_id": s.customer_id,
                    "asset": int(s.asset),
                    "amount": s.amount,
                    "restored": s.restored,
                }
                for s in book.new_spends
            ],
        )
    if book.changed_spends:
        session.execute(
            update(SPENDS)
            .where(SPENDS.c.shop_id == shop_id, SPENDS.c.transfer_id == bindparam("spend_transfer"))
            .values(restored=bindparam("new_restored")),
            [{"spend_transfer": t, "new_restored": book.spends[t].restored} for t in sorted(book.changed_spends)],
        )
    _save_tier(session, book)
    _save_top_up(session, book)


def _save_earning(session: Session, book: MemberBook) -> None:
    earning = book.earning
    if earning is None:
        return
    if book.earning_is_new:
        session.execute(
            insert(EARNINGS).values(shop_id=book.shop_id, **{name: getattr(earning, name) for name in EARNING_COLUMNS})
        )
    elif book.earning_changed:
        session.execute(
            update(EARNINGS)
            .where(EARNINGS.c.shop_id == book.shop_id, EARNINGS.c.order_id == earning.order_id)
            .values(state=earning.state, activated_at=earning.activated_at, refunded_minor=earning.refunded_minor)
        )


def _save_tier(session: Session, book: MemberBook) -> None:
    if book.tier is None or not book.tier_changed:
        return
    tier = book.tier
    upsert = _upsert(session, TIERS).values(
        shop_id=book.shop_id,
        customer_id=book.customer_id,
        tier_code=tier.code,
        since=tier.since,
        reviewed_at=tier.reviewed_at,
    )
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[TIERS.c.shop_id, TIERS.c.customer_id],
            set_={"tier_code": tier.code, "since": tier.since, "reviewed_at": tier.reviewed_at},
        )
    )
    if book.tier_moves:
        session.execute(
            insert(TIER_CHANGES),
            with_new_ids(
                session,
                TIER_CHANGES,
                [
                    {
                        "shop_id": book.shop_id,
                        "customer_id": book.customer_id,
                        "from_code": m.from_code,
                        "to_code": m.to_code,
                        "reason": m.reason,
                        "changed_at": m.changed_at,
                    }
                    for m in book.tier_moves
                ],
            ),
        )


def _save_top_up(session: Session, book: MemberBook) -> None:
    record = book.top_up
    if record is None:
        return
    if book.top_up_is_new:
        session.execute(
            insert(TOP_UPS).values(
                shop_id=book.shop_id,
                top_up_id=record.top_up_id,
                customer_id=record.customer_id,
                transfer_id=record.transfer_id,
                paid_minor=record.paid_minor,
                bonus_minor=record.bonus_minor,
                currency=record.currency,
                refunded_at=record.refunded_at,
                created_at=record.created_at,
            )
        )
    elif book.top_up_changed:
        session.execute(
            update(TOP_UPS)
            .where(TOP_UPS.c.shop_id == book.shop_id, TOP_UPS.c.top_up_id == record.top_up_id)
            .values(refunded_at=record.refunded_at)
        )


def top_up_owner(session: Session, *, shop_id: str, top_up_id: str) -> str:
    """The member a top-up belongs to."""
    owner = session.scalar(
        select(TOP_UPS.c.customer_id).where(TOP_UPS.c.shop_id == shop_id, TOP_UPS.c.top_up_id == top_up_id)
    )
    if owner is None:
        raise NotFound(f"top-up {top_up_id} does not exist in this shop", reason="TOP_UP_NOT_FOUND")
    return str(owner)


def member_book(session: Session, query: MemberQuery) -> MemberBook:
    """The member's book for a mutation: the member locked, then its facts read."""
    return MemberBook(load_member(session, query, lock=True))


# ---------------------------------------------------------------- reads


def list_entries(session: Session, *, shop_id: str, customer_id: str, limit: int, before_id: int | None) -> list[Entry]:
    query = select(Entry).where(Entry.shop_id == shop_id, Entry.holder == customer_id)
    if before_id is not None:
        query = query.where(Entry.id < before_id)
    return list(session.scalars(query.order_by(Entry.id.desc()).limit(limit)).all())


def members_due_for_review(session: Session, *, shop_id: str, reviewed_before: datetime, limit: int) -> list[str]:
    return list(
        session.scalars(
            select(MemberTier.customer_id)
            .where(
                MemberTier.shop_id == shop_id,
                MemberTier.tier_code != "",
                or_(MemberTier.reviewed_at.is_(None), MemberTier.reviewed_at < reviewed_before),
            )
            .order_by(MemberTier.customer_id)
            .limit(limit)
        ).all()
    )


def tier_history(session: Session, *, shop_id: str, customer_id: str) -> list[TierChange]:
    return list(
        session.scalars(
            select(TierChange)
            .where(TierChange.shop_id == shop_id, TierChange.customer_id == customer_id)
            .order_by(TierChange.id)
        ).all()
    )


def members_with_expired_lots(session: Session, *, now: datetime, limit: int) -> list[tuple[str, str]]:
    """Members holding lots past their expiry, longest overdue first (then by id, so every sweep goes alike)."""
    rows = session.execute(
        select(Lot.shop_id, Lot.customer_id)
        .where(Lot.remaining > 0, Lot.expires_at <= now)
        .group_by(Lot.shop_id, Lot.customer_id)
        .order_by(func.min(Lot.expires_at), Lot.shop_id, Lot.customer_id)
        .limit(limit)
    ).all()
    return [(shop, customer) for shop, customer in rows]


def due_earnings(session: Session, *, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(shop, order) of pending earnings whose return window has closed, oldest first."""
    rows = session.execute(
        select(OrderEarning.shop_id, OrderEarning.order_id)
        .where(OrderEarning.state == PENDING, OrderEarning.activates_at <= now)
        .order_by(OrderEarning.activates_at, OrderEarning.shop_id, OrderEarning.order_id)
        .limit(limit)
    ).all()
    return [(shop, order) for shop, order in rows]


# ---------------------------------------------------------------- reconcile


@dataclass(frozen=True)
class Reconciliation:
    balances_checked: int
    entries_checked: int
    mismatches: list[points_pb2.Mismatch]


def reconcile(session: Session, *, shop_id: str, limit: int = 100) -> Reconciliation:
    """Checks the three ledger invariants of a shop in three set-based queries."""
    mismatches: list[points_pb2.Mismatch] = []
    sums = (
        select(Entry.holder, Entry.asset, func.sum(Entry.delta).label("total"), func.count().label("n"))
        .where(Entry.shop_id == shop_id)
        .group_by(Entry.holder, Entry.asset)
        .subquery()
    )
    member_rows = session.execute(
        select(Balance.holder, Balance.asset, Balance.balance, func.coalesce(sums.c.total, 0))
        .outerjoin(sums, and_(sums.c.holder == Balance.holder, sums.c.asset == Balance.asset))
        .where(Balance.shop_id == shop_id)
    ).all()
    for holder, asset, cached, total in member_rows:
        if cached != total:
            mismatches.append(_mismatch(holder, asset, "balance_vs_entries", int(total), int(cached)))
    entry_count = int(session.scalar(select(func.count()).select_from(Entry).where(Entry.shop_id == shop_id)) or 0)
    for asset, total in session.execute(
        select(Entry.asset, func.sum(Entry.delta)).where(Entry.shop_id == shop_id).group_by(Entry.asset)
    ).all():
        if total != 0:
            mismatches.append(_mismatch("", asset, "asset_sum_nonzero", 0, int(total)))
    lot_sums = (
        select(Lot.customer_id, Lot.asset, func.sum(Lot.remaining).label("remaining"))
        .where(Lot.shop_id == shop_id)
        .group_by(Lot.customer_id, Lot.asset)
        .subquery()
    )
    for holder, asset, cached, remaining in session.execute(
        select(Balance.holder, Balance.asset, Balance.balance, func.coalesce(lot_sums.c.remaining, 0))
        .outerjoin(lot_sums, and_(lot_sums.c.customer_id == Balance.holder, lot_sums.c.asset == Balance.asset))
        .where(Balance.shop_id == shop_id, Balance.asset.in_([int(a) for a in LOT_ASSETS]))
    ).all():
        if max(0, cached) != remaining:
            mismatches.append(_mismatch(holder, asset, "lots_vs_balance", max(0, int(cached)), int(remaining)))
    return Reconciliation(len(member_rows), entry_count, mismatches[:limit])


def _mismatch(holder: str, asset: int, check: str, expected: int, actual: int) -> points_pb2.Mismatch:
    return points_pb2.Mismatch(holder=holder, asset=asset, check=check, expected=expected, actual=actual)  # type: ignore[arg-type]


def shops_with_tiers(session: Session) -> list[str]:
    return list(session.scalars(select(MemberTier.shop_id).where(MemberTier.tier_code != "").distinct()).all())


def member_standings(session: Session, *, shop_id: str, after: str, limit: int) -> list[tuple[str, int, str]]:
    """(customer, points balance, tier) for members with a points balance row, by customer id."""
    rows = session.execute(
        select(Balance.holder, Balance.balance, func.coalesce(MemberTier.tier_code, ""))
        .outerjoin(MemberTier, and_(MemberTier.shop_id == Balance.shop_id, MemberTier.customer_id == Balance.holder))
        .where(
            Balance.shop_id == shop_id,
            Balance.asset == int(Asset.POINTS),
            Balance.holder > after,
            ~Balance.holder.startswith("@"),
        )
        .order_by(Balance.holder)
        .limit(limit)
    ).all()
    return [(holder, int(balance), str(tier)) for holder, balance, tier in rows]


def points_movements(session: Session, *, shop_id: str, start: datetime, end: datetime) -> list[tuple[str, int]]:
    """Member-side points entries in [start, end), summed per kind and sign (for `summary.points_flows`)."""
    positive = Entry.delta > 0
    rows = session.execute(
        select(Entry.kind, func.sum(Entry.delta))
        .where(
            Entry.shop_id == shop_id,
            Entry.asset == int(Asset.POINTS),
            ~Entry.holder.startswith("@"),
            Entry.created_at >= start,
            Entry.created_at < end,
        )
        .group_by(Entry.kind, positive)
    ).all()
    return [(str(kind), int(total or 0)) for kind, total in rows]


def tier_counts(session: Session, *, shop_id: str) -> dict[str, int]:
    """Members with a points account per tier code ("" = no tier yet), as `member_standings` sees them."""
    tier = func.coalesce(MemberTier.tier_code, "")
    rows = session.execute(
        select(tier, func.count())
        .select_from(Balance)
        .outerjoin(MemberTier, and_(MemberTier.shop_id == Balance.shop_id, MemberTier.customer_id == Balance.holder))
        .where(Balance.shop_id == shop_id, Balance.asset == int(Asset.POINTS), ~Balance.holder.startswith("@"))
        .group_by(tier)
    ).all()
    return {str(code): int(n) for code, n in rows}
