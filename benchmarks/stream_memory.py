"""`python -m benchmarks.stream_memory`: peak memory of a 256 MiB weight stream, assembled and drawn from.

Each side runs in a fresh process (peak RSS is per process): ours, `collect_stream` then
`draw_without_replacement` (the DrawSample path), against what a user would write, the chunks
gathered and `np.concatenate`d, then the index array `np.argpartition` needs. Prints MiB above the
process's starting point.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np

CHUNKS, CHUNK_WEIGHTS = 32, 1 << 20  # 32 x 8 MiB of float64 = 256 MiB


def _messages() -> object:
    from driftlm.services.runtime.tensors import array_to_tensor
    from driftlm.v1 import sampling_pb2

    weights = np.random.default_rng(0).random(CHUNK_WEIGHTS)
    for index in range(CHUNKS):
        yield sampling_pb2.DrawSampleRequest(weights=array_to_tensor(weights), k=10 if index == 0 else 0)


def _measure(side: str) -> None:
    from driftlm.kernels import draw_without_replacement
    from driftlm.services.runtime.tensors import collect_stream, tensor_to_array

    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if side == "driftlm":
        _first, arrays = collect_stream(_messages(), ("weights",), 1 << 31)
        weights = arrays["weights"]
        assembled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        draw_without_replacement(weights, 100_000, seed=1)
    else:
        chunks = [tensor_to_array(message.weights, "weights") for message in _messages()]
        weights = np.concatenate(chunks)
        assembled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        keys = np.random.default_rng(1).exponential(size=weights.shape[0]) / weights
        chosen = np.argpartition(keys, 100_000)[:100_000]
        chosen[np.argsort(keys[chosen])]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{side}: assembled +{(assembled - start) / 1024:.0f} MiB, drawn +{(peak - start) / 1024:.0f} MiB")


def main() -> None:
    if len(sys.argv) > 1:
        _measure(sys.argv[1])
        return
    print(f"a {CHUNKS * CHUNK_WEIGHTS * 8 >> 20} MiB float64 weight stream in {CHUNKS} messages, k=100,000")
    for side in ("driftlm", "concatenate + argpartition"):
        subprocess.run([sys.executable, "-m", "benchmarks.stream_memory", side], check=True)


if __name__ == "__main__":
    main()
