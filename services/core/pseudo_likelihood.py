"""Pseudo-log-likelihood bookkeeping (Salazar, Liang, Nguyen & Kirchhoff, ACL 2020) shared by the
trainer (PyTorch) and the inference service (ONNX Runtime), so both give the same figures.

Every scored piece of a text is masked in turn and predicted; the model call is the caller's. This
module plans the masked copies and sums what the model says; it needs neither torch nor a model.

The original PLL predicts each piece of a word split into several with the word's other pieces
visible ("glimmer" from "##fox" and the reverse), which inflates the score of fragmented words and
so favours the vocabulary that fragments new words: the wrong way round for comparing vocabularies.
PLL-word-l2r (Kauf & Ivanova, 2023) also masks the later pieces of the same word: a word's pieces
are predicted left to right, as a whole word would be. Both are computed; l2r is the headline.

Models on different vocabularies cut one text into different pieces, so per-piece losses do not
compare; the summed PLL of a text divided by its words (or characters) does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Encoding(Protocol):
    """What a `tokenizers` Encoding offers that PLL needs."""

    @property
    def ids(self) -> list[int]: ...

    @property
    def word_ids(self) -> list[int | None]: ...

    @property
    def offsets(self) -> list[tuple[int, int]]: ...


@dataclass(frozen=True)
class MaskedCopy:
    """One row to predict: text `text`, the piece at `position` masked, and with `l2r` the later
    pieces of its word too."""

    text: int
    position: int
    l2r: bool


@dataclass(frozen=True)
class TextScore:
    """One text's PLL and what it is divided by."""

    log_likelihood: float
    # The same with the later pieces of each piece's word masked too (PLL-word-l2r).
    word_l2r_log_likelihood: float
    pieces: int
    words: int
    characters: int


def masked_copy(
    ids: Sequence[int], words: Sequence[int | None], position: int, *, l2r: bool, mask_id: int
) -> list[int]:
    """The text's ids with the piece at `position` masked, and with l2r also the later pieces of
    the same word (`words`: each piece's word index, None for specials, as tokenizers gives it)."""
    copy = list(ids)
    copy[position] = mask_id
    later = position + 1
    while l2r and later < len(ids) and words[later] is not None and words[later] == words[position]:
        copy[later] = mask_id
        later += 1
    return copy


def plan_copies(encodings: Sequence[Encoding], special: np.ndarray) -> list[MaskedCopy]:
    """Every scored piece (not special: `special` (V,) bool) of every text, alone and l2r, shortest
    texts first so that rows batched together need little padding."""
    copies = [
        MaskedCopy(index, int(position), l2r)
        for index, encoding in enumerate(encodings)
        for position in np.flatnonzero(~special[np.asarray(encoding.ids, dtype=np.int64)])
        for l2r in (False, True)
    ]
    copies.sort(key=lambda copy: len(encodings[copy.text].ids))
    return copies


def text_scores(
    texts: Sequence[str], encodings: Sequence[Encoding], special: np.ndarray, sums: np.ndarray
) -> list[TextScore]:
    """Each text's score from `sums` (N, 2): the summed log-probabilities of its copies, original
    and l2r; words and characters are counted over the prefix the scored pieces cover."""
    scores = []
    for index, (text, encoding) in enumerate(zip(texts, encodings, strict=True)):
        is_special = special[np.asarray(encoding.ids, dtype=np.int64)]
        scored = [end for (_begin, end), skip in zip(encoding.offsets, is_special.tolist(), strict=True) if not skip]
        prefix = text[: max(scored, default=0)]
        scores.append(
            TextScore(float(sums[index, 0]), float(sums[index, 1]), len(scored), len(prefix.split()), len(prefix))
        )
    return scores


@dataclass(frozen=True)
class CorpusScore:
    """Every text's score and the corpus' PLL per word and per character, and pseudo-perplexity."""

    texts: list[TextScore]
    log_likelihood_per_word: float
    log_likelihood_per_character: float
    word_l2r_log_likelihood_per_word: float
    word_l2r_log_likelihood_per_character: float
    # exp(-PLL / pieces): depends on the tokenisation; NaN with no piece scored.
    pseudo_perplexity: float


def summarise(scores: Sequence[TextScore]) -> CorpusScore:
    """Sum the texts' PLLs and divide by their words, characters and pieces (0 when there are none)."""
    total = sum(s.log_likelihood for s in scores)
    l2r = sum(s.word_l2r_log_likelihood for s in scores)
    pieces, words, characters = (sum(getattr(s, name) for s in scores) for name in ("pieces", "words", "characters"))
    return CorpusScore(
        texts=list(scores),
        log_likelihood_per_word=total / words if words else 0.0,
        log_likelihood_per_character=total / characters if characters else 0.0,
        word_l2r_log_likelihood_per_word=l2r / words if words else 0.0,
        word_l2r_log_likelihood_per_character=l2r / characters if characters else 0.0,
        pseudo_perplexity=math.exp(-total / pieces) if pieces else float("nan"),
    )
