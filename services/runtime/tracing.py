"""OpenTelemetry traces across the services: off unless an OTLP endpoint is configured.

With `--otlp-endpoint` (env DRIFTLM_OTLP_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT), every server
records a span per call and every client channel a span per call it makes, carrying the W3C trace
context in the call's metadata, so one pipeline slice is one trace through vocab, trainer,
sampling, inference and compare. The provider is this module's own, not OpenTelemetry's global
one, so that nothing else in the process is changed. Without an endpoint, nothing of OpenTelemetry
is imported and channels and servers are exactly as they were.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import grpc

_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider while tracing is on


def otlp_endpoint_from_environment() -> str:
    """DRIFTLM_OTLP_ENDPOINT, else OpenTelemetry's own OTEL_EXPORTER_OTLP_ENDPOINT, else ''."""
    return os.environ.get("DRIFTLM_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def enable(service_name: str, *, otlp_endpoint: str = "", exporter: Any = None) -> None:
    """Turn tracing on for this process: spans go to the OTLP collector at `otlp_endpoint` (gRPC,
    e.g. http://collector:4317), or to `exporter` (tests give an in-memory one).

    Raises:
        RuntimeError: the OpenTelemetry packages are not installed (pip install 'driftlm[otel]').
    """
    global _provider
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as error:
        raise RuntimeError(f"tracing needs OpenTelemetry: pip install 'driftlm[otel]' ({error})") from error
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    _provider = provider


def disable() -> None:
    """Flush and turn tracing off (servers and channels made while it was on keep their spans)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
    _provider = None


def enabled() -> bool:
    """Whether servers and channels made now record spans."""
    return _provider is not None


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """The interceptor that opens a span per call, continuing the caller's trace; none when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor(tracer_provider=_provider)]  # type: ignore[no-untyped-call]


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """`channel`, with a span per call and the trace context sent along when tracing is on."""
    if _provider is None:
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

    interceptor = client_interceptor(tracer_provider=_provider)  # type: ignore[no-untyped-call]
    return grpcext.intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float) -> Iterator[None]:
    """A span around a block of work (a pipeline slice); calls made inside it join its trace."""
    if _provider is None:
        yield
        return
    with _provider.get_tracer("driftlm").start_as_current_span(name, attributes=attributes):
        yield


def current_trace() -> Any:
    """The trace the calling thread is in (None when tracing is off), to resume in another thread.

    Only the trace is carried: the rest of the caller's context (the call being served, its
    deadline) must not follow work that outlives the call, such as a training run.
    """
    if _provider is None:
        return None
    from opentelemetry import context

    return context.get_current()


@contextlib.contextmanager
def resumed_trace(trace: Any) -> Iterator[None]:
    """Run a block inside a trace from current_trace(); nothing when it is None."""
    if trace is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(trace)
    try:
        yield
    finally:
        context.detach(token)
