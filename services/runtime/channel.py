"""What every Python client of a driftlm service shares: its channel and its lifetime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import grpc

from .calls import peer_timeout_s
from .security import PLAINTEXT, ChannelSecurity


class ServiceClient:
    """A channel to one service (made from a target, or given); close it, or use a `with` block.

    `security` says how to reach a target: TLS with the CA that signed the server's certificate, a
    client certificate for mutual TLS, a bearer token; plaintext by default.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        timeout_s: float | None,
        options: Sequence[tuple[str, Any]] = (),
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        self._channel = security.channel(target, options) if isinstance(target, str) else target
        self._timeout_s = timeout_s

    def _timeout(self) -> float | None:
        """This call's timeout: the client's, cut to what is left of the deadline of the call being
        served when the client is used inside a service (a peer call never outlives its caller)."""
        if self._timeout_s is None:
            return None
        return peer_timeout_s(self._timeout_s)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
