"""The trainer service's server: `driftlm serve trainer --vocab-endpoint HOST:PORT`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc
import torch

from driftlm.services.runtime.bootstrap import ServiceBinding, build_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.vocab.client import VocabClient
from driftlm.v1 import trainer_pb2, trainer_pb2_grpc

from .checkpoints import CheckpointStore
from .models import pick_device
from .runs import RunManager
from .servicer import TrainerServicer, VocabPeer
from .training import Progress, RunContext, Sampler

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


def sampler_for(endpoint: str) -> Sampler:
    """The sampling service at `endpoint`, or its functions in-process (needs Numba) when it is empty."""
    if endpoint:
        from driftlm.services.sampling.client import SamplingClient

        return cast(Sampler, SamplingClient(endpoint))
    from driftlm.services.sampling.local import LocalSampling

    return cast(Sampler, LocalSampling())


def create_server(address: str = "127.0.0.1:0", config: ServeConfig | None = None) -> tuple[grpc.Server, int]:
    """A started trainer server; it needs config.vocab_endpoint (and sampling, or in-process).

    Runs left queued or running by an earlier process resume at once.

    Raises:
        RuntimeError: no vocab endpoint configured, or the address cannot be bound.
    """
    config = config or ServeConfig()
    if not config.vocab_endpoint:
        raise RuntimeError(
            "the trainer needs the vocab service: --vocab-endpoint HOST:PORT (or DRIFTLM_VOCAB_ENDPOINT)"
        )
    torch.set_num_threads(os.cpu_count() or 1)
    device = pick_device()
    vocab = VocabPeer(VocabClient(config.vocab_endpoint), config.vocab_endpoint)
    sampler = sampler_for(config.sampling_endpoint)
    checkpoints = CheckpointStore(config.store)

    def make_context(run_id: str, run_directory: Path, report: Callable[[Progress], None]) -> RunContext:
        run_directory.mkdir(parents=True, exist_ok=True)
        return RunContext(run_id, run_directory, checkpoints, vocab, sampler, device, report)

    runs = RunManager(config.store, make_context)
    servicer = TrainerServicer(config.store, checkpoints, runs, vocab, device)
    binding = ServiceBinding(
        SERVICE_NAME, lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
    )
    server, port = build_server([binding], address, config)
    return server, port
