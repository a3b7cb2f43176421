"""One run, start to end: move to the vocab version, then iterate (select sentences, train, checkpoint).

Everything random is derived from (seed, what, when): the candidate pool of an iteration, the
selection, each step's masking and dropout. A run resumed from its last checkpoint therefore
continues exactly as the uninterrupted run would have, and ends with the same weights. A run asked
to stop for a shutdown (`RunContext.preempt`) stops at a step boundary and leaves a snapshot
(a checkpoint with its optimiser state, plus what the iteration measured before it began), from
which it resumes mid-iteration, again exactly.

An iteration trains `steps_per_iteration` steps on sentences chosen for it. At its end the
strategy's signal is measured (embedding shift, [CLS] shift or MLM loss, on a fresh candidate
pool), the sampling service turns it into the next iteration's sentences, and a checkpoint is
written with the optimiser state, the loss memory and that selection.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save as serialise_arrays
from transformers import PreTrainedModel

from driftlm.services.core import store
from driftlm.services.core.candidates import CandidatePool
from driftlm.services.core.corpus import texts_of_files
from driftlm.services.core.curated import CuratedDataError, read_curated
from driftlm.services.core.errors import FailedPreconditionError, InvalidArgumentError
from driftlm.services.core.strategy import Strategy

from .checkpoints import CheckpointRecord, CheckpointStore, new_checkpoint_id, now
from .data import TokenizedPool, tokenize_texts
from .distributed import Ranks
from .loss_memory import LossMemory
from .masking import MaskedBatch, mask_batch
from .models import (
    MaskedLM,
    autocast,
    cls_embeddings,
    embedding_matrix,
    head_parameters,
    masked_logits,
    on_device,
    parameter_count,
)
from .peers import Sampler, VocabPeer, VocabVersion
from .scoring import Occurrences, token_losses
from .shift_targets import shift_targets
from .spec import RunKind, RunSpec
from .trigger import calibrated_memory
from .vocab_move import VocabHop, move_to_vocabulary
from .word_memory import WordMemory
from .words import WordSplitter

_GRAD_CLIP = 1.0
# A run holds texts out to calibrate its final memory when its slices have at least this many
# texts, by default a tenth of them up to this many.
_MIN_TEXTS_FOR_REFERENCE = 40
# Masks drawn over each trained text for the token-loss memory (each piece is scored about
# 2 x mask_fraction of its occurrences; the texts are many).
_MEMORY_PASSES = 2
_DEFAULT_REFERENCE_TEXTS = 1000
# Length grouping sorts sentences within windows of this many batches (see _iteration_order).
_GROUPING_WINDOW_BATCHES = 64
_WARMUP_FRACTION = 0.1
_SCORE_BATCH = 64


class RunCancelledError(Exception):
    """CancelRun asked the run to stop."""


class RunPreemptedError(Exception):
    """The service is stopping: the run saved where it stood and resumes when the service restarts."""


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
class _Preemption:
    """Where a preempted run stood (preempted.json): its snapshot and progress."""

    checkpoint_id: str
    iteration: int
    steps_done: int
    step: int
    train_tokens: int
    wall_s: float


@dataclass
class Progress:
    """What a run reports after every step."""

    step: int = 0
    iteration: int = 0
    loss: float = math.nan
    tokens_per_s: float = 0.0
    eta_s: float = 0.0
    train_tokens: int = 0
    wall_s: float = 0.0
    checkpoint_id: str = ""


@dataclass
class RunContext:
    """The services and stores a run works with."""

    run_id: str
    run_directory: Path
    checkpoints: CheckpointStore
    vocab: VocabPeer
    sampler: Sampler
    device: torch.device
    report: Callable[[Progress], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    # Set when the service stops: save at the next step boundary and stop (resumed on restart).
    preempt: threading.Event = field(default_factory=threading.Event)
    # This process among the training processes (torchrun); alone by default.
    ranks: Ranks = field(default_factory=Ranks)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one purpose and moment of a run."""
    digest = hashlib.sha256("\0".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def vocab_hops(vocab: VocabPeer, from_version: str, to_version: str) -> list[VocabHop]:
    """The chain of updates from the checkpoint's version to the run's, oldest first.

    Raises:
        FailedPreconditionError: to_version does not descend from from_version.
    """
    chain = []
    current = vocab.version(to_version)
    while current.version_id != from_version:
        if not current.parent_id:
            raise FailedPreconditionError(
                f"vocab version {to_version} does not descend from {from_version}, the checkpoint's version; "
                "train on a version derived from it",
                reason="VOCAB_NOT_DERIVED",
            )
        parent = vocab.version(current.parent_id)
        chain.append((parent, current))
        current = parent
    hops = []
    for parent, child in reversed(chain):
        hops.append(
            VocabHop(
                old_pieces=parent.piece_ids,
                new_pieces=child.piece_ids,
                decompositions={piece.id: list(piece.parent_decomposition) for piece in child.added},
            )
        )
    return hops


def learning_rate_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 10% of the steps, then linear decay to 0."""
    warmup = max(1, int(total * _WARMUP_FRACTION))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _optimizer(model: PreTrainedModel, learning_rate: float) -> torch.optim.AdamW:
    """AdamW with decay on matrices only; fused (one kernel over all parameters, 5x faster on 2 CPU
    cores for MiniLM than the default for-each implementation, and supported on CUDA too)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, fused=True)


