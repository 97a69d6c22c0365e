"""Envoy sends a call to a server again only when doing it twice cannot do anything twice.

The upstream here is a fault: it answers Envoy's health checks, and drops the
connection (a TCP reset) after it has received any other request whole, as a
server killed mid-call would. Envoy is the real one with the real config.
"""

from __future__ import annotations

import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health_pb2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from tests.conftest import Rest, body
from tests.harness import Envoy, wait_for

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class DroppingUpstream:
    """An HTTP/2 server that answers health checks SERVING and resets the connection
    on any other request once it has it whole; `received` lists those requests."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[dict[str, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def paths(self) -> list[str]:
        with self._lock:
            return [request[":path"] for request in self.received]

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        connection.sendall(h2c.data_to_send())
        requests: dict[int, dict[str, str]] = {}
        with connection:
            while data := connection.recv(65536):
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = event.headers or []
                        requests[event.stream_id] = {
                            bytes(k).decode(): bytes(v).decode() for k, v in headers
                        }
                    elif isinstance(event, h2.events.StreamEnded):
                        request = requests.pop(event.stream_id)
                        if request[":path"] == HEALTH_CHECK:
                            self._serving(h2c, event.stream_id)
                            continue
                        with self._lock:
                            self.received.append(request)
                        # SO_LINGER 0: close() sends a reset, not a goodbye.
                        connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        return
                connection.sendall(h2c.data_to_send())

    @staticmethod
    def _serving(h2c: h2.connection.H2Connection, stream: int) -> None:
        reply = health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING
        ).SerializeToString()
        h2c.send_headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
        h2c.send_data(stream, b"\x00" + len(reply).to_bytes(4, "big") + reply)
        h2c.send_headers(stream, [("grpc-status", "0")], end_stream=True)


@pytest.fixture(scope="module")
def dropping(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DroppingUpstream, Envoy]]:
    upstream = DroppingUpstream()
    envoy = Envoy(upstream.port, tmp_path_factory.mktemp("envoy-dropping"))
    try:
        yield upstream, envoy
    finally:
        envoy.stop()
        upstream.close()


def attempts(dropping: tuple[DroppingUpstream, Envoy], send: Any) -> tuple[int, Any]:
    """How many times the upstream received the request `send()` makes, and its reply."""
    upstream, _ = dropping
    before = len(upstream.paths())
    reply = send()
    # Every attempt reached the upstream before Envoy answered; none comes later.
    return len(upstream.paths()) - before, reply


NEW = {"first_name": "R", "email": "r@x.io"}
RESENT = 4  # the first try and Envoy's 3 retries


def test_reads_are_sent_again(dropping: tuple[DroppingUpstream, Envoy]) -> None:
    rest = Rest(dropping[1].url)
    wait_for(lambda: rest.get(f"/contacts/{uuid.uuid4()}").status_code == 503, what="envoy")
    for path in (f"/contacts/{uuid.uuid4()}", f"/contacts?company_id={uuid.uuid4()}", "/companies"):
        count, reply = attempts(dropping, lambda p=path: rest.get(p))
        assert count == RESENT, path
        assert reply.status_code == 503
        assert body(reply) == {"detail": "Service unavailable"}


def test_creates_with_an_idempotency_key_are_sent_again(
    dropping: tuple[DroppingUpstream, Envoy],
) -> None:
    rest = Rest(dropping[1].url)
    for path, fields in (("/contacts", NEW), ("/companies", {"name": "C"})):
        key = {"Idempotency-Key": str(uuid.uuid4())}
        count, reply = attempts(
            dropping, lambda p=path, f=fields, k=key: rest.post(p, json=f, headers=k)
        )
        assert count == RESENT, path
        assert reply.status_code == 503


def test_other_writes_are_never_sent_twice(dropping: tuple[DroppingUpstream, Envoy]) -> None:
    rest = Rest(dropping[1].url)
    contact = f"/contacts/{uuid.uuid4()}"
    for send in (
        lambda: rest.post("/contacts", json=NEW),
        lambda: rest.post("/companies", json={"name": "C"}),
        lambda: rest.patch(contact, json={"designation": "X"}),
        lambda: rest.delete(contact),
    ):
        count, reply = attempts(dropping, send)
        assert count == 1
        assert reply.status_code == 503


def test_native_grpc_follows_the_same_rule(dropping: tuple[DroppingUpstream, Envoy]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{dropping[1].port}") as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)

        def call(method: Any, request: Any, **kwargs: Any) -> grpc.StatusCode:
            try:
                method(request, timeout=10, **kwargs)
            except grpc.RpcError as error:
                return error.code()  # type: ignore[attr-defined, no-any-return]
            return grpc.StatusCode.OK

        get = pb.GetContactRequest(contact_id=str(uuid.uuid4()))
        create = pb.CreateContactRequest(first_name="G", email="g@x.io")
        key = (("idempotency-key", str(uuid.uuid4())),)
        assert attempts(dropping, lambda: call(stub.GetContact, get)) == (
            RESENT,
            grpc.StatusCode.UNAVAILABLE,
        )
        assert attempts(dropping, lambda: call(stub.CreateContact, create, metadata=key))[0] == (
            RESENT
        )
        assert attempts(dropping, lambda: call(stub.CreateContact, create))[0] == 1
