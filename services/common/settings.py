"""Typed settings of one service process, read from LOYALTY_* environment variables."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The documented development token of the compose stack. Refused outside
# local/development runs so it can never guard real data.
DEV_TOKEN = "loyalty-dev-token"  # noqa: S105 - documented on purpose, refused in production
DEV_TOKEN_SHA256 = hashlib.sha256(DEV_TOKEN.encode()).hexdigest()

DEFAULT_PORTS = {"points": 50051, "metrics": 50052, "segmentation": 50053, "cycle_delivery": 50054}


class Environment(StrEnum):
    LOCAL = "local"
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class TokenGrant(BaseModel):
    """One bearer token as stored: its SHA-256, never the token itself."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    shops: list[str] = Field(min_length=1)
    scopes: list[str] = Field(min_length=1)
    expires_at: str | None = None
    name: str = ""

    @field_validator("scopes")
    @classmethod
    def known_scopes(cls, value: list[str]) -> list[str]:
        unknown = set(value) - {"read", "write", "admin"}
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}; use read, write, admin")
        return value


class Settings(BaseSettings):
    """Everything a service reads from its environment; one object per process."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    service: str = "points"
    env: Environment = Environment.LOCAL
    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = None
    metrics_port: int = 0
    # Threads serving RPCs in one process; None takes the service's own default
    # (`ServiceSpec.max_workers`). Each RPC holds a thread until it answers.
    max_workers: int | None = Field(default=None, ge=1, le=256)
    # Server processes per replica, sharing the gRPC port through SO_REUSEPORT
    # (services/common/supervisor.py). More than 1 needs PostgreSQL.
    workers: int = Field(default=1, ge=1, le=64)
    # Set by the supervisor in each process it starts; None in a process started by hand.
    worker_index: int | None = None
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    # May contain "{service}", so one template serves all four services.
    database_url: str = Field(
        default="sqlite:///var/{service}.db",
        validation_alias=AliasChoices("DATABASE_URL", "LOYALTY_DATABASE_URL"),
    )
    db_pool_size: int = 20
    default_time_zone: str = "Asia/Shanghai"
    # JSON list of TokenGrant, inline, or a file holding the same JSON.
    auth_tokens: str = ""
    auth_tokens_file: str = ""
    # Token this service presents to its peers.
    peer_token: str = ""
    points_target: str = "127.0.0.1:50051"
    metrics_target: str = "127.0.0.1:50052"
    segmentation_target: str = "127.0.0.1:50053"
    cycle_delivery_target: str = "127.0.0.1:50054"
    # TLS: server certificate and key (PEM). With tls_client_ca_file set too,
    # clients must present a certificate signed by that CA (mTLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # TLS towards peers: the CA that signed their certificates; this service's
    # own cert/key are presented to them when mTLS is on.
    peer_tls_ca_file: str = ""
    health_probe_seconds: float = 5.0
    outbox_relay_seconds: float = 1.0
    # How often the cycle delivery worker looks for due deliveries.
    delivery_worker_seconds: float = 10.0
    # How often the metrics service settles the customer summaries a bulk stream left stale.
    # It settles a shop once its loads have been quiet that long, or when a stream
    # ends; a load that never pauses is settled at least every max-lag seconds.
    summary_settle_seconds: float = 1.0
    summary_max_lag_seconds: float = 60.0
    idempotency_retention_days: int = 30

    @field_validator("default_time_zone")
    @classmethod
    def known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def no_dev_token_in_production(self) -> Settings:
        if self.env is Environment.PRODUCTION:
            if any(g.sha256 == DEV_TOKEN_SHA256 for g in self.token_grants()):
                raise ValueError("the documented dev token is configured; refuse to run in production")
            if self.peer_token == DEV_TOKEN:
                raise ValueError("LOYALTY_PEER_TOKEN is the documented dev token; refuse to run in production")
        return self

    @model_validator(mode="after")
    def several_workers_need_postgresql(self) -> Settings:
        if self.workers > 1 and self.resolved_database_url.startswith("sqlite"):
            raise ValueError(
                "LOYALTY_WORKERS > 1 needs PostgreSQL: SQLite lets one process write at a time, "
                "so more processes would only queue on its lock"
            )
        return self

    @model_validator(mode="after")
    def tls_files_come_in_pairs(self) -> Settings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("set both LOYALTY_TLS_CERT_FILE and LOYALTY_TLS_KEY_FILE, or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("LOYALTY_TLS_CLIENT_CA_FILE (mTLS) needs LOYALTY_TLS_CERT_FILE and LOYALTY_TLS_KEY_FILE")
        return self

    @property
    def port(self) -> int:
        return self.grpc_port if self.grpc_port is not None else DEFAULT_PORTS.get(self.service, 50051)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url.replace("{service}", self.service)

    def token_grants(self) -> list[TokenGrant]:
        raw: list[Any] = []
        if self.auth_tokens.strip():
            raw += json.loads(self.auth_tokens)
        if self.auth_tokens_file:
            raw += json.loads(Path(self.auth_tokens_file).read_text())
        return [TokenGrant.model_validate(item) for item in raw]
