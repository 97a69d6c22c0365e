"""The relay: publishes the outbox's events (server/data/outbox.py) to NATS JetStream,
in order, and marks them sent. Started by each worker when CONTACTS_NATS_URL is
set; only the one that holds the database's leadership (leader.py) relays.

It runs on a thread of its own with an event loop of its own: the API never
waits for NATS, and NATS never waits for a call. Each event is published
with its event_id as Nats-Msg-Id and its acknowledgement awaited before the
next goes (JetStream keeps them in that order); the batch's rows are then
marked sent, and sent rows are purged. Should a mark be lost (a crash, the
database away, between the ack and the mark), the event goes again with the
same Nats-Msg-Id and JetStream drops the repeat within its duplicate window.

While NATS cannot be reached, events wait in the outbox and the relay tries
again every RETRY_SECONDS. An event that cannot be published however often it
is tried (its row does not decode, NATS refuses it as such) is a poisoned
row: after MAX_ATTEMPTS it is logged, counted and skipped, and the rest go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType

from contacts.v1 import contacts_pb2 as pb
from server.data.outbox import CREATED, DELETED, UPDATED, Outbox, Pending, contact_row
from server.data.store import Store
from server.errors import StoreUnavailable
from server.events.leader import Leadership, leadership_for
from server.observability import metrics
from server.rpc.services import contact_message
from server.settings import Settings

log = logging.getLogger(__name__)

STREAM = "CONTACTS"
SUBJECTS = {
    CREATED: "contacts.v1.contact.created",
    UPDATED: "contacts.v1.contact.updated",
    DELETED: "contacts.v1.contact.deleted",
}
MSG_ID_HEADER = "Nats-Msg-Id"
# Repeats within this many seconds are dropped by JetStream: far longer than a
# worker takes to be replaced and its successor to resend what was not marked.
DUPLICATE_WINDOW_SECONDS = 300.0
BATCH = 100
POLL_SECONDS = 0.1  # an idle relay looks for new events this often
LEADER_RETRY_SECONDS = 2.0  # a relay that is not the leader asks again this often
RETRY_SECONDS = 0.5  # after NATS or the database failed
SAMPLE_SECONDS = 1.0  # the outbox metrics, and the purge of sent rows
PUBLISH_TIMEOUT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 2.0
MAX_ATTEMPTS = 3

# NATS could not take the event now: try again later, the event as it was.
_OUTAGE = (
    nats.errors.Error,  # closed connection, timeout, no responders (no JetStream) ...
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    OSError,
    asyncio.TimeoutError,
)


class Poisoned(Exception):
    """This event, as it is, cannot be published."""


class Relay:
    def __init__(self, settings: Settings, outbox: Outbox, leadership: Leadership) -> None:
        self._url = settings.nats_url
        self._max_age = float(settings.events_max_age)
        self._outbox = outbox
        self._leadership = leadership
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._leader = False
        self._sampled = 0.0
        self._outage = False  # said in the log once per outage

    @classmethod
    def for_store(cls, settings: Settings, store: Store) -> Relay:
        outbox = Outbox(store.db, store.connection)
        return cls(settings, outbox, leadership_for(settings.database_url))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="events-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, seconds))

    async def _run(self) -> None:
        connection: Any = None
        try:
            while not self._stopping.is_set():
                if not await self._lead():
                    await self._sleep(LEADER_RETRY_SECONDS)
                    continue
                try:
                    self._sample()
                    if connection is None:
                        connection = await self._connect()
                    sent = await self._relay(connection.jetstream())
                    if self._outage:
                        log.info("NATS answers again: relaying change events")
                        self._outage = False
                    if sent < BATCH:
                        await self._sleep(POLL_SECONDS)
                except _OUTAGE as error:
                    if not self._outage:
                        log.warning(
                            "NATS at %s cannot take events (%s): they wait in the outbox",
                            self._url,
                            type(error).__name__,
                        )
                        self._outage = True
                    await _close(connection)
                    connection = None
                    await self._sleep(RETRY_SECONDS)
                except StoreUnavailable:
                    await self._sleep(RETRY_SECONDS)
        finally:
            await _close(connection)
            self._leadership.release()

    async def _lead(self) -> bool:
        """Whether this process is the database's relay (taking the part if it is free)."""
        try:
            if self._leader and self._leadership.holding():
                return True
            if self._leader:
                log.warning("lost the events relay's lock; another process may take over")
            self._leader = self._leadership.try_take()
        except Exception as error:  # the database away: nobody relays meanwhile
            log.warning("cannot take the events relay's lock: %s", error)
            self._leader = False
        if self._leader:
            log.info("this process relays change events (%s)", type(self._leadership).__name__)
        else:
            metrics.OUTBOX_DEPTH.set(0)
            metrics.OUTBOX_OLDEST_SECONDS.set(0)
        return self._leader

    async def _connect(self) -> Any:
        async def quiet(error: Exception) -> None:
            log.debug("nats: %s", error)

        # nats-py retries a first connection on its own unless told (0 means
        # forever): the relay's loop does the retrying, so one try, bounded.
        connection = await asyncio.wait_for(
            nats.connect(
                servers=[self._url],
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
            ),
            2 * CONNECT_TIMEOUT_SECONDS,
        )
        try:
            await _ensure_stream(connection.jetstream(), self._max_age)
        except BaseException:
            await _close(connection)
            raise
        return connection

    def _sample(self) -> None:
        now = time.monotonic()
        if now - self._sampled < SAMPLE_SECONDS:
            return
        self._sampled = now
        self._outbox.purge()
        depth, oldest = self._outbox.backlog()
        metrics.OUTBOX_DEPTH.set(depth)
        metrics.OUTBOX_OLDEST_SECONDS.set(oldest)

    async def _relay(self, js: Any) -> int:
        """Publishes a batch in order; the number published."""
        events = self._outbox.pending(BATCH)
        sent: list[int] = []
        try:
            for event in events:
                try:
                    await _publish(js, event)
                except Poisoned as error:
                    give_up = event.attempts + 1 >= MAX_ATTEMPTS
                    self._outbox.failed(event, give_up)
                    if not give_up:
                        break  # tried again after the pause, before anything after it
                    log.error(
                        "change event %s (outbox row %d) skipped after %d attempts: %s",
                        event.event_id,
                        event.id,
                        MAX_ATTEMPTS,
                        error,
                    )
                    metrics.EVENTS_POISONED.inc()
                    continue
                sent.append(event.id)
                metrics.EVENTS_PUBLISHED.inc()
        finally:
            self._outbox.mark_sent(sent)
        if len(sent) < len(events):
            await self._sleep(RETRY_SECONDS)
        return len(sent)


