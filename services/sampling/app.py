"""The sampling service's application layer: every call in-process, no gRPC.

Stateless: each call carries all it needs. The servicer maps messages onto it; a trainer without
a sampling endpoint uses it directly (`client.in_process`).
"""

from __future__ import annotations

import numpy as np

from driftlm.services.core.candidates import CandidatePool, Selection
from driftlm.services.core.errors import ResourceExhaustedError
from driftlm.services.core.strategy import Strategy

from .measures import draw_indices, measure_shift, weigh
from .selection import select_sentences

# Used when a caller leaves alpha unset.
DEFAULT_ALPHA = 0.5
# Indices one answer may carry when the caller sets no bound (int64: 1 GiB).
_UNBOUNDED_INDICES = 1 << 27


class SamplingApp:
    """Shift measures, weights, draws and strategy selections over NumPy arrays."""

    def __init__(self, *, max_indices: int = _UNBOUNDED_INDICES) -> None:
        # Indices (int64) one answer can carry.
        self._max_indices = max_indices

    def cosine_distance(
        self, old_rows: np.ndarray, new_rows: np.ndarray, *, top_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N,) distances between matching rows and the top_k most shifted row indices."""
        return measure_shift(old_rows, new_rows, top_k)

    def sampling_weights(self, scores: np.ndarray, lengths: np.ndarray, *, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
        """(N,) weights of scored candidates (see measures.weigh)."""
        return weigh(scores, lengths, alpha)

    def draw(self, weights: np.ndarray, *, k: int, replace: bool = False, seed: int = 0) -> np.ndarray:
        """(k,) indices drawn in proportion to the weights."""
        self._check_answer_size(k)
        return draw_indices(weights, k, replace=replace, seed=seed)

    def select_sentences(
        self, strategy: Strategy, pool: CandidatePool, *, k: int, alpha: float = DEFAULT_ALPHA, seed: int = 0
    ) -> Selection:
        """Up to k candidate indices chosen by `strategy` (selection.select_sentences)."""
        self._check_answer_size(k)
        return select_sentences(strategy, pool, k=k, alpha=alpha, seed=seed)

    def _check_answer_size(self, k: int) -> None:
        """k indices must fit one answer; checked before any is drawn (k=2**26 of one weight took 2 GB)."""
        if k > self._max_indices:
            raise ResourceExhaustedError(
                f"k={k:,} indices do not fit one answer: at most {self._max_indices:,} (--max-message-mb); "
                "draw in parts",
                reason="ANSWER_TOO_LARGE",
            )
