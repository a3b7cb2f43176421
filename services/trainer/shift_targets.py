"""Which tokens the token-embedding-shift strategy chases after an iteration, and how much.

Every row of a tied embedding moves at every step (the softmax's gradient reaches them all, and
AdamW decays them), and a token moves more the more often it was trained on. Ranked by raw shift,
the top tokens are the most frequent ones (`the`, `was`, `don`), which moved by use, not by news.
So the targets are, in this order:

1. the pieces the vocabulary update added: their rows are new (FVT's guess), the least learned,
   and what the strategy is for; ranked among themselves by how much they moved;
2. other tokens only when they moved beyond noise twice over: more than 99% of the tokens the
   iteration's batches never held (the untouched tokens' own drift), and more than the tokens
   trained about as often, by a robust z-score (median and MAD of the log shift within its
   frequency class, powers of two of its occurrences in the batches) above the Bonferroni bound
   for the tokens judged, so that noise alone qualifies about once in twenty iterations.

At most top_x targets, all held by at least two candidates (a target no sentence holds picks
nothing). A candidate is scored by its best target, and every added piece scores above every
other target, so sentences with new pieces come first and the shifted tokens rank among the rest.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

# Tokens a frequency class needs for its own median and spread; smaller classes join the next.
_MIN_CLASS_TOKENS = 20
# MAD of a normal distribution, in standard deviations.
_MAD_TO_SD = 1.4826
# Share of the untouched tokens a target's shift must exceed.
_UNTOUCHED_QUANTILE = 0.99
# Chance that noise alone gives a non-added target in an iteration (Bonferroni over tokens judged).
_NOISE_RATE = 0.05


def excess_shift(shift: np.ndarray, trained_counts: np.ndarray, special: np.ndarray) -> np.ndarray:
    """(V,) each token's log shift as a robust z-score among the tokens of its frequency class
    (class 0: the tokens the batches never held).

    Args:
        shift: (V,) cosine distance of each embedding row before and after the iteration, >= 0.
        trained_counts: (V,) occurrences of each token in the iteration's batches.
        special: (V,) bool, tokens never judged (their z is 0).
    """
    log_shift = np.log(np.maximum(shift, 1e-12))
    classes = np.where(trained_counts > 0, np.floor(np.log2(np.maximum(trained_counts, 1))).astype(np.int64) + 1, 0)
    z = np.zeros(shift.shape[0])
    judged = np.flatnonzero(~special)
    group: list[np.ndarray] = []
    present = np.unique(classes[judged])
    for number, cls in enumerate(present):
        group.append(judged[classes[judged] == cls])
        members = np.concatenate(group)
        if members.size < _MIN_CLASS_TOKENS and number < present.size - 1:
            continue
        centre = float(np.median(log_shift[members]))
        spread = _MAD_TO_SD * float(np.median(np.abs(log_shift[members] - centre)))
        z[members] = (log_shift[members] - centre) / spread if spread > 0 else 0.0
        group = []
    return z


def shift_targets(
    shift: np.ndarray,
    trained_counts: np.ndarray,
    *,
    candidate_sentences: np.ndarray,
    added: np.ndarray,
    special: np.ndarray,
    limit: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The targets (ids, added pieces first, each group by z) and a (V,) score per token that
    orders them: added pieces in [2, 3], the others in [0, 1], every other token 0."""
    excess = excess_shift(shift, trained_counts, special)
    held = (candidate_sentences >= 2) & ~special
    is_added = np.zeros(shift.shape[0], dtype=bool)
    is_added[added] = True
    untouched = (trained_counts == 0) & ~special & ~is_added
    drift = float(np.quantile(shift[untouched], _UNTOUCHED_QUANTILE)) if untouched.any() else 0.0
    bound = float(stats.norm.isf(_NOISE_RATE / max(int((~special).sum()), 1)))
    moved = held & ~is_added & (shift > drift) & (excess > bound)
    new = held & is_added
    ranked_new = np.flatnonzero(new)[np.argsort(-excess[new], kind="stable")]
    ranked_moved = np.flatnonzero(moved)[np.argsort(-excess[moved], kind="stable")]
    targets = np.concatenate([ranked_new, ranked_moved])[:limit].astype(np.int64)
    scores = np.zeros(shift.shape[0])
    for group, offset in ((targets[np.isin(targets, ranked_new)], 2.0), (targets[~np.isin(targets, ranked_new)], 0.0)):
        # Best first within the group: 1 for the top, falling evenly to 0.
        scores[group] = offset + np.linspace(1.0, 0.0, group.size) if group.size > 1 else offset + 1.0
    return targets, scores
