"""Starts the stack that deploy/compose.yaml describes, natively or with Docker.

Natively, each compose service runs as local processes with its own command and
environment from the file; what only makes sense inside Docker is translated:
compose host names become 127.0.0.1 with ports chosen free at start, the
`postgres` service is the machine's PostgreSQL (a fresh database per run), and
`deploy.replicas` starts that many processes. Where a Docker engine answers,
`docker compose up --wait` runs the same file instead.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import URL, make_url

from tests.support import POSTGRES_ADMIN_URL, drop_databases, free_port
from tools.supervise import terminate, wait_serving

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
_TARGET = re.compile(r"^dns:///(?P<host>[\w-]+):(?P<port>\d+)$")


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    return spec


def environment_of(service: dict[str, Any], host: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment with compose's `${VAR}` / `${VAR:-default}` filled from `host` (os.environ)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    source = os.environ if host is None else host
    return {k: interpolate(str(v), source) for k, v in env.items()}


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str, host: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: host.get(m["name"]) or (m["default"] or ""), value)


def in_default_profile(service: dict[str, Any]) -> bool:
    """Compose starts a service that names profiles only when one of them is asked for."""
    return not service.get("profiles")


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    return [sys.executable if argv[0] in ("python", "python3") else argv[0], *argv[1:]]


def dependencies_of(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {name: (cond or {}).get("condition", "service_started") for name, cond in depends.items()}


def start_order(services: dict[str, Any]) -> list[str]:
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise ValueError(f"depends_on cycle through {name}")
        visiting.add(name)
        for dependency in dependencies_of(services[name]):
            visit(dependency)
        visiting.discard(name)
        ordered.append(name)

    for name in services:
        visit(name)
    return ordered


def is_database(service: dict[str, Any]) -> bool:
    return str(service.get("image", "")).startswith("postgres")


def is_one_shot(name: str, services: dict[str, Any]) -> bool:
    return any(dependencies_of(s).get(name) == "service_completed_successfully" for s in services.values())


@dataclass
class Replica:
    service: str
    index: int
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class NativeStack:
    """The compose stack as local processes; `stop` leaves no process behind."""

    compose: dict[str, Any]
    log_dir: Path
    database_prefix: str = field(default_factory=lambda: "lt_stack_" + uuid.uuid4().hex[:8])
    extra_env: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, list[Replica]] = field(default_factory=dict)
    ports: dict[str, list[int]] = field(default_factory=dict)

    # -- translation of compose values to this machine ---------------------
    def database_url(self, template: str) -> str:
        marker = "SERVICEMARKER"
        url = make_url(template.replace("{service}", marker))
        local = make_url(POSTGRES_ADMIN_URL)
        database = (url.database or "").replace("loyalty", self.database_prefix, 1)
        rebuilt = URL.create(
            url.drivername,
            username=local.username,
            password=local.password,
            host=local.host,
            port=local.port,
            database=database,
        )
        return rebuilt.render_as_string(hide_password=False).replace(marker, "{service}")

    def target(self, value: str) -> str:
        match = _TARGET.match(value)
        if not match or match["host"] not in self.ports:
            return value
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.ports[match["host"]])

    def env_for(self, name: str, port: int | None, metrics_port: int | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_") and k != "DATABASE_URL"}
        for key, value in environment_of(self.compose["services"][name]).items():
            if key == "DATABASE_URL":
                value = self.database_url(value)
            elif key.endswith("_TARGET"):
                value = self.target(value)
            env[key] = value
        env["LOYALTY_GRPC_HOST"] = "127.0.0.1"
        if port is not None:
            env["LOYALTY_GRPC_PORT"] = str(port)
        if metrics_port is not None:
            env["LOYALTY_METRICS_PORT"] = str(metrics_port)
        env["PYTHONPATH"] = str(ROOT)
        env.update(self.extra_env)
        return env

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 90.0) -> NativeStack:
        services = self.compose["services"]
        services = {name: service for name, service in services.items() if in_default_profile(service)}
        servers = [n for n in services if not is_database(services[n]) and not is_one_shot(n, services)]
        for name in servers:
            count = int((services[name].get("deploy") or {}).get("replicas", 1))
            self.ports[name] = [free_port() for _ in range(count)]
        try:
            for name in start_order(services):
                if is_database(services[name]):
                    continue
                if is_one_shot(name, services):
                    self.run_one_shot(name, timeout)
                else:
                    self.start_service(name)
                    self.wait_healthy(name, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def run_one_shot(self, name: str, timeout: float) -> None:
        service = self.compose["services"][name]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            done = subprocess.run(
                command_of(service),
                env=self.env_for(name, None, None),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"{name} exited {done.returncode}: {log_path.read_text()[-2000:]}")

    def start_service(self, name: str, only_index: int | None = None) -> None:
        service = self.compose["services"][name]
        existing = self.replicas.setdefault(name, [])
        for index, port in enumerate(self.ports[name]):
            if only_index is not None and index != only_index:
                continue
            metrics_port = free_port()
            log_path = self.log_dir / f"{name}-{index}.log"
            process = subprocess.Popen(
                command_of(service),
                env=self.env_for(name, port, metrics_port),
                cwd=ROOT,
                stdout=log_path.open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            replica = Replica(name, index, port, metrics_port, process, log_path)
            existing[:] = [r for r in existing if r.index != index] + [replica]
            existing.sort(key=lambda r: r.index)

    def wait_healthy(self, name: str, timeout: float) -> None:
        for replica in self.replicas[name]:
            try:
                wait_serving(replica.process, replica.address, timeout=timeout, label=f"{name}[{replica.index}]")
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}: {replica.log_path.read_text()[-3000:]}") from exc

    def address(self, name: str, index: int = 0) -> str:
        return self.replicas[name][index].address

    def target_of(self, name: str) -> str:
        return "ipv4:" + ",".join(r.address for r in self.replicas[name])

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [r.process for replicas in self.replicas.values() for r in replicas]

    def stop(self, grace: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every replica, SIGKILL what outlives the grace; returns exit codes."""
        replicas = [r for group in self.replicas.values() for r in group]
        codes = terminate([r.process for r in replicas], grace=grace)
        drop_databases(prefix=self.database_prefix)
        return {f"{r.service}[{r.index}]": code for r, code in zip(replicas, codes, strict=True)}


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return probe.returncode == 0


@dataclass
class DockerStack:
    """The same file under a real engine; addresses are the published host ports."""

    project: str = field(default_factory=lambda: "loyalty_test_" + uuid.uuid4().hex[:6])

    def compose(self, *args: str) -> None:
        subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args], check=True, timeout=900
        )

    def start(self) -> DockerStack:
        self.compose("up", "--build", "--detach", "--wait")
        return self

    def address(self, name: str, index: int = 0) -> str:
        published = load_compose()["services"][name]["ports"][0]
        host_ports = published.split(":")[-2]
        first = int(host_ports.split("-")[0])
        return f"127.0.0.1:{first + index}"

    def stop(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans")
