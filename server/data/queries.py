"""The hot reads as plain SQL, one text per database, returning rows in message form.

Reads are most of the traffic, and building a peewee model per row (a
`python_value` per field, a `strptime` per timestamp) cost more than the SQL.
So these statements make the database hand back each value as the API
prints it: ids as canonical UUID text, timestamps as whole seconds since the
epoch. The servicers turn such a row into protobuf with no parsing at all.

Parameters go through the model field's own `db_value`, and only a
`uuid.UUID` is taken as a key: a string of another form would otherwise
silently match no row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import asyncpg
import peewee

from server.data.database import CONNECT_SECONDS, POOL_WAIT_SECONDS, QUERY_SECONDS
from server.data.models import FOLDED, Company, Contact
from server.data.pages import ContactPage, page_query
from server.data.units import unreachable
from server.errors import StoreUnavailable


class ContactRow(NamedTuple):
    id: str
    company_id: str | None
    first_name: str
    last_name: str | None
    email: str
    phone: str | None
    designation: str | None
    is_primary: bool
    created_at: int  # seconds since the epoch, UTC
    updated_at: int
    version: int  # raised by every change: the ETag


class CompanyRow(NamedTuple):
    id: str
    name: str
    owner_id: str
    created_at: int
    updated_at: int


def _hyphenated(hex_digits: str | None) -> str | None:
    # peewee keeps SQLite UUIDs as 32 hex digits; the API prints them dashed.
    # (Sliced here: cheaper than concatenating substr()s in SQL.)
    if hex_digits is None:
        return None
    h = hex_digits
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Statements:
    """The SQL of the hot reads, in the dialect of one database.

    Each selects a row's columns in ContactRow / CompanyRow order, ids as
    the dialect keeps them and timestamps as epoch seconds; `uuid_text`
    finishes the ids (PostgreSQL's `::text` is already canonical).
    `param(n)` writes the n-th parameter as the driver wants it.
    """

    def __init__(self, postgres: bool, param: Callable[[int], str]) -> None:
        if postgres:

            def key(column: str) -> str:
                return f"{column}::text"

            def seconds(column: str) -> str:
                return f"EXTRACT(EPOCH FROM {column})::bigint"  # naive UTC, taken as UTC

            self.uuid_text: Callable[[str | None], str | None] = lambda text: text
        else:

            def key(column: str) -> str:
                return column

            def seconds(column: str) -> str:
                return f"CAST(strftime('%s', {column}) AS INTEGER)"

            self.uuid_text = _hyphenated
        p1, p2, p3 = param(1), param(2), param(3)

        def columns(model: type[peewee.Model], skip: str = "") -> str:
            """The model's columns in declaration order (the row tuples' order)."""
            return ", ".join(
                key(field.column_name)
                if isinstance(field, peewee.UUIDField | peewee.ForeignKeyField)
                else seconds(field.column_name)
                if isinstance(field, peewee.DateTimeField)
                else field.column_name
                for field in model._meta.sorted_fields  # type: ignore[attr-defined]
                if field.column_name != skip and field.name not in FOLDED.values()
            )

        contacts, companies = Contact._meta.table_name, Company._meta.table_name  # type: ignore[attr-defined]
        self.contact = f"SELECT {columns(Contact)} FROM {contacts} WHERE id = {p1}"
        # The page's company is the one asked for: only the id varies by row.
        self._page_columns = columns(Contact, skip="company_id")
        self._contacts, self._param, self._postgres = contacts, param, postgres
        company = f"SELECT {columns(Company)} FROM {companies}"
        self.company = f"{company} WHERE id = {p1}"
        # By the table's columns: a bare `id` is the selected `id::text` on PostgreSQL.
        order = f"ORDER BY {companies}.created_at, {companies}.id"
        self.companies_page = f"{company} {order} LIMIT {p1} OFFSET {p2}"
        self.owned_companies_page = (
            f"{company} WHERE owner_id = {p1} {order} LIMIT {p2} OFFSET {p3}"
        )

    def contacts_page(
        self, page: ContactPage, key: Callable[[uuid.UUID], Any]
    ) -> tuple[str, list[Any]]:
        """A page's SQL (pages.py) and its parameters, `key` making each UUID one."""
        return page_query(
            page, self._page_columns, self._contacts, self._param, key, self._postgres
        )

    @classmethod
    def for_peewee(cls, db: peewee.Database) -> Statements:
        return cls(isinstance(db, peewee.PostgresqlDatabase), lambda _: db.param)


def key(field: peewee.Field, value: uuid.UUID) -> Any:
    """A UUID as the column stores it (hex on SQLite), by the field's own conversion."""
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"{field.name} keys are uuid.UUID, not {type(value).__name__}")
    return field.db_value(value)


