"""A run's own state on disk, so that it resumes exactly: its selections, its totals, and the
snapshot a preemption (the service stopping) leaves mid-iteration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save as serialise_arrays
from transformers import PreTrainedModel

from driftlm.services.core import store

from .checkpoints import CheckpointRecord, new_checkpoint_id, now
from .loss_memory import LossMemory
from .models import parameter_count
from .run_context import Progress, RunContext, Vocabulary
from .selection import IterationSelection, selection_path
from .spec import RunSpec


@dataclass(frozen=True)
class Preemption:
    """Where a preempted run stood (preempted.json): its snapshot and progress."""

    checkpoint_id: str
    iteration: int
    steps_done: int
    step: int
    train_tokens: int
    wall_s: float


class RunJournal:
    """Reads and writes one run's resume state in its run directory (rank 0 writes)."""

    def __init__(self, spec: RunSpec, context: RunContext) -> None:
        self.spec = spec
        self.context = context

    def preempt(
        self,
        model: PreTrainedModel,
        optimizer: torch.optim.AdamW,
        memory: LossMemory,
        vocabulary: Vocabulary,
        before: np.ndarray | None,
        progress: Progress,
        iteration: int,
        steps_done: int,
    ) -> None:
        """Snapshot the run mid-iteration so that it resumes exactly (nothing to do at its start)."""
        directory = self.context.run_directory
        if steps_done == 0:  # the iteration's checkpoint (or the base) already is the state
            (directory / "preempted.json").unlink(missing_ok=True)
            return
        snapshot = self.context.checkpoints.save(
            CheckpointRecord(
                checkpoint_id=new_checkpoint_id(self.context.run_id, "preempted", str(progress.step)),
                vocab_version_id=self.spec.vocab_version_id,
                parent_checkpoint_id=self.spec.base_checkpoint_id,
                run_id=self.context.run_id,
                step=progress.step,
                create_time=now(),
                parameter_count=parameter_count(model),
                display_name=f"{self.context.run_id} preempted at step {progress.step}",
            ),
            model,
            vocabulary.tokenizer_json,
            memory,
            optimizer.state_dict(),
        )
        signal_path = directory / "preempted-signal.safetensors"
        if before is not None:
            store.write_bytes_atomically(signal_path, serialise_arrays({"signal": before}))
        else:
            signal_path.unlink(missing_ok=True)
        store.write_json_atomically(
            directory / "preempted.json",
            {
                "checkpoint_id": snapshot.checkpoint_id,
                "iteration": iteration,
                "steps_done": steps_done,
                "step": progress.step,
                "train_tokens": progress.train_tokens,
                "wall_s": progress.wall_s,
            },
        )

    def last_preemption(self) -> Preemption | None:
        """Where the run was last preempted, if ever (and its snapshot is still there)."""
        path = self.context.run_directory / "preempted.json"
        if not path.is_file():
            return None
        preemption = Preemption(**store.read_json(path))
        return preemption if self.context.checkpoints.exists(preemption.checkpoint_id) else None

    def preemption_at(self, done: int) -> Preemption | None:
        """The snapshot to resume from, if the run was preempted inside the iteration it is at."""
        preemption = self.last_preemption()
        return preemption if preemption is not None and preemption.iteration == done else None

    def saved_signal(self) -> np.ndarray | None:
        path = self.context.run_directory / "preempted-signal.safetensors"
        return load_arrays(str(path))["signal"] if path.is_file() else None

    def save_selection(self, selection: IterationSelection) -> None:
        store.write_json_atomically(
            selection_path(self.context.run_directory, selection.iteration), selection.to_json()
        )

    def save_totals(self, progress: Progress) -> None:
        store.write_json_atomically(
            self.context.run_directory / f"totals-{progress.iteration + 1}.json",
            {"train_tokens": progress.train_tokens, "wall_s": progress.wall_s},
        )

    def resumed_totals(self) -> tuple[int, float]:
        totals = sorted(self.context.run_directory.glob("totals-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        if not totals:
            return 0, 0.0
        record = store.read_json(totals[-1])
        return int(record["train_tokens"]), float(record["wall_s"])
