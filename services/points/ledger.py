"""Runs a member use case on the service's storage path: the PostgreSQL hot path, or SQLAlchemy Core.

A use case is a `MemberQuery` (what to read), a plan (the rules, run on the
member's book) and a response builder. On PostgreSQL the hot path
(`services.points.fast`) reads and writes in two prepared round trips; on the
embedded SQLite default, and for a plan that needs another member's book too,
the Core path (`services.points.store`) runs the same plan in one transaction
under the member lock. Both answer a retried request id with the first answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from services.common.clock import Clock
from services.common.db import Database
from services.common.idempotency import (
    IdempotencyRecord,
    checked_request_id,
    fingerprint,
    record_values,
    replay_record,
    run_idempotent,
)
from services.points import store
from services.points.book import MemberBook, MemberQuery
from services.points.fast import CorePathNeeded, HotPath, Plan

T = TypeVar("T")
R = TypeVar("R", bound=Message)


class MemberLedger:
    """Member use cases of one service process."""

    def __init__(self, db: Database, clock: Clock, *, hot_path: bool | None = None) -> None:
        use_hot_path = db.is_postgres if hot_path is None else hot_path
        self.db = db
        self.clock = clock
        self.hot = HotPath(db) if use_hot_path else None

    def mutate(
        self,
        request: Message,
        response_type: type[R],
        query: MemberQuery,
        plan: Plan[T],
        respond: Callable[[MemberBook, T], R],
    ) -> R:
        """Applies the use case once per request id; a retry gets the first response."""
        if self.hot is not None:
            request_id = checked_request_id(request)
            digest = fingerprint(request)

            def record(response: Message) -> dict[str, Any]:
                return record_values(request, digest, response, self.clock())

            def replay(stored: IdempotencyRecord) -> R:
                return replay_record(stored, request, digest, response_type)

            try:
                answer = self.hot.mutate(query, request_id, plan, respond, record, replay)
            except CorePathNeeded:
                pass
            else:
                assert isinstance(answer, response_type)
                return answer
        return run_idempotent(
            self.db, request, response_type, lambda session: core_apply(session, query, plan, respond), clock=self.clock
        )

    def read(self, query: MemberQuery, respond: Callable[[MemberBook], R]) -> R:
        if self.hot is not None:
            return respond(MemberBook(self.hot.read(query)))
        return self.db.run(lambda session: respond(MemberBook(store.load_member(session, query, lock=False))))


def core_apply(session: Session, query: MemberQuery, plan: Plan[T], respond: Callable[[MemberBook, T], R]) -> R:
    """The use case in the caller's transaction: the member locked and read, the plan run, every book written."""
    book = store.member_book(session, query)
    others: dict[str, MemberBook] = {}

    def other_book(customer_id: str) -> MemberBook:
        if customer_id not in others:
            others[customer_id] = store.member_book(session, replace(query, customer_id=customer_id))
        return others[customer_id]

    outcome = plan(book, other_book)
    store.save_member(session, book)
    for other in others.values():
        store.save_member(session, other)
    return respond(book, outcome)
