"""One server interceptor for every RPC: authentication, admission, errors, metrics.

In order, each call is: authenticated (bearer token, unless the method is open), admitted
(admission.py: in-flight bound, heavy slots), served with its context recorded (calls.py), and
measured. Handlers raise DriftlmError subclasses, which become the status they carry. Out of memory
becomes RESOURCE_EXHAUSTED, a file-system refusal the status that fits it, and a Rust panic in a
library (tokenizers raises PanicException, a BaseException) INTERNAL instead of a hung call.
Anything else is a bug: logged with its traceback, answered INTERNAL; the server keeps serving.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any, NoReturn

import grpc
from grpc_status import rpc_status

from driftlm.services.core.errors import (
    DriftlmError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnimplementedError,
)
from driftlm.services.runtime.errors import peer_failure, to_status

from . import calls
from .admission import Admission
from .enums import check_enums
from .metrics import record_rpc, record_started
from .security import check_bearer

_LOG = logging.getLogger("driftlm.rpc")

Behaviour = Callable[[Any, grpc.ServicerContext], Any]

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


def as_domain_error(error: BaseException) -> DriftlmError | None:
    """The status an error that is not our bug deserves, or None for a bug."""
    if isinstance(error, DriftlmError):
        return error
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):  # a peer's answer, not a crash here
        return peer_failure("peer", "its configured endpoint", error)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":  # torch's, a RuntimeError
        return ResourceExhaustedError(
            "the service ran out of memory on this call; send less (fewer or shorter texts, a smaller batch)",
            reason="OUT_OF_MEMORY",
        )
    if isinstance(error, OSError) and error.errno is not None:
        reason = errno.errorcode.get(error.errno, "OS_ERROR")
        cause = error.strerror or reason
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE):
            return ResourceExhaustedError(f"the service's disk or file table is full: {cause}", reason=reason)
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDeniedError(f"the service may not write or read there: {cause}", reason=reason)
        if error.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EINVAL):
            return InvalidArgumentError("path", f"cannot be used: {cause}", reason=reason)
        return FailedPreconditionError(f"a file operation failed: {cause}", reason=reason)
    return None


class _Undecodable:
    """What the request deserializer gives for bytes that are no valid message (see _lenient)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns _Undecodable instead of raising.

    grpcio answers a deserializer's exception with INTERNAL ("Exception deserializing request"),
    which tells the client it hit our bug. Handing the handler a marker lets it answer
    INVALID_ARGUMENT instead.
    """
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # noqa: BLE001  # any decoding failure is the caller's bytes
            return _Undecodable(error)

    return decode


def _undecodable_error() -> InvalidArgumentError:
    return InvalidArgumentError("request", "is not a valid protobuf message of this method's request type")


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    """A request stream that raises INVALID_ARGUMENT at the first message that did not decode or
    holds an unknown enum value."""
    for request in requests:
        if isinstance(request, _Undecodable):
            raise _undecodable_error()
        check_enums(request)
        yield request


def _is_panic(error: BaseException) -> bool:
    """A Rust panic surfaced by pyo3 (pyo3_runtime.PanicException derives from BaseException)."""
    return type(error).__name__ == "PanicException"


def _abort(context: grpc.ServicerContext, method: str, error: BaseException) -> None:
    """End the call with the status for `error`; context.abort raises to unwind the handler."""
    domain = as_domain_error(error)
    if domain is not None:
        _LOG.info("rpc failed", extra={"method": method, "code": domain.code.name, "error": domain.message})
        context.abort_with_status(rpc_status.to_status(to_status(domain)))
    _LOG.error("rpc crashed", extra={"method": method}, exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}; see the server log")


def _fail(context: grpc.ServicerContext, method: str, error: BaseException) -> NoReturn:
    """The boundary of every call: whatever a handler raised becomes a status here."""
    if not isinstance(error, Exception) and not _is_panic(error):
        raise error  # SystemExit, KeyboardInterrupt, GeneratorExit
    if context.code() is not None or not context.is_active():
        raise error  # the handler aborted already, or the client went away: nothing to report
    _abort(context, method, error)
    raise error  # not reached: abort raises


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def _decoded(request: Any) -> Any:
    """The request, or for a stream an iterator that checks each message; INVALID_ARGUMENT for bytes
    that did not decode and for enum values no enum names (enums.py)."""
    if isinstance(request, _Undecodable):
        raise _undecodable_error()
    if isinstance(request, Iterator):
        return _checked(request)
    check_enums(request)
    return request


def _unimplemented(method: str) -> Behaviour:
    def refuse(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        raise UnimplementedError(f"this service has no method {method[:200]!r}")
        yield  # a generator, as streaming behaviours are

    return refuse


class RpcInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler of the server (health and reflection included)."""

    def __init__(
        self,
        admission: Admission | None = None,
        *,
        tokens: frozenset[str] = frozenset(),
        heavy_methods: Collection[str] = (),
        open_reflection: bool = True,
    ) -> None:
        self._admission = admission
        self._tokens = tokens
        self._heavy = frozenset(heavy_methods)
        self._open_reflection = open_reflection

    def _is_open(self, method: str) -> bool:
        """Health is always open (probes carry no token); reflection when configured so."""
        return method.startswith(HEALTH_PREFIX) or (self._open_reflection and method.startswith(REFLECTION_PREFIX))

    @contextlib.contextmanager
    def _serving(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Authenticate, admit, and record the call's context for the block."""
        if self._tokens and not self._is_open(method):
            check_bearer(context.invocation_metadata() or (), self._tokens)
        exempt = self._admission is None or method.startswith((HEALTH_PREFIX, REFLECTION_PREFIX))
        admitted = (
            contextlib.nullcontext()
            if exempt or self._admission is None
            else self._admission.admitted(heavy=method in self._heavy, time_remaining_s=context.time_remaining())
        )
        with admitted, calls.serving(context):
            yield

    def _wrap_unary_response(self, behaviour: Behaviour, method: str, grpc_type: str) -> Behaviour:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            record_started(method, grpc_type)
            try:
                with self._serving(method, context):
                    return behaviour(_decoded(request), context)
            except BaseException as error:  # noqa: BLE001  # _fail answers with a status or re-raises
                _fail(context, method, error)
            finally:
                record_rpc(method, grpc_type, _code_name(context), time.perf_counter() - start)

        return handle

    def _wrap_streaming_response(self, behaviour: Behaviour, method: str, grpc_type: str) -> Behaviour:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            record_started(method, grpc_type)
            try:
                with self._serving(method, context):
                    yield from behaviour(_decoded(request), context)
            except BaseException as error:  # noqa: BLE001  # _fail answers with a status or re-raises
                _fail(context, method, error)
            finally:
                record_rpc(method, grpc_type, _code_name(context), time.perf_counter() - start)

        return handle

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            # No such method: still authenticated first (UNAUTHENTICATED tells a caller without a
            # token nothing about what exists) and counted, then UNIMPLEMENTED.
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_streaming_response(_unimplemented(method), method, "unknown"),
                request_deserializer=None,
                response_serializer=None,
            )
        codec = {
            "request_deserializer": _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary_response(handler.unary_unary, method, "unary"), **codec
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary_response(handler.stream_unary, method, "client_stream"), **codec
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_streaming_response(handler.unary_stream, method, "server_stream"), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_streaming_response(handler.stream_stream, method, "bidi_stream"), **codec
        )
