"""Writes deploy/citus/<service>.sql, each service's table placement on Citus, from services/common/citus.py.

Run through `make citus-ddl`; a test fails when the committed files differ from what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from services.common.citus import SERVICES, distribution_script

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "citus"


def scripts() -> dict[Path, str]:
    return {DEPLOY / f"{service}.sql": distribution_script(service) for service in SERVICES}


def main() -> int:
    for path, script in scripts().items():
        path.write_text(script, encoding="utf-8")
        print(f"wrote {path.relative_to(DEPLOY.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
