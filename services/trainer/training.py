"""One run, start to end: move to the vocab version, then iterate (select sentences, train, checkpoint).

Everything random is derived from (seed, what, when): the candidate pool of an iteration, the
selection, each step's masking and dropout. A run resumed from its last checkpoint therefore
continues exactly as the uninterrupted run would have, and ends with the same weights.

An iteration trains `steps_per_iteration` steps on sentences chosen for it. At its end the
strategy's signal is measured (embedding shift, [CLS] shift or MLM loss, on a fresh candidate
pool), the sampling service turns it into the next iteration's sentences, and a checkpoint is
written with the optimiser state, the loss memory and that selection.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from driftlm.services.runtime import store
from driftlm.services.runtime.corpus import CorpusError, read_texts
from driftlm.services.runtime.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from driftlm.services.sampling.strategy import Strategy

from .checkpoints import CheckpointRecord, CheckpointStore, new_checkpoint_id, now
from .data import TokenizedPool, special_mask, tokenize_texts
from .distributed import Ranks
from .loss_memory import LossMemory
from .masking import MaskedBatch, mask_batch
from .models import MaskedLM, autocast, cls_embeddings, embedding_matrix, masked_logits, on_device, parameter_count
from .spec import RunKind, RunSpec
from .vocab_move import VocabHop, move_to_vocabulary

SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>")
_GRAD_CLIP = 1.0
_WARMUP_FRACTION = 0.1
_SCORE_BATCH = 64


class RunCancelledError(Exception):
    """CancelRun asked the run to stop."""


class VocabSource(Protocol):
    """What the trainer needs from the vocab service (VocabClient has it)."""

    def get(self, version_id: str, *, include_tokenizer_json: bool = False) -> Any: ...


class Sampler(Protocol):
    """What the trainer needs from the sampling service (SamplingClient and LocalSampling have it)."""

    def cosine_distance(
        self, old_rows: np.ndarray, new_rows: np.ndarray, *, top_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def select_sentences(self, strategy: str, *, k: int, candidate_lengths: np.ndarray, **inputs: Any) -> Any: ...


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
    vocab: VocabSource
    sampler: Sampler
    device: torch.device
    report: Callable[[Progress], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    # This process among the training processes (torchrun); alone by default.
    ranks: Ranks = field(default_factory=Ranks)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one purpose and moment of a run."""
    digest = hashlib.sha256("\0".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def vocab_hops(vocab: VocabSource, from_version: str, to_version: str) -> list[VocabHop]:
    """The chain of updates from the checkpoint's version to the run's, oldest first.

    Raises:
        FailedPreconditionError: to_version does not descend from from_version.
    """
    chain = []
    current = vocab.get(to_version, include_tokenizer_json=True)
    while current.version_id != from_version:
        if not current.parent_id:
            raise FailedPreconditionError(
                f"vocab version {to_version} does not descend from {from_version}, the checkpoint's version; "
                "train on a version derived from it",
                reason="VOCAB_NOT_DERIVED",
            )
        parent = vocab.get(current.parent_id, include_tokenizer_json=True)
        chain.append((parent, current))
        current = parent
    hops = []
    for parent, child in reversed(chain):
        hops.append(
            VocabHop(
                old_pieces=json.loads(parent.tokenizer_json)["model"]["vocab"],
                new_pieces=json.loads(child.tokenizer_json)["model"]["vocab"],
                decompositions={piece.id: list(piece.parent_decomposition) for piece in child.change.added},
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
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


@dataclass
class _Vocabulary:
    tokenizer_json: str
    pieces: dict[str, int]
    special: torch.Tensor
    mask_id: int
    pad_id: int


def vocabulary_of(tokenizer_json: str) -> _Vocabulary:
    """The piece table, specials, [MASK] and [PAD] of a tokenizer.json."""
    pieces = {str(p): int(i) for p, i in json.loads(tokenizer_json)["model"]["vocab"].items()}
    mask_id = pieces.get("[MASK]", pieces.get("<mask>", -1))
    if mask_id < 0:
        raise FailedPreconditionError("the vocab version has no [MASK] piece; a masked LM needs one")
    return _Vocabulary(
        tokenizer_json, pieces, special_mask(pieces, SPECIAL_PIECES, len(pieces)), mask_id, pieces.get("[PAD]", 0)
    )


def _read_pool(paths: Sequence[str], text_field: str, vocabulary: _Vocabulary, max_length: int) -> TokenizedPool:
    texts = (text for path in paths for text in read_texts(Path(path), text_field=text_field))
    try:
        return tokenize_texts(vocabulary.tokenizer_json, texts, max_length=max_length, pad_id=vocabulary.pad_id)
    except CorpusError as error:
        raise InvalidArgumentError("slices", str(error)) from error
    except FileNotFoundError as error:
        raise NotFoundError(f"slices: no file at {error}") from error


class _Trainer:
    """The state of one run while it executes."""

    def __init__(self, spec: RunSpec, context: RunContext) -> None:
        self.spec = spec
        self.context = context
        self.device = context.device
        self.teachers: list[PreTrainedModel] = []

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
        vocabulary = vocabulary_of(context.vocab.get(spec.vocab_version_id, include_tokenizer_json=True).tokenizer_json)
        checkpoint_ids = [new_checkpoint_id(context.run_id, str(i)) for i in range(spec.iterations)]
        done = sum(1 for c in checkpoint_ids if context.checkpoints.exists(c))
        if done == spec.iterations:  # it finished; only its state was not recorded
            return context.checkpoints.record(checkpoint_ids[-1])
        if done:
            resumed = checkpoint_ids[done - 1]
            model, memory = context.checkpoints.model(resumed), context.checkpoints.memory(resumed)
            added: list[int] = []
        else:
            model, memory, added = self._base_model()
        model = on_device(model, self.device).train()
        self.step_module: torch.nn.Module = MaskedLM(model)
        if context.ranks.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = torch.nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        optimizer = _optimizer(model, spec.learning_rate)
        if done and (state := context.checkpoints.optimizer_state(checkpoint_ids[done - 1])) is not None:
            optimizer.load_state_dict(state)
        if spec.kind is RunKind.DISTILL:
            self.teachers = [
                on_device(context.checkpoints.model(t), self.device).eval() for t in spec.teacher_checkpoint_ids
            ]
        pool = _read_pool(spec.slices, spec.text_field, vocabulary, spec.max_length)
        replay = (
            _read_pool(spec.replay_slices, spec.text_field, vocabulary, spec.max_length) if spec.replay_slices else None
        )
        if len(pool) == 0:
            raise FailedPreconditionError("the slices hold no text to train on")
        combined = TokenizedPool(pool.ids + (replay.ids if replay else []), pool.pad_id)
        per_iteration = spec.steps_per_iteration * spec.batch_size
        replayed = round(per_iteration * spec.replay_fraction) if replay is not None and len(replay) else 0
        fresh = per_iteration - replayed
        progress = Progress(
            step=done * spec.steps_per_iteration, iteration=done, checkpoint_id=checkpoint_ids[done - 1] if done else ""
        )
        if done:
            progress.train_tokens, progress.wall_s = self._resumed_totals()
        if done:
            selection = self._load_selection(done)
        else:
            selection = self._first_selection(model, pool, fresh, vocabulary, added)
            if context.ranks.is_primary:
                self._save_selection(0, selection)
        record: CheckpointRecord | None = context.checkpoints.record(checkpoint_ids[done - 1]) if done else None
        for iteration in range(done, spec.iterations):
            started = time.perf_counter()
            tokens_before = progress.train_tokens
            candidates_next = self._candidates(pool, fresh, iteration + 1)
            before = self._signal_before(model, pool, candidates_next, vocabulary)
            order = self._iteration_order(
                selection, pool, len(pool), replayed, len(replay) if replay else 0, fresh, iteration
            )
            for step_in_iteration in range(spec.steps_per_iteration):
                if context.cancel.is_set():
                    raise RunCancelledError()
                batch = order[step_in_iteration * spec.batch_size : (step_in_iteration + 1) * spec.batch_size]
                loss, tokens = self._train_step(model, optimizer, memory, combined, batch, vocabulary, progress.step)
                progress.step += 1
                progress.loss = loss
                progress.train_tokens += tokens
                elapsed = time.perf_counter() - started
                progress.tokens_per_s = (progress.train_tokens - tokens_before) / max(elapsed, 1e-9)
                step_s = elapsed / (step_in_iteration + 1)
                progress.eta_s = step_s * (spec.total_steps - progress.step)
                context.report(progress)
            progress.wall_s += time.perf_counter() - started
            if iteration + 1 < spec.iterations:
                selection = self._next_selection(model, pool, candidates_next, before, fresh, vocabulary, iteration + 1)
                if context.ranks.is_primary:
                    self._save_selection(iteration + 1, selection)
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
        return record

    def _save_checkpoint(self, record: CheckpointRecord, *artifacts: Any) -> CheckpointRecord:
        """Rank 0 writes; every rank waits until it has."""
        if self.context.ranks.is_primary:
            record = self.context.checkpoints.save(record, *artifacts)
        self.context.ranks.barrier()
        return record

    # Steps ----------------------------------------------------------------------------------

    def _masked(self, pool: TokenizedPool, batch: Sequence[int], vocabulary: _Vocabulary, seed: int) -> MaskedBatch:
        input_ids, attention = pool.batch(batch)
        generator = torch.Generator().manual_seed(seed)
        masked = mask_batch(
            input_ids,
            attention,
            special=vocabulary.special,
            mask_id=vocabulary.mask_id,
            fraction=self.spec.mask_fraction,
            generator=generator,
        )
        return masked.to(self.device)

    def _train_step(
        self,
        model: PreTrainedModel,
        optimizer: torch.optim.AdamW,
        memory: LossMemory,
        pool: TokenizedPool,
        batch: Sequence[int],
        vocabulary: _Vocabulary,
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
        sizes = [int(whole.rows(Ranks(r, ranks.world).rows(len(batch))).masked.sum()) for r in range(ranks.world)]
        targets = ranks.gather(share.targets, sizes)
        losses = ranks.gather(per_token.detach().float(), sizes)
        memory.remember(targets.cpu().numpy(), losses.cpu().numpy())
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

    def _candidates(self, pool: TokenizedPool, fresh: int, iteration: int) -> np.ndarray:
        size = min(len(pool), self.spec.candidate_pool_size or 8 * max(fresh, 1))
        rng = np.random.default_rng(derive_seed(self.spec.seed, "candidates", iteration))
        return np.sort(rng.choice(len(pool), size, replace=False))

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

    @torch.no_grad()
    def _sentence_losses(
        self, model: PreTrainedModel, pool: TokenizedPool, indices: np.ndarray, vocabulary: _Vocabulary, iteration: int
    ) -> np.ndarray:
        model.eval()
        losses = np.zeros(len(indices), dtype=np.float32)
        for start in range(0, len(indices), _SCORE_BATCH):
            chunk = indices[start : start + _SCORE_BATCH].tolist()
            masked = self._masked(pool, chunk, vocabulary, derive_seed(self.spec.seed, "score", iteration, start))
            with autocast(self.device):
                logits = masked_logits(model, masked.input_ids, masked.attention_mask, masked.masked)
            per_token = F.cross_entropy(logits.float(), masked.targets, reduction="none").cpu().numpy()
            rows = torch.nonzero(masked.masked)[:, 0].cpu().numpy()
            sums = np.bincount(rows, weights=per_token, minlength=len(chunk))
            counts = np.bincount(rows, minlength=len(chunk))
            losses[start : start + len(chunk)] = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        model.train()
        return losses

    def _signal_before(
        self, model: PreTrainedModel, pool: TokenizedPool, candidates: np.ndarray, vocabulary: _Vocabulary
    ) -> np.ndarray | None:
        """What the next selection compares against, taken before this iteration trains."""
        if self.spec.iterations == 1:
            return None
        if self.spec.strategy is Strategy.TOKEN_EMBEDDING_SHIFT:
            return embedding_matrix(model).detach().float().cpu().numpy().copy()
        if self.spec.strategy is Strategy.SENTENCE_EMBEDDING_SHIFT:
            return self._cls(model, pool, candidates)
        return None

    def _select(
        self, candidates: np.ndarray, pool: TokenizedPool, fresh: int, iteration: int, strategy: Strategy, **inputs: Any
    ) -> list[int]:
        chosen = self.context.sampler.select_sentences(
            strategy.value,
            k=min(fresh, len(candidates)),
            candidate_lengths=pool.lengths[candidates],
            alpha=self.spec.sampling_alpha,
            seed=derive_seed(self.spec.seed, "select", iteration),
            **inputs,
        )
        return candidates[np.asarray(chosen.indices, dtype=np.int64)].tolist()

    def _first_selection(
        self, model: PreTrainedModel, pool: TokenizedPool, fresh: int, vocabulary: _Vocabulary, added: list[int]
    ) -> list[int]:
        candidates = self._candidates(pool, fresh, 0)
        strategy = self.spec.strategy
        if strategy is Strategy.TOKEN_EMBEDDING_SHIFT and added:
            return self._select(
                candidates,
                pool,
                fresh,
                0,
                strategy,
                candidate_token_ids=pool.flat_ids(candidates.tolist()),
                target_token_ids=np.asarray(added),
            )
        if strategy is Strategy.TOKEN_MLM_LOSS:
            return self._select(
                candidates,
                pool,
                fresh,
                0,
                strategy,
                losses=self._sentence_losses(model, pool, candidates, vocabulary, 0),
            )
        return self._select(candidates, pool, fresh, 0, Strategy.UNIFORM)

    def _next_selection(
        self,
        model: PreTrainedModel,
        pool: TokenizedPool,
        candidates: np.ndarray,
        before: np.ndarray | None,
        fresh: int,
        vocabulary: _Vocabulary,
        iteration: int,
    ) -> list[int]:
        strategy = self.spec.strategy
        if strategy is Strategy.TOKEN_EMBEDDING_SHIFT and before is not None:
            after = embedding_matrix(model).detach().float().cpu().numpy()
            shift, _ = self.context.sampler.cosine_distance(before, after)
            return self._select(
                candidates,
                pool,
                fresh,
                iteration,
                strategy,
                candidate_token_ids=pool.flat_ids(candidates.tolist()),
                token_shift=shift,
                top_x=min(self.spec.top_x, len(shift)),
            )
        if strategy is Strategy.SENTENCE_EMBEDDING_SHIFT and before is not None:
            return self._select(
                candidates, pool, fresh, iteration, strategy, old_cls=before, new_cls=self._cls(model, pool, candidates)
            )
        if strategy is Strategy.TOKEN_MLM_LOSS:
            return self._select(
                candidates,
                pool,
                fresh,
                iteration,
                strategy,
                losses=self._sentence_losses(model, pool, candidates, vocabulary, iteration),
            )
        return self._select(candidates, pool, fresh, iteration, Strategy.UNIFORM)

    def _iteration_order(
        self,
        selection: list[int],
        pool: TokenizedPool,
        pool_size: int,
        replayed: int,
        replay_size: int,
        fresh: int,
        iteration: int,
    ) -> list[int]:
        """The iteration's sentences in training order: the selection (topped up uniformly) and replay."""
        rng = np.random.default_rng(derive_seed(self.spec.seed, "order", iteration))
        chosen = list(selection)
        if len(chosen) < fresh:  # fewer eligible sentences than steps need
            chosen += rng.integers(0, pool_size, fresh - len(chosen)).tolist()
        if replayed:
            chosen += (pool_size + rng.integers(0, replay_size, replayed)).tolist()
        return [chosen[i] for i in rng.permutation(len(chosen))]

    # Persistence of a run's own state ---------------------------------------------------------

    def _save_selection(self, iteration: int, selection: list[int]) -> None:
        store.write_json_atomically(self.context.run_directory / f"selection-{iteration}.json", selection)

    def _load_selection(self, iteration: int) -> list[int]:
        return [int(i) for i in store.read_json(self.context.run_directory / f"selection-{iteration}.json")]

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
