"""`python -m services.segmentation [serve|migrate]`."""

from services.common.server import main
from services.segmentation.app import SPEC

raise SystemExit(main(SPEC))
