"""shop in every key: clv_models keyed (shop_id, id), so it can be distributed by shop

Citus refuses a primary key without the distribution column (deploy/citus).
The key's index also serves "the shop's newest model", so ix_clv_models_shop goes.

Revision ID: f5b6c7d8e9fa
Revises: e2f3a4b5c6d7
Create Date: 2026-12-03 16:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from services.common.migrations import key_by_shop, unkey_by_shop

revision: str = "f5b6c7d8e9fa"
down_revision: str | None = "e2f3a4b5c6d7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_clv_models_shop", table_name="clv_models")
    key_by_shop(op, "clv_models")


def downgrade() -> None:
    unkey_by_shop(op, "clv_models")
    op.create_index("ix_clv_models_shop", "clv_models", ["shop_id", "id"])
