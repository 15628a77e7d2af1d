"""`python -m services.metrics [serve|migrate]`."""

from services.common.server import main
from services.metrics.app import SPEC

raise SystemExit(main(SPEC))
