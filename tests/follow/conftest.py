"""A controller process against real services, its log read as it is written, and a writer that
drops dated files (the drifting stream's years, redated) into its source."""

from __future__ import annotations

import gzip
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from driftlm.follow.controller import started_services
from driftlm.follow.options import FollowOptions
from driftlm.loop.drifting_stream import write_stream

from ..pipeline.conftest import tiny_model  # noqa: F401  # a fixture

# The loop's test settings: a tiny BERT that learns its first slice fast.
TRAINING = (
    "--steps", "12", "--first-steps", "120", "--learning-rate", "5e-3", "--max-length", "32",
    "--vocab-k", "20", "--distill-steps", "48", "--threads", "2",
)  # fmt: skip


@pytest.fixture(scope="session")
def stream_years(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The stream's records by year."""
    path = write_stream(tmp_path_factory.mktemp("stream") / "stream.jsonl", seed=5)
    years: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        years.setdefault(record["time"][:4], []).append(record)
    return years


def drop(source: Path, name: str, records: list[dict[str, Any]], year: str, *, compress: bool = True) -> Path:
    """Write the records, redated to `year`, as a (gzipped) JSONL file renamed into place."""
    rows = "".join(json.dumps({**r, "time": year + r["time"][4:]}, ensure_ascii=False) + "\n" for r in records)
    data = gzip.compress(rows.encode()) if compress else rows.encode()
    path = source / (name + (".jsonl.gz" if compress else ".jsonl"))
    source.mkdir(parents=True, exist_ok=True)
    temporary = source / f".{path.name}.part"
    temporary.write_bytes(data)
    temporary.rename(path)
    return path


@contextmanager
def services(store: Path, model: Path) -> Iterator[list[str]]:
    """The five services on `store`, as --endpoint flags."""
    with started_services(FollowOptions(source="-", store=store, base_model=str(model), threads=2)) as targets:
        yield [
            flag
            for name, target in targets.items()
            if name != "sampling"
            for flag in ("--endpoint", f"{name}={target}")
        ]


_STARTED: list[Controller] = []


@pytest.fixture(autouse=True)
def _no_controller_outlives_its_test() -> Iterator[None]:
    """A test that fails midway leaves no controller running (it would hold ports and files), nor
    its log pipe open."""
    yield
    while _STARTED:
        controller = _STARTED.pop()
        if controller.process.poll() is None:
            controller.kill()
        elif controller.process.stderr is not None and not controller.process.stderr.closed:
            controller.wait()


class Controller:
    """A `driftlm follow` process whose JSON log lines arrive on a queue."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "driftlm", "follow", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        _STARTED.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self.log.open("ab") as copy:
            for line in self.process.stderr:
                copy.write(line)
                copy.flush()
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.events.put(entry)

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], timeout_s: float = 300) -> dict[str, Any]:
        """The first log entry (from now on) that matches; fails the test on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                entry = self.events.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.events.empty():
                    raise AssertionError(f"the controller exited ({self.process.returncode}); log {self.log}") from None
                continue
            self.seen.append(entry)
            if matches(entry):
                return entry
        raise AssertionError(f"no matching log entry in {timeout_s} s; log {self.log}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait()

    def stop(self, timeout_s: float = 120) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 300) -> int:
        """The exit code, once the process and its log are done."""
        code = self.process.wait(timeout_s)
        self._reader.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


def event(message: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: entry.get("msg") == message and all(entry.get(k) == v for k, v in fields.items())
