"""Pseudo-log-likelihood of texts under a PyTorch masked LM (core/pseudo_likelihood.py plans
the masked copies and sums the scores; the inference service does the same with ONNX Runtime).

Each masked copy needs the vocabulary head at one position only, which masked_logits provides.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import PreTrainedModel

from driftlm.services.core.pseudo_likelihood import TextScore, masked_copy, plan_copies, text_scores
from driftlm.services.core.ray_corpus import DIGEST_BLOCK_TEXTS
from driftlm.services.runtime.calls import stop_if_abandoned

from .candidate_scoring import ScoringSetup
from .models import autocast, load_model, masked_logits, on_device

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


class BlockPseudoLikelihood:
    """PLL of blocks of a corpus's texts with one checkpoint on one device (the corpus pass behind
    ScorePseudoLikelihood with a corpus, alike in the trainer's process and on Ray actors). No
    randomness: the engines agree up to floating-point order."""

    def __init__(self, setup: ScoringSetup, device: torch.device) -> None:
        self.setup = setup
        self.device = device
        self.model = on_device(load_model(Path(setup.model_dir)), device).eval()
        self.special = torch.from_numpy(np.asarray(setup.special, dtype=bool))

    def score_block(self, shard: int, block: int, texts: list[str]) -> dict[str, np.ndarray]:
        """Columns for the block's non-blank texts, in order: shard, line, log_likelihood,
        word_l2r_log_likelihood, pieces, words, characters."""
        kept = [i for i, text in enumerate(texts) if text.strip()]
        scores = pseudo_log_likelihoods(
            self.model,
            self.setup.tokenizer_json,
            [texts[i] for i in kept],
            mask_id=self.setup.mask_id,
            special=self.special,
            max_length=self.setup.max_length,
            device=self.device,
        )
        return {
            "shard": np.full(len(kept), shard, dtype=np.int32),
            "line": np.asarray(kept, dtype=np.int64) + block * DIGEST_BLOCK_TEXTS,
            "log_likelihood": np.array([s.log_likelihood for s in scores], dtype=np.float64),
            "word_l2r_log_likelihood": np.array([s.word_l2r_log_likelihood for s in scores], dtype=np.float64),
            **{
                name: np.array([getattr(s, name) for s in scores], dtype=np.int32)
                for name in ("pieces", "words", "characters")
            },
        }
