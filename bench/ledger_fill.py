"""A points ledger that already holds history, written straight in SQL for the benchmarks.

The bench's empty database flatters the hot path: PostgreSQL's work per earn
grows as tables and indexes grow. This writes, for `members` members, `orders`
active earnings each, exactly what EarnForOrder would have written for them
(an order earning, a points lot, the points and growth entries with their
counter sides, the balances, tiers reached, one idempotency record per
request), consistent enough that ReconcileLedger balances: 10,000 members x 25
orders is 1,000,000 entries.
"""

from __future__ import annotations

import psycopg

SHOP = "bench"
TIERS = (("silver", 2_000), ("gold", 8_000))  # growth thresholds (growth = yuan paid), as `bench.services.PROGRAM`


def fill_ledger(dsn: str, *, prefix: str, members: int, orders: int, shop: str = SHOP) -> int:
    """Writes the history (members named `{prefix}1` ...); returns the entries written."""
    tiers = " ".join(f"WHEN total >= {threshold} THEN '{code}'" for code, threshold in reversed(TIERS))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TEMP TABLE history AS
            SELECT m, j, %(prefix)s || m AS member, 'pre-' || %(prefix)s || m || '-' || j AS order_id,
                   (10000 + (m * 7 + j * 13) %% 40000) / 100 AS points,
                   10000 + (m * 7 + j * 13) %% 40000 AS paid,
                   now() - make_interval(days => %(orders)s - j + 1) AS at
            FROM generate_series(1, %(members)s) AS m, generate_series(1, %(orders)s) AS j
            """,
            {"prefix": prefix, "members": members, "orders": orders},
        )
        conn.execute(
            """
            INSERT INTO order_earnings (shop_id, order_id, customer_id, fingerprint, paid_at, paid_minor, currency,
                earned_points, earned_growth, earned_rebate, breakdown, refunded_minor, state, activates_at,
                activated_at, created_at)
            SELECT %(shop)s, order_id, member, md5(order_id), at, paid, 'CNY', points, points, 0,
                   '[["base", ' || points || ']]', 0, 2, at, at, at
            FROM history ORDER BY m, j
            """,
            {"shop": shop},
        )
        conn.execute(
            """
            INSERT INTO lots (shop_id, customer_id, asset, transfer_id, amount, remaining, earned_at, expires_at)
            SELECT %(shop)s, member, 1, order_id || ':EARN', points, points, at, at + interval '366 days'
            FROM history ORDER BY m, j
            """,
            {"shop": shop},
        )
        conn.execute(
            """
            INSERT INTO entries (shop_id, transfer_id, holder, asset, delta, balance_after, kind, reason,
                request_id, created_at)
            SELECT %(shop)s, order_id || ':EARN', CASE WHEN side = 1 THEN member ELSE '@earned' END, asset,
                   CASE WHEN side = 1 THEN points ELSE -points END,
                   CASE WHEN side = 1 THEN sum(points) OVER (PARTITION BY m, asset, side ORDER BY j) END,
                   'EARN', 'order ' || order_id, order_id, at
            FROM history, (VALUES (1, 1), (1, 2), (2, 1), (2, 2)) AS sides (asset, side)
            ORDER BY m, j, asset, side
            """,
            {"shop": shop},
        )
        conn.execute(
            """
            INSERT INTO balances (shop_id, holder, asset, balance, updated_at)
            SELECT %(shop)s, member, asset, sum(points), max(at)
            FROM history, (VALUES (1), (2)) AS assets (asset) GROUP BY member, asset
            """,
            {"shop": shop},
        )
        conn.execute(
            f"""
            INSERT INTO member_tiers (shop_id, customer_id, tier_code, since, reviewed_at)
            SELECT %(shop)s, member, CASE {tiers} END, max_at, NULL
            FROM (SELECT member, sum(points) AS total, max(at) AS max_at FROM history GROUP BY member) AS t
            WHERE total >= {TIERS[0][1]}
            """,
            {"shop": shop},
        )
        conn.execute(
            """
            INSERT INTO idempotency_records (shop_id, request_id, method, fingerprint, response, created_at)
            SELECT %(shop)s, order_id, 'loyalty.points.v1.EarnForOrderRequest', md5(order_id),
                   decode(repeat('0a', 160), 'hex'), at
            FROM history
            """,
            {"shop": shop},
        )
        conn.execute("DROP TABLE history")
        conn.execute("VACUUM ANALYZE")
    return members * orders * 4
