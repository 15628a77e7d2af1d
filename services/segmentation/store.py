"""Segmentation queries and use cases; each function runs inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

from loyalty.segmentation.v1 import segmentation_pb2
from sqlalchemy import ColumnElement, and_, delete, func, insert, select
from sqlalchemy.orm import Session

from services.common.db import insert_ignoring_conflicts, lock_keys
from services.common.erasure import anonymous_id
from services.common.errors import NotFound
from services.segmentation.evaluation import LABELS, Attributes, CustomerScore
from services.segmentation.models import (
    CustomerScoreRecord,
    CustomerTag,
    Evaluation,
    LayeringRulesRecord,
    MemberAttributesRecord,
    Membership,
    SegmentRecord,
    ShopSettingsRecord,
)


def tag_customers(session: Session, *, shop_id: str, tag: str, customer_ids: list[str], now: datetime) -> int:
    """Adds `tag` to each customer; returns how many did not have it."""
    wanted = sorted(set(customer_ids))
    have = set(
        session.scalars(
            select(CustomerTag.customer_id).where(
                CustomerTag.shop_id == shop_id, CustomerTag.tag == tag, CustomerTag.customer_id.in_(wanted)
            )
        )
    )
    new = [c for c in wanted if c not in have]
    session.add_all(CustomerTag(shop_id=shop_id, customer_id=c, tag=tag, tagged_at=now) for c in new)
    session.flush()
    return len(new)


def tags_of(session: Session, *, shop_id: str, customer_id: str) -> list[str]:
    return list(
        session.scalars(
            select(CustomerTag.tag)
            .where(CustomerTag.shop_id == shop_id, CustomerTag.customer_id == customer_id)
            .order_by(CustomerTag.tag)
        )
    )


def upsert_segment(session: Session, *, shop_id: str, segment: segmentation_pb2.Segment, now: datetime) -> None:
    row = session.get(SegmentRecord, (shop_id, segment.segment_id))
    if row is None:
        row = SegmentRecord(shop_id=shop_id, segment_id=segment.segment_id)
        session.add(row)
    row.name, row.rule, row.auto_tag, row.updated_at = segment.name, segment.rule, segment.auto_tag, now
    session.flush()


def segments(session: Session, *, shop_id: str) -> list[SegmentRecord]:
    return list(
        session.scalars(
            select(SegmentRecord).where(SegmentRecord.shop_id == shop_id).order_by(SegmentRecord.segment_id)
        )
    )


def tagged_customers(session: Session, *, shop_id: str) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {}
    for customer_id, tag in session.execute(
        select(CustomerTag.customer_id, CustomerTag.tag).where(CustomerTag.shop_id == shop_id)
    ):
        tags.setdefault(tag, set()).add(customer_id)
    return tags


def shop_zone(session: Session, *, shop_id: str) -> str | None:
    """The zone the shop chose, None if it never did."""
    record = session.get(ShopSettingsRecord, shop_id)
    return record.time_zone if record else None


def set_shop_zone(session: Session, *, shop_id: str, time_zone: str, now: datetime) -> None:
    put_shop_row(session, ShopSettingsRecord, shop_id=shop_id, now=now, time_zone=time_zone)


def put_shop_row(
    session: Session,
    model: type[ShopSettingsRecord] | type[LayeringRulesRecord],
    *,
    shop_id: str,
    now: datetime,
    **values: object,
) -> None:
    """Creates or replaces a shop's one row of `model` (settings kept per shop), stamped `updated_at`."""
    record = session.get(model, shop_id, with_for_update=True)
    if record is None:
        session.add(model(shop_id=shop_id, updated_at=now, **values))
    else:
        for name, value in {**values, "updated_at": now}.items():
            setattr(record, name, value)
    session.flush()


def latest_evaluation(session: Session, *, shop_id: str) -> Evaluation | None:
    return session.scalars(
        select(Evaluation).where(Evaluation.shop_id == shop_id).order_by(Evaluation.version.desc()).limit(1)
    ).first()


def write_version(
    session: Session,
    *,
    shop_id: str,
    as_of: date,
    scores: Sequence[CustomerScore],
    members: dict[str, list[str]],
    now: datetime,
    time_zone: str,
    window_days: int,
) -> int:
    """Writes one membership version of every segment; versions of a shop are numbered one after another.

    The shop's advisory lock makes two concurrent evaluations take turns here,
    so each gets its own version and neither sees the other's half-written rows.
    """
    lock_keys(session, "segment-evaluation", [shop_id])
    latest = session.scalar(select(func.max(Evaluation.version)).where(Evaluation.shop_id == shop_id))
    version = int(latest or 0) + 1
    session.add(
        Evaluation(
            shop_id=shop_id,
            version=version,
            as_of=as_of,
            customers=len(scores),
            finished_at=now,
            time_zone=time_zone,
            window_days=window_days,
        )
    )
    rows = [
        {"shop_id": shop_id, "segment_id": segment_id, "version": version, "customer_id": customer_id}
        for segment_id, ids in members.items()
        for customer_id in ids
    ]
    for first in range(0, len(rows), 10_000):
        session.execute(insert(Membership), rows[first : first + 10_000])
    session.execute(delete(CustomerScoreRecord).where(CustomerScoreRecord.shop_id == shop_id))
    score_rows = [score_row(shop_id, version, as_of, score) for score in scores]
    for first in range(0, len(score_rows), 10_000):
        session.execute(insert(CustomerScoreRecord), score_rows[first : first + 10_000])
    session.flush()
    return version


