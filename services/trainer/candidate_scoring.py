"""Scoring a corpus's texts as sampling candidates, block by block: the batch inference behind
ScoreCandidates, run alike in the trainer's process and on Ray actors.

Per text: its length in pieces (the strategies' length term), its mean MLM loss (the loss
strategy), its [CLS] embedding and optionally a baseline checkpoint's (the sentence-shift
strategy's after and before) with the cosine distance between them. Every random number a text
uses is a pure function of (seed, shard, line, pass, position), and a block is scored the same way
wherever it runs, so the engines agree whatever the batching or the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import PreTrainedModel

from driftlm.kernels.counter_rng import PURPOSE_CANDIDATE_MASKS, stream_for
from driftlm.services.core.ray_corpus import DIGEST_BLOCK_TEXTS
from driftlm.services.runtime.calls import stop_if_abandoned

from .models import autocast, cls_embeddings, load_model, masked_logits, on_device

# Texts per forward pass.
SCORE_BATCH = 64
# The columns with a list per text, and their element types.
RAGGED_COLUMNS = {"token_ids": np.int32, "token_losses": np.float32}
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0


@dataclass(frozen=True)
class ScoringSetup:
    """Everything a scorer needs, by value or path (it travels to Ray actors)."""

    model_dir: str
    # None: no baseline columns.
    baseline_dir: str | None
    tokenizer_json: str
    # (V,) bool: pieces never masked ([CLS], [PAD]...).
    special: np.ndarray
    mask_id: int
    pad_id: int
    max_length: int
    mask_fraction: float
    seed: int

    @property
    def passes(self) -> int:
        """Masks per text, so that each piece is predicted about once."""
        return math.ceil(1 / self.mask_fraction)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mask_uniforms(seed: int, shard: int, lines: np.ndarray, pass_index: int, width: int) -> np.ndarray:
    """(len(lines), width) uniforms in (0, 1): row i's are those of text (shard, lines[i]) in this pass."""
    stream = np.uint64(stream_for(seed, PURPOSE_CANDIDATE_MASKS))
    keys = (np.uint64(shard) << np.uint64(45)) | (lines.astype(np.uint64) << np.uint64(5)) | np.uint64(pass_index)
    with np.errstate(over="ignore"):
        text_streams = _mix64(stream + keys * _GOLDEN_GAMMA)
        positions = np.arange(1, width + 1, dtype=np.uint64)
        z = _mix64(text_streams[:, None] + positions[None, :] * _GOLDEN_GAMMA)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * _TWO_POW_MINUS_53


class BlockScoring(Protocol):
    """What a corpus pass runs on each block, in the trainer's process or on a Ray actor."""

    def score_block(self, shard: int, block: int, texts: list[str]) -> dict[str, np.ndarray]: ...


