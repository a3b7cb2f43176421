"""Bootstrap intervals of per-word figures: they hold the truth about as often as they say, and a
paired difference is told apart from none."""

from __future__ import annotations

import numpy as np

from driftlm.loop.intervals import paired_difference_interval, ratio_interval


def _texts(rng: np.random.Generator, count: int, per_word: float) -> tuple[np.ndarray, np.ndarray]:
    words = rng.integers(3, 30, count).astype(np.float64)
    return rng.normal(per_word * words, 2.0 * np.sqrt(words)), words


def test_the_ratio_interval_holds_the_true_per_word_value_about_95_times_in_100() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for seed in range(200):
        log_likelihoods, words = _texts(rng, 100, -6.0)
        low, high = ratio_interval(log_likelihoods, words, seed=seed)
        covered += low <= -6.0 <= high
    assert 180 <= covered <= 198, covered  # Binomial(200, 0.95): 190 +- 3


def test_a_paired_difference_is_found_where_there_is_one_and_not_where_there_is_none() -> None:
    rng = np.random.default_rng(1)
    first, words = _texts(rng, 100, -6.0)
    text_effects = rng.normal(0, 3.0, 100) * np.sqrt(words)  # the texts vary more than the arms
    same = first + text_effects + rng.normal(0, 0.3, 100)
    better = same + 0.2 * words  # 0.2 nats per word better on every text
    difference, low, high = paired_difference_interval(better, words, same, words, seed=0)
    assert low > 0 and abs(difference - 0.2) < 1e-9
    difference, low, high = paired_difference_interval(same + rng.normal(0, 0.3, 100), words, same, words, seed=0)
    assert low < 0 < high
    # Unpaired intervals of the two better/same arms overlap: pairing is what tells them apart.
    assert ratio_interval(better, words)[0] < ratio_interval(same, words)[1]


def test_too_few_texts_give_no_interval() -> None:
    assert all(np.isnan(ratio_interval(np.array([-3.0]), np.array([2.0]))))
