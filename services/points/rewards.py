"""Event rewards (晒单, sign-in, referral, birthday), coupons, and campaign grants to segments.

Each function runs inside the caller's transaction and follows the locking rule
of `services.points.store`: the member lock first, then anything else. Points
are credited through each member's book (`services.points.book`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from loyalty.points.v1 import points_pb2
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import number_new_record
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.points.book import SYSTEM_CAMPAIGNS, SYSTEM_REWARDS, MemberBook, MemberQuery, Posting
from services.points.domain import Asset
from services.points.expiry import expires_at
from services.points.models import (
    Campaign,
    CouponRecord,
    OrderEarning,
    RewardClaim,
)
from services.points.program import CouponTemplate, ProgramRules
from services.points.store import lock_member, member_book, save_member
from services.points.wallet import check_program_currency


class CouponRefused(FailedPrecondition):
    reason = "COUPON_REFUSED"


def issue_coupon(
    session: Session, *, shop_id: str, customer_id: str, template: CouponTemplate, source: str, now: datetime
) -> CouponRecord:
    coupon = CouponRecord(
        shop_id=shop_id,
        customer_id=customer_id,
        template_id=template.template_id,
        name=template.name,
        value_minor=template.value_minor,
        min_order_minor=template.min_order_minor,
        source=source[:160],
        issued_at=now,
        expires_at=now + timedelta(days=template.valid_days),
    )
    number_new_record(session, coupon)
    session.add(coupon)
    session.flush()
    return coupon


def coupon_template(rules: ProgramRules, template_id: str) -> CouponTemplate:
    template = rules.coupon_templates.get(template_id)
    if template is None:
        raise NotFound(f"coupon template {template_id} is not in this shop's program", reason="TEMPLATE_NOT_FOUND")
    return template


def list_coupons(
    session: Session, *, shop_id: str, customer_id: str, limit: int, before_id: int | None
) -> list[CouponRecord]:
    query = select(CouponRecord).where(CouponRecord.shop_id == shop_id, CouponRecord.customer_id == customer_id)
    if before_id is not None:
        query = query.where(CouponRecord.id < before_id)
    return list(session.scalars(query.order_by(CouponRecord.id.desc()).limit(limit)).all())


def coupon_id_number(coupon_id: str) -> int | None:
    return int(coupon_id) if coupon_id.isdigit() and len(coupon_id) <= 18 else None


def redeem_coupon(
    session: Session,
    *,
    shop_id: str,
    customer_id: str,
    coupon_id: str,
    order_id: str,
    order_amount_minor: int,
    currency: str,
    rules: ProgramRules,
    now: datetime,
) -> CouponRecord:
    lock_member(session, shop_id=shop_id, customer_id=customer_id)
    number = coupon_id_number(coupon_id)
    coupon = session.get(CouponRecord, (shop_id, number)) if number is not None else None
    if coupon is None or coupon.customer_id != customer_id:
        raise NotFound(f"member {customer_id} holds no coupon {coupon_id[:20]}", reason="COUPON_NOT_FOUND")
    if coupon.redeemed_at is not None:
        raise CouponRefused(
            f"coupon {coupon_id} was already used on order {coupon.redeemed_order_id}", reason="COUPON_USED"
        )
    if now >= coupon.expires_at:
        raise CouponRefused(f"coupon {coupon_id} expired at {coupon.expires_at.isoformat()}", reason="COUPON_EXPIRED")
    check_program_currency(rules, currency)
    if order_amount_minor < coupon.min_order_minor:
        raise CouponRefused(
            f"coupon {coupon_id} needs an order of at least {coupon.min_order_minor}", reason="COUPON_MIN_ORDER"
        )
    coupon.redeemed_at, coupon.redeemed_order_id = now, order_id
    session.flush()
    return coupon


@dataclass(frozen=True)
class RewardGrant:
    points: int
    referee_points: int
    coupons: list[CouponRecord]


class RewardRefused(FailedPrecondition):
    reason = "REWARD_REFUSED"


def claim_reward(
    session: Session,
    *,
    shop_id: str,
    request_id: str,
    customer_id: str,
    event: int,
    order_id: str,
    referee_id: str,
    birthday_month: int,
    rules: ProgramRules,
    now: datetime,
) -> tuple[RewardGrant, dict[str, MemberBook]]:
    """Grants an event's reward once per event key (the key, not the request id, is what makes it once).

    Returns the grant and the members' books (the claimer's account is shown from its book).
    """
    today = now.astimezone(rules.zone).date()
    members = sorted({customer_id, referee_id} - {""})
    books = {  # locked in id order: two claims locking the same pair never wait on each other in a cycle
        member: member_book(session, MemberQuery(shop_id=shop_id, now=now, customer_id=member)) for member in members
    }
    if event == points_pb2.REWARD_EVENT_REVIEW_WITH_PHOTOS:
        earning = session.get(OrderEarning, (shop_id, order_id))
        if earning is None or earning.customer_id != customer_id:
            raise NotFound(f"member {customer_id} earned nothing on order {order_id}", reason="ORDER_NOT_FOUND")
        key, grants = f"review:{order_id}", [(customer_id, rules.rewards["review_with_photos"], 0)]
    elif event == points_pb2.REWARD_EVENT_SIGN_IN:
        key, grants = f"sign_in:{customer_id}:{today.isoformat()}", [(customer_id, rules.rewards["sign_in"], 0)]
    elif event == points_pb2.REWARD_EVENT_REFERRAL:
        key = f"referral:{referee_id}"
        grants = [(customer_id, rules.rewards["referrer"], 0), (referee_id, rules.rewards["referee"], 0)]
    else:
        if birthday_month != today.month:
            raise RewardRefused(f"the birthday perk is claimed in the birthday month, not in month {today.month}")
        tier = rules.tiers.by_code(books[customer_id].tier_code())
        bonus = tier.birthday_bonus_points if tier else 0
        key, grants = f"birthday:{customer_id}:{today.year}", [(customer_id, rules.rewards["birthday"], bonus)]
    if all(not reward.points and not reward.coupon_template_id and not extra for _, reward, extra in grants):
        raise RewardRefused("this shop offers no reward for this event", reason="REWARD_NOT_OFFERED")
    if session.get(RewardClaim, (shop_id, key)) is not None:
        raise RewardRefused(f"the reward for {key} was already claimed", reason="ALREADY_CLAIMED")
    session.add(
        RewardClaim(shop_id=shop_id, claim_key=key, customer_id=customer_id, request_id=request_id, claimed_at=now)
    )
    session.flush()
    granted_points: list[int] = []
    coupons: list[CouponRecord] = []
    for member, reward, extra in grants:
        points = reward.points + extra
        if points:
            posting = Posting(Asset.POINTS, points, SYSTEM_REWARDS, "REWARD", request_id, key)
            books[member].credit(posting, lot_expires_at=expires_at(rules.expiry, now, rules.zone))
        granted_points.append(points)
        if reward.coupon_template_id:
            template = coupon_template(rules, reward.coupon_template_id)
            coupons.append(
                issue_coupon(session, shop_id=shop_id, customer_id=member, template=template, source=key, now=now)
            )
    for book in books.values():
        save_member(session, book)
    session.flush()
    return RewardGrant(granted_points[0], granted_points[1] if len(granted_points) > 1 else 0, coupons), books


# ---------------------------------------------------------------- campaign grants


def fix_campaign(
    session: Session,
    *,
    shop_id: str,
    campaign_id: str,
    segment_id: str,
    segment_version: int,
    points: int,
    coupon_template_id: str,
    now: datetime,
) -> Campaign:
    """The campaign's terms: stored by its first run, and every later run must ask for the same."""
    existing = session.get(Campaign, (shop_id, campaign_id))
    if existing is None:
        existing = Campaign(
            shop_id=shop_id,
            campaign_id=campaign_id,
            segment_id=segment_id,
            segment_version=segment_version,
            points=points,
            coupon_template_id=coupon_template_id,
            created_at=now,
        )
        session.add(existing)
        session.flush()
        return existing
    same = (existing.segment_id, existing.points, existing.coupon_template_id) == (
        segment_id,
        points,
        coupon_template_id,
    )
    if not same:
        raise AlreadyExists(
            f"campaign {campaign_id} already ran with other terms (segment {existing.segment_id}, "
            f"{existing.points} points, coupon {existing.coupon_template_id or 'none'})",
            reason="CAMPAIGN_TERMS_DIFFER",
        )
    return existing


