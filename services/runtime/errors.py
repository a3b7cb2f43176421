"""driftlm errors as gRPC statuses, and a peer's failed call as a driftlm error.

The errors themselves live in `core.errors` (free of gRPC, so domain code raises them); this is
the one place where they become status codes, with a `google.rpc.ErrorInfo` (the stable `reason`
clients branch on) and, for bad arguments, a `google.rpc.BadRequest` naming the field.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from driftlm.services.core.errors import (
    DriftlmError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PeerError,
    UnavailableError,
)

# The ErrorInfo domain of every driftlm error.
ERROR_DOMAIN = "driftlm.v1"


def status_code(error: DriftlmError) -> grpc.StatusCode:
    """The gRPC status code of `error`."""
    return grpc.StatusCode[error.code.name]


def _details(error: DriftlmError) -> list[any_pb2.Any]:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    details = [info]
    if isinstance(error, InvalidArgumentError):
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.description)
        bad_request = any_pb2.Any()
        bad_request.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        details.append(bad_request)
    return details


def to_status(error: DriftlmError) -> status_pb2.Status:
    """`error` as a google.rpc.Status, ready for grpc_status.rpc_status.to_status."""
    status = status_pb2.Status(code=int(error.code), message=error.message)
    status.details.extend(_details(error))
    return status


# A peer's answers that a later call may not get: the caller may retry. Anything else is the peer's
# own verdict (or bug), and retrying will not help, so it must not reach our callers as UNAVAILABLE.
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def peer_failure(peer: str, endpoint: str, error: grpc.RpcError) -> DriftlmError:
    """A peer's failed call (a grpc.RpcError that is also a grpc.Call) as the error our caller should see."""
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(str(details))
    if code == grpc.StatusCode.INVALID_ARGUMENT:  # what we passed on from our caller's request
        return InvalidArgumentError("request", f"the {peer} service refused it: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(f"the {peer} service at {endpoint}: {details}")
    if code in _TRANSIENT:
        return UnavailableError(f"the {peer} service at {endpoint} is unavailable: {code.name} {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return FailedPreconditionError(
            f"the {peer} service at {endpoint} refused this service's credentials ({code.name}: {details}); "
            "check --peer-token-file and the --peer-tls-* files",
            reason="PEER_REFUSED_CREDENTIALS",
        )
    return PeerError(f"the {peer} service at {endpoint} failed: {code.name} {details}")
