"""The training trigger: does a new slice surprise the model, token by token?

The slice is masked and scored (MLM loss per masked occurrence, eval mode). For every token, the
mean loss of its occurrences is compared with what the checkpoint's loss memory remembers:
z = (slice mean - remembered mean) / (remembered std / sqrt(occurrences)). A token spikes when z
exceeds spike_z; a token the memory has never seen (a piece a vocab update just added, or one
training never met) counts as spiking too. The trigger fires when the spiking occurrences exceed
fire_fraction of all scored occurrences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from driftlm.services.runtime.errors import InvalidArgumentError

from .data import TokenizedPool
from .loss_memory import NOVEL_WEIGHT, LossMemory
from .masking import mask_batch
from .models import autocast, masked_logits

# A remembered standard deviation is never taken below this (nats): a token seen a few times
# with near-identical losses must not make every small change a spike.
_MIN_STD = 0.5
_BATCH = 64


@dataclass(frozen=True)
class TriggerOptions:
    """How ScoreSlice samples, masks and decides; see trigger_options for the ranges."""

    max_texts: int = 2000
    # Pieces per text; 0 means min(128, the model's positions).
    max_length: int = 0
    spike_z: float = 4.0
    fire_fraction: float = 0.05
    mask_fraction: float = 0.15
    seed: int = 0
    top_spikes: int = 20


def trigger_options(
    *,
    max_texts: int = 0,
    max_length: int = 0,
    spike_z: float = 0.0,
    fire_fraction: float = 0.0,
    mask_fraction: float = 0.0,
    seed: int = 0,
    top_spikes: int = 0,
) -> TriggerOptions:
    """The options a request asks for, 0 meaning the default.

    Raises:
        InvalidArgumentError: a value out of its range; the message says the range and the default.
    """
    default = TriggerOptions()
    options = TriggerOptions(
        max_texts=max_texts or default.max_texts,
        max_length=max_length,
        spike_z=spike_z or default.spike_z,
        fire_fraction=fire_fraction or default.fire_fraction,
        mask_fraction=mask_fraction or default.mask_fraction,
        seed=seed,
        top_spikes=top_spikes or default.top_spikes,
    )
    checks = [
        ("max_texts", 1 <= options.max_texts <= 1_000_000, "[1, 1000000]", default.max_texts, max_texts),
        ("max_length", options.max_length == 0 or 4 <= options.max_length <= 8192, "[4, 8192]", 128, max_length),
        ("spike_z", math.isfinite(options.spike_z) and options.spike_z > 0, "(0, inf)", default.spike_z, spike_z),
        ("fire_fraction", 0 <= options.fire_fraction <= 1, "[0, 1]", default.fire_fraction, fire_fraction),
        ("mask_fraction", 0 < options.mask_fraction < 1, "(0, 1)", default.mask_fraction, mask_fraction),
        ("top_spikes", 1 <= options.top_spikes <= 10_000, "[1, 10000]", default.top_spikes, top_spikes),
    ]
    for field, inside, allowed, fallback, given in checks:
        if not inside:
            raise InvalidArgumentError(field, f"must be in {allowed} (0 means {fallback}), got {given}")
    return options


@dataclass(frozen=True)
class Spike:
    """A token whose loss spiked."""

    token_id: int
    slice_loss: float
    remembered_loss: float
    z: float
    occurrences: int


@dataclass(frozen=True)
class SliceScore:
    """The trigger's view of a slice."""

    slice_loss: float
    remembered_loss: float
    spike_fraction: float
    novel_fraction: float
    fire: bool
    spikes: list[Spike]
    scored_tokens: int


@torch.no_grad()
def token_losses(
    model: PreTrainedModel,
    pool: TokenizedPool,
    *,
    special: torch.Tensor,
    mask_id: int,
    mask_fraction: float,
    seed: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, losses) of every masked occurrence of the pool, in eval mode."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids, losses = [], []
    for start in range(0, len(pool), _BATCH):
        input_ids, attention = pool.batch(list(range(start, min(start + _BATCH, len(pool)))))
        masked = mask_batch(
            input_ids, attention, special=special, mask_id=mask_id, fraction=mask_fraction, generator=generator
        )
        with autocast(device):
            logits = masked_logits(
                model, masked.input_ids.to(device), masked.attention_mask.to(device), masked.masked.to(device)
            )
        losses.append(F.cross_entropy(logits.float(), masked.targets.to(device), reduction="none").cpu().numpy())
        ids.append(masked.targets.numpy())
    empty = np.empty(0)
    return (np.concatenate(ids) if ids else empty.astype(np.int64)), (np.concatenate(losses) if losses else empty)


def score_slice(
    token_ids: np.ndarray, losses: np.ndarray, memory: LossMemory, *, spike_z: float, fire_fraction: float, top: int
) -> SliceScore:
    """Compare a slice's per-token losses with the memory; see the module docstring."""
    if token_ids.size == 0:
        return SliceScore(0.0, 0.0, 0.0, 0.0, False, [], 0)
    present, inverse, occurrences = np.unique(token_ids, return_inverse=True, return_counts=True)
    slice_mean = np.bincount(inverse, weights=losses) / occurrences
    remembered_mean = memory.mean()[present]
    remembered_std = np.maximum(np.sqrt(memory.variance()[present]), _MIN_STD)
    novel = memory.weight[present] < NOVEL_WEIGHT
    with np.errstate(invalid="ignore"):
        z = np.where(novel, np.inf, (slice_mean - remembered_mean) / (remembered_std / np.sqrt(occurrences)))
    spiking = novel | (z > spike_z)
    total = int(occurrences.sum())
    known = ~novel
    order = np.argsort(-np.where(spiking, z, -np.inf), kind="stable")[: min(top, int(spiking.sum()))]
    spikes = [
        Spike(int(present[i]), float(slice_mean[i]), float(remembered_mean[i]), float(z[i]), int(occurrences[i]))
        for i in order
    ]
    spike_fraction = float(occurrences[spiking].sum()) / total
    return SliceScore(
        slice_loss=float(losses.mean()),
        remembered_loss=float((remembered_mean[known] * occurrences[known]).sum() / occurrences[known].sum())
        if known.any()
        else float("nan"),
        spike_fraction=spike_fraction,
        novel_fraction=float(occurrences[novel].sum()) / total,
        fire=spike_fraction > fire_fraction,
        spikes=spikes,
        scored_tokens=total,
    )


def sample_texts(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most `limit` of the non-empty texts, drawn uniformly, in their order."""
    kept = [t for t in texts if t.strip()]
    if len(kept) <= limit:
        return kept
    chosen = np.sort(np.random.default_rng(seed).choice(len(kept), limit, replace=False))
    return [kept[i] for i in chosen]
