"""Pseudo-log-likelihood of texts under a PyTorch masked LM (core/pseudo_likelihood.py plans
the masked copies and sums the scores; the inference service does the same with ONNX Runtime).

Each masked copy needs the vocabulary head at one position only, which masked_logits provides.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import PreTrainedModel

from driftlm.services.core.pseudo_likelihood import TextScore, masked_copy, plan_copies, text_scores
from driftlm.services.runtime.calls import stop_if_abandoned

from .models import autocast, masked_logits

_ROWS_PER_BATCH = 256


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
    special_np = special.cpu().numpy()
    copies = plan_copies(encodings, special_np)
    sums = np.zeros((len(texts), 2))
    model.eval()
    for start in range(0, len(copies), _ROWS_PER_BATCH):
        stop_if_abandoned()  # the caller cancelled, or its deadline passed
        chunk = copies[start : start + _ROWS_PER_BATCH]
        width = max(len(encodings[copy.text].ids) for copy in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        masked = torch.zeros_like(input_ids, dtype=torch.bool)
        targets = torch.empty(len(chunk), dtype=torch.long)
        for row, copy in enumerate(chunk):
            ids, words = encodings[copy.text].ids, encodings[copy.text].word_ids
            input_ids[row, : len(ids)] = torch.tensor(
                masked_copy(ids, words, copy.position, l2r=copy.l2r, mask_id=mask_id)
            )
            attention[row, : len(ids)] = 1
            targets[row] = ids[copy.position]
            masked[row, copy.position] = True
        with autocast(device):
            logits = masked_logits(model, input_ids.to(device), attention.to(device), masked.to(device))
        log_probabilities = (
            F.log_softmax(logits.float(), dim=-1).gather(1, targets.to(device)[:, None])[:, 0].cpu().numpy()
        )
        np.add.at(sums, ([copy.text for copy in chunk], [int(copy.l2r) for copy in chunk]), log_probabilities)
    return text_scores(texts, encodings, special_np, sums)
