"""The trainer's application layer: its stores, caches, locks and run worker, and no gRPC.

`servicer.py` maps TrainerService messages to these calls and back; `driftlm train` (standalone.py)
calls `train_in_foreground`. Peers come in typed (peers.py), so the app can be driven without any
server: a test, a notebook or another process manager can build one from a store and two peers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from driftlm.services.core import store
from driftlm.services.core.artifacts import FileRef
from driftlm.services.core.corpus import Corpus, open_corpus
from driftlm.services.core.engine import RayCluster
from driftlm.services.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from driftlm.services.core.paths import FileRoots
from driftlm.services.core.pseudo_likelihood import CorpusScore, summarise
from driftlm.services.trainer.run_context import Progress, RunContext, Vocabulary, vocab_hops, vocabulary_of
from driftlm.services.trainer.selection import IterationSelection

from .candidate_files import ScoresFile
from .checkpoints import CheckpointRecord, CheckpointStore, new_checkpoint_id, now
from .corpus_passes import CorpusPasses
from .data import tokenize_texts
from .distributed import Ranks
from .export import ExportResult
from .exporting import Exporter
from .loss_memory import LossMemory
from .memory_budget import available_bytes, check_fits
from .models import (
    ModelConfigTooLargeError,
    import_model,
    is_hub_id,
    mean_embeddings,
    model_from_config,
    on_device,
    parameter_count,
)
from .peers import Sampler, VocabPeer
from .pseudo_likelihood import pseudo_log_likelihoods
from .runs import RunManager, RunRecord
from .scored_inputs import slice_sample_from_file
from .scoring import token_losses
from .spec import RunSpec
from .training import execute_run
from .trigger import ScoredSlice, TriggerOptions, judge_slice, sample_texts

# Most texts one ScorePseudoLikelihood call scores (each costs one forward pass per piece).
MAX_SCORED_TEXTS = 10_000


@dataclass(frozen=True)
class ModelSource:
    """Where an imported model comes from: exactly one of the three is set."""

    # A Hugging Face directory on this machine (absolute, file://, or relative to the store).
    model_dir: str = ""
    # ArtifactRef.sha256 given with model_dir (a directory has none: refused when set).
    model_dir_sha256: str = ""
    # A hub id (needs a network).
    hub_id: str = ""
    # A transformers config as JSON, for a fresh model.
    config_json: str = ""


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint as callers see it."""

    record: CheckpointRecord
    directory: Path
    # Token occurrences its loss memory has seen (decayed).
    remembered_tokens: float


