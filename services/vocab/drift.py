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


def _top(counts: dict[str, int], n: int) -> set[str]:
    return {piece for piece, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]}


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
    when the slices use fewer than top_n pieces (so identical slices overlap 1). Rising and fading rank pieces by
    the change of their share of all pieces, with add-one smoothing so unseen pieces compare.
    """
    before_counts, after_counts = _by_piece(before, before_pieces), _by_piece(after, after_pieces)
    top_before, top_after = _top(before_counts, top_n), _top(after_counts, top_n)
    compared = max(len(top_before), len(top_after))
    overlap = len(top_before & top_after) / compared if compared else 1.0
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
        before_unknown_rate=before.unknown_rate,
        after_unknown_rate=after.unknown_rate,
        before_pieces_per_word=before.pieces_per_word,
        after_pieces_per_word=after.pieces_per_word,
        rising=rising[:list_size],
        fading=fading[:list_size],
    )
