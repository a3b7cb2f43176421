"""driftlm's text API on a really trained model: FillMask finds the planted word, ONNX Runtime's
logits and embeddings match PyTorch's, and token losses are the trainer's pseudo-log-likelihood."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from driftlm.services.core.pseudo_likelihood import summarise
from driftlm.services.core.vocabulary import WordPieceVocabulary
from driftlm.services.runtime.tensors import tensor_to_array
from driftlm.services.trainer.models import mean_embeddings
from driftlm.services.trainer.pseudo_likelihood import pseudo_log_likelihoods
from driftlm.v1 import inference_pb2

from .conftest import ANSWERS, CUE, MODEL, Planted, Server

TEXTS = [
    f"the of and {CUE} zorblax to in is",
    "his they which one you were her all",
    f"{CUE} [MASK] is was",
]


def _target(name: str = MODEL, version: int = 0) -> inference_pb2.ModelTarget:
    return inference_pb2.ModelTarget(name=name, version=version)


def test_fill_mask_returns_the_planted_word(version_one: Server) -> None:
    response = version_one.stub.FillMask(
        inference_pb2.FillMaskRequest(
            model=_target(), texts=[f"the of and {CUE} [MASK] in is was", f"[MASK] {CUE} [MASK]"], top_k=3
        )
    )
    assert response.version == 1
    assert [(p.text_index, p.position) for p in response.predictions] == [(0, 5), (1, 1), (1, 3)]
    first = response.predictions[0]
    assert first.char_offset == len(f"the of and {CUE} ")
    assert first.candidates[0].piece == ANSWERS[1]
    probabilities = [c.probability for c in first.candidates]
    assert probabilities == sorted(probabilities, reverse=True) and 0.5 < probabilities[0] <= 1.0
    assert all(len(p.candidates) == 3 for p in response.predictions)


def test_fill_mask_of_the_int8_copy_agrees(version_one: Server) -> None:
    request = inference_pb2.FillMaskRequest(model=_target(f"{MODEL}_int8"), texts=[f"the of and {CUE} [MASK] in"])
    assert version_one.stub.FillMask(request).predictions[0].candidates[0].piece == ANSWERS[1]


def test_logits_match_pytorch(version_one: Server, planted: Planted) -> None:
    vocabulary = WordPieceVocabulary(planted.tokenizer_json)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(planted.tokenizer_json)
    ids = tokenizer.encode(TEXTS[0]).ids
    positions = [0, 3, len(ids) - 1]
    response = version_one.stub.ComputeLogits(
        inference_pb2.ComputeLogitsRequest(
            model=_target(),
            texts=[
                inference_pb2.TextPositions(text=TEXTS[0], positions=positions),
                inference_pb2.TextPositions(text=TEXTS[2]),
            ],
        )
    )
    logits = tensor_to_array(response.logits, "logits")
    assert logits.shape == (4, vocabulary.size)
    assert tensor_to_array(response.text_indices, "t").tolist() == [0, 0, 0, 1]
    assert tensor_to_array(response.positions, "p").tolist() == [*positions, 2]
    mask_id = vocabulary.special_tokens.mask_id
    assert tensor_to_array(response.token_ids, "ids").tolist() == [ids[p] for p in positions] + [mask_id]
    with torch.no_grad():
        reference = planted.models[1](input_ids=torch.tensor([ids])).logits[0, positions].numpy()
    np.testing.assert_allclose(logits[:3], reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pooling", [inference_pb2.POOLING_CLS, inference_pb2.POOLING_MEAN])
def test_embeddings_match_pytorch(version_one: Server, planted: Planted, pooling: int) -> None:
    response = version_one.stub.EmbedTexts(
        inference_pb2.EmbedTextsRequest(model=_target(), texts=TEXTS, pooling=pooling)
    )
    embeddings = tensor_to_array(response.embeddings, "embeddings")
    model = planted.models[1]
    special = torch.zeros(WordPieceVocabulary(planted.tokenizer_json).size, dtype=torch.bool)
    special[list(WordPieceVocabulary(planted.tokenizer_json).special_tokens.reserved_ids)] = True
    if pooling == inference_pb2.POOLING_MEAN:
        reference = mean_embeddings(
            model, planted.tokenizer_json, TEXTS, special=special, max_length=64, device=torch.device("cpu")
        )
    else:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(planted.tokenizer_json)
        with torch.no_grad():
            reference = np.stack(
                [
                    model.bert(input_ids=torch.tensor([tokenizer.encode(t).ids])).last_hidden_state[0, 0].numpy()
                    for t in TEXTS
                ]
            )
    assert embeddings.shape == (3, 32)
    np.testing.assert_allclose(embeddings, reference, atol=1e-4, rtol=1e-4)


def test_token_loss_is_the_trainers_pseudo_log_likelihood(version_one: Server, planted: Planted) -> None:
    response = version_one.stub.ComputeTokenLoss(inference_pb2.ComputeTokenLossRequest(model=_target(), texts=TEXTS))
    vocabulary = WordPieceVocabulary(planted.tokenizer_json)
    special = torch.zeros(vocabulary.size, dtype=torch.bool)
    special[list(vocabulary.special_tokens.reserved_ids)] = True
    expected = pseudo_log_likelihoods(
        planted.models[1],
        planted.tokenizer_json,
        TEXTS,
        mask_id=vocabulary.special_tokens.mask_id,
        special=special,
        max_length=64,
        device=torch.device("cpu"),
    )
    corpus = summarise(expected)
    for text, reference in zip(response.texts, expected, strict=True):
        assert text.log_likelihood == pytest.approx(reference.log_likelihood, abs=1e-3)
        assert text.word_l2r_log_likelihood == pytest.approx(reference.word_l2r_log_likelihood, abs=1e-3)
        assert (text.pieces, text.words, text.characters) == (reference.pieces, reference.words, reference.characters)
        # The per-piece losses are the original PLL's terms.
        assert -sum(text.losses) == pytest.approx(text.log_likelihood, abs=1e-6)
        assert [loss == 0 for loss, scored in zip(text.losses, text.scored, strict=True) if not scored] == [True] * (
            len(text.scored) - text.pieces
        )
    assert response.word_l2r_log_likelihood_per_word == pytest.approx(corpus.word_l2r_log_likelihood_per_word, abs=1e-4)
    assert response.pseudo_perplexity == pytest.approx(corpus.pseudo_perplexity, rel=1e-3)
    # The trained association shows: the answer after the cue costs little, the same word elsewhere much.
    answer = vocabulary.piece_ids[ANSWERS[1]]
    first = response.texts[0]
    assert first.losses[list(first.token_ids).index(answer)] < 0.5


def test_texts_longer_than_the_model_are_refused_or_cut(version_one: Server) -> None:
    import grpc

    long_text = " ".join(["the"] * 100) + " [MASK]"
    request = inference_pb2.EmbedTextsRequest(model=_target(), texts=[long_text])
    with pytest.raises(grpc.RpcError) as refused:
        version_one.stub.EmbedTexts(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "64 pieces" in refused.value.details() and "truncate" in refused.value.details()
    request.model.truncate = True
    assert tensor_to_array(version_one.stub.EmbedTexts(request).embeddings, "e").shape == (1, 32)
    # Cut, the mask is gone: FillMask says so.
    with pytest.raises(grpc.RpcError) as no_mask:
        version_one.stub.FillMask(inference_pb2.FillMaskRequest(model=request.model, texts=[long_text]))
    assert no_mask.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "[MASK]" in no_mask.value.details()


def test_the_python_client(version_one: Server) -> None:
    from driftlm.services.inference.client import InferenceClient

    with InferenceClient(version_one.target) as inference:
        assert [(m.name, m.version, m.is_default) for m in inference.list_models()] == [
            (MODEL, 1, True),
            (f"{MODEL}_int8", 1, True),
        ]
        fills = inference.fill_mask(MODEL, [f"the of and {CUE} [MASK] in"], top_k=2)
        assert fills[0].candidates[0].piece == ANSWERS[1] and len(fills[0].candidates) == 2
        assert inference.embed(MODEL, TEXTS, mean=True).shape == (3, 32)
        assert len(inference.token_loss(MODEL, TEXTS).texts) == 3
        at_masks = inference.logits(MODEL, [TEXTS[2]])
        assert at_masks.logits.shape == (1, 162) and at_masks.positions.tolist() == [2] and at_masks.version == 1
        many = inference.logits(MODEL, [TEXTS[2]] * 256, [list(range(6))] * 256)
        assert many.logits.shape == (256 * 6, 162)
        assert [m.version for m in inference.unload_model(f"{MODEL}_int8")] == [1]


def test_drawn_masks_are_the_same_for_every_model_of_a_vocabulary(version_one: Server, planted: Planted) -> None:
    from tokenizers import Tokenizer

    texts = [TEXTS[0], "", TEXTS[1]]

    def drawn(name: str, order: list[str]) -> dict[str, tuple[list[int], list[int]]]:
        response = version_one.stub.ComputeLogits(
            inference_pb2.ComputeLogitsRequest(
                model=_target(name),
                texts=[inference_pb2.TextPositions(text=t) for t in order],
                mask_fraction=0.3,
                seed=5,
            )
        )
        rows = tensor_to_array(response.text_indices, "t").tolist()
        positions = tensor_to_array(response.positions, "p").tolist()
        labels = tensor_to_array(response.token_ids, "ids").tolist()
        return {
            order[i]: (
                [p for r, p in zip(rows, positions, strict=True) if r == i],
                [x for r, x in zip(rows, labels, strict=True) if r == i],
            )
            for i in range(len(order))
        }

    fp32, int8, reordered = drawn(MODEL, texts), drawn(f"{MODEL}_int8", texts), drawn(MODEL, texts[::-1])
    assert fp32 == int8 == reordered
    assert fp32[""] == ([], [])
    tokenizer = Tokenizer.from_str(planted.tokenizer_json)
    ids = tokenizer.encode(TEXTS[0]).ids
    positions, labels = fp32[TEXTS[0]]
    assert labels == [ids[p] for p in positions] and len(positions) == round(0.3 * (len(ids) - 2))
    # The logits are those of the text with the drawn pieces masked.
    masked = list(ids)
    for p in positions:
        masked[p] = tokenizer.token_to_id("[MASK]")
    response = version_one.stub.ComputeLogits(
        inference_pb2.ComputeLogitsRequest(
            model=_target(), texts=[inference_pb2.TextPositions(text=TEXTS[0])], mask_fraction=0.3, seed=5
        )
    )
    with torch.no_grad():
        reference = planted.models[1](input_ids=torch.tensor([masked])).logits[0, positions].numpy()
    np.testing.assert_allclose(tensor_to_array(response.logits, "l"), reference, atol=1e-4, rtol=1e-4)
    other_seed = version_one.stub.ComputeLogits(
        inference_pb2.ComputeLogitsRequest(
            model=_target(), texts=[inference_pb2.TextPositions(text=TEXTS[1])], mask_fraction=0.3, seed=6
        )
    )
    assert tensor_to_array(other_seed.positions, "p").tolist() != fp32[TEXTS[1]][0]


def test_a_fill_mask_over_too_many_masks_is_refused_up_front_and_the_server_stays_well(version_one: Server) -> None:
    """FillMask(["[MASK]" * 62] * 256) once added 1.7 GB, kept it, and later calls failed INTERNAL."""
    crowded = ["[MASK] " * 62] * 256
    with pytest.raises(grpc.RpcError) as raised:
        version_one.stub.FillMask(inference_pb2.FillMaskRequest(model=_target(), texts=crowded, top_k=1))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "fills at most 4,096" in raised.value.details()
    request = inference_pb2.FillMaskRequest(model=_target(), texts=[f"the of and {CUE} [MASK] in"])
    assert version_one.stub.FillMask(request).predictions[0].candidates[0].piece == ANSWERS[1]


def test_masks_filled_a_chunk_at_a_time_are_those_filled_one_text_at_a_time(version_one: Server) -> None:
    """Many texts with many masks (each chunk reduced to its top k before the next runs)."""
    texts = [f"the of and {CUE} [MASK] in is was [MASK] {' '.join(['[MASK]'] * (i % 5))}" for i in range(40)]
    together = version_one.stub.FillMask(inference_pb2.FillMaskRequest(model=_target(), texts=texts, top_k=2))
    alone = [
        p
        for text in texts[:5]
        for p in version_one.stub.FillMask(
            inference_pb2.FillMaskRequest(model=_target(), texts=[text], top_k=2)
        ).predictions
    ]
    first = [p for p in together.predictions if p.text_index < 5]
    assert [(p.position, [c.piece for c in p.candidates]) for p in first] == [
        (p.position, [c.piece for c in p.candidates]) for p in alone
    ]
    assert len(together.predictions) == sum(2 + i % 5 for i in range(40))


@pytest.mark.parametrize("text", ["", " ", "\u200b"])
def test_texts_with_nothing_to_embed_are_never_an_internal_error(version_one: Server, text: str) -> None:
    """EmbedTexts([""]) once answered INTERNAL (a Reshape on an empty sequence)."""
    request = inference_pb2.EmbedTextsRequest(model=_target(), texts=[text], pooling=inference_pb2.POOLING_MEAN)
    try:
        embeddings = tensor_to_array(version_one.stub.EmbedTexts(request).embeddings, "embeddings")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "has no pieces" in error.details()
    else:
        assert embeddings.shape[0] == 1 and not embeddings.any()  # [CLS] and [SEP] only: nothing to average
