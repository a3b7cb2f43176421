"""Tokenizing a batch for a caller: ids, attention masks and character offsets as arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenizedBatch:
    """Padded: (B, T) arrays; unpadded: every text's pieces concatenated, split by `lengths`."""

    input_ids: np.ndarray  # int32
    attention_mask: np.ndarray  # uint8
    lengths: np.ndarray  # (B,) int32
    offsets: np.ndarray  # int32, input_ids' layout + (2,)


def tokenize_batch(
    tokenizer: Tokenizer, texts: list[str], *, pad: bool, add_special_tokens: bool, pad_id: int
) -> TokenizedBatch:
    """Encode `texts` in one Rust batch; pad with pad_id (mask 0, offsets (0, 0)) when asked."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int32, count=len(encodings))
    if not pad:
        total = int(lengths.sum())
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32, count=total)
        offsets = np.fromiter(
            (o for e in encodings for pair in e.offsets for o in pair), dtype=np.int32, count=2 * total
        )
        return TokenizedBatch(ids, np.ones(total, dtype=np.uint8), lengths, offsets.reshape(total, 2))
    width = int(lengths.max(initial=0))
    ids = np.full((len(texts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(texts), width), dtype=np.uint8)
    offsets = np.zeros((len(texts), width, 2), dtype=np.int32)
    for row, (encoding, length) in enumerate(zip(encodings, lengths.tolist(), strict=True)):
        if length:
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
            offsets[row, :length] = encoding.offsets
    return TokenizedBatch(ids, mask, lengths, offsets)
