"""Idempotency-Key on the creates: a retry answers the first response, one row."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.data.models import Contact, IdempotencyKey, now
from server.data.store import Store
from server.settings import Settings
from tests.conftest import Rest, bearer, body, in_threads
from tests.harness import Server


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"k-{uuid.uuid4()}"}


def count(rest: Rest, company: dict[str, Any], token: str) -> int:
    r = rest.get(f"/contacts?company_id={company['id']}", token=token)
    return len(body(r))


def test_a_retried_create_answers_the_first_response(
    rest: Rest, user: tuple[str, str], company: dict[str, Any]
) -> None:
    new = {"company_id": company["id"], "first_name": "I", "email": "i@x.io"}
    headers = key()
    first = rest.post("/contacts", json=new, headers=headers)
    again = rest.post("/contacts", json=new, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert count(rest, company, user[1]) == 1
    # Another key is another request.
    assert body(rest.post("/contacts", json=new, headers=key()))["id"] != body(first)["id"]
    # So is the same key from another client (the key is the client's).
    other = rest.post("/contacts", json=new, headers=headers, token=user[1])
    assert body(other)["id"] != body(first)["id"]
    assert count(rest, company, user[1]) == 3


def test_companies_too(rest: Rest, user: tuple[str, str]) -> None:
    headers = key()
    first = rest.post("/companies", json={"name": "K"}, headers=headers, token=user[1])
    again = rest.post("/companies", json={"name": "K"}, headers=headers, token=user[1])
    assert (first.status_code, again.status_code, again.content) == (201, 201, first.content)
    listed = body(rest.get("/companies", token=user[1]))
    assert [c["id"] for c in listed] == [body(first)["id"]]


def test_same_key_other_request_is_422(rest: Rest) -> None:
    headers = key()
    assert rest.post("/contacts", json={"first_name": "A", "email": "a@x.io"}, headers=headers)
    r = rest.post("/contacts", json={"first_name": "B", "email": "a@x.io"}, headers=headers)
    assert r.status_code == 422
    assert body(r) == {"detail": "Idempotency-Key was already used with a different request"}


def test_bad_keys_are_400(rest: Rest) -> None:
    new = {"first_name": "A", "email": "a@x.io"}
    for sent in ("", "k" * 256):
        r = rest.post("/contacts", json=new, headers={"Idempotency-Key": sent})
        assert r.status_code == 400
        assert body(r)["detail"].startswith("Idempotency-Key: ")
    assert rest.post("/contacts", json=new, headers={"Idempotency-Key": "k" * 255}).ok


def test_a_refused_first_request_stores_nothing(rest: Rest, user: tuple[str, str]) -> None:
    headers = key()
    r = rest.post("/contacts", json={"first_name": "A", "email": "bad"}, headers=headers)
    assert r.status_code == 400
    assert rest.post("/contacts", json={"first_name": "A", "email": "a@x.io"}, headers=headers)
    headers = key()
    foreign = str(uuid.uuid4())
    r = rest.get(f"/contacts?company_id={foreign}", token=user[1])
    assert r.status_code == 403
    r = rest.post("/companies", json={"name": "X"}, headers=headers)
    assert r.status_code == 401
    assert rest.post("/companies", json={"name": "X"}, headers=headers, token=user[1]).ok


def test_grpc_replay_and_reuse(contacts_stub: contacts_pb2_grpc.ContactsServiceStub) -> None:
    md = (("idempotency-key", f"g-{uuid.uuid4()}"),)
    request = pb.CreateContactRequest(first_name="G", email="g@x.io")
    first = contacts_stub.CreateContact(request, metadata=md)
    assert contacts_stub.CreateContact(request, metadata=md) == first
    with pytest.raises(grpc.RpcError) as refused:
        contacts_stub.CreateContact(
            pb.CreateContactRequest(first_name="H", email="g@x.io"), metadata=md
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "IDEMPOTENCY_KEY_REUSED"


def test_concurrent_retries_on_two_workers_make_one_row(
    settings: Settings, tmp_path: Path, user: tuple[str, str], rest: Rest, company: dict[str, Any]
) -> None:
    env = {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": settings.jwt_secret,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
    }
    server = Server(env, tmp_path, workers=2)
    # A channel each, not sharing connections: the kernel spreads them over both workers.
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{server.port}", [("grpc.use_local_subchannel_pool", 1)])
        for _ in range(16)
    ]
    try:
        md = (*bearer(user[1]), ("idempotency-key", f"c-{uuid.uuid4()}"))
        request = pb.CreateContactRequest(company_id=company["id"], first_name="C", email="c@x.io")

        def create(channel: grpc.Channel) -> Any:
            try:
                return contacts_pb2_grpc.ContactsServiceStub(channel).CreateContact(
                    request, metadata=md, timeout=30
                )
            except grpc.RpcError as error:
                return error.code()  # type: ignore[attr-defined]

        results = in_threads(16, create, channels)
        made = {r.id for r in results if isinstance(r, pb.Contact)}
        refused = [r for r in results if not isinstance(r, pb.Contact)]
        assert len(made) == 1
        assert set(refused) <= {grpc.StatusCode.ABORTED}
        assert count(rest, company, user[1]) == 1
        # Once the first is done, every retry gets its response.
        again = create(channels[0])
        assert isinstance(again, pb.Contact) and again.id in made
    finally:
        for channel in channels:
            channel.close()
        server.stop()


def abandon(store: Store, client: str, idempotency_key: str) -> None:
    """As if the key's first call had died before storing its response."""
    with store.connection():
        IdempotencyKey.update(response=None, created_at=now() - timedelta(minutes=10)).where(
            (IdempotencyKey.client == client) & (IdempotencyKey.idempotency_key == idempotency_key)
        ).execute()


def test_a_create_whose_response_was_lost_is_never_made_twice(
    store: Store, contacts_stub: contacts_pb2_grpc.ContactsServiceStub, user: tuple[str, str]
) -> None:
    sub, token = user
    sent = f"k-{uuid.uuid4()}"
    metadata = (*bearer(token), ("idempotency-key", sent))
    request = pb.CreateContactRequest(first_name="Lost", email="lost@x.io")
    first = contacts_stub.CreateContact(request, metadata=metadata)
    abandon(store, f"sub:{sub}", sent)
    # Taken over, the call runs again with the id its claim reserved: the
    # contact exists, so it answers with that contact and makes nothing.
    again = contacts_stub.CreateContact(request, metadata=metadata)
    assert again == first
    assert contacts_stub.CreateContact(request, metadata=metadata) == first  # stored now
    with store.connection():
        made = Contact.select().where(Contact.first_name == "Lost").count()
    assert made == 1


def test_a_create_that_died_before_committing_runs_again_with_its_reserved_id(
    store: Store, contacts_stub: contacts_pb2_grpc.ContactsServiceStub, user: tuple[str, str]
) -> None:
    sub, token = user
    sent = f"k-{uuid.uuid4()}"
    metadata = (*bearer(token), ("idempotency-key", sent))
    request = pb.CreateContactRequest(first_name="Died", email="died@x.io")
    first = contacts_stub.CreateContact(request, metadata=metadata)
    # As if the create had rolled back: the key is claimed, the row is not there.
    with store.connection():
        Contact.delete().where(Contact.id == uuid.UUID(first.id)).execute()
    abandon(store, f"sub:{sub}", sent)
    again = contacts_stub.CreateContact(request, metadata=metadata)
    assert again.id == first.id  # the id the claim reserved
    assert contacts_stub.CreateContact(request, metadata=metadata) == again  # stored now
