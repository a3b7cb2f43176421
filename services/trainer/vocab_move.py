"""Moving a model to a new vocab version: the embedding rows, the tied decoder and its bias.

Kept pieces keep their rows (moved if their ids moved). An added piece starts as the mean of the
rows of the pieces the old vocabulary split it into (FVT, Gee et al. 2022), which keeps what the
model knew about its parts; or, as an option, as a draw from a normal with the mean and covariance
of all old rows (Hewitt 2021). Right after the move the model predicts exactly as before on text
made of kept pieces: their rows and biases are untouched.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from .models import embedding_matrix, output_bias


class EmbeddingInit(enum.Enum):
    """How an added piece's embedding starts."""

    FVT = "fvt"
    MEAN_COVARIANCE = "mean-covariance"


@dataclass(frozen=True)
class VocabHop:
    """One step along a vocab chain: the two piece tables and each added piece's decomposition."""

    old_pieces: Mapping[str, int]
    new_pieces: Mapping[str, int]
    # new id of an added piece -> its pieces' ids in the old vocabulary
    decompositions: Mapping[int, Sequence[int]]


def old_ids_of_new(hop: VocabHop) -> np.ndarray:
    """(V_new,) the old id of each new id's piece, -1 for added pieces."""
    mapping = np.full(len(hop.new_pieces), -1, dtype=np.int64)
    for piece, new_id in hop.new_pieces.items():
        old_id = hop.old_pieces.get(piece)
        if old_id is not None:
            mapping[new_id] = old_id
    return mapping


def _new_rows(
    old: torch.Tensor, hop: VocabHop, mapping: np.ndarray, init: EmbeddingInit, generator: torch.Generator
) -> torch.Tensor:
    rows = torch.empty((len(hop.new_pieces), *old.shape[1:]), dtype=old.dtype)
    kept = torch.from_numpy(np.flatnonzero(mapping >= 0))
    rows[kept] = old[torch.from_numpy(mapping[mapping >= 0])]
    added = np.flatnonzero(mapping < 0)
    if added.size == 0:
        return rows
    if init is EmbeddingInit.MEAN_COVARIANCE and old.dim() == 2:
        centred = old.double() - old.double().mean(0)
        covariance = centred.T @ centred / max(old.shape[0] - 1, 1)
        covariance += 1e-6 * torch.eye(old.shape[1], dtype=torch.float64)  # keep it positive definite
        factor = torch.linalg.cholesky(covariance)
        noise = torch.randn((added.size, old.shape[1]), generator=generator, dtype=torch.float64)
        rows[torch.from_numpy(added)] = (old.double().mean(0) + noise @ factor.T).to(old.dtype)
        return rows
    for new_id in added.tolist():
        parts = list(hop.decompositions.get(new_id, ()))
        rows[new_id] = old[parts].mean(0) if parts else old.mean(0)
    return rows


def move_to_vocabulary(model: PreTrainedModel, hop: VocabHop, *, init: EmbeddingInit, seed: int) -> np.ndarray:
    """Rebuild the input embeddings, the tied decoder and its bias for hop.new_pieces, in place.

    Returns old_ids_of_new(hop), for moving the loss memory the same way.
    """
    mapping = old_ids_of_new(hop)
    generator = torch.Generator().manual_seed(seed)
    bias = output_bias(model)
    with torch.no_grad():
        new_embeddings = _new_rows(embedding_matrix(model).detach().cpu(), hop, mapping, init, generator)
        new_bias = None if bias is None else _new_rows(bias.detach().cpu(), hop, mapping, EmbeddingInit.FVT, generator)
        model.resize_token_embeddings(len(hop.new_pieces))
        embedding_matrix(model).copy_(new_embeddings)
        model.tie_weights()
        moved_bias = output_bias(model)
        if new_bias is not None and moved_bias is not None:
            moved_bias.copy_(new_bias)
    return mapping
