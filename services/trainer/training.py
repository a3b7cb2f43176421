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

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from driftlm.services.core import store
from driftlm.services.core.corpus import texts_of_files
from driftlm.services.core.curated import CuratedDataError, read_curated
from driftlm.services.core.errors import FailedPreconditionError, InvalidArgumentError

from .checkpoints import CheckpointRecord, new_checkpoint_id, now
from .data import TokenizedPool, tokenize_texts
from .loss_memory import LossMemory
from .masking import MaskedBatch, mask_batch
from .models import (
    MaskedLM,
    autocast,
    head_parameters,
    masked_logits,
    on_device,
    parameter_count,
)
from .resume import RunJournal
from .run_context import (
    Progress,
    RunCancelledError,
    RunContext,
    RunPreemptedError,
    Vocabulary,
    derive_seed,
    vocab_hops,
    vocabulary_of,
)
from .scoring import Occurrences, token_losses
from .selection import IterationSelection, Selector, selection_path
from .spec import RunKind, RunSpec
from .trigger import calibrated_memory
from .vocab_move import move_to_vocabulary
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


def _freeze_all_but_the_head(model: PreTrainedModel) -> None:
    """Only the MLM head's transform and bias keep gradients (and so an optimiser state)."""
    try:
        trainable = {id(p) for p in head_parameters(model)}
    except ValueError as error:
        raise FailedPreconditionError(f"head_only: {error}", reason="NO_KNOWN_HEAD") from error
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)


def iteration_order(
    spec: RunSpec, selection: IterationSelection, lengths: np.ndarray, pool_size: int, replayed: int, iteration: int
) -> list[int]:
    """The iteration's sentences in training order: the selection (topped up) and replay, shuffled.

    Unless the run asks for random batches, the shuffled sentences are then sorted by length
    within windows of _GROUPING_WINDOW_BATCHES batches, cut into batches, and the batches
    shuffled: each sentence is still trained on once, but a batch pads to a length near its
    own sentences' (on short texts, padding to the longest of 16 random ones wastes ~40%).
    """
    rng = np.random.default_rng(derive_seed(spec.seed, "order", iteration))
    chosen = selection.sentences
    if replayed:
        chosen += (pool_size + rng.integers(0, len(lengths) - pool_size, replayed)).tolist()
    order = [chosen[i] for i in rng.permutation(len(chosen))]
    if spec.random_batches:
        return order
    batch = spec.batch_size
    window = batch * _GROUPING_WINDOW_BATCHES
    grouped = [
        index
        for start in range(0, len(order), window)
        for index in sorted(order[start : start + window], key=lambda i: int(lengths[i]))
    ]
    batches = [grouped[start : start + batch] for start in range(0, len(grouped), batch)]
    return [index for b in rng.permutation(len(batches)) for index in batches[b]]


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
        journal = RunJournal(spec, context)
        preemption = journal.preemption_at(done)
        resumed_from = preemption.checkpoint_id if preemption else checkpoint_ids[done - 1] if done else ""
        if resumed_from:
            model, memory = context.checkpoints.model(resumed_from), context.checkpoints.memory(resumed_from)
            added: list[int] = []
        else:
            model, memory, added = self._base_model()
        model = on_device(model, self.device).train()
        if spec.head_only:
            _freeze_all_but_the_head(model)
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
        selector = Selector(spec, context, self.trainable)
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
            progress.train_tokens, progress.wall_s = journal.resumed_totals()
        if done or preemption:
            selection = IterationSelection.from_json(store.read_json(selection_path(context.run_directory, done)))
        else:
            selection = selector.first(model, pool, fresh, vocabulary, added)
            if context.ranks.is_primary:
                journal.save_selection(selection)
        record: CheckpointRecord | None = context.checkpoints.record(checkpoint_ids[done - 1]) if done else None
        for iteration in range(done, spec.iterations):
            resuming = preemption is not None and preemption.iteration == iteration
            first_step = preemption.steps_done if preemption is not None and resuming else 0
            started, wall_before = time.perf_counter(), progress.wall_s
            candidates_next = selector.candidates(pool, fresh, iteration + 1)
            before = journal.saved_signal() if resuming else selector.signal_before(model, pool, candidates_next)
            order = iteration_order(spec, selection, lengths, len(pool), replayed, iteration)
            step_s, step_tokens = 0.0, 0
            for step_in_iteration in range(first_step, spec.steps_per_iteration):
                if context.cancel.is_set():
                    raise RunCancelledError()
                if context.preempt.is_set() and context.ranks.world == 1:
                    journal.preempt(
                        model, optimizer, memory, vocabulary, before, progress, iteration, step_in_iteration
                    )
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
                selection = selector.next(
                    model, pool, candidates_next, before, fresh, vocabulary, iteration + 1, trained_counts
                )
                if context.ranks.is_primary:
                    journal.save_selection(selection)
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
                journal.save_totals(progress)
            progress.iteration = iteration + 1
            progress.checkpoint_id = record.checkpoint_id
            context.report(progress)
        assert record is not None
        if context.ranks.is_primary:  # nothing resumes a finished run: its resume state can go
            preemption = journal.last_preemption()
            for earlier in [*checkpoint_ids[:-1], *([preemption.checkpoint_id] if preemption else [])]:
                context.checkpoints.drop_optimizer_state(earlier)
        return record

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

    # Preemption -----------------------------------------------------------------------------

    # Persistence of a run's own state ---------------------------------------------------------


def execute_run(spec: RunSpec, context: RunContext) -> CheckpointRecord:
    """Run to the end (or resume to the end); returns the final checkpoint.

    Raises:
        RunCancelledError: CancelRun was called.
        DriftlmError: bad data or vocab (the run fails with its code).
        torch.OutOfMemoryError, RuntimeError: from PyTorch.
    """
    return _Trainer(spec, context).run()
