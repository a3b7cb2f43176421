"""Checks on the arrays a caller sends, each failing with the field's name and what is allowed."""

from __future__ import annotations

import numpy as np

from driftlm.kernels import count_nonfinite
from driftlm.services.core.errors import InvalidArgumentError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INT_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
# Largest k a draw may ask for: 2**27 int64 indices are 1 GiB.
MAX_K = 1 << 27
# Token ids lie below this (the largest vocabularies have a few hundred thousand pieces).
MAX_VOCABULARY = 1 << 24


def require(array: np.ndarray | None, field: str, *, needed_by: str = "this call") -> np.ndarray:
    """The array, or INVALID_ARGUMENT naming the missing field."""
    if array is None:
        raise InvalidArgumentError(field, f"is required by {needed_by}")
    return array


def float_vector(array: np.ndarray, field: str, *, nonnegative: bool = True) -> np.ndarray:
    """A non-empty (n,) float32/float64 vector of finite (and, by default, non-negative) values."""
    if array.ndim != 1 or array.dtype not in FLOAT_DTYPES:
        raise InvalidArgumentError(
            field, f"must be an (n,) float32 or float64 vector, got {array.dtype} {list(array.shape)}"
        )
    return _finite(array, field, nonnegative=nonnegative)


def count_vector(array: np.ndarray, field: str, *, integer: bool = False) -> np.ndarray:
    """A non-empty (n,) vector of non-negative counts: int32 or int64, or also floats unless `integer`."""
    allowed = INT_DTYPES if integer else (*INT_DTYPES, *FLOAT_DTYPES)
    if array.ndim != 1 or array.dtype not in allowed:
        names = " or ".join(str(dtype) for dtype in allowed)
        raise InvalidArgumentError(field, f"must be an (n,) {names} vector, got {array.dtype} {list(array.shape)}")
    return _finite(array, field, nonnegative=True)


def float_matrix(array: np.ndarray, field: str) -> np.ndarray:
    """A non-empty (n, d) float32/float64 matrix of finite values."""
    if array.ndim != 2 or array.dtype not in FLOAT_DTYPES:
        raise InvalidArgumentError(
            field, f"must be an (n, d) float32 or float64 matrix, got {array.dtype} {list(array.shape)}"
        )
    return _finite(array, field, nonnegative=False)


def same_rows(field: str, array: np.ndarray, other_field: str, other: np.ndarray) -> None:
    """INVALID_ARGUMENT unless both arrays have the same number of rows."""
    if array.shape[0] != other.shape[0]:
        raise InvalidArgumentError(
            field, f"has {array.shape[0]} rows but {other_field} has {other.shape[0]}; they must match"
        )


def alpha_value(alpha: float) -> float:
    """alpha in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise InvalidArgumentError("alpha", f"must be in [0, 1], got {alpha}")
    return alpha


def sample_size(k: int, *, limit: int = MAX_K) -> int:
    """k in [1, limit]."""
    if not 1 <= k <= limit:
        raise InvalidArgumentError("k", f"must be in [1, {limit}], got {k}")
    return k


def _finite(array: np.ndarray, field: str, *, nonnegative: bool) -> np.ndarray:
    if array.size == 0:
        raise InvalidArgumentError(field, "is empty; send at least one element")
    if array.dtype in FLOAT_DTYPES:
        bad = count_nonfinite(np.ascontiguousarray(array))
        if bad:
            raise InvalidArgumentError(field, f"has {bad} NaN or infinite values; all values must be finite")
    if nonnegative and array.min() < 0:
        raise InvalidArgumentError(field, f"has negative values (smallest {array.min()}); all values must be >= 0")
    return array
