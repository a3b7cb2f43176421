"""What `driftlm follow` shows while it runs: Prometheus metrics and a health endpoint on one port.

GET /metrics   the metrics below (deploy/grafana/driftlm-follow.json charts them)
GET /healthz   200 while the loop has finished a poll within --health-timeout, else 503
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

EVENT_TIME_LAG = Gauge(
    "driftlm_follow_event_time_lag_seconds", "Wall-clock time now minus the newest event time the intake has seen"
)
WATERMARK = Gauge("driftlm_follow_watermark_timestamp_seconds", "The watermark (newest event time minus lateness)")
OPEN_TEXTS = Gauge("driftlm_follow_open_slice_texts", "Texts waiting in slices that have not closed")
OPEN_SLICES = Gauge("driftlm_follow_open_slices", "Slices that have texts and have not closed")
QUEUED_SLICES = Gauge("driftlm_follow_queued_slices", "Closed slices not yet processed")
FILES = Counter("driftlm_follow_files", "Source files seen, by outcome", ["outcome"])
RECORDS = Counter("driftlm_follow_records", "Records read, by outcome (accepted, late, rejected)", ["outcome"])
SOURCE_ERRORS = Counter("driftlm_follow_source_errors", "Polls or fetches that could not read the source")
SLICES = Counter("driftlm_follow_slices", "Slices processed to the end")
FIRES = Counter("driftlm_follow_trigger_fires", "Slices on which the trigger fired")
PROMOTIONS = Counter("driftlm_follow_promotions", "Slices whose candidate passed the gate and is served")
FAILURES = Counter("driftlm_follow_step_failures", "Slice steps that failed and will be retried", ["step"])
STEP_SECONDS = Histogram(
    "driftlm_follow_step_seconds",
    "Time per slice step",
    ["step"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
TRIGGER = Gauge(
    "driftlm_follow_last_trigger",
    "The last slice's trigger statistics (z, unseen_z, unseen_share, spike_fraction, fired)",
    ["statistic"],
)
SERVED_VERSION = Gauge("driftlm_follow_served_version", "The model version served, by role", ["role"])
CLOSE_TO_DONE = Gauge(
    "driftlm_follow_last_slice_close_to_done_seconds", "Wall-clock time from the last slice closing to its end"
)
HEARTBEAT = Gauge("driftlm_follow_last_poll_timestamp_seconds", "When the loop last finished a poll")


class Health:
    """The loop's heartbeat: healthy while a poll finished within `timeout_s`."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._beat = time.monotonic()
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._beat = time.monotonic()
        HEARTBEAT.set_to_current_time()

    def healthy(self) -> bool:
        with self._lock:
            return time.monotonic() - self._beat <= self.timeout_s


def serve_observability(host: str, port: int, health: Health) -> ThreadingHTTPServer:
    """Start /metrics and /healthz on host:port (0: a free port) in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/metrics":
                body, status, kind = generate_latest(), 200, CONTENT_TYPE_LATEST
            elif self.path.split("?", 1)[0] == "/healthz":
                ok = health.healthy()
                body, status, kind = (b"ok\n" if ok else b"stalled\n"), (200 if ok else 503), "text/plain"
            else:
                body, status, kind = b"not found: /metrics or /healthz\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes are not worth a log line each

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="follow-observability", daemon=True).start()
    return server
