"""LOYALTY_WORKERS: several server processes of one service behind one port.

One Python process serves gRPC on about one core: the GIL lets one thread run
Python at a time. With `LOYALTY_WORKERS=N` the process started by the container
becomes a supervisor: it migrates the database once, holds the port, and starts
N copies of the service, each listening on that port with SO_REUSEPORT, so the
kernel spreads new connections over them. Each copy is a full replica (health,
outbox relay, background workers), as two compose replicas would be; the
workers already coordinate through the database. The supervisor serves the
Prometheus metrics of all copies together (prometheus_client's multiprocess
mode), forwards SIGTERM and SIGINT so every copy drains, and restarts a copy
that dies. A client balances only across connections, so it needs several
channels (or `grpc.use_local_subchannel_pool`) to reach more than one copy.

Signals are received with `sigtimedwait` in the supervisor's own loop, never in
a handler, so a signal arriving at any moment cannot deadlock it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from prometheus_client import multiprocess

from services.common.migrations import upgrade
from services.common.settings import Settings
from services.common.telemetry import serve_multiprocess_metrics

log = structlog.get_logger("supervisor")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
WATCHED_SIGNALS = STOP_SIGNALS | {signal.SIGCHLD}
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
STEADY_SECONDS = 30.0  # a copy that ran this long before dying is restarted without waiting
_PR_SET_PDEATHSIG = 1
SUPERVISOR_PID = "LOYALTY_SUPERVISOR_PID"


@dataclass
class WorkerProcess:
    index: int
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0


class Supervisor:
    """Starts, watches and stops the copies of one service (see the module docstring)."""

    def __init__(
        self,
        service: str,
        settings: Settings,
        *,
        migrations: Path,
    ) -> None:
        self.service = service
        self.settings = settings
        self.migrations = migrations
        self.command = [sys.executable, "-m", f"services.{service}", "serve"]
        self.workers: dict[int, WorkerProcess] = {}
        self.metrics_dir = ""
        self._port_holder: socket.socket | None = None
        self.port = 0

    def run(self) -> int:
        """Serves until SIGTERM or SIGINT; returns the exit code for the container."""
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED_SIGNALS)
        upgrade(self.migrations, self.settings.resolved_database_url)
        self._port_holder, self.port = hold_port(self.settings.grpc_host, self.settings.port)
        self.metrics_dir = tempfile.mkdtemp(prefix=f"loyalty-{self.service}-metrics-")
        try:
            serve_multiprocess_metrics(self.settings.grpc_host, self.settings.metrics_port, self.metrics_dir)
            for index in range(self.settings.workers):
                self._start(index)
            log.info(
                "supervisor_started",
                service=self.service,
                address=f"{self.settings.grpc_host}:{self.port}",
                workers=self.settings.workers,
            )
            return self._watch()
        finally:
            self._stop_all()
            self._port_holder.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _watch(self) -> int:
        pending_restarts: dict[int, float] = {}
        while True:
            received = signal.sigtimedwait(WATCHED_SIGNALS, 0.5)
            if received is not None and received.si_signo in STOP_SIGNALS:
                log.info("stopping", service=self.service, signal=signal.Signals(received.si_signo).name)
                return 0
            for index, worker in list(self.workers.items()):
                if index not in pending_restarts and worker.process.poll() is not None:
                    pending_restarts[index] = time.monotonic() + self._reap(worker)
            for index, due in list(pending_restarts.items()):
                if time.monotonic() >= due:
                    del pending_restarts[index]
                    self._start(index, quick_deaths=self.workers[index].quick_deaths)

    def _reap(self, worker: WorkerProcess) -> float:
        """Logs a dead copy and returns how long to wait before starting it again."""
        self._mark_dead(worker.process.pid)
        ran = time.monotonic() - worker.started_at
        worker.quick_deaths = 0 if ran >= STEADY_SECONDS else worker.quick_deaths + 1
        delay = (
            0.0
            if worker.quick_deaths == 0
            else RESTART_BACKOFF_SECONDS[min(worker.quick_deaths, len(RESTART_BACKOFF_SECONDS)) - 1]
        )
        log.warning(
            "worker_process_exited",
            service=self.service,
            index=worker.index,
            pid=worker.process.pid,
            code=worker.process.returncode,
            ran_seconds=round(ran, 1),
            restart_in_seconds=delay,
        )
        return delay

    def _start(self, index: int, *, quick_deaths: int = 0) -> None:
        env = {
            **os.environ,
            "LOYALTY_WORKER_INDEX": str(index),
            "LOYALTY_GRPC_PORT": str(self.port),
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            SUPERVISOR_PID: str(os.getpid()),
        }
        process = subprocess.Popen(self.command, env=env)  # noqa: S603 - our own interpreter and module
        self.workers[index] = WorkerProcess(index, process, quick_deaths=quick_deaths)

    def _stop_all(self) -> None:
        """SIGTERM every copy, wait for their drain, then SIGKILL what is left."""
        alive = [w.process for w in self.workers.values() if w.process.poll() is None]
        for process in alive:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_seconds + 5.0
        for process in alive:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for process in alive:
            self._mark_dead(process.pid)

    def _mark_dead(self, pid: int) -> None:
        multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]


def hold_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Binds (without listening) a SO_REUSEPORT socket so that the port stays ours; port 0 picks one."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind((host.strip("[]"), port))
    return holder, int(holder.getsockname()[1])


def exit_with_parent() -> None:
    """A copy of a service must not outlive its supervisor (it would keep serving on the port alone)."""
    parent = int(os.environ.get(SUPERVISOR_PID, "0"))
    if not parent:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM is the only stop
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def unblock_stop_signals() -> None:
    """A process started by the supervisor inherits its blocked signal mask; its own handlers need them."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED_SIGNALS)
