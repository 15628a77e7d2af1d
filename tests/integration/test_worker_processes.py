"""LOYALTY_WORKERS=2: two server processes behind one port, started from the compose file's command.

What a supervisor must get right and only a real process tree shows: both
copies take connections, one /metrics counts the calls of both, a copy killed
with SIGKILL is replaced while the port keeps answering, and SIGTERM drains
every copy and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from loyalty.points.v1 import points_pb2, points_pb2_grpc

from services.common.settings import DEV_TOKEN
from tests.compose_stack import ROOT, NativeStack, command_of, load_compose
from tests.conftest import require_backend
from tests.support import Metadata, drop_databases, free_port
from tools.supervise import terminate, wait_serving

pytestmark = pytest.mark.stack
DEV: Metadata = (("authorization", f"Bearer {DEV_TOKEN}"),)
ADJUST = "/loyalty.points.v1.PointsService/AdjustPoints"


@dataclass
class Supervised:
    process: subprocess.Popen[bytes]
    address: str
    metrics_port: int
    log_path: Path

    def children(self) -> list[int]:
        text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in text.split()]

    def log_lines(self) -> list[dict[str, object]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            body = response.read().decode()
        total = 0.0
        for line in body.splitlines():
            match = re.match(rf"^{name}(\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)$", line)
            if match and all(f'{k}="{v}"' in (match["labels"] or "") for k, v in labels.items()):
                total += float(match["value"])
        return total


@pytest.fixture
def supervised_points(tmp_path: Path) -> Iterator[Supervised]:
    require_backend("postgresql")
    stack = NativeStack(load_compose(), log_dir=tmp_path)
    port, metrics_port = free_port(), free_port()
    stack.ports = {name: [free_port()] for name in ("points", "metrics", "segmentation", "cycle_delivery")}
    env = {**stack.env_for("points", port, metrics_port), "LOYALTY_WORKERS": "2", "LOYALTY_GRACE_SECONDS": "5"}
    log_path = tmp_path / "points.log"
    process = subprocess.Popen(
        command_of(load_compose()["services"]["points"]),
        env=env,
        cwd=ROOT,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    supervised = Supervised(process, f"127.0.0.1:{port}", metrics_port, log_path)
    try:
        wait_serving(process, supervised.address, timeout=90, label="points supervisor")
        yield supervised
    finally:
        terminate([process], grace=20)
        drop_databases(prefix=stack.database_prefix)


def adjust(address: str, request_id: str, customer: str = "c-workers") -> points_pb2.AdjustPointsResponse:
    """One call on a connection of its own, so the kernel picks a copy for it afresh."""
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        response: points_pb2.AdjustPointsResponse = points_pb2_grpc.PointsServiceStub(channel).AdjustPoints(
            points_pb2.AdjustPointsRequest(
                shop_id="demo", request_id=request_id, customer_id=customer, asset=points_pb2.ASSET_POINTS, delta=1
            ),
            metadata=DEV,
            timeout=10,
            wait_for_ready=True,
        )
        return response


def test_both_copies_serve_and_one_metrics_endpoint_counts_them_all(supervised_points: Supervised) -> None:
    # The supervisor answers once one copy listens; the other may bind a moment later, and until then the
    # kernel has one socket to give connections to. So: calls until both copies answered, at most 200.
    calls, by_worker = 0, set[object]()
    while by_worker != {0, 1} and calls < 200:
        for _ in range(12):
            adjust(supervised_points.address, f"spread-{calls}")
            calls += 1
        rpc_lines = [line for line in supervised_points.log_lines() if line.get("event") == "rpc"]
        by_worker = {line.get("worker") for line in rpc_lines if line.get("method") == ADJUST}
    assert by_worker == {0, 1}, f"the kernel sent all {calls} connections to one copy: {by_worker}"
    assert supervised_points.metric("loyalty_rpc_total", method=ADJUST, code="OK") == calls
    assert supervised_points.metric("loyalty_healthy") == 1.0
    final = adjust(supervised_points.address, "spread-last")
    assert final.account.points_balance == calls + 1  # one ledger behind both copies


def test_a_killed_copy_is_replaced_and_sigterm_drains_every_copy(supervised_points: Supervised) -> None:
    before = supervised_points.children()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    answered = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (answered >= 10 and _replaced(before, supervised_points.children())):
        adjust(supervised_points.address, f"after-kill-{answered}")  # wait_for_ready rides out the dead copy
        answered += 1
    after = supervised_points.children()
    assert _replaced(before, after), (before, after)
    assert any(line.get("event") == "worker_process_exited" for line in supervised_points.log_lines())
    wait_serving(supervised_points.process, supervised_points.address, timeout=30, label="points after restart")

    supervised_points.process.send_signal(signal.SIGTERM)
    assert supervised_points.process.wait(30) == 0
    assert all(not Path(f"/proc/{pid}").exists() or _is_zombie(pid) for pid in after)
    stopped = [line for line in supervised_points.log_lines() if line.get("event") == "service_stopped"]
    assert {line.get("worker") for line in stopped} == {0, 1}


def _replaced(before: list[int], after: list[int]) -> bool:
    """The first copy is gone, the second untouched, and a new one stands in for the first."""
    return len(after) == 2 and before[0] not in after and before[1] in after


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
