"""Bounded closed-loop load: N concurrent clients, each stops at an op budget or a deadline.

Clients run in several processes (spawned, so no gRPC state crosses a fork) so
the Python client side does not become the bottleneck of what is measured.
Beside rps and latency, a run reports the CPU time spent per request by the
clients, by the server's processes and by PostgreSQL (every `postgres`
process), read from /proc over the measured window: on a 2-core machine they
share the cores, so where the time goes is what says what a change can gain.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
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
    max_ms: float = float("nan")
    client_cpu_ms: float | None = None  # CPU time per request, over the measured window
    server_cpu_ms: float | None = None
    pg_cpu_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values; NaN when there are none."""
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def processes_named(name: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() == name:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def with_children(pid: int) -> list[int]:
    """A process and its direct children (a supervisor and its worker processes)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except OSError:
                continue
    return [pid, *children]


def cpu_of(pids: list[int]) -> dict[int, float]:
    return {pid: process_cpu_seconds(pid) for pid in pids}


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
        except Exception as exc:
            errors += 1
            if errors <= 3:
                print(f"client {index} op {op}: {exc!r}"[:400], file=sys.stderr, flush=True)
            continue
        latencies.append(time.perf_counter() - started)
    return latencies, errors


def _process_main(
    factory: ClientFactory, first: int, count: int, args: Any, max_ops: int, start_at: float, deadline: float, out: Any
) -> None:
    with ThreadPoolExecutor(count) as pool:
        while time.time() < start_at:
            time.sleep(0.005)
        cpu_before = time.process_time()
        results = list(pool.map(lambda i: _client_loop(factory, first + i, args, max_ops, deadline), range(count)))
        cpu = time.process_time() - cpu_before
    out.put(([lat for lats, _ in results for lat in lats], sum(e for _, e in results), cpu))


def run_load(
    name: str,
    factory: ClientFactory,
    args: Any,
    *,
    clients: int,
    processes: int = 2,
    seconds: float = 5.0,
    max_ops_per_client: int = 20_000,
    server_pids: list[int] | None = None,
) -> LoadResult:
    """`server_pids`: the processes that serve the load (default: this one, where bench services run)."""
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
    servers = server_pids if server_pids is not None else [os.getpid()]
    while time.time() < start_at:
        time.sleep(0.002)
    server_before, pg_before = cpu_of(servers), cpu_of(processes_named("postgres"))
    latencies: list[float] = []
    errors = 0
    client_cpu = 0.0
    for _ in workers:
        lats, errs, cpu = queue.get(timeout=seconds + 120)
        latencies += lats
        errors += errs
        client_cpu += cpu
    server_after, pg_after = cpu_of(servers), cpu_of(processes_named("postgres"))
    for worker in workers:
        worker.join(30)
    elapsed = min(seconds, max(time.time() - start_at, 1e-9))
    ordered = sorted(latencies)
    ops = max(1, len(latencies))

    def per_request(before: dict[int, float], after: dict[int, float]) -> float:
        spent = sum(after[pid] - before.get(pid, 0.0) for pid in after)
        return round(spent / ops * 1000, 3)

    return LoadResult(
        name=name,
        clients=clients,
        ops=len(latencies),
        errors=errors,
        seconds=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(percentile(ordered, 50) * 1000, 3),
        p99_ms=round(percentile(ordered, 99) * 1000, 3),
        max_ms=round(ordered[-1] * 1000, 3) if ordered else float("nan"),
        client_cpu_ms=round(client_cpu / ops * 1000, 3),
        server_cpu_ms=per_request(server_before, server_after),
        pg_cpu_ms=per_request(pg_before, pg_after),
    )
