"""Transactional outbox: cross-service effects commit with the state change, then a relay delivers them.

An event row is written in the same transaction as the change that causes it.
The relay sends each event by gRPC with the event id as `request_id`, so the
receiver's idempotency turns at-least-once sending into exactly-once effect.
Several replicas may relay at once: on PostgreSQL rows are claimed with
`FOR UPDATE SKIP LOCKED`; on SQLite every transaction holds the write lock.

Failures: transient ones (unavailable, deadline, auth misconfiguration) are
retried with capped exponential backoff and jitter; a refusal that no retry can
change (invalid argument, failed precondition, not found, request id reused)
marks the event dead with its error, for an operator to inspect.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
import structlog
from google.protobuf.message import Message
from sqlalchemy import BigInteger, Boolean, Index, Integer, LargeBinary, String, delete, func, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from services.common.channels import rpc_code
from services.common.clock import Clock
from services.common.db import CommonBase, Database, UtcDateTime
from services.common.telemetry import BACKLOG, WORKER_LAG_SECONDS
from services.common.tracing import Attributes, Tracing, current_traceparent

log = structlog.get_logger("outbox")

PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
MAX_BACKOFF = timedelta(minutes=5)


class OutboxEvent(CommonBase):
    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_due", "delivered_at", "dead", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    destination: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(160))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    dead: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    # The W3C traceparent of the span that wrote the event ("" when tracing was off): the relay continues
    # that trace when it sends, whichever replica relays it and however much later.
    trace_context: Mapped[str] = mapped_column(String(128), default="", server_default="")


@dataclass(frozen=True)
class NewEvent:
    """An event to queue: where it goes, which RPC, the request, and its id (also the request's request_id)."""

    destination: str
    method: str
    request: Message
    event_id: str
    trace_context: str = ""  # default: the span current when the row is made

    def row(self, now: datetime) -> dict[str, object]:
        request = self.request
        if "request_id" in request.DESCRIPTOR.fields_by_name:
            request = _with_request_id(request, self.event_id)
        return {
            "event_id": self.event_id,
            "destination": self.destination,
            "method": self.method,
            "payload": request.SerializeToString(),
            "created_at": now,
            "next_attempt_at": now,
            "attempts": 0,
            "dead": False,
            "last_error": "",
            "trace_context": self.trace_context or current_traceparent(),
        }


def enqueue(
    session: Session, *, destination: str, method: str, request: Message, event_id: str, now: datetime
) -> OutboxEvent:
    """Adds an event to the caller's transaction; the request's request_id becomes the event id."""
    event = OutboxEvent(**NewEvent(destination, method, request, event_id).row(now))
    session.add(event)
    return event


def enqueue_many(session: Session, events: Sequence[NewEvent], now: datetime) -> None:
    """Queues many events in the caller's transaction with one executemany (no ORM objects, no RETURNING)."""
    if events:
        session.execute(insert(OutboxEvent), [event.row(now) for event in events])


def _with_request_id(request: Message, event_id: str) -> Message:
    copy = type(request)()
    copy.CopyFrom(request)
    setattr(copy, "request_id", event_id)  # noqa: B010 - generic over request types
    return copy


def backoff(attempts: int, rng: random.Random) -> timedelta:
    """Capped exponential backoff with full jitter: spreads retries of many events."""
    ceiling = min(MAX_BACKOFF.total_seconds(), 0.5 * 2 ** min(attempts, 20))
    return timedelta(seconds=rng.uniform(ceiling / 2, ceiling))


def _identity(payload: bytes) -> bytes:
    return payload


@dataclass(frozen=True)
class _Claimed:
    id: int
    event_id: str
    destination: str
    method: str
    payload: bytes
    attempts: int
    trace_context: str = ""


@dataclass(frozen=True)
class Backlog:
    waiting: int
    dead: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class _Outcome:
    id: int
    delivered: bool
    dead: bool
    error: str


class OutboxRelay:
    """Delivers due events; `relay_once` is one bounded pass, safe to run on every replica.

    Claiming pushes `next_attempt_at` ahead by a lease, in a short transaction;
    sending happens outside any transaction; outcomes are written in another.
    A relay that dies mid-send leaves the lease to expire, and the event is sent
    again by whichever relay comes next (the receiver's idempotency absorbs it).
    """

    def __init__(
        self,
        db: Database,
        channel_for: Callable[[str], grpc.Channel],
        clock: Clock,
        *,
        batch_size: int = 100,
        timeout_seconds: float = 10.0,
        lease: timedelta = timedelta(seconds=60),
        tracing: Tracing | None = None,
    ) -> None:
        self.db = db
        self.tracing = tracing
        self.channel_for = channel_for
        self.clock = clock
        self.batch_size = batch_size
        self.timeout = timeout_seconds
        self.lease = lease
        self.rng = random.Random()

    def relay_once(self) -> int:
        """Sends up to one batch; returns how many events were delivered."""
        claimed = self.db.run(self._claim)
        outcomes = self._send_by_destination(claimed)
        if outcomes:
            self.db.run(lambda session: self._record(session, outcomes))
        return sum(o.delivered for o in outcomes)

    def _send_by_destination(self, claimed: list[_Claimed]) -> list[_Outcome]:
        """Each destination's events in claim order, the destinations side by side.

        A batch holds events for several services; sent one after another, each
        waits for the calls to all the others. Order is kept where it matters,
        within one destination (a member's earnings arrive as they were written).
        """
        queues: dict[str, list[_Claimed]] = {}
        for event in claimed:
            queues.setdefault(event.destination, []).append(event)
        if len(queues) <= 1:
            return [self._send(event) for event in claimed]
        with ThreadPoolExecutor(max_workers=len(queues), thread_name_prefix="outbox-send") as pool:
            sent = pool.map(lambda events: [self._send(event) for event in events], queues.values())
            return [outcome for outcomes in sent for outcome in outcomes]

    def drain(self, max_batches: int = 100) -> int:
        """Relays until a pass finds nothing due (bounded); what a worker tick runs."""
        delivered = 0
        for _ in range(max_batches):
            before = delivered
            delivered += self.relay_once()
            if delivered - before < self.batch_size:
                break
        self._report_lag()
        return delivered

    def _report_lag(self) -> None:
        waiting = self.backlog()
        WORKER_LAG_SECONDS.labels("outbox").set(waiting.oldest_age_seconds)
        BACKLOG.labels("outbox").set(waiting.waiting)
        BACKLOG.labels("outbox_dead").set(waiting.dead)

    def backlog(self) -> Backlog:
        """What the outbox alerts watch: events waiting, the oldest one's age, and dead events."""
        waiting, oldest, dead = self.db.run(
            lambda s: s.execute(
                select(
                    func.count().filter(OutboxEvent.dead.is_(False)),
                    func.min(OutboxEvent.created_at).filter(OutboxEvent.dead.is_(False)),
                    func.count().filter(OutboxEvent.dead.is_(True)),
                ).where(OutboxEvent.delivered_at.is_(None))
            ).one()
        )
        age = (self.clock() - oldest).total_seconds() if oldest else 0.0
        return Backlog(waiting=int(waiting), dead=int(dead), oldest_age_seconds=age)

    def _claim(self, session: Session) -> list[_Claimed]:
        now = self.clock()
        query = (
            select(OutboxEvent)
            .where(OutboxEvent.delivered_at.is_(None), OutboxEvent.dead.is_(False), OutboxEvent.next_attempt_at <= now)
            .order_by(OutboxEvent.id)
            .limit(self.batch_size)
        )
        if self.db.is_postgres:
            query = query.with_for_update(skip_locked=True)
        claimed = []
        for event in session.scalars(query).all():
            event.next_attempt_at = now + self.lease
            event.attempts += 1
            claimed.append(
                _Claimed(
                    event.id,
                    event.event_id,
                    event.destination,
                    event.method,
                    event.payload,
                    event.attempts,
                    event.trace_context,
                )
            )
        return claimed

    def _send(self, event: _Claimed) -> _Outcome:
        if self.tracing is None:
            return self._call(event)
        attributes: Attributes = {
            "outbox.event_id": event.event_id,
            "outbox.attempt": event.attempts,
            "rpc.method": event.method,
        }
        with self.tracing.continued(event.trace_context, "outbox.relay", attributes):
            return self._call(event)

    def _call(self, event: _Claimed) -> _Outcome:
        call = self.channel_for(event.destination).unary_unary(
            event.method, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            call(event.payload, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = rpc_code(exc)
            permanent = code in PERMANENT_CODES
            details = getattr(exc, "details", lambda: "")() or ""
            log.log(
                40 if permanent else 30,
                "outbox_event_failed",
                event_id=event.event_id,
                method=event.method,
                code=code.name if code else "UNKNOWN",
                attempts=event.attempts,
                dead=permanent,
            )
            return _Outcome(
                event.id, delivered=False, dead=permanent, error=f"{code.name if code else 'UNKNOWN'}: {details}"[:500]
            )
        return _Outcome(event.id, delivered=True, dead=False, error="")

    def _record(self, session: Session, outcomes: list[_Outcome]) -> None:
        now = self.clock()
        events = {
            e.id: e for e in session.scalars(select(OutboxEvent).where(OutboxEvent.id.in_([o.id for o in outcomes])))
        }
        for outcome in outcomes:
            event = events[outcome.id]
            event.last_error = outcome.error
            if outcome.delivered:
                event.delivered_at = now
            elif outcome.dead:
                event.dead = True
            else:
                event.next_attempt_at = now + backoff(event.attempts, self.rng)


def purge_delivered(session: Session, *, older_than: timedelta, now: datetime) -> int:
    """Deletes events delivered before `now - older_than`: their payloads (customer ids) are not kept forever."""
    result = session.execute(
        delete(OutboxEvent).where(OutboxEvent.delivered_at.is_not(None), OutboxEvent.delivered_at < now - older_than)
    )
    return int(getattr(result, "rowcount", 0) or 0)
