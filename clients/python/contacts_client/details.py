"""The google.rpc details of a failed call (AIP-193): why it failed, in a form a
program can act on, read from the `grpc-status-details-bin` trailer."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_TRAILER = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorDetails:
    """What the service said about a failure, beyond its code and message."""

    code: grpc.StatusCode
    message: str
    reason: str = ""  # ErrorInfo.reason: stable, UPPER_SNAKE (CONTACT_NOT_FOUND, ...)
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo.metadata
    # BadRequest: (field, what is wrong with it), one per bad field.
    violations: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None  # RetryInfo: seconds to wait before trying again


def details_of(error: grpc.RpcError) -> ErrorDetails:
    """The details of a failed call's error (empty ones when it carries none)."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = (error.details() if isinstance(error, grpc.Call) else "") or ""
    trailers = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    raw = next((v for k, v in trailers or () if k == DETAILS_TRAILER), None)
    if not isinstance(raw, bytes):
        return ErrorDetails(code, message)
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    reason, metadata, retry_after = "", {}, None
    violations: tuple[tuple[str, str], ...] = ()
    for packed in status.details:
        if packed.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif packed.Unpack(bad):
            violations = tuple((v.field, v.description) for v in bad.field_violations)
        elif packed.Unpack(retry):
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return ErrorDetails(code, status.message or message, reason, metadata, violations, retry_after)
