"""The committed stubs are exactly what `make protos` generates, and the contracts lint clean."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate_protos", PROTOS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)
    assert generated, "protoc wrote nothing"
    stale = [
        path.name
        for path in generated
        if not (PROTOS / path.relative_to(tmp_path)).exists()
        or (PROTOS / path.relative_to(tmp_path)).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"stubs out of date: {stale}; run `make protos` and commit the result"


def _buf() -> str:
    found = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if found is None:
        pytest.skip("buf is not installed (it comes with the dev extra)")
    return found


@pytest.mark.parametrize("command", [["lint"], ["format", "--diff", "--exit-code"]])
def test_buf_is_clean(command: list[str]) -> None:
    result = subprocess.run([_buf(), *command, str(PROTOS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_in_the_contracts() -> None:
    from driftlm.v1 import compare_pb2, inference_pb2, sampling_pb2, trainer_pb2, vocab_pb2

    names = {
        service.full_name
        for module in (vocab_pb2, sampling_pb2, trainer_pb2, inference_pb2, compare_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert names == {f"driftlm.v1.{name}Service" for name in ("Vocab", "Sampling", "Trainer", "Inference", "Compare")}
