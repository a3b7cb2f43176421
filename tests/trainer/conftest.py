"""Real vocab, sampling and trainer servers on 127.0.0.1 over one temporary store, and a tiny BERT."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from driftlm.services.runtime.config import ServeConfig
from driftlm.services.sampling.server import create_server as create_sampling_server
from driftlm.services.trainer.server import create_server as create_trainer_server
from driftlm.services.vocab.server import create_server as create_vocab_server
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc, vocab_pb2, vocab_pb2_grpc

from ..vocab.planted import EMERGING, VANISHING, observe, planted_base_directory, planted_slice, register

TINY_BERT = json.dumps(
    {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
)


@dataclass
class Stack:
    """Servers, stubs and the planted vocab chain: base (old words) -> updated (new words)."""

    store: Path
    vocab: vocab_pb2_grpc.VocabServiceStub
    trainer: trainer_pb2_grpc.TrainerServiceStub
    vocab_target: str
    sampling_target: str
    trainer_target: str
    base_version: vocab_pb2.VocabVersion
    updated_version: vocab_pb2.VocabVersion
    base_checkpoint: trainer_pb2.Checkpoint

    def slice_file(self, name: str, texts: list[str]) -> common_pb2.ArtifactRef:
        path = self.store / "slices" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n", encoding="utf-8")
        return common_pb2.ArtifactRef(uri=str(path))

    def run_to_end(self, request: trainer_pb2.StartRunRequest) -> trainer_pb2.RunStatus:
        return self.run_with_checkpoints(request)[0]

    def run_with_checkpoints(self, request: trainer_pb2.StartRunRequest) -> tuple[trainer_pb2.RunStatus, list[str]]:
        """Run to the end; the final state and each iteration's checkpoint, as WatchRun reported them."""
        run = self.trainer.StartRun(request).run
        last, checkpoints = run, []
        for update in self.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=600):
            last = update.run
            if last.checkpoint_id and last.checkpoint_id not in checkpoints:
                checkpoints.append(last.checkpoint_id)
        assert last.state == trainer_pb2.RUN_STATE_SUCCEEDED, last.error_message
        assert len(checkpoints) == request.iterations
        return last, checkpoints

    def selections(self, run_id: str) -> list[trainer_pb2.Selection]:
        return list(self.trainer.ListSelections(trainer_pb2.ListSelectionsRequest(run_id=run_id)).selections)


def old_slice(seed: int, texts: int = 400) -> list[str]:
    """Text of the base period: filler with the vanishing words."""
    return planted_slice(np.random.default_rng(seed), VANISHING, texts=texts)


def new_slice(seed: int, texts: int = 400) -> list[str]:
    """Text of the later period: filler with the emerging words."""
    return planted_slice(np.random.default_rng(seed), EMERGING, texts=texts)


def run_request(stack: Stack, slices: list[common_pb2.ArtifactRef], **fields: object) -> trainer_pb2.StartRunRequest:
    defaults: dict[str, object] = {
        "kind": trainer_pb2.RUN_KIND_MLM,
        "base_checkpoint_id": stack.base_checkpoint.checkpoint_id,
        "strategy": common_pb2.SAMPLING_STRATEGY_UNIFORM,
        "iterations": 2,
        "steps_per_iteration": 4,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "seed": 7,
        "max_length": 32,
    }
    return trainer_pb2.StartRunRequest(slices=slices, **{**defaults, **fields})


@pytest.fixture
def stack(tmp_path: Path, test_roots: dict[str, Any]) -> Iterator[Stack]:
    store = tmp_path / "store"
    vocab_server, vocab_port = create_vocab_server("127.0.0.1:0", ServeConfig(store=store, **test_roots))
    sampling_server, sampling_port = create_sampling_server("127.0.0.1:0")
    vocab_target, sampling_target = f"127.0.0.1:{vocab_port}", f"127.0.0.1:{sampling_port}"
    trainer_server, trainer_port = create_trainer_server(
        "127.0.0.1:0",
        ServeConfig(store=store, vocab_endpoint=vocab_target, sampling_endpoint=sampling_target, **test_roots),
    )
    try:
        with (
            grpc.insecure_channel(vocab_target) as vocab_channel,
            grpc.insecure_channel(f"127.0.0.1:{trainer_port}") as trainer_channel,
        ):
            vocab = vocab_pb2_grpc.VocabServiceStub(vocab_channel)
            trainer = trainer_pb2_grpc.TrainerServiceStub(trainer_channel)
            base = register(vocab, planted_base_directory(tmp_path / "base"))
            seen = observe(vocab, base.version_id, new_slice(100))
            proposal = vocab.ProposeUpdate(
                vocab_pb2.ProposeUpdateRequest(version_id=base.version_id, observation_ids=[seen.observation_id], k=4)
            )
            updated = vocab.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id)).version
            checkpoint = trainer.CreateCheckpoint(
                trainer_pb2.CreateCheckpointRequest(
                    model_config_json=TINY_BERT, vocab_version_id=base.version_id, seed=1
                )
            ).checkpoint
            yield Stack(
                store,
                vocab,
                trainer,
                vocab_target,
                sampling_target,
                f"127.0.0.1:{trainer_port}",
                base,
                updated,
                checkpoint,
            )
    finally:
        trainer_server.stop(grace=None)
        sampling_server.stop(grace=None)
        vocab_server.stop(grace=None)
