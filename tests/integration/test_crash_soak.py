"""kill -9 under load: the compose stack, two replicas of every service, three SIGKILLs mid-workload.

The checker in `tests.soak` proves that nothing acknowledged was lost or applied
twice, nothing refused was applied, ledgers reconcile, no mall item was oversold,
every due delivery was created once and every outbox event delivered, and metrics
hold exactly the orders sent. `make soak` runs the same with more operations and kills.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.conftest import require_backend
from tests.soak import SoakPlan, run_soak

pytestmark = pytest.mark.stack


def test_sigkills_during_a_mixed_workload_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    require_backend("postgresql")
    seed = random.randrange(2**31)
    report = run_soak(SoakPlan(operations=300, clients=8, kills=3, seed=seed), tmp_path)
    assert report.violations == [], f"seed {seed}: {report.summary()}"
    assert len(report.kills) == 3, report.summary()
    assert report.acknowledged >= report.operations // 2, report.summary()  # the workload did real work
    assert report.duplicates > 0
