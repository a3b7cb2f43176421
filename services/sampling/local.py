"""The sampling service's calls made in-process, for a trainer configured without a sampling server.

Same methods and results as SamplingClient, straight on the domain functions (needs Numba).
"""

from __future__ import annotations

import numpy as np

from driftlm.services.runtime.strategy import Strategy

from .client import SelectedSentences
from .measures import measure_shift
from .selection import CandidatePool, select_sentences


class LocalSampling:
    """SamplingClient's interface without the network."""

    def cosine_distance(
        self, old_rows: np.ndarray, new_rows: np.ndarray, *, top_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N,) distances between matching rows and the top_k most shifted row indices."""
        return measure_shift(old_rows, new_rows, top_k)

    def select_sentences(
        self,
        strategy: Strategy,
        *,
        k: int,
        candidate_lengths: np.ndarray,
        alpha: float = 0.5,
        seed: int = 0,
        candidate_token_ids: np.ndarray | None = None,
        token_shift: np.ndarray | None = None,
        top_x: int = 0,
        target_token_ids: np.ndarray | None = None,
        old_cls: np.ndarray | None = None,
        new_cls: np.ndarray | None = None,
        losses: np.ndarray | None = None,
    ) -> SelectedSentences:
        """Up to k candidate indices chosen by `strategy`."""
        pool = CandidatePool(
            lengths=np.asarray(candidate_lengths),
            token_ids=candidate_token_ids,
            token_shift=token_shift,
            target_token_ids=np.asarray([] if target_token_ids is None else target_token_ids, dtype=np.int64),
            old_cls=old_cls,
            new_cls=new_cls,
            losses=losses,
        )
        selection = select_sentences(strategy, pool, k=k, alpha=alpha, seed=seed, top_x=top_x)
        return SelectedSentences(
            selection.indices, selection.weights, selection.eligible_count, selection.target_token_ids
        )
