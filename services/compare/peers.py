"""The inference service as the compare service uses it: typed values and a Protocol (remote.py
reaches it over gRPC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ServedModel:
    """A ready version of a model."""

    name: str
    version: int
    is_default: bool
    vocab_size: int


@dataclass(frozen=True)
class MaskedLogits:
    """Logits at drawn masked positions: (P, V) logits, (P,) text index and (P,) original piece."""

    logits: np.ndarray
    text_indices: np.ndarray
    labels: np.ndarray
    version: int


# Per text, per [MASK] in order: the most likely pieces and their probabilities.
FilledMasks = list[list[tuple[tuple[str, ...], np.ndarray]]]


class InferencePeer(Protocol):
    """What CompareApp needs of the inference service.

    `masked_logits` raises ResourceExhaustedError when the answer would be too large (send fewer
    texts), NotFoundError for a model that is not served, UnavailableError when unreachable.
    """

    def ready_models(self) -> list[ServedModel]: ...

    def load(self, name: str, version: int) -> ServedModel: ...

    def unload(self, name: str, version: int) -> None: ...

    def masked_logits(
        self, name: str, version: int, texts: Sequence[str], *, mask_fraction: float, seed: int
    ) -> MaskedLogits: ...

    def fill_masks(self, name: str, version: int, texts: Sequence[str], *, top_k: int) -> FilledMasks: ...

    def mean_token_loss(self, name: str, version: int, texts: Sequence[str]) -> float: ...
