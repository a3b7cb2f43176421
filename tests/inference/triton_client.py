"""Calls a driftlm inference server with NVIDIA's own `tritonclient.grpc`, in a process of its
own: tritonclient registers the Open Inference Protocol's messages in protobuf's default pool under
its own file name, so it cannot share a process with driftlm's generated module of the same messages.

    python triton_client.py descriptors            -> JSON: tritonclient's messages and fields
    python triton_client.py calls TARGET MODEL OUT -> JSON of what each call answered; arrays in OUT.npz
"""

from __future__ import annotations

import json
import sys

import numpy as np


def descriptors() -> dict[str, object]:
    """Every message of tritonclient's grpc_service.proto: field name -> [number, type, label]."""
    from tritonclient.grpc import service_pb2

    def fields(message: object) -> dict[str, object]:
        found: dict[str, object] = {}
        for field in message.fields:  # type: ignore[attr-defined]
            found[field.name] = [
                field.number,
                field.type,
                field.is_repeated,
                field.message_type.full_name if field.message_type else "",
            ]
        for nested in message.nested_types:  # type: ignore[attr-defined]
            found.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return found

    file = service_pb2.DESCRIPTOR
    service = file.services_by_name["GRPCInferenceService"]
    return {
        "package": file.package,
        "service": service.full_name,
        "methods": {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods},
        "messages": {name: fields(message) for name, message in file.message_types_by_name.items()},
    }


def _status(call: object) -> str:
    from tritonclient.utils import InferenceServerException

    try:
        call()  # type: ignore[operator]
    except InferenceServerException as error:
        return str(error.status())
    return "OK"


def calls(target: str, model: str, out: str) -> dict[str, object]:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(target)
    ids = np.array([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]], dtype=np.int64)
    mask = (np.arange(5) < np.array([[5], [4]])).astype(np.int64)
    inputs = [
        triton.InferInput("input_ids", list(ids.shape), "INT64"),
        triton.InferInput("attention_mask", list(mask.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(mask)
    outputs = [triton.InferRequestedOutput("logits"), triton.InferRequestedOutput("cls_embedding")]
    result = client.infer(model, inputs, outputs=outputs, request_id="r-1")
    response = result.get_response()
    np.savez(out, ids=ids, mask=mask, logits=result.as_numpy("logits"), cls=result.as_numpy("cls_embedding"))
    metadata = client.get_model_metadata(model, as_json=True)
    server = client.get_server_metadata(as_json=True)
    wrong = triton.InferInput("input_ids", [1, 3], "INT32")
    wrong.set_data_from_numpy(np.array([[2, 10, 3]], dtype=np.int32))
    too_big = triton.InferInput("input_ids", [40, 3], "INT64")
    too_big.set_data_from_numpy(np.full((40, 3), 5, dtype=np.int64))
    answers = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "version_1_ready": client.is_model_ready(model, "1"),
        "unknown_ready": client.is_model_ready("no_such_model"),
        "server": {"name": server["name"], "extensions": server.get("extensions", [])},
        "metadata": metadata,
        "response": {"model_version": response.model_version, "id": response.id},
        "index": client.get_model_repository_index(as_json=True).get("models", []),
        "wrong_datatype": _status(lambda: client.infer(model, [wrong])),
        "batch_over_limit": _status(lambda: client.infer(model, [too_big])),
        "unknown_model": _status(lambda: client.infer("no_such_model", inputs)),
        "unload": _status(lambda: client.unload_model(f"{model}_int8")),
        "after_unload_ready": client.is_model_ready(f"{model}_int8"),
        "load": _status(lambda: client.load_model(f"{model}_int8")),
        "after_load_ready": client.is_model_ready(f"{model}_int8"),
        "load_unknown": _status(lambda: client.load_model("no_such_model")),
    }
    client.close()
    return answers


if __name__ == "__main__":
    if sys.argv[1] == "descriptors":
        print(json.dumps(descriptors()))
    else:
        print(json.dumps(calls(*sys.argv[2:5])))
