"""The weighted draws: exact distributions (checked statistically), reproducibility, bad input."""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from driftlm.kernels import InvalidWeightsError, SampleSizeError, draw_with_replacement, draw_without_replacement

DRAWS = [draw_with_replacement, draw_without_replacement]
weight_vectors = arrays(
    np.float64, st.integers(1, 60), elements=st.one_of(st.just(0.0), st.floats(1e-6, 1e6, allow_nan=False))
).filter(lambda w: (w > 0).any())


@settings(deadline=None, max_examples=80)
@given(weights=weight_vectors, k=st.integers(1, 40), seed=st.integers(0, 2**64 - 1))
def test_zero_weights_are_never_drawn_and_seeds_reproduce(weights: np.ndarray, k: int, seed: int) -> None:
    positive = int((weights > 0).sum())
    for draw, size in ((draw_with_replacement, k), (draw_without_replacement, min(k, positive))):
        drawn = draw(weights, size, seed)
        assert drawn.dtype == np.int64 and drawn.shape == (size,)
        assert (weights[drawn] > 0).all()
        np.testing.assert_array_equal(drawn, draw(weights, size, seed))


@settings(deadline=None, max_examples=50)
@given(weights=weight_vectors, seed=st.integers(0, 2**64 - 1))
def test_without_replacement_is_distinct_and_can_take_every_positive_item(weights: np.ndarray, seed: int) -> None:
    positive = int((weights > 0).sum())
    drawn = draw_without_replacement(weights, positive, seed)
    assert sorted(drawn.tolist()) == np.flatnonzero(weights > 0).tolist()


@pytest.mark.parametrize("draw", DRAWS)
def test_float32_and_float64_weights_give_the_same_draw(draw) -> None:  # type: ignore[no-untyped-def]
    weights = np.random.default_rng(1).random(1000)
    np.testing.assert_array_equal(draw(weights, 50, 3), draw(weights.astype(np.float32).astype(np.float64), 50, 3))
    assert draw(weights.astype(np.float32), 50, 3).shape == (50,)


@pytest.mark.parametrize("draw", DRAWS)
def test_same_draw_on_any_thread_count(draw) -> None:  # type: ignore[no-untyped-def]
    weights = np.random.default_rng(2).random(200_000)
    threads = numba.get_num_threads()
    expected = draw(weights, 5000, 11)
    try:
        numba.set_num_threads(1)
        single = draw(weights, 5000, 11)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(single, expected)


@pytest.mark.parametrize("draw", DRAWS)
def test_different_seeds_give_different_draws(draw) -> None:  # type: ignore[no-untyped-def]
    weights = np.ones(10_000)
    assert not np.array_equal(draw(weights, 100, 1), draw(weights, 100, 2))


def test_with_replacement_frequencies_fit_the_weights() -> None:
    """Chi-square goodness of fit of 200,000 independent draws from 25 items."""
    weights = np.arange(25, dtype=np.float64) ** 1.5
    draws = 200_000
    counts = np.bincount(draw_with_replacement(weights, draws, seed=5), minlength=weights.size)
    assert counts[0] == 0
    expected = draws * weights[1:] / weights.sum()
    assert stats.chisquare(counts[1:], expected).pvalue > 1e-3


def test_with_replacement_order_is_exchangeable() -> None:
    """The draws come out shuffled: the first half of a draw fits the weights on its own."""
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    drawn = draw_with_replacement(weights, 40_000, seed=9)
    first_half = np.bincount(drawn[:20_000], minlength=4)
    assert stats.chisquare(first_half, 20_000 * weights / weights.sum()).pvalue > 1e-3


def test_without_replacement_inclusion_matches_numpy_choice() -> None:
    """Per-item inclusion frequencies of k=4 of 10 match NumPy's successive draws."""
    weights = np.array([0.5, 1, 1, 2, 3, 5, 8, 0.25, 4, 6], dtype=np.float64)
    trials, k = 20_000, 4
    ours = np.zeros(weights.size)
    theirs = np.zeros(weights.size)
    rng = np.random.default_rng(0)
    for trial in range(trials):
        ours[draw_without_replacement(weights, k, seed=trial)] += 1
        theirs[rng.choice(weights.size, k, replace=False, p=weights / weights.sum())] += 1
    ours, theirs = ours / trials, theirs / trials
    # Difference of two independent frequencies: standard error sqrt(2 p (1 - p) / trials).
    standard_error = np.sqrt(2 * theirs * (1 - theirs) / trials)
    assert np.all(np.abs(ours - theirs) < 5 * standard_error + 1e-9), (ours, theirs)


