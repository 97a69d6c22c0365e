"""Slow and stalled clients cannot freeze the service, on either door.

Tried as an attacker would: requests that send their headers and part of a
body (or nothing), then wait. Each costs the server a coroutine, not a thread,
so everyone else keeps being served; a read deadline ends them, and a bound on
calls in flight caps what they can hold.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.auth.tokens import Tokens
from server.data.store import Store
from server.rpc.app import App, create_app
from server.settings import Settings
from tests.conftest import Rest, bearer
from tests.harness import Envoy, wait_for

GET_CONTACT = "/contacts.v1.ContactsService/GetContact"
# A gRPC message prefix announcing 64 bytes, followed by 2 of them.
PARTIAL_MESSAGE = b"\x00\x00\x00\x00\x40" + b"\x0a\x24"
# Time a live call may take while stalls are held: far above its usual few
# milliseconds, far below the 10 s read deadline the stalls would need to end.
PATIENCE = 5.0


class StalledStreams:
    """HTTP/2 gRPC streams on one connection that send headers (and maybe part of a
    message), then nothing more."""

    def __init__(self, port: int, count: int, partial: bool, path: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.streams: list[int] = []
        for _ in range(count):
            stream = self.conn.get_next_available_stream_id()
            self.conn.send_headers(
                stream,
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", path or GET_CONTACT),
                    (":authority", f"127.0.0.1:{port}"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ],
            )
            if partial:
                self.conn.send_data(stream, PARTIAL_MESSAGE)
            self.streams.append(stream)
        self.sock.sendall(self.conn.data_to_send())

    def statuses(self, wait: float) -> dict[int, str]:
        """The grpc-status each stream ended with, of those that ended within `wait` s."""
        ended: dict[int, str] = {}
        deadline = time.monotonic() + wait
        while len(ended) < len(self.streams) and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            for event in self.conn.receive_data(data):
                headers = getattr(event, "headers", None)
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    fields = {bytes(k).decode(): bytes(v).decode() for k, v in headers or ()}
                    if "grpc-status" in fields:
                        ended[event.stream_id] = fields["grpc-status"]
                elif isinstance(event, h2.events.StreamReset):
                    ended.setdefault(event.stream_id, "reset")
            self.sock.sendall(self.conn.data_to_send())
        return ended

    def close(self) -> None:
        self.sock.close()


class SlowBodies:
    """REST creates that announce a 400-byte body, send 16 bytes of it, then wait."""

    def __init__(self, port: int, count: int) -> None:
        head = (
            b"POST /contacts HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 400\r\n\r\n"
        )
        self.socks = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(head + b'{"first_name": "')
            self.socks.append(sock)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def answered_in_time(calls: dict[str, Callable[[], Any]], rounds: int = 5) -> dict[str, int]:
    """Runs every call `rounds` times from 8 threads; the count of each that succeeded
    within PATIENCE seconds."""
    succeeded = dict.fromkeys(calls, 0)

    def attempt(name: str) -> None:
        started = time.monotonic()
        calls[name]()
        if time.monotonic() - started < PATIENCE:
            succeeded[name] += 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(attempt, name) for name in calls for _ in range(rounds)]:
            future.result()
    return succeeded


@pytest.fixture
def live_calls(
    rest: Rest, channel: grpc.Channel, company: dict[str, Any], user: tuple[str, str]
) -> dict[str, Callable[[], Any]]:
    stub = contacts_pb2_grpc.ContactsServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    created = rest.post("/contacts", json={"first_name": "Live", "email": "live@x.io"}).json()

    def rest_get() -> None:
        assert rest.get(f"/contacts/{created['id']}").status_code == 200

    def rest_create() -> None:
        r = rest.post("/contacts", json={"first_name": "L", "email": "l@x.io"})
        assert r.status_code == 201

    def grpc_get() -> None:
        stub.GetContact(pb.GetContactRequest(contact_id=created["id"]), timeout=PATIENCE)

    def grpc_create() -> None:
        request = pb.CreateContactRequest(first_name="G", email="g@x.io")
        stub.CreateContact(request, timeout=PATIENCE)

    def health_check() -> None:
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=PATIENCE)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    return {
        "REST GET": rest_get,
        "REST create": rest_create,
        "gRPC GetContact": grpc_get,
        "gRPC CreateContact": grpc_create,
        "health": health_check,
    }


def test_stalled_requests_on_both_doors_freeze_nobody(
    app: App, envoy: Envoy, live_calls: dict[str, Callable[[], Any]]
) -> None:
    stalls: list[StalledStreams | SlowBodies] = [
        StalledStreams(app.port, 16, partial=False),
        StalledStreams(app.port, 16, partial=True),
        StalledStreams(envoy.port, 16, partial=False),
        SlowBodies(envoy.port, 16),
    ]
    try:
        succeeded = answered_in_time(live_calls)
    finally:
        for stall in stalls:
            stall.close()
    assert succeeded == dict.fromkeys(live_calls, 5)


@pytest.fixture
def strict(settings: Settings, store: Store) -> Iterator[App]:
    """A server with a 1 s read deadline and room for 16 calls in flight, 8 a client."""
    running = create_app(
        dataclasses.replace(settings, read_timeout=1.0, max_calls=16, max_calls_per_client=8),
        store,
        host="127.0.0.1",
    )
    running.start()
    yield running
    running.stop(grace=0)


def test_a_stalled_call_ends_at_the_read_deadline(strict: App) -> None:
    stalled = StalledStreams(strict.port, 8, partial=True)
    try:
        statuses = stalled.statuses(wait=10)
    finally:
        stalled.close()
    code = str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    assert statuses == dict.fromkeys(stalled.streams, code)


def test_calls_in_flight_are_bounded_per_client(strict: App, tokens: Tokens) -> None:
    """One client holding calls open gets its share of the slots and no more (its next
    calls are refused at once, its own doing: RESOURCE_EXHAUSTED); another client is
    served all the while."""
    stalled = StalledStreams(strict.port, 24, partial=False)
    try:
        statuses = stalled.statuses(wait=0.5)  # before the read deadline frees any
        exhausted = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert list(statuses.values()) == [exhausted] * 16
        with grpc.insecure_channel(f"127.0.0.1:{strict.port}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            other = bearer(tokens.issue(f"other-{uuid.uuid4().hex[:6]}"))
            for _ in range(20):
                with pytest.raises(grpc.RpcError) as answered:
                    stub.GetContact(
                        pb.GetContactRequest(contact_id=str(uuid.uuid4())),
                        metadata=other,
                        timeout=PATIENCE,
                    )
                assert answered.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    finally:
        stalled.close()
    # Once they are gone (the server learns it asynchronously), it serves that client again.
    with grpc.insecure_channel(f"127.0.0.1:{strict.port}") as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)

        def not_found() -> bool:
            try:
                stub.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4())), timeout=1)
            except grpc.RpcError as error:
                return error.code() == grpc.StatusCode.NOT_FOUND
            return False

        wait_for(not_found, timeout=PATIENCE, what="the server to serve again")


def test_held_calls_through_envoy_leave_other_rest_clients_served(
    strict: App, tokens: Tokens, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Calls held open on Envoy's door (gRPC core's own limit once answered every REST
    client there with 429): the holder's further calls are its own 429, and a client
    with a token of its own is served."""
    envoy = Envoy(strict.proxy_port, tmp_path_factory.mktemp("envoy-strict"))
    try:
        envoy.wait_upstream()
        stalled = StalledStreams(strict.proxy_port, 16, partial=False)
        rest = Rest(envoy.url)

        def refused() -> list[Any]:  # (a list: a 4xx Response is falsy)
            r = rest.get(f"/contacts/{uuid.uuid4()}")
            return [r] if r.status_code == 429 else []

        try:  # the server takes the stalled calls in as it reads them
            [r] = wait_for(refused, what="the holder's share to be taken")
            token = tokens.issue(f"other-{uuid.uuid4().hex[:6]}")
            others = [rest.get(f"/contacts/{uuid.uuid4()}", token=token) for _ in range(20)]
        finally:
            stalled.close()
        assert r.json() == {"detail": "Too many calls in flight from this client"}
        assert not [h for h in r.headers if h.lower().startswith(("grpc-", "x-contacts"))]
        assert [o.status_code for o in others] == [404] * 20
    finally:
        envoy.stop()


REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def test_idle_reflection_streams_of_one_client_lock_no_one_out(app: App, tokens: Tokens) -> None:
    """1,000 reflection streams that never send a request, over 8 connections to the
    public gRPC port, once refused every other client ("Concurrent RPC limit
    exceeded!") for as long as they were held: streams had no timeout."""
    stalls = [StalledStreams(app.port, 125, partial=False, path=REFLECTION) for _ in range(8)]
    try:
        ended = [code for stall in stalls for code in stall.statuses(wait=0.5).values()]
        exhausted = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        # Past its share, the holder's streams are refused at once, all of them.
        assert len(ended) >= 1000 - app.settings.max_calls_per_client
        assert set(ended) == {exhausted}
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            other = bearer(tokens.issue(f"other-{uuid.uuid4().hex[:6]}"))
            failed = 0
            for _ in range(100):
                try:
                    stub.GetContact(
                        pb.GetContactRequest(contact_id=str(uuid.uuid4())),
                        metadata=other,
                        timeout=PATIENCE,
                    )
                except grpc.RpcError as error:
                    failed += error.code() != grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        # Envoy's health checks come to its own door, whose slots are its own.
        with grpc.insecure_channel(f"127.0.0.1:{app.proxy_port}") as door:
            health = health_pb2_grpc.HealthStub(door)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=PATIENCE).status == 1
        assert failed == 0
    finally:
        for stall in stalls:
            stall.close()


def test_an_idle_stream_is_ended(settings: Settings, store: Store) -> None:
    """A stream that sends nothing for its idle time ends (DEADLINE_EXCEEDED), freeing
    its slot."""
    running = create_app(dataclasses.replace(settings, stream_idle=0.5), store, host="127.0.0.1")
    running.start()
    try:
        stalled = StalledStreams(running.port, 3, partial=False, path=REFLECTION)
        try:
            statuses = stalled.statuses(wait=5)
        finally:
            stalled.close()
        code = str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
        assert statuses == dict.fromkeys(stalled.streams, code)
    finally:
        running.stop(grace=0)
