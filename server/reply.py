"""What a call's reply carries besides its message: metadata that any hop adds
(rate-limit headers, an ETag, REST facts) and the error interceptor sends once,
as trailing metadata, with the status.

REST clients get it as response headers: Envoy makes headers of an error's
trailers-only reply, and envoy/rest.lua of a reply's trailers.
Each call runs in a task of its own, so what one call gathers is its own.
"""

from __future__ import annotations

from contextvars import ContextVar

Metadata = tuple[tuple[str, str], ...]

_gathered: ContextVar[list[tuple[str, str]] | None] = ContextVar("reply_metadata", default=None)


def begin() -> None:
    """Starts the call's reply metadata, empty."""
    _gathered.set([])


def add(*pairs: tuple[str, str]) -> None:
    gathered = _gathered.get()
    if gathered is None:
        raise RuntimeError("reply.add outside a call (reply.begin was not called)")
    gathered.extend(pairs)


def gathered() -> Metadata:
    return tuple(_gathered.get() or ())
