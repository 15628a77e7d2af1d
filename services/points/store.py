"""The points ledger: programs, balances, lots, accounts, tiers, expiry and reconciliation.

Use cases built on it live beside it: `earnings` (orders, refunds, points as
payment), `mall`, `wallet` (stored value, rebate credit), `rewards` (event
rewards, coupons) and `erasure`. Each function runs inside the caller's
transaction.

Locking rule: every change to a member's balances, lots, earnings or
redemptions first takes `lock_member` (the member's points balance row, FOR
UPDATE). One member's mutations are therefore serial on every replica, while
different members never wait on each other. Mall stock is changed with a
conditional UPDATE after the member lock, so the lock order is always
member → item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loyalty.points.v1 import points_pb2
from sqlalchemy import String, and_, bindparam, case, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from services.common.db import UtcDateTime, on_postgres
from services.common.errors import FailedPrecondition, Violations
from services.points import tiers as tier_rules
from services.points.domain import (
    Asset,
    apply_delta,
)
from services.points.expiry import LotBalance, expires_at, plan_consumption
from services.points.models import (
    Balance,
    Entry,
    Lot,
    LotUse,
    MemberTier,
    OrderEarning,
    OrderSpend,
    ProgramRecord,
    TierChange,
)
from services.points.program import ProgramRules, program_rules, with_defaults

# Counter accounts: where value comes from and goes to, so every transfer sums to zero.
SYSTEM_ADJUSTMENTS = "@adjustments"
SYSTEM_EARNED = "@earned"
SYSTEM_REFUNDS = "@refunds"
SYSTEM_SPENT = "@spent"
SYSTEM_MALL = "@mall"
SYSTEM_EXPIRED = "@expired"
SYSTEM_TOP_UPS = "@top_ups"
SYSTEM_REWARDS = "@rewards"
SYSTEM_CAMPAIGNS = "@campaigns"
LOT_ASSETS = frozenset({Asset.POINTS, Asset.STORED_PRINCIPAL, Asset.STORED_BONUS, Asset.REBATE})
EXPIRING_ASSETS = (Asset.POINTS, Asset.REBATE)

PENDING = points_pb2.EARNING_STATE_PENDING
ACTIVE = points_pb2.EARNING_STATE_ACTIVE
REFUNDED = points_pb2.EARNING_STATE_REFUNDED


# The SQL twin of `domain.kept_share` for an earning's points: integer division
# of non-negative numbers truncates, which is floor, on PostgreSQL and SQLite alike.
KEPT_POINTS = case(
    (
        OrderEarning.paid_minor > 0,
        OrderEarning.earned_points * (OrderEarning.paid_minor - OrderEarning.refunded_minor) / OrderEarning.paid_minor,
    ),
    (OrderEarning.refunded_minor > 0, 0),
    else_=OrderEarning.earned_points,
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


# ---------------------------------------------------------------- ledger


def lock_member(session: Session, *, shop_id: str, customer_id: str) -> Balance:
    """The member's points balance row, created if missing and locked until the transaction ends."""
    return lock_balance(session, shop_id=shop_id, holder=customer_id, asset=Asset.POINTS)


def lock_balance(session: Session, *, shop_id: str, holder: str, asset: Asset) -> Balance:
    """A balance row, created if missing, locked until the transaction ends (locked once per transaction)."""
    return lock_balances(session, shop_id=shop_id, holder=holder, assets=(asset,))[asset]


def _persistent_balance(
    session: Session, shop_id: str, holder: str, asset: int, balance: int, updated_at: datetime | None
) -> Balance:
    """The session's Balance for a row just read by a Core statement, without loading it again.

    (An ORM-enabled upsert returning entities costs several times the statement itself.)
    """
    key = identity_key(Balance, (shop_id, holder, asset))
    held = session.identity_map.get(key)
    if held is not None:
        row: Balance = held
        set_committed_value(row, "balance", balance)
        set_committed_value(row, "updated_at", updated_at)
        return row
    row = Balance(shop_id=shop_id, holder=holder, asset=asset, balance=balance, updated_at=updated_at)
    make_transient_to_detached(row)
    session.add(row)
    return row


