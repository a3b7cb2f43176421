"""Masked language models from transformers, and the forward pass that only pays for what it uses.

The MLM head's vocabulary projection (H x V per position) costs as much as the whole encoder of a
small BERT; training, scoring and distillation only need it at the masked positions, so
`masked_logits` runs the encoder on every position and the head on the masked ones alone.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PreTrainedModel
from transformers.utils import logging as transformers_logging

from driftlm.services.runtime.calls import stop_if_abandoned

# A service logs JSON lines; transformers' tqdm bars (loading and writing shards) would garble them.
transformers_logging.disable_progress_bar()


def pick_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA; full precision on the CPU (where bf16 matmuls are slow)."""
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def load_model(source: str | Path) -> PreTrainedModel:
    """A masked LM from a local directory or a hub id; a missing MLM head is initialised fresh."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # "newly initialized" head weights are expected
    try:
        model = AutoModelForMaskedLM.from_pretrained(str(source), dtype=torch.float32)
    finally:
        transformers_logging.set_verbosity(verbosity)
    return model


def import_model(source: str | Path) -> tuple[PreTrainedModel, bool]:
    """load_model, and whether the source had no MLM head (a sentence encoder): the head is new."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(str(source), dtype=torch.float32, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    head_names = ("cls.", "lm_head.")
    return model, any(str(key).startswith(head_names) for key in info["missing_keys"])


def head_parameters(model: PreTrainedModel) -> list[nn.Parameter]:
    """The MLM head's own parameters: its transform and bias, not the decoder tied to the input
    embeddings. Raises ValueError for an architecture whose head this does not know."""
    head = mlm_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no MLM head this trainer knows (BERT's cls, RoBERTa's lm_head)")
    tied = embedding_matrix(model)
    return [p for p in head.parameters() if p is not tied]


# The size fields of a BERT-like config and the largest each may be (well past any released model).
_SIZE_LIMITS = {
    "hidden_size": 16_384,
    "num_hidden_layers": 128,
    "num_attention_heads": 256,
    "intermediate_size": 65_536,
    "max_position_embeddings": 65_536,
    "type_vocab_size": 64,
}
# A model that would not fit any machine this runs on: refused before torch allocates it.
MAX_CONFIG_PARAMETERS = 20_000_000_000
# Hugging Face repository ids: `name` or `org/name`, never a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")


class ModelConfigError(ValueError):
    """A model config that is not a JSON object of sane sizes."""


class ModelConfigTooLargeError(ModelConfigError):
    """A sane config whose model would not fit in the memory there is."""


