"""Real vocab and trainer servers on a scratch store, in this process: what the benchmarks train with."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from driftlm.services.runtime.config import ServeConfig
from driftlm.services.trainer.server import create_server as create_trainer_server
from driftlm.services.vocab.server import create_server as create_vocab_server
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc, vocab_pb2_grpc


@dataclass(frozen=True)
class Stack:
    """The servers' store, endpoints and stubs."""

    store: Path
    vocab_endpoint: str
    vocab: vocab_pb2_grpc.VocabServiceStub
    trainer: trainer_pb2_grpc.TrainerServiceStub

    def slice_file(self, name: str, texts: Sequence[str]) -> common_pb2.ArtifactRef:
        """The texts as a JSONL corpus in the store."""
        path = self.store / "slices" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
        return common_pb2.ArtifactRef(uri=str(path))

    def run(self, request: trainer_pb2.StartRunRequest) -> tuple[trainer_pb2.RunStatus, list[str]]:
        """Run to the end: its final state and each iteration's checkpoint, as WatchRun reports them."""
        run = self.trainer.StartRun(request).run
        checkpoints: list[str] = []
        for update in self.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id)):
            run = update.run
            if run.checkpoint_id and run.checkpoint_id not in checkpoints:
                checkpoints.append(run.checkpoint_id)
        if run.state != trainer_pb2.RUN_STATE_SUCCEEDED:
            raise RuntimeError(f"benchmark run failed: {run.error_message}")
        return run, checkpoints


@contextmanager
def scratch_stack(*, read_roots: Sequence[Path] = ()) -> Iterator[Stack]:
    """Vocab and trainer servers (the sampling kernels in-process) on a temporary store, which goes
    when they stop."""
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch)
        vocab_server, vocab_port = create_vocab_server(
            "127.0.0.1:0", ServeConfig(store=store, read_roots=tuple(read_roots))
        )
        endpoint = f"127.0.0.1:{vocab_port}"
        trainer_server, trainer_port = create_trainer_server(
            "127.0.0.1:0", ServeConfig(store=store, read_roots=tuple(read_roots), vocab_endpoint=endpoint)
        )
        try:
            yield Stack(
                store,
                endpoint,
                vocab_pb2_grpc.VocabServiceStub(grpc.insecure_channel(endpoint)),
                trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(f"127.0.0.1:{trainer_port}")),
            )
        finally:
            trainer_server.stop(grace=None)
            vocab_server.stop(grace=None)
