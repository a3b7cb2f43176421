"""Moving a model to a new vocab version: kept pieces predict as before, added ones start as the mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from driftlm.services.trainer.loss_memory import Calibration, LossMemory
from driftlm.services.trainer.models import embedding_matrix, masked_logits, model_from_config, output_bias
from driftlm.services.trainer.remote import RemoteVocab
from driftlm.services.trainer.run_context import vocab_hops
from driftlm.services.trainer.vocab_move import EmbeddingInit, move_to_vocabulary
from driftlm.services.trainer.word_memory import WordMemory

from ..vocab.planted import EMERGING, FILLER
from .conftest import TINY_BERT, Stack


def _moved(
    stack: Stack, init: EmbeddingInit, seed: int = 0
) -> tuple[torch.nn.Module, torch.nn.Module, np.ndarray, dict[str, int], object]:
    vocab = RemoteVocab(stack.vocab_target)
    (hop,) = vocab_hops(vocab, stack.base_version.version_id, stack.updated_version.version_id)
    vocab.close()
    before = model_from_config(TINY_BERT, vocab_size=stack.base_version.size, seed=3).eval()
    after = model_from_config(TINY_BERT, vocab_size=stack.base_version.size, seed=3).eval()
    mapping = move_to_vocabulary(after, hop, init=init, seed=seed)
    return before, after, mapping, dict(hop.new_pieces), hop


def test_kept_pieces_predict_exactly_as_before(stack: Stack) -> None:
    before, after, mapping, pieces, _ = _moved(stack, EmbeddingInit.FVT)
    kept = np.flatnonzero(mapping >= 0)
    ids = torch.tensor([[pieces["[CLS]"], *(pieces[w] for w in FILLER[:12]), pieces["[SEP]"]]])
    mask = torch.ones_like(ids)
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[0, 3:9] = True
    ids_in = ids.clone()
    ids_in[masked] = pieces["[MASK]"]
    with torch.no_grad():
        old = masked_logits(before, ids_in, mask, masked)
        new = masked_logits(after, ids_in, mask, masked)
    torch.testing.assert_close(new[:, kept], old[:, kept], rtol=0, atol=1e-6)


def test_an_added_piece_starts_as_the_mean_of_its_old_pieces(stack: Stack) -> None:
    before, after, mapping, pieces, hop = _moved(stack, EmbeddingInit.FVT)
    added = [pieces[w] for w in EMERGING]
    assert sorted(np.flatnonzero(mapping < 0).tolist()) == sorted(added)
    old_rows, new_rows = embedding_matrix(before).detach(), embedding_matrix(after).detach()
    for new_id in added:
        parts = list(hop.decompositions[new_id])
        assert len(parts) > 1
        torch.testing.assert_close(new_rows[new_id], old_rows[parts].mean(0))
        torch.testing.assert_close(output_bias(after).detach()[new_id], output_bias(before).detach()[parts].mean(0))
    # The decoder stays tied to the input embeddings.
    assert after.get_output_embeddings().weight.data_ptr() == embedding_matrix(after).data_ptr()


def test_mean_covariance_draws_are_seeded_and_finite(stack: Stack) -> None:
    _, first, mapping, _, _ = _moved(stack, EmbeddingInit.MEAN_COVARIANCE, seed=5)
    _, again, _, _, _ = _moved(stack, EmbeddingInit.MEAN_COVARIANCE, seed=5)
    _, other, _, _, _ = _moved(stack, EmbeddingInit.MEAN_COVARIANCE, seed=6)
    added = torch.from_numpy(np.flatnonzero(mapping < 0))
    rows = embedding_matrix(first).detach()[added]
    assert torch.isfinite(rows).all()
    torch.testing.assert_close(rows, embedding_matrix(again).detach()[added])
    assert not torch.equal(rows, embedding_matrix(other).detach()[added])


def test_the_loss_memory_moves_with_the_vocabulary(tmp_path: Path) -> None:
    words = WordMemory(np.array([5, 9], np.uint64), np.array([2.0, 1.0]), 3.0)
    memory = LossMemory.from_occurrences(4, np.array([0, 1, 1, 3]), np.array([1.0, 2.0, 4.0, 8.0]), words)
    memory = memory.with_calibration(Calibration(null_mean=0.2, null_sd=0.14, texts=2, novelty_texts=3, novelty_sd=0.1))
    moved = memory.moved(np.array([3, -1, 1, 0]))  # new id 1 was added
    assert moved.count.tolist() == [1, 0, 2, 1] and moved.total.tolist() == [8.0, 0.0, 6.0, 1.0]
    # An added piece is judged by the tokens seen about as rarely: the singletons (8 and 1 nats).
    singletons = (8.0 + 1.0) / 2
    assert moved.expected()[1] == singletons and moved.expected()[0] == pytest.approx((8.0 + 5 * singletons) / 6)
    assert moved.expected()[2] == pytest.approx((6.0 + 5 * 3.0) / 7)  # alone in its class (2-3 occurrences)
    assert moved.calibration == memory.calibration and moved.calibrated and moved.knows_words
    assert moved.words == words  # words are the same strings under every vocabulary
    moved.save(tmp_path / "memory.safetensors")
    loaded = LossMemory.load(tmp_path / "memory.safetensors")
    assert loaded.calibration == moved.calibration and loaded.count.tolist() == moved.count.tolist()
    assert loaded.words.hashes.tolist() == [5, 9] and loaded.words.texts == 3.0


def test_a_chain_of_two_updates_is_two_hops(stack: Stack) -> None:
    from driftlm.v1 import vocab_pb2

    from ..vocab.planted import observe, planted_slice

    texts = planted_slice(np.random.default_rng(3), ["fernwhistle", "quarmbling"])
    seen = observe(stack.vocab, stack.updated_version.version_id, texts)
    proposal = stack.vocab.ProposeUpdate(
        # Every piece of the planted vocabulary is in recent use: with min_count 100 the new words
        # (~400 and ~200 uses) still enter, and pieces used less than 100 times recently may leave.
        vocab_pb2.ProposeUpdateRequest(
            version_id=stack.updated_version.version_id, observation_ids=[seen.observation_id], k=2, min_count=100
        )
    )
    third = stack.vocab.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id)).version
    vocab = RemoteVocab(stack.vocab_target)
    hops = vocab_hops(vocab, stack.base_version.version_id, third.version_id)
    vocab.close()
    assert len(hops) == 2 and "fernwhistle" in hops[1].new_pieces and "fernwhistle" not in hops[0].new_pieces
