"""SamplingService over gRPC: read the request stream, call SamplingApp, build the response."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np

from driftlm.services.core.candidates import CandidatePool
from driftlm.services.core.strategy import Strategy
from driftlm.services.runtime.limits import RequestLimits
from driftlm.services.runtime.tensors import array_to_tensor, collect_stream
from driftlm.v1 import sampling_pb2, sampling_pb2_grpc

from .app import DEFAULT_ALPHA, SamplingApp
from .inputs import require


class SamplingServicer(sampling_pb2_grpc.SamplingServiceServicer):
    """Stateless: every call carries all it needs."""

    def __init__(self, limits: RequestLimits) -> None:
        self._max_stream_bytes = limits.max_stream_bytes
        self._app = SamplingApp(max_indices=limits.max_message_bytes // 8 - 1024)

    def ComputeCosineDistance(
        self, request_iterator: Iterator[sampling_pb2.ComputeCosineDistanceRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.ComputeCosineDistanceResponse:
        first, arrays = collect_stream(request_iterator, ("old_rows", "new_rows"), self._max_stream_bytes)
        distances, top = self._app.cosine_distance(
            require(arrays["old_rows"], "old_rows"), require(arrays["new_rows"], "new_rows"), top_k=first.top_k
        )
        return sampling_pb2.ComputeCosineDistanceResponse(
            distances=array_to_tensor(distances), top_indices=array_to_tensor(top)
        )

    def ComputeSamplingWeights(
        self, request_iterator: Iterator[sampling_pb2.ComputeSamplingWeightsRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.ComputeSamplingWeightsResponse:
        first, arrays = collect_stream(request_iterator, ("scores", "lengths"), self._max_stream_bytes)
        weights = self._app.sampling_weights(
            require(arrays["scores"], "scores"), require(arrays["lengths"], "lengths"), alpha=_alpha(first)
        )
        return sampling_pb2.ComputeSamplingWeightsResponse(weights=array_to_tensor(weights))

    def DrawSample(
        self, request_iterator: Iterator[sampling_pb2.DrawSampleRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.DrawSampleResponse:
        first, arrays = collect_stream(request_iterator, ("weights",), self._max_stream_bytes)
        indices = self._app.draw(
            require(arrays["weights"], "weights"), k=first.k, replace=first.replace, seed=first.seed
        )
        return sampling_pb2.DrawSampleResponse(indices=array_to_tensor(indices))

    def SelectSentences(
        self, request_iterator: Iterator[sampling_pb2.SelectSentencesRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.SelectSentencesResponse:
        tensor_fields = ("candidate_lengths", "candidate_token_ids", "token_shift", "old_cls", "new_cls", "losses")
        first, arrays = collect_stream(request_iterator, tensor_fields, self._max_stream_bytes)
        pool = CandidatePool(
            lengths=require(arrays["candidate_lengths"], "candidate_lengths"),
            token_ids=arrays["candidate_token_ids"],
            token_shift=arrays["token_shift"],
            target_token_ids=np.asarray(first.target_token_ids, dtype=np.int64),
            top_x=first.top_x,
            old_cls=arrays["old_cls"],
            new_cls=arrays["new_cls"],
            losses=arrays["losses"],
        )
        strategy = Strategy.from_proto(first.strategy, "strategy")
        selection = self._app.select_sentences(strategy, pool, k=first.k, alpha=_alpha(first), seed=first.seed)
        return sampling_pb2.SelectSentencesResponse(
            indices=array_to_tensor(selection.indices),
            weights=array_to_tensor(selection.weights),
            eligible_count=selection.eligible_count,
            target_token_ids=array_to_tensor(selection.target_token_ids),
        )


def _alpha(request: sampling_pb2.ComputeSamplingWeightsRequest | sampling_pb2.SelectSentencesRequest) -> float:
    return request.alpha if request.HasField("alpha") else DEFAULT_ALPHA
