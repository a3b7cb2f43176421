"""The sampling service's calls made in-process, for a trainer configured without a sampling server.

Same methods and results as SamplingClient, straight on the domain functions (needs Numba).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .client import SelectedSentences
from .measures import measure_shift
from .selection import CandidatePool, select_sentences
from .strategy import Strategy


class LocalSampling:
    """SamplingClient's interface without the network."""

    def cosine_distance(
        self, old_rows: np.ndarray, new_rows: np.ndarray, *, top_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N,) distances between matching rows and the top_k most shifted row indices."""
        return measure_shift(old_rows, new_rows, top_k)

    def select_sentences(
        self,
        strategy: str,
        *,
        k: int,
        candidate_lengths: np.ndarray,
        alpha: float = 0.5,
        seed: int = 0,
        top_x: int = 0,
        target_token_ids: np.ndarray | None = None,
        **arrays: Any,
    ) -> SelectedSentences:
        """Up to k candidate indices chosen by `strategy` (a selection.Strategy value)."""
        pool = CandidatePool(
            lengths=np.asarray(candidate_lengths),
            token_ids=arrays.get("candidate_token_ids"),
            token_shift=arrays.get("token_shift"),
            target_token_ids=np.asarray([] if target_token_ids is None else target_token_ids, dtype=np.int64),
            old_cls=arrays.get("old_cls"),
            new_cls=arrays.get("new_cls"),
            losses=arrays.get("losses"),
        )
        selection = select_sentences(Strategy(strategy), pool, k=k, alpha=alpha, seed=seed, top_x=top_x)
        return SelectedSentences(
            selection.indices, selection.weights, selection.eligible_count, selection.target_token_ids
        )
