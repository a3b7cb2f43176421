"""Will a run fit? A conservative estimate checked before it starts, so that an impossible batch is
refused with RESOURCE_EXHAUSTED instead of taking the machine's memory (and the service) down."""

from __future__ import annotations

from typing import Any

import torch

from driftlm.services.core.errors import ResourceExhaustedError
from driftlm.services.runtime.resources import memory_available

_BYTES = 4  # fp32 activations and weights


def available_bytes(device: torch.device) -> int:
    """Free memory on the device (GPU), or what the container's cgroup and the host leave (CPU)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    free_bytes = memory_available()
    return (1 << 62) if free_bytes is None else free_bytes  # unknown: do not refuse


def estimated_bytes(config: dict[str, Any], batch_size: int, max_length: int, teachers: int) -> int:
    """Weights, gradients and AdamW state, plus activations kept for the backward pass."""
    hidden = int(config.get("hidden_size", 768))
    layers = int(config.get("num_hidden_layers", 12))
    heads = int(config.get("num_attention_heads", 12))
    intermediate = int(config.get("intermediate_size", 4 * hidden))
    vocab = int(config.get("vocab_size", 30_522))
    parameters = layers * (4 * hidden * hidden + 2 * hidden * intermediate) + vocab * hidden
    tokens = batch_size * max_length
    per_layer = tokens * (10 * hidden + 2 * intermediate) + batch_size * heads * max_length * max_length * 2
    activations = layers * per_layer * _BYTES
    return parameters * _BYTES * (4 + teachers) + activations


def check_fits(config: dict[str, Any], batch_size: int, max_length: int, teachers: int, device: torch.device) -> None:
    """RESOURCE_EXHAUSTED when the estimate exceeds what the device has free."""
    needed, free = estimated_bytes(config, batch_size, max_length, teachers), available_bytes(device)
    if needed > free:
        raise ResourceExhaustedError(
            f"a batch of {batch_size} x {max_length} pieces needs about {needed / 2**30:.1f} GiB but {device.type} has "
            f"{free / 2**30:.1f} GiB free; lower batch_size or max_length"
        )
