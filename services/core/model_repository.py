"""A model repository in the layout NVIDIA Triton reads, and the driftlm inference service too.

    <repository>/<model>/config.pbtxt            platform onnxruntime_onnx, inputs, outputs, batching
    <repository>/<model>/<version>/model.onnx
    <repository>/<model>/<version>/tokenizer.json, tokenizer_config.json, special_tokens_map.json,
                                   vocab.txt, config.json   (the version's own vocabulary and model
                                   config: the directory also loads with transformers / Optimum)

Versions are positive integers; each appears whole (a staged directory renamed into place) and is
never rewritten, so a version is always served with its own tokenizer. All versions of a model
share its config.pbtxt, hence its vocabulary size and hidden size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from driftlm.services.core import store

# Model names: Triton takes any directory name; ours are plain so that they are safe as one.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Requests merged by the dynamic batcher, and the longest a request waits for company.
MAX_BATCH_SIZE = 32
MAX_QUEUE_DELAY_US = 2000
# The graph's inputs and outputs, in order (export.py writes them; the inference service checks them).
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("logits", "cls_embedding", "last_hidden_state")


class ModelShapeMismatchError(ValueError):
    """The model already holds versions of another vocabulary or hidden size."""


@dataclass(frozen=True)
class ModelShape:
    """What a model's config.pbtxt fixes for all of its versions."""

    vocab_size: int
    hidden_size: int


def is_model_name(name: str) -> bool:
    """Whether `name` can name a model directory."""
    return _MODEL_NAME.fullmatch(name) is not None and ".." not in name


def config_pbtxt(name: str, shape: ModelShape) -> str:
    """The model's Triton configuration: batched int64 ids and mask in (sequence length dynamic),
    fp32 logits (B, T, V), [CLS] embedding (B, H) and last hidden state (B, T, H) out, dynamic
    batching; the newest version is served, so loading a new one retires the old (hot swap)."""
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{ name: "input_ids", data_type: TYPE_INT64, dims: [ -1 ] }},
  {{ name: "attention_mask", data_type: TYPE_INT64, dims: [ -1 ] }}
]
output [
  {{ name: "logits", data_type: TYPE_FP32, dims: [ -1, {shape.vocab_size} ] }},
  {{ name: "cls_embedding", data_type: TYPE_FP32, dims: [ {shape.hidden_size} ] }},
  {{ name: "last_hidden_state", data_type: TYPE_FP32, dims: [ -1, {shape.hidden_size} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}
"""


# Versions are positive and below 2**31, as Triton's clients read them; a directory named with a
# larger number is not a version (driftlm 0.2 accepted 2**63 - 1, and every later export failed).
MAX_VERSION = 2**31 - 1


def versions(repository: Path, name: str) -> list[int]:
    """The model's published versions, ascending."""
    directory = repository / name
    if not directory.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in directory.iterdir()
        if entry.name.isdecimal() and entry.is_dir() and 0 < int(entry.name) <= MAX_VERSION
    )


def prepare_model(repository: Path, name: str, shape: ModelShape) -> Path:
    """The model's directory with its config.pbtxt, written when the model is new.

    Raises:
        ModelShapeMismatchError: the model exists with another shape (its versions would not fit
            one config).
    """
    directory = repository / name
    config = directory / "config.pbtxt"
    wanted = config_pbtxt(name, shape)
    if config.is_file():
        if config.read_text(encoding="utf-8") != wanted:
            raise ModelShapeMismatchError(
                f"model {name} already serves another vocabulary or hidden size than this checkpoint "
                f"({shape.vocab_size} pieces, hidden size {shape.hidden_size}); export under another model name"
            )
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    store.write_bytes_atomically(config, wanted.encode("utf-8"))
    return directory
