"""shop in every key: (shop_id, id) keys for the serially numbered tables, so each can be distributed by shop

Citus refuses a primary key without the distribution column (deploy/citus).
The ids keep their sequences; PostgreSQL rebuilds each key's index under an
ACCESS EXCLUSIVE lock, so on a large ledger run this in a quiet window.

Revision ID: f4a5b6c7d8e9
Revises: e1f2a3b4c5d6
Create Date: 2026-12-03 16:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from services.common.migrations import key_by_shop, unkey_by_shop

revision: str = "f4a5b6c7d8e9"
down_revision: str | None = "e1f2a3b4c5d6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("entries", "lots", "lot_uses", "redemptions", "tier_changes", "coupons")


def upgrade() -> None:
    for table in TABLES:
        key_by_shop(op, table)


def downgrade() -> None:
    for table in TABLES:
        unkey_by_shop(op, table)
