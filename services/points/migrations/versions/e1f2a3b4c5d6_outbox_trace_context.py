"""outbox trace context: the traceparent of the span that wrote each event

Revision ID: e1f2a3b4c5d6
Revises: 28219d52c222
Create Date: 2026-12-03 15:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from services.common.migrations import add_outbox_trace_context, drop_outbox_trace_context

revision: str = "e1f2a3b4c5d6"
down_revision: str | None = "28219d52c222"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_trace_context(op)


def downgrade() -> None:
    drop_outbox_trace_context(op)
