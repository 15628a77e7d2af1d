"""Settings from the environment, including refusals that protect production."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.common.errors import Violations
from services.common.server import rpc_threads
from services.common.settings import DEV_TOKEN, DEV_TOKEN_SHA256, Settings
from services.common.validation import check_time_zone
from services.metrics.app import SPEC as METRICS
from services.points.app import SPEC as POINTS


def test_defaults_are_embedded_sqlite_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings(service="metrics")
    assert settings.resolved_database_url == "sqlite:///var/metrics.db"
    assert settings.port == 50052


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/loyalty_{service}")
    monkeypatch.setenv("LOYALTY_GRPC_PORT", "6000")
    settings = Settings(service="points")
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/loyalty_points"
    assert settings.port == 6000


def test_dev_token_is_refused_in_production() -> None:
    grants = json.dumps([{"sha256": DEV_TOKEN_SHA256, "shops": ["*"], "scopes": ["admin"]}])
    Settings(env="development", auth_tokens=grants)
    with pytest.raises(ValidationError, match="dev token"):
        Settings(env="production", auth_tokens=grants)
    with pytest.raises(ValidationError, match="dev token"):
        Settings(env="production", peer_token=DEV_TOKEN)


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        Settings(default_time_zone="Mars/Olympus")


def test_token_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tokens.json"
    path.write_text(json.dumps([{"sha256": "0" * 64, "shops": ["a"], "scopes": ["read"]}]))
    assert [g.shops for g in Settings(auth_tokens_file=str(path)).token_grants()] == [["a"]]


def test_tls_settings_must_be_complete() -> None:
    with pytest.raises(ValidationError, match="both"):
        Settings(tls_cert_file="server.crt")
    with pytest.raises(ValidationError, match="mTLS"):
        Settings(tls_client_ca_file="ca.crt")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("Asia/Shanghai", True),
        ("UTC", True),
        ("America/Argentina/Buenos_Aires", True),
        ("x" * 5_000, False),
        ("../../etc/passwd", False),
        ("Asia/Nowhere", False),
        ("", False),
        ("Asia/Shanghai\x00", False),
    ],
)
def test_time_zone_names_are_checked_without_crashing(name: str, ok: bool) -> None:
    v = Violations()
    zone = check_time_zone(v, name, "time_zone")
    assert (zone is not None, not v.found) == (ok, ok)


def test_several_worker_processes_need_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("LOYALTY_WORKERS", "2")
    with pytest.raises(ValidationError, match="LOYALTY_WORKERS > 1 needs PostgreSQL"):
        Settings(service="points")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/loyalty_{service}")
    assert Settings(service="points").workers == 2
    monkeypatch.setenv("LOYALTY_WORKERS", "0")
    with pytest.raises(ValidationError):
        Settings(service="points")


def test_rpc_threads_are_the_services_own_unless_set() -> None:
    assert rpc_threads(POINTS, Settings()) == 8  # the hot path's threads (see services/points/app.py)
    assert rpc_threads(METRICS, Settings()) == 32
    assert rpc_threads(POINTS, Settings(max_workers=24)) == 24
    with pytest.raises(ValidationError):
        Settings(max_workers=0)
