"""The store: reads and writes companies and contacts (server/data/models.py).

Every write is one transaction; database failures leave here as domain errors.
A write whose call's deadline has passed by the time it would commit is
rolled back instead (server/call.py): its client has stopped waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from server import call as calls
from server.data import outbox
from server.data.database import open_database
from server.data.folding import fold
from server.data.migrations import migrate
from server.data.models import FOLDED, MODELS, Company, Contact, epoch_seconds, new_id, now
from server.data.pages import ContactPage
from server.data.queries import CompanyRow, ContactRow, Reads
from server.data.units import names_no_row, unit
from server.errors import ContactNotFound, EtagMismatch, UnknownCompany

Row = TypeVar("Row")


class _Moved(Exception):
    """The contact no longer belongs to the company the caller was authorised for."""


def _reserved() -> uuid.UUID | None:
    """The id the call's create must use (its Idempotency-Key reserved one)."""
    call = calls.current()
    return None if call is None else call.reserved_id


def _bounded() -> bool:
    """Whether the call being served has a deadline its write must meet."""
    call = calls.current()
    return call is not None and call.deadline is not None


def _check_deadline() -> None:
    """Inside the transaction, just before it commits: GaveUp rolls it back."""
    call = calls.current()
    if call is not None:
        call.check_deadline()


