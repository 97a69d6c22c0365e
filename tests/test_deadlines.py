"""A write whose client has given up (its deadline passed) is rolled back, not committed."""

from __future__ import annotations

from typing import Any

import grpc

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from tests.conftest import Rest, body


def test_creates_with_a_1ns_deadline_create_nothing(
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub,
    rest: Rest,
    user: tuple[str, str],
    company: dict[str, Any],
) -> None:
    request = pb.CreateContactRequest(company_id=company["id"], first_name="D", email="d@x.io")
    calls = [contacts_stub.CreateContact.future(request, timeout=1e-9) for _ in range(100)]
    codes = {call.exception().code() for call in calls}  # type: ignore[union-attr]
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
