"""Database access shared by all services: engine, typed UTC column, retried transactions."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import psycopg
import sqlalchemy.exc
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Dialect,
    Engine,
    SQLColumnExpression,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    make_url,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import QueuePool
from sqlalchemy.types import TypeDecorator

from services.common.deadlines import seconds_left
from services.common.errors import DeadlineExceeded

if TYPE_CHECKING:
    from services.common.tracing import Tracing

T = TypeVar("T")

# SQLSTATEs after which the whole transaction may simply run again.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        converted = value.astimezone(UTC)
        return converted.replace(tzinfo=None) if dialect.name == "sqlite" else converted

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class CommonBase(DeclarativeBase):
    """Tables every service database has (idempotency records, outbox)."""


def is_postgres(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def ensure_database(url: str) -> None:
    """Creates the service's database (PostgreSQL) or its folder (SQLite) when missing."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return
    name = parsed.database
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
            if not exists:
                try:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                except sqlalchemy.exc.ProgrammingError as exc:  # a replica created it first
                    if getattr(exc.orig, "sqlstate", None) != "42P04":
                        raise
    finally:
        admin.dispose()


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy issue BEGIN itself, so every transaction takes the write
        # lock up front: no lost updates and no lock-upgrade deadlocks.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    """Instants come back in UTC on every path (SQLAlchemy's typed columns and raw psycopg alike)."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


class WriteQueue:
    """The embedded database's one writer at a time, granted in arrival order (a ticket lock).

    SQLite lets one transaction write at a time. Left to its busy timeout,
    waiting writers sleep and retry with growing pauses, so under load one
    unlucky caller can wait seconds while later ones get in. Queuing the
    process's transactions here first hands the lock on in order. Re-entrant,
    so a use case that nests a transaction fails as SQLite would, not by hanging.
    """

    LONGEST_WAIT_SECONDS = 60.0  # one wait of the loop; a far deadline would overflow the platform's time_t

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._owner: int | None = None
        self._depth = 0
        self._abandoned: set[int] = set()  # tickets whose holders gave up waiting

    @contextmanager
    def turn(self, timeout: float | None = None) -> Iterator[None]:
        """Waits for this thread's turn; DeadlineExceeded when `timeout` passes first."""
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._turns:
            ticket = self._next_ticket
            self._next_ticket += 1
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                while self._serving != ticket:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise DeadlineExceeded(
                            "the caller's deadline passed while this request waited to write; nothing was changed, "
                            "retry with the same request_id",
                            reason="DEADLINE_PASSED",
                        )
                    self._turns.wait(None if left is None else min(left, self.LONGEST_WAIT_SECONDS))
            except BaseException:
                self._skip(ticket)  # whatever ended the wait, the writers behind must not wait for this ticket
                raise
            self._owner = me
        try:
            yield
        finally:
            with self._turns:
                self._owner = None
                self._serving += 1
                self._advance()
                self._turns.notify_all()

    def _skip(self, ticket: int) -> None:
        """A waiter that gave up leaves its ticket behind: it is passed over when its turn comes."""
        self._abandoned.add(ticket)
        self._advance()  # its turn may have come already
        self._turns.notify_all()

    def _advance(self) -> None:
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1


