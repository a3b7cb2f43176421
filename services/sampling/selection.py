"""Choosing the next iteration's training sentences, by the strategies of Amba Hombaiah et al. (2021).

Each strategy turns the candidate pool into one non-negative weight per sentence; the sentences
are then drawn by weighted sampling without replacement. A sentence of weight 0 is not eligible.

| strategy                 | score of a sentence                                  |
|--------------------------|------------------------------------------------------|
| uniform                  | - (weight 1)                                         |
| token embedding shift    | largest score among its target tokens                |
| sentence embedding shift | cosine distance of its [CLS] before and after        |
| token MLM loss           | its mean MLM loss                                    |

The paper weighs `alpha * score + (1 - alpha) * length`. Its two terms live on different scales
(a [CLS] distance of 0.03, a length of 40 pieces), so driftlm weighs ranks among the eligible
candidates instead (kernels.rank_weights): `(alpha * rank(score) + (1 - alpha) * rank(length)) ** 4`,
the score ranked among sentences of similar length. Each rank spreads evenly over [0, 1], so alpha
is the share of the rank score the signal decides, whatever the scales, and a signal that grows
with length does not bring length back in; the fourth power makes the draw favour the top ranks
(a monotone map: it changes how strongly, not which sentences rank higher). Dividing each term by
its largest value, as driftlm 0.2 did, left the draw to length: one outlier squashed every other
score, and the weights of token and sentence shift correlated 0.9 with length. Sentences without a
target token have weight 0 under token embedding shift.
"""

from __future__ import annotations

import numpy as np

from driftlm import kernels
from driftlm.services.core.candidates import CandidatePool, Selection
from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.core.strategy import Strategy

from . import inputs
from .measures import measure_shift


def select_sentences(strategy: Strategy, pool: CandidatePool, *, k: int, alpha: float, seed: int) -> Selection:
    """Draw up to k candidates without replacement, weighted by `strategy`.

    Raises:
        InvalidArgumentError: the inputs the strategy needs are missing or malformed, or k,
            alpha or top_x are out of range.
    """
    inputs.sample_size(k)
    inputs.alpha_value(alpha)
    lengths = inputs.count_vector(inputs.require(pool.lengths, "candidate_lengths"), "candidate_lengths", integer=True)
    weights, targets = _WEIGHERS[strategy](pool, lengths, alpha)
    eligible = int(np.count_nonzero(weights > 0))
    indices = (
        kernels.draw_without_replacement(weights, min(k, eligible), seed) if eligible else np.empty(0, dtype=np.int64)
    )
    return Selection(indices=indices, weights=weights, eligible_count=eligible, target_token_ids=targets)


_NO_TARGETS = np.empty(0, dtype=np.int64)


def _uniform(pool: CandidatePool, lengths: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    return np.ones(lengths.shape[0]), _NO_TARGETS


def _token_shift(pool: CandidatePool, lengths: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = _token_shift_scores(pool, lengths, pool.top_x)
    return kernels.rank_weights(scores, lengths, alpha, scores >= 0), targets


def _sentence_shift(pool: CandidatePool, lengths: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    needed_by = "the sentence embedding shift strategy"
    old_cls = inputs.require(pool.old_cls, "old_cls", needed_by=needed_by)
    new_cls = inputs.require(pool.new_cls, "new_cls", needed_by=needed_by)
    inputs.same_rows("old_cls", old_cls, "candidate_lengths", lengths)
    distances, _ = measure_shift(old_cls, new_cls, top_k=0, fields=("old_cls", "new_cls"))
    every = np.ones(lengths.shape[0], bool)
    return kernels.rank_weights(distances.astype(np.float64), lengths, alpha, every), _NO_TARGETS


def _mlm_loss(pool: CandidatePool, lengths: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    losses = inputs.float_vector(
        inputs.require(pool.losses, "losses", needed_by="the token MLM loss strategy"), "losses"
    )
    inputs.same_rows("losses", losses, "candidate_lengths", lengths)
    every = np.ones(lengths.shape[0], bool)
    return kernels.rank_weights(losses.astype(np.float64), lengths, alpha, every), _NO_TARGETS


# Each strategy's weights (and token shift's targets) over the pool.
_WEIGHERS = {
    Strategy.UNIFORM: _uniform,
    Strategy.TOKEN_EMBEDDING_SHIFT: _token_shift,
    Strategy.SENTENCE_EMBEDDING_SHIFT: _sentence_shift,
    Strategy.TOKEN_MLM_LOSS: _mlm_loss,
}


def _token_shift_scores(pool: CandidatePool, lengths: np.ndarray, top_x: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate largest target shift (-1 without a target) and the target ids."""
    needed_by = "the token embedding shift strategy"
    token_ids = inputs.require(pool.token_ids, "candidate_token_ids", needed_by=needed_by)
    if token_ids.ndim != 1 or token_ids.dtype not in inputs.INT_DTYPES:
        raise InvalidArgumentError(
            "candidate_token_ids",
            f"must be a flat int32 or int64 vector, got {token_ids.dtype} {list(token_ids.shape)}",
        )
    targets = np.asarray(pool.target_token_ids, dtype=np.int64)
    if pool.token_shift is None and targets.size == 0:
        raise InvalidArgumentError("token_shift", f"or target_token_ids is required by {needed_by}")
    if pool.token_shift is not None:
        shift = inputs.float_vector(pool.token_shift, "token_shift")
        vocab_size = shift.shape[0]
        if targets.size == 0:
            if not 1 <= top_x <= vocab_size:
                raise InvalidArgumentError("top_x", f"must be in [1, {vocab_size}] (the vocabulary size), got {top_x}")
            targets = kernels.top_k_largest(shift, top_x)
    else:
        largest = int(max(targets.max(), token_ids.max(initial=-1)))
        if largest >= inputs.MAX_VOCABULARY:  # the score table has a row per id: an id of 2**62 took all memory
            raise InvalidArgumentError(
                "target_token_ids", f"and candidate_token_ids must be below {inputs.MAX_VOCABULARY:,}, got {largest}"
            )
        vocab_size = largest + 1
        shift = np.ones(vocab_size)
    if targets.min() < 0 or targets.max() >= vocab_size:
        raise InvalidArgumentError("target_token_ids", f"must lie in [0, {vocab_size}), the vocabulary size")
    token_score = np.full(vocab_size, -1.0)
    token_score[targets] = shift[targets]
    try:
        scores = kernels.max_target_score(token_ids, lengths, token_score)
    except ValueError as error:
        raise InvalidArgumentError("candidate_token_ids", str(error)) from error
    return scores, targets