def lock_balances(session: Session, *, shop_id: str, holder: str, assets: Sequence[Asset]) -> dict[Asset, Balance]:
    """Several balance rows of one holder, created if missing and locked, in one statement.

    An upsert whose no-op update takes the row lock and returns the row, instead
    of insert-if-missing followed by SELECT ... FOR UPDATE; rows are locked in
    asset order (points, the member lock, first). Rows this transaction already
    locked are answered from the session without a statement.
    """
    locked: dict[tuple[str, str, int], Balance] = session.info.setdefault("locked_balances", {})
    wanted = sorted({int(asset) for asset in assets})
    missing = [asset for asset in wanted if (shop_id, holder, asset) not in locked]
    if missing:
        dialect_insert = pg_insert if on_postgres(session) else sqlite_insert
        upsert = dialect_insert(Balance).values(
            [{"shop_id": shop_id, "holder": holder, "asset": asset, "balance": 0} for asset in missing]
        )
        statement = upsert.on_conflict_do_update(
            index_elements=[Balance.shop_id, Balance.holder, Balance.asset],
            set_={"balance": Balance.balance},  # a no-op update: it only takes the row lock
        ).returning(Balance.asset, Balance.balance, Balance.updated_at)
        for asset, balance, updated_at in session.execute(statement).all():
            locked[(shop_id, holder, asset)] = _persistent_balance(session, shop_id, holder, asset, balance, updated_at)
    return {Asset(asset): locked[(shop_id, holder, asset)] for asset in wanted}


@dataclass(frozen=True)
class Posting:
    """What a transfer is: who, which asset, how much, why. `delta` is the member's side."""

    shop_id: str
    customer_id: str
    asset: Asset
    delta: int
    counter: str
    kind: str
    request_id: str
    reason: str = ""

    @property
    def transfer_id(self) -> str:
        return f"{self.request_id}:{self.kind}"


def post(session: Session, balance: Balance, posting: Posting, now: datetime, *, allow_negative: bool) -> Entry:
    """Writes both sides of a transfer and moves the (already locked) cached balance."""
    movement = apply_delta(balance.balance, posting.delta, allow_negative=allow_negative)
    balance.balance = movement.after
    balance.updated_at = now
    common = {
        "shop_id": posting.shop_id,
        "transfer_id": posting.transfer_id,
        "asset": int(posting.asset),
        "kind": posting.kind,
        "reason": posting.reason,
        "request_id": posting.request_id,
        "created_at": now,
    }
    member_entry = Entry(holder=posting.customer_id, delta=posting.delta, balance_after=movement.after, **common)
    session.add_all([member_entry, Entry(holder=posting.counter, delta=-posting.delta, balance_after=None, **common)])
    return member_entry  # flushed with the rest of the transaction; callers that need its id flush


def credit(session: Session, posting: Posting, now: datetime, *, lot_expires_at: datetime | None = None) -> Entry:
    """A credit; for lot assets, the part that does not repay a negative balance becomes a new lot."""
    balance = lock_balance(session, shop_id=posting.shop_id, holder=posting.customer_id, asset=posting.asset)
    before = balance.balance
    entry = post(session, balance, posting, now, allow_negative=True)
    lot_part = max(0, balance.balance) - max(0, before)
    if posting.asset in LOT_ASSETS and lot_part > 0:
        session.add(
            Lot(
                shop_id=posting.shop_id,
                customer_id=posting.customer_id,
                asset=int(posting.asset),
                transfer_id=posting.transfer_id,
                amount=posting.delta,
                remaining=lot_part,
                earned_at=now,
                expires_at=lot_expires_at,
            )
        )
    return entry


def debit(session: Session, posting: Posting, now: datetime, *, allow_negative: bool = False) -> Entry:
    """A debit (posting.delta < 0) that consumes lots soonest-expiring first, recording what it took.

    Lots that expired but were not swept yet are expired first, so a member
    never spends points that are already gone.
    """
    balance = lock_balance(session, shop_id=posting.shop_id, holder=posting.customer_id, asset=posting.asset)
    if posting.asset not in LOT_ASSETS:
        entry = post(session, balance, posting, now, allow_negative=allow_negative)
        session.flush()
        return entry
    held = member_lots(session, shop_id=posting.shop_id, customer_id=posting.customer_id, asset=posting.asset)
    expire_lots(session, balance, [lot for lot in held if lot.expires_at is not None and lot.expires_at <= now], now)
    lots = [lot for lot in held if lot.expires_at is None or lot.expires_at > now]
    before = balance.balance
    entry = post(session, balance, posting, now, allow_negative=allow_negative)
    from_lots = max(0, before) - max(0, balance.balance)
    by_id = {lot.id: lot for lot in lots}
    plan = plan_consumption([LotBalance(lot.id, lot.remaining, lot.expires_at) for lot in lots], from_lots)
    for lot_id, take in plan:
        by_id[lot_id].remaining -= take
        session.add(LotUse(shop_id=posting.shop_id, transfer_id=posting.transfer_id, lot_id=lot_id, amount=take))
    session.flush()
    return entry


