import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from driftlm.kernels import cosine_distance_rows, count_nonfinite

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def numpy_cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The three-pass NumPy reference, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1.0 - np.clip(dot / norms, -1.0, 1.0)


@settings(deadline=None, max_examples=60)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_equals_numpy_reference(data: st.DataObject, dtype: type) -> None:
    shape = data.draw(st.tuples(st.integers(1, 40), st.integers(1, 70)))
    a = data.draw(arrays(dtype, shape, elements=finite))
    b = data.draw(arrays(dtype, shape, elements=finite))
    a[np.linalg.norm(a, axis=1) < 1e-3] = 1.0  # zero rows have their own convention, tested below
    b[np.linalg.norm(b, axis=1) < 1e-3] = 1.0
    got = cosine_distance_rows(a, b)
    assert got.dtype == np.float32 and got.shape == (shape[0],)
    np.testing.assert_allclose(got, numpy_cosine_distance(a, b), atol=2e-5 if dtype == np.float64 else 1e-4)


def test_large_matrices_match_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5000, 384), dtype=np.float32)
    b = a + 0.3 * rng.standard_normal((5000, 384), dtype=np.float32)
    np.testing.assert_allclose(cosine_distance_rows(a, b), numpy_cosine_distance(a, b), atol=1e-5)


@pytest.mark.parametrize(
    ("row_a", "row_b", "distance"),
    [
        ([0.0, 0.0], [0.0, 0.0], 0.0),  # both zero: did not move
        ([0.0, 0.0], [1.0, 2.0], 1.0),  # one zero: as if orthogonal
        ([3.0, 4.0], [0.0, 0.0], 1.0),
        ([1.0, 0.0], [-2.0, 0.0], 2.0),  # opposite
        ([1.0, 1.0], [2.0, 2.0], 0.0),  # same direction, other length
    ],
)
def test_conventions(row_a: list[float], row_b: list[float], distance: float) -> None:
    got = cosine_distance_rows(np.array([row_a], np.float32), np.array([row_b], np.float32))
    assert got[0] == pytest.approx(distance, abs=1e-6)


def test_non_contiguous_input_is_accepted() -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    np.testing.assert_allclose(cosine_distance_rows(a, a + 1), numpy_cosine_distance(a, a + 1), atol=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (
            np.ones((2, 3), np.float32),
            np.ones((3, 3), np.float32),
            "expected two (N, D) matrices of the same shape, got (2, 3) and (3, 3)",
        ),
        (
            np.ones((2, 3), np.float32),
            np.ones((2, 3), np.float64),
            "expected two float32 or two float64 matrices, got float32 and float64",
        ),
        (
            np.ones(3, np.float32),
            np.ones(3, np.float32),
            "expected two (N, D) matrices of the same shape, got (3,) and (3,)",
        ),
        (
            np.ones((2, 3), np.int32),
            np.ones((2, 3), np.int32),
            "expected two float32 or two float64 matrices, got int32 and int32",
        ),
    ],
)
def test_bad_input(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError) as error:
        cosine_distance_rows(a, b)
    assert str(error.value) == message


def test_count_nonfinite() -> None:
    values = np.array([[1.0, np.nan], [np.inf, -np.inf], [0.0, 2.0]])
    assert count_nonfinite(values) == 3
    assert count_nonfinite(np.zeros(5, np.float32)) == 0
