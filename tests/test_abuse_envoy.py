"""What one anonymous client can do to others through Envoy's port (issue 21:
forged internal headers, unfinished bodies, header bytes gRPC cannot carry,
calls held open), each attack bounded in count and time, run against the real
server behind the real Envoy while a victim client's calls are counted: none
may fail.

The attacks that must reach Envoy below any client library's checks speak
HTTP/1.1 over a socket or HTTP/2 through `h2`, as an attacker would.
"""

from __future__ import annotations

import base64
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import psutil
import pytest
import requests
from google.protobuf import any_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.auth.tokens import Tokens
from tests.conftest import body
from tests.harness import Envoy, Server, wait_for

GET_CONTACT = "/contacts.v1.ContactsService/GetContact"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Calls one server process takes at once (CONTACTS_MAX_CALLS), set low so that
# the attacks fill it with a few hundred streams.
MAX_CALLS = 150

# Loopback only: a proxy named in the environment must not catch any of this.
LOCAL = requests.Session()
LOCAL.trust_env = False


def loopback_channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])


def grpc_frame(message: Any) -> bytes:
    """A gRPC length-prefixed message."""
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


class H2:
    """A raw HTTP/2 connection to Envoy, sending what a client library would refuse
    to: bytes gRPC metadata cannot carry, more streams than Envoy allows, bodies
    never finished."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.headers: dict[int, dict[str, str]] = {}  # response headers and trailers
        self.ended: set[int] = set()  # streams answered whole or reset
        self.flush()

    def flush(self) -> None:
        if out := self.conn.data_to_send():
            self.sock.sendall(out)

    def open(self, headers: list[tuple[str, bytes | str]], end_stream: bool = False) -> int:
        stream = int(self.conn.get_next_available_stream_id())
        self.conn.send_headers(stream, headers, end_stream=end_stream)
        return stream

    def send(self, stream: int, data: bytes, end_stream: bool = False) -> None:
        self.conn.send_data(stream, data, end_stream=end_stream)

    def push(self, streams: list[int], budget: int, until: float) -> int:
        """Sends up to `budget` bytes on each stream, never ending it, as fast as
        flow control lets, until the monotonic time `until`; the bytes sent."""
        left = dict.fromkeys(streams, budget)
        sent = 0
        while time.monotonic() < until and any(left.values()):
            moved = False
            for stream, want in left.items():
                if not want or stream in self.ended:
                    continue
                try:
                    window = self.conn.local_flow_control_window(stream)
                    size = min(window, self.conn.max_outbound_frame_size, want)
                    if size > 0:
                        self.send(stream, b" " * size)
                        left[stream] -= size
                        sent += size
                        moved = True
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    left[stream] = 0
            try:
                self.flush()
            except OSError:
                return sent
            if not moved and not self.read(min(0.2, max(0.0, until - time.monotonic()))):
                return sent
        return sent

    def read(self, seconds: float) -> bool:
        """Handles what Envoy sends for `seconds` (or until it closes: False)."""
        self.sock.settimeout(max(seconds, 0.001))
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return True
        except OSError:
            return False
        if not data:
            return False
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                self.headers.setdefault(event.stream_id, {}).update(
                    (bytes(k).decode(), bytes(v).decode()) for k, v in event.headers or []
                )
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self.ended.add(event.stream_id)
        try:
            self.flush()
        except OSError:
            return False
        return True

    def wait(self, stream: int, seconds: float = 10) -> dict[str, str]:
        """The response headers (and trailers) of `stream`, once it has ended."""
        deadline = time.monotonic() + seconds
        while stream not in self.ended and time.monotonic() < deadline:
            if not self.read(0.2):
                break
        return self.headers.get(stream, {})

    def close(self) -> None:
        self.sock.close()


def grpc_request(path: str, *extra: tuple[str, bytes | str]) -> list[tuple[str, bytes | str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "contacts"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


@dataclass
class Victim:
    """Another client, with a token of its own (so not the attacker's rate-limit
    key), sending REST and native gRPC reads through Envoy one after another
    until stopped; every reply that is not the expected one is kept."""

    url: str
    port: int
    token: str
    contact_id: str
    failures: list[str] = field(default_factory=list)
    calls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        auth = {"Authorization": f"Bearer {self.token}"}
        with (
            requests.Session() as session,
            loopback_channel(self.port) as channel,
        ):
            session.trust_env = False
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            request = pb.GetContactRequest(contact_id=self.contact_id)
            metadata = (("authorization", f"Bearer {self.token}"),)
            while not self._stop.is_set():
                try:
                    url = f"{self.url}/contacts/{self.contact_id}"
                    r = session.get(url, headers=auth, timeout=10)
                    if r.status_code != 200:
                        self.failures.append(f"REST {r.status_code} {r.text[:80]}")
                except requests.RequestException as error:
                    self.failures.append(f"REST {type(error).__name__}")
                try:
                    stub.GetContact(request, metadata=metadata, timeout=10)
                except grpc.RpcError as error:
                    self.failures.append(f"gRPC {error.code().name} {error.details()}")  # type: ignore[attr-defined]
                self.calls += 2

    def __enter__(self) -> Victim:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for_calls(self, more: int) -> None:
        target = self.calls + more
        wait_for(lambda: self.calls >= target, 30, f"{more} more victim calls")


@dataclass
class Guarded:
    """A server process (its log in a file) with the real Envoy in front."""

    server: Server
    envoy: Envoy
    token: str
    contact_id: str

    def victim(self) -> Victim:
        return Victim(self.envoy.url, self.envoy.port, self.token, self.contact_id)

    def envoy_rss(self) -> int:
        return int(psutil.Process(self.envoy.process.pid).memory_info().rss)


@pytest.fixture(scope="module")
def guarded(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """The slow scenarios' stack: one server process (MAX_CALLS calls at once) and Envoy."""
    workdir = tmp_path_factory.mktemp("abuse")
    secret = secrets.token_urlsafe(48)
    env = {
        "CONTACTS_DATABASE_URL": database_url,
        "CONTACTS_JWT_SECRET": secret,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
        "CONTACTS_MAX_CALLS": str(MAX_CALLS),
        # One client may take them all: what Envoy bounds is tested alone.
        "CONTACTS_MAX_CALLS_PER_CLIENT": str(MAX_CALLS),
    }
    server = Server(env, workdir)
    envoy = Envoy(server.proxy_port, workdir)
    try:
        envoy.wait_upstream()
        created = LOCAL.post(
            f"{envoy.url}/contacts", json={"first_name": "V", "email": "v@x.io"}, timeout=10
        )
        assert created.status_code == 201, created.text
        yield Guarded(server, envoy, Tokens(secret).issue("victim"), body(created)["id"])
    finally:
        envoy.stop()
        server.stop()


