"""deploy/compose.yaml and the Dockerfile stay correct for a real engine."""

from __future__ import annotations

from pathlib import Path

from tests.compose_stack import (
    COMPOSE_FILE,
    dependencies_of,
    environment_of,
    in_default_profile,
    load_compose,
    start_order,
)

GRPC_SERVICES = {"points", "metrics", "segmentation", "cycle_delivery"}


def test_every_grpc_service_is_defined_with_healthcheck_and_migrate_dependency() -> None:
    services = load_compose()["services"]
    assert set(services) >= GRPC_SERVICES
    for name in GRPC_SERVICES:
        service = services[name]
        assert service["command"] == ["python", "-m", f"services.{name}"]
        assert service["healthcheck"]["test"][-1] == "services.common.healthcheck"
        assert dependencies_of(service)["migrate"] == "service_completed_successfully"
        assert service["ports"], f"{name} publishes no port"
        env = environment_of(service)
        assert env["LOYALTY_GRPC_PORT"] == "50051"
        assert "{service}" in env["DATABASE_URL"]


def test_migrate_waits_for_a_healthy_database() -> None:
    services = load_compose()["services"]
    assert dependencies_of(services["migrate"]) == {"postgres": "service_healthy"}
    assert "healthcheck" in services["postgres"]


def test_peer_targets_name_compose_services() -> None:
    services = load_compose()["services"]
    for name in GRPC_SERVICES:
        for key, value in environment_of(services[name]).items():
            if key.endswith("_TARGET"):
                assert value.split("///")[1].split(":")[0] in services


def test_start_order_respects_dependencies() -> None:
    order = start_order(load_compose()["services"])
    assert order.index("postgres") < order.index("migrate") < order.index("points") < order.index("segmentation")


def test_replicated_service_publishes_a_port_range() -> None:
    points = load_compose()["services"]["points"]
    replicas = points["deploy"]["replicas"]
    low, high = points["ports"][0].split(":")[-2].split("-")
    assert int(high) - int(low) + 1 == replicas


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    text = (COMPOSE_FILE.parent / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines
    assert user_lines[-1] != "USER root"
    assert (Path(COMPOSE_FILE).parent.parent / ".dockerignore").exists()


def test_the_observability_stack_is_a_profile_and_tracing_is_off_unless_the_host_sets_an_endpoint() -> None:
    services = load_compose()["services"]
    assert {name for name, s in services.items() if not in_default_profile(s)} == {
        "otel-collector",
        "prometheus",
        "grafana",
    }
    points = services["points"]
    assert environment_of(points, {})["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
    chosen = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317"}
    assert environment_of(points, chosen)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    for volume in (v for s in services.values() for v in s.get("volumes", []) if v.startswith("./")):
        assert (COMPOSE_FILE.parent / volume.split(":")[0]).exists(), volume
