"""A shop's points program: the proto a merchant sets, validated into the domain rules it means.

The proto is what is stored (so a program reads back exactly as it was set,
defaults filled in); `program_rules` turns it into the plain rules the domain
code evaluates, and reports every bad field at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from zoneinfo import ZoneInfo

from loyalty.points.v1 import points_pb2

from services.common.convert import from_timestamp
from services.common.errors import Violations
from services.common.validation import MAX_AMOUNT_MINOR, check_currency, check_id, check_text, check_time_zone
from services.points.domain import DrawRule, SpendRules
from services.points.earning import EarnRules, Promotion, Rounding
from services.points.expiry import MAX_EXPIRY_COUNT, ExpiryKind, ExpiryPolicy
from services.points.tiers import Tier, TierBasis, TierRules

MAX_TIERS = 20
MAX_PROMOTIONS = 50
MAX_CATEGORY_RULES = 200
MAX_POINTS_RULE = 100_000_000
MAX_RATIO_PART = 1_000_000
ROUNDINGS = {
    points_pb2.ROUNDING_FLOOR: Rounding.FLOOR,
    points_pb2.ROUNDING_HALF_UP: Rounding.HALF_UP,
    points_pb2.ROUNDING_CEIL: Rounding.CEIL,
}


@dataclass(frozen=True)
class CouponTemplate:
    template_id: str
    name: str
    value_minor: int
    min_order_minor: int
    valid_days: int


@dataclass(frozen=True)
class Reward:
    points: int = 0
    coupon_template_id: str = ""


REWARD_EVENTS = ("review_with_photos", "sign_in", "referrer", "referee", "birthday")


@dataclass(frozen=True)
class ProgramRules:
    zone: ZoneInfo
    earn: EarnRules = field(default_factory=EarnRules)
    growth_per_unit: Fraction = Fraction(1)
    expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    return_window_days: int = 0
    spend: SpendRules = field(default_factory=SpendRules)
    tiers: TierRules = field(default_factory=TierRules)
    currency: str = "CNY"
    top_up_plans: tuple[tuple[int, int], ...] = ()
    draw_rule: DrawRule = DrawRule.PROPORTIONAL
    rebate_rate_bp: int = 0
    rebate_expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    coupon_templates: Mapping[str, CouponTemplate] = field(default_factory=dict)
    rewards: Mapping[str, Reward] = field(
        default_factory=dict
    )  # by event: review, sign_in, referrer, referee, birthday

    def earn_rules(self, unit_minor: int) -> EarnRules:
        """The earning rules for a currency whose unit has `unit_minor` minor units."""
        if unit_minor == self.earn.unit_minor:
            return self.earn  # the usual case (fen per yuan): no new rules object, no validation, on every earn
        return replace(self.earn, unit_minor=unit_minor)


def with_defaults(program: points_pb2.Program, default_zone: str) -> points_pb2.Program:
    """The program as stored and shown: every unset field that has a default gets it."""
    filled = points_pb2.Program()
    filled.CopyFrom(program)
    filled.time_zone = filled.time_zone or default_zone
    earn = filled.earn
    for ratio in (earn.points_per_unit, earn.birthday_month_multiplier, earn.growth_per_unit):
        _default_ratio(ratio)
    earn.rounding = earn.rounding or points_pb2.ROUNDING_FLOOR
    filled.expiry.kind = filled.expiry.kind or points_pb2.EXPIRY_KIND_NEVER
    filled.spend.max_share_bp = filled.spend.max_share_bp or 10_000
    filled.tiers.basis = filled.tiers.basis or points_pb2.TIER_BASIS_LIFETIME_GROWTH
    filled.tiers.rolling_window_days = filled.tiers.rolling_window_days or 365
    filled.currency = filled.currency or "CNY"
    filled.stored_value.draw_rule = filled.stored_value.draw_rule or points_pb2.DRAW_RULE_PROPORTIONAL
    for tier in filled.tiers.tiers:
        _default_ratio(tier.earn_multiplier)
    return filled


def _default_ratio(ratio: points_pb2.Ratio) -> None:
    if ratio.numerator == 0 and ratio.denominator == 0:
        ratio.numerator = 1
    ratio.denominator = ratio.denominator or 1


def _ratio(v: Violations, ratio: points_pb2.Ratio, path: str) -> Fraction:
    ok = 0 <= ratio.numerator <= MAX_RATIO_PART and 0 < ratio.denominator <= MAX_RATIO_PART
    v.check(ok, path, f"must be numerator 0..{MAX_RATIO_PART} over denominator 1..{MAX_RATIO_PART}")
    return Fraction(ratio.numerator, ratio.denominator) if ok else Fraction(1)


def _points(v: Violations, value: int, path: str) -> int:
    v.check(0 <= value <= MAX_POINTS_RULE, path, f"must be 0..{MAX_POINTS_RULE}")
    return value


def program_rules(v: Violations, program: points_pb2.Program) -> ProgramRules | None:
    """The rules a program (with defaults filled in) means, or None with every problem in `v`."""
    before = len(v.found)
    zone = check_time_zone(v, program.time_zone, "program.time_zone") or ZoneInfo("UTC")
    tiers = _tier_rules(v, program.tiers)
    earn = _earn_rules(v, program.earn, tiers)
    expiry_kind = ExpiryKind(program.expiry.kind) if program.expiry.kind in (1, 2, 3, 4) else None
    v.check(expiry_kind is not None, "program.expiry.kind", "unknown expiry kind")
    counted = expiry_kind not in (None, ExpiryKind.NEVER)
    least = 1 if expiry_kind is ExpiryKind.DAYS_AFTER_EARNING else 0
    v.check(
        not counted or least <= program.expiry.n <= MAX_EXPIRY_COUNT,
        "program.expiry.n",
        f"must be {least}..{MAX_EXPIRY_COUNT} for this expiry kind",
    )
    v.check(0 <= program.return_window_days <= 365, "program.return_window_days", "must be 0..365")
    v.check(0 <= program.spend.points_per_unit <= 1_000_000, "program.spend.points_per_unit", "must be 0..1000000")
    v.check(1 <= program.spend.max_share_bp <= 10_000, "program.spend.max_share_bp", "must be 1..10000")
    growth_per_unit = _ratio(v, program.earn.growth_per_unit, "program.earn.growth_per_unit")
    check_currency(v, program.currency, "program.currency")
    plans = []
    for i, plan in enumerate(program.stored_value.plans[:MAX_TIERS]):
        v.check(
            0 < plan.pay_minor <= MAX_AMOUNT_MINOR, f"program.stored_value.plans[{i}].pay_minor", "must be positive"
        )
        v.check(
            0 <= plan.bonus_minor <= plan.pay_minor,
            f"program.stored_value.plans[{i}].bonus_minor",
            "must be 0..pay_minor",
        )
        plans.append((plan.pay_minor, plan.bonus_minor))
    v.check(len(program.stored_value.plans) <= MAX_TIERS, "program.stored_value.plans", f"at most {MAX_TIERS} plans")
    v.check(len({pay for pay, _ in plans}) == len(plans), "program.stored_value.plans", "two plans with one amount")
    v.check(program.stored_value.draw_rule in (1, 2), "program.stored_value.draw_rule", "unknown draw rule")
    v.check(0 <= program.rebate.rate_bp <= 10_000, "program.rebate.rate_bp", "must be 0..10000")
    v.check(
        0 <= program.rebate.valid_days <= MAX_EXPIRY_COUNT,
        "program.rebate.valid_days",
        f"must be 0..{MAX_EXPIRY_COUNT}",
    )
    templates, rewards = _reward_rules(v, program.rewards)
    if len(v.found) > before or earn is None or tiers is None or expiry_kind is None:
        return None
    return ProgramRules(
        zone=zone,
        earn=earn,
        growth_per_unit=growth_per_unit,
        expiry=ExpiryPolicy(expiry_kind, program.expiry.n if counted else 0),
        return_window_days=program.return_window_days,
        spend=SpendRules(program.spend.points_per_unit, program.spend.max_share_bp),
        tiers=tiers,
        currency=program.currency,
        top_up_plans=tuple(plans),
        draw_rule=DrawRule(program.stored_value.draw_rule),
        rebate_rate_bp=program.rebate.rate_bp,
        rebate_expiry=ExpiryPolicy(ExpiryKind.DAYS_AFTER_EARNING, program.rebate.valid_days)
        if program.rebate.valid_days
        else ExpiryPolicy(),
        coupon_templates=templates,
        rewards=rewards,
    )


def _reward_rules(v: Violations, rules: points_pb2.RewardRules) -> tuple[dict[str, CouponTemplate], dict[str, Reward]]:
    templates: dict[str, CouponTemplate] = {}
    v.check(len(rules.coupon_templates) <= MAX_PROMOTIONS, "program.rewards.coupon_templates", "too many")
    for i, t in enumerate(rules.coupon_templates[:MAX_PROMOTIONS]):
        path = f"program.rewards.coupon_templates[{i}]"
        check_id(v, t.template_id, f"{path}.template_id")
        v.check(t.template_id not in templates, f"{path}.template_id", "duplicate template id")
        check_text(v, t.name, f"{path}.name", max_length=64)
        v.check(0 < t.value_minor <= MAX_AMOUNT_MINOR, f"{path}.value_minor", "must be positive")
        v.check(0 <= t.min_order_minor <= MAX_AMOUNT_MINOR, f"{path}.min_order_minor", "must not be negative")
        v.check(1 <= t.valid_days <= MAX_EXPIRY_COUNT, f"{path}.valid_days", f"must be 1..{MAX_EXPIRY_COUNT}")
        templates[t.template_id] = CouponTemplate(t.template_id, t.name, t.value_minor, t.min_order_minor, t.valid_days)
    rewards: dict[str, Reward] = {}
    for event in REWARD_EVENTS:
        reward = getattr(rules, event)
        path = f"program.rewards.{event}"
        _points(v, reward.points, f"{path}.points")
        v.check(
            not reward.coupon_template_id or reward.coupon_template_id in templates,
            f"{path}.coupon_template_id",
            f"unknown coupon template {reward.coupon_template_id[:64]!r}",
        )
        rewards[event] = Reward(reward.points, reward.coupon_template_id)
    return templates, rewards


def _earn_rules(v: Violations, earn: points_pb2.EarnRules, tiers: TierRules | None) -> EarnRules | None:
    before = len(v.found)
    v.check(earn.rounding in ROUNDINGS, "program.earn.rounding", "unknown rounding")
    v.check(len(earn.category_multipliers) <= MAX_CATEGORY_RULES, "program.earn.category_multipliers", "too many")
    categories = {}
    for category, ratio in earn.category_multipliers.items():
        check_text(v, category, "program.earn.category_multipliers", max_length=64)
        categories[category] = _ratio(v, ratio, f"program.earn.category_multipliers[{category[:64]!r}]")
    v.check(len(earn.promotions) <= MAX_PROMOTIONS, "program.earn.promotions", f"at most {MAX_PROMOTIONS}")
    promotions = []
    for i, promo in enumerate(earn.promotions[:MAX_PROMOTIONS]):
        path = f"program.earn.promotions[{i}]"
        check_text(v, promo.name, f"{path}.name", max_length=64)
        v.check(bool(promo.name), f"{path}.name", "is required")
        starts = from_timestamp(v, promo.starts_at, f"{path}.starts_at", present=promo.HasField("starts_at"))
        ends = from_timestamp(v, promo.ends_at, f"{path}.ends_at", present=promo.HasField("ends_at"))
        v.check(starts is None or ends is None or starts < ends, f"{path}.ends_at", "must be after starts_at")
        multiplier = _ratio(v, promo.multiplier, f"{path}.multiplier")
        if starts is not None and ends is not None:
            promotions.append(Promotion(promo.name, starts, ends, multiplier, frozenset(promo.categories)))
    points_per_unit = _ratio(v, earn.points_per_unit, "program.earn.points_per_unit")
    birthday = _ratio(v, earn.birthday_month_multiplier, "program.earn.birthday_month_multiplier")
    bonus = _points(v, earn.first_order_bonus, "program.earn.first_order_bonus")
    per_order = _points(v, earn.max_per_order, "program.earn.max_per_order")
    per_day = _points(v, earn.max_per_day, "program.earn.max_per_day")
    if len(v.found) > before or tiers is None:
        return None
    return EarnRules(
        points_per_unit=points_per_unit,
        rounding=ROUNDINGS[earn.rounding],
        tier_multipliers={t.code: t.earn_multiplier for t in tiers.tiers},
        category_multipliers=categories,
        promotions=tuple(promotions),
        first_order_bonus=bonus,
        birthday_month_multiplier=birthday,
        max_per_order=per_order or None,
        max_per_day=per_day or None,
    )


def _tier_rules(v: Violations, rules: points_pb2.TierRules) -> TierRules | None:
    before = len(v.found)
    v.check(rules.basis in (1, 2), "program.tiers.basis", "unknown tier basis")
    v.check(1 <= rules.rolling_window_days <= 3650, "program.tiers.rolling_window_days", "must be 1..3650")
    v.check(0 <= rules.downgrade_grace_days <= 3650, "program.tiers.downgrade_grace_days", "must be 0..3650")
    v.check(len(rules.tiers) <= MAX_TIERS, "program.tiers.tiers", f"at most {MAX_TIERS} tiers")
    tiers = []
    seen: set[str] = set()
    previous = -1
    for i, tier in enumerate(rules.tiers[:MAX_TIERS]):
        path = f"program.tiers.tiers[{i}]"
        v.check(bool(tier.code) and len(tier.code) <= 32 and tier.code.isascii(), f"{path}.code", "1-32 ASCII chars")
        v.check(tier.code not in seen, f"{path}.code", f"duplicate tier code {tier.code[:32]!r}")
        seen.add(tier.code)
        check_text(v, tier.name, f"{path}.name", max_length=64)
        v.check(tier.threshold > previous, f"{path}.threshold", "must be >= 0 and above the previous tier's")
        previous = max(previous, tier.threshold)
        tiers.append(
            Tier(
                code=tier.code,
                name=tier.name,
                threshold=tier.threshold,
                earn_multiplier=_ratio(v, tier.earn_multiplier, f"{path}.earn_multiplier"),
                birthday_bonus_points=_points(v, tier.birthday_bonus_points, f"{path}.birthday_bonus_points"),
                free_shipping=tier.free_shipping,
            )
        )
    if len(v.found) > before:
        return None
    return TierRules(
        basis=TierBasis(rules.basis),
        rolling_window_days=rules.rolling_window_days,
        tiers=tuple(tiers),
        downgrade_grace_days=rules.downgrade_grace_days,
    )
