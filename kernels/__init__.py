"""Pure array kernels: arrays and an explicit seed in, arrays out; no I/O, no gRPC.

The compiled heart of the sampling service (Numba, parallel where it pays).
"""

from .candidate_scores import max_target_score
from .cosine import cosine_distance_rows, count_nonfinite
from .draw import InvalidWeightsError, SampleSizeError, draw_with_replacement, draw_without_replacement
from .topk import top_k_largest
from .weighting import SHARPNESS, fractional_ranks, normalised_lengths, rank_weights, sampling_weights

__all__ = [
    "SHARPNESS",
    "InvalidWeightsError",
    "SampleSizeError",
    "cosine_distance_rows",
    "count_nonfinite",
    "draw_with_replacement",
    "draw_without_replacement",
    "fractional_ranks",
    "max_target_score",
    "normalised_lengths",
    "rank_weights",
    "sampling_weights",
    "top_k_largest",
]
