"""Where each database call runs, so that the event loop never waits on a lock or the network.

The server is one event loop: a call that blocks it stalls every client. So:

- SQLite lookups by key run on the loop itself. In WAL mode a reader never
  waits for the writer, and the read is a few microseconds of C: a hop to a
  thread and back would cost more than the read.
- SQLite pages near the start run on the loop too; a deep page goes to a
  reader thread, since OFFSET walks every index entry before it (84 ms at
  skip=990,000) and sqlite3 releases the GIL while it walks.
- SQLite writes go to one writer thread: they may wait up to the busy timeout
  for another process's write lock, and SQLite has one writer anyway.
- Every PostgreSQL call waits on the network: all go to a pool of threads as
  large as the connection pool, so no thread ever waits for a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

# A SQLite page that walks this many rows holds the loop for about a
# millisecond: cheaper than a hop to a thread, short enough for the others.
INLINE_SCAN_ROWS = 1000

P = ParamSpec("P")
R = TypeVar("R")


class Offload:
    def __init__(self, pooled: bool, threads: int) -> None:
        self._inline = not pooled
        if pooled:
            shared = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db")
            self._readers = self._writer = shared
        else:
            self._readers = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db-read")
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-write")

    async def lookup(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """A read of a few rows by key."""
        if self._inline:
            return call(*args, **kwargs)
        return await self._run(self._readers, call, *args, **kwargs)

    async def scan(self, walked: int, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """A read of a page, which walks `walked` index entries (OFFSET walks them all)."""
        if self._inline and walked <= INLINE_SCAN_ROWS:
            return call(*args, **kwargs)
        return await self._run(self._readers, call, *args, **kwargs)

    async def write(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._run(self._writer, call, *args, **kwargs)

    async def _run(
        self, pool: ThreadPoolExecutor, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, lambda: call(*args, **kwargs))

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
