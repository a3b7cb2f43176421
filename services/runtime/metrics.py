"""Prometheus metrics of every RPC, served on a separate HTTP port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_HANDLED = Counter(
    "driftlm_rpc_handled_total", "RPCs completed, by method and status code.", ["service", "method", "code"]
)
RPC_ERRORS = Counter(
    "driftlm_rpc_errors_total", "RPCs that ended with a status other than OK.", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "driftlm_rpc_duration_seconds",
    "Wall time from the start of an RPC to its last response.",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


def record_rpc(full_method: str, code: str, duration_s: float) -> None:
    """Count one finished RPC (`/package.Service/Method`) with its status code name."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    RPC_HANDLED.labels(service, method, code).inc()
    RPC_LATENCY.labels(service, method).observe(duration_s)
    if code != "OK":
        RPC_ERRORS.labels(service, method, code).inc()


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics on host:port (0 picks a free port); returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
