"""Segmentation rules in plain Python."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from services.common.clock import local_date

# Letters of any script (Chinese tags such as 高价值), digits, '_', '-', ':'.
TAG_PATTERN = re.compile(r"^[\w\-:]{1,64}$")
CHANNEL_PATTERN = re.compile(r"^[a-z0-9_]{1,32}$")


def days_since(last: datetime, now: datetime, zone: ZoneInfo) -> int:
    """Whole shop-local calendar days between the last order's day and today."""
    return (local_date(now, zone) - local_date(last, zone)).days
