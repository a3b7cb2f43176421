"""Counter-based random numbers: the i-th uniform of a stream is a pure function of (stream, i).

Why not NumPy's or Numba's generators: a parallel kernel must give the same draw for the same
seed whatever the number of threads, and a sequential generator shared by threads cannot. The
stream is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) jumped straight to position i: state
`stream + (i + 1) * golden_gamma`, output the 64-bit finaliser of that state. It passes BigCrush.
"""

from __future__ import annotations

import numba
import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
# 2 ** -53: maps the top 53 bits of a uint64 onto a float64 in [0, 1).
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0

# Purposes of the streams derived from one seed, so that no two uses share random numbers.
PURPOSE_EXPONENTIAL_KEYS = 1
PURPOSE_SORTED_UNIFORMS = 2
PURPOSE_SHUFFLE = 3
PURPOSE_CANDIDATE_MASKS = 4


def _mix64_py(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_for(seed: int, purpose: int) -> np.uint64:
    """The stream key for one use (`purpose`) of a user's 64-bit seed."""
    if not 0 <= seed <= _MASK64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return np.uint64(_mix64_py((_mix64_py(seed) + purpose * _GOLDEN_GAMMA) & _MASK64))


@numba.njit(inline="always")
def _mix64(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def uniform_at(stream: np.uint64, index: int) -> float:
    """The index-th uniform of `stream`, in the open interval (0, 1): never 0, so log() is safe."""
    z = _mix64(stream + np.uint64(index + 1) * np.uint64(_GOLDEN_GAMMA))
    return (np.float64(z >> np.uint64(11)) + 0.5) * _TWO_POW_MINUS_53