def member_lots(session: Session, *, shop_id: str, customer_id: str, asset: Asset) -> Sequence[Lot]:
    """The member's lots that still hold something, expired or not."""
    return session.scalars(
        select(Lot).where(
            Lot.shop_id == shop_id, Lot.customer_id == customer_id, Lot.asset == int(asset), Lot.remaining > 0
        )
    ).all()


def expire_member_lots(session: Session, balance: Balance, asset: Asset, now: datetime) -> int:
    """Expires the member's lots whose time has come (the balance row is locked); returns the points expired."""
    held = member_lots(session, shop_id=balance.shop_id, customer_id=balance.holder, asset=asset)
    return expire_lots(
        session, balance, [lot for lot in held if lot.expires_at is not None and lot.expires_at <= now], now
    )


def expire_lots(session: Session, balance: Balance, due: Sequence[Lot], now: datetime) -> int:
    total = 0
    for lot in due:
        posting = Posting(
            shop_id=lot.shop_id,
            customer_id=lot.customer_id,
            asset=Asset(lot.asset),
            delta=-lot.remaining,
            counter=SYSTEM_EXPIRED,
            kind="EXPIRY",
            request_id=f"expiry-{lot.id}",
            reason=f"lot earned {lot.earned_at:%Y-%m-%d} expired",
        )
        post(session, balance, posting, now, allow_negative=False)
        total += lot.remaining
        lot.remaining = 0
    return total


def record_spend(session: Session, posting: Posting, order_id: str) -> None:
    """Remembers what a debit paid for an order, so refunds of the order can give a share back."""
    session.add(
        OrderSpend(
            transfer_id=posting.transfer_id,
            shop_id=posting.shop_id,
            order_id=order_id,
            customer_id=posting.customer_id,
            asset=int(posting.asset),
            amount=-posting.delta,
            restored=0,
        )
    )


def restore_to_lots(session: Session, posting: Posting, used_by: str, now: datetime) -> tuple[int, int]:
    """Gives back up to `posting.delta` of what transfer `used_by` took, to the lots it took from.

    The most recently consumed lots come back first. What belonged to lots that
    have expired since is not given back. Returns (restored, not restored
    because expired).
    """
    uses = session.scalars(
        select(LotUse)
        .where(LotUse.shop_id == posting.shop_id, LotUse.transfer_id == used_by, LotUse.amount > LotUse.restored)
        .order_by(LotUse.id.desc())
    ).all()
    lots = {lot.id: lot for lot in session.scalars(select(Lot).where(Lot.id.in_([u.lot_id for u in uses])))}
    wanted, restored, expired = posting.delta, 0, 0
    back_to_lots: list[tuple[Lot, int]] = []
    for use in uses:
        if wanted == 0:
            break
        take = min(use.amount - use.restored, wanted)
        use.restored += take
        wanted -= take
        lot = lots[use.lot_id]
        if lot.expires_at is not None and lot.expires_at <= now:
            expired += take
        else:
            restored += take
            back_to_lots.append((lot, take))
    if restored:
        balance = lock_balance(session, shop_id=posting.shop_id, holder=posting.customer_id, asset=posting.asset)
        before = balance.balance
        post(session, balance, _with_delta(posting, restored), now, allow_negative=True)
        to_lots = max(0, balance.balance) - max(0, before)  # the rest repays a negative balance
        for lot, take in back_to_lots:
            share = min(take, to_lots)
            lot.remaining += share
            to_lots -= share
    session.flush()
    return restored, expired


def _with_delta(posting: Posting, delta: int) -> Posting:
    return Posting(**{**posting.__dict__, "delta": delta})


# ---------------------------------------------------------------- accounts


@dataclass(frozen=True)
class AccountView:
    customer_id: str
    points: int
    growth: int
    updated_at: datetime | None
    pending_points: int
    tier: points_pb2.TierStatus
    expiring_points: int
    expiring_at: datetime | None
    stored_principal: int = 0
    stored_bonus: int = 0
    rebate: int = 0


def _member_scalar(column: Any, *conditions: Any) -> Any:
    return select(column).where(*conditions).scalar_subquery()


