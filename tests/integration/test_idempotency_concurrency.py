"""Many concurrent clients with duplicated request ids: each id applies once, balances equal ledger sums."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db import Database
from services.common.errors import FailedPrecondition
from services.common.idempotency import run_idempotent
from services.common.migrations import upgrade
from services.points.models import Balance, Entry
from tests.support import Stack, bearer, specs

W = bearer("writer")
ADMIN = bearer("admin")
CLIENTS = 24
OPERATIONS = 240


def test_duplicate_storm_applies_each_request_once(stack: Stack, uid: str) -> None:
    rng = random.Random(uid)
    customers = [f"{uid}-{i}" for i in range(4)]
    operations = [(f"{uid}-op{i}", rng.choice(customers), rng.choice([5, 10, 20, -7, -15])) for i in range(OPERATIONS)]
    # 20 % of sends repeat an earlier request id with the same payload, in random order.
    sends = operations + rng.sample(operations, OPERATIONS // 5)
    rng.shuffle(sends)
    stub = points_pb2_grpc.PointsServiceStub(stack.channel("points"))

    def send(op: tuple[str, str, int]) -> tuple[str, bytes | None]:
        request_id, customer, delta = op
        request = points_pb2.AdjustPointsRequest(
            shop_id="shop-a", request_id=request_id, customer_id=customer, asset=points_pb2.ASSET_POINTS, delta=delta
        )
        try:
            return request_id, stub.AdjustPoints(request, metadata=W, timeout=30).SerializeToString()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            return request_id, None

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(send, sends))

    answers: dict[str, set[bytes]] = {}
    for request_id, body in results:
        if body is not None:
            answers.setdefault(request_id, set()).add(body)
    assert all(len(bodies) == 1 for bodies in answers.values()), "a retry got a different answer"

    db = stack.services["points"].db
    with db.sessions() as session:
        applied = session.scalars(
            select(Entry.request_id).where(Entry.shop_id == "shop-a", Entry.holder.in_(customers))
        ).all()
        assert sorted(applied) == sorted(answers)  # each successful id exactly once, failed ids never
        for customer in customers:
            ledger = session.scalar(
                select(func.coalesce(func.sum(Entry.delta), 0)).where(
                    Entry.shop_id == "shop-a", Entry.holder == customer
                )
            )
            cached = (
                session.scalar(select(Balance.balance).where(Balance.shop_id == "shop-a", Balance.holder == customer))
                or 0
            )
            assert ledger == cached >= 0
        total = session.scalar(select(func.sum(Entry.delta)).where(Entry.shop_id == "shop-a"))
        assert total == 0  # double entry: every transfer sums to zero


def test_a_call_refused_because_its_own_twin_just_succeeded_answers_with_the_twins_response(
    database_url: str,
) -> None:
    """The twin commits while this call waits for a lock; the change it made (the last unit gone)
    would refuse this call, but the request did succeed, so the caller must hear the success."""
    url = database_url.replace("{service}", "points")
    upgrade(specs()["points"].migrations, url)
    db = Database(url, pool_size=4)
    request = points_pb2.AdjustPointsRequest(
        shop_id="shop-a", request_id="twin", customer_id="c", asset=points_pb2.ASSET_POINTS, delta=5
    )
    twin_response = points_pb2.AdjustPointsResponse(entry=points_pb2.LedgerEntry(entry_id=42, delta=5))
    try:

        def twin_commits_then_this_call_is_refused(session: Session) -> points_pb2.AdjustPointsResponse:
            run_idempotent(db, request, points_pb2.AdjustPointsResponse, lambda _s: twin_response)
            raise FailedPrecondition("out of stock")

        if db.is_postgres:
            answer = run_idempotent(
                db, request, points_pb2.AdjustPointsResponse, twin_commits_then_this_call_is_refused
            )
            assert answer == twin_response
        with pytest.raises(FailedPrecondition):  # a refusal with no twin stays a refusal
            run_idempotent(
                db,
                points_pb2.AdjustPointsRequest(shop_id="shop-a", request_id="alone", customer_id="c", delta=1),
                points_pb2.AdjustPointsResponse,
                lambda _s: (_ for _ in ()).throw(FailedPrecondition("out of stock")),
            )
    finally:
        db.dispose()


def test_a_call_whose_caller_timed_out_while_it_waited_for_a_lock_never_commits(stack: Stack, uid: str) -> None:
    """The storm's lost-update race in slow motion: the caller gives up, so a late commit would be a
    change the caller was never told about (and its retry could already have been refused)."""
    from prometheus_client import REGISTRY

    from services.points.store import lock_member

    method = "/loyalty.points.v1.PointsService/AdjustPoints"

    def handled() -> float:
        return sum(
            REGISTRY.get_sample_value("loyalty_rpc_total", {"method": method, "code": code}) or 0.0
            for code in ("OK", "DEADLINE_EXCEEDED")
        )

    stub = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
    request = points_pb2.AdjustPointsRequest(
        shop_id=uid, request_id="late", customer_id="c", asset=points_pb2.ASSET_POINTS, delta=50
    )
    db = stack.services["points"].db
    before = handled()
    with db.sessions.begin() as holder:
        lock_member(holder, shop_id=uid, customer_id="c")  # the member's row (PostgreSQL) or the database (SQLite)
        with pytest.raises(grpc.RpcError) as timed_out:
            stub.AdjustPoints(request, metadata=ADMIN, timeout=0.5)
        assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's handler now gets the lock; wait (bounded) until it has answered, whatever the answer.
    for _ in range(200):
        if handled() > before:
            break
        time.sleep(0.05)
    assert handled() > before, "the server never finished the timed-out call"
    with db.sessions() as session:
        late = session.scalars(select(Entry.request_id).where(Entry.shop_id == uid, Entry.request_id == "late"))
        assert late.all() == []
    retried = stub.AdjustPoints(request, metadata=ADMIN, timeout=30)  # the retry is evaluated afresh and applies once
    assert retried.entry.delta == 50
    with db.sessions() as session:
        assert session.scalar(select(func.count()).where(Entry.shop_id == uid, Entry.request_id == "late")) == 2
