"""Which sentences each iteration of a run trains on: a fresh candidate pool, the strategy's
signal over it (the added pieces, embedding shifts, MLM losses), and the sampler's weighted draw."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from driftlm.services.core import store
from driftlm.services.core.candidates import CandidatePool
from driftlm.services.core.strategy import Strategy

from .data import TokenizedPool
from .models import autocast, cls_embeddings, embedding_matrix
from .run_context import RunContext, Vocabulary, derive_seed, vocab_hops
from .scoring import token_losses
from .shift_targets import shift_targets
from .spec import RunSpec

# Candidates per forward pass when scoring them.
_SCORE_BATCH = 64


@dataclass(frozen=True)
class IterationSelection:
    """The sentences one iteration trains on and how they were chosen (selection-N.json).

    Sentences are indices into the run's pool: the non-empty texts of its slices, in order.
    """

    iteration: int
    # The strategy that weighed the candidates (uniform where the run's has no signal yet).
    strategy: Strategy
    # Drawn by weight without replacement, in draw order.
    sentence_indices: tuple[int, ...]
    # The pool drawn from, ascending, and each candidate's weight (0: not eligible).
    candidate_indices: tuple[int, ...]
    candidate_weights: tuple[float, ...]
    eligible_count: int
    # Drawn uniformly (with replacement) when fewer candidates were eligible than the iteration needs.
    topped_up_indices: tuple[int, ...]
    # Token shift: the target tokens, most shifted first.
    target_token_ids: tuple[int, ...]

    @property
    def sentences(self) -> list[int]:
        """What the iteration trains on, before replay is mixed in."""
        return [*self.sentence_indices, *self.topped_up_indices]

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "strategy": self.strategy.value,
            "sentence_indices": list(self.sentence_indices),
            "candidate_indices": list(self.candidate_indices),
            "candidate_weights": list(self.candidate_weights),
            "eligible_count": self.eligible_count,
            "topped_up_indices": list(self.topped_up_indices),
            "target_token_ids": list(self.target_token_ids),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> IterationSelection:
        return cls(
            iteration=int(record["iteration"]),
            strategy=Strategy(record["strategy"]),
            sentence_indices=tuple(int(i) for i in record["sentence_indices"]),
            candidate_indices=tuple(int(i) for i in record["candidate_indices"]),
            candidate_weights=tuple(float(w) for w in record["candidate_weights"]),
            eligible_count=int(record["eligible_count"]),
            topped_up_indices=tuple(int(i) for i in record["topped_up_indices"]),
            target_token_ids=tuple(int(i) for i in record["target_token_ids"]),
        )


def selection_path(run_directory: Path, iteration: int) -> Path:
    """Where an iteration's selection is kept."""
    return run_directory / f"selection-{iteration}.json"


def load_selections(run_directory: Path) -> list[IterationSelection]:
    """Every selection a run has made so far, first iteration first."""
    selections: list[IterationSelection] = []
    while (path := selection_path(run_directory, len(selections))).is_file():
        selections.append(IterationSelection.from_json(store.read_json(path)))
    return selections


