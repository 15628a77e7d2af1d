"""Does each SQL statement the services send stay on one shard when the tables are distributed by shop?

On Citus (deploy/citus) a statement over a distributed table goes to a single
shard, as a router query, only if it pins `shop_id` to one value. Otherwise it
fans out to every shard, and a `FOR UPDATE` over several shards is refused
outright. This module records every statement the test process sends to
PostgreSQL and judges each one:

- SELECT / UPDATE / DELETE: every distributed table it reads or writes has its
  `shop_id` equal to a value (a parameter or literal), directly or through a
  chain of `a.shop_id = b.shop_id` conditions, and all those values are the same
  shop at run time (the parameters are looked at, not only the text);
- INSERT: the target's column list names `shop_id`, and every row gives it the same value;
- COPY into a distributed table names `shop_id` among its columns.

Recording is done at the driver (psycopg's `Cursor.execute`, `executemany` and
`copy`): it sees every statement SQLAlchemy sends (SQLAlchemy's
`before_cursor_execute` counts them, and the routing test checks the driver saw
more) and the raw psycopg paths too (the points hot path's prepared statements,
COPY). Statements written by test code itself (checking a table's contents) are
not the services' and are left out; statements of the background jobs in
`BACKGROUND_JOBS` may span shops and say why that is safe on Citus.

Services run in subprocesses (the compose-stack tests) are not recorded here;
the in-process stacks run the same code.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import FrameType
from typing import Any, cast

import psycopg
import sqlglot
from sqlalchemy import Engine, event
from sqlglot import exp

from services.common.citus import SERVICES, distributed_tables

DISTRIBUTED = frozenset(name for service in SERVICES for name in distributed_tables(service))

# Background work that reads across shops, by the function that sends the statement, and why Citus takes it.
# Each is a plain SELECT (no FOR UPDATE/SHARE), which Citus runs on every shard in parallel; the work it
# finds is then done one shop per transaction, with router statements that this module checks like any other.
BACKGROUND_JOBS: Mapping[str, str] = {
    "services.common.migrations._migrate": (
        "Alembic migrations run once per deploy on the coordinator under the migration lock; their DDL "
        "propagates to every shard and a back-fill UPDATE is a multi-shard modification Citus runs "
        "(in 2PC), never a SELECT ... FOR UPDATE"
    ),
    "services.cycle_delivery.store.shops_with_due_deliveries": (
        "finds the shops with due deliveries, locking nothing; each shop's deliveries are then claimed with "
        "FOR UPDATE SKIP LOCKED in a single-shard statement (claim_due)"
    ),
    "services.cycle_delivery.store.due_backlog": (
        "counts due deliveries for the backlog gauge and the lag alert; a read, once per worker tick"
    ),
    "services.points.store.due_earnings": (
        "finds pending earnings whose return window closed, locking nothing; each is activated in its own "
        "single-shop transaction under the member's row lock"
    ),
    "services.points.store.members_with_expired_lots": (
        "finds members holding expired lots, locking nothing; each member's expiry is then its own "
        "single-shop transaction under the member's row lock"
    ),
    "services.points.store.shops_with_tiers": (
        "lists the shops with tiered members for the hourly review, which then runs shop by shop"
    ),
    "services.metrics.store.shops_to_settle": (
        "finds the shops with stale summaries, locking nothing; each shop is then settled under its own "
        "single-shop locks (settle_summaries)"
    ),
    "services.metrics.store.oldest_stale_mark": (
        "reads the oldest stale mark for the settler's lag gauge; a read, once per tick"
    ),
    "services.common.idempotency.shops_with_records_before": (
        "finds the shops holding expired request ids, locking nothing; each shop's are then deleted by a "
        "single-shard DELETE (purge_shop_records)"
    ),
}


@dataclass(frozen=True)
class Pin:
    """What a statement's shop_id conditions compare with: a parameter (by key) or a literal."""

    parameter: str | int | None = None
    literal: str | None = None


