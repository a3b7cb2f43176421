"""A hypothesis fuzz of every RPC of vocab, sampling, trainer, inference (both contracts) and compare, over real servers on 127.0.0.1.

Each request is well-formed protobuf with hostile values (hostile.py). Whatever it holds, the
answer must be a status a client can act on (never INTERNAL or UNKNOWN: those are our bugs), come
within the deadline, and leave the server alive and SERVING.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftlm.services.compare.server import create_server as create_compare_server
from driftlm.services.inference.server import create_server as create_inference_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.services.sampling.server import create_server as create_sampling_server
from driftlm.services.trainer.export import export_onnx
from driftlm.services.trainer.server import create_server as create_trainer_server
from driftlm.services.vocab.server import create_server as create_vocab_server
from driftlm.services.vocab.tokenizer_sources import load_tokenizer_directory
from driftlm.v1 import (
    common_pb2,
    compare_pb2,
    grpc_predict_v2_pb2,
    grpc_predict_v2_pb2_grpc,
    inference_pb2,
    sampling_pb2,
    sampling_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
    vocab_pb2,
    vocab_pb2_grpc,
)

from ..inference.conftest import ANSWERS, MODEL, train_planted
from ..trainer.conftest import TINY_BERT
from ..vocab.planted import EMERGING, observe, planted_base_directory, planted_slice, register
from .hostile import message

# Generous for the slowest legitimate call on 2 cores; a hang runs into it and fails the test.
CALL_TIMEOUT_S = 30.0
EXAMPLES = 80


@dataclass
class Services:
    channels: dict[str, grpc.Channel]
    known_ids: dict[str, list[str]]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("fuzz")
    store = root / "store"
    config = ServeConfig(store=store, max_message_bytes=8 << 20, max_stream_bytes=16 << 20, queue_timeout_s=5)
    vocab_server, vocab_port = create_vocab_server("127.0.0.1:0", config)
    sampling_server, sampling_port = create_sampling_server("127.0.0.1:0", config)
    trainer_server, trainer_port = create_trainer_server(
        "127.0.0.1:0",
        ServeConfig(
            store=store,
            vocab_endpoint=f"127.0.0.1:{vocab_port}",
            sampling_endpoint=f"127.0.0.1:{sampling_port}",
            max_message_bytes=8 << 20,
            queue_timeout_s=5,
        ),
    )
    tokenizer_json = load_tokenizer_directory(planted_base_directory(root / "inference-tokenizer"))
    repository = root / "models"
    export_onnx(train_planted(tokenizer_json, ANSWERS[1], seed=1), tokenizer_json, repository, MODEL)
    inference_server, inference_port = create_inference_server(
        "127.0.0.1:0",
        ServeConfig(store=store, model_repository=repository, max_message_bytes=8 << 20, queue_timeout_s=5),
    )
    compare_server, compare_port = create_compare_server(
        "127.0.0.1:0",
        ServeConfig(
            store=store,
            inference_endpoint=f"127.0.0.1:{inference_port}",
            max_message_bytes=8 << 20,
            queue_timeout_s=5,
        ),
    )
    channels = {
        name: grpc.insecure_channel(f"127.0.0.1:{port}")
        for name, port in (
            ("vocab", vocab_port),
            ("sampling", sampling_port),
            ("trainer", trainer_port),
            ("inference", inference_port),
            ("compare", compare_port),
        )
    }
    try:
        vocab = vocab_pb2_grpc.VocabServiceStub(channels["vocab"])
        # The base tokenizer lives in the store: the only directory these services may read.
        base = register(vocab, planted_base_directory(store / "planted-base"))
        seen = observe(vocab, base.version_id, planted_slice(np.random.default_rng(0), EMERGING))
        proposal = vocab.ProposeUpdate(
            vocab_pb2.ProposeUpdateRequest(version_id=base.version_id, observation_ids=[seen.observation_id], k=2)
        )
        trainer = trainer_pb2_grpc.TrainerServiceStub(channels["trainer"])
        checkpoint = trainer.CreateCheckpoint(
            trainer_pb2.CreateCheckpointRequest(model_config_json=TINY_BERT, vocab_version_id=base.version_id)
        ).checkpoint
        (store / "slice.txt").write_text("a line of text\nanother line of text\n" * 20, encoding="utf-8")
        run = trainer.StartRun(
            trainer_pb2.StartRunRequest(
                kind=trainer_pb2.RUN_KIND_MLM,
                base_checkpoint_id=checkpoint.checkpoint_id,
                strategy=common_pb2.SAMPLING_STRATEGY_UNIFORM,
                slices=[common_pb2.ArtifactRef(uri="slice.txt")],
                iterations=1,
                steps_per_iteration=2,
                batch_size=4,
                learning_rate=1e-3,
                max_length=16,
            )
        ).run
        known = {
            "version": [base.version_id],
            "observation": [seen.observation_id],
            "proposal": [proposal.proposal_id],
            "checkpoint": [checkpoint.checkpoint_id],
            "run": [run.run_id],
            "uri": ["slice.txt", "planted-base", "exports/new", str(store / "slice.txt")],
            "name": [MODEL, f"{MODEL}_int8", "input_ids", "attention_mask", "logits", "cls_embedding"],
            "datatype": ["INT64", "INT32", "FP32", "BYTES"],
        }
        yield Services(channels, known)
    finally:
        for channel in channels.values():
            channel.close()
        compare_server.stop(grace=None)
        inference_server.stop(grace=None)
        trainer_server.stop(grace=None)
        sampling_server.stop(grace=None)
        vocab_server.stop(grace=None)


def _methods() -> list[tuple[str, d.MethodDescriptor]]:
    found = []
    for name, module, service in (
        ("vocab", vocab_pb2, "VocabService"),
        ("sampling", sampling_pb2, "SamplingService"),
        ("trainer", trainer_pb2, "TrainerService"),
        ("inference", inference_pb2, "InferenceService"),
        ("inference", grpc_predict_v2_pb2, "GRPCInferenceService"),
        ("compare", compare_pb2, "CompareService"),
    ):
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            found.append((name, method))
    return found


def _call(channel: grpc.Channel, method: d.MethodDescriptor, requests: list[Any]) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    codec = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": lambda b: b}
    if method.client_streaming and method.server_streaming:
        list(channel.stream_stream(path, **codec)(iter(requests), timeout=CALL_TIMEOUT_S))
    elif method.client_streaming:
        channel.stream_unary(path, **codec)(iter(requests), timeout=CALL_TIMEOUT_S)
    elif method.server_streaming:
        for _ in channel.unary_stream(path, **codec)(requests[0], timeout=CALL_TIMEOUT_S):
            pass
    else:
        channel.unary_unary(path, **codec)(requests[0], timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize(("service", "method"), _methods(), ids=lambda v: getattr(v, "name", v))
def test_no_request_crashes_or_hangs_a_service(services: Services, service: str, method: d.MethodDescriptor) -> None:
    channel = services.channels[service]
    requests = st.lists(message(method.input_type, services.known_ids), min_size=1, max_size=3)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(batch=requests)
    def fuzz(batch: list[Any]) -> None:
        try:
            _call(channel, method, batch)
        except grpc.RpcError as error:
            code = error.code()
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (code, error.details(), batch)
            assert code != grpc.StatusCode.DEADLINE_EXCEEDED, ("hung", batch)
            assert error.details(), "a refusal says why"

    fuzz()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


_HOSTILE_FLOATS = st.sampled_from([0.0, 1.0, 1e-320, 1e308, -1.0, float("nan"), float("inf"), 3e38, 1e-45])
_HOSTILE_COUNTS = st.sampled_from([0, 1, 5, 2**31 - 1, 2**62, 2**63 - 1, -1, -(2**63)])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    weights=st.lists(_HOSTILE_FLOATS, min_size=1, max_size=8),
    lengths=st.lists(_HOSTILE_COUNTS, min_size=1, max_size=5),
    token_ids=st.lists(_HOSTILE_COUNTS, max_size=8),
    k=_HOSTILE_COUNTS,
    dtype=st.sampled_from([np.float32, np.float64]),
    strategy=st.sampled_from([1, 2, 3, 4, 99]),
)
def test_well_shaped_sampling_requests_with_hostile_values(
    services: Services,
    weights: list[float],
    lengths: list[int],
    token_ids: list[int],
    k: int,
    dtype: type,
    strategy: int,
) -> None:
    """Arrays of the right shapes (so that the kernels run) holding extremes: lengths whose sum wraps
    around (once a SIGSEGV), weights near overflow or subnormal, ids past the vocabulary."""
    stub = sampling_pb2_grpc.SamplingServiceStub(services.channels["sampling"])
    with np.errstate(over="ignore"):  # 1e308 as float32 is inf: a hostile value too
        values = np.asarray(weights, dtype=dtype)
        losses = np.resize(np.asarray(weights, dtype=np.float32), len(lengths))
    as_tensor = array_to_tensor
    draws = [sampling_pb2.DrawSampleRequest(weights=as_tensor(values), k=k, replace=r) for r in (False, True)]
    n = len(lengths)
    select = sampling_pb2.SelectSentencesRequest(
        strategy=strategy,  # type: ignore[arg-type]
        k=k,
        candidate_lengths=as_tensor(np.asarray(lengths, dtype=np.int64)),
        candidate_token_ids=as_tensor(np.asarray(token_ids, dtype=np.int64)),
        token_shift=as_tensor(np.resize(values, 8)),
        old_cls=as_tensor(np.full((n, 2), values[0])),
        new_cls=as_tensor(np.full((n, 2), values[-1])),
        losses=as_tensor(losses),
        target_token_ids=[t % (2**63) for t in token_ids[:2]],
    )
    for call, request in [*((stub.DrawSample, draw) for draw in draws), (stub.SelectSentences, select)]:
        try:
            call(iter([request]), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
            assert error.code() != grpc.StatusCode.DEADLINE_EXCEEDED
    health = health_pb2_grpc.HealthStub(services.channels["sampling"]).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(("service", "method"), _methods()[::3], ids=lambda v: getattr(v, "name", v))
def test_bytes_that_are_no_message_are_invalid_argument(
    services: Services, service: str, method: d.MethodDescriptor
) -> None:
    """grpcio answers a request it cannot decode with INTERNAL; ours say INVALID_ARGUMENT."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    garbage = b"\xff\xff\xff\xff\x0f"  # a varint longer than protobuf allows
    codec = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    channel = services.channels[service]
    with pytest.raises(grpc.RpcError) as raised:
        if method.client_streaming:
            channel.stream_unary(path, **codec)(iter([garbage]), timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            list(channel.unary_stream(path, **codec)(garbage, timeout=CALL_TIMEOUT_S))
        else:
            channel.unary_unary(path, **codec)(garbage, timeout=CALL_TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "not a valid protobuf message" in raised.value.details()


def _enum_paths(descriptor: d.Descriptor, prefix: tuple[str, ...] = (), depth: int = 0) -> list[tuple[str, ...]]:
    """Every enum field reachable in a request type (nested messages up to three levels down)."""
    found: list[tuple[str, ...]] = []
    for field in descriptor.fields:
        if field.type == d.FieldDescriptor.TYPE_ENUM:
            found.append((*prefix, field.name))
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry and depth < 3:
            found += _enum_paths(field.message_type, (*prefix, field.name), depth + 1)
    return found


def _with_unknown_enum(descriptor: d.Descriptor, path: tuple[str, ...]) -> tuple[Any, str]:
    """A request whose enum at `path` holds 99, and the dotted path the refusal must name."""
    request = message_factory.GetMessageClass(descriptor)()
    target, shown = request, []
    for name in path[:-1]:
        field = target.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            target, shown = getattr(target, name).add(), [*shown, f"{name}[0]"]
        else:
            target, shown = getattr(target, name), [*shown, name]
    last = target.DESCRIPTOR.fields_by_name[path[-1]]
    if last.is_repeated:
        getattr(target, path[-1]).append(99)
        shown.append(f"{path[-1]}[0]")
    else:
        setattr(target, path[-1], 99)
        shown.append(path[-1])
    return request, ".".join(shown)


_ENUM_CASES = [(service, method, path) for service, method in _methods() for path in _enum_paths(method.input_type)]


def test_every_request_enum_is_walked() -> None:
    """The table below is not empty by accident: strategies, kinds, poolings, formats are there."""
    named = {".".join(path) for _, _, path in _ENUM_CASES}
    assert {"strategy", "kind", "pooling"} <= named and len(_ENUM_CASES) >= 10


@pytest.mark.parametrize(
    ("service", "method", "path"),
    _ENUM_CASES,
    ids=lambda v: getattr(v, "name", ".".join(v) if isinstance(v, tuple) else v),
)
def test_an_enum_value_no_enum_names_is_invalid_argument(
    services: Services, service: str, method: d.MethodDescriptor, path: tuple[str, ...]
) -> None:
    """EmbedTexts(pooling=99) once answered OK: every enum field of every request refuses numbers
    its enum does not define, naming the field, before any handler runs."""
    request, shown = _with_unknown_enum(method.input_type, path)
    with pytest.raises(grpc.RpcError) as raised:
        _call(services.channels[service], method, [request])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert shown in raised.value.details()


# Real text's awkward corners: scripts, emoji and joiners, combining marks, controls, very long
# words, blank and empty texts, duplicates.
_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60),
    st.sampled_from(["", " ", "\u200b", "the of and a", "🦜🦜🦜 #hashtag @name", "e\u0301te\u0301", "x" * 300]),
    st.lists(st.sampled_from(["the", "of", "zorblax", "日本語", "naïve", "[MASK]", "\t", "🦩"]), max_size=12).map(
        " ".join
    ),
)