class Reads:
    """Runs the hot reads on the calling thread's connection."""

    def __init__(self, db: peewee.Database) -> None:
        self._db = db
        self._sql = Statements.for_peewee(db)
        self._contact_id = Contact.id
        self._company_id = Contact.company

    def contact(self, contact_id: uuid.UUID) -> ContactRow | None:
        row = self._one(self._sql.contact, key(self._contact_id, contact_id))
        if row is None:
            return None
        text = self._sql.uuid_text
        return ContactRow(text(row[0]), text(row[1]), *row[2:])  # type: ignore[arg-type]

    def contacts(self, page: ContactPage) -> list[ContactRow]:
        """The page's rows, and the one after it if any (pages.py)."""
        sql, params = self._sql.contacts_page(page, lambda value: key(self._contact_id, value))
        text, company = self._sql.uuid_text, str(page.company_id)
        return [
            ContactRow(text(row[0]), company, *row[1:])  # type: ignore[arg-type]
            for row in self._db.execute_sql(sql, params)
        ]

    def company(self, company_id: uuid.UUID) -> CompanyRow | None:
        row = self._one(self._sql.company, key(self._company_id, company_id))
        return None if row is None else CompanyRow(self._sql.uuid_text(row[0]), *row[1:])  # type: ignore[arg-type]

    def companies(self, owner_id: str | None, skip: int, limit: int) -> list[CompanyRow]:
        if owner_id is None:
            rows = self._db.execute_sql(self._sql.companies_page, (limit, skip))
        else:
            rows = self._db.execute_sql(self._sql.owned_companies_page, (owner_id, limit, skip))
        text = self._sql.uuid_text
        return [CompanyRow(text(row[0]), *row[1:]) for row in rows]  # type: ignore[arg-type]

    def _one(self, sql: str, param: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute_sql(sql, (param,)).fetchone()
        return row


class PostgresReads:
    """The same reads on PostgreSQL, from the event loop itself (asyncpg).

    A query there waits on the network; with a blocking driver each read
    would cost a hop to a thread and back, which cost more CPU than the read.
    asyncpg keeps each statement prepared per connection. Any failure to
    reach the database is StoreUnavailable, as in the store.
    """

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._url = url
        self._sql = Statements(postgres=True, param=lambda n: f"${n}")
        self._probe: asyncpg.Connection | None = None

    @classmethod
    async def connect(cls, url: str, connections: int) -> PostgresReads:
        pool = await asyncpg.create_pool(
            url, min_size=0, max_size=connections, timeout=CONNECT_SECONDS
        )
        return cls(pool, url)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.terminate()
        await self._pool.close()

    async def contact(self, contact_id: uuid.UUID) -> ContactRow | None:
        row = await self._fetchrow(self._sql.contact, _uuid(contact_id))
        return None if row is None else ContactRow(*row)

    async def contacts(self, page: ContactPage) -> list[ContactRow]:
        company = str(page.company_id)
        sql, params = self._sql.contacts_page(page, _uuid)
        rows = await self._fetch(sql, *params)
        return [ContactRow(row[0], company, *row[1:]) for row in rows]

    async def company(self, company_id: uuid.UUID) -> CompanyRow | None:
        row = await self._fetchrow(self._sql.company, _uuid(company_id))
        return None if row is None else CompanyRow(*row)

    async def companies(self, owner_id: str | None, skip: int, limit: int) -> list[CompanyRow]:
        if owner_id is None:
            rows = await self._fetch(self._sql.companies_page, limit, skip)
        else:
            rows = await self._fetch(self._sql.owned_companies_page, owner_id, limit, skip)
        return [CompanyRow(*row) for row in rows]

    async def ping(self) -> None:
        """Whether the database answers, on a connection of the probe's own: a pool
        busy with calls says nothing about the database."""
        try:
            if self._probe is None or self._probe.is_closed():
                self._probe = await asyncpg.connect(self._url, timeout=CONNECT_SECONDS)
            await self._probe.fetchval("SELECT 1", timeout=QUERY_SECONDS)
        except Exception as error:  # whatever it is, the database did not answer
            if self._probe is not None:
                self._probe.terminate()
                self._probe = None
            raise StoreUnavailable() from error

    async def _fetchrow(self, sql: str, *params: Any) -> Any:
        try:
            async with self._pool.acquire(timeout=POOL_WAIT_SECONDS) as connection:
                return await connection.fetchrow(sql, *params, timeout=QUERY_SECONDS)
        except Exception as error:
            if unreachable(error):
                raise StoreUnavailable() from error
            raise

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        try:
            async with self._pool.acquire(timeout=POOL_WAIT_SECONDS) as connection:
                rows: list[Any] = await connection.fetch(sql, *params, timeout=QUERY_SECONDS)
                return rows
        except Exception as error:
            if unreachable(error):
                raise StoreUnavailable() from error
            raise


def _uuid(value: uuid.UUID) -> uuid.UUID:
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"keys are uuid.UUID, not {type(value).__name__}")
    return value