def grant_campaign_page(
    session: Session, *, campaign: Campaign, customer_ids: Sequence[str], rules: ProgramRules, now: datetime
) -> tuple[int, int]:
    """Grants the campaign to each customer who has not had it; returns (granted, already granted)."""
    keys = {f"campaign:{campaign.campaign_id}:{c}": c for c in customer_ids}
    had = set(
        session.scalars(
            select(RewardClaim.claim_key).where(
                RewardClaim.shop_id == campaign.shop_id, RewardClaim.claim_key.in_(list(keys))
            )
        )
    )
    template = coupon_template(rules, campaign.coupon_template_id) if campaign.coupon_template_id else None
    granted = 0
    for key, customer_id in sorted(keys.items(), key=lambda item: item[1]):  # members locked in id order
        if key in had:
            continue
        book = member_book(session, MemberQuery(shop_id=campaign.shop_id, now=now, customer_id=customer_id))
        session.add(
            RewardClaim(
                shop_id=campaign.shop_id,
                claim_key=key,
                customer_id=customer_id,
                request_id=f"campaign-{campaign.campaign_id}"[:64],
                claimed_at=now,
            )
        )
        if campaign.points:
            posting = Posting(
                Asset.POINTS,
                campaign.points,
                SYSTEM_CAMPAIGNS,
                "CAMPAIGN",
                f"campaign-{campaign.campaign_id}"[:64],
                key,
            )
            book.credit(posting, lot_expires_at=expires_at(rules.expiry, now, rules.zone))
        save_member(session, book)
        if template is not None:
            issue_coupon(
                session, shop_id=campaign.shop_id, customer_id=customer_id, template=template, source=key, now=now
            )
        granted += 1
    session.flush()
    return granted, len(customer_ids) - granted
