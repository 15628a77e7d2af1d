"""outbox trace context: the traceparent of the span that wrote each event

Revision ID: e2f3a4b5c6d7
Revises: a7d2e9c41b05
Create Date: 2026-12-03 15:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from services.common.migrations import add_outbox_trace_context, drop_outbox_trace_context

revision: str = "e2f3a4b5c6d7"
down_revision: str | None = "a7d2e9c41b05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_outbox_trace_context(op)


def downgrade() -> None:
    drop_outbox_trace_context(op)
