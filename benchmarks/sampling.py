"""Sampling kernels and service against NumPy, PyTorch eager and the in-process call.

Targets on a 2-core machine: cosine >= 6x NumPy and >= 0.8 of the memory floor; without
replacement >= 4x NumPy and >= 2x torch; with replacement >= 6x NumPy.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from driftlm import kernels
from driftlm.services.sampling.client import SamplingClient
from driftlm.services.sampling.server import create_server

from .harness import Case, compare, describe_device, median_ms, write_results

ROWS, DIM = 200_000, 384
POPULATION, SAMPLE = 1_000_000, 100_000


def _numpy_cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What a NumPy user writes: normalise both, multiply, sum."""
    a_unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    b_unit = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - (a_unit * b_unit).sum(axis=1)


@numba.njit(parallel=True, fastmath=True)
def _sum_both(a: np.ndarray, b: np.ndarray) -> float:
    """Read every element of a and b once, on every core: the least work a row-wise kernel does."""
    total = np.float32(0.0)
    for i in numba.prange(a.shape[0]):
        for j in range(a.shape[1]):
            total += a[i, j] + b[i, j]
    return total


def _cosine_cases(device: dict[str, object]) -> list[Case]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((ROWS, DIM), dtype=np.float32)
    b = a + 0.1 * rng.standard_normal((ROWS, DIM), dtype=np.float32)
    ours = median_ms(lambda: kernels.cosine_distance_rows(a, b))
    numpy_ms = median_ms(lambda: _numpy_cosine_distance(a, b), repeats=3)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch_ms = median_ms(lambda: 1.0 - torch.nn.functional.cosine_similarity(ta, tb, dim=1), repeats=3)
    # The memory floor: reading a and b moves as many bytes as copying a (read a, write the copy),
    # so the fastest copy of `a` on this machine is the least time any kernel can read both in.
    target = np.empty_like(a)
    target_t = torch.from_numpy(target)
    # A copy also reads each destination line before writing it (write-allocate), so a kernel that
    # only reads can beat this floor; the parallel sum of both matrices is the tighter read floor.
    copy_floor_ms = min(median_ms(lambda: np.copyto(target, a)), median_ms(lambda: target_t.copy_(ta)))
    read_floor_ms = median_ms(lambda: _sum_both(a, b))
    name = f"cosine distance {ROWS:,}x{DIM} f32"
    return [
        compare(name, ours, "numpy normalise-multiply-sum", numpy_ms, device),
        compare(name, ours, "torch cosine_similarity", torch_ms, device),
        compare(name, ours, "memory floor: copy bandwidth", copy_floor_ms, device),
        compare(name, ours, "memory floor: parallel read of a and b", read_floor_ms, device),
    ]


def _draw_cases(device: dict[str, object]) -> list[Case]:
    rng = np.random.default_rng(1)
    weights = rng.random(POPULATION)
    weights_t = torch.from_numpy(weights)
    generator = np.random.default_rng(2)
    cases = []
    for replace in (False, True):
        kernel = kernels.draw_with_replacement if replace else kernels.draw_without_replacement
        ours = median_ms(lambda kernel=kernel: kernel(weights, SAMPLE, 3))
        numpy_ms = median_ms(
            lambda replace=replace: generator.choice(POPULATION, SAMPLE, replace=replace, p=weights / weights.sum())
        )
        torch_ms = median_ms(lambda replace=replace: torch.multinomial(weights_t, SAMPLE, replacement=replace))
        name = f"draw {SAMPLE:,} of {POPULATION:,} {'with' if replace else 'without'} replacement"
        cases += [
            compare(name, ours, "numpy Generator.choice", numpy_ms, device),
            compare(name, ours, "torch.multinomial", torch_ms, device),
        ]
    return cases


def _small_cases(device: dict[str, object]) -> list[Case]:
    """Small inputs as a service sees them, one call after an idle pause: where the serial twin runs,
    and at the threshold, the parallel compilation beside it (kernels/compiled.py)."""
    from driftlm.kernels import draw
    from driftlm.kernels.compiled import SERIAL_BELOW
    from driftlm.kernels.counter_rng import stream_for

    cases = []
    generator = np.random.default_rng(6)
    stream = stream_for(7, 1)
    for n in (10, 1_000, 100_000):
        weights = generator.random(n)
        ours = median_ms(lambda w=weights: kernels.draw_without_replacement(w, 3, 7), repeats=15, idle_s=0.02)
        numpy_ms = median_ms(
            lambda w=weights: generator.choice(w.size, 3, replace=False, p=w / w.sum()), repeats=15, idle_s=0.02
        )
        cases.append(
            compare(f"draw 3 of {n:,} without replacement, idle pool", ours, "numpy Generator.choice", numpy_ms, device)
        )
    for n in (100_000, SERIAL_BELOW):
        weights, keys = generator.random(n), np.empty(n)
        serial = median_ms(
            lambda w=weights, k=keys: draw._EXPONENTIAL_KEYS.serial(w, stream, k, False), repeats=15, idle_s=0.02
        )
        parallel = median_ms(
            lambda w=weights, k=keys: draw._EXPONENTIAL_KEYS.parallel(w, stream, k, False), repeats=15, idle_s=0.02
        )
        cases.append(
            compare(f"exponential keys of {n:,} weights, idle pool: serial", serial, "parallel", parallel, device)
        )
    return cases


def _grpc_case(device: dict[str, object]) -> Case:
    weights = np.random.default_rng(4).random(POPULATION)
    server, port = create_server("127.0.0.1:0")
    try:
        with SamplingClient(f"127.0.0.1:{port}") as client:
            remote = median_ms(lambda: client.draw(weights, k=SAMPLE, seed=5), warmup=2)
    finally:
        server.stop(grace=None)
    local = median_ms(lambda: kernels.draw_without_replacement(weights, SAMPLE, 5))
    return compare(
        f"gRPC DrawSample {POPULATION:,} weights, k={SAMPLE:,}", remote, "in-process kernel call", local, device
    )


def run() -> list[Case]:
    """Run the suite, write results/sampling.json and print the table."""
    device = describe_device()
    device["torch_threads"] = torch.get_num_threads()
    cases = [*_cosine_cases(device), *_draw_cases(device), *_small_cases(device), _grpc_case(device)]
    write_results("sampling", cases)
    return cases
