"""Prometheus metrics: the grpc_server_* families under the names other gRPC services use
(go-grpc-prometheus, py-grpc-prometheus) and the service's own, served at /metrics on a
port of their own (exposition.py).

With several worker processes, each writes its figures to files in a directory
named by PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it when first
imported, so the parent sets it in each worker's environment), and the parent
serves their sums: a scrape counts every call once, whichever worker served it.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

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
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
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
    """One RPC's grpc_server_* series, their children looked up once, counted per call
    with prometheus_client's inc() and observe().

    In multiprocess mode each value written takes a lock, asks for the pid and
    writes to the process's file; a call writes four (started, handled, the
    histogram's bucket and sum), about 37,000 instructions (callgrind), 5 % of a
    GetContact's 700,000. Figures are gathered by hand and handed over in batches
    only past 10 %.
    """

    def __init__(self, method_path: str, kind: str) -> None:
        service, _, method = method_path.strip("/").partition("/")
        self._labels = (kind, service, method)
        self._started = STARTED.labels(*self._labels)
        self._seconds = HANDLING_SECONDS.labels(*self._labels)
        self._handled: dict[str, Any] = {}  # children by code name (Enum hashes are slow)
        self._handled_child("OK")  # the series a scrape expects, from 0

    def begin(self) -> None:
        try:
            self._started.inc()
        except Exception:  # a figure lost, never a call failed
            log.exception("cannot count a call of %s", self._name())

    def end(self, code: str, seconds: float) -> None:
        """A call that ended with `code` (a grpc.StatusCode's name) after `seconds`."""
        try:
            (self._handled.get(code) or self._handled_child(code)).inc()
            self._seconds.observe(seconds)
        except Exception:
            log.exception("cannot count a call of %s", self._name())

    def _handled_child(self, code: str) -> Any:
        child = self._handled[code] = HANDLED.labels(*self._labels, code)
        return child

    def _name(self) -> str:
        return "/".join(self._labels[1:])


# Change events (server/events/relay.py): figures of the one relay of a
# database, 0 in every other process ("livemax": the relay's).
OUTBOX_DEPTH = Gauge(
    "contacts_events_outbox_depth",
    "Change events committed and not yet published to NATS (sampled every second).",
    multiprocess_mode="livemax",
)
OUTBOX_OLDEST_SECONDS = Gauge(
    "contacts_events_outbox_oldest_seconds",
    "Age of the oldest change event not yet published (0 with none).",
    multiprocess_mode="livemax",
)
EVENTS_PUBLISHED = Counter(
    "contacts_events_published_total",
    "Change events JetStream acknowledged (repeats it dropped as duplicates included).",
)
EVENTS_POISONED = Counter(
    "contacts_events_poisoned_total",
    "Change events given up on after repeated failures to publish them (logged).",
)
