"""The deployment files agree with the services and with their schemas: every service has an image
target, a compose service and a Kubernetes Deployment on its own ports; compose.yaml validates
against the Compose specification and every Kubernetes resource against the API schema (strict)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from driftlm.services.runtime.config import SERVICE_DEFAULTS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent
BASE = DEPLOY / "kustomize" / "base"


def _documents(path: Path) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def test_the_build_context_leaves_out_the_environment_and_outputs() -> None:
    ignored = set((DEPLOY.parent / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".venv", ".git", "build", "driftlm-out", "palms-out"} <= ignored
    copied = set(re.findall(r"^COPY (\S+)", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE))
    assert copied and not copied & ignored  # nothing the images need is left out


def test_compose_follows_the_compose_specification() -> None:
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_kubernetes_resource_is_valid_strictly() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    files = [BASE / name for name in kustomization["resources"]]
    assert {p.name for p in files} == {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("service", sorted(SERVICE_DEFAULTS))
def test_each_service_has_an_image_a_compose_service_and_a_deployment_on_its_ports(service: str) -> None:
    defaults = SERVICE_DEFAULTS[service]
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^FROM runtime AS {service}$", dockerfile, re.MULTILINE)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))["services"][service]
    assert compose["build"]["target"] == service and compose["read_only"] is True and compose["cap_drop"] == ["ALL"]
    # Published on the loopback only, unless an operator says otherwise.
    assert f"127.0.0.1:{defaults.grpc_port}:{defaults.grpc_port}" in compose["ports"]
    assert all(port.startswith("127.0.0.1:") for port in compose["ports"])
    assert "python" in compose["healthcheck"]["test"] and "grpc_health" in compose["healthcheck"]["test"][-1]
    for peer in compose.get("depends_on", {}):
        assert compose["depends_on"][peer] == {"condition": "service_healthy"}, peer
    resources = [d for path in BASE.glob("*.yaml") if path.name != "kustomization.yaml" for d in _documents(path)]
    deployment = next(d for d in resources if d["kind"] == "Deployment" and d["metadata"]["name"] == service)  # type: ignore[index]
    container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert [p["containerPort"] for p in container["ports"]] == [defaults.grpc_port, defaults.metrics_port]
    assert container["readinessProbe"]["grpc"]["port"] == defaults.grpc_port
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
