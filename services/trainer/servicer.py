"""TrainerService over gRPC: translate messages, call the TrainerApp, translate back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from driftlm.services.core.corpus import corpus_from_message
from driftlm.services.runtime.paging import page_of
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from .app import CheckpointInfo, ModelSource, TrainerApp
from .runs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, RunRecord
from .training import IterationSelection
from .trigger import Signal, trigger_options
from .validation import KINDS, run_spec

_STATES = {
    QUEUED: trainer_pb2.RUN_STATE_QUEUED,
    RUNNING: trainer_pb2.RUN_STATE_RUNNING,
    SUCCEEDED: trainer_pb2.RUN_STATE_SUCCEEDED,
    FAILED: trainer_pb2.RUN_STATE_FAILED,
    CANCELLED: trainer_pb2.RUN_STATE_CANCELLED,
}
_KINDS = {kind: value for value, kind in KINDS.items()}
_SIGNALS = {
    Signal.SLICE_LOSS: trainer_pb2.TRIGGER_SIGNAL_SLICE_LOSS,
    Signal.TOKEN_LOSS: trainer_pb2.TRIGGER_SIGNAL_TOKEN_LOSS,
    Signal.UNSEEN_WORDS: trainer_pb2.TRIGGER_SIGNAL_UNSEEN_WORDS,
    Signal.NEW_WORDS: trainer_pb2.TRIGGER_SIGNAL_NEW_WORDS,
}


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


def _checkpoint_message(info: CheckpointInfo) -> trainer_pb2.Checkpoint:
    record = info.record
    return trainer_pb2.Checkpoint(
        checkpoint_id=record.checkpoint_id,
        vocab_version_id=record.vocab_version_id,
        parent_checkpoint_id=record.parent_checkpoint_id,
        run_id=record.run_id,
        step=record.step,
        create_time=record.create_time,
        directory=common_pb2.ArtifactRef(uri=info.directory.as_uri()),
        parameter_count=record.parameter_count,
        display_name=record.display_name,
        remembered_tokens=info.remembered_tokens,
        new_mlm_head=record.new_mlm_head,
    )


def _selection_message(selection: IterationSelection) -> trainer_pb2.Selection:
    return trainer_pb2.Selection(
        iteration=selection.iteration,
        strategy=selection.strategy.proto,
        sentence_indices=selection.sentence_indices,
        candidate_indices=selection.candidate_indices,
        candidate_weights=selection.candidate_weights,
        eligible_count=selection.eligible_count,
        topped_up_indices=selection.topped_up_indices,
        target_token_ids=selection.target_token_ids,
    )


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
        return trainer_pb2.CreateCheckpointResponse(checkpoint=_checkpoint_message(info))

    def GetCheckpoint(
        self, request: trainer_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetCheckpointResponse:
        return trainer_pb2.GetCheckpointResponse(
            checkpoint=_checkpoint_message(self._app.checkpoint(request.checkpoint_id))
        )

    def StartRun(
        self, request: trainer_pb2.StartRunRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.StartRunResponse:
        record = self._app.start_run(run_spec(request, roots=self._app.roots))
        return trainer_pb2.StartRunResponse(run=_run_message(record))

    def WatchRun(
        self, request: trainer_pb2.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[trainer_pb2.WatchRunResponse]:
        for record in self._app.watch_run(request.run_id, context.is_active):
            yield trainer_pb2.WatchRunResponse(run=_run_message(record))

    def GetRun(self, request: trainer_pb2.GetRunRequest, context: grpc.ServicerContext) -> trainer_pb2.GetRunResponse:
        return trainer_pb2.GetRunResponse(run=_run_message(self._app.run(request.run_id)))

    def ListRuns(
        self, request: trainer_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListRunsResponse:
        runs, token = page_of(self._app.list_runs(), request.page_size, request.page_token)
        return trainer_pb2.ListRunsResponse(runs=[_run_message(r) for r in runs], next_page_token=token)

    def CancelRun(
        self, request: trainer_pb2.CancelRunRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CancelRunResponse:
        return trainer_pb2.CancelRunResponse(run=_run_message(self._app.cancel_run(request.run_id)))

    def ListSelections(
        self, request: trainer_pb2.ListSelectionsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListSelectionsResponse:
        selections, token = page_of(self._app.selections(request.run_id), request.page_size, request.page_token)
        return trainer_pb2.ListSelectionsResponse(
            selections=[_selection_message(s) for s in selections], next_page_token=token
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
        scored = self._app.score_slice(request.checkpoint_id, corpus_from_message(request.corpus), options)
        score = scored.score
        return trainer_pb2.ScoreSliceResponse(
            slice_loss=score.slice_loss,
            remembered_loss=score.remembered_loss,
            spike_fraction=score.tokens.spike_fraction,
            fire=score.fire,
            spikes=[
                trainer_pb2.TokenSpike(
                    token_id=s.token_id,
                    piece=scored.pieces[s.token_id],
                    slice_loss=s.slice_loss,
                    remembered_loss=s.remembered_loss,
                    z=s.z,
                    occurrences=s.occurrences,
                    excess=s.excess,
                    p_value=s.p_value,
                )
                for s in score.tokens.spikes
            ],
            scored_tokens=score.scored_tokens,
            novel_fraction=score.novel_fraction,
            score=score.loss.mean,
            threshold=score.loss.threshold,
            null_mean=score.null_mean,
            null_sd=score.null_sd,
            z=score.loss.z,
            texts_scored=score.texts_scored,
            token_z_threshold=score.tokens.z_threshold,
            tokens_tested=score.tokens.tokens_tested,
            calibrated=score.calibrated,
            reason=score.reason,
            signals=[_SIGNALS[signal] for signal in score.signals],
            unseen_share=score.unseen.mean,
            unseen_threshold=score.unseen.threshold,
            unseen_null_mean=score.unseen_null_mean,
            unseen_null_sd=score.unseen_null_sd,
            unseen_z=score.unseen.z,
            texts_with_words=score.texts_with_words,
            new_words=[
                trainer_pb2.NewWord(
                    word=w.word,
                    slice_texts=w.slice_texts,
                    slice_share=w.slice_share,
                    memory_texts=w.memory_texts,
                    memory_share=w.memory_share,
                    p_value=w.p_value,
                )
                for w in score.words.novel_words
            ],
            new_word_count=score.words.novel_word_count,
            words_tested=score.words.words_tested,
            word_p_threshold=score.words.p_threshold,
            spike_count=score.tokens.spike_count,
            knows_words=score.knows_words,
        )

    def ScorePseudoLikelihood(
        self, request: trainer_pb2.ScorePseudoLikelihoodRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ScorePseudoLikelihoodResponse:
        scored = self._app.pseudo_likelihood(request.checkpoint_id, request.texts, max_length=request.max_length)
        return trainer_pb2.ScorePseudoLikelihoodResponse(
            log_likelihoods=[s.log_likelihood for s in scored.texts],
            pieces=[s.pieces for s in scored.texts],
            words=[s.words for s in scored.texts],
            characters=[s.characters for s in scored.texts],
            log_likelihood_per_word=scored.log_likelihood_per_word,
            log_likelihood_per_character=scored.log_likelihood_per_character,
            pseudo_perplexity=scored.pseudo_perplexity,
            word_l2r_log_likelihoods=[s.word_l2r_log_likelihood for s in scored.texts],
            word_l2r_log_likelihood_per_word=scored.word_l2r_log_likelihood_per_word,
            word_l2r_log_likelihood_per_character=scored.word_l2r_log_likelihood_per_character,
        )

    def ComputeEmbeddings(
        self, request: trainer_pb2.ComputeEmbeddingsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ComputeEmbeddingsResponse:
        embeddings = self._app.embed_texts(request.checkpoint_id, request.texts, max_length=request.max_length)
        return trainer_pb2.ComputeEmbeddingsResponse(embeddings=array_to_tensor(embeddings))

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
