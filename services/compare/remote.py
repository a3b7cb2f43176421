"""InferencePeer over gRPC: failures as driftlm errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
import numpy as np

from driftlm.services.core.errors import ResourceExhaustedError
from driftlm.services.inference.client import InferenceClient
from driftlm.services.runtime.errors import peer_failure
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.v1 import inference_pb2

from .peers import FilledMasks, MaskedLogits, ServedModel

_LOG = logging.getLogger("driftlm.compare")
# Texts per inference call (the inference service takes at most 256).
_TEXTS_PER_CALL = 128


class RemoteInference:
    """InferencePeer over gRPC."""

    def __init__(self, endpoint: str, *, security: ChannelSecurity = PLAINTEXT, timeout_s: float = 300.0) -> None:
        self._endpoint = endpoint
        self._client = InferenceClient(endpoint, security=security, timeout_s=timeout_s)

    def ready_models(self) -> list[ServedModel]:
        try:
            models = self._client.list_models()
        except grpc.RpcError as error:
            raise peer_failure("inference", self._endpoint, error) from error
        return [
            ServedModel(m.name, m.version, m.is_default, m.vocab_size)
            for m in models
            if m.state == inference_pb2.MODEL_STATE_READY
        ]

    def load(self, name: str, version: int) -> ServedModel:
        """Load a version of the inference service's repository (0: its newest), not as a default."""
        try:
            model = self._client.load_model(name, version)
        except grpc.RpcError as error:
            raise peer_failure("inference", self._endpoint, error) from error
        return ServedModel(model.name, model.version, model.is_default, model.vocab_size)

    def unload(self, name: str, version: int) -> None:
        """Unload a version this service loaded; a failure is logged, not raised (the answer stands)."""
        try:
            self._client.unload_model(name, version)
        except grpc.RpcError as error:
            _LOG.warning(
                "could not unload a model", extra={"model": name, "version": version, "code": error.code().name}
            )

    def masked_logits(
        self, name: str, version: int, texts: Sequence[str], *, mask_fraction: float, seed: int
    ) -> MaskedLogits:
        try:
            answer = self._client.logits(
                name, list(texts), version=version, truncate=True, mask_fraction=mask_fraction, seed=seed
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhaustedError(str(error.details())) from error
            raise peer_failure("inference", self._endpoint, error) from error
        return MaskedLogits(answer.logits, answer.text_indices, answer.token_ids, answer.version)

    def fill_masks(self, name: str, version: int, texts: Sequence[str], *, top_k: int) -> FilledMasks:
        slots: FilledMasks = [[] for _ in texts]
        for start in range(0, len(texts), _TEXTS_PER_CALL):
            try:
                predictions = self._client.fill_mask(
                    name, list(texts[start : start + _TEXTS_PER_CALL]), top_k=top_k, version=version, truncate=True
                )
            except grpc.RpcError as error:
                raise peer_failure("inference", self._endpoint, error) from error
            for prediction in predictions:
                pieces = tuple(c.piece for c in prediction.candidates)
                probabilities = np.array([c.probability for c in prediction.candidates])
                slots[start + prediction.text_index].append((pieces, probabilities))
        return slots

    def mean_token_loss(self, name: str, version: int, texts: Sequence[str]) -> float:
        losses, pieces = 0.0, 0
        for start in range(0, len(texts), _TEXTS_PER_CALL):
            try:
                answer = self._client.token_loss(
                    name, list(texts[start : start + _TEXTS_PER_CALL]), version=version, truncate=True
                )
            except grpc.RpcError as error:
                raise peer_failure("inference", self._endpoint, error) from error
            losses += sum(sum(text.losses) for text in answer.texts)
            pieces += sum(text.pieces for text in answer.texts)
        return losses / pieces if pieces else float("nan")

    def close(self) -> None:
        self._client.close()
