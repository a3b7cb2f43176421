"""Weighted random draws of indices, with and without replacement, seeded and reproducible.

Both take the weights as they are (no need to normalise them to probabilities), check them in the
same pass that uses them, and give the same indices for the same seed on any thread count.

- Without replacement: Efraimidis & Spirakis (2006). Item i gets the key E_i / w_i with E_i a
  standard exponential; the k smallest keys, in increasing order, are distributed exactly as k
  successive weighted draws that each remove the drawn item (NumPy's
  `Generator.choice(replace=False, p=w / w.sum())`). O(n) keys + O(n) selection + O(k log k) order.
  The key costs one logarithm while every positive weight lies in [1e-290, 1e290], where E / w
  is a normal float; otherwise (a subnormal weight, one near the float limit) every key is
  log E - log w, which orders the items alike and stays finite. The k smallest are found below a
  threshold estimated from a sample of the keys, in parallel (the full partition is the fallback
  when the estimate falls short), and put in order by a radix sort; ties go to the lower index.
- With replacement: k sorted uniforms from the spacings of k + 1 exponentials, merged in one walk
  with the running sum of the weights, then shuffled. O(n + k), like the alias method, but with
  no table to build, since a draw is used once.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from .compiled import Twin
from .counter_rng import (
    PURPOSE_EXPONENTIAL_KEYS,
    PURPOSE_SHUFFLE,
    PURPOSE_SORTED_UNIFORMS,
    stream_for,
    uniform_at,
)
from .disk_cache import cached_njit


class InvalidWeightsError(ValueError):
    """The weights cannot be drawn from: wrong shape or dtype, empty, negative, NaN, inf, all zero."""


class SampleSizeError(ValueError):
    """k is not a number of items that can be drawn from these weights."""


# The weights are cut into this many chunks whatever the thread count, so that the floating-point
# sums (and so the draws) do not depend on the machine.
_CHUNKS = 64


# From this many weights on, a draw without replacement keeps only the keys: the k-th smallest is
# found by partitioning them in place, and the indices at or below it by computing their keys again
# (a pure function of the seed and the index). No index array as long as the weights: a draw over
# 256 MiB of float64 weights peaks at about twice their size instead of three times.
LEAN_FROM = 4_000_000


# Weights in this range give plain keys E / w that are normal floats (E lies in [5e-17, 38]).
_PLAIN_LOW, _PLAIN_HIGH = 1e-290, 1e290
# Keys sampled to estimate the k-th smallest, and the margin (in binomial standard deviations)
# the threshold keeps above it, so that the estimate falls short about once in 10^4 draws.
_THRESHOLD_SAMPLE = 16_384
_THRESHOLD_MARGIN_SD = 4.0


@numba.njit(inline="always")
def _key(w: float, stream: np.uint64, i: int, log_domain: bool) -> float:
    # E = -log(1 - u) with u in (0, 1): finite and positive, so no positive weight's key is 0 or inf
    # (in the log domain, for any finite positive weight). -log(1 - u) rather than -log(u): the same
    # exponentials the log-domain keys always used, so a seed draws the indices it drew before.
    e = -np.log1p(-uniform_at(stream, i))
    return float(np.log(e) - np.log(w)) if log_domain else e / w


def _exponential_keys(
    weights: np.ndarray, stream: np.uint64, keys: np.ndarray, log_domain: bool
) -> tuple[int, int, float, float]:
    """keys[i] = E_i / w_i, or log(E_i / w_i) in the log domain (inf where w_i == 0); returns the
    positive and invalid counts and the smallest and largest positive weight."""
    positive = 0
    invalid = 0
    smallest = np.inf
    largest = 0.0
    for i in numba.prange(weights.shape[0]):
        w = np.float64(weights[i])
        if w > 0.0 and w < np.inf:
            keys[i] = _key(w, stream, i, log_domain)
            positive += 1
            smallest = min(smallest, w)
            largest = max(largest, w)
        else:
            keys[i] = np.inf
            if w != 0.0:  # negative, NaN or inf
                invalid += 1
    return positive, invalid, smallest, largest


def _count_keys_at_most(
    weights: np.ndarray, stream: np.uint64, log_domain: bool, threshold: float, bounds: np.ndarray, counts: np.ndarray
) -> None:
    """Per chunk, how many positive weights have a key <= threshold (keys computed again)."""
    for c in numba.prange(bounds.shape[0] - 1):
        count = 0
        for i in range(bounds[c], bounds[c + 1]):
            w = np.float64(weights[i])
            if w > 0.0 and w < np.inf and _key(w, stream, i, log_domain) <= threshold:
                count += 1
        counts[c] = count


def _indices_of_keys_at_most(
    weights: np.ndarray,
    stream: np.uint64,
    log_domain: bool,
    threshold: float,
    bounds: np.ndarray,
    starts: np.ndarray,
    out: np.ndarray,
) -> None:
    """The indices counted by _count_keys_at_most, chunk c's written from starts[c] on."""
    for c in numba.prange(bounds.shape[0] - 1):
        j = starts[c]
        for i in range(bounds[c], bounds[c + 1]):
            w = np.float64(weights[i])
            if w > 0.0 and w < np.inf and _key(w, stream, i, log_domain) <= threshold:
                out[j] = i
                j += 1


