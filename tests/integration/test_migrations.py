"""Each service's Alembic history creates exactly what its models declare."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.common.migrations import upgrade
from services.common.tables import COMMON_METADATA
from tests.support import SERVICE_NAMES, specs


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_migrations_match_models(database_url: str, service: str) -> None:
    spec = specs()[service]
    url = database_url.replace("{service}", service)
    upgrade(spec.migrations, url)
    upgrade(spec.migrations, url)  # a second run is a no-op
    models = __import__(f"services.{service}.models", fromlist=["Base"]).Base.metadata
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}),
            [COMMON_METADATA, models],  # type: ignore[arg-type]
        )
        # Alembic's comparison leaves keys out; the shard key must lead them as the models say (deploy/citus).
        inspector = inspect(conn)
        keys = {
            table.name: inspector.get_pk_constraint(table.name)["constrained_columns"]
            for metadata in (COMMON_METADATA, models)
            for table in metadata.sorted_tables
        }
    engine.dispose()
    assert diff == []
    declared = {
        table.name: [c.name for c in table.primary_key.columns]
        for metadata in (COMMON_METADATA, models)
        for table in metadata.sorted_tables
    }
    assert keys == declared
