"""Pseudo-log-likelihood (Salazar, Liang, Nguyen & Kirchhoff, ACL 2020): how likely a masked LM
finds a text, every piece masked in turn.

Models on different vocabularies cut one text into different pieces, so per-piece losses do not
compare; the summed PLL of a text divided by its words (or characters) does. Each masked copy
needs the vocabulary head at one position only, which masked_logits provides.

The original PLL predicts each piece of a word split into several with the word's other pieces
visible ("glimmer" from "##fox" and the reverse), which inflates the score of fragmented words and
so favours the vocabulary that fragments new words: the wrong way round for comparing vocabularies.
PLL-word-l2r (Kauf & Ivanova, 2023) also masks the later pieces of the same word: a word's pieces
are predicted left to right, as a whole word would be. Both are computed; l2r is the headline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import PreTrainedModel

from driftlm.services.runtime.calls import stop_if_abandoned

from .models import autocast, masked_logits

_ROWS_PER_BATCH = 256


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


@torch.no_grad()
def pseudo_log_likelihoods(
    model: PreTrainedModel,
    tokenizer_json: str,
    texts: Sequence[str],
    *,
    mask_id: int,
    special: torch.Tensor,
    max_length: int,
    device: torch.device,
) -> list[TextScore]:
    """Score every text; a text with no scorable piece scores 0 over 0 pieces."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(list(texts))
    # (text, position, l2r): every scored piece twice, alone and with its word's later pieces masked.
    copies: list[tuple[int, int, bool]] = []
    for index, encoding in enumerate(encodings):
        piece_ids = torch.tensor(encoding.ids, dtype=torch.long)
        positions = torch.nonzero(~special[piece_ids]).flatten().tolist()
        copies += [(index, int(p), l2r) for p in positions for l2r in (False, True)]
    # Similar lengths together: less padding.
    copies.sort(key=lambda copy: len(encodings[copy[0]].ids))
    sums = np.zeros((len(texts), 2))
    model.eval()
    for start in range(0, len(copies), _ROWS_PER_BATCH):
        stop_if_abandoned()  # the caller cancelled, or its deadline passed
        chunk = copies[start : start + _ROWS_PER_BATCH]
        width = max(len(encodings[t].ids) for t, _, _ in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        masked = torch.zeros_like(input_ids, dtype=torch.bool)
        targets = torch.empty(len(chunk), dtype=torch.long)
        for row, (text_index, position, l2r) in enumerate(chunk):
            ids, words = encodings[text_index].ids, encodings[text_index].word_ids
            input_ids[row, : len(ids)] = torch.tensor(masked_copy(ids, words, position, l2r=l2r, mask_id=mask_id))
            attention[row, : len(ids)] = 1
            targets[row] = ids[position]
            masked[row, position] = True
        with autocast(device):
            logits = masked_logits(model, input_ids.to(device), attention.to(device), masked.to(device))
        log_probabilities = (
            F.log_softmax(logits.float(), dim=-1).gather(1, targets.to(device)[:, None])[:, 0].cpu().numpy()
        )
        np.add.at(sums, ([t for t, _, _ in chunk], [int(l2r) for _, _, l2r in chunk]), log_probabilities)
    scores = []
    for index, (text, encoding) in enumerate(zip(texts, encodings, strict=True)):
        scored = [
            end
            for (_begin, end), is_special in zip(
                encoding.offsets, special[torch.tensor(encoding.ids, dtype=torch.long)].tolist(), strict=True
            )
            if not is_special
        ]
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
