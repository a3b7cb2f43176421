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


# Bytes a piece takes in the answer: an int32 id, a uint8 mask and two int32 offsets.
BYTES_PER_PIECE = 13


class BatchTooLargeError(ValueError):
    """The answer would hold more pieces than the service sends in one message."""


def tokenize_batch(
    tokenizer: Tokenizer, texts: list[str], *, pad: bool, add_special_tokens: bool, pad_id: int, max_pieces: int
) -> TokenizedBatch:
    """Encode `texts` in one Rust batch; pad with pad_id (mask 0, offsets (0, 0)) when asked.

    Raises:
        BatchTooLargeError: the answer (padded: texts x longest) holds more than `max_pieces` pieces;
            checked before any padded array is allocated (one long text among 10,000 empty ones
            once allocated gigabytes).
    """
    encodings = tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int32, count=len(encodings))
    cells = len(texts) * int(lengths.max(initial=0)) if pad else int(lengths.sum())
    if cells > max_pieces:
        shape = (
            f"{len(texts)} texts padded to the longest ({int(lengths.max(initial=0))} pieces)" if pad else "the texts"
        )
        raise BatchTooLargeError(
            f"{shape} make {cells:,} pieces, more than the {max_pieces:,} one answer can carry (--max-message-mb); "
            "send fewer or shorter texts, set max_length, or ask for unpadded output"
        )
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