class BlockScorer:
    """Scores blocks of texts with a checkpoint (and a baseline) on one device."""

    def __init__(self, setup: ScoringSetup, device: torch.device) -> None:
        self.setup = setup
        self.device = device
        self.model = _eval_model(setup.model_dir, device)
        self.baseline = None if setup.baseline_dir is None else _eval_model(setup.baseline_dir, device)
        self.tokenizer = Tokenizer.from_str(setup.tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(setup.max_length)
        self.special = torch.from_numpy(np.asarray(setup.special, dtype=bool))

    @torch.no_grad()
    def score_block(self, shard: int, block: int, texts: list[str]) -> dict[str, np.ndarray]:
        """Columns for the block's non-blank texts, in order: shard, line, length, mlm_loss,
        token_ids and token_losses (its masked occurrences), cls and, with a baseline, baseline_cls
        and cls_shift."""
        first_line = block * DIGEST_BLOCK_TEXTS
        kept = [i for i, text in enumerate(texts) if text.strip()]
        lines = np.asarray(kept, dtype=np.int64) + first_line
        encodings = self.tokenizer.encode_batch([texts[i] for i in kept]) if kept else []
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        hidden = int(self.model.config.hidden_size)
        cls = np.zeros((len(ids), hidden), dtype=np.float32)
        baseline_cls = np.zeros_like(cls) if self.baseline is not None else None
        occurrences: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (text, token id, loss) per pass
        order = np.argsort(lengths, kind="stable")  # a batch pads to about its own texts' length
        for start in range(0, len(order), SCORE_BATCH):
            stop_if_abandoned()
            rows = order[start : start + SCORE_BATCH]
            input_ids, attention = _padded([ids[r] for r in rows], self.setup.pad_id)
            with autocast(self.device):
                cls[rows] = (
                    cls_embeddings(self.model, input_ids.to(self.device), attention.to(self.device)).float().cpu()
                )
                if self.baseline is not None and baseline_cls is not None:
                    baseline_cls[rows] = (
                        cls_embeddings(self.baseline, input_ids.to(self.device), attention.to(self.device))
                        .float()
                        .cpu()
                    )
            for pass_index in range(self.setup.passes):
                row_of, token_ids, losses = self._masked_losses(input_ids, attention, shard, lines[rows], pass_index)
                occurrences.append((rows[row_of], token_ids, losses))
        occurrences.append((np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.float32)))
        texts_of, token_ids, losses = (np.concatenate(parts) for parts in zip(*occurrences, strict=True))
        order = np.argsort(texts_of, kind="stable")  # a text's occurrences pass by pass, by position
        counts = np.bincount(texts_of, minlength=len(ids))
        sums = np.bincount(texts_of, weights=losses.astype(np.float64), minlength=len(ids))
        splits = np.cumsum(counts)[:-1]
        columns: dict[str, np.ndarray] = {
            "shard": np.full(len(ids), shard, dtype=np.int32),
            "line": lines,
            "length": lengths.astype(np.int32),
            "mlm_loss": np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32),
            "token_ids": _ragged(np.split(token_ids[order], splits) if len(ids) else []),
            "token_losses": _ragged(np.split(losses[order], splits) if len(ids) else []),
            "cls": cls,
        }
        if baseline_cls is not None:
            columns["baseline_cls"] = baseline_cls
            columns["cls_shift"] = _cosine_distance(baseline_cls, cls)
        return columns

    def _masked_losses(
        self, input_ids: torch.Tensor, attention: torch.Tensor, shard: int, lines: np.ndarray, pass_index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This pass's masked occurrences, row by row and by position: (row, token id, loss in
        nats); every row with a piece to predict masks at least one (the one with the smallest
        uniform)."""
        draws = torch.from_numpy(mask_uniforms(self.setup.seed, shard, lines, pass_index, input_ids.shape[1]))
        candidates = attention.bool() & ~self.special[input_ids]
        masked = candidates & (draws < self.setup.mask_fraction)
        empty = ~masked.any(dim=1) & candidates.any(dim=1)
        first = torch.where(candidates, draws, torch.inf).argmin(dim=1)
        masked[empty.nonzero().flatten(), first[empty]] = True
        if not masked.any():
            return np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.float32)
        corrupted = input_ids.masked_fill(masked, self.setup.mask_id)
        with autocast(self.device):
            logits = masked_logits(
                self.model, corrupted.to(self.device), attention.to(self.device), masked.to(self.device)
            )
        targets = input_ids[masked]
        losses = F.cross_entropy(logits.float(), targets.to(self.device), reduction="none").cpu().numpy()
        return torch.nonzero(masked)[:, 0].numpy(), targets.numpy().astype(np.int32), losses.astype(np.float32)


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of arrays (np.array would stack rows of equal length into 2-D)."""
    out = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        out[index] = row
    return out


def _eval_model(directory: str, device: torch.device) -> PreTrainedModel:
    return on_device(load_model(Path(directory)), device).eval()


def _padded(rows: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.from_numpy(row)
        attention[index, : len(row)] = 1
    return input_ids, attention


def _cosine_distance(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """1 - cos(before_i, after_i) per row, in float64 then float32; 0 where either row is zero."""
    a, b = before.astype(np.float64), after.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    return (1.0 - cosine).astype(np.float32)


def table_columns(columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """The block's columns as Arrow arrays (embeddings as fixed-size lists of float32, the
    per-occurrence columns as lists)."""
    import pyarrow as pa

    arrays: dict[str, Any] = {}
    for name, values in columns.items():
        if name in RAGGED_COLUMNS:  # object rows, or 2-D where Ray stacked rows of equal length
            rows = [np.asarray(row, dtype=RAGGED_COLUMNS[name]) for row in values]
            offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int32)
            flat = np.concatenate(rows) if rows else np.empty(0, RAGGED_COLUMNS[name])
            arrays[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        elif values.ndim == 2:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        else:
            arrays[name] = pa.array(values)
    return arrays