@dataclass(frozen=True)
class Vocabulary:
    """A vocab version as the model sees it: its tokenizer, pieces and special ids."""

    tokenizer_json: str
    pieces: dict[str, int]
    # (V,) bool: never masked nor drawn as a random replacement (the version's reserved ids).
    special: torch.Tensor
    mask_id: int
    pad_id: int


def vocabulary_of(version: VocabVersion) -> Vocabulary:
    """The version's pieces and its own special tokens.

    Raises:
        FailedPreconditionError: the version has no mask token, so no masked LM can train on it.
    """
    if version.special.mask_id < 0:
        raise FailedPreconditionError(
            f"vocab version {version.version_id} has no mask token ([MASK] or <mask>); a masked LM needs one",
            reason="NO_MASK_TOKEN",
        )
    return Vocabulary(
        version.tokenizer_json,
        version.piece_ids,
        torch.from_numpy(version.special.reserved_mask(version.size)),
        version.special.mask_id,
        max(version.special.pad_id, 0),
    )


def _read_pool(
    paths: Sequence[str], text_field: str, vocabulary: Vocabulary, max_length: int, *, curated: bool = False
) -> TokenizedPool:
    """The slices' texts, tokenized; a curated dataset's examples as "prompt completion"."""
    if curated:
        try:
            texts: Iterable[str] = [e.text for path in paths for e in read_curated(Path(path), categories=None)]
        except CuratedDataError as error:
            raise InvalidArgumentError("slices", str(error)) from error
    else:
        texts = texts_of_files([Path(path) for path in paths], "slices", text_field=text_field)
    return tokenize_texts(vocabulary.tokenizer_json, texts, max_length=max_length, pad_id=vocabulary.pad_id)