class AutocommitPool:
    """PostgreSQL connections in autocommit mode, for paths that write in single statements.

    SQLAlchemy's pool costs tens of microseconds per checkout (events,
    reset-on-return, switching autocommit on and off), which a hot call pays
    every time; these connections never serve an ORM session, so they stay in
    autocommit and keep their prepared statements. Like the engine's pool: at
    most `size` in use, a broken one is dropped with every idle one (a lost
    server leaves them all dead), and none lives past `recycle_seconds`.
    """

    def __init__(self, conninfo: str, *, size: int, timeout: float = 10.0, recycle_seconds: float = 1800.0) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
        self.recycle_seconds = recycle_seconds
        self.size = size
        self.in_use = 0  # read by the pool gauges; written under _lock
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []  # (connection, opened at), newest last

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection idle and in autocommit; rolled back if left in a transaction."""
        if not self._slots.acquire(timeout=self.timeout):
            raise DeadlineExceeded(
                f"no database connection came free within {self.timeout:g} s; retry with the same request_id",
                reason="POOL_EXHAUSTED",
            )
        with self._lock:
            self.in_use += 1
        try:
            conn, opened = self._take()
            try:
                yield conn
            except BaseException:
                self._after_failure(conn, opened)
                raise
            self._give_back(conn, opened)
        finally:
            with self._lock:
                self.in_use -= 1
            self._slots.release()

    def _after_failure(self, conn: psycopg.Connection[Any], opened: float) -> None:
        """A failed use: kept, rolled back, unless the connection broke (a lost race or timeout does not break it)."""
        if not conn.broken and not conn.closed:
            try:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
            except psycopg.OperationalError:
                pass  # it broke now: dropped below
            else:
                self._give_back(conn, opened)
                return
        conn.close()
        self.close()  # a lost server leaves every idle connection dead too

    def _take(self) -> tuple[psycopg.Connection[Any], float]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        conn = psycopg.connect(self.conninfo, autocommit=True)
        conn.execute("SET TIME ZONE 'UTC'")
        return conn, time.monotonic()

    def _give_back(self, conn: psycopg.Connection[Any], opened: float) -> None:
        unusable = conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        if unusable or time.monotonic() - opened > self.recycle_seconds:
            conn.close()
        else:
            with self._lock:
                self._idle.append((conn, opened))

    def warm(self, count: int) -> None:
        """Opens connections until `count` are idle (benchmarks: no measured call pays for connecting)."""
        with self._lock:
            missing = count - len(self._idle)
        opened = [self._take() for _ in range(max(0, missing))]
        for conn, at in opened:
            self._give_back(conn, at)

    def close(self) -> None:
        """Closes the idle connections (those in use close when given back broken, or stay)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


class Database:
    """One engine and session factory per process; `run` is one use case = one transaction."""

    def __init__(self, url: str, *, pool_size: int = 20, tracing: Tracing | None = None) -> None:
        self.url = url
        self.tracing = tracing
        self.write_queue: WriteQueue | None = None
        self._autocommit: AutocommitPool | None = None
        self._pool_capacity = 0  # connections the engine's pool may hand out at once (0: not a queue pool)
        if make_url(url).get_backend_name() == "sqlite":
            self.engine = _sqlite_engine(url)
            self.write_queue = WriteQueue()
        else:
            # No pre-ping: it costs a round trip per transaction. A lost connection
            # fails one call with UNAVAILABLE and SQLAlchemy then drops the whole pool.
            self.engine = create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=10, pool_recycle=1800
            )
            self._pool_capacity = 2 * pool_size  # pool_size plus as many overflow connections
            event.listen(self.engine, "connect", _utc_session)
            conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
            self._autocommit = AutocommitPool(conninfo, size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def run(self, use_case: Callable[[Session], T], *, attempts: int = 8) -> T:
        """Runs `use_case` in one transaction, again from the start after a serialization failure or deadlock."""
        for attempt in range(1, attempts + 1):
            try:
                with self._traced(attempt), self._turn(), self.sessions.begin() as session:
                    return use_case(session)
            except sqlalchemy.exc.OperationalError as exc:
                retryable = getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES
                if not retryable or attempt == attempts:
                    raise
                time.sleep(min(0.002 * 2**attempt, 0.2))
        raise AssertionError("unreachable")

    def _traced(self, attempt: int) -> AbstractContextManager[object]:
        """A span per transaction attempt when tracing is on (a retried attempt is its own span)."""
        if self.tracing is None:
            return nullcontext()
        return self.tracing.span("db.transaction", {"db.system": self.engine.dialect.name, "db.attempt": attempt})

    def _turn(self) -> AbstractContextManager[None]:
        """On SQLite, this transaction's place in the write queue (every transaction there takes the write lock)."""
        if self.write_queue is None:
            return nullcontext()
        return self.write_queue.turn(seconds_left())

    def pool_usage(self) -> dict[str, tuple[int, int]]:
        """(connections in use, connections the pool may hand out) per pool: what pool saturation is made of."""
        usage: dict[str, tuple[int, int]] = {}
        pool = self.engine.pool
        if isinstance(pool, QueuePool) and self._pool_capacity:
            usage["transactions"] = (pool.checkedout(), self._pool_capacity)
        if self._autocommit is not None:
            usage["hot_path"] = (self._autocommit.in_use, self._autocommit.size)
        return usage

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except sqlalchemy.exc.SQLAlchemyError:
            return False

    @property
    def autocommit_pool(self) -> AutocommitPool:
        """The PostgreSQL database's AutocommitPool (it connects on first use)."""
        if self._autocommit is None:
            raise RuntimeError("autocommit connections are for PostgreSQL")
        return self._autocommit

    def dispose(self) -> None:
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.close()


def on_postgres(session: Session) -> bool:
    """Whether the session's database is PostgreSQL (else the embedded SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


def insert_ignoring_conflicts(session: Session, model: type[DeclarativeBase], rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on PostgreSQL and SQLite alike."""
    if not rows:
        return
    if on_postgres(session):
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(model).on_conflict_do_nothing(), rows)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(model).on_conflict_do_nothing(), rows)