def settled_size(path: Path) -> int:
    """A server's log's size once the lines of calls already answered are in it
    (it writes them within 50 ms)."""
    time.sleep(0.5)
    return path.stat().st_size


def log_after(path: Path, offset: int, settle: float = 1.0) -> str:
    """What a log gained past `offset`, once its writer had time to flush."""
    time.sleep(settle)
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


# Finding 7: client copies of x-envoy-* and x-contacts-* headers.

FORGED = [
    ("x-envoy-original-method", "FORGED"),
    ("x-envoy-original-path", "/FORGED"),
    ("x-envoy-internal", "true"),
    ("x-envoy-retry-on", "5xx"),
    ("x-contacts-client-address", "FORGED"),
    ("x-contacts-rest-path", "/FORGED"),
    ("x-contacts-fields", "FORGED"),
    ("x-contacts-anything", "FORGED"),
]


class StubUpstream:
    """An HTTP/2 server in the place of the contacts server: it answers Envoy's health
    checks SERVING and every other call with `reply` (a gRPC status and any
    metadata, trailers only), and keeps the headers of every call it received."""

    NOT_FOUND = (("grpc-status", "5"),)

    def __init__(self) -> None:
        self.reply: tuple[tuple[str, str], ...] = self.NOT_FOUND
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[dict[str, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def calls(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.received)

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
        config = h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
        h2c = h2.connection.H2Connection(config)
        h2c.initiate_connection()
        connection.sendall(h2c.data_to_send())
        requests_: dict[int, dict[str, str]] = {}
        with connection:
            while True:
                try:
                    data = connection.recv(1 << 16)
                except OSError:
                    return
                if not data:
                    return
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        requests_[event.stream_id] = {
                            bytes(k).decode(): bytes(v).decode(errors="replace")
                            for k, v in event.headers or []
                        }
                    elif isinstance(event, h2.events.DataReceived):
                        h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        request = requests_.pop(event.stream_id)
                        if request[":path"] == HEALTH_CHECK:
                            reply = health_pb2.HealthCheckResponse(
                                status=health_pb2.HealthCheckResponse.SERVING
                            )
                            h2c.send_headers(
                                event.stream_id,
                                [(":status", "200"), ("content-type", "application/grpc")],
                            )
                            h2c.send_data(event.stream_id, grpc_frame(reply))
                            h2c.send_headers(
                                event.stream_id, [("grpc-status", "0")], end_stream=True
                            )
                            continue
                        with self._lock:
                            self.received.append(request)
                        h2c.send_headers(
                            event.stream_id,
                            [
                                (":status", "200"),
                                ("content-type", "application/grpc"),
                                *self.reply,
                            ],
                            end_stream=True,
                        )
                try:
                    connection.sendall(h2c.data_to_send())
                except OSError:
                    return


@pytest.fixture(scope="module")
def stubbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StubUpstream, Envoy]]:
    upstream = StubUpstream()
    envoy = Envoy(upstream.port, tmp_path_factory.mktemp("envoy-stubbed"))
    try:
        wait_for(
            lambda: LOCAL.get(f"{envoy.url}/contacts/{uuid.uuid4()}", timeout=5).status_code == 404,
            what="envoy to reach the stub",
        )
        yield upstream, envoy
    finally:
        envoy.stop()
        upstream.close()


