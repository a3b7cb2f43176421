"""ExportOnnx publishes versions into a model repository that NVIDIA Triton reads: config.pbtxt
parses strictly against Triton's ModelConfig schema and agrees with the ONNX graph, every version
carries its own tokenizer and model config (transformers loads the directory), versions are never
rewritten, and a model keeps one shape."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import onnxruntime
import pytest
from google.protobuf import text_format

from driftlm.v1 import common_pb2, trainer_pb2

from .conftest import TINY_BERT, Stack

SCHEMA = Path(__file__).with_name("triton_model_config.proto")
_ONNX_TYPES = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32"}


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """Triton's ModelConfig schema (the part an export uses), compiled for this test."""
    out = tmp_path_factory.mktemp("triton")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{SCHEMA.parent}", f"--python_out={out}", SCHEMA.name],
        check=True,
    )
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", out / "triton_model_config_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(stack: Stack, checkpoint_id: str, repository: Path, **fields: object) -> trainer_pb2.ExportOnnxResponse:
    request = trainer_pb2.ExportOnnxRequest(
        checkpoint_id=checkpoint_id,
        destination=common_pb2.ArtifactRef(uri=str(repository)),
        **fields,  # type: ignore[arg-type]
    )
    return stack.trainer.ExportOnnx(request, timeout=300)


def test_each_export_is_a_new_version_of_two_models_triton_would_load(
    stack: Stack, tmp_path: Path, triton: ModuleType
) -> None:
    from transformers import AutoConfig, AutoTokenizer

    repository = tmp_path / "repository"
    checkpoint = stack.base_checkpoint.checkpoint_id
    first, second = (_export(stack, checkpoint, repository) for _ in range(2))
    assert (first.version, second.version) == (1, 2)
    assert sorted(p.name for p in repository.iterdir()) == ["driftlm", "driftlm_int8"]
    for name in ("driftlm", "driftlm_int8"):
        config = text_format.Parse((repository / name / "config.pbtxt").read_text(), triton.ModelConfig())
        assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
        assert config.HasField("dynamic_batching") and config.version_policy.latest.num_versions == 1
        for version in ("1", "2"):
            directory = repository / name / version
            session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
            declared_inputs = {i.name: triton.DataType.Name(i.data_type) for i in config.input}
            assert declared_inputs == {i.name: _ONNX_TYPES[i.type] for i in session.get_inputs()}
            for output, graph_output in zip(config.output, session.get_outputs(), strict=True):
                assert output.name == graph_output.name
                assert triton.DataType.Name(output.data_type) == _ONNX_TYPES[graph_output.type]
                # Without the batch dimension; symbolic dimensions of the graph are -1 in the config.
                dims = [d if isinstance(d, int) else -1 for d in graph_output.shape[1:]]
                assert list(output.dims) == dims
            tokenizer = AutoTokenizer.from_pretrained(directory)
            model_config = AutoConfig.from_pretrained(directory)
            assert len(tokenizer) == model_config.vocab_size == stack.base_version.size
            ids = np.asarray([tokenizer("the old words").input_ids], dtype=np.int64)
            logits, _cls, _hidden = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            assert logits.shape == (1, ids.shape[1], stack.base_version.size)


def test_a_config_triton_would_refuse_fails_the_strict_parse(triton: ModuleType) -> None:
    """The schema check can fail: a field Triton does not know, or a data type it has no name for."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "m" platform: "onnxruntime_onnx" max_batch: 8', triton.ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('input [ { name: "x" data_type: TYPE_INT128 dims: [ -1 ] } ]', triton.ModelConfig())


def test_versions_are_never_rewritten_and_a_model_keeps_one_shape(stack: Stack, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    checkpoint = stack.base_checkpoint.checkpoint_id
    assert _export(stack, checkpoint, repository, version=7).version == 7
    # The same checkpoint to the same version again is a retry: the earlier export's answer.
    assert _export(stack, checkpoint, repository, version=7).version == 7
    other = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=TINY_BERT, vocab_version_id=stack.base_version.version_id, seed=99
        )
    ).checkpoint
    assert other.checkpoint_id != checkpoint
    with pytest.raises(grpc.RpcError) as again:
        _export(stack, other.checkpoint_id, repository, version=7)
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _export(stack, checkpoint, repository).version == 8  # the next after the highest
    wider = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=TINY_BERT.replace('"hidden_size": 32', '"hidden_size": 64'),
            vocab_version_id=stack.base_version.version_id,
        )
    ).checkpoint
    with pytest.raises(grpc.RpcError) as mismatch:
        _export(stack, wider.checkpoint_id, repository)
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "export under another model name" in mismatch.value.details()
    assert _export(stack, wider.checkpoint_id, repository, model_name="wide").version == 1
    assert not list(repository.rglob(".tmp-*"))
