"""Prometheus metrics: the grpc_server_* families under the names other gRPC services use
(go-grpc-prometheus, py-grpc-prometheus) and the service's own, served at /metrics on a
port of their own.

With several worker processes, each writes its figures to files in a directory
named by PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it when first
imported, so the parent sets it in each worker's environment), and the parent
serves their sums: a scrape counts every call once, whichever worker served it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.multiprocess import MultiProcessCollector

disable_created_metrics()  # *_created series: noise next to counters that start at 0

# The variable that puts prometheus_client in multiprocess mode, naming where a
# worker writes its figures (set by the supervisor in each worker's environment).
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", GRPC_LABELS)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, whatever their status.",
    (*GRPC_LABELS, "grpc_code"),
)
# Reads take a fraction of a millisecond: the usual buckets start at 5 ms, so
# finer ones come first.
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time the server took to handle an RPC, until its status was decided.",
    GRPC_LABELS,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter(
    "contacts_rate_limited_total", "Calls refused by the rate limiter.", ("rate_class",)
)
DATABASE_ERRORS = Counter(
    "contacts_database_errors_total",
    "Times the database could not be used (calls answered UNAVAILABLE, failed health probes).",
)
REDIS_ERRORS = Counter(
    "contacts_redis_errors_total", "Rate-limit takes that failed open because Redis did not answer."
)
REDIS_SKIPPED = Counter(
    "contacts_redis_skipped_total",
    "Rate-limit takes that did not ask Redis (unlimited) while it was failing (the breaker).",
)
DATABASE_CONNECTIONS_IN_USE = Gauge(
    "contacts_database_connections_in_use",
    "PostgreSQL pool connections checked out (sampled every second; 0 on SQLite).",
    multiprocess_mode="livesum",
)
HEALTH_SERVING = Gauge(
    "contacts_health_serving",
    "1 while grpc.health.v1 says SERVING (every live worker, with several), else 0.",
    multiprocess_mode="livemin",
)


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


class MethodMetrics:
    """One RPC's label children, made once so that a call only adds to them."""

    def __init__(self, method_path: str, kind: str) -> None:
        service, _, method = method_path.strip("/").partition("/")
        self._labels = (kind, service, method)
        self.started = STARTED.labels(*self._labels)
        self.seconds = HANDLING_SECONDS.labels(*self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}
        self.handled(grpc.StatusCode.OK)

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = HANDLED.labels(*self._labels, code.name)
        return child


def pool_in_use(database: object) -> int:
    """Connections a peewee pool has checked out (it has no public count); 0 without a pool."""
    return len(getattr(database, "_in_use", ()))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


Exposition = WSGIServer


def serve(port: int, multiprocess_dir: Path | None = None, host: str = "0.0.0.0") -> Exposition:
    """GET /metrics on `port` (404 elsewhere), from a thread; stop with `stop()`.

    With `multiprocess_dir`, the sums of the worker processes writing there;
    otherwise this process's figures (and its process_* and python_* metrics).
    """
    registry: CollectorRegistry = REGISTRY
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(multiprocess_dir))
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not Found: metrics are at /metrics\n"]

    try:
        server = make_server(host, port, app, _ThreadingServer, handler_class=_Quiet)
    except OSError as error:
        raise OSError(f"cannot serve metrics on port {port}: {error.strerror}") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def stop(server: Exposition) -> None:
    server.shutdown()
    server.server_close()
