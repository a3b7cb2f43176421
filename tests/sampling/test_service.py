"""SamplingService through a real server on 127.0.0.1 and real clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from scipy import stats

from driftlm import kernels
from driftlm.services.core.candidates import CandidatePool
from driftlm.services.core.strategy import Strategy
from driftlm.services.core.strategy import names as strategy_names
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.services.sampling.client import SamplingClient
from driftlm.services.sampling.server import create_server
from driftlm.v1 import common_pb2, sampling_pb2, sampling_pb2_grpc

T = array_to_tensor
Stub = sampling_pb2_grpc.SamplingServiceStub


def test_cosine_distance_matches_the_kernel_and_chunking_changes_nothing(sampling_target: str) -> None:
    rng = np.random.default_rng(0)
    old = rng.standard_normal((3000, 64), dtype=np.float32)
    new = old + rng.standard_normal((3000, 64), dtype=np.float32) * np.linspace(0, 1, 3000, dtype=np.float32)[:, None]
    with SamplingClient(sampling_target, chunk_bytes=10_000) as chunked, SamplingClient(sampling_target) as whole:
        distances, top = chunked.cosine_distance(old, new, top_k=5)
        np.testing.assert_array_equal(distances, whole.cosine_distance(old, new)[0])
    np.testing.assert_array_equal(distances, kernels.cosine_distance_rows(old, new))
    assert top.tolist() == kernels.top_k_largest(distances, 5).tolist()
    assert top.min() > 2500  # the last rows moved most


def test_sampling_weights(sampling_client: SamplingClient) -> None:
    weights = sampling_client.sampling_weights(np.array([0.5, 0.0, 1.0]), np.array([10, 20, 0]), alpha=0.25)
    np.testing.assert_allclose(weights, [0.25 * 0.5 + 0.75 * 0.5, 0.75, 0.25])


def test_unset_alpha_means_one_half(sampling_stub: Stub) -> None:
    request = sampling_pb2.ComputeSamplingWeightsRequest(scores=T(np.array([1.0])), lengths=T(np.array([4])))
    response = sampling_stub.ComputeSamplingWeights(iter([request]))
    assert np.frombuffer(response.weights.data, "<f8").tolist() == [1.0]


@pytest.mark.parametrize("replace", [False, True])
def test_draw_over_grpc_equals_the_in_process_draw(sampling_client: SamplingClient, replace: bool) -> None:
    weights = np.random.default_rng(1).random(300_000)
    weights[::3] = 0.0
    drawn = sampling_client.draw(weights, k=20_000, replace=replace, seed=42)
    kernel = kernels.draw_with_replacement if replace else kernels.draw_without_replacement
    np.testing.assert_array_equal(drawn, kernel(weights, 20_000, 42))
    assert (weights[drawn] > 0).all()


def _planted_pool(rng: np.random.Generator, n: int = 4000, vocab: int = 500) -> dict[str, Any]:
    """A pool where the candidates of `carriers` hold the only occurrences of tokens 0..4."""
    lengths = rng.integers(3, 30, n)
    token_ids = rng.integers(5, vocab, int(lengths.sum()))
    carriers = np.sort(rng.choice(n, 300, replace=False))
    starts = np.concatenate(([0], np.cumsum(lengths)))[:-1]
    token_ids[starts[carriers]] = rng.integers(0, 5, carriers.size)
    shift = rng.random(vocab) * 0.1
    shift[:5] = 0.8 + rng.random(5) * 0.1
    return {"lengths": lengths, "token_ids": token_ids, "carriers": carriers, "shift": shift.astype(np.float32)}


def test_token_embedding_shift_picks_only_sentences_with_the_most_shifted_tokens(
    sampling_client: SamplingClient,
) -> None:
    pool = _planted_pool(np.random.default_rng(2))
    chosen = sampling_client.select_sentences(
        Strategy.TOKEN_EMBEDDING_SHIFT,
        CandidatePool(lengths=pool["lengths"], token_ids=pool["token_ids"], token_shift=pool["shift"], top_x=5),
        k=200,
        alpha=0.8,
        seed=1,
    )
    assert sorted(chosen.target_token_ids.tolist()) == [0, 1, 2, 3, 4]
    assert chosen.eligible_count == 300
    assert set(chosen.indices.tolist()) <= set(pool["carriers"].tolist()) and chosen.indices.size == 200
    assert np.count_nonzero(chosen.weights) == 300


def test_token_embedding_shift_with_explicit_targets_and_fewer_eligible_than_k(sampling_client: SamplingClient) -> None:
    pool = _planted_pool(np.random.default_rng(3))
    chosen = sampling_client.select_sentences(
        Strategy.TOKEN_EMBEDDING_SHIFT,
        CandidatePool(lengths=pool["lengths"], token_ids=pool["token_ids"], target_token_ids=np.array([0, 1, 2, 3, 4])),
        k=1000,
        seed=1,
    )
    assert chosen.eligible_count == 300 and sorted(chosen.indices.tolist()) == pool["carriers"].tolist()


def test_sentence_embedding_shift_prefers_moved_sentences(sampling_client: SamplingClient) -> None:
    rng = np.random.default_rng(4)
    old = rng.standard_normal((2000, 32), dtype=np.float32)
    new = old.copy()
    moved = np.arange(0, 2000, 20)
    new[moved] = rng.standard_normal((moved.size, 32), dtype=np.float32)
    chosen = sampling_client.select_sentences(
        Strategy.SENTENCE_EMBEDDING_SHIFT,
        CandidatePool(lengths=np.full(2000, 10), old_cls=old, new_cls=new),
        k=100,
        alpha=1.0,
        seed=3,
    )
    assert chosen.eligible_count == moved.size and sorted(chosen.indices.tolist()) == moved.tolist()


def test_mlm_loss_prefers_high_loss_sentences(sampling_client: SamplingClient) -> None:
    losses = np.full(5000, 0.01, dtype=np.float32)
    losses[:50] = 8.0
    chosen = sampling_client.select_sentences(
        Strategy.TOKEN_MLM_LOSS, CandidatePool(lengths=np.ones(5000, np.int64), losses=losses), k=50, alpha=1.0, seed=0
    )
    assert np.mean(chosen.indices < 50) > 0.5  # 50 of 5000 hold 89% of the weight


def test_uniform_selects_k_distinct_candidates(sampling_client: SamplingClient) -> None:
    chosen = sampling_client.select_sentences(
        Strategy.UNIFORM, CandidatePool(lengths=np.zeros(1000, np.int32)), k=500, seed=7
    )
    assert np.unique(chosen.indices).size == 500 and chosen.eligible_count == 1000


def test_one_strategy_enum_maps_every_wire_value_and_every_name() -> None:
    wire = [v for v in common_pb2.SamplingStrategy.values() if v != common_pb2.SAMPLING_STRATEGY_UNSPECIFIED]
    assert sorted(s.proto for s in Strategy) == sorted(wire)
    for strategy in Strategy:
        assert Strategy.from_proto(strategy.proto, "strategy") is strategy
        assert Strategy.from_name(strategy.short_name) is strategy is Strategy.from_name(strategy.value)
    assert strategy_names() == [
        "uniform",
        "token-shift",
        "sentence-shift",
        "mlm-loss",
        "token-embedding-shift",
        "sentence-embedding-shift",
        "token-mlm-loss",
    ]
    with pytest.raises(ValueError, match="unknown strategy 'random'; use one of uniform, token-shift"):
        Strategy.from_name("random")


# Bad input: (rpc, requests, status code, exact details). Each is sent on the same server.
F64 = np.float64
BAD_INPUT: list[tuple[str, list[Any], grpc.StatusCode, str]] = [
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.array([1.0, np.nan])), k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights: 1 weights are negative, NaN or infinite; weights must be finite and >= 0",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.array([np.inf, 1.0])), k=1, replace=True)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights: 1 weights are negative, NaN or infinite; weights must be finite and >= 0",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.array([-1.0, 1.0])), k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights: 1 weights are negative, NaN or infinite; weights must be finite and >= 0",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.zeros(4)), k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights: all weights are zero: there is nothing to draw",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.zeros(0)), k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights: weights are empty: there is nothing to draw from",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights: is required by this call",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.ones(3)), k=0)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "k: must be in [1, 134217728], got 0",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.ones(3)), k=-5)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "k: must be in [1, 134217728], got -5",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.array([1.0, 0.0, 1.0])), k=3)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "k: k=3 exceeds the 2 items of positive weight; without replacement k can be at most 2",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=T(np.ones(3, np.int64)), k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights: must be an (n,) float32 or float64 vector, got int64 [3]",
    ),
    (
        "DrawSample",
        [
            sampling_pb2.DrawSampleRequest(
                weights=common_pb2.Tensor(dtype=common_pb2.D_TYPE_FLOAT64, shape=[3], data=b"\0" * 8), k=1
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights.data: has 8 bytes but shape [3] of D_TYPE_FLOAT64 needs 24",
    ),
    (
        "DrawSample",
        [sampling_pb2.DrawSampleRequest(weights=common_pb2.Tensor(shape=[1], data=b"\0" * 8), k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights.dtype: must be one of D_TYPE_FLOAT32, D_TYPE_FLOAT64, D_TYPE_INT32, D_TYPE_INT64, D_TYPE_FLOAT16, D_TYPE_UINT8, got 0",
    ),
    ("DrawSample", [], grpc.StatusCode.INVALID_ARGUMENT, "request: the request stream carried no messages"),
    (
        "ComputeCosineDistance",
        [
            sampling_pb2.ComputeCosineDistanceRequest(
                old_rows=T(np.ones((2, 3), np.float32)), new_rows=T(np.ones((3, 3), np.float32))
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "new_rows: is float32 [3, 3] but old_rows is float32 [2, 3]; they must have the same dtype and shape",
    ),
    (
        "ComputeCosineDistance",
        [
            sampling_pb2.ComputeCosineDistanceRequest(
                old_rows=T(np.ones((2, 3), np.float32)), new_rows=T(np.ones((2, 3), F64))
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "new_rows: is float64 [2, 3] but old_rows is float32 [2, 3]; they must have the same dtype and shape",
    ),
    (
        "ComputeCosineDistance",
        [sampling_pb2.ComputeCosineDistanceRequest(old_rows=T(np.array([[1.0, np.nan]])), new_rows=T(np.ones((1, 2))))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "old_rows: has 1 NaN or infinite values; all values must be finite",
    ),
    (
        "ComputeCosineDistance",
        [sampling_pb2.ComputeCosineDistanceRequest(old_rows=T(np.ones((0, 3))), new_rows=T(np.ones((0, 3))))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "old_rows: is empty; send at least one element",
    ),
    (
        "ComputeCosineDistance",
        [sampling_pb2.ComputeCosineDistanceRequest(old_rows=T(np.ones(3)), new_rows=T(np.ones(3)))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "old_rows: must be an (n, d) float32 or float64 matrix, got float64 [3]",
    ),
    (
        "ComputeCosineDistance",
        [sampling_pb2.ComputeCosineDistanceRequest(old_rows=T(np.ones((2, 3))), new_rows=T(np.ones((2, 3))), top_k=3)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k: must be in [0, 2] (the number of rows), got 3",
    ),
    (
        "ComputeSamplingWeights",
        [sampling_pb2.ComputeSamplingWeightsRequest(scores=T(np.ones(2)), lengths=T(np.ones(2)), alpha=1.5)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "alpha: must be in [0, 1], got 1.5",
    ),
    (
        "ComputeSamplingWeights",
        [sampling_pb2.ComputeSamplingWeightsRequest(scores=T(np.ones(2)), lengths=T(np.ones(2)), alpha=float("nan"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "alpha: must be in [0, 1], got nan",
    ),
    (
        "ComputeSamplingWeights",
        [sampling_pb2.ComputeSamplingWeightsRequest(scores=T(np.ones(2)), lengths=T(np.ones(3)))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "lengths: has 3 rows but scores has 2; they must match",
    ),
    (
        "ComputeSamplingWeights",
        [sampling_pb2.ComputeSamplingWeightsRequest(scores=T(np.ones(2)), lengths=T(np.array([1, -2])))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "lengths: has negative values (smallest -2); all values must be >= 0",
    ),
    (
        "SelectSentences",
        [sampling_pb2.SelectSentencesRequest(k=1, candidate_lengths=T(np.ones(3, np.int64)))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "strategy: must be one of SAMPLING_STRATEGY_UNIFORM, SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT, "
        "SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT, SAMPLING_STRATEGY_TOKEN_MLM_LOSS, got 0",
    ),
    (
        "SelectSentences",
        [sampling_pb2.SelectSentencesRequest(strategy=99, k=1, candidate_lengths=T(np.ones(3, np.int64)))],  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "strategy: is 99, which SamplingStrategy does not define; give one of SAMPLING_STRATEGY_UNIFORM, "
        "SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT, SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT, SAMPLING_STRATEGY_TOKEN_MLM_LOSS",
    ),
    (
        "SelectSentences",
        [sampling_pb2.SelectSentencesRequest(strategy=common_pb2.SAMPLING_STRATEGY_UNIFORM, k=1)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidate_lengths: is required by this call",
    ),
    (
        "SelectSentences",
        [
            sampling_pb2.SelectSentencesRequest(
                strategy=common_pb2.SAMPLING_STRATEGY_UNIFORM, k=1, candidate_lengths=T(np.ones(3))
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidate_lengths: must be an (n,) int32 or int64 vector, got float64 [3]",
    ),
    (
        "SelectSentences",
        [
            sampling_pb2.SelectSentencesRequest(
                strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
                k=1,
                candidate_lengths=T(np.ones(3, np.int64)),
                token_shift=T(np.ones(4, np.float32)),
                top_x=1,
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidate_token_ids: is required by the token embedding shift strategy",
    ),
    (
        "SelectSentences",
        [
            sampling_pb2.SelectSentencesRequest(
                strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
                k=1,
                candidate_lengths=T(np.ones(3, np.int64)),
                candidate_token_ids=T(np.zeros(3, np.int64)),
                token_shift=T(np.ones(4, np.float32)),
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_x: must be in [1, 4] (the vocabulary size), got 0",
    ),
    (
        "SelectSentences",
        [
            sampling_pb2.SelectSentencesRequest(
                strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
                k=1,
                candidate_lengths=T(np.ones(3, np.int64)),
                candidate_token_ids=T(np.array([0, 1, 9])),
                token_shift=T(np.ones(4, np.float32)),
                top_x=2,
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidate_token_ids: token ids must lie in [0, 4), the vocabulary size; got ids from 0 to 9",
    ),
    (
        "SelectSentences",
        [
            sampling_pb2.SelectSentencesRequest(
                strategy=common_pb2.SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT,
                k=1,
                candidate_lengths=T(np.ones(3, np.int64)),
                new_cls=T(np.ones((3, 2), np.float32)),
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "old_cls: is required by the sentence embedding shift strategy",
    ),
    (
        "SelectSentences",
        [
            sampling_pb2.SelectSentencesRequest(
                strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS,
                k=1,
                candidate_lengths=T(np.ones(3, np.int64)),
                losses=T(np.array([1.0, -1.0, 0.0], np.float32)),
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "losses: has negative values (smallest -1.0); all values must be >= 0",
    ),
]


@pytest.mark.parametrize(
    ("rpc", "requests", "code", "details"), BAD_INPUT, ids=[f"{i}-{case[0]}" for i, case in enumerate(BAD_INPUT)]
)
def test_bad_input_is_rejected_and_the_server_keeps_serving(
    sampling_stub: Stub,
    sampling_client: SamplingClient,
    rpc: str,
    requests: list[Any],
    code: grpc.StatusCode,
    details: str,
) -> None:
    call: Callable[..., Any] = getattr(sampling_stub, rpc)
    with pytest.raises(grpc.RpcError) as raised:
        call(iter(requests))
    assert raised.value.code() == code
    assert raised.value.details() == details
    assert sampling_client.draw(np.ones(3), k=1, seed=0).shape == (1,)


def test_invalid_argument_carries_bad_request_and_error_info(sampling_stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        sampling_stub.DrawSample(iter([sampling_pb2.DrawSampleRequest(weights=T(np.ones(3)), k=0)]))
    status = rpc_status.from_call(raised.value)
    assert status is not None
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(bad_request)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "driftlm.v1")
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("k", "must be in [1, 134217728], got 0")
    ]


def test_a_stream_over_the_server_limit_is_resource_exhausted() -> None:
    server, port = create_server("127.0.0.1:0", ServeConfig(max_stream_bytes=1000))
    try:
        with SamplingClient(f"127.0.0.1:{port}", chunk_bytes=400) as client, pytest.raises(grpc.RpcError) as raised:
            client.draw(np.ones(500), k=1)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert raised.value.details() == (
            "the request stream carries more than 1000 bytes of tensors, the server's limit (--max-stream-mb); send less data per call"
        )
    finally:
        server.stop(grace=None)


def test_health_reports_serving(sampling_target: str) -> None:
    with grpc.insecure_channel(sampling_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "driftlm.v1.SamplingService"):
            assert (
                stub.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        with pytest.raises(grpc.RpcError) as raised:
            stub.Check(health_pb2.HealthCheckRequest(service="driftlm.v1.NoSuchService"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_service(sampling_target: str) -> None:
    with grpc.insecure_channel(sampling_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name for response in responses for service in response.list_services_response.service}
    assert {"driftlm.v1.SamplingService", "grpc.health.v1.Health"} <= names


def test_shift_and_length_weigh_as_alpha_says_however_small_the_shifts(sampling_client: SamplingClient) -> None:
    """[CLS] shifts of about 0.03 against lengths up to 100: both terms are ranks among the
    candidates, so alpha is each term's share of the weight: at 0.5 the weights follow shift and
    length alike, at 0.8 mostly the shift (unscaled, the draw would follow length alone). The
    shift is ranked among sentences of similar length, so a shift that grows with length does
    not bring length in through the back door."""
    rng = np.random.default_rng(4)
    old = rng.normal(size=(500, 16))
    lengths = rng.integers(1, 101, 500)
    # Longer sentences move more here: the shift carries length, as a [CLS] shift can.
    new = old + rng.normal(scale=0.08, size=(500, 16)) * (rng.uniform(0, 1, (500, 1)) + lengths[:, None] / 100)
    distances = kernels.cosine_distance_rows(old, new).astype(np.float64)
    assert distances.max() < 0.1 and stats.spearmanr(distances, lengths).statistic > 0.5

    def weights(alpha: float) -> np.ndarray:
        return sampling_client.select_sentences(
            Strategy.SENTENCE_EMBEDDING_SHIFT,
            CandidatePool(lengths=lengths, old_cls=old, new_cls=new),
            k=10,
            alpha=alpha,
            seed=1,
        ).weights

    half, mostly_shift = weights(0.5), weights(0.8)
    assert stats.spearmanr(half, lengths).statistic == pytest.approx(0.707, abs=0.08)
    assert stats.spearmanr(mostly_shift, lengths).statistic == pytest.approx(0.243, abs=0.08)
    shift_only = weights(1.0)
    assert shift_only.max() == 1.0 and shift_only[np.argmax(distances)] == 1.0
    assert shift_only.min() == 0.0  # the least moved sentence of each length stratum


def test_no_shift_means_no_preference(sampling_client: SamplingClient) -> None:
    """The null: [CLS] embeddings that did not move. With alpha 1 no candidate is preferred (none
    eligible: the trainer then draws uniformly); with alpha 0.5 only length weighs."""
    rng = np.random.default_rng(5)
    cls = rng.normal(size=(200, 16))
    lengths = rng.integers(1, 50, 200)
    shift_only = sampling_client.select_sentences(
        Strategy.SENTENCE_EMBEDDING_SHIFT,
        CandidatePool(lengths=lengths, old_cls=cls, new_cls=cls.copy()),
        k=10,
        alpha=1.0,
    )
    assert shift_only.eligible_count == 0 and shift_only.indices.size == 0 and not shift_only.weights.any()
    half = sampling_client.select_sentences(
        Strategy.SENTENCE_EMBEDDING_SHIFT,
        CandidatePool(lengths=lengths, old_cls=cls, new_cls=cls.copy()),
        k=10,
        alpha=0.5,
    )
    np.testing.assert_allclose(
        half.weights, (0.5 * kernels.fractional_ranks(lengths, inclusive=True)) ** kernels.SHARPNESS, rtol=1e-9
    )


def test_a_score_that_carries_no_signal_draws_the_marked_sentences_at_the_pools_rate(
    sampling_client: SamplingClient,
) -> None:
    """The strategies' null and power, over 40 draws each: a fifth of the pool is marked; with
    losses that are noise, the draws hold marked sentences at the pool's rate (within binomial
    bounds); with losses higher on the marked sentences, at well above it."""
    rng = np.random.default_rng(6)
    size, k = 2000, 250
    marked = rng.random(size) < 0.2
    lengths = rng.integers(3, 60, size)

    def marked_share(losses: np.ndarray, seed: int) -> float:
        chosen = sampling_client.select_sentences(
            Strategy.TOKEN_MLM_LOSS, CandidatePool(lengths=lengths, losses=losses), k=k, alpha=0.75, seed=seed
        )
        return float(marked[chosen.indices].mean())

    noise = [marked_share(rng.gamma(2.0, 2.0, size), seed) for seed in range(40)]
    signal = [marked_share(rng.gamma(2.0, 2.0, size) + 2.0 * marked, seed) for seed in range(40)]
    rate, spread = marked.mean(), np.sqrt(marked.mean() * (1 - marked.mean()) / (k * 40))
    assert abs(np.mean(noise) - rate) < 4 * spread
    assert np.mean(signal) > 1.4 * rate  # measured: 1.55 (1.25 in proportion to the ranks themselves)
