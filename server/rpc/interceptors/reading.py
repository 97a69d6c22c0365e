"""How a call's request is read: within a time limit, and decoded tolerantly.

grpc waits for a unary call's message for ever, so a client that opens calls
and never finishes them would hold them open: a unary method is served as a
client-streaming one whose single message is read with a deadline. And a
request whose bytes are not a valid message (a REST id with bytes that are
not UTF-8, say) would make grpcio answer INTERNAL, and log a traceback,
before any interceptor ran: it is decoded here into `Unread`, which the REST
interceptor refuses as INVALID_ARGUMENT once the rate limiter has counted it.

This is the one interceptor that changes the shape of a method's handler,
which grpc-interceptor's `intercept` cannot do; it is outermost, so every
other hop sees the decoded request. The chain it wraps is the same for every
call of a method (the other interceptors keep no per-call state outside the
call's own object), so it is built on a method's first call and kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from server.errors import InvalidField, RequestNotReceived

UNDECODABLE_PROBLEM = "is not a valid message (text must be UTF-8)"


class Unread:
    """Stands in for a request that could not be read; `error` says why."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, or text that is not UTF-8
            return Unread(InvalidField("request", UNDECODABLE_PROBLEM))

    return decode


class ReadInterceptor(grpc.aio.ServerInterceptor):
    """Reads each unary request within `read_timeout` seconds; decodes every request
    tolerantly (streams' messages too: grpc logs a traceback per bad message)."""

    def __init__(self, read_timeout: float) -> None:
        self._read_timeout = read_timeout
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        handler = self._handlers.get(method)
        if handler is None:
            inner = await continuation(details)
            if inner is None:  # no such method: grpc answers UNIMPLEMENTED
                return None
            # Only methods that exist are kept: the map stays bounded.
            handler = self._handlers[method] = self._adapted(inner)
        return handler

    def _adapted(self, handler: Any) -> Any:
        decode = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(handler.unary_stream, decode, serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(handler.stream_unary, decode, serialize)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(handler.stream_stream, decode, serialize)
        behaviour = handler.unary_unary
        timeout = self._read_timeout

        async def read_then_serve(_: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async with asyncio.timeout(timeout):
                    request = await context.read()
            except TimeoutError:
                request = Unread(RequestNotReceived(timeout))
            if request is grpc.aio.EOF:  # the client closed without a message
                request = Unread(InvalidField("request", UNDECODABLE_PROBLEM))
            return await behaviour(request, context)

        return grpc.stream_unary_rpc_method_handler(read_then_serve, decode, serialize)
