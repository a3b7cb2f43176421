"""`driftlm run` until the continuous-update pipeline lands: the sampling service end to end.

It starts the sampling service as its own process (or uses --endpoints), plants a few tokens
whose embeddings moved in a MiniLM-sized vocabulary, and shows each selection strategy finding
the sentences that carry them, all over gRPC.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from driftlm.local_services import LocalServices
from driftlm.services.sampling.client import SamplingClient

VOCAB_SIZE = 30_522
HIDDEN = 384
PLANTED = 12
CANDIDATES = 20_000
SELECT = 2_000


def _parse_endpoints(endpoints: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in endpoints.split(",") if item)
    return {name.strip(): target.strip() for name, target in pairs}


def _planted_world(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token embeddings before/after an iteration, with PLANTED tokens moved far, and a pool."""
    old = rng.standard_normal((VOCAB_SIZE, HIDDEN), dtype=np.float32)
    new = old + 0.05 * rng.standard_normal((VOCAB_SIZE, HIDDEN), dtype=np.float32)
    planted = rng.choice(VOCAB_SIZE, PLANTED, replace=False)
    new[planted] = rng.standard_normal((PLANTED, HIDDEN), dtype=np.float32)
    lengths = rng.integers(4, 64, CANDIDATES)
    token_ids = rng.integers(0, VOCAB_SIZE, int(lengths.sum()))
    carriers = rng.choice(CANDIDATES, CANDIDATES // 20, replace=False)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    token_ids[offsets[carriers]] = rng.choice(planted, carriers.shape[0])
    carries = np.zeros(CANDIDATES, dtype=bool)
    carries[carriers] = True
    return {"old": old, "new": new, "planted": planted, "lengths": lengths, "token_ids": token_ids, "carries": carries}


def _demonstrate(client: SamplingClient, seed: int, console: Console) -> None:
    world = _planted_world(np.random.default_rng(seed))
    start = time.perf_counter()
    shift, top = client.cosine_distance(world["old"], world["new"], top_k=PLANTED)
    shift_s = time.perf_counter() - start
    found = len(set(top.tolist()) & set(world["planted"].tolist()))
    console.print(
        f"token shift over {VOCAB_SIZE:,} x {HIDDEN} embeddings: {shift_s * 1e3:.0f} ms; top {PLANTED} are {found}/{PLANTED} planted tokens"
    )

    table = Table(title=f"{SELECT:,} of {CANDIDATES:,} sentences; {world['carries'].mean():.0%} carry a shifted token")
    for column in ("strategy", "eligible", "selected carrying a shifted token", "ms"):
        table.add_column(column)
    rng = np.random.default_rng(seed + 1)
    cls_old = rng.standard_normal((CANDIDATES, HIDDEN), dtype=np.float32)
    noise_scale = np.where(world["carries"], 1.0, 0.05).astype(np.float32)[:, None]
    cls_new = cls_old + noise_scale * rng.standard_normal((CANDIDATES, HIDDEN), dtype=np.float32)
    losses = np.where(world["carries"], 6.0, 2.0) + rng.random(CANDIDATES)
    asks: dict[str, dict[str, Any]] = {
        "uniform": {},
        "token-embedding-shift": {"candidate_token_ids": world["token_ids"], "token_shift": shift, "top_x": PLANTED},
        "sentence-embedding-shift": {"old_cls": cls_old, "new_cls": cls_new},
        "token-mlm-loss": {"losses": losses.astype(np.float32)},
    }
    for strategy, extra in asks.items():
        start = time.perf_counter()
        chosen = client.select_sentences(
            strategy, k=SELECT, candidate_lengths=world["lengths"], alpha=0.9, seed=seed, **extra
        )
        elapsed = time.perf_counter() - start
        table.add_row(
            strategy,
            f"{chosen.eligible_count:,}",
            f"{world['carries'][chosen.indices].mean():.0%}",
            f"{elapsed * 1e3:.0f}",
        )
    console.print(table)

    weights = np.random.default_rng(seed).random(1_000_000)
    for replace in (False, True):
        start = time.perf_counter()
        drawn = client.draw(weights, k=100_000, replace=replace, seed=seed)
        console.print(
            f"draw 100,000 of 1,000,000 {'with' if replace else 'without'} replacement over gRPC: {(time.perf_counter() - start) * 1e3:.0f} ms, {np.unique(drawn).size:,} distinct"
        )


def run_walkthrough(*, endpoints: str | None, store: Path, seed: int) -> int:
    """Run the walkthrough; returns the process exit code."""
    console = Console()
    if endpoints:
        with SamplingClient(_parse_endpoints(endpoints)["sampling"]) as client:
            _demonstrate(client, seed, console)
        return 0
    with console.status("starting the sampling service"), LocalServices(("sampling",), store) as services:
        console.print(f"sampling service on {services['sampling'].target} (log: {services['sampling'].log_path})")
        with SamplingClient(services["sampling"].target) as client:
            _demonstrate(client, seed, console)
    console.print("services stopped")
    return 0
