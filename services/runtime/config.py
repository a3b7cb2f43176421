"""How a service process is configured: flags, with `DRIFTLM_*` environment variables as fallback."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from driftlm.services.core.paths import FileRoots

from .limits import RequestLimits
from .security import ChannelSecurity

MIB = 1 << 20


@dataclass(frozen=True)
class ServiceDefaults:
    """Where a service listens unless told otherwise (DESIGN.md, Defaults)."""

    grpc_port: int
    metrics_port: int


# Services by the name `driftlm serve NAME` takes.
SERVICE_DEFAULTS: dict[str, ServiceDefaults] = {
    "vocab": ServiceDefaults(grpc_port=50051, metrics_port=9151),
    "sampling": ServiceDefaults(grpc_port=50052, metrics_port=9152),
    "trainer": ServiceDefaults(grpc_port=50053, metrics_port=9153),
    "inference": ServiceDefaults(grpc_port=50054, metrics_port=9154),
    "compare": ServiceDefaults(grpc_port=50055, metrics_port=9155),
}


def default_store() -> Path:
    """`DRIFTLM_STORE`, else `~/.driftlm`."""
    return Path(os.environ.get("DRIFTLM_STORE", Path.home() / ".driftlm")).expanduser()


@dataclass(frozen=True)
class ServeConfig:
    """Everything a service process needs to start; built by the CLI, passed to create_server."""

    # Interface to bind: 127.0.0.1 for local use, 0.0.0.0 in a container.
    host: str = "127.0.0.1"
    # gRPC port; 0 picks a free one (logged at start).
    port: int = 0
    # Root of the service's persistent data.
    store: Path = Path.home() / ".driftlm"
    # Prometheus /metrics port; 0 picks a free one, None disables the endpoint.
    metrics_port: int | None = None
    # Largest single gRPC message, each way.
    max_message_bytes: int = 64 * MIB
    # Largest total of one request stream (tensors; texts for ObserveSlice). A draw over a stream
    # peaks at about 2.4 times its size: 512 MiB fits the sampling container's 4 GiB limit (deploy/).
    max_stream_bytes: int = 512 * MIB
    # Seconds in-flight calls get to finish after SIGTERM or SIGINT.
    grace_s: float = 30.0
    # Heavy calls (tokenize, train, score, export) worked on at once; more wait for a slot.
    workers: int = 8
    # Calls admitted at once, waiting ones included; beyond, RESOURCE_EXHAUSTED. 0: 4 x workers.
    max_in_flight: int = 0
    # Longest wait for a heavy-call slot before RESOURCE_EXHAUSTED (a shorter deadline wins).
    queue_timeout_s: float = 60.0
    # Directories beyond the store that calls may read files from / write files to.
    read_roots: tuple[Path, ...] = ()
    write_roots: tuple[Path, ...] = ()
    # Object-store URI prefixes (s3://bucket/prefix/) calls may read from / write to; none: off.
    read_uri_prefixes: tuple[str, ...] = ()
    write_uri_prefixes: tuple[str, ...] = ()
    # TLS: certificate and key (PEM); with a client CA, clients must present a certificate (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens, one a line; every call but health (and reflection, while open) must carry one.
    auth_token_file: Path | None = None
    # Whether reflection answers without a token when tokens are required.
    open_reflection: bool = True
    # How this service calls its peers: CA, client certificate and key, token file; and the longest a
    # peer call may take (a caller's shorter deadline wins).
    peer_tls_ca: Path | None = None
    peer_tls_cert: Path | None = None
    peer_tls_key: Path | None = None
    peer_token_file: Path | None = None
    peer_timeout_s: float = 120.0
    # debug, info, warning or error.
    log_level: str = "info"
    # host:port of the vocab service, for services that call it (the trainer).
    vocab_endpoint: str = ""
    # host:port of the sampling service; empty means in-process (the trainer).
    sampling_endpoint: str = ""
    # host:port of the inference service, for the compare service.
    inference_endpoint: str = ""
    # The compare service's toxicity classifier: "profanity-check" or "module:callable".
    toxicity_scorer: str = "profanity-check"
    # The inference service's model repository (Triton's layout); None: the trainer's default
    # export destination in the store, <store>/trainer/models.
    model_repository: Path | None = None
    # ONNX Runtime (inference): threads per run (0: one per core), graph optimisation level
    # (disable, basic, extended, all), execution provider (auto, cpu, cuda).
    ort_threads: int = 0
    # trainer: PyTorch's intra-op threads; 0: the CPUs the process may use. Results depend on it
    # (floating-point sums split across threads): pin it to reproduce a run on another machine.
    torch_threads: int = 0
    ort_optimization: str = "all"
    ort_provider: str = "auto"
    # Merge concurrent inference requests as each model's config.pbtxt allows.
    dynamic_batching: bool = True
    # Seconds between looks at the model repository for new versions; 0: only when asked.
    repository_poll_s: float = 0.0
    # OTLP collector (gRPC) for traces, e.g. http://collector:4317; empty: tracing off.
    otlp_endpoint: str = ""

    @property
    def limits(self) -> RequestLimits:
        """The per-call size limits."""
        return RequestLimits(self.max_message_bytes, self.max_stream_bytes)

    @property
    def roots(self) -> FileRoots:
        """The files calls may name: the store plus the configured roots."""
        return FileRoots(self.store, self.read_roots, self.write_roots, self.read_uri_prefixes, self.write_uri_prefixes)

    def peer_security(self) -> ChannelSecurity:
        """How this service's clients of its peers present themselves."""
        return ChannelSecurity.from_files(
            root_ca=self.peer_tls_ca,
            client_cert=self.peer_tls_cert,
            client_key=self.peer_tls_key,
            token_file=self.peer_token_file,
        )

    @property
    def inference_repository(self) -> Path:
        """The model repository the inference service serves."""
        return self.model_repository or self.store / "trainer" / "models"

    @property
    def address(self) -> str:
        """host:port as gRPC binds it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
