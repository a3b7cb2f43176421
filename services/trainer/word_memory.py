"""How many of the texts a checkpoint was trained on held each word: the novelty signal's memory.

Counts are per text (document frequency), so a word repeated within one text counts once, and
they carry across runs with decay: a run's memory is `decay` times its base checkpoint's plus the
texts it trained on. A word seen once two slices ago (decay 0.5: weight 0.25) is as good as unseen.
At most MAX_WORDS words are kept (the most frequent), so the memory of a huge corpus stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .words import TextWords

# Words kept in a memory: 8 + 8 bytes each, 32 MB at most.
MAX_WORDS = 2_000_000


@dataclass(frozen=True)
class WordMemory:
    """Decayed text counts per word hash, and the decayed number of texts they come from."""

    hashes: np.ndarray  # (W,) uint64, ascending
    texts_with: np.ndarray  # (W,) float64, decayed number of texts holding the word
    texts: float  # decayed number of texts remembered

    @classmethod
    def empty(cls) -> WordMemory:
        return cls(np.empty(0, np.uint64), np.empty(0, np.float64), 0.0)

    @classmethod
    def of_texts(cls, words: TextWords) -> WordMemory:
        """The memory of these texts alone."""
        hashes, counts = words.document_frequency()
        return cls(hashes, counts, float(len(words)))._bounded()

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    def merged(self, newer: WordMemory, *, decay: float) -> WordMemory:
        """`decay` times this memory plus `newer` (the texts of the latest run, weight 1)."""
        hashes, inverse = np.unique(np.concatenate([self.hashes, newer.hashes]), return_inverse=True)
        counts = np.bincount(
            inverse, weights=np.concatenate([decay * self.texts_with, newer.texts_with]), minlength=hashes.size
        )
        return WordMemory(hashes, counts, decay * self.texts + newer.texts)._bounded()

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """(len(hashes),) float64 each word's decayed text count; 0 for a word never seen."""
        if not len(self):
            return np.zeros(hashes.shape[0])
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self) - 1)
        return np.where(self.hashes[at] == hashes, self.texts_with[at], 0.0)

    def _bounded(self) -> WordMemory:
        if len(self) <= MAX_WORDS:
            return self
        kept = np.sort(np.argsort(-self.texts_with, kind="stable")[:MAX_WORDS])
        return WordMemory(self.hashes[kept], self.texts_with[kept], self.texts)
