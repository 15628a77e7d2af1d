"""Alembic environment of the metrics service."""

from alembic import context

from services.common.migrations import run_env
from services.common.tables import COMMON_METADATA
from services.metrics.models import Base

run_env(context, [COMMON_METADATA, Base.metadata])
