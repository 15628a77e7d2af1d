"""`python -m services.migrate`: applies every service's migrations (the compose migrate job).

DATABASE_URL is a template with "{service}", so one variable names all four databases.
"""

from __future__ import annotations

import sys

import structlog

from services.common.logs import configure_logging
from services.common.migrations import upgrade
from services.common.settings import Settings


def main(argv: list[str]) -> int:
    from services.cycle_delivery.app import SPEC as CYCLE
    from services.metrics.app import SPEC as METRICS
    from services.points.app import SPEC as POINTS
    from services.segmentation.app import SPEC as SEGMENTATION

    specs = {s.name: s for s in (POINTS, METRICS, SEGMENTATION, CYCLE)}
    wanted = argv or list(specs)
    unknown = set(wanted) - set(specs)
    if unknown:
        print(f"unknown services {sorted(unknown)}; choose from {sorted(specs)}", file=sys.stderr)
        return 2
    configure_logging("migrate")
    log = structlog.get_logger("migrate")
    for name in wanted:
        settings = Settings(service=name)
        upgrade(specs[name].migrations, settings.resolved_database_url)
        log.info("migrated", service=name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