def event_message(event: Pending) -> tuple[str, bytes]:
    """The subject and payload of an outbox row; Poisoned if the row makes neither."""
    try:
        subject = SUBJECTS[event.type]
        message = pb.ContactEvent(
            event_id=event.event_id,
            type=event.type,  # type: ignore[arg-type]
            contact=contact_message(contact_row(event.contact)),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise Poisoned(f"the row does not decode: {type(error).__name__}: {error}") from error
    message.occurred_at.seconds = event.occurred_at
    return subject, message.SerializeToString()


async def _publish(js: Any, event: Pending) -> None:
    subject, payload = event_message(event)
    try:
        await js.publish(
            subject,
            payload,
            timeout=PUBLISH_TIMEOUT_SECONDS,
            stream=STREAM,
            headers={MSG_ID_HEADER: event.event_id},
        )
    except (nats.errors.MaxPayloadError, nats.js.errors.BadRequestError) as error:
        raise Poisoned(f"NATS refuses it: {error}") from error


async def _ensure_stream(js: Any, max_age: float) -> None:
    """The CONTACTS stream, made if missing (an existing one is left as it is)."""
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            name=STREAM,
            subjects=list(SUBJECTS.values()),
            storage=StorageType.FILE,
            max_age=max_age,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
        log.info("made the JetStream stream %s", STREAM)


async def _close(connection: Any) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 1.0)
