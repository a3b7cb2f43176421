"""The paper's sampling weight: a score (how much a sentence moved) traded off against its length.

Amba Hombaiah et al. (KDD 2021) weight each candidate sentence by
`alpha * cosine_distance + (1 - alpha) * length`. Lengths are counted in tokens and have no upper
bound, so on their own they would swamp a distance that lies in [0, 2]; we divide them by the
pool's longest length, which puts the length term in [0, 1] and leaves alpha meaning what the
paper means by it, whatever the corpus' sentence lengths.
"""

from __future__ import annotations

import numpy as np


def normalised_lengths(lengths: np.ndarray) -> np.ndarray:
    """lengths / max(lengths) as float64 in [0, 1]; all zeros when every length is 0.

    Raises:
        ValueError: lengths are negative or not finite.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size and not (np.isfinite(lengths).all() and lengths.min() >= 0):
        raise ValueError("lengths must be finite and >= 0")
    longest = lengths.max(initial=0.0)
    return lengths / longest if longest > 0 else np.zeros_like(lengths)


def sampling_weights(scores: np.ndarray, lengths: np.ndarray, alpha: float) -> np.ndarray:
    """`alpha * score + (1 - alpha) * length / max(length)` per item.

    Args:
        scores: (n,) finite, >= 0 (cosine distances, or a loss scaled to [0, 1]).
        lengths: (n,) token counts, finite, >= 0.
        alpha: in [0, 1]; 1 uses only the score, 0 only the length.

    Returns:
        (n,) float64 weights, >= 0.

    Raises:
        ValueError: mismatched lengths, negative or non-finite values, alpha outside [0, 1].

    Example:
        >>> sampling_weights(np.array([0.2, 0.0]), np.array([10, 5]), alpha=0.5).tolist()
        [0.6, 0.25]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != np.shape(lengths) or scores.ndim != 1:
        raise ValueError(
            f"scores and lengths must be two (n,) vectors of one length, got {scores.shape} and {np.shape(lengths)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if scores.size and not (np.isfinite(scores).all() and scores.min() >= 0):
        raise ValueError("scores must be finite and >= 0")
    return alpha * scores + (1.0 - alpha) * normalised_lengths(lengths)


def fractional_ranks(values: np.ndarray, *, inclusive: bool = False) -> np.ndarray:
    """Each value's share of the values strictly smaller than it, over the others: in [0, 1], 0
    for the smallest (and every value tied with it), 1 for the largest; a single value gets 1.
    inclusive: the share of all values at most as large instead, in (0, 1].

    Example:
        >>> fractional_ranks(np.array([0.3, 0.1, 0.3, 0.9])).tolist()
        [0.3333333333333333, 0.0, 0.3333333333333333, 1.0]
        >>> fractional_ranks(np.array([0.3, 0.1, 0.3, 0.9]), inclusive=True).tolist()
        [0.75, 0.25, 0.75, 1.0]
    """
    values = np.asarray(values)
    ordered = np.sort(values)
    if inclusive:
        return np.searchsorted(ordered, values, side="right") / max(values.size, 1)
    if values.size <= 1:
        return np.ones(values.size)
    return np.searchsorted(ordered, values, side="left") / (values.size - 1)


# Length strata the score is ranked within, and the candidates each needs at least.
LENGTH_STRATA = 10
_PER_STRATUM = 20
# The rank score is raised to this power before the draw. Ranks are flat: drawing an eighth of a
# pool in proportion to them enriched sentences whose loss is 0.7 standard deviations higher only
# 1.25 times over their share of the pool; to the fourth power, 1.55 times (tests/sampling).
# A monotone map: alpha's share, and which sentences rank above which, are the rank score's.
SHARPNESS = 4.0


def rank_weights(scores: np.ndarray, lengths: np.ndarray, alpha: float, eligible: np.ndarray) -> np.ndarray:
    """`(alpha * rank(score | length) + (1 - alpha) * rank(length)) ** SHARPNESS` over the eligible
    items, 0 for the others.

    Both terms are fractional ranks (fractional_ranks) among the eligible items, so each spreads
    evenly over [0, 1] whatever the scores' scale (a [CLS] shift of 0.03, a loss of 6 nats) or the
    lengths' skew: the score's rank is the share of candidates with a smaller score (0 for the
    lowest, so that with alpha 1 a sentence that did not move at all is never drawn), the
    length's the share no longer than it (above 0, so that with alpha below 1 every eligible
    sentence can be drawn). The score is ranked within its length stratum (up to LENGTH_STRATA quantile
    groups of about equal size): a shift or loss that grows with length would otherwise bring
    length in through the score, and alpha would not be the share of the weight the signal decides.
    Dividing by the largest value instead stretches noise and lets one outlier squash the rest.

    Args:
        scores: (n,) finite where eligible.
        lengths: (n,) token counts, finite, >= 0.
        alpha: in [0, 1].
        eligible: (n,) bool; ineligible items weigh 0.

    Returns:
        (n,) float64 weights in [0, 1]: above 0 exactly where eligible, but for alpha 1 and the
        lowest score.

    Raises:
        ValueError: mismatched shapes, non-finite values, alpha outside [0, 1].

    Example:
        >>> rank_weights(np.array([0.2, 0.5, 9.0]), np.array([10, 5, 7]), 0.5, np.array([True, True, False])).tolist()
        [0.0625, 0.31640625, 0.0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.float64)
    if not (scores.shape == lengths.shape == np.shape(eligible)) or scores.ndim != 1:
        raise ValueError(
            f"scores, lengths and eligible must be (n,) vectors of one length, got {scores.shape}, "
            f"{lengths.shape} and {np.shape(eligible)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    chosen = np.asarray(eligible, dtype=bool)
    if not (np.isfinite(scores[chosen]).all() and np.isfinite(lengths).all()):
        raise ValueError("scores and lengths must be finite")
    weights = np.zeros(scores.shape[0])
    count = int(chosen.sum())
    if count == 0:
        return weights
    length_rank = fractional_ranks(lengths[chosen], inclusive=True)
    strata = max(1, min(LENGTH_STRATA, count // _PER_STRATUM))
    stratum = np.minimum((length_rank * strata).astype(np.int64), strata - 1)
    score_rank = np.empty(count)
    for group in range(strata):
        members = stratum == group
        if members.any():
            score_rank[members] = fractional_ranks(scores[chosen][members])
    weights[chosen] = (alpha * score_rank + (1.0 - alpha) * length_rank) ** SHARPNESS
    return weights
