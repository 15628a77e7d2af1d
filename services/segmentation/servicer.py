"""SegmentationService: proto <-> domain translation, validation, calls to peers."""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date
from typing import TypeVar
from zoneinfo import ZoneInfo

import grpc
from loyalty.common.v1 import common_pb2
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from sqlalchemy.orm import Session

from services.common.channels import rpc_code
from services.common.clock import local_date
from services.common.convert import from_date, to_date
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, Violations
from services.common.idempotency import run_idempotent
from services.common.paging import Cursor, decode_token, encode_token, page_size, position_int
from services.common.server import ServiceContext
from services.common.validation import check_id, check_text, check_time_zone
from services.segmentation import evaluation, store
from services.segmentation.domain import CHANNEL_PATTERN, TAG_PATTERN, days_since
from services.segmentation.evaluation import Attributes, CustomerScore, FeatureRow
from services.segmentation.layering import DEFAULT_LAYERING, Layering, from_proto, to_proto
from services.segmentation.models import CustomerScoreRecord
from services.segmentation.rules import parse_rule

MAX_TAG_BATCH = 1000
PEER_TIMEOUT_SECONDS = 5.0
FEATURE_STREAM_TIMEOUT_SECONDS = 600.0
PROGRESS_EVERY = 10_000
MAX_DIFF = 100_000
DEFAULT_WINDOW_DAYS = 180
EXPORT_BATCH = 5_000

T = TypeVar("T")


@dataclass(frozen=True)
class Scored:
    """An evaluation computed and not yet written: the day, window and zone it counted in, and its results."""

    day: date
    window_days: int
    zone: str
    scores: list[CustomerScore]
    members: dict[str, list[str]]
    auto_tags: dict[str, str]


