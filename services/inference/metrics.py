"""Prometheus metrics of the inference service, beside every service's RPC metrics: how full the
batches are, how many rows wait, how long requests wait for them, how long the graph runs take,
and each model version's request latency (queue and run together)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Gauge, Histogram

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
QUEUE_ROWS = Gauge(
    "driftlm_inference_queue_rows",
    "Rows waiting in a model version's batching queue now.",
    ["model", "version"],
)
REQUEST_SECONDS = Histogram(
    "driftlm_inference_request_seconds",
    "Time from a request's rows entering a model version's queue to their outputs (wait and run).",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
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

    def queued(self, rows: int) -> None:
        """`rows` rows wait in the queue now."""
        QUEUE_ROWS.labels(self.model, str(self.version)).set(rows)

    def answered(self, seconds: float) -> None:
        """A request got its outputs `seconds` after it was queued."""
        REQUEST_SECONDS.labels(self.model, str(self.version)).observe(seconds)
