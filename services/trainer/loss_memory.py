"""Each token's remembered MLM loss: exponentially decayed count, mean and variance.

Every training step first decays what is remembered (by `decay`, so old data fades: about 0.37
of a step's weight is left 1,000 steps later), then adds the step's per-occurrence losses. Three
(V,) float64 sums are enough: weight, sum of losses, sum of squared losses. The memory belongs to
a checkpoint and follows it across vocab versions: kept pieces carry their statistics to their new
ids, added pieces start empty, so the trigger sees them as novel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

DEFAULT_DECAY = 0.999
# Below this remembered weight a token counts as never seen.
NOVEL_WEIGHT = 1.0


@dataclass
class LossMemory:
    """Decayed per-token loss statistics over a vocabulary of size V."""

    weight: np.ndarray  # (V,) float64
    total: np.ndarray  # (V,) float64, sum of losses
    total_squared: np.ndarray  # (V,) float64, sum of squared losses
    decay: float = DEFAULT_DECAY

    @classmethod
    def empty(cls, vocab_size: int, decay: float = DEFAULT_DECAY) -> LossMemory:
        """Nothing remembered yet."""
        return cls(np.zeros(vocab_size), np.zeros(vocab_size), np.zeros(vocab_size), decay)

    def remember(self, token_ids: np.ndarray, losses: np.ndarray) -> None:
        """Decay, then add one step's losses (nats) of the given token occurrences."""
        for array in (self.weight, self.total, self.total_squared):
            array *= self.decay
        size = self.weight.shape[0]
        self.weight += np.bincount(token_ids, minlength=size)
        self.total += np.bincount(token_ids, weights=losses, minlength=size)
        self.total_squared += np.bincount(token_ids, weights=losses * losses, minlength=size)

    def mean(self) -> np.ndarray:
        """(V,) remembered mean loss; NaN where nothing is remembered."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.weight >= NOVEL_WEIGHT, self.total / self.weight, np.nan)

    def variance(self) -> np.ndarray:
        """(V,) remembered variance of the loss; NaN where nothing is remembered."""
        mean = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.maximum(self.total_squared / self.weight - mean * mean, 0.0)

    def moved(self, old_ids_of_new: np.ndarray) -> LossMemory:
        """The memory on another vocabulary: row i comes from old row old_ids_of_new[i] (-1: empty)."""
        kept = old_ids_of_new >= 0
        moved = LossMemory.empty(old_ids_of_new.shape[0], self.decay)
        for name in ("weight", "total", "total_squared"):
            getattr(moved, name)[kept] = getattr(self, name)[old_ids_of_new[kept]]
        return moved

    def save(self, path: Path) -> None:
        """Write as safetensors (never pickle)."""
        save_file(
            {
                "weight": self.weight,
                "total": self.total,
                "total_squared": self.total_squared,
                "decay": np.array([self.decay]),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: Path) -> LossMemory:
        """Read what save wrote."""
        arrays = load_file(str(path))
        return cls(arrays["weight"], arrays["total"], arrays["total_squared"], float(arrays["decay"][0]))
