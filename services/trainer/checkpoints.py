"""The trainer's checkpoints: immutable Hugging Face directories, written whole or not at all.

<store>/trainer/checkpoints/<checkpoint_id>/
    config.json, model.safetensors      save_pretrained (safetensors, never pickle)
    tokenizer.json                      the vocab version's tokenizer
    checkpoint.json                     what it is: vocab version, parent, run, step
    loss_memory.safetensors             the per-token loss memory
    optimizer.safetensors, optimizer.json   AdamW state, so a run resumes exactly (dropped from a
                                        run's earlier checkpoints once it has succeeded)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from driftlm.services.core import store
from driftlm.services.core.errors import NotFoundError

from .loss_memory import LossMemory
from .models import load_model


@dataclass(frozen=True)
class CheckpointRecord:
    """checkpoint.json."""

    checkpoint_id: str
    vocab_version_id: str
    parent_checkpoint_id: str
    run_id: str
    step: int
    create_time: str
    parameter_count: int
    display_name: str
    # The import initialised the MLM head: the source had none (a sentence encoder) or none at all.
    new_mlm_head: bool = False

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def new_checkpoint_id(*parts: str) -> str:
    """A content id from whatever makes the checkpoint unique (run and iteration, import source)."""
    return "ckpt-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def now() -> str:
    """RFC 3339 UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(index), {})[name] = float(value)
    return tensors, scalars


def _optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in scalars["state"].items():
        for name, value in values.items():
            state.setdefault(int(index), {})[name] = torch.tensor(value)
    return {"state": state, "param_groups": scalars["param_groups"]}


class CheckpointStore:
    """Checkpoints under `<store>/trainer/checkpoints`."""

    def __init__(self, store_root: Path) -> None:
        self.root = store_root / "trainer" / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        store.remove_temporaries(self.root)

    def directory(self, checkpoint_id: str) -> Path:
        """Where a checkpoint lives (NotFoundError when it does not exist)."""
        path = self.root / checkpoint_id
        if not store.is_stored_id(checkpoint_id) or not (path / "checkpoint.json").is_file():
            raise NotFoundError(f"checkpoint {checkpoint_id[:200]!r} does not exist; CreateCheckpoint imports a model")
        return path

    def exists(self, checkpoint_id: str) -> bool:
        """Whether the checkpoint is there."""
        return (self.root / checkpoint_id / "checkpoint.json").is_file()

    def record(self, checkpoint_id: str) -> CheckpointRecord:
        """checkpoint.json."""
        return CheckpointRecord(**store.read_json(self.directory(checkpoint_id) / "checkpoint.json"))

    def model(self, checkpoint_id: str) -> PreTrainedModel:
        """The model, on the CPU, in train mode."""
        return load_model(self.directory(checkpoint_id))

    def tokenizer_json(self, checkpoint_id: str) -> str:
        """The vocab version's tokenizer.json."""
        return (self.directory(checkpoint_id) / "tokenizer.json").read_text(encoding="utf-8")

    def memory(self, checkpoint_id: str) -> LossMemory:
        """The loss memory."""
        return LossMemory.load(self.directory(checkpoint_id) / "loss_memory.safetensors")

    def optimizer_state(self, checkpoint_id: str) -> dict[str, Any] | None:
        """The AdamW state dict saved with it, if any."""
        directory = self.directory(checkpoint_id)
        if not (directory / "optimizer.safetensors").is_file():
            return None
        return _optimizer_state(
            load_file(str(directory / "optimizer.safetensors")), store.read_json(directory / "optimizer.json")
        )

    def drop_optimizer_state(self, checkpoint_id: str) -> None:
        """Delete the AdamW state saved for resuming (2/3 of a checkpoint); weights and memory stay."""
        directory = self.directory(checkpoint_id)
        (directory / "optimizer.safetensors").unlink(missing_ok=True)  # first: optimizer_state checks it
        (directory / "optimizer.json").unlink(missing_ok=True)
        store.fsync_directory(directory)

    def save(
        self,
        record: CheckpointRecord,
        model: PreTrainedModel,
        tokenizer_json: str,
        memory: LossMemory,
        optimizer_state: dict[str, Any] | None = None,
    ) -> CheckpointRecord:
        """Write a checkpoint whole (temporary directory, fsync, rename); idempotent by id."""
        if self.exists(record.checkpoint_id):
            return self.record(record.checkpoint_id)
        try:
            with store.staged_directory(self.root) as temporary:
                model.save_pretrained(temporary, safe_serialization=True)
                (temporary / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
                memory.save(temporary / "loss_memory.safetensors")
                if optimizer_state is not None:
                    tensors, scalars = _optimizer_tensors(optimizer_state)
                    save_file(tensors, str(temporary / "optimizer.safetensors"))
                    (temporary / "optimizer.json").write_text(json.dumps(scalars), encoding="utf-8")
                (temporary / "checkpoint.json").write_text(json.dumps(record.to_json()), encoding="utf-8")
                store.publish_directory(temporary, self.root / record.checkpoint_id)
        except FileExistsError:  # written meanwhile by the same run, resumed
            pass
        return self.record(record.checkpoint_id)
