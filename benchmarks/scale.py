"""Corpus scale: observing 1M lines and scoring candidates, in one process and on Ray, against
what a user would otherwise write; and, on paper from those rates, a cluster for 100M texts.

- Observation of 1,000,000 real-like lines (halves of two real lines of prose, so almost all
  distinct) in 8 JSONL shards, MiniLM's 30,522 pieces: the vocab service's ObserveSlice (local
  engine), the same call on a local Ray cluster with 1 and 2 workers, and plain
  `tokenizers.encode_batch` + `collections.Counter` over the ids. Texts/s, and peak memory: the
  machine's MemAvailable at its lowest during the run, below where it stood before (all processes,
  Ray's workers included; the machine should be otherwise idle).
- Candidate scoring with MiniLM (6 x 384), 64 pieces, mask 0.15 (7 passes) and a baseline
  checkpoint: the trainer's ScoreCandidates (local engine, 2 threads), on Ray with 1 and 2 workers,
  and a plain Hugging Face loop doing the same work (random batches, [CLS] of both models, 7
  masked passes). Texts/s and texts/s per worker.

`python -m benchmarks scale` (about 20 minutes on 2 cores); DRIFTLM_BENCH_SCORED sets the texts
scored (default 1,000).
"""

from __future__ import annotations

import collections
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from driftlm.local_ray import local_ray_cluster, use_token_authentication

from .harness import RESULTS, describe_device
from .vocab import _minilm, real_texts

LINES = 1_000_000
SHARDS = 8
# Scoring runs about 10 texts/s per CPU worker with MiniLM (7 masked passes and 2 [CLS] passes
# each): 100,000 texts would take hours per engine on 2 cores, so the default is 1,000 (the rate is
# per text); DRIFTLM_BENCH_SCORED=100000 runs the full size where there are cores (or time).
SCORED = int(os.environ.get("DRIFTLM_BENCH_SCORED", "1000"))
MAX_LENGTH = 64
# The paper's setting: a slice of 100M texts.
SLICE_TEXTS = 100_000_000


def _available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.nan


@contextmanager
def _peak_memory() -> Iterator[dict[str, float]]:
    """The deepest fall of MemAvailable below its level at the start, sampled every 50 ms."""
    start, lowest = _available_mib(), [_available_mib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            lowest[0] = min(lowest[0], _available_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["peak_mib"] = round(start - lowest[0], 1)


def _timed(function: Callable[[], Any]) -> dict[str, float]:
    with _peak_memory() as memory:
        started = time.perf_counter()
        function()
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), **memory}


def real_like_lines(count: int, seed: int = 0) -> list[str]:
    """Lines made of the first half of one real line and the second half of another."""
    pool = [line.split() for line in real_texts()]
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(pool), count), rng.integers(0, len(pool), count)
    return [
        " ".join(pool[a][: len(pool[a]) // 2] + pool[b][len(pool[b]) // 2 :])
        for a, b in zip(first.tolist(), second.tolist(), strict=True)
    ]


def _write_shards(folder: Path, lines: list[str]) -> list[Path]:
    paths = []
    per_shard = math.ceil(len(lines) / SHARDS)
    for index in range(SHARDS):
        path = folder / f"part-{index}.jsonl"
        chunk = lines[index * per_shard : (index + 1) * per_shard]
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk), encoding="utf-8")
        paths.append(path)
    return paths


def _plain_observation(paths: list[Path], tokenizer_json: str) -> None:
    """What a user would otherwise write: read, encode_batch, Counter over the ids."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    counts: collections.Counter[int] = collections.Counter()
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            batch: list[str] = []
            for line in lines:
                batch.append(json.loads(line)["text"])
                if len(batch) == 65_536:
                    for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
                        counts.update(encoding.ids)
                    batch = []
            for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
                counts.update(encoding.ids)


def _plain_scoring(texts: list[str], model_dir: Path, baseline_dir: Path) -> None:
    """A plain Hugging Face loop doing ScoreCandidates' work: [CLS] of both models, 7 masked passes."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(str(model_dir)).eval()
    baseline = AutoModelForMaskedLM.from_pretrained(str(baseline_dir)).eval()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.enable_padding(pad_id=0)
    mask_id = tokenizer.token_to_id("[MASK]")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            encodings = tokenizer.encode_batch(texts[start : start + 64])
            ids = torch.tensor([e.ids for e in encodings])
            attention = torch.tensor([e.attention_mask for e in encodings])
            model(input_ids=ids, attention_mask=attention, output_hidden_states=True).hidden_states[-1][:, 0]
            baseline(input_ids=ids, attention_mask=attention, output_hidden_states=True).hidden_states[-1][:, 0]
            special = torch.tensor([e.special_tokens_mask for e in encodings]).bool()
            for _ in range(7):
                masked = (torch.rand(ids.shape, generator=generator) < 0.15) & attention.bool() & ~special
                labels = torch.where(masked, ids, -100)
                model(input_ids=ids.masked_fill(masked, mask_id), attention_mask=attention, labels=labels)


