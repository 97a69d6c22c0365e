"""PATCH with null clears a field; gRPC clients clear with an update_mask (AIP-134)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from tests.conftest import Rest, bearer, body

FULL = {"first_name": "N", "last_name": "L", "email": "n@x.io", "phone": "1", "designation": "D"}


def test_null_clears_optional_fields(rest: Rest) -> None:
    contact = body(rest.post("/contacts", json=FULL))
    path = f"/contacts/{contact['id']}"
    r = rest.patch(path, json={"phone": None, "designation": None, "first_name": "M"})
    assert r.status_code == 200
    changed = body(r)
    assert "phone" not in changed and "designation" not in changed
    assert (changed["first_name"], changed["last_name"]) == ("M", "L")
    assert body(rest.get(path)) == changed
    # Absent is not null: nothing else changes.
    assert body(rest.patch(path, json={}))["last_name"] == "L"


def test_null_for_a_required_field_is_400(rest: Rest) -> None:
    contact = body(rest.post("/contacts", json=FULL))
    path = f"/contacts/{contact['id']}"
    for field in ("first_name", "email"):
        r = rest.patch(path, json={field: None, "phone": None})
        assert r.status_code == 400
        assert body(r) == {"detail": f"{field}: must not be null"}
    assert body(rest.get(path)) == contact


def test_clearing_the_company_is_a_move(
    rest: Rest, user: tuple[str, str], company: dict[str, Any]
) -> None:
    contact = body(rest.post("/contacts", json={**FULL, "company_id": company["id"]}))
    path = f"/contacts/{contact['id']}"
    assert rest.patch(path, json={"company_id": None}).status_code == 401
    assert body(rest.get(path))["company_id"] == company["id"]
    r = rest.patch(path, json={"company_id": None}, token=user[1])
    assert r.status_code == 200 and "company_id" not in body(r)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def test_update_masks(contacts_stub: contacts_pb2_grpc.ContactsServiceStub) -> None:
    made = contacts_stub.CreateContact(
        pb.CreateContactRequest(first_name="G", last_name="L", email="g@x.io", phone="1")
    )
    # Only masked fields change; a masked field left unset is cleared.
    changed = contacts_stub.UpdateContact(
        pb.UpdateContactRequest(
            contact_id=made.id,
            first_name="H",
            designation="X",
            update_mask=mask("phone", "first_name"),
        )
    )
    assert changed.first_name == "H" and not changed.HasField("phone")
    assert not changed.HasField("designation") and changed.last_name == "L"
    # Without a mask, set fields change, as before.
    changed = contacts_stub.UpdateContact(pb.UpdateContactRequest(contact_id=made.id, phone="2"))
    assert changed.phone == "2" and changed.last_name == "L"
    for paths, field in ((("email",), "email"), (("nope",), "update_mask")):
        with pytest.raises(grpc.RpcError) as refused:
            contacts_stub.UpdateContact(
                pb.UpdateContactRequest(contact_id=made.id, update_mask=mask(*paths))
            )
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[1].Unpack(bad)
        assert [v.field for v in bad.field_violations] == [field]


def test_masked_company_clear_needs_the_owner(
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub,
    user: tuple[str, str],
    company: dict[str, Any],
) -> None:
    made = contacts_stub.CreateContact(
        pb.CreateContactRequest(company_id=company["id"], first_name="G", email="g@x.io")
    )
    request = pb.UpdateContactRequest(contact_id=made.id, update_mask=mask("company_id"))
    with pytest.raises(grpc.RpcError) as refused:
        contacts_stub.UpdateContact(request)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    changed = contacts_stub.UpdateContact(request, metadata=bearer(user[1]))
    assert not changed.HasField("company_id")
