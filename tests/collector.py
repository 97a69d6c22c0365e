"""An OpenTelemetry collector's receiving end, in process: a grpc.aio server of
opentelemetry-proto's OTLP TraceService, for the tests (what Envoy and the server
export) and the bench (a sink for tracing's rows)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.harness import wait_for


@dataclass(frozen=True)
class Received:
    service: str  # the resource's service.name
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    def attribute(self, name: str) -> Any:
        for attribute in self.span.attributes:
            if attribute.key == name:
                value = attribute.value
                return getattr(value, value.WhichOneof("value"))
        return None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on a free port, on an event loop of its own. It keeps
    what it receives, or (keep=False, for the bench) only counts it."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.count = 0
        self.received: list[Received] = []
        self._lock = threading.Lock()
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),))
        self._thread.start()
        self.port = started.result(timeout=10)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource_spans.scope_spans:
                    self.count += len(scope.spans)
                    if self.keep:
                        self.received += [Received(service, span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    async def _serve(self, started: concurrent.futures.Future[int]) -> None:
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        started.set_result(port)
        await self._stop.wait()
        await server.stop(0)

    def trace(self, trace_id: str, spans: int, envoy: bool = True) -> list[Received]:
        """The spans of one trace, once at least `spans` of them came, Envoy's among
        them if it is in the trace (Envoy sends its spans every 5 s, the server every
        100 ms here)."""

        def arrived() -> list[Received]:
            with self._lock:
                found = [r for r in self.received if r.trace_id == trace_id]
            envoys = [r for r in found if r.service.endswith("-envoy")]
            return found if len(found) >= spans and (envoys or not envoy) else []

        found: list[Received] = wait_for(arrived, 15, f"{spans} spans of trace {trace_id}")
        return found

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
