"""The compose stack, started from deploy/compose.yaml, on PostgreSQL.

Checks what only a multi-process deployment shows: the migrate job runs first,
two points replicas share one database, a cross-service call goes through the
generated stubs, Prometheus metrics are served, SIGTERM drains and exits
cleanly, and no process is left behind.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.settings import DEV_TOKEN
from tests.compose_stack import DockerStack, NativeStack, docker_engine_available, load_compose
from tests.conftest import require_backend
from tests.integration.test_metrics_rpc import order
from tests.support import Metadata
from tools.supervise import serving

pytestmark = pytest.mark.stack
DEV: Metadata = (("authorization", f"Bearer {DEV_TOKEN}"),)


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeStack | DockerStack]:
    require_backend("postgresql")
    if docker_engine_available():
        docker = DockerStack().start()
        yield docker
        docker.stop()
        return
    native = NativeStack(load_compose(), log_dir=tmp_path_factory.mktemp("stack-logs")).start()
    try:
        yield native
    finally:
        native.stop()


def test_every_replica_is_serving(compose_stack: NativeStack | DockerStack) -> None:
    services = [n for n in load_compose()["services"] if n not in ("postgres", "migrate")]
    for name in services:
        replicas = load_compose()["services"][name].get("deploy", {}).get("replicas", 1)
        for index in range(replicas):
            assert serving(compose_stack.address(name, index)), f"{name}[{index}]"


def test_two_points_replicas_share_one_ledger(compose_stack: NativeStack | DockerStack) -> None:
    first = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(compose_stack.address("points", 0)))
    second = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(compose_stack.address("points", 1)))
    request = points_pb2.AdjustPointsRequest(
        shop_id="demo", request_id="replica-1", customer_id="c-rep", asset=points_pb2.ASSET_POINTS, delta=40
    )
    written = first.AdjustPoints(request, metadata=DEV)
    replayed = second.AdjustPoints(request, metadata=DEV)
    assert replayed == written
    account = second.GetAccount(points_pb2.GetAccountRequest(shop_id="demo", customer_id="c-rep"), metadata=DEV)
    assert account.account.points_balance == 40


def test_cross_service_profile_through_generated_stubs(compose_stack: NativeStack | DockerStack) -> None:
    metrics = metrics_pb2_grpc.MetricsServiceStub(grpc.insecure_channel(compose_stack.address("metrics")))
    metrics.RecordOrders(
        metrics_pb2.RecordOrdersRequest(
            shop_id="demo",
            request_id="stack-orders",
            orders=[order("so-1", "c-x", datetime.now(UTC) - timedelta(days=1), 9900)],
        ),
        metadata=DEV,
    )
    points = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(compose_stack.address("points", 1)))
    points.AdjustPoints(
        points_pb2.AdjustPointsRequest(
            shop_id="demo", request_id="stack-points", customer_id="c-x", asset=points_pb2.ASSET_POINTS, delta=99
        ),
        metadata=DEV,
    )
    segmentation = segmentation_pb2_grpc.SegmentationServiceStub(
        grpc.insecure_channel(compose_stack.address("segmentation"))
    )
    profile = segmentation.GetCustomerProfile(
        segmentation_pb2.GetCustomerProfileRequest(shop_id="demo", customer_id="c-x"), metadata=DEV
    ).profile
    assert (profile.order_count, profile.total_paid.amount_minor, profile.points_balance) == (1, 9900, 99)


def test_campaign_grant_to_a_segment_across_metrics_segmentation_and_points(
    compose_stack: NativeStack | DockerStack,
) -> None:
    """Orders into metrics, a segment evaluated by segmentation, a campaign granted by points, each its own process."""
    shop = "campaign-shop"
    now = datetime.now(UTC)
    metrics = metrics_pb2_grpc.MetricsServiceStub(grpc.insecure_channel(compose_stack.address("metrics")))
    metrics.RecordOrders(
        metrics_pb2.RecordOrdersRequest(
            shop_id=shop,
            request_id="campaign-orders",
            orders=[
                order(f"co-{n}", customer, now - timedelta(days=days), 5_000)
                for n, (customer, days) in enumerate([("k1", 9), ("k1", 2), ("k2", 5), ("k3", 8), ("k3", 1)])
            ],
        ),
        metadata=DEV,
    )
    segmentation = segmentation_pb2_grpc.SegmentationServiceStub(
        grpc.insecure_channel(compose_stack.address("segmentation"))
    )
    segment = segmentation_pb2.Segment(segment_id="repeat", name="repeat", rule="order_count >= 2")
    segmentation.UpsertSegment(
        segmentation_pb2.UpsertSegmentRequest(shop_id=shop, request_id="campaign-segment", segment=segment),
        metadata=DEV,
    )
    final = list(segmentation.EvaluateSegments(segmentation_pb2.EvaluateSegmentsRequest(shop_id=shop), metadata=DEV))[
        -1
    ]
    assert dict(final.members) == {"repeat": 2}
    points = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(compose_stack.address("points", 0)))
    grant = list(
        points.GrantToSegment(
            points_pb2.GrantToSegmentRequest(shop_id=shop, campaign_id="winback", segment_id="repeat", points=300),
            metadata=DEV,
        )
    )[-1]
    assert (grant.done, grant.granted) == (True, 2)
    other_replica = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(compose_stack.address("points", 1)))
    balances = [
        other_replica.GetAccount(
            points_pb2.GetAccountRequest(shop_id=shop, customer_id=c), metadata=DEV
        ).account.points_balance
        for c in ("k1", "k2", "k3")
    ]
    assert balances == [300, 0, 300]


def test_prometheus_metrics_count_rpcs(compose_stack: NativeStack | DockerStack) -> None:
    if not isinstance(compose_stack, NativeStack):
        pytest.skip("metrics ports are not published by the compose file")
    replica = compose_stack.replicas["points"][0]
    points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(replica.address)).GetAccount(
        points_pb2.GetAccountRequest(shop_id="demo", customer_id="m"), metadata=DEV
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'loyalty_rpc_total{code="OK",method="/loyalty.points.v1.PointsService/GetAccount"}' in body
    assert "loyalty_rpc_seconds_bucket" in body
    assert "loyalty_healthy 1.0" in body


def test_access_log_is_json_without_personal_data(compose_stack: NativeStack | DockerStack) -> None:
    if not isinstance(compose_stack, NativeStack):
        pytest.skip("reads the native process logs")
    import json

    lines = [
        json.loads(line)
        for r in compose_stack.replicas["points"]
        for line in Path(r.log_path).read_text().splitlines()
        if line.startswith("{")
    ]
    rpc_lines = [line for line in lines if line.get("event") == "rpc"]
    assert rpc_lines, "no access log lines"
    assert {"method", "shop_id", "request_id", "status", "duration_ms", "timestamp"} <= set(rpc_lines[0])


def test_sigterm_drains_and_leaves_no_process(tmp_path: Path) -> None:
    require_backend("postgresql")
    stack = NativeStack(load_compose(), log_dir=tmp_path).start()
    processes = stack.processes()
    assert len(processes) == 5  # two points replicas + metrics + segmentation + cycle_delivery
    codes = stack.stop()
    assert set(codes.values()) == {0}, codes
    assert all(p.poll() is not None for p in processes)
