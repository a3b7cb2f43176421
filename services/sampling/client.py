"""A Python client of SamplingService that takes and returns NumPy arrays and chunks big inputs.

Example:
    >>> client = SamplingClient("127.0.0.1:50052")  # doctest: +SKIP
    >>> client.draw(np.array([0.1, 0.0, 0.9]), k=2, seed=1)  # doctest: +SKIP
    array([2, 0])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from driftlm.services.core.candidates import CandidatePool, Selection
from driftlm.services.core.strategy import Strategy
from driftlm.services.runtime.channel import ServiceClient
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.services.runtime.tensors import DEFAULT_CHUNK_BYTES, chunk_requests, tensor_to_array
from driftlm.v1 import sampling_pb2, sampling_pb2_grpc

if TYPE_CHECKING:
    from .app import SamplingApp


class SamplingClient(ServiceClient):
    """Calls a sampling service; errors surface as grpc.RpcError with the server's status."""

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_s: float | None = 600.0,
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        super().__init__(target, timeout_s=timeout_s, security=security)
        self._stub = sampling_pb2_grpc.SamplingServiceStub(self._channel)
        self._chunk_bytes = chunk_bytes

    def cosine_distance(
        self, old_rows: np.ndarray, new_rows: np.ndarray, *, top_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N,) distances between matching rows and the top_k most shifted row indices."""
        requests = chunk_requests(
            sampling_pb2.ComputeCosineDistanceRequest,
            {"top_k": top_k},
            {"old_rows": old_rows, "new_rows": new_rows},
            self._chunk_bytes,
        )
        response = self._stub.ComputeCosineDistance(requests, timeout=self._timeout())
        return tensor_to_array(response.distances, "distances"), tensor_to_array(response.top_indices, "top_indices")

    def sampling_weights(self, scores: np.ndarray, lengths: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
        """(N,) `alpha * score + (1 - alpha) * length / max(length)`."""
        requests = chunk_requests(
            sampling_pb2.ComputeSamplingWeightsRequest,
            {"alpha": alpha},
            {"scores": scores, "lengths": lengths},
            self._chunk_bytes,
        )
        return tensor_to_array(self._stub.ComputeSamplingWeights(requests, timeout=self._timeout()).weights, "weights")

    def draw(self, weights: np.ndarray, *, k: int, replace: bool = False, seed: int = 0) -> np.ndarray:
        """(k,) indices drawn in proportion to the weights."""
        requests = chunk_requests(
            sampling_pb2.DrawSampleRequest,
            {"k": k, "replace": replace, "seed": seed},
            {"weights": weights},
            self._chunk_bytes,
        )
        return tensor_to_array(self._stub.DrawSample(requests, timeout=self._timeout()).indices, "indices")

    def select_sentences(
        self, strategy: Strategy, pool: CandidatePool, *, k: int, alpha: float = 0.5, seed: int = 0
    ) -> Selection:
        """Up to k candidate indices chosen by `strategy`."""
        scalars: dict[str, Any] = {
            "strategy": strategy.proto,
            "k": k,
            "alpha": alpha,
            "seed": seed,
            "top_x": pool.top_x,
            "target_token_ids": [int(t) for t in pool.target_token_ids],
        }
        tensors = {
            "candidate_lengths": pool.lengths,
            "candidate_token_ids": pool.token_ids,
            "token_shift": pool.token_shift,
            "old_cls": pool.old_cls,
            "new_cls": pool.new_cls,
            "losses": pool.losses,
        }
        requests = chunk_requests(sampling_pb2.SelectSentencesRequest, scalars, tensors, self._chunk_bytes)
        response = self._stub.SelectSentences(requests, timeout=self._timeout())
        return Selection(
            indices=tensor_to_array(response.indices, "indices"),
            weights=tensor_to_array(response.weights, "weights"),
            eligible_count=response.eligible_count,
            target_token_ids=tensor_to_array(response.target_token_ids, "target_token_ids"),
        )


def in_process() -> SamplingApp:
    """The sampling service's calls made in this process (needs Numba), for a caller without a
    sampling endpoint: the same methods and results as SamplingClient."""
    from .app import SamplingApp

    return SamplingApp()
