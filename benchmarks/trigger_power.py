"""The trigger's power and its false-fire rate, on real dated text (`python -m benchmarks trigger_power`).

For each of SEEDS seeds the changes of Debian packages from 2003 to 2012 (the shipped corpus,
changelogs.py) are shuffled and cut: TRAINED_TEXTS to train on, the rest to draw slices of the same
period from. A model is trained on the first part through the real vocab and trainer services, at
`driftlm run`'s defaults (MiniLM, its new MLM head warmed up, then 48 steps of 16 texts of at most
48 pieces); the trainer builds the checkpoint's memory as it always does. Then for every slice
size and share, one slice of the period's unseen texts with that share of changes from 2020 to
2022 mixed in is decided on. A cell's rate is over the seeds, each with its own split, training
and calibration: what a user would see, not the luck of one calibration draw. The 0% column is the
false-fire rate (the default allows 1%); the others are the power.

Scoring every slice through ScoreSlice would score each text many times over. Instead each text of
the two pools is scored once (masked and scored in eval mode exactly as ScoreSlice does, its words
split the same way), and a slice's decision is `score_slice` over its texts' occurrences and
words; a mask drawn for a text alone has the distribution ScoreSlice's batch mask gives it.
tests/trainer/test_trigger_power.py checks that both paths agree.

The slices of 3,000 texts draw from the period's other 3,671 texts, so within a seed they overlap.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from driftlm.services.core.strategy import Strategy
from driftlm.services.trainer.checkpoints import CheckpointStore
from driftlm.services.trainer.data import tokenize_texts
from driftlm.services.trainer.loss_memory import LossMemory
from driftlm.services.trainer.remote import RemoteVocab
from driftlm.services.trainer.run_context import Vocabulary, vocabulary_of
from driftlm.services.trainer.scoring import Occurrences, token_losses
from driftlm.services.trainer.trigger import Signal, TriggerOptions, score_slice
from driftlm.services.trainer.words import TextWords, WordSplitter
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc, vocab_pb2

from . import changelogs
from .harness import RESULTS, describe_device
from .stack import Stack, scratch_stack

PERIOD = ("2003", "2012")
LATER = ("2020", "2022")
TRAINED_TEXTS = 4000
LATER_TEXTS = 1500
SIZES = (100, 300, 600, 1000, 3000)
SHARES = (0.0, 0.05, 0.1, 0.2, 0.5)
SEEDS = 20
MAX_LENGTH = 48


@dataclass(frozen=True)
class ScoredPool:
    """Texts each scored once: their masked occurrences (grouped by text) and their words."""

    occurrences: Occurrences
    # occurrences of text i are [starts[i], starts[i + 1])
    starts: np.ndarray
    words: TextWords

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def of(cls, occurrences: Occurrences, words: TextWords) -> ScoredPool:
        order = np.argsort(occurrences.texts, kind="stable")
        grouped = Occurrences(occurrences.token_ids[order], occurrences.losses[order], occurrences.texts[order])
        starts = np.searchsorted(grouped.texts, np.arange(len(words) + 1))
        return cls(grouped, starts, words)

    def take(self, texts: np.ndarray, first_number: int = 0) -> tuple[Occurrences, TextWords]:
        """The chosen texts' occurrences and words, renumbered from first_number in the order given."""
        ranges = [np.arange(self.starts[t], self.starts[t + 1]) for t in texts]
        rows = np.concatenate(ranges) if ranges else np.empty(0, np.int64)
        numbers = np.repeat(np.arange(first_number, first_number + len(texts)), [len(r) for r in ranges])
        occurrences = Occurrences(self.occurrences.token_ids[rows], self.occurrences.losses[rows], numbers)
        return occurrences, self.words.subset(texts.tolist())


