"""Runs as resources: queued, executed one at a time by a worker thread, persisted, resumable.

    <store>/trainer/runs/<run_id>/run.json       spec, state and progress (rewritten atomically)
    <store>/trainer/runs/<run_id>/selection-N.json, totals-N.json   what a resume needs

A service that starts finds the runs that were queued or running when it stopped (or was
killed) and continues them: from the snapshot a clean stop (close) leaves at a step boundary, or
from the last iteration's checkpoint after a kill.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from google.rpc import code_pb2

from driftlm.services.core import store
from driftlm.services.core.errors import AlreadyExistsError, DriftlmError, NotFoundError, UnavailableError
from driftlm.services.runtime import tracing
from driftlm.services.runtime.interceptor import as_domain_error
from driftlm.services.trainer.run_context import Progress, RunCancelledError, RunContext, RunPreemptedError
from driftlm.services.trainer.selection import IterationSelection, load_selections

from . import metrics
from .checkpoints import now
from .spec import RunSpec
from .training import execute_run

_LOG = logging.getLogger("driftlm.trainer")
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class RunRecord:
    """A run's state (run.json)."""

    run_id: str
    spec: RunSpec
    state: str
    create_time: str
    step: int = 0
    iteration: int = 0
    loss: float = float("nan")
    tokens_per_s: float = 0.0
    eta_s: float = 0.0
    checkpoint_id: str = ""
    train_tokens: int = 0
    wall_s: float = 0.0
    error_code: int = 0
    error_message: str = ""

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["spec"] = self.spec.to_json()
        return values

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunRecord:
        return cls(**{**record, "spec": RunSpec.from_json(record["spec"])})


RunExecutor = Callable[[RunSpec, RunContext], Any]


def run_id_of(request_id: str) -> str:
    """The run id a request_id gives: the same key, the same run (and checkpoint ids after it)."""
    return "run-" + hashlib.sha256(request_id.encode()).hexdigest()[:16]


