"""Shift, weights and draws on validated inputs: what the sampling RPCs compute."""

from __future__ import annotations

import numpy as np

from driftlm import kernels
from driftlm.services.core.errors import InvalidArgumentError

from . import inputs


def measure_shift(
    old_rows: np.ndarray, new_rows: np.ndarray, top_k: int, *, fields: tuple[str, str] = ("old_rows", "new_rows")
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) cosine distances between matching rows and the indices of the top_k largest.

    `fields` names the two inputs in error messages.

    Raises:
        InvalidArgumentError: non-matrix, mismatched, non-finite or empty inputs; top_k outside [0, N].
    """
    old_field, new_field = fields
    inputs.float_matrix(old_rows, old_field)
    inputs.float_matrix(new_rows, new_field)
    if old_rows.shape != new_rows.shape or old_rows.dtype != new_rows.dtype:
        raise InvalidArgumentError(
            new_field,
            f"is {new_rows.dtype} {list(new_rows.shape)} but {old_field} is {old_rows.dtype} {list(old_rows.shape)}; "
            "they must have the same dtype and shape",
        )
    if not 0 <= top_k <= old_rows.shape[0]:
        raise InvalidArgumentError("top_k", f"must be in [0, {old_rows.shape[0]}] (the number of rows), got {top_k}")
    distances = kernels.cosine_distance_rows(old_rows, new_rows)
    return distances, kernels.top_k_largest(distances, top_k)


def weigh(scores: np.ndarray, lengths: np.ndarray, alpha: float) -> np.ndarray:
    """(N,) float64 `alpha * score + (1 - alpha) * length / max(length)`.

    Raises:
        InvalidArgumentError: bad scores, lengths or alpha.
    """
    inputs.float_vector(scores, "scores")
    inputs.count_vector(lengths, "lengths")
    inputs.same_rows("lengths", lengths, "scores", scores)
    return kernels.sampling_weights(scores, lengths, inputs.alpha_value(alpha))


def draw_indices(weights: np.ndarray, k: int, *, replace: bool, seed: int) -> np.ndarray:
    """(k,) int64 indices drawn in proportion to the weights.

    Raises:
        InvalidArgumentError: bad weights or k (field `weights` or `k`).
    """
    inputs.sample_size(k)
    if weights.ndim != 1 or weights.dtype not in inputs.FLOAT_DTYPES:
        raise InvalidArgumentError(
            "weights", f"must be an (n,) float32 or float64 vector, got {weights.dtype} {list(weights.shape)}"
        )
    draw = kernels.draw_with_replacement if replace else kernels.draw_without_replacement
    try:
        return draw(weights, k, seed)
    except kernels.InvalidWeightsError as error:
        raise InvalidArgumentError("weights", str(error)) from error
    except kernels.SampleSizeError as error:
        raise InvalidArgumentError("k", str(error)) from error