def _count_at_most(keys: np.ndarray, threshold: float, bounds: np.ndarray, counts: np.ndarray) -> None:
    """Per chunk, how many keys are <= threshold."""
    for c in numba.prange(bounds.shape[0] - 1):
        count = 0
        for i in range(bounds[c], bounds[c + 1]):
            if keys[i] <= threshold:
                count += 1
        counts[c] = count


def _indices_at_most(
    keys: np.ndarray, threshold: float, bounds: np.ndarray, starts: np.ndarray, out: np.ndarray
) -> None:
    """The indices counted by _count_at_most, in index order, chunk c's written from starts[c] on."""
    for c in numba.prange(bounds.shape[0] - 1):
        j = starts[c]
        for i in range(bounds[c], bounds[c + 1]):
            if keys[i] <= threshold:
                out[j] = i
                j += 1


@cached_njit()
def _keys_of(weights: np.ndarray, stream: np.uint64, log_domain: bool, indices: np.ndarray) -> np.ndarray:
    keys = np.empty(indices.shape[0])
    for j in range(indices.shape[0]):
        keys[j] = _key(np.float64(weights[indices[j]]), stream, indices[j], log_domain)
    return keys


def _chunk_maxima(weights: np.ndarray, bounds: np.ndarray, maxima: np.ndarray) -> tuple[int, int]:
    """Per-chunk largest weight; returns (positive count, invalid count)."""
    positive = 0
    invalid = 0
    for c in numba.prange(bounds.shape[0] - 1):
        largest = 0.0
        for i in range(bounds[c], bounds[c + 1]):
            w = np.float64(weights[i])
            if w > 0.0 and w < np.inf:
                largest = max(largest, w)
                positive += 1
            elif w != 0.0:
                invalid += 1
        maxima[c] = largest
    return positive, invalid


def _chunk_sums(weights: np.ndarray, bounds: np.ndarray, scale: float, sums: np.ndarray) -> None:
    """Per-chunk sums of weight / scale; with scale the largest weight, no sum can overflow."""
    for c in numba.prange(bounds.shape[0] - 1):
        total = 0.0
        for i in range(bounds[c], bounds[c + 1]):
            w = np.float64(weights[i])
            if w > 0.0:
                total += w / scale
        sums[c] = total


@cached_njit()
def _sorted_uniforms(k: int, scale: float, stream: np.uint64) -> np.ndarray:
    """k sorted uniforms on [0, scale): normalised partial sums of k + 1 exponentials."""
    spacings = np.empty(k + 1)
    total = 0.0
    for j in range(k + 1):
        total -= np.log(uniform_at(stream, j))
        spacings[j] = total
    return spacings[:k] * (scale / total)


