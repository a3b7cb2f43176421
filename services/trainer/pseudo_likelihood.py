"""Pseudo-log-likelihood (Salazar, Liang, Nguyen & Kirchhoff, ACL 2020): how likely a masked LM
finds a text, every piece masked in turn.

Models on different vocabularies cut one text into different pieces, so per-piece losses do not
compare; the summed PLL of a text divided by its words (or characters) does. Each masked copy
needs the vocabulary head at one position only, which masked_logits provides.
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

from .models import autocast, masked_logits

_ROWS_PER_BATCH = 256


@dataclass(frozen=True)
class TextScore:
    """One text's PLL and what it is divided by."""

    log_likelihood: float
    pieces: int
    words: int
    characters: int


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
    copies: list[tuple[int, int]] = []  # (text, position)
    for index, encoding in enumerate(encodings):
        piece_ids = torch.tensor(encoding.ids, dtype=torch.long)
        copies += [(index, int(p)) for p in torch.nonzero(~special[piece_ids]).flatten().tolist()]
    # Similar lengths together: less padding.
    copies.sort(key=lambda copy: len(encodings[copy[0]].ids))
    sums = np.zeros(len(texts))
    model.eval()
    for start in range(0, len(copies), _ROWS_PER_BATCH):
        chunk = copies[start : start + _ROWS_PER_BATCH]
        width = max(len(encodings[t].ids) for t, _ in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        masked = torch.zeros_like(input_ids, dtype=torch.bool)
        targets = torch.empty(len(chunk), dtype=torch.long)
        for row, (text_index, position) in enumerate(chunk):
            ids = encodings[text_index].ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            targets[row] = ids[position]
            input_ids[row, position] = mask_id
            masked[row, position] = True
        with autocast(device):
            logits = masked_logits(model, input_ids.to(device), attention.to(device), masked.to(device))
        log_probabilities = (
            F.log_softmax(logits.float(), dim=-1).gather(1, targets.to(device)[:, None])[:, 0].cpu().numpy()
        )
        np.add.at(sums, [t for t, _ in chunk], log_probabilities)
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
        scores.append(TextScore(float(sums[index]), len(scored), len(prefix.split()), len(prefix)))
    return scores


@dataclass(frozen=True)
class CorpusScore:
    """Every text's score and the corpus' PLL per word and per character, and pseudo-perplexity."""

    texts: list[TextScore]
    log_likelihood_per_word: float
    log_likelihood_per_character: float
    # exp(-PLL / pieces): depends on the tokenisation; NaN with no piece scored.
    pseudo_perplexity: float


def summarise(scores: Sequence[TextScore]) -> CorpusScore:
    """Sum the texts' PLLs and divide by their words, characters and pieces (0 when there are none)."""
    total = sum(s.log_likelihood for s in scores)
    pieces, words, characters = (sum(getattr(s, name) for s in scores) for name in ("pieces", "words", "characters"))
    return CorpusScore(
        texts=list(scores),
        log_likelihood_per_word=total / words if words else 0.0,
        log_likelihood_per_character=total / characters if characters else 0.0,
        pseudo_perplexity=math.exp(-total / pieces) if pieces else float("nan"),
    )
