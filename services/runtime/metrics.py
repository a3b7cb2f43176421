"""Prometheus metrics of every RPC, served on a separate HTTP port.

Each call is counted twice: under driftlm's names (`driftlm_rpc_*`, labels service, method, code)
and under the names of go-grpc-prometheus and java-grpc-prometheus (`grpc_server_started_total`,
`grpc_server_handled_total`, `grpc_server_handling_seconds`, labels grpc_type, grpc_service,
grpc_method, grpc_code), which the stock gRPC Grafana dashboards and alerts query.
"""

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


_GRPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
GRPC_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _GRPC_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    [*_GRPC_LABELS, "grpc_code"],
)
GRPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Response latency (seconds) of gRPC that had been application-level handled by the server.",
    _GRPC_LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def record_started(full_method: str, grpc_type: str) -> None:
    """Count one RPC as it starts (`grpc_type`: unary, client_stream, server_stream, bidi_stream)."""
    GRPC_STARTED.labels(grpc_type, *_split(full_method)).inc()


def record_rpc(full_method: str, grpc_type: str, code: str, duration_s: float) -> None:
    """Count one finished RPC (`/package.Service/Method`) with its status code name."""
    service, method = _split(full_method)
    RPC_HANDLED.labels(service, method, code).inc()
    RPC_LATENCY.labels(service, method).observe(duration_s)
    if code != "OK":
        RPC_ERRORS.labels(service, method, code).inc()
    GRPC_HANDLED.labels(grpc_type, service, method, code).inc()
    GRPC_HANDLING.labels(grpc_type, service, method).observe(duration_s)


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics on host:port (0 picks a free port); returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
