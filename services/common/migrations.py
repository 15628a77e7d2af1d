"""Alembic runner: one migration history per service, applied on start or by `migrate`.

On PostgreSQL an advisory lock serialises concurrent upgrades, so replicas and
the compose migrate job may all start at once.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.exc import SAWarning

from services.common.citus import actual_placements, distribute, placement_problems
from services.common.db import Database, ensure_database, is_postgres


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
            if is_postgres(url):  # on a Citus coordinator, placed in the migrations' own transaction: never partly
                distribute(conn, service_of(script_location))
    finally:
        engine.dispose()


def service_of(script_location: Path) -> str:
    """`services/<name>/migrations` -> `<name>`."""
    return script_location.parent.name


def check_distribution(db: Database, service: str) -> None:
    """Refuses to serve a partly distributed database (deploy/citus): some tables sharded, others not."""
    if not db.is_postgres:
        return
    actual = db.run(lambda session: actual_placements(session.connection()))
    problems = placement_problems(service, actual) if actual is not None else []
    if problems:
        raise PartlyDistributed(
            f"the {service} database is partly distributed; run `python -m services.{service} migrate` on the "
            "coordinator to place every table (deploy/citus/README.md): " + "; ".join(problems)
        )


class PartlyDistributed(RuntimeError):
    pass


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


def key_by_shop(op: Any, table: str) -> None:
    """Replaces a table's key `(id)` by `(shop_id, id)`; the id keeps its sequence (PostgreSQL) or stays as is (SQLite).

    SQLite cannot alter a key: the table is copied into one declared with the new key.
    """
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, ["shop_id", "id"])
        return
    _rekey_sqlite(op, table, ["shop_id", "id"])


def unkey_by_shop(op: Any, table: str) -> None:
    """`key_by_shop` undone: the key is `(id)` again."""
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, ["id"])
        return
    _rekey_sqlite(op, table, ["id"])


def _rekey_sqlite(op: Any, table: str, columns: list[str]) -> None:
    # Alembic copies the table into one declared with the new key; SQLAlchemy warns that the
    # reflected key differs from the declared one, which is the point here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*specifies columns .* as primary_key=True", category=SAWarning)
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.create_primary_key(f"{table}_pkey", columns)


def add_outbox_trace_context(op: Any) -> None:
    """The outbox's `trace_context` column (every service has the common outbox table, so each migrates it)."""
    with op.batch_alter_table("outbox_events") as batch:
        batch.add_column(sa.Column("trace_context", sa.String(length=128), nullable=False, server_default=""))


def drop_outbox_trace_context(op: Any) -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("trace_context")
