"""shop settings: each shop's zone, and the zone and window each evaluation used

Revision ID: c81f4e2a9d37
Revises: 62c30d5e9d63
Create Date: 2026-12-03 13:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import services.common.db

revision: str = "c81f4e2a9d37"
down_revision: str | None = "62c30d5e9d63"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shop_settings",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("updated_at", services.common.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("shop_id"),
    )
    with op.batch_alter_table("evaluations") as batch:
        # Earlier evaluations ran in the service's default zone, which the row does not name.
        batch.add_column(sa.Column("time_zone", sa.String(length=64), nullable=False, server_default=""))
        batch.add_column(sa.Column("window_days", sa.Integer(), nullable=False, server_default="180"))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("window_days")
        batch.drop_column("time_zone")
    op.drop_table("shop_settings")
