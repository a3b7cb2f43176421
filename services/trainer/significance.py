"""The tests the trigger decides with, at a stated false-positive rate.

- `welch_test`: is a mean above a null mean known from another sample (the calibration)?
  One-sided Welch t with Satterthwaite's degrees of freedom, so that both means' uncertainty counts
  and a small calibration is not taken for an exact one. It takes summary figures, so a ratio
  (unseen words over words, pooled over texts) is tested with its per-text linearised variance.
- `benjamini_hochberg`: which of many tests to believe (Benjamini & Hochberg 1995). When nothing
  changed at all it rejects anything with probability at most its level, which is how the trigger
  uses it: each of its per-token and per-word families spends a share of the false-fire rate.
- `tarone_tests`: how many discrete tests count (Tarone 1990). A word seen in 3 texts can never be
  significant at a strict level whatever its split, so it should not dilute the correction for the
  words that can.

Quantiles come from survival functions (`isf`), never `1 - p`: a level of 1e-300 is a valid request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class WelchTest:
    """A sample mean against a calibrated null mean."""

    mean: float
    threshold: float
    # Standardised difference (mean - null mean) / standard error; inf when the error is 0.
    z: float
    fire: bool


def welch_test(
    mean: float,
    variance: float,
    count: int,
    *,
    null_mean: float,
    null_sd: float,
    null_count: int,
    level: float,
    min_effect: float,
) -> WelchTest:
    """Fires when a mean over `count` units (of unit variance `variance`) exceeds
    null_mean + max(t quantile * standard error, min_effect)."""
    sample_term = variance / max(count, 1)
    null_term = null_sd**2 / max(null_count, 1)
    standard_error = math.sqrt(sample_term + null_term)
    if standard_error > 0:
        denominator = sample_term**2 / max(count - 1, 1) + null_term**2 / max(null_count - 1, 1)
        freedom = (sample_term + null_term) ** 2 / denominator if denominator > 0 else math.inf
        quantile = float(stats.t.isf(level, freedom))
        z = (mean - null_mean) / standard_error
    else:
        quantile, z = 0.0, (math.inf if mean > null_mean else 0.0)
    threshold = null_mean + max(quantile * standard_error, min_effect)
    return WelchTest(mean, threshold, z, bool(count and mean > threshold))


def sample_welch_test(
    sample: np.ndarray, *, null_mean: float, null_sd: float, null_count: int, level: float, min_effect: float
) -> WelchTest:
    """welch_test of a sample's mean (a single value borrows the null's variance)."""
    count = int(sample.size)
    return welch_test(
        float(sample.mean()) if count else math.nan,
        float(sample.var(ddof=1)) if count >= 2 else null_sd**2,
        count,
        null_mean=null_mean,
        null_sd=null_sd,
        null_count=null_count,
        level=level,
        min_effect=min_effect,
    )


def benjamini_hochberg(p_values: np.ndarray, level: float, *, tests: int | None = None) -> np.ndarray:
    """(n,) bool: the hypotheses rejected at false-discovery rate `level` over `tests` hypotheses
    (default: n; more when some were not computed because they cannot be rejected)."""
    count = int(p_values.size)
    if count == 0:
        return np.zeros(0, dtype=bool)
    total = max(tests or count, count)
    order = np.argsort(p_values, kind="stable")
    below = p_values[order] <= level * np.arange(1, count + 1) / total
    rejected = np.zeros(count, dtype=bool)
    if below.any():
        rejected[order[: int(np.flatnonzero(below)[-1]) + 1]] = True
    return rejected


def log_level(level: float) -> float:
    """log(level), -inf for a level that underflowed to 0 (a share of a rate like 5e-324)."""
    return math.log(level) if level > 0 else -math.inf


def tarone_tests(log_min_p_values: np.ndarray, level: float) -> int:
    """The smallest m such that at most m hypotheses could reach a p-value of level / m.

    Args:
        log_min_p_values: (n,) natural log of the smallest p-value each hypothesis can have.
        level: the family's false-positive rate.

    Returns:
        m in [1, max(n, 1)]; only hypotheses whose smallest p-value is at most level / m count.
    """
    ordered = np.sort(log_min_p_values)
    low, high = 1, max(int(ordered.size), 1)
    while low < high:
        middle = (low + high) // 2
        if np.searchsorted(ordered, log_level(level) - math.log(middle), side="right") <= middle:
            high = middle
        else:
            low = middle + 1
    return low
