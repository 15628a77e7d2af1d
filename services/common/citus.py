"""Where each service's tables live on a Citus cluster: distributed by shop, or kept on the coordinator.

One declaration serves the distribution DDL in `deploy/citus/` (written by
`tools/citus_ddl.py`), the check a service makes at start (`placement_problems`:
never run partly distributed) and the test that holds every model to Citus's
rules (`rule_breaks`). Every table that holds a shop's data is distributed by
`shop_id` and colocated with the service's other tables, so a request, which
is always about one shop, is a single-shard (router) query. A table that is
not distributed says why here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, ForeignKeyConstraint, MetaData, Table, UniqueConstraint, text

DISTRIBUTION_COLUMN = "shop_id"
SERVICES = ("points", "metrics", "segmentation", "cycle_delivery")


class Placement(enum.Enum):
    DISTRIBUTED = "distributed"  # sharded by shop_id, colocated with the service's other tables
    REFERENCE = "reference"  # copied to every node (small, shop-independent)
    COORDINATOR_LOCAL = "coordinator-local"  # a Citus local table on the coordinator, in the cluster's metadata


@dataclass(frozen=True)
class NotDistributed:
    placement: Placement
    reason: str


# Tables of every service that are not distributed by shop, and why.
NOT_DISTRIBUTED: Mapping[str, NotDistributed] = {
    "outbox_events": NotDistributed(
        Placement.COORDINATOR_LOCAL,
        "the relay claims events of every shop at once (FOR UPDATE SKIP LOCKED, ordered by due time), which "
        "Citus allows on one shard or a local table, never across shards; as a Citus local table (not a plain "
        "coordinator table) it joins the writer's distributed transaction, so a delivery update on a worker "
        "and its events commit together under two-phase commit",
    ),
}


def service_metadata(service: str) -> list[MetaData]:
    """The tables of one service's database: its models and the common ones (request ids, outbox)."""
    from services.common.tables import COMMON_METADATA

    models = __import__(f"services.{service}.models", fromlist=["Base"])
    return [COMMON_METADATA, models.Base.metadata]


def tables_of(metadata: Iterable[MetaData]) -> list[Table]:
    return sorted((t for m in metadata for t in m.sorted_tables), key=lambda t: t.name)


def placement_of(table_name: str) -> Placement:
    entry = NOT_DISTRIBUTED.get(table_name)
    return Placement.DISTRIBUTED if entry is None else entry.placement


def distributed_tables(service: str) -> list[str]:
    return [t.name for t in tables_of(service_metadata(service)) if placement_of(t.name) is Placement.DISTRIBUTED]


def rule_breaks(table: Table) -> list[str]:
    """What keeps a table from being distributed by shop: each key, unique constraint and foreign key needs shop_id."""
    where = f"table {table.name}"
    if DISTRIBUTION_COLUMN not in table.c:
        return [f"{where} has no {DISTRIBUTION_COLUMN} column"]
    breaks = []
    if DISTRIBUTION_COLUMN not in table.primary_key.columns:
        breaks.append(f"{where}: primary key ({_names(table.primary_key.columns)}) lacks {DISTRIBUTION_COLUMN}")
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint) and DISTRIBUTION_COLUMN not in constraint.columns:
            breaks.append(f"{where}: unique constraint on ({_names(constraint.columns)}) lacks {DISTRIBUTION_COLUMN}")
        if isinstance(constraint, ForeignKeyConstraint):
            pairs = {local.name: remote for local, remote in zip(constraint.columns, constraint.elements, strict=True)}
            shop = pairs.get(DISTRIBUTION_COLUMN)
            if shop is None or shop.column.name != DISTRIBUTION_COLUMN:
                breaks.append(
                    f"{where}: foreign key ({_names(constraint.columns)}) does not pair "
                    f"{DISTRIBUTION_COLUMN} with {DISTRIBUTION_COLUMN}"
                )
            elif placement_of(shop.column.table.name) is not Placement.DISTRIBUTED:
                breaks.append(f"{where}: foreign key to {shop.column.table.name}, which is not distributed")
    for index in table.indexes:
        if index.unique and DISTRIBUTION_COLUMN not in index.columns:
            breaks.append(f"{where}: unique index {index.name} lacks {DISTRIBUTION_COLUMN}")
    return breaks


