"""What a checkpoint remembers of the text it was trained on, and how a slice of that same period
looks against it: the trigger's memory.

Three parts, all mergeable sums, so that a run's memory is `decay` times its base checkpoint's plus
what the run itself saw (carried across vocabulary updates: kept pieces take their rows along,
added pieces start empty):

- per token, the MLM losses of its masked occurrences in every text the run trained on, scored in
  eval mode after training (count, sum, sum of squares);
- per word, how many of those texts hold it (word_memory.py);
- the calibration: what the trigger's statistics look like on text of the training period that
  the memory does not hold. The loss statistics come from held-out texts (the model never trained
  on them either, so their loss is what a new slice of the same period would show); the novelty
  statistic comes from the trained texts themselves, each judged against the memory of all the
  others (leave one out), which is exact for exchangeable texts and costs no held-out text.

A token's expected loss is its mean shrunk by PRIOR_OCCURRENCES pseudo-occurrences towards the
mean of the tokens of its frequency class: a token seen once or never is judged by the tokens seen
about as rarely, not by one noisy loss, nor by the common tokens, which are easier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .word_memory import WordMemory

# Pseudo-occurrences of the overall mean loss added to every token's statistics.
PRIOR_OCCURRENCES = 5.0


@dataclass(frozen=True)
class Calibration:
    """The trigger's statistics on text of the training period that the memory does not hold."""

    # Per-text mean excess loss of held-out texts over their tokens' expectations (nats).
    null_mean: float = 0.0
    null_sd: float = 0.0
    # Held-out texts scored; 0 when the memory is not calibrated (an imported checkpoint).
    texts: int = 0
    # Mean and variance of the remembered losses: the prior of every token.
    overall_mean: float = 0.0
    overall_variance: float = 1.0
    # Mean excess of a held-out occurrence over its token's expectation: how much better the model
    # does on text it trained on (nats). Per-token tests subtract it.
    token_offset: float = 0.0
    # How much wider per-token z spread on held-out text than a standard normal (genomic control,
    # median of z^2 over its expectation), >= 1. Per-token z are divided by its square root.
    token_inflation: float = 1.0
    # Per-text share of words the memory has not seen, leave-one-out over the trained texts.
    novelty_mean: float = 0.0
    novelty_sd: float = 0.0
    novelty_texts: int = 0

    def to_array(self) -> np.ndarray:
        return np.array(
            [
                self.null_mean,
                self.null_sd,
                float(self.texts),
                self.overall_mean,
                self.overall_variance,
                self.token_offset,
                self.token_inflation,
                self.novelty_mean,
                self.novelty_sd,
                float(self.novelty_texts),
            ],
            dtype=np.float64,
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> Calibration:
        """The inverse of to_array; a memory written before novelty existed has 5 values."""
        given = values.tolist()
        v = given + cls().to_array().tolist()[len(given) :]
        return cls(v[0], v[1], int(v[2]), v[3], v[4], v[5], v[6], v[7], v[8], int(v[9]))


@dataclass
class LossMemory:
    """Per-token loss statistics over a vocabulary of size V, per-word text counts, and their
    calibration."""

    count: np.ndarray  # (V,) float64, occurrences scored (decayed)
    total: np.ndarray  # (V,) float64, sum of losses (nats)
    total_squared: np.ndarray  # (V,) float64, sum of squared losses
    words: WordMemory = field(default_factory=WordMemory.empty)
    calibration: Calibration = field(default_factory=Calibration)

    @classmethod
    def empty(cls, vocab_size: int) -> LossMemory:
        """Nothing remembered yet (not calibrated)."""
        return cls(np.zeros(vocab_size), np.zeros(vocab_size), np.zeros(vocab_size))

    @classmethod
    def from_occurrences(
        cls, vocab_size: int, token_ids: np.ndarray, losses: np.ndarray, words: WordMemory | None = None
    ) -> LossMemory:
        """The statistics of scored occurrences (and the texts' words), not yet calibrated."""
        memory = cls(
            np.bincount(token_ids, minlength=vocab_size).astype(np.float64),
            np.bincount(token_ids, weights=losses, minlength=vocab_size),
            np.bincount(token_ids, weights=losses * losses, minlength=vocab_size),
            words or WordMemory.empty(),
        )
        return memory._with_prior()

    @property
    def calibrated(self) -> bool:
        """Whether the loss tests can decide against this memory."""
        return self.calibration.texts >= 2 and self.calibration.null_sd > 0

    @property
    def knows_words(self) -> bool:
        """Whether the novelty tests can decide against this memory."""
        return self.calibration.novelty_texts >= 2 and len(self.words) > 0

    def merged(self, newer: LossMemory, *, decay: float) -> LossMemory:
        """`decay` times this memory plus `newer` (same vocabulary), uncalibrated."""
        return LossMemory(
            decay * self.count + newer.count,
            decay * self.total + newer.total,
            decay * self.total_squared + newer.total_squared,
            self.words.merged(newer.words, decay=decay),
        )._with_prior()

    def expected(self) -> np.ndarray:
        """(V,) each token's expected loss: its mean shrunk towards its frequency class's mean."""
        prior_mean, _ = self._class_priors()
        return (self.total + PRIOR_OCCURRENCES * prior_mean) / (self.count + PRIOR_OCCURRENCES)

    def variance(self) -> np.ndarray:
        """(V,) each token's loss variance, shrunk towards its frequency class's the same way."""
        with np.errstate(invalid="ignore", divide="ignore"):
            own = np.where(
                self.count > 0,
                self.total_squared / np.maximum(self.count, 1e-12) - (self.total / np.maximum(self.count, 1e-12)) ** 2,
                0.0,
            )
        _, prior_variance = self._class_priors()
        return (np.maximum(own, 0.0) * self.count + PRIOR_OCCURRENCES * prior_variance) / (
            self.count + PRIOR_OCCURRENCES
        )

    def _class_priors(self) -> tuple[np.ndarray, np.ndarray]:
        """(V,) the mean and variance of the losses of each token's frequency class.

        Classes are powers of two of the remembered count (1, 2-3, 4-7, ...); a token never seen
        belongs with the tokens seen once, as Good-Turing estimates the unseen from the singletons.
        Rare tokens are harder than common ones, so the overall mean would under-predict exactly
        the tokens a prior is for. A class without occurrences falls back to the overall figures.
        """
        classes = np.floor(np.log2(np.maximum(self.count, 1.0))).astype(np.int64)
        count = np.bincount(classes, weights=self.count)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(classes, weights=self.total) / count
            variance = np.bincount(classes, weights=self.total_squared) / count - mean**2
        known = count > 0
        mean = np.where(known, mean, self.calibration.overall_mean)
        variance = np.where(known, np.maximum(variance, 1e-6), self.calibration.overall_variance)
        return mean[classes], variance[classes]

    def with_calibration(self, calibration: Calibration) -> LossMemory:
        """This memory with a calibration (its prior kept)."""
        prior = replace(
            calibration, overall_mean=self.calibration.overall_mean, overall_variance=self.calibration.overall_variance
        )
        return LossMemory(self.count, self.total, self.total_squared, self.words, prior)

    def moved(self, old_ids_of_new: np.ndarray) -> LossMemory:
        """The memory on another vocabulary: row i comes from old row old_ids_of_new[i] (-1: empty)."""
        kept = old_ids_of_new >= 0
        moved = LossMemory.empty(old_ids_of_new.shape[0])
        for name in ("count", "total", "total_squared"):
            getattr(moved, name)[kept] = getattr(self, name)[old_ids_of_new[kept]]
        moved.words = self.words
        moved.calibration = self.calibration
        return moved

    def _with_prior(self) -> LossMemory:
        """This memory with the prior taken from its own statistics."""
        occurrences = float(self.count.sum())
        if occurrences > 0:
            mean = float(self.total.sum()) / occurrences
            variance = max(float(self.total_squared.sum()) / occurrences - mean * mean, 1e-6)
            self.calibration = Calibration(overall_mean=mean, overall_variance=variance)
        return self

    def save(self, path: Path) -> None:
        """Write as safetensors (never pickle)."""
        save_file(
            {
                "count": self.count,
                "total": self.total,
                "total_squared": self.total_squared,
                "word_hashes": self.words.hashes,
                "word_texts_with": self.words.texts_with,
                "word_texts": np.array([self.words.texts], dtype=np.float64),
                "calibration": self.calibration.to_array(),
            },
            str(path),
        )

    @classmethod
    def load(cls, path: Path) -> LossMemory:
        """Read what save wrote; a memory of driftlm 0.1 (no calibration) loads as empty, one
        written before words were remembered loads without them."""
        arrays = load_file(str(path))
        if "calibration" not in arrays:  # the training-time memory of driftlm 0.1: not comparable
            return cls.empty(arrays["weight"].shape[0])
        words = (
            WordMemory(arrays["word_hashes"], arrays["word_texts_with"], float(arrays["word_texts"][0]))
            if "word_hashes" in arrays
            else WordMemory.empty()
        )
        calibration = Calibration.from_array(arrays["calibration"])
        if not math.isfinite(calibration.token_inflation) or calibration.token_inflation < 1:
            calibration = replace(calibration, token_inflation=1.0)
        return cls(arrays["count"], arrays["total"], arrays["total_squared"], words, calibration)
