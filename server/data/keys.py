"""The idempotency_keys table: a key's claim, the first response it stored, its release.

What the keys mean to a client is the interceptor's business
(server/rpc/interceptors/idempotency.py); this is their storage, one
transaction per method, so that every worker and every host sees them.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from server.data.models import IdempotencyKey, new_id, now
from server.data.store import Store
from server.data.units import unit

KEPT = timedelta(hours=24)
# Longer than any call may run (Envoy's route timeout is 30 s).
ABANDONED_AFTER = timedelta(minutes=2)
PURGE_EVERY = 60.0  # seconds, per process


@dataclass(frozen=True)
class Claim:
    """This call holds the key: its create must make the resource with this id."""

    resource_id: uuid.UUID


@dataclass(frozen=True)
class Earlier:
    """What a key already holds: the first call's request and, once done, its response."""

    fingerprint: str
    response: bytes | None
    metadata: tuple[tuple[str, str], ...]


class Keys:
    """The idempotency_keys table; each method is one blocking transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        self._purged = 0.0

    def connection(self) -> AbstractContextManager[object]:
        return self.store.connection()

    @unit
    def claim(self, client: str, key: str, fingerprint: str) -> Claim | Earlier:
        """A Claim if this call now holds the key; else what the key already holds.

        A claim reserves the id of the resource to be made. A call that takes
        over a claim whose first call died (or was cancelled) before storing
        its response reuses that id: if the first call's create did commit,
        the store answers with what it made instead of making a copy.
        """
        stamp = now()
        self._purge(stamp)
        row = {
            "fingerprint": fingerprint,
            "response": None,
            "metadata": None,
            "created_at": stamp,
            "expires_at": stamp + KEPT,
        }
        with self.db.atomic():
            fresh = new_id()
            inserted = (
                IdempotencyKey.insert(client=client, idempotency_key=key, resource_id=fresh, **row)
                .on_conflict_ignore()
                .as_rowcount()
                .execute()
            )
            if inserted:
                return Claim(fresh)
            this = (IdempotencyKey.client == client) & (IdempotencyKey.idempotency_key == key)
            # An expired key is taken over afresh; one whose first call died
            # (no response after ABANDONED_AFTER), with the id it reserved.
            if (
                IdempotencyKey.update(resource_id=fresh, **row)
                .where(this & (IdempotencyKey.expires_at <= stamp))
                .execute()
            ):
                return Claim(fresh)
            abandoned = (
                IdempotencyKey.response.is_null()
                & (IdempotencyKey.fingerprint == fingerprint)
                & (IdempotencyKey.created_at <= stamp - ABANDONED_AFTER)
            )
            if IdempotencyKey.update(created_at=stamp).where(this & abandoned).execute():
                taken = IdempotencyKey.select(IdempotencyKey.resource_id).where(this).first()
                if taken is not None:
                    return Claim(uuid.UUID(str(taken.resource_id)))
            found = IdempotencyKey.select().where(this).first()
        if found is None:  # released meanwhile: a retry claims it
            return Earlier(fingerprint, None, ())
        metadata = tuple(tuple(pair) for pair in json.loads(found.metadata or "[]"))
        response = None if found.response is None else bytes(found.response)
        return Earlier(found.fingerprint, response, metadata)  # type: ignore[arg-type]

    @unit
    def complete(
        self, client: str, key: str, response: bytes, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        with self.db.atomic():
            IdempotencyKey.update(response=response, metadata=json.dumps(metadata)).where(
                (IdempotencyKey.client == client) & (IdempotencyKey.idempotency_key == key)
            ).execute()

    @unit
    def release(self, client: str, key: str) -> None:
        with self.db.atomic():
            IdempotencyKey.delete().where(
                (IdempotencyKey.client == client)
                & (IdempotencyKey.idempotency_key == key)
                & IdempotencyKey.response.is_null()
            ).execute()

    def _purge(self, stamp: datetime) -> None:
        if time.monotonic() - self._purged < PURGE_EVERY:
            return
        self._purged = time.monotonic()
        with self.db.atomic():
            IdempotencyKey.delete().where(IdempotencyKey.expires_at <= stamp).execute()
