"""How the event loop reaches the database: each call where it cannot stall the loop.

The server is one event loop: a call that blocks it stalls every client. So:

- SQLite lookups by key run on the loop itself. In WAL mode a reader never
  waits for the writer, and the read is a few microseconds of C: a hop to a
  thread and back would cost more than the read.
- SQLite pages near the start run on the loop too; a deep page goes to a
  reader thread, since OFFSET walks every index entry before it (84 ms at
  skip=990,000) and sqlite3 releases the GIL while it walks.
- PostgreSQL reads are awaited on the loop through asyncpg (queries.PostgresReads).
- Writes go through peewee on threads: on SQLite one writer thread (SQLite
  has one writer, and a write may wait out the busy timeout for another
  process's lock); on PostgreSQL a pool as large as the connection pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, Self, TypeVar

from server.data.pages import ContactPage
from server.data.queries import CompanyRow, ContactRow, PostgresReads
from server.data.store import Store

# A SQLite page that walks this many rows holds the loop for about a
# millisecond: cheaper than a hop to a thread, short enough for the others.
INLINE_SCAN_ROWS = 1000
MAX_SCAN_ROWS = 1 << 62  # more than any page could walk

P = ParamSpec("P")
R = TypeVar("R")


class Offload:
    def __init__(self, store: Store, threads: int, postgres: PostgresReads | None = None) -> None:
        self._store = store
        self._postgres = postgres
        writers = threads if store.pooled else 1
        self._writer = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="db-write")
        self._readers = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db-read")

    @classmethod
    async def open(cls, store: Store, threads: int, url: str) -> Self:
        postgres = await PostgresReads.connect(url, threads) if store.pooled else None
        return cls(store, threads, postgres)

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._postgres is not None:
            await self._postgres.close()

    async def contact(self, contact_id: uuid.UUID) -> ContactRow | None:
        if self._postgres is not None:
            return await self._postgres.contact(contact_id)
        return self._store.find_contact(contact_id)

    async def company(self, company_id: uuid.UUID) -> CompanyRow | None:
        if self._postgres is not None:
            return await self._postgres.company(company_id)
        return self._store.find_company(company_id)

    async def contacts(self, page: ContactPage) -> list[ContactRow]:
        """The page's rows, and the one after it if any (pages.py)."""
        if self._postgres is not None:
            return await self._postgres.contacts(page)
        # A filter may walk more rows than the page holds: to a reader thread.
        walked = MAX_SCAN_ROWS if page.filtered else page.skip + page.limit
        return await self._scan(walked, self._store.list_contacts, page)

    async def companies(self, owner_id: str | None, skip: int, limit: int) -> list[CompanyRow]:
        if self._postgres is not None:
            return await self._postgres.companies(owner_id, skip, limit)
        return await self._scan(skip + limit, self._store.list_companies, owner_id, skip, limit)

    async def ping(self) -> None:
        if self._postgres is not None:
            await self._postgres.ping()
        else:
            self._store.ping()

    async def write(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`call` on a writer thread, in a copy of the call's context (its deadline)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._writer, lambda: context.run(call, *args, **kwargs))

    async def _scan(
        self, walked: int, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """A SQLite page, which walks `walked` index entries (OFFSET walks them all)."""
        if walked <= INLINE_SCAN_ROWS:
            return call(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: call(*args, **kwargs))