class RunManager:
    """Starts, tracks, cancels and resumes runs; one at a time (one run per device).

    It owns one worker thread, started here and stopped by close().
    """

    def __init__(
        self,
        store_root: Path,
        make_context: Callable[[str, Path, Callable[[Progress], None]], RunContext],
        executor: RunExecutor = execute_run,
    ) -> None:
        self._root = store_root / "trainer" / "runs"
        self._root.mkdir(parents=True, exist_ok=True)
        self._make_context = make_context
        self._executor = executor
        self._changed = threading.Condition()
        self._runs: dict[str, RunRecord] = {}
        self._queue: deque[str] = deque()
        self._contexts: dict[str, RunContext] = {}
        # Each queued run's caller's trace: the worker resumes it, so the run's calls to vocab and
        # sampling join the StartRun call's trace. Runs resumed after a restart have none.
        self._traces: dict[str, Any] = {}
        self._closing = False
        for path in self._root.glob("*/run.json"):
            record = RunRecord.from_json(store.read_json(path))
            self._runs[record.run_id] = record
        for record in sorted(self._runs.values(), key=lambda r: r.create_time):
            if record.state in (QUEUED, RUNNING):
                self._queue.append(record.run_id)
        metrics.count_states((r.state for r in self._runs.values()), _STATES)
        self._worker = threading.Thread(target=self._work, name="trainer-runs", daemon=True)
        self._worker.start()

    # API ------------------------------------------------------------------------------------

    def start(self, spec: RunSpec) -> RunRecord:
        """Queue a run; it starts when the runs before it end. A spec with a request_id that an
        earlier run had gets that run back (idempotent retries).

        Raises:
            AlreadyExistsError: the request_id was an earlier run's with other parameters.
        """
        run_id = run_id_of(spec.request_id) if spec.request_id else f"run-{secrets.token_hex(8)}"
        with self._changed:  # held through the save: two retries of one request make one run
            earlier = self._runs.get(run_id)
            if earlier is not None:
                if earlier.spec != spec:
                    raise AlreadyExistsError(
                        f"request_id {spec.request_id!r} started run {run_id} with other parameters; "
                        "a retry repeats the request unchanged, a new request takes a new request_id"
                    )
                return earlier
            record = RunRecord(run_id=run_id, spec=spec, state=QUEUED, create_time=now())
            self._save(record)
            self._runs[record.run_id] = record
            self._traces[record.run_id] = tracing.current_trace()
            self._queue.append(record.run_id)
            self._changed.notify_all()
        return record

    def get(self, run_id: str) -> RunRecord:
        """A run's current state."""
        with self._changed:
            return self._record(run_id)

    def _record(self, run_id: str) -> RunRecord:
        """The run's state (callers hold self._changed)."""
        if run_id not in self._runs:
            raise NotFoundError(f"run {run_id!r} does not exist; ListRuns shows the runs there are")
        return self._runs[run_id]

    def selections(self, run_id: str) -> list[IterationSelection]:
        """What each iteration of the run trains on, as far as chosen."""
        self.get(run_id)
        return load_selections(self._root / run_id)

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the worker: a running run saves at its next step boundary and resumes when a manager
        on the same store starts; queued runs stay queued. Waits up to timeout_s (None: until done)."""
        with self._changed:
            self._closing = True
            for context in self._contexts.values():
                context.preempt.set()
            self._changed.notify_all()
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            _LOG.warning("the run worker did not stop in time", extra={"timeout_s": timeout_s})

    def list(self) -> list[RunRecord]:
        """Every run, newest first."""
        with self._changed:
            return sorted(self._runs.values(), key=lambda r: (r.create_time, r.run_id), reverse=True)

    def cancel(self, run_id: str, *, wait_s: float = 60.0) -> RunRecord:
        """Cancel a queued run at once, a running one after its current step (waits up to wait_s)."""
        with self._changed:
            record = self._record(run_id)  # read under the lock: the worker may be dequeuing it
            if record.state == QUEUED:
                self._queue.remove(run_id)
                self._set(replace(record, state=CANCELLED))
            elif record.state == RUNNING and run_id in self._contexts:
                self._contexts[run_id].cancel.set()
                self._changed.wait_for(lambda: self._runs[run_id].state in TERMINAL, timeout=wait_s)
            return self._runs[run_id]

    def watch(self, run_id: str, is_active: Callable[[], bool]) -> Iterator[RunRecord]:
        """The run's state now and after every change, until it ends or the caller leaves.

        Raises:
            UnavailableError: the service stops while the run is still under way (it resumes when
                the service restarts; watch again then).
        """
        last = self.get(run_id)
        yield last
        while last.state not in TERMINAL and is_active() and not self._closing:
            current = self._next_state(run_id, last)
            if current is not last:
                last = current
                yield last
        if last.state not in TERMINAL and self._closing:
            raise UnavailableError(
                f"the trainer is stopping while run {run_id} is {last.state}; it resumes when the service "
                "restarts: watch it again then",
                reason="SERVICE_STOPPING",
            )

    def _next_state(self, run_id: str, seen: RunRecord) -> RunRecord:
        """The run's state once it differs from `seen`, or after a second (to notice a gone caller)."""
        with self._changed:
            self._changed.wait_for(lambda: self._runs[run_id] is not seen or self._closing, timeout=1.0)
            return self._runs[run_id]

    # Worker ---------------------------------------------------------------------------------

    def _save(self, record: RunRecord) -> None:
        store.write_json_atomically(self._root / record.run_id / "run.json", record.to_json())

    def _set(self, record: RunRecord, *, persist: bool = True) -> None:
        """Publish a new state (callers hold self._changed)."""
        previous = self._runs.get(record.run_id)
        self._runs[record.run_id] = record
        if previous is None or previous.state != record.state:
            metrics.count_states((r.state for r in self._runs.values()), _STATES)
        if persist:
            self._save(record)
        self._changed.notify_all()

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue) or self._closing)
                if self._closing:
                    return
                run_id = self._queue.popleft()
                # The context exists before the run shows as running, so CancelRun always finds it.
                context = self._make_context(run_id, self._root / run_id, functools.partial(self._report, run_id))
                self._contexts[run_id] = context
                record = replace(self._runs[run_id], state=RUNNING)
                self._set(record)
            with tracing.resumed_trace(self._traces.pop(record.run_id, None)):
                self._execute(record, context)

    def _report(self, run_id: str, progress: Progress) -> None:
        with self._changed:
            current = self._runs[run_id]
            updated = replace(
                current,
                step=progress.step,
                iteration=progress.iteration,
                loss=progress.loss,
                tokens_per_s=progress.tokens_per_s,
                eta_s=progress.eta_s,
                train_tokens=progress.train_tokens,
                wall_s=progress.wall_s,
                checkpoint_id=progress.checkpoint_id,
            )
            metrics.stepped(
                current.spec.kind.value,
                progress.step - current.step,
                progress.train_tokens - current.train_tokens,
                progress.loss,
                progress.tokens_per_s,
            )
            # Persist at iteration boundaries (a new checkpoint); in memory every step.
            self._set(updated, persist=updated.checkpoint_id != current.checkpoint_id)

    def _execute(self, record: RunRecord, context: RunContext) -> None:
        started = time.perf_counter()
        outcome: dict[str, Any]
        try:
            final = self._executor(record.spec, context)
            outcome = {"state": SUCCEEDED, "checkpoint_id": final.checkpoint_id, "eta_s": 0.0}
        except RunPreemptedError:
            outcome = {}  # still running: it resumes when the service restarts
        except RunCancelledError:
            outcome = {"state": CANCELLED}
        except DriftlmError as error:
            outcome = {"state": FAILED, "error_code": int(error.code), "error_message": error.message}
        except torch.OutOfMemoryError as error:
            outcome = {
                "state": FAILED,
                "error_code": code_pb2.RESOURCE_EXHAUSTED,
                "error_message": f"out of memory: {error}; use a smaller batch_size or max_length",
            }
        # The boundary of a run, like the interceptor is of a call: whatever else a run raises fails
        # that run (logged with its traceback), never the worker that runs the next ones.
        except Exception as error:  # noqa: BLE001 (see above)
            # Out of memory (NumPy's MemoryError too), a full disk: the status a call would get.
            domain = as_domain_error(error)
            out_of_memory = "out of memory" in str(error) or "can't allocate memory" in str(error)
            if domain is None:
                _LOG.exception("run failed", extra={"run_id": record.run_id})
            code = int(domain.code) if domain else code_pb2.INTERNAL
            outcome = {
                "state": FAILED,
                "error_code": code_pb2.RESOURCE_EXHAUSTED if out_of_memory else code,
                "error_message": domain.message if domain else f"{type(error).__name__}: {error}",
            }
        with self._changed:  # one step, so that CancelRun never sees a running run without its context
            self._contexts.pop(record.run_id, None)
            self._set(replace(self._runs[record.run_id], **outcome))
            step = self._runs[record.run_id].step
        _LOG.info(
            "run ended" if outcome else "run preempted",
            extra={
                "run_id": record.run_id,
                "state": outcome.get("state", RUNNING),
                "step": step,
                "seconds": time.perf_counter() - started,
            },
        )
