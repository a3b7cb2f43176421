"""The inference service as the compare service uses it: typed values, failures as driftlm errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from driftlm.services.inference.client import InferenceClient
from driftlm.services.runtime.errors import ResourceExhaustedError, peer_failure
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.v1 import inference_pb2


@dataclass(frozen=True)
class ServedModel:
    """A ready version of a model."""

    name: str
    version: int
    is_default: bool
    vocab_size: int


@dataclass(frozen=True)
class MaskedLogits:
    """Logits at drawn masked positions: (P, V) logits, (P,) text index and (P,) original piece."""

    logits: np.ndarray
    text_indices: np.ndarray
    labels: np.ndarray
    version: int


class InferencePeer(Protocol):
    """What CompareApp needs of the inference service.

    `masked_logits` raises ResourceExhaustedError when the answer would be too large (send fewer
    texts), NotFoundError for a model that is not served, UnavailableError when unreachable.
    """

    def ready_models(self) -> list[ServedModel]: ...

    def masked_logits(
        self, name: str, version: int, texts: Sequence[str], *, mask_fraction: float, seed: int
    ) -> MaskedLogits: ...


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

    def close(self) -> None:
        self._client.close()
