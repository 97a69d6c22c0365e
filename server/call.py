"""The call being served, as one object every hop reads: its request id, who is
calling, the metadata its reply will carry, its deadline, the id a create must
use, and what its log line says.

grpc.aio serves each call in a task of its own, and a task runs in a copy of
the context it was started in: the one ContextVar here holds a different
Call in each task, and a thread the call hands work to (the store's writes)
gets the same Call through the context it is run in.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.auth.tokens import Identity

Metadata = tuple[tuple[str, str], ...]


class Call:
    """What one call's hops learn about it, each written once by the hop that knows."""

    __slots__ = (
        "cause",
        "client",
        "deadline",
        "identity",
        "replied",
        "request_id",
        "reserved_id",
        "rest_path",
        "started",
        "trace_id",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started = time.perf_counter()
        self.client: str | None = None  # the rate limiter's key, once decided
        self.identity: Identity | None = None  # what its credentials say, once verified
        self.replied: list[tuple[str, str]] = []  # metadata for the reply (REST headers)
        self.deadline: float | None = None  # time.monotonic() by which the client gives up
        # The id the next create of this call must use (an Idempotency-Key's resource
        # id: a create run again under the same key can never make a second row).
        self.reserved_id: uuid.UUID | None = None
        self.cause: str | None = None  # why the server failed it, when it did
        # The REST path Envoy was sent, for a call through its REST door (rest interceptor).
        self.rest_path: str | None = None
        self.trace_id: str | None = None  # its OpenTelemetry trace, when traced

    def reply_with(self, *pairs: tuple[str, str]) -> None:
        """Metadata the reply carries, as trailers with the status (REST: headers)."""
        self.replied.extend(pairs)

    def note_cause(self, error: BaseException) -> None:
        """Names, on the call's log line, why the server failed it."""
        self.cause = " ".join(f"{type(error).__name__}: {error}".split())

    def expire_in(self, seconds: float | None) -> None:
        """Records the deadline from grpc's `context.time_remaining()` (None: none)."""
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def check_deadline(self) -> None:
        """GaveUp once the client has stopped waiting: a write then must not commit
        (the client was told DEADLINE_EXCEEDED and may send it again)."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            # Imported here: this module stays free of grpc for the processes
            # that never serve (the supervisor logs through it).
            from server.errors import GaveUp

            raise GaveUp()


_current: ContextVar[Call | None] = ContextVar("call", default=None)


REQUEST_ID = "x-request-id"  # Envoy's header; gRPC metadata of the same name
# A request id a client sent is kept if it is a plain token (Envoy's are UUIDs);
# anything else would let a client write what it likes into the log. A plain
# token is written bare in text and JSON lines alike, with no check per line.
_USABLE_ID = re.compile(r"[\w.:/+-]{1,128}", re.ASCII).fullmatch


def begin(metadata: Iterable[tuple[str, Any]] | None) -> Call:
    """Starts the call being served, with the request id its metadata carries if that
    is usable, else a new one (the outermost interceptor does, once a call)."""
    request_id = None
    for key, value in metadata or ():
        if key == REQUEST_ID:
            if isinstance(value, str) and _USABLE_ID(value):
                request_id = value
            break
    call = Call(request_id or new_request_id())
    _current.set(call)
    return call


def current() -> Call | None:
    """The call being served; None outside one (a test, the command line)."""
    return _current.get()


def new_request_id() -> str:
    """A random (version 4) UUID, as Envoy makes them, without uuid.uuid4()'s object."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
