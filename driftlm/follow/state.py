"""The controller's durable state (`STATE/state.json`, `driftlm.follow-state/v1`), written after
every step, and the lease that keeps a second controller off it.

The state says what the production arm is (its checkpoint, vocabulary, student, what is served),
which closed slices wait, how far the current slice has gone (each finished step's result), and
one record per finished slice. A restart continues at the first step without a result; every step
is idempotent against the services (request ids, content-addressed versions, fixed export
versions), so a step cut short by kill -9 and repeated gives what it would have given once.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from driftlm.loop.state import BaseRecord
from driftlm.services.core import store

STATE_FORMAT = "driftlm.follow-state/v1"


@dataclass
class FollowState:
    """Where the controller stands."""

    key: str
    base: BaseRecord | None = None
    # The production arm's latest checkpoint and vocabulary version.
    checkpoint: str = ""
    vocab_version: str = ""
    # The frozen shadow baseline: the model trained on the first slice, never again.
    baseline: str = ""
    first_observation: str = ""
    previous_observation: str = ""
    student: str | None = None
    teacher: str | None = None
    served: dict[str, int] | None = None
    # The version the next export of teacher and student takes (fixed ahead, so retries repeat it).
    next_version: int = 1
    # Closed slices not yet processed, oldest first, and the one under way.
    queue: list[str] = field(default_factory=list)
    # When each closed slice closed (wall clock, ISO 8601), until it is done.
    closed_at: dict[str, str] = field(default_factory=dict)
    current: dict[str, Any] | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "key": self.key,
            "base": None if self.base is None else self.base.to_json(),
            "checkpoint": self.checkpoint,
            "vocab_version": self.vocab_version,
            "baseline": self.baseline,
            "first_observation": self.first_observation,
            "previous_observation": self.previous_observation,
            "student": self.student,
            "teacher": self.teacher,
            "served": self.served,
            "next_version": self.next_version,
            "queue": self.queue,
            "closed_at": self.closed_at,
            "current": self.current,
            "slices": self.slices,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> FollowState:
        """Raises ValueError for a file of another format."""
        if record.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} file (format {record.get('format')!r})")
        return cls(
            key=str(record["key"]),
            base=None if record["base"] is None else BaseRecord.from_json(record["base"]),
            checkpoint=str(record["checkpoint"]),
            vocab_version=str(record["vocab_version"]),
            baseline=str(record["baseline"]),
            first_observation=str(record["first_observation"]),
            previous_observation=str(record["previous_observation"]),
            student=record["student"],
            teacher=record["teacher"],
            served=record["served"],
            next_version=int(record["next_version"]),
            queue=list(record["queue"]),
            closed_at=dict(record["closed_at"]),
            current=record["current"],
            slices=list(record["slices"]),
        )

    @property
    def closed(self) -> list[str]:
        """Every slice closed so far: processed, under way, or waiting."""
        done = [s["slice"] for s in self.slices]
        under_way = [self.current["slice"]] if self.current else []
        return done + under_way + self.queue


class StateStore:
    """state.json in the controller's directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    def load(self, key: str) -> FollowState:
        """The saved state, or a new one.

        Raises:
            ValueError: the saved state was made with options that change results.
        """
        if not self.path.exists():
            return FollowState(key=key)
        state = FollowState.from_json(store.read_json(self.path))
        if state.key != key:
            raise ValueError(
                f"{self.path} was made with other options (key {state.key}, now {key}); options that change "
                "results need their own state: another --name, or remove the directory to start over"
            )
        return state

    def save(self, state: FollowState) -> None:
        store.write_json_atomically(self.path, state.to_json())


class LeaseHeldError(RuntimeError):
    """Another controller holds the state directory."""


class Lease:
    """An exclusive lock on the state directory (flock on STATE/lease), held while the controller
    runs: a second controller on the same state refuses to start instead of running a second loop.
    The kernel drops it when the holder dies, kill -9 included. On Kubernetes the state volume is
    ReadWriteOnce and the Deployment recreates (never two pods at once); the lock guards the rest."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "lease"
        self._file: IO[str] | None = None

    def __enter__(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LeaseHeldError(
                f"{self.path.parent} is in use by {holder}; one controller per state (stop it, or use another --name)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
