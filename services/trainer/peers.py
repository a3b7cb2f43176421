"""What the trainer needs from the vocab and sampling services, as typed values and Protocols.

The application layer and the training loop depend on these, never on a gRPC client: the vocab
service is reached through `remote.RemoteVocab`, sampling through `SamplingClient` or, with no
sampling endpoint, `sampling.client.in_process()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from driftlm.services.core.candidates import CandidatePool, Selection
from driftlm.services.core.strategy import Strategy
from driftlm.services.core.vocabulary import SpecialTokens, WordPieceVocabulary


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

    @cached_property
    def piece_ids(self) -> dict[str, int]:
        """piece -> id, read from the tokenizer JSON once."""
        return WordPieceVocabulary(self.tokenizer_json).piece_ids


class VocabPeer(Protocol):
    """The vocab service.

    `version` raises NotFoundError for an unknown version and UnavailableError when the service
    cannot be reached.
    """

    def version(self, version_id: str) -> VocabVersion: ...


class Sampler(Protocol):
    """The sampling service (SamplingClient) or its functions in-process (SamplingApp)."""

    def cosine_distance(
        self, old_rows: np.ndarray, new_rows: np.ndarray, *, top_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def select_sentences(
        self, strategy: Strategy, pool: CandidatePool, *, k: int, alpha: float = 0.5, seed: int = 0
    ) -> Selection: ...
