"""A call's admission: a slot among the server's, within its client's share; its request
read within a time limit and decoded tolerantly; a stream ended when it falls idle.

- Slots (server/limits/slots.py): grpc's own limit of calls in flight counts
  every call alike, so one client holding calls open would lock everyone
  out. Here a call takes a slot of its client's share as it arrives; one
  over the share is refused (RESOURCE_EXHAUSTED, the client's own doing),
  one over the server's slots too (UNAVAILABLE: overload).
- grpc waits for a unary call's message for ever: a unary method is served
  as a client-streaming one whose single message is read with a deadline.
- A request whose bytes are not a valid message (a REST id with bytes that
  are not UTF-8, say) would make grpcio answer INTERNAL, and log a
  traceback, before any interceptor ran: it is decoded into `Unread`.
- A stream (health Watch, reflection) that sends nothing for its idle time
  (CONTACTS_STREAM_IDLE) is ended: an idle stream holds its slot for nothing.

A refused call and a request not read go on down the chain as `Unread`, so
that they are logged, counted by the rate limiter and answered like any
other error (the REST interceptor raises it).

This is the one interceptor that changes the shape of a method's handler,
which grpc-interceptor's `intercept` cannot do; it is outermost, so every
other hop sees the decoded request. The chain it wraps is the same for every
call of a method (the other interceptors keep no per-call state outside the
call's own object), so it is built on a method's first call and kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server import call as calls
from server.errors import (
    InvalidField,
    RequestNotReceived,
    ServerBusy,
    StreamIdle,
    TooManyCalls,
)
from server.limits.slots import Refusal, Slots

UNDECODABLE_PROBLEM = "is not a valid message (text must be UTF-8)"
REFUSALS = {Refusal.CLIENT_AT_SHARE: TooManyCalls, Refusal.SERVER_FULL: ServerBusy}


class Unread:
    """Stands in for a request that was refused or could not be read; `error` says why."""

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


async def _refused(error: Exception) -> AsyncIterator[Any]:
    yield Unread(error)


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Admits each call within its client's share of `slots`; reads a unary request within
    `read_timeout` seconds; decodes every request tolerantly; ends idle streams.

    `client(context)` is the rate limiter's client key (a token's sub, else the
    address), kept on the call so that it is decided once."""

    def __init__(
        self,
        read_timeout: float,
        slots: Slots,
        client: Callable[[grpc.aio.ServicerContext], str],
        stream_idle: float,
        identify: Callable[[grpc.aio.ServicerContext], Awaitable[object]],
    ) -> None:
        self._identify = identify
        self._read_timeout = read_timeout
        self._slots = slots
        self._client = client
        self._stream_idle = stream_idle
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

    async def _admit(self, context: grpc.aio.ServicerContext) -> tuple[str, Exception | None]:
        """Starts the call; its client, and why it is refused a slot (None: it has one).
        Its credentials are verified first: a valid token's sub is its client."""
        calls.begin(context.invocation_metadata())
        await self._identify(context)
        client = self._client(context)
        refusal = self._slots.take(client)
        return client, None if refusal is None else REFUSALS[refusal]()

    def _adapted(self, handler: Any) -> Any:
        decode = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streamed(handler.unary_stream), decode, serialize
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streamed(handler.stream_stream), decode, serialize
            )
        behaviour = handler.unary_unary or handler.stream_unary
        streamed_request = handler.unary_unary is None
        timeout = self._read_timeout

        async def admit_read_serve(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            client, refused = await self._admit(context)
            if refused is not None:
                return await behaviour(
                    _refused(refused) if streamed_request else Unread(refused), context
                )
            try:
                if streamed_request:  # none of ours; served as it is
                    return await behaviour(requests, context)
                try:
                    async with asyncio.timeout(timeout):
                        request = await context.read()
                except TimeoutError:
                    request = Unread(RequestNotReceived(timeout))
                if request is grpc.aio.EOF:  # the client closed without a message
                    request = Unread(InvalidField("request", UNDECODABLE_PROBLEM))
                return await behaviour(request, context)
            finally:
                self._slots.give_back(client)

        return grpc.stream_unary_rpc_method_handler(admit_read_serve, decode, serialize)

    def _streamed(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        idle = self._stream_idle

        async def admit_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            client, refused = await self._admit(context)
            if refused is not None:
                request = _refused(refused) if hasattr(request, "__aiter__") else Unread(refused)
                async for reply in behaviour(request, context):
                    yield reply
                return
            replies = behaviour(request, context).__aiter__()
            try:
                while True:
                    try:
                        async with asyncio.timeout(idle):
                            reply = await anext(replies)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        break
                    yield reply
            finally:
                self._slots.give_back(client)
            await replies.aclose()
            await context.abort(StreamIdle.status_code, StreamIdle(idle).details)

        return admit_stream
