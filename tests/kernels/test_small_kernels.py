"""top_k_largest, sampling_weights, max_target_score, and the docstring examples of every kernel."""

import doctest
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from driftlm.kernels import max_target_score, normalised_lengths, sampling_weights, top_k_largest


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_top_k_equals_a_full_sort(data: st.DataObject) -> None:
    values = data.draw(
        arrays(np.float64, st.integers(0, 50), elements=st.sampled_from([0.0, 0.5, 1.0, -2.0, 3.25, np.nan]))
    )
    k = data.draw(st.integers(0, values.size))
    key = np.where(np.isnan(values), -np.inf, values)
    expected = sorted(range(values.size), key=lambda i: (-key[i], i))[:k]
    assert top_k_largest(values, k).tolist() == expected


@pytest.mark.parametrize(("values", "k"), [(np.ones(3), 4), (np.ones(3), -1), (np.ones((2, 2)), 1)])
def test_top_k_bad_input(values: np.ndarray, k: int) -> None:
    with pytest.raises(ValueError):
        top_k_largest(values, k)


@settings(deadline=None, max_examples=60)
@given(
    data=st.data(),
    alpha=st.floats(0.0, 1.0),
)
def test_sampling_weights_formula(data: st.DataObject, alpha: float) -> None:
    n = data.draw(st.integers(1, 30))
    scores = data.draw(arrays(np.float64, n, elements=st.floats(0, 2)))
    lengths = data.draw(arrays(np.int64, n, elements=st.integers(0, 512)))
    longest = lengths.max()
    expected = alpha * scores + (1 - alpha) * (lengths / longest if longest else 0.0)
    np.testing.assert_allclose(sampling_weights(scores, lengths, alpha), expected)


@pytest.mark.parametrize(
    ("scores", "lengths", "alpha", "message"),
    [
        (np.ones(2), np.ones(3), 0.5, "scores and lengths must be two (n,) vectors of one length, got (2,) and (3,)"),
        (np.ones(2), np.ones(2), 1.5, "alpha must be in [0, 1], got 1.5"),
        (np.array([1.0, -1.0]), np.ones(2), 0.5, "scores must be finite and >= 0"),
        (np.ones(2), np.array([1.0, np.inf]), 0.5, "lengths must be finite and >= 0"),
    ],
)
def test_sampling_weights_bad_input(scores: np.ndarray, lengths: np.ndarray, alpha: float, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        sampling_weights(scores, lengths, alpha)
    assert str(raised.value) == message


def test_normalised_lengths_of_all_zero_lengths_are_zero() -> None:
    assert normalised_lengths(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_max_target_score() -> None:
    token_score = np.full(10, -1.0)
    token_score[[3, 7]] = [0.2, 0.9]
    ids = np.array([1, 3, 2, 7, 3, 5, 5], dtype=np.int32)
    lengths = np.array([2, 3, 0, 2])
    assert max_target_score(ids, lengths, token_score).tolist() == [0.2, 0.9, -1.0, -1.0]


@pytest.mark.parametrize(
    ("ids", "lengths", "message"),
    [
        (np.array([1, 2]), np.array([3]), "a sentence has 3 tokens but only 2 token ids were given"),
        (np.array([1, 2]), np.array([1, 0, 2]), "the lengths add up to 3 tokens but 2 token ids were given"),
        # Lengths whose int64 sum wraps around to the id count: once a SIGSEGV in the sampling service.
        (
            np.array([1, 2]),
            np.array([2**62, 2**62, 2**62, 2**62 + 2]),
            "a sentence has 4611686018427387906 tokens but only 2 token ids were given",
        ),
        (np.array([1, 12]), np.array([2]), "token ids must lie in [0, 10), the vocabulary size; got ids from 1 to 12"),
        (np.array([1, 2]), np.array([3, -1]), "lengths must be a vector of non-negative token counts"),
    ],
)
def test_max_target_score_bad_input(ids: np.ndarray, lengths: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        max_target_score(ids, lengths, np.zeros(10))
    assert str(raised.value) == message


@pytest.mark.parametrize("module", ["candidate_scores", "cosine", "draw", "topk", "weighting"])
def test_docstring_examples(module: str) -> None:
    results = doctest.testmod(importlib.import_module(f"driftlm.kernels.{module}"), extraglobs={"np": np})
    assert results.attempted > 0 and results.failed == 0
