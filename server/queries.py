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


def _sqlite_uuid(column: str) -> str:
    # peewee keeps SQLite UUIDs as 32 hex digits; the API prints them dashed.
    parts = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    return "||'-'||".join(f"substr({column}, {start}, {length})" for start, length in parts)


def _sqlite_seconds(column: str) -> str:
    return f"CAST(strftime('%s', {column}) AS INTEGER)"


def _postgres_uuid(column: str) -> str:
    return f"{column}::text"


def _postgres_seconds(column: str) -> str:
    # Naive UTC timestamps: EXTRACT takes them as UTC.
    return f"EXTRACT(EPOCH FROM {column})::bigint"


class Statements:
    """The SQL of the hot reads, in the dialect of one database."""

    def __init__(self, db: peewee.Database) -> None:
        if isinstance(db, peewee.PostgresqlDatabase):
            key, seconds = _postgres_uuid, _postgres_seconds
        else:
            key, seconds = _sqlite_uuid, _sqlite_seconds
        p = db.param
        contact = (
            f"SELECT {key('id')}, {key('company_id')}, first_name, last_name, email, phone,"
            f" designation, is_primary, {seconds('created_at')}, {seconds('updated_at')}"
            " FROM contacts"
        )
        company = (
            f"SELECT {key('id')}, name, owner_id, {seconds('created_at')},"
            f" {seconds('updated_at')} FROM companies"
        )
        self.contact = f"{contact} WHERE id = {p}"
        self.contacts_page = (
            f"{contact} WHERE company_id = {p} ORDER BY created_at, id LIMIT {p} OFFSET {p}"
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
        return None if row is None else ContactRow._make(row)

    def contacts(self, company_id: uuid.UUID, skip: int, limit: int) -> list[ContactRow]:
        params = (key(self._company_id, company_id), limit, skip)
        return list(map(ContactRow._make, self._db.execute_sql(self._sql.contacts_page, params)))

    def company(self, company_id: uuid.UUID) -> CompanyRow | None:
        row = self._one(self._sql.company, key(self._company_id, company_id))
        return None if row is None else CompanyRow._make(row)

    def companies(self, owner_id: str | None, skip: int, limit: int) -> list[CompanyRow]:
        if owner_id is None:
            rows = self._db.execute_sql(self._sql.companies_page, (limit, skip))
        else:
            rows = self._db.execute_sql(self._sql.owned_companies_page, (owner_id, limit, skip))
        return list(map(CompanyRow._make, rows))

    def _one(self, sql: str, param: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute_sql(sql, (param,)).fetchone()
        return row
