"""Alembic runner: one migration history per service, applied on start or by `migrate`.

On PostgreSQL an advisory lock serialises concurrent upgrades, so replicas and
the compose migrate job may all start at once.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import MetaData, create_engine, text

from services.common.db import ensure_database, is_postgres


def alembic_config(script_location: Path, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(script_location: Path, url: str) -> None:
    ensure_database(url)
    config = alembic_config(script_location, url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if is_postgres(url):
                lock_key = zlib.crc32(str(script_location.name + script_location.parent.name).encode())
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def run_env(context: Any, target_metadata: list[MetaData]) -> None:
    """Body of every service's migrations/env.py; `context` is alembic's proxy module."""
    connection: Any = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(context, connection, target_metadata)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _migrate(context, conn, target_metadata)
    engine.dispose()


def _migrate(context: EnvironmentContext, connection: Any, target_metadata: list[MetaData]) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