def mixed_slice(
    period: ScoredPool, later: ScoredPool, *, size: int, share: float, rng: np.random.Generator
) -> tuple[Occurrences, TextWords]:
    """`size` texts: round(share * size) drawn from `later`, the rest from `period`."""
    from_later = round(share * size)
    own = rng.choice(len(period), size - from_later, replace=False)
    new = rng.choice(len(later), from_later, replace=False)
    own_occurrences, own_words = period.take(own)
    new_occurrences, new_words = later.take(new, first_number=len(own))
    occurrences = Occurrences(
        np.concatenate([own_occurrences.token_ids, new_occurrences.token_ids]),
        np.concatenate([own_occurrences.losses, new_occurrences.losses]),
        np.concatenate([own_occurrences.texts, new_occurrences.texts]),
    )
    words = TextWords.joined(own_words, new_words)
    return occurrences, words


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint trained on the period, with what scoring needs."""

    checkpoint_id: str
    memory: LossMemory
    model: torch.nn.Module
    vocabulary: Vocabulary
    stack: Stack

    @property
    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return self.stack.trainer


def train_like_the_loop(
    stack: Stack, base_checkpoint_id: str, texts: Sequence[str], *, head_steps: int, steps: int, seed: int
) -> str:
    """Train as `driftlm run` trains its first slice: the new head warmed up alone, then the model."""
    checkpoint = base_checkpoint_id
    common = {
        "kind": trainer_pb2.RUN_KIND_MLM,
        "slices": [stack.slice_file("period", texts)],
        "strategy": Strategy.UNIFORM.proto,
        "iterations": 1,
        "batch_size": 16,
        "max_length": MAX_LENGTH,
        "seed": seed,
    }
    for steps_of_run, learning_rate, head_only in ((head_steps, 1e-3, True), (steps, 1e-4, False)):
        if steps_of_run:
            run, _ = stack.run(
                trainer_pb2.StartRunRequest(
                    base_checkpoint_id=checkpoint,
                    steps_per_iteration=steps_of_run,
                    learning_rate=learning_rate,
                    head_only=head_only,
                    **common,  # type: ignore[arg-type]
                )
            )
            checkpoint = run.checkpoint_id
    return checkpoint


def minilm_base(stack: Stack, model_dir: Path) -> tuple[str, str]:
    """MiniLM's vocabulary and model registered: (vocab version id, checkpoint id)."""
    model_ref = common_pb2.ArtifactRef(uri=str(model_dir))
    version = stack.vocab.CreateVocabulary(vocab_pb2.CreateVocabularyRequest(tokenizer_dir=model_ref)).version
    checkpoint = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(model_dir=model_ref, vocab_version_id=version.version_id)
    ).checkpoint
    return version.version_id, checkpoint.checkpoint_id


@contextmanager
def trained_on(
    texts: Sequence[str], model_dir: Path, *, head_steps: int = 100, steps: int = 48, seed: int = 0
) -> Iterator[TrainedModel]:
    """Real vocab and trainer servers on a scratch store, the base model trained on `texts` as the
    loop trains its first slice. The servers stop on leaving."""
    with scratch_stack(read_roots=(model_dir,)) as stack:
        version_id, base = minilm_base(stack, model_dir)
        checkpoint = train_like_the_loop(stack, base, texts, head_steps=head_steps, steps=steps, seed=seed)
        checkpoints = CheckpointStore(stack.store)
        remote = RemoteVocab(stack.vocab_endpoint)
        try:
            vocabulary = vocabulary_of(remote.version(version_id))
        finally:
            remote.close()
        yield TrainedModel(checkpoint, checkpoints.memory(checkpoint), checkpoints.model(checkpoint), vocabulary, stack)


def scored_pool(trained: TrainedModel, texts: Sequence[str], *, seed: int) -> ScoredPool:
    """Every text scored once as ScoreSlice scores a slice (15% masked, one pass), and its words."""
    vocabulary = trained.vocabulary
    pool = tokenize_texts(vocabulary.tokenizer_json, texts, max_length=MAX_LENGTH, pad_id=vocabulary.pad_id)
    occurrences = token_losses(
        trained.model,  # type: ignore[arg-type]
        pool,
        special=vocabulary.special,
        mask_id=vocabulary.mask_id,
        mask_fraction=0.15,
        seed=seed,
        device=torch.device("cpu"),
    )
    return ScoredPool.of(occurrences, WordSplitter(vocabulary.tokenizer_json).text_words(pool.texts))


