"""The hot path's AutocommitPool: bounded, self-healing after a lost server connection, never leaks a transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from services.common.db import AutocommitPool, Database, ensure_database
from services.common.errors import DeadlineExceeded
from tests.conftest import require_backend
from tests.support import database_template


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    require_backend("postgresql")
    with database_template("postgresql", tmp_path) as template:
        url = template.format(service="pool")
        ensure_database(url)
        yield url


@pytest.fixture
def pool(pg_url: str) -> Iterator[AutocommitPool]:
    db = Database(pg_url, pool_size=3)
    try:
        yield db.autocommit_pool
    finally:
        db.dispose()


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_connections_are_in_autocommit_in_utc_and_reused(pool: AutocommitPool) -> None:
    with pool.connection() as conn:
        first = backend_pid(conn)
        assert conn.autocommit
        assert conn.execute("SHOW TIME ZONE").fetchone() == ("UTC",)
    with pool.connection() as conn:
        assert backend_pid(conn) == first  # the idle connection, with its prepared statements


def test_a_transaction_left_open_by_a_failure_is_rolled_back(pool: AutocommitPool) -> None:
    pids: list[int] = []

    def fail_mid_transaction() -> None:
        with pool.connection() as conn:
            pids.append(backend_pid(conn))
            conn.execute("BEGIN")
            conn.execute("CREATE TABLE half_done (x int)")
            raise RuntimeError("the use case failed mid-transaction")

    with pytest.raises(RuntimeError):
        fail_mid_transaction()
    with pool.connection() as conn:
        assert backend_pid(conn) == pids[0]  # rolled back and kept, not thrown away
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)


def test_a_connection_the_server_dropped_is_replaced_with_every_idle_one(pool: AutocommitPool, pg_url: str) -> None:
    pool.warm(2)
    with pool.connection() as conn:
        victim = backend_pid(conn)
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
        assert backend_pid(conn) == victim
    with pool.connection() as conn:  # a new one, not the other dead idle connection
        assert backend_pid(conn) != victim
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_at_most_size_connections_are_in_use(pg_url: str) -> None:
    pool = AutocommitPool(pg_url.replace("+psycopg", ""), size=2, timeout=0.3)
    held = threading.Barrier(3)
    release = threading.Event()

    def hold() -> None:
        with pool.connection():
            held.wait()
            release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    held.wait()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="no database connection came free"), pool.connection():
        pass
    assert time.monotonic() - started >= 0.3
    release.set()
    for thread in holders:
        thread.join()
    with pool.connection() as conn:  # the slots came back
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.close()


def test_a_connection_past_its_lifetime_is_closed_when_given_back(pg_url: str) -> None:
    pool = AutocommitPool(pg_url.replace("+psycopg", ""), size=2, recycle_seconds=0.0)
    with pool.connection() as conn:
        first = backend_pid(conn)
    with pool.connection() as conn:
        assert backend_pid(conn) != first
    pool.close()


def test_a_timeout_or_lost_race_keeps_the_connections(pool: AutocommitPool) -> None:
    """QueryCanceled and deadlocks are OperationalErrors too, but leave the connection whole: no reconnect storm."""
    pool.warm(2)
    pids: list[int] = []

    def time_out() -> None:
        with pool.connection() as conn:
            pids.append(backend_pid(conn))
            conn.execute("SET statement_timeout = 10")
            conn.execute("SELECT pg_sleep(1)")

    with pytest.raises(psycopg.errors.QueryCanceled):
        time_out()
    with pool.connection() as first, pool.connection() as second:
        assert {backend_pid(first), backend_pid(second)} >= {pids[0]}
        assert len({backend_pid(first), backend_pid(second)}) == 2


def test_pool_usage_counts_connections_in_use_against_what_each_pool_may_hand_out(pg_url: str) -> None:
    """What the pool saturation gauges export (loyalty_db_pool_in_use / loyalty_db_pool_capacity)."""
    db = Database(pg_url, pool_size=3)
    try:
        assert db.pool_usage() == {"transactions": (0, 6), "hot_path": (0, 3)}  # 3 plus 3 overflow; the hot path 3
        seen = db.run(lambda session: (session.execute(text("SELECT 1")), db.pool_usage())[1])
        assert seen["transactions"] == (1, 6)
        with db.autocommit_pool.connection():
            assert db.pool_usage()["hot_path"] == (1, 3)
        assert db.pool_usage()["hot_path"] == (0, 3)
    finally:
        db.dispose()
