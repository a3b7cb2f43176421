"""What every Python client of a driftlm service shares: its channel and its lifetime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import grpc


class ServiceClient:
    """A channel to one service (made from a target, or given); close it, or use a `with` block."""

    def __init__(
        self, target: str | grpc.Channel, *, timeout_s: float | None, options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self._channel = grpc.insecure_channel(target, options=list(options)) if isinstance(target, str) else target
        self._timeout_s = timeout_s

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
