"""Domain errors and their gRPC status codes: the one place where failures become statuses.

Domain code raises these (never grpc errors); the RPC interceptor turns them into a status with
a `google.rpc.ErrorInfo` (a stable `reason` clients can branch on) and, for bad arguments, a
`google.rpc.BadRequest` naming the field.

    DriftlmError
    ├── InvalidArgumentError      INVALID_ARGUMENT    the request is wrong; fix it and retry
    ├── NotFoundError             NOT_FOUND           a named thing does not exist
    ├── AlreadyExistsError        ALREADY_EXISTS      what the call would create is there already
    ├── FailedPreconditionError   FAILED_PRECONDITION the system is not in the state the call needs
    ├── AbortedError              ABORTED             a concurrent change won; re-read and retry
    ├── ResourceExhaustedError    RESOURCE_EXHAUSTED  too big, too busy or out of memory; ask for less
    ├── PermissionDeniedError     PERMISSION_DENIED   a path outside the roots the operator allows
    ├── UnauthenticatedError      UNAUTHENTICATED     no bearer token, or not one the service knows
    ├── DeadlineExceededError     DEADLINE_EXCEEDED   the caller's deadline passed mid-work
    ├── CancelledError            CANCELLED           the caller went away (or the server is stopping)
    ├── UnavailableError          UNAVAILABLE         a service this one needs cannot be reached; retry
    └── PeerError                 INTERNAL            a service this one needs failed; retrying will not help
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

# The ErrorInfo domain of every driftlm error.
ERROR_DOMAIN = "driftlm.v1"
# Status details travel in HTTP/2 trailers, which peers cap (16 KiB by default): longer messages
# (a library's error quoting a whole list, say) are cut, keeping their start.
MAX_MESSAGE_CHARS = 2000


def _shortened(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 15] + " ... (cut off)"


class DriftlmError(Exception):
    """Base of the errors a driftlm service reports to its callers."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        message = _shortened(message)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    def details(self) -> list[any_pb2.Any]:
        """The google.rpc detail messages attached to the status."""
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN))
        return [info]

    def to_status(self) -> status_pb2.Status:
        """This error as a google.rpc.Status, ready for grpc_status.rpc_status.to_status."""
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        status.details.extend(self.details())
        return status


class InvalidArgumentError(DriftlmError):
    """A request field is wrong; `field` names it (dotted path) and the message says what is allowed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {description}", reason=reason)
        self.field = field
        self.description = _shortened(description)

    def details(self) -> list[any_pb2.Any]:
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.description)
                ]
            )
        )
        return [*super().details(), bad_request]


class NotFoundError(DriftlmError):
    """A named resource (version, checkpoint, run, model) does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExistsError(DriftlmError):
    """What the call would create (an export directory, say) exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPreconditionError(DriftlmError):
    """The call is valid but the system is not in a state that allows it (e.g. nothing loaded)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class AbortedError(DriftlmError):
    """A concurrent change won (two commits on one parent); re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhaustedError(DriftlmError):
    """The request is larger than the service allows, or memory ran out."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class UnavailableError(DriftlmError):
    """A peer service (vocab, sampling) cannot be reached; the call may succeed later."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "PEER_UNAVAILABLE"


class PermissionDeniedError(DriftlmError):
    """The call names a file outside the directories this service may read or write."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class UnauthenticatedError(DriftlmError):
    """The call carries no bearer token, or one the service does not accept."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class DeadlineExceededError(DriftlmError):
    """The caller's deadline passed while the work was under way; it was stopped."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class CancelledError(DriftlmError):
    """The caller cancelled, or the server is shutting down; the work was stopped."""

    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class PeerError(DriftlmError):
    """A peer service answered with its own failure (not a transient one): retrying will not help."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "PEER_FAILED"


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