def test_without_replacement_first_draw_follows_the_weights() -> None:
    """Draw order is successive-draw order: the first index is distributed as the weights."""
    weights = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    firsts = np.array([draw_without_replacement(weights, 3, seed=s)[0] for s in range(30_000)])
    counts = np.bincount(firsts, minlength=5)
    assert stats.chisquare(counts, 30_000 * weights / weights.sum()).pvalue > 1e-3


@pytest.mark.parametrize("draw", DRAWS)
@pytest.mark.parametrize(
    ("weights", "k", "error", "message"),
    [
        # (weights, k, exception, exact message)
        (
            np.array([1.0, -0.5]),
            1,
            InvalidWeightsError,
            "1 weights are negative, NaN or infinite; weights must be finite and >= 0",
        ),
        (
            np.array([1.0, np.nan, np.inf]),
            1,
            InvalidWeightsError,
            "2 weights are negative, NaN or infinite; weights must be finite and >= 0",
        ),
        (np.zeros(3), 1, InvalidWeightsError, "all weights are zero: there is nothing to draw"),
        (np.zeros(0), 1, InvalidWeightsError, "weights are empty: there is nothing to draw from"),
        (np.ones((2, 2)), 1, InvalidWeightsError, "weights must be one-dimensional, got shape (2, 2)"),
        (np.ones(3, dtype=np.int64), 1, InvalidWeightsError, "weights must be float32 or float64, got int64"),
        (np.ones(3), 0, SampleSizeError, "k must be at least 1, got 0"),
        (np.ones(3), -2, SampleSizeError, "k must be at least 1, got -2"),
    ],
)
def test_bad_input(draw, weights: np.ndarray, k: int, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as raised:
        draw(weights, k, seed=0)
    assert str(raised.value) == message


def test_without_replacement_cannot_take_more_than_the_positive_weights() -> None:
    with pytest.raises(SampleSizeError) as raised:
        draw_without_replacement(np.array([1.0, 0.0, 2.0]), 3, seed=0)
    assert str(raised.value) == "k=3 exceeds the 2 items of positive weight; without replacement k can be at most 2"


def test_with_replacement_may_take_more_than_there_are_items() -> None:
    drawn = draw_with_replacement(np.array([1.0, 0.0, 2.0]), 10, seed=0)
    assert set(drawn.tolist()) <= {0, 2}


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(seed: int) -> None:
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        draw_without_replacement(np.ones(3), 1, seed=seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_near_the_float_limit_draw_half_and_half(dtype: type) -> None:
    """Two weights at the top of the float range: the running sum once overflowed and drew item 0 never."""
    weights = np.full(2, np.finfo(dtype).max / 1.5, dtype=dtype)
    counts = np.bincount(draw_with_replacement(weights, 20_000, seed=3), minlength=2)
    assert stats.binomtest(int(counts[0]), 20_000).pvalue > 1e-3
    firsts = np.bincount([draw_without_replacement(weights, 1, seed=s)[0] for s in range(2000)], minlength=2)
    assert stats.binomtest(int(firsts[0]), 2000).pvalue > 1e-3


def test_a_subnormal_weight_is_drawn_before_a_zero_weight() -> None:
    """[0, 1e-320, 1], k=2 without replacement: the zero weight is never drawn (a subnormal's key
    once overflowed to inf and tied with it)."""
    weights = np.array([0.0, 1e-320, 1.0])
    for seed in range(200):
        assert sorted(draw_without_replacement(weights, 2, seed=seed).tolist()) == [1, 2]
    assert 0 not in draw_with_replacement(weights, 10_000, seed=0)


@pytest.mark.parametrize("size", [10, 5_000])
def test_the_serial_and_parallel_compilations_draw_the_same(size: int) -> None:
    """Small inputs take the serial twin; the draws must not depend on which ran."""
    from driftlm.kernels import draw

    weights = np.random.default_rng(size).random(size)
    weights[::7] = 0.0
    bounds = np.linspace(0, size, min(64, size) + 1).astype(np.int64)
    for log_domain in (False, True):
        keys, extremes = {}, {}
        for name in ("parallel", "serial"):
            keys[name] = np.empty(size)
            extremes[name] = getattr(draw._EXPONENTIAL_KEYS, name)(weights, np.uint64(12345), keys[name], log_domain)
        np.testing.assert_array_equal(keys["parallel"], keys["serial"])
        assert extremes["parallel"] == extremes["serial"]
        assert extremes["serial"][2:] == (weights[weights > 0].min(), weights.max())
    sums = {name: np.empty(bounds.size - 1) for name in ("parallel", "serial")}
    for name, out in sums.items():
        getattr(draw._CHUNK_SUMS, name)(weights, bounds, float(weights.max()), out)
    np.testing.assert_array_equal(sums["parallel"], sums["serial"])


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (37, 1), (9_000, 2)])
def test_the_lean_path_for_large_inputs_draws_the_same(monkeypatch: pytest.MonkeyPatch, k: int, seed: int) -> None:
    """Large draws keep only the keys (no index array as long as the weights); the indices and
    their order must be exactly those of the ordinary path."""
    from driftlm.kernels import draw

    weights = np.random.default_rng(seed).random(20_000)
    weights[::5] = 0.0
    weights[1] = 1e-320
    ordinary = draw_without_replacement(weights, k, seed=seed)
    monkeypatch.setattr(draw, "LEAN_FROM", 0)
    np.testing.assert_array_equal(draw_without_replacement(weights, k, seed=seed), ordinary)


