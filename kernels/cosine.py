"""Row-wise cosine distance between two matrices in one fused pass.

NumPy needs three passes and two temporaries (normalise a, normalise b, multiply and sum); this
kernel reads each row of both matrices once (float64 rows twice: once for their scale) and keeps the
three running sums in float64 registers, so it runs near the speed of reading the two matrices from
memory and stays exact to float32 for rows of any magnitude: tiny shifts, rows near overflow or
underflow, rows of mixed scale.
"""

from __future__ import annotations

import numba
import numpy as np

from .compiled import Twin


@numba.njit(inline="always")
def _largest_magnitude(row: np.ndarray) -> float:
    largest = 0.0
    for value in row:
        largest = max(largest, abs(np.float64(value)))
    return largest


def _cosine_distance_rows(a: np.ndarray, b: np.ndarray, rescale: bool, out: np.ndarray) -> None:
    n_rows, n_cols = a.shape
    for i in numba.prange(n_rows):
        # Sums in float64, so float32 rows of any magnitude neither overflow nor underflow; float64
        # rows are first divided by their largest magnitude (cosine is blind to scale).
        scale_a = _largest_magnitude(a[i]) if rescale else 1.0
        scale_b = _largest_magnitude(b[i]) if rescale else 1.0
        if scale_a == 0.0:
            scale_a = 1.0
        if scale_b == 0.0:
            scale_b = 1.0
        dot = 0.0
        norm_a = 0.0
        norm_b = 0.0
        for j in range(n_cols):
            x = np.float64(a[i, j]) / scale_a
            y = np.float64(b[i, j]) / scale_b
            dot += x * y
            norm_a += x * x
            norm_b += y * y
        if norm_a == 0.0 and norm_b == 0.0:
            out[i] = 0.0
        elif norm_a == 0.0 or norm_b == 0.0:
            out[i] = 1.0
        else:
            similarity = dot / np.sqrt(norm_a * norm_b)
            out[i] = 1.0 - min(1.0, max(-1.0, similarity))


# reassoc/contract let LLVM spread the three sums over SIMD lanes. No "arcp": x / scale must stay a
# division (1 / a subnormal scale is inf). Inputs are finite by contract.
_COSINE_DISTANCE_ROWS = Twin(_cosine_distance_rows, fastmath={"reassoc", "contract", "nsz"})


def cosine_distance_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine distance `1 - <a_i, b_i> / (|a_i| |b_i|)` of each pair of rows.

    Args:
        a: (N, D) float32 or float64, finite.
        b: (N, D), same dtype and shape as `a`.

    Returns:
        (N,) float32 distances in [0, 2]. A row that is zero in both matrices has distance 0 (it
        did not move); a row that is zero in only one has distance 1 (as if orthogonal).

    Raises:
        ValueError: the shapes or dtypes differ, or the inputs are not 2-D floating arrays.

    Example:
        >>> cosine_distance_rows(np.eye(2, dtype=np.float32), np.ones((2, 2), np.float32))
        array([0.29289323, 0.29289323], dtype=float32)
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (N, D) matrices of the same shape, got {a.shape} and {b.shape}")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"expected two float32 or two float64 matrices, got {a.dtype} and {b.dtype}")
    out = np.empty(a.shape[0], dtype=np.float32)
    _COSINE_DISTANCE_ROWS(a.size, np.ascontiguousarray(a), np.ascontiguousarray(b), a.dtype == np.float64, out)
    return out


def _count_nonfinite(flat: np.ndarray) -> int:
    count = 0
    for i in numba.prange(flat.shape[0]):
        if not np.isfinite(flat[i]):
            count += 1
    return count


_COUNT_NONFINITE = Twin(_count_nonfinite)


def count_nonfinite(values: np.ndarray) -> int:
    """How many elements of a float array are NaN or infinite, without a temporary array."""
    flat = np.ascontiguousarray(values).reshape(-1)
    return int(_COUNT_NONFINITE(flat.size, flat))
