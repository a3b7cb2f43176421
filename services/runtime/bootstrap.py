"""Build, start and stop a driftlm gRPC server the same way for every service.

Every server gets: the RPC interceptor (auth, admission, errors, metrics), grpc.health.v1 (each
service SERVING), server reflection (grpcurl works without the protos), TLS or mutual TLS when
configured, configurable message limits, and a graceful stop on SIGTERM or SIGINT: stop accepting
calls, give in-flight ones `grace_s` to finish (then cancel them: loops stop at their next check),
exit 0 within the grace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import tracing
from .admission import Admission
from .config import ServeConfig
from .interceptor import RpcInterceptor
from .security import read_tokens, server_credentials

_LOG = logging.getLogger("driftlm.server")


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to put on a server: its full name and how to register its servicer."""

    # Full name, e.g. "driftlm.v1.SamplingService".
    name: str
    # Adds the servicer to the server (the generated add_XServicer_to_server, bound).
    register: Callable[[grpc.Server], None]
    # Methods that tokenize, train, score or export: they take a heavy-call slot (admission.py).
    heavy_methods: frozenset[str] = frozenset()

    def heavy_paths(self) -> set[str]:
        """The heavy methods as gRPC paths (/package.Service/Method)."""
        return {f"/{self.name}/{method}" for method in self.heavy_methods}


class OwningServer(grpc.Server):  # type: ignore[misc]  # grpc ships no types
    """A gRPC server that, asked to stop, first closes what its services own, and knows its calls.

    A service with threads of its own (the trainer's run worker) must stop them at a safe point and
    join them before the process exits: a thread killed inside PyTorch aborts the interpreter.
    `stop(grace)` calls each closer with what is left of the grace (None: no limit), then stops the
    server with what is left after them, so the whole stop fits in the grace an orchestrator gives.
    """

    def __init__(
        self,
        server: grpc.Server,
        closers: Sequence[Callable[[float | None], None]],
        admission: Admission | None = None,
    ) -> None:
        self._server = server
        self._closers = list(closers)
        self._admission = admission

    def calls_in_progress(self) -> int:
        """Admitted calls whose handlers have not returned (health and reflection not counted)."""
        return 0 if self._admission is None else self._admission.admitted_count

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_insecure_port(self, address: str) -> int:
        return int(self._server.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return int(self._server.add_secure_port(address, server_credentials))

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float | None) -> threading.Event:
        """Close what the services own, then stop serving, within `grace` seconds in all."""
        closers, self._closers = self._closers, []
        deadline = None if grace is None else time.monotonic() + grace
        for close in closers:
            close(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        stopped: threading.Event = self._server.stop(
            None if deadline is None else max(deadline - time.monotonic(), 0.0)
        )
        return stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self._server.wait_for_termination(timeout))


def build_server(
    bindings: Sequence[ServiceBinding],
    address: str,
    config: ServeConfig,
    *,
    closers: Sequence[Callable[[float | None], None]] = (),
) -> tuple[grpc.Server, int]:
    """A started server on `address` (host:port) with every binding, health and reflection.

    Returns the server and the bound port (the free one picked when the port is 0). `closers` run
    when the server is stopped, before it stops serving (see OwningServer).

    Raises:
        RuntimeError: the address cannot be bound (in use, or no such interface).
        ValueError: half a TLS configuration, or a token file without tokens.
        OSError: a certificate, key or token file cannot be read.
    """
    admission = Admission(
        heavy=config.workers,
        in_flight=config.max_in_flight or 4 * config.workers,
        queue_timeout_s=config.queue_timeout_s,
    )
    tokens = read_tokens(config.auth_token_file) if config.auth_token_file else frozenset()
    interceptor = RpcInterceptor(
        admission,
        tokens=tokens,
        heavy_methods=set().union(*(binding.heavy_paths() for binding in bindings)),
        open_reflection=config.open_reflection,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=admission.pool_threads, thread_name_prefix="rpc"),
        interceptors=[*tracing.server_interceptors(), interceptor],  # the span covers refusals too
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # A restarted service must not share its port with a lingering old process.
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in bindings:
        binding.register(server)
    names = [binding.name for binding in bindings]
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if config.tls_cert is not None or config.tls_key is not None:
            if config.tls_cert is None or config.tls_key is None:
                raise ValueError("TLS needs both --tls-cert and --tls-key")
            port = server.add_secure_port(
                address, server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
            )
        elif config.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
        else:
            if tokens:
                _LOG.warning(
                    "bearer tokens over plaintext: anyone on the network path can read them; "
                    "serve TLS too (--tls-cert, --tls-key) unless a mesh encrypts the traffic"
                )
            port = server.add_insecure_port(address)
    except RuntimeError as error:  # grpc's own message points at GRPC_VERBOSITY, not at the cause
        raise RuntimeError(f"cannot listen on {address}: the port is in use or the host is not local") from error
    server.start()
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return OwningServer(server, closers, admission), port


@contextlib.contextmanager
def stop_requested_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs.

    Enter it before the server starts, so that a signal arriving during start-up is not lost
    (Python's default SIGINT handler would kill the process mid-start instead).
    """
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        _LOG.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop_requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_gracefully(server: grpc.Server, grace_s: float) -> None:
    """Refuse new calls at once, give in-flight ones grace_s to finish, then return.

    After the grace gRPC cancels what is left; handlers notice at their next check (calls.py) and
    return. One that does not (stuck inside a library call) would keep the process alive, since
    Python joins the pool's threads at exit: then the process ends at once, without waiting for it.
    """
    started = time.monotonic()
    server.stop(grace_s).wait(grace_s + 1.0)
    in_progress = server.calls_in_progress() if isinstance(server, OwningServer) else 0
    if in_progress:
        # Cancelled handlers get a moment to see the cancellation before the process leaves them.
        time.sleep(min(1.0, max(0.0, grace_s + 1.0 - (time.monotonic() - started))))
        in_progress = server.calls_in_progress() if isinstance(server, OwningServer) else 0
    _LOG.info("stopped", extra={"grace_s": grace_s, "calls_left_running": in_progress})
    if in_progress:
        leave_now()


def leave_now() -> NoReturn:
    """End the process at once, exit status 0, its logs flushed: for a server that has stopped and
    run its closers, everything it keeps is on disk already (temporary file, fsync, rename).

    Interpreter teardown would join every library's threads and run native destructors (OpenMP,
    ONNX Runtime, gRPC); one of them waiting forever turns a graceful stop into the orchestrator's
    SIGKILL (the trainer exited 137 once on CI, 40 s after logging "stopped")."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
