"""BERT masking: the fraction, the 80/10/10 corruption, and one prediction per row when scoring."""

from __future__ import annotations

import torch

from driftlm.services.trainer.masking import mask_batch

SPECIAL = torch.zeros(50, dtype=torch.bool)
SPECIAL[:5] = True  # [PAD] [UNK] [CLS] [SEP] [MASK]


def _batch(rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (rows, width), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return ids, torch.ones_like(ids)


def test_every_row_gets_a_prediction_when_scoring_sentences() -> None:
    ids, attention = _batch(rows=400, width=6, seed=0)  # 4 maskable pieces: 52% of rows draw none at 15%
    plain = mask_batch(
        ids, attention, special=SPECIAL, mask_id=4, fraction=0.15, generator=torch.Generator().manual_seed(1)
    )
    every = mask_batch(
        ids,
        attention,
        special=SPECIAL,
        mask_id=4,
        fraction=0.15,
        generator=torch.Generator().manual_seed(1),
        every_row=True,
    )
    assert (~plain.masked.any(dim=1)).sum() > 100
    assert every.masked.any(dim=1).all()
    assert (every.masked & ~plain.masked).sum(dim=1).max() == 1  # only rows that had none get one, and one only
    assert not every.masked[:, 0].any() and not every.masked[:, -1].any()  # never a special piece
    assert torch.equal(every.targets, ids[every.masked])


def test_a_row_of_specials_and_padding_stays_unmasked() -> None:
    ids = torch.tensor([[2, 3, 0, 0], [2, 9, 10, 3]])
    attention = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    masked = mask_batch(
        ids,
        attention,
        special=SPECIAL,
        mask_id=4,
        fraction=0.01,
        generator=torch.Generator().manual_seed(0),
        every_row=True,
    )
    assert not masked.masked[0].any() and masked.masked[1].sum() == 1
