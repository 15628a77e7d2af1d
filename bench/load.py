"""Bounded closed-loop load: N concurrent clients, each stops at an op budget or a deadline.

Clients run in several processes (spawned, so no gRPC state crosses a fork) so
the Python client side does not become the bottleneck of what is measured.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

# make_client(client_index, args) -> call(op_index); runs inside the client process.
ClientFactory = Callable[[int, Any], Callable[[int], None]]


@dataclass(frozen=True)
class LoadResult:
    name: str
    clients: int
    ops: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values; NaN when there are none."""
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _client_loop(
    factory: ClientFactory, index: int, args: Any, max_ops: int, deadline: float
) -> tuple[list[float], int]:
    call = factory(index, args)
    latencies: list[float] = []
    errors = 0
    for op in range(max_ops):
        if time.time() >= deadline:
            break
        started = time.perf_counter()
        try:
            call(op)
        except Exception:
            errors += 1
            continue
        latencies.append(time.perf_counter() - started)
    return latencies, errors


def _process_main(
    factory: ClientFactory, first: int, count: int, args: Any, max_ops: int, start_at: float, deadline: float, out: Any
) -> None:
    with ThreadPoolExecutor(count) as pool:
        while time.time() < start_at:
            time.sleep(0.005)
        results = list(pool.map(lambda i: _client_loop(factory, first + i, args, max_ops, deadline), range(count)))
    out.put(([lat for lats, _ in results for lat in lats], sum(e for _, e in results)))


def run_load(
    name: str,
    factory: ClientFactory,
    args: Any,
    *,
    clients: int,
    processes: int = 2,
    seconds: float = 5.0,
    max_ops_per_client: int = 20_000,
) -> LoadResult:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 2.0  # let every process import and connect first
    deadline = start_at + seconds
    per_process = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    workers = []
    first = 0
    for count in per_process:
        if count:
            worker = context.Process(
                target=_process_main, args=(factory, first, count, args, max_ops_per_client, start_at, deadline, queue)
            )
            worker.start()
            workers.append(worker)
            first += count
    latencies: list[float] = []
    errors = 0
    for _ in workers:
        lats, errs = queue.get(timeout=seconds + 120)
        latencies += lats
        errors += errs
    for worker in workers:
        worker.join(30)
    elapsed = min(seconds, max(time.time() - start_at, 1e-9))
    ordered = sorted(latencies)
    return LoadResult(
        name=name,
        clients=clients,
        ops=len(latencies),
        errors=errors,
        seconds=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(ordered, 50) * 1000, 3),
        p99_ms=round(percentile(ordered, 99) * 1000, 3),
    )
