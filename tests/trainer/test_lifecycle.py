"""Runs as resources: resume after kill -9, cancel, failures reported; the trigger; export; distillation."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from driftlm.local_services import start_service
from driftlm.services.trainer.models import load_model, masked_logits
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from .conftest import TINY_BERT, Stack, new_slice, old_slice, run_request


def _weights(stack: Stack, checkpoint_id: str) -> dict[str, torch.Tensor]:
    uri = stack.trainer.GetCheckpoint(
        trainer_pb2.GetCheckpointRequest(checkpoint_id=checkpoint_id)
    ).checkpoint.directory.uri
    return load_file(uri.removeprefix("file://") + "/model.safetensors")


def _wait_for_step(stub: trainer_pb2_grpc.TrainerServiceStub, run_id: str, step: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while stub.GetRun(trainer_pb2.GetRunRequest(run_id=run_id)).run.step < step:
        assert time.monotonic() < deadline, f"run {run_id} did not reach step {step} in {timeout_s} s"
        time.sleep(0.01)


@dataclass
class Interrupted:
    """A run interrupted in a trainer process and finished by a restarted one."""

    final: trainer_pb2.RunStatus
    selections: list[trainer_pb2.Selection]
    # The first process's exit code, its log, and the log's JSON lines.
    exit_code: int
    log_text: str
    log: list[dict[str, object]]


def _interrupt_and_resume(
    stack: Stack, request: trainer_pb2.StartRunRequest, *, at_step: int, interrupt: signal.Signals
) -> Interrupted:
    """Start the run in a trainer process, send it `interrupt` once the run passed at_step, restart
    the service on the same store and follow the run to its end."""
    extra = ("--vocab-endpoint", stack.vocab_target, "--sampling-endpoint", stack.sampling_target)
    trainer = start_service("trainer", stack.store, extra_args=extra)
    with grpc.insecure_channel(trainer.target) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        run = stub.StartRun(request).run
        _wait_for_step(stub, run.run_id, at_step)
    if interrupt is signal.SIGTERM:
        exit_code = trainer.stop()
    else:
        trainer.process.send_signal(interrupt)
        exit_code = trainer.process.wait()
    log_text = trainer.log_path.read_text()  # the restarted service writes a new log
    log = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]

    trainer = start_service("trainer", stack.store, extra_args=extra)  # resumes the run on its own
    try:
        with grpc.insecure_channel(trainer.target) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            final = run
            for update in stub.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=300):
                final = update.run
            selections = list(stub.ListSelections(trainer_pb2.ListSelectionsRequest(run_id=run.run_id)).selections)
    finally:
        assert trainer.stop() == 0
    return Interrupted(final, selections, exit_code, log_text, log)


def _assert_same_run(stack: Stack, interrupted: Interrupted, uninterrupted: trainer_pb2.RunStatus) -> None:
    final = interrupted.final
    assert final.state == trainer_pb2.RUN_STATE_SUCCEEDED and final.step == uninterrupted.step
    assert final.train_tokens == uninterrupted.train_tokens  # no step lost or trained twice
    assert interrupted.selections == stack.selections(uninterrupted.run_id)
    resumed, reference = _weights(stack, final.checkpoint_id), _weights(stack, uninterrupted.checkpoint_id)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_a_run_killed_with_sigkill_resumes_and_ends_where_the_uninterrupted_run_ends(stack: Stack) -> None:
    request = run_request(
        stack,
        [stack.slice_file("new", new_slice(11))],
        vocab_version_id=stack.updated_version.version_id,
        strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
        iterations=4,
        steps_per_iteration=6,
        batch_size=16,
        top_x=5,
    )
    uninterrupted = stack.run_to_end(request)
    interrupted = _interrupt_and_resume(stack, request, at_step=12, interrupt=signal.SIGKILL)
    assert interrupted.exit_code == -signal.SIGKILL
    _assert_same_run(stack, interrupted, uninterrupted)


def test_sigterm_saves_mid_iteration_exits_0_and_the_restarted_run_ends_bit_identical(stack: Stack) -> None:
    request = run_request(
        stack,
        [stack.slice_file("new", new_slice(22))],
        vocab_version_id=stack.updated_version.version_id,
        strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
        iterations=2,
        steps_per_iteration=60,
        batch_size=8,
        top_x=5,
    )
    uninterrupted = stack.run_to_end(request)
    interrupted = _interrupt_and_resume(stack, request, at_step=65, interrupt=signal.SIGTERM)  # in iteration 2
    assert interrupted.exit_code == 0 and "terminate called" not in interrupted.log_text
    (preempted,) = [entry for entry in interrupted.log if entry["msg"] == "run preempted"]
    step = preempted["step"]
    assert isinstance(step, int) and 65 <= step < 120 and step % 60, preempted  # mid-iteration: from its snapshot
    _assert_same_run(stack, interrupted, uninterrupted)


def test_cancel_stops_a_running_run_and_removes_a_queued_one(stack: Stack) -> None:
    slice_ref = stack.slice_file("old", old_slice(12))
    running = stack.trainer.StartRun(run_request(stack, [slice_ref], iterations=50, steps_per_iteration=50)).run
    _wait_for_step(stack.trainer, running.run_id, 2)
    queued = stack.trainer.StartRun(run_request(stack, [slice_ref], iterations=1, steps_per_iteration=1)).run
    assert (
        stack.trainer.GetRun(trainer_pb2.GetRunRequest(run_id=queued.run_id)).run.state == trainer_pb2.RUN_STATE_QUEUED
    )
    cancelled_queued = stack.trainer.CancelRun(trainer_pb2.CancelRunRequest(run_id=queued.run_id)).run
    assert cancelled_queued.state == trainer_pb2.RUN_STATE_CANCELLED and cancelled_queued.step == 0
    cancelled = stack.trainer.CancelRun(trainer_pb2.CancelRunRequest(run_id=running.run_id)).run
    assert cancelled.state == trainer_pb2.RUN_STATE_CANCELLED and 2 <= cancelled.step < cancelled.total_steps
    # Cancelling again changes nothing; the service goes on with the next run.
    again = stack.trainer.CancelRun(trainer_pb2.CancelRunRequest(run_id=running.run_id)).run
    assert again.state == trainer_pb2.RUN_STATE_CANCELLED and again.step == cancelled.step
    after = stack.run_to_end(run_request(stack, [slice_ref], iterations=1, steps_per_iteration=1))
    assert after.step == 1
    listed = stack.trainer.ListRuns(trainer_pb2.ListRunsRequest()).runs
    assert {r.run_id for r in listed} >= {running.run_id, queued.run_id, after.run_id}


def test_a_malformed_slice_fails_the_run_with_a_clear_message(stack: Stack) -> None:
    bad = stack.store / "slices" / "bad.jsonl"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    run = stack.trainer.StartRun(run_request(stack, [common_pb2.ArtifactRef(uri=str(bad))])).run
    final = list(stack.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id)))[-1].run
    assert final.state == trainer_pb2.RUN_STATE_FAILED
    assert final.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert final.error_message == f"slices: {bad} line 2: not valid JSON (Expecting value)"


def test_export_writes_onnx_that_matches_pytorch(stack: Stack, tmp_path: Path) -> None:
    trained = stack.run_to_end(
        run_request(stack, [stack.slice_file("old", old_slice(17))], iterations=1, steps_per_iteration=5)
    )
    repository = tmp_path / "models"
    exported = stack.trainer.ExportOnnx(
        trainer_pb2.ExportOnnxRequest(
            checkpoint_id=trained.checkpoint_id, destination=common_pb2.ArtifactRef(uri=str(repository))
        )
    )
    assert exported.max_abs_diff < 1e-4 and exported.quantized_top1_agreement > 0.9
    assert (exported.model_name, exported.quantized_model_name, exported.version) == ("driftlm", "driftlm_int8", 1)
    version = repository / "driftlm" / "1"
    assert {p.name for p in version.iterdir()} == {
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "config.json",
        "export.json",
    }
    session = onnxruntime.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[2, 100, 101, 102, 3], [2, 103, 3, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    logits, cls, _hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})
    assert logits.shape == (2, 5, stack.base_version.size) and cls.shape == (2, 32)
    # The same checkpoint asked again for version 1 (a retry): the same answer, nothing rewritten.
    written = (version / "model.onnx").stat().st_mtime_ns
    retried = stack.trainer.ExportOnnx(
        trainer_pb2.ExportOnnxRequest(
            checkpoint_id=trained.checkpoint_id, destination=common_pb2.ArtifactRef(uri=str(repository)), version=1
        )
    )
    assert (retried.version, retried.max_abs_diff) == (1, exported.max_abs_diff)
    assert (version / "model.onnx").stat().st_mtime_ns == written
    # Another checkpoint there: versions are never rewritten.
    with pytest.raises(grpc.RpcError) as again:
        stack.trainer.ExportOnnx(
            trainer_pb2.ExportOnnxRequest(
                checkpoint_id=stack.base_checkpoint.checkpoint_id,
                destination=common_pb2.ArtifactRef(uri=str(repository)),
                version=1,
            )
        )
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_distillation_makes_the_student_agree_with_the_teacher(stack: Stack) -> None:
    slice_ref = stack.slice_file("old", old_slice(18))
    teacher = stack.run_to_end(run_request(stack, [slice_ref], iterations=3, steps_per_iteration=15))
    second_teacher = stack.run_to_end(run_request(stack, [slice_ref], iterations=3, steps_per_iteration=15, seed=8))
    small = TINY_BERT.replace('"num_hidden_layers": 2', '"num_hidden_layers": 1')
    student = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=small, vocab_version_id=stack.base_version.version_id, seed=2
        )
    ).checkpoint
    distilled = stack.run_to_end(
        run_request(
            stack,
            [slice_ref],
            kind=trainer_pb2.RUN_KIND_DISTILL,
            base_checkpoint_id=student.checkpoint_id,
            teacher_checkpoint_ids=[teacher.checkpoint_id, second_teacher.checkpoint_id],
            distill_alpha=0.2,
            temperature=2.0,
            iterations=3,
            steps_per_iteration=15,
        )
    )

    def agreement(student_id: str) -> float:
        models = [
            load_model(
                Path(
                    stack.trainer.GetCheckpoint(
                        trainer_pb2.GetCheckpointRequest(checkpoint_id=c)
                    ).checkpoint.directory.uri.removeprefix("file://")
                )
            ).eval()
            for c in (teacher.checkpoint_id, student_id)
        ]
        ids = torch.randint(5, stack.base_version.size, (16, 12), generator=torch.Generator().manual_seed(0))
        masked = torch.zeros_like(ids, dtype=torch.bool)
        masked[:, 2:10:3] = True
        with torch.no_grad():
            top = [masked_logits(m, ids, torch.ones_like(ids), masked).argmax(-1) for m in models]
        return float((top[0] == top[1]).float().mean())

    assert agreement(distilled.checkpoint_id) > agreement(student.checkpoint_id)
    assert stack.trainer.GetCheckpoint(
        trainer_pb2.GetCheckpointRequest(checkpoint_id=distilled.checkpoint_id)
    ).checkpoint.parameter_count < (
        stack.trainer.GetCheckpoint(
            trainer_pb2.GetCheckpointRequest(checkpoint_id=teacher.checkpoint_id)
        ).checkpoint.parameter_count
    )


def test_the_real_minilm_imports_on_its_own_vocabulary(stack: Stack) -> None:
    from ..vocab.planted import register
    from ..vocab.test_updates import MINILM

    version = register(stack.vocab, MINILM, "minilm")
    checkpoint = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_dir=common_pb2.ArtifactRef(uri=str(MINILM)), vocab_version_id=version.version_id
        )
    ).checkpoint
    assert 22_000_000 < checkpoint.parameter_count < 24_000_000 and checkpoint.vocab_version_id == version.version_id
    assert (Path(checkpoint.directory.uri.removeprefix("file://")) / "model.safetensors").is_file()


def test_pseudo_likelihood_is_per_word_comparable_and_prefers_the_trained_model(stack: Stack) -> None:
    trained = stack.run_to_end(
        run_request(stack, [stack.slice_file("old", old_slice(19))], iterations=3, steps_per_iteration=10)
    )
    texts = [*old_slice(20, texts=20), ""]
    base = stack.trainer.ScorePseudoLikelihood(
        trainer_pb2.ScorePseudoLikelihoodRequest(checkpoint_id=stack.base_checkpoint.checkpoint_id, texts=texts)
    )
    after = stack.trainer.ScorePseudoLikelihood(
        trainer_pb2.ScorePseudoLikelihoodRequest(checkpoint_id=trained.checkpoint_id, texts=texts)
    )
    assert list(after.words) == [len(t.split()) for t in texts] and list(after.characters) == [len(t) for t in texts]
    assert after.pieces[-1] == 0 and after.log_likelihoods[-1] == 0.0
    assert all(x < 0 for x in after.log_likelihoods[:-1])
    assert (
        after.log_likelihood_per_word > base.log_likelihood_per_word
        and after.pseudo_perplexity < base.pseudo_perplexity
    )
    # Each piece masked alone: a one-word text's PLL is its piece's masked log-probability.
    one = stack.trainer.ScorePseudoLikelihood(
        trainer_pb2.ScorePseudoLikelihoodRequest(checkpoint_id=trained.checkpoint_id, texts=["the"])
    )
    assert one.pieces == [1] and one.pseudo_perplexity == pytest.approx(np.exp(-one.log_likelihoods[0]))


def test_pseudo_likelihood_of_a_corpus_equals_that_of_its_texts_sent(stack: Stack) -> None:
    """A held-out corpus in shards: the per-text figures in a file, in corpus order (blank lines
    left out), equal to those of the same texts sent in the request; the corpus figures equal."""
    checkpoint = stack.base_checkpoint.checkpoint_id
    first, second = [*old_slice(31, texts=30), "", "   "], new_slice(32, texts=25)
    shards = [stack.slice_file("held-1", first), stack.slice_file("held-2", second)]
    sent = stack.trainer.ScorePseudoLikelihood(
        trainer_pb2.ScorePseudoLikelihoodRequest(checkpoint_id=checkpoint, texts=[*first[:30], *second])
    )
    request = trainer_pb2.ScorePseudoLikelihoodRequest(
        checkpoint_id=checkpoint, corpus=common_pb2.CorpusSource(shards=common_pb2.CorpusShards(files=shards))
    )
    corpus = stack.trainer.ScorePseudoLikelihood(request)
    assert corpus.scored_count == 55 and not corpus.log_likelihoods  # per text: in the file
    table = pq.read_table(corpus.scores.uri.removeprefix("file://"))
    assert table.column("shard").to_pylist() == [0] * 30 + [1] * 25
    assert table.column("line").to_pylist() == [*range(30), *range(25)]
    np.testing.assert_allclose(table.column("log_likelihood").to_numpy(), sent.log_likelihoods, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        table.column("word_l2r_log_likelihood").to_numpy(), sent.word_l2r_log_likelihoods, atol=1e-5, rtol=0
    )
    assert table.column("pieces").to_pylist() == list(sent.pieces)
    for name in ("log_likelihood_per_word", "word_l2r_log_likelihood_per_word", "pseudo_perplexity"):
        assert getattr(corpus, name) == pytest.approx(getattr(sent, name), rel=1e-6), name
    request.texts.append("both")
    with pytest.raises(grpc.RpcError) as raised:
        stack.trainer.ScorePseudoLikelihood(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in str(raised.value.details())


def test_word_l2r_pll_equals_the_original_on_whole_words_and_sums_per_word(stack: Stack) -> None:
    trained = stack.run_to_end(
        run_request(stack, [stack.slice_file("old", old_slice(23))], iterations=2, steps_per_iteration=10)
    )
    whole_words, split_word = "the of and to in", "the of glimmerfox to in"  # glimmerfox: ten letter pieces
    scored = stack.trainer.ScorePseudoLikelihood(
        trainer_pb2.ScorePseudoLikelihoodRequest(checkpoint_id=trained.checkpoint_id, texts=[whole_words, split_word])
    )
    assert list(scored.pieces) == [5, 14] and list(scored.words) == [5, 5]
    # Words of one piece each: l2r hides nothing more (the same masked copies), the two agree.
    assert scored.word_l2r_log_likelihoods[0] == pytest.approx(scored.log_likelihoods[0], abs=1e-4)
    assert scored.word_l2r_log_likelihoods[1] != scored.log_likelihoods[1]
    words = sum(scored.words)
    assert scored.word_l2r_log_likelihood_per_word == pytest.approx(sum(scored.word_l2r_log_likelihoods) / words)


def test_a_new_head_is_reported_and_a_head_only_run_trains_it_alone(stack: Stack) -> None:
    from ..vocab.planted import register
    from ..vocab.test_updates import MINILM

    version = register(stack.vocab, MINILM, "minilm")
    minilm = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_dir=common_pb2.ArtifactRef(uri=str(MINILM)), vocab_version_id=version.version_id
        )
    ).checkpoint
    assert minilm.new_mlm_head  # a sentence encoder: no MLM head in its weights
    assert stack.base_checkpoint.new_mlm_head  # a fresh model from a config
    warmed = stack.run_to_end(
        run_request(stack, [stack.slice_file("old", old_slice(24))], head_only=True, learning_rate=1e-2)
    )
    # A checkpoint with a trained head imports without a new one.
    directory = stack.trainer.GetCheckpoint(
        trainer_pb2.GetCheckpointRequest(checkpoint_id=warmed.checkpoint_id)
    ).checkpoint.directory.uri.removeprefix("file://")
    again = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_dir=common_pb2.ArtifactRef(uri=directory), vocab_version_id=stack.base_version.version_id
        )
    ).checkpoint
    assert not again.new_mlm_head
    before, after = _weights(stack, stack.base_checkpoint.checkpoint_id), _weights(stack, warmed.checkpoint_id)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("cls.predictions.") for name in changed), changed
    assert "bert.embeddings.word_embeddings.weight" not in changed  # tied to the decoder, and frozen


def test_embeddings_are_mean_pooled_per_text_and_bad_input_is_refused(stack: Stack) -> None:
    from driftlm.services.runtime.tensors import tensor_to_array

    request = trainer_pb2.ComputeEmbeddingsRequest(
        checkpoint_id=stack.base_checkpoint.checkpoint_id, texts=["the of and", "", "the of and"]
    )
    embeddings = tensor_to_array(stack.trainer.ComputeEmbeddings(request).embeddings, "embeddings")
    assert embeddings.shape == (3, 32) and embeddings.dtype == np.float32
    assert not embeddings[1].any() and np.array_equal(embeddings[0], embeddings[2])  # empty: zeros
    with pytest.raises(grpc.RpcError) as missing:
        stack.trainer.ComputeEmbeddings(trainer_pb2.ComputeEmbeddingsRequest(checkpoint_id="ckpt-none"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as too_long:
        stack.trainer.ComputeEmbeddings(
            trainer_pb2.ComputeEmbeddingsRequest(checkpoint_id=stack.base_checkpoint.checkpoint_id, max_length=65)
        )
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_request_id_makes_start_run_safe_to_retry(stack: Stack) -> None:
    request = run_request(stack, [stack.slice_file("old", old_slice(17))], iterations=1, steps_per_iteration=2)
    request.request_id = "follow/key/2020/train/0"
    first = stack.trainer.StartRun(request).run
    again = stack.trainer.StartRun(request).run  # the answer was lost: ask again
    assert again.run_id == first.run_id
    finished = list(stack.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=first.run_id)))[-1].run
    after = stack.trainer.StartRun(request).run  # also after it ended: the same run, with its checkpoint
    assert after.run_id == first.run_id and after.checkpoint_id == finished.checkpoint_id != ""
    assert len([r for r in stack.trainer.ListRuns(trainer_pb2.ListRunsRequest()).runs if r.run_id == first.run_id]) == 1
    changed = trainer_pb2.StartRunRequest()
    changed.CopyFrom(request)
    changed.learning_rate = request.learning_rate / 2
    with pytest.raises(grpc.RpcError) as other:
        stack.trainer.StartRun(changed)
    assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS and "other parameters" in (other.value.details() or "")
    changed.request_id = "x" * 129
    with pytest.raises(grpc.RpcError) as bad:
        stack.trainer.StartRun(changed)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in (bad.value.details() or "")
