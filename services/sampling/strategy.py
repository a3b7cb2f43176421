"""The paper's sentence-selection strategies, by name: shared by the service, its clients and the
trainer, none of which should need the kernels (Numba) to name one."""

from __future__ import annotations

import enum


class Strategy(enum.Enum):
    """How candidate sentences are scored before the weighted draw."""

    UNIFORM = "uniform"
    TOKEN_EMBEDDING_SHIFT = "token-embedding-shift"
    SENTENCE_EMBEDDING_SHIFT = "sentence-embedding-shift"
    TOKEN_MLM_LOSS = "token-mlm-loss"
