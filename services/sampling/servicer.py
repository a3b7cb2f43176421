"""SamplingService over gRPC: read the request stream, call the domain, build the response."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np

from driftlm.services.runtime.errors import ResourceExhaustedError
from driftlm.services.runtime.limits import RequestLimits
from driftlm.services.runtime.strategy import Strategy
from driftlm.services.runtime.tensors import array_to_tensor, collect_stream
from driftlm.v1 import sampling_pb2, sampling_pb2_grpc

from .inputs import require
from .measures import draw_indices, measure_shift, weigh
from .selection import CandidatePool, select_sentences

# Used when a request leaves alpha unset.
DEFAULT_ALPHA = 0.5


class SamplingServicer(sampling_pb2_grpc.SamplingServiceServicer):
    """Stateless: every call carries all it needs."""

    def __init__(self, limits: RequestLimits) -> None:
        self._max_stream_bytes = limits.max_stream_bytes
        # Indices (int64) one answer can carry.
        self._max_indices = limits.max_message_bytes // 8 - 1024

    def ComputeCosineDistance(
        self, request_iterator: Iterator[sampling_pb2.ComputeCosineDistanceRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.ComputeCosineDistanceResponse:
        first, arrays = collect_stream(request_iterator, ("old_rows", "new_rows"), self._max_stream_bytes)
        distances, top = measure_shift(
            require(arrays["old_rows"], "old_rows"), require(arrays["new_rows"], "new_rows"), first.top_k
        )
        return sampling_pb2.ComputeCosineDistanceResponse(
            distances=array_to_tensor(distances), top_indices=array_to_tensor(top)
        )

    def ComputeSamplingWeights(
        self, request_iterator: Iterator[sampling_pb2.ComputeSamplingWeightsRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.ComputeSamplingWeightsResponse:
        first, arrays = collect_stream(request_iterator, ("scores", "lengths"), self._max_stream_bytes)
        alpha = first.alpha if first.HasField("alpha") else DEFAULT_ALPHA
        weights = weigh(require(arrays["scores"], "scores"), require(arrays["lengths"], "lengths"), alpha)
        return sampling_pb2.ComputeSamplingWeightsResponse(weights=array_to_tensor(weights))

    def DrawSample(
        self, request_iterator: Iterator[sampling_pb2.DrawSampleRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.DrawSampleResponse:
        first, arrays = collect_stream(request_iterator, ("weights",), self._max_stream_bytes)
        _check_answer_size(first.k, self._max_indices)
        indices = draw_indices(require(arrays["weights"], "weights"), first.k, replace=first.replace, seed=first.seed)
        return sampling_pb2.DrawSampleResponse(indices=array_to_tensor(indices))

    def SelectSentences(
        self, request_iterator: Iterator[sampling_pb2.SelectSentencesRequest], context: grpc.ServicerContext
    ) -> sampling_pb2.SelectSentencesResponse:
        tensor_fields = ("candidate_lengths", "candidate_token_ids", "token_shift", "old_cls", "new_cls", "losses")
        first, arrays = collect_stream(request_iterator, tensor_fields, self._max_stream_bytes)
        strategy = Strategy.from_proto(first.strategy, "strategy")
        pool = CandidatePool(
            lengths=require(arrays["candidate_lengths"], "candidate_lengths"),
            token_ids=arrays["candidate_token_ids"],
            token_shift=arrays["token_shift"],
            target_token_ids=np.asarray(first.target_token_ids, dtype=np.int64),
            old_cls=arrays["old_cls"],
            new_cls=arrays["new_cls"],
            losses=arrays["losses"],
        )
        _check_answer_size(first.k, self._max_indices)
        selection = select_sentences(
            strategy,
            pool,
            k=first.k,
            alpha=first.alpha if first.HasField("alpha") else DEFAULT_ALPHA,
            seed=first.seed,
            top_x=first.top_x,
        )
        return sampling_pb2.SelectSentencesResponse(
            indices=array_to_tensor(selection.indices),
            weights=array_to_tensor(selection.weights),
            eligible_count=selection.eligible_count,
            target_token_ids=array_to_tensor(selection.target_token_ids),
        )


def _check_answer_size(k: int, max_indices: int) -> None:
    """k indices must fit one answer; checked before any is drawn (k=2**26 of one weight took 2 GB)."""
    if k > max_indices:
        raise ResourceExhaustedError(
            f"k={k:,} indices do not fit one answer: at most {max_indices:,} (--max-message-mb); draw in parts",
            reason="ANSWER_TOO_LARGE",
        )
