"""The candidate sentences a sampling strategy chooses among, and what it chose.

One definition for the sampling service (which scores and draws), its client, its in-process
form and the trainer (which builds the pool from its slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CandidatePool:
    """The candidate sentences and whatever the chosen strategy scores them by."""

    # (N,) tokens per candidate: the pool size and the length term.
    lengths: np.ndarray
    # Token shift: the candidates' token ids, concatenated.
    token_ids: np.ndarray | None = None
    # Token shift: (V,) shift of each vocabulary token.
    token_shift: np.ndarray | None = None
    # Token shift: explicit target tokens (replace the top_x most shifted).
    target_token_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # Token shift: how many of the most shifted tokens are targets when none are given.
    top_x: int = 0
    # Sentence shift: (N, H) [CLS] embeddings before and after.
    old_cls: np.ndarray | None = None
    new_cls: np.ndarray | None = None
    # MLM loss: (N,) loss per candidate.
    losses: np.ndarray | None = None


@dataclass(frozen=True)
class Selection:
    """What a strategy chose."""

    # (min(k, eligible_count),) int64 candidate indices in draw order.
    indices: np.ndarray
    # (N,) float64 weight of every candidate.
    weights: np.ndarray
    # Candidates with a positive weight.
    eligible_count: int
    # Token shift: the target token ids, most shifted first; empty for the other strategies.
    target_token_ids: np.ndarray
