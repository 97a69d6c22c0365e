"""Other services' door: the generated stubs, grpcurl, health and reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.rpc.app import App
from tests.conftest import bearer
from tests.harness import Envoy

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_create_get_update_list_delete(
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub,
    companies_stub: contacts_pb2_grpc.CompaniesServiceStub,
    user: tuple[str, str],
) -> None:
    md = bearer(user[1])
    company = companies_stub.CreateCompany(pb.CreateCompanyRequest(name="Acme"), metadata=md)
    assert company.owner_id == user[0]
    created = contacts_stub.CreateContact(
        pb.CreateContactRequest(company_id=company.id, first_name="John", email="j@acme.com")
    )
    assert created.HasField("company_id") and not created.HasField("phone")
    assert created.created_at.nanos == 0
    assert contacts_stub.GetContact(pb.GetContactRequest(contact_id=created.id)) == created
    updated = contacts_stub.UpdateContact(
        pb.UpdateContactRequest(contact_id=created.id, phone="+1 555 0100")
    )
    assert updated.phone == "+1 555 0100" and updated.first_name == "John"
    listed = contacts_stub.ListContacts(pb.ListContactsRequest(company_id=company.id), metadata=md)
    assert list(listed.contacts) == [updated]
    contacts_stub.DeleteContact(pb.DeleteContactRequest(contact_id=created.id), metadata=md)
    assert (
        code_of(lambda: contacts_stub.GetContact(pb.GetContactRequest(contact_id=created.id)))
        == grpc.StatusCode.NOT_FOUND
    )


def test_status_codes(contacts_stub: contacts_pb2_grpc.ContactsServiceStub) -> None:
    get = contacts_stub.GetContact
    assert code_of(lambda: get(pb.GetContactRequest(contact_id=str(uuid.uuid4())))) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert code_of(lambda: get(pb.GetContactRequest(contact_id="x"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    create = contacts_stub.CreateContact
    assert code_of(lambda: create(pb.CreateContactRequest(first_name="A"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(
            lambda: create(
                pb.CreateContactRequest(
                    first_name="A", email="a@b.co", company_id=str(uuid.uuid4())
                )
            )
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_error_details_name_the_field(contacts_stub: contacts_pb2_grpc.ContactsServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        contacts_stub.CreateContact(pb.CreateContactRequest(first_name="A", email="nope"))
    assert raised.value.details() == "email: must be a valid email address"  # type: ignore[attr-defined]


def test_health_reports_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "contacts.v1.ContactsService", "contacts.v1.CompaniesService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_native_grpc_through_envoy_keeps_its_status_codes(envoy: Envoy) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{envoy.port}") as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        created = stub.CreateContact(pb.CreateContactRequest(first_name="E", email="e@x.io"))
        assert stub.GetContact(pb.GetContactRequest(contact_id=created.id)) == created
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4())))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert raised.value.details() == "Contact not found"  # type: ignore[attr-defined]


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_grpcurl_lists_services_through_reflection(app: App) -> None:
    assert shutil.which(GRPCURL) or Path(GRPCURL).exists()
    listed = grpcurl(f"127.0.0.1:{app.port}", "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "contacts.v1.ContactsService",
        "contacts.v1.CompaniesService",
        "grpc.health.v1.Health",
    } <= services


def test_grpcurl_calls_get_contact(
    app: App, contacts_stub: contacts_pb2_grpc.ContactsServiceStub
) -> None:
    created = contacts_stub.CreateContact(
        pb.CreateContactRequest(first_name="Gina", email="gina@x.io", is_primary=False)
    )
    call = grpcurl(
        "-d",
        json.dumps({"contact_id": created.id}),
        f"127.0.0.1:{app.port}",
        "contacts.v1.ContactsService/GetContact",
    )
    assert call.returncode == 0, call.stderr
    got = json.loads(call.stdout)
    assert got == json_format.MessageToDict(created, preserving_proto_field_name=True)
    missing = grpcurl(
        "-d",
        json.dumps({"contact_id": str(uuid.uuid4())}),
        f"127.0.0.1:{app.port}",
        "contacts.v1.ContactsService/GetContact",
    )
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr and "Contact not found" in missing.stderr
