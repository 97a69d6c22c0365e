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
from collections.abc import Callable
from typing import Any

import grpc
from grpc_interceptor import AsyncServerInterceptor
from grpc_interceptor.exceptions import GrpcException

from server import call as calls
from server.contract import Contract
from server.data.keys import Claim, Keys
from server.data.offload import Offload
from server.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidField
from server.rpc.metadata import metadata_values

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255


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


class IdempotencyInterceptor(AsyncServerInterceptor):
    """Answers a repeated request with the stored first response (see the module)."""

    def __init__(
        self,
        keys: Keys,
        offload: Offload,
        client: Callable[[grpc.aio.ServicerContext], str],
        contract: Contract,
    ) -> None:
        self._keys = keys
        self._db = offload
        self._client = client
        self._replies = {m.path: m.reply_class for m in contract if m.idempotency_key}

    async def intercept(
        self, method: Callable, request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        reply_class = self._replies.get(method_name)
        key = key_of(metadata_values(context, HEADER)) if reply_class is not None else None
        call = calls.current()
        if key is None or reply_class is None or call is None:
            return await super().intercept(method, request, context, method_name)
        client = self._client(context)
        message = request.SerializeToString(deterministic=True)
        fingerprint = hashlib.sha256(method_name.encode() + b"\0" + message).hexdigest()
        earlier = await self._db.write(self._keys.claim, client, key, fingerprint)
        if isinstance(earlier, Claim):
            call.reserved_id = earlier.resource_id
        else:
            if earlier.fingerprint != fingerprint:
                raise IdempotencyKeyReused()
            if earlier.response is None:
                raise IdempotencyKeyInUse()
            call.reply_with(*earlier.metadata)
            return reply_class.FromString(earlier.response)
        already = len(call.replied)
        try:
            response = await super().intercept(method, request, context, method_name)
        except GrpcException:
            # Refused or failed before anything was written: a retry runs afresh.
            await self._db.write(self._keys.release, client, key)
            raise
        # What this call added to the reply (its ETag), not the rate limiter's headers.
        added = tuple(call.replied[already:])
        await self._db.write(self._keys.complete, client, key, response.SerializeToString(), added)
        return response
