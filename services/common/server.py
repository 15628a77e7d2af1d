"""Server bootstrap shared by the four services: health, reflection, guard, workers, graceful stop."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from services.common.auth import TokenRegistry
from services.common.channels import peer_channel
from services.common.clock import Clock, utc_now
from services.common.db import Database
from services.common.idempotency import purge_expired
from services.common.interceptors import GuardInterceptor
from services.common.logs import configure_logging
from services.common.migrations import check_distribution, upgrade
from services.common.outbox import OutboxRelay, purge_delivered
from services.common.settings import Settings
from services.common.supervisor import Supervisor, exit_with_parent, unblock_stop_signals
from services.common.telemetry import DB_POOL_CAPACITY, DB_POOL_IN_USE, HEALTHY, serve_metrics
from services.common.tls import peer_credentials, server_credentials
from services.common.tracing import Tracing, provider_from_env

log = structlog.get_logger("server")

# The same options for every service and for the echo baseline in bench/.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def new_grpc_server(
    max_workers: int, interceptors: list[grpc.ServerInterceptor[Any, Any]], *, reuse_port: bool = False
) -> grpc.Server:
    """`reuse_port` lets the copies started by the supervisor listen on one port."""
    options = [(name, int(reuse_port) if name == "grpc.so_reuseport" else value) for name, value in SERVER_OPTIONS]
    return grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=options,
    )


@dataclass
class Peers:
    """Lazily opened channels to the other services, with this service's token (and tracing, when on)."""

    settings: Settings
    tracing: Tracing | None = None
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def channel(self, service: str) -> grpc.Channel:
        with self._lock:
            if service not in self._channels:
                target = getattr(self.settings, f"{service}_target")
                channel = peer_channel(target, self.settings.peer_token, peer_credentials(self.settings))
                self._channels[service] = self.tracing.instrument_channel(channel) if self.tracing else channel
            return self._channels[service]

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


@dataclass
class ServiceContext:
    """What a servicer and its workers may use."""

    settings: Settings
    db: Database
    peers: Peers
    clock: Clock = utc_now
    tracing: Tracing | None = None  # None: tracing is off
    # Runs the named background worker now rather than at its next tick (a no-op for unknown names).
    wake: Callable[[str], None] = lambda _name: None


class Worker:
    """A background loop that stops promptly when asked (no `while True: sleep`)."""

    def __init__(
        self,
        name: str,
        interval_seconds: float,
        tick: Callable[[], object],
        *,
        on_wake: Callable[[], object] | None = None,
    ) -> None:
        """`on_wake` runs instead of `tick` when the run was asked for by `wake` (default: `tick`)."""
        self.name = name
        self.interval = interval_seconds
        self.tick = tick
        self.on_wake = on_wake or tick
        self.stopping = threading.Event()
        self.woken = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"worker-{name}", daemon=True)

    def _loop(self) -> None:
        woken = False
        while not self.stopping.is_set():
            self.woken.clear()  # a wake that arrives during the run makes the next run a woken one, at once
            try:
                (self.on_wake if woken else self.tick)()
            except Exception:
                log.exception("worker_tick_failed", worker=self.name)
            woken = self.woken.wait(self.interval)

    def wake(self) -> None:
        self.woken.set()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self.woken.set()
        if self.thread.is_alive():
            self.thread.join(timeout)


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service: its gRPC names, servicers, migrations and workers."""

    name: str
    service_names: tuple[str, ...]
    register: Callable[[grpc.Server, ServiceContext], None]
    migrations: Path
    workers: Callable[[ServiceContext], list[Worker]] = lambda _ctx: []
    # RPC threads per process unless LOYALTY_MAX_WORKERS says otherwise.
    max_workers: int = 32


def rpc_threads(spec: ServiceSpec, settings: Settings) -> int:
    """LOYALTY_MAX_WORKERS when set, else the service's own default."""
    return settings.max_workers or spec.max_workers


