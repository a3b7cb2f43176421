"""Training text as token ids: slices read once, tokenized once, batched by index."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenizedPool:
    """Sentences as token ids (specials included), addressable by index, and their texts."""

    ids: list[np.ndarray]  # each (length,) int64
    pad_id: int
    # texts[i] is what ids[i] tokenizes (empty when the pool was built from ids alone).
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) pieces per sentence."""
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def flat_ids(self, indices: Sequence[int]) -> np.ndarray:
        """The chosen sentences' ids concatenated (for the token-shift strategy)."""
        return np.concatenate([self.ids[i] for i in indices]) if len(indices) else np.empty(0, dtype=np.int64)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), (B, T) int64, padded to the longest chosen sentence."""
        width = max((len(self.ids[i]) for i in indices), default=0)
        input_ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(indices), width), dtype=torch.long)
        for row, index in enumerate(indices):
            sentence = torch.from_numpy(self.ids[index])
            input_ids[row, : len(sentence)] = sentence
            attention[row, : len(sentence)] = 1
        return input_ids, attention


def tokenize_texts(tokenizer_json: str, texts: Iterable[str], *, max_length: int, pad_id: int) -> TokenizedPool:
    """Tokenize with the vocab version's tokenizer, truncated to max_length; empty texts dropped."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    kept = [text for text in texts if text.strip()]
    encodings = tokenizer.encode_batch(kept) if kept else []
    return TokenizedPool([np.asarray(e.ids, dtype=np.int64) for e in encodings], pad_id, kept)