def test_client_copies_of_internal_headers_never_reach_the_server(
    stubbed: tuple[StubUpstream, Envoy],
) -> None:
    upstream, envoy = stubbed
    before = len(upstream.calls())
    path = f"/contacts/{uuid.uuid4()}"
    rest = LOCAL.get(envoy.url + path, headers=dict(FORGED), timeout=10)
    assert rest.status_code == 404
    with loopback_channel(envoy.port) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.DeleteContact(
                pb.DeleteContactRequest(contact_id=str(uuid.uuid4())), metadata=FORGED
            )
    calls = upstream.calls()[before:]
    assert {call[":path"] for call in calls} == {
        GET_CONTACT,
        "/contacts.v1.ContactsService/DeleteContact",
    }
    for call in calls:
        assert not [(k, v) for k, v in call.items() if "FORGED" in v], call
        # What Envoy sets itself, it sets from the request as sent.
        assert call["x-contacts-client-address"] == "127.0.0.1"
        assert call.get("x-contacts-rest-path", path) == path
        assert call.get("x-envoy-original-path", path) == path
        assert "x-envoy-internal" not in call
        assert "x-envoy-retry-on" not in call


def test_client_copies_of_internal_headers_never_reach_the_access_log(guarded: Guarded) -> None:
    envoy = guarded.envoy
    offset = envoy.log.stat().st_size
    rest = LOCAL.get(f"{envoy.url}/contacts/{guarded.contact_id}", headers=dict(FORGED), timeout=10)
    assert rest.status_code == 200
    docs = LOCAL.get(f"{envoy.url}/docs", headers=dict(FORGED), timeout=10)
    assert docs.status_code == 200
    with loopback_channel(envoy.port) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        _, call = stub.GetContact.with_call(
            pb.GetContactRequest(contact_id=guarded.contact_id), metadata=FORGED
        )
    ids = [rest.headers["x-request-id"], docs.headers["x-request-id"]]
    ids.append(dict(call.trailing_metadata())["x-request-id"])

    def access_lines() -> list[str] | None:
        text = log_after(envoy.log, offset, settle=0)
        found = [next((ln for ln in text.splitlines() if f"request_id={i}" in ln), "") for i in ids]
        return found if all(found) else None

    lines: list[str] = wait_for(access_lines, timeout=10, what="the access lines")
    assert "FORGED" not in "\n".join(lines)
    assert f"method=GET path=/contacts/{guarded.contact_id} status=200" in lines[0]
    assert "method=GET path=/docs status=200" in lines[1]
    assert f"method=POST path={GET_CONTACT} status=200" in lines[2]