class TrainerApp:
    """Checkpoints, runs, scoring and export over one store."""

    def __init__(
        self,
        store_root: Path,
        vocab: VocabPeer,
        sampler: Sampler,
        device: torch.device,
        *,
        serve_runs: bool = True,
        roots: FileRoots | None = None,
        ray: RayCluster | None = None,
    ) -> None:
        """serve_runs starts the run worker, which resumes the store's unfinished runs at once.

        `roots` are the directories calls may name files in (default: the store alone)."""
        self._store = store_root
        self.roots = roots or FileRoots(store_root)
        self._vocab = vocab
        self._sampler = sampler
        self.device = device
        self.checkpoints = CheckpointStore(store_root)
        self._scoring_lock = threading.Lock()
        # The corpus passes (ScoreCandidates, a corpus's PLL), here or on Ray.
        self.corpus_passes = CorpusPasses(
            self.checkpoints,
            vocab,
            self.roots,
            store_root,
            device,
            ray or RayCluster(""),
            max_length=self._max_length,
            lock=self._scoring_lock,
        )
        self._scoring_model: tuple[str, PreTrainedModel] | None = None
        self._runs = RunManager(store_root, self._run_context) if serve_runs else None
        self._exporter = Exporter(self.checkpoints, self.roots, store_root / "trainer" / "models")

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the run worker (a running run saves at a step boundary and resumes on restart)."""
        if self._runs is not None:
            self._runs.close(timeout_s)

    # Checkpoints -----------------------------------------------------------------------------

    def checkpoint(self, checkpoint_id: str) -> CheckpointInfo:
        """One checkpoint (NotFoundError when there is none)."""
        record = self.checkpoints.record(checkpoint_id)
        return CheckpointInfo(
            record,
            self.checkpoints.directory(checkpoint_id),
            float(self.checkpoints.memory(checkpoint_id).count.sum()),
        )

    def create_checkpoint(
        self, source: ModelSource, vocab_version_id: str, *, seed: int = 0, display_name: str = ""
    ) -> CheckpointInfo:
        """Import a model as a checkpoint on a vocab version whose size matches its embedding rows."""
        if not vocab_version_id:
            raise InvalidArgumentError("vocab_version_id", "name the vocab version the model's embedding rows follow")
        version = self._vocab.version(vocab_version_id)
        torch.manual_seed(seed)  # a missing MLM head is initialised from this
        if source.model_dir:
            directory = self.roots.readable(
                source.model_dir, "model_dir.uri", kind="directory", sha256=source.model_dir_sha256
            )
            try:
                model, new_head = import_model(directory)
            except (OSError, ValueError) as error:
                raise InvalidArgumentError(
                    "model_dir", f"{directory} is not a masked-LM checkpoint transformers can load ({error})"
                ) from error
            origin = str(directory)
        elif source.hub_id:
            if not is_hub_id(source.hub_id):
                raise InvalidArgumentError(
                    "hub_id", "must be a hub repository id (name or org/name); name a local directory with model_dir"
                )
            try:
                model, new_head = import_model(source.hub_id)
            except OSError as error:
                raise NotFoundError(f"hub_id: cannot load {source.hub_id!r} ({error})") from error
            except ValueError as error:
                raise InvalidArgumentError(
                    "hub_id", f"is not a masked-LM checkpoint transformers can load ({error})"
                ) from error
            origin = source.hub_id
        elif source.config_json:
            # fp32 weights, with room for a training step's copies: a quarter of what is free.
            room = available_bytes(self.device) // (4 * 4)
            try:
                model = model_from_config(source.config_json, vocab_size=version.size, seed=seed, max_parameters=room)
                new_head = True
            except ModelConfigTooLargeError as error:
                raise ResourceExhaustedError(f"model_config_json {error}", reason="MODEL_TOO_LARGE") from error
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise InvalidArgumentError(
                    "model_config_json", f"is not a transformers config ({first_line})"
                ) from error
            origin = source.config_json
        else:
            raise InvalidArgumentError("source", "set model_dir, hub_id or model_config_json")
        if model.config.vocab_size != version.size:
            raise FailedPreconditionError(
                f"the model has {model.config.vocab_size} embedding rows but vocab version {version.version_id} has "
                f"{version.size} pieces; import it with the vocab version it was trained with",
                reason="VOCAB_SIZE_MISMATCH",
            )
        record = CheckpointRecord(
            checkpoint_id=new_checkpoint_id("import", origin, version.version_id, str(seed)),
            vocab_version_id=version.version_id,
            parent_checkpoint_id="",
            run_id="",
            step=0,
            create_time=now(),
            parameter_count=parameter_count(model),
            display_name=display_name,
            new_mlm_head=new_head,
        )
        saved = self.checkpoints.save(record, model, version.tokenizer_json, LossMemory.empty(version.size))
        return self.checkpoint(saved.checkpoint_id)

    def _max_positions(self, checkpoint_id: str) -> int:
        config: dict[str, Any] = store.read_json(self.checkpoints.directory(checkpoint_id) / "config.json")
        return int(config.get("max_position_embeddings", 512))

    def _max_length(self, checkpoint_id: str, asked: int) -> int:
        """Pieces per text: what was asked, 0 meaning min(128, the model's positions), which bound it."""
        positions = self._max_positions(checkpoint_id)
        if asked and not 4 <= asked <= positions:
            raise InvalidArgumentError(
                "max_length", f"must be in [4, {positions}] (the model's positions; 0 means 128 or fewer), got {asked}"
            )
        return asked or min(128, positions)

    # Runs ------------------------------------------------------------------------------------

    @property
    def runs(self) -> RunManager:
        """The run worker (FailedPreconditionError in an app built with serve_runs=False)."""
        if self._runs is None:
            raise FailedPreconditionError("this trainer runs one run in the foreground and serves no others")
        return self._runs

    def start_run(self, spec: RunSpec) -> RunRecord:
        """Check the spec against the store (checkpoints, vocab chain, positions, memory) and queue it.

        An empty vocab_version_id means the base checkpoint's, a max_length of 0 min(128, positions).
        """
        base = self.checkpoints.record(spec.base_checkpoint_id)
        target = spec.vocab_version_id or base.vocab_version_id
        if target != base.vocab_version_id:
            vocab_hops(self._vocab, base.vocab_version_id, target)  # NOT_FOUND or FAILED_PRECONDITION now, not later
        vocabulary_of(self._vocab.version(target))  # a version a masked LM can train on
        max_length = self._max_length(base.checkpoint_id, spec.max_length)
        for teacher in spec.teacher_checkpoint_ids:
            teacher_version = self.checkpoints.record(teacher).vocab_version_id
            if teacher_version != target:
                raise FailedPreconditionError(
                    f"teacher {teacher} is on vocab version {teacher_version}, the student on {target}; "
                    "distil between checkpoints of one vocab version",
                    reason="TEACHER_VOCAB_MISMATCH",
                )
        config: dict[str, Any] = store.read_json(self.checkpoints.directory(base.checkpoint_id) / "config.json")
        check_fits(config, spec.batch_size, max_length, len(spec.teacher_checkpoint_ids), self.device)
        return self.runs.start(replace(spec, vocab_version_id=target, max_length=max_length))

    def run(self, run_id: str) -> RunRecord:
        """A run's state."""
        return self.runs.get(run_id)

    def list_runs(self) -> list[RunRecord]:
        """Every run, newest first."""
        return self.runs.list()

    def cancel_run(self, run_id: str) -> RunRecord:
        """Cancel a queued run, or stop a running one after its current step."""
        return self.runs.cancel(run_id)

    def watch_run(self, run_id: str, is_active: Callable[[], bool]) -> Iterator[RunRecord]:
        """The run's state now and after every change, until it ends, the caller leaves or the app closes."""
        return self.runs.watch(run_id, is_active)

    def selections(self, run_id: str) -> list[IterationSelection]:
        """What each iteration of the run trains on."""
        return self.runs.selections(run_id)

    def _run_context(self, run_id: str, run_directory: Path, report: Callable[[Progress], None]) -> RunContext:
        run_directory.mkdir(parents=True, exist_ok=True)
        return RunContext(run_id, run_directory, self.checkpoints, self._vocab, self._sampler, self.device, report)

    def train_in_foreground(
        self, spec: RunSpec, run_id: str, report: Callable[[Progress], None], *, ranks: Ranks
    ) -> CheckpointRecord:
        """Run `spec` to the end in this thread (resuming run_id's checkpoints); under torchrun every
        rank calls this and rank 0 writes. Returns the final checkpoint."""
        if not self.checkpoints.exists(spec.base_checkpoint_id):
            raise FailedPreconditionError(f"checkpoint {spec.base_checkpoint_id} is not in {self.checkpoints.root}")
        context = replace(self._run_context(run_id, self._store / "trainer" / "runs" / run_id, report), ranks=ranks)
        return execute_run(spec, context)

    # Scoring ---------------------------------------------------------------------------------

    def _texts(self, corpus: Corpus) -> list[str]:
        return list(open_corpus(corpus, self.roots, "corpus"))

    def _model_for_scoring(self, checkpoint_id: str) -> PreTrainedModel:
        """The checkpoint's model in eval mode, kept until another is asked for (callers hold the lock)."""
        if self._scoring_model is None or self._scoring_model[0] != checkpoint_id:
            self._scoring_model = None  # free the old one first
            self._scoring_model = (
                checkpoint_id,
                on_device(self.checkpoints.model(checkpoint_id), self.device).eval(),
            )
        return self._scoring_model[1]

    def score_slice(
        self, checkpoint_id: str, corpus: Corpus, options: TriggerOptions, scores: FileRef | None = None
    ) -> ScoredSlice:
        """The trigger: the slice's per-token MLM loss against the checkpoint's loss memory; the
        losses scored here, or read from a ScoreCandidates file of the slice (`scores`)."""
        record = self.checkpoints.record(checkpoint_id)
        vocabulary = vocabulary_of(self._vocab.version(record.vocab_version_id))
        if scores is not None:
            texts, occurrences = slice_sample_from_file(
                ScoresFile(self.roots.readable(scores.uri, "scores.uri", sha256=scores.sha256), "scores"),
                checkpoint_id,
                corpus,
                self.roots,
                tokenizer_json=vocabulary.tokenizer_json,
                options=options,
            )
            return judge_slice(texts, occurrences, vocabulary, self.checkpoints.memory(checkpoint_id), options)
        max_length = self._max_length(checkpoint_id, options.max_length)
        texts = self._texts(corpus)
        pool = tokenize_texts(
            vocabulary.tokenizer_json,
            sample_texts(texts, options.max_texts, options.seed),
            max_length=max_length,
            pad_id=vocabulary.pad_id,
        )
        if len(pool) == 0:
            raise InvalidArgumentError("corpus", "holds no text to score (every text is empty or blank)")
        with self._scoring_lock:
            occurrences = token_losses(
                self._model_for_scoring(checkpoint_id),
                pool,
                special=vocabulary.special,
                mask_id=vocabulary.mask_id,
                mask_fraction=options.mask_fraction,
                seed=options.seed,
                device=self.device,
            )
        return judge_slice(pool.texts, occurrences, vocabulary, self.checkpoints.memory(checkpoint_id), options)

    def _text_batch(self, checkpoint_id: str, texts: Sequence[str], max_length: int) -> tuple[Vocabulary, int]:
        """The checkpoint's vocabulary and the pieces per text, for a bounded batch of texts to score."""
        record = self.checkpoints.record(checkpoint_id)
        if len(texts) > MAX_SCORED_TEXTS:
            raise InvalidArgumentError("texts", f"has {len(texts)} texts; send at most {MAX_SCORED_TEXTS} per call")
        max_length = self._max_length(checkpoint_id, max_length)
        return vocabulary_of(self._vocab.version(record.vocab_version_id)), max_length

    def pseudo_likelihood(self, checkpoint_id: str, texts: Sequence[str], *, max_length: int = 0) -> CorpusScore:
        """Pseudo-log-likelihood of each text (each piece masked in turn) and per word, character, piece."""
        vocabulary, max_length = self._text_batch(checkpoint_id, texts, max_length)
        with self._scoring_lock:
            scores = pseudo_log_likelihoods(
                self._model_for_scoring(checkpoint_id),
                vocabulary.tokenizer_json,
                list(texts),
                mask_id=vocabulary.mask_id,
                special=vocabulary.special,
                max_length=max_length,
                device=self.device,
            )
        return summarise(scores)

    def embed_texts(self, checkpoint_id: str, texts: Sequence[str], *, max_length: int = 0) -> np.ndarray:
        """(N, H) float32: each text's mean last hidden state over its pieces (specials excluded)."""
        vocabulary, max_length = self._text_batch(checkpoint_id, texts, max_length)
        with self._scoring_lock:
            return mean_embeddings(
                self._model_for_scoring(checkpoint_id),
                vocabulary.tokenizer_json,
                list(texts),
                special=vocabulary.special,
                max_length=max_length,
                device=self.device,
            )

    def export_onnx(
        self, checkpoint_id: str, repository: str = "", model_name: str = "", version: int = 0
    ) -> ExportResult:
        """ONNX (fp32 and int8) with the tokenizer, as a new version in a model repository (exporting.py)."""
        return self._exporter.export_onnx(checkpoint_id, repository, model_name, version)
