"""shop settings: when a shop chose its zone, and the zone each CLV fit judged days in

Revision ID: a7d2e9c41b05
Revises: f3c1a2b4d5e6
Create Date: 2026-12-03 13:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.common.db

revision: str = "a7d2e9c41b05"
down_revision: str | None = "f3c1a2b4d5e6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shops") as batch:
        batch.add_column(sa.Column("zone_set_at", services.common.db.UtcDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("clv_models") as batch:
        batch.add_column(sa.Column("time_zone", sa.String(length=64), nullable=False, server_default=""))
    # Until now a shop's zone never changed after its first order: every stored fit used it.
    op.execute(
        "UPDATE clv_models SET time_zone = (SELECT shops.time_zone FROM shops WHERE shops.shop_id = clv_models.shop_id)"
        " WHERE EXISTS (SELECT 1 FROM shops WHERE shops.shop_id = clv_models.shop_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("clv_models") as batch:
        batch.drop_column("time_zone")
    with op.batch_alter_table("shops") as batch:
        batch.drop_column("zone_set_at")
