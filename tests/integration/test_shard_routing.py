"""Every statement the services sent to PostgreSQL in this run stays on one shard on Citus (tests/shard_routing.py).

Runs after every other test (`runs_last`) and judges what they made the
services send: any statement over a distributed table that does not pin one
shop_id fails it, with the statement, the function that sent it and a test
that made it happen. Background jobs that read across shops are allowed by
name, each with its reason (`BACKGROUND_JOBS`).
"""

from __future__ import annotations

import pytest

from tests.conftest import BACKENDS
from tests.shard_routing import BACKGROUND_JOBS, RECORDER


@pytest.mark.runs_last
def test_every_service_statement_on_a_distributed_table_names_one_shop() -> None:
    if "postgresql" not in BACKENDS or RECORDER.postgres_tests == 0:
        pytest.skip("nothing to judge: no PostgreSQL test ran in this session (run it with them)")
    assert RECORDER.judged > 0, "PostgreSQL tests ran but no statement over a distributed table was recorded"
    # Recorded at the driver: everything SQLAlchemy sends, plus the raw psycopg paths (hot path, COPY).
    assert RECORDER.statements > RECORDER.through_sqlalchemy > 0
    report = "\n\n".join(
        f"{f.problem}\n  sent by {f.origin}\n  during {f.test}\n  {f.sql}" for f in RECORDER.findings.values()
    )
    assert not RECORDER.findings, f"{len(RECORDER.findings)} statements would fan out on Citus:\n\n{report}"
    unknown = set(RECORDER.allowed) - set(BACKGROUND_JOBS)
    assert not unknown
