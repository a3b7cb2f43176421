"""What the trainer needs from the vocab and sampling services, as typed values and Protocols.

The application layer and the training loop depend on these, never on a gRPC client: the vocab
service is reached through `remote.RemoteVocab`, sampling through `SamplingClient` or, with no
sampling endpoint, `LocalSampling` in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from driftlm.services.runtime.strategy import Strategy
from driftlm.services.vocab.wordpiece import SpecialTokens


@dataclass(frozen=True)
class AddedPiece:
    """A piece a vocab update added: its id and the parent-vocabulary ids it used to be split into."""

    id: int
    parent_decomposition: tuple[int, ...]


@dataclass(frozen=True)
class VocabVersion:
    """One immutable vocab version, as the trainer uses it."""

    version_id: str
    # Empty for a base version.
    parent_id: str
    size: int
    tokenizer_json: str
    # The pieces the update from the parent added.
    added: tuple[AddedPiece, ...]
    special: SpecialTokens


class VocabPeer(Protocol):
    """The vocab service.

    `version` raises NotFoundError for an unknown version and UnavailableError when the service
    cannot be reached.
    """

    def version(self, version_id: str) -> VocabVersion: ...


class SelectedSentences(Protocol):
    """What a selection returns (SamplingClient's and LocalSampling's SelectedSentences)."""

    @property
    def indices(self) -> np.ndarray:
        """(min(k, eligible_count),) candidate positions in draw order."""

    @property
    def weights(self) -> np.ndarray:
        """(N,) weight of every candidate."""

    @property
    def eligible_count(self) -> int:
        """Candidates with a positive weight."""

    @property
    def target_token_ids(self) -> np.ndarray:
        """Token shift: the target token ids used."""


class Sampler(Protocol):
    """The sampling service (SamplingClient) or its functions in-process (LocalSampling)."""

    def cosine_distance(
        self, old_rows: np.ndarray, new_rows: np.ndarray, *, top_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]: ...

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
    ) -> SelectedSentences: ...
