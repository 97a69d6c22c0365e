"""The one place domain errors become gRPC status, and REST status through Envoy.

An error's status carries google.rpc details (server/rpc/status.py) and, as
trailing metadata, what the call gathered for its reply (server/call.py):
REST clients get those as headers, even from an error's trailers-only reply.
An error whose gRPC code the transcoder maps to another HTTP status (412,
422) says which. Every error sent here carries google.rpc details, which is
how Envoy tells the message is ours to show (never gRPC core's own, which has
none). Anything that is not a domain error is a bug: logged with its
traceback, answered INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from grpc_interceptor.exceptions import GrpcException

from server import call as calls
from server.call import REQUEST_ID
from server.contract import http_status
from server.errors import InternalError, StoreUnavailable
from server.observability import metrics
from server.rest import STATUS_HEADER
from server.rpc.interceptors.admission import Unread
from server.rpc.status import status_of

log = logging.getLogger(__name__)

# Codes that mean the server failed, not the client.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ErrorInterceptor(AsyncExceptionToStatusInterceptor):
    """Maps what the hops below raise to a status (grpc-interceptor's handle_exception)."""

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        if hasattr(request, "__aiter__"):
            request = _decoded(request)
        return await super().intercept(method, request, context, method_name)

    async def handle_exception(
        self, ex: Exception, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> NoReturn:
        if isinstance(ex, grpc.aio.AbortError):  # the status is sent already
            raise ex
        error = ex
        if not isinstance(error, GrpcException):
            log.error("unexpected error in %s", method_name, exc_info=ex)
            error = InternalError()
            error.__cause__ = ex
        await abort(error, context)


async def abort(error: GrpcException, context: grpc.aio.ServicerContext) -> NoReturn:
    """Ends the call with `error`'s status and the reply metadata gathered so far."""
    call = calls.current()
    if isinstance(error, StoreUnavailable):
        metrics.DATABASE_ERRORS.inc()
    metadata: tuple[tuple[str, str], ...] = tuple(getattr(error, "headers", ()))
    if call is not None:
        if error.status_code in SERVER_FAULTS:  # named on the call's log line
            call.note_cause(error.__cause__ or error)
        metadata = ((REQUEST_ID, call.request_id), *call.replied, *metadata)
    failure = getattr(error, "failure", None)
    if failure is not None and call is not None and call.rest_path is not None:
        # A REST call whose code the transcoder maps to another status: say which.
        metadata += ((STATUS_HEADER, str(http_status(failure))),)
    await context.abort_with_status(status_of(error, metadata))
    raise AssertionError("abort returned")  # pragma: no cover


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that ends the call at a message that could not be read."""
    async for request in requests:
        if isinstance(request, Unread):
            raise request.error
        yield request