class RunningService:
    """A started service; `stop` drains in-flight calls and stops workers."""

    def __init__(
        self,
        spec: ServiceSpec,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        migrate: bool = True,
        reuse_port: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """`tracer_provider` traces the service (tests pass one); by default the OTEL_* variables decide."""
        self.spec = spec
        self.settings = settings
        url = settings.resolved_database_url
        if migrate:
            upgrade(spec.migrations, url)
        self.own_provider = tracer_provider is None
        provider = tracer_provider or provider_from_env(spec.name)
        self.tracing = Tracing(provider, spec.name) if provider is not None else None
        self.db = Database(url, pool_size=settings.db_pool_size, tracing=self.tracing)
        check_distribution(self.db, spec.name)
        peers = Peers(settings, tracing=self.tracing)
        self.context = ServiceContext(settings=settings, db=self.db, peers=peers, clock=clock, tracing=self.tracing)
        self.relay = OutboxRelay(self.db, self.context.peers.channel, clock, tracing=self.tracing)
        registry = TokenRegistry(settings.token_grants())
        guard = GuardInterceptor(registry, clock, traced=self.tracing is not None)
        interceptors: list[grpc.ServerInterceptor[Any, Any]] = [guard]
        if self.tracing is not None:
            interceptors.insert(0, self.tracing.server_interceptor())  # outermost: the guard's work is in the span
        self.server = new_grpc_server(rpc_threads(spec, settings), interceptors, reuse_port=reuse_port)
        spec.register(self.server, self.context)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*spec.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self._set_serving(False)
        bind = f"{settings.grpc_host}:{settings.port}"
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(bind)
        else:
            self.port = self.server.add_secure_port(bind, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {settings.grpc_host}:{settings.port}")
        self.workers = [
            Worker("health-probe", settings.health_probe_seconds, self._probe),
            Worker("idempotency-purge", 3600.0, self._purge_idempotency_records),
            Worker("outbox-relay", settings.outbox_relay_seconds, self._relay_outbox),
            *spec.workers(self.context),
        ]
        self.context.wake = self._wake

    def _wake(self, name: str) -> None:
        for worker in self.workers:
            if worker.name == name:
                worker.wake()

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.port}"

    def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.spec.service_names):
            self.health.set(name, status)
        HEALTHY.set(1 if serving else 0)

    def _relay_outbox(self) -> None:
        self.relay.drain()

    def _purge_idempotency_records(self) -> None:
        """Request ids and delivered outbox events are kept for the retry window, then dropped."""
        retention = timedelta(days=self.settings.idempotency_retention_days)
        purge_expired(self.db, older_than=retention, now=self.context.clock())
        self.db.run(lambda s: purge_delivered(s, older_than=retention, now=self.context.clock()))

    def _probe(self) -> None:
        self._set_serving(self.db.ping())
        for pool, (in_use, capacity) in self.db.pool_usage().items():
            DB_POOL_IN_USE.labels(pool).set(in_use)
            DB_POOL_CAPACITY.labels(pool).set(capacity)

    def start(self) -> RunningService:
        self.server.start()
        self._probe()  # SERVING only once the database answers
        for worker in self.workers:
            worker.start()
        log.info("service_started", service=self.spec.name, address=self.address)
        return self

    def stop(self, grace: float | None = None) -> None:
        grace = self.settings.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        for worker in self.workers:
            worker.stop(grace)
        self.server.stop(grace).wait()
        self.context.peers.close()
        self.db.dispose()
        if self.tracing is not None and self.own_provider:
            self.tracing.provider.shutdown()  # sends the spans still batched
        log.info("service_stopped", service=self.spec.name)

    def wait(self) -> None:
        self.server.wait_for_termination()


def main(spec: ServiceSpec, argv: list[str] | None = None) -> int:
    """`python -m services.<name> [serve|migrate]`."""
    args = sys.argv[1:] if argv is None else argv
    settings = Settings(service=spec.name)
    configure_logging(spec.name, settings.log_level, worker_index=settings.worker_index)
    if args[:1] == ["migrate"]:
        upgrade(spec.migrations, settings.resolved_database_url)
        log.info("migrated", service=spec.name)
        return 0
    if args and args[0] != "serve":
        print(f"usage: python -m services.{spec.name} [serve|migrate]", file=sys.stderr)
        return 2
    if settings.workers > 1 and settings.worker_index is None:
        return Supervisor(spec.name, settings, migrations=spec.migrations).run()
    started_by_supervisor = settings.worker_index is not None
    if started_by_supervisor:
        exit_with_parent()
    else:
        serve_metrics(settings.grpc_host, settings.metrics_port)  # a supervisor serves its copies' metrics
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stopping.is_set():
            log.info("stopping", signal=signal.Signals(signum).name)
            stopping.set()

    # Installed before the service starts: a SIGTERM that arrives the moment health
    # turns SERVING must drain, not kill the process with the default action. The
    # handler only sets an event; a thread does the draining once the service exists.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    unblock_stop_signals()
    running = RunningService(
        spec, settings, migrate=not started_by_supervisor, reuse_port=started_by_supervisor
    ).start()

    def stop_when_asked() -> None:
        stopping.wait()
        running.stop()

    stopper = threading.Thread(target=stop_when_asked, name="graceful-stop", daemon=True)
    stopper.start()
    running.wait()
    stopper.join(settings.grace_seconds + 5.0)  # the server stops first; the pool and peers close after it
    return 0
