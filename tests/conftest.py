"""Fixtures shared by every test folder.

Every database test runs on SQLite and on PostgreSQL. When PostgreSQL is not
reachable its cases are skipped locally, but fail when CI=true or
LOYALTY_REQUIRE_POSTGRES=1: in CI a missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests import shard_routing
from tests.support import Stack, database_template, postgres_available, start_stack

# No time limits on examples: timings are for `make bench`, never for tests.
settings.register_profile(
    "loyalty", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("loyalty")

BACKENDS = [b for b in os.environ.get("LOYALTY_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]
REQUIRE_POSTGRES = os.environ.get("CI") == "true" or os.environ.get("LOYALTY_REQUIRE_POSTGRES") == "1"
_PG_UP: bool | None = None


def require_backend(backend: str) -> None:
    global _PG_UP
    if backend != "postgresql":
        return
    if _PG_UP is None:
        _PG_UP = postgres_available()
    if not _PG_UP:
        if REQUIRE_POSTGRES:
            pytest.fail("PostgreSQL is required (CI=true or LOYALTY_REQUIRE_POSTGRES=1) but not reachable")
        pytest.skip("PostgreSQL not reachable")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_backend(name)
    return name


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with database_template(backend, tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def stack(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One four-service stack per test module and backend; tests keep apart by unique ids."""
    with database_template(backend, tmp_path_factory.mktemp("stack")) as url:
        running = start_stack(url)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    """A short id unique to this test, for customer and request ids."""
    return uuid.uuid4().hex[:10]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runs_last: runs after every other test (it judges what they did)")
    if "postgresql" in BACKENDS:
        shard_routing.install()  # judges every statement sent to PostgreSQL (test_shard_routing)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked runs_last go last; the count of PostgreSQL tests tells the routing test what to expect."""
    last = [item for item in items if item.get_closest_marker("runs_last")]
    items[:] = [item for item in items if item not in last] + last
    shard_routing.RECORDER.postgres_tests = sum(
        1 for item in items if getattr(getattr(item, "callspec", None), "params", {}).get("backend") == "postgresql"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    shard_routing.RECORDER.current_test = item.nodeid


def pytest_collection_finish(session: pytest.Session) -> None:
    """An empty run is an error, never a silent success (e.g. a broken testpaths or import)."""
    if not session.items and not session.config.option.keyword and not session.config.option.markexpr:
        raise pytest.UsageError("no tests collected: the suite must never pass by running nothing")
