"""The two baselines every benchmark is compared with, measured in the same run.

- echo: a bare gRPC unary echo server built with the services' own server
  options and thread pool, no interceptor, no database.
- raw_pg_tx: a durable PostgreSQL transaction (INSERT + UPDATE, COMMIT with
  synchronous_commit on) straight through psycopg, no ORM.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg

from services.common.server import new_grpc_server

ECHO_METHOD = "/bench.Echo/Echo"


def _identity(payload: bytes) -> bytes:
    return payload


@contextmanager
def echo_server(max_workers: int = 32) -> Iterator[str]:
    server = new_grpc_server(max_workers, [])
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                lambda request, _ctx: request, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(1).wait()


def echo_client(_index: int, address: str) -> Callable[[int], None]:
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(ECHO_METHOD, request_serializer=_identity, response_deserializer=_identity)
    payload = b"x" * 64

    def once(_op: int) -> None:
        call(payload, timeout=10)

    return once


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
