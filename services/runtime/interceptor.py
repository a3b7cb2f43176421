"""One server interceptor for every RPC: domain errors become statuses, every call is measured.

Handlers raise DriftlmError subclasses; this turns them into the status code, message and
details they carry. Anything else is a bug: it is logged with its traceback and reported as
INTERNAL, and the server keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_status import rpc_status

from .errors import DriftlmError
from .metrics import record_rpc

_LOG = logging.getLogger("driftlm.rpc")

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


def _abort(context: grpc.ServicerContext, method: str, error: BaseException) -> None:
    """End the call with the status for `error`; context.abort raises to unwind the handler."""
    if isinstance(error, DriftlmError):
        _LOG.info("rpc failed", extra={"method": method, "code": error.code.name, "error": error.message})
        context.abort_with_status(rpc_status.to_status(error.to_status()))
    _LOG.error("rpc crashed", extra={"method": method}, exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}; see the server log")


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def _wrap_unary_response(behaviour: Behaviour, method: str) -> Behaviour:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            return behaviour(request, context)
        # The boundary of every call: whatever a handler raised becomes a status here.
        except Exception as error:
            if context.code() is not None or not context.is_active():
                raise  # the handler aborted already, or the client went away: nothing to report
            _abort(context, method, error)
        finally:
            record_rpc(method, _code_name(context), time.perf_counter() - start)

    return handle


def _wrap_streaming_response(behaviour: Behaviour, method: str) -> Behaviour:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        start = time.perf_counter()
        try:
            yield from behaviour(request, context)
        except Exception as error:
            if context.code() is not None or not context.is_active():
                raise
            _abort(context, method, error)
        finally:
            record_rpc(method, _code_name(context), time.perf_counter() - start)

    return handle


class RpcInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler of the server (health and reflection included)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary_response(handler.unary_unary, method), **codec)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary_response(handler.stream_unary, method), **codec)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_streaming_response(handler.unary_stream, method), **codec)
        return grpc.stream_stream_rpc_method_handler(_wrap_streaming_response(handler.stream_stream, method), **codec)
