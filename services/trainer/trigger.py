"""The training trigger: does a new slice hold something the model has not learnt?

The slice's texts are masked and scored in eval mode (scoring.py) and split into words (words.py),
and four signals are tested against the checkpoint's memory (loss_memory.py), each calibrated on
text of the period the model was trained on:

| signal        | statistic                                                    | null from                    |
|---------------|--------------------------------------------------------------|------------------------------|
| slice loss    | mean over texts of each text's mean excess MLM loss over its tokens' expected loss | held-out texts |
| token loss    | each token's mean loss against its expected loss (t test; z widened by the calibration's inflation); Benjamini-Hochberg over the tokens with min_token_count occurrences; a spike must also exceed min_token_effect nats | held-out texts |
| unseen words  | share of the slice's words the memory has not seen (pooled over texts) | the trained texts, leave one out |
| new words     | each word rare in the memory: how many slice texts hold it (exact binomial tail); Benjamini-Hochberg over the words that could be significant (Tarone) | exact under no change |

The slice-level tests are one-sided Welch t tests (significance.py) with a minimum effect, so
that a huge slice does not fire on a difference too small to matter. The four tests share the
false-fire rate (half to the unseen words, a sixth to each other test; a signal the memory cannot
test, such as words in a memory written before they were remembered, gives its share to the
others), so a slice of the training period fires with probability at most about
`false_fire_rate` (measured: benchmarks/trigger_power.py). The decision says which signals fired,
on which tokens and words, and by how much.

A checkpoint whose memory is not calibrated (imported, never trained here) always fires: nothing
says the slice is familiar to it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from driftlm.services.core.errors import InvalidArgumentError

from .loss_memory import PRIOR_OCCURRENCES, Calibration, LossMemory
from .novelty import WordTest, new_word_test, unseen_share
from .scoring import Occurrences
from .significance import WelchTest, benjamini_hochberg, sample_welch_test, welch_test
from .words import TextWords, WordSplitter

if TYPE_CHECKING:
    from .run_context import Vocabulary

# Genomic control: the median of a chi-square with one degree of freedom.
_CHI2_MEDIAN = 0.454936
# Tokens with at least this many held-out occurrences measure the per-token tests' inflation, and
# at least this many such tokens are needed to measure it at all.
_INFLATION_MIN_COUNT = 5
_INFLATION_MIN_TOKENS = 20


class Signal(enum.Enum):
    """What fired the trigger."""

    SLICE_LOSS = "slice loss"
    TOKEN_LOSS = "token loss"
    UNSEEN_WORDS = "unseen words"
    NEW_WORDS = "new words"


# Each test's share of the false-fire rate (weighted Bonferroni: the shares of the tests a memory
# can run add up to the rate). On real text the share of unseen words is what drift moves
# (benchmarks/trigger_power.py: giving it half instead of a quarter took slices of 600 texts with a
# fifth from ten years later from 16 to 19 fires in 20); the others keep a sixth each for a word
# used in a new sense, one strong new term, or a model that finds everything harder.
_SHARES = {Signal.SLICE_LOSS: 1.0, Signal.TOKEN_LOSS: 1.0, Signal.UNSEEN_WORDS: 3.0, Signal.NEW_WORDS: 1.0}


@dataclass(frozen=True)
class TriggerOptions:
    """How ScoreSlice samples, masks and decides; see trigger_options for the ranges."""

    max_texts: int = 2000
    # Pieces per text; 0 means min(128, the model's positions).
    max_length: int = 0
    mask_fraction: float = 0.15
    seed: int = 0
    top_spikes: int = 20
    # Probability that a slice of the training period fires.
    false_fire_rate: float = 0.01
    # Smallest slice score above the calibration mean that fires, nats per piece.
    min_effect: float = 0.05
    # Occurrences a token needs in the slice to be tested on its own.
    min_token_count: int = 5
    # A token spikes above this z; 0 means Benjamini-Hochberg at its share of false_fire_rate.
    spike_z: float = 0.0
    # Smallest excess loss of a spiking token over its expected loss, nats.
    min_token_effect: float = 0.5
    # Texts of the slice a word must be in to be tested on its own.
    min_word_texts: int = 3
    # Smallest rise in the per-text share of unseen words that fires.
    min_novelty_effect: float = 0.005


def trigger_options(
    *,
    max_texts: int = 0,
    max_length: int = 0,
    mask_fraction: float = 0.0,
    seed: int = 0,
    top_spikes: int = 0,
    false_fire_rate: float = 0.0,
    min_effect: float = 0.0,
    min_token_count: int = 0,
    spike_z: float = 0.0,
    min_token_effect: float = 0.0,
    min_word_texts: int = 0,
    min_novelty_effect: float = 0.0,
) -> TriggerOptions:
    """The options a request asks for, 0 meaning the default.

    Raises:
        InvalidArgumentError: a value out of its range; the message says the range and the default.
    """
    default = TriggerOptions()
    options = TriggerOptions(
        max_texts=max_texts or default.max_texts,
        max_length=max_length,
        mask_fraction=mask_fraction or default.mask_fraction,
        seed=seed,
        top_spikes=top_spikes or default.top_spikes,
        false_fire_rate=false_fire_rate or default.false_fire_rate,
        min_effect=min_effect or default.min_effect,
        min_token_count=min_token_count or default.min_token_count,
        spike_z=spike_z,
        min_token_effect=min_token_effect or default.min_token_effect,
        min_word_texts=min_word_texts or default.min_word_texts,
        min_novelty_effect=min_novelty_effect or default.min_novelty_effect,
    )
    checks = [
        ("max_texts", 1 <= options.max_texts <= 1_000_000, "[1, 1000000]", default.max_texts, max_texts),
        ("max_length", options.max_length == 0 or 4 <= options.max_length <= 8192, "[4, 8192]", 128, max_length),
        ("mask_fraction", 0 < options.mask_fraction < 1, "(0, 1)", default.mask_fraction, mask_fraction),
        ("top_spikes", 1 <= options.top_spikes <= 10_000, "[1, 10000]", default.top_spikes, top_spikes),
        ("false_fire_rate", 0 < options.false_fire_rate < 0.5, "(0, 0.5)", default.false_fire_rate, false_fire_rate),
        ("min_effect", _non_negative(options.min_effect), "[0, inf)", default.min_effect, min_effect),
        (
            "min_token_count",
            2 <= options.min_token_count <= 1_000_000,
            "[2, 1000000]",
            default.min_token_count,
            min_token_count,
        ),
        ("spike_z", _non_negative(options.spike_z), "[0, inf)", "Benjamini-Hochberg", spike_z),
        (
            "min_token_effect",
            _non_negative(options.min_token_effect),
            "[0, inf)",
            default.min_token_effect,
            min_token_effect,
        ),
        (
            "min_word_texts",
            1 <= options.min_word_texts <= 1_000_000,
            "[1, 1000000]",
            default.min_word_texts,
            min_word_texts,
        ),
        (
            "min_novelty_effect",
            _non_negative(options.min_novelty_effect) and options.min_novelty_effect <= 1,
            "[0, 1]",
            default.min_novelty_effect,
            min_novelty_effect,
        ),
    ]
    for field, inside, allowed, fallback, given in checks:
        if not inside:
            raise InvalidArgumentError(field, f"must be in {allowed} (0 means {fallback}), got {given}")
    return options


def _non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


@dataclass(frozen=True)
class Spike:
    """A token whose loss spiked."""

    token_id: int
    slice_loss: float
    # Its expected loss on new text of the training period (remembered mean plus the offset).
    remembered_loss: float
    # Standardised difference (after the calibration's inflation), and its one-sided p-value.
    z: float
    p_value: float
    occurrences: int

    @property
    def excess(self) -> float:
        """The effect: nats above what the memory expects."""
        return self.slice_loss - self.remembered_loss


@dataclass(frozen=True)
class TokenTest:
    """The per-token loss test over a slice."""

    # The spiking tokens, most significant first (at most top_spikes), and how many spiked in all.
    spikes: list[Spike]
    spike_count: int
    # Occurrences of spiking tokens, as a fraction of the scored ones.
    spike_fraction: float
    tokens_tested: int
    # The z the most significant token had to exceed (the first Benjamini-Hochberg cut, or spike_z).
    z_threshold: float


@dataclass(frozen=True)
class SliceScore:
    """The trigger's view of a slice."""

    # Mean loss of the scored occurrences, and the mean of their tokens' expected losses.
    slice_loss: float
    remembered_loss: float
    # The slice-loss test: mean over texts of the per-text mean excess loss (nats).
    loss: WelchTest
    null_mean: float
    null_sd: float
    texts_scored: int
    tokens: TokenTest
    # The unseen-words test: mean over texts of each text's share of unseen words.
    unseen: WelchTest
    unseen_null_mean: float
    unseen_null_sd: float
    texts_with_words: int
    words: WordTest
    # Fraction of scored occurrences of pieces the memory has never seen.
    novel_fraction: float
    scored_tokens: int
    calibrated: bool
    knows_words: bool
    signals: tuple[Signal, ...]
    fire: bool
    # Why it fires or not, in words.
    reason: str


