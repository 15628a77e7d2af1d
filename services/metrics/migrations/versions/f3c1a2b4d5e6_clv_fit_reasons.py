"""clv fit reasons: why a fit is not converged, and old degenerate fits judged again

Revision ID: f3c1a2b4d5e6
Revises: e634c7db5958
Create Date: 2026-12-03 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f3c1a2b4d5e6"
down_revision: str | None = "e634c7db5958"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clv_models") as batch:
        batch.add_column(sa.Column("bg_nbd_reason", sa.String(length=40), nullable=False, server_default=""))
        batch.add_column(sa.Column("gamma_gamma_reason", sa.String(length=40), nullable=False, server_default=""))
    # A fit stored as converged with a positive log-likelihood was degenerate: predictions must refuse it.
    for model in ("bg_nbd", "gamma_gamma"):
        op.execute(
            f"UPDATE clv_models SET {model}_converged = false, {model}_reason = 'POSITIVE_LOG_LIKELIHOOD' "
            f"WHERE {model}_converged AND {model}_log_likelihood > 0"
        )


def downgrade() -> None:
    with op.batch_alter_table("clv_models") as batch:
        batch.drop_column("gamma_gamma_reason")
        batch.drop_column("bg_nbd_reason")
