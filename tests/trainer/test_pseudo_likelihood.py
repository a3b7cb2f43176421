"""The masked copies PLL scores: the original masks one piece; PLL-word-l2r also masks the later
pieces of the same word (Kauf & Ivanova 2023), never another word's or a special."""

from __future__ import annotations

import pytest

from driftlm.services.core.pseudo_likelihood import masked_copy

M = 4  # [MASK]
# [CLS] the of g ##l ##i ##m ##x to [SEP]: "the of glimx to", glimx split into five pieces
IDS = [2, 89, 90, 11, 58, 55, 59, 70, 92, 3]
WORDS = [None, 0, 1, 2, 2, 2, 2, 2, 3, None]


@pytest.mark.parametrize(
    ("position", "l2r", "expected"),
    [
        # (scored piece, l2r, the copy the model sees)
        (3, False, [2, 89, 90, M, 58, 55, 59, 70, 92, 3]),  # original: g alone
        (3, True, [2, 89, 90, M, M, M, M, M, 92, 3]),  # l2r: g and the word's four later pieces
        (5, True, [2, 89, 90, 11, 58, M, M, M, 92, 3]),  # ##i: itself and what follows, not what precedes
        (7, True, [2, 89, 90, 11, 58, 55, 59, M, 92, 3]),  # the last piece: nothing after it to hide
        (1, True, [2, M, 90, 11, 58, 55, 59, 70, 92, 3]),  # a word of one piece: the same as the original
        (8, True, [2, 89, 90, 11, 58, 55, 59, 70, M, 3]),  # never the [SEP] that follows
    ],
)
def test_masked_copies(position: int, l2r: bool, expected: list[int]) -> None:
    assert masked_copy(IDS, WORDS, position, l2r=l2r, mask_id=M) == expected
