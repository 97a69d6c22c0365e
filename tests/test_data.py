"""Data that stays right: migrations, the one-primary rule, and concurrency, on each backend."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.data import migrations
from server.data.database import open_database
from server.data.models import Company, Contact
from server.data.store import Store
from server.settings import PROJECT_ROOT
from tests.conftest import BACKEND, POSTGRES_DSN, Rest, body, in_threads
from tests.harness import Server, empty_database


@pytest.fixture
def blank_url(tmp_path: Path) -> Iterator[str]:
    with empty_database(tmp_path, BACKEND, POSTGRES_DSN) as url:
        yield url


def rows(db: peewee.Database, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in db.execute_sql(sql).fetchall()]


def test_upgrade_from_the_first_migration_keeps_every_row(blank_url: str) -> None:
    db = open_database(blank_url, max_connections=1)
    with db.connection_context():
        assert migrations.migrate(db, target=1) == [1]
        company = uuid.uuid4().hex
        stamp = datetime(2024, 1, 15, 10, 30)
        later = datetime(2024, 1, 15, 10, 31)
        p = db.param
        db.execute_sql(
            f"INSERT INTO companies VALUES ({p}, {p}, {p}, {p}, {p})",
            (company, "Acme", "alice", stamp, stamp),
        )
        # Version 1 allowed two primaries in one company; the upgrade keeps
        # the most recently updated one primary and every row.
        contacts = [(uuid.uuid4().hex, stamp), (uuid.uuid4().hex, later), (uuid.uuid4().hex, stamp)]
        for i, (contact, updated) in enumerate(contacts):
            db.execute_sql(
                "INSERT INTO contacts (id, company_id, first_name, email, is_primary,"
                f" created_at, updated_at) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
                (contact, company, f"C{i}", f"c{i}@x.io", i < 2, stamp, updated),
            )
        before = rows(db, "SELECT id, first_name, email FROM contacts ORDER BY id")

        assert migrations.migrate(db) == list(range(2, migrations.LATEST + 1))
        assert migrations.migrate(db) == []  # idempotent
        assert migrations.applied_versions(db) == list(range(1, migrations.LATEST + 1))
        assert rows(db, "SELECT id, first_name, email FROM contacts ORDER BY id") == before
        primaries = rows(db, "SELECT first_name FROM contacts WHERE is_primary")
        assert primaries == [("C1",)]
    db.close()


def test_two_processes_migrating_at_once_apply_each_step_once(blank_url: str) -> None:
    env = {
        **os.environ,
        "CONTACTS_DATABASE_URL": blank_url,
        "CONTACTS_JWT_SECRET": secrets.token_urlsafe(48),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "server", "migrate"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(out for out, _ in outputs)
    latest = migrations.LATEST
    assert said == [
        f"applied {list(range(1, latest + 1))}; the schema is at version {latest}\n",
        f"applied nothing; the schema is at version {latest}\n",
    ]


def test_the_database_itself_forbids_two_primaries(store: Store, rest: Rest, owner: str) -> None:
    company = body(rest.post("/companies", token=owner, json={"name": "Dup"}))
    first = body(
        rest.post(
            "/contacts",
            json={
                "company_id": company["id"],
                "first_name": "A",
                "email": "a@x.io",
                "is_primary": True,
            },
        )
    )
    second = body(
        rest.post(
            "/contacts", json={"company_id": company["id"], "first_name": "B", "email": "b@x.io"}
        )
    )
    assert first["is_primary"]
    p = store.db.param
    with store.connection(), pytest.raises(peewee.IntegrityError), store.db.atomic():
        store.db.execute_sql(
            f"UPDATE contacts SET is_primary = {p} WHERE id = {p}",
            (True, uuid.UUID(second["id"]).hex),
        )


@pytest.fixture
def owner(tokens: Any) -> str:
    return str(tokens.issue("data-owner"))


def test_twenty_concurrent_promotions_leave_one_primary(
    rest: Rest, owner: str, contacts_stub: contacts_pb2_grpc.ContactsServiceStub
) -> None:
    company = body(rest.post("/companies", token=owner, json={"name": "Race"}))
    ids = [
        contacts_stub.CreateContact(
            pb.CreateContactRequest(
                company_id=company["id"], first_name=f"P{i}", email=f"p{i}@x.io"
            )
        ).id
        for i in range(20)
    ]
    results = in_threads(
        20,
        contacts_stub.UpdateContact,
        [pb.UpdateContactRequest(contact_id=cid, is_primary=True) for cid in ids],
    )
    assert all(r.is_primary for r in results)  # 20 successful replies, no error surfaced
    listed = body(rest.get(f"/contacts?company_id={company['id']}", token=owner))
    assert len(listed) == 20
    assert sum(c["is_primary"] for c in listed) == 1


def test_concurrent_primary_creates_leave_one_primary(
    rest: Rest, owner: str, contacts_stub: contacts_pb2_grpc.ContactsServiceStub
) -> None:
    company = body(rest.post("/companies", token=owner, json={"name": "Race2"}))
    in_threads(
        16,
        contacts_stub.CreateContact,
        [
            pb.CreateContactRequest(
                company_id=company["id"], first_name=f"P{i}", email=f"p{i}@x.io", is_primary=True
            )
            for i in range(20)
        ],
    )
    listed = body(rest.get(f"/contacts?company_id={company['id']}", token=owner))
    assert len(listed) == 20
    assert sum(c["is_primary"] for c in listed) == 1


def test_200_concurrent_creates_give_200_rows(
    rest: Rest, owner: str, contacts_stub: contacts_pb2_grpc.ContactsServiceStub
) -> None:
    company = body(rest.post("/companies", token=owner, json={"name": "Many"}))
    replies = in_threads(
        16,
        contacts_stub.CreateContact,
        [
            pb.CreateContactRequest(
                company_id=company["id"], first_name=f"N{i}", email=f"n{i}@x.io"
            )
            for i in range(200)
        ],
    )
    assert len({r.id for r in replies}) == 200
    listed = body(rest.get(f"/contacts?company_id={company['id']}&limit=1000", token=owner))
    assert sorted(c["first_name"] for c in listed) == sorted(f"N{i}" for i in range(200))


def test_concurrent_updates_of_different_fields_lose_nothing(
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub,
) -> None:
    for _ in range(5):
        contact = contacts_stub.CreateContact(
            pb.CreateContactRequest(first_name="Orig", email="orig@x.io")
        )
        updates = [
            pb.UpdateContactRequest(contact_id=contact.id, first_name="First"),
            pb.UpdateContactRequest(contact_id=contact.id, last_name="Last"),
            pb.UpdateContactRequest(contact_id=contact.id, email="new@x.io"),
            pb.UpdateContactRequest(contact_id=contact.id, phone="+1 555"),
            pb.UpdateContactRequest(contact_id=contact.id, designation="CTO"),
        ]
        in_threads(5, contacts_stub.UpdateContact, updates)
        final = contacts_stub.GetContact(pb.GetContactRequest(contact_id=contact.id))
        assert (final.first_name, final.last_name, final.email, final.phone, final.designation) == (
            "First",
            "Last",
            "new@x.io",
            "+1 555",
            "CTO",
        )


def test_a_move_racing_a_promotion_never_fails(
    rest: Rest, owner: str, contacts_stub: contacts_pb2_grpc.ContactsServiceStub
) -> None:
    md = (("authorization", f"Bearer {owner}"),)
    a = body(rest.post("/companies", token=owner, json={"name": "A"}))
    b = body(rest.post("/companies", token=owner, json={"name": "B"}))
    for round_ in range(15):
        for company in (a, b):  # each company already has a primary
            contacts_stub.CreateContact(
                pb.CreateContactRequest(
                    company_id=company["id"], first_name="P", email="p@x.io", is_primary=True
                )
            )
        moving = contacts_stub.CreateContact(
            pb.CreateContactRequest(company_id=a["id"], first_name=f"M{round_}", email="m@x.io")
        )
        replies = in_threads(
            2,
            lambda update: contacts_stub.UpdateContact(update, metadata=md),
            [
                pb.UpdateContactRequest(contact_id=moving.id, company_id=b["id"]),
                pb.UpdateContactRequest(contact_id=moving.id, is_primary=True),
            ],
        )
        assert [r.id for r in replies] == [moving.id, moving.id]  # both succeeded
        # A may be left without a primary (its primary moved away); never two.
        for company in (a, b):
            path = f"/contacts?company_id={company['id']}&limit=1000"
            assert sum(c["is_primary"] for c in body(rest.get(path, token=owner))) <= 1
        final = contacts_stub.GetContact(pb.GetContactRequest(contact_id=moving.id))
        assert final.company_id == b["id"] and final.is_primary


def test_a_database_made_before_migrations_is_adopted(blank_url: str) -> None:
    db = open_database(blank_url, max_connections=1)
    with db.connection_context(), db.bind_ctx([Company, Contact]):
        db.create_tables([Company, Contact])  # how the first builds made the schema
        p = db.param
        db.execute_sql(
            "INSERT INTO contacts (id, first_name, email, is_primary, created_at, updated_at)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
            (
                uuid.uuid4().hex,
                "Old",
                "old@x.io",
                False,
                datetime(2024, 1, 1),
                datetime(2024, 1, 1),
            ),
        )
        assert migrations.migrate(db) == list(range(1, migrations.LATEST + 1))
        assert rows(db, "SELECT first_name FROM contacts") == [("Old",)]
    db.close()


def test_a_move_rechecks_the_company_in_its_own_statement(store: Store) -> None:
    def company(owner: str) -> uuid.UUID:
        return uuid.UUID(store.create_company("Co", owner_id=owner).id)

    a, b, c = company("alice"), company("alice"), company("carol")
    primary_of_b = store.create_contact({"first_name": "P", "email": "p@x.io", "company": b})
    store.update_contact(uuid.UUID(primary_of_b.id), {"is_primary": True})
    moving = uuid.UUID(
        store.create_contact({"first_name": "M", "email": "m@x.io", "company": a}).id
    )
    # Alice was allowed to move it while it was in A; it went to Carol's C since.
    store.update_contact(moving, {"company": c})
    assert store.move_contact(moving, {"company": b, "is_primary": True}, a) is None
    after = store.find_contact(moving)
    assert after is not None and after.company_id == str(c)
    still = store.find_contact(uuid.UUID(primary_of_b.id))
    assert still is not None and still.is_primary  # the demotion was rolled back
    # Where it is now, the move goes through.
    moved = store.move_contact(moving, {"company": b}, c)
    assert moved is not None and moved.company_id == str(b)


def test_a_broken_schema_is_a_500_with_its_cause_logged_not_try_again(
    blank_url: str, tmp_path: Path
) -> None:
    env = {
        "CONTACTS_DATABASE_URL": blank_url,
        "CONTACTS_JWT_SECRET": secrets.token_urlsafe(48),
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
    }
    server = Server(env, tmp_path)
    try:
        db = open_database(blank_url, max_connections=1)
        with db.connection_context():
            db.execute_sql("DROP TABLE contacts")
        db.close()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            for call, request in (
                (stub.GetContact, pb.GetContactRequest(contact_id=str(uuid.uuid4()))),
                (stub.CreateContact, pb.CreateContactRequest(first_name="B", email="b@x.io")),
            ):
                with pytest.raises(grpc.RpcError) as failed:
                    call(request, timeout=10)
                assert failed.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    finally:
        server.stop()
    log = server.log.read_text()
    assert "no such table: contacts" in log or 'relation "contacts" does not exist' in log


def test_the_raw_reads_return_the_models_columns_in_order() -> None:
    """The rows the hot reads build are the models' columns, declared once (models.py)."""
    from server.data.models import FOLDED
    from server.data.queries import CompanyRow, ContactRow

    for row, model in ((ContactRow, Contact), (CompanyRow, Company)):
        columns = [
            field.column_name
            for field in model._meta.sorted_fields  # type: ignore[attr-defined]
            if field.name not in FOLDED.values()  # written for search, never read back
        ]
        assert list(row._fields) == columns
