"""ETag and If-Match: conditional PATCH and DELETE, through Envoy and over gRPC."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from tests.conftest import Rest, bearer, body, in_threads

NEW = {"first_name": "E", "email": "e@x.io", "phone": "1"}


def created(rest: Rest, **fields: Any) -> tuple[dict[str, Any], str]:
    r = rest.post("/contacts", json={**NEW, **fields})
    assert r.status_code == 201
    return body(r), r.headers["etag"]


def test_every_change_gives_a_new_etag(rest: Rest) -> None:
    contact, tag = created(rest)
    path = f"/contacts/{contact['id']}"
    assert rest.get(path).headers["etag"] == tag
    # Several changes within one second (timestamps have whole seconds).
    seen = {tag}
    for phone in ("2", "3", "4"):
        r = rest.patch(path, json={"phone": phone})
        assert r.status_code == 200
        seen.add(r.headers["etag"])
    assert len(seen) == 4
    assert rest.get(path).headers["etag"] == r.headers["etag"]


def test_stale_if_match_is_412_and_changes_nothing(rest: Rest, user: tuple[str, str]) -> None:
    company = body(rest.post("/companies", token=user[1], json={"name": "E"}))
    contact, stale = created(rest, company_id=company["id"])
    path = f"/contacts/{contact['id']}"
    assert rest.patch(path, json={"is_primary": True}).status_code == 200
    before = rest.get(path)
    for r in (
        rest.patch(path, json={"phone": "9"}, headers={"If-Match": stale}),
        rest.delete(path, token=user[1], headers={"If-Match": stale}),
        rest.patch(path, json={"phone": "9"}, headers={"If-Match": 'W/"1", "x"'}),
    ):
        assert r.status_code == 412
        assert body(r) == {
            "detail": "The contact has changed since its ETag was read: If-Match does not match"
        }
    after = rest.get(path)
    assert (body(after), after.headers["etag"]) == (body(before), before.headers["etag"])
    current = before.headers["etag"]
    r = rest.patch(path, json={"phone": "9"}, headers={"If-Match": f'"0", {current}'})
    assert r.status_code == 200 and body(r)["phone"] == "9"
    r = rest.delete(path, token=user[1], headers={"If-Match": r.headers["etag"]})
    assert r.status_code == 204


def test_two_writers_with_one_etag_exactly_one_wins(rest: Rest) -> None:
    contact, tag = created(rest)
    path = f"/contacts/{contact['id']}"
    replies = in_threads(
        8,
        lambda phone: rest.patch(path, json={"phone": phone}, headers={"If-Match": tag}),
        [f"p{n}" for n in range(8)],
    )
    codes = sorted(r.status_code for r in replies)
    assert codes == [200] + [412] * 7
    (winner,) = [r for r in replies if r.status_code == 200]
    assert body(rest.get(path))["phone"] == body(winner)["phone"]


def test_grpc_etag_and_if_match(contacts_stub: contacts_pb2_grpc.ContactsServiceStub) -> None:
    contact, call = contacts_stub.CreateContact.with_call(
        pb.CreateContactRequest(first_name="G", email="g@x.io")
    )
    tag = dict(call.trailing_metadata())["etag"]
    _, call = contacts_stub.GetContact.with_call(pb.GetContactRequest(contact_id=contact.id))
    assert dict(call.trailing_metadata())["etag"] == tag
    change = pb.UpdateContactRequest(contact_id=contact.id, phone="1")
    _, call = contacts_stub.UpdateContact.with_call(change, metadata=(("if-match", tag),))
    assert dict(call.trailing_metadata())["etag"] != tag
    with pytest.raises(grpc.RpcError) as refused:
        contacts_stub.UpdateContact(change, metadata=(("if-match", tag),))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "ETAG_MISMATCH"
    with pytest.raises(grpc.RpcError) as refused:
        contacts_stub.DeleteContact(
            pb.DeleteContactRequest(contact_id=contact.id),
            metadata=(*bearer("x"), ("if-match", tag)),
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
