"""The tables as peewee models: each column declared once, here.

The schema itself (indexes, the one-primary rule) is made by migrations.py,
whose shipped steps never change; these models map its rows, and the raw
reads (queries.py) and input validation (limits of text fields) derive
their columns from them.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import peewee


class BaseModel(peewee.Model):
    """Bound to a database by the Store that opens it (peewee's Database.bind)."""


class Company(BaseModel):
    id = peewee.UUIDField(primary_key=True)
    name = peewee.CharField(max_length=200)
    owner_id = peewee.CharField(max_length=255)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "companies"


class Contact(BaseModel):
    id = peewee.UUIDField(primary_key=True)
    company = peewee.ForeignKeyField(
        Company, null=True, column_name="company_id", backref="contacts", on_delete="CASCADE"
    )
    company_id: uuid.UUID | None  # peewee's accessor for the raw foreign key
    first_name = peewee.CharField(max_length=100)
    last_name = peewee.CharField(max_length=100, null=True)
    email = peewee.CharField(max_length=254)
    phone = peewee.CharField(max_length=50, null=True)
    designation = peewee.CharField(max_length=100, null=True)
    is_primary = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    version = peewee.IntegerField(default=1, constraints=[peewee.SQL("DEFAULT 1")])
    # Folded copies of the searched columns (folding.py), written with the row:
    # what the email and q filters compare and the indexes hold. Never read back.
    first_name_folded = peewee.TextField(null=True)
    last_name_folded = peewee.TextField(null=True)
    email_folded = peewee.TextField(null=True)

    class Meta:
        table_name = "contacts"


# Each searched column and its folded copy.
FOLDED = {
    "first_name": "first_name_folded",
    "last_name": "last_name_folded",
    "email": "email_folded",
}


def new_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so ids sort with created_at and index inserts stay local."""
    millis = time.time_ns() // 1_000_000
    value = (millis & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10)) & (2**80 - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


def now() -> datetime:
    """Naive UTC, whole seconds: the seed prints timestamps without fractions."""
    return datetime.now(UTC).replace(microsecond=0, tzinfo=None)


EPOCH = datetime(1970, 1, 1)


def epoch_seconds(stamp: datetime) -> int:
    return (stamp - EPOCH) // timedelta(seconds=1)


class IdempotencyKey(BaseModel):
    client = peewee.CharField(max_length=300)
    idempotency_key = peewee.CharField(max_length=255)
    fingerprint = peewee.CharField(max_length=64)
    resource_id = peewee.UUIDField()  # the id the first call's create uses
    response = peewee.BlobField(null=True)  # None while the first call runs
    metadata = peewee.TextField(null=True)  # its reply metadata (the ETag), as JSON
    created_at = peewee.DateTimeField()
    expires_at = peewee.DateTimeField()

    class Meta:
        table_name = "idempotency_keys"
        primary_key = peewee.CompositeKey("client", "idempotency_key")


class ContactEvent(BaseModel):
    """The outbox (server/events/): a change to a contact, written in the change's own
    transaction, until the relay has published it."""

    id = peewee.BigAutoField()  # the order of publication
    event_id = peewee.UUIDField()  # the Nats-Msg-Id: a repeat carries the same
    type = peewee.SmallIntegerField()  # ContactEvent.Type's number
    contact = peewee.TextField()  # the contact's row as JSON (queries.ContactRow's fields)
    occurred_at = peewee.DateTimeField()
    attempts = peewee.IntegerField(default=0)  # publications that failed
    sent_at = peewee.DateTimeField(null=True)  # set once JetStream acknowledged it
    skipped = peewee.BooleanField(default=False)  # poisoned: given up on

    class Meta:
        table_name = "contact_events"


MODELS = (Company, Contact, IdempotencyKey, ContactEvent)
