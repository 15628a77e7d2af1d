"""The tables every service database has, for each service's Alembic history."""

from services.common.db import CommonBase
from services.common.idempotency import IdempotencyRecord
from services.common.outbox import OutboxEvent

COMMON_METADATA = CommonBase.metadata

__all__ = ["COMMON_METADATA", "IdempotencyRecord", "OutboxEvent"]