def layout_problems(metadata: Iterable[MetaData]) -> list[str]:
    """Every table distributable by shop or declared otherwise; no declaration names a table that is gone."""
    tables = tables_of(metadata)
    problems = [b for t in tables if placement_of(t.name) is Placement.DISTRIBUTED for b in rule_breaks(t)]
    names = {t.name for t in tables}
    problems += [
        f"{name} is declared {entry.placement.value} but no such table"
        for name, entry in NOT_DISTRIBUTED.items()
        if name not in names
    ]
    return problems


def _names(columns: Iterable[object]) -> str:
    return ", ".join(getattr(c, "name", str(c)) for c in columns)


# ---------------------------------------------------------------- distribution on a live cluster


def distribution_statements(service: str) -> list[str]:
    """The statements that place one service's tables, each a no-op where the table is placed already.

    Distributed tables are colocated with the first of them (alphabetically), so
    a join or a transaction over one shop's rows in several tables stays on one node.
    """
    tables = tables_of(service_metadata(service))
    anchor = next(t.name for t in tables if placement_of(t.name) is Placement.DISTRIBUTED)
    statements = ["SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"]
    for table in tables:
        placement = placement_of(table.name)
        if placement is Placement.DISTRIBUTED:
            colocate = "none" if table.name == anchor else anchor
            call = f"create_distributed_table('{table.name}', '{DISTRIBUTION_COLUMN}', colocate_with => '{colocate}')"
        elif placement is Placement.REFERENCE:
            call = f"create_reference_table('{table.name}')"
        else:
            call = f"citus_add_local_table_to_metadata('{table.name}')"
        placed = f"SELECT FROM pg_dist_partition WHERE logicalrelid = '{table.name}'::regclass"
        statements.append(f"SELECT {call} WHERE NOT EXISTS ({placed})")
    return statements


def distribution_script(service: str) -> str:
    """`deploy/citus/<service>.sql`: what `distribute` runs, for review and for a manual deploy."""
    lines = [
        f"-- Places the {service} service's tables on a Citus cluster. Generated by tools/citus_ddl.py from",
        "-- services/common/citus.py and the models; do not edit. `python -m services.<name> migrate` runs the",
        "-- same statements right after the migrations, in their transaction (deploy/citus/README.md).",
        "BEGIN;",
    ]
    lines += [f"{statement};" for statement in distribution_statements(service)]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def citus_installed(conn: Connection) -> bool:
    return conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'")).first() is not None


def distribute(conn: Connection, service: str) -> bool:
    """Places the service's tables if the database is a Citus coordinator (in the caller's transaction)."""
    if not citus_installed(conn):
        return False
    for statement in distribution_statements(service):
        conn.execute(text(statement))
    return True


def actual_placements(conn: Connection) -> dict[str, Placement] | None:
    """How the cluster places each table that Citus knows of; None on plain PostgreSQL."""
    if not citus_installed(conn):
        return None
    # Citus's own catalog: hash-partitioned = distributed; otherwise replication model 't' = reference, 's' = local.
    rows = conn.execute(
        text(
            "SELECT logicalrelid::regclass::text, CASE WHEN partmethod = 'h' THEN 'distributed'"
            " WHEN repmodel = 't' THEN 'reference' ELSE 'coordinator-local' END FROM pg_dist_partition"
        )
    )
    return {name: Placement(kind) for name, kind in rows}


def placement_problems(service: str, actual: Mapping[str, Placement]) -> list[str]:
    """Tables placed otherwise than declared.

    All placed, or none yet (a database not distributed), is whole; anything
    between is a partly distributed database, on which the ledger can silently go wrong.
    """
    declared = {t.name: placement_of(t.name) for t in tables_of(service_metadata(service))}
    placed = {name: actual[name] for name in declared if name in actual}
    if not placed:
        return []
    return [
        f"{name} is {placed[name].value if name in placed else 'not placed'}, declared {want.value}"
        for name, want in sorted(declared.items())
        if placed.get(name) is not want
    ]