def score_row(shop_id: str, version: int, as_of: date, score: CustomerScore) -> dict[str, object]:
    """A score as stored: the days since the last order become that order's day, which stays true later."""
    fields = asdict(score)
    del fields["days_since_last_order"]
    last_order_day = as_of - timedelta(days=score.days_since_last_order)
    return {"shop_id": shop_id, "version": version, **fields, "last_order_day": last_order_day}


def customer_standing(
    session: Session, *, shop_id: str, customer_id: str
) -> tuple[CustomerScoreRecord | None, list[str]]:
    """The customer's scores and segments from the shop's latest evaluation."""
    score = session.get(CustomerScoreRecord, (shop_id, customer_id))
    if score is None:
        return None, []
    segment_ids = session.scalars(
        select(Membership.segment_id)
        .where(
            Membership.shop_id == shop_id,
            Membership.version == score.version,
            Membership.customer_id == customer_id,
        )
        .order_by(Membership.segment_id)
    )
    return score, list(segment_ids)


def latest_version(session: Session, *, shop_id: str) -> int:
    latest = session.scalar(select(func.max(Evaluation.version)).where(Evaluation.shop_id == shop_id))
    if latest is None:
        raise NotFound("no segment evaluation has run for this shop yet; call EvaluateSegments", reason="NOT_EVALUATED")
    return int(latest)


@dataclass(frozen=True)
class LayerSummary:
    """The latest evaluation's customers and net revenue per class of each layering."""

    version: int
    as_of: date | None
    counts: dict[str, list[tuple[str, int, int]]]  # layering -> [(label, customers, net revenue)], largest first


def layer_summary(session: Session, *, shop_id: str) -> LayerSummary:
    """One GROUP BY per layering over the latest scores (kept for the latest version only)."""
    evaluation = session.scalars(
        select(Evaluation).where(Evaluation.shop_id == shop_id).order_by(Evaluation.version.desc()).limit(1)
    ).first()
    if evaluation is None:
        return LayerSummary(0, None, {name: [] for name in LABELS})
    counts: dict[str, list[tuple[str, int, int]]] = {}
    for name in LABELS:
        column = getattr(CustomerScoreRecord, name)
        customers = func.count()
        rows = session.execute(
            select(column, customers, func.coalesce(func.sum(CustomerScoreRecord.net_revenue_minor), 0))
            .where(CustomerScoreRecord.shop_id == shop_id, CustomerScoreRecord.version == evaluation.version)
            .group_by(column)
            .order_by(customers.desc(), column)
        ).all()
        counts[name] = [(str(label), int(n), int(revenue)) for label, n, revenue in rows]
    return LayerSummary(evaluation.version, evaluation.as_of, counts)


def check_version(session: Session, *, shop_id: str, version: int) -> int:
    """The version asked for (0 = latest), or NOT_FOUND."""
    if version == 0:
        return latest_version(session, shop_id=shop_id)
    if session.get(Evaluation, (shop_id, version)) is None:
        raise NotFound(f"membership version {version} does not exist for this shop", reason="VERSION_NOT_FOUND")
    return version


def check_segment(session: Session, *, shop_id: str, segment_id: str) -> None:
    """NOT_FOUND for a segment the shop never defined (an empty answer would read as "no members")."""
    if session.get(SegmentRecord, (shop_id, segment_id)) is None:
        raise NotFound(
            f"segment {segment_id!r} does not exist for this shop; ListSegments shows the defined ones",
            reason="SEGMENT_NOT_FOUND",
            metadata={"segment_id": segment_id},
        )


def _in_version(shop_id: str, segment_id: str, version: int) -> tuple[ColumnElement[bool], ...]:
    """Memberships of one segment in one evaluation version."""
    return (Membership.shop_id == shop_id, Membership.segment_id == segment_id, Membership.version == version)


def segment_members(
    session: Session, *, shop_id: str, segment_id: str, version: int, after: str, limit: int
) -> list[str]:
    return list(
        session.scalars(
            select(Membership.customer_id)
            .where(*_in_version(shop_id, segment_id, version), Membership.customer_id > after)
            .order_by(Membership.customer_id)
            .limit(limit)
        )
    )


def segment_diff(
    session: Session, *, shop_id: str, segment_id: str, from_version: int, to_version: int, limit: int
) -> tuple[list[str], list[str]]:
    """(entered, left) between two versions, each at most `limit` ids, ascending."""

    def only_in(version: int, other: int) -> list[str]:
        theirs = select(Membership.customer_id).where(*_in_version(shop_id, segment_id, other))
        return list(
            session.scalars(
                select(Membership.customer_id)
                .where(*_in_version(shop_id, segment_id, version), Membership.customer_id.not_in(theirs))
                .order_by(Membership.customer_id)
                .limit(limit)
            )
        )

    return only_in(to_version, from_version), only_in(from_version, to_version)


