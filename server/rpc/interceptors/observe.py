"""Every call as an operator sees it: a request id, returned to the client; one log line
(method, status, duration, the rate limiter's client key, the request id); and the
grpc_server_* metrics. The outermost interceptor of grpc-interceptor's chain: it starts
the call's object (server/call.py) and sees each call's final status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_interceptor import AsyncServerInterceptor

from server import call as calls
from server.call import REQUEST_ID
from server.contract import Contract
from server.observability import logs
from server.observability.metrics import MethodMetrics
from server.rpc.interceptors.errors import SERVER_FAULTS

if TYPE_CHECKING:  # loaded only when tracing is on
    from server.observability.traces import Tracing

log = logging.getLogger("server.calls")  # the call lines: operators select them by this name

_FAULT_NAMES = frozenset(code.name for code in SERVER_FAULTS)
QUIET_SERVICES = frozenset({"grpc.health.v1.Health"})  # probed every few seconds: DEBUG


class _Method:
    """What every call of one RPC shares: its metrics children, its line, its log level,
    whether it is traced (the API's unary calls: not health probes or reflection)."""

    __slots__ = ("level", "lines", "metrics", "traced")

    def __init__(self, path: str, kind: str, metered: bool, traced: bool) -> None:
        self.metrics = MethodMetrics(path, kind) if metered else None
        self.lines = logs.CallLines(log, path)
        service = path.strip("/").partition("/")[0]
        self.level = logging.DEBUG if service in QUIET_SERVICES else logging.INFO
        self.traced = traced and kind == "unary"


class CallInterceptor(AsyncServerInterceptor):
    """Starts each call's object with its request id (returned in trailing metadata,
    which a REST client gets as a header even from an error's trailers-only reply),
    counts it and logs one line when its status is decided.

    `client(context)` is the rate limiter's client key, asked for only when a line
    is written and remembered on the call, so it is decided once.

    With `tracing`, an API call is also a span (observability/traces.py), current
    while the call is served, whose trace id its line names and its reply carries
    (`traceresponse`).
    """

    def __init__(
        self,
        client: Callable[[grpc.aio.ServicerContext], str],
        metered: bool,
        contract: Contract,
        tracing: Tracing | None = None,
    ) -> None:
        self._client = client
        self._metered = metered  # grpc_server_* metrics counted, or none at all
        self._contract = contract
        self._tracing = tracing
        self._methods: dict[str, _Method] = {}

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        observed = self._methods.get(method_name)
        if observed is None:  # only methods that exist get here: the map stays bounded
            kind = self._contract.kind(method_name)
            traced = self._tracing is not None and self._contract.get(method_name) is not None
            observed = self._methods[method_name] = _Method(
                method_name, kind, self._metered, traced
            )
        call = calls.current() or calls.begin(context.invocation_metadata())
        call.expire_in(context.time_remaining())
        if observed.metrics is not None:
            observed.metrics.begin()
        span = None
        if observed.traced:
            assert self._tracing is not None
            span = self._tracing.begin(method_name, context.invocation_metadata() or ())
            call.trace_id, reply_header = self._tracing.ids(span)
            call.reply_with(reply_header)
        # What grpc answers for an error not mapped; None: the stream ends the call.
        code: grpc.StatusCode | None = grpc.StatusCode.UNKNOWN
        try:
            response = method(request, context)
            if hasattr(response, "__aiter__"):
                # grpc may close the stream after the call is gone, when asking
                # the context for the peer would crash: the key is taken now.
                self._client_of(call, context)
                context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
                code = None
                return self._stream(response, observed, call, context)
            response = await response
            code = grpc.StatusCode.OK
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if code is not None:
                self._end(observed, call, code, context)
            if span is not None:
                assert self._tracing is not None
                final = code or grpc.StatusCode.UNKNOWN
                fault = final._name_ in _FAULT_NAMES
                self._tracing.end(span, final._name_, final.value[0], fault)
        # With the status, in the reply's one batch (rest.lua makes REST headers of
        # it): initial metadata would go in a batch of its own, and a worker killed
        # between the two leaves Envoy a reply begun, which it cannot send elsewhere.
        context.set_trailing_metadata(((REQUEST_ID, call.request_id), *call.replied))
        return response

    async def _stream(
        self,
        replies: AsyncIterator[Any],
        observed: _Method,
        call: calls.Call,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Any]:
        # Unless the stream runs to its end, the client left (cancelled, or reset
        # it), and grpc closes this generator.
        code = grpc.StatusCode.CANCELLED
        try:
            async for reply in replies:
                yield reply
            code = context.code() or grpc.StatusCode.OK
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            self._end(observed, call, code, context)

    def _client_of(self, call: calls.Call, context: grpc.aio.ServicerContext) -> str:
        if call.client is None:
            try:
                call.client = self._client(context)
            except Exception:  # a log line must never fail the call
                log.exception("cannot tell the client of a call")
                call.client = "unknown"
        return call.client

    def _end(
        self,
        observed: _Method,
        call: calls.Call,
        code: grpc.StatusCode,
        context: grpc.aio.ServicerContext,
    ) -> None:
        elapsed = time.perf_counter() - call.started
        # An Enum's .name and its hash run Python code; _name_ (a documented
        # sunder name) is the attribute .name reads.
        name = code._name_
        if observed.metrics is not None:
            observed.metrics.end(name, elapsed)
        level = logging.WARNING if name in _FAULT_NAMES else observed.level
        if not log.isEnabledFor(level):  # nothing is formatted for a line not written
            return
        client = self._client_of(call, context)
        observed.lines.write(
            level, name, elapsed, client, call.request_id, call.cause, call.trace_id
        )