def _well_shaped_requests(known: dict[str, list[str]]) -> list[tuple[str, str, Any]]:
    """(service, method, a strategy of requests that pass validation) per text RPC."""
    texts = st.lists(_TEXT, min_size=1, max_size=6)
    with_mask = st.lists(_TEXT.map(lambda t: f"{t} [MASK]"), min_size=1, max_size=4)
    target = inference_pb2.ModelTarget(name=MODEL)
    version, checkpoint = known["version"][0], known["checkpoint"][0]
    return [
        (
            "vocab",
            "TokenizeTexts",
            texts.map(lambda t: vocab_pb2.TokenizeTextsRequest(version_id=version, texts=t)),
        ),
        (
            "vocab",
            "ObserveSlice",
            texts.map(
                lambda t: vocab_pb2.ObserveSliceRequest(
                    version_id=version, corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=t))
                )
            ),
        ),
        ("inference", "FillMask", with_mask.map(lambda t: inference_pb2.FillMaskRequest(model=target, texts=t))),
        (
            "inference",
            "EmbedTexts",
            st.tuples(texts, st.sampled_from([inference_pb2.POOLING_CLS, inference_pb2.POOLING_MEAN])).map(
                lambda a: inference_pb2.EmbedTextsRequest(model=target, texts=a[0], pooling=a[1])
            ),
        ),
        (
            "inference",
            "ComputeTokenLoss",
            texts.map(lambda t: inference_pb2.ComputeTokenLossRequest(model=target, texts=t)),
        ),
        (
            "compare",
            "CompareModels",
            st.lists(_TEXT, min_size=1, max_size=4).map(
                lambda t: compare_pb2.CompareModelsRequest(
                    teachers=[compare_pb2.ModelRef(name=MODEL)],
                    student=compare_pb2.ModelRef(name=f"{MODEL}_int8"),
                    slices=[
                        compare_pb2.HeldOutSlice(
                            label="fuzz",
                            corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=[*t, "the of"])),
                        )
                    ],
                )
            ),
        ),
        (
            "trainer",
            "ScorePseudoLikelihood",
            texts.map(lambda t: trainer_pb2.ScorePseudoLikelihoodRequest(checkpoint_id=checkpoint, texts=t)),
        ),
    ]


