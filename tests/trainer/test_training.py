"""Training runs through real servers: the loss falls, strategies choose what they should.

What each iteration trained on is read through ListSelections and the checkpoints WatchRun
reported, as a client would; nothing here re-derives the trainer's internal seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import stats

from driftlm import kernels
from driftlm.services.trainer.data import tokenize_texts
from driftlm.services.trainer.models import cls_embeddings, load_model
from driftlm.v1 import common_pb2, trainer_pb2

from ..vocab.planted import EMERGING
from .conftest import Stack, new_slice, old_slice, run_request


def _checkpoint_dir(stack: Stack, checkpoint_id: str) -> Path:
    uri = stack.trainer.GetCheckpoint(
        trainer_pb2.GetCheckpointRequest(checkpoint_id=checkpoint_id)
    ).checkpoint.directory.uri
    return Path(uri.removeprefix("file://"))


def _pool_ids(stack: Stack, checkpoint_id: str, texts: list[str]) -> list[set[int]]:
    """Each text's token ids under the checkpoint's tokenizer (as the run saw them, 32 pieces)."""
    tokenizer_json = (_checkpoint_dir(stack, checkpoint_id) / "tokenizer.json").read_text()
    return [set(ids.tolist()) for ids in tokenize_texts(tokenizer_json, texts, max_length=32, pad_id=0).ids]


def _heldout_loss(stack: Stack, checkpoint_id: str, texts: list[str]) -> float:
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts))
    return stack.trainer.ScoreSlice(
        trainer_pb2.ScoreSliceRequest(checkpoint_id=checkpoint_id, corpus=corpus, seed=5)
    ).slice_loss


def test_the_loss_falls_and_progress_is_reported(stack: Stack) -> None:
    train = stack.slice_file("old", old_slice(1))
    heldout = old_slice(2, texts=200)
    before = _heldout_loss(stack, stack.base_checkpoint.checkpoint_id, heldout)
    run = stack.trainer.StartRun(run_request(stack, [train], iterations=3, steps_per_iteration=10)).run
    updates = list(stack.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id)))
    final = updates[-1].run
    assert final.state == trainer_pb2.RUN_STATE_SUCCEEDED and final.step == final.total_steps == 30
    assert final.iteration == 3 and final.train_tokens > 0 and final.tokens_per_s > 0
    steps = [u.run.step for u in updates]
    assert steps == sorted(steps) and len(set(steps)) > 3  # streamed as it went
    after = _heldout_loss(stack, final.checkpoint_id, heldout)
    assert after < before - 0.5, (before, after)
    checkpoint = stack.trainer.GetCheckpoint(
        trainer_pb2.GetCheckpointRequest(checkpoint_id=final.checkpoint_id)
    ).checkpoint
    assert checkpoint.parent_checkpoint_id == stack.base_checkpoint.checkpoint_id and checkpoint.run_id == run.run_id
    assert checkpoint.remembered_tokens >= 20  # 20 reference texts (half of 40 held out), each scored once at least
    directory = _checkpoint_dir(stack, final.checkpoint_id)
    assert {"config.json", "model.safetensors", "tokenizer.json", "loss_memory.safetensors"} <= {
        p.name for p in directory.iterdir()
    }
    assert not (directory / "optimizer.safetensors").exists()  # the last one: nothing to resume
    first_iteration = next(u.run.checkpoint_id for u in updates if u.run.checkpoint_id)
    assert not (
        _checkpoint_dir(stack, first_iteration) / "optimizer.safetensors"
    ).exists()  # a finished run resumes no more
    selections = stack.selections(run.run_id)
    assert [s.iteration for s in selections] == [0, 1, 2]
    assert all(
        s.strategy == common_pb2.SAMPLING_STRATEGY_UNIFORM and len(s.sentence_indices) == 160 for s in selections
    )


def test_token_shift_first_trains_on_the_added_pieces_then_on_the_most_shifted(stack: Stack) -> None:
    texts = new_slice(3)
    run, checkpoints = stack.run_with_checkpoints(
        run_request(
            stack,
            [stack.slice_file("new", texts)],
            vocab_version_id=stack.updated_version.version_id,
            strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
            iterations=3,
            steps_per_iteration=2,
            batch_size=8,
            top_x=3,
        )
    )
    first, _, third = stack.selections(run.run_id)
    added = {piece.id for piece in stack.updated_version.change.added}
    ids = _pool_ids(stack, checkpoints[0], texts)
    # Iteration 0: the pieces the vocab move added are the targets; exactly their sentences weigh.
    assert first.strategy == common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT
    assert set(first.target_token_ids) == added
    assert [w > 0 for w in first.candidate_weights] == [bool(added & ids[c]) for c in first.candidate_indices]
    assert first.sentence_indices and all(any(w in texts[i].split() for w in EMERGING) for i in first.sentence_indices)
    # Iteration 2: the added pieces stay the targets, ahead of any token that merely moved (the
    # filler words moved by use, about as much as the tokens trained as often).
    assert set(third.target_token_ids) <= added and len(third.target_token_ids) == 3
    assert third.sentence_indices and all(set(third.target_token_ids) & ids[i] for i in third.sentence_indices)


def test_too_few_eligible_sentences_are_topped_up_uniformly(stack: Stack) -> None:
    texts = old_slice(4, texts=37) + new_slice(5, texts=3)
    run = stack.run_to_end(
        run_request(
            stack,
            [stack.slice_file("mostly-old", texts)],
            vocab_version_id=stack.updated_version.version_id,
            strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
            iterations=1,
            steps_per_iteration=2,
            batch_size=8,
        )
    )
    (selection,) = stack.selections(run.run_id)
    assert selection.eligible_count == 3 and sorted(selection.sentence_indices) == [37, 38, 39]
    assert len(selection.topped_up_indices) == 16 - 3
    assert all(0 <= i < len(texts) for i in selection.topped_up_indices)


def test_sentence_shift_weighs_candidates_by_the_cls_shift_of_the_last_iteration(stack: Stack) -> None:
    """The weights ListSelections reports are the [CLS] shifts recomputed from the two checkpoints."""
    texts = new_slice(9, texts=100) + old_slice(10, texts=300)
    batch, steps = 8, 3
    run, checkpoints = stack.run_with_checkpoints(
        run_request(
            stack,
            [stack.slice_file("mixed", texts)],
            strategy=common_pb2.SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT,
            iterations=3,
            steps_per_iteration=steps,
            batch_size=batch,
            sampling_alpha=1.0,
        )
    )
    first, _, third = stack.selections(run.run_id)
    assert first.strategy == common_pb2.SAMPLING_STRATEGY_UNIFORM  # no "before" model yet
    assert third.strategy == common_pb2.SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT
    tokenizer_json = (_checkpoint_dir(stack, checkpoints[0]) / "tokenizer.json").read_text()
    pool = tokenize_texts(tokenizer_json, texts, max_length=32, pad_id=0)
    candidates = list(third.candidate_indices)
    assert len(candidates) == 8 * steps * batch
    embeddings = []
    for checkpoint in checkpoints[:2]:
        model = load_model(_checkpoint_dir(stack, checkpoint)).eval()
        with torch.no_grad():
            rows = [cls_embeddings(model, *pool.batch(candidates[i : i + 64])) for i in range(0, len(candidates), 64)]
        embeddings.append(torch.cat(rows))
    shift = 1 - torch.nn.functional.cosine_similarity(*embeddings, dim=1).numpy()
    # alpha 1: the shift's rank among candidates of similar length, to the fourth power.
    expected = kernels.rank_weights(shift.astype(np.float64), pool.lengths[candidates], 1.0, np.ones(len(shift), bool))
    assert stats.spearmanr(third.candidate_weights, expected).statistic > 0.99
    chosen = list(third.sentence_indices)
    assert len(chosen) == len(set(chosen)) == steps * batch and set(chosen) <= set(candidates)


def test_mlm_loss_weighs_sentences_with_words_the_model_never_saw_highest(stack: Stack) -> None:
    trained = stack.run_to_end(
        run_request(stack, [stack.slice_file("old", old_slice(6))], iterations=4, steps_per_iteration=10)
    )
    texts = new_slice(7, texts=100) + old_slice(8, texts=400)
    run = stack.run_to_end(
        run_request(
            stack,
            [stack.slice_file("mixed", texts)],
            base_checkpoint_id=trained.checkpoint_id,
            seed=11,
            strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS,
            iterations=1,
            steps_per_iteration=4,
            batch_size=16,
            sampling_alpha=1.0,
        )
    )
    (selection,) = stack.selections(run.run_id)
    assert selection.strategy == common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS
    weights = np.asarray(selection.candidate_weights)
    # alpha 1: the loss's rank among candidates of similar length (0 for each stratum's lowest).
    assert weights.max() == 1.0 and (weights > 0).mean() > 0.9
    candidates = np.asarray(selection.candidate_indices)
    holds_new_word = np.array([any(w in t.split() for w in EMERGING) for t in texts])
    assert weights[holds_new_word[candidates]].mean() > weights[~holds_new_word[candidates]].mean() + 0.1
    assert holds_new_word[list(selection.sentence_indices)].mean() > holds_new_word[candidates].mean()


def test_in_process_sampling_gives_the_same_run(stack: Stack, tmp_path: Path) -> None:
    """A trainer without a sampling endpoint calls the kernels in-process: same selections."""
    import grpc

    from driftlm.services.runtime.config import ServeConfig
    from driftlm.services.trainer.server import create_server
    from driftlm.v1 import trainer_pb2_grpc

    request = run_request(
        stack,
        [stack.slice_file("new", new_slice(6))],
        strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS,
        iterations=2,
    )
    remote = stack.run_to_end(request)
    server, port = create_server(
        "127.0.0.1:0",
        ServeConfig(store=tmp_path / "local", vocab_endpoint=stack.vocab_target, read_roots=(stack.store.parent,)),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            local_stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            base = local_stub.CreateCheckpoint(
                trainer_pb2.CreateCheckpointRequest(
                    model_dir=common_pb2.ArtifactRef(
                        uri=str(_checkpoint_dir(stack, stack.base_checkpoint.checkpoint_id))
                    ),
                    vocab_version_id=stack.base_version.version_id,
                )
            ).checkpoint
            request.base_checkpoint_id = base.checkpoint_id
            local = local_stub.StartRun(request).run
            for update in local_stub.WatchRun(trainer_pb2.WatchRunRequest(run_id=local.run_id)):
                local = update.run
            local_selections = list(
                local_stub.ListSelections(trainer_pb2.ListSelectionsRequest(run_id=local.run_id)).selections
            )
    finally:
        server.stop(grace=None)
    assert local.state == trainer_pb2.RUN_STATE_SUCCEEDED
    assert local_selections == stack.selections(remote.run_id)
    assert remote.loss == local.loss
