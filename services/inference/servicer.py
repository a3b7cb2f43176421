"""driftlm.v1.InferenceService over gRPC: unpack the request, call the app, build the answer."""

from __future__ import annotations

import grpc

from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.v1 import inference_pb2, inference_pb2_grpc

from .app import InferenceApp
from .registry import State, VersionInfo

_STATES = {
    State.LOADING: inference_pb2.MODEL_STATE_LOADING,
    State.READY: inference_pb2.MODEL_STATE_READY,
    State.UNLOADING: inference_pb2.MODEL_STATE_UNLOADING,
    State.UNAVAILABLE: inference_pb2.MODEL_STATE_UNAVAILABLE,
}


def model_info(info: VersionInfo) -> inference_pb2.ModelInfo:
    return inference_pb2.ModelInfo(
        name=info.name,
        version=info.version,
        is_default=info.is_default,
        state=_STATES[info.state],
        reason=info.reason,
        vocab_size=info.vocab_size,
        hidden_size=info.hidden_size,
        max_length=info.max_length,
    )


def _target(target: inference_pb2.ModelTarget) -> tuple[str, int]:
    if not target.name:
        raise InvalidArgumentError("model.name", "is empty; name a model of the repository")
    if target.version < 0:
        raise InvalidArgumentError("model.version", "must be 0 (the default version) or a version number")
    return target.name, target.version


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Maps messages to InferenceApp calls."""

    def __init__(self, app: InferenceApp) -> None:
        self._app = app

    def LoadModel(
        self, request: inference_pb2.LoadModelRequest, context: grpc.ServicerContext
    ) -> inference_pb2.LoadModelResponse:
        if request.version < 0:
            raise InvalidArgumentError("version", "must be 0 (the newest) or a version number")
        info = self._app.registry.load(
            request.name, request.version, make_default=request.make_default, unload_previous=request.unload_previous
        )
        return inference_pb2.LoadModelResponse(model=model_info(info))

    def UnloadModel(
        self, request: inference_pb2.UnloadModelRequest, context: grpc.ServicerContext
    ) -> inference_pb2.UnloadModelResponse:
        if request.version < 0:
            raise InvalidArgumentError("version", "must be 0 (every version) or a version number")
        unloaded = self._app.registry.unload(request.name, request.version)
        return inference_pb2.UnloadModelResponse(models=[model_info(info) for info in unloaded])

    def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(
            models=[model_info(info) for info in self._app.list_models(request.name)]
        )

    def FillMask(
        self, request: inference_pb2.FillMaskRequest, context: grpc.ServicerContext
    ) -> inference_pb2.FillMaskResponse:
        name, version = _target(request.model)
        version, fills = self._app.fill_mask(
            name, version, list(request.texts), top_k=request.top_k, truncate=request.model.truncate
        )
        return inference_pb2.FillMaskResponse(
            version=version,
            predictions=[
                inference_pb2.MaskPrediction(
                    text_index=fill.text_index,
                    char_offset=fill.char_offset,
                    position=fill.position,
                    candidates=[
                        inference_pb2.MaskCandidate(piece=piece, token_id=token, probability=probability)
                        for token, piece, probability in zip(
                            fill.token_ids.tolist(), fill.pieces, fill.probabilities.tolist(), strict=True
                        )
                    ],
                )
                for fill in fills
            ],
        )

    def EmbedTexts(
        self, request: inference_pb2.EmbedTextsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.EmbedTextsResponse:
        name, version = _target(request.model)
        version, embeddings = self._app.embed(
            name,
            version,
            list(request.texts),
            mean=request.pooling == inference_pb2.POOLING_MEAN,
            truncate=request.model.truncate,
        )
        return inference_pb2.EmbedTextsResponse(embeddings=array_to_tensor(embeddings), version=version)

    def ComputeTokenLoss(
        self, request: inference_pb2.ComputeTokenLossRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ComputeTokenLossResponse:
        name, version = _target(request.model)
        version, result = self._app.token_loss(name, version, list(request.texts), truncate=request.model.truncate)
        corpus = result.corpus
        return inference_pb2.ComputeTokenLossResponse(
            version=version,
            texts=[
                inference_pb2.TextTokenLoss(
                    token_ids=ids.tolist(),
                    losses=losses.tolist(),
                    scored=scored.tolist(),
                    log_likelihood=score.log_likelihood,
                    word_l2r_log_likelihood=score.word_l2r_log_likelihood,
                    pieces=score.pieces,
                    words=score.words,
                    characters=score.characters,
                )
                for ids, losses, scored, score in zip(
                    result.token_ids, result.losses, result.scored, corpus.texts, strict=True
                )
            ],
            log_likelihood_per_word=corpus.log_likelihood_per_word,
            log_likelihood_per_character=corpus.log_likelihood_per_character,
            word_l2r_log_likelihood_per_word=corpus.word_l2r_log_likelihood_per_word,
            word_l2r_log_likelihood_per_character=corpus.word_l2r_log_likelihood_per_character,
            pseudo_perplexity=corpus.pseudo_perplexity,
        )

    def ComputeLogits(
        self, request: inference_pb2.ComputeLogitsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ComputeLogitsResponse:
        name, version = _target(request.model)
        version, result = self._app.logits(
            name,
            version,
            [item.text for item in request.texts],
            [list(item.positions) for item in request.texts],
            truncate=request.model.truncate,
            mask_fraction=request.mask_fraction,
            seed=request.seed,
        )
        return inference_pb2.ComputeLogitsResponse(
            version=version,
            logits=array_to_tensor(result.logits),
            text_indices=array_to_tensor(result.text_indices),
            positions=array_to_tensor(result.positions),
            token_ids=array_to_tensor(result.token_ids),
        )
