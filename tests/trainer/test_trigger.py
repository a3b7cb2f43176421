"""The trigger through a real trainer: silent on more text of the period a checkpoint was trained on,
firing on new words and on a word used differently, on planted text and on real text.

Real text: the prose lines of the .md, .rst and .txt files of this Python installation (what the
vocab benchmark reads), shuffled so that every slice is drawn from the same population.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from benchmarks.vocab import real_texts, shuffled
from driftlm.v1 import common_pb2, trainer_pb2, vocab_pb2

from ..vocab.planted import EMERGING, FILLER, planted_slice
from .conftest import TINY_BERT, Stack, run_request

OLD_PHRASE = "they said the zorblax was new"


def _phrase_slice(seed: int, texts: int) -> list[str]:
    """Filler sentences, half of them holding `zorblax` in its one fixed phrase."""
    rng = np.random.default_rng(seed)
    sentences = []
    for index in range(texts):
        words = list(rng.choice(FILLER, rng.integers(5, 12)))
        if index % 2 == 0:
            words.insert(int(rng.integers(0, len(words))), OLD_PHRASE)
        sentences.append(" ".join(words))
    return sentences


def _moved_usage_slice(seed: int, texts: int) -> list[str]:
    """The same filler, `zorblax` now anywhere among it and never in its old phrase."""
    rng = np.random.default_rng(seed)
    sentences = []
    for index in range(texts):
        words = list(rng.choice(FILLER, rng.integers(5, 12)))
        if index % 2 == 0:
            words.insert(int(rng.integers(0, len(words))), "zorblax")
        sentences.append(" ".join(words))
    return sentences


def _score(stack: Stack, checkpoint_id: str, texts: list[str], **fields: object) -> trainer_pb2.ScoreSliceResponse:
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts))
    return stack.trainer.ScoreSlice(
        trainer_pb2.ScoreSliceRequest(checkpoint_id=checkpoint_id, corpus=corpus, seed=3, **fields)  # type: ignore[arg-type]
    )


@pytest.fixture
def phrase_model(stack: Stack) -> str:
    """A tiny BERT trained on the phrase period, its memory measured on 400 held-out texts.

    240 steps: with 120, whether the model had learnt the phrase well enough for a moved word to
    cost more than min_effect (0.1 nats) depended on the draw order (0.08 to 0.12 nats)."""
    run = stack.run_to_end(
        run_request(
            stack,
            [stack.slice_file("phrase", _phrase_slice(1, 1600))],
            iterations=3,
            steps_per_iteration=80,
            reference_texts=400,
        )
    )
    return run.checkpoint_id


def test_silent_on_the_same_period_firing_on_new_words_and_on_words_used_differently(
    stack: Stack, phrase_model: str
) -> None:
    same = [_score(stack, phrase_model, _phrase_slice(seed, 400)) for seed in (2, 3, 4)]  # fresh slices, same period
    for score in same:
        assert score.calibrated and score.knows_words and not score.fire, score.reason
        assert score.score <= score.threshold and score.unseen_share <= score.unseen_threshold
        assert not score.spikes and not score.new_words and not score.signals and score.texts_scored == 400
        assert score.reason.startswith("silent: slice loss") and "no new word among" in score.reason
    new_words = _score(stack, phrase_model, planted_slice(np.random.default_rng(5), EMERGING, texts=400))
    assert new_words.fire and trainer_pb2.TRIGGER_SIGNAL_NEW_WORDS in new_words.signals, new_words.reason
    assert {w.word for w in new_words.new_words} >= set(EMERGING) and new_words.new_word_count >= len(EMERGING)
    for word in new_words.new_words:
        assert word.memory_texts == 0 and word.slice_texts >= 3 and word.p_value <= new_words.word_p_threshold
    assert new_words.unseen_share > max(s.unseen_share for s in same) and new_words.unseen_z > 5
    # The phrase's words now stand anywhere, no word is new: more loss than the model expects of them.
    moved = _score(stack, phrase_model, _moved_usage_slice(7, 400))
    assert moved.fire and not moved.new_words, moved.reason
    assert {trainer_pb2.TRIGGER_SIGNAL_SLICE_LOSS, trainer_pb2.TRIGGER_SIGNAL_TOKEN_LOSS} & set(moved.signals)
    assert moved.z > max(s.z for s in same) + 2


def test_the_mask_fraction_is_the_requests(stack: Stack, phrase_model: str) -> None:
    texts = _phrase_slice(10, 400)
    sparse, dense = (_score(stack, phrase_model, texts, mask_fraction=rate) for rate in (0.15, 0.45))
    assert 2.5 < dense.scored_tokens / sparse.scored_tokens < 3.5
    assert sparse.texts_scored == dense.texts_scored == 400  # every text gets a piece to predict


def test_an_imported_model_always_fires_and_says_why(stack: Stack) -> None:
    imported = _score(stack, stack.base_checkpoint.checkpoint_id, _phrase_slice(8, 50))
    assert imported.fire and not imported.calibrated and imported.novel_fraction == 1.0
    assert "not calibrated" in imported.reason


def test_stricter_false_fire_rate_raises_the_threshold(stack: Stack, phrase_model: str) -> None:
    texts = _phrase_slice(9, 400)
    # A minimal min_effect, so that the false-fire rate alone sets the threshold.
    loose, strict = (_score(stack, phrase_model, texts, false_fire_rate=rate, min_effect=1e-9) for rate in (0.2, 0.001))
    assert loose.score == strict.score and loose.null_mean == strict.null_mean
    assert strict.threshold > loose.threshold and strict.token_z_threshold > loose.token_z_threshold
    large_effect = _score(stack, phrase_model, texts, min_effect=5.0)
    assert large_effect.threshold == pytest.approx(large_effect.null_mean + 5.0)


def test_on_real_text_the_trigger_is_silent_without_drift_and_fires_on_planted_words(stack: Stack) -> None:
    texts = shuffled(real_texts(6000), seed=0)
    assert len(texts) == 6000
    train, slices = texts[:2400], [texts[2400 + 600 * i : 3000 + 600 * i] for i in range(6)]
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=train))
    version = stack.vocab.CreateVocabulary(
        vocab_pb2.CreateVocabularyRequest(training_corpus=corpus, vocab_size=2000)
    ).version
    base = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(model_config_json=TINY_BERT, vocab_version_id=version.version_id, seed=1)
    ).checkpoint
    trained = stack.run_to_end(
        run_request(
            stack,
            [stack.slice_file("real", train)],
            base_checkpoint_id=base.checkpoint_id,
            iterations=3,
            steps_per_iteration=40,
            reference_texts=600,
        )
    )
    silent = [_score(stack, trained.checkpoint_id, texts) for texts in slices[:5]]
    assert not any(s.fire for s in silent), [s.reason for s in silent]
    rng = np.random.default_rng(1)
    # A tenth of the texts name one of the new words.
    planted = [
        " ".join([*t.split()[:3], str(rng.choice(EMERGING)), *t.split()[3:]]) if i % 10 == 0 else t
        for i, t in enumerate(slices[5])
    ]
    drifted = _score(stack, trained.checkpoint_id, planted)
    assert drifted.fire and trainer_pb2.TRIGGER_SIGNAL_NEW_WORDS in drifted.signals, drifted.reason
    assert {w.word for w in drifted.new_words} <= set(EMERGING) and drifted.new_words
    assert drifted.unseen_z > max(s.unseen_z for s in silent)
    # The same decisions on real text when the losses come from a ScoreCandidates file.
    for name, texts, fires in (("real-silent", slices[0], False), ("real-planted", planted, True)):
        corpus, scores = _scored_file(stack, trained.checkpoint_id, name, texts)
        from_file = stack.trainer.ScoreSlice(
            trainer_pb2.ScoreSliceRequest(checkpoint_id=trained.checkpoint_id, corpus=corpus, seed=3, scores=scores)
        )
        assert from_file.fire is fires, from_file.reason


def test_a_memory_written_before_words_were_remembered_decides_on_losses_alone(stack: Stack, phrase_model: str) -> None:
    """A checkpoint of driftlm 0.2 has a calibrated loss memory but no words: the loss tests
    decide, and the response says the novelty tests did not run."""
    path = stack.store / "trainer" / "checkpoints" / phrase_model / "loss_memory.safetensors"
    arrays = load_file(str(path))
    save_file(
        {k: v for k, v in arrays.items() if not k.startswith("word_")} | {"calibration": arrays["calibration"][:5]},
        str(path),
    )
    score = _score(stack, phrase_model, planted_slice(np.random.default_rng(5), EMERGING, texts=400))
    assert score.calibrated and not score.knows_words and not score.new_words
    assert set(score.signals) <= {trainer_pb2.TRIGGER_SIGNAL_SLICE_LOSS, trainer_pb2.TRIGGER_SIGNAL_TOKEN_LOSS}


def _scored_file(
    stack: Stack, checkpoint_id: str, name: str, texts: list[str], **fields: object
) -> tuple[common_pb2.CorpusSource, common_pb2.ArtifactRef]:
    """The texts as a corpus file, and a ScoreCandidates file of them (what a Ray cluster writes)."""
    corpus = common_pb2.CorpusSource(uri=stack.slice_file(name, texts))
    scored = stack.trainer.ScoreCandidates(
        trainer_pb2.ScoreCandidatesRequest(checkpoint_id=checkpoint_id, corpus=corpus, seed=5, **fields)  # type: ignore[arg-type]
    )
    return corpus, scored.scores


def test_losses_scored_elsewhere_decide_as_the_trigger_own(stack: Stack, phrase_model: str) -> None:
    """ScoreSlice reading a ScoreCandidates file: silent on the period, firing on words used
    differently (a loss signal, so read from the file's per-token losses) and on new words, as
    the trigger decides when it scores the same texts itself."""
    slices = {
        "same": _phrase_slice(2, 400),
        "moved": _moved_usage_slice(7, 400),
        "new": planted_slice(np.random.default_rng(5), EMERGING, texts=400),
    }
    for name, texts in slices.items():
        corpus, scores = _scored_file(stack, phrase_model, name, texts)
        request = trainer_pb2.ScoreSliceRequest(checkpoint_id=phrase_model, corpus=corpus, seed=3, scores=scores)
        from_file = stack.trainer.ScoreSlice(request)
        own = _score(stack, phrase_model, texts)
        assert from_file.fire == own.fire and set(from_file.signals) == set(own.signals), (from_file.reason, own.reason)
        assert from_file.texts_scored == own.texts_scored == 400 and from_file.calibrated
        # Every piece about once (ceil(1 / 0.15) masks) against one 15% mask: more occurrences.
        assert from_file.scored_tokens > 4 * own.scored_tokens
        if name == "moved":
            assert {trainer_pb2.TRIGGER_SIGNAL_SLICE_LOSS, trainer_pb2.TRIGGER_SIGNAL_TOKEN_LOSS} & set(
                from_file.signals
            ), from_file.reason
            assert not from_file.new_words
        assert abs(from_file.score - own.score) < 0.25, (from_file.score, own.score)


def test_a_scores_file_that_does_not_fit_is_refused(stack: Stack) -> None:
    checkpoint = stack.base_checkpoint.checkpoint_id
    other = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=TINY_BERT, vocab_version_id=stack.base_version.version_id, seed=2
        )
    ).checkpoint.checkpoint_id
    corpus, scores = _scored_file(stack, checkpoint, "fits", _phrase_slice(11, 60))
    other_corpus = common_pb2.CorpusSource(uri=stack.slice_file("other", _phrase_slice(12, 60)))
    _, sparse = _scored_file(stack, checkpoint, "sparse", _phrase_slice(11, 60), mask_fraction=0.3)
    cases = {
        "another checkpoint": (dict(checkpoint_id=other), grpc.StatusCode.INVALID_ARGUMENT),
        "another mask fraction": (dict(scores=sparse), grpc.StatusCode.INVALID_ARGUMENT),
        "another corpus": (dict(corpus=other_corpus), grpc.StatusCode.FAILED_PRECONDITION),
        "not a scores file": (dict(scores=corpus.uri), grpc.StatusCode.INVALID_ARGUMENT),
        "two files scored as one": (
            dict(corpus=common_pb2.CorpusSource(shards=common_pb2.CorpusShards(files=[corpus.uri, corpus.uri]))),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "no such file": (
            dict(scores=common_pb2.ArtifactRef(uri=str(stack.store / "none.parquet"))),
            grpc.StatusCode.NOT_FOUND,
        ),
    }
    for name, (fields, code) in cases.items():
        request = trainer_pb2.ScoreSliceRequest(checkpoint_id=checkpoint, corpus=corpus, seed=3, scores=scores)
        for key, value in fields.items():
            getattr(request, key).CopyFrom(value) if not isinstance(value, str) else setattr(request, key, value)
        with pytest.raises(grpc.RpcError) as raised:
            stack.trainer.ScoreSlice(request)
        assert raised.value.code() == code, (name, raised.value.details())
        assert "zorblax" not in str(raised.value.details())  # no file content in errors
    assert (
        stack.trainer.ScoreSlice(
            trainer_pb2.ScoreSliceRequest(checkpoint_id=checkpoint, corpus=corpus, seed=3, scores=scores)
        ).texts_scored
        == 60
    )
