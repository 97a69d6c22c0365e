"""Every call as an operator sees it: a request id, returned to the client; one log line
(method, status, duration, the rate limiter's client key, the request id); and the
grpc_server_* metrics. The outermost interceptor, so it sees each call's final status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from server.observability import logs
from server.observability.metrics import MethodMetrics, Tally, grpc_type

log = logging.getLogger("server.calls")  # the call lines: operators select them by this name

REQUEST_ID = "x-request-id"  # Envoy's header; gRPC metadata of the same name
# A request id a client sent is kept if it is a plain token (Envoy's are UUIDs);
# anything else would let a client write what it likes into the log. A plain
# token is written bare in text and JSON lines alike, with no check per line.
_USABLE_ID = re.compile(r"[\w.:/+-]{1,128}", re.ASCII).fullmatch
# Codes that mean the server failed, not the client: their lines are WARNINGs.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_FAULT_NAMES = frozenset(code._name_ for code in SERVER_FAULTS)  # see _end
QUIET_SERVICES = frozenset({"grpc.health.v1.Health"})  # probed every few seconds: DEBUG


class Call:
    """What one call's hops learn about it for its log line."""

    __slots__ = ("cause", "client", "request_id", "started")

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.client: str | None = None  # the rate limiter's key, once decided
        self.cause: str | None = None  # why the server failed it, when it did


_current: ContextVar[Call | None] = ContextVar("call", default=None)


def current() -> Call | None:
    """The call being served (grpc.aio serves each in a task of its own)."""
    return _current.get()


def note_cause(error: BaseException) -> None:
    """Names, on the call's log line, why the server failed it."""
    call = _current.get()
    if call is not None:
        call.cause = " ".join(f"{type(error).__name__}: {error}".split())


def request_id_of(metadata: Any) -> str:
    """The id Envoy (or a gRPC client) sent, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID:
            if isinstance(value, str) and _USABLE_ID(value):
                return value
            break
    return new_request_id()


def new_request_id() -> str:
    """A random (version 4) UUID, as Envoy makes them; a third of uuid.uuid4()'s cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _kind(method_path: str, handler: Any) -> str:
    """grpc_type as the proto declares the method (the handler may have been adapted)."""
    service, _, method = method_path.strip("/").partition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
    except KeyError:
        return grpc_type(handler.request_streaming, handler.response_streaming)
    return grpc_type(found.client_streaming, found.server_streaming)


class _Method:
    """What every call of one RPC shares: its metrics children and its log level."""

    __slots__ = ("level", "lines", "metrics", "path")

    def __init__(self, path: str, metrics: MethodMetrics | None) -> None:
        self.path = path
        self.metrics = metrics
        self.lines = logs.CallLines(log, path)
        service = path.strip("/").partition("/")[0]
        self.level = logging.DEBUG if service in QUIET_SERVICES else logging.INFO


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Gives each call its request id (returned in trailing metadata, which a REST
    client gets as a header even from an error's trailers-only reply), counts it and
    logs one line when its status is decided.

    `client(context)` is the rate limiter's client key, asked for only when a line
    is written and remembered on the Call, so it is decided once.
    """

    def __init__(
        self, client: Callable[[grpc.aio.ServicerContext], str], tally: Tally | None
    ) -> None:
        self._client = client
        self._tally = tally  # where the metrics go; None: no metrics
        self._handlers: dict[str, Any] = {}

    async def intercept_service(self, continuation: Callable, details: Any) -> Any:
        # The rest of the chain is built once per method (it never changes).
        handler = self._handlers.get(details.method)
        if handler is None:
            inner = await continuation(details)
            if inner is None:  # no such method: grpc answers UNIMPLEMENTED
                return None
            handler = self._handlers[details.method] = self._observed(inner, details.method)
        rid = request_id_of(details.invocation_metadata)
        _current.set(Call(rid, time.perf_counter()))
        logs.request_id.set(rid)
        return handler

    def _observed(self, inner: Any, path: str) -> Any:
        kind = _kind(path, inner)
        metrics = None if self._tally is None else MethodMetrics(path, kind, self._tally)
        method = _Method(path, metrics)
        options = {
            "request_deserializer": inner.request_deserializer,
            "response_serializer": inner.response_serializer,
        }
        if inner.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(inner.unary_unary, method), **options
            )
        if inner.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(inner.stream_unary, method), **options
            )
        if inner.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(inner.unary_stream, method), **options
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(inner.stream_stream, method), **options
        )

    def _unary(self, behaviour: Callable, method: _Method) -> Callable:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, context)
            code = None
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN  # what grpc answers for it
                raise
            finally:
                self._end(method, call, code or context.code() or grpc.StatusCode.OK, context)

        return observed

    def _stream(self, behaviour: Callable, method: _Method) -> Callable:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._begin(method, context)
            # grpc may close this generator after the call is gone, when asking
            # the context for the peer would crash: the key is taken now.
            self._client_of(call, context)
            # Unless the stream runs to its end: the client left (cancelled, or
            # reset it), and grpc closes this generator.
            code = grpc.StatusCode.CANCELLED
            try:
                async for reply in behaviour(request, context):
                    yield reply
                code = context.code() or grpc.StatusCode.OK
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._end(method, call, code, context)

        return observed

    def _begin(self, method: _Method, context: grpc.aio.ServicerContext) -> Call:
        call = _current.get() or Call(new_request_id(), time.perf_counter())
        context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
        if method.metrics is not None:
            method.metrics.begin()
        return call

    def _client_of(self, call: Call, context: grpc.aio.ServicerContext) -> str:
        if call.client is None:
            try:
                call.client = self._client(context)
            except Exception:  # a log line must never fail the call
                log.exception("cannot tell the client of a call")
                call.client = "unknown"
        return call.client

    def _end(
        self,
        method: _Method,
        call: Call,
        code: grpc.StatusCode,
        context: grpc.aio.ServicerContext,
    ) -> None:
        elapsed = time.perf_counter() - call.started
        # An Enum's .name and its hash run Python code (1,700 and 1,100 instructions,
        # a tenth of the line); _name_ is the attribute they read.
        name = code._name_
        if method.metrics is not None:
            method.metrics.end(name, elapsed)
        level = logging.WARNING if name in _FAULT_NAMES else method.level
        if not log.isEnabledFor(level):  # nothing is formatted for a line not written
            return
        client = self._client_of(call, context)
        method.lines.write(level, name, elapsed, client, call.request_id, call.cause)
