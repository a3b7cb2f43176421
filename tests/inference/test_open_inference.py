"""The Open Inference Protocol: the contract is wire-compatible with Triton's (same package, service,
messages, field numbers and types) and NVIDIA's unchanged `tritonclient` drives the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from driftlm.v1 import grpc_predict_v2_pb2 as oip

from .conftest import MODEL, Planted, Server

CLIENT = Path(__file__).with_name("triton_client.py")


def _run_client(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _fields(message: object) -> dict[str, object]:
    found: dict[str, object] = {}
    for field in message.fields:  # type: ignore[attr-defined]
        message_type = field.message_type.full_name if field.message_type else ""
        found[field.name] = [field.number, field.type, field.is_repeated, message_type]
    for nested in message.nested_types:  # type: ignore[attr-defined]
        found.update({f"{nested.name}.{k}": v for k, v in _fields(nested).items()})
    return found


def test_contract_matches_tritons_on_the_wire() -> None:
    theirs = _run_client("descriptors")
    service = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert (oip.DESCRIPTOR.package, service.full_name) == (theirs["package"], theirs["service"])
    methods = theirs["methods"]
    assert isinstance(methods, dict)
    for method in service.methods:
        assert [method.input_type.full_name, method.output_type.full_name] == methods[method.name], method.name
    messages = theirs["messages"]
    assert isinstance(messages, dict)
    for name, message in oip.DESCRIPTOR.message_types_by_name.items():
        assert _fields(message) == messages[name], name
    assert len(service.methods) == 9


def test_tritonclient_round_trip(version_one: Server, planted: Planted, tmp_path: Path) -> None:
    answers = _run_client("calls", version_one.target, MODEL, str(tmp_path / "out.npz"))
    assert answers["live"] and answers["ready"] and answers["model_ready"] and answers["version_1_ready"]
    assert answers["unknown_ready"] is False
    assert answers["server"] == {"name": "driftlm", "extensions": ["model_repository"]}
    metadata = answers["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("input_ids", "INT64"),
        ("attention_mask", "INT64"),
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "cls_embedding", "last_hidden_state"]
    assert answers["response"] == {"model_version": "1", "id": "r-1"}
    index = {(m["name"], m.get("version", "")): m["state"] for m in answers["index"]}  # type: ignore[union-attr]
    assert index == {(MODEL, "1"): "READY", (f"{MODEL}_int8", "1"): "READY"}
    assert answers["wrong_datatype"] == "StatusCode.INVALID_ARGUMENT"
    assert answers["batch_over_limit"] == "StatusCode.INVALID_ARGUMENT"
    assert answers["unknown_model"] == "StatusCode.NOT_FOUND"
    assert (answers["unload"], answers["after_unload_ready"]) == ("OK", False)
    assert (answers["load"], answers["after_load_ready"]) == ("OK", True)
    assert answers["load_unknown"] == "StatusCode.NOT_FOUND"
    arrays = np.load(tmp_path / "out.npz")
    with torch.no_grad():
        output = planted.models[1](
            input_ids=torch.from_numpy(arrays["ids"]),
            attention_mask=torch.from_numpy(arrays["mask"]),
            output_hidden_states=True,
        )
    real = arrays["mask"].astype(bool)
    np.testing.assert_allclose(arrays["logits"][real], output.logits.numpy()[real], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(arrays["cls"], output.hidden_states[-1][:, 0].numpy(), atol=1e-4, rtol=1e-4)


def _infer_request(**fields: object) -> oip.ModelInferRequest:
    return oip.ModelInferRequest(model_name=MODEL, **fields)  # type: ignore[arg-type]


def _ids_input(
    shape: list[int], datatype: str = "INT64", name: str = "input_ids"
) -> oip.ModelInferRequest.InferInputTensor:
    return oip.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        # typed contents of the wrong size
        ({"inputs": [_ids_input([1, 3])]}, grpc.StatusCode.INVALID_ARGUMENT, "int64_contents"),
        # raw bytes that do not match the shape
        (
            {"inputs": [_ids_input([1, 3])], "raw_input_contents": [b"\0" * 16]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 24",
        ),
        # a rank the model does not take
        (
            {"inputs": [_ids_input([3])], "raw_input_contents": [b"\0" * 24]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "[batch, sequence]",
        ),
        # a sequence longer than the model's positions
        (
            {"inputs": [_ids_input([1, 65])], "raw_input_contents": [b"\0" * 520]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "1..64",
        ),
        # an input the model does not have
        ({"inputs": [_ids_input([1, 1], name="pixels")]}, grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
        # ids outside the vocabulary
        (
            {"inputs": [_ids_input([1, 1])], "raw_input_contents": [np.int64(10**9).tobytes()]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "vocabulary",
        ),
        # an output the model does not have
        (
            {
                "inputs": [_ids_input([1, 1])],
                "raw_input_contents": [np.int64(2).tobytes()],
                "outputs": [oip.ModelInferRequest.InferRequestedOutputTensor(name="scores")],
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "scores",
        ),
        # a version that is not a number, and one that is not loaded
        ({"model_version": "latest"}, grpc.StatusCode.INVALID_ARGUMENT, "positive integer"),
        ({"model_version": "7"}, grpc.StatusCode.NOT_FOUND, "version 7"),
    ],
)
def test_bad_infer_requests_get_the_right_code(
    version_one: Server, fields: dict[str, object], code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        version_one.oip.ModelInfer(_infer_request(**fields))
    assert error.value.code() == code
    assert words in error.value.details()


def test_an_answer_too_big_for_one_message_is_resource_exhausted(planted: Planted, serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve(planted.copy_to(tmp_path / "repository", versions=(1,)), max_message_bytes=(1 << 20) + 4096)
    request = _infer_request(inputs=[_ids_input([32, 64])], raw_input_contents=[np.full((32, 64), 5, "<i8").tobytes()])
    with pytest.raises(grpc.RpcError) as error:
        server.oip.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cls_embedding" in error.value.details()
    request.outputs.add(name="cls_embedding")
    response = server.oip.ModelInfer(request)
    assert list(response.outputs[0].shape) == [32, 32] and len(response.raw_output_contents[0]) == 32 * 32 * 4
