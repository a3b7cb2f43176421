"""BERT's masking: 15% of the real pieces are predicted; of those 80% become [MASK], 10% a random
piece, 10% stay. Seeded per step, so a resumed run masks exactly as the uninterrupted one."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskedBatch:
    """A batch ready for the MLM loss."""

    input_ids: torch.Tensor  # (B, T) with masks applied
    attention_mask: torch.Tensor  # (B, T)
    masked: torch.Tensor  # (B, T) bool: positions to predict
    targets: torch.Tensor  # (M,) original ids at the masked positions
    original_ids: torch.Tensor  # (B, T) before masking

    def rows(self, chosen: slice) -> MaskedBatch:
        """The same batch restricted to some rows (a rank's share)."""
        original = self.original_ids[chosen]
        masked = self.masked[chosen]
        return MaskedBatch(self.input_ids[chosen], self.attention_mask[chosen], masked, original[masked], original)

    def to(self, device: torch.device) -> MaskedBatch:
        """On another device."""
        return MaskedBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.masked, self.targets, self.original_ids))
        )


def mask_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    special: torch.Tensor,
    mask_id: int,
    fraction: float,
    generator: torch.Generator,
    every_row: bool = False,
) -> MaskedBatch:
    """Choose and corrupt the positions to predict; at least one per batch when any can be, and
    with every_row at least one per row (scoring each sentence needs a prediction in each).

    `special` (V,) bool marks pieces never masked or drawn as random replacements ([CLS], [PAD]...).
    """
    candidates = attention_mask.bool() & ~special[input_ids]
    draws = torch.rand(input_ids.shape, generator=generator)
    masked = candidates & (draws < fraction)
    if every_row:  # rows that drew none mask the candidate with the smallest draw
        empty = ~masked.any(dim=1) & candidates.any(dim=1)
        first = torch.where(candidates, draws, torch.inf).argmin(dim=1)
        masked[empty.nonzero().flatten(), first[empty]] = True
    if not masked.any() and candidates.any():  # tiny batches: still one position to learn from
        flat = torch.nonzero(candidates.flatten()).flatten()
        masked.view(-1)[flat[torch.randint(len(flat), (1,), generator=generator)]] = True
    targets = input_ids[masked]
    corrupted = input_ids.clone()
    action = torch.rand(input_ids.shape, generator=generator)
    corrupted[masked & (action < 0.8)] = mask_id
    replace = masked & (action >= 0.8) & (action < 0.9)
    allowed = torch.nonzero(~special).flatten()
    corrupted[replace] = allowed[torch.randint(len(allowed), (int(replace.sum()),), generator=generator)]
    return MaskedBatch(corrupted, attention_mask, masked, targets, input_ids)