def _folded(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The folded copies (folding.py) of the searched columns among `fields`."""
    return {
        FOLDED[name]: None if value is None else fold(value)
        for name, value in fields.items()
        if name in FOLDED
    }


def _belongs_to(company_id: uuid.UUID | None) -> peewee.Expression:
    return Contact.company.is_null() if company_id is None else Contact.company == company_id


class Store:
    """Reads and writes companies and contacts; knows nothing of gRPC.

    Every method is blocking and runs on the calling thread's connection;
    `offload.Offload` decides which thread that is.
    """

    def __init__(self, db: peewee.Database, events: bool = False) -> None:
        self.db = db
        # Whether each change writes its event to the outbox (server/events/),
        # in its own transaction; off, no event is written and nothing else is read.
        self.events = events
        self.pooled = isinstance(db, PooledPostgresqlDatabase)
        # A process serves one database: the models are bound to it (a second
        # Store in the same process, as in tests, rebinds them to its own).
        db.bind(MODELS)
        self._reads = Reads(db)
        self._in_use = 0  # pooled connections checked out

    @classmethod
    def open(cls, url: str, max_connections: int = 16, events: bool = False) -> Store:
        """The store of the database at `url`, its schema brought up to date first."""
        db = open_database(url, max_connections)
        with db.connection_context():
            migrate(db)
        return cls(db, events)

    def connections_in_use(self) -> int:
        """Pooled connections checked out now (0 on SQLite: no pool)."""
        return self._in_use

    def close(self) -> None:
        if isinstance(self.db, PooledPostgresqlDatabase):
            self.db.close_all()
        else:
            self.db.close()

    def connection(self) -> AbstractContextManager[object]:
        # PostgreSQL: check a pooled connection out per call, so that one
        # broken by an outage is dropped at the next check-out. SQLite: each
        # thread keeps its own connection (opening one costs more than a query).
        return self._checked_out() if self.pooled else nullcontext()

    @contextmanager
    def _checked_out(self) -> Iterator[None]:
        with self.db.connection_context():
            self._in_use += 1
            try:
                yield
            finally:
                self._in_use -= 1

    @unit
    def ping(self) -> None:
        self.db.execute_sql("SELECT 1")

    # Companies

    @unit
    def create_company(self, name: str, owner_id: str) -> CompanyRow:
        made = self._made_earlier(self._reads.company)
        if made is not None:
            return made
        stamp, company_id = now(), _reserved() or new_id()
        with self.db.atomic():
            Company.insert(
                id=company_id, name=name, owner_id=owner_id, created_at=stamp, updated_at=stamp
            ).execute()
            _check_deadline()
        seconds = epoch_seconds(stamp)
        return CompanyRow(str(company_id), name, owner_id, seconds, seconds)

    @unit
    def find_company(self, company_id: uuid.UUID) -> CompanyRow | None:
        return self._reads.company(company_id)

    @unit
    def list_companies(self, owner_id: str | None, skip: int, limit: int) -> list[CompanyRow]:
        return self._reads.companies(owner_id, skip, limit)

    # Contacts

    @unit
    def find_contact(self, contact_id: uuid.UUID) -> ContactRow | None:
        return self._reads.contact(contact_id)

    @unit
    def list_contacts(self, page: ContactPage) -> list[ContactRow]:
        """The page's rows, and the one after it if any (pages.py)."""
        return self._reads.contacts(page)

    @unit
    def create_contact(self, fields: Mapping[str, Any]) -> ContactRow:
        made = self._made_earlier(self._reads.contact)
        if made is not None:
            return made
        stamp, contact_id = now(), _reserved() or new_id()
        row = {"is_primary": False, **fields, "created_at": stamp, "updated_at": stamp}
        company = row.get("company")
        promotes = bool(row["is_primary"] and company)
        seconds = epoch_seconds(stamp)
        made = ContactRow(
            id=str(contact_id),
            company_id=None if company is None else str(company),
            first_name=row["first_name"],
            last_name=row.get("last_name"),
            email=row["email"],
            phone=row.get("phone"),
            designation=row.get("designation"),
            is_primary=row["is_primary"],
            created_at=seconds,
            updated_at=seconds,
            version=1,
        )
        try:
            if promotes or _bounded() or self.events:
                with self.db.atomic():
                    if company and promotes:
                        self._demote_primary(company)
                    Contact.insert(id=contact_id, **row, **_folded(row)).execute()
                    if self.events:
                        outbox.record(outbox.CREATED, made, stamp)
                    _check_deadline()
            else:
                # One statement, committed on its own: the foreign key is the
                # check that the company exists, with no round trip of its own.
                Contact.insert(id=contact_id, **row, **_folded(row)).execute()
        except peewee.IntegrityError as error:
            if names_no_row(error):
                raise UnknownCompany() from error
            raise
        return made

    @unit
    def update_contact(
        self,
        contact_id: uuid.UUID,
        changes: Mapping[str, Any],
        versions: frozenset[int] | None = None,
    ) -> ContactRow:
        """Writes `changes` (a None value clears the column). With `versions`, only if
        the contact's version is one of them (If-Match), else EtagMismatch."""
        try:
            return self._update(contact_id, changes, versions, Contact.id == contact_id)
        except _Moved:
            raise ContactNotFound() from None  # deleted since it was read

    @unit
    def move_contact(
        self,
        contact_id: uuid.UUID,
        changes: Mapping[str, Any],
        company_id: uuid.UUID | None,
        versions: frozenset[int] | None = None,
    ) -> ContactRow | None:
        """Updates the contact (`changes` holds its new company) if it still belongs to
        `company_id`, the company the caller was authorised for, checked in the
        update's own statement; None, with nothing changed, if it has moved since."""
        try:
            where = (Contact.id == contact_id) & _belongs_to(company_id)
            return self._update(contact_id, changes, versions, where)
        except _Moved:
            return None

    def _update(
        self,
        contact_id: uuid.UUID,
        changes: Mapping[str, Any],
        versions: frozenset[int] | None,
        where: peewee.Expression,
    ) -> ContactRow:
        with self.db.atomic():
            contact = self._get_contact(contact_id)
            if versions is not None and contact.version not in versions:
                raise EtagMismatch()
            if "company" in changes:
                self._require_company(changes["company"])
            company = changes.get("company", contact.company_id)
            if company and changes.get("is_primary", contact.is_primary):
                self._demote_primary(company, keep=contact_id)
            # Only the fields the caller set are written, so a concurrent
            # update of other fields is never overwritten with stale values.
            query = Contact.update(
                **changes, **_folded(changes), updated_at=now(), version=Contact.version + 1
            )
            query = query.where(where)
            if versions is not None:
                # Checked again by the write itself: a concurrent writer that
                # read the same version first has raised it by now (PostgreSQL
                # re-evaluates the condition once the other commits).
                query = query.where(Contact.version.in_(list(versions)))
            if not query.execute():
                # Changed, gone or moved since it was read: nothing is written
                # (the demotion is rolled back).
                now_there = self._reads.contact(contact_id)
                if versions is not None and now_there and now_there.version not in versions:
                    raise EtagMismatch()
                raise _Moved()
            updated = self._get_contact(contact_id)
            if self.events:
                outbox.record(outbox.UPDATED, updated)
            _check_deadline()
            return updated

    @unit
    def delete_contact(
        self,
        contact_id: uuid.UUID,
        company_id: uuid.UUID | None,
        versions: frozenset[int] | None = None,
    ) -> bool:
        """Deletes the contact if it still belongs to `company_id` (what the caller was
        authorised for) and, with `versions`, still has one of them; False if not."""
        condition = (Contact.id == contact_id) & _belongs_to(company_id)
        if versions is not None:
            condition &= Contact.version.in_(list(versions))
        with self.db.atomic():
            before = self._locked(contact_id) if self.events else None
            deleted = bool(Contact.delete().where(condition).execute())
            if deleted and before is not None:
                outbox.record(outbox.DELETED, before)
            _check_deadline()
            return deleted

    @unit
    def seed_contacts(self, company_id: uuid.UUID, count: int, batch: int = 2000) -> None:
        """Bulk-inserts `count` generated contacts (for benchmarks and scale tests)."""
        stamp = now()
        fields = [
            Contact.id,
            Contact.company,
            Contact.first_name,
            Contact.email,
            Contact.first_name_folded,
            Contact.email_folded,
        ]
        for start in range(0, count, batch):
            rows = [
                # ... and the folded first name and email
                (
                    new_id(),
                    company_id,
                    f"Seed {n}",
                    f"seed{n}@example.com",
                    f"seed {n}",
                    f"seed{n}@example.com",
                )
                for n in range(start, min(count, start + batch))
            ]
            with self.db.atomic():
                Contact.insert_many(
                    [(*row, stamp, stamp) for row in rows],
                    fields=[*fields, Contact.created_at, Contact.updated_at],
                ).execute()

    def _get_contact(self, contact_id: uuid.UUID) -> ContactRow:
        found = self._reads.contact(contact_id)
        if found is None:
            raise ContactNotFound()
        return found

    def _made_earlier(self, find: Callable[[uuid.UUID], Row | None]) -> Row | None:
        """What an earlier run of this call made with the id its Idempotency-Key
        reserved (that run died before storing its response), if anything."""
        reserved = _reserved()
        return None if reserved is None else find(reserved)

    def _require_company(self, company_id: uuid.UUID | None) -> None:
        if company_id is not None and self._reads.company(company_id) is None:
            raise UnknownCompany()

    def _locked(self, contact_id: uuid.UUID) -> ContactRow | None:
        """The contact as it is, locked until the transaction ends (PostgreSQL; SQLite's
        writer holds the whole database already): what a delete's event says."""
        if self.db.for_update:
            Contact.select(Contact.id).where(Contact.id == contact_id).for_update().execute()
        return self._reads.contact(contact_id)

    def _demote_primary(self, company_id: uuid.UUID, keep: uuid.UUID | None = None) -> None:
        if self.db.for_update:
            # Promotions in one company queue on its row; without it, two
            # concurrent ones would each demote the old primary and collide
            # on the one-primary index. (SQLite writers are serial already.)
            Company.select(Company.id).where(Company.id == company_id).for_update().execute()
        primary = (Contact.company == company_id) & (Contact.is_primary == True)  # noqa: E712
        if keep is not None:
            primary &= Contact.id != keep
        # The demoted contact changes too: its event, with the state after.
        demoted = [c.id for c in Contact.select(Contact.id).where(primary)] if self.events else []
        Contact.update(is_primary=False, updated_at=now(), version=Contact.version + 1).where(
            primary
        ).execute()
        for contact_id in demoted:
            outbox.record(outbox.UPDATED, self._get_contact(contact_id))
