"""OpenTelemetry traces, as a collector receives them: a real OTLP receiver (a grpc.aio
server of opentelemetry-proto's TraceService, in this process) behind a real Envoy
and a real server, both exporting to it. One trace runs from Envoy's span through
the server's to the database's; a client's traceparent is continued; a failed call's
spans say so; the REST reply and the log line name the trace."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from opentelemetry.proto.trace.v1 import trace_pb2
from playhouse.db_url import connect

from server.settings import PROJECT_ROOT, Settings
from tests.collector import Collector, Received
from tests.conftest import BACKEND, POSTGRES_DSN
from tests.harness import Envoy, Server, empty_database, wait_for

SERVER_KIND = trace_pb2.Span.SPAN_KIND_SERVER
ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass
class Traced:
    collector: Collector
    server: Server
    envoy: Envoy
    database_url: str


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """A server and an Envoy exporting every span to the collector, on a database of
    their own (the last test breaks it)."""
    workdir = tmp_path_factory.mktemp("traced")
    collector = Collector()
    secret = secrets.token_urlsafe(48)
    with empty_database(workdir, BACKEND, POSTGRES_DSN) as database_url:
        env = {
            "CONTACTS_DATABASE_URL": database_url,
            "CONTACTS_JWT_SECRET": secret,
            "CONTACTS_RATE_LIMIT_CREATE": "0",
            "CONTACTS_RATE_LIMIT_DEFAULT": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_SERVICE_NAME": "contacts-test",
            # The SDK's own variable: batches leave every 100 ms, not 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        server = Server(env, workdir)
        settings = Settings.from_env(env)
        envoy = Envoy(server.proxy_port, workdir, settings=settings)
        try:
            envoy.wait_upstream()
            yield Traced(collector, server, envoy, database_url)
        finally:
            envoy.stop()
            server.stop()
            collector.stop()


def trace_of(reply: requests.Response) -> tuple[str, str]:
    """The trace id and the server's span id a reply's traceresponse names."""
    version, trace_id, span_id, flags = reply.headers["traceresponse"].split("-")
    assert (version, flags) == ("00", "01")
    return trace_id, span_id


def by_service(spans: list[Received], service: str) -> list[Received]:
    return [r for r in spans if r.service == service]


def test_one_trace_from_envoy_through_the_server_to_the_database(traced: Traced) -> None:
    base = traced.envoy.url
    made = requests.post(
        f"{base}/contacts", json={"first_name": "Ann", "email": "ann@example.com"}, timeout=5
    )
    assert made.status_code == 201
    reply = requests.get(f"{base}/contacts/{made.json()['id']}", timeout=5)
    assert reply.status_code == 200
    trace_id, server_span_id = trace_of(reply)
    spans = traced.collector.trace(trace_id, 3)
    (envoy,) = by_service(spans, "contacts-test-envoy")
    (server,) = [r for r in spans if r.span.kind == SERVER_KIND and r.service == "contacts-test"]
    assert server.span.name == "contacts.v1.ContactsService/GetContact"
    assert server.span.kind == SERVER_KIND
    assert server.span_id == server_span_id
    assert server.parent_id == envoy.span_id  # the server's span is Envoy's child
    assert envoy.parent_id == ""  # Envoy started the trace
    database = [r for r in spans if r.span.name.startswith("db ")]
    assert database and all(r.parent_id == server.span_id for r in database)
    assert database[0].attribute("db.system.name") == BACKEND
    assert server.attribute("rpc.grpc.status_code") == 0
    # The call's log line names the trace.
    wait_for(
        lambda: f"trace_id={trace_id}" in traced.server.log.read_text(),
        what="the call's line with its trace id",
    )


def test_a_clients_traceparent_is_continued(traced: Traced) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    reply = requests.get(
        f"{traced.envoy.url}/contacts/{uuid.uuid4()}",
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        timeout=5,
    )
    assert reply.status_code == 404
    assert trace_of(reply)[0] == trace_id
    spans = traced.collector.trace(trace_id, 2)
    (envoy,) = by_service(spans, "contacts-test-envoy")
    (server,) = [r for r in spans if r.span.kind == SERVER_KIND and r.service == "contacts-test"]
    assert envoy.parent_id == parent
    assert server.parent_id == envoy.span_id
    # NOT_FOUND is the caller's: its code is recorded, the span is no error.
    assert server.attribute("rpc.grpc.status_code") == grpc.StatusCode.NOT_FOUND.value[0]
    assert server.span.status.code != ERROR


def test_a_direct_grpc_call_gets_a_trace_of_its_own(traced: Traced) -> None:
    from contacts.v1 import contacts_pb2 as pb
    from contacts.v1 import contacts_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{traced.server.port}") as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        _, call = stub.CreateContact.with_call(
            pb.CreateContactRequest(first_name="Bo", email="bo@example.com"), timeout=5
        )
    (value,) = [v for k, v in call.trailing_metadata() if k == "traceresponse"]
    trace_id = value.split("-")[1]
    spans = traced.collector.trace(trace_id, 2, envoy=False)
    (server,) = [r for r in spans if r.span.kind == SERVER_KIND]
    assert server.parent_id == ""
    assert [r.span.name for r in spans if r.parent_id == server.span_id] == ["db create_contact"]


def test_a_server_fault_is_an_error_span_down_to_the_database(traced: Traced) -> None:
    """Last: it breaks the database (a table gone: INTERNAL, a 500)."""
    db = connect(traced.database_url)
    db.execute_sql("ALTER TABLE contacts RENAME TO contacts_gone")
    db.close()
    reply = requests.get(f"{traced.envoy.url}/contacts/{uuid.uuid4()}", timeout=5)
    assert reply.status_code == 500
    trace_id, _ = trace_of(reply)
    spans = traced.collector.trace(trace_id, 3)
    (server,) = [r for r in spans if r.span.kind == SERVER_KIND and r.service == "contacts-test"]
    (envoy,) = by_service(spans, "contacts-test-envoy")
    assert server.span.status.code == ERROR
    assert server.attribute("rpc.grpc.status_code") == grpc.StatusCode.INTERNAL.value[0]
    (database,) = [r for r in spans if r.parent_id == server.span_id]
    assert database.span.status.code == ERROR
    assert [e.name for e in database.span.events] == ["exception"]
    assert envoy.span.status.code == ERROR  # Envoy marks its 5xx


def test_unset_no_tracer_is_even_loaded() -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT a serving server loads no tracer, exporter or
    span processor (redis imports OpenTelemetry's API for its own optional metrics)."""
    program = (
        "import sys, secrets\n"
        "TRACING = ('server.observability.traces', 'server.data.traced',\n"
        "    'opentelemetry.sdk.trace', 'opentelemetry.exporter')\n"
        "from server.rpc.app import create_app\n"
        "from server.data.store import Store\n"
        "from server.settings import Settings\n"
        f"url = 'sqlite:///{PROJECT_ROOT}/data/untraced-{os.getpid()}.db'\n"
        "settings = Settings(grpc_port=0, proxy_port=0, metrics_port=0, database_url=url,\n"
        "    jwt_secret=secrets.token_urlsafe(48))\n"
        "app = create_app(settings, Store.open(url, max_connections=1))\n"
        "app.start(); app.stop(0)\n"
        "print(sorted(m for m in sys.modules if m.startswith(TRACING)))\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert time.monotonic() - started < 60
    for leftover in (PROJECT_ROOT / "data").glob(f"untraced-{os.getpid()}.db*"):
        leftover.unlink()


def test_envoy_without_an_endpoint_has_no_tracer(tmp_path: Path) -> None:
    from server.process import stack

    plain = stack.render_envoy_config((("127.0.0.1", 1),), 0, 0)
    assert "opentelemetry" not in plain and "tracing:" not in plain
