"""OpenTelemetry traces: a span per API call, the child of the caller's W3C `traceparent`
(Envoy's span), and spans of its database work beneath (server/data/traced.py), sent
in batches over OTLP/gRPC to OTEL_EXPORTER_OTLP_ENDPOINT.

Without that endpoint nothing imports this module (server/rpc/app.py asks the
settings first): no tracer, no cost. The settings are read by server/settings.py
like every other; the SDK is given them here.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from grpc_interceptor.exceptions import GrpcException
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.errors import InternalError, StoreUnavailable
from server.settings import Settings

# The W3C Trace Context response header (Level 2): which trace a reply belongs
# to, for REST clients (a header) and gRPC clients (trailing metadata) alike.
TRACE_RESPONSE = "traceresponse"


def sampler(name: str, ratio: float) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER names (the specification's names)."""
    root = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"), TraceIdRatioBased(ratio)
    )
    return ParentBased(root) if name.startswith("parentbased_") else root


class Span:
    """A call's span, current in the call's context until it ends."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: contextvars.Token[otel_context.Context]) -> None:
        self.span = span
        self.token = token


class Tracing:
    """The tracer of one server process. `begin` and `end` bracket a call, on the task
    that serves it; `database` wraps one unit of database work in a child span."""

    def __init__(self, settings: Settings) -> None:
        resource = Resource.create({"service.name": settings.otel_service_name})
        self.provider = TracerProvider(
            resource=resource, sampler=sampler(settings.otel_sampler, settings.otel_sampler_arg)
        )
        exporter = OTLPSpanExporter(
            endpoint=settings.otel_endpoint,
            insecure=settings.otel_endpoint.startswith("http://"),
        )
        # Spans are handed to a thread of the processor's own and sent in batches:
        # a call never waits for the collector.
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("server")
        self._propagator = TraceContextTextMapPropagator()
        self.database_system = (
            "postgresql" if settings.database_url.startswith("postgres") else "sqlite"
        )

    def begin(self, method: str, metadata: Sequence[tuple[str, Any]]) -> Span:
        """The span of a call of `method` (/package.Service/Method), the child of the
        traceparent in its metadata, if any; current from now on in this context."""
        parent = self._propagator.extract(dict(metadata))
        service, _, name = method.strip("/").partition("/")
        span = self.tracer.start_span(
            method.strip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        return Span(span, otel_context.attach(trace.set_span_in_context(span, parent)))

    @staticmethod
    def end(span: Span, code: str, value: int, fault: bool) -> None:
        """Ends the call's span with its status: `code` (a grpc.StatusCode's name and
        `value`); a server fault marks the span as an error, a caller's mistake does
        not (OpenTelemetry's rule for server spans)."""
        span.span.set_attribute("rpc.grpc.status_code", value)
        if fault:
            span.span.set_status(Status(StatusCode.ERROR, code))
        span.span.end()
        otel_context.detach(span.token)

    @staticmethod
    def ids(span: Span) -> tuple[str, tuple[str, str]]:
        """The trace id of a call's span (for its log line), and the traceresponse
        metadata its reply carries."""
        found = span.span.get_span_context()
        trace_id = f"{found.trace_id:032x}"
        flags = f"{int(found.trace_flags):02x}"
        return trace_id, (TRACE_RESPONSE, f"00-{trace_id}-{found.span_id:016x}-{flags}")

    @contextmanager
    def database(self, operation: str) -> Iterator[None]:
        """A child span of the current one for one unit of database work (a read, or a
        write's transaction with its retries); none in a trace not sampled, whose
        spans would go nowhere."""
        if not trace.get_current_span().is_recording():
            yield
            return
        with self.tracer.start_as_current_span(
            f"db {operation}",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": self.database_system, "db.operation.name": operation},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except Exception as error:
                if not expected(error):
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise

    def shutdown(self) -> None:
        """Sends what is still batched, then stops the exporter."""
        self.provider.shutdown()


def expected(error: BaseException) -> bool:
    """A domain error that is the caller's (a contact not found, a conflict): the
    database did its work. An outage or anything unforeseen is a failed span."""
    return isinstance(error, GrpcException) and not isinstance(
        error, (StoreUnavailable, InternalError)
    )
