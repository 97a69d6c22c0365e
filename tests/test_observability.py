"""What an operator sees: request ids end to end, one log line per call (text or JSON),
Prometheus metrics that count every call of every worker once, and no tracebacks a
client can cause."""

from __future__ import annotations

import asyncio
import json
import logging
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
import pytest
import requests
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.data.offload import Offload
from server.data.store import Store
from server.observability.metrics import MethodMetrics, Tally
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
    envoy = Envoy(server.port, workdir)
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
    envoy = Envoy(server.port, tmp_path, log_format="json")
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


def test_a_flush_that_fails_half_way_never_counts_a_call_twice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The figures go to prometheus_client in batches (server/metrics.py): one that
    fails part way loses what was left, and the next batch adds only its own."""
    name = f"Method{uuid.uuid4().hex[:8]}"
    path = f"/test.Flaky/{name}"
    labels = {"grpc_type": "unary", "grpc_service": "test.Flaky", "grpc_method": name}

    def handled(code: str) -> float:
        found = REGISTRY.get_sample_value("grpc_server_handled_total", labels | {"grpc_code": code})
        return found or 0.0

    tally = Tally()
    method = MethodMetrics(path, "unary", tally)
    real = method._handled_child

    def broken(code: str) -> Any:
        if code == "NOT_FOUND":
            raise RuntimeError("the metrics file is gone")
        return real(code)

    async def calls() -> None:  # on a loop, as in the server: flushed in batches
        method.end("OK", 0.001)
        method.end("NOT_FOUND", 0.001)
        monkeypatch.setattr(method, "_handled_child", broken)
        tally.flush()  # adds OK, then fails
        monkeypatch.setattr(method, "_handled_child", real)
        method.end("OK", 0.001)
        tally.flush()

    asyncio.run(calls())
    assert "cannot flush the metrics" in caplog.text
    assert handled("OK") == 2
