"""Running rows of token ids through a model, and dynamic batching as Triton does it.

Requests put rows (one text each, any length) in a queue; one thread per model version takes what
has arrived, waiting at most the model's max_queue_delay for the batch to fill, sorts the rows by
length so that rows of similar length run together (little padding), and runs them in batches of
at most max_batch_size rows. Each row gets back only what its request asked for: the logits at
chosen positions rather than (T, V), so memory stays bounded by one batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from driftlm.services.core.errors import UnavailableError

from .metrics import VersionMetrics

# (ids (B, T), mask (B, T), output names) -> output name -> array (the model's run).
RunGraph = Callable[[np.ndarray, np.ndarray, tuple[str, ...]], dict[str, np.ndarray]]
# Per row: logits (P, V) or (T, V), cls_embedding (H,), last_hidden_state (T, H), as asked.
RowOutputs = dict[str, np.ndarray]

# The logits one run may produce, B * T * V * 4 bytes: rows beyond it go to the next run.
MAX_LOGITS_BYTES = 256 << 20
# Rows one batching round takes, in multiples of max_batch_size (the rest wait for the next).
_ROUND_BATCHES = 4


@dataclass(frozen=True)
class Row:
    """One sequence to run."""

    # (T,) int64 piece ids.
    ids: np.ndarray
    # (T,) int64 attention mask; None means every piece is attended to.
    mask: np.ndarray | None = None
    # Positions whose logits to keep; None keeps every position's.
    pick: np.ndarray | None = None


def run_rows(
    run: RunGraph,
    rows: Sequence[Row],
    outputs: tuple[str, ...],
    *,
    max_rows: int,
    vocab_size: int,
    metrics: VersionMetrics | None = None,
) -> list[RowOutputs]:
    """Run `rows` shortest first, in batches of at most `max_rows` rows and MAX_LOGITS_BYTES of
    logits, padded to each batch's longest row; returns each row's outputs in the rows' order."""
    order = sorted(range(len(rows)), key=lambda index: len(rows[index].ids))
    results: list[RowOutputs] = [{} for _ in rows]
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < max_rows:
            width = len(rows[order[stop]].ids)
            if "logits" in outputs and (stop - start + 1) * width * vocab_size * 4 > MAX_LOGITS_BYTES:
                break
            stop += 1
        batch = [rows[index] for index in order[start:stop]]
        width = max(len(row.ids) for row in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for line, row in enumerate(batch):
            ids[line, : len(row.ids)] = row.ids
            mask[line, : len(row.ids)] = 1 if row.mask is None else row.mask
        started = time.perf_counter()
        values = run(ids, mask, outputs)
        if metrics is not None:
            metrics.ran(len(batch), time.perf_counter() - started)
        for line, (index, row) in enumerate(zip(order[start:stop], batch, strict=True)):
            results[index] = _row_outputs(values, line, row)
        start = stop
    return results


def _row_outputs(values: dict[str, np.ndarray], line: int, row: Row) -> RowOutputs:
    """One row's part of a batch's outputs, copied so that the batch's buffers can be freed."""
    length = len(row.ids)
    kept: RowOutputs = {}
    for name, value in values.items():
        if name == "cls_embedding":
            kept[name] = value[line].copy()
        elif name == "logits" and row.pick is not None:
            kept[name] = value[line, row.pick].copy()
        else:
            kept[name] = value[line, :length].copy()
    return kept


@dataclass
class _Request:
    rows: Sequence[Row]
    outputs: tuple[str, ...]
    future: Future[list[RowOutputs]]
    arrived: float


class DynamicBatcher:
    """One model version's queue and the thread that empties it (started here, stopped by close)."""

    def __init__(
        self, run: RunGraph, *, max_batch_size: int, max_queue_delay_s: float, vocab_size: int, metrics: VersionMetrics
    ) -> None:
        self._run = run
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_queue_delay_s = max_queue_delay_s
        self._vocab_size = vocab_size
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(
            target=self._serve, name=f"batcher-{metrics.model}-{metrics.version}", daemon=True
        )
        self._thread.start()

    def run(self, rows: Sequence[Row], outputs: tuple[str, ...]) -> list[RowOutputs]:
        """Queue the rows, wait for their turn, and return their outputs.

        Raises:
            UnavailableError: the batcher is closed (its version was unloaded).
        """
        future: Future[list[RowOutputs]] = Future()
        with self._wake:
            if self._closed:
                raise UnavailableError("the model version is being unloaded; retry, the default version has changed")
            arrived = time.monotonic()
            self._queue.append(_Request(rows, outputs, future, arrived))
            self._queued_rows += len(rows)
            self._metrics.queued(self._queued_rows)
            self._wake.notify()
        answer = future.result()
        self._metrics.answered(time.monotonic() - arrived)
        return answer

    def close(self, timeout_s: float | None = None) -> None:
        """Finish what is queued, then stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout_s)

    def _serve(self) -> None:
        while True:
            requests = self._next_round()
            if not requests:
                return
            self._execute(requests)

    def _next_round(self) -> list[_Request]:
        """Wait for a request, then for company until the batch is full or the oldest has waited
        max_queue_delay; take up to a few batches' worth of rows. Empty when closed and drained."""
        with self._wake:
            while not self._queue and not self._closed:
                self._wake.wait()
            if not self._queue:
                return []
            deadline = self._queue[0].arrived + self._max_queue_delay_s
            while self._queued_rows < self._max_batch_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            taken: list[_Request] = []
            rows = 0
            while self._queue and (
                not taken or rows + len(self._queue[0].rows) <= _ROUND_BATCHES * self._max_batch_size
            ):
                request = self._queue.popleft()
                taken.append(request)
                rows += len(request.rows)
            self._queued_rows -= rows
            self._metrics.queued(self._queued_rows)
        now = time.monotonic()
        for request in taken:
            self._metrics.waited(now - request.arrived)
        return taken

    def _execute(self, requests: list[_Request]) -> None:
        rows = [row for request in requests for row in request.rows]
        outputs = tuple(sorted({name for request in requests for name in request.outputs}))
        try:
            results = run_rows(
                self._run,
                rows,
                outputs,
                max_rows=self._max_batch_size,
                vocab_size=self._vocab_size,
                metrics=self._metrics,
            )
        except BaseException as error:  # noqa: BLE001  # handed to every waiting caller; the thread keeps serving
            for request in requests:
                request.future.set_exception(error)
            return
        start = 0
        for request in requests:
            mine = results[start : start + len(request.rows)]
            start += len(request.rows)
            request.future.set_result([{name: row[name] for name in request.outputs} for row in mine])
