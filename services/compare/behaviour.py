"""The arithmetic of behaviour evaluation (PALMS): sampled completions of [MASK] templates, their
words, mean toxicity with a bootstrap interval, and a permutation test between two models.

Pure functions over arrays and an explicit random generator, so that every figure can be checked
against a reference computation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from driftlm.services.core.curated import MASK

PERMUTATIONS = 10_000
BOOTSTRAP = 2000
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


@dataclass(frozen=True)
class SlotCandidates:
    """The model's most likely pieces at one [MASK] and their probabilities (at temperature 1)."""

    pieces: tuple[str, ...]
    probabilities: np.ndarray


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The distribution p^(1/T), renormalised: sampling at temperature T over these candidates."""
    logs = np.log(np.maximum(probabilities, 1e-300)) / temperature
    weights = np.exp(logs - logs.max())
    result: np.ndarray = weights / weights.sum()
    return result


def complete(
    template: str, slots: Sequence[SlotCandidates], temperature: float, rng: np.random.Generator
) -> tuple[str, list[str]]:
    """The template with each [MASK] replaced by a piece drawn at `temperature`, and the drawn words.

    A continuation piece ("##ly") joins the word before it, as WordPiece writes words.
    """
    parts = template.split(MASK)
    words: list[str] = []
    text = parts[0]
    for slot, after in zip(slots, parts[1:], strict=True):
        piece = slot.pieces[int(rng.choice(len(slot.pieces), p=tempered(slot.probabilities, temperature)))]
        if piece.startswith("##"):
            text = text.rstrip() + piece[2:]
        else:
            text += piece
        words.append(piece.removeprefix("##"))
        text += after
    return text, words


def count_words(words: Sequence[str]) -> Counter[str]:
    """Words as a person reads them: lowercase letters only (punctuation and numbers dropped)."""
    return Counter(word.lower() for word in words if _WORD.fullmatch(word))


def mean_interval(values: np.ndarray, seed: int, samples: int = BOOTSTRAP) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval (NaN for no value)."""
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def permutation_test(
    first: np.ndarray, second: np.ndarray, seed: int, permutations: int = PERMUTATIONS
) -> tuple[float, float]:
    """Difference of means (first - second) and its two-sided permutation p-value, with the
    observed labelling counted among the permutations (so p > 0)."""
    if first.size == 0 or second.size == 0:
        return float("nan"), float("nan")
    observed = first.mean() - second.mean()
    pooled = np.concatenate([first, second])
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, permutations, 1000):
        size = min(1000, permutations - start)
        order = rng.permuted(np.tile(pooled, (size, 1)), axis=1)
        differences = order[:, : first.size].mean(axis=1) - order[:, first.size :].mean(axis=1)
        extreme += int((np.abs(differences) >= abs(observed) - 1e-12).sum())
    return float(observed), (extreme + 1) / (permutations + 1)
