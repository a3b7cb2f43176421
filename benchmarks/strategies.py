"""The sampling strategies at `driftlm run`'s defaults (`python -m benchmarks strategies`).

1. What each strategy selects. MiniLM is trained on the embedded stream's 2016 as the loop trains
   its first slice, the vocabulary is updated on 2019 (K = 100), and each strategy trains on 2019
   as the loop would (3 iterations of 8 steps of 16 texts, a tenth replayed from 2018, the
   run's default alpha and top_x). From ListSelections, per iteration in which the strategy used
   its own signal: the Spearman correlation of the candidates' weights with their lengths; between
   two strategies, the overlap of the tenth of the candidates each weighs highest (independent
   rankings share about a tenth, identical ones all) and of the sentences drawn (against what two
   independent draws would share); for every strategy, the share of drawn sentences that hold a
   piece the update added, against the share in the pool.
2. What it buys. A tiny BERT trained on an earlier period, then on half of a later one by each
   strategy, 8 iterations of 4 steps; the steps each needs to reach the best held-out loss that
   uniform sampling reaches (other half), how many seeds reach it at all, and the held-out loss
   at the end, on the generated stream and on Debian changelogs (2003-2012, then 2020-2022).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from datetime import date
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from driftlm.loop.drifting_stream import generate_stream
from driftlm.services.core.strategy import Strategy
from driftlm.services.trainer.data import tokenize_texts
from driftlm.services.vocab.client import VocabClient
from driftlm.v1 import common_pb2, trainer_pb2, vocab_pb2

from . import changelogs
from .harness import RESULTS, describe_device
from .stack import Stack, scratch_stack
from .trigger_power import minilm_base, train_like_the_loop

SIGNAL_STRATEGIES = (Strategy.TOKEN_EMBEDDING_SHIFT, Strategy.SENTENCE_EMBEDDING_SHIFT, Strategy.TOKEN_MLM_LOSS)
TOP_SHARE = 0.1
TINY_BERT = json.dumps(
    {
        "model_type": "bert",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
    }
)


@dataclass(frozen=True)
class IterationFigures:
    """One iteration of one strategy's run."""

    iteration: int
    # The strategy that weighed the candidates (uniform where the run's has no signal yet).
    strategy: str
    spearman_weight_length: float
    eligible: int
    candidates: int
    drawn: int
    # Shares of drawn sentences and of candidates that hold a piece the update added.
    drawn_with_added: float
    pool_with_added: float


