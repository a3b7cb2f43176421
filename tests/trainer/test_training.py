"""Training runs through real servers: the loss falls, strategies choose what they should."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from driftlm.services.trainer.models import cls_embeddings, load_model
from driftlm.v1 import common_pb2, trainer_pb2

from ..vocab.planted import EMERGING
from .conftest import Stack, new_slice, old_slice, run_request


def _checkpoint_dir(stack: Stack, checkpoint_id: str) -> Path:
    uri = stack.trainer.GetCheckpoint(
        trainer_pb2.GetCheckpointRequest(checkpoint_id=checkpoint_id)
    ).checkpoint.directory.uri
    return Path(uri.removeprefix("file://"))


def _selection(stack: Stack, run_id: str, iteration: int) -> list[int]:
    return json.loads((stack.store / "trainer" / "runs" / run_id / f"selection-{iteration}.json").read_text())


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
    assert checkpoint.remembered_tokens > 100
    directory = _checkpoint_dir(stack, final.checkpoint_id)
    assert {"config.json", "model.safetensors", "tokenizer.json", "loss_memory.safetensors"} <= {
        p.name for p in directory.iterdir()
    }
    assert not (directory / "optimizer.safetensors").exists()  # the last one: nothing to resume
    from driftlm.services.trainer.checkpoints import new_checkpoint_id

    assert (_checkpoint_dir(stack, new_checkpoint_id(run.run_id, "0")) / "optimizer.safetensors").exists()


def test_token_shift_first_trains_on_the_added_pieces_then_on_the_most_shifted(stack: Stack) -> None:
    texts = new_slice(3)
    run = stack.run_to_end(
        run_request(
            stack,
            [stack.slice_file("new", texts)],
            vocab_version_id=stack.updated_version.version_id,
            strategy=trainer_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,
            iterations=3,
            steps_per_iteration=2,
            batch_size=8,
            top_x=3,
        )
    )
    first = _selection(stack, run.run_id, 0)
    assert all(any(word in texts[i].split() for word in EMERGING) for i in first)  # the vocab move's new pieces
    checkpoints = [_checkpoint_dir(stack, f) for f in _iteration_checkpoints(stack, run.run_id)]
    before, after = (
        load_file(str(d / "model.safetensors"))["bert.embeddings.word_embeddings.weight"] for d in checkpoints[:2]
    )
    shift = 1 - torch.nn.functional.cosine_similarity(before, after, dim=1)
    top = set(torch.topk(shift, 3).indices.tolist())
    from driftlm.services.trainer.data import tokenize_texts

    tokenizer_json = (checkpoints[0] / "tokenizer.json").read_text()
    pool = tokenize_texts(tokenizer_json, texts, max_length=32, pad_id=0)
    third = _selection(stack, run.run_id, 2)
    assert third and all(top & set(pool.ids[i].tolist()) for i in third)


def _iteration_checkpoints(stack: Stack, run_id: str) -> list[str]:
    from driftlm.services.trainer.checkpoints import new_checkpoint_id

    return [new_checkpoint_id(run_id, str(i)) for i in range(3)]


def test_sentence_shift_draws_by_the_cls_shift_of_the_last_iteration(stack: Stack) -> None:
    """Recompute, from the two checkpoints, the [CLS] shift the trainer must have sent to the
    sampling service, and the draw it must have got back."""
    from driftlm import kernels
    from driftlm.services.trainer.data import tokenize_texts
    from driftlm.services.trainer.training import derive_seed

    texts = new_slice(9, texts=100) + old_slice(10, texts=300)
    seed, batch, steps = 7, 8, 3
    run = stack.run_to_end(
        run_request(
            stack,
            [stack.slice_file("mixed", texts)],
            strategy=trainer_pb2.SAMPLING_STRATEGY_SENTENCE_EMBEDDING_SHIFT,
            iterations=3,
            steps_per_iteration=steps,
            batch_size=batch,
            sampling_alpha=1.0,
            seed=seed,
        )
    )
    directories = [_checkpoint_dir(stack, c) for c in _iteration_checkpoints(stack, run.run_id)]
    pool = tokenize_texts((directories[0] / "tokenizer.json").read_text(), texts, max_length=32, pad_id=0)
    candidates = np.sort(
        np.random.default_rng(derive_seed(seed, "candidates", 2)).choice(len(pool), 8 * steps * batch, replace=False)
    )
    embeddings = []
    for directory in directories[:2]:
        model = load_model(directory).eval()
        with torch.no_grad():
            rows = [
                cls_embeddings(model, *pool.batch(candidates[i : i + 64].tolist()))
                for i in range(0, len(candidates), 64)
            ]
        embeddings.append(torch.cat(rows).numpy())
    shift = kernels.cosine_distance_rows(*embeddings)
    drawn = kernels.draw_without_replacement(shift.astype(np.float64), steps * batch, derive_seed(seed, "select", 2))
    assert _selection(stack, run.run_id, 2) == candidates[drawn].tolist()


def test_mlm_loss_draws_by_each_sentence_loss_under_the_base_model(stack: Stack) -> None:
    """Recompute each candidate's masked-LM loss under the base model and the draw it implies;
    and check that it favours the sentences with words the model has never seen."""
    from driftlm import kernels
    from driftlm.services.trainer.data import special_mask, tokenize_texts
    from driftlm.services.trainer.masking import mask_batch
    from driftlm.services.trainer.models import masked_logits
    from driftlm.services.trainer.training import SPECIAL_PIECES, derive_seed

    trained = stack.run_to_end(
        run_request(stack, [stack.slice_file("old", old_slice(6))], iterations=4, steps_per_iteration=10)
    )
    texts = new_slice(7, texts=100) + old_slice(8, texts=400)
    seed, batch, steps = 11, 16, 4
    run = stack.run_to_end(
        run_request(
            stack,
            [stack.slice_file("mixed", texts)],
            base_checkpoint_id=trained.checkpoint_id,
            seed=seed,
            strategy=trainer_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS,
            iterations=1,
            steps_per_iteration=steps,
            batch_size=batch,
            sampling_alpha=1.0,
        )
    )
    directory = _checkpoint_dir(stack, trained.checkpoint_id)
    tokenizer_json = (directory / "tokenizer.json").read_text()
    pieces = json.loads(tokenizer_json)["model"]["vocab"]
    pool = tokenize_texts(tokenizer_json, texts, max_length=32, pad_id=0)
    candidates = np.sort(
        np.random.default_rng(derive_seed(seed, "candidates", 0)).choice(
            len(pool), min(len(pool), 8 * steps * batch), replace=False
        )
    )
    model = load_model(directory).eval()
    losses = []
    for start in range(0, len(candidates), 64):
        chunk = candidates[start : start + 64].tolist()
        ids, mask = pool.batch(chunk)
        generator = torch.Generator().manual_seed(derive_seed(seed, "score", 0, start))
        masked = mask_batch(
            ids,
            mask,
            special=special_mask(pieces, SPECIAL_PIECES, len(pieces)),
            mask_id=pieces["[MASK]"],
            fraction=0.15,
            generator=generator,
        )
        with torch.no_grad():
            per_token = torch.nn.functional.cross_entropy(
                masked_logits(model, masked.input_ids, masked.attention_mask, masked.masked),
                masked.targets,
                reduction="none",
            )
        rows = torch.nonzero(masked.masked)[:, 0].numpy()
        sums, counts = (
            np.bincount(rows, weights=per_token.numpy(), minlength=len(chunk)),
            np.bincount(rows, minlength=len(chunk)),
        )
        losses.append(np.where(counts > 0, sums / np.maximum(counts, 1), 0.0))
    loss = np.concatenate(losses).astype(np.float32)
    weights = kernels.sampling_weights(loss / loss.max(), pool.lengths[candidates], alpha=1.0)
    drawn = candidates[kernels.draw_without_replacement(weights, steps * batch, derive_seed(seed, "select", 0))]
    assert _selection(stack, run.run_id, 0) == drawn.tolist()
    holds_new_word = np.array([any(w in t.split() for w in EMERGING) for t in texts])
    assert holds_new_word[drawn].mean() > holds_new_word[candidates].mean()


def test_in_process_sampling_gives_the_same_run(stack: Stack, tmp_path: Path) -> None:
    """A trainer without a sampling endpoint calls the kernels in-process: same selections."""
    import grpc

    from driftlm.services.runtime.config import ServeConfig
    from driftlm.services.trainer.server import create_server
    from driftlm.v1 import trainer_pb2_grpc

    request = run_request(
        stack,
        [stack.slice_file("new", new_slice(6))],
        strategy=trainer_pb2.SAMPLING_STRATEGY_TOKEN_MLM_LOSS,
        iterations=2,
    )
    remote = stack.run_to_end(request)
    server, port = create_server("127.0.0.1:0", ServeConfig(store=stack.store, vocab_endpoint=stack.vocab_target))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            local_stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            local = local_stub.StartRun(request).run
            for update in local_stub.WatchRun(trainer_pb2.WatchRunRequest(run_id=local.run_id)):
                local = update.run
    finally:
        server.stop(grace=None)
    assert local.state == trainer_pb2.RUN_STATE_SUCCEEDED
    assert _selection(stack, remote.run_id, 1) == _selection(stack, local.run_id, 1)
    assert remote.loss == local.loss
