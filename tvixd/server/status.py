"""The one table between tvixd error classes and gRPC status codes (SPEC Part A §1).

The server maps every exception a servicer raises through :func:`code_for`;
the client backends map a failed call back through :func:`error_for`, so an
error crosses any number of daemons (proxy mode) keeping its class.
"""

from __future__ import annotations

import grpc

from tvixd import errors

# Most specific first is not needed: lookup walks the exception's MRO, so a
# subclass (e.g. DirectoryValidationError < InvalidRequest) finds its parent's code.
ERROR_CODES: dict[type[BaseException], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    # Only bugs and unclassifiable backend failures: INTERNAL (Part A §1).
    errors.StorageError: grpc.StatusCode.INTERNAL,
    errors.AlreadyClosed: grpc.StatusCode.INTERNAL,
    errors.TvixError: grpc.StatusCode.INTERNAL,
}

# The way back, for the client backends. Codes not listed (INTERNAL, UNKNOWN,
# CANCELLED, ...) become StorageError.
CODE_ERRORS: dict[grpc.StatusCode, type[errors.TvixError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequest,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}


def code_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for a tvixd error, or ``None`` for anything else (a bug: INTERNAL, logged)."""
    for cls in type(exc).__mro__:
        code = ERROR_CODES.get(cls)
        if code is not None:
            return code
    return None


def error_for(code: grpc.StatusCode | None, details: str | None) -> errors.TvixError:
    """The tvixd error a client raises for a failed call's ``code`` and ``details``."""
    cls = CODE_ERRORS.get(code, errors.StorageError) if code is not None else errors.StorageError
    message = " ".join((details or "").split()) or (code.name if code is not None else "unknown error")
    if cls is errors.StorageError and code is not None:
        message = f"{code.name}: {message}"
    return cls(message)
