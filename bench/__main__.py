"""`make bench`: baselines and service benchmarks in one run, reported as ratios.

Writes bench/results/latest.json and bench/results/latest.md. Every load is
bounded in count and time and talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import cycle_bench, ingest_bench, metrics_bench, segmentation_bench
from bench.baselines import (
    echo_client,
    echo_processes,
    echo_server,
    empty_pg_database,
    raw_pg_client,
    raw_pg_database,
    with_own_connections,
)
from bench.ledger_fill import SHOP, fill_ledger
from bench.load import LoadResult, run_load
from bench.services import (
    MEMBERS,
    adjust_client,
    bench_service,
    earn_client,
    fund_solo,
    get_account_client,
    prepare_redeem,
    redeem_client,
    release_connections,
    sell_out,
    set_program,
    solo_spend_client,
    spend_client,
    sqlalchemy_url,
    supervised_points,
    warm_connections,
)
from services.common.db import Database
from services.points.app import SPEC as POINTS
from services.points.reconcile import reconcile_shops

RESULTS = Path(__file__).parent / "results"
ADMIN_DSN = os.environ.get("LOYALTY_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def table(results: list[LoadResult], baseline: LoadResult) -> str:
    lines = [
        "| benchmark | clients | ops | errors | rps | p50 ms | p99 ms | max ms | rps ÷ echo "
        "| CPU ms per request: client / server / PostgreSQL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ratio = r.rps / baseline.rps if baseline.rps else float("nan")
        lines.append(
            f"| {r.name} | {r.clients} | {r.ops} | {r.errors} | {r.rps:.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.max_ms:.0f} | {ratio:.2f} | {r.client_cpu_ms} / {r.server_cpu_ms} / {r.pg_cpu_ms} |"
        )
    return "\n".join(lines)


def metrics_table(result: metrics_bench.MetricsBenchResult) -> str:
    return "\n".join(
        [
            "| metrics at scale (repurchase ×2, 90-day, monthly cohorts) | orders | customers | numpy s | DuckDB s "
            "| numpy ÷ DuckDB | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| same answers checked | {result.orders} | {result.customers} | {result.numpy_seconds:.3f} | "
            f"{result.duckdb_seconds:.3f} | {result.ratio:.2f} | {result.peak_rss_mb:.0f} |",
        ]
    )


def summaries_table(result: metrics_bench.SummariesBenchResult) -> str:
    return "\n".join(
        [
            "| CLV summaries (frequency, recency, T, monetary) | orders | customers | numpy s | lifetimes s "
            "| speedup |",
            "|---|---:|---:|---:|---:|---:|",
            f"| same rows checked | {result.orders} | {result.customers} | {result.numpy_seconds:.3f} | "
            f"{result.lifetimes_seconds:.3f} | {result.speedup:.1f}× |",
        ]
    )


def ingest_table(runs: list[ingest_bench.IngestBenchResult]) -> str:
    rows = [
        f"| run {n} | {r.orders} | {r.stream_rows_per_second:.0f} | {r.copy_rows_per_second:.0f} "
        f"| {r.ratio:.3f} | {r.settled_ratio:.3f} |"
        for n, r in enumerate(runs, 1)
    ]
    median = statistics.median(r.ratio for r in runs)
    settled = statistics.median(r.settled_ratio for r in runs)
    return "\n".join(
        [
            "| ingest on PostgreSQL | orders | StreamOrders rows/s | raw COPY rows/s (faster of text, binary) "
            "| stream ÷ COPY | stream + summaries settled ÷ COPY |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            f"| median of {len(runs)} | | | | {median:.3f} | {settled:.3f} |",
        ]
    )


def segments_table(result: segmentation_bench.SegmentationBenchResult) -> str:
    return "\n".join(
        [
            "| segment rules | customers | rules | engine s | hand-written numpy s | engine ÷ numpy "
            "| whole evaluation s | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| same masks checked | {result.customers} | {result.rules} | {result.engine_seconds:.3f} | "
            f"{result.numpy_seconds:.3f} | {result.ratio:.2f} | {result.pipeline_seconds:.1f} | "
            f"{result.peak_rss_mb:.0f} |",
        ]
    )


def cycle_table(result: cycle_bench.CycleBenchResult, raw_tx: LoadResult) -> str:
    return "\n".join(
        [
            "| cycle delivery | count | seconds | per second | ÷ raw_pg_tx rps |",
            "|---|---:|---:|---:|---:|",
            f"| schedules previewed (12 dates each) | {result.schedules} | {result.preview_seconds:.2f} "
            f"| {result.schedules_per_second:,.0f} | |",
            f"| due deliveries created, {result.worker_processes} worker processes | {result.deliveries} "
            f"| {result.create_seconds:.2f} | {result.deliveries_per_second:,.0f} "
            f"| {result.deliveries_per_second / raw_tx.rps:.2f} |",
        ]
    )


Round = list[LoadResult]


def points_round(
    options: argparse.Namespace, empty: str, filled: str, embedded: str, workers_dsn: str, traced: str
) -> Round:
    """One round of every points load, echo first: ratios are taken within the round."""
    load = functools.partial(run_load, clients=options.clients, seconds=options.seconds)
    release_connections()  # the last round's idle pools would leave raw_pg_tx no connections
    with echo_server() as address:
        echo = load("echo (bare gRPC, service options)", echo_client, address)
        echo_own = load("echo, a connection per client", functools.partial(with_own_connections, echo_client), address)
    with echo_processes(2) as (address, pids):
        echo_two = load(
            "echo, 2 processes (SO_REUSEPORT), a connection per client",
            functools.partial(with_own_connections, echo_client),
            address,
            server_pids=pids,
        )
    with raw_pg_database(ADMIN_DSN) as dsn:
        raw = load("raw_pg_tx (INSERT+UPDATE, durable)", raw_pg_client, dsn)
    warm_connections()
    rows = [
        echo,
        raw,
        load(EARN, earn_client, empty),
        load(EARN_TRACED, earn_client, traced),
        load("points.EarnForOrder (PostgreSQL, 1 M-entry ledger)", earn_client, filled),
        load("points.SpendPoints (PostgreSQL)", spend_client, empty),
        load("points.AdjustPoints (PostgreSQL)", adjust_client, empty),
        load("points.GetAccount (PostgreSQL)", get_account_client, empty),
        load("points.GetAccount (PostgreSQL, 1 M-entry ledger)", get_account_client, filled),
        load("points.Redeem, 100 hot members (PostgreSQL)", redeem_client, empty),
        run_load(
            "points.SpendPoints, 16 clients, one member (SQLite)",
            solo_spend_client,
            embedded,
            clients=16,
            seconds=options.seconds,
        ),
    ]
    rows += [
        echo_own,
        load(
            "points.EarnForOrder (PostgreSQL), a connection per client",
            functools.partial(with_own_connections, earn_client),
            empty,
        ),
        echo_two,
    ]
    release_connections()
    with supervised_points(sqlalchemy_url(workers_dsn), workers=2) as (supervised_address, supervised_pids):
        set_program(supervised_address)
        rows.append(
            load(
                "points.EarnForOrder (PostgreSQL), LOYALTY_WORKERS=2, a connection per client",
                functools.partial(with_own_connections, earn_client),
                supervised_address,
                server_pids=supervised_pids,
            )
        )
    sold, left = sell_out(empty)
    rows.append(
        LoadResult(
            f"points.Redeem sell-out: {sold} sold of 300, {left} left, oversold {max(0, sold - 300)}",
            32,
            sold,
            0,
            0.0,
            0.0,
            0.0,
            0.0,
        )
    )
    return rows


def service_rounds(options: argparse.Namespace) -> list[Round]:
    """The points services on an empty PostgreSQL ledger, on a 1 M-entry one, and on SQLite, loaded in rounds."""
    with (
        empty_pg_database(ADMIN_DSN) as empty_dsn,
        empty_pg_database(ADMIN_DSN) as filled_dsn,
        empty_pg_database(ADMIN_DSN) as workers_dsn,
        tempfile.TemporaryDirectory() as folder,
        bench_service(POINTS, sqlalchemy_url(empty_dsn)) as empty,
        bench_service(POINTS, sqlalchemy_url(empty_dsn), traced=True) as traced,
        bench_service(POINTS, sqlalchemy_url(filled_dsn)) as filled,
        bench_service(POINTS, f"sqlite:///{folder}/points.db") as embedded,
    ):
        for address in (empty, filled, embedded):
            set_program(address)
        fill_ledger(empty_dsn, prefix="s", members=MEMBERS, orders=12)  # the spenders' points: 3 rounds never run dry
        entries = fill_ledger(filled_dsn, prefix="c", members=options.ledger_members, orders=options.ledger_orders)
        print(f"history written: {entries:,} entries", flush=True)
        prepare_redeem(empty)
        fund_solo(embedded)
        rounds = [
            points_round(options, empty, filled, embedded, workers_dsn, traced) for _ in range(options.service_rounds)
        ]
        for dsn in (empty_dsn, filled_dsn):
            problems = reconcile_shops(Database(sqlalchemy_url(dsn)), [SHOP])[SHOP].mismatches
            if problems:
                raise SystemExit(f"the ledger does not reconcile after the benchmark: {list(problems)[:5]}")
        return rounds


EARN = "points.EarnForOrder (PostgreSQL)"
EARN_TRACED = "points.EarnForOrder (PostgreSQL), traced: 100 % sampled, spans discarded"


def tracing_line(rounds: list[Round]) -> str:
    """EarnForOrder with tracing on over tracing off, per round (the two loads run back to back in each)."""
    ratios = []
    for round_ in rounds:
        by_name = {r.name: r for r in round_}
        ratios.append(by_name[EARN_TRACED].rps / by_name[EARN].rps if by_name[EARN].rps else 0.0)
    shown = " / ".join(f"{x:.3f}" for x in ratios)
    return f"EarnForOrder, tracing on ÷ off (rps, same round): {shown} → median {statistics.median(ratios):.3f}"


def median_rows(rounds: list[Round]) -> Round:
    """Per benchmark, the round whose rps ÷ echo is the median (its p99 and CPU figures come with it)."""
    rows = []
    for position in range(len(rounds[0])):
        ranked = sorted(rounds, key=lambda r: r[position].rps / r[0].rps if r[0].rps else 0.0)
        rows.append(ranked[len(ranked) // 2][position])
    return rows


def rounds_table(rounds: list[Round]) -> str:
    names = [r.name for r in rounds[0]][2:-1]
    lines = ["| rps ÷ echo by round | " + " | ".join(f"round {n}" for n in range(1, len(rounds) + 1)) + " | median |"]
    lines.append("|---|" + "---:|" * (len(rounds) + 1))
    for position, name in enumerate(names, 2):
        ratios = [r[position].rps / r[0].rps for r in rounds]
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in ratios) + f" | {statistics.median(ratios):.3f} |")
    return "\n".join(lines)


def ingest_runs(options: argparse.Namespace) -> list[ingest_bench.IngestBenchResult]:
    """Repeated, because one run on a shared 2-core machine can be off by a third either way."""
    return [
        ingest_bench.run(ADMIN_DSN, orders=options.ingest_orders, customers=options.ingest_orders // 5)
        for _ in range(options.ingest_runs)
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--metrics-orders", type=int, default=10_000_000)
    parser.add_argument("--metrics-customers", type=int, default=1_000_000)
    parser.add_argument("--ingest-orders", type=int, default=50_000)
    parser.add_argument("--ingest-runs", type=int, default=3, help="stream-vs-COPY runs (the median is reported)")
    parser.add_argument(
        "--only",
        choices=["points", "services", "ingest"],
        help="only the points loads; the service loads and cycle delivery; or only the ingest benchmark",
    )
    parser.add_argument("--service-rounds", type=int, default=3, help="rounds of service loads (medians reported)")
    parser.add_argument("--ledger-members", type=int, default=10_000)
    parser.add_argument("--ledger-orders", type=int, default=25, help="history per member (x4 entries)")
    options = parser.parse_args()
    if options.only == "ingest":
        print(ingest_table(ingest_runs(options)))
        return 0
    rounds = service_rounds(options)
    results = median_rows(rounds)
    echo = results[0]
    raw_tx = results[1]
    if options.only == "points":
        print(table(results, echo))
        print(rounds_table(rounds))
        print(tracing_line(rounds))
        return 0
    cycle = cycle_bench.run(ADMIN_DSN)
    if options.only == "services":
        print(table(results, echo))
        print(rounds_table(rounds))
        print(tracing_line(rounds))
        print(cycle_table(cycle, raw_tx))
        return 0
    metrics = metrics_bench.run(orders=options.metrics_orders, customers=options.metrics_customers)
    summaries = metrics_bench.run_summaries(orders=options.metrics_orders, customers=options.metrics_customers)
    segments = segmentation_bench.run(customers=options.metrics_customers)
    ingest = ingest_runs(options)
    RESULTS.mkdir(exist_ok=True)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": [r.as_dict() for r in results],
        "ratios_to_echo_rps": {r.name: round(r.rps / echo.rps, 3) if echo.rps else None for r in results},
        "rounds": [[r.as_dict() for r in round_] for round_ in rounds],
        "metrics_vs_duckdb": {**asdict(metrics), "ratio": round(metrics.ratio, 3)},
        "clv_summaries_vs_lifetimes": {**asdict(summaries), "speedup": round(summaries.speedup, 1)},
        "stream_ingest_vs_copy": {
            "runs": [
                {**asdict(r), "ratio": round(r.ratio, 3), "settled_ratio": round(r.settled_ratio, 3)} for r in ingest
            ],
            "median_ratio": round(statistics.median(r.ratio for r in ingest), 3),
        },
        "cycle_delivery": {
            **asdict(cycle),
            "deliveries_per_second": round(cycle.deliveries_per_second, 1),
            "ratio_to_raw_pg_tx_rps": round(cycle.deliveries_per_second / raw_tx.rps, 3) if raw_tx.rps else None,
        },
        "segment_rules_vs_numpy": {**asdict(segments), "ratio": round(segments.ratio, 3)},
    }
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    markdown = "\n\n".join(
        [
            table(results, echo),
            rounds_table(rounds),
            tracing_line(rounds),
            metrics_table(metrics),
            summaries_table(summaries),
            ingest_table(ingest),
            segments_table(segments),
            cycle_table(cycle, raw_tx),
        ]
    )
    (RESULTS / "latest.md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
