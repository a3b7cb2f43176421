"""What a checkpoint remembers of each token's MLM loss, and how much a slice's loss varies when
nothing has changed: the trigger's memory.

At the end of a run, texts of its slices that it never trained on are masked and scored in eval
mode, as ScoreSlice scores a new slice, with several independent masks so that each piece is
predicted about once. Half of them (the reference) give each token's loss
statistics: occurrences scored, sum of losses, sum of squared losses. The other half (the
calibration) is scored against the reference, text by text, as a slice would be: the mean and
standard deviation of that per-text excess loss are what the trigger's score looks like on text of
the training period, so a threshold can be set for a chosen false-fire rate.

A token's expected loss is its reference mean shrunk towards the mean of all scored occurrences by
PRIOR_OCCURRENCES pseudo-occurrences: a token seen once or never is judged by the prior, not by one
noisy loss. The memory follows its checkpoint across vocab versions: kept pieces carry their
statistics to their new ids, added pieces start with none (the prior).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

# Pseudo-occurrences of the overall mean loss added to every token's statistics.
PRIOR_OCCURRENCES = 5.0


@dataclass(frozen=True)
class Calibration:
    """The trigger's score on held-out text of the training period (per-text mean excess, nats)."""

    null_mean: float = 0.0
    null_sd: float = 0.0
    # Calibration texts scored; 0 when the memory is not calibrated (an imported checkpoint).
    texts: int = 0
    # Mean and variance of the reference's losses: the prior of every token.
    overall_mean: float = 0.0
    overall_variance: float = 1.0


@dataclass
class LossMemory:
    """Per-token held-out loss statistics over a vocabulary of size V, and their calibration."""

    count: np.ndarray  # (V,) float64, occurrences scored
    total: np.ndarray  # (V,) float64, sum of losses (nats)
    total_squared: np.ndarray  # (V,) float64, sum of squared losses
    calibration: Calibration = field(default_factory=Calibration)

    @classmethod
    def empty(cls, vocab_size: int) -> LossMemory:
        """Nothing remembered yet (not calibrated)."""
        return cls(np.zeros(vocab_size), np.zeros(vocab_size), np.zeros(vocab_size))

    @classmethod
    def from_occurrences(cls, vocab_size: int, token_ids: np.ndarray, losses: np.ndarray) -> LossMemory:
        """The reference statistics of scored occurrences (not yet calibrated)."""
        memory = cls(
            np.bincount(token_ids, minlength=vocab_size).astype(np.float64),
            np.bincount(token_ids, weights=losses, minlength=vocab_size),
            np.bincount(token_ids, weights=losses * losses, minlength=vocab_size),
        )
        if losses.size:
            memory.calibration = Calibration(
                overall_mean=float(losses.mean()), overall_variance=float(max(losses.var(), 1e-6))
            )
        return memory

    @property
    def calibrated(self) -> bool:
        """Whether the trigger can decide against this memory."""
        return self.calibration.texts >= 2 and self.calibration.null_sd > 0

    def expected(self) -> np.ndarray:
        """(V,) each token's expected loss: its mean shrunk towards the overall mean."""
        prior = self.calibration.overall_mean
        return (self.total + PRIOR_OCCURRENCES * prior) / (self.count + PRIOR_OCCURRENCES)

    def variance(self) -> np.ndarray:
        """(V,) each token's loss variance, shrunk towards the overall variance the same way."""
        with np.errstate(invalid="ignore", divide="ignore"):
            own = np.where(
                self.count > 0,
                self.total_squared / np.maximum(self.count, 1) - (self.total / np.maximum(self.count, 1)) ** 2,
                0.0,
            )
        prior = self.calibration.overall_variance
        return (np.maximum(own, 0.0) * self.count + PRIOR_OCCURRENCES * prior) / (self.count + PRIOR_OCCURRENCES)

    def with_calibration(self, excess_per_text: np.ndarray) -> LossMemory:
        """This memory, calibrated by the per-text excess losses of held-out texts scored against it."""
        texts = int(excess_per_text.size)
        null_sd = float(excess_per_text.std(ddof=1)) if texts >= 2 else 0.0
        calibration = Calibration(
            null_mean=float(excess_per_text.mean()) if texts else 0.0,
            null_sd=null_sd if math.isfinite(null_sd) else 0.0,
            texts=texts,
            overall_mean=self.calibration.overall_mean,
            overall_variance=self.calibration.overall_variance,
        )
        return LossMemory(self.count, self.total, self.total_squared, calibration)

    def moved(self, old_ids_of_new: np.ndarray) -> LossMemory:
        """The memory on another vocabulary: row i comes from old row old_ids_of_new[i] (-1: empty)."""
        kept = old_ids_of_new >= 0
        moved = LossMemory.empty(old_ids_of_new.shape[0])
        for name in ("count", "total", "total_squared"):
            getattr(moved, name)[kept] = getattr(self, name)[old_ids_of_new[kept]]
        moved.calibration = self.calibration
        return moved

    def save(self, path: Path) -> None:
        """Write as safetensors (never pickle)."""
        c = self.calibration
        save_file(
            {
                "count": self.count,
                "total": self.total,
                "total_squared": self.total_squared,
                "calibration": np.array(
                    [c.null_mean, c.null_sd, float(c.texts), c.overall_mean, c.overall_variance], dtype=np.float64
                ),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: Path) -> LossMemory:
        """Read what save wrote; a memory from before calibration existed loads as empty."""
        arrays = load_file(str(path))
        if "calibration" not in arrays:  # the training-time memory of driftlm 0.1: not comparable
            return cls.empty(arrays["weight"].shape[0])
        null_mean, null_sd, texts, overall_mean, overall_variance = arrays["calibration"].tolist()
        return cls(
            arrays["count"],
            arrays["total"],
            arrays["total_squared"],
            Calibration(null_mean, null_sd, int(texts), overall_mean, overall_variance),
        )
