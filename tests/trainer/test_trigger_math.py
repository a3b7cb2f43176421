"""The trigger's decision on simulated texts, where the truth is known: how often a slice of the
training period fires (the calibration holds), and that each signal fires on the drift it is for.

Tokens are words here (Zipf-distributed, as words are); each has a loss distribution of its own
(gamma, skewed as MLM losses are). The memory is built as a run builds it: every trained text,
decayed into what the base remembered; the loss tests calibrated on held-out texts, which the
model does slightly worse on than on texts it trained on; the novelty test on the trained texts,
each left out in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy import stats

from driftlm.services.trainer.loss_memory import LossMemory
from driftlm.services.trainer.novelty import new_word_test, unseen_share
from driftlm.services.trainer.scoring import Occurrences
from driftlm.services.trainer.significance import benjamini_hochberg, sample_welch_test, tarone_tests
from driftlm.services.trainer.trigger import Signal, calibrated_memory, score_slice, trigger_options
from driftlm.services.trainer.word_memory import WordMemory
from driftlm.services.trainer.words import TextWords, word_hash

VOCAB = 2000
TOKEN_MEAN = np.random.default_rng(0).uniform(0.5, 7.0, VOCAB)  # each token's mean loss, nats
FREQUENCY = 1 / np.arange(1, VOCAB + 1) ** 1.1
FREQUENCY /= FREQUENCY.sum()
NEW = VOCAB  # token ids from here on are words the training period never had
HASHES = {i: word_hash(f"w{i}") for i in range(VOCAB + 500)}
# The model does this much worse on texts it did not train on (nats): what calibration absorbs.
MEMORISED = 0.15


@dataclass(frozen=True)
class Texts:
    """Simulated texts: their scored occurrences and their words."""

    occurrences: Occurrences
    words: TextWords


def _texts(
    rng: np.random.Generator,
    count: int,
    *,
    trained: bool = False,
    shift: float = 0.0,
    shifted_token: int | None = None,
    token_shift: float = 0.0,
    new_word_share: float = 0.0,
    new_words: tuple[int, ...] = (NEW,),
    boosted: int | None = None,
) -> Texts:
    """`count` texts of 6-20 words; each occurrence's loss is drawn from its token's distribution,
    plus `shift` everywhere and `token_shift` on one token. A share of texts gets one of `new_words`;
    `boosted` is put into half of the texts (a known word grown common)."""
    lengths = rng.integers(6, 21, count)
    token_ids = rng.choice(VOCAB, int(lengths.sum()), p=FREQUENCY)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    for text in np.flatnonzero(rng.random(count) < new_word_share):
        token_ids[starts[text]] = new_words[int(rng.integers(len(new_words)))]
    if boosted is not None:
        token_ids[starts[rng.random(count) < 0.5] + 1] = boosted
    means = np.where(token_ids < VOCAB, TOKEN_MEAN[np.minimum(token_ids, VOCAB - 1)], 9.0) + shift
    means = means + (0.0 if trained else MEMORISED)
    if shifted_token is not None:
        means = means + np.where(token_ids == shifted_token, token_shift, 0.0)
    losses = rng.gamma(2.0, np.maximum(means, 0.05) / 2.0)
    text_of = np.repeat(np.arange(count), lengths)
    hashes, offsets = [], [0]
    for text in range(count):
        distinct = np.unique(token_ids[text_of == text])
        hashes.extend(HASHES[int(t)] for t in distinct)
        offsets.append(len(hashes))
    spelling = {h: f"w{i}" for i, h in HASHES.items()}
    words = TextWords(np.array(hashes, np.uint64), np.array(offsets), np.ones(len(hashes), np.int64), spelling)
    # The memory scores a fifth of the pieces, a slice every piece (ScoreSlice masks, here all).
    return Texts(Occurrences(token_ids, losses, text_of), words)


def _memory(seed: int, *, trained: int = 1500, held_out: int = 300) -> LossMemory:
    rng = np.random.default_rng(seed)
    run = _texts(rng, trained, trained=True)
    latest = LossMemory.from_occurrences(
        VOCAB + 500, run.occurrences.token_ids, run.occurrences.losses, WordMemory.of_texts(run.words)
    )
    older = _texts(rng, 800, trained=True)
    base = LossMemory.from_occurrences(
        VOCAB + 500, older.occurrences.token_ids, older.occurrences.losses, WordMemory.of_texts(older.words)
    )
    memory = base.merged(latest, decay=0.5)
    return calibrated_memory(memory, _texts(rng, held_out).occurrences, run.words)


@pytest.fixture(scope="module")
def memory() -> LossMemory:
    return _memory(1)


@pytest.mark.parametrize(("rate", "most"), [(0.05, 40), (0.2, 120)])
def test_slices_of_the_training_period_fire_at_most_at_the_false_fire_rate(
    memory: LossMemory, rate: float, most: int
) -> None:
    """400 slices of the training period: the trigger fires on at most about rate * 400 of them,
    and on more at a looser rate. Without its calibration it would fire on every one: the model
    does MEMORISED nats worse on new text than on what it trained on."""
    options = trigger_options(false_fire_rate=rate, min_effect=1e-9, min_novelty_effect=1e-9, min_token_effect=1e-9)
    rng = np.random.default_rng(2)
    decisions = [score_slice(*_slice(_texts(rng, 300)), memory, options) for _ in range(400)]
    fired = sum(d.fire for d in decisions)
    assert fired <= most, (fired, [d.reason for d in decisions if d.fire][:5])
    # The same memory with its null means at zero: the model's better loss on its own texts and
    # the Zipf tail of rare words would fire every slice.
    calibration = memory.calibration
    naive = replace(calibration, null_mean=0.0, token_offset=0.0, novelty_mean=0.0)
    uncalibrated = LossMemory(memory.count, memory.total, memory.total_squared, memory.words, naive)
    assert all(score_slice(*_slice(_texts(rng, 300)), uncalibrated, options).fire for _ in range(20))


def _slice(texts: Texts) -> tuple[Occurrences, TextWords]:
    return texts.occurrences, texts.words


def test_looser_rates_fire_more_often_on_a_faint_drift(memory: LossMemory) -> None:
    """The rate is a real knob: a faint drift (2% of texts carry one new word each) fires
    more often at 0.2 than at 0.01."""
    rng = np.random.default_rng(3)
    slices = [_texts(rng, 300, new_word_share=0.02, new_words=tuple(range(NEW, NEW + 400))) for _ in range(60)]
    strict, loose = (
        sum(score_slice(*_slice(s), memory, trigger_options(false_fire_rate=r)).fire for s in slices)
        for r in (0.01, 0.2)
    )
    assert strict < loose


def test_a_slice_whose_losses_all_rose_fires_on_its_slice_loss(memory: LossMemory) -> None:
    options = trigger_options()
    rng = np.random.default_rng(3)
    same, shifted = (
        score_slice(*_slice(_texts(rng, 300)), memory, options),
        score_slice(*_slice(_texts(rng, 300, shift=0.6)), memory, options),
    )
    assert not same.fire and same.signals == ()
    assert shifted.fire and Signal.SLICE_LOSS in shifted.signals and shifted.reason.startswith("fires on slice loss")
    assert shifted.loss.mean - same.loss.mean == pytest.approx(0.6, abs=0.25)


def test_one_word_used_differently_fires_on_its_token_and_is_named(memory: LossMemory) -> None:
    options = trigger_options()
    rng = np.random.default_rng(4)
    word = 20  # a predictable word (0.7 nats) in 20-30 of 300 texts, now in unpredictable company
    score = score_slice(*_slice(_texts(rng, 300, shifted_token=word, token_shift=3.0)), memory, options)
    assert not score.loss.fire  # the slice as a whole is not surprising enough
    assert score.fire and score.signals == (Signal.TOKEN_LOSS,), score.reason
    assert [s.token_id for s in score.tokens.spikes] == [word]
    assert score.tokens.spikes[0].excess == pytest.approx(3.0, abs=1.0)


def test_a_new_word_in_a_tenth_of_the_texts_fires_and_is_named(memory: LossMemory) -> None:
    options = trigger_options()
    rng = np.random.default_rng(5)
    score = score_slice(*_slice(_texts(rng, 300, new_word_share=0.1)), memory, options)
    assert score.fire and Signal.NEW_WORDS in score.signals, score.reason
    [new] = score.words.novel_words
    assert new.word == f"w{NEW}" and new.memory_texts == 0 and 20 <= new.slice_texts <= 45
    assert new.p_value < score.words.p_threshold
    assert f"w{NEW} in {new.slice_texts} texts" in score.reason


def test_many_new_words_each_rare_fire_on_the_share_of_unseen_words(memory: LossMemory) -> None:
    """Diffuse novelty: 15% of the texts hold a new word, each word a different one, so no word
    is significant on its own; the share of unseen words is."""
    options = trigger_options()
    rng = np.random.default_rng(6)
    score = score_slice(
        *_slice(_texts(rng, 300, new_word_share=0.15, new_words=tuple(range(NEW, NEW + 500)))), memory, options
    )
    assert score.fire and Signal.UNSEEN_WORDS in score.signals, score.reason
    assert score.unseen.mean > score.unseen.threshold > score.unseen_null_mean


def test_a_known_word_grown_common_does_not_fire(memory: LossMemory) -> None:
    """A product that sells better is not news: a word the memory holds in a seventh of its texts,
    now in more than half, is not tested on its own (its loss is what the model expects)."""
    options = trigger_options()
    rng = np.random.default_rng(7)
    boosted = 10
    assert memory.words.lookup(np.array([HASHES[boosted]], np.uint64))[0] / memory.words.texts > 0.1
    fired = [score_slice(*_slice(_texts(rng, 300, boosted=boosted)), memory, options) for _ in range(10)]
    assert sum(d.fire for d in fired) <= 1, [d.reason for d in fired]


def test_leave_one_out_judges_a_trained_text_as_a_new_text_of_its_period() -> None:
    """The novelty calibration: over many draws, the mean share of unseen words of held-out texts
    against a memory and of the trained texts left out one at a time agree."""
    rng = np.random.default_rng(8)
    loo, fresh = [], []
    for _ in range(20):
        trained, new = _texts(rng, 400, trained=True), _texts(rng, 400)
        words = WordMemory.of_texts(trained.words)
        loo.append(unseen_share(trained.words, words, leave_one_out=True).share)
        fresh.append(unseen_share(new.words, words).share)
    assert np.mean(loo) == pytest.approx(np.mean(fresh), rel=0.05)
    assert np.mean(loo) > 0.01  # there is novelty to calibrate (the Zipf tail)


def test_a_memory_carries_what_it_saw_with_decay() -> None:
    first = WordMemory(np.array([1, 5], np.uint64), np.array([4.0, 2.0]), 10.0)
    second = WordMemory(np.array([5, 9], np.uint64), np.array([1.0, 3.0]), 6.0)
    merged = first.merged(second, decay=0.5)
    assert merged.hashes.tolist() == [1, 5, 9] and merged.texts_with.tolist() == [2.0, 2.0, 3.0]
    assert merged.texts == 11.0
    assert merged.lookup(np.array([9, 2, 1], np.uint64)).tolist() == [3.0, 0.0, 2.0]
    tokens = LossMemory.from_occurrences(3, np.array([0, 0, 2]), np.array([1.0, 3.0, 5.0]))
    again = tokens.merged(LossMemory.from_occurrences(3, np.array([0]), np.array([4.0])), decay=0.5)
    assert again.count.tolist() == [2.0, 0.0, 0.5] and again.total.tolist() == [6.0, 0.0, 2.5]


def test_tests_match_their_references() -> None:
    rng = np.random.default_rng(9)
    p_values = rng.uniform(size=200) ** 3
    ours = benjamini_hochberg(p_values, 0.1)
    reference = stats.false_discovery_control(p_values) <= 0.1
    assert ours.tolist() == reference.tolist() and ours.any()
    # Tarone: of 10 hypotheses, 3 can reach 0.05 / 3; the others cannot go below 0.1.
    log_min = np.log(np.array([1e-4, 1e-3, 1e-2, *[0.1] * 7]))
    assert tarone_tests(log_min, 0.05) == 3
    sample, null = rng.normal(0.3, 1, 50), rng.normal(0, 1, 80)
    test = sample_welch_test(
        sample, null_mean=null.mean(), null_sd=null.std(ddof=1), null_count=80, level=0.05, min_effect=0
    )
    reference_p = stats.ttest_ind(sample, null, equal_var=False, alternative="greater").pvalue
    assert (test.fire, test.z) == (
        reference_p < 0.05,
        pytest.approx(stats.ttest_ind(sample, null, equal_var=False).statistic),
    )


def test_a_new_word_test_with_nothing_remembered_tests_nothing() -> None:
    texts = _texts(np.random.default_rng(10), 50)
    assert new_word_test(texts.words, WordMemory.empty(), level=0.01, min_texts=3, top=5).novel_words == []


@pytest.mark.parametrize("rate", [1e-300, 5e-324, 0.4999999])
def test_extreme_false_fire_rates_are_answered(memory: LossMemory, rate: float) -> None:
    """Any rate in (0, 0.5) is a valid request: quantiles come from survival functions, so a rate
    of 1e-300 neither fails (1 - rate rounds to 1) nor fires on a slice of the training period."""
    score = score_slice(*_slice(_texts(np.random.default_rng(11), 200)), memory, trigger_options(false_fire_rate=rate))
    if rate < 1e-100:
        assert not score.fire and score.loss.threshold > score.loss.mean and score.words.novel_word_count == 0
    assert score.reason.startswith(("silent", "fires on"))
