"""What an operator sees: request ids end to end, one log line per call (text or JSON),
Prometheus metrics that count every call of every worker once, and no tracebacks a
client can cause."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import psutil
import pytest
import requests
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.data.offload import Offload
from server.data.store import Store
from server.observability import exposition, logs
from server.observability.exposition import READ_SECONDS
from server.observability.metrics import HANDLED as HANDLED_FAMILY
from server.observability.metrics import MethodMetrics
from server.rpc.app import create_app
from server.settings import Settings
from tests.harness import Envoy, Server, wait_for

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
GET_CONTACT = "/contacts.v1.ContactsService/GetContact"


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "CONTACTS_DATABASE_URL": database_url,
        "CONTACTS_JWT_SECRET": secrets.token_urlsafe(48),
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server process (its log configured as `make run` does) with Envoy in front."""
    workdir = tmp_path_factory.mktemp("observed")
    server = Server(server_env(database_url), workdir)
    envoy = Envoy(server.proxy_port, workdir)
    envoy.wait_upstream()
    server.envoy = envoy  # type: ignore[attr-defined]
    yield server
    envoy.stop()
    server.stop()


def call_lines(server: Server) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if " call method=" in line]


def line_for(server: Server, request_id: str) -> str:
    """The server's log line for the call with this request id (lines go out as the
    event loop turns, so it may take a moment)."""
    found: str = wait_for(
        lambda: next((ln for ln in call_lines(server) if f"request_id={request_id}" in ln), ""),
        timeout=5,
        what=f"the log line of {request_id}",
    )
    return found


def test_a_rest_response_names_its_request_id_and_the_log_line_does_too(stack: Server) -> None:
    envoy: Envoy = stack.envoy  # type: ignore[attr-defined]
    missing = requests.get(f"{envoy.url}/contacts/{uuid.uuid4()}", timeout=5)
    assert missing.status_code == 404
    rid = missing.headers["x-request-id"]
    line = line_for(stack, rid)
    assert f"method={GET_CONTACT} code=NOT_FOUND duration_ms=" in line
    assert " client=ip:127.0.0.1 " in line

    created = requests.post(
        f"{envoy.url}/contacts", json={"first_name": "R", "email": "r@x.io"}, timeout=5
    )
    assert created.status_code == 201
    # One id, not Envoy's and the server's side by side.
    assert len(created.raw.headers.getlist("x-request-id")) == 1
    assert "code=OK" in line_for(stack, created.headers["x-request-id"])
    # Envoy's own access line names the same id.
    wait_for(
        lambda: f"request_id={created.headers['x-request-id']}" in envoy.log.read_text(),
        timeout=5,
        what="Envoy's access line",
    )


