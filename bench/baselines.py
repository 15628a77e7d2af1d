"""The two baselines every benchmark is compared with, measured in the same run.

- echo: a bare gRPC unary echo server built with the services' own server
  options and thread pool, no interceptor, no database.
- raw_pg_tx: a durable PostgreSQL transaction (INSERT + UPDATE, COMMIT with
  synchronous_commit on) straight through psycopg, no ORM.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg

from services.common.server import new_grpc_server
from services.common.supervisor import hold_port
from services.points.app import SPEC as POINTS

ECHO_METHOD = "/bench.Echo/Echo"


def _identity(payload: bytes) -> bytes:
    return payload


def _echo_handler() -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                lambda request, _ctx: request, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )


# The echo servers run with the points service's own thread count: the baseline is
# the same gRPC server with nothing behind it.
ECHO_THREADS = POINTS.max_workers


@contextmanager
def echo_server(max_workers: int = ECHO_THREADS) -> Iterator[str]:
    server = new_grpc_server(max_workers, [])
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(1).wait()


# In a client process started by `with_own_connections`: each client opens its own
# TCP connection (the kernel spreads connections, not calls, over SO_REUSEPORT copies).
_OWN_CONNECTIONS = False


def client_channel(address: str) -> grpc.Channel:
    """A bench client's channel: shared per process, or its own connection under `with_own_connections`."""
    if _OWN_CONNECTIONS:
        return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return grpc.insecure_channel(address)


def with_own_connections(factory: Callable[[int, Any], Callable[[int], None]], index: int, args: Any) -> Any:
    """Runs `factory` with one connection per client (wrap with functools.partial for run_load)."""
    global _OWN_CONNECTIONS
    _OWN_CONNECTIONS = True
    return factory(index, args)


def echo_client(_index: int, address: str) -> Callable[[int], None]:
    channel = client_channel(address)
    call = channel.unary_unary(ECHO_METHOD, request_serializer=_identity, response_deserializer=_identity)
    payload = b"x" * 64

    def once(_op: int) -> None:
        call(payload, timeout=10)

    return once


@contextmanager
def echo_processes(count: int) -> Iterator[tuple[str, list[int]]]:
    """`count` echo server processes on one SO_REUSEPORT port, as LOYALTY_WORKERS runs a service; (address, pids)."""
    holder, port = hold_port("127.0.0.1", 0)
    processes = [subprocess.Popen([sys.executable, "-m", "bench.baselines", "echo", str(port)]) for _ in range(count)]
    address = f"127.0.0.1:{port}"
    try:
        wait_for_listeners(port, count, processes, label="the echo processes")
        yield address, [p.pid for p in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)
        holder.close()


def wait_for_listeners(
    port: int, count: int, processes: list[subprocess.Popen[bytes]], *, label: str, timeout: float = 60.0
) -> None:
    """Until `count` sockets listen on `port`; RuntimeError when a process dies or time runs out first."""
    deadline = time.monotonic() + timeout
    while listeners_on(port) < count:
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError(f"{label} did not all start listening on port {port}")
        time.sleep(0.1)


def listeners_on(port: int) -> int:
    """Listening sockets on `port` (state 0A), IPv4 or the IPv6 sockets gRPC binds for 127.0.0.1."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in rows.readlines()[1:]:
                fields = row.split()
                count += fields[1].endswith(f":{port:04X}") and fields[3] == "0A"
    return count


def _serve_echo(port: int) -> None:
    server = new_grpc_server(ECHO_THREADS, [], reuse_port=True)
    server.add_generic_rpc_handlers((_echo_handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


@contextmanager
def empty_pg_database(admin_dsn: str) -> Iterator[str]:
    """A fresh database for one benchmark, dropped afterwards."""
    name = "lt_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def raw_pg_database(admin_dsn: str) -> Iterator[str]:
    with empty_pg_database(admin_dsn) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE balances (id int PRIMARY KEY, value bigint NOT NULL)")
        conn.execute(
            "CREATE TABLE entries (id bigserial PRIMARY KEY, account int NOT NULL, delta bigint NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO balances SELECT g, 0 FROM generate_series(1, 10000) g")
        yield dsn


def raw_pg_client(index: int, dsn: str) -> Callable[[int], None]:
    conn: Any = psycopg.connect(dsn)
    rng = random.Random(index)

    def once(_op: int) -> None:
        account = rng.randint(1, 10000)
        with conn.transaction():
            conn.execute("INSERT INTO entries (account, delta) VALUES (%s, 1)", (account,))
            conn.execute("UPDATE balances SET value = value + 1 WHERE id = %s", (account,))

    return once


if __name__ == "__main__":  # `python -m bench.baselines echo PORT`: one copy for echo_processes
    _serve_echo(int(sys.argv[2]))
