"""TrainerService over gRPC: translate messages, call the domain, translate back."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import torch
from transformers import PreTrainedModel

from driftlm.services.runtime.corpus import CorpusError, read_texts
from driftlm.services.runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from driftlm.services.runtime.paging import page_of
from driftlm.services.runtime.store import resolve_path
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from .checkpoints import CheckpointRecord, CheckpointStore, new_checkpoint_id, now
from .data import tokenize_texts
from .export import export_onnx
from .loss_memory import LossMemory
from .memory_budget import check_fits
from .models import load_model, model_from_config, on_device, parameter_count
from .pseudo_likelihood import pseudo_log_likelihoods
from .runs import RunManager, RunRecord
from .spec import RunKind
from .training import vocab_hops, vocabulary_of
from .trigger import sample_texts, score_slice, token_losses
from .validation import run_spec

_STATES = {
    "queued": trainer_pb2.RUN_STATE_QUEUED,
    "running": trainer_pb2.RUN_STATE_RUNNING,
    "succeeded": trainer_pb2.RUN_STATE_SUCCEEDED,
    "failed": trainer_pb2.RUN_STATE_FAILED,
    "cancelled": trainer_pb2.RUN_STATE_CANCELLED,
}
_KINDS = {RunKind.MLM: trainer_pb2.RUN_KIND_MLM, RunKind.DISTILL: trainer_pb2.RUN_KIND_DISTILL}


class VocabPeer:
    """The vocab service, its failures as driftlm errors."""

    def __init__(self, client: Any, endpoint: str) -> None:
        self._client = client
        self._endpoint = endpoint

    def get(self, version_id: str, *, include_tokenizer_json: bool = False) -> Any:
        try:
            return self._client.get(version_id, include_tokenizer_json=include_tokenizer_json)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(str(error.details())) from error
            raise UnavailableError(
                f"the vocab service at {self._endpoint} failed: {error.code().name} {error.details()}"
            ) from error


def _run_message(record: RunRecord) -> trainer_pb2.RunStatus:
    return trainer_pb2.RunStatus(
        run_id=record.run_id,
        kind=_KINDS[record.spec.kind],
        state=_STATES[record.state],
        step=record.step,
        total_steps=record.spec.total_steps,
        iteration=record.iteration,
        loss=record.loss,
        tokens_per_s=record.tokens_per_s,
        eta_s=record.eta_s,
        checkpoint_id=record.checkpoint_id,
        train_tokens=record.train_tokens,
        wall_s=record.wall_s,
        error_code=record.error_code,
        error_message=record.error_message,
        base_checkpoint_id=record.spec.base_checkpoint_id,
        vocab_version_id=record.spec.vocab_version_id,
        create_time=record.create_time,
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Every RPC of TrainerService."""

    def __init__(
        self, store_root: Path, checkpoints: CheckpointStore, runs: RunManager, vocab: VocabPeer, device: torch.device
    ) -> None:
        self._store = store_root
        self._checkpoints = checkpoints
        self._runs = runs
        self._vocab = vocab
        self._device = device
        self._scoring_lock = threading.Lock()
        self._scoring_model: tuple[str, PreTrainedModel] | None = None

    def _checkpoint_message(self, record: CheckpointRecord) -> trainer_pb2.Checkpoint:
        directory = self._checkpoints.directory(record.checkpoint_id)
        memory = self._checkpoints.memory(record.checkpoint_id)
        return trainer_pb2.Checkpoint(
            checkpoint_id=record.checkpoint_id,
            vocab_version_id=record.vocab_version_id,
            parent_checkpoint_id=record.parent_checkpoint_id,
            run_id=record.run_id,
            step=record.step,
            create_time=record.create_time,
            directory=common_pb2.ArtifactRef(uri=directory.as_uri()),
            parameter_count=record.parameter_count,
            display_name=record.display_name,
            remembered_tokens=float(memory.weight.sum()),
        )

    def CreateCheckpoint(
        self, request: trainer_pb2.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CreateCheckpointResponse:
        if not request.vocab_version_id:
            raise InvalidArgumentError("vocab_version_id", "name the vocab version the model's embedding rows follow")
        version = self._vocab.get(request.vocab_version_id, include_tokenizer_json=True)
        source = request.WhichOneof("source")
        torch.manual_seed(request.seed)  # a missing MLM head is initialised from this
        if source == "model_dir":
            directory = resolve_path(request.model_dir.uri, self._store, "model_dir.uri")
            try:
                model = load_model(directory)
            except (OSError, ValueError) as error:
                raise InvalidArgumentError(
                    "model_dir", f"{directory} is not a masked-LM checkpoint transformers can load ({error})"
                ) from error
            origin = str(directory)
        elif source == "hub_id":
            try:
                model = load_model(request.hub_id)
            except OSError as error:
                raise NotFoundError(f"hub_id: cannot load {request.hub_id!r} ({error})") from error
            origin = request.hub_id
        elif source == "model_config_json":
            try:
                model = model_from_config(request.model_config_json, vocab_size=version.size, seed=request.seed)
            except (ValueError, KeyError, TypeError) as error:
                first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise InvalidArgumentError(
                    "model_config_json", f"is not a transformers config ({first_line})"
                ) from error
            origin = request.model_config_json
        else:
            raise InvalidArgumentError("source", "set model_dir, hub_id or model_config_json")
        if model.config.vocab_size != version.size:
            raise FailedPreconditionError(
                f"the model has {model.config.vocab_size} embedding rows but vocab version {version.version_id} has "
                f"{version.size} pieces; import it with the vocab version it was trained with",
                reason="VOCAB_SIZE_MISMATCH",
            )
        record = CheckpointRecord(
            checkpoint_id=new_checkpoint_id("import", origin, version.version_id, str(request.seed)),
            vocab_version_id=version.version_id,
            parent_checkpoint_id="",
            run_id="",
            step=0,
            create_time=now(),
            parameter_count=parameter_count(model),
            display_name=request.display_name,
        )
        saved = self._checkpoints.save(record, model, version.tokenizer_json, LossMemory.empty(version.size))
        return trainer_pb2.CreateCheckpointResponse(checkpoint=self._checkpoint_message(saved))

    def GetCheckpoint(
        self, request: trainer_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetCheckpointResponse:
        return trainer_pb2.GetCheckpointResponse(
            checkpoint=self._checkpoint_message(self._checkpoints.record(request.checkpoint_id))
        )

    def StartRun(
        self, request: trainer_pb2.StartRunRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.StartRunResponse:
        base = self._checkpoints.record(request.base_checkpoint_id)
        target = request.vocab_version_id or base.vocab_version_id
        if target != base.vocab_version_id:
            vocab_hops(self._vocab, base.vocab_version_id, target)  # NOT_FOUND or FAILED_PRECONDITION now, not later
        config = json.loads((self._checkpoints.directory(base.checkpoint_id) / "config.json").read_text())
        spec = run_spec(
            request,
            vocab_version_id=target,
            store=self._store,
            max_positions=int(config.get("max_position_embeddings", 512)),
        )
        for teacher in spec.teacher_checkpoint_ids:
            if self._checkpoints.record(teacher).vocab_version_id != target:
                raise FailedPreconditionError(
                    f"teacher {teacher} is on vocab version {self._checkpoints.record(teacher).vocab_version_id}, the student on "
                    f"{target}; distil between checkpoints of one vocab version",
                    reason="TEACHER_VOCAB_MISMATCH",
                )
        check_fits(config, spec.batch_size, spec.max_length, len(spec.teacher_checkpoint_ids), self._device)
        return trainer_pb2.StartRunResponse(run=_run_message(self._runs.start(spec)))

    def WatchRun(
        self, request: trainer_pb2.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.WatchRunResponse]:
        for record in self._runs.watch(request.run_id, context.is_active):
            yield trainer_pb2.WatchRunResponse(run=_run_message(record))

    def GetRun(self, request: trainer_pb2.GetRunRequest, context: grpc.ServicerContext) -> trainer_pb2.GetRunResponse:
        return trainer_pb2.GetRunResponse(run=_run_message(self._runs.get(request.run_id)))

    def ListRuns(
        self, request: trainer_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListRunsResponse:
        runs, token = page_of(self._runs.list(), request.page_size, request.page_token)
        return trainer_pb2.ListRunsResponse(runs=[_run_message(r) for r in runs], next_page_token=token)

    def CancelRun(
        self, request: trainer_pb2.CancelRunRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CancelRunResponse:
        return trainer_pb2.CancelRunResponse(run=_run_message(self._runs.cancel(request.run_id)))

    def _model_for_scoring(self, checkpoint_id: str) -> PreTrainedModel:
        if self._scoring_model is None or self._scoring_model[0] != checkpoint_id:
            self._scoring_model = (
                checkpoint_id,
                on_device(self._checkpoints.model(checkpoint_id), self._device).eval(),
            )
        return self._scoring_model[1]

    def ScoreSlice(
        self, request: trainer_pb2.ScoreSliceRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ScoreSliceResponse:
        record = self._checkpoints.record(request.checkpoint_id)
        max_texts = request.max_texts or 2000
        max_length = request.max_length or 128
        if not 1 <= max_texts <= 1_000_000 or not 4 <= max_length <= 8192:
            raise InvalidArgumentError(
                "max_texts" if not 1 <= max_texts <= 1_000_000 else "max_length", "is out of range"
            )
        spike_z = request.spike_z or 4.0
        fire_fraction = request.fire_fraction or 0.05
        if not math.isfinite(spike_z) or spike_z <= 0 or not 0 <= fire_fraction <= 1:
            raise InvalidArgumentError(
                "spike_z" if not math.isfinite(spike_z) or spike_z <= 0 else "fire_fraction", "is out of range"
            )
        if request.corpus.WhichOneof("source") == "uri":
            path = resolve_path(request.corpus.uri.uri, self._store, "corpus.uri.uri")
            try:
                texts = list(read_texts(path, text_field=request.corpus.text_field or "text"))
            except CorpusError as error:
                raise InvalidArgumentError("corpus", str(error)) from error
        else:
            texts = list(request.corpus.texts.texts)
        vocabulary = vocabulary_of(self._checkpoints.tokenizer_json(record.checkpoint_id))
        pool = tokenize_texts(
            vocabulary.tokenizer_json,
            sample_texts(texts, max_texts, request.seed),
            max_length=max_length,
            pad_id=vocabulary.pad_id,
        )
        if len(pool) == 0:
            raise InvalidArgumentError("corpus", "holds no text to score")
        with self._scoring_lock:
            ids, losses = token_losses(
                self._model_for_scoring(record.checkpoint_id),
                pool,
                special=vocabulary.special,
                mask_id=vocabulary.mask_id,
                mask_fraction=0.15,
                seed=request.seed,
                device=self._device,
            )
        score = score_slice(
            ids,
            losses,
            self._checkpoints.memory(record.checkpoint_id),
            spike_z=spike_z,
            fire_fraction=fire_fraction,
            top=request.top_spikes or 20,
        )
        pieces = {i: p for p, i in vocabulary.pieces.items()}
        return trainer_pb2.ScoreSliceResponse(
            slice_loss=score.slice_loss,
            remembered_loss=score.remembered_loss,
            spike_fraction=score.spike_fraction,
            fire=score.fire,
            spikes=[
                trainer_pb2.TokenSpike(
                    token_id=s.token_id,
                    piece=pieces.get(s.token_id, ""),
                    slice_loss=s.slice_loss,
                    remembered_loss=s.remembered_loss,
                    z=s.z,
                    occurrences=s.occurrences,
                )
                for s in score.spikes
            ],
            scored_tokens=score.scored_tokens,
            novel_fraction=score.novel_fraction,
        )

    def ScorePseudoLikelihood(
        self, request: trainer_pb2.ScorePseudoLikelihoodRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ScorePseudoLikelihoodResponse:
        record = self._checkpoints.record(request.checkpoint_id)
        if len(request.texts) > 10_000:
            raise InvalidArgumentError("texts", f"has {len(request.texts)} texts; send at most 10000 per call")
        max_length = request.max_length or 128
        if not 4 <= max_length <= 8192:
            raise InvalidArgumentError("max_length", f"must be in [4, 8192] (0 means 128), got {max_length}")
        vocabulary = vocabulary_of(self._checkpoints.tokenizer_json(record.checkpoint_id))
        with self._scoring_lock:
            scores = pseudo_log_likelihoods(
                self._model_for_scoring(record.checkpoint_id),
                vocabulary.tokenizer_json,
                list(request.texts),
                mask_id=vocabulary.mask_id,
                special=vocabulary.special,
                max_length=max_length,
                device=self._device,
            )
        total = sum(s.log_likelihood for s in scores)
        pieces, words, characters = (
            sum(getattr(s, name) for s in scores) for name in ("pieces", "words", "characters")
        )
        return trainer_pb2.ScorePseudoLikelihoodResponse(
            log_likelihoods=[s.log_likelihood for s in scores],
            pieces=[s.pieces for s in scores],
            words=[s.words for s in scores],
            characters=[s.characters for s in scores],
            log_likelihood_per_word=total / words if words else 0.0,
            log_likelihood_per_character=total / characters if characters else 0.0,
            pseudo_perplexity=math.exp(-total / pieces) if pieces else float("nan"),
        )

    def ExportOnnx(
        self, request: trainer_pb2.ExportOnnxRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ExportOnnxResponse:
        record = self._checkpoints.record(request.checkpoint_id)
        if request.destination.uri:
            destination = resolve_path(request.destination.uri, self._store, "destination.uri", must_exist=False)
        else:
            destination = self._store / "trainer" / "exports" / record.checkpoint_id
        try:
            result = export_onnx(
                self._checkpoints.model(record.checkpoint_id),
                self._checkpoints.tokenizer_json(record.checkpoint_id),
                destination,
            )
        except FileExistsError as error:
            raise AlreadyExistsError(f"destination.uri: {destination} exists; export to a new directory") from error
        except MemoryError as error:
            raise ResourceExhaustedError(f"out of memory while exporting {record.checkpoint_id}") from error
        return trainer_pb2.ExportOnnxResponse(
            directory=common_pb2.ArtifactRef(uri=result.directory.as_uri()),
            model=common_pb2.ArtifactRef(uri=(result.directory / "model.onnx").as_uri()),
            quantized_model=common_pb2.ArtifactRef(uri=(result.directory / "model.int8.onnx").as_uri()),
            max_abs_diff=result.max_abs_diff,
            quantized_max_abs_diff=result.quantized_max_abs_diff,
            quantized_top1_agreement=result.quantized_top1_agreement,
        )