def decide_cells(
    memory: LossMemory,
    period: ScoredPool,
    later: ScoredPool,
    *,
    sizes: Sequence[int],
    shares: Sequence[float],
    seed: int,
    options: TriggerOptions,
) -> dict[tuple[int, float], tuple[Signal, ...] | None]:
    """One mixed slice per size and share: the signals that fired it, None when silent."""
    decisions: dict[tuple[int, float], tuple[Signal, ...] | None] = {}
    for size in sizes:
        for share in shares:
            rng = np.random.default_rng([seed, size, round(share * 1000)])
            decision = score_slice(*mixed_slice(period, later, size=size, share=share, rng=rng), memory, options)
            decisions[size, share] = decision.signals if decision.fire else None
    return decisions


def split_corpus(seed: int) -> tuple[list[str], list[str], list[str]]:
    """(texts to train on, the period's other texts, later texts): both periods shuffled and cut."""
    rng = np.random.default_rng(seed)
    period = [c.text for c in changelogs.load(*PERIOD)]
    later = [c.text for c in changelogs.load(*LATER)]
    period = [period[i] for i in rng.permutation(len(period))]
    later = [later[i] for i in rng.permutation(len(later))]
    return period[:TRAINED_TEXTS], period[TRAINED_TEXTS:], later[:LATER_TEXTS]


def run() -> Path:
    """Measure the table, write results/trigger_power.json and print it."""
    from .vocab import _minilm

    started = time.perf_counter()
    fired: Counter[tuple[int, float]] = Counter()
    signals: dict[tuple[int, float], Counter[str]] = {(n, s): Counter() for n in SIZES for s in SHARES}
    calibrations = []
    for seed in tqdm(range(SEEDS), desc="seeds (split, train, score)"):
        train, own, later = split_corpus(seed)
        with trained_on(train, _minilm(), seed=seed) as trained:
            period_pool, later_pool = scored_pool(trained, own, seed=seed), scored_pool(trained, later, seed=seed)
            decisions = decide_cells(
                trained.memory, period_pool, later_pool, sizes=SIZES, shares=SHARES, seed=seed, options=TriggerOptions()
            )
            calibrations.append(trained.memory.calibration)
        for cell, fired_by in decisions.items():
            if fired_by is not None:
                fired[cell] += 1
                signals[cell].update(signal.value for signal in fired_by)
    result = {
        "date": date.today().isoformat(),
        "device": describe_device(),
        "corpus": f"Debian changes {PERIOD[0]}-{PERIOD[1]}, per seed {TRAINED_TEXTS:,} to train on and the "
        f"other {len(own):,} to draw slices from, mixed with changes {LATER[0]}-{LATER[1]}",
        "model": "all-MiniLM-L6-v2, head warmed up 100 steps, then 48 steps of 16 x 48 pieces (driftlm run's defaults)",
        "false_fire_rate": TriggerOptions().false_fire_rate,
        "seeds": SEEDS,
        "calibration": {
            name: [round(getattr(c, name), 4) for c in calibrations]
            for name in ("null_mean", "null_sd", "token_inflation", "novelty_mean", "novelty_sd")
        },
        "cells": [
            {"size": n, "share": s, "fired": fired[n, s], "seeds": SEEDS, "signals": dict(signals[n, s])}
            for n in SIZES
            for s in SHARES
        ],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "trigger_power.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for size in SIZES:
        print(f"{size:>5} texts: " + "  ".join(f"{s:.0%} {fired[size, s]}/{SEEDS}" for s in SHARES))
    return path
