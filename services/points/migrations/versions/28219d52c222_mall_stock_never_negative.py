"""mall stock never negative

Revision ID: 28219d52c222
Revises: 6eb738185860
Create Date: 2026-12-02 20:10:00.000000

The hot path takes mall units with an unconditional decrement inside a bigger
statement; this check is what refuses an oversell there (the whole statement
aborts). Stock was always kept at zero or more, so existing rows satisfy it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "28219d52c222"
down_revision: str | None = "6eb738185860"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mall_items", schema=None) as batch_op:
        batch_op.create_check_constraint("ck_mall_items_stock_not_negative", "stock >= 0")


def downgrade() -> None:
    with op.batch_alter_table("mall_items", schema=None) as batch_op:
        batch_op.drop_constraint("ck_mall_items_stock_not_negative", type_="check")
