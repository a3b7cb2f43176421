"""DDP on the CPU: two gloo processes under torchrun train the same model as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from driftlm.services.core.strategy import Strategy
from driftlm.services.trainer.selection import load_selections
from driftlm.services.trainer.spec import RunKind, RunSpec
from driftlm.v1 import trainer_pb2

from .conftest import TINY_BERT, Stack, old_slice

NO_DROPOUT = TINY_BERT.replace("}", ', "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}')


def _train(stack: Stack, spec_path: str, run_id: str, *launcher: str) -> str:
    command = [
        *launcher,
        "-m",
        "driftlm",
        "train",
        "--spec",
        spec_path,
        "--run-id",
        run_id,
        "--store",
        str(stack.store),
        "--vocab-endpoint",
        stack.vocab_target,
        "--sampling-endpoint",
        stack.sampling_target,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_two_ranks_train_what_one_process_trains(stack: Stack) -> None:
    base = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=NO_DROPOUT, vocab_version_id=stack.base_version.version_id, seed=4
        )
    ).checkpoint
    slice_ref = stack.slice_file("old", old_slice(21))
    spec = RunSpec(
        kind=RunKind.MLM,
        base_checkpoint_id=base.checkpoint_id,
        vocab_version_id=stack.base_version.version_id,
        slices=(slice_ref.uri,),
        strategy=Strategy.TOKEN_MLM_LOSS,
        iterations=2,
        steps_per_iteration=4,
        batch_size=8,
        learning_rate=3e-3,
        seed=9,
        max_length=32,
    )
    spec_path = stack.store / "spec.json"
    spec_path.write_text(json.dumps(spec.to_json()))
    single = _train(stack, str(spec_path), "single", sys.executable)
    distributed = _train(
        stack,
        str(spec_path),
        "ddp",
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--no-python",
        sys.executable,
    )
    weights = [
        load_file(str(stack.store / "trainer" / "checkpoints" / c / "model.safetensors")) for c in (single, distributed)
    ]
    base_weights = load_file(str(stack.store / "trainer" / "checkpoints" / base.checkpoint_id / "model.safetensors"))
    moved = False
    for name, tensor in weights[0].items():
        # Equal up to float rounding (reductions run in another order), amplified a little by
        # AdamW's division by small second moments: 1e-4 against moves of about 1e-2.
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-4, msg=name)
        moved |= not torch.equal(tensor, base_weights[name])
    assert moved  # it trained
    # A run under `driftlm train` has no service record: its selections are read as ListSelections reads them.
    single_selections, ddp_selections = (
        load_selections(stack.store / "trainer" / "runs" / r) for r in ("single", "ddp")
    )
    assert len(single_selections) == len(ddp_selections) == 2
    for one, two in zip(single_selections, ddp_selections, strict=True):
        assert (one.sentence_indices, one.candidate_indices) == (two.sentence_indices, two.candidate_indices)
        # Each rank scores the candidates with its own copy of the model: equal up to float rounding.
        torch.testing.assert_close(
            torch.tensor(two.candidate_weights), torch.tensor(one.candidate_weights), rtol=1e-4, atol=0
        )
