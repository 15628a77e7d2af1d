"""PostgreSQL goes away mid-run and comes back: UNAVAILABLE (never INTERNAL), NOT_SERVING, then full recovery.

The test runs its own PostgreSQL cluster (initdb in a temporary directory, its
own port), so stopping it does not disturb the shared server the other tests use.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc

from tests.support import Stack, bearer, free_port, start_stack

PG_BIN = Path("/usr/lib/postgresql/15/bin")
A = bearer("admin")


def as_postgres(args: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PrivateCluster:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.port = free_port()
        self.socket_dir = root

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("-o", options, "-l", str(self.socket_dir / "log"), "-w", "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def cluster(backend: str) -> Iterator[PrivateCluster]:
    if backend != "postgresql":
        pytest.skip("a database outage is a PostgreSQL scenario")
    if not (PG_BIN / "initdb").exists() or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are required for the outage test")
    # Not under pytest's tmp_path: as root that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="loyalty-outage-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        as_postgres([str(PG_BIN / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    running = PrivateCluster(root)
    running.start()
    try:
        yield running
    finally:
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(running.data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def eventually(check: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_outage_answers_unavailable_and_everything_recovers(cluster: PrivateCluster) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/lt_outage_{{service}}"
    stack: Stack = start_stack(url, health_probe_seconds=0.2)
    try:
        points = points_pb2_grpc.PointsServiceStub(stack.channel("points"))
        health = health_pb2_grpc.HealthStub(stack.channel("points"))

        def adjust(request_id: str, customer: str, delta: int) -> points_pb2.AdjustPointsResponse:
            request = points_pb2.AdjustPointsRequest(
                shop_id="shop-o",
                request_id=request_id,
                customer_id=customer,
                asset=points_pb2.ASSET_POINTS,
                delta=delta,
            )
            response: points_pb2.AdjustPointsResponse = points.AdjustPoints(request, metadata=A, timeout=15)
            return response

        def serving() -> bool:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            return bool(status == health_pb2.HealthCheckResponse.SERVING)

        acknowledged = {f"c{i}": adjust(f"before-{i}", f"c{i}", 100).account.points_balance for i in range(5)}
        cluster.stop()
        codes = set()
        for i in range(5):
            for call in (
                lambda i=i: adjust(f"during-{i}", f"c{i}", 7),
                lambda i=i: points.GetAccount(
                    points_pb2.GetAccountRequest(shop_id="shop-o", customer_id=f"c{i}"), metadata=A, timeout=15
                ),
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                codes.add(caught.value.code())
        assert codes == {grpc.StatusCode.UNAVAILABLE}
        assert eventually(lambda: not serving()), "health stayed SERVING without a database"
        cluster.start()
        assert eventually(serving), "health did not come back"
        for i in range(5):  # the client retries what failed, with the same request ids
            retry = functools.partial(adjust, f"during-{i}", f"c{i}", 7)
            assert eventually(functools.partial(_succeeds, retry))
        for customer, before in acknowledged.items():
            account = points.GetAccount(
                points_pb2.GetAccountRequest(shop_id="shop-o", customer_id=customer), metadata=A
            )
            assert account.account.points_balance == before + 7  # nothing acknowledged lost, nothing twice
    finally:
        stack.stop()


def _succeeds(call: Callable[[], object]) -> bool:
    try:
        call()
        return True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        return False