def _by_year(texts_per_period: int = 400) -> dict[str, list[str]]:
    years: dict[str, list[str]] = {}
    for record in generate_stream(texts_per_period=texts_per_period):
        years.setdefault(record["time"][:4], []).append(record["text"])
    # As the loop cuts a slice: a tenth held out for evaluation.
    return {year: texts[: len(texts) - len(texts) // 10] for year, texts in years.items()}


def updated_vocabulary(stack: Stack, version_id: str, texts: list[str], k: int = 100) -> vocab_pb2.VocabVersion:
    """The version after one update on `texts`, as the loop commits it."""
    with VocabClient(stack.vocab_endpoint) as vocab:
        observation = vocab.observe(version_id, texts, slice_label="new")
        proposal = vocab.propose(version_id, [observation.observation_id], k=k)
        committed = vocab.commit(proposal.proposal_id, display_name="new")
    request = vocab_pb2.GetVersionRequest(version_id=committed.version_id, include_tokenizer_json=True)
    return stack.vocab.GetVersion(request).version


def selections(
    stack: Stack,
    base_checkpoint: str,
    version: vocab_pb2.VocabVersion,
    texts: list[str],
    replay: list[str],
    *,
    strategies: tuple[Strategy, ...] = SIGNAL_STRATEGIES,
    seed: int = 0,
    max_length: int = 48,
    learning_rate: float = 1e-4,
) -> dict[Strategy, list[trainer_pb2.Selection]]:
    """Each strategy's selections on `texts`, trained as `driftlm run` trains an adaptive arm."""
    chosen = {}
    for strategy in strategies:
        run, _ = stack.run(
            trainer_pb2.StartRunRequest(
                kind=trainer_pb2.RUN_KIND_MLM,
                base_checkpoint_id=base_checkpoint,
                vocab_version_id=version.version_id,
                slices=[stack.slice_file("new", texts)],
                replay_slices=[stack.slice_file("replay", replay)],
                replay_fraction=0.1,
                strategy=strategy.proto,
                iterations=3,
                steps_per_iteration=8,
                batch_size=16,
                max_length=max_length,
                learning_rate=learning_rate,
                seed=seed,
            )
        )
        chosen[strategy] = list(
            stack.trainer.ListSelections(trainer_pb2.ListSelectionsRequest(run_id=run.run_id)).selections
        )
    return chosen


def iteration_figures(
    chosen: dict[Strategy, list[trainer_pb2.Selection]],
    version: vocab_pb2.VocabVersion,
    texts: list[str],
    max_length: int = 48,
) -> dict[Strategy, list[IterationFigures]]:
    """Per strategy and iteration: weights against lengths, and how often added pieces are drawn."""
    pool = tokenize_texts(
        version.tokenizer_json, texts, max_length=max_length, pad_id=max(version.special_tokens.pad_id, 0)
    )
    added = np.array([p.id for p in version.change.added], dtype=np.int64)
    holds_added = np.array([np.isin(ids, added).any() for ids in pool.ids])
    figures: dict[Strategy, list[IterationFigures]] = {}
    for strategy, rows in chosen.items():
        figures[strategy] = []
        for selection in rows:
            candidates = np.asarray(selection.candidate_indices)
            weights = np.asarray(selection.candidate_weights)
            eligible = weights > 0
            drawn = np.asarray([*selection.sentence_indices, *selection.topped_up_indices])
            figures[strategy].append(
                IterationFigures(
                    iteration=selection.iteration,
                    strategy=Strategy.from_proto(selection.strategy, "strategy").short_name,
                    spearman_weight_length=float(
                        stats.spearmanr(weights[eligible], pool.lengths[candidates][eligible]).statistic
                    )
                    if eligible.sum() > 2 and np.ptp(weights[eligible]) > 0
                    else float("nan"),
                    eligible=int(eligible.sum()),
                    candidates=int(candidates.size),
                    drawn=int(drawn.size),
                    drawn_with_added=float(holds_added[drawn].mean()) if drawn.size else 0.0,
                    pool_with_added=float(holds_added[candidates].mean()),
                )
            )
    return figures


def overlaps(chosen: dict[Strategy, list[trainer_pb2.Selection]]) -> list[dict[str, object]]:
    """Per pair of strategies and iteration where both used their own signal: the overlap of their
    top tenth by weight, and of their drawn sentences with its random baseline."""
    rows = []
    for first, second in combinations(chosen, 2):
        for a, b in zip(chosen[first], chosen[second], strict=True):
            if a.strategy != first.proto or b.strategy != second.proto:
                continue
            assert list(a.candidate_indices) == list(b.candidate_indices)  # one pool per iteration and seed
            top = max(1, round(TOP_SHARE * len(a.candidate_indices)))
            top_a = set(
                np.asarray(a.candidate_indices)[np.argsort(-np.asarray(a.candidate_weights), kind="stable")[:top]]
            )
            top_b = set(
                np.asarray(b.candidate_indices)[np.argsort(-np.asarray(b.candidate_weights), kind="stable")[:top]]
            )
            drawn_a, drawn_b = set(a.sentence_indices), set(b.sentence_indices)
            rows.append(
                {
                    "pair": f"{first.short_name} / {second.short_name}",
                    "iteration": a.iteration,
                    "top_overlap": len(top_a & top_b) / top,
                    "drawn_overlap": len(drawn_a & drawn_b) / max(min(len(drawn_a), len(drawn_b)), 1),
                    "drawn_overlap_if_independent": max(len(drawn_a), len(drawn_b)) / len(a.candidate_indices),
                }
            )
    return rows


def _selection_benchmark() -> dict[str, object]:
    from .vocab import _minilm

    years = _by_year()
    with scratch_stack(read_roots=(_minilm(),)) as stack:
        version_id, base = minilm_base(stack, _minilm())
        trained = train_like_the_loop(stack, base, years["2016"], head_steps=100, steps=48, seed=0)
        version = updated_vocabulary(stack, version_id, years["2019"])
        chosen = selections(stack, trained, version, years["2019"], years["2018"])
    figures = iteration_figures(chosen, version, years["2019"])
    return {
        "added_pieces": [p.piece for p in version.change.added],
        "iterations": {s.short_name: [asdict(f) for f in rows] for s, rows in figures.items()},
        "overlaps": overlaps(chosen),
    }


# Steps to uniform's best held-out loss -------------------------------------------------------

SEEDS = (1, 2, 3, 4, 5)
STEPS_PER_ITERATION = 4
ITERATIONS = 8


def _held_out_curves(stack: Stack, early: list[str], late: list[str], seed: int) -> dict[str, list[float]]:
    """A tiny BERT trained on `early`, then on half of `late` by each strategy (its defaults): each
    strategy's held-out loss (other half of `late`) after every iteration."""
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=early))
    base = stack.vocab.CreateVocabulary(
        vocab_pb2.CreateVocabularyRequest(training_corpus=corpus, vocab_size=400)
    ).version
    start = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(model_config_json=TINY_BERT, vocab_version_id=base.version_id, seed=seed)
    ).checkpoint
    common = {"kind": trainer_pb2.RUN_KIND_MLM, "batch_size": 16, "max_length": 32, "learning_rate": 3e-3, "seed": seed}
    trained, _ = stack.run(
        trainer_pb2.StartRunRequest(
            base_checkpoint_id=start.checkpoint_id,
            slices=[stack.slice_file(f"early-{seed}", early)],
            strategy=Strategy.UNIFORM.proto,
            iterations=4,
            steps_per_iteration=25,
            **common,  # type: ignore[arg-type]
        )
    )
    drifted = stack.slice_file(f"late-{seed}", late[: len(late) // 2])
    heldout = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=late[len(late) // 2 :]))
    curves: dict[str, list[float]] = {}
    for strategy in Strategy:
        _, checkpoints = stack.run(
            trainer_pb2.StartRunRequest(
                base_checkpoint_id=trained.checkpoint_id,
                slices=[drifted],
                strategy=strategy.proto,
                iterations=ITERATIONS,
                steps_per_iteration=STEPS_PER_ITERATION,
                **common,  # type: ignore[arg-type]
            )
        )
        curves[strategy.short_name] = [
            stack.trainer.ScoreSlice(trainer_pb2.ScoreSliceRequest(checkpoint_id=c, corpus=heldout, seed=9)).slice_loss
            for c in checkpoints
        ]
    return curves


def _corpora() -> dict[str, tuple[list[str], list[str]]]:
    years = _by_year(800)
    rng = np.random.default_rng(0)
    early = [c.text for c in changelogs.load("2003", "2012")]
    late = [c.text for c in changelogs.load("2020", "2022")]
    return {
        "generated stream, 2016-2017 then 2021": (years["2016"] + years["2017"], years["2021"]),
        "Debian changes, 2003-2012 then 2020-2022": (
            [early[i] for i in rng.choice(len(early), 1600, replace=False)],
            [late[i] for i in rng.choice(len(late), 800, replace=False)],
        ),
    }


def _steps_benchmark() -> list[dict[str, object]]:
    rows = []
    for corpus, (early, late) in _corpora().items():
        with scratch_stack() as stack:
            runs = [_held_out_curves(stack, early, late, seed) for seed in SEEDS]
        uniform = Strategy.UNIFORM.short_name
        targets = [min(run[uniform]) for run in runs]
        for strategy in Strategy:
            name = strategy.short_name
            steps = [
                next((STEPS_PER_ITERATION * (i + 1) for i, loss in enumerate(run[name]) if loss <= target), None)
                for run, target in zip(runs, targets, strict=True)
            ]
            reached = [n for n in steps if n is not None]
            finals = [run[name][-1] for run in runs]
            rows.append(
                {
                    "corpus": corpus,
                    "strategy": name,
                    "reached": len(reached),
                    "seeds": len(SEEDS),
                    "steps_mean_when_reached": statistics.fmean(reached) if reached else None,
                    "steps_range": [min(reached), max(reached)] if reached else None,
                    "final_heldout_loss_mean": statistics.fmean(finals),
                    "final_heldout_loss_range": [min(finals), max(finals)],
                }
            )
    return rows


def run() -> Path:
    """Measure both parts, write results/strategies.json and print the figures."""
    result = {
        "date": date.today().isoformat(),
        "device": describe_device(),
        "selection": _selection_benchmark(),
        "steps_to_uniforms_best": _steps_benchmark(),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "strategies.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["selection"], indent=1)[:4000])
    for row in result["steps_to_uniforms_best"]:
        print(row)
    return path
