"""Prometheus metrics: the grpc_server_* families under the names other gRPC services use
(go-grpc-prometheus, py-grpc-prometheus) and the service's own, served at /metrics on a
port of their own.

With several worker processes, each writes its figures to files in a directory
named by PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it when first
imported, so the parent sets it in each worker's environment), and the parent
serves their sums: a scrape counts every call once, whichever worker served it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

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

log = logging.getLogger(__name__)

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
FLUSH_SECONDS = 0.05  # how far behind the calls a scrape may be (Tally)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BOUNDS = (*SECONDS_BUCKETS, math.inf)  # as the Histogram's: bisect finds a value's bucket
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time the server took to handle an RPC, until its status was decided.",
    GRPC_LABELS,
    buckets=SECONDS_BUCKETS,
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
    """One RPC's grpc_server_* figures. A call adds to plain numbers here, and they go
    to prometheus_client together, at most FLUSH_SECONDS later (Tally).

    Why not inc() per call: in multiprocess mode every inc() takes a lock, asks
    the kernel for the pid and writes the file, 3-5 µs; the four a call needs
    cost 12 µs, 3 % of a GetContact's server CPU, where these additions cost 1 µs.
    """

    def __init__(self, method_path: str, kind: str, tally: Tally) -> None:
        service, _, method = method_path.strip("/").partition("/")
        self._labels = (kind, service, method)
        self._tally = tally
        self._started_child = STARTED.labels(*self._labels)
        self._seconds_child = HANDLING_SECONDS.labels(*self._labels)
        self._handled_children: dict[str, Any] = {}  # by code name (Enum hashes are slow)
        self._handled_child("OK")  # the series a scrape expects, from 0
        # Since the last flush:
        self._started = 0
        self._handled: dict[str, int] = {}
        self._buckets = [0] * len(_BOUNDS)  # observations per bucket, not cumulative
        self._seconds = 0.0

    def begin(self) -> None:
        self._started += 1
        self._tally.mark(self)

    def end(self, code: str, seconds: float) -> None:
        """A call that ended with `code` (a grpc.StatusCode's name) after `seconds`."""
        self._handled[code] = self._handled.get(code, 0) + 1
        self._buckets[bisect_left(_BOUNDS, seconds)] += 1
        self._seconds += seconds
        self._tally.mark(self)

    def flush(self) -> None:
        # Taken before any inc(): a flush that fails half-way loses figures
        # rather than counting them twice at the next.
        started, handled, buckets, seconds = (
            self._started,
            self._handled,
            self._buckets,
            self._seconds,
        )
        self._started, self._handled, self._seconds = 0, {}, 0.0
        self._buckets = [0] * len(_BOUNDS)
        if started:
            self._started_child.inc(started)
        for code, count in handled.items():
            self._handled_child(code).inc(count)
        if any(buckets):
            # A Histogram has no public way to add several observations at
            # once; these are the values its observe() adds to.
            for value, count in zip(self._seconds_child._buckets, buckets, strict=True):
                if count:
                    value.inc(count)
            self._seconds_child._sum.inc(seconds)

    def _handled_child(self, code: str) -> Any:
        child = self._handled_children.get(code)
        if child is None:
            child = self._handled_children[code] = HANDLED.labels(*self._labels, code)
        return child


class Tally:
    """One server's MethodMetrics with figures not yet flushed, and when they will be:
    on its event loop, FLUSH_SECONDS after the first; at once, off a loop. The
    server flushes it once it has stopped (App), and exit does (a backstop).
    A worker killed outright loses at most its last FLUSH_SECONDS of figures.
    """

    def __init__(self) -> None:
        self._dirty: set[MethodMetrics] = set()
        atexit.register(self.flush)

    def mark(self, method: MethodMetrics) -> None:
        if method in self._dirty:
            return
        if not self._dirty:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:
                self._dirty.add(method)
                self.flush()
                return
        self._dirty.add(method)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for method in dirty:
            try:
                method.flush()
            except Exception:  # the figures are lost; the others still go out
                log.exception("cannot flush the metrics of %s", "/".join(method._labels[1:]))


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
