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