# Finding 3: header values gRPC metadata cannot carry.


def test_a_header_value_that_is_not_printable_ascii_is_400_and_never_logged(
    guarded: Guarded,
) -> None:
    log = guarded.server.log
    offset = settled_size(log)
    sizes = {}
    for count in (1, 90):
        headers = b"".join(b"X-Note-%d: caf\xff\r\n" % n for n in range(count))
        with socket.create_connection(("127.0.0.1", guarded.envoy.port), timeout=10) as s:
            s.sendall(
                f"GET /contacts/{guarded.contact_id} HTTP/1.1\r\nHost: x\r\n".encode()
                + headers
                + b"Connection: close\r\n\r\n"
            )
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, content = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), reply[:300]
        assert content.startswith(b'{"detail":"x-note-'), content
        assert b"must be printable ASCII" in content
        sizes[count] = len(log_after(log, offset).encode())
        offset = settled_size(log)
    print(f"\nserver log bytes for 1 and 90 such headers: {sizes}")
    assert sizes == {1: 0, 90: 0}


@pytest.mark.parametrize(
    "name, value",
    [
        ("authorization", "Bearer caf\xe9"),
        ("idempotency-key", "k\x85y"),
        ("if-match", '"\xb2"'),
        ("x-note", "tab\there"),
        ("x-trace-bin", "not base64!"),  # was a 500 that the server never logged
    ],
)
def test_a_header_a_call_depends_on_is_refused_not_dropped(
    guarded: Guarded, name: str, value: str
) -> None:
    offset = settled_size(guarded.server.log)
    connection = H2(guarded.envoy.port)
    try:
        stream = connection.open(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/contacts"),
                (":authority", "contacts"),
                ("content-type", "application/json"),
                (name, value.encode("latin-1")),
            ]
        )
        connection.send(stream, b'{"first_name": "N", "email": "n@x.io"}', end_stream=True)
        connection.flush()
        reply = connection.wait(stream)
    finally:
        connection.close()
    assert reply.get(":status") == "400", reply
    assert "Traceback" not in log_after(guarded.server.log, offset)


def test_native_grpc_with_such_a_header_is_invalid_argument(guarded: Guarded) -> None:
    offset = settled_size(guarded.server.log)
    connection = H2(guarded.envoy.port)
    try:
        stream = connection.open(grpc_request(GET_CONTACT, ("x-note", b"caf\xff")))
        connection.send(
            stream, grpc_frame(pb.GetContactRequest(contact_id=guarded.contact_id)), True
        )
        connection.flush()
        reply = connection.wait(stream)
    finally:
        connection.close()
    assert reply.get("grpc-status") == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), reply
    assert "printable ASCII" in reply.get("grpc-message", "")
    assert log_after(guarded.server.log, offset) == ""


def test_printable_headers_and_utf8_bodies_still_pass(guarded: Guarded) -> None:
    r = LOCAL.post(
        f"{guarded.envoy.url}/contacts",
        json={"first_name": "Zoë ‍ی", "email": "z@x.io"},
        headers={
            "x-note": "a ~!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}",
            "x-trace-bin": "aGk",  # base64, unpadded as gRPC sends it
        },
        timeout=10,
    )
    assert r.status_code == 201, r.text


# Finding 8: unfinished bodies held in Envoy's memory.

HUGE = 7_000_000  # far over any valid body


