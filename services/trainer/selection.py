"""Which sentences each iteration of a run trains on: a fresh candidate pool, the strategy's
signal over it (the added pieces, embedding shifts, MLM losses), and the sampler's weighted draw."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from driftlm.services.core import store
from driftlm.services.core.candidates import CandidatePool
from driftlm.services.core.strategy import Strategy

from .candidate_files import ScoresFile
from .data import TokenizedPool
from .models import autocast, cls_embeddings, embedding_matrix
from .run_context import RunContext, Vocabulary, derive_seed, vocab_hops
from .scored_inputs import first_candidate_pool
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


@dataclass(frozen=True)
class _Moment:
    """What a strategy's signal may look at when one iteration's sentences are chosen."""

    model: PreTrainedModel
    pool: TokenizedPool
    # The candidates' positions in the pool, ascending.
    candidates: np.ndarray
    vocabulary: Vocabulary
    iteration: int
    # The signal taken before the last iteration trained (signal_before); None at the first.
    before: np.ndarray | None = None
    # (V,) how often the last iteration trained on each token; None at the first.
    trained_counts: np.ndarray | None = None
    # First iteration: ids of the pieces the vocabulary updates added.
    added: list[int] = field(default_factory=list)


class Selector:
    """Chooses a run's sentences, iteration by iteration, never among the held-out texts."""

    def __init__(self, spec: RunSpec, context: RunContext, trainable: np.ndarray) -> None:
        self.spec = spec
        self.context = context
        self.device = context.device
        # The pool's texts a run may train on: all but those held out for the loss memory.
        self.trainable = trainable
        self._signals: dict[Strategy, Callable[[_Moment], CandidatePool | None]] = {
            Strategy.TOKEN_EMBEDDING_SHIFT: self._token_shift_pool,
            Strategy.SENTENCE_EMBEDDING_SHIFT: self._sentence_shift_pool,
            Strategy.TOKEN_MLM_LOSS: self._mlm_loss_pool,
        }

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
        fresh: int,
        iteration: int,
        strategy: Strategy,
        candidate_pool: CandidatePool,
    ) -> IterationSelection:
        """Ask the sampler for the iteration's sentences; top up uniformly when too few are eligible."""
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

    def _choose(self, moment: _Moment, fresh: int) -> IterationSelection:
        """The run's strategy over the candidates, by its signal; uniform while it has none."""
        signal = self._signals.get(self.spec.strategy)
        scored = signal(moment) if signal is not None else None
        if scored is None:
            uniform = CandidatePool(lengths=moment.pool.lengths[moment.candidates])
            return self._select(moment.candidates, fresh, moment.iteration, Strategy.UNIFORM, uniform)
        return self._select(moment.candidates, fresh, moment.iteration, self.spec.strategy, scored)

    def first(
        self, model: PreTrainedModel, pool: TokenizedPool, fresh: int, vocabulary: Vocabulary, added: list[int]
    ) -> IterationSelection:
        """The first iteration's sentences: nothing has trained yet. A scores file, when the run
        has one, weighs the candidates instead of a scoring pass here."""
        candidates = self.candidates(pool, fresh, 0)
        if self.spec.candidate_scores:
            scores = ScoresFile(Path(self.spec.candidate_scores), "candidate_scores")
            base = self.context.checkpoints.record(self.spec.base_checkpoint_id)
            weighed = first_candidate_pool(
                scores,
                self.spec.strategy,
                pool.lengths,
                candidates,
                max_length=self.spec.max_length,
                same_vocabulary=base.vocab_version_id == self.spec.vocab_version_id,
            )
            return self._select(candidates, fresh, 0, self.spec.strategy, weighed)
        return self._choose(_Moment(model, pool, candidates, vocabulary, 0, added=added), fresh)

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
        """A later iteration's sentences, by what the last iteration's training changed."""
        moment = _Moment(model, pool, candidates, vocabulary, iteration, before=before, trained_counts=trained_counts)
        return self._choose(moment, fresh)

    # Each strategy's signal: the candidate pool it weighs, or None to draw uniformly ------------

    def _token_shift_pool(self, moment: _Moment) -> CandidatePool | None:
        """First iteration: the added pieces are the targets, the rarest in the pool first, so that
        the draw covers every new piece rather than the commonest one (nothing has shifted yet).
        Later: the tokens that moved beyond noise (shift_targets), candidates scored by their best."""
        pool, candidates, vocabulary = moment.pool, moment.candidates, moment.vocabulary
        if moment.iteration == 0:
            if not moment.added:
                return None
            sentences_with = self._sentences_with(pool, candidates, len(vocabulary.pieces))
            rarity = np.zeros(len(vocabulary.pieces))
            rarity[moment.added] = 1.0 / np.maximum(sentences_with[moment.added], 1)
            targets, scores = np.asarray(moment.added), rarity
        else:
            if moment.before is None or moment.trained_counts is None:
                return None
            after = embedding_matrix(moment.model).detach().float().cpu().numpy()
            shift, _ = self.context.sampler.cosine_distance(moment.before, after)
            targets, scores = shift_targets(
                shift,
                moment.trained_counts[: len(shift)],
                candidate_sentences=self._sentences_with(pool, candidates, len(shift)),
                added=np.asarray(self._added_pieces(), dtype=np.int64),
                special=vocabulary.special.numpy(),
                limit=self.spec.top_x,
            )
            if not targets.size:
                return None
        return CandidatePool(
            lengths=pool.lengths[candidates],
            token_ids=pool.flat_ids(candidates.tolist()),
            token_shift=scores,
            target_token_ids=targets,
            top_x=min(self.spec.top_x, len(scores)),
        )

    def _sentence_shift_pool(self, moment: _Moment) -> CandidatePool | None:
        """The candidates' [CLS] before and after the last iteration (none before the first)."""
        if moment.before is None:
            return None
        after_cls = self._cls(moment.model, moment.pool, moment.candidates)
        return CandidatePool(lengths=moment.pool.lengths[moment.candidates], old_cls=moment.before, new_cls=after_cls)

    def _mlm_loss_pool(self, moment: _Moment) -> CandidatePool:
        losses = self._sentence_losses(
            moment.model, moment.pool, moment.candidates, moment.vocabulary, moment.iteration
        )
        return CandidatePool(lengths=moment.pool.lengths[moment.candidates], losses=losses)

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