def excess_per_text(memory: LossMemory, occurrences: Occurrences) -> np.ndarray:
    """Each scored text's mean excess loss over its tokens' expected losses (texts in ascending order)."""
    excess = occurrences.losses - memory.expected()[occurrences.token_ids]
    texts, inverse = np.unique(occurrences.texts, return_inverse=True)
    return np.bincount(inverse, weights=excess, minlength=texts.size) / np.bincount(inverse, minlength=texts.size)


@dataclass(frozen=True)
class _TokenStatistics:
    """Per token present in some occurrences: its count, mean loss, expectation and p-value."""

    token_ids: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    expected: np.ndarray
    # One-sided p-value of a loss this high, and its normal score (after the inflation).
    p_values: np.ndarray
    z: np.ndarray


def _token_statistics(
    memory: LossMemory, occurrences: Occurrences, *, offset: float, inflation: float
) -> _TokenStatistics:
    """Each token's mean loss against its expectation: a t test with the larger of the two
    variances (so a handful of occurrences does not pass for a precise mean), turned into a normal
    score and divided by sqrt(inflation)."""
    present, inverse, counts = np.unique(occurrences.token_ids, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=occurrences.losses) / counts
    squares = np.bincount(inverse, weights=occurrences.losses**2) / counts
    own_variance = np.maximum(squares - means**2, 0.0) * counts / np.maximum(counts - 1, 1)
    remembered_variance = memory.variance()[present]
    expected = memory.expected()[present] + offset
    standard_error = np.sqrt(
        np.maximum(own_variance, remembered_variance) / counts
        + remembered_variance / (memory.count[present] + PRIOR_OCCURRENCES)
    )
    t = (means - expected) / standard_error
    normal_score = stats.norm.isf(stats.t.sf(t, np.maximum(counts - 1, 1))) / math.sqrt(inflation)
    return _TokenStatistics(present, counts, means, expected, stats.norm.sf(normal_score), normal_score)