def _merge_walk(
    weights: np.ndarray,
    scale: float,
    bounds: np.ndarray,
    starts: np.ndarray,
    targets: np.ndarray,
    first_target: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[j] = the item whose interval of cumulative weight / scale holds targets[j] (targets sorted)."""
    for c in numba.prange(bounds.shape[0] - 1):
        running = starts[c]
        j = first_target[c]
        end = first_target[c + 1]
        last_positive = -1
        for i in range(bounds[c], bounds[c + 1]):
            w = np.float64(weights[i])
            if w <= 0.0:
                continue
            running += w / scale
            last_positive = i
            while j < end and targets[j] < running:
                out[j] = i
                j += 1
        # Rounding can leave a target a hair past this chunk's last running sum.
        while j < end:
            out[j] = last_positive
            j += 1


@cached_njit()
def _shuffle(values: np.ndarray, stream: np.uint64) -> None:
    """Fisher-Yates shuffle in place."""
    for i in range(values.shape[0] - 1, 0, -1):
        j = int(uniform_at(stream, i) * (i + 1))
        values[i], values[j] = values[j], values[i]


_EXPONENTIAL_KEYS = Twin(_exponential_keys)
_CHUNK_MAXIMA = Twin(_chunk_maxima)
_CHUNK_SUMS = Twin(_chunk_sums)
_MERGE_WALK = Twin(_merge_walk)
_COUNT_KEYS_AT_MOST = Twin(_count_keys_at_most)
_INDICES_OF_KEYS_AT_MOST = Twin(_indices_of_keys_at_most)
_COUNT_AT_MOST = Twin(_count_at_most)
_INDICES_AT_MOST = Twin(_indices_at_most)


def _smallest_keys_lean(
    weights: np.ndarray, stream: np.uint64, log_domain: bool, keys: np.ndarray, k: int
) -> np.ndarray:
    """The k indices of smallest key in key order; `keys` is partitioned in place (see LEAN_FROM)."""
    n = weights.shape[0]
    keys.partition(k - 1)
    threshold = float(keys[k - 1])
    bounds = np.linspace(0, n, min(_CHUNKS, n) + 1).astype(np.int64)
    counts = np.empty(bounds.shape[0] - 1, dtype=np.int64)
    _COUNT_KEYS_AT_MOST(n, weights, stream, log_domain, threshold, bounds, counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    chosen = np.empty(int(counts.sum()), dtype=np.int64)
    _INDICES_OF_KEYS_AT_MOST(n, weights, stream, log_domain, threshold, bounds, starts, chosen)
    # Keys tied at the threshold could bring more than k: keep the k first in key order.
    return chosen[_argsort(_keys_of(weights, stream, log_domain, chosen))[:k]]


@cached_njit()
def _radix_argsort(values: np.ndarray) -> np.ndarray:
    """A stable argsort of float64 values (no NaN): LSD radix on their bits, 11 at a time, a pass
    skipped where every value shares its digit. On a draw's 100,000 keys about 2.5 times as fast
    as NumPy's argsort (which a draw spent most of its time in), and ties go to the lower position."""
    n = values.shape[0]
    bits = values.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    keys = np.empty(n, dtype=np.uint64)
    for i in range(n):  # flip so that unsigned order is float order, negatives included
        keys[i] = ~bits[i] if bits[i] & sign else bits[i] | sign
    order = np.arange(n)
    spare_keys = np.empty(n, dtype=np.uint64)
    spare_order = np.empty(n, dtype=np.int64)
    counts = np.empty(2048, dtype=np.int64)
    digit = np.uint64(2047)
    for shift in range(0, 64, 11):
        at = np.uint64(shift)
        counts[:] = 0
        for i in range(n):
            counts[(keys[i] >> at) & digit] += 1
        if counts.max() == n:
            continue
        total = 0
        for d in range(2048):
            count = counts[d]
            counts[d] = total
            total += count
        for i in range(n):
            d = (keys[i] >> at) & digit
            position = counts[d]
            spare_keys[position] = keys[i]
            spare_order[position] = order[i]
            counts[d] = position + 1
        keys, spare_keys = spare_keys, keys
        order, spare_order = spare_order, order
    return order


def _argsort(values: np.ndarray) -> npt.NDArray[np.int64]:
    """_radix_argsort, typed for callers outside Numba."""
    order: npt.NDArray[np.int64] = _radix_argsort(values)
    return order


def _estimated_threshold(keys: np.ndarray, k: int) -> float | None:
    """A key that about k * (1 + a few sd) keys lie at or below, from an evenly spaced sample of
    the keys; None when the sample is the whole or k is too close to n to gain anything."""
    n = keys.shape[0]
    stride = n // _THRESHOLD_SAMPLE
    if stride < 4:
        return None
    sample = keys[::stride].copy()
    expected = sample.shape[0] * k / n
    rank = int(expected + _THRESHOLD_MARGIN_SD * np.sqrt(expected * (1 - k / n)) + 2)
    if rank >= sample.shape[0] // 2:
        return None
    return float(np.partition(sample, rank)[rank])


def _smallest_keys(keys: np.ndarray, k: int) -> np.ndarray:
    """The k indices of smallest key, in key order: those at or below an estimated threshold
    (found in parallel), partitioned and sorted; the whole array partitioned when the estimate
    falls short (rare: it only costs time)."""
    n = keys.shape[0]
    threshold = _estimated_threshold(keys, k)
    if threshold is not None:
        bounds = np.linspace(0, n, min(_CHUNKS, n) + 1).astype(np.int64)
        counts = np.empty(bounds.shape[0] - 1, dtype=np.int64)
        _COUNT_AT_MOST(n, keys, threshold, bounds, counts)
        found = int(counts.sum())
        if found >= k:
            below = np.empty(found, dtype=np.int64)
            _INDICES_AT_MOST(n, keys, threshold, bounds, np.concatenate(([0], np.cumsum(counts)[:-1])), below)
            return below[_argsort(keys[below])[:k]]
    chosen = np.sort(np.argpartition(keys, k - 1)[:k])  # in index order: ties go to the lower index
    return chosen[_argsort(keys[chosen])]


def _check_weights(weights: np.ndarray, k: int) -> np.ndarray:
    if weights.ndim != 1:
        raise InvalidWeightsError(f"weights must be one-dimensional, got shape {weights.shape}")
    if weights.dtype not in (np.float32, np.float64):
        raise InvalidWeightsError(f"weights must be float32 or float64, got {weights.dtype}")
    if weights.shape[0] == 0:
        raise InvalidWeightsError("weights are empty: there is nothing to draw from")
    if k < 1:
        raise SampleSizeError(f"k must be at least 1, got {k}")
    return np.ascontiguousarray(weights)


def _invalid_weights_error(invalid: int) -> InvalidWeightsError:
    return InvalidWeightsError(f"{invalid} weights are negative, NaN or infinite; weights must be finite and >= 0")


def draw_without_replacement(weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Draw k distinct indices, each draw in proportion to the weights of the items left.

    Args:
        weights: (n,) float32 or float64, finite, >= 0; need not sum to 1. Items of weight 0 are
            never drawn.
        k: how many to draw, 1 <= k <= number of positive weights.
        seed: any integer in [0, 2**64).

    Returns:
        (k,) int64 indices in draw order (the first is the first draw).

    Raises:
        InvalidWeightsError: bad shape or dtype; empty, negative, NaN, inf or all-zero weights.
        SampleSizeError: k < 1 or k > number of positive weights.

    Example:
        >>> draw_without_replacement(np.array([0.0, 1.0, 3.0]), 2, seed=7).tolist()
        [2, 1]
    """
    weights = _check_weights(weights, k)
    keys = np.empty(weights.shape[0])
    n = weights.shape[0]
    stream = stream_for(seed, PURPOSE_EXPONENTIAL_KEYS)
    positive, invalid, smallest, largest = _EXPONENTIAL_KEYS(n, weights, stream, keys, False)
    if invalid:
        raise _invalid_weights_error(invalid)
    if positive == 0:
        raise InvalidWeightsError("all weights are zero: there is nothing to draw")
    if k > positive:
        raise SampleSizeError(
            f"k={k} exceeds the {positive} items of positive weight; without replacement k can be at most {positive}"
        )
    log_domain = not _PLAIN_LOW <= smallest <= largest <= _PLAIN_HIGH
    if log_domain:  # E / w would leave the normal floats: every key again, as log E - log w
        _EXPONENTIAL_KEYS(n, weights, stream, keys, True)
    if k == n:
        return _argsort(keys)
    if n >= LEAN_FROM:
        return _smallest_keys_lean(weights, stream, log_domain, keys, k)
    return _smallest_keys(keys, k)


def draw_with_replacement(weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Draw k independent indices, each in proportion to the weights.

    Args:
        weights: (n,) float32 or float64, finite, >= 0, not all zero; need not sum to 1. Items of
            weight 0 are never drawn.
        k: how many to draw, >= 1 (may exceed n).
        seed: any integer in [0, 2**64).

    Returns:
        (k,) int64 indices in draw order.

    Raises:
        InvalidWeightsError: bad shape or dtype; empty, negative, NaN, inf or all-zero weights.
        SampleSizeError: k < 1.

    Example:
        >>> draw_with_replacement(np.array([0.0, 1.0]), 3, seed=7).tolist()
        [1, 1, 1]
    """
    weights = _check_weights(weights, k)
    bounds = np.linspace(0, weights.shape[0], min(_CHUNKS, weights.shape[0]) + 1).astype(np.int64)
    n = weights.shape[0]
    maxima = np.empty(bounds.shape[0] - 1)
    positive, invalid = _CHUNK_MAXIMA(n, weights, bounds, maxima)
    if invalid:
        raise _invalid_weights_error(invalid)
    if positive == 0:
        raise InvalidWeightsError("all weights are zero: there is nothing to draw")
    # Weights are summed divided by the largest: two weights near 1e308 no longer overflow the sum.
    scale = float(maxima.max())
    sums = np.empty(bounds.shape[0] - 1)
    _CHUNK_SUMS(n, weights, bounds, scale, sums)
    starts = np.concatenate(([0.0], np.cumsum(sums)))
    targets = _sorted_uniforms(k, starts[-1], stream_for(seed, PURPOSE_SORTED_UNIFORMS))
    first_target = np.searchsorted(targets, starts, side="left")
    first_target[-1] = k
    out = np.empty(k, dtype=np.int64)
    _MERGE_WALK(n, weights, scale, bounds, starts[:-1], targets, first_target, out)
    _shuffle(out, stream_for(seed, PURPOSE_SHUFFLE))
    return out
