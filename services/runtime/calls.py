"""The call a handler thread is serving: its deadline and whether its caller is still there.

The interceptor records the gRPC context of each call; domain code with long loops calls
`stop_if_abandoned()` between units of work, so a call whose client cancelled, whose deadline passed,
or that a stopping server cancelled after its grace does not run on for minutes. Calls to peer
services take `peer_timeout_s()`: what is left of the caller's deadline, never more than the cap.
Outside a call (the trainer's run worker) both do nothing special.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import Protocol

from driftlm.services.core.errors import CancelledError, DeadlineExceededError


class _Context(Protocol):
    def is_active(self) -> bool: ...

    def time_remaining(self) -> float | None: ...


_CURRENT: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("driftlm_call", default=None)
# Checking costs a lock in grpc: loops call often, so look at most this often.
_CHECK_EVERY_S = 0.05
_LAST_CHECK: contextvars.ContextVar[float] = contextvars.ContextVar("driftlm_call_checked", default=0.0)


@contextlib.contextmanager
def serving(context: _Context) -> Iterator[None]:
    """Mark `context` as the call this thread serves, for the duration of the block."""
    token = _CURRENT.set(context)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def stop_if_abandoned() -> None:
    """Raise when the current call can no longer be answered.

    Raises:
        DeadlineExceededError: the caller's deadline has passed.
        CancelledError: the caller cancelled or went away, or the server cancelled the call on stop.
    """
    context = _CURRENT.get()
    if context is None:
        return
    now = time.monotonic()
    if now - _LAST_CHECK.get() < _CHECK_EVERY_S:
        return
    _LAST_CHECK.set(now)
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceededError("the call's deadline passed before the work was done; it was stopped")
    if not context.is_active():
        raise CancelledError("the call was cancelled (by its client, or by the server stopping); the work was stopped")


def peer_timeout_s(cap_s: float) -> float:
    """Seconds a call to a peer may take: the current call's remaining time, at most `cap_s`."""
    context = _CURRENT.get()
    remaining = None if context is None else context.time_remaining()
    return cap_s if remaining is None else max(0.0, min(cap_s, remaining))
