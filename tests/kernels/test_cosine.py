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


@pytest.mark.parametrize(
    ("row", "other"),
    [
        # Near float32 overflow: squares of 1e20 are inf in float32 (the kernel once gave 2.0, not 0).
        (np.full(4, 1e20, np.float32), np.full(4, 1e20, np.float32)),
        (np.full(4, 3e38, np.float32), np.array([3e38, -3e38, 3e38, 3e38], np.float32)),
        # Near underflow: squares of 1e-30 are 0 in float32.
        (np.full(4, 1e-30, np.float32), np.array([1e-30, 2e-30, 0, 1e-30], np.float32)),
        (np.full(8, 1e200), np.linspace(1e199, 1e200, 8)),
        (np.full(8, 1e-300), np.linspace(1e-301, 1e-300, 8)),
        # Mixed scales within a row and across the pair.
        (np.array([1e30, 1.0, 1e-30, 5.0], np.float32), np.array([2e30, 0.5, 0.0, 1.0], np.float32)),
        (np.array([1e-320, 1e-310, 0.0]), np.array([1e300, 1e-300, 1.0])),
    ],
)
def test_rows_of_any_magnitude(row: np.ndarray, other: np.ndarray) -> None:
    """Exact to float32 whatever the rows' scale: the reference works on rows scaled to max 1 in float64."""
    scaled = [v.astype(np.float64) / np.abs(v.astype(np.float64)).max() for v in (row, other)]
    expected = numpy_cosine_distance(scaled[0][None], scaled[1][None])
    np.testing.assert_allclose(cosine_distance_rows(row[None], other[None]), expected, rtol=1e-6, atol=1e-7)


def test_small_shifts_of_float32_rows_are_exact() -> None:
    """The shifts token-embedding shift ranks are tiny: summed in float32 they were off by ~2% (median);
    summed in float64 they match the float64 reference to float32 precision."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2000, 384)).astype(np.float32)
    b = (a + 1e-3 * rng.standard_normal((2000, 384))).astype(np.float32)
    expected = numpy_cosine_distance(a, b)
    relative = np.abs(cosine_distance_rows(a, b) - expected) / expected
    assert np.median(relative) < 1e-3, np.median(relative)


def test_the_serial_and_parallel_compilations_agree() -> None:
    from driftlm.kernels import cosine

    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 16)), rng.standard_normal((50, 16))
    outs = {name: np.empty(50, np.float32) for name in ("parallel", "serial")}
    for name, out in outs.items():
        getattr(cosine._COSINE_DISTANCE_ROWS, name)(a, b, True, out)
    np.testing.assert_array_equal(outs["parallel"], outs["serial"])
