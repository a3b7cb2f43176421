"""Open Inference Protocol tensors <-> NumPy arrays for the served graph, checked before anything
is allocated: a request's declared shapes must match its bytes, its batch the model's limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.core.model_repository import INPUTS
from driftlm.v1 import grpc_predict_v2_pb2 as oip

# Every input of the graph is INT64; its outputs FP32.
INPUT_DATATYPE = "INT64"
OUTPUT_DATATYPE = "FP32"


@dataclass(frozen=True)
class InferInputs:
    """A ModelInferRequest's inputs as arrays."""

    # (B, T) int64 each.
    input_ids: np.ndarray
    attention_mask: np.ndarray


def parse_version(version: str) -> int:
    """A request's model_version: empty is 0 (the default); otherwise a positive integer.

    Raises:
        InvalidArgumentError: anything else.
    """
    if not version:
        return 0
    if not (version.isdecimal() and version.isascii() and len(version) < 19 and int(version) > 0):
        raise InvalidArgumentError("model_version", 'must be empty (the default) or a positive integer such as "3"')
    return int(version)


def read_inputs(
    request: oip.ModelInferRequest, *, max_batch_size: int, max_length: int, vocab_size: int
) -> InferInputs:
    """The ids and mask of a request (mask all ones when the request omits it).

    Raises:
        InvalidArgumentError: an unknown, repeated or missing input; a datatype other than INT64; a
            shape that is not (B, T) with 1 <= B <= max_batch_size and 1 <= T <= max_length; data
            whose size does not match the shape; ids outside the vocabulary; a mask not 0/1.
    """
    names = [tensor.name for tensor in request.inputs]
    unknown = sorted(set(names) - set(INPUTS))
    if unknown:
        raise InvalidArgumentError("inputs", f"has {unknown[0][:64]!r}; the model takes {', '.join(INPUTS)}")
    if len(set(names)) != len(names):
        raise InvalidArgumentError("inputs", "names an input twice")
    if "input_ids" not in names:
        raise InvalidArgumentError("inputs", "has no input_ids")
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidArgumentError(
            "raw_input_contents",
            f"has {len(request.raw_input_contents)} entries for {len(request.inputs)} inputs; give one per input",
        )
    arrays = {}
    for index, tensor in enumerate(request.inputs):
        raw = request.raw_input_contents[index] if request.raw_input_contents else None
        arrays[tensor.name] = _input_array(tensor, raw, max_batch_size=max_batch_size, max_length=max_length)
    ids = arrays["input_ids"]
    mask = arrays.get("attention_mask", np.ones_like(ids))
    if mask.shape != ids.shape:
        raise InvalidArgumentError(
            "inputs", f"attention_mask's shape {list(mask.shape)} is not input_ids' {list(ids.shape)}"
        )
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise InvalidArgumentError("input_ids", f"holds ids outside the model's vocabulary 0..{vocab_size - 1}")
    if not np.isin(mask, (0, 1)).all():
        raise InvalidArgumentError("attention_mask", "must hold only 0 and 1")
    return InferInputs(ids, mask)


def _input_array(
    tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None, *, max_batch_size: int, max_length: int
) -> np.ndarray:
    field = f"inputs[{tensor.name}]"
    if tensor.datatype != INPUT_DATATYPE:
        raise InvalidArgumentError(field, f"has datatype {tensor.datatype[:16]!r}; the model takes {INPUT_DATATYPE}")
    shape = list(tensor.shape)
    if len(shape) != 2:
        raise InvalidArgumentError(field, f"has shape {shape[:8]}; the model takes [batch, sequence]")
    batch, length = shape
    if not 1 <= batch <= max_batch_size:
        raise InvalidArgumentError(
            field, f"has a batch of {batch}; the model's max_batch_size is {max_batch_size}", reason="BATCH_TOO_LARGE"
        )
    if not 1 <= length <= max_length:
        raise InvalidArgumentError(
            field, f"has {length} pieces per row; the model takes 1..{max_length}", reason="TEXT_TOO_LONG"
        )
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgumentError(field, "has both contents and raw_input_contents; send one")
        if len(raw) != count * 8:
            raise InvalidArgumentError(field, f"has {len(raw)} raw bytes; shape {shape} of INT64 needs {count * 8}")
        return np.frombuffer(raw, dtype="<i8").astype(np.int64).reshape(shape)
    contents = tensor.contents
    others = [name for name, _ in contents.ListFields() if name.name != "int64_contents"]
    if others:
        raise InvalidArgumentError(field, f"has {others[0].name}; INT64 data goes in int64_contents")
    if len(contents.int64_contents) != count:
        raise InvalidArgumentError(
            field, f"has {len(contents.int64_contents)} values in int64_contents; shape {shape} needs {count}"
        )
    return np.asarray(contents.int64_contents, dtype=np.int64).reshape(shape)


def output_tensors(
    outputs: Sequence[tuple[str, np.ndarray]],
) -> tuple[list[oip.ModelInferResponse.InferOutputTensor], list[bytes]]:
    """Output metadata and raw little-endian bytes, in order (Triton answers with raw contents)."""
    tensors, raw = [], []
    for name, array in outputs:
        tensors.append(
            oip.ModelInferResponse.InferOutputTensor(name=name, datatype=OUTPUT_DATATYPE, shape=list(array.shape))
        )
        raw.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return tensors, raw