_WELL_SHAPED = [("vocab", "TokenizeTexts"), ("vocab", "ObserveSlice"), ("inference", "FillMask")]
_WELL_SHAPED += [("inference", "EmbedTexts"), ("inference", "ComputeTokenLoss"), ("trainer", "ScorePseudoLikelihood")]
_WELL_SHAPED += [("compare", "CompareModels")]


@pytest.mark.parametrize(("service", "name"), _WELL_SHAPED)
def test_well_shaped_text_requests_get_past_validation_and_never_crash(
    services: Services, service: str, name: str
) -> None:
    """The random fuzz above is mostly refused at validation; these requests are valid in shape
    (known ids, text of every kind), so the domain code itself runs on hostile text: most answer
    OK, none INTERNAL, none hangs."""
    strategy = next(s for svc, n, s in _well_shaped_requests(services.known_ids) if (svc, n) == (service, name))
    method = next(m for svc, m in _methods() if svc == service and m.name == name)
    if service in ("inference", "compare"):  # the random fuzz above may have unloaded the models
        oip = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(services.channels["inference"])
        for model in (MODEL, f"{MODEL}_int8"):
            oip.RepositoryModelLoad(grpc_predict_v2_pb2.RepositoryModelLoadRequest(model_name=model), timeout=60)
    outcomes: list[grpc.StatusCode] = []

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=strategy)
    def fuzz(request: Any) -> None:
        try:
            _call(services.channels[service], method, [request])
            outcomes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            code = error.code()
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (code, error.details(), request)
            assert code != grpc.StatusCode.DEADLINE_EXCEEDED, ("hung", request)
            outcomes.append(code)

    fuzz()
    assert outcomes.count(grpc.StatusCode.OK) >= len(outcomes) // 2, outcomes