def calibrated_memory(memory: LossMemory, held_out: Occurrences, trained_words: TextWords | None) -> LossMemory:
    """The memory calibrated: the loss tests on held-out occurrences (texts the memory does not
    hold), the unseen-words test on the trained texts, each left out of the memory in turn."""
    per_text = excess_per_text(memory, held_out)
    offset = float((held_out.losses - memory.expected()[held_out.token_ids]).mean()) if held_out.losses.size else 0.0
    tokens = _token_statistics(memory, held_out, offset=offset, inflation=1.0)
    counted = tokens.z[tokens.counts >= _INFLATION_MIN_COUNT]
    inflation = max(1.0, float(np.median(counted**2)) / _CHI2_MEDIAN) if counted.size >= _INFLATION_MIN_TOKENS else 1.0
    novelty = unseen_share(trained_words, memory.words, leave_one_out=True) if trained_words is not None else None
    return memory.with_calibration(
        Calibration(
            null_mean=float(per_text.mean()) if per_text.size else 0.0,
            null_sd=_sd(per_text),
            texts=int(per_text.size),
            token_offset=offset,
            token_inflation=inflation,
            novelty_mean=novelty.share if novelty else 0.0,
            novelty_sd=math.sqrt(novelty.unit_variance) if novelty else 0.0,
            novelty_texts=novelty.texts if novelty else 0,
        )
    )


