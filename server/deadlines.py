"""A call's deadline, known to every hop below the interceptors: a write commits
only while its client still waits for the answer.

A client whose deadline passed has been told DEADLINE_EXCEEDED and may retry;
a write committed after that would be a duplicate. The error interceptor
records the deadline at the start of each call; the store checks it just
before each commit (on its thread: `offload.Offload.write` carries the
call's context there) and rolls back when it has passed.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from server.errors import GaveUp

_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


def begin(time_remaining: float | None) -> None:
    """Records the call's deadline from grpc's `context.time_remaining()` (None: none)."""
    _deadline.set(None if time_remaining is None else time.monotonic() + time_remaining)


def bounded() -> bool:
    """Whether the call being served has a deadline."""
    return _deadline.get() is not None


def check() -> None:
    """Raises GaveUp when the call's deadline has passed (call it inside the transaction)."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        raise GaveUp()
