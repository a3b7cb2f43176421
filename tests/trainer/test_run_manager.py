"""The run manager's lifecycle: cancel racing the worker, close, resume on a new manager.

The manager is the real one; its executor stands in for training (which the server tests cover)
and honours cancel and preempt at every "step" as the trainer does, so that races can be run by
the hundred in a second.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from driftlm.services.core.errors import NotFoundError, UnavailableError
from driftlm.services.core.strategy import Strategy
from driftlm.services.trainer.checkpoints import CheckpointRecord, CheckpointStore
from driftlm.services.trainer.run_context import Progress, RunCancelledError, RunContext, RunPreemptedError
from driftlm.services.trainer.runs import CANCELLED, QUEUED, RUNNING, SUCCEEDED, RunManager
from driftlm.services.trainer.spec import RunKind, RunSpec

SPEC = RunSpec(
    kind=RunKind.MLM,
    base_checkpoint_id="ckpt-base",
    vocab_version_id="v-base",
    slices=("slice.jsonl",),
    strategy=Strategy.UNIFORM,
    iterations=1,
    steps_per_iteration=1000,
    batch_size=1,
    learning_rate=1e-3,
    seed=0,
)


class StepExecutor:
    """Runs `steps` steps of 1 ms, stopping as the trainer does; counts its calls per run."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.calls: dict[str, int] = {}
        self.completed: set[str] = set()
        self.stepping = threading.Event()

    def __call__(self, spec: RunSpec, context: RunContext) -> CheckpointRecord:
        self.calls[context.run_id] = self.calls.get(context.run_id, 0) + 1
        for step in range(self.steps):
            if context.cancel.is_set():
                raise RunCancelledError()
            if context.preempt.is_set():
                raise RunPreemptedError()
            context.report(Progress(step=step))
            self.stepping.set()
            time.sleep(0.001)
        self.completed.add(context.run_id)
        return CheckpointRecord(f"ckpt-{context.run_id}", "v-base", "ckpt-base", context.run_id, self.steps, "", 0, "")


def _manager(store: Path, executor: StepExecutor) -> RunManager:
    checkpoints = CheckpointStore(store)

    def make_context(run_id: str, directory: Path, report: Callable[[Progress], None]) -> RunContext:
        return RunContext(run_id, directory, checkpoints, None, None, None, report)  # type: ignore[arg-type]

    return RunManager(store, make_context, executor)


def test_cancels_racing_the_dequeue_never_fail_and_say_what_happened(tmp_path: Path) -> None:
    """Four threads cancel 600 short runs while the worker takes them off the queue one after the
    other: every cancel answers (never an error), and a run is SUCCEEDED exactly when it ran to
    its end, CANCELLED otherwise."""
    executor = StepExecutor(steps=2)
    manager = _manager(tmp_path, executor)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between almost any two bytecodes: the race window opens
    try:
        run_ids = [manager.start(SPEC).run_id for _ in range(600)]
        answers: dict[str, str] = {}
        errors: list[BaseException] = []

        def cancel_every_fourth(offset: int) -> None:
            for run_id in run_ids[offset::4]:
                try:
                    answers[run_id] = manager.cancel(run_id).state
                except Exception as error:  # noqa: BLE001 (the test reports whatever escapes)
                    errors.append(error)

        threads = [threading.Thread(target=cancel_every_fourth, args=(offset,)) for offset in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(switch_interval)
        manager.close()
    assert errors == [] and len(answers) == 600
    for run_id in run_ids:
        final = manager.get(run_id).state
        assert final == answers[run_id] == (SUCCEEDED if run_id in executor.completed else CANCELLED), run_id
    assert all(calls == 1 for calls in executor.calls.values())  # no run ran twice
    assert 0 < len(executor.completed) < 600 and CANCELLED in answers.values()  # both sides won races


def test_close_preempts_the_running_run_and_a_new_manager_resumes_it(tmp_path: Path) -> None:
    executor = StepExecutor(steps=200)
    manager = _manager(tmp_path, executor)
    running = manager.start(SPEC).run_id
    queued = manager.start(SPEC).run_id
    assert executor.stepping.wait(30)
    watched: list[str] = []
    ended: list[BaseException] = []

    def watch() -> None:
        try:
            watched.extend(r.state for r in manager.watch(running, lambda: True))
        except UnavailableError as error:
            ended.append(error)

    watcher = threading.Thread(target=watch)
    watcher.start()
    manager.close(timeout_s=30)
    watcher.join(30)
    assert not watcher.is_alive() and watched[-1] == RUNNING
    # The stream ends UNAVAILABLE, not OK: the run is not over (it once ended as if it were).
    assert len(ended) == 1 and "resumes when the service restarts" in ended[0].message
    assert manager.get(running).state == RUNNING and manager.get(queued).state == QUEUED
    assert executor.calls == {running: 1}

    resumed = _manager(tmp_path, executor)  # a restarted service on the same store
    try:
        for run_id in (running, queued):
            deadline = time.monotonic() + 60
            while resumed.get(run_id).state != SUCCEEDED:
                assert time.monotonic() < deadline, resumed.get(run_id)
                time.sleep(0.01)
        assert executor.calls == {running: 2, queued: 1}
    finally:
        resumed.close()


def test_a_closed_manager_runs_nothing_more(tmp_path: Path) -> None:
    executor = StepExecutor(steps=1)
    manager = _manager(tmp_path, executor)
    manager.close()
    later = manager.start(SPEC).run_id  # accepted and kept for the next start of the service
    time.sleep(0.1)
    assert manager.get(later).state == QUEUED and executor.calls == {}
    with pytest.raises(NotFoundError, match="does not exist"):
        manager.get("run-none")
