"""Proposing a vocabulary update: the K most frequent new pieces in, the K least used out.

The size stays the same, so the embedding matrix keeps its shape: each added piece takes the id
of a removed one. Special tokens (and every added token), the single characters with their `##`
forms (which keep every string tokenizable), and the caller's protected pieces never leave.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .observation import Observation
from .wordpiece import WordPieceVocabulary


class UpdateSizeError(ValueError):
    """k is negative or larger than the number of removable pieces."""


@dataclass(frozen=True)
class PieceChange:
    """One piece of a change."""

    piece: str
    # For an added piece the id it takes; for a removed piece the id it had.
    id: int
    # Occurrences on the observed slices (for an added piece: how often it would be used).
    count: int
    # Added pieces: their ids in the parent vocabulary, by greedy longest match.
    parent_decomposition: tuple[int, ...] = ()

    def to_json(self) -> dict[str, object]:
        """A JSON-able record (dataclasses.asdict is ten times slower on thousands of pieces)."""
        return {
            "piece": self.piece,
            "id": self.id,
            "count": self.count,
            "parent_decomposition": list(self.parent_decomposition),
        }


@dataclass(frozen=True)
class Change:
    """An update: added[i] takes the id of removed[i]."""

    added: tuple[PieceChange, ...]
    removed: tuple[PieceChange, ...]


def removable_ids(vocabulary: WordPieceVocabulary, protected: Sequence[str]) -> np.ndarray:
    """Ids that an update may remove, ascending."""
    kept = set(protected)
    return np.array(
        [
            index
            for index, piece in enumerate(vocabulary.pieces)
            if index not in vocabulary.reserved_ids and not vocabulary.is_single_character(piece) and piece not in kept
        ],
        dtype=np.int64,
    )


def propose_change(
    vocabulary: WordPieceVocabulary,
    observations: Sequence[Observation],
    *,
    k: int,
    min_count: int,
    protected: Sequence[str] = (),
) -> Change:
    """Swap up to k pieces: candidates by count (most first), removals by use (least first).

    Usage and candidate counts are summed over the observations. Fewer than k pieces are swapped
    when fewer candidates reach min_count. Ties break by piece (candidates) and by id (removals),
    so the same inputs always give the same change.

    Raises:
        UpdateSizeError: k < 0 or k > number of removable pieces.
    """
    removable = removable_ids(vocabulary, protected)
    if k < 0 or k > removable.size:
        raise UpdateSizeError(
            f"must be in [0, {removable.size}] (the pieces that may be removed: specials, single characters "
            f"and protected pieces stay), got {k}"
        )
    usage = np.zeros(vocabulary.size, dtype=np.int64)
    for observation in observations:
        usage += observation.counts
    candidate_counts: Counter[str] = Counter()
    for observation in observations:
        candidate_counts.update(dict(observation.candidates))
    ranked = sorted(
        (
            (piece, count)
            for piece, count in candidate_counts.items()
            if count >= min_count and piece not in vocabulary.piece_ids
        ),
        key=lambda item: (-item[1], item[0]),
    )
    swaps = min(k, len(ranked))
    least_used = removable[np.lexsort((removable, usage[removable]))][:swaps]
    removed = tuple(PieceChange(vocabulary.pieces[i], int(i), int(usage[i])) for i in least_used)
    added = tuple(
        PieceChange(piece, old.id, count, tuple(vocabulary.decompose(piece)))
        for (piece, count), old in zip(ranked[:swaps], removed, strict=True)
    )
    return Change(added=added, removed=removed)
