"""`make deploy-test`: build every image, start the stack, smoke-test it through its published ports,
run a short continuous-update loop against it that ends with a promoted model served, tear it down.

With a Docker engine it uses `docker` and `docker compose`; without one, podman and podman-compose.
When no image registry is reachable, the base image is made with debootstrap and `podman import`
(`--base-image` names another). Every step prints its time; a failure prints the containers' logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np

from driftlm.health import check
from driftlm.services.compare.client import CompareClient
from driftlm.services.inference.client import InferenceClient
from driftlm.services.runtime.config import SERVICE_DEFAULTS
from driftlm.services.runtime.security import ChannelSecurity
from driftlm.services.sampling.client import SamplingClient
from driftlm.services.trainer.client import TrainerClient
from driftlm.services.vocab.client import VocabClient

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
SERVICES = ("sampling", "vocab", "inference", "compare", "trainer")  # cheapest build first
IMAGES = (*SERVICES, "follow")
# The controller's model names, apart from the `driftlm run` loop's (each owns its versions).
FOLLOW_MODEL = "fresh"
FOLLOW_METRICS = "http://127.0.0.1:9109"
PROJECT = "driftlm-deploy-test"
DEBIAN_BASE = "localhost/driftlm-python-base:3.11-bookworm"
DEBIAN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
UID = 10001  # the images' user
# The exit code when this machine cannot build or run containers at all (no engine, a sandbox that
# forbids them): CI reports it and goes on; any other failure is the stack's and fails.
CANNOT_RUN_CONTAINERS = 77
# Disk the five images and their build stages need at once (measured: about 6 GiB).
NEEDED_GIB = 8.0


class CannotRunContainersError(Exception):
    """The machine, not the stack: no container engine, or one that cannot start a container."""


def _run(command: Sequence[str], *, check_rc: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("  $", " ".join(command), flush=True)
    done = subprocess.run(list(command), text=True, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
    if check_rc and done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done  # type: ignore[no-any-return]


@contextmanager
def _step(name: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"== {name}", flush=True)
    start = time.monotonic()
    yield
    timings[name] = time.monotonic() - start
    print(f"   {name}: {timings[name]:.0f} s", flush=True)


class Engine:
    """docker (with its compose plugin) where a daemon answers; podman and podman-compose otherwise."""

    def __init__(self, requested: str, *, tls: bool) -> None:
        docker_up = shutil.which("docker") and _run(["docker", "info"], check_rc=False).returncode == 0
        self.name = "docker" if requested == "docker" or (requested == "auto" and docker_up) else "podman"
        if shutil.which(self.name) is None:
            raise CannotRunContainersError(
                f"{self.name} is not installed; on Debian: apt-get install podman buildah runc debootstrap"
            )
        compose = (
            [str(Path(sys.executable).parent / "podman-compose")] if self.name == "podman" else ["docker", "compose"]
        )
        # The controller joins the plaintext stack (with TLS it would need client certificates too).
        files = ["compose.yaml", "compose.loop.yaml", *(["compose.tls.yaml"] if tls else ["compose.follow.yaml"])]
        self.follows = not tls
        self.compose = [*compose, "-p", PROJECT, *(a for name in files for a in ("-f", str(DEPLOY / name)))]

    def check_space(self, needed_gib: float) -> None:
        """The images need room: the trainer's alone is 2 GB, its build stage as much again."""
        storage = next(
            (Path(p) for p in ("/var/lib/containers", "/var/lib/docker") if Path(p).is_dir()),
            Path(tempfile.gettempdir()),
        )
        free_gib = shutil.disk_usage(storage).free / 1024**3
        if free_gib < needed_gib:
            raise CannotRunContainersError(
                f"{storage} has {free_gib:.1f} GiB free; building the images needs about {needed_gib:.0f} GiB"
            )

    def has_image(self, image: str) -> bool:
        return _run([self.name, "image", "inspect", image], check_rc=False).returncode == 0

    def runs_containers(self, image: str) -> str:
        """'' when a container starts; otherwise what the runtime said."""
        done = _run([self.name, "run", "--rm", "--entrypoint", "true", image], check_rc=False)
        return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def _base_image(engine: Engine, requested: str) -> str:
    """The image every target starts from: as asked, else pulled, else made with debootstrap."""
    if requested:
        return requested
    official = "docker.io/library/python:3.11-slim-bookworm"
    if engine.has_image(official) or _run([engine.name, "pull", official], check_rc=False).returncode == 0:
        return official
    if engine.has_image(DEBIAN_BASE):
        return DEBIAN_BASE
    if engine.name != "podman" or shutil.which("debootstrap") is None:
        raise CannotRunContainersError(f"cannot pull {official}; pass --base-image, or install podman and debootstrap")
    print("   no registry reachable: a Debian bookworm base from debootstrap (python3.11)")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        rootfs = Path(scratch) / "rootfs"
        mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
        _run(["debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", "bookworm", str(rootfs), mirror])
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        _run([engine.name, "import", "-", DEBIAN_BASE], stdin=tar.stdout)
        tar.wait()
    return DEBIAN_BASE


