"""The compose stack, started from deploy/compose.yaml, on PostgreSQL.

Checks what only a multi-process deployment shows: the migrate job runs first,
two points replicas share one database, a cross-service call goes through the
generated stubs, Prometheus metrics are served, SIGTERM drains and exits
cleanly, and no process is left behind.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from loyalty.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from loyalty.points.v1 import points_pb2, points_pb2_grpc
from loyalty.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.settings import DEV_TOKEN
from tests.compose_stack import (
    ROOT,
    DockerStack,
    NativeStack,
    docker_engine_available,
    in_default_profile,
    load_compose,
)
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
    services = [
        name
        for name, service in load_compose()["services"].items()
        if name not in ("postgres", "migrate") and in_default_profile(service)  # the observability profile is off
    ]
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


OBSERVABILITY = ROOT / "deploy" / "observability"
PROMQL_METRIC = re.compile(r"\b(loyalty_[a-z_]+)\b(?:\{([^}]*)\})?")
PROMQL_GROUPING = re.compile(r"\b(?:by|ignoring|on)\s*\(([^)]*)\)")
ADDED_BY_PROMETHEUS = {"job", "instance", "le"}  # scrape labels, and the histogram's own


def queries() -> list[str]:
    """Every PromQL expression of the dashboard and of the rule file."""
    dashboard = json.loads((OBSERVABILITY / "grafana" / "dashboards" / "loyalty.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    return exprs + [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def used_series(exprs: list[str]) -> dict[str, set[str]]:
    """Metric name -> the labels the expressions select or group it by (scrape-added labels left out)."""
    used: dict[str, set[str]] = {}
    for expr in exprs:
        grouping = {label.strip() for match in PROMQL_GROUPING.findall(expr) for label in match.split(",")}
        for name, selector in PROMQL_METRIC.findall(expr):
            labels = {part.split("=")[0].strip(" !~") for part in selector.split(",") if part.strip()}
            used.setdefault(name, set()).update((labels | grouping) - ADDED_BY_PROMETHEUS - {""})
    return used


def exported_series(text: str) -> dict[str, set[str]]:
    exported: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, rest = line.partition("{")
        name = name.split()[0]
        labels = {pair.split("=")[0] for pair in rest.rsplit("}", 1)[0].split(",") if "=" in pair} if rest else set()
        exported.setdefault(name, set()).update(labels)
    return exported


def test_every_series_the_dashboard_and_alerts_use_is_exported(compose_stack: NativeStack | DockerStack) -> None:
    """Read from the real /metrics endpoints after traffic: a renamed metric or label breaks a panel or an alert."""
    if not isinstance(compose_stack, NativeStack):
        pytest.skip("metrics ports are not published by the compose file")
    used = used_series(queries())
    assert {"loyalty_rpc_total", "loyalty_backlog_items", "loyalty_db_pool_in_use"} <= set(used)
    address = compose_stack.replicas["points"][0].address
    stub = points_pb2_grpc.PointsServiceStub(grpc.insecure_channel(address))
    stub.GetAccount(points_pb2.GetAccountRequest(shop_id="demo", customer_id="obs"), metadata=DEV)
    with pytest.raises(grpc.RpcError):  # an error status too
        stub.GetAccount(points_pb2.GetAccountRequest(shop_id="demo", customer_id="not an id"), metadata=DEV)
    missing: dict[str, set[str]] = {}
    deadline = time.monotonic() + 40  # the slowest worker (delivery creation) ticks every 10 s
    while time.monotonic() < deadline:
        exported: dict[str, set[str]] = {}
        for replicas in compose_stack.replicas.values():
            for replica in replicas:
                url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    for name, labels in exported_series(response.read().decode()).items():
                        exported.setdefault(name, set()).update(labels)
        missing = {name: labels - exported.get(name, set()) for name, labels in used.items()}
        missing = {name: labels for name, labels in missing.items() if name not in exported or labels}
        if not missing:
            break
        time.sleep(1)
    assert not missing, f"used by the dashboard or alerts but not exported: {missing}"


def test_the_alert_rules_are_valid_prometheus_rules(tmp_path: Path) -> None:
    """promtool when Debian's prometheus package is installed (.ci/run installs it); else the file's structure."""
    rules_file = OBSERVABILITY / "alerts.yml"
    rules = yaml.safe_load(rules_file.read_text())
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert rule["expr"].strip()
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
                assert rule["annotations"]["summary"]
                assert rule["annotations"]["description"]
            for name in re.findall(r"\bloyalty:[a-z_]+:rate\w+", rule["expr"]):
                assert name in recorded, f"{rule.get('alert') or rule.get('record')} uses unrecorded {name}"
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = tmp_path / "prometheus.yml"  # the config names the rules by their path in the container
    config.write_text(
        (OBSERVABILITY / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(rules_file))
    )
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
