"""Admission on a real vocab server: heavy calls wait for a slot (or get RESOURCE_EXHAUSTED /
DEADLINE_EXCEEDED), calls past the in-flight bound are refused at once, and health always answers,
however many heavy calls are open. A Rust panic or an out-of-memory in a handler gets a status."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftlm.services.core.errors import ErrorCode
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.interceptor import as_domain_error
from driftlm.services.vocab.server import create_server
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from ..vocab.planted import planted_base_directory, register


class _HeldStream:
    """An ObserveSlice request stream that sends its first message, then waits until released:
    the call holds its heavy slot on the server all that time."""

    def __init__(self, version_id: str) -> None:
        self.version_id = version_id
        self.release = threading.Event()
        self.call: Any = None  # the future of the call this stream feeds

    def __iter__(self) -> Iterator[vocab_pb2.ObserveSliceRequest]:
        yield vocab_pb2.ObserveSliceRequest(
            version_id=self.version_id, corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=["a b"]))
        )
        self.release.wait(30)


def _server(tmp_path: Path, test_roots: dict[str, Any], **limits: Any) -> tuple[grpc.Server, str, str]:
    server, port = create_server("127.0.0.1:0", ServeConfig(store=tmp_path / "store", **test_roots, **limits))
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        base = register(vocab_pb2_grpc.VocabServiceStub(channel), planted_base_directory(tmp_path / "base"))
    return server, target, base.version_id


def _first_done(calls: list[grpc.Future], within_s: float) -> int | None:
    """The index of the first call to finish, or None if none does in time."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for index, call in enumerate(calls):
            if call.done():
                return index
        time.sleep(0.02)
    return None


def _healthy(channel: grpc.Channel) -> bool:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_heavy_calls_wait_then_are_refused_and_health_answers(tmp_path: Path, test_roots: dict[str, Any]) -> None:
    server, target, version = _server(tmp_path, test_roots, workers=1, max_in_flight=2, queue_timeout_s=0.5)
    held = _HeldStream(version)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = vocab_pb2_grpc.VocabServiceStub(channel)
            # Two heavy calls, one slot: whichever the server admits first holds it, the other waits
            # out the queue timeout and is refused.
            streams = [held, _HeldStream(version)]
            calls = [stub.ObserveSlice.future(iter(stream), timeout=30) for stream in streams]
            refused = _first_done(calls, within_s=10)
            assert refused is not None, "neither call was refused within 10 s"
            error = calls[refused].exception()
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--workers" in error.details() and "--queue-timeout-s" in error.details()
            # A deadline shorter than the queue's wait ends as DEADLINE_EXCEEDED.
            short = stub.ObserveSlice.future(iter(_HeldStream(version)), timeout=0.2)
            assert short.exception(timeout=10).code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert _healthy(channel)
            # Light calls are not held up by the heavy slot.
            assert stub.GetVersion(vocab_pb2.GetVersionRequest(version_id=version), timeout=5).version.size
            for stream in streams:
                stream.release.set()
            assert calls[1 - refused].result(timeout=30).observation_id
    finally:
        held.release.set()
        server.stop(grace=None)


def test_calls_past_the_in_flight_bound_are_refused_at_once(tmp_path: Path, test_roots: dict[str, Any]) -> None:
    server, target, version = _server(tmp_path, test_roots, workers=1, max_in_flight=1, queue_timeout_s=10)
    held: list[_HeldStream] = []
    try:
        with grpc.insecure_channel(target) as channel:
            stub = vocab_pb2_grpc.VocabServiceStub(channel)
            refused = None
            for _ in range(100):  # until the held call is in: then a light call is refused at once
                if not held or held[-1].call.done():  # refused itself (a light call was in): hold again
                    held.append(_HeldStream(version))
                    held[-1].call = stub.ObserveSlice.future(iter(held[-1]), timeout=30)
                try:
                    stub.GetVersion(vocab_pb2.GetVersionRequest(version_id=version), timeout=5)
                except grpc.RpcError as error:
                    refused = error
                    break
                time.sleep(0.05)
            assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-in-flight" in refused.details()
            assert _healthy(channel)
            held[-1].release.set()
            assert held[-1].call.result(timeout=30).observation_id
    finally:
        for stream in held:
            stream.release.set()
        server.stop(grace=None)


def test_eight_long_observations_do_not_starve_health(tmp_path: Path, test_roots: dict[str, Any]) -> None:
    """Once, 8 long ObserveSlice calls took every thread and health missed 14 of 19 probes."""
    server, target, version = _server(tmp_path, test_roots)  # the defaults: 8 heavy, 32 in flight
    streams = [_HeldStream(version) for _ in range(12)]
    try:
        with grpc.insecure_channel(target) as channel:
            stub = vocab_pb2_grpc.VocabServiceStub(channel)
            calls = [stub.ObserveSlice.future(iter(stream), timeout=60) for stream in streams]
            threading.Event().wait(0.5)
            assert all(_healthy(channel) for _ in range(10))
            for stream in streams:
                stream.release.set()
            assert all(call.result(timeout=60).observation_id for call in calls)
    finally:
        for stream in streams:
            stream.release.set()
        server.stop(grace=None)


class PanicException(BaseException):  # pyo3_runtime's, which tokenizers raises on a Rust panic
    pass


def test_panics_and_memory_errors_become_statuses() -> None:
    memory = as_domain_error(MemoryError())
    assert memory is not None and memory.code == ErrorCode.RESOURCE_EXHAUSTED
    disk = as_domain_error(OSError(28, "No space left on device"))
    assert disk is not None and disk.code == ErrorCode.RESOURCE_EXHAUSTED
    too_long = as_domain_error(OSError(36, "File name too long"))
    assert too_long is not None and too_long.code == ErrorCode.INVALID_ARGUMENT
    assert as_domain_error(PanicException("boom")) is None  # a bug: INTERNAL, logged, but answered


def test_a_panicking_handler_answers_internal_and_the_server_lives(tmp_path: Path) -> None:
    from driftlm.services.runtime.bootstrap import ServiceBinding, build_server

    def panic(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise PanicException("called `Result::unwrap()` on an `Err` value")

    def register_panic(server: grpc.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            "test.Panics", {"Now": grpc.unary_unary_rpc_method_handler(panic)}
        )
        server.add_generic_rpc_handlers((handler,))

    server, port = build_server(
        [ServiceBinding("test.Panics", register_panic)], "127.0.0.1:0", ServeConfig(store=tmp_path)
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Panics/Now")
            with pytest.raises(grpc.RpcError) as raised:
                call(b"", timeout=10)  # once: a hang until the deadline
            assert raised.value.code() == grpc.StatusCode.INTERNAL and "PanicException" in raised.value.details()
            assert _healthy(channel)
    finally:
        server.stop(grace=None)
