"""What differs on a Citus coordinator, emulated on plain PostgreSQL (there is no Citus here).

- A duplicate key inside a COPY comes back from Citus as SQLSTATE XX000 with
  the worker's message, not 23505: a trigger on `orders` answers a known order
  id the same way, and ingestion must still classify duplicates and
  corrections, never answer INTERNAL.
- Migrations place every table as `services.common.citus` declares, in their own
  transaction, against a stand-in of Citus's catalog (`pg_dist_partition`, the
  placement functions, `citus_tables`): the DDL the real cluster would run.
- A partly distributed database is refused at start.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from services.common import citus
from services.common.db import Database
from services.common.migrations import PartlyDistributed, check_distribution, upgrade
from tests.integration.test_metrics_refunds_stream import chunk, metrics
from tests.integration.test_metrics_rpc import order, record
from tests.support import Stack, bearer, database_template, specs

A = bearer("admin")
PAID = datetime(2026, 3, 1, 4, tzinfo=UTC)

# Citus relays a worker's unique violation as XX000 ("internal error") naming the shard's index.
CITUS_LIKE_DUPLICATE = """
CREATE OR REPLACE FUNCTION citus_like_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM orders WHERE shop_id = NEW.shop_id AND order_id = NEW.order_id) THEN
        RAISE EXCEPTION 'duplicate key value violates unique constraint "orders_pkey_102008"'
            USING ERRCODE = 'XX000', DETAIL = 'Key (shop_id, order_id) already exists. (from worker 10.0.0.2:5432)';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER citus_like_duplicate BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION citus_like_duplicate();
"""

# The parts of Citus's catalog that the placement statements and the start check use.
CITUS_CATALOG = """
CREATE TABLE pg_dist_partition (
    logicalrelid regclass PRIMARY KEY, partmethod "char" NOT NULL, repmodel "char" NOT NULL, colocate_with text
);
CREATE FUNCTION create_distributed_table(t regclass, column_name text, colocate_with text) RETURNS void
    LANGUAGE sql AS $$ INSERT INTO pg_dist_partition VALUES (t, 'h', 's', colocate_with) $$;
CREATE FUNCTION create_reference_table(t regclass) RETURNS void
    LANGUAGE sql AS $$ INSERT INTO pg_dist_partition VALUES (t, 'n', 't', NULL) $$;
CREATE FUNCTION citus_add_local_table_to_metadata(t regclass) RETURNS void
    LANGUAGE sql AS $$ INSERT INTO pg_dist_partition VALUES (t, 'n', 's', NULL) $$;
"""


@pytest.fixture
def postgres_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("emulates Citus's answers on PostgreSQL")


def test_known_orders_are_classified_when_copy_reports_a_duplicate_as_xx000(
    stack: Stack, uid: str, postgres_only: None
) -> None:
    db = stack.services["metrics"].context.db
    db.run(lambda s: s.execute(text(CITUS_LIKE_DUPLICATE)))
    try:
        first = order(f"{uid}-1", uid, PAID, 1000)
        assert (record(stack, f"{uid}-a", first).inserted, record(stack, f"{uid}-b", first).duplicates) == (1, 1)
        mixed = record(stack, f"{uid}-c", order(f"{uid}-1", uid, PAID, 800), order(f"{uid}-2", uid, PAID, 50))
        assert (mixed.inserted, mixed.duplicates, mixed.corrected) == (1, 0, 1)
        shop = f"cz-{uid}"
        chunks = [
            chunk(f"c{c}", shop, *[order(f"o{c}-{i}", f"c{i % 5}", PAID, 10) for i in range(200)]) for c in range(3)
        ]
        assert metrics(stack).StreamOrders(iter(chunks), metadata=A).inserted == 600
        resent = [chunk(f"again-{c.request_id}", shop, *c.orders) for c in chunks]
        assert metrics(stack).StreamOrders(iter(resent), metadata=A).duplicates == 600
    finally:
        db.run(lambda s: s.execute(text("DROP TRIGGER citus_like_duplicate ON orders")))


@pytest.fixture
def citus_like_database(postgres_only: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A scratch PostgreSQL database with the stand-in catalog; `citus_installed` answers yes for it."""
    with database_template("postgresql", tmp_path) as template:
        url = template.replace("{service}", "points")
        upgrade(specs()["points"].migrations, url)  # creates the database; then start again from nothing
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            conn.execute(text(CITUS_CATALOG))
        engine.dispose()
        monkeypatch.setattr(citus, "citus_installed", lambda conn: True)
        yield url


def test_migrations_place_every_table_as_declared_in_their_own_transaction(citus_like_database: str) -> None:
    migrations = specs()["points"].migrations
    upgrade(migrations, citus_like_database)
    upgrade(migrations, citus_like_database)  # placed tables are left as they are (the catalog's key would refuse)
    engine = create_engine(citus_like_database)
    with engine.connect() as conn:
        placed = citus.actual_placements(conn)
        colocated = {r for (r,) in conn.execute(text("SELECT DISTINCT colocate_with FROM pg_dist_partition"))}
    engine.dispose()
    tables = citus.tables_of(citus.service_metadata("points"))
    assert placed == {t.name: citus.placement_of(t.name) for t in tables}
    assert colocated == {"none", "balances", None}  # one anchor; reference/local tables colocate with nothing
    serves(citus_like_database)  # placed whole


def test_a_partly_distributed_database_is_refused_at_start(citus_like_database: str) -> None:
    migrations = specs()["points"].migrations
    upgrade(migrations, citus_like_database)
    engine = create_engine(citus_like_database)
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM pg_dist_partition WHERE logicalrelid IN ('lots'::regclass, 'entries'::regclass)")
        )
    engine.dispose()
    with pytest.raises(PartlyDistributed, match="entries is not placed, declared distributed; lots is not placed"):
        serves(citus_like_database)


def serves(url: str) -> None:
    """What a points service checks at start, on its own database connection pool."""
    db = Database(url, pool_size=1)
    try:
        check_distribution(db, "points")
    finally:
        db.dispose()
