"""Row-wise cosine distance between two matrices in one fused pass.

NumPy needs three passes and two temporaries (normalise a, normalise b, multiply and sum); this
kernel reads each row of both matrices once and keeps the three running sums in registers, so it
runs near the speed of reading the two matrices from memory.
"""

from __future__ import annotations

import numba
import numpy as np


# fastmath lets LLVM reassociate the three sums into SIMD lanes; the inputs are finite by contract.
@numba.njit(parallel=True, fastmath=True, cache=True)
def _cosine_distance_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    n_rows, n_cols = a.shape
    for i in numba.prange(n_rows):
        dot = np.float32(0.0)
        norm_a = np.float32(0.0)
        norm_b = np.float32(0.0)
        for j in range(n_cols):
            x = a[i, j]
            y = b[i, j]
            dot += x * y
            norm_a += x * x
            norm_b += y * y
        if norm_a == 0.0 and norm_b == 0.0:
            out[i] = 0.0
        elif norm_a == 0.0 or norm_b == 0.0:
            out[i] = 1.0
        else:
            similarity = np.float64(dot) / np.sqrt(np.float64(norm_a) * np.float64(norm_b))
            out[i] = 1.0 - min(1.0, max(-1.0, similarity))


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
    _cosine_distance_rows(np.ascontiguousarray(a), np.ascontiguousarray(b), out)
    return out


@numba.njit(parallel=True, cache=True)
def count_nonfinite(values: np.ndarray) -> int:
    """How many elements of a float array are NaN or infinite, without a temporary array."""
    flat = values.reshape(-1)
    count = 0
    for i in numba.prange(flat.shape[0]):
        if not np.isfinite(flat[i]):
            count += 1
    return count