def last_value(steps: Generator[object, None, T]) -> T:
    """Runs a generator that reports progress to its end; returns what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def _settings(self, shop_id: str) -> tuple[str, bool]:
        """The shop's zone name and whether it is the service's default (never chosen)."""
        chosen = self.ctx.db.run(lambda s: store.shop_zone(s, shop_id=shop_id))
        return (chosen, False) if chosen else (self.ctx.settings.default_time_zone, True)

    def _zone_name(self, shop_id: str) -> str:
        return self._settings(shop_id)[0]

    def _today(self, shop_id: str) -> date:
        return local_date(self.ctx.clock(), ZoneInfo(self._zone_name(shop_id)))

    def _check_metrics_zone(self, shop_id: str, zone: str) -> None:
        """Scores count days of metrics' features: FAILED_PRECONDITION unless metrics judges days in `zone` too."""
        metrics = metrics_pb2_grpc.MetricsServiceStub(self.ctx.peers.channel("metrics"))
        theirs = metrics.GetShopSettings(
            metrics_pb2.GetShopSettingsRequest(shop_id=shop_id), timeout=PEER_TIMEOUT_SECONDS
        ).settings.time_zone
        if theirs != zone:
            raise FailedPrecondition(
                f"metrics judges shop {shop_id}'s days in {theirs}, segmentation in {zone}; "
                f"set one zone on both (loyaltyctl shop set-zone ZONE)",
                reason="SHOP_ZONE_MISMATCH",
                metadata={"metrics_time_zone": theirs, "segmentation_time_zone": zone},
            )

    def SetShopSettings(
        self, request: segmentation_pb2.SetShopSettingsRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.SetShopSettingsResponse:
        wanted = request.settings
        v = Violations()
        v.check(bool(wanted.time_zone), "settings.time_zone", "is required")
        if wanted.time_zone:
            check_time_zone(v, wanted.time_zone, "settings.time_zone")
        v.check(not wanted.currency, "settings.currency", "must be empty: segmentation keeps no currency")
        v.raise_if_any()
        shop_id, zone = request.shop_id, wanted.time_zone
        scored: Scored | None = None
        changed = self._zone_name(shop_id) != zone
        if changed:
            self._check_metrics_zone(shop_id, zone)
            latest = self.ctx.db.run(lambda s: store.latest_evaluation(s, shop_id=shop_id))
            has_segments = bool(self.ctx.db.run(lambda s: store.segments(s, shop_id=shop_id)))
            if latest is not None and has_segments:  # the latest scores were counted in the old zone
                today = local_date(self.ctx.clock(), ZoneInfo(zone))
                scored = last_value(self._score(shop_id, today, latest.window_days, zone))

        def apply(session: Session) -> segmentation_pb2.SetShopSettingsResponse:
            store.set_shop_zone(session, shop_id=shop_id, time_zone=zone, now=self.ctx.clock())
            return segmentation_pb2.SetShopSettingsResponse(
                settings=common_pb2.ShopSettings(time_zone=zone),
                zone_changed=changed,
                reevaluated_version=self._write(session, shop_id, scored) if scored is not None else 0,
            )

        return run_idempotent(
            self.ctx.db, request, segmentation_pb2.SetShopSettingsResponse, apply, clock=self.ctx.clock
        )

    def GetShopSettings(
        self, request: segmentation_pb2.GetShopSettingsRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.GetShopSettingsResponse:
        zone, default = self._settings(request.shop_id)
        return segmentation_pb2.GetShopSettingsResponse(
            settings=common_pb2.ShopSettings(time_zone=zone), default_zone=default
        )

    def TagCustomers(
        self, request: segmentation_pb2.TagCustomersRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.TagCustomersResponse:
        v = Violations()
        v.check(bool(TAG_PATTERN.match(request.tag)), "tag", "must be 1-64 letters, digits, '_', '-' or ':'")
        v.check(0 < len(request.customer_ids) <= MAX_TAG_BATCH, "customer_ids", f"must hold 1..{MAX_TAG_BATCH} ids")
        for i, customer_id in enumerate(request.customer_ids[:MAX_TAG_BATCH]):
            check_id(v, customer_id, f"customer_ids[{i}]")
        v.raise_if_any()

        def apply(session: Session) -> segmentation_pb2.TagCustomersResponse:
            count = store.tag_customers(
                session,
                shop_id=request.shop_id,
                tag=request.tag,
                customer_ids=list(request.customer_ids),
                now=self.ctx.clock(),
            )
            return segmentation_pb2.TagCustomersResponse(newly_tagged=count)

        return run_idempotent(self.ctx.db, request, segmentation_pb2.TagCustomersResponse, apply, clock=self.ctx.clock)

    def ImportTags(
        self, request_iterator: Iterator[segmentation_pb2.ImportTagsRequest], context: grpc.ServicerContext
    ) -> segmentation_pb2.ImportTagsResponse:
        chunks = newly = already = 0
        for request in request_iterator:
            v = Violations()
            v.check(0 < len(request.assignments) <= MAX_TAG_BATCH, "assignments", f"must hold 1..{MAX_TAG_BATCH} pairs")
            for i, pair in enumerate(request.assignments[:MAX_TAG_BATCH]):
                check_id(v, pair.customer_id, f"assignments[{i}].customer_id")
                v.check(
                    bool(TAG_PATTERN.match(pair.tag)),
                    f"assignments[{i}].tag",
                    "must be 1-64 letters, digits, '_', '-' or ':'",
                )
            v.raise_if_any()
            pairs = [(pair.customer_id, pair.tag) for pair in request.assignments]

            def apply(
                session: Session,
                request: segmentation_pb2.ImportTagsRequest = request,
                pairs: list[tuple[str, str]] = pairs,
            ) -> segmentation_pb2.ImportTagsResponse:
                added = store.import_tags(session, shop_id=request.shop_id, pairs=pairs, now=self.ctx.clock())
                return segmentation_pb2.ImportTagsResponse(
                    chunks=1, newly_tagged=added, already_tagged=len(set(pairs)) - added
                )

            done = run_idempotent(
                self.ctx.db, request, segmentation_pb2.ImportTagsResponse, apply, clock=self.ctx.clock
            )
            chunks, newly, already = chunks + 1, newly + done.newly_tagged, already + done.already_tagged
        return segmentation_pb2.ImportTagsResponse(chunks=chunks, newly_tagged=newly, already_tagged=already)

    def SetMemberAttributes(
        self, request: segmentation_pb2.SetMemberAttributesRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.SetMemberAttributesResponse:
        v = Violations()
        v.check(1 <= len(request.members) <= MAX_TAG_BATCH, "members", f"must hold 1..{MAX_TAG_BATCH} members")
        today = self._today(request.shop_id)
        members: dict[str, Attributes] = {}
        for i, member in enumerate(request.members):
            path = f"members[{i}]"
            check_id(v, member.customer_id, f"{path}.customer_id")
            v.check(member.customer_id not in members, f"{path}.customer_id", "appears twice in this request")
            v.check(0 <= member.birthday_month <= 12, f"{path}.birthday_month", "must be 1..12, or 0 when unknown")
            registered = (
                from_date(v, member.registered_on, f"{path}.registered_on")
                if member.HasField("registered_on")
                else None
            )
            v.check(registered is None or registered <= today, f"{path}.registered_on", "must not be after today")
            v.check(
                not member.channel or bool(CHANNEL_PATTERN.match(member.channel)),
                f"{path}.channel",
                "must be 1-32 chars of a-z, 0-9, '_'",
            )
            members[member.customer_id] = Attributes(member.birthday_month or None, registered, member.channel or None)
        v.raise_if_any()

        def apply(session: Session) -> segmentation_pb2.SetMemberAttributesResponse:
            written = store.set_member_attributes(
                session, shop_id=request.shop_id, members=members, now=self.ctx.clock()
            )
            return segmentation_pb2.SetMemberAttributesResponse(written=written)

        return run_idempotent(
            self.ctx.db, request, segmentation_pb2.SetMemberAttributesResponse, apply, clock=self.ctx.clock
        )

    def GetCustomerProfile(
        self, request: segmentation_pb2.GetCustomerProfileRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.GetCustomerProfileResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()
        shop_id, customer_id = request.shop_id, request.customer_id
        profile = segmentation_pb2.CustomerProfile(customer_id=customer_id, days_since_last_order=-1)
        metrics = metrics_pb2_grpc.MetricsServiceStub(self.ctx.peers.channel("metrics"))
        try:
            summary = metrics.GetCustomerSummary(
                metrics_pb2.GetCustomerSummaryRequest(shop_id=shop_id, customer_id=customer_id),
                timeout=PEER_TIMEOUT_SECONDS,
            ).summary
            profile.order_count = summary.order_count
            profile.total_paid.CopyFrom(summary.total_paid)
            zone = ZoneInfo(self._zone_name(shop_id))
            profile.days_since_last_order = days_since(
                summary.last_order_at.ToDatetime(tzinfo=UTC), self.ctx.clock(), zone
            )
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                raise
        points = points_pb2_grpc.PointsServiceStub(self.ctx.peers.channel("points"))
        account = points.GetAccount(
            points_pb2.GetAccountRequest(shop_id=shop_id, customer_id=customer_id), timeout=PEER_TIMEOUT_SECONDS
        ).account
        profile.points_balance = account.points_balance
        profile.tags.extend(self.ctx.db.run(lambda s: store.tags_of(s, shop_id=shop_id, customer_id=customer_id)))
        known = self.ctx.db.run(lambda s: store.member_attributes(s, shop_id=shop_id, customer_id=customer_id))
        if customer_id in known:
            profile.attributes.CopyFrom(attributes_proto(customer_id, known[customer_id]))
        score, segment_ids = self.ctx.db.run(
            lambda s: store.customer_standing(s, shop_id=shop_id, customer_id=customer_id)
        )
        if score is not None:
            profile.rfm.CopyFrom(segmentation_pb2.RfmScore(r=score.r, f=score.f, m=score.m))
            profile.rfm_segment, profile.value_class = score.rfm_segment, score.value_class
            profile.activity_layer, profile.churn_risk = score.activity_layer, score.churn_risk
            profile.churn_reason, profile.scores_version = score.churn_reason, score.version
            profile.segments.extend(segment_ids)
        return segmentation_pb2.GetCustomerProfileResponse(profile=profile)

    # -- segments

    def UpsertSegment(
        self, request: segmentation_pb2.UpsertSegmentRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.UpsertSegmentResponse:
        segment = request.segment
        v = Violations()
        check_id(v, segment.segment_id, "segment.segment_id")
        check_text(v, segment.name, "segment.name", max_length=200)
        v.check(
            not segment.auto_tag or bool(TAG_PATTERN.match(segment.auto_tag)), "segment.auto_tag", "not a valid tag"
        )
        v.raise_if_any()
        parse_rule(segment.rule)  # a bad rule is INVALID_ARGUMENT with its position

        def apply(session: Session) -> segmentation_pb2.UpsertSegmentResponse:
            store.upsert_segment(session, shop_id=request.shop_id, segment=segment, now=self.ctx.clock())
            return segmentation_pb2.UpsertSegmentResponse(segment=segment)

        return run_idempotent(self.ctx.db, request, segmentation_pb2.UpsertSegmentResponse, apply, clock=self.ctx.clock)

    def SetLayeringRules(
        self, request: segmentation_pb2.SetLayeringRulesRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.SetLayeringRulesResponse:
        v = Violations()
        layering = from_proto(v, request.rules)
        v.raise_if_any()
        assert layering is not None
        stored = to_proto(layering)

        def apply(session: Session) -> segmentation_pb2.SetLayeringRulesResponse:
            body = stored.SerializeToString(deterministic=True)
            store.set_layering_rules(session, shop_id=request.shop_id, body=body, now=self.ctx.clock())
            return segmentation_pb2.SetLayeringRulesResponse(rules=stored)

        return run_idempotent(
            self.ctx.db, request, segmentation_pb2.SetLayeringRulesResponse, apply, clock=self.ctx.clock
        )

    def GetLayeringRules(
        self, request: segmentation_pb2.GetLayeringRulesRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.GetLayeringRulesResponse:
        layering, defaults = self._layering(request.shop_id)
        return segmentation_pb2.GetLayeringRulesResponse(rules=to_proto(layering), defaults=defaults)

    def GetLayerSummary(
        self, request: segmentation_pb2.GetLayerSummaryRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.GetLayerSummaryResponse:
        summary = self.ctx.db.run(lambda s: store.layer_summary(s, shop_id=request.shop_id))
        layers = {
            name: [
                segmentation_pb2.LayerCount(label=label, customers=customers, net_revenue_minor=revenue)
                for label, customers, revenue in rows
            ]
            for name, rows in summary.counts.items()
        }
        response = segmentation_pb2.GetLayerSummaryResponse(
            version=summary.version,
            customers=sum(c.customers for c in layers["churn_risk"]),
            net_revenue_minor=sum(c.net_revenue_minor for c in layers["churn_risk"]),
            rfm_segments=layers["rfm_segment"],
            value_classes=layers["value_class"],
            activity_layers=layers["activity_layer"],
            churn_risks=layers["churn_risk"],
        )
        if summary.as_of is not None:
            response.as_of.CopyFrom(to_date(summary.as_of))
        return response

    def _layering(self, shop_id: str) -> tuple[Layering, bool]:
        """The shop's thresholds and whether they are the defaults (never set)."""
        body = self.ctx.db.run(lambda s: store.layering_rules(s, shop_id=shop_id))
        if body is None:
            return DEFAULT_LAYERING, True
        layering = from_proto(Violations(), segmentation_pb2.LayeringRules.FromString(body))
        # Stored rules passed this check when set; should a later, stricter check refuse them, use the defaults.
        return (layering, False) if layering is not None else (DEFAULT_LAYERING, True)

    def ListSegments(
        self, request: segmentation_pb2.ListSegmentsRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.ListSegmentsResponse:
        rows = self.ctx.db.run(lambda s: store.segments(s, shop_id=request.shop_id))
        return segmentation_pb2.ListSegmentsResponse(
            segments=[
                segmentation_pb2.Segment(segment_id=r.segment_id, name=r.name, rule=r.rule, auto_tag=r.auto_tag)
                for r in rows
            ]
        )

    def EvaluateSegments(
        self, request: segmentation_pb2.EvaluateSegmentsRequest, context: grpc.ServicerContext
    ) -> Iterator[segmentation_pb2.EvaluateSegmentsResponse]:
        v = Violations()
        as_of = from_date(v, request.as_of, "as_of") if request.HasField("as_of") else None
        v.check(0 <= request.window_days <= 3650, "window_days", "must be 1..3650, or 0 for 180")
        v.raise_if_any()
        shop_id = request.shop_id
        zone = self._zone_name(shop_id)
        self._check_metrics_zone(shop_id, zone)
        day = as_of or local_date(self.ctx.clock(), ZoneInfo(zone))
        scored = yield from self._score(shop_id, day, request.window_days or DEFAULT_WINDOW_DAYS, zone)
        yield segmentation_pb2.EvaluateSegmentsResponse(
            phase=segmentation_pb2.EVALUATION_PHASE_WRITING, customers=len(scored.scores)
        )
        version = self.ctx.db.run(lambda session: self._write(session, shop_id, scored))
        yield segmentation_pb2.EvaluateSegmentsResponse(
            phase=segmentation_pb2.EVALUATION_PHASE_DONE,
            customers=len(scored.scores),
            version=version,
            members={segment_id: len(ids) for segment_id, ids in scored.members.items()},
        )

    def _score(
        self, shop_id: str, day: date, window_days: int, zone: str
    ) -> Generator[segmentation_pb2.EvaluateSegmentsResponse, None, Scored]:
        """Fetches the shop's features and standings and scores them, yielding progress; returns the result."""
        stored = self.ctx.db.run(lambda s: store.segments(s, shop_id=shop_id))
        if not stored:
            raise FailedPrecondition("the shop has no segments; create one with UpsertSegment", reason="NO_SEGMENTS")
        rules = {r.segment_id: parse_rule(r.rule) for r in stored}
        metrics = metrics_pb2_grpc.MetricsServiceStub(self.ctx.peers.channel("metrics"))
        rows: list[FeatureRow] = []
        stream = metrics.StreamCustomerFeatures(
            metrics_pb2.StreamCustomerFeaturesRequest(shop_id=shop_id, as_of=to_date(day), window_days=window_days),
            timeout=FEATURE_STREAM_TIMEOUT_SECONDS,
        )
        for message in stream:
            rows.append(feature_row(message.features))
            if len(rows) % PROGRESS_EVERY == 0:
                yield segmentation_pb2.EvaluateSegmentsResponse(
                    phase=segmentation_pb2.EVALUATION_PHASE_FETCHING, customers=len(rows)
                )
        points = points_pb2_grpc.PointsServiceStub(self.ctx.peers.channel("points"))
        standings = {
            m.customer_id: (m.points_balance, m.tier)
            for m in points.StreamMemberStandings(
                points_pb2.StreamMemberStandingsRequest(shop_id=shop_id), timeout=FEATURE_STREAM_TIMEOUT_SECONDS
            )
        }
        rows = [with_standing(row, standings.get(row.customer_id)) for row in rows]
        yield segmentation_pb2.EvaluateSegmentsResponse(
            phase=segmentation_pb2.EVALUATION_PHASE_SCORING, customers=len(rows)
        )
        tags = self.ctx.db.run(lambda s: store.tagged_customers(s, shop_id=shop_id))
        attributes = self.ctx.db.run(lambda s: store.member_attributes(s, shop_id=shop_id))
        layering, _defaults = self._layering(shop_id)
        scores = evaluation.customer_scores(rows, layering.activity, layering.churn)
        return Scored(
            day=day,
            window_days=window_days,
            zone=zone,
            scores=scores,
            members=evaluation.members(rules, rows, scores, tags, attributes, day),
            auto_tags={r.segment_id: r.auto_tag for r in stored if r.auto_tag},
        )

    def _write(self, session: Session, shop_id: str, scored: Scored) -> int:
        """Writes a scored evaluation as the shop's next version, with its auto tags; returns the version."""
        now = self.ctx.clock()
        version = store.write_version(
            session,
            shop_id=shop_id,
            as_of=scored.day,
            scores=scored.scores,
            members=scored.members,
            now=now,
            time_zone=scored.zone,
            window_days=scored.window_days,
        )
        for segment_id, tag in scored.auto_tags.items():
            ids = scored.members[segment_id]
            for first in range(0, len(ids), MAX_TAG_BATCH):
                store.tag_customers(
                    session, shop_id=shop_id, tag=tag, customer_ids=ids[first : first + MAX_TAG_BATCH], now=now
                )
        return version

    def ListSegmentMembers(
        self, request: segmentation_pb2.ListSegmentMembersRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.ListSegmentMembersResponse:
        v = Violations()
        check_id(v, request.segment_id, "segment_id")
        v.check(request.version >= 0, "version", "must not be negative")
        v.raise_if_any()
        size = page_size(request.page_size)
        # A token pins the version its first page read: it serves both a caller that keeps asking
        # for "the latest" (0) and one that asks for that version by number, never another version.
        query = f"members:{request.shop_id}:{request.segment_id}"
        position = decode_token(request.page_token, query=query)
        pinned = position_int(position, "version") if position else None
        if pinned is not None and request.version not in (0, pinned):
            raise InvalidArgument([FieldViolation("page_token", f"belongs to version {pinned}, not {request.version}")])

        def page(session: Session) -> tuple[int, list[str]]:
            if pinned is not None:
                return pinned, members_after(session, pinned)
            store.check_segment(session, shop_id=request.shop_id, segment_id=request.segment_id)
            version = store.check_version(session, shop_id=request.shop_id, version=request.version)
            return version, members_after(session, version)

        def members_after(session: Session, version: int) -> list[str]:
            return store.segment_members(
                session,
                shop_id=request.shop_id,
                segment_id=request.segment_id,
                version=version,
                after=str(position.get("after", "")) if position else "",
                limit=size + 1,
            )

        version, ids = self.ctx.db.run(page)
        shown, more = ids[:size], len(ids) > size
        token = encode_token(Cursor(query, {"version": version, "after": shown[-1]})) if more else ""
        return segmentation_pb2.ListSegmentMembersResponse(customer_ids=shown, version=version, next_page_token=token)

    def GetSegmentDiff(
        self, request: segmentation_pb2.GetSegmentDiffRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.GetSegmentDiffResponse:
        v = Violations()
        check_id(v, request.segment_id, "segment_id")
        v.check(request.from_version > 0, "from_version", "must be a version number (1 or more)")
        v.check(request.to_version >= 0, "to_version", "must not be negative")
        v.raise_if_any()

        def diff(session: Session) -> segmentation_pb2.GetSegmentDiffResponse:
            store.check_segment(session, shop_id=request.shop_id, segment_id=request.segment_id)
            earlier = store.check_version(session, shop_id=request.shop_id, version=request.from_version)
            later = store.check_version(session, shop_id=request.shop_id, version=request.to_version)
            entered, left = store.segment_diff(
                session,
                shop_id=request.shop_id,
                segment_id=request.segment_id,
                from_version=earlier,
                to_version=later,
                limit=MAX_DIFF + 1,
            )
            return segmentation_pb2.GetSegmentDiffResponse(
                entered=entered[:MAX_DIFF],
                left=left[:MAX_DIFF],
                from_version=earlier,
                to_version=later,
                truncated=len(entered) > MAX_DIFF or len(left) > MAX_DIFF,
            )

        return self.ctx.db.run(diff)

    def EraseCustomer(
        self, request: segmentation_pb2.EraseCustomerRequest, context: grpc.ServicerContext
    ) -> segmentation_pb2.EraseCustomerResponse:
        v = Violations()
        check_id(v, request.customer_id, "customer_id")
        v.raise_if_any()

        def apply(session: Session) -> segmentation_pb2.EraseCustomerResponse:
            anonymous, rows = store.erase_customer(session, shop_id=request.shop_id, customer_id=request.customer_id)
            return segmentation_pb2.EraseCustomerResponse(anonymous_id=anonymous, rows_anonymised=rows)

        return run_idempotent(self.ctx.db, request, segmentation_pb2.EraseCustomerResponse, apply, clock=self.ctx.clock)

    def ExportSegment(
        self, request: segmentation_pb2.ExportSegmentRequest, context: grpc.ServicerContext
    ) -> Iterator[segmentation_pb2.ExportSegmentResponse]:
        v = Violations()
        check_id(v, request.segment_id, "segment_id")
        v.check(request.version >= 0, "version", "must not be negative")
        v.raise_if_any()

        def export_version(session: Session) -> int:
            store.check_segment(session, shop_id=request.shop_id, segment_id=request.segment_id)
            return store.check_version(session, shop_id=request.shop_id, version=request.version)

        version = self.ctx.db.run(export_version)

        def batch_after(session: Session, start: str) -> list[tuple[str, CustomerScoreRecord | None]]:
            return store.export_rows(
                session,
                shop_id=request.shop_id,
                segment_id=request.segment_id,
                version=version,
                after=start,
                limit=EXPORT_BATCH,
            )

        after = ""
        while True:  # one short transaction per batch
            batch = self.ctx.db.run(functools.partial(batch_after, start=after))
            for customer_id, score in batch:
                row = segmentation_pb2.ExportSegmentResponse(customer_id=customer_id, version=version)
                if score is not None:
                    row.rfm.CopyFrom(segmentation_pb2.RfmScore(r=score.r, f=score.f, m=score.m))
                    row.rfm_segment, row.value_class = score.rfm_segment, score.value_class
                    row.activity_layer, row.churn_risk = score.activity_layer, score.churn_risk
                    row.churn_reason = score.churn_reason
                    if score.last_order_day is not None:
                        row.last_order_day.CopyFrom(to_date(score.last_order_day))
                yield row
            if len(batch) < EXPORT_BATCH:
                return
            after = batch[-1][0]


def attributes_proto(customer_id: str, attributes: Attributes) -> segmentation_pb2.MemberAttributes:
    message = segmentation_pb2.MemberAttributes(
        customer_id=customer_id, birthday_month=attributes.birthday_month or 0, channel=attributes.channel or ""
    )
    if attributes.registered_on is not None:
        message.registered_on.CopyFrom(to_date(attributes.registered_on))
    return message


def with_standing(row: FeatureRow, standing: tuple[int, str] | None) -> FeatureRow:
    """The row with the member's points balance and tier (a customer the points service never saw has none)."""
    if standing is None:
        return row
    return replace(row, points_balance=standing[0], tier=standing[1])


def feature_row(features: metrics_pb2.CustomerFeatures) -> FeatureRow:
    """A metrics row in the rule language's terms: `recency_days` is days since the last order (RFM's R)."""
    return FeatureRow(
        customer_id=features.customer_id,
        order_count=features.order_count,
        purchase_days=features.purchase_days,
        net_revenue_minor=features.net_revenue.amount_minor,
        aov_minor=features.aov_minor,
        recency_days=features.days_since_last_order,
        age_days=features.age_days,
        mean_interval_days=features.mean_interval_days if features.HasField("mean_interval_days") else None,
        probability_alive=features.probability_alive if features.HasField("probability_alive") else None,
        window_orders=features.window_orders,
        window_active_days=features.window_active_days,
        window_net_revenue_minor=features.window_net_revenue_minor,
    )


def register(server: grpc.Server, ctx: ServiceContext) -> None:
    segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(SegmentationServicer(ctx), server)
