"""A bare delivery worker for the crash test: `python -m tests.delivery_worker_process URL NOW_ISO`.

Runs the real `store.create_due_deliveries` in small batches until nothing is
due, bounded in count, so the test can SIGKILL it at any point.
"""

from __future__ import annotations

import sys
from datetime import datetime

from services.common.db import Database
from services.cycle_delivery import store

MAX_BATCHES = 10_000


def main(url: str, now_iso: str) -> int:
    now = datetime.fromisoformat(now_iso)
    db = Database(url, pool_size=2)
    try:
        for _ in range(MAX_BATCHES):
            if db.run(lambda s: store.create_due_deliveries(s, now=now, limit=50)) == 0:
                return 0
        return 1
    finally:
        db.dispose()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
