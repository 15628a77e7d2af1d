"""Every table of every service can be distributed by shop on Citus, or says why it is placed otherwise."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import Column, ForeignKeyConstraint, Index, Integer, MetaData, String, Table, UniqueConstraint
from sqlalchemy.schema import SchemaItem

from services.common import citus
from services.common.citus import NOT_DISTRIBUTED, SERVICES, Placement, layout_problems, rule_breaks
from tools.citus_ddl import scripts


@pytest.mark.parametrize("service", SERVICES)
def test_every_table_is_distributable_by_shop_or_declared_otherwise(service: str) -> None:
    assert layout_problems(citus.service_metadata(service)) == []


def test_each_table_not_distributed_says_why() -> None:
    for name, entry in NOT_DISTRIBUTED.items():
        assert entry.placement is not Placement.DISTRIBUTED, name
        assert len(entry.reason) > 80, f"{name}: say which Citus limit it meets and how"


def _shop_table(metadata: MetaData, name: str, *extra: SchemaItem) -> Table:
    return Table(
        name, metadata, Column("shop_id", String(64), primary_key=True), Column("id", Integer, primary_key=True), *extra
    )


def test_a_new_table_that_breaks_a_rule_fails_the_layout() -> None:
    """What the check above would say of a table added without the shard key in its constraints."""
    metadata = MetaData()
    _shop_table(metadata, "parents")
    Table("no_shop", metadata, Column("id", Integer, primary_key=True))
    Table("keyed_by_id", metadata, Column("id", Integer, primary_key=True), Column("shop_id", String(64)))
    _shop_table(metadata, "unique_code", Column("code", String(8)), UniqueConstraint("code"))
    _shop_table(metadata, "unique_index", Column("code", String(8)), Index("ix_code", "code", unique=True))
    _shop_table(
        metadata,
        "child_by_id",
        Column("parent_id", Integer),
        ForeignKeyConstraint(["parent_id"], ["parents.id"]),
    )
    _shop_table(
        metadata,
        "child_by_shop",
        Column("parent_id", Integer),
        ForeignKeyConstraint(["shop_id", "parent_id"], ["parents.shop_id", "parents.id"]),
    )
    problems = layout_problems([metadata])
    assert any("no_shop has no shop_id column" in p for p in problems)
    assert any("keyed_by_id: primary key (id) lacks shop_id" in p for p in problems)
    assert any("unique_code: unique constraint on (code) lacks shop_id" in p for p in problems)
    assert any("unique_index: unique index ix_code lacks shop_id" in p for p in problems)
    assert any("child_by_id: foreign key (parent_id) does not pair shop_id" in p for p in problems)
    assert not any("child_by_shop" in p or "parents" in p for p in problems)
    assert len(problems) == 5 + 1  # and outbox_events is declared but not in this metadata


def test_a_foreign_key_must_pair_shop_with_shop() -> None:
    metadata = MetaData()
    _shop_table(metadata, "parents", Column("other_shop", String(64)))
    crossed = _shop_table(
        metadata,
        "crossed",
        Column("parent_id", Integer),
        ForeignKeyConstraint(["shop_id", "parent_id"], ["parents.other_shop", "parents.id"]),
    )
    assert rule_breaks(crossed) == [
        "table crossed: foreign key (shop_id, parent_id) does not pair shop_id with shop_id"
    ]


def test_the_committed_distribution_ddl_is_what_the_layout_writes() -> None:
    """deploy/citus/<service>.sql: regenerate with `python -m tools.citus_ddl` after changing models or layout."""
    for path, script in scripts().items():
        assert path.read_text(encoding="utf-8") == script, f"{path.name} is stale: run python -m tools.citus_ddl"


@pytest.mark.parametrize("service", SERVICES)
def test_distribution_places_each_table_once_colocated_with_one_anchor(service: str) -> None:
    statements = citus.distribution_statements(service)
    placed = [re.search(r"'(\w+)'::regclass", s)[1] for s in statements[1:]]  # type: ignore[index]
    assert sorted(placed) == sorted(t.name for t in citus.tables_of(citus.service_metadata(service)))
    anchors = {re.search(r"colocate_with => '(\w+)'", s)[1] for s in statements if "colocate_with" in s}  # type: ignore[index]
    assert len(anchors) == 2  # the anchor itself ("none"), and the one everything else is colocated with
    assert "none" in anchors
    assert any("citus_add_local_table_to_metadata('outbox_events')" in s for s in statements)


def test_a_partly_distributed_database_is_refused() -> None:
    declared = {t.name: citus.placement_of(t.name) for t in citus.tables_of(citus.service_metadata("points"))}
    assert citus.placement_problems("points", {}) == []  # plain PostgreSQL, or not distributed yet: whole
    assert citus.placement_problems("points", declared) == []
    partly = {name: placement for name, placement in declared.items() if name != "lots"}
    assert citus.placement_problems("points", partly) == ["lots is not placed, declared distributed"]
    wrong = {**declared, "outbox_events": Placement.DISTRIBUTED}
    assert citus.placement_problems("points", wrong) == ["outbox_events is distributed, declared coordinator-local"]
