"""The database work of a traced call, each unit a span of its own (OpenTelemetry):
Offload with every way to the database wrapped. Used only when tracing is on, so an
untraced server runs Offload itself and pays nothing for this."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from server.data.offload import Offload
from server.data.pages import ContactPage
from server.data.queries import CompanyRow, ContactRow
from server.data.store import Store
from server.observability.traces import Tracing

P = ParamSpec("P")
R = TypeVar("R")


class TracedOffload(Offload):
    """A span per read (one statement) and per write (one transaction, its retries
    included), the child of the call's span: the write's thread runs in a copy of
    the call's context, taken once the span is current."""

    tracing: Tracing

    @classmethod
    async def open_traced(
        cls, store: Store, threads: int, url: str, tracing: Tracing
    ) -> TracedOffload:
        offload = await cls.open(store, threads, url)
        offload.tracing = tracing
        return offload

    async def contact(self, contact_id: uuid.UUID) -> ContactRow | None:
        with self.tracing.database("contact"):
            return await super().contact(contact_id)

    async def company(self, company_id: uuid.UUID) -> CompanyRow | None:
        with self.tracing.database("company"):
            return await super().company(company_id)

    async def contacts(self, page: ContactPage) -> list[ContactRow]:
        with self.tracing.database("contacts"):
            return await super().contacts(page)

    async def companies(self, owner_id: str | None, skip: int, limit: int) -> list[CompanyRow]:
        with self.tracing.database("companies"):
            return await super().companies(owner_id, skip, limit)

    async def write(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with self.tracing.database(getattr(call, "__name__", "write")):
            return await super().write(call, *args, **kwargs)
