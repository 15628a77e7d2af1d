"""Many concurrent clients with duplicated request ids: each id applies once, balances equal ledger sums."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from sqlalchemy import func, select

from services.points.models import Balance, Entry
from tests.support import Stack, bearer

W = bearer("writer")
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
