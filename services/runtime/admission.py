"""How many calls a service works on at once, so that heavy calls cannot starve the rest.

gRPC's synchronous server runs every call, health checks included, on one thread pool. Eight long
ObserveSlice calls on eight threads left no thread for the orchestrator's health probe, which then
failed the pod. Here the pool has room for every admitted call plus spare threads, and:

- heavy calls (those that tokenize, train, score or export) run at most `heavy` at a time; the
  rest wait for a slot until their deadline (or `queue_timeout_s`), then get RESOURCE_EXHAUSTED;
- at most `in_flight` calls are admitted at all (waiting ones included); beyond that a call gets
  RESOURCE_EXHAUSTED at once, so the pool always keeps threads for health and reflection.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from driftlm.services.core.errors import DeadlineExceededError, ResourceExhaustedError

# Threads beyond the admitted calls: health checks and reflection always find one.
SPARE_THREADS = 4


class Admission:
    """Counts admitted calls and heavy slots for one server."""

    def __init__(self, *, heavy: int, in_flight: int, queue_timeout_s: float) -> None:
        if heavy < 1 or in_flight < heavy:
            raise ValueError(f"need 1 <= heavy ({heavy}) <= in_flight ({in_flight})")
        self.heavy = heavy
        self.in_flight = in_flight
        self.queue_timeout_s = queue_timeout_s
        self._slots = threading.BoundedSemaphore(heavy)
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted_count(self) -> int:
        """Calls admitted and not yet finished."""
        with self._lock:
            return self._admitted

    @property
    def pool_threads(self) -> int:
        """Threads the server's pool needs: every admitted call and the spares."""
        return self.in_flight + SPARE_THREADS

    @contextlib.contextmanager
    def admitted(self, *, heavy: bool, time_remaining_s: float | None) -> Iterator[None]:
        """Hold a place (and a heavy slot for heavy calls) for the block.

        Raises:
            ResourceExhaustedError: too many calls in flight, or no heavy slot came free in time.
            DeadlineExceededError: the call's deadline passed while it waited.
        """
        with self._lock:
            if self._admitted >= self.in_flight:
                raise ResourceExhaustedError(
                    f"the service is busy: {self._admitted} calls in flight, the most it admits "
                    f"(--max-in-flight); retry with backoff",
                    reason="SERVER_BUSY",
                )
            self._admitted += 1
        try:
            if not heavy:
                yield
                return
            wait_s = self.queue_timeout_s if time_remaining_s is None else min(self.queue_timeout_s, time_remaining_s)
            if not self._slots.acquire(timeout=max(wait_s, 0.0)):
                if time_remaining_s is not None and time_remaining_s <= self.queue_timeout_s:
                    raise DeadlineExceededError(
                        f"the call's deadline passed while it waited for one of {self.heavy} heavy-call slots"
                    )
                raise ResourceExhaustedError(
                    f"the service is busy: all {self.heavy} heavy-call slots (--workers) stayed taken "
                    f"for {self.queue_timeout_s:g} s (--queue-timeout-s); retry with backoff",
                    reason="SERVER_BUSY",
                )
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= 1
