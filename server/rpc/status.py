"""The google.rpc.Status of a domain error (AIP-193): what a gRPC client can act on.

Every error carries google.rpc.ErrorInfo with a stable UPPER_SNAKE reason in
the domain `contacts.v1`; invalid input adds google.rpc.BadRequest (one
violation per bad field); a rate-limit refusal adds google.rpc.RetryInfo.
grpcio-status packs them into `grpc-status-details-bin`; REST clients never
see them (envoy/rest.lua drops the header and keeps the `{"detail"}` body).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_interceptor.exceptions import GrpcException
from grpc_status import rpc_status

from server.errors import InvalidField, RateLimited

DOMAIN = "contacts.v1"


@dataclass(frozen=True)
class Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def details_of(error: GrpcException) -> list[Message]:
    reason = getattr(error, "reason", None) or error.status_code.name
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
    details: list[Message] = [info]
    if isinstance(error, InvalidField):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=problem)
            for field, problem in error.violations
        ]
        info.metadata["field"] = error.violations[0][0]
        details.append(error_details_pb2.BadRequest(field_violations=violations))
    if isinstance(error, RateLimited):
        delay = duration_pb2.Duration(seconds=max(1, math.ceil(error.retry_after)))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return details


def status_of(error: GrpcException, metadata: tuple[tuple[str, str], ...] = ()) -> Status:
    """The status to abort with: code, text, the details, and `metadata` besides."""
    packed = status_pb2.Status(
        code=error.status_code.value[0],
        message=error.details,
        details=[_packed(detail) for detail in details_of(error)],
    )
    status = rpc_status.to_status(packed)
    return Status(status.code, status.details, (*status.trailing_metadata, *metadata))
