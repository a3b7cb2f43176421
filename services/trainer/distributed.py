"""Training on several processes with torch.distributed (DDP), launched by torchrun.

Every rank masks the whole batch with the same seeded generator and keeps its share of the rows,
and each rank's loss is its share of the batch's summed loss, so DDP's gradient average equals
the single-process gradient: one, two or sixteen ranks train the same model (up to float
rounding). Rank 0 writes checkpoints and selections; every rank computes the same selection.

    torchrun --nproc_per_node 8 -m driftlm train --spec run.json --store /shared/store \\
        --vocab-endpoint vocab:50051 --sampling-endpoint sampling:50052
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the training processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_primary(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a batch."""
        return slice(self.rank, batch_size, self.world)

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.world > 1:
            dist.barrier()

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (the value itself alone)."""
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value)
        return value


def ranks_from_environment() -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK), if any.

    NCCL and one GPU per rank when there are GPUs; gloo on the CPU otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return Ranks(dist.get_rank(), dist.get_world_size()), device
