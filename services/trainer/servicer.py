"""TrainerService over gRPC: translate messages, call the TrainerApp, translate back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from driftlm.services.core.artifacts import FileRef
from driftlm.services.core.corpus import corpus_from_message
from driftlm.services.core.engine import engine_from_message
from driftlm.services.runtime.paging import page_of
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from .app import ModelSource, TrainerApp
from .corpus_passes import CorpusPassRequest
from .messages import (
    checkpoint_message,
    pseudo_likelihood_message,
    run_message,
    selection_message,
    slice_score_message,
)
from .trigger import trigger_options
from .validation import run_spec


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Every RPC of TrainerService."""

    def __init__(self, app: TrainerApp) -> None:
        self._app = app

    def CreateCheckpoint(
        self, request: trainer_pb2.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CreateCheckpointResponse:
        source = request.WhichOneof("source")
        info = self._app.create_checkpoint(
            ModelSource(
                model_dir=request.model_dir.uri if source == "model_dir" else "",
                model_dir_sha256=request.model_dir.sha256 if source == "model_dir" else "",
                hub_id=request.hub_id if source == "hub_id" else "",
                config_json=request.model_config_json if source == "model_config_json" else "",
            ),
            request.vocab_version_id,
            seed=request.seed,
            display_name=request.display_name,
        )
        return trainer_pb2.CreateCheckpointResponse(checkpoint=checkpoint_message(info))

    def GetCheckpoint(
        self, request: trainer_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetCheckpointResponse:
        return trainer_pb2.GetCheckpointResponse(
            checkpoint=checkpoint_message(self._app.checkpoint(request.checkpoint_id))
        )

    def StartRun(
        self, request: trainer_pb2.StartRunRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.StartRunResponse:
        record = self._app.start_run(run_spec(request, roots=self._app.roots))
        return trainer_pb2.StartRunResponse(run=run_message(record))

    def WatchRun(
        self, request: trainer_pb2.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.WatchRunResponse]:
        for record in self._app.watch_run(request.run_id, context.is_active):
            yield trainer_pb2.WatchRunResponse(run=run_message(record))

    def GetRun(self, request: trainer_pb2.GetRunRequest, context: grpc.ServicerContext) -> trainer_pb2.GetRunResponse:
        return trainer_pb2.GetRunResponse(run=run_message(self._app.run(request.run_id)))

    def ListRuns(
        self, request: trainer_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListRunsResponse:
        runs, token = page_of(self._app.list_runs(), request.page_size, request.page_token)
        return trainer_pb2.ListRunsResponse(runs=[run_message(r) for r in runs], next_page_token=token)

    def CancelRun(
        self, request: trainer_pb2.CancelRunRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CancelRunResponse:
        return trainer_pb2.CancelRunResponse(run=run_message(self._app.cancel_run(request.run_id)))

    def ListSelections(
        self, request: trainer_pb2.ListSelectionsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListSelectionsResponse:
        selections, token = page_of(self._app.selections(request.run_id), request.page_size, request.page_token)
        return trainer_pb2.ListSelectionsResponse(
            selections=[selection_message(s) for s in selections], next_page_token=token
        )

    def ScoreSlice(
        self, request: trainer_pb2.ScoreSliceRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ScoreSliceResponse:
        options = trigger_options(
            max_texts=request.max_texts,
            max_length=request.max_length,
            mask_fraction=request.mask_fraction,
            seed=request.seed,
            top_spikes=request.top_spikes,
            false_fire_rate=request.false_fire_rate,
            min_effect=request.min_effect,
            min_token_count=request.min_token_count,
            spike_z=request.spike_z,
            min_token_effect=request.min_token_effect,
            min_word_texts=request.min_word_texts,
            min_novelty_effect=request.min_novelty_effect,
        )
        scores = FileRef(request.scores.uri, request.scores.sha256) if request.HasField("scores") else None
        scored = self._app.score_slice(request.checkpoint_id, corpus_from_message(request.corpus), options, scores)
        return slice_score_message(scored)

    def ScorePseudoLikelihood(
        self, request: trainer_pb2.ScorePseudoLikelihoodRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ScorePseudoLikelihoodResponse:
        if request.HasField("corpus"):
            written, scored = self._app.corpus_passes.pseudo_likelihoods(
                request.checkpoint_id,
                corpus_from_message(request.corpus),
                CorpusPassRequest(
                    destination=request.destination.uri,
                    max_length=request.max_length,
                    engine=engine_from_message(request.engine),
                ),
                texts_too=bool(request.texts),
            )
            return pseudo_likelihood_message(scored, written)
        return pseudo_likelihood_message(
            self._app.pseudo_likelihood(request.checkpoint_id, request.texts, max_length=request.max_length)
        )

    def ComputeEmbeddings(
        self, request: trainer_pb2.ComputeEmbeddingsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ComputeEmbeddingsResponse:
        embeddings = self._app.embed_texts(request.checkpoint_id, request.texts, max_length=request.max_length)
        return trainer_pb2.ComputeEmbeddingsResponse(embeddings=array_to_tensor(embeddings))

    def ScoreCandidates(
        self, request: trainer_pb2.ScoreCandidatesRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ScoreCandidatesResponse:
        scores = self._app.corpus_passes.score(
            request.checkpoint_id,
            corpus_from_message(request.corpus),
            CorpusPassRequest(
                baseline_checkpoint_id=request.baseline_checkpoint_id,
                destination=request.destination.uri,
                max_length=request.max_length,
                mask_fraction=request.mask_fraction,
                seed=request.seed,
                engine=engine_from_message(request.engine),
            ),
        )
        return trainer_pb2.ScoreCandidatesResponse(
            scores=common_pb2.ArtifactRef(uri=scores.uri, sha256=scores.sha256),
            scored_count=scores.rows,
            wall_s=scores.wall_s,
        )

    def ExportOnnx(
        self, request: trainer_pb2.ExportOnnxRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ExportOnnxResponse:
        result = self._app.export_onnx(
            request.checkpoint_id, request.destination.uri, request.model_name, request.version
        )

        def uri(path: Path) -> str:  # where a reader finds it: the object store, or this machine
            if not result.published_repository:
                return path.as_uri()
            relative = path.relative_to(result.repository).as_posix()
            return result.published_repository if relative == "." else f"{result.published_repository}/{relative}"

        return trainer_pb2.ExportOnnxResponse(
            directory=common_pb2.ArtifactRef(uri=uri(result.directory)),
            model=common_pb2.ArtifactRef(uri=uri(result.directory / "model.onnx"), sha256=result.model_sha256),
            quantized_model=common_pb2.ArtifactRef(
                uri=uri(result.quantized_directory / "model.onnx"), sha256=result.quantized_model_sha256
            ),
            max_abs_diff=result.max_abs_diff,
            quantized_max_abs_diff=result.quantized_max_abs_diff,
            quantized_top1_agreement=result.quantized_top1_agreement,
            repository=common_pb2.ArtifactRef(uri=uri(result.repository)),
            model_name=result.model_name,
            quantized_model_name=result.quantized_model_name,
            version=result.version,
        )
