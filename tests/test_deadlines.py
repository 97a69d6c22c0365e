"""A write whose client has given up (its deadline passed) is rolled back, not committed."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from tests.conftest import Rest, body


@contextlib.contextmanager
def writes_held(database_url: str) -> Iterator[None]:
    """Holds the contacts table's write lock (from a connection of its own) for the
    block, so that the creates sent meanwhile wait until their deadlines pass."""
    if database_url.startswith("sqlite:"):
        holder: Any = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=0)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg2.connect(database_url)
        holder.cursor().execute("LOCK TABLE contacts IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


def test_creates_whose_deadline_passes_before_they_commit_create_nothing(
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub,
    rest: Rest,
    settings: Any,
    user: tuple[str, str],
    company: dict[str, Any],
) -> None:
    """A client that has given up has been told DEADLINE_EXCEEDED: what it asked for
    must not happen behind its back. (A 1 ns deadline did not test this: a client
    that sends a call already past its deadline may still get the answer, when the
    server is faster than its own timer.)"""
    request = pb.CreateContactRequest(company_id=company["id"], first_name="D", email="d@x.io")
    with writes_held(settings.database_url):
        calls = [contacts_stub.CreateContact.future(request, timeout=0.3) for _ in range(100)]
        codes = {call.exception().code() for call in calls}  # type: ignore[union-attr]
        time.sleep(0.2)  # the creates wait on, past their deadlines, for the lock
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
    # Writes queue on the writer thread(s): this one waits for those before it.
    assert contacts_stub.CreateContact(request, timeout=30).first_name == "D"
    listed = body(rest.get(f"/contacts?company_id={company['id']}", token=user[1]))
    assert len(listed) == 1


def test_a_deadline_long_enough_still_commits(
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub,
) -> None:
    made = contacts_stub.CreateContact(
        pb.CreateContactRequest(first_name="D", email="d@x.io"), timeout=30
    )
    changed = contacts_stub.UpdateContact(
        pb.UpdateContactRequest(contact_id=made.id, phone="1"), timeout=30
    )
    assert changed.phone == "1"