@dataclass(frozen=True)
class Routing:
    """The judgement of one statement's text: the pins each distributed table must share, or why it cannot."""

    tables: tuple[str, ...] = ()
    pins: tuple[frozenset[Pin], ...] = ()  # per distributed table: the values its shop_id is tied to
    refusal: str = ""  # set when the text alone shows that the statement is not single-shard

    def problem(self, params: Any) -> str:
        """Why this statement, run with `params`, is not single-shard ("" if it is)."""
        if self.refusal:
            return self.refusal
        if not self.tables:
            return ""
        for row in params if isinstance(params, list) else [params]:
            shops = {_value(pin, row) for pins in self.pins for pin in pins}
            if len(shops) != 1:
                return f"{', '.join(self.tables)}: shop_id takes {len(shops)} values ({sorted(map(str, shops))[:4]})"
        return ""


def _value(pin: Pin, params: Any) -> object:
    if pin.parameter is None:
        return pin.literal
    try:
        return params[pin.parameter]
    except (KeyError, IndexError, TypeError):
        return f"<unbound {pin.parameter}>"


# ---------------------------------------------------------------- judging one statement's text

_NAMED = re.compile(r"%\((\w+)\)s")
_POSITIONAL = re.compile(r"%s")
_COPY = re.compile(r"^\s*COPY\s+(\w+)\s*\(([^)]*)\)\s+FROM\s+STDIN", re.IGNORECASE)


@lru_cache(maxsize=20_000)
def routing_of(sql: str) -> Routing:
    """The routing of one statement text (cached: the services send a few thousand distinct texts)."""
    copy = _COPY.match(sql)
    if copy:
        table, columns = copy.group(1), [c.strip() for c in copy.group(2).split(",")]
        if table in DISTRIBUTED and "shop_id" not in columns:
            return Routing(refusal=f"COPY into {table} without shop_id")
        return Routing()
    if not any(re.search(rf"\b{name}\b", sql) for name in DISTRIBUTED):
        return Routing()
    text, keys = _numbered(sql)
    try:
        tree = sqlglot.parse_one(text, read="postgres")
    except sqlglot.errors.SqlglotError as exc:
        return Routing(refusal=f"unparsed ({str(exc).splitlines()[0]})")
    return _judge(cast(exp.Expression, tree), keys)


