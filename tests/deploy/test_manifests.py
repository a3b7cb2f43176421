"""The deployment files agree with the services and with their schemas: every service has an image
target, a compose service and a Kubernetes Deployment on its own ports; compose.yaml validates
against the Compose specification and every Kubernetes resource against the API schema (strict)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftlm.services.runtime.config import SERVICE_DEFAULTS
from driftlm.services.trainer.spec import RunSpec

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


COMPOSE_FILES = sorted(DEPLOY.glob("compose*.yaml"))


def test_compose_files_follow_the_compose_specification() -> None:
    assert {p.name for p in COMPOSE_FILES} >= {"compose.yaml", "compose.loop.yaml", "compose.tls.yaml"}
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, COMPOSE_FILES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_variable_the_compose_files_set_is_one_the_services_read() -> None:
    """A misspelt DRIFTLM_* variable would be ignored in silence; each must be one `serve` reads."""
    helps = subprocess.run(
        [sys.executable, "-m", "driftlm", "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    known = set(re.findall(r"DRIFTLM_[A-Z_]+", helps))
    assert {"DRIFTLM_READ_ROOTS", "DRIFTLM_TLS_CERT", "DRIFTLM_OTLP_ENDPOINT"} <= known
    follow_helps = subprocess.run(
        [sys.executable, "-m", "driftlm", "follow", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    follow_known = set(re.findall(r"DRIFTLM_[A-Z_]+", follow_helps))
    assert {"DRIFTLM_FOLLOW_SOURCE", "DRIFTLM_ENDPOINT", "DRIFTLM_SLICE"} <= follow_known
    for path in COMPOSE_FILES:
        compose = yaml.safe_load(path.read_text(encoding="utf-8"))
        for service, spec in compose["services"].items():
            for name in spec.get("environment", {}):
                assert name in (follow_known if service == "follow" else known), (path.name, service, name)
    secrets = yaml.safe_load((DEPLOY / "compose.tls.yaml").read_text(encoding="utf-8"))
    mounted = {f"/run/secrets/{name}" for name in secrets["secrets"]}
    for spec in secrets["services"].values():
        files = {v for k, v in spec["environment"].items() if k.endswith(("_CERT", "_KEY", "_CA", "_FILE"))}
        assert files <= mounted, files - mounted


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
    assert compose["healthcheck"]["test"] == ["CMD", "driftlm", "health"]
    assert re.search(r'^HEALTHCHECK .* CMD \["driftlm", "health"\]$', dockerfile, re.MULTILINE)
    for peer in compose.get("depends_on", {}):
        assert compose["depends_on"][peer] == {"condition": "service_healthy"}, peer
    resources = [d for path in BASE.glob("*.yaml") if path.name != "kustomization.yaml" for d in _documents(path)]
    deployment = next(d for d in resources if d["kind"] == "Deployment" and d["metadata"]["name"] == service)  # type: ignore[index]
    container = deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert [p["containerPort"] for p in container["ports"]] == [defaults.grpc_port, defaults.metrics_port]
    assert container["readinessProbe"]["grpc"]["port"] == defaults.grpc_port
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


OVERLAYS = sorted(p.name for p in (DEPLOY / "kustomize" / "overlays").iterdir())
KUBECTL = shutil.which("kubectl")
VERSION = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def _rendered(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize` makes of a kustomization, one dict a resource."""
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _pod_specs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    if resource["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    return [spec["template"]["spec"]] if "template" in spec else []


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the kustomize output cannot be rendered")
@pytest.mark.parametrize("directory", ["base", *(f"overlays/{name}" for name in OVERLAYS)])
def test_the_kustomize_output_is_valid_strictly_and_pins_every_image(directory: str, tmp_path: Path) -> None:
    resources = _rendered(DEPLOY / "kustomize" / directory)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(resources), encoding="utf-8")
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Custom resources have no schema there; what is not a known CRD is an error.
    unknown = re.findall(r"Couldn't find schema for kind (\w+)", done.stdout + done.stderr)
    assert set(unknown) <= {"PyTorchJob", "ServiceMonitor"}
    images = [c["image"] for r in resources for pod in _pod_specs(r) for c in pod["containers"]]
    assert images and all(re.fullmatch(rf"driftlm-[a-z]+:{re.escape(VERSION)}(-cuda)?", i) for i in images), images


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the kustomize output cannot be rendered")
@pytest.mark.parametrize(("overlay", "kind"), [("training", "Job"), ("kubeflow", "PyTorchJob")])
def test_the_training_jobs_run_torchrun_on_a_valid_run_spec_with_the_cuda_image(overlay: str, kind: str) -> None:
    resources = _rendered(DEPLOY / "kustomize" / "overlays" / overlay)
    job = next(r for r in resources if r["kind"] == kind)
    config_map = next(
        r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("training-run")
    )
    RunSpec.from_json(json.loads(config_map["data"]["run.json"]))  # the example is a run the trainer accepts
    for pod in _pod_specs(job):
        container = pod["containers"][0]
        assert container["command"] == ["torchrun"] and container["image"].endswith("-cuda")
        assert container["args"][container["args"].index("-m") + 1 : container["args"].index("-m") + 3] == [
            "driftlm",
            "train",
        ]
        spec_arg = next(a for a in container["args"] if a.startswith("--spec="))
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert spec_arg == f"--spec={mounts['spec']}/run.json"
        assert volumes["spec"]["configMap"]["name"] == config_map["metadata"]["name"]
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory" and "nvidia.com/gpu" in container["resources"]["limits"]
    if kind == "PyTorchJob":
        assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
        assert all(pod["containers"][0]["name"] == "pytorch" for pod in _pod_specs(job))


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the kustomize output cannot be rendered")
def test_the_service_monitor_scrapes_every_service_on_its_metrics_port() -> None:
    resources = _rendered(DEPLOY / "kustomize" / "overlays" / "monitoring")
    monitor = next(r for r in resources if r["kind"] == "ServiceMonitor")
    (selector,) = monitor["spec"]["selector"]["matchExpressions"]
    assert selector["operator"] == "In"
    services = [r for r in resources if r["kind"] == "Service"]
    selected = [s for s in services if s["metadata"].get("labels", {}).get(selector["key"]) in selector["values"]]
    assert sorted(s["metadata"]["name"] for s in selected) == sorted(SERVICE_DEFAULTS)  # each scraped once
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in selected:
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports[endpoint["port"]] == SERVICE_DEFAULTS[service["metadata"]["name"]].metrics_port


