"""Per-sentence scores from per-token scores, for the token-embedding-shift strategy.

A sentence is a candidate for the next iteration when it contains one of the target tokens (the
most shifted ones); its score is the largest shift among its target tokens.
"""

from __future__ import annotations

import numba
import numpy as np

from .compiled import Twin


def _max_target_score(token_ids: np.ndarray, offsets: np.ndarray, token_score: np.ndarray, out: np.ndarray) -> None:
    for c in numba.prange(offsets.shape[0] - 1):
        best = -1.0
        for t in range(offsets[c], offsets[c + 1]):
            score = token_score[token_ids[t]]
            if score > best:
                best = score
        out[c] = best


_MAX_TARGET_SCORE = Twin(_max_target_score)


def _exact_total(lengths: np.ndarray, token_count: int) -> int:
    """The sum of non-negative lengths, never wrapped around.

    An int64 sum that overflows to exactly the id count would pass the check and let the kernel read
    past the ids. Each length is at most the id count once checked, so the sum stays below
    len(lengths) * token_count; where that could pass 2**63 it is summed in Python integers.

    Raises:
        ValueError: one length alone is more than the ids given.
    """
    if lengths.size and int(lengths.max()) > token_count:
        raise ValueError(f"a sentence has {int(lengths.max())} tokens but only {token_count} token ids were given")
    if lengths.size * max(token_count, 1) >= 2**63:
        return sum(int(length) for length in lengths)
    return int(lengths.sum())


def max_target_score(token_ids: np.ndarray, lengths: np.ndarray, token_score: np.ndarray) -> np.ndarray:
    """For each sentence, the largest score of its target tokens, or -1 when it has none.

    Args:
        token_ids: (sum(lengths),) int32 or int64, the sentences' token ids concatenated.
        lengths: (N,) non-negative token counts per sentence.
        token_score: (V,) float64, >= 0 for target tokens and -1 for all others.

    Returns:
        (N,) float64; -1 marks a sentence without any target token.

    Raises:
        ValueError: the lengths do not add up to the number of ids, or an id is outside [0, V).

    Example:
        >>> max_target_score(np.array([0, 2, 1]), np.array([2, 1]), np.array([-1.0, -1.0, 0.4])).tolist()
        [0.4, -1.0]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths.size and lengths.min() < 0):
        raise ValueError("lengths must be a vector of non-negative token counts")
    total = _exact_total(lengths, token_ids.shape[0])
    if total != token_ids.shape[0]:
        raise ValueError(f"the lengths add up to {total} tokens but {token_ids.shape[0]} token ids were given")
    if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= token_score.shape[0]):
        raise ValueError(
            f"token ids must lie in [0, {token_score.shape[0]}), the vocabulary size; got ids from {token_ids.min()} to {token_ids.max()}"
        )
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    out = np.empty(lengths.shape[0])
    _MAX_TARGET_SCORE(
        token_ids.shape[0],
        np.ascontiguousarray(token_ids),
        offsets,
        np.ascontiguousarray(token_score, dtype=np.float64),
        out,
    )
    return out