class Selector:
    """Chooses a run's sentences, iteration by iteration, never among the held-out texts."""

    def __init__(self, spec: RunSpec, context: RunContext, trainable: np.ndarray) -> None:
        self.spec = spec
        self.context = context
        self.device = context.device
        # The pool's texts a run may train on: all but those held out for the loss memory.
        self.trainable = trainable

    def candidates(self, pool: TokenizedPool, fresh: int, iteration: int) -> np.ndarray:
        """A fresh uniform pool of candidate sentences (never the held-out ones), ascending."""
        size = min(len(self.trainable), self.spec.candidate_pool_size or 8 * max(fresh, 1))
        rng = np.random.default_rng(derive_seed(self.spec.seed, "candidates", iteration))
        return np.sort(rng.choice(self.trainable, size, replace=False))

    @torch.no_grad()
    def _cls(self, model: PreTrainedModel, pool: TokenizedPool, indices: np.ndarray) -> np.ndarray:
        model.eval()
        rows = []
        for start in range(0, len(indices), _SCORE_BATCH):
            input_ids, attention = pool.batch(indices[start : start + _SCORE_BATCH].tolist())
            with autocast(self.device):
                rows.append(cls_embeddings(model, input_ids.to(self.device), attention.to(self.device)).float().cpu())
        model.train()
        return torch.cat(rows).numpy() if rows else np.zeros((0, 1), np.float32)

    def _sentence_losses(
        self, model: PreTrainedModel, pool: TokenizedPool, indices: np.ndarray, vocabulary: Vocabulary, iteration: int
    ) -> np.ndarray:
        """(N,) each candidate's mean MLM loss over ceil(1 / mask_fraction) masks, so that each
        piece is predicted about once: one 15% mask of a ten-piece sentence scores one or two
        pieces, and the score would be mostly which ones."""
        occurrences = token_losses(
            model,
            pool,
            special=vocabulary.special,
            mask_id=vocabulary.mask_id,
            mask_fraction=self.spec.mask_fraction,
            seed=derive_seed(self.spec.seed, "score", iteration),
            device=self.device,
            rows=indices.tolist(),
            passes=math.ceil(1 / self.spec.mask_fraction),
        )
        model.train()
        positions = np.searchsorted(indices, occurrences.texts)
        sums = np.bincount(positions, weights=occurrences.losses, minlength=len(indices))
        counts = np.bincount(positions, minlength=len(indices))
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)

    def signal_before(self, model: PreTrainedModel, pool: TokenizedPool, candidates: np.ndarray) -> np.ndarray | None:
        """What the next selection compares against, taken before this iteration trains."""
        if self.spec.iterations == 1:
            return None
        if self.spec.strategy is Strategy.TOKEN_EMBEDDING_SHIFT:
            return embedding_matrix(model).detach().float().cpu().numpy().copy()
        if self.spec.strategy is Strategy.SENTENCE_EMBEDDING_SHIFT:
            return self._cls(model, pool, candidates)
        return None

    def _select(
        self,
        candidates: np.ndarray,
        pool: TokenizedPool,
        fresh: int,
        iteration: int,
        strategy: Strategy,
        *,
        candidate_token_ids: np.ndarray | None = None,
        token_shift: np.ndarray | None = None,
        target_token_ids: np.ndarray | None = None,
        old_cls: np.ndarray | None = None,
        new_cls: np.ndarray | None = None,
        losses: np.ndarray | None = None,
    ) -> IterationSelection:
        """Ask the sampler for the iteration's sentences; top up uniformly when too few are eligible."""
        candidate_pool = CandidatePool(
            lengths=pool.lengths[candidates],
            token_ids=candidate_token_ids,
            token_shift=token_shift,
            target_token_ids=np.empty(0, dtype=np.int64) if target_token_ids is None else target_token_ids,
            top_x=min(self.spec.top_x, len(token_shift)) if token_shift is not None else 0,
            old_cls=old_cls,
            new_cls=new_cls,
            losses=losses,
        )
        chosen = self.context.sampler.select_sentences(
            strategy,
            candidate_pool,
            k=min(fresh, len(candidates)),
            alpha=self.spec.sampling_alpha,
            # The run's own strategy in the seed: two strategies that weigh alike still draw apart.
            seed=derive_seed(self.spec.seed, "select", self.spec.strategy.value, iteration),
        )
        drawn = candidates[np.asarray(chosen.indices, dtype=np.int64)]
        rng = np.random.default_rng(derive_seed(self.spec.seed, "top-up", iteration))
        topped_up = self.trainable[rng.integers(0, len(self.trainable), max(fresh - len(drawn), 0))]
        return IterationSelection(
            iteration=iteration,
            strategy=strategy,
            sentence_indices=tuple(int(i) for i in drawn),
            candidate_indices=tuple(int(i) for i in candidates),
            candidate_weights=tuple(float(w) for w in np.asarray(chosen.weights)),
            eligible_count=int(chosen.eligible_count),
            topped_up_indices=tuple(int(i) for i in topped_up),
            target_token_ids=tuple(int(i) for i in np.asarray(chosen.target_token_ids)),
        )

    def first(
        self, model: PreTrainedModel, pool: TokenizedPool, fresh: int, vocabulary: Vocabulary, added: list[int]
    ) -> IterationSelection:
        candidates = self.candidates(pool, fresh, 0)
        strategy = self.spec.strategy
        if strategy is Strategy.TOKEN_EMBEDDING_SHIFT and added:
            # Nothing has shifted yet: the added pieces are the targets, the rarest in the pool
            # first, so that the draw covers every new piece rather than the commonest one.
            sentences_with = self._sentences_with(pool, candidates, len(vocabulary.pieces))
            rarity = np.zeros(len(vocabulary.pieces))
            rarity[added] = 1.0 / np.maximum(sentences_with[added], 1)
            return self._select(
                candidates,
                pool,
                fresh,
                0,
                strategy,
                candidate_token_ids=pool.flat_ids(candidates.tolist()),
                token_shift=rarity,
                target_token_ids=np.asarray(added),
            )
        if strategy is Strategy.TOKEN_MLM_LOSS:
            losses = self._sentence_losses(model, pool, candidates, vocabulary, 0)
            return self._select(candidates, pool, fresh, 0, strategy, losses=losses)
        return self._select(candidates, pool, fresh, 0, Strategy.UNIFORM)

    def next(
        self,
        model: PreTrainedModel,
        pool: TokenizedPool,
        candidates: np.ndarray,
        before: np.ndarray | None,
        fresh: int,
        vocabulary: Vocabulary,
        iteration: int,
        trained_counts: np.ndarray,
    ) -> IterationSelection:
        strategy = self.spec.strategy
        if strategy is Strategy.TOKEN_EMBEDDING_SHIFT and before is not None:
            after = embedding_matrix(model).detach().float().cpu().numpy()
            shift, _ = self.context.sampler.cosine_distance(before, after)
            targets, scores = shift_targets(
                shift,
                trained_counts[: len(shift)],
                candidate_sentences=self._sentences_with(pool, candidates, len(shift)),
                added=np.asarray(self._added_pieces(), dtype=np.int64),
                special=vocabulary.special.numpy(),
                limit=self.spec.top_x,
            )
            if targets.size:
                return self._select(
                    candidates,
                    pool,
                    fresh,
                    iteration,
                    strategy,
                    candidate_token_ids=pool.flat_ids(candidates.tolist()),
                    # Candidates are scored by their best target (shift_targets' order), not the raw shift.
                    token_shift=scores,
                    target_token_ids=targets,
                )
        if strategy is Strategy.SENTENCE_EMBEDDING_SHIFT and before is not None:
            after_cls = self._cls(model, pool, candidates)
            return self._select(candidates, pool, fresh, iteration, strategy, old_cls=before, new_cls=after_cls)
        if strategy is Strategy.TOKEN_MLM_LOSS:
            losses = self._sentence_losses(model, pool, candidates, vocabulary, iteration)
            return self._select(candidates, pool, fresh, iteration, strategy, losses=losses)
        return self._select(candidates, pool, fresh, iteration, Strategy.UNIFORM)

    @staticmethod
    def _sentences_with(pool: TokenizedPool, candidates: np.ndarray, vocab_size: int) -> np.ndarray:
        """(V,) how many candidate sentences hold each token."""
        held = np.concatenate([np.unique(pool.ids[i]) for i in candidates]) if len(candidates) else np.empty(0, int)
        return np.bincount(held, minlength=vocab_size)[:vocab_size]

    def _added_pieces(self) -> list[int]:
        """Ids of the pieces the vocabulary updates between the base checkpoint and the run added."""
        base = self.context.checkpoints.record(self.spec.base_checkpoint_id)
        hops = vocab_hops(self.context.vocab, base.vocab_version_id, self.spec.vocab_version_id)
        if not hops:
            return []
        return sorted(i for piece, i in hops[-1].new_pieces.items() if piece not in hops[0].old_pieces)
