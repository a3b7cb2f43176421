"""How far two observations are apart: the paper's top-N overlap and the cost of tokenizing.

Two slices under one version show how the text drifted (the overlap of their most used pieces
shrinks as the time gap grows); one slice under two versions shows what an update bought (fewer
unknown pieces, fewer pieces per word).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .observation import Observation


@dataclass(frozen=True)
class DriftReport:
    """The drift between a before and an after observation."""

    top_n_overlap: float
    # Pieces tied at each side's cut (sharing its last places), 0 when the cut falls between counts.
    before_tied_at_cut: int
    after_tied_at_cut: int
    before_unknown_rate: float
    after_unknown_rate: float
    before_pieces_per_word: float
    after_pieces_per_word: float
    # (piece, count in after), share grew most first.
    rising: list[tuple[str, int]]
    # (piece, count in before), share shrank most first.
    fading: list[tuple[str, int]]


def _by_piece(observation: Observation, pieces: list[str]) -> dict[str, int]:
    used = np.flatnonzero(observation.counts)
    return {pieces[i]: int(observation.counts[i]) for i in used}


def _top_shares(counts: dict[str, int], n: int) -> tuple[dict[str, float], int]:
    """Each piece's share of a place in the top n, and how many pieces tie at the cut.

    Pieces above the cut hold a whole place. When the n-th count is shared by more pieces than
    places are left, those tied pieces share the places left equally: breaking the tie by any
    order (alphabetical, say) would put the same tied pieces in both slices' top n and inflate
    the overlap (by ~0.005 at n = 5,000 on 10k real lines, where 800-2,000 pieces tie).
    """
    if len(counts) <= n:
        return {piece: 1.0 for piece in counts}, 0
    cut = sorted(counts.values(), reverse=True)[n - 1]
    above = [piece for piece, count in counts.items() if count > cut]
    tied = [piece for piece, count in counts.items() if count == cut]
    shares = {piece: 1.0 for piece in above}
    if len(above) + len(tied) > n:
        shares.update({piece: (n - len(above)) / len(tied) for piece in tied})
        return shares, len(tied)
    shares.update({piece: 1.0 for piece in tied})
    return shares, 0


def measure_drift(
    before: Observation,
    before_pieces: list[str],
    after: Observation,
    after_pieces: list[str],
    *,
    top_n: int,
    list_size: int,
) -> DriftReport:
    """Compare two observations by piece string (their versions may differ).

    top_n_overlap is |top_n(before) & top_n(after)| / top_n, or over the larger of the two sets
    when the slices use fewer than top_n pieces (so identical slices overlap 1); pieces tied at a
    cut count for their share of the places left (see _top_shares). Rising and fading rank pieces
    by the change of their share of all pieces, with add-one smoothing so unseen pieces compare.
    """
    before_counts, after_counts = _by_piece(before, before_pieces), _by_piece(after, after_pieces)
    (top_before, before_tied), (top_after, after_tied) = (
        _top_shares(before_counts, top_n),
        _top_shares(after_counts, top_n),
    )
    compared = max(sum(top_before.values()), sum(top_after.values()))
    shared = sum(min(share, top_after.get(piece, 0.0)) for piece, share in top_before.items())
    overlap = shared / compared if compared else 1.0
    pieces = sorted(before_counts.keys() | after_counts.keys())
    before_share = np.array([before_counts.get(p, 0) + 1 for p in pieces]) / (before.piece_count + len(pieces))
    after_share = np.array([after_counts.get(p, 0) + 1 for p in pieces]) / (after.piece_count + len(pieces))
    log_ratio = np.log(after_share) - np.log(before_share)
    order = np.argsort(-log_ratio, kind="stable")
    rising = [(pieces[i], after_counts[pieces[i]]) for i in order if log_ratio[i] > 0 and pieces[i] in after_counts]
    fading = [
        (pieces[i], before_counts[pieces[i]]) for i in order[::-1] if log_ratio[i] < 0 and pieces[i] in before_counts
    ]
    return DriftReport(
        top_n_overlap=overlap,
        before_tied_at_cut=before_tied,
        after_tied_at_cut=after_tied,
        before_unknown_rate=before.unknown_rate,
        after_unknown_rate=after.unknown_rate,
        before_pieces_per_word=before.pieces_per_word,
        after_pieces_per_word=after.pieces_per_word,
        rising=rising[:list_size],
        fading=fading[:list_size],
    )