def _numbered(sql: str) -> tuple[str, dict[int, str | int]]:
    """The text with psycopg placeholders as $n, and what each $n stands for in the parameters."""
    keys: dict[int, str | int] = {}
    numbers: dict[str, int] = {}

    def named(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in numbers:
            numbers[name] = len(numbers) + 1
            keys[numbers[name]] = name
        return f"${numbers[name]}"

    text = _NAMED.sub(named, sql)
    if not numbers:
        counter = iter(range(1, 10_000))

        def positional(_match: re.Match[str]) -> str:
            n = next(counter)
            keys[n] = n - 1
            return f"${n}"

        text = _POSITIONAL.sub(positional, text)
        if not keys:  # already $n (psycopg's RawCursor): $n is parameter n - 1
            keys = {n: n - 1 for n in range(1, 1000)}
    return text.replace("%%", "%"), keys


_SCOPES = (exp.Select, exp.Update, exp.Delete, exp.Insert)


class _Tables:
    """Union-find over the statement's table occurrences and constants, joined by shop_id equalities."""

    def __init__(self) -> None:
        self.parent: dict[object, object] = {}

    def find(self, node: object) -> object:
        self.parent.setdefault(node, node)
        while self.parent[node] is not node:
            node = self.parent[node]
        return node

    def union(self, a: object, b: object) -> None:
        self.parent[self.find(a)] = self.find(b)


def _judge(tree: exp.Expression, keys: dict[int, str | int]) -> Routing:
    if not isinstance(tree, (*_SCOPES, exp.Union)):  # DDL (migrations): Citus propagates it to every shard
        return Routing()
    occurrences = [
        t for t in tree.find_all(exp.Table) if t.name in DISTRIBUTED and not t.find_ancestor(exp.Lock) and t.name
    ]
    if not occurrences:
        return Routing()
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    occurrences = [t for t in occurrences if t.name not in ctes]
    links = _Tables()
    for table in occurrences:
        scope = table.find_ancestor(*_SCOPES)
        if isinstance(scope, exp.Insert) and _is_insert_target(scope, table):
            refusal = _pin_insert(scope, table, keys, links)
            if refusal:
                return Routing(refusal=refusal)
    for scope in tree.find_all(*_SCOPES):
        for condition in _conjuncts(scope):
            _link(condition, scope, keys, links)
    pins = []
    for table in occurrences:
        root = links.find(id(table))
        tied = frozenset(p for p in links.parent if isinstance(p, Pin) and links.find(p) is root)
        if not tied:
            return Routing(refusal=f"{table.name} is not filtered on one shop_id")
        pins.append(tied)
    return Routing(tables=tuple(t.name for t in occurrences), pins=tuple(pins))


def _is_insert_target(insert: exp.Insert, table: exp.Table) -> bool:
    target = insert.this
    return target is table or (isinstance(target, exp.Schema) and target.this is table)


def _pin_insert(insert: exp.Insert, table: exp.Table, keys: dict[int, str | int], links: _Tables) -> str:
    target = insert.this
    columns = [c.name for c in target.expressions] if isinstance(target, exp.Schema) else []
    if "shop_id" not in columns:
        return f"INSERT INTO {table.name} does not name shop_id"
    position = columns.index("shop_id")
    source = insert.expression
    if isinstance(source, exp.Values):
        values = [row.expressions[position] for row in source.expressions if isinstance(row, exp.Tuple)]
    elif isinstance(source, exp.Select):  # INSERT ... SELECT: the projection, or the rows of a VALUES it reads
        values = _values_column(source, source.expressions[position]) or [source.expressions[position]]
    else:
        return f"INSERT INTO {table.name} from {type(source).__name__}"
    for value in values:
        pin: object = _constant(value, keys)
        if pin is None and isinstance(source, exp.Select):  # INSERT ... SELECT t.shop_id FROM t WHERE ...
            pin = _shop_column(value, source)
        if pin is None:
            return f"INSERT INTO {table.name} takes shop_id from {value.sql()[:60]}, not from one value"
        links.union(id(table), pin)
    return ""


def _values_column(select: exp.Select, value: exp.Expression) -> list[exp.Expression]:
    """`SELECT p0 FROM (VALUES (...), (...)) AS v (p0, ...)`: the rows' values for p0 (SQLAlchemy's batched INSERT)."""
    while isinstance(value, exp.Cast):
        value = value.this
    source = select.args.get("from_")
    rows = source.this if source is not None else None
    alias = rows.args.get("alias") if isinstance(rows, exp.Values) else None
    names = [c.name for c in alias.columns] if alias is not None else []
    if not isinstance(value, exp.Column) or value.name not in names:
        return []
    position = names.index(value.name)
    return [row.expressions[position] for row in rows.expressions if isinstance(row, exp.Tuple)]  # type: ignore[union-attr]


def _conjuncts(scope: exp.Expression) -> Iterator[exp.Expression]:
    """The AND-ed conditions of a scope's WHERE and JOIN ... ON (conditions under OR pin nothing)."""
    parts: list[exp.Expression] = []
    where = scope.args.get("where")
    if where is not None:
        parts.append(where.this)
    for join in scope.args.get("joins") or []:
        on = join.args.get("on")
        if on is not None:
            parts.append(on)
    while parts:
        part = parts.pop()
        if isinstance(part, exp.And):
            parts += [part.this, part.expression]
        elif isinstance(part, exp.Paren):
            parts.append(part.this)
        else:
            yield part


def _link(condition: exp.Expression, scope: exp.Expression, keys: dict[int, str | int], links: _Tables) -> None:
    if isinstance(condition, exp.EQ):
        sides = [condition.this, condition.expression]
    elif isinstance(condition, exp.In) and len(condition.expressions) == 1:
        sides = [condition.this, condition.expressions[0]]
    else:
        return
    nodes = [_shop_column(side, scope) or _constant(side, keys) for side in sides]
    if nodes[0] is not None and nodes[1] is not None and not all(isinstance(n, Pin) for n in nodes):
        links.union(nodes[0], nodes[1])


def _shop_column(node: exp.Expression, scope: exp.Expression) -> int | None:
    """The table occurrence (its id) whose shop_id `node` is, looked up from `scope` outwards."""
    if not isinstance(node, exp.Column) or node.name != "shop_id":
        return None
    qualifier = node.table
    current: exp.Expression | None = scope
    while current is not None:
        tables = _own_tables(current)
        if qualifier:
            match = [t for t in tables if t.alias_or_name == qualifier]
        elif len(tables) == 1:  # an unqualified shop_id belongs to the scope's only table
            match = tables
        else:
            match = []
        if match:
            return id(match[0])
        current = current.parent.find_ancestor(*_SCOPES) if current.parent is not None else None
    return None


def _own_tables(scope: exp.Expression) -> list[exp.Table]:
    """The tables a scope itself reads or writes (not those of its subqueries)."""
    return [
        t
        for t in scope.find_all(exp.Table)
        if t.find_ancestor(*_SCOPES) is scope and not t.find_ancestor(exp.Lock) and t.name
    ]


def _constant(node: exp.Expression, keys: dict[int, str | int]) -> Pin | None:
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    if isinstance(node, exp.Parameter):
        return Pin(parameter=keys.get(int(node.name), int(node.name) - 1))
    if isinstance(node, exp.Literal):
        return Pin(literal=node.this)
    return None


# ---------------------------------------------------------------- recording the statements sent


@dataclass
class Finding:
    sql: str
    problem: str
    origin: str
    test: str


@dataclass
class Recorder:
    statements: int = 0
    judged: int = 0
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    allowed: dict[str, int] = field(default_factory=dict)
    current_test: str = ""
    postgres_tests: int = 0  # collected tests on the PostgreSQL backend: what the recording comes from
    through_sqlalchemy: int = 0  # statements SQLAlchemy's before_cursor_execute saw: the driver sees them all too
    lock: threading.Lock = field(default_factory=threading.Lock)

    def see(self, query: object, params: Any, conn: Any) -> None:
        """Judges one statement; never raises into the service (a judging error is itself a finding)."""
        sql = _text(query, conn)
        if sql is None:
            return
        try:
            routing = routing_of(sql)
        except Exception as exc:
            routing = Routing(refusal=f"the judge failed: {exc!r}")
        with self.lock:
            self.statements += 1
            if routing.tables or routing.refusal:
                self.judged += 1
        problem = routing.problem(params)
        if not problem:
            return
        origin, job = _origin(sys._getframe(2))
        if origin is None:  # the test's own statement
            return
        with self.lock:
            if job is not None:
                self.allowed[job] = self.allowed.get(job, 0) + 1
                return
            key = (" ".join(sql.split())[:400], origin)
            self.findings.setdefault(key, Finding(key[0], problem, origin, self.current_test))


def _text(query: object, conn: Any) -> str | None:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode()
    try:
        return str(query.as_string(conn))  # type: ignore[attr-defined]
    except Exception:
        return None


def _origin(frame: FrameType | None) -> tuple[str | None, str | None]:
    """(the innermost services function that sent the statement, the background job it belongs to).

    None as origin when the innermost project frame is test or bench code: the test's own query.
    """
    origin: str | None = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        name = f"{module}.{frame.f_code.co_qualname}"
        if name in BACKGROUND_JOBS:
            return origin or name, name
        if origin is None and module.startswith(PROJECT) and module != __name__:
            if not module.startswith("services."):
                return None, None
            origin = name
        frame = frame.f_back
    return origin, None


PROJECT = ("services.", "tests.", "bench.", "tools.")
RECORDER = Recorder()
_INSTALLED = False


def install() -> Recorder:
    """Wraps psycopg's cursor methods so that every statement of this process is judged (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return RECORDER
    _INSTALLED = True
    cursor = psycopg.Cursor
    execute, executemany, copy = cursor.execute, cursor.executemany, cursor.copy

    def recorded_execute(self: psycopg.Cursor[Any], query: Any, params: Any = None, **kw: Any) -> Any:
        RECORDER.see(query, params, self.connection)
        return execute(self, query, params, **kw)

    def recorded_executemany(self: psycopg.Cursor[Any], query: Any, params_seq: Sequence[Any], **kw: Any) -> Any:
        params = list(params_seq)
        RECORDER.see(query, params, self.connection)
        return executemany(self, query, params, **kw)

    def recorded_copy(self: psycopg.Cursor[Any], statement: Any, params: Any = None, **kw: Any) -> Any:
        RECORDER.see(statement, params, self.connection)
        return copy(self, statement, params, **kw)

    def counted(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if conn.dialect.name == "postgresql":
            with RECORDER.lock:
                RECORDER.through_sqlalchemy += 1

    event.listen(Engine, "before_cursor_execute", counted)
    patches: dict[str, Callable[..., Any]] = {
        "execute": recorded_execute,
        "executemany": recorded_executemany,
        "copy": recorded_copy,
    }
    for name, patched in patches.items():
        setattr(cursor, name, patched)
    return RECORDER