def _containers_conf_for_sandboxes(engine: Engine, image: str) -> None:
    """Hosts that forbid raising a process limit (some VMs and CI sandboxes) make runc fail with
    'error setting rlimit'; podman's defaults are then replaced by limits this host allows."""
    if engine.name != "podman" or "rlimit" not in engine.runs_containers(image):
        return
    conf = Path(tempfile.mkdtemp(prefix="driftlm-podman-")) / "containers.conf"
    nofile = _run(["sh", "-c", "ulimit -Hn"]).stdout.strip()
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n')
    os.environ["CONTAINERS_CONF"] = str(conf)
    print(f"   this host forbids podman's default limits; CONTAINERS_CONF={conf}")
    if problem := engine.runs_containers(image):
        raise CannotRunContainersError(f"containers do not start here: {problem}")


def _ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts (a TLS-intercepting proxy's CA is in it), for the builds."""
    for candidate in (os.environ.get(n, "") for n in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    return system if system.is_file() else None


def _local_torch_wheel() -> Path | None:
    """A CPU torch==2.13.0 wheel among pip's configured find-links folders, if there is one."""
    configured = _run([sys.executable, "-m", "pip", "config", "get", "global.find-links"], check_rc=False).stdout
    folders = [*os.environ.get("PIP_FIND_LINKS", "").split(), *configured.split()]
    wheels = [w for folder in folders if Path(folder).is_dir() for w in Path(folder).glob("torch-2.13.0+cpu-*.whl")]
    return wheels[0] if wheels else None


def _build(engine: Engine, base: str, tag: str, pip_ca: Path | None, torch_wheel: Path | None) -> None:
    wheels = DEPLOY / "torch-wheels"
    if torch_wheel is not None:
        wheels.mkdir(exist_ok=True)
        shutil.copy2(torch_wheel, wheels / torch_wheel.name)
    for service in IMAGES:
        command = [engine.name, "build", "-f", str(DEPLOY / "Dockerfile"), "--target", service]
        command += ["--build-arg", f"PYTHON_IMAGE={base}", "-t", f"driftlm-{service}:{tag}"]
        if engine.name == "podman":
            command += ["--format", "docker"]  # OCI images drop HEALTHCHECK
        if pip_ca is not None:
            command += ["--secret", f"id=pip-ca,src={pip_ca}"]
        start = time.monotonic()
        _run([*command, str(ROOT)])
        # The build stages stay behind as untagged images (the trainer's holds torch: 2 GB each time).
        _run([engine.name, "image", "prune", "-f"], check_rc=False)
        print(f"   driftlm-{service}:{tag} built in {time.monotonic() - start:.0f} s", flush=True)


def _container(engine: Engine, service: str) -> str:
    """The id of the service's container in the stack."""
    labels = [f"label=com.docker.compose.project={PROJECT}", f"label=com.docker.compose.service={service}"]
    ids = _run([engine.name, "ps", "-aq", "--filter", labels[0], "--filter", labels[1]]).stdout.split()
    if not ids:
        raise SystemExit(f"{service} has no container")
    return ids[-1]


def _write_secrets(folder: Path) -> tuple[ChannelSecurity, dict[str, Path]]:
    """A CA, the services' certificate, a client certificate and a token, as compose.tls.yaml reads
    them; how a client of the stack presents itself, and the files it reads."""
    import secrets as random_tokens

    import trustme

    folder.mkdir(exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*SERVICES, "localhost", "127.0.0.1")
    client = ca.issue_cert("driftlm-deploy-test")
    files = {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    files["server.pem"].write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files["server.key"]))
    files["client.pem"].write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(files["client.key"]))
    files["tokens.txt"] = folder / "tokens.txt"
    files["tokens.txt"].write_text(random_tokens.token_urlsafe(24) + "\n", encoding="utf-8")
    for path in files.values():
        path.chmod(0o644)  # the containers' user reads them through the bind mount; a test set only
    security = ChannelSecurity.from_files(
        root_ca=files["ca.pem"],
        client_cert=files["client.pem"],
        client_key=files["client.key"],
        token_file=files["tokens.txt"],
    )
    return security, files


