"""`driftlm train`: one run in the foreground, without the service, alone or under torchrun.

The run is the service's (same spec, checkpoints, resume); what differs is who starts it. Under
torchrun every rank runs this, DDP keeps them in step, and rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from driftlm.services.runtime.errors import FailedPreconditionError
from driftlm.services.vocab.client import VocabClient

from .checkpoints import CheckpointStore
from .distributed import ranks_from_environment
from .server import sampler_for
from .servicer import VocabPeer
from .spec import RunSpec
from .training import Progress, RunContext, execute_run


def train_from_spec(spec_path: Path, *, store: Path, run_id: str, vocab_endpoint: str, sampling_endpoint: str) -> str:
    """Run the RunSpec JSON at spec_path to the end (resuming if run_id has checkpoints); final checkpoint id."""
    spec = RunSpec.from_json(json.loads(spec_path.read_text(encoding="utf-8")))
    ranks, device = ranks_from_environment()
    checkpoints = CheckpointStore(store)
    if not checkpoints.exists(spec.base_checkpoint_id):
        raise FailedPreconditionError(f"checkpoint {spec.base_checkpoint_id} is not in {checkpoints.root}")
    run_directory = store / "trainer" / "runs" / run_id
    run_directory.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=spec.total_steps, desc=run_id, unit="step", disable=not ranks.is_primary)

    def report(progress: Progress) -> None:
        bar.update(progress.step - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.3f}", tokens_per_s=f"{progress.tokens_per_s:,.0f}")

    with VocabClient(vocab_endpoint) as vocab:
        context = RunContext(
            run_id,
            run_directory,
            checkpoints,
            VocabPeer(vocab, vocab_endpoint),
            sampler_for(sampling_endpoint),
            device,
            report,
            ranks=ranks,
        )
        try:
            final = execute_run(spec, context)
        finally:
            bar.close()
            if ranks.world > 1:
                dist.destroy_process_group()
    return final.checkpoint_id