def _sd(values: np.ndarray) -> float:
    sd = float(values.std(ddof=1)) if values.size >= 2 else 0.0
    return sd if math.isfinite(sd) else 0.0


def _token_test(memory: LossMemory, occurrences: Occurrences, options: TriggerOptions, level: float) -> TokenTest:
    calibration = memory.calibration
    tokens = _token_statistics(
        memory, occurrences, offset=calibration.token_offset, inflation=calibration.token_inflation
    )
    tested = tokens.counts >= options.min_token_count
    tokens_tested = int(tested.sum())
    large = tokens.means - tokens.expected >= options.min_token_effect
    if options.spike_z:
        spiking, z_threshold = tested & large & (tokens.z > options.spike_z), options.spike_z
    else:
        spiking = np.zeros(tokens.token_ids.size, dtype=bool)
        spiking[tested] = benjamini_hochberg(tokens.p_values[tested], level)
        spiking &= large
        z_threshold = float(stats.norm.isf(level / tokens_tested)) if tokens_tested else math.inf
    order = np.flatnonzero(spiking)[np.argsort(tokens.p_values[spiking], kind="stable")][: options.top_spikes]
    spikes = [
        Spike(
            token_id=int(tokens.token_ids[i]),
            slice_loss=float(tokens.means[i]),
            remembered_loss=float(tokens.expected[i]),
            z=float(tokens.z[i]),
            p_value=float(tokens.p_values[i]),
            occurrences=int(tokens.counts[i]),
        )
        for i in order
    ]
    fraction = float(tokens.counts[spiking].sum()) / max(int(tokens.counts.sum()), 1)
    return TokenTest(spikes, int(spiking.sum()), fraction, tokens_tested, z_threshold)


@dataclass(frozen=True)
class ScoredSlice:
    """The trigger's decision, with each spiking token's piece."""

    score: SliceScore
    pieces: dict[int, str]


def judge_slice(
    texts: Sequence[str], occurrences: Occurrences, vocabulary: Vocabulary, memory: LossMemory, options: TriggerOptions
) -> ScoredSlice:
    """The trigger over scored texts: their words as the vocabulary's tokenizer splits them, the
    tests, and the spiking tokens named."""
    score = score_slice(occurrences, WordSplitter(vocabulary.tokenizer_json).text_words(texts), memory, options)
    names = {index: piece for piece, index in vocabulary.pieces.items()}
    return ScoredSlice(score, {s.token_id: names.get(s.token_id, "") for s in score.tokens.spikes})