def _wait_healthy(engine: Engine, timeout_s: float, security: ChannelSecurity) -> None:
    """Every service answers SERVING on its published port; a container that exits fails at once."""
    deadline = time.monotonic() + timeout_s
    for service in SERVICES:
        target = f"127.0.0.1:{SERVICE_DEFAULTS[service].grpc_port}"
        container = _container(engine, service)
        while not check(target, security, "", 3.0)[0]:
            state = json.loads(_run([engine.name, "inspect", container]).stdout)[0]["State"]
            if not state["Running"]:
                raise SystemExit(f"{service} exited ({state['ExitCode']}) before serving")
            if time.monotonic() > deadline:
                raise SystemExit(f"{service} on {target} is not SERVING after {timeout_s:.0f} s")
            time.sleep(2)
        print(f"   {service}: SERVING on {target}")


def _inspect(engine: Engine) -> None:
    """Each container runs as the images' user, on a read-only root, and its health check passes."""
    for service in IMAGES if engine.follows else SERVICES:
        name = _container(engine, service)
        config = json.loads(_run([engine.name, "inspect", name]).stdout)[0]
        user, read_only = config["Config"]["User"], config["HostConfig"]["ReadonlyRootfs"]
        if user != str(UID) or read_only is not True:
            raise SystemExit(f"{service}: user {user!r}, read-only root {read_only}")
        healthcheck = [engine.name, "healthcheck", "run", name] if engine.name == "podman" else None
        deadline = time.monotonic() + 120  # the controller's /healthz comes up once the services answer
        while healthcheck is not None:
            # podman runs health checks from systemd timers, absent here: run it until it passes
            if _run(healthcheck, check_rc=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                _run(healthcheck)
            time.sleep(3)
        print(f"   {service}: user {user}, read-only root, health check passes")


def _smoke(shared: Path, security: ChannelSecurity) -> str:
    """One real call to each service; the vocabulary version registered from the base model."""
    port = {s: f"127.0.0.1:{SERVICE_DEFAULTS[s].grpc_port}" for s in SERVICES}
    if security.token is not None:  # a client without a token is refused, with the right code
        with SamplingClient(port["sampling"], timeout_s=60, security=replace(security, token=None)) as stranger:
            try:
                stranger.draw(np.ones(2), k=1, seed=0)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                print("   sampling: a call without a token is UNAUTHENTICATED")
            else:
                raise SystemExit("a call without a token was answered")
    with SamplingClient(port["sampling"], timeout_s=60, security=security) as sampling:
        drawn = sampling.draw(np.array([0.0, 1.0, 3.0, 0.0]), k=2, seed=7)
        assert sorted(drawn.tolist()) == [1, 2], drawn  # the two items with weight
    with VocabClient(port["vocab"], timeout_s=120, security=security) as vocab:
        version = vocab.register_directory(shared / "minilm", display_name="deploy-test")
        print(f"   vocab: registered {version.version_id} ({version.size} pieces)")
    with TrainerClient(port["trainer"], timeout_s=600, security=security) as trainer:
        checkpoint = trainer.import_model(str(shared / "minilm"), version.version_id, seed=0, display_name="base")
        print(f"   trainer: imported {checkpoint.checkpoint_id}")
    with InferenceClient(port["inference"], timeout_s=60, security=security) as inference:
        print(f"   inference: {len(inference.list_models())} models before the loop")
    with CompareClient(port["compare"], timeout_s=60, security=security) as compare:
        print(f"   compare: {len(compare.list()[0])} comparisons before the loop")
    return version.version_id


def _loop(shared: Path, out: Path, steps: int, security: ChannelSecurity, secrets: dict[str, Path]) -> None:
    """A short `driftlm run --endpoints`, then the promoted model answers from inference."""
    endpoints = ",".join(
        f"{s}=127.0.0.1:{SERVICE_DEFAULTS[s].grpc_port}" for s in ("vocab", "trainer", "inference", "compare")
    )
    command = [
        str(Path(sys.executable).parent / "driftlm"),
        "run",
        "--endpoints",
        endpoints,
        "--store",
        str(shared / "loop"),
    ]
    command += ["--base-model", str(shared / "minilm"), "--out", str(out), "--steps", str(steps), "--fresh"]
    # A short loop's students need more distillation than the default 24 steps to meet the default
    # gate (top-1 agreement >= 0.5): at 12 steps a slice, 24 left every student below it (0.33-0.48),
    # 48 served 2019 and 2020 (0.61, 0.54).
    command += ["--distill-steps", "48"]
    if secrets:
        command += ["--tls-ca", str(secrets["ca.pem"]), "--tls-cert", str(secrets["client.pem"])]
        command += ["--tls-key", str(secrets["client.key"]), "--token-file", str(secrets["tokens.txt"])]
    print("  $", " ".join(command), flush=True)
    subprocess.run(command, check=True, timeout=3600)
    served = json.loads((out / "report.json").read_text(encoding="utf-8")).get("served")
    if not served:
        raise SystemExit(f"the loop ended with nothing served; see {out / 'report.html'}")
    with InferenceClient(
        f"127.0.0.1:{SERVICE_DEFAULTS['inference'].grpc_port}", timeout_s=60, security=security
    ) as inference:
        ready = [m for m in inference.list_models() if m.is_default]
        if not ready:
            raise SystemExit("inference serves no default model after the loop")
        (fill,) = inference.fill_mask(ready[0].name, ["the new [MASK] was released today."], top_k=3)
        print(f"   inference: {ready[0].name} v{ready[0].version} fills {[c.piece for c in fill.candidates]}")
    with CompareClient(
        f"127.0.0.1:{SERVICE_DEFAULTS['compare'].grpc_port}", timeout_s=60, security=security
    ) as compare:
        comparisons = compare.list()[0]
        if not comparisons:
            raise SystemExit("compare holds no comparison after the loop")
        print(
            f"   compare: {len(comparisons)} comparisons, the last gate {'passed' if comparisons[-1].gate.passed else 'failed'}"
        )


def _metric(name: str) -> float:
    """A sample of the controller's /metrics (0 before it exists)."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(f"{FOLLOW_METRICS}/metrics", timeout=10) as response:
            body = response.read().decode()
    except OSError:
        return 0.0
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _follow(shared: Path, security: ChannelSecurity, timeout_s: float) -> None:
    """Dated files dropped into the controller's feed, a year at a time; it must close the first
    two years, train, and promote both (the gate is off here: a short run checks the plumbing, the
    tests check the gate), and inference must answer from the promoted version."""
    from driftlm.loop.drifting_stream import generate_stream

    years: dict[str, list[dict[str, str]]] = {}
    for record in generate_stream(texts_per_period=200, seed=5):
        years.setdefault(record["time"][:4], []).append(record)
    feed = shared / "feed"
    drops = [("2016", years["2016"]), ("2017", [{**r, "time": "2017" + r["time"][4:]} for r in years["2021"]])]
    drops.append(("2018", [{**years["2018"][0], "time": "2018-06-01"}]))
    for name, records in drops:
        temporary = feed / f".{name}.jsonl.part"
        temporary.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        temporary.rename(feed / f"{name}.jsonl")
    deadline = time.monotonic() + timeout_s
    while _metric("driftlm_follow_promotions_total") < 2:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the controller promoted {_metric('driftlm_follow_promotions_total'):.0f} of 2 slices in {timeout_s:.0f} s"
            )
        time.sleep(5)
    print(f"   follow: 2 slices promoted, {_metric('driftlm_follow_trigger_fires_total'):.0f} fired")
    with InferenceClient(
        f"127.0.0.1:{SERVICE_DEFAULTS['inference'].grpc_port}", timeout_s=60, security=security
    ) as inference:
        served = {m.name: m.version for m in inference.list_models() if m.is_default}
        if served.get(FOLLOW_MODEL) != 2:
            raise SystemExit(f"inference serves {served}, not version 2 of {FOLLOW_MODEL}")
        (fill,) = inference.fill_mask(FOLLOW_MODEL, ["the new [MASK] was released today."], top_k=3)
        print(f"   inference: {FOLLOW_MODEL} v2 fills {[c.piece for c in fill.candidates]}")
    report = shared / "follow-report" / "report.html"
    if "<img" not in report.read_text(encoding="utf-8"):
        raise SystemExit(f"{report} has no plots")


def _stop(engine: Engine) -> None:
    """SIGTERM every container; each must exit 0 (a graceful stop) within its grace period."""
    names = {s: _container(engine, s) for s in (IMAGES if engine.follows else SERVICES)}
    _run([*engine.compose, "stop"])
    for service, name in names.items():
        code = json.loads(_run([engine.name, "inspect", name]).stdout)[0]["State"]["ExitCode"]
        if code != 0:
            raise SystemExit(f"{service} exited {code} on SIGTERM, not 0")
        print(f"   {service}: exited 0 on SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engine", choices=("auto", "docker", "podman"), default="auto")
    parser.add_argument(
        "--base-image", default="", help="the PYTHON_IMAGE build argument (default: pulled or debootstrap)"
    )
    parser.add_argument("--tag", default="deploy-test", help="tag of the images built (DRIFTLM_TAG)")
    parser.add_argument(
        "--pip-ca", type=Path, default=_ca_bundle(), help="CA bundle pip trusts in builds (default: this host's)"
    )
    parser.add_argument(
        "--torch-wheel",
        type=Path,
        default=_local_torch_wheel(),
        help="a torch==2.13.0 wheel for the trainer image (default: one in pip's find-links; else the CPU index)",
    )
    parser.add_argument("--skip-build", action="store_true", help="use images built before with --tag")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument(
        "--tls", action="store_true", help="with compose.tls.yaml: mutual TLS and tokens (a test set of secrets)"
    )
    parser.add_argument("--steps", type=int, default=12, help="training steps per slice and arm of the loop")
    args = parser.parse_args(argv)
    try:
        engine = Engine(args.engine, tls=args.tls)
    except CannotRunContainersError as error:
        print(f"deploy-test cannot run on this machine: {error}", file=sys.stderr)
        return CANNOT_RUN_CONTAINERS
    timings: dict[str, float] = {}
    shared = Path(tempfile.mkdtemp(prefix="driftlm-shared-", dir="/var/tmp"))
    shared.chmod(0o777)  # the containers' user writes the trainer's store here
    os.environ.update(DRIFTLM_TAG=args.tag, DRIFTLM_SHARED=str(shared))
    for folder in ("models", "corpora"):
        (DEPLOY / folder).mkdir(exist_ok=True)
    from driftlm.loop.pipeline import default_base_model

    shutil.copytree(default_base_model(), shared / "minilm")
    # The controller's feed and its settings: short training, a year a slice, the gate off.
    (shared / "feed").mkdir()
    (shared / "follow.yaml").write_text(
        "head_steps: 20\nfirst_steps: 12\nsteps: 12\ndistill_steps: 12\n"
        f"max_length: 32\ngate_min_agreement: none\nmodel_name: {FOLLOW_MODEL}\n",
        encoding="utf-8",
    )
    os.environ.update(
        DRIFTLM_FEED=str(shared / "feed"),
        DRIFTLM_FOLLOW_CONFIG=str(shared / "follow.yaml"),
        DRIFTLM_FOLLOW_SLICE="year",
        DRIFTLM_FOLLOW_POLL_S="2",
    )
    security, secrets = _write_secrets(DEPLOY / "secrets") if args.tls else (ChannelSecurity(), {})
    started = time.monotonic()
    try:
        if not args.skip_build:
            engine.check_space(NEEDED_GIB)
            with _step("base image", timings):
                base = _base_image(engine, args.base_image)
                _containers_conf_for_sandboxes(engine, base)
            with _step("build six images", timings):
                _build(engine, base, args.tag, args.pip_ca, args.torch_wheel)
        else:
            _containers_conf_for_sandboxes(engine, f"driftlm-sampling:{args.tag}")
        with _step("start the stack", timings):
            _run([*engine.compose, "up", "-d"])
            _wait_healthy(engine, 300, replace(security, token=None))
            _inspect(engine)
        with _step("one call to each service", timings):
            _smoke(shared, security)
        with _step("driftlm run --endpoints", timings):
            _loop(shared, shared / "report", args.steps, security, secrets)
        if engine.follows:
            with _step("driftlm follow: files dropped until promoted", timings):
                _follow(shared, security, 1800)
        with _step("graceful stop", timings):
            _stop(engine)
    except CannotRunContainersError as error:
        print(f"deploy-test cannot run on this machine: {error}", file=sys.stderr)
        return CANNOT_RUN_CONTAINERS
    except BaseException:
        print(_run([*engine.compose, "logs", "--tail", "40"], check_rc=False).stdout[-20000:])
        raise
    finally:
        if not args.keep:
            _run([*engine.compose, "down", "-v"], check_rc=False)
            shutil.rmtree(shared, ignore_errors=True)
    print(
        f"deploy-test passed in {time.monotonic() - started:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
