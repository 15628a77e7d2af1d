"""AIP-155 request ids: a retry returns the first response, a reused id with another payload is refused.

A record is written in the same transaction as the mutation it guards, so a
mutation and its record commit together or not at all. Failed requests leave no
record: a retry after a failure is evaluated afresh. A mutation whose caller's
deadline passed before it could commit rolls back (`services.common.deadlines`),
so a late first attempt can never overtake a retry that was already answered. Records are kept for
`LOYALTY_IDEMPOTENCY_RETENTION_DAYS` (default 30) and then purged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

import sqlalchemy.exc
from google.protobuf.message import Message
from sqlalchemy import LargeBinary, String, delete, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from services.common.clock import Clock, utc_now
from services.common.db import CommonBase, Database, UtcDateTime
from services.common.deadlines import ensure_caller_waiting
from services.common.errors import AlreadyExists, DomainError, FieldViolation, InvalidArgument
from services.common.validation import ID_PATTERN

R = TypeVar("R", bound=Message)
UNIQUE_CONFLICT_ATTEMPTS = 4


class IdempotencyRecord(CommonBase):
    __tablename__ = "idempotency_records"

    shop_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(160))
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


def fingerprint(request: Message) -> str:
    """Digest of the request without its request_id: what "same payload" means."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    body = request.DESCRIPTOR.full_name.encode() + b"\0" + copy.SerializeToString(deterministic=True)
    return hashlib.sha256(body).hexdigest()


def replay_record(record: IdempotencyRecord, request: Message, digest: str, response_type: type[R]) -> R:
    """The stored response of a retry; a request id reused with another payload is ALREADY_EXISTS."""
    if record.fingerprint != digest or record.method != request.DESCRIPTOR.full_name:
        raise AlreadyExists(
            f"request_id {record.request_id!r} was already used with a different payload "
            f"({record.method}); use a new request_id for a new operation",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": record.request_id},
        )
    response = response_type()
    response.ParseFromString(record.response)
    return response


def run_idempotent(
    db: Database,
    request: Message,
    response_type: type[R],
    apply: Callable[[Session], R],
    *,
    clock: Clock = utc_now,
) -> R:
    """Applies `apply` once per (shop_id, request_id); retries get the stored response."""
    shop_id = str(getattr(request, "shop_id", ""))
    request_id = checked_request_id(request)
    digest = fingerprint(request)
    ensure_caller_waiting()

    def once(session: Session) -> R:
        stored = session.get(IdempotencyRecord, (shop_id, request_id))
        if stored is not None:
            return replay_record(stored, request, digest, response_type)
        response = apply(session)
        ensure_caller_waiting()  # after every read and lock: a caller that gave up must not see a late commit
        session.add(IdempotencyRecord(**record_values(request, digest, response, clock())))
        session.flush()
        return response

    def replay(session: Session) -> R | None:
        stored = session.get(IdempotencyRecord, (shop_id, request_id))
        return None if stored is None else replay_record(stored, request, digest, response_type)

    for attempt in range(1, UNIQUE_CONFLICT_ATTEMPTS + 1):
        try:
            return db.run(once)
        except DomainError:
            # A concurrent call with the same id may have committed while this one
            # waited for a lock, and changed what this one now sees (e.g. it took the
            # last unit): the request succeeded, so answer with its response.
            replayed = db.run(replay)
            if replayed is not None:
                return replayed
            raise
        except sqlalchemy.exc.IntegrityError:
            # Either a concurrent call with the same id committed first (answer as a
            # retry would be), or a concurrent call inserted a row this one also
            # inserts (run again: it now sees that row).
            replayed = db.run(replay)
            if replayed is not None:
                return replayed
            if attempt == UNIQUE_CONFLICT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def checked_request_id(request: Message) -> str:
    """The request's request_id; INVALID_ARGUMENT when it is missing or malformed."""
    request_id = str(getattr(request, "request_id", ""))
    if not request_id:
        raise InvalidArgument([FieldViolation("request_id", "is required on every mutation (AIP-155)")])
    if not ID_PATTERN.match(request_id):
        raise InvalidArgument([FieldViolation("request_id", "must be 1-64 characters of [A-Za-z0-9_.:-]")])
    return request_id


def valid_request_id(request: Message) -> bool:
    return bool(ID_PATTERN.match(str(getattr(request, "request_id", ""))))


def any_seen(session: Session, *, shop_id: str, request_ids: Sequence[str]) -> bool:
    """True if any of these request ids has a record: the requests must then go one by one through `run_idempotent`."""
    found = select(IdempotencyRecord.request_id).where(
        IdempotencyRecord.shop_id == shop_id, IdempotencyRecord.request_id.in_(request_ids)
    )
    return session.execute(found.limit(1)).first() is not None


def record_responses(
    session: Session, requests: Sequence[Message], responses: Sequence[Message], *, clock: Clock = utc_now
) -> None:
    """Records each request's response, as `run_idempotent` does for one, in the caller's transaction.

    For a caller applying several requests at once (bulk chunks committed
    together); a concurrent call that recorded one of the ids first makes the
    insert fail with IntegrityError, and the transaction rolls back whole.
    """
    ensure_caller_waiting()
    now = clock()
    session.execute(
        insert(IdempotencyRecord),
        [
            record_values(request, fingerprint(request), response, now)
            for request, response in zip(requests, responses, strict=True)
        ],
    )


def record_values(request: Message, digest: str, response: Message, now: datetime) -> dict[str, object]:
    """The columns of the record that answers a retry of `request`."""
    return {
        "shop_id": str(getattr(request, "shop_id", "")),
        "request_id": str(getattr(request, "request_id", "")),
        "method": request.DESCRIPTOR.full_name,
        "fingerprint": digest,
        "response": response.SerializeToString(),
        "created_at": now,
    }


def purge_expired(db: Database, *, older_than: timedelta, now: datetime) -> int:
    """Drops request ids recorded before `now - older_than`, one shop per transaction; returns how many.

    Shop by shop so that each DELETE stays inside one shard when the table is
    distributed by shop (deploy/citus); only the read that finds the shops spans them, and it locks nothing.
    """
    before = now - older_than
    shops = db.run(partial(shops_with_records_before, before=before))
    return sum(db.run(partial(purge_shop_records, shop_id=shop_id, before=before)) for shop_id in shops)


def shops_with_records_before(session: Session, *, before: datetime) -> list[str]:
    query = select(IdempotencyRecord.shop_id).where(IdempotencyRecord.created_at < before).distinct()
    return list(session.scalars(query).all())


def purge_shop_records(session: Session, *, shop_id: str, before: datetime) -> int:
    result = session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.shop_id == shop_id, IdempotencyRecord.created_at < before)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def is_repeat(stored: tuple[object, ...], incoming: tuple[object, ...], *, key_name: str, key: str) -> bool:
    """Item-level idempotency (a refund id, a feedback id): True for a repeat, ALREADY_EXISTS for a conflict.

    The same key with the same content is a harmless repeat; the same key with
    other content is a client bug that must not be silently dropped.
    """
    if stored != incoming:
        raise AlreadyExists(
            f"{key_name} {key!r} was already recorded with other content",
            reason=f"{key_name.upper()}_REUSED",
            metadata={key_name: key},
        )
    return True
