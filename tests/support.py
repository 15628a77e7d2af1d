"""Test support: databases per backend, test tokens, an in-process four-service stack."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine, text

from services.common.auth import digest
from services.common.clock import Clock, utc_now
from services.common.db import Database
from services.common.migrations import upgrade
from services.common.server import RunningService, ServiceSpec
from services.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "LOYALTY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SERVICE_NAMES = ("points", "metrics", "segmentation", "cycle_delivery")

# Plain tokens the tests present; the services only ever see their digests.
TOKENS = {
    "admin": ("tok-admin", ["*"], ["admin"], None),
    "writer": ("tok-shop-a-writer", ["shop-a"], ["write"], None),
    "reader": ("tok-shop-a-reader", ["shop-a"], ["read"], None),
    "other_shop": ("tok-shop-b-writer", ["shop-b"], ["write"], None),
    "expired": ("tok-shop-a-expired", ["shop-a"], ["admin"], "2020-01-01T00:00:00+00:00"),
    "peer": ("tok-peer", ["*"], ["write"], None),
}


def token_grants_json() -> str:
    return json.dumps(
        [
            {"sha256": digest(tok), "shops": shops, "scopes": scopes, "expires_at": exp, "name": name}
            for name, (tok, shops, scopes, exp) in TOKENS.items()
        ]
    )


Metadata = tuple[tuple[str, str | bytes], ...]


def bearer(name: str) -> Metadata:
    return (("authorization", f"Bearer {TOKENS[name][0]}"),)


def details(error: grpc.RpcError) -> str:
    """The status message of a failed call ("" when it has none)."""
    text = error.details()
    return str(text or "")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@contextmanager
def database_template(backend: str, tmp_path: Path) -> Iterator[str]:
    """A DATABASE_URL template with "{service}" for fresh, empty databases; dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/{{service}}.db"
        return
    run = "lt_" + uuid.uuid4().hex[:10]
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{run}_{{service}}"
    finally:
        drop_databases(prefix=run)


def drop_databases(*, prefix: str) -> None:
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": prefix + "%"})
        for (name,) in names.all():
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@contextmanager
def migrated_database(database_url: str, service: str, *, pool_size: int = 2) -> Iterator[Database]:
    """One service's database from a `database_url` template, migrated, as a `Database`."""
    url = database_url.replace("{service}", service)
    upgrade(specs()[service].migrations, url)
    database = Database(url, pool_size=pool_size)
    try:
        yield database
    finally:
        database.dispose()


def specs() -> dict[str, ServiceSpec]:
    from services.cycle_delivery.app import SPEC as CYCLE
    from services.metrics.app import SPEC as METRICS
    from services.points.app import SPEC as POINTS
    from services.segmentation.app import SPEC as SEGMENTATION

    return {"points": POINTS, "metrics": METRICS, "segmentation": SEGMENTATION, "cycle_delivery": CYCLE}


@dataclass
class Stack:
    """Four services in this process, wired to each other."""

    services: dict[str, RunningService]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, name: str) -> grpc.Channel:
        if name not in self.channels:
            self.channels[name] = grpc.insecure_channel(self.services[name].address)
        return self.channels[name]

    def stub(self, name: str, stub_type: Any) -> Any:
        return stub_type(self.channel(name))

    def stop(self) -> None:
        for channel in self.channels.values():
            channel.close()
        for service in self.services.values():
            service.stop(grace=1)


class FakeClock:
    """A clock tests move by hand; services started with it never read the real time."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 11, 22, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def start_stack(
    database_url: str,
    *,
    clock: Clock = utc_now,
    only: tuple[str, ...] = SERVICE_NAMES,
    tracer_provider: TracerProvider | None = None,
    **overrides: Any,
) -> Stack:
    """The services (all four unless `only` names some) on ports the OS picks while binding, wired to each other."""
    created: dict[str, RunningService] = {}
    try:
        for name, spec in specs().items():
            if name not in only:
                continue
            values: dict[str, Any] = {
                "service": name,
                "grpc_port": 0,
                "database_url": database_url,
                "auth_tokens": token_grants_json(),
                "peer_token": TOKENS["peer"][0],
                "db_pool_size": 5,
                **overrides,
            }
            created[name] = RunningService(
                spec, Settings.model_validate(values), clock=clock, tracer_provider=tracer_provider
            )
        for service in created.values():  # peers are dialled lazily, so targets can be set before starting
            for peer, other in created.items():
                setattr(service.settings, f"{peer}_target", other.address)
        started = {name: service.start() for name, service in created.items()}
    except BaseException:
        for service in created.values():
            service.stop(grace=0)
        raise
    return Stack(started)
