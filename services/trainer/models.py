"""Masked language models from transformers, and the forward pass that only pays for what it uses.

The MLM head's vocabulary projection (H x V per position) costs as much as the whole encoder of a
small BERT; training, scoring and distillation only need it at the masked positions, so
`masked_logits` runs the encoder on every position and the head on the masked ones alone.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PreTrainedModel
from transformers.utils import logging as transformers_logging

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


def model_from_config(config_json: str, *, vocab_size: int, seed: int) -> PreTrainedModel:
    """A freshly initialised masked LM from a transformers config (JSON with `model_type`)."""
    settings: dict[str, Any] = json.loads(config_json)
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