def test_grpc_responses_carry_the_request_id_errors_included(stack: Server) -> None:
    envoy: Envoy = stack.envoy  # type: ignore[attr-defined]
    for port in (stack.port, envoy.port):  # direct, and through Envoy's port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            _, call = stub.CreateContact.with_call(
                pb.CreateContactRequest(first_name="G", email="g@x.io")
            )
            rid = dict(call.trailing_metadata())["x-request-id"]
            assert f"request_id={rid}" in line_for(stack, rid)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4())))
            error: Any = refused.value
            assert error.code() == grpc.StatusCode.NOT_FOUND
            rid = dict(error.trailing_metadata())["x-request-id"]
            assert "code=NOT_FOUND" in line_for(stack, rid)
    # A gRPC client's own id is kept (Envoy replaces one from outside, as it should).
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        _, call = stub.CreateContact.with_call(
            pb.CreateContactRequest(first_name="G", email="g@x.io"),
            metadata=(("x-request-id", "trace-42"),),
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "trace-42"
        # One a client could forge log fields with is replaced (lines write ids bare).
        for forged in ("x code=OK", "code=OK"):
            _, call = stub.CreateContact.with_call(
                pb.CreateContactRequest(first_name="G", email="g@x.io"),
                metadata=(("x-request-id", forged),),
            )
            rid = dict(call.trailing_metadata())["x-request-id"]
            line = line_for(stack, rid)
            assert str(uuid.UUID(rid)) and f"={forged}" not in line and line.count("code=") == 1


def metric(server: Server, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return server.metrics().get(key, 0.0)


HANDLED = "grpc_server_handled_total"


def handled(server: Server, method: str, code: str) -> float:
    return metric(
        server,
        HANDLED,
        grpc_type="unary",
        grpc_service="contacts.v1.ContactsService",
        grpc_method=method,
        grpc_code=code,
    )


def seconds_bucket(server: Server, method: str, le: str) -> float:
    """Calls of `method` that took at most `le` seconds (a cumulative bucket)."""
    return metric(
        server,
        "grpc_server_handling_seconds_bucket",
        grpc_type="unary",
        grpc_service="contacts.v1.ContactsService",
        grpc_method=method,
        le=le,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_n_calls_count_exactly_n_whichever_worker_served_them(
    database_url: str, tmp_path: Path, workers: int
) -> None:
    server = Server(server_env(database_url), tmp_path, workers=workers)
    try:
        outcomes = {("GetContact", "NOT_FOUND"): 9, ("GetContact", "INVALID_ARGUMENT"): 4}
        outcomes[("CreateContact", "OK")] = 7
        before = {key: handled(server, *key) for key in outcomes}
        timed = {le: seconds_bucket(server, "CreateContact", le) for le in ("10.0", "+Inf")}
        started = metric(
            server,
            "grpc_server_started_total",
            grpc_type="unary",
            grpc_service="contacts.v1.ContactsService",
            grpc_method="GetContact",
        )
        for (method, code), times in outcomes.items():
            for _ in range(times):
                # A connection per call: the kernel spreads connections over the workers.
                with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                    stub = contacts_pb2_grpc.ContactsServiceStub(channel)
                    if method == "CreateContact":
                        stub.CreateContact(pb.CreateContactRequest(first_name="N", email="n@x.io"))
                        continue
                    contact_id = str(uuid.uuid4()) if code == "NOT_FOUND" else "not-a-uuid"
                    with pytest.raises(grpc.RpcError):
                        stub.GetContact(pb.GetContactRequest(contact_id=contact_id))

        def changes() -> dict[tuple[str, str], float]:
            return {key: handled(server, *key) - before[key] for key in outcomes}

        # A worker counts a refused call just after its reply has left.
        wait_for(lambda: changes() == outcomes, timeout=5, what=f"{outcomes}, got {changes()}")
        time.sleep(0.2)
        assert changes() == outcomes  # and not one more
        assert (
            metric(
                server,
                "grpc_server_started_total",
                grpc_type="unary",
                grpc_service="contacts.v1.ContactsService",
                grpc_method="GetContact",
            )
            - started
            == 13
        )
        # Every create timed once, each in under 10 s.
        assert seconds_bucket(server, "CreateContact", "+Inf") - timed["+Inf"] == 7
        assert seconds_bucket(server, "CreateContact", "10.0") - timed["10.0"] == 7
        assert metric(server, "contacts_health_serving") == 1
    finally:
        server.stop()


def test_metrics_are_on_their_own_port_only(stack: Server) -> None:
    envoy: Envoy = stack.envoy  # type: ignore[attr-defined]
    public = requests.get(f"{envoy.url}/metrics", timeout=5)
    assert public.status_code == 404
    assert public.json() == {"detail": "Not Found"}
    assert requests.get(stack.metrics_url, timeout=5).status_code == 200
    other = requests.get(stack.metrics_url.removesuffix("metrics") + "other", timeout=5)
    assert other.status_code == 404


def test_json_log_lines_parse(database_url: str, tmp_path: Path) -> None:
    server = Server(server_env(database_url, CONTACTS_LOG_FORMAT="json"), tmp_path)
    envoy = Envoy(server.proxy_port, tmp_path, log_format="json")
    try:
        envoy.wait_upstream()
        r = requests.get(f"{envoy.url}/contacts/{uuid.uuid4()}", timeout=5)
        rid = r.headers["x-request-id"]

        def server_lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in server.log.read_text().splitlines()]

        line = wait_for(
            lambda: next((e for e in server_lines() if e.get("request_id") == rid), None),
            timeout=5,
            what="the JSON call line",
        )
        assert line["message"] == "call" and line["level"] == "INFO"
        assert line["method"] == GET_CONTACT and line["code"] == "NOT_FOUND"
        assert isinstance(line["duration_ms"], float) and line["client"] == "ip:127.0.0.1"
        wait_for(
            lambda: any(
                json.loads(text).get("request_id") == rid
                for text in envoy.log.read_text().splitlines()
                if text.startswith("{")
            ),
            timeout=5,
            what="Envoy's JSON access line",
        )
    finally:
        envoy.stop()
        server.stop()


def reset_streams(port: int, count: int) -> None:
    """Reflection streams that ask for a lot and are reset (RST_STREAM) while the server
    writes its answers, then the connection dropped: what a client can do at will."""
    message = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="contacts.v1.ContactsService"
    ).SerializeToString()
    frame = b"\x00" + struct.pack(">I", len(message)) + message
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            stream = conn.get_next_available_stream_id()
            conn.send_headers(
                stream,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", REFLECTION),
                    (":authority", "localhost"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ],
            )
            for _ in range(50):
                conn.send_data(stream, frame)
            sock.sendall(conn.data_to_send())
            time.sleep(0.05)
            conn.reset_stream(stream)
            sock.sendall(conn.data_to_send())


def test_what_clients_can_do_at_will_leaves_no_traceback(stack: Server) -> None:
    reset_streams(stack.port, 8)
    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        junk = b"\xff\xff\xff\xff"  # not a protobuf message
        for call in (
            lambda: list(channel.stream_stream(REFLECTION)(iter([junk]), timeout=5)),
            lambda: list(channel.unary_stream("/grpc.health.v1.Health/Watch")(junk, timeout=5)),
            lambda: channel.unary_unary(GET_CONTACT)(junk, timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        rid = stub.CreateContact.with_call(pb.CreateContactRequest(first_name="A", email="a@x.io"))[
            1
        ].trailing_metadata()
    line_for(stack, dict(rid)["x-request-id"])  # still serving, and its lines are out
    text = stack.log.read_text()
    assert "Traceback" not in text
    assert " ERROR " not in text
    assert f"method={REFLECTION} " in text  # the reset streams had their lines


def test_an_unexpected_error_is_logged_once_with_its_traceback_and_request_id(
    settings: Settings,
    store: Store,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(offload: Offload, contact_id: uuid.UUID) -> Any:
        raise RuntimeError("the store is broken")

    # Every read of a contact, on either database, goes through Offload.contact.
    monkeypatch.setattr(Offload, "contact", broken)
    app = create_app(settings, store, host="127.0.0.1")
    app.start()
    try:
        with (
            caplog.at_level(logging.INFO),
            grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel,
        ):
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4())))
            error: Any = failed.value
            assert error.code() == grpc.StatusCode.INTERNAL
            assert error.details() == "Internal server error"  # nothing internal leaks
            rid = dict(error.trailing_metadata())["x-request-id"]
            wait_for(
                lambda: any(getattr(r, "fields", {}).get("code") for r in caplog.records),
                timeout=5,
                what="the call line",
            )
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1
        assert tracebacks[0].levelno == logging.ERROR
        assert getattr(tracebacks[0], "request_id", None) == rid
        (line,) = [r for r in caplog.records if getattr(r, "fields", None)]
        assert line.fields["code"] == "INTERNAL" and line.fields["request_id"] == rid  # type: ignore[attr-defined]
        assert "the store is broken" in line.fields["cause"]  # type: ignore[attr-defined]
    finally:
        app.stop(grace=1)


def test_a_figure_that_cannot_be_written_is_lost_alone_and_never_counted_twice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each call is counted as it ends (server/observability/metrics.py): one whose figure
    cannot be written is logged and lost, never fails its call, and the next call adds
    only its own."""
    name = f"Method{uuid.uuid4().hex[:8]}"
    path = f"/test.Flaky/{name}"
    labels = {"grpc_type": "unary", "grpc_service": "test.Flaky", "grpc_method": name}

    def handled(code: str) -> float:
        found = REGISTRY.get_sample_value("grpc_server_handled_total", labels | {"grpc_code": code})
        return found or 0.0

    def broken(amount: float = 1) -> None:
        raise RuntimeError("the metrics file is gone")

    method = MethodMetrics(path, "unary")
    method.end("OK", 0.001)
    with monkeypatch.context() as patched:
        patched.setattr(HANDLED_FAMILY.labels(*labels.values(), "NOT_FOUND"), "inc", broken)
        method.end("NOT_FOUND", 0.001)  # fails, and raises nothing
    method.end("OK", 0.001)
    assert "cannot count a call of test.Flaky/" in caplog.text
    assert handled("OK") == 2
    assert handled("NOT_FOUND") == 0
    assert REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) == 2


def test_half_sent_scrapes_hold_no_thread_and_are_dropped(stack: Server) -> None:
    """The metrics port (in the supervisor's process) answers a scrape while 200
    connections hold half a request each, with no thread per connection, and drops
    them after its read timeout; it listens on loopback unless told otherwise."""
    supervisor = psutil.Process(stack.process.pid)
    listening = {
        c.laddr for c in supervisor.net_connections("tcp") if c.status == psutil.CONN_LISTEN
    }
    assert ("127.0.0.1", stack.metrics_port) in listening
    threads = supervisor.num_threads()
    held = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", stack.metrics_port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the end
            held.append(sock)
        assert requests.get(stack.metrics_url, timeout=5).status_code == 200
        assert supervisor.num_threads() <= threads + 1
        began = time.monotonic()
        for sock in held:  # each closed by the server: end of stream
            sock.settimeout(max(0.1, began + READ_SECONDS + 5 - time.monotonic()))
            assert sock.recv(1) == b""
        assert time.monotonic() - began < READ_SECONDS + 5
        assert requests.get(stack.metrics_url, timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_the_metrics_page_in_process_and_its_stop(tmp_path: Path) -> None:
    """GET and HEAD /metrics, other methods refused, and stop() closes connections still
    sending (in the supervisor it runs at exit, which must not wait on clients)."""
    page = exposition.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{page.port}/metrics"
        got = requests.get(url, timeout=5)
        assert got.status_code == 200 and "grpc_server_started_total" in got.text
        assert got.headers["Content-Type"] == CONTENT_TYPE_LATEST
        head = requests.head(url, timeout=5)
        assert head.status_code == 200 and head.content == b""
        assert requests.post(url, timeout=5).status_code == 405
        held = socket.create_connection(("127.0.0.1", page.port), timeout=5)
        held.sendall(b"GET /met")
        time.sleep(0.1)
    finally:
        page.stop()
    assert held.recv(1) == b""
    held.close()


class Records(logging.Handler):
    """What an operator's own handler receives."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Writes(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def configured() -> Iterator[Writes]:
    """The log as a server configures it, writing to a stream here; pytest's own
    handlers are put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = Writes()
    logs.configure("text", "info", stream)
    try:
        yield stream
    finally:
        logs.stop()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_call_lines_are_records_an_operators_handler_sees(configured: Writes) -> None:
    calls = logging.getLogger("server.calls")
    operator = Records()
    calls.addHandler(operator)
    try:
        lines = logs.CallLines(calls, GET_CONTACT)
        lines.write(logging.INFO, "NOT_FOUND", 0.0015, "ip:127.0.0.1", "rid-1")
        lines.write(logging.WARNING, "INTERNAL", 0.002, "ip:::1", "rid-2", "RuntimeError: x y")
        logs.stop()
    finally:
        calls.removeHandler(operator)
    first, second = operator.records
    assert first.getMessage() == "call" and first.levelno == logging.INFO
    assert first.fields == {  # type: ignore[attr-defined]
        "method": GET_CONTACT,
        "code": "NOT_FOUND",
        "duration_ms": 1.5,
        "client": "ip:127.0.0.1",
        "request_id": "rid-1",
    }
    assert second.fields["cause"] == "RuntimeError: x y"  # type: ignore[attr-defined]
    written = configured.getvalue().splitlines()
    assert [line[25:] for line in written] == [
        f"INFO server.calls call method={GET_CONTACT} code=NOT_FOUND duration_ms=1.5 "
        "client=ip:127.0.0.1 request_id=rid-1",
        f"WARNING server.calls call method={GET_CONTACT} code=INTERNAL duration_ms=2.0 "
        'client=ip:::1 request_id=rid-2 cause="RuntimeError: x y"',
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", written[0][:24].strip())


def test_the_two_formats_of_a_line() -> None:
    record = logging.makeLogRecord(
        {
            "name": "server.calls",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "call",
            "created": 1738324800.1239,
            "msecs": 123.9,
            "fields": {"method": GET_CONTACT, "code": "OK", "duration_ms": 0.25},
            "request_id": "rid-3",
        }
    )
    text = logs.LineFormatter("text").format(record)
    assert text == (
        f"2025-01-31T12:00:00.123Z INFO server.calls call method={GET_CONTACT} code=OK "
        "duration_ms=0.25 request_id=rid-3"
    )
    assert json.loads(logs.LineFormatter("json").format(record)) == {
        "time": "2025-01-31T12:00:00.123Z",
        "level": "INFO",
        "logger": "server.calls",
        "message": "call",
        "method": GET_CONTACT,
        "code": "OK",
        "duration_ms": 0.25,
        "request_id": "rid-3",
    }
    # A value that is not one plain word is quoted, so that it cannot pass for a field.
    for value, written in (
        ("ValueError: code=OK", '"ValueError: code=OK"'),
        ("a=b", '"a=b"'),
        ("", '""'),
        ("é\u2028", '"é\\u2028"'),  # what is not printable is escaped (test_abuse.py)
    ):
        record.fields = {"cause": value}  # type: ignore[attr-defined]
        line = logs.LineFormatter("text").format(record)
        assert line.endswith(f" call cause={written} request_id=rid-3")


def test_a_warning_is_written_at_once_and_call_lines_in_batches(
    configured: Writes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "FLUSH_EVERY", 1.0)
    log = logging.getLogger("server.test")
    log.info("waits for a batch")
    time.sleep(0.3)
    assert configured.getvalue() == ""
    logs.stop()  # writes what waits: the batch goes out whole
    assert configured.getvalue().count("\n") == 1
    logs.configure("text", "info", configured)
    log.warning("the database is unreachable")
    wait_for(lambda: "unreachable" in configured.getvalue(), timeout=1, what="the warning")


def test_lines_are_written_whole_a_pipe_buffer_at_most_at_a_time(configured: Writes) -> None:
    """Workers share stderr: a write of at most PIPE_BUF bytes is never split by
    another writer's, so no line is cut by another process's."""
    log = logging.getLogger("server.test")
    for n in range(300):
        log.info("line %d %s", n, "é" * (n % 50))
    logs.stop()
    assert len(configured.writes) > 1
    for text in configured.writes:
        assert text.endswith("\n") and len(text.encode()) <= logs.PIPE_BUF
    assert [line.split(" ")[4] for line in configured.getvalue().splitlines()] == [
        str(n) for n in range(300)
    ]
