"""`python -m services.points [serve|migrate]`."""

from services.common.server import main
from services.points.app import SPEC

raise SystemExit(main(SPEC))
