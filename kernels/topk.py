"""The k largest values of a vector, e.g. the most shifted tokens of a vocabulary."""

from __future__ import annotations

import numpy as np


def top_k_largest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first; ties go to the lower index.

    O(n) selection, then O(k log k) to order the selected. NaN counts as smallest.

    Args:
        values: (n,) any real dtype.
        k: 0 <= k <= n.

    Returns:
        (k,) int64 indices.

    Raises:
        ValueError: values is not one-dimensional or k is out of range.

    Example:
        >>> top_k_largest(np.array([0.1, 0.9, 0.5, 0.9]), 3).tolist()
        [1, 3, 2]
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {values.shape}")
    if not 0 <= k <= values.shape[0]:
        raise ValueError(f"k must be in [0, {values.shape[0]}], got {k}")
    if k == 0:
        return np.empty(0, dtype=np.int64)
    ordered = np.where(np.isnan(values), -np.inf, values) if values.dtype.kind == "f" else values
    threshold = np.partition(ordered, ordered.shape[0] - k)[ordered.shape[0] - k]
    above = np.flatnonzero(ordered > threshold)
    # Fill the remaining places with the lowest-indexed values equal to the threshold.
    at_threshold = np.flatnonzero(ordered == threshold)[: k - above.shape[0]]
    chosen = np.concatenate((above, at_threshold))
    # lexsort sorts by its last key first: value descending, then index ascending.
    return chosen[np.lexsort((chosen, -ordered[chosen].astype(np.float64)))].astype(np.int64)
