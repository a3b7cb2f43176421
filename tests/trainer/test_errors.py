"""Bad input to the trainer: the right status code and a message a person can act on."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftlm.v1 import common_pb2, trainer_pb2

from ..vocab.planted import planted_base_directory, register
from .conftest import TINY_BERT, Stack, old_slice, run_request

INVALID, NOT_FOUND, FAILED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def _fails(call: object, request: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)  # type: ignore[operator]
    assert raised.value.code() == code, raised.value.details()
    return str(raised.value.details())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # (StartRun fields, exact message)
        ({"iterations": 0}, "iterations: must be in [1, 100000], got 0"),
        ({"steps_per_iteration": -1}, "steps_per_iteration: must be in [1, 10000000], got -1"),
        ({"batch_size": 0}, "batch_size: must be in [1, 65536], got 0"),
        ({"learning_rate": 0.0}, "learning_rate: must be in (0, 1], got 0.0"),
        ({"learning_rate": float("nan")}, "learning_rate: must be in (0, 1], got nan"),
        ({"replay_fraction": 1.0}, "replay_fraction: must be in [0.0, 1.0), got 1.0"),
        ({"mask_fraction": 1.5}, "mask_fraction: must be in [0.0, 1.0), got 1.5"),
        (
            {"max_length": 1000},
            "max_length: must be in [4, 64] (the model's positions; 0 means 128 or fewer), got 1000",
        ),
        ({"sampling_alpha": -0.1}, "sampling_alpha: must be in [0.0, 1.0], got -0.1"),
        (
            {"strategy": common_pb2.SAMPLING_STRATEGY_UNSPECIFIED},
            "strategy: must be one of SAMPLING_STRATEGY_UNIFORM, SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT, SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT, SAMPLING_STRATEGY_TOKEN_MLM_LOSS, got 0",
        ),
        (
            {"kind": trainer_pb2.RUN_KIND_UNSPECIFIED},
            "kind: must be RUN_KIND_MLM, RUN_KIND_DISTILL or RUN_KIND_CURATED",
        ),
        (
            {"kind": trainer_pb2.RUN_KIND_DISTILL},
            "teacher_checkpoint_ids: a distillation run needs at least one teacher",
        ),
    ],
)
def test_impossible_hyperparameters(stack: Stack, fields: dict[str, object], message: str) -> None:
    request = run_request(stack, [stack.slice_file("old", old_slice(1, 20))], **fields)
    assert _fails(stack.trainer.StartRun, request, INVALID) == message


def test_missing_things_are_not_found(stack: Stack) -> None:
    request = run_request(stack, [stack.slice_file("old", old_slice(1, 20))], base_checkpoint_id="ckpt-0000")
    assert (
        _fails(stack.trainer.StartRun, request, NOT_FOUND)
        == "checkpoint 'ckpt-0000' does not exist; CreateCheckpoint imports a model"
    )
    request = run_request(stack, [stack.slice_file("old", old_slice(1, 20))], vocab_version_id="v-0000000000000000")
    assert "vocab version 'v-0000000000000000' does not exist" in _fails(stack.trainer.StartRun, request, NOT_FOUND)
    missing = stack.store / "nope.jsonl"
    request = run_request(stack, [common_pb2.ArtifactRef(uri=str(missing))])
    assert _fails(stack.trainer.StartRun, request, NOT_FOUND) == f"slices[0].uri: nothing at {missing}"
    assert (
        _fails(stack.trainer.GetRun, trainer_pb2.GetRunRequest(run_id="run-x"), NOT_FOUND)
        == "run 'run-x' does not exist; ListRuns shows the runs there are"
    )
    assert _fails(
        stack.trainer.ScoreSlice, trainer_pb2.ScoreSliceRequest(checkpoint_id="ckpt-x"), NOT_FOUND
    ).startswith("checkpoint 'ckpt-x'")
    request = run_request(stack, [])
    assert _fails(stack.trainer.StartRun, request, INVALID) == "slices: name at least one corpus file to train on"


def test_a_vocab_version_not_derived_from_the_checkpoints_is_a_failed_precondition(
    stack: Stack, tmp_path: Path
) -> None:
    directory = planted_base_directory(tmp_path / "other")
    (directory / "vocab.txt").write_text((directory / "vocab.txt").read_text() + "extraword\n")
    other = register(stack.vocab, directory)
    request = run_request(stack, [stack.slice_file("old", old_slice(1, 20))], vocab_version_id=other.version_id)
    assert _fails(stack.trainer.StartRun, request, FAILED) == (
        f"vocab version {other.version_id} does not descend from {stack.base_version.version_id}, the checkpoint's version; "
        "train on a version derived from it"
    )
    mismatched = trainer_pb2.CreateCheckpointRequest(model_config_json=TINY_BERT, vocab_version_id=other.version_id)
    checkpoint = stack.trainer.CreateCheckpoint(mismatched).checkpoint  # a fresh model takes the version's size
    assert checkpoint.vocab_version_id == other.version_id
    from ..vocab.test_updates import MINILM

    wrong_size = trainer_pb2.CreateCheckpointRequest(
        model_dir=common_pb2.ArtifactRef(uri=str(MINILM)), vocab_version_id=other.version_id
    )
    assert _fails(stack.trainer.CreateCheckpoint, wrong_size, FAILED) == (
        f"the model has 30522 embedding rows but vocab version {other.version_id} has {other.size} pieces; "
        "import it with the vocab version it was trained with"
    )


def test_a_batch_that_cannot_fit_is_resource_exhausted(stack: Stack) -> None:
    from ..vocab.test_updates import MINILM

    version = register(stack.vocab, MINILM)
    minilm = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_dir=common_pb2.ArtifactRef(uri=str(MINILM)), vocab_version_id=version.version_id
        )
    ).checkpoint
    request = run_request(
        stack,
        [stack.slice_file("old", old_slice(1, 20))],
        base_checkpoint_id=minilm.checkpoint_id,
        batch_size=65_536,
        max_length=512,
    )
    message = _fails(stack.trainer.StartRun, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert message.startswith("a batch of 65536 x 512 pieces needs about") and message.endswith(
        "lower batch_size or max_length"
    )
    assert stack.trainer.ListRuns(trainer_pb2.ListRunsRequest()).runs == []  # nothing was queued


def test_create_checkpoint_bad_input(stack: Stack) -> None:
    no_source = trainer_pb2.CreateCheckpointRequest(vocab_version_id=stack.base_version.version_id)
    assert (
        _fails(stack.trainer.CreateCheckpoint, no_source, INVALID)
        == "source: set model_dir, hub_id or model_config_json"
    )
    no_version = trainer_pb2.CreateCheckpointRequest(model_config_json=TINY_BERT)
    assert (
        _fails(stack.trainer.CreateCheckpoint, no_version, INVALID)
        == "vocab_version_id: name the vocab version the model's embedding rows follow"
    )
    garbage = trainer_pb2.CreateCheckpointRequest(
        model_config_json='{"model_type": "no-such-model"}', vocab_version_id=stack.base_version.version_id
    )
    assert _fails(stack.trainer.CreateCheckpoint, garbage, INVALID).startswith(
        "model_config_json: is not a transformers config"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # (ScoreSlice fields, exact message)
        ({"max_length": 2}, "max_length: must be in [4, 8192] (0 means 128), got 2"),
        ({"max_length": 65}, "max_length: must be in [4, 64] (the model's positions; 0 means 128 or fewer), got 65"),
        ({"max_texts": -1}, "max_texts: must be in [1, 1000000] (0 means 2000), got -1"),
        ({"spike_z": float("inf")}, "spike_z: must be in [0, inf) (0 means Benjamini-Hochberg), got inf"),
        ({"spike_z": -1.0}, "spike_z: must be in [0, inf) (0 means Benjamini-Hochberg), got -1.0"),
        ({"false_fire_rate": 0.5}, "false_fire_rate: must be in (0, 0.5) (0 means 0.01), got 0.5"),
        ({"false_fire_rate": float("nan")}, "false_fire_rate: must be in (0, 0.5) (0 means 0.01), got nan"),
        ({"min_effect": -0.1}, "min_effect: must be in [0, inf) (0 means 0.05), got -0.1"),
        ({"min_token_count": 1}, "min_token_count: must be in [2, 1000000] (0 means 5), got 1"),
        ({"min_token_effect": -0.5}, "min_token_effect: must be in [0, inf) (0 means 0.5), got -0.5"),
        ({"min_word_texts": -3}, "min_word_texts: must be in [1, 1000000] (0 means 3), got -3"),
        ({"min_novelty_effect": 1.5}, "min_novelty_effect: must be in [0, 1] (0 means 0.005), got 1.5"),
        ({"mask_fraction": 1.0}, "mask_fraction: must be in (0, 1) (0 means 0.15), got 1.0"),
        ({"mask_fraction": -0.5}, "mask_fraction: must be in (0, 1) (0 means 0.15), got -0.5"),
        ({"top_spikes": 10_001}, "top_spikes: must be in [1, 10000] (0 means 20), got 10001"),
        ({"texts": ["", "  "]}, "corpus: holds no text to score (every text is empty or blank)"),
    ],
)
def test_score_slice_bad_options(stack: Stack, fields: dict[str, object], message: str) -> None:
    texts = fields.pop("texts", ["the of and"])
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts))  # type: ignore[arg-type]
    request = trainer_pb2.ScoreSliceRequest(
        checkpoint_id=stack.base_checkpoint.checkpoint_id,
        corpus=corpus,
        **fields,  # type: ignore[arg-type]
    )
    assert _fails(stack.trainer.ScoreSlice, request, INVALID) == message


def test_run_lookups_bad_input(stack: Stack) -> None:
    assert _fails(
        stack.trainer.ListSelections, trainer_pb2.ListSelectionsRequest(run_id="run-x"), NOT_FOUND
    ).startswith("run 'run-x' does not exist")
    assert _fails(stack.trainer.CancelRun, trainer_pb2.CancelRunRequest(run_id="run-x"), NOT_FOUND).startswith(
        "run 'run-x' does not exist"
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(stack.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id="run-x")))
    assert raised.value.code() == NOT_FOUND
    assert (
        _fails(stack.trainer.ListRuns, trainer_pb2.ListRunsRequest(page_token="x"), INVALID)
        == "page_token: is not a token this service returned"
    )
    assert (
        _fails(stack.trainer.ListRuns, trainer_pb2.ListRunsRequest(page_size=5000), INVALID)
        == "page_size: must be in [1, 1000] (0 means 100), got 5000"
    )


_ALLOWED = {grpc.StatusCode.OK, INVALID, NOT_FOUND, FAILED}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    run_id=st.text(max_size=300),
    page_size=st.integers(-(2**31), 2**31 - 1),
    page_token=st.text(max_size=40),
    max_texts=st.integers(-(2**31), 2**31 - 1),
    max_length=st.integers(-(2**31), 2**31 - 1),
    spike_z=st.floats(allow_nan=True, allow_infinity=True),
    false_fire_rate=st.floats(allow_nan=True, allow_infinity=True),
    mask_fraction=st.floats(allow_nan=True, allow_infinity=True),
    top_spikes=st.integers(-(2**31), 2**31 - 1),
    texts=st.lists(st.text(max_size=50), max_size=5),
)
def test_fuzzed_selections_and_trigger_requests_get_a_status_and_the_server_lives(
    stack: Stack,
    run_id: str,
    page_size: int,
    page_token: str,
    max_texts: int,
    max_length: int,
    spike_z: float,
    false_fire_rate: float,
    mask_fraction: float,
    top_spikes: int,
    texts: list[str],
) -> None:
    calls = [
        (
            stack.trainer.ListSelections,
            trainer_pb2.ListSelectionsRequest(run_id=run_id, page_size=page_size, page_token=page_token),
        ),
        (
            stack.trainer.ScoreSlice,
            trainer_pb2.ScoreSliceRequest(
                checkpoint_id=stack.base_checkpoint.checkpoint_id,
                corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts)),
                max_texts=max_texts,
                max_length=max_length,
                spike_z=spike_z,
                false_fire_rate=false_fire_rate,
                mask_fraction=mask_fraction,
                top_spikes=top_spikes,
            ),
        ),
    ]
    calls.append(
        (
            stack.trainer.ComputeEmbeddings,
            trainer_pb2.ComputeEmbeddingsRequest(
                checkpoint_id=run_id or stack.base_checkpoint.checkpoint_id, texts=texts, max_length=max_length
            ),
        )
    )
    for call, request in calls:
        try:
            call(request, timeout=60)
        except grpc.RpcError as error:
            assert error.code() in _ALLOWED, (error.code(), error.details())
    with grpc.insecure_channel(stack.trainer_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