def lock_keys(session: Session, namespace: str, keys: list[str]) -> None:
    """Serialises transactions per key (PostgreSQL advisory transaction locks, released at commit).

    Keys are locked in sorted order so two transactions never wait on each other
    in a cycle. On SQLite every write transaction already holds the database
    lock, so there is nothing to do.
    """
    if not on_postgres(session) or not keys:
        return
    names = sorted({f"{namespace}:{key}" for key in keys})
    # One round trip for all keys; the sorted subquery fixes the order they are taken in.
    session.execute(
        text(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))"
            " FROM (SELECT unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS sorted_keys"
        ),
        {"keys": names},
    )


def one_of(session: Session, column: SQLColumnExpression[str], values: Sequence[str]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column IN (SELECT unnest(:array))`.

    One array parameter instead of one placeholder per value: a 1,000-id batch
    neither renders nor plans a thousand-item list, which dominated bulk ingest.
    """
    if not on_postgres(session):
        found: ColumnElement[bool] = column.in_(values)
        return found
    keys = select(func.unnest(bindparam(None, list(values), type_=ARRAY(String))))
    matches: ColumnElement[bool] = column.in_(keys)
    return matches


@lru_cache(maxsize=64)
def copy_types(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> list[str]:
    """PostgreSQL type names of `columns`, as binary COPY needs them (`VARCHAR(64)` -> `varchar`)."""
    return [re.sub(r"\(.*\)", "", table.c[name].type.compile(dialect=dialect)).lower() for name in columns]


def new_row_ids(session: Session, table: Table, count: int) -> list[int] | None:
    """Ids for `count` new rows of a table keyed (shop_id, id): taken here on SQLite, None on PostgreSQL.

    The shop id leads every key so that the table can be distributed by shop
    (deploy/citus). PostgreSQL's sequence (BIGSERIAL) still numbers the rows;
    SQLite numbers only a single-column integer key by itself, so its ids are
    max + 1 onwards, which no other writer can take meanwhile: every SQLite
    write transaction holds the database lock from BEGIN IMMEDIATE on.
    """
    if on_postgres(session) or count == 0:
        return None
    highest = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return list(range(int(highest) + 1, int(highest) + 1 + count))


def with_new_ids(session: Session, table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with their `id` set where this backend does not number them itself (`new_row_ids`)."""
    ids = new_row_ids(session, table, len(rows))
    if ids is None:
        return rows
    return [{**row, "id": row_id} for row, row_id in zip(rows, ids, strict=True)]


def number_new_record(session: Session, record: Any) -> None:
    """Sets a new ORM record's `id` where this backend does not number it itself (`new_row_ids`)."""
    ids = new_row_ids(session, record.__table__, 1)
    if ids is not None:
        record.id = ids[0]


def bulk_insert(
    session: Session, model: type[DeclarativeBase], columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Inserts rows (tuples in `columns` order); on PostgreSQL with COPY, inside the session's transaction.

    COPY streams the rows without a statement per row or a placeholder per
    value, the fastest path PostgreSQL offers; tuples rather than dicts because
    bulk loads build millions of them. Binary COPY with the columns' declared
    types lets psycopg dump each value in C without guessing its type: a
    seventh of text COPY's Python time per row. A duplicate key fails the
    statement with IntegrityError, as an INSERT would. `rows` may be a
    generator: each row is sent as it comes, so PostgreSQL inserts the first
    ones while the caller is still producing the rest.
    """
    if not on_postgres(session):
        params = [dict(zip(columns, row, strict=True)) for row in rows]
        if params:
            session.execute(insert(model), params)
        return
    table = cast(Table, model.__table__)
    driver = session.connection().connection.driver_connection
    assert driver is not None
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(copy_types(session.get_bind().dialect, table, tuple(columns)))
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:  # the driver's own error, wrapped as SQLAlchemy wraps it (IntegrityError, ...)
        raise sqlalchemy.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