_SHOP, _CUSTOMER = bindparam("shop_id", type_=String()), bindparam("customer_id", type_=String())
_NOW, _SINCE = bindparam("now", type_=UtcDateTime()), bindparam("since", type_=UtcDateTime())
_MEMBER_LOTS = (Lot.shop_id == _SHOP, Lot.customer_id == _CUSTOMER, Lot.asset == int(Asset.POINTS), Lot.remaining > 0)
_SOONEST = _member_scalar(func.min(Lot.expires_at), *_MEMBER_LOTS, Lot.expires_at > _NOW)
_PENDING_EARNINGS = (
    OrderEarning.shop_id == _SHOP,
    OrderEarning.customer_id == _CUSTOMER,
    OrderEarning.state == PENDING,
)


def _balance_of(asset: Asset) -> Any:
    return _member_scalar(
        Balance.balance, Balance.shop_id == _SHOP, Balance.holder == _CUSTOMER, Balance.asset == int(asset)
    )


# Everything GetAccount shows, in one round trip (compiled once, then cached by SQLAlchemy).
ACCOUNT_QUERY = select(
    _balance_of(Asset.POINTS).label("points"),
    _balance_of(Asset.GROWTH).label("growth"),
    _balance_of(Asset.STORED_PRINCIPAL).label("principal"),
    _balance_of(Asset.STORED_BONUS).label("bonus"),
    _balance_of(Asset.REBATE).label("rebate"),
    _member_scalar(
        func.coalesce(func.sum(Lot.remaining), 0),
        Lot.shop_id == _SHOP,
        Lot.customer_id == _CUSTOMER,
        Lot.asset == int(Asset.REBATE),
        Lot.remaining > 0,
        Lot.expires_at <= _NOW,
    ).label("expired_rebate"),
    _member_scalar(func.max(Balance.updated_at), Balance.shop_id == _SHOP, Balance.holder == _CUSTOMER).label(
        "updated_at"
    ),
    _member_scalar(func.coalesce(func.sum(Lot.remaining), 0), *_MEMBER_LOTS, Lot.expires_at <= _NOW).label("expired"),
    _SOONEST.label("soonest"),
    _member_scalar(func.coalesce(func.sum(Lot.remaining), 0), *_MEMBER_LOTS, Lot.expires_at == _SOONEST).label(
        "soonest_points"
    ),
    _member_scalar(func.coalesce(func.sum(KEPT_POINTS), 0), *_PENDING_EARNINGS).label("pending"),
    _member_scalar(MemberTier.tier_code, MemberTier.shop_id == _SHOP, MemberTier.customer_id == _CUSTOMER).label(
        "tier"
    ),
    _member_scalar(MemberTier.since, MemberTier.shop_id == _SHOP, MemberTier.customer_id == _CUSTOMER).label("since"),
    _member_scalar(
        func.coalesce(func.sum(OrderEarning.paid_minor - OrderEarning.refunded_minor), 0),
        OrderEarning.shop_id == _SHOP,
        OrderEarning.customer_id == _CUSTOMER,
        OrderEarning.state == ACTIVE,
        OrderEarning.paid_at >= _SINCE,
    ).label("rolling_spend"),
)


def get_account(session: Session, *, shop_id: str, customer_id: str, rules: ProgramRules, now: datetime) -> AccountView:
    since = now - timedelta(days=rules.tiers.rolling_window_days)
    row = session.execute(
        ACCOUNT_QUERY, {"shop_id": shop_id, "customer_id": customer_id, "now": now, "since": since}
    ).one()
    growth = int(row.growth or 0)
    code = row.tier or ""
    value = growth if rules.tiers.basis is tier_rules.TierBasis.LIFETIME_GROWTH else int(row.rolling_spend or 0)
    return AccountView(
        customer_id=customer_id,
        points=int(row.points or 0) - int(row.expired or 0),
        growth=growth,
        updated_at=row.updated_at,
        pending_points=int(row.pending or 0),
        tier=_tier_status(rules, code, row.since, value),
        expiring_points=int(row.soonest_points or 0),
        expiring_at=row.soonest,
        stored_principal=int(row.principal or 0),
        stored_bonus=int(row.bonus or 0),
        rebate=int(row.rebate or 0) - int(row.expired_rebate or 0),
    )


def list_entries(session: Session, *, shop_id: str, customer_id: str, limit: int, before_id: int | None) -> list[Entry]:
    query = select(Entry).where(Entry.shop_id == shop_id, Entry.holder == customer_id)
    if before_id is not None:
        query = query.where(Entry.id < before_id)
    return list(session.scalars(query.order_by(Entry.id.desc()).limit(limit)).all())