class _Trainer:
    """The state of one run while it executes."""

    def __init__(self, spec: RunSpec, context: RunContext) -> None:
        self.spec = spec
        self.context = context
        self.device = context.device
        self.teachers: list[PreTrainedModel] = []
        # The pool's texts a run may train on: all but those held out for the loss memory.
        self.trainable: np.ndarray = np.empty(0, dtype=np.int64)

    # Set-up ---------------------------------------------------------------------------------

    def _base_model(self) -> tuple[PreTrainedModel, LossMemory, list[int]]:
        """The base checkpoint moved to the run's vocab version; ids of the pieces the move added."""
        base = self.context.checkpoints.record(self.spec.base_checkpoint_id)
        model = self.context.checkpoints.model(base.checkpoint_id)
        memory = self.context.checkpoints.memory(base.checkpoint_id)
        hops = vocab_hops(self.context.vocab, base.vocab_version_id, self.spec.vocab_version_id)
        for hop_number, hop in enumerate(hops):
            mapping = move_to_vocabulary(
                model, hop, init=self.spec.embedding_init, seed=derive_seed(self.spec.seed, "move", hop_number)
            )
            memory = memory.moved(mapping)
        if not hops:
            return model, memory, []
        base_pieces = hops[0].old_pieces
        return model, memory, sorted(i for piece, i in hops[-1].new_pieces.items() if piece not in base_pieces)

    def run(self) -> CheckpointRecord:
        spec, context = self.spec, self.context
        vocabulary = vocabulary_of(context.vocab.version(spec.vocab_version_id))
        checkpoint_ids = [new_checkpoint_id(context.run_id, str(i)) for i in range(spec.iterations)]
        done = sum(1 for c in checkpoint_ids if context.checkpoints.exists(c))
        if done == spec.iterations:  # it finished; only its state was not recorded
            return context.checkpoints.record(checkpoint_ids[-1])
        preemption = self._load_preemption(done)
        resumed_from = preemption.checkpoint_id if preemption else checkpoint_ids[done - 1] if done else ""
        if resumed_from:
            model, memory = context.checkpoints.model(resumed_from), context.checkpoints.memory(resumed_from)
            added: list[int] = []
        else:
            model, memory, added = self._base_model()
        model = on_device(model, self.device).train()
        if spec.head_only:
            self._freeze_all_but_the_head(model)
        self.step_module: torch.nn.Module = MaskedLM(model)
        if context.ranks.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = torch.nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        optimizer = _optimizer(model, spec.learning_rate)
        if resumed_from and (state := context.checkpoints.optimizer_state(resumed_from)) is not None:
            optimizer.load_state_dict(state)
        if spec.kind is RunKind.DISTILL:
            self.teachers = [
                on_device(context.checkpoints.model(t), self.device).eval() for t in spec.teacher_checkpoint_ids
            ]
        pool = _read_pool(
            spec.slices, spec.text_field, vocabulary, spec.max_length, curated=spec.kind is RunKind.CURATED
        )
        replay = (
            _read_pool(spec.replay_slices, spec.text_field, vocabulary, spec.max_length) if spec.replay_slices else None
        )
        if len(pool) == 0:
            raise FailedPreconditionError("the slices hold no text to train on")
        combined = TokenizedPool(pool.ids + (replay.ids if replay else []), pool.pad_id)
        lengths = combined.lengths
        held_out = self._held_out(len(pool))
        self.trainable = np.setdiff1d(np.arange(len(pool)), held_out)
        per_iteration = spec.steps_per_iteration * spec.batch_size
        replayed = round(per_iteration * spec.replay_fraction) if replay is not None and len(replay) else 0
        fresh = per_iteration - replayed
        progress = Progress(
            step=done * spec.steps_per_iteration, iteration=done, checkpoint_id=checkpoint_ids[done - 1] if done else ""
        )
        if preemption:
            progress.step, progress.train_tokens, progress.wall_s = (
                preemption.step,
                preemption.train_tokens,
                preemption.wall_s,
            )
        elif done:
            progress.train_tokens, progress.wall_s = self._resumed_totals()
        if done or preemption:
            selection = IterationSelection.from_json(store.read_json(selection_path(context.run_directory, done)))
        else:
            selection = self._first_selection(model, pool, fresh, vocabulary, added)
            if context.ranks.is_primary:
                self._save_selection(selection)
        record: CheckpointRecord | None = context.checkpoints.record(checkpoint_ids[done - 1]) if done else None
        for iteration in range(done, spec.iterations):
            resuming = preemption is not None and preemption.iteration == iteration
            first_step = preemption.steps_done if preemption is not None and resuming else 0
            started, wall_before = time.perf_counter(), progress.wall_s
            candidates_next = self._candidates(pool, fresh, iteration + 1)
            before = self._load_signal() if resuming else self._signal_before(model, pool, candidates_next)
            order = self._iteration_order(selection, lengths, len(pool), replayed, iteration)
            step_s, step_tokens = 0.0, 0
            for step_in_iteration in range(first_step, spec.steps_per_iteration):
                if context.cancel.is_set():
                    raise RunCancelledError()
                if context.preempt.is_set() and context.ranks.world == 1:
                    self._preempt(model, optimizer, memory, vocabulary, before, progress, iteration, step_in_iteration)
                    raise RunPreemptedError()
                batch = order[step_in_iteration * spec.batch_size : (step_in_iteration + 1) * spec.batch_size]
                step_started = time.perf_counter()
                loss, tokens = self._train_step(model, optimizer, combined, batch, vocabulary, progress.step)
                step_s += time.perf_counter() - step_started
                step_tokens += tokens
                progress.step += 1
                progress.loss = loss
                progress.train_tokens += tokens
                progress.tokens_per_s = step_tokens / max(step_s, 1e-9)
                progress.eta_s = step_s / (step_in_iteration + 1 - first_step) * (spec.total_steps - progress.step)
                progress.wall_s = wall_before + time.perf_counter() - started
                context.report(progress)
            if iteration + 1 < spec.iterations:
                trained_counts = np.bincount(combined.flat_ids(order), minlength=len(vocabulary.pieces))
                selection = self._next_selection(
                    model, pool, candidates_next, before, fresh, vocabulary, iteration + 1, trained_counts
                )
                if context.ranks.is_primary:
                    self._save_selection(selection)
            if iteration + 1 == spec.iterations and context.ranks.is_primary and not spec.head_only:
                memory = self._measured_memory(model, pool, held_out, vocabulary, memory)
            progress.wall_s = wall_before + time.perf_counter() - started
            record = self._save_checkpoint(
                CheckpointRecord(
                    checkpoint_id=checkpoint_ids[iteration],
                    vocab_version_id=spec.vocab_version_id,
                    parent_checkpoint_id=spec.base_checkpoint_id,
                    run_id=context.run_id,
                    step=progress.step,
                    create_time=now(),
                    parameter_count=parameter_count(model),
                    display_name=spec.display_name or f"{context.run_id} iteration {iteration + 1}",
                ),
                model,
                vocabulary.tokenizer_json,
                memory,
                # Only a run that goes on needs the optimiser state (to resume); the last checkpoint
                # is where later runs start, with an optimiser of their own: 2/3 less to store.
                optimizer.state_dict() if iteration + 1 < spec.iterations else None,
            )
            if context.ranks.is_primary:
                self._save_totals(progress)
            progress.iteration = iteration + 1
            progress.checkpoint_id = record.checkpoint_id
            context.report(progress)
        assert record is not None
        if context.ranks.is_primary:  # nothing resumes a finished run: its resume state can go
            preemption = self._last_preemption()
            for earlier in [*checkpoint_ids[:-1], *([preemption.checkpoint_id] if preemption else [])]:
                context.checkpoints.drop_optimizer_state(earlier)
        return record

    @staticmethod
    def _freeze_all_but_the_head(model: PreTrainedModel) -> None:
        """Only the MLM head's transform and bias keep gradients (and so an optimiser state)."""
        try:
            trainable = {id(p) for p in head_parameters(model)}
        except ValueError as error:
            raise FailedPreconditionError(f"head_only: {error}", reason="NO_KNOWN_HEAD") from error
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in trainable)

    def _save_checkpoint(self, record: CheckpointRecord, *artifacts: Any) -> CheckpointRecord:
        """Rank 0 writes; every rank waits until it has."""
        if self.context.ranks.is_primary:
            record = self.context.checkpoints.save(record, *artifacts)
        self.context.ranks.barrier()
        return record

    # Steps ----------------------------------------------------------------------------------

    def _masked(
        self, pool: TokenizedPool, batch: Sequence[int], vocabulary: Vocabulary, seed: int, *, every_row: bool = False
    ) -> MaskedBatch:
        input_ids, attention = pool.batch(batch)
        generator = torch.Generator().manual_seed(seed)
        masked = mask_batch(
            input_ids,
            attention,
            special=vocabulary.special,
            mask_id=vocabulary.mask_id,
            fraction=self.spec.mask_fraction,
            generator=generator,
            every_row=every_row,
        )
        return masked.to(self.device)

    def _train_step(
        self,
        model: PreTrainedModel,
        optimizer: torch.optim.AdamW,
        pool: TokenizedPool,
        batch: Sequence[int],
        vocabulary: Vocabulary,
        step: int,
    ) -> tuple[float, int]:
        spec, ranks = self.spec, self.context.ranks
        torch.manual_seed(derive_seed(spec.seed, "dropout", step, ranks.rank))
        whole = self._masked(pool, batch, vocabulary, derive_seed(spec.seed, "mask", step))
        share = whole.rows(ranks.rows(len(batch)))
        masked_total = max(int(whole.masked.sum()), 1)
        with autocast(self.device):
            logits = self.step_module(share.input_ids, share.attention_mask, share.masked)
        per_token = F.cross_entropy(logits.float(), share.targets, reduction="none")
        # Each rank's share of the batch's summed loss: DDP's average over ranks is the batch mean.
        loss = per_token.sum() * ranks.world / masked_total
        if spec.kind is RunKind.DISTILL:
            loss = (
                spec.distill_alpha * loss
                + (1 - spec.distill_alpha) * self._distillation_term(logits, share) * ranks.world / masked_total
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), _GRAD_CLIP)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, spec.total_steps, spec.learning_rate)
        optimizer.step()
        reported = float(ranks.total(loss.detach().float())) / ranks.world
        return reported, int(whole.attention_mask.sum())

    def _distillation_term(self, student_logits: torch.Tensor, masked: MaskedBatch) -> torch.Tensor:
        """tau^2 * KL(teacher || student) of the tempered distributions, summed over masked positions."""
        tau = self.spec.temperature
        with torch.no_grad(), autocast(self.device):
            teacher_probabilities = torch.stack(
                [
                    F.softmax(
                        masked_logits(t, masked.input_ids, masked.attention_mask, masked.masked).float() / tau, dim=-1
                    )
                    for t in self.teachers
                ]
            ).mean(0)
        student_log_probabilities = F.log_softmax(student_logits.float() / tau, dim=-1)
        return tau * tau * F.kl_div(student_log_probabilities, teacher_probabilities, reduction="sum")

    # Selection ------------------------------------------------------------------------------

    def _held_out(self, pool_size: int) -> np.ndarray:
        """The texts kept out of training to measure the final loss memory on, ascending."""
        if pool_size < _MIN_TEXTS_FOR_REFERENCE:
            return np.empty(0, dtype=np.int64)
        # A tenth, but up to a quarter (at most 100) of a small slice: the calibration's own size
        # bounds how small a change the trigger can tell from none.
        default = min(_DEFAULT_REFERENCE_TEXTS, max(pool_size // 10, min(pool_size // 4, 100)))
        wanted = self.spec.reference_texts or default
        count = min(wanted, pool_size // 2)  # never more than half of what there is to train on
        rng = np.random.default_rng(derive_seed(self.spec.seed, "held-out"))
        return np.sort(rng.choice(pool_size, count, replace=False))

    def _measured_memory(
        self,
        model: PreTrainedModel,
        pool: TokenizedPool,
        held_out: np.ndarray,
        vocabulary: Vocabulary,
        base: LossMemory,
    ) -> LossMemory:
        """The trigger's memory of the trained model: the base's, decayed, plus every trained text
        (token losses of up to memory_texts of them, words of all), calibrated on the held-out texts."""
        scored = self.trainable
        if len(scored) > self.spec.memory_texts:
            rng = np.random.default_rng(derive_seed(self.spec.seed, "memory-texts"))
            scored = np.sort(rng.choice(scored, self.spec.memory_texts, replace=False))

        def losses(rows: np.ndarray, purpose: str, passes: int) -> Occurrences:
            return token_losses(
                model,
                pool,
                special=vocabulary.special,
                mask_id=vocabulary.mask_id,
                mask_fraction=self.spec.mask_fraction,
                seed=derive_seed(self.spec.seed, purpose),
                device=self.device,
                rows=rows.tolist(),
                passes=passes,
            )

        trained = losses(scored, "memory-mask", _MEMORY_PASSES)
        words = WordSplitter(vocabulary.tokenizer_json).text_words(pool.texts[i] for i in self.trainable)
        latest = LossMemory.from_occurrences(
            len(vocabulary.pieces), trained.token_ids, trained.losses, WordMemory.of_texts(words)
        )
        memory = base.merged(latest, decay=self.spec.memory_decay)
        # Enough masks over the held-out texts that each piece is predicted about once: precise
        # per-text means for the calibration.
        held = losses(held_out, "calibration-mask", math.ceil(1 / self.spec.mask_fraction))
        model.train()
        return calibrated_memory(memory, held, words)

    def _candidates(self, pool: TokenizedPool, fresh: int, iteration: int) -> np.ndarray:
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

    def _signal_before(self, model: PreTrainedModel, pool: TokenizedPool, candidates: np.ndarray) -> np.ndarray | None:
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

    def _first_selection(
        self, model: PreTrainedModel, pool: TokenizedPool, fresh: int, vocabulary: Vocabulary, added: list[int]
    ) -> IterationSelection:
        candidates = self._candidates(pool, fresh, 0)
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

    def _next_selection(
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

    def _iteration_order(
        self, selection: IterationSelection, lengths: np.ndarray, pool_size: int, replayed: int, iteration: int
    ) -> list[int]:
        """The iteration's sentences in training order: the selection (topped up) and replay, shuffled.

        Unless the run asks for random batches, the shuffled sentences are then sorted by length
        within windows of _GROUPING_WINDOW_BATCHES batches, cut into batches, and the batches
        shuffled: each sentence is still trained on once, but a batch pads to a length near its
        own sentences' (on short texts, padding to the longest of 16 random ones wastes ~40%).
        """
        rng = np.random.default_rng(derive_seed(self.spec.seed, "order", iteration))
        chosen = selection.sentences
        if replayed:
            chosen += (pool_size + rng.integers(0, len(lengths) - pool_size, replayed)).tolist()
        order = [chosen[i] for i in rng.permutation(len(chosen))]
        if self.spec.random_batches:
            return order
        batch = self.spec.batch_size
        window = batch * _GROUPING_WINDOW_BATCHES
        grouped = [
            index
            for start in range(0, len(order), window)
            for index in sorted(order[start : start + window], key=lambda i: int(lengths[i]))
        ]
        batches = [grouped[start : start + batch] for start in range(0, len(grouped), batch)]
        return [index for b in rng.permutation(len(batches)) for index in batches[b]]

    # Preemption -----------------------------------------------------------------------------

    def _preempt(
        self,
        model: PreTrainedModel,
        optimizer: torch.optim.AdamW,
        memory: LossMemory,
        vocabulary: Vocabulary,
        before: np.ndarray | None,
        progress: Progress,
        iteration: int,
        steps_done: int,
    ) -> None:
        """Snapshot the run mid-iteration so that it resumes exactly (nothing to do at its start)."""
        directory = self.context.run_directory
        if steps_done == 0:  # the iteration's checkpoint (or the base) already is the state
            (directory / "preempted.json").unlink(missing_ok=True)
            return
        snapshot = self.context.checkpoints.save(
            CheckpointRecord(
                checkpoint_id=new_checkpoint_id(self.context.run_id, "preempted", str(progress.step)),
                vocab_version_id=self.spec.vocab_version_id,
                parent_checkpoint_id=self.spec.base_checkpoint_id,
                run_id=self.context.run_id,
                step=progress.step,
                create_time=now(),
                parameter_count=parameter_count(model),
                display_name=f"{self.context.run_id} preempted at step {progress.step}",
            ),
            model,
            vocabulary.tokenizer_json,
            memory,
            optimizer.state_dict(),
        )
        signal_path = directory / "preempted-signal.safetensors"
        if before is not None:
            store.write_bytes_atomically(signal_path, serialise_arrays({"signal": before}))
        else:
            signal_path.unlink(missing_ok=True)
        store.write_json_atomically(
            directory / "preempted.json",
            {
                "checkpoint_id": snapshot.checkpoint_id,
                "iteration": iteration,
                "steps_done": steps_done,
                "step": progress.step,
                "train_tokens": progress.train_tokens,
                "wall_s": progress.wall_s,
            },
        )

    def _last_preemption(self) -> _Preemption | None:
        """Where the run was last preempted, if ever (and its snapshot is still there)."""
        path = self.context.run_directory / "preempted.json"
        if not path.is_file():
            return None
        preemption = _Preemption(**store.read_json(path))
        return preemption if self.context.checkpoints.exists(preemption.checkpoint_id) else None

    def _load_preemption(self, done: int) -> _Preemption | None:
        """The snapshot to resume from, if the run was preempted inside the iteration it is at."""
        preemption = self._last_preemption()
        return preemption if preemption is not None and preemption.iteration == done else None

    def _load_signal(self) -> np.ndarray | None:
        path = self.context.run_directory / "preempted-signal.safetensors"
        return load_arrays(str(path))["signal"] if path.is_file() else None

    # Persistence of a run's own state ---------------------------------------------------------

    def _save_selection(self, selection: IterationSelection) -> None:
        store.write_json_atomically(
            selection_path(self.context.run_directory, selection.iteration), selection.to_json()
        )

    def _save_totals(self, progress: Progress) -> None:
        store.write_json_atomically(
            self.context.run_directory / f"totals-{progress.iteration + 1}.json",
            {"train_tokens": progress.train_tokens, "wall_s": progress.wall_s},
        )

    def _resumed_totals(self) -> tuple[int, float]:
        totals = sorted(self.context.run_directory.glob("totals-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        if not totals:
            return 0, 0.0
        record = store.read_json(totals[-1])
        return int(record["train_tokens"]), float(record["wall_s"])


def execute_run(spec: RunSpec, context: RunContext) -> CheckpointRecord:
    """Run to the end (or resume to the end); returns the final checkpoint.

    Raises:
        RunCancelledError: CancelRun was called.
        DriftlmError: bad data or vocab (the run fails with its code).
        torch.OutOfMemoryError, RuntimeError: from PyTorch.
    """
    return _Trainer(spec, context).run()
