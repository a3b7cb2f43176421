"""Masked occurrences scored in eval mode: what the trigger and its memory are made of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from driftlm.services.runtime.calls import stop_if_abandoned

from .data import TokenizedPool
from .masking import mask_batch
from .models import autocast, masked_logits

_BATCH = 64


@dataclass(frozen=True)
class Occurrences:
    """Masked occurrences scored: (M,) token ids, losses in nats, and the text each belongs to."""

    token_ids: np.ndarray
    losses: np.ndarray
    texts: np.ndarray

    @classmethod
    def none(cls) -> Occurrences:
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))

    def subset(self, texts: np.ndarray) -> Occurrences:
        """The occurrences of some texts only (their text numbers unchanged)."""
        keep = np.isin(self.texts, texts)
        return Occurrences(self.token_ids[keep], self.losses[keep], self.texts[keep])


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
    rows: Sequence[int] | None = None,
    passes: int = 1,
) -> Occurrences:
    """Every masked occurrence of the pool's texts (or of `rows`), scored in eval mode; every text
    with a piece to predict gets at least one per pass. Each of `passes` draws its own mask.

    Texts are batched in order of length, so that a batch pads to about its own texts' length
    (on texts of mixed lengths, random batches compute mostly padding)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    chosen = np.arange(len(pool)) if rows is None else np.asarray(rows, dtype=np.int64)
    chosen = chosen[np.argsort(pool.lengths[chosen], kind="stable")]
    ids, losses, texts = [], [], []
    for start in (start for _ in range(passes) for start in range(0, len(chosen), _BATCH)):
        stop_if_abandoned()  # the caller cancelled, or its deadline passed
        batch = chosen[start : start + _BATCH]
        input_ids, attention = pool.batch(batch.tolist())
        masked = mask_batch(
            input_ids,
            attention,
            special=special,
            mask_id=mask_id,
            fraction=mask_fraction,
            generator=generator,
            every_row=True,
        )
        with autocast(device):
            logits = masked_logits(
                model, masked.input_ids.to(device), masked.attention_mask.to(device), masked.masked.to(device)
            )
        losses.append(F.cross_entropy(logits.float(), masked.targets.to(device), reduction="none").cpu().numpy())
        ids.append(masked.targets.numpy())
        texts.append(batch[torch.nonzero(masked.masked)[:, 0].numpy()])
    if not ids:
        return Occurrences.none()
    return Occurrences(np.concatenate(ids), np.concatenate(losses).astype(np.float64), np.concatenate(texts))