def test_the_controller_has_an_image_a_compose_service_and_a_deployment() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM runtime AS follow$", dockerfile, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["driftlm", "follow"\]$', dockerfile, re.MULTILINE)
    assert "/healthz" in dockerfile.split("FROM runtime AS follow", 1)[1]
    compose = yaml.safe_load((DEPLOY / "compose.follow.yaml").read_text(encoding="utf-8"))["services"]["follow"]
    assert compose["build"]["target"] == "follow" and compose["read_only"] is True and compose["cap_drop"] == ["ALL"]
    assert compose["ports"] == ["127.0.0.1:9109:9109"] and "/healthz" in " ".join(compose["healthcheck"]["test"])
    assert set(compose["depends_on"]) == {"vocab", "trainer", "inference", "compare"}
    assert all(c == {"condition": "service_healthy"} for c in compose["depends_on"].values())
    assert any(volume.endswith(":/feed:ro") for volume in compose["volumes"])


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the kustomize output cannot be rendered")
def test_one_controller_on_kubernetes_sharing_its_files_with_the_services_that_read_them() -> None:
    resources = _rendered(DEPLOY / "kustomize" / "overlays" / "follow")
    deployments = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Deployment"}
    follow = deployments["follow"]
    assert follow["spec"]["replicas"] == 1 and follow["spec"]["strategy"]["type"] == "Recreate"
    pod = follow["spec"]["template"]
    assert pod["metadata"]["labels"]["driftlm-client"] == "true"  # the network policy admits it
    (container,) = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert [p["containerPort"] for p in container["ports"]] == [9109]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DRIFTLM_STORE"].startswith("/shared/") and env["DRIFTLM_BASE_MODEL"].startswith("/shared/")
    claims = {r["metadata"]["name"]: r for r in resources if r["kind"] == "PersistentVolumeClaim"}
    assert claims["driftlm-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for reader in ("trainer", "vocab"):
        spec = deployments[reader]["spec"]["template"]["spec"]
        (main,) = spec["containers"]
        roots = {e["name"]: e.get("value") for e in main["env"]}["DRIFTLM_READ_ROOTS"]
        assert "/shared" in roots.split(":")
        assert {"name": "shared", "mountPath": "/shared", "readOnly": True} in main["volumeMounts"]
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": "driftlm-shared"}} in spec["volumes"]