def checked_config(config_json: str, *, vocab_size: int, max_parameters: int = MAX_CONFIG_PARAMETERS) -> dict[str, Any]:
    """The config as a dict, its sizes checked: positive integers within _SIZE_LIMITS, heads
    dividing the hidden size, and fewer than MAX_CONFIG_PARAMETERS parameters in all.

    Raises:
        ModelConfigError: not JSON, not an object, or a size that is wrong or absurd.
    """
    try:
        settings = json.loads(config_json)
    except json.JSONDecodeError as error:
        raise ModelConfigError(f"not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(settings, dict):
        raise ModelConfigError(f"must be a JSON object, got {type(settings).__name__}")
    if not isinstance(settings.get("model_type", "bert"), str):
        raise ModelConfigError('model_type must be a string such as "bert"')
    for key, limit in _SIZE_LIMITS.items():
        value = settings.get(key)
        if value is None and key not in settings:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise ModelConfigError(f"{key} must be an integer in [1, {limit}], got {value!r}")
    hidden = settings.get("hidden_size", 768)
    heads = settings.get("num_attention_heads", 12)
    if hidden % heads:
        raise ModelConfigError(f"hidden_size {hidden} must be a multiple of num_attention_heads {heads}")
    layers = settings.get("num_hidden_layers", 12)
    intermediate = settings.get("intermediate_size", 4 * hidden)
    parameters = layers * (4 * hidden * hidden + 2 * hidden * intermediate) + vocab_size * hidden
    if parameters > min(max_parameters, MAX_CONFIG_PARAMETERS):
        raise ModelConfigTooLargeError(
            f"describes about {parameters:,} parameters; this service has room for "
            f"{min(max_parameters, MAX_CONFIG_PARAMETERS):,}"
        )
    return settings


def is_hub_id(value: str) -> bool:
    """Whether `value` is a hub repository id (`bert-base-uncased`, `org/name`), not a path."""
    return _HUB_ID.fullmatch(value) is not None and ".." not in value


def model_from_config(
    config_json: str, *, vocab_size: int, seed: int, max_parameters: int = MAX_CONFIG_PARAMETERS
) -> PreTrainedModel:
    """A freshly initialised masked LM from a transformers config (JSON with `model_type`).

    Raises:
        ModelConfigError: see checked_config.
        ValueError, KeyError, TypeError: transformers refuses the config.
    """
    settings = checked_config(config_json, vocab_size=vocab_size, max_parameters=max_parameters)
    model_type = settings.pop("model_type", "bert")
    config = AutoConfig.for_model(model_type, **{**settings, "vocab_size": vocab_size})
    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(config)


def mlm_head(model: PreTrainedModel) -> nn.Module | None:
    """The module mapping hidden states to vocabulary logits (BERT's `cls`, RoBERTa's `lm_head`)."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def output_bias(model: PreTrainedModel) -> torch.Tensor | None:
    """The per-piece bias of the vocabulary projection, when the model has one."""
    decoder = model.get_output_embeddings()
    bias = getattr(decoder, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def encode(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, T, H)."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def masked_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """Vocabulary logits (M, V) at the M positions where `masked` (B, T) is True."""
    head = mlm_head(model)
    if head is None:  # an architecture we do not know: pay for every position
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[masked]
    return head(encode(model, input_ids, attention_mask)[masked])


class MaskedLM(nn.Module):
    """masked_logits as a module, so DistributedDataParallel can wrap the training forward pass."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return masked_logits(self.model, input_ids, attention_mask, masked)


def cls_embeddings(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first position's hidden state (B, H): the sentence embedding the paper compares."""
    return encode(model, input_ids, attention_mask)[:, 0]


@torch.no_grad()
def mean_embeddings(
    model: PreTrainedModel,
    tokenizer_json: str,
    texts: list[str],
    *,
    special: torch.Tensor,
    max_length: int,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """(N, H) float32: each text's mean last hidden state over its non-special pieces (zeros when
    it has none), texts of similar length batched together."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(texts) if texts else []
    hidden = int(model.config.hidden_size)
    out = np.zeros((len(texts), hidden), dtype=np.float32)
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
    for start in range(0, len(order), batch_size):
        stop_if_abandoned()  # the caller cancelled, or its deadline passed
        chunk = order[start : start + batch_size]
        width = max(len(encodings[i].ids) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, index in enumerate(chunk):
            ids[row, : len(encodings[index].ids)] = torch.tensor(encodings[index].ids)
            attention[row, : len(encodings[index].ids)] = 1
        with autocast(device):
            states = encode(model, ids.to(device), attention.to(device)).float()
        keep = (attention.bool() & ~special[ids]).to(device).unsqueeze(-1)
        sums, counts = (states * keep).sum(1), keep.sum(1).clamp(min=1)
        out[chunk] = (sums / counts).cpu().numpy()
    return out


def embedding_matrix(model: PreTrainedModel) -> torch.Tensor:
    """The input embedding weight (V, H), tied to the MLM decoder."""
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return weight


def on_device(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """The model moved to `device` (transformers' own `to` is typed for dtype casts only)."""
    moved: PreTrainedModel = nn.Module.to(model, device)
    return moved


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (tied ones once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