def h1_unfinished(port: int, until: float, chunked: bool = False) -> int:
    """One HTTP/1.1 POST whose body never ends: bytes sent until `until` or refused."""
    head = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(
            f"POST /contacts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{head}\r\n\r\n".encode()
        )
        piece = b" " * 65536
        if chunked:
            piece = b"%x\r\n%s\r\n" % (len(piece), piece)
        try:
            while sent < HUGE - len(piece) and time.monotonic() < until:
                s.sendall(piece)
                sent += len(piece)
            time.sleep(max(0.0, until - time.monotonic()))
        except OSError:
            pass
    return sent


def test_unfinished_bodies_cannot_fill_envoys_memory(guarded: Guarded) -> None:
    port = guarded.envoy.port
    before = guarded.envoy_rss()
    with guarded.victim() as victim:
        victim.wait_for_calls(10)
        until = time.monotonic() + 4
        h2s = [H2(port) for _ in range(4)]
        try:
            streams = []
            for n, connection in enumerate(h2s):
                # Half announce their length, half do not; 100 streams a connection.
                length = [("content-length", str(HUGE))] if n % 2 else []
                streams.append(
                    [
                        connection.open(
                            [
                                (":method", "POST"),
                                (":scheme", "http"),
                                (":path", "/contacts"),
                                (":authority", "contacts"),
                                ("content-type", "application/json"),
                                *length,
                            ]
                        )
                        for _ in range(100)
                    ]
                )
                connection.flush()
            with ThreadPoolExecutor(max_workers=34) as pool:
                h1 = [pool.submit(h1_unfinished, port, until, n % 2 == 0) for n in range(30)]
                pushed = [
                    pool.submit(c.push, s, HUGE, until) for c, s in zip(h2s, streams, strict=True)
                ]
                sent = sum(f.result() for f in h1 + pushed)
            during = guarded.envoy_rss()
        finally:
            for connection in h2s:
                connection.close()
        victim.wait_for_calls(10)
    grown = (during - before) / 2**20
    print(
        f"\nunfinished bodies: {sent / 2**20:.0f} MiB sent; Envoy RSS {before / 2**20:.0f} -> "
        f"{during / 2**20:.0f} MiB; victim: {victim.calls} calls, {len(victim.failures)} failed"
    )
    assert victim.failures == []
    assert grown < 40, f"Envoy grew by {grown:.0f} MiB"


