"""The top-N overlap counts pieces tied at the cut by their share, not by an arbitrary order."""

from __future__ import annotations

import numpy as np
import pytest

from driftlm.services.vocab.drift import measure_drift
from driftlm.services.vocab.observation import Observation

PIECES = ["a", "b", "c", "d", "x", "y"]


def _observation(counts: dict[str, int]) -> Observation:
    vector = np.array([counts.get(p, 0) for p in PIECES], dtype=np.int64)
    total = int(vector.sum())
    return Observation("obs", "v", "", 1, total, total, 0, vector)


@pytest.mark.parametrize(
    ("before", "after", "top_n", "overlap", "tied"),
    [
        # (counts before, counts after, N, overlap, pieces tied at each cut)
        # `a` leads both; b, c, d tie for the 2nd place before, b, x, y after. Alphabetically both
        # would keep `b` (overlap 1); by share each holds a third of the place: (1 + 1/3) / 2.
        ({"a": 5, "b": 1, "c": 1, "d": 1}, {"a": 5, "b": 1, "x": 1, "y": 1}, 2, (1 + 1 / 3) / 2, (3, 3)),
        # No tie at the cut: the plain intersection.
        ({"a": 5, "b": 3, "c": 1}, {"a": 5, "x": 3, "b": 1}, 2, 0.5, (0, 0)),
        # The tied pieces exactly fill the places left: no sharing needed.
        ({"a": 5, "b": 2, "c": 2, "d": 1}, {"a": 5, "b": 2, "c": 2}, 3, 1.0, (0, 0)),
        # Fewer pieces used than N: identical slices overlap 1.
        ({"a": 1, "b": 1}, {"a": 1, "b": 1}, 5, 1.0, (0, 0)),
    ],
)
def test_top_n_overlap_shares_the_places_tied_pieces_compete_for(
    before: dict[str, int], after: dict[str, int], top_n: int, overlap: float, tied: tuple[int, int]
) -> None:
    report = measure_drift(_observation(before), PIECES, _observation(after), PIECES, top_n=top_n, list_size=5)
    assert report.top_n_overlap == pytest.approx(overlap)
    assert (report.before_tied_at_cut, report.after_tied_at_cut) == tied