def run() -> dict[str, Any]:
    """Run the suite, write results/scale.json and print the tables."""
    use_token_authentication()
    import grpc
    import torch

    from driftlm.services.runtime.config import ServeConfig
    from driftlm.services.trainer.client import TrainerClient
    from driftlm.services.trainer.server import create_server as create_trainer
    from driftlm.services.vocab.client import VocabClient
    from driftlm.services.vocab.server import create_server as create_vocab
    from driftlm.services.vocab.tokenizer_sources import load_tokenizer_directory
    from driftlm.v1 import common_pb2, trainer_pb2, vocab_pb2

    torch.set_num_threads(os.cpu_count() or 1)
    device = describe_device()
    result: dict[str, Any] = {"device": device, "lines": LINES, "shards": SHARDS, "scored_texts": SCORED}
    with tempfile.TemporaryDirectory() as folder, local_ray_cluster(os.cpu_count() or 1) as address:
        root = Path(folder)
        lines = real_like_lines(LINES)
        paths = _write_shards(root, lines)
        result["distinct_share"] = round(len(set(lines)) / len(lines), 4)
        minilm = _minilm()
        store = root / "store"
        roots = {"read_roots": (root, minilm.parent), "write_roots": (root,)}
        vocab_server, vocab_port = create_vocab("127.0.0.1:0", ServeConfig(store=store, ray_address=address, **roots))
        trainer_server, trainer_port = create_trainer(
            "127.0.0.1:0",
            ServeConfig(store=store, vocab_endpoint=f"127.0.0.1:{vocab_port}", ray_address=address, **roots),
        )
        try:
            with VocabClient(f"127.0.0.1:{vocab_port}", timeout_s=None) as vocab:
                version = vocab.register_directory(minilm)
                stub = vocab._stub

                def observe(engine: int, workers: int = 0) -> Callable[[], Any]:
                    request = vocab_pb2.ObserveSliceRequest(
                        version_id=version.version_id,
                        slice_label=f"bench-{engine}-{workers}",
                        corpus=common_pb2.CorpusSource(
                            shards=common_pb2.CorpusShards(files=[common_pb2.ArtifactRef(uri=str(p)) for p in paths])
                        ),
                        engine=common_pb2.EngineOptions(engine=engine, workers=workers),
                    )
                    return lambda: stub.ObserveSlice(iter([request]))

                tokenizer_json = load_tokenizer_directory(minilm)
                observation = [
                    {"engine": "tokenizers encode_batch + Counter (baseline)", "workers": 1,
                     **_timed(lambda: _plain_observation(paths, tokenizer_json))},
                    {"engine": "vocab service, local engine", "workers": 1,
                     **_timed(observe(common_pb2.CORPUS_ENGINE_LOCAL))},
                    {"engine": "vocab service, Ray", "workers": 1, **_timed(observe(common_pb2.CORPUS_ENGINE_RAY, 1))},
                    {"engine": "vocab service, Ray", "workers": 2, **_timed(observe(common_pb2.CORPUS_ENGINE_RAY, 2))},
                ]  # fmt: skip
            for row in observation:
                row["texts_per_s"] = round(LINES / row["seconds"], 1)
            result["observation"] = observation

            scored_folder = root / "scored"
            scored_folder.mkdir()
            scored = _write_shards(scored_folder, lines[:SCORED])
            with TrainerClient(f"127.0.0.1:{trainer_port}", timeout_s=None) as trainer:
                model = trainer._stub.CreateCheckpoint(
                    trainer_pb2.CreateCheckpointRequest(
                        model_dir=common_pb2.ArtifactRef(uri=str(minilm)), vocab_version_id=version.version_id
                    )
                ).checkpoint.checkpoint_id

                def score(engine: int, workers: int = 0) -> Callable[[], Any]:
                    return lambda: trainer.score_candidates(
                        model, scored, baseline_checkpoint_id=model, max_length=MAX_LENGTH, engine=engine, workers=workers,
                        destination=str(root / f"scores-{engine}-{workers}.parquet"),
                    )  # fmt: skip

                model_dir = store / "trainer" / "checkpoints" / model
                scoring = [
                    {"engine": "plain Hugging Face loop (baseline)", "workers": 1,
                     **_timed(lambda: _plain_scoring(lines[:SCORED], model_dir, model_dir))},
                    {"engine": "trainer ScoreCandidates, local engine", "workers": 1,
                     **_timed(score(common_pb2.CORPUS_ENGINE_LOCAL))},
                    {"engine": "trainer ScoreCandidates, Ray", "workers": 1, **_timed(score(common_pb2.CORPUS_ENGINE_RAY, 1))},
                    {"engine": "trainer ScoreCandidates, Ray", "workers": 2, **_timed(score(common_pb2.CORPUS_ENGINE_RAY, 2))},
                ]  # fmt: skip
            for row in scoring:
                row["texts_per_s"] = round(SCORED / row["seconds"], 1)
                row["texts_per_s_per_worker"] = round(row["texts_per_s"] / row["workers"], 1)
            result["scoring"] = scoring
        except grpc.RpcError as error:
            raise SystemExit(f"scale benchmark failed: {error.code()}: {error.details()}") from error
        finally:
            trainer_server.stop(grace=None)
            vocab_server.stop(grace=None)
    result["estimate"] = estimate(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return result


def estimate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """On paper: Ray workers (one CPU each) to pass over a 100M-text slice in an hour, from the
    measured one-worker rates (assuming they scale linearly, which 2 cores cannot show)."""
    rows = []
    for name, table in (("observation", result["observation"]), ("candidate scoring", result["scoring"])):
        [one] = [r for r in table if r["engine"].endswith("Ray") and r["workers"] == 1]
        worker_hours = SLICE_TEXTS / one["texts_per_s"] / 3600
        rows.append(
            {
                "pass": name,
                "texts_per_s_per_worker": one["texts_per_s"],
                "worker_hours": round(worker_hours, 1),
                "workers_for_one_hour": math.ceil(worker_hours),
            }
        )
    return rows


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    for key in ("observation", "scoring"):
        table = Table(title=key)
        for column in ("engine", "workers", "seconds", "texts/s", "peak MiB"):
            table.add_column(column)
        for row in result[key]:
            table.add_row(
                row["engine"],
                str(row["workers"]),
                f"{row['seconds']:.1f}",
                f"{row['texts_per_s']:,.0f}",
                f"{row['peak_mib']:,.0f}",
            )
        console.print(table)
    console.print(result["estimate"])
