"""Idempotency-Key (IETF draft "The Idempotency-Key HTTP Header Field") on the RPCs
whose `(rest).idempotency_key` option says so: a retry answers the first response.

A key belongs to a client (the token's `sub`, else the address the rate
limiter uses) and lives 24 hours, in the database, so that every worker and
every host sees it. The first call with a key claims it (a row whose primary
key is the client and the key: of concurrent claims exactly one inserts);
when it succeeds, its response is stored in the row. A later call with the
same key and the same request (same RPC, same message) gets that response
again; with another request, 422; while the first still runs, 409. A first
call that fails (refused, invalid, rate-limited: nothing was written)
releases the key. A claim whose call died with its process is taken over
after ABANDONED_AFTER; expired rows are purged by the claims themselves, at
most once a minute per process, so no separate job is needed.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
import peewee
from google.protobuf import message_factory
from google.protobuf.descriptor import FileDescriptor
from grpc_interceptor import AsyncServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from contacts.options.v1 import options_pb2
from contacts.v1 import contacts_pb2
from server import reply
from server.data.offload import Offload
from server.data.store import BaseModel, Store, new_id, now
from server.data.units import reserved_id, unit
from server.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidField
from server.rpc.interceptors.chain import metadata_values, proceed

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
KEPT = timedelta(hours=24)
# Longer than any call may run (Envoy's route timeout is 30 s).
ABANDONED_AFTER = timedelta(minutes=2)
PURGE_EVERY = 60.0  # seconds, per process


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


def key_of(sent: list[str]) -> str | None:
    """The one Idempotency-Key sent (None if none); InvalidField if empty, too long or several."""
    if not sent:
        return None
    if len(sent) > 1:
        raise InvalidField("Idempotency-Key", "must be sent once")
    key = sent[0]
    if not key:
        raise InvalidField("Idempotency-Key", "must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidField("Idempotency-Key", f"must be at most {MAX_KEY_LENGTH} characters")
    return key


def replies_by_method(
    files: Iterable[FileDescriptor] = (contacts_pb2.DESCRIPTOR,),
) -> dict[str, type[Any]]:
    """The reply message class of every RPC whose `(rest).idempotency_key` is set."""
    found = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                if method.GetOptions().Extensions[options_pb2.rest].idempotency_key:
                    path = f"/{service.full_name}/{method.name}"
                    found[path] = message_factory.GetMessageClass(method.output_type)
    return found


class IdempotencyInterceptor(AsyncServerInterceptor):
    """Answers a repeated request with the stored first response (see the module)."""

    def __init__(
        self, keys: Keys, offload: Offload, client: Callable[[grpc.aio.ServicerContext], str]
    ) -> None:
        self._keys = keys
        self._db = offload
        self._client = client
        self._replies = replies_by_method()

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        reply_class = self._replies.get(method_name)
        key = key_of(metadata_values(context, HEADER)) if reply_class is not None else None
        if key is None or reply_class is None:
            return await proceed(method, request, context)
        client = self._client(context)
        message = request.SerializeToString(deterministic=True)
        fingerprint = hashlib.sha256(method_name.encode() + b"\0" + message).hexdigest()
        earlier = await self._db.write(self._keys.claim, client, key, fingerprint)
        if isinstance(earlier, Claim):
            reserved_id.set(earlier.resource_id)
        else:
            if earlier.fingerprint != fingerprint:
                raise IdempotencyKeyReused()
            if earlier.response is None:
                raise IdempotencyKeyInUse()
            reply.add(*earlier.metadata)
            return reply_class.FromString(earlier.response)
        already = len(reply.gathered())
        try:
            response = await proceed(method, request, context)
        except GrpcException:
            # Refused or failed before anything was written: a retry runs afresh.
            await self._db.write(self._keys.release, client, key)
            raise
        # What this call added to the reply (its ETag), not the rate limiter's headers.
        added = reply.gathered()[already:]
        await self._db.write(self._keys.complete, client, key, response.SerializeToString(), added)
        return response
