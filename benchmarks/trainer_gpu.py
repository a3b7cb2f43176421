"""MiniLM training throughput and model FLOPs utilisation on a GPU: driftlm's step against the plain loop.

Run on a machine with CUDA (`python benchmarks/trainer_gpu.py`); it writes results/trainer_gpu.json.
The model is MiniLM-L6-H384 built from its config (random weights: speed does not depend on them),
bf16 autocast, AdamW, batch x 128 pieces, 15% masked. Both loops use the same masked batches.

Model FLOPs per step count what each loop has to compute, 6 x (matmul parameters) per token for
the encoder plus attention (12 x layers x hidden x sequence per token), plus the vocabulary head:
at every position for the plain loop, at the masked positions for driftlm. MFU divides the useful
FLOPs (encoder everywhere, head at the masked positions) by the time and the GPU's dense bf16 peak.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from driftlm.services.trainer.masking import mask_batch
from driftlm.services.trainer.models import MaskedLM

MINILM = {
    "vocab_size": 30_522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
}
SEQUENCE = 128
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _peak(name: str) -> float:
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), float("nan"))


def _useful_flops(config: BertConfig, batch: int, masked: int) -> float:
    hidden, layers, intermediate = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_token = 6 * layers * (4 * hidden * hidden + 2 * hidden * intermediate) + 12 * layers * hidden * SEQUENCE
    head = 6 * (hidden * hidden + hidden * config.vocab_size)
    return batch * SEQUENCE * per_token + masked * head


def _time(step, batches, warmup: int = 3) -> float:  # type: ignore[no-untyped-def]
    for batch in batches[:warmup]:
        step(batch)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (len(batches) - warmup)


def main() -> None:
    device = torch.device("cuda")
    config = BertConfig(**MINILM)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    special = torch.zeros(config.vocab_size, dtype=torch.bool)
    special[[0, 100, 101, 102, 103]] = True
    generator = torch.Generator().manual_seed(1)
    results = []
    step_module = MaskedLM(model)
    for batch_size in (64, 256):
        batches = []
        for _ in range(15):
            ids = torch.randint(1000, config.vocab_size, (batch_size, SEQUENCE), generator=generator)
            batches.append(
                mask_batch(
                    ids, torch.ones_like(ids), special=special, mask_id=103, fraction=0.15, generator=generator
                ).to(device)
            )

        def ours(masked) -> None:  # type: ignore[no-untyped-def]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = step_module(masked.input_ids, masked.attention_mask, masked.masked)
            loss = F.cross_entropy(logits.float(), masked.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def plain(masked) -> None:  # type: ignore[no-untyped-def]
            labels = torch.where(masked.masked, masked.original_ids, torch.full_like(masked.original_ids, -100))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=masked.input_ids, attention_mask=masked.attention_mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        masked_count = int(sum(int(b.masked.sum()) for b in batches) / len(batches))
        useful = _useful_flops(config, batch_size, masked_count)
        name = torch.cuda.get_device_name(device)
        for label, step in (
            ("driftlm step (head at masked positions)", ours),
            ("plain BertForMaskedLM(labels=)", plain),
        ):
            seconds = _time(step, batches)
            results.append(
                {
                    "device": name,
                    "batch": f"{batch_size} x {SEQUENCE}",
                    "loop": label,
                    "step_ms": round(seconds * 1e3, 2),
                    "tokens_per_s": round(batch_size * SEQUENCE / seconds),
                    "mfu": round(useful / seconds / _peak(name), 4),
                    "torch": torch.__version__,
                }
            )
            print(json.dumps(results[-1]))
    out = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "trainer_gpu.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
