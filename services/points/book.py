"""One member's ledger in memory: the facts a use case reads, the ledger rules it applies, the rows it writes.

Pure: no I/O, no protobuf, no SQLAlchemy. A storage path reads a `MemberFacts`
snapshot of the member (the PostgreSQL hot path in `services.points.fast`, or
SQLAlchemy Core under the member lock in `services.points.store`), a use case
changes the `MemberBook` built on it, and the storage path writes what the book
lists as changed. Whatever the storage path, the ledger rules below are the
only implementation: double-entry postings, credits that repay a negative
balance before they become a lot, debits that expire due lots first and then
consume lots soonest-expiring first, refunds that give back to the lots a debit
took from, tier moves, and the account a member is shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from services.points import tiers as tier_rules
from services.points.domain import ACTIVE, PENDING, Asset, apply_delta, kept_share
from services.points.expiry import LotBalance, plan_consumption

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
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Posting:
    """What a transfer is: which asset, how much for the member (`delta`), against which counter account, why."""

    asset: Asset
    delta: int
    counter: str
    kind: str
    request_id: str
    reason: str = ""

    @property
    def transfer_id(self) -> str:
        return f"{self.request_id}:{self.kind}"

    def with_delta(self, delta: int) -> Posting:
        return Posting(self.asset, delta, self.counter, self.kind, self.request_id, self.reason)


@dataclass
class NewEntry:
    """One side of a transfer, to be inserted; `id` is set by the storage path (reserved or returned)."""

    transfer_id: str
    holder: str
    asset: Asset
    delta: int
    balance_after: int | None
    kind: str
    reason: str
    request_id: str
    created_at: datetime
    id: int | None = None

    def columns(self) -> dict[str, object]:
        """The entry's own columns, as both storage paths write them (each adds its shop, id or time)."""
        return {
            "transfer_id": self.transfer_id,
            "holder": self.holder,
            "asset": int(self.asset),
            "delta": self.delta,
            "balance_after": self.balance_after,
            "kind": self.kind,
            "reason": self.reason,
            "request_id": self.request_id,
        }


@dataclass
class BalanceRow:
    balance: int
    updated_at: datetime | None


