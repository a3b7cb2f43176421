"""The trainer's bullets of the hardening issue: hostile values get the status that fits (never
INTERNAL), files outside the roots are refused, exports land whole or not at all."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from driftlm.v1 import common_pb2, trainer_pb2

from .conftest import TINY_BERT, Stack, old_slice, run_request

CODE = grpc.StatusCode


def _fails(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=120)  # type: ignore[operator]
    return raised.value


@pytest.mark.parametrize(
    ("config", "code", "message"),
    [
        ("null", CODE.INVALID_ARGUMENT, "must be a JSON object, got NoneType"),
        ("[1, 2]", CODE.INVALID_ARGUMENT, "must be a JSON object, got list"),
        ("{not json", CODE.INVALID_ARGUMENT, "not JSON"),
        ('{"hidden_size": "64"}', CODE.INVALID_ARGUMENT, "hidden_size must be an integer in [1, 16384], got '64'"),
        ('{"hidden_size": -64}', CODE.INVALID_ARGUMENT, "hidden_size must be an integer in [1, 16384], got -64"),
        ('{"num_hidden_layers": 1e9}', CODE.INVALID_ARGUMENT, "num_hidden_layers must be an integer"),
        ('{"hidden_size": 64, "num_attention_heads": 5}', CODE.INVALID_ARGUMENT, "must be a multiple of"),
        ('{"model_type": 7}', CODE.INVALID_ARGUMENT, "model_type must be a string"),
        (
            '{"hidden_size": 16384, "num_hidden_layers": 128, "num_attention_heads": 128, "intermediate_size": 65536}',
            CODE.RESOURCE_EXHAUSTED,
            "parameters",
        ),
    ],
)
def test_model_configs_that_cannot_be_are_refused(
    stack: Stack, config: str, code: grpc.StatusCode, message: str
) -> None:
    error = _fails(
        stack.trainer.CreateCheckpoint,
        trainer_pb2.CreateCheckpointRequest(model_config_json=config, vocab_version_id=stack.base_version.version_id),
    )
    assert error.code() == code and message in error.details(), error.details()


@pytest.mark.parametrize("hub_id", ["/", "/etc", "../models/x", "./local", "~/m", "a/b/c", "file:///m"])
def test_a_hub_id_that_is_a_path_is_refused(stack: Stack, hub_id: str) -> None:
    """A path in hub_id once loaded a local directory, past the file roots."""
    error = _fails(
        stack.trainer.CreateCheckpoint,
        trainer_pb2.CreateCheckpointRequest(hub_id=hub_id, vocab_version_id=stack.base_version.version_id),
    )
    assert error.code() == CODE.INVALID_ARGUMENT and "model_dir" in error.details()


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("/etc/passwd", CODE.PERMISSION_DENIED),
        ("/etc", CODE.PERMISSION_DENIED),
        ("file:///proc/self/environ", CODE.PERMISSION_DENIED),
        ("../../../../../etc/hostname", CODE.PERMISSION_DENIED),
        ("s3://bucket/key", CODE.PERMISSION_DENIED),  # no --read-uri-prefix: remote URIs are off
        ("gopher://host/key", CODE.INVALID_ARGUMENT),  # no file system for the scheme
        ("nul\x00byte", CODE.INVALID_ARGUMENT),
        ("x" * 300, CODE.INVALID_ARGUMENT),
        (".", CODE.INVALID_ARGUMENT),  # the store itself: a directory, not a corpus
    ],
)
def test_slices_outside_the_roots_or_not_files_are_refused(stack: Stack, uri: str, code: grpc.StatusCode) -> None:
    request = run_request(stack, [common_pb2.ArtifactRef(uri=uri)])
    error = _fails(stack.trainer.StartRun, request)
    assert error.code() == code, error.details()
    assert "root:" not in error.details()  # no file content (the first line of /etc/passwd)


def test_a_symlink_out_of_the_roots_is_followed_and_refused(stack: Stack, tmp_path: Path) -> None:
    link = stack.store / "innocent.txt"
    link.symlink_to("/etc/passwd")
    error = _fails(stack.trainer.StartRun, run_request(stack, [common_pb2.ArtifactRef(uri="innocent.txt")]))
    assert error.code() == CODE.PERMISSION_DENIED and "/etc/passwd" in error.details()


def test_an_unknown_enum_value_is_refused(stack: Stack) -> None:
    """embedding_init=99 once became FVT silently."""
    request = run_request(stack, [stack.slice_file("old", old_slice(20))], embedding_init=99)
    error = _fails(stack.trainer.StartRun, request)
    assert error.code() == CODE.INVALID_ARGUMENT and "embedding_init" in error.details()


@pytest.mark.parametrize("max_length", [513, 2**31 - 1])
def test_max_length_beyond_the_models_positions_is_refused(stack: Stack, max_length: int) -> None:
    request = trainer_pb2.ComputeEmbeddingsRequest(
        checkpoint_id=stack.base_checkpoint.checkpoint_id, texts=["a text"], max_length=max_length
    )
    error = _fails(stack.trainer.ComputeEmbeddings, request)
    assert error.code() == CODE.INVALID_ARGUMENT and "max_length" in error.details()


def test_exports_go_only_under_the_write_roots_and_fail_whole(stack: Stack, tmp_path: Path) -> None:
    checkpoint = stack.base_checkpoint.checkpoint_id
    outside = _fails(
        stack.trainer.ExportOnnx,
        trainer_pb2.ExportOnnxRequest(
            checkpoint_id=checkpoint, destination=common_pb2.ArtifactRef(uri="../../../../../anywhere")
        ),
    )
    assert outside.code() == CODE.PERMISSION_DENIED and "--write-root" in outside.details()
    (tmp_path / "models" / "driftlm" / "3").mkdir(parents=True)  # a version that exists
    exists = _fails(
        stack.trainer.ExportOnnx,
        trainer_pb2.ExportOnnxRequest(
            checkpoint_id=checkpoint, destination=common_pb2.ArtifactRef(uri=str(tmp_path / "models")), version=3
        ),
    )
    assert exists.code() == CODE.ALREADY_EXISTS
    leftovers = [p for p in (tmp_path / "models").rglob(".tmp-*")]
    assert not leftovers
    for name in ("../x", "a/b", "", "."):
        request = trainer_pb2.ExportOnnxRequest(checkpoint_id=checkpoint, model_name=name or "x" * 65)
        assert _fails(stack.trainer.ExportOnnx, request).code() == CODE.INVALID_ARGUMENT, name


def test_export_versions_stay_in_tritons_range_and_a_larger_directory_is_not_a_version(
    stack: Stack, tmp_path: Path
) -> None:
    """2**63 - 1 was accepted once, and every later default export then failed with INTERNAL."""
    checkpoint = stack.base_checkpoint.checkpoint_id
    models = tmp_path / "models"
    for version in (2**31, 2**63 - 1):
        request = trainer_pb2.ExportOnnxRequest(
            checkpoint_id=checkpoint, destination=common_pb2.ArtifactRef(uri=str(models)), version=version
        )
        error = _fails(stack.trainer.ExportOnnx, request)
        assert error.code() == CODE.INVALID_ARGUMENT
        assert error.details() == f"version: must be in [0, 2147483647] (0 means the next), got {version}"
    assert not models.exists()  # nothing written
    (models / "driftlm" / "9223372036854775807").mkdir(parents=True)  # left by driftlm 0.2
    exported = stack.trainer.ExportOnnx(
        trainer_pb2.ExportOnnxRequest(checkpoint_id=checkpoint, destination=common_pb2.ArtifactRef(uri=str(models)))
    )
    assert exported.version == 1


def test_a_model_too_large_for_memory_is_resource_exhausted_not_internal(stack: Stack) -> None:
    """Within the size limits, but more than this machine holds."""
    config = '{"hidden_size": 8192, "num_hidden_layers": 96, "num_attention_heads": 64, "intermediate_size": 32768}'
    error = _fails(
        stack.trainer.CreateCheckpoint,
        trainer_pb2.CreateCheckpointRequest(model_config_json=config, vocab_version_id=stack.base_version.version_id),
    )
    assert error.code() == CODE.RESOURCE_EXHAUSTED


def test_the_tiny_config_still_imports(stack: Stack) -> None:
    created = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=TINY_BERT, vocab_version_id=stack.base_version.version_id, seed=5
        )
    )
    assert created.checkpoint.checkpoint_id
