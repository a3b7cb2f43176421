"""How a service process is configured: flags, with `DRIFTLM_*` environment variables as fallback."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from driftlm.services.core.paths import FileRoots
from driftlm.services.runtime.settings import Flag, setting

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
    """Everything a service process needs to start; built by the CLI, passed to create_server.

    Each field is one setting: its flag, environment variable and README row come from its Flag
    (runtime/settings.py).
    """

    host: str = setting("127.0.0.1", Flag("interface to bind (0.0.0.0 in containers)", "127.0.0.1"))
    # 0 picks a free one (logged at start).
    port: int = setting(0, Flag("gRPC port; 0 picks a free one", "the service's", parse=int, optional=True))
    store: Path = setting(Path.home() / ".driftlm", Flag("the service's data directory", "`~/.driftlm`", parse=Path))
    # None disables the endpoint.
    metrics_port: int | None = setting(
        None, Flag("Prometheus `/metrics`; 0 picks a free one", "the service's", parse=int, optional=True)
    )
    metrics_host: str = setting(
        "",
        Flag(
            "interface for `/metrics` (127.0.0.1 keeps it off the network; it has no token)",
            "`--host`",
        ),
    )
    metrics: bool = setting(True, Flag("no metrics endpoint", "off", kind="inverse", name="no-metrics"))
    max_message_bytes: int = setting(
        64 * MIB, Flag("largest single gRPC message", "64", parse=int, name="max-message-mb", scale=MIB)
    )
    # A draw over a stream peaks at about 2.4 times its size: 512 MiB fits the sampling container's
    # 4 GiB limit (deploy/).
    max_stream_bytes: int = setting(
        512 * MIB,
        Flag(
            "largest request stream (tensors, or ObserveSlice's texts); a 256 MiB weight stream takes 320 MiB to "
            "assemble and 612 MiB at the peak of a draw without replacement, against 600 and 1,113 MiB for chunks "
            "concatenated and `np.argpartition` (`python -m benchmarks.stream_memory`; from 4,000,000 weights on, "
            "draws keep only the keys, about 1.6x slower than with an index array)",
            "512",
            parse=int,
            name="max-stream-mb",
            scale=MIB,
        ),
    )
    grace_s: float = setting(
        30.0,
        Flag(
            "seconds in-flight calls get after SIGTERM/SIGINT; then they are cancelled and the process exits",
            "30",
            parse=float,
        ),
    )
    workers: int = setting(
        8, Flag("heavy calls (tokenize, train, score, export) worked on at once; more wait for a slot", "8", parse=int)
    )
    # 0: 4 x workers.
    max_in_flight: int = setting(
        0,
        Flag(
            "calls admitted at once, waiting ones included; beyond, `RESOURCE_EXHAUSTED` at once",
            "4 x workers",
            parse=int,
        ),
    )
    queue_timeout_s: float = setting(
        60.0, Flag("longest wait for a heavy-call slot (a shorter deadline wins)", "60", parse=float)
    )
    # Directories beyond the store that calls may read files from / write files to.
    read_roots: tuple[Path, ...] = setting(
        (),
        Flag(
            "directories calls may read files from (corpora, tokenizer and model directories)",
            "the store",
            kind="list",
            parse=Path,
            name="read-root",
            env="READ_ROOTS",
        ),
    )
    write_roots: tuple[Path, ...] = setting(
        (),
        Flag(
            "directories calls may export to",
            "the store",
            kind="list",
            parse=Path,
            name="write-root",
            env="WRITE_ROOTS",
        ),
    )
    # Object-store URI prefixes (s3://bucket/prefix/); none: remote URIs are refused.
    read_uri_prefixes: tuple[str, ...] = setting(
        (),
        Flag(
            "object-store prefixes calls may read from (`s3://bucket/corpora/`); none: remote URIs are refused",
            "none",
            kind="list",
            name="read-uri-prefix",
            env="READ_URI_PREFIXES",
            separator=" ",
        ),
    )
    write_uri_prefixes: tuple[str, ...] = setting(
        (),
        Flag(
            "object-store prefixes calls may export to",
            "none",
            kind="list",
            name="write-uri-prefix",
            env="WRITE_URI_PREFIXES",
            separator=" ",
        ),
    )
    otlp_endpoint: str = setting(
        "",
        Flag(
            "send OpenTelemetry traces to this OTLP collector (gRPC, e.g. http://collector:4317); needs `driftlm[otel]`",
            "off",
            fallback_env=("OTEL_EXPORTER_OTLP_ENDPOINT",),
        ),
    )
    tls_cert: Path | None = setting(
        None, Flag("serve TLS with this certificate chain (PEM), with `--tls-key`", "none", parse=Path)
    )
    tls_key: Path | None = setting(None, Flag("the TLS certificate's private key (PEM)", "none", parse=Path))
    tls_client_ca: Path | None = setting(
        None, Flag("also require client certificates signed by this CA (mutual TLS)", "none", parse=Path)
    )
    auth_token_file: Path | None = setting(
        None,
        Flag("require `authorization: Bearer <token>`; tokens one a line, `#` comments", "none", parse=Path),
    )
    open_reflection: bool = setting(
        True,
        Flag(
            "with tokens, reflection needs one too (health never does)",
            "off",
            kind="inverse",
            name="closed-reflection",
        ),
    )
    peer_tls_ca: Path | None = setting(
        None, Flag("CA of the peers' certificates, for this service's calls to its peers", "none", parse=Path)
    )
    peer_tls_cert: Path | None = setting(
        None, Flag("this service's client certificate for its peers (mutual TLS)", "none", parse=Path)
    )
    peer_tls_key: Path | None = setting(None, Flag("that client certificate's private key", "none", parse=Path))
    peer_token_file: Path | None = setting(
        None, Flag("the bearer token (first line) this service sends to its peers", "none", parse=Path)
    )
    peer_timeout_s: float = setting(
        120.0,
        Flag("longest a call to a peer may take; the caller's shorter deadline wins", "120", parse=float),
    )
    log_level: str = setting(
        "info",
        Flag("JSON log lines on stderr at this level", "info", choices=("debug", "info", "warning", "error")),
    )
    vocab_endpoint: str = setting("", Flag("trainer: host:port of the vocab service (required)", "none"))
    sampling_endpoint: str = setting(
        "", Flag("trainer: host:port of the sampling service; none: the kernels in-process", "none")
    )
    torch_threads: int = setting(
        0,
        Flag(
            "trainer: PyTorch's threads, 0 for the CPUs the process may use; results depend on it (floating-point "
            "sums split across threads), so pin it to reproduce a run on another machine",
            "0",
            parse=int,
        ),
    )
    ray_address: str = setting(
        "",
        Flag(
            "vocab, trainer: the Ray cluster that runs calls asking for the Ray engine (`auto`, `host:6379`, "
            "`ray://host:10001`); a trusted cluster of the operator's, never one a caller names",
            "none (Ray engine off)",
        ),
    )
    inference_endpoint: str = setting("", Flag("compare: host:port of the inference service (required)", "none"))
    toxicity_scorer: str = setting(
        "profanity-check",
        Flag("compare: the behaviour evaluation's classifier, or `module:callable`", "profanity-check"),
    )
    # None: the trainer's default export destination in the store, <store>/trainer/models.
    model_repository: Path | None = setting(
        None,
        Flag(
            "inference: the Triton-layout repository to serve (where ExportOnnx writes by default)",
            "`<store>/trainer/models`",
            parse=Path,
        ),
    )
    ort_threads: int = setting(0, Flag("inference: ONNX Runtime threads per run (0: one per core)", "0", parse=int))
    ort_optimization: str = setting(
        "all",
        Flag(
            "inference: graph optimisation level (`disable`, `basic`, `extended`, `all`)",
            "all",
            choices=("disable", "basic", "extended", "all"),
        ),
    )
    ort_provider: str = setting(
        "auto",
        Flag(
            "inference: `cuda` (onnxruntime-gpu on a GPU host), `cpu`, or `auto` (CUDA when present)",
            "auto",
            choices=("auto", "cpu", "cuda"),
        ),
    )
    dynamic_batching: bool = setting(
        True,
        Flag(
            "inference: run each request alone instead of merging concurrent ones",
            "off",
            kind="inverse",
            name="no-dynamic-batching",
        ),
    )
    repository_poll_s: float = setting(
        0.0,
        Flag(
            "inference: look for new versions every N seconds and swap them in; 0: only on `RepositoryModelLoad` / "
            "`LoadModel`",
            "0",
            parse=float,
        ),
    )

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
