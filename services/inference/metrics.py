"""Prometheus metrics of the inference service, beside every service's RPC metrics: how full the
batches are, how long requests wait for them, and how long the graph runs take."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Histogram

BATCH_ROWS = Histogram(
    "driftlm_inference_batch_rows",
    "Rows (sequences) run together in one run of a model version's graph.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
QUEUE_SECONDS = Histogram(
    "driftlm_inference_queue_seconds",
    "Time a request waited in its version's batching queue before its rows ran.",
    ["model", "version"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
RUN_SECONDS = Histogram(
    "driftlm_inference_run_seconds",
    "Wall time of one run of a model version's graph.",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)


@dataclass(frozen=True)
class VersionMetrics:
    """The metrics of one served version."""

    model: str
    version: int

    def ran(self, rows: int, seconds: float) -> None:
        """One graph run of `rows` rows took `seconds`."""
        labels = (self.model, str(self.version))
        BATCH_ROWS.labels(*labels).observe(rows)
        RUN_SECONDS.labels(*labels).observe(seconds)

    def waited(self, seconds: float) -> None:
        """A request waited `seconds` in the queue."""
        QUEUE_SECONDS.labels(self.model, str(self.version)).observe(seconds)
