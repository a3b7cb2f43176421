"""StartRun weighing its first candidates by a ScoreCandidates file (scored on a cluster, say):
the MLM-loss strategy by the file's losses, the sentence shift by the file's [CLS] before and
after; a file whose signal is flat weighs by length alone; a file that does not fit is refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftlm.v1 import common_pb2, trainer_pb2

from .conftest import TINY_BERT, Stack, new_slice, old_slice, run_request


def _other_checkpoint(stack: Stack) -> str:
    return stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=TINY_BERT, vocab_version_id=stack.base_version.version_id, seed=2
        )
    ).checkpoint.checkpoint_id


def _score(stack: Stack, slices: list[common_pb2.ArtifactRef], baseline: str = "") -> common_pb2.ArtifactRef:
    response = stack.trainer.ScoreCandidates(
        trainer_pb2.ScoreCandidatesRequest(
            checkpoint_id=stack.base_checkpoint.checkpoint_id,
            baseline_checkpoint_id=baseline,
            corpus=common_pb2.CorpusSource(shards=common_pb2.CorpusShards(files=slices)),
            max_length=32,
            seed=4,
        )
    )
    return response.scores


def _column(scores: common_pb2.ArtifactRef, name: str) -> np.ndarray:
    return np.asarray(pq.read_table(scores.uri.removeprefix("file://"), columns=[name]).column(name).to_numpy())


def _first_selection(stack: Stack, request: trainer_pb2.StartRunRequest) -> trainer_pb2.Selection:
    run = stack.run_to_end(request)
    return stack.selections(run.run_id)[0]


def _orders_alike(selection: trainer_pb2.Selection, signal: np.ndarray, lengths: np.ndarray) -> None:
    """Among candidates of one length, a higher signal never weighs less, and a lower never more."""
    candidates = np.asarray(selection.candidate_indices)
    weights = np.asarray(selection.candidate_weights)
    compared = 0
    for length in np.unique(lengths[candidates]):
        same = candidates[lengths[candidates] == length]
        chosen = weights[lengths[candidates] == length]
        for i in range(len(same)):
            for j in range(len(same)):
                if signal[same[i]] > signal[same[j]]:
                    assert chosen[i] >= chosen[j], (length, signal[same[i]], signal[same[j]])
                    compared += chosen[i] > chosen[j]
    assert compared > 100  # the check above compared something


def test_the_first_candidates_weigh_by_the_files_signal(stack: Stack) -> None:
    slices = [stack.slice_file("old", old_slice(1, 300)), stack.slice_file("new", new_slice(2, 300))]
    scores = _score(stack, slices, baseline=_other_checkpoint(stack))
    lengths = _column(scores, "length")
    request = run_request(stack, slices, iterations=1, steps_per_iteration=2, candidate_scores=scores)

    request.strategy = common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS
    by_loss = _first_selection(stack, request)
    assert by_loss.strategy == common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS
    assert by_loss.eligible_count == len(by_loss.candidate_indices) == 256
    _orders_alike(by_loss, _column(scores, "mlm_loss"), lengths)

    # Without a file the sentence shift has no "before" in its first iteration and draws uniformly.
    request.strategy = common_pb2.SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT
    by_shift = _first_selection(stack, request)
    assert by_shift.strategy == common_pb2.SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT
    _orders_alike(by_shift, _column(scores, "cls_shift"), lengths)


def test_a_flat_signal_weighs_by_length_alone(stack: Stack, tmp_path: Path) -> None:
    """The null case: every text's loss alike, nothing but length tells candidates apart."""
    slices = [stack.slice_file("old", old_slice(3, 300))]
    scores = _score(stack, slices)
    table = pq.read_table(scores.uri.removeprefix("file://"))
    flat = table.set_column(
        table.schema.get_field_index("mlm_loss"), "mlm_loss", pa.array(np.full(len(table), 2.0, np.float32))
    )
    path = stack.store / "flat.parquet"
    pq.write_table(flat, path)  # the schema, and so what was scored, carried over
    request = run_request(
        stack,
        slices,
        iterations=1,
        steps_per_iteration=2,
        strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS,
        candidate_scores=common_pb2.ArtifactRef(uri=str(path)),
    )
    selection = _first_selection(stack, request)
    lengths = _column(scores, "length")[np.asarray(selection.candidate_indices)]
    weights = np.asarray(selection.candidate_weights)
    for length in np.unique(lengths):
        assert np.ptp(weights[lengths == length]) < 1e-12, length
    assert len(np.unique(lengths)) > 3 and np.ptp(weights) > 0


def test_a_file_that_does_not_fit_the_run_is_refused(stack: Stack) -> None:
    slices = [stack.slice_file("old", old_slice(5, 200)), stack.slice_file("new", new_slice(6, 200))]
    with_baseline = _score(stack, slices, baseline=_other_checkpoint(stack))
    without = _score(stack, slices)
    loss = common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS
    cases = {
        "uniform": dict(strategy=common_pb2.SAMPLING_STRATEGY_UNIFORM, candidate_scores=with_baseline),
        "shift without a baseline": dict(
            strategy=common_pb2.SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT, candidate_scores=without
        ),
        "another base": dict(strategy=loss, candidate_scores=without, base_checkpoint_id=_other_checkpoint(stack)),
        "one slice of two": dict(strategy=loss, candidate_scores=without, slices=slices[:1]),
        "distillation": dict(
            kind=trainer_pb2.RUN_KIND_DISTILL,
            teacher_checkpoint_ids=[stack.base_checkpoint.checkpoint_id],
            candidate_scores=without,
        ),
        "a corpus, not scores": dict(strategy=loss, candidate_scores=slices[0]),
    }
    for name, fields in cases.items():
        request = run_request(stack, slices, iterations=1, steps_per_iteration=1)
        request.MergeFrom(trainer_pb2.StartRunRequest(**fields))  # type: ignore[arg-type]
        if "slices" in fields:
            del request.slices[:]
            request.slices.extend(fields["slices"])  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as raised:
            stack.trainer.StartRun(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, raised.value.details())
        assert "candidate_scores" in str(raised.value.details()), name
    # Two other files of as many lines: the run starts, and fails before it trains, saying why.
    others = [stack.slice_file("other-old", old_slice(7, 150)), stack.slice_file("other-new", new_slice(8, 150))]
    run = stack.trainer.StartRun(run_request(stack, others, strategy=loss, candidate_scores=without)).run
    for update in stack.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=120):
        run = update.run
    assert run.state == trainer_pb2.RUN_STATE_FAILED and "not the slices'" in run.error_message