def score_slice(occurrences: Occurrences, words: TextWords, memory: LossMemory, options: TriggerOptions) -> SliceScore:
    """Test the slice's occurrences and words against the memory; see the module docstring."""
    calibration = memory.calibration
    signals = [
        *([Signal.SLICE_LOSS, Signal.TOKEN_LOSS] if memory.calibrated else []),
        *([Signal.UNSEEN_WORDS, Signal.NEW_WORDS] if memory.knows_words else []),
    ]
    weight = sum(_SHARES[signal] for signal in signals)
    level: dict[Signal, float] = {signal: options.false_fire_rate * _SHARES[signal] / weight for signal in signals}
    per_text = excess_per_text(memory, occurrences)
    loss = sample_welch_test(
        per_text,
        null_mean=calibration.null_mean,
        null_sd=calibration.null_sd,
        null_count=calibration.texts,
        level=level.get(Signal.SLICE_LOSS, options.false_fire_rate),
        min_effect=options.min_effect,
    )
    tokens = _token_test(memory, occurrences, options, level.get(Signal.TOKEN_LOSS, options.false_fire_rate))
    share = unseen_share(words, memory.words)
    unseen = welch_test(
        share.share,
        share.unit_variance,
        share.texts,
        null_mean=calibration.novelty_mean,
        null_sd=calibration.novelty_sd,
        null_count=calibration.novelty_texts,
        level=level.get(Signal.UNSEEN_WORDS, options.false_fire_rate),
        min_effect=options.min_novelty_effect,
    )
    new_words = new_word_test(
        words,
        memory.words,
        level=level.get(Signal.NEW_WORDS, options.false_fire_rate),
        min_texts=options.min_word_texts,
        top=options.top_spikes,
    )
    fired_by = {
        Signal.SLICE_LOSS: loss.fire,
        Signal.TOKEN_LOSS: tokens.spike_count > 0,
        Signal.UNSEEN_WORDS: unseen.fire,
        Signal.NEW_WORDS: new_words.novel_word_count > 0,
    }
    fired = tuple(signal for signal in signals if fired_by[signal])
    scored = int(occurrences.losses.size)
    expected = memory.expected()
    return SliceScore(
        slice_loss=float(occurrences.losses.mean()) if scored else 0.0,
        remembered_loss=float(expected[occurrences.token_ids].mean()) if scored else 0.0,
        loss=loss,
        null_mean=calibration.null_mean,
        null_sd=calibration.null_sd,
        texts_scored=int(per_text.size),
        tokens=tokens,
        unseen=unseen,
        unseen_null_mean=calibration.novelty_mean,
        unseen_null_sd=calibration.novelty_sd,
        texts_with_words=share.texts,
        words=new_words,
        novel_fraction=float(np.count_nonzero(memory.count[occurrences.token_ids] == 0)) / max(scored, 1),
        scored_tokens=scored,
        calibrated=memory.calibrated,
        knows_words=memory.knows_words,
        signals=fired,
        fire=bool(fired) or not signals,
        reason=_reason(signals, fired, loss, tokens, unseen, new_words),
    )


def _reason(
    tested: Sequence[Signal],
    fired: Sequence[Signal],
    loss: WelchTest,
    tokens: TokenTest,
    unseen: WelchTest,
    words: WordTest,
) -> str:
    """Why the trigger fires or not, in words."""
    if not tested:
        return "the checkpoint's memory is not calibrated (imported, never trained here): train it"
    said = {
        Signal.SLICE_LOSS: f"slice loss {loss.mean:.4f} {'>' if loss.fire else '<='} {loss.threshold:.4f} nats (z = {loss.z:.1f})",
        Signal.TOKEN_LOSS: (
            f"{tokens.spike_count} token(s) spike, most z = {tokens.spikes[0].z:.1f}, +{tokens.spikes[0].excess:.2f} nats"
            if tokens.spikes
            else f"no token of {tokens.tokens_tested} tested spikes"
        ),
        Signal.UNSEEN_WORDS: f"share of unseen words {unseen.mean:.4f} {'>' if unseen.fire else '<='} {unseen.threshold:.4f} (z = {unseen.z:.1f})",
        Signal.NEW_WORDS: (
            f"{words.novel_word_count} new word(s): "
            + ", ".join(
                f"{w.word} in {w.slice_texts} texts ({w.memory_texts:.0f} remembered)" for w in words.novel_words[:3]
            )
            if words.novel_words
            else f"no new word among {words.words_tested} testable"
        ),
    }
    if fired:
        return "fires on " + "; ".join(f"{signal.value}: {said[signal]}" for signal in fired)
    return "silent: " + "; ".join(said[signal] for signal in tested)


def sample_texts(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most `limit` of the non-empty texts, drawn uniformly, in their order."""
    kept = [t for t in texts if t.strip()]
    if len(kept) <= limit:
        return kept
    chosen = np.sort(np.random.default_rng(seed).choice(len(kept), limit, replace=False))
    return [kept[i] for i in chosen]
