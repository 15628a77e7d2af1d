"""The suite's one logging setup: structlog JSON lines on stdout."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(service: str, level: str = "INFO", *, worker_index: int | None = None) -> None:
    """`worker_index`: which of the supervisor's processes writes (LOYALTY_WORKERS); on every line."""
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=level.upper(), force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([] if worker_index is None else [_stamp_worker(worker_index)]),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def _stamp_worker(index: int) -> structlog.types.Processor:
    def stamp(_logger: object, _method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event["worker"] = index
        return event

    return stamp


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