def export_rows(
    session: Session, *, shop_id: str, segment_id: str, version: int, after: str, limit: int
) -> list[tuple[str, CustomerScoreRecord | None]]:
    """Members after `after` with their scores when the scores are of this version."""
    rows = session.execute(
        select(Membership.customer_id, CustomerScoreRecord)
        .outerjoin(
            CustomerScoreRecord,
            and_(
                CustomerScoreRecord.shop_id == Membership.shop_id,
                CustomerScoreRecord.customer_id == Membership.customer_id,
                CustomerScoreRecord.version == Membership.version,
            ),
        )
        .where(*_in_version(shop_id, segment_id, version), Membership.customer_id > after)
        .order_by(Membership.customer_id)
        .limit(limit)
    ).all()
    return [(customer_id, score) for customer_id, score in rows]


def erase_customer(session: Session, *, shop_id: str, customer_id: str) -> tuple[str, int]:
    """Moves tags and memberships to the shared anonymous id (merging on a second erasure); drops derived scores."""
    anonymous = anonymous_id(shop_id, customer_id)
    tags = [
        {"shop_id": shop_id, "customer_id": anonymous, "tag": tag, "tagged_at": tagged_at}
        for tag, tagged_at in session.execute(
            select(CustomerTag.tag, CustomerTag.tagged_at).where(
                CustomerTag.shop_id == shop_id, CustomerTag.customer_id == customer_id
            )
        )
    ]
    memberships = [
        {"shop_id": shop_id, "segment_id": segment_id, "version": version, "customer_id": anonymous}
        for segment_id, version in session.execute(
            select(Membership.segment_id, Membership.version).where(
                Membership.shop_id == shop_id, Membership.customer_id == customer_id
            )
        )
    ]
    for model in (CustomerTag, Membership, CustomerScoreRecord, MemberAttributesRecord):
        session.execute(delete(model).where(model.shop_id == shop_id, model.customer_id == customer_id))
    insert_ignoring_conflicts(session, CustomerTag, tags)
    for first in range(0, len(memberships), 10_000):
        insert_ignoring_conflicts(session, Membership, memberships[first : first + 10_000])
    session.flush()
    return anonymous, len(tags) + len(memberships)


def import_tags(session: Session, *, shop_id: str, pairs: Sequence[tuple[str, str]], now: datetime) -> int:
    """Adds (customer, tag) pairs; returns how many were new."""
    wanted = sorted(set(pairs))
    rows = session.execute(
        select(CustomerTag.customer_id, CustomerTag.tag).where(
            CustomerTag.shop_id == shop_id,
            CustomerTag.customer_id.in_({c for c, _ in wanted}),
        )
    )
    have = {(customer, tag) for customer, tag in rows}
    new = [(c, t) for c, t in wanted if (c, t) not in have]
    insert_ignoring_conflicts(
        session, CustomerTag, [{"shop_id": shop_id, "customer_id": c, "tag": t, "tagged_at": now} for c, t in new]
    )
    session.flush()
    return len(new)


def set_member_attributes(session: Session, *, shop_id: str, members: Mapping[str, Attributes], now: datetime) -> int:
    """Replaces each named member's attributes as a whole (delete then insert: one shape on both backends)."""
    ids = sorted(members)
    session.execute(
        delete(MemberAttributesRecord).where(
            MemberAttributesRecord.shop_id == shop_id, MemberAttributesRecord.customer_id.in_(ids)
        )
    )
    rows = [
        {
            "shop_id": shop_id,
            "customer_id": customer_id,
            "birthday_month": members[customer_id].birthday_month,
            "registered_on": members[customer_id].registered_on,
            "channel": members[customer_id].channel,
            "updated_at": now,
        }
        for customer_id in ids
    ]
    if rows:
        session.execute(insert(MemberAttributesRecord), rows)
    return len(rows)


def member_attributes(session: Session, *, shop_id: str, customer_id: str | None = None) -> dict[str, Attributes]:
    """The shop's member attributes (or one member's), by customer id."""
    query = select(
        MemberAttributesRecord.customer_id,
        MemberAttributesRecord.birthday_month,
        MemberAttributesRecord.registered_on,
        MemberAttributesRecord.channel,
    ).where(MemberAttributesRecord.shop_id == shop_id)
    if customer_id is not None:
        query = query.where(MemberAttributesRecord.customer_id == customer_id)
    return {
        row.customer_id: Attributes(row.birthday_month, row.registered_on, row.channel)
        for row in session.execute(query)
    }


def layering_rules(session: Session, *, shop_id: str) -> bytes | None:
    """The shop's stored thresholds (a LayeringRules proto), None when it never set any."""
    record = session.get(LayeringRulesRecord, shop_id)
    return None if record is None else record.body


def set_layering_rules(session: Session, *, shop_id: str, body: bytes, now: datetime) -> None:
    put_shop_row(session, LayeringRulesRecord, shop_id=shop_id, now=now, body=body)
