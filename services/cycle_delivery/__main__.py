"""`python -m services.cycle_delivery [serve|migrate]`."""

from services.common.server import main
from services.cycle_delivery.app import SPEC

raise SystemExit(main(SPEC))