@pytest.mark.parametrize(("k", "seed"), [(1, 3), (500, 4), (6_000, 5)])
def test_the_log_domain_and_the_threshold_fallback_draw_the_same(
    monkeypatch: pytest.MonkeyPatch, k: int, seed: int
) -> None:
    """Plain keys E / w and log keys order the items alike; the k smallest found below the
    sampled threshold are those the full partition finds when there is no estimate."""
    from driftlm.kernels import draw

    weights = np.random.default_rng(seed).random(200_000)
    weights[::9] = 0.0
    # 200,000 keys are enough for the sampled threshold: the plain call below takes that path.
    assert draw._estimated_threshold(np.random.default_rng(seed).random(200_000), k) is not None
    plain = draw_without_replacement(weights, k, seed=seed)
    with monkeypatch.context() as patched:
        patched.setattr(draw, "_PLAIN_LOW", 2.0)  # every weight below it: the log domain
        np.testing.assert_array_equal(draw_without_replacement(weights, k, seed=seed), plain)
    with monkeypatch.context() as patched:
        patched.setattr(draw, "_estimated_threshold", lambda keys, k: None)  # the full partition
        np.testing.assert_array_equal(draw_without_replacement(weights, k, seed=seed), plain)


def test_the_radix_argsort_is_a_stable_argsort() -> None:
    from driftlm.kernels import draw

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.normal(size=5_000) * 1e-300, rng.exponential(size=5_000), -rng.exponential(size=500), [np.inf, 0.0]]
    )
    values = np.concatenate([values, values[:2_000]])  # ties
    rng.shuffle(values)
    np.testing.assert_array_equal(draw._radix_argsort(values), np.argsort(values, kind="stable"))
    assert draw._radix_argsort(np.empty(0)).shape == (0,)


def test_a_seed_draws_what_it_drew_before_the_threshold_and_radix_sort() -> None:
    """The indices driftlm's committed results were drawn with (kernel of 2026-12-03, before the
    threshold search): a faster kernel must keep them, or every seeded figure changes."""
    weights = np.random.default_rng(11).random(300_000)
    weights[::5] = 0.0
    few = [3858, 77163, 189228, 118382, 292427, 150497, 37857, 282344, 277682, 209723, 154691, 93253]
    assert draw_without_replacement(weights, 12, seed=2024).tolist() == few
    assert draw_without_replacement(weights, 100_000, seed=2024)[-5:].tolist() == [25354, 225276, 194862, 49688, 299471]