def test_the_largest_valid_body_is_taken(guarded: Guarded) -> None:
    # Every text field at its longest, each character escaped as a surrogate
    # pair (12 bytes), pretty-printed: the most a valid body can take.
    escaped = "\\ud835\\udc9c"
    fields = {"first_name": 100, "last_name": 100, "designation": 100, "phone": 50}
    members = [f'  "{name}": "{escaped * length}"' for name, length in fields.items()]
    members.append(f'  "email": "{escaped * 240}@x.io"')
    members += ['  "is_primary": false', '  "company_id": null', '  "update_mask": null']
    text = "{\n" + ",\n".join(members) + "\n}\n"
    assert len(text) > 7_000
    r = LOCAL.post(
        f"{guarded.envoy.url}/contacts",
        data=text.encode(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 201, r.text[:200]


# Finding 1: calls held open through Envoy.


def hold_calls(port: int, connections: int, per_connection: int) -> list[H2]:
    """gRPC calls that never send their message, all opened at once on each
    connection, before Envoy's limits are read."""
    held = []
    for _ in range(connections):
        connection = H2(port)
        for _ in range(per_connection):
            connection.open(grpc_request(GET_CONTACT))
        connection.flush()
        held.append(connection)
    return held


def keep_alive(held: list[H2], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for connection in held:
            connection.read(0.05)


def test_a_thousand_calls_held_on_one_connection_leave_others_served(guarded: Guarded) -> None:
    with guarded.victim() as victim:
        held = hold_calls(guarded.envoy.port, 1, 1000)
        try:
            keep_alive(held, 1)  # the calls reach the server
            victim.wait_for_calls(40)
        finally:
            for connection in held:
                connection.close()
    print(f"\n1,000 held calls: victim {victim.calls} calls, {len(victim.failures)} failed")
    assert victim.failures == []


def test_a_full_server_is_503_unavailable_never_429(guarded: Guarded) -> None:
    # More held calls, over several connections, than the server takes at
    # once: a victim refused meanwhile was not over any limit of its own.
    with guarded.victim() as victim:
        held = hold_calls(guarded.envoy.port, 4, 100)
        try:
            keep_alive(held, 1)
            victim.wait_for_calls(40)
        finally:
            for connection in held:
                connection.close()
    print(f"\nserver full: victim {victim.calls} calls, refused: {sorted(set(victim.failures))}")
    for failure in victim.failures:
        assert failure.startswith(("REST 503 ", "gRPC UNAVAILABLE ")), failure


# A google.rpc.Status with an ErrorInfo, as the server sends with a refusal.
RATE_LIMITED_DETAILS = base64.b64encode(
    status_pb2.Status(
        code=8,
        message="Rate limit exceeded",
        details=[any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo")],
    ).SerializeToString()
).decode()


@pytest.mark.parametrize(
    "reply, rest, grpc_code",
    [
        # gRPC core's own refusal of a call past a server's limit: no mark.
        (
            (("grpc-status", "8"), ("grpc-message", "Concurrent RPC limit exceeded!")),
            (503, {"detail": "Service unavailable"}),
            grpc.StatusCode.UNAVAILABLE,
        ),
        # The server's refusal of the caller's own excess: written for clients,
        # as its google.rpc details say (every error of the server's has some).
        (
            (
                ("grpc-status", "8"),
                ("grpc-message", "Rate limit exceeded"),
                ("grpc-status-details-bin", RATE_LIMITED_DETAILS),
            ),
            (429, {"detail": "Rate limit exceeded"}),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ],
)
def test_resource_exhausted_is_429_only_when_the_server_says_it_is_the_callers(
    stubbed: tuple[StubUpstream, Envoy],
    reply: tuple[tuple[str, str], ...],
    rest: tuple[int, dict[str, str]],
    grpc_code: grpc.StatusCode,
) -> None:
    upstream, envoy = stubbed
    upstream.reply = reply
    try:
        r = LOCAL.get(f"{envoy.url}/contacts/{uuid.uuid4()}", timeout=10)
        with loopback_channel(envoy.port) as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4())), timeout=10)
    finally:
        upstream.reply = upstream.NOT_FOUND
    assert (r.status_code, body(r)) == rest
    assert refused.value.code() == grpc_code  # type: ignore[attr-defined]


def attempts_of(upstream: StubUpstream, send: Callable[[], Any]) -> int:
    before = len(upstream.calls())
    send()
    time.sleep(0.5)
    return len(upstream.calls()) - before


def test_retries_cannot_multiply_a_failing_servers_load(
    stubbed: tuple[StubUpstream, Envoy],
) -> None:
    upstream, envoy = stubbed
    upstream.reply = (("grpc-status", "14"),)  # UNAVAILABLE
    try:
        reads = 200

        def burst() -> None:
            connections = [H2(envoy.port) for _ in range(2)]
            try:
                streams = [
                    (
                        c,
                        c.open(
                            [
                                (":method", "GET"),
                                (":scheme", "http"),
                                (":path", f"/contacts/{uuid.uuid4()}"),
                                (":authority", "contacts"),
                            ],
                            end_stream=True,
                        ),
                    )
                    for c in connections
                    for _ in range(reads // 2)
                ]
                for c in connections:
                    c.flush()
                for c, stream in streams:
                    c.wait(stream)
            finally:
                for c in connections:
                    c.close()

        count = attempts_of(upstream, burst)
    finally:
        upstream.reply = upstream.NOT_FOUND
    print(f"\n{reads} concurrent reads of a failing server: {count} attempts")
    # Without a budget each read is sent 4 times (the first try, 3 retries).
    assert count < 2 * reads
