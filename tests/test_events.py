"""Change events: every committed change of a contact reaches NATS JetStream through the
outbox, in order, and none is lost when NATS is down, when a worker is SIGKILLed
between commit and publish, when a mark is lost, or when a row is poisoned.

A private nats-server (free port, its own store directory) that the tests stop
and start; a real server (`serve`) relays to it. Events are read back from
the stream and decoded with the generated ContactEvent.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc as pb_grpc
from server.auth.tokens import Tokens
from server.data import outbox
from server.data.database import open_database
from server.data.models import ContactEvent
from server.data.queries import ContactRow
from server.events.relay import MAX_ATTEMPTS, MSG_ID_HEADER, STREAM, SUBJECTS
from tests import harness
from tests.conftest import BACKEND, POSTGRES_DSN, bearer

NATS_SERVER = "/usr/sbin/nats-server"
CREATED = pb.ContactEvent.TYPE_CREATED
UPDATED = pb.ContactEvent.TYPE_UPDATED
DELETED = pb.ContactEvent.TYPE_DELETED


class Nats:
    """A nats-server of the tests' own, with JetStream, that they may stop and start."""

    def __init__(self, workdir: Path) -> None:
        self.port = harness.free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store = workdir / "nats"
        self.log = workdir / "nats.log"
        self.process: Any = None

    def start(self) -> None:
        command = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        self.process = harness.spawn([*command, "-sd", str(self.store)], self.log)
        harness.wait_for(lambda: asyncio.run(_answers(self.url)), 15, "nats", self.process)

    def stop(self) -> None:
        harness.stop(self.process)


async def _quiet(error: Exception) -> None:
    """nats-py's own error callback would log each refused connection with a traceback."""


async def _connect(url: str, timeout: float) -> nats.NATS:
    """One connection that gives up instead of reconnecting: a test asks, once."""
    return await nats.connect(
        servers=[url],
        connect_timeout=timeout,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        error_cb=_quiet,
    )


async def _answers(url: str) -> bool:
    connection = await _connect(url, 1)
    await connection.close()
    return True


async def _stream(url: str) -> list[tuple[str, str, pb.ContactEvent]]:
    """Every message of the stream: (subject, Nats-Msg-Id, the decoded event)."""
    connection = await _connect(url, 2)
    try:
        js = connection.jetstream()
        try:
            state = (await js.stream_info(STREAM)).state
        except nats.js.errors.NotFoundError:
            return []
        found = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            message = await js.get_msg(STREAM, seq)
            event = pb.ContactEvent.FromString(message.data or b"")
            found.append((message.subject or "", (message.headers or {})[MSG_ID_HEADER], event))
        return found
    finally:
        await connection.close()


def stream(nats_server: Nats) -> list[tuple[str, str, pb.ContactEvent]]:
    return asyncio.run(_stream(nats_server.url))


def events_of(nats_server: Nats, ids: set[str]) -> list[tuple[str, str, pb.ContactEvent]]:
    return [found for found in stream(nats_server) if found[2].contact.id in ids]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("events")


