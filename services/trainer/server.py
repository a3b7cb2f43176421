"""The trainer service's server: `driftlm serve trainer --vocab-endpoint HOST:PORT`."""

from __future__ import annotations

import grpc
import torch

from driftlm.services.core.engine import RayCluster
from driftlm.services.runtime.bootstrap import ServiceBinding, build_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.resources import usable_cpus
from driftlm.v1 import trainer_pb2, trainer_pb2_grpc

from .app import TrainerApp
from .models import pick_device
from .remote import RemoteVocab, sampler_for
from .servicer import TrainerServicer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
# Calls that load or run a model; runs themselves train on the run worker, not on a call's thread.
HEAVY_METHODS = frozenset(
    {"CreateCheckpoint", "ScoreSlice", "ScorePseudoLikelihood", "ComputeEmbeddings", "ExportOnnx", "ScoreCandidates"}
)


def create_server(address: str = "127.0.0.1:0", config: ServeConfig | None = None) -> tuple[grpc.Server, int]:
    """A started trainer server; it needs config.vocab_endpoint (and sampling, or in-process).

    Runs left queued or running by an earlier process resume at once. Stopping the server first
    stops the run worker: a running run saves at its next step boundary and resumes on restart.

    Raises:
        RuntimeError: no vocab endpoint configured, or the address cannot be bound.
        ValueError, OSError: see build_server (TLS and token files).
    """
    config = config or ServeConfig()
    if config.torch_threads < 0:
        raise RuntimeError(
            f"--torch-threads must be >= 0 (0: the CPUs the process may use), got {config.torch_threads}"
        )
    if not config.vocab_endpoint:
        raise RuntimeError(
            "the trainer needs the vocab service: --vocab-endpoint HOST:PORT (or DRIFTLM_VOCAB_ENDPOINT)"
        )
    # The container's CPU quota, not the host's cores, unless pinned.
    torch.set_num_threads(config.torch_threads or usable_cpus())
    security = config.peer_security()
    vocab = RemoteVocab(config.vocab_endpoint, security=security, timeout_s=config.peer_timeout_s)
    sampler = sampler_for(config.sampling_endpoint, security=security, timeout_s=config.peer_timeout_s)
    app = TrainerApp(
        config.store, vocab, sampler, pick_device(), roots=config.roots, ray=RayCluster(config.ray_address)
    )
    servicer = TrainerServicer(app)
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
        heavy_methods=HEAVY_METHODS,
    )
    try:
        return build_server([binding], address, config, closers=[app.close, lambda _grace_s: vocab.close()])
    except (RuntimeError, ValueError, OSError):  # no port, half a TLS configuration, unreadable files
        app.close(0)
        vocab.close()
        raise