@dataclass
class LotState:
    """A lot: `id` None for one this book created (inserted when the book is saved)."""

    id: int | None
    asset: Asset
    transfer_id: str
    amount: int
    remaining: int
    earned_at: datetime
    expires_at: datetime | None

    def due(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass
class LotUseState:
    """How much of a lot a debit took; `id` None for one this book created."""

    id: int | None
    transfer_id: str
    lot_id: int
    amount: int
    restored: int


@dataclass
class SpendState:
    """What one debit paid toward an order (refunds of the order give a share back)."""

    transfer_id: str
    order_id: str
    customer_id: str
    asset: Asset
    amount: int
    restored: int


@dataclass
class EarningState:
    """What one order earns (the `order_earnings` row)."""

    order_id: str
    customer_id: str
    fingerprint: str
    paid_at: datetime
    paid_minor: int
    currency: str
    earned_points: int
    earned_growth: int
    earned_rebate: int
    breakdown: str  # JSON [[rule, points], ...]
    refunded_minor: int
    state: int
    activates_at: datetime
    activated_at: datetime | None
    created_at: datetime

    def kept_points(self) -> int:
        return kept_share(self.earned_points, self.paid_minor, self.refunded_minor)


@dataclass(frozen=True)
class PendingEarning:
    """A pending earning of the member, as far as the account's pending points need it."""

    order_id: str
    earned_points: int
    paid_minor: int
    refunded_minor: int


@dataclass
class TierState:
    code: str
    since: datetime
    reviewed_at: datetime | None


@dataclass(frozen=True)
class TierMoveRecord:
    from_code: str
    to_code: str
    reason: str
    changed_at: datetime


@dataclass
class ItemState:
    item_id: str
    name: str
    cost_points: int
    stock: int
    starts_at: datetime | None
    ends_at: datetime | None
    per_customer_limit: int
    redeemed_by_member: int  # units this member redeemed before


@dataclass(frozen=True)
class Redemption:
    item_id: str
    quantity: int
    points: int
    transfer_id: str


@dataclass
class TopUpState:
    top_up_id: str
    customer_id: str
    transfer_id: str
    paid_minor: int
    bonus_minor: int
    currency: str
    refunded_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class LotSummary:
    """What the account shows of lots the book did not load: unswept expired value and the soonest expiry."""

    expired_points: int = 0
    soonest: datetime | None = None
    soonest_points: int = 0
    expired_rebate: int = 0


@dataclass
class MemberFacts:
    """A consistent snapshot of one member: what a storage path reads for a use case.

    `lots` holds every lot of the `lots_of` assets that still holds something
    (plus lots named by `lot_uses`); `summary` covers the points and rebate lots
    for the account when those assets are not in `lots_of`. `pending` lists the
    member's pending earnings; `rolling_spend` is the tier basis of a
    rolling-window program (None when not asked for).
    """

    shop_id: str
    customer_id: str
    now: datetime
    balances: dict[Asset, BalanceRow] = field(default_factory=dict)
    lots_of: frozenset[Asset] = frozenset()
    lots: list[LotState] = field(default_factory=list)
    summary: LotSummary = field(default_factory=LotSummary)
    pending: list[PendingEarning] = field(default_factory=list)
    tier: TierState | None = None
    rolling_spend: int | None = None
    rolling_since: datetime | None = None
    earning: EarningState | None = None
    first_order: bool = False
    earned_today: int = 0
    spends: list[SpendState] = field(default_factory=list)
    lot_uses: list[LotUseState] = field(default_factory=list)
    item: ItemState | None = None
    top_up: TopUpState | None = None


@dataclass(frozen=True)
class AccountView:
    """Everything GetAccount shows of a member."""

    customer_id: str
    points: int
    growth: int
    updated_at: datetime | None
    pending_points: int
    tier_code: str
    tier_since: datetime | None
    tier_basis_value: int
    expiring_points: int
    expiring_at: datetime | None
    stored_principal: int = 0
    stored_bonus: int = 0
    rebate: int = 0


def summarize_lots(lots: Iterable[LotState], now: datetime) -> LotSummary:
    """The account's view of points and rebate lots: unswept expired value, and the soonest expiry with its points."""
    expired_points = expired_rebate = 0
    soonest: datetime | None = None
    soonest_points = 0
    for lot in lots:
        if lot.remaining <= 0:
            continue
        if lot.asset is Asset.REBATE:
            expired_rebate += lot.remaining if lot.due(now) else 0
        elif lot.asset is Asset.POINTS:
            if lot.due(now):
                expired_points += lot.remaining
            elif lot.expires_at is not None:
                if soonest is None or lot.expires_at < soonest:
                    soonest, soonest_points = lot.expires_at, lot.remaining
                elif lot.expires_at == soonest:
                    soonest_points += lot.remaining
    return LotSummary(expired_points, soonest, soonest_points, expired_rebate)


def merge_summaries(first: LotSummary, second: LotSummary) -> LotSummary:
    """The summary of two disjoint sets of lots."""
    if first.soonest is None or (second.soonest is not None and second.soonest < first.soonest):
        soonest, soonest_points = second.soonest, second.soonest_points
    else:
        soonest, soonest_points = first.soonest, first.soonest_points
    if first.soonest is not None and first.soonest == second.soonest:
        soonest_points = first.soonest_points + second.soonest_points
    return LotSummary(
        first.expired_points + second.expired_points,
        soonest,
        soonest_points,
        first.expired_rebate + second.expired_rebate,
    )


def rolling_contribution(earning: EarningState | None, since: datetime | None) -> int:
    """What an earning adds to a rolling-window spend basis: net paid of an active order inside the window."""
    if earning is None or since is None or earning.state != ACTIVE or earning.paid_at < since:
        return 0
    return earning.paid_minor - earning.refunded_minor


def pending_contribution(earning: EarningState | None) -> int:
    return earning.kept_points() if earning is not None and earning.state == PENDING else 0


R = TypeVar("R")


def _copy(row: R) -> R:
    """A shallow copy of a state row (copy.copy takes the __reduce_ex__ road, ten times slower, on every hot call)."""
    if row is None:
        return row
    clone: R = object.__new__(type(row))
    clone.__dict__.update(row.__dict__)
    return clone


class MemberBook:
    """A member's ledger state plus everything a use case changed in it, ready to be written."""

    def __init__(self, facts: MemberFacts) -> None:
        self.facts = facts
        self.shop_id = facts.shop_id
        self.customer_id = facts.customer_id
        self.now = facts.now
        self.balances = {asset: _copy(row) for asset, row in facts.balances.items()}
        self.touched: set[Asset] = set()  # balance rows to write (created when missing)
        self.entries: list[NewEntry] = []
        self.lots: dict[int, LotState] = {lot.id: _copy(lot) for lot in facts.lots if lot.id is not None}
        self.new_lots: list[LotState] = []
        self.changed_lots: set[int] = set()
        self.lot_uses: dict[int, LotUseState] = {u.id: _copy(u) for u in facts.lot_uses if u.id is not None}
        self.new_lot_uses: list[LotUseState] = []
        self.changed_lot_uses: set[int] = set()
        self.spends: dict[str, SpendState] = {s.transfer_id: _copy(s) for s in facts.spends}
        self.new_spends: list[SpendState] = []
        self.changed_spends: set[str] = set()
        self.earning: EarningState | None = _copy(facts.earning)
        self.earning_is_new = False
        self.earning_changed = False
        self.tier: TierState | None = _copy(facts.tier)
        self.tier_changed = False
        self.tier_moves: list[TierMoveRecord] = []
        self.item: ItemState | None = _copy(facts.item)
        self.redemption: Redemption | None = None
        self.top_up: TopUpState | None = _copy(facts.top_up)
        self.top_up_is_new = False
        self.top_up_changed = False

    # -- balances and postings

    def balance(self, asset: Asset) -> int:
        row = self.balances.get(asset)
        return row.balance if row is not None else 0

    def touch(self, asset: Asset) -> BalanceRow:
        """The asset's balance row, created (at zero) when missing; it is written with the book."""
        self.touched.add(asset)
        row = self.balances.get(asset)
        if row is None:
            row = self.balances[asset] = BalanceRow(0, None)
        return row

    def post(self, posting: Posting, *, allow_negative: bool) -> NewEntry:
        """Both sides of a transfer, and the member's balance moved; a debit below zero is refused unless allowed."""
        row = self.touch(posting.asset)
        movement = apply_delta(row.balance, posting.delta, allow_negative=allow_negative)
        row.balance, row.updated_at = movement.after, self.now
        member = NewEntry(
            posting.transfer_id,
            self.customer_id,
            posting.asset,
            posting.delta,
            movement.after,
            posting.kind,
            posting.reason,
            posting.request_id,
            self.now,
        )
        counter = NewEntry(
            posting.transfer_id,
            posting.counter,
            posting.asset,
            -posting.delta,
            None,
            posting.kind,
            posting.reason,
            posting.request_id,
            self.now,
        )
        self.entries += (member, counter)
        return member

    def credit(self, posting: Posting, *, lot_expires_at: datetime | None = None) -> NewEntry:
        """A credit; for lot assets, the part that does not repay a negative balance becomes a new lot."""
        before = self.balance(posting.asset)
        entry = self.post(posting, allow_negative=True)
        lot_part = max(0, self.balance(posting.asset)) - max(0, before)
        if posting.asset in LOT_ASSETS and lot_part > 0:
            self.new_lots.append(
                LotState(None, posting.asset, posting.transfer_id, posting.delta, lot_part, self.now, lot_expires_at)
            )
        return entry

    def debit(self, posting: Posting, *, allow_negative: bool = False) -> NewEntry:
        """A debit (`delta` < 0) that consumes lots soonest-expiring first, recording what it took from each.

        Lots that expired but were not swept yet are expired first, so a member
        never spends value that is already gone.
        """
        if posting.asset not in LOT_ASSETS:
            return self.post(posting, allow_negative=allow_negative)
        held = self.live_lots(posting.asset)
        self.expire([lot for lot in held if lot.due(self.now)])
        usable = [lot for lot in held if not lot.due(self.now)]
        before = self.balance(posting.asset)
        entry = self.post(posting, allow_negative=allow_negative)
        from_lots = max(0, before) - max(0, self.balance(posting.asset))
        plan = plan_consumption([LotBalance(lot.id or 0, lot.remaining, lot.expires_at) for lot in usable], from_lots)
        for lot_id, take in plan:
            self._change_lot(lot_id, -take)
            self.new_lot_uses.append(LotUseState(None, posting.transfer_id, lot_id, take, 0))
        return entry

    def live_lots(self, asset: Asset) -> list[LotState]:
        """The loaded lots of `asset` that still hold something, by id (the asset's lots must have been loaded)."""
        if asset not in self.facts.lots_of:
            raise AssertionError(f"the lots of {asset.name} were not loaded for this use case")
        return [lot for _, lot in sorted(self.lots.items()) if lot.asset is asset and lot.remaining > 0]

    def expire(self, due: Sequence[LotState]) -> int:
        """Moves the remaining value of due lots to the expired account; returns how much."""
        total = 0
        for lot in due:
            assert lot.id is not None
            posting = Posting(
                lot.asset,
                -lot.remaining,
                SYSTEM_EXPIRED,
                "EXPIRY",
                f"expiry-{lot.id}",
                f"lot earned {lot.earned_at.astimezone(UTC):%Y-%m-%d} expired",
            )
            self.post(posting, allow_negative=False)
            total += lot.remaining
            self._change_lot(lot.id, -lot.remaining)
        return total

    def expire_due(self, asset: Asset) -> int:
        return self.expire([lot for lot in self.live_lots(asset) if lot.due(self.now)])

    def restore(self, posting: Posting, used_by: str) -> tuple[int, int]:
        """Gives back up to `posting.delta` of what transfer `used_by` took, to the lots it took from.

        The most recently consumed lots come back first. What belonged to lots
        that have expired since is not given back. Returns (restored, not
        restored because expired).
        """
        uses = sorted(
            (use for use in self._uses_of(used_by) if use.amount > use.restored),
            key=lambda use: -(use.id or 0),
        )
        wanted, restored, expired = posting.delta, 0, 0
        back_to_lots: list[tuple[LotState, int]] = []
        for use in uses:
            if wanted == 0:
                break
            take = min(use.amount - use.restored, wanted)
            use.restored += take
            assert use.id is not None
            self.changed_lot_uses.add(use.id)
            wanted -= take
            lot = self.lots[use.lot_id]
            if lot.due(self.now):
                expired += take
            else:
                restored += take
                back_to_lots.append((lot, take))
        if restored:
            before = self.balance(posting.asset)
            self.post(posting.with_delta(restored), allow_negative=True)
            to_lots = max(0, self.balance(posting.asset)) - max(0, before)  # the rest repays a negative balance
            for lot, take in back_to_lots:
                share = min(take, to_lots)
                assert lot.id is not None
                self._change_lot(lot.id, share)
                to_lots -= share
        return restored, expired

    def take_from_lot(self, lot: LotState, posting: Posting) -> NewEntry:
        """A debit from one named lot (not the soonest-expiring ones): a top-up refund takes its own lots."""
        assert lot.id is not None
        entry = self.post(posting, allow_negative=False)
        self._change_lot(lot.id, posting.delta)
        self.new_lot_uses.append(LotUseState(None, posting.transfer_id, lot.id, -posting.delta, 0))
        return entry

    def record_spend(self, posting: Posting, order_id: str) -> None:
        """Remembers what a debit paid toward an order, so refunds of the order can give a share back."""
        self.new_spends.append(
            SpendState(posting.transfer_id, order_id, self.customer_id, posting.asset, -posting.delta, 0)
        )

    def restore_spend(self, spend: SpendState, back: int) -> None:
        spend.restored += back
        self.changed_spends.add(spend.transfer_id)

    def _uses_of(self, transfer_id: str) -> list[LotUseState]:
        return [use for use in self.lot_uses.values() if use.transfer_id == transfer_id]

    def _change_lot(self, lot_id: int, delta: int) -> None:
        self.lots[lot_id].remaining += delta
        self.changed_lots.add(lot_id)

    # -- earnings

    def add_earning(self, earning: EarningState) -> None:
        self.earning, self.earning_is_new = earning, True

    def change_earning(self) -> EarningState:
        assert self.earning is not None
        self.earning_changed = True
        return self.earning

    # -- tiers

    def rolling_spend(self) -> int:
        """The rolling-window spend now: as loaded, with this book's changes to its own order's earning."""
        since = self.facts.rolling_since
        loaded = self.facts.rolling_spend or 0
        return loaded - rolling_contribution(self.facts.earning, since) + rolling_contribution(self.earning, since)

    def tier_basis(self, basis: tier_rules.TierBasis) -> int:
        if basis is tier_rules.TierBasis.LIFETIME_GROWTH:
            return self.balance(Asset.GROWTH)
        return self.rolling_spend()

    def tier_code(self) -> str:
        return self.tier.code if self.tier is not None else ""

    def move_tier(self, move: tier_rules.TierMove) -> None:
        if self.tier is None:
            self.tier = TierState("", self.now, None)
        self.tier_moves.append(TierMoveRecord(self.tier.code, move.to_code, move.reason[:200], self.now))
        self.tier.code, self.tier.since = move.to_code, self.now
        self.tier_changed = True

    def upgrade_if_reached(self, rules: tier_rules.TierRules) -> None:
        if not rules.tiers:
            return
        move = tier_rules.upgrade(rules, self.tier_code(), self.tier_basis(rules.basis))
        if move is not None:
            self.move_tier(move)

    def review_tier(self, rules: tier_rules.TierRules) -> None:
        """The periodic review: up when reached, down after the grace period; the review time is kept."""
        move = tier_rules.review(
            rules,
            self.tier_code(),
            self.tier_basis(rules.basis),
            self.tier.since if self.tier is not None else None,
            self.now,
        )
        if move is not None:
            self.move_tier(move)
        if self.tier is not None:
            self.tier.reviewed_at = self.now
            self.tier_changed = True

    # -- the mall and stored value

    def redeem_item(self, item: ItemState, quantity: int, points: int, transfer_id: str) -> None:
        """Takes `quantity` units of stock; the storage path's conditional update is what guarantees no oversell."""
        item.stock -= quantity
        self.redemption = Redemption(item.item_id, quantity, points, transfer_id)

    def add_top_up(self, top_up: TopUpState) -> None:
        self.top_up, self.top_up_is_new = top_up, True

    # -- what the member is shown

    def pending_points(self) -> int:
        touched = self.earning.order_id if self.earning is not None else None
        loaded = sum(
            kept_share(p.earned_points, p.paid_minor, p.refunded_minor)
            for p in self.facts.pending
            if p.order_id != touched
        )
        return loaded + pending_contribution(self.earning)

    def lot_summary(self) -> LotSummary:
        """The account's lot figures now: from the loaded lots of an asset, else the loaded summary plus new lots."""
        for asset in EXPIRING_ASSETS:
            if asset not in self.facts.lots_of and any(self.lots[i].asset is asset for i in self.changed_lots):
                raise AssertionError(f"changed {asset.name} lots whose siblings were not loaded")
        loaded = summarize_lots(self.lots.values(), self.now)
        new = summarize_lots(self.new_lots, self.now)
        summary = self.facts.summary
        points = loaded if Asset.POINTS in self.facts.lots_of else summary
        rebate = loaded if Asset.REBATE in self.facts.lots_of else summary
        combined = LotSummary(points.expired_points, points.soonest, points.soonest_points, rebate.expired_rebate)
        return merge_summaries(combined, new)

    def account(self, rules: tier_rules.TierRules) -> AccountView:
        summary = self.lot_summary()
        stamps = [row.updated_at for row in self.balances.values() if row.updated_at is not None]
        return AccountView(
            customer_id=self.customer_id,
            points=self.balance(Asset.POINTS) - summary.expired_points,
            growth=self.balance(Asset.GROWTH),
            updated_at=max(stamps) if stamps else None,
            pending_points=self.pending_points(),
            tier_code=self.tier_code(),
            tier_since=self.tier.since if self.tier is not None else None,
            tier_basis_value=self.tier_basis(rules.basis),
            expiring_points=summary.soonest_points,
            expiring_at=summary.soonest,
            stored_principal=self.balance(Asset.STORED_PRINCIPAL),
            stored_bonus=self.balance(Asset.STORED_BONUS),
            rebate=self.balance(Asset.REBATE) - summary.expired_rebate,
        )

    def assign_entry_ids(self, ids: Sequence[int]) -> None:
        """Gives the new entries ids reserved in advance, in the order they were posted."""
        if len(ids) < len(self.entries):
            raise ValueError(f"{len(self.entries)} entries need ids, {len(ids)} reserved")
        for entry, entry_id in zip(self.entries, ids, strict=False):
            entry.id = entry_id


def rolling_since(rules: tier_rules.TierRules, now: datetime) -> datetime | None:
    """Start of the rolling window a spend-based tier basis sums over; None when the basis is lifetime growth."""
    if rules.basis is tier_rules.TierBasis.LIFETIME_GROWTH:
        return None
    return now - timedelta(days=rules.rolling_window_days)


@dataclass(frozen=True)
class MemberQuery:
    """What a use case reads about one member; both storage paths read exactly this into `MemberFacts`.

    `customer_id` empty means "the customer of `order_id`'s earning" (confirm,
    refund). `entry_ids` is how many ledger entries the use case usually
    writes: the hot path reserves their ids in its read.
    """

    shop_id: str
    now: datetime
    customer_id: str = ""
    order_id: str = ""
    earn_day: tuple[datetime, datetime] | None = None  # first-order and earned-today facts for this local day
    lots_of: frozenset[Asset] = frozenset()
    order_spends: bool = False  # the order's spends, their lot uses and the lots those took from
    item_id: str = ""
    top_up_id: str = ""
    rolling_since: datetime | None = None
    entry_ids: int = 0
