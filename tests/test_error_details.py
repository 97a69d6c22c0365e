"""google.rpc error details (AIP-193) for gRPC clients, through both gRPC doors;
REST clients keep the bare {"detail"} body."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.rpc.app import App
from tests.conftest import Rest, body
from tests.harness import Envoy


@pytest.fixture(scope="module", params=["direct", "through-envoy"])
def stub(
    request: pytest.FixtureRequest, app: App, envoy: Envoy
) -> Iterator[contacts_pb2_grpc.ContactsServiceStub]:
    port = app.port if request.param == "direct" else int(envoy.url.rsplit(":", 1)[1])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield contacts_pb2_grpc.ContactsServiceStub(channel)


def status_of(call: object) -> status_pb2.Status:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    status = rpc_status.from_call(raised.value)  # type: ignore[arg-type]
    assert status is not None, "no grpc-status-details-bin"
    return status


def detail(status: status_pb2.Status, kind: type[Message]) -> Message:
    for packed in status.details:
        found = kind()
        if packed.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in {status}")


def test_every_error_carries_error_info(stub: contacts_pb2_grpc.ContactsServiceStub) -> None:
    status = status_of(lambda: stub.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4()))))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == "Contact not found"
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("CONTACT_NOT_FOUND", "contacts.v1")  # type: ignore[attr-defined]

    status = status_of(lambda: stub.DeleteContact(pb.DeleteContactRequest(contact_id="x")))
    assert detail(status, error_details_pb2.ErrorInfo).reason == "NOT_AUTHENTICATED"  # type: ignore[attr-defined]


def test_invalid_input_names_every_bad_field(stub: contacts_pb2_grpc.ContactsServiceStub) -> None:
    request = pb.CreateContactRequest(first_name=" ", email="nope", phone="x" * 51)
    status = status_of(lambda: stub.CreateContact(request))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "first_name: is required"
    bad = detail(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [  # type: ignore[attr-defined]
        ("first_name", "is required"),
        ("email", "must be a valid email address"),
        ("phone", "must be at most 50 characters"),
    ]
    assert detail(status, error_details_pb2.ErrorInfo).reason == "INVALID_FIELD"  # type: ignore[attr-defined]


def test_rest_errors_stay_a_bare_detail(rest: Rest) -> None:
    r = rest.post("/contacts", json={"first_name": " ", "email": "nope"})
    assert r.status_code == 400
    assert body(r) == {"detail": "first_name: is required"}
    assert not [name for name in r.headers if name.startswith(("grpc-", "x-contacts-"))]
    r = rest.get(f"/contacts/{uuid.uuid4()}")
    assert (r.status_code, body(r)) == (404, {"detail": "Contact not found"})
    assert not [name for name in r.headers if name.startswith(("grpc-", "x-contacts-"))]


def test_rest_successes_carry_no_internal_headers(rest: Rest) -> None:
    r = rest.post("/contacts", json={"first_name": "A", "email": "a@x.io"})
    assert r.status_code == 201
    assert not [name for name in r.headers if name.startswith(("grpc-", "x-contacts-"))]