@pytest.fixture(scope="module")
def nats_server(workdir: Path) -> Iterator[Nats]:
    if not os.access(NATS_SERVER, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{NATS_SERVER} is missing")
        pytest.skip(f"{NATS_SERVER} is missing")
    server = Nats(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def events_url(workdir: Path) -> Iterator[str]:
    with harness.empty_database(workdir, BACKEND, POSTGRES_DSN) as url:
        yield url


SECRET = secrets.token_urlsafe(48)


@pytest.fixture(scope="module")
def server(workdir: Path, nats_server: Nats, events_url: str) -> Iterator[harness.Server]:
    env = {
        "CONTACTS_DATABASE_URL": events_url,
        "CONTACTS_JWT_SECRET": SECRET,
        "CONTACTS_NATS_URL": nats_server.url,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
    }
    running = harness.Server(env, workdir)
    yield running
    running.stop()


class Client:
    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.contacts = pb_grpc.ContactsServiceStub(self.channel)
        self.companies = pb_grpc.CompaniesServiceStub(self.channel)
        self.md = bearer(Tokens(SECRET).issue("owner"))

    def company(self) -> str:
        return str(
            self.companies.CreateCompany(pb.CreateCompanyRequest(name="Co"), metadata=self.md).id
        )

    def create(self, company: str, name: str, primary: bool = False) -> pb.Contact:
        request = pb.CreateContactRequest(
            company_id=company, first_name=name, email=f"{name}@example.com", is_primary=primary
        )
        return self.contacts.CreateContact(request, metadata=self.md, timeout=10)


@pytest.fixture(scope="module")
def client(server: harness.Server) -> Iterator[Client]:
    made = Client(server.port)
    yield made
    made.channel.close()


def test_the_outbox_speaks_the_protos_types() -> None:
    assert (outbox.CREATED, outbox.UPDATED, outbox.DELETED) == (CREATED, UPDATED, DELETED)


def test_each_change_is_an_event_in_order(client: Client, nats_server: Nats) -> None:
    a, b = client.company(), client.company()
    first = client.create(a, "first", primary=True)
    second = client.create(a, "second", primary=True)  # demotes the first
    update = pb.UpdateContactRequest(contact_id=second.id, last_name="Renamed")
    client.contacts.UpdateContact(update, metadata=client.md)
    move = pb.UpdateContactRequest(contact_id=first.id, company_id=b)
    client.contacts.UpdateContact(move, metadata=client.md)
    client.contacts.DeleteContact(pb.DeleteContactRequest(contact_id=second.id), metadata=client.md)
    ids = {first.id, second.id}

    def six() -> list[Any] | None:
        got = events_of(nats_server, ids)
        return got if len(got) >= 6 else None

    found = harness.wait_for(six, 10, "6 events")
    said = [(e.type, e.contact.id) for _, _, e in found]
    assert said == [
        (CREATED, first.id),
        (UPDATED, first.id),  # demoted by the second's creation
        (CREATED, second.id),
        (UPDATED, second.id),
        (UPDATED, first.id),  # moved
        (DELETED, second.id),
    ]
    events = [e for _, _, e in found]
    assert events[0].contact.is_primary and not events[1].contact.is_primary
    assert events[3].contact.last_name == "Renamed"
    assert events[4].contact.company_id == b
    assert events[5].contact.last_name == "Renamed"  # the state before the delete
    for subject, msg_id, event in found:
        assert subject == SUBJECTS[event.type]
        assert msg_id == event.event_id and uuid.UUID(event.event_id)
        assert abs(event.occurred_at.seconds - time.time()) < 60
    assert len({e.event_id for e in events}) == 6


class Load:
    """Contacts created one after another on a thread, each answer timed."""

    def __init__(self, client: Client, company: str) -> None:
        self.client, self.company = client, company
        self.made: list[str] = []
        self.slowest = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.made.append(self.client.create(self.company, f"load{n}").id)
                self.slowest = max(self.slowest, time.monotonic() - started)
            except grpc.RpcError as error:  # only while the worker is being replaced
                self.failures.append(str(error.code()))  # type: ignore[attr-defined]
                time.sleep(0.05)
            n += 1
            time.sleep(0.01)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        return self.made

    def wait(self, more: int) -> None:
        target = len(self.made) + more
        harness.wait_for(lambda: len(self.made) >= target, 30, f"{more} more creates")


def metric(server: harness.Server, name: str) -> float:
    return server.metrics().get((name, ()), 0.0)


def test_nats_down_and_a_killed_worker_lose_no_event(
    client: Client, server: harness.Server, nats_server: Nats
) -> None:
    load = Load(client, client.company())
    try:
        load.wait(10)
        nats_server.stop()
        load.wait(30)
        assert load.slowest < 1.0, "a write waited for NATS"
        harness.wait_for(
            lambda: metric(server, "contacts_events_outbox_depth") >= 10, 10, "the outbox to fill"
        )
        assert metric(server, "contacts_events_outbox_oldest_seconds") >= 0
        # Committed, not published: the worker dies with its events in the outbox.
        (worker,) = server.workers()
        os.kill(worker.pid, signal.SIGKILL)
        harness.wait_for(
            lambda: [w.pid for w in server.workers()] not in ([], [worker.pid]), 30, "a new worker"
        )
        load.wait(20)
        nats_server.start()
        load.wait(10)
    finally:
        made = load.stop()
    ids = set(made)

    def all_out() -> list[Any] | None:
        got = [f for f in events_of(nats_server, ids) if f[2].type == CREATED]
        return got if len(got) >= len(ids) else None

    found = harness.wait_for(all_out, 30, "every event")
    assert [e.contact.id for _, _, e in found] == made  # once each, in commit order
    assert len({msg_id for _, msg_id, _ in found}) == len(made)
    harness.wait_for(
        lambda: metric(server, "contacts_events_outbox_depth") == 0, 10, "the outbox to drain"
    )


def _insert(url: str, **row: Any) -> None:
    db = open_database(url, max_connections=1)
    with db.connection_context(), db.bind_ctx([ContactEvent]):
        ContactEvent.insert(occurred_at=time.strftime("%Y-%m-%d %H:%M:%S"), **row).execute()
    db.close()


def test_a_repeat_after_a_lost_mark_is_dropped(
    client: Client, nats_server: Nats, events_url: str
) -> None:
    contact = client.create(client.company(), "marked")
    found = harness.wait_for(lambda: events_of(nats_server, {contact.id}), 10, "the event")
    before = len(stream(nats_server))
    # The row as it was before its mark: published, acknowledged, and still unsent.
    row = ContactRow(
        contact.id,
        contact.company_id,
        "marked",
        None,
        contact.email,
        None,
        None,
        False,
        contact.created_at.seconds,
        contact.updated_at.seconds,
        1,
    )
    _insert(
        events_url,
        event_id=uuid.UUID(found[0][1]),
        type=outbox.CREATED,
        contact=outbox.contact_json(row),
    )
    after = client.create(client.company(), "after")  # goes out after the repeat
    harness.wait_for(lambda: events_of(nats_server, {after.id}), 10, "the next event")
    assert len(stream(nats_server)) == before + 1  # the repeat was dropped
    assert len(events_of(nats_server, {contact.id})) == 1


def test_a_poisoned_row_is_skipped_and_counted(
    client: Client, server: harness.Server, nats_server: Nats, events_url: str
) -> None:
    counted = metric(server, "contacts_events_poisoned_total")
    load = Load(client, client.company())
    try:
        load.wait(5)
        _insert(events_url, event_id=uuid.uuid4(), type=outbox.CREATED, contact="{not json")
        load.wait(20)
    finally:
        made = load.stop()

    def all_out() -> list[Any] | None:
        got = events_of(nats_server, set(made))
        return got if len(got) >= len(made) else None

    found = harness.wait_for(all_out, 30, "every event")
    assert [e.contact.id for _, _, e in found] == made
    harness.wait_for(
        lambda: metric(server, "contacts_events_poisoned_total") == counted + 1, 10, "the count"
    )
    assert f"skipped after {MAX_ATTEMPTS} attempts" in server.log.read_text()


def test_two_servers_on_one_database_relay_once_in_order(
    client: Client, server: harness.Server, nats_server: Nats, events_url: str, workdir: Path
) -> None:
    """A second server (another host, say) on the same database: one relay at a time
    (PostgreSQL's advisory lock, SQLite's flock), so events still go out once, in order,
    whichever server took the write."""
    env = {
        "CONTACTS_DATABASE_URL": events_url,
        "CONTACTS_JWT_SECRET": SECRET,
        "CONTACTS_NATS_URL": nats_server.url,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
    }
    other = harness.Server(env, workdir)
    second = Client(other.port)
    try:
        company = client.company()
        made = []
        for n in range(40):
            made.append((client if n % 2 else second).create(company, f"both{n}").id)
        # The relay that led goes; the other takes over within its retry time.
        server_log = server.log.read_text()
        leader_was_other = server_log.count("relays change events") == 0
        (other if leader_was_other else server).stop()
        survivor = server if leader_was_other else other
        alive = client if survivor is server else second
        for n in range(10):
            made.append(alive.create(company, f"after{n}").id)

        def all_out() -> list[Any] | None:
            got = events_of(nats_server, set(made))
            return got if len(got) >= len(made) else None

        found = harness.wait_for(all_out, 20, "every event")
        assert [e.contact.id for _, _, e in found] == made
    finally:
        second.channel.close()
        other.stop()
    leaders = [s for s in (server, other) if "relays change events" in s.log.read_text()]
    assert leaders, "nobody relayed"
