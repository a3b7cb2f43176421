"""Proposing a vocabulary update: the K most frequent new pieces in, the K least used out.

The size stays the same, so the embedding matrix keeps its shape: each added piece takes the id
of a removed one. Special tokens (and every added token), the single characters with their `##`
forms (which keep every string tokenizable), and the caller's protected pieces never leave.

"Least used" is judged on recent history, not one slice: each version keeps a decayed count of
every piece's use (the parent's, halved, plus the slices observed for the update), so a word
that a slice happens not to use is not taken for a faded one. A piece used min_count times or
more in that history is still needed and never leaves. Among pieces equally (un)used, pieces no
text can produce go first (BERT's `[unusedN]` slots), then the rarest by the base vocabulary's own
order: WordPiece vocabularies (BERT's, and those tokenizers trains) list pieces most frequent first,
so the highest id is the rarest; breaking the tie by lowest id would remove BERT's most frequent
words once its unused slots are gone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from driftlm.services.core.vocabulary import WordPieceVocabulary

from .observation import Observation

# Weight of the parent's history against the slices of this update.
HISTORY_DECAY = 0.5


class UpdateSizeError(ValueError):
    """k is negative or larger than the vocabulary."""


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
    # (V,) the child version's decayed use of each of its ids.
    recent_use: np.ndarray = field(default_factory=lambda: np.zeros(0))


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
    parent_use: np.ndarray | None = None,
) -> Change:
    """Swap up to k pieces: candidates by count (most first), removals by recent use (least first).

    Recent use is HISTORY_DECAY * parent_use (the version's history; none for a base version) plus
    the observations' counts. Fewer than k pieces are swapped when fewer candidates reach min_count
    or fewer removable pieces (not special, not single characters, not protected) are used less
    than min_count. Ties break by piece (candidates) and by
    id, highest (rarest) first (removals), so the same inputs always give the same change.

    Raises:
        UpdateSizeError: k < 0 or k > the vocabulary's size.
    """
    removable = removable_ids(vocabulary, protected)
    if not 0 <= k <= vocabulary.size:
        raise UpdateSizeError(f"must be in [0, {vocabulary.size}] (the vocabulary's size), got {k}")
    usage = np.zeros(vocabulary.size, dtype=np.float64)
    if parent_use is not None and parent_use.size == vocabulary.size:
        usage += HISTORY_DECAY * parent_use
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
    unneeded = removable[usage[removable] < min_count]
    swaps = min(k, len(ranked), unneeded.size)
    # Least used first; among equals the pieces no text can produce, then the rarest (highest id).
    least_used = unneeded[np.lexsort((-unneeded, ~vocabulary.unreachable[unneeded], usage[unneeded]))][:swaps]
    removed = tuple(PieceChange(vocabulary.pieces[i], int(i), round(float(usage[i]))) for i in least_used)
    added = tuple(
        PieceChange(piece, old.id, count, tuple(vocabulary.decompose(piece)))
        for (piece, count), old in zip(ranked[:swaps], removed, strict=True)
    )
    recent_use = usage.copy()
    for piece in added:  # a new piece's history starts with the use that brought it in
        recent_use[piece.id] = piece.count
    return Change(added=added, removed=removed, recent_use=recent_use)
