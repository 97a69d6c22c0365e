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

import peewee


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


class CompanyRow(NamedTuple):
    id: str
    name: str
    owner_id: str
    created_at: int
    updated_at: int


def _hyphenated(hex_digits: str | None) -> str | None:
    # peewee keeps SQLite UUIDs as 32 hex digits; the API prints them dashed.
    # (Slicing here costs a third of what substr() concatenation costs in SQL.)
    if hex_digits is None:
        return None
    h = hex_digits
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Statements:
    """The SQL of the hot reads, in the dialect of one database.

    Each selects a row's columns in ContactRow / CompanyRow order, ids as
    the dialect keeps them and timestamps as epoch seconds; `uuid_text`
    finishes the ids (PostgreSQL's `::text` is already canonical).
    """

    def __init__(self, db: peewee.Database) -> None:
        p = db.param
        if isinstance(db, peewee.PostgresqlDatabase):

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
        stamps = f"{seconds('created_at')}, {seconds('updated_at')}"
        contact = (
            f"first_name, last_name, email, phone, designation, is_primary, {stamps} FROM contacts"
        )
        company = f"SELECT {key('id')}, name, owner_id, {stamps} FROM companies"
        self.contact = f"SELECT {key('id')}, {key('company_id')}, {contact} WHERE id = {p}"
        # The page's company is the one asked for: only the id varies by row.
        self.contacts_page = (
            f"SELECT {key('id')}, {contact} WHERE company_id = {p}"
            f" ORDER BY created_at, id LIMIT {p} OFFSET {p}"
        )
        self.company = f"{company} WHERE id = {p}"
        self.companies_page = f"{company} ORDER BY created_at, id LIMIT {p} OFFSET {p}"
        self.owned_companies_page = (
            f"{company} WHERE owner_id = {p} ORDER BY created_at, id LIMIT {p} OFFSET {p}"
        )


def key(field: peewee.Field, value: uuid.UUID) -> Any:
    """A UUID as the column stores it (hex on SQLite), by the field's own conversion."""
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"{field.name} keys are uuid.UUID, not {type(value).__name__}")
    return field.db_value(value)


class Reads:
    """Runs the hot reads on the calling thread's connection."""

    def __init__(self, db: peewee.Database, contact_id: peewee.Field, company_id: peewee.Field):
        self._db = db
        self._sql = Statements(db)
        self._contact_id = contact_id
        self._company_id = company_id

    def contact(self, contact_id: uuid.UUID) -> ContactRow | None:
        row = self._one(self._sql.contact, key(self._contact_id, contact_id))
        if row is None:
            return None
        text = self._sql.uuid_text
        return ContactRow(text(row[0]), text(row[1]), *row[2:])  # type: ignore[arg-type]

    def contacts(self, company_id: uuid.UUID, skip: int, limit: int) -> list[ContactRow]:
        params = (key(self._company_id, company_id), limit, skip)
        text, company = self._sql.uuid_text, str(company_id)
        return [
            ContactRow(text(row[0]), company, *row[1:])  # type: ignore[arg-type]
            for row in self._db.execute_sql(self._sql.contacts_page, params)
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
