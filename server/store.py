"""Persistence: peewee models of companies and contacts, and the store that reads and writes them.

SQLite (the default) and PostgreSQL are chosen by URL. Every write is one
transaction; database failures leave here as domain errors.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect
from playhouse.pool import PooledPostgresqlDatabase

from server.errors import CompanyNotFound, ContactNotFound, StoreUnavailable, UnknownCompany

database = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    class Meta:
        database = database


class Company(BaseModel):
    id = peewee.UUIDField(primary_key=True)
    name = peewee.CharField(max_length=200)
    owner_id = peewee.CharField(max_length=255)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "companies"
        # Serves ListCompanies for one owner in its order.
        indexes = ((("owner_id", "created_at", "id"), False),)


class Contact(BaseModel):
    id = peewee.UUIDField(primary_key=True)
    company = peewee.ForeignKeyField(
        Company, null=True, column_name="company_id", backref="contacts", on_delete="CASCADE"
    )
    company_id: uuid.UUID | None  # peewee's accessor for the raw foreign key
    first_name = peewee.CharField(max_length=100)
    last_name = peewee.CharField(max_length=100, null=True)
    email = peewee.CharField(max_length=254)
    phone = peewee.CharField(max_length=50, null=True)
    designation = peewee.CharField(max_length=100, null=True)
    is_primary = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "contacts"
        # Serves ListContacts: one company's rows, already in list order.
        indexes = ((("company", "created_at", "id"), False),)


# The database itself forbids a second primary contact in one company.
Contact.add_index(
    Contact.index(Contact.company, unique=True, name="contacts_one_primary_per_company").where(
        Contact.is_primary == True  # noqa: E712 (peewee expression, not a comparison)
    )
)

MODELS = (Company, Contact)


def new_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so ids sort with created_at and index inserts stay local."""
    millis = time.time_ns() // 1_000_000
    value = (millis & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10)) & (2**80 - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


def now() -> datetime:
    """Naive UTC, whole seconds: the seed prints timestamps without fractions."""
    return datetime.now(UTC).replace(microsecond=0, tzinfo=None)


def open_database(url: str, max_connections: int) -> peewee.Database:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers run beside the writer; IMMEDIATE takes the write
        # lock at BEGIN so that two writers queue on busy_timeout instead of
        # one failing with "database is locked" on upgrade.
        return peewee.SqliteDatabase(
            path,
            lock_type="IMMEDIATE",
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": 10_000,
                "foreign_keys": 1,
                "synchronous": "normal",
            },
        )
    if scheme in ("postgres", "postgresql"):
        parsed = urlparse(url)
        return PooledPostgresqlDatabase(
            parsed.path.lstrip("/"),
            host=parsed.hostname,
            port=parsed.port,
            user=parsed.username,
            password=parsed.password,
            max_connections=max_connections,
            stale_timeout=300,
            connect_timeout=3,
        )
    return connect(url)


P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Database failures leave the store as StoreUnavailable, never as a driver error."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (peewee.OperationalError, peewee.InterfaceError) as error:
            raise StoreUnavailable() from error

    return wrapper


class Store:
    """Reads and writes companies and contacts; knows nothing of gRPC."""

    def __init__(self, url: str, max_connections: int = 16) -> None:
        self.db = open_database(url, max_connections)
        database.initialize(self.db)
        with self.db.connection_context():
            self.db.create_tables(MODELS, safe=True)

    def close(self) -> None:
        if isinstance(self.db, PooledPostgresqlDatabase):
            self.db.close_all()
        else:
            self.db.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        with self.db.atomic():
            yield

    # Companies

    @_guarded
    def create_company(self, name: str, owner_id: str) -> Company:
        stamp = now()
        with self._write():
            return Company.create(
                id=new_id(), name=name, owner_id=owner_id, created_at=stamp, updated_at=stamp
            )

    @_guarded
    def find_company(self, company_id: uuid.UUID) -> Company | None:
        return Company.get_or_none(Company.id == company_id)

    @_guarded
    def get_company(self, company_id: uuid.UUID) -> Company:
        company = Company.get_or_none(Company.id == company_id)
        if company is None:
            raise CompanyNotFound()
        return company

    @_guarded
    def list_companies(self, owner_id: str | None, skip: int, limit: int) -> list[Company]:
        query = Company.select()
        if owner_id is not None:
            query = query.where(Company.owner_id == owner_id)
        return list(query.order_by(Company.created_at, Company.id).offset(skip).limit(limit))

    # Contacts

    @_guarded
    def get_contact(self, contact_id: uuid.UUID) -> Contact:
        contact = Contact.get_or_none(Contact.id == contact_id)
        if contact is None:
            raise ContactNotFound()
        return contact

    @_guarded
    def list_contacts(self, company_id: uuid.UUID, skip: int, limit: int) -> list[Contact]:
        return list(
            Contact.select()
            .where(Contact.company == company_id)
            .order_by(Contact.created_at, Contact.id)
            .offset(skip)
            .limit(limit)
        )

    @_guarded
    def create_contact(self, fields: Mapping[str, Any]) -> Contact:
        stamp = now()
        row = {**fields, "id": new_id(), "created_at": stamp, "updated_at": stamp}
        with self._write():
            self._require_company(row.get("company"))
            if row.get("is_primary") and row.get("company"):
                self._demote_primary(row["company"])
            return Contact.create(**row)

    @_guarded
    def update_contact(self, contact_id: uuid.UUID, changes: Mapping[str, Any]) -> Contact:
        with self._write():
            contact = Contact.get_or_none(Contact.id == contact_id)
            if contact is None:
                raise ContactNotFound()
            if "company" in changes:
                self._require_company(changes["company"])
            company = changes.get("company", contact.company_id)
            if company and changes.get("is_primary", contact.is_primary):
                self._demote_primary(company, keep=contact_id)
            # Only the fields the caller set are written, so a concurrent
            # update of other fields is never overwritten with stale values.
            Contact.update(**changes, updated_at=now()).where(Contact.id == contact_id).execute()
            return Contact.get(Contact.id == contact_id)

    @_guarded
    def delete_contact(self, contact_id: uuid.UUID) -> None:
        with self._write():
            if not Contact.delete().where(Contact.id == contact_id).execute():
                raise ContactNotFound()

    def _require_company(self, company_id: uuid.UUID | None) -> None:
        if company_id is not None and not Company.select().where(Company.id == company_id).exists():
            raise UnknownCompany()

    def _demote_primary(self, company_id: uuid.UUID, keep: uuid.UUID | None = None) -> None:
        query = Contact.update(is_primary=False, updated_at=now()).where(
            (Contact.company == company_id) & (Contact.is_primary == True)  # noqa: E712
        )
        if keep is not None:
            query = query.where(Contact.id != keep)
        query.execute()
