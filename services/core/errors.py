"""The errors a driftlm service reports, free of gRPC: each carries a canonical code and a reason.

Domain code raises these (never grpc errors); the RPC interceptor (`runtime.errors`) turns them
into a status with a `google.rpc.ErrorInfo` (the stable `reason` clients branch on) and, for bad
arguments, a `google.rpc.BadRequest` naming the field.

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
    ├── UnimplementedError        UNIMPLEMENTED       no such method on this service
    ├── UnavailableError          UNAVAILABLE         a service this one needs cannot be reached; retry
    └── PeerError                 INTERNAL            a service this one needs failed; retrying will not help
"""

from __future__ import annotations

import enum

# Status details travel in HTTP/2 trailers, which peers cap (16 KiB by default): longer messages
# (a library's error quoting a whole list, say) are cut, keeping their start.
MAX_MESSAGE_CHARS = 2000


class ErrorCode(enum.IntEnum):
    """The canonical codes (google.rpc.Code) driftlm reports; the numbers are the wire's."""

    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


def _shortened(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 15] + " ... (cut off)"


class DriftlmError(Exception):
    """Base of the errors a driftlm service reports to its callers."""

    code = ErrorCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        message = _shortened(message)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidArgumentError(DriftlmError):
    """A request field is wrong; `field` names it (dotted path) and the message says what is allowed."""

    code = ErrorCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {description}", reason=reason)
        self.field = field
        self.description = _shortened(description)


class NotFoundError(DriftlmError):
    """A named resource (version, checkpoint, run, model) does not exist."""

    code = ErrorCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExistsError(DriftlmError):
    """What the call would create (an export directory, say) exists already."""

    code = ErrorCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPreconditionError(DriftlmError):
    """The call is valid but the system is not in a state that allows it (e.g. nothing loaded)."""

    code = ErrorCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class AbortedError(DriftlmError):
    """A concurrent change won (two commits on one parent); re-read and retry."""

    code = ErrorCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhaustedError(DriftlmError):
    """The request is larger than the service allows, or memory ran out."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class UnavailableError(DriftlmError):
    """A peer service (vocab, sampling) cannot be reached; the call may succeed later."""

    code = ErrorCode.UNAVAILABLE
    default_reason = "PEER_UNAVAILABLE"


class PermissionDeniedError(DriftlmError):
    """The call names a file outside the directories this service may read or write."""

    code = ErrorCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class UnauthenticatedError(DriftlmError):
    """The call carries no bearer token, or one the service does not accept."""

    code = ErrorCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class DeadlineExceededError(DriftlmError):
    """The caller's deadline passed while the work was under way; it was stopped."""

    code = ErrorCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class CancelledError(DriftlmError):
    """The caller cancelled, or the server is shutting down; the work was stopped."""

    code = ErrorCode.CANCELLED
    default_reason = "CANCELLED"


class UnimplementedError(DriftlmError):
    """The service has no such method (an older server, or a mistyped name)."""

    code = ErrorCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class PeerError(DriftlmError):
    """A peer service answered with its own failure (not a transient one): retrying will not help."""

    code = ErrorCode.INTERNAL
    default_reason = "PEER_FAILED"
