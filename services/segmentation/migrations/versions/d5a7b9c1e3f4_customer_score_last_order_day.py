"""customer score last order day: the day each score's last order fell on

Revision ID: d5a7b9c1e3f4
Revises: c81f4e2a9d37
Create Date: 2026-12-03 14:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d5a7b9c1e3f4"
down_revision: str | None = "c81f4e2a9d37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer_scores") as batch:
        batch.add_column(sa.Column("last_order_day", sa.Date(), nullable=True))  # known from the next evaluation


def downgrade() -> None:
    with op.batch_alter_table("customer_scores") as batch:
        batch.drop_column("last_order_day")
