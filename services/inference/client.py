"""A Python client of driftlm's InferenceService that returns NumPy arrays (no ONNX Runtime needed).

Example:
    >>> with InferenceClient("127.0.0.1:50054") as inference:  # doctest: +SKIP
    ...     inference.fill_mask("driftlm", ["the [MASK] of the city"])[0].candidates[0].piece
    'mayor'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from driftlm.services.runtime.channel import ServiceClient
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.services.runtime.tensors import tensor_to_array
from driftlm.v1 import inference_pb2, inference_pb2_grpc


@dataclass(frozen=True)
class Logits:
    """ComputeLogits' answer as arrays: (P, V) logits and, per row, its text, position and piece id."""

    logits: np.ndarray
    text_indices: np.ndarray
    positions: np.ndarray
    token_ids: np.ndarray
    version: int


class InferenceClient(ServiceClient):
    """Calls an inference service; errors surface as grpc.RpcError with the server's status.

    `version` 0 means the model's default version; `truncate` cuts texts longer than the model
    takes instead of refusing them.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        timeout_s: float | None = 600.0,
        security: ChannelSecurity = PLAINTEXT,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        # Logits are large ((P, V) float32): accept answers as big as the server may send (its
        # --max-message-mb), not gRPC's default 4 MiB.
        options = [("grpc.max_receive_message_length", max_message_bytes)]
        super().__init__(target, timeout_s=timeout_s, options=options, security=security)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def load_model(
        self, name: str, version: int = 0, *, make_default: bool = False, unload_previous: bool = False
    ) -> inference_pb2.ModelInfo:
        """Load a version (0: the newest) beside the serving ones; optionally make it the default."""
        request = inference_pb2.LoadModelRequest(
            name=name, version=version, make_default=make_default, unload_previous=unload_previous
        )
        response: inference_pb2.LoadModelResponse = self._stub.LoadModel(request, timeout=self._timeout())
        return response.model

    def unload_model(self, name: str, version: int = 0) -> list[inference_pb2.ModelInfo]:
        """Drain and unload a version (0: every version of the model)."""
        request = inference_pb2.UnloadModelRequest(name=name, version=version)
        return list(self._stub.UnloadModel(request, timeout=self._timeout()).models)

    def list_models(self, name: str = "") -> list[inference_pb2.ModelInfo]:
        """Every version the server knows (of `name` when given), failed ones with their reason."""
        return list(self._stub.ListModels(inference_pb2.ListModelsRequest(name=name), timeout=self._timeout()).models)

    def fill_mask(
        self, name: str, texts: Sequence[str], *, top_k: int = 5, version: int = 0, truncate: bool = False
    ) -> list[inference_pb2.MaskPrediction]:
        """The top_k pieces at every mask of every text, in text then position order."""
        request = inference_pb2.FillMaskRequest(model=self._target(name, version, truncate), texts=texts, top_k=top_k)
        return list(self._stub.FillMask(request, timeout=self._timeout()).predictions)

    def embed(
        self, name: str, texts: Sequence[str], *, mean: bool = False, version: int = 0, truncate: bool = False
    ) -> np.ndarray:
        """(N, H) float32: [CLS] states, or with `mean` the mean of each text's non-special pieces."""
        request = inference_pb2.EmbedTextsRequest(
            model=self._target(name, version, truncate),
            texts=texts,
            pooling=inference_pb2.POOLING_MEAN if mean else inference_pb2.POOLING_CLS,
        )
        return tensor_to_array(self._stub.EmbedTexts(request, timeout=self._timeout()).embeddings, "embeddings")

    def token_loss(
        self, name: str, texts: Sequence[str], *, version: int = 0, truncate: bool = False
    ) -> inference_pb2.ComputeTokenLossResponse:
        """Per-piece MLM losses and the texts' pseudo-log-likelihoods (original and word-l2r)."""
        request = inference_pb2.ComputeTokenLossRequest(model=self._target(name, version, truncate), texts=texts)
        response: inference_pb2.ComputeTokenLossResponse = self._stub.ComputeTokenLoss(request, timeout=self._timeout())
        return response

    def logits(
        self,
        name: str,
        texts: Sequence[str],
        positions: Sequence[Sequence[int]] | None = None,
        *,
        version: int = 0,
        truncate: bool = False,
        mask_fraction: float = 0.0,
        seed: int = 0,
    ) -> Logits:
        """Vocabulary logits at each text's positions; where none are given, at a seeded
        `mask_fraction` of its pieces, masked (token_ids: the original pieces), else at its masks."""
        wanted = positions if positions is not None else [[] for _ in texts]
        request = inference_pb2.ComputeLogitsRequest(
            model=self._target(name, version, truncate),
            texts=[inference_pb2.TextPositions(text=t, positions=p) for t, p in zip(texts, wanted, strict=True)],
            mask_fraction=mask_fraction,
            seed=seed,
        )
        response = self._stub.ComputeLogits(request, timeout=self._timeout())
        return Logits(
            tensor_to_array(response.logits, "logits"),
            tensor_to_array(response.text_indices, "text_indices"),
            tensor_to_array(response.positions, "positions"),
            tensor_to_array(response.token_ids, "token_ids"),
            response.version,
        )

    @staticmethod
    def _target(name: str, version: int, truncate: bool) -> inference_pb2.ModelTarget:
        return inference_pb2.ModelTarget(name=name, version=version, truncate=truncate)