def adjust(session: Session, posting: Posting, rules: ProgramRules, now: datetime) -> Entry:
    """A merchant's manual adjustment; credited points expire like earned ones."""
    lock_member(session, shop_id=posting.shop_id, customer_id=posting.customer_id)
    if posting.delta > 0:
        entry = credit(session, posting, now, lot_expires_at=expires_at(rules.expiry, now, rules.zone))
        session.flush()
        return entry
    return debit(session, posting, now)


# ---------------------------------------------------------------- tiers


def current_tier(session: Session, *, shop_id: str, customer_id: str) -> MemberTier | None:
    return session.get(MemberTier, (shop_id, customer_id))


def basis_value(session: Session, *, shop_id: str, customer_id: str, rules: ProgramRules, now: datetime) -> int:
    if rules.tiers.basis is tier_rules.TierBasis.LIFETIME_GROWTH:
        row = session.get(Balance, (shop_id, customer_id, int(Asset.GROWTH)))
        return row.balance if row else 0
    since = now - timedelta(days=rules.tiers.rolling_window_days)
    total = session.scalar(
        select(func.coalesce(func.sum(OrderEarning.paid_minor - OrderEarning.refunded_minor), 0)).where(
            OrderEarning.shop_id == shop_id,
            OrderEarning.customer_id == customer_id,
            OrderEarning.state == ACTIVE,
            OrderEarning.paid_at >= since,
        )
    )
    return int(total or 0)


def move_tier(session: Session, *, shop_id: str, customer_id: str, move: tier_rules.TierMove, now: datetime) -> None:
    row = current_tier(session, shop_id=shop_id, customer_id=customer_id)
    if row is None:
        row = MemberTier(shop_id=shop_id, customer_id=customer_id, tier_code="", since=now)
        session.add(row)
    session.add(
        TierChange(
            shop_id=shop_id,
            customer_id=customer_id,
            from_code=row.tier_code,
            to_code=move.to_code,
            reason=move.reason[:200],
            changed_at=now,
        )
    )
    row.tier_code, row.since = move.to_code, now
    session.flush()


def upgrade_if_reached(session: Session, *, shop_id: str, customer_id: str, rules: ProgramRules, now: datetime) -> None:
    if not rules.tiers.tiers:
        return
    row = current_tier(session, shop_id=shop_id, customer_id=customer_id)
    value = basis_value(session, shop_id=shop_id, customer_id=customer_id, rules=rules, now=now)
    move = tier_rules.upgrade(rules.tiers, row.tier_code if row else "", value)
    if move is not None:
        move_tier(session, shop_id=shop_id, customer_id=customer_id, move=move, now=now)


def review_member_tier(session: Session, *, shop_id: str, customer_id: str, rules: ProgramRules, now: datetime) -> None:
    lock_member(session, shop_id=shop_id, customer_id=customer_id)
    row = current_tier(session, shop_id=shop_id, customer_id=customer_id)
    value = basis_value(session, shop_id=shop_id, customer_id=customer_id, rules=rules, now=now)
    move = tier_rules.review(rules.tiers, row.tier_code if row else "", value, row.since if row else None, now)
    if move is not None:
        move_tier(session, shop_id=shop_id, customer_id=customer_id, move=move, now=now)
    if row is not None:
        row.reviewed_at = now


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


def _tier_status(rules: ProgramRules, code: str, since: datetime | None, value: int) -> points_pb2.TierStatus:
    tier = rules.tiers.by_code(code)
    ahead = tier_rules.progress(rules.tiers, code, value)
    status = points_pb2.TierStatus(
        code=code, name=tier.name if tier else "", basis_value=value, next_code=ahead.next_code, to_next=ahead.to_next
    )
    if since is not None and code:
        status.since.FromDatetime(since)
    return status


# ---------------------------------------------------------------- expiry sweep


def members_with_expired_lots(session: Session, *, now: datetime, limit: int) -> list[tuple[str, str]]:
    rows = session.execute(
        select(Lot.shop_id, Lot.customer_id)
        .where(Lot.remaining > 0, Lot.expires_at <= now)
        .group_by(Lot.shop_id, Lot.customer_id)
        .limit(limit)
    ).all()
    return [(shop, customer) for shop, customer in rows]


def expire_member(session: Session, *, shop_id: str, customer_id: str, now: datetime) -> int:
    """Expires the member's due points and rebate credit; returns the total expired."""
    held = lock_balances(session, shop_id=shop_id, holder=customer_id, assets=(Asset.POINTS, *EXPIRING_ASSETS))
    total = 0
    for asset in EXPIRING_ASSETS:
        total += expire_member_lots(session, held[asset], asset, now)
    session.flush()
    return total


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
