"""The outbox: change events written in the change's own transaction (models.ContactEvent),
and what the relay (server/events/relay.py) reads and marks of them.

A change and its event commit together or not at all, so an event is never
lost to a crash or to NATS being away, and never sent for a change that was
rolled back. The store writes here; it knows nothing of NATS or protobuf:
a row holds the contact as JSON (queries.ContactRow's fields), which the
relay turns into a contacts.v1.ContactEvent.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, NamedTuple

import peewee

from server.data.models import ContactEvent, epoch_seconds, new_id, now
from server.data.queries import ContactRow
from server.data.units import unit

# contacts.v1.ContactEvent.Type's numbers (the store never imports generated
# code; tests/test_events.py checks these against the proto).
CREATED, UPDATED, DELETED = 1, 2, 3


def contact_json(row: ContactRow) -> str:
    return json.dumps(row._asdict(), separators=(",", ":"))


def contact_row(text: str) -> ContactRow:
    """A row's contact back as a ContactRow; ValueError or TypeError if it is not one."""
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise TypeError("the contact is not a JSON object")
    return ContactRow(**fields)


def record(kind: int, contact: ContactRow, occurred_at: datetime | None = None) -> None:
    """Writes one event, inside the caller's transaction."""
    ContactEvent.insert(
        event_id=new_id(),
        type=kind,
        contact=contact_json(contact),
        occurred_at=occurred_at or now(),
    ).execute()


class Pending(NamedTuple):
    id: int
    event_id: str
    type: int
    contact: str
    occurred_at: int  # seconds since the epoch
    attempts: int


class Outbox:
    """The relay's side of the table, on the store's database and connections."""

    def __init__(self, db: peewee.Database, connection: Any) -> None:
        self.db = db
        self._connection = connection

    def connection(self) -> AbstractContextManager[object]:
        connected: AbstractContextManager[object] = self._connection()
        return connected

    @unit
    def pending(self, limit: int) -> list[Pending]:
        """The oldest unsent events, in the order they are to go out."""
        query = (
            ContactEvent.select()
            .where(ContactEvent.sent_at.is_null() & (ContactEvent.skipped == False))  # noqa: E712
            .order_by(ContactEvent.id)
            .limit(limit)
        )
        return [
            Pending(
                e.id,
                str(e.event_id),
                e.type,
                e.contact,
                epoch_seconds(e.occurred_at),
                e.attempts,
            )
            for e in query
        ]

    @unit
    def mark_sent(self, ids: list[int]) -> None:
        if ids:
            ContactEvent.update(sent_at=now()).where(ContactEvent.id.in_(ids)).execute()

    @unit
    def failed(self, event: Pending, give_up: bool) -> None:
        """One more failed publication of `event`; with `give_up`, never tried again."""
        ContactEvent.update(attempts=ContactEvent.attempts + 1, skipped=give_up).where(
            ContactEvent.id == event.id
        ).execute()

    @unit
    def purge(self) -> int:
        """Deletes the events already sent (and the skipped ones, which were logged)."""
        done = ContactEvent.sent_at.is_null(False) | (ContactEvent.skipped == True)  # noqa: E712
        return int(ContactEvent.delete().where(done).execute())

    @unit
    def backlog(self) -> tuple[int, float]:
        """Unsent events, and the age in seconds of the oldest (0 with none)."""
        row: Any = (
            ContactEvent.select(
                peewee.fn.COUNT(ContactEvent.id), peewee.fn.MIN(ContactEvent.occurred_at)
            )
            .where(ContactEvent.sent_at.is_null() & (ContactEvent.skipped == False))  # noqa: E712
            .tuples()
            .get()
        )
        count: int | None = row[0]
        oldest: Any = row[1]
        if not count or oldest is None:
            return 0, 0.0
        if isinstance(oldest, str):  # SQLite's MIN() loses the column's type
            oldest = datetime.fromisoformat(oldest)
        return int(count), max(0.0, float(epoch_seconds(now()) - epoch_seconds(oldest)))
