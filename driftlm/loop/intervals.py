"""Bootstrap confidence intervals for per-word figures of held-out texts.

A slice's PLL per word is a ratio, sum of the texts' log-likelihoods over sum of their words, so
texts are resampled whole (they are the independent units) and the ratio recomputed. Arms are
scored on the same texts, so the difference between two arms is resampled paired: the same texts
in every resample, which removes the texts' own variation from the comparison.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def _resampled_rows(texts: int, seed: int) -> np.ndarray:
    """(RESAMPLES, texts) indices of texts drawn with replacement."""
    return np.random.default_rng(seed).integers(0, texts, (RESAMPLES, texts))


def _bounds(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def ratio_interval(numerators: np.ndarray, denominators: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """95% interval of sum(numerators) / sum(denominators) over texts resampled with replacement."""
    if numerators.size < 2 or denominators.sum() <= 0:
        return (float("nan"), float("nan"))
    rows = _resampled_rows(numerators.size, seed)
    words = denominators[rows].sum(axis=1)
    return _bounds(numerators[rows].sum(axis=1) / np.maximum(words, 1e-12))


def paired_difference_interval(
    first: np.ndarray, first_words: np.ndarray, second: np.ndarray, second_words: np.ndarray, *, seed: int = 0
) -> tuple[float, float, float]:
    """first's per-word value minus second's on the same texts, and its paired 95% interval.

    Each arm counts its own words (a vocabulary that cuts a long text elsewhere scores another
    prefix). Returns (difference, low, high); the arms differ when the interval excludes 0.
    """
    if first_words.sum() <= 0 or second_words.sum() <= 0:
        return (float("nan"), float("nan"), float("nan"))
    difference = float(first.sum() / first_words.sum() - second.sum() / second_words.sum())
    if first.size < 2:
        return (difference, float("nan"), float("nan"))
    rows = _resampled_rows(first.size, seed)
    resampled = first[rows].sum(axis=1) / np.maximum(first_words[rows].sum(axis=1), 1e-12) - second[rows].sum(
        axis=1
    ) / np.maximum(second_words[rows].sum(axis=1), 1e-12)
    low, high = _bounds(resampled)
    return (difference, low, high)
