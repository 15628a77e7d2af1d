"""Erasure (right to be forgotten): one anonymous stand-in id per (shop, customer), the same in every service.

Every service moves a member's rows to this id instead of deleting them, so
sums, counts and ledgers stay true and the services still agree with each other
about "one customer", while nothing names the person any more.
"""

from __future__ import annotations

import hashlib

ANONYMOUS_PREFIX = "erased-"


def anonymous_id(shop_id: str, customer_id: str) -> str:
    """A stable stand-in that cannot be turned back into the customer id (salted by shop)."""
    return ANONYMOUS_PREFIX + hashlib.sha256(f"{shop_id}\0{customer_id}".encode()).hexdigest()[:16]
