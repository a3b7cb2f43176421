"""`driftlm train`: one run in the foreground, without the service, alone or under torchrun.

The run is the service's (same spec, checkpoints, resume); what differs is who starts it. Under
torchrun every rank runs this, DDP keeps them in step, and rank 0 writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from driftlm.services.runtime.resources import usable_cpus
from driftlm.services.trainer.run_context import Progress

from .app import TrainerApp
from .distributed import ranks_from_environment
from .remote import RemoteVocab, sampler_for
from .spec import RunSpec


def train_from_spec(spec_path: Path, *, store: Path, run_id: str, vocab_endpoint: str, sampling_endpoint: str) -> str:
    """Run the RunSpec JSON at spec_path to the end (resuming if run_id has checkpoints); final checkpoint id."""
    spec = RunSpec.from_json(json.loads(spec_path.read_text(encoding="utf-8")))
    ranks, device = ranks_from_environment()
    if device.type == "cpu":  # ranks on one machine share its CPUs
        torch.set_num_threads(max(usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1))
    vocab = RemoteVocab(vocab_endpoint)
    app = TrainerApp(store, vocab, sampler_for(sampling_endpoint), device, serve_runs=False)
    bar = tqdm(total=spec.total_steps, desc=run_id, unit="step", disable=not ranks.is_primary)

    def report(progress: Progress) -> None:
        bar.update(progress.step - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.3f}", tokens_per_s=f"{progress.tokens_per_s:,.0f}")

    try:
        final = app.train_in_foreground(spec, run_id, report, ranks=ranks)
    finally:
        bar.close()
        vocab.close()
        if ranks.world > 1:
            dist.destroy_process_group()
    return final.checkpoint_id
