"""The auth matrix: every endpoint by every kind of caller, through Envoy and over gRPC."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import jwt
import pytest

from contacts.options.v1 import options_pb2
from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.auth import tokens as auth
from server.auth.tokens import LEEWAY_SECONDS, Caller, Tokens
from server.contract import Access, Contract
from server.errors import InvalidToken
from tests.conftest import Rest, bearer, body

NOT_OWNER = "Not enough permissions to access this company\u2019s contacts"


def bad_tokens(secret: str) -> dict[str, str]:
    """Authorization header values the service must refuse, by kind."""
    later = int(time.time()) + 600
    return {
        "garbage": "Bearer not.a.jwt",
        "alg none": "Bearer " + jwt.encode({"sub": "mallory", "exp": later}, "", algorithm="none"),
        "bad signature": "Bearer "
        + jwt.encode({"sub": "alice", "exp": later}, "x" * 48, algorithm="HS256"),
        "other algorithm": "Bearer "
        + jwt.encode({"sub": "alice", "exp": later}, secret, algorithm="HS512"),
        "no exp": "Bearer " + jwt.encode({"sub": "alice"}, secret, algorithm="HS256"),
        "expired": "Bearer "
        + jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, secret, algorithm="HS256"),
        "no sub": "Bearer " + jwt.encode({"exp": later}, secret, algorithm="HS256"),
        "sub not a string": "Bearer "
        + jwt.encode({"sub": 42, "exp": later}, secret, algorithm="HS256"),
        "no Bearer": jwt.encode({"sub": "alice", "exp": later}, secret, algorithm="HS256"),
        "two tokens": "Bearer "
        + " ".join([jwt.encode({"sub": "alice", "exp": later}, secret, algorithm="HS256")] * 2),
        "empty": "Bearer ",
    }


@dataclass
class World:
    """An owner with a company and a contact, and the tokens of everyone else."""

    owner: str
    other: str
    superuser: str
    company_id: str
    contact_id: str


@pytest.fixture
def world(rest: Rest, tokens: Tokens) -> World:
    owner = tokens.issue(f"owner-{uuid.uuid4().hex[:8]}")
    company = body(rest.post("/companies", token=owner, json={"name": "Acme"}))
    contact = body(
        rest.post(
            "/contacts",
            json={"company_id": company["id"], "first_name": "J", "email": "j@acme.com"},
        )
    )
    return World(
        owner=owner,
        other=tokens.issue(f"other-{uuid.uuid4().hex[:8]}"),
        superuser=tokens.issue("root", superuser=True),
        company_id=company["id"],
        contact_id=contact["id"],
    )


# endpoint -> (method, path template, json body, codes for: none, owner, other, superuser)
MATRIX: dict[str, tuple[str, str, dict[str, Any] | None, tuple[int, int, int, int]]] = {
    "ListContacts": ("GET", "/contacts?company_id={company}", None, (401, 200, 403, 200)),
    "GetContact": ("GET", "/contacts/{contact}", None, (200, 200, 200, 200)),
    "CreateContact": (
        "POST",
        "/contacts",
        {"first_name": "A", "email": "a@b.co"},
        (201, 201, 201, 201),
    ),
    "UpdateContact": ("PATCH", "/contacts/{contact}", {"designation": "CEO"}, (200, 200, 200, 200)),
    "DeleteContact": ("DELETE", "/contacts/{contact}", None, (401, 204, 403, 204)),
    "CreateCompany": ("POST", "/companies", {"name": "Initech"}, (401, 201, 201, 201)),
    "GetCompany": ("GET", "/companies/{company}", None, (401, 200, 403, 200)),
    "ListCompanies": ("GET", "/companies", None, (401, 200, 200, 200)),
}
CALLERS = ("none", "owner", "other", "superuser")


def rest_call(rest: Rest, w: World, endpoint: str, authorization: str | None) -> Any:
    method, template, payload, _ = MATRIX[endpoint]
    path = template.format(company=w.company_id, contact=w.contact_id)
    headers = {"Authorization": authorization} if authorization is not None else {}
    return rest.request(method, path, json=payload, headers=headers)


@pytest.mark.parametrize("endpoint", MATRIX)
@pytest.mark.parametrize("who", CALLERS)
def test_rest_matrix(rest: Rest, world: World, endpoint: str, who: str) -> None:
    token = {
        "none": None,
        "owner": world.owner,
        "other": world.other,
        "superuser": world.superuser,
    }[who]
    expected = MATRIX[endpoint][3][CALLERS.index(who)]
    r = rest_call(rest, world, endpoint, f"Bearer {token}" if token else None)
    assert r.status_code == expected, r.text
    if expected == 401:
        assert body(r) == {"detail": "Not authenticated"}
        assert r.headers["www-authenticate"] == "Bearer"
    if expected == 403:
        assert body(r)["detail"].startswith("Not enough permissions")
    if endpoint == "ListContacts" and expected == 403:
        assert body(r) == {"detail": NOT_OWNER}


@pytest.mark.parametrize("endpoint", MATRIX)
def test_every_bad_token_is_401_on_every_endpoint(
    rest: Rest, world: World, settings: Any, endpoint: str
) -> None:
    for kind, authorization in bad_tokens(settings.jwt_secret).items():
        r = rest_call(rest, world, endpoint, authorization)
        assert r.status_code == 401, (kind, r.text)
        assert body(r) == {"detail": "Could not validate credentials"}, kind
        assert r.headers["www-authenticate"].startswith("Bearer"), kind


def test_refused_calls_write_nothing(rest: Rest, world: World, settings: Any) -> None:
    before = body(rest.get(f"/contacts/{world.contact_id}"))
    for authorization in bad_tokens(settings.jwt_secret).values():
        rest_call(rest, world, "UpdateContact", authorization)
        rest_call(rest, world, "DeleteContact", authorization)
    rest_call(rest, world, "DeleteContact", f"Bearer {world.other}")
    assert body(rest.get(f"/contacts/{world.contact_id}")) == before


def test_unknown_company_is_403_for_users_so_ids_cannot_be_probed(rest: Rest, world: World) -> None:
    missing = uuid.uuid4()
    r = rest.get(f"/contacts?company_id={missing}", token=world.owner)
    assert r.status_code == 403
    assert body(r) == {"detail": NOT_OWNER}
    assert rest.get(f"/companies/{missing}", token=world.owner).status_code == 403
    assert rest.get(f"/contacts?company_id={missing}", token=world.superuser).json() == []
    r = rest.get(f"/companies/{missing}", token=world.superuser)
    assert r.status_code == 404
    assert body(r) == {"detail": "Company not found"}


def test_contact_without_company_is_deleted_by_superusers_only(rest: Rest, world: World) -> None:
    orphan = body(rest.post("/contacts", json={"first_name": "O", "email": "o@x.io"}))
    r = rest.delete(f"/contacts/{orphan['id']}", token=world.owner)
    assert r.status_code == 403
    assert rest.get(f"/contacts/{orphan['id']}").status_code == 200
    assert rest.delete(f"/contacts/{orphan['id']}", token=world.superuser).status_code == 204


def test_users_list_only_their_own_companies(rest: Rest, world: World, tokens: Tokens) -> None:
    mine = body(rest.get("/companies", token=world.owner))
    assert [c["id"] for c in mine] == [world.company_id]
    assert body(rest.get("/companies", token=world.other)) == []
    everything = body(rest.get("/companies?limit=1000", token=world.superuser))
    assert world.company_id in {c["id"] for c in everything}


def test_company_owner_is_the_token_subject(rest: Rest, tokens: Tokens) -> None:
    r = rest.post("/companies", token=tokens.issue("carol"), json={"name": "Carol Inc"})
    assert r.status_code == 201
    assert body(r)["owner_id"] == "carol"
    assert set(body(r)) == {"id", "name", "owner_id", "created_at", "updated_at"}


# gRPC: the same rules, as status codes.

GRPC_CODES = {
    200: grpc.StatusCode.OK,
    201: grpc.StatusCode.OK,
    204: grpc.StatusCode.OK,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
}


def grpc_call(channel: grpc.Channel, w: World, endpoint: str) -> Callable[..., Any]:
    contacts = contacts_pb2_grpc.ContactsServiceStub(channel)
    companies = contacts_pb2_grpc.CompaniesServiceStub(channel)
    requests: dict[str, Callable[..., Any]] = {
        "ListContacts": lambda md: contacts.ListContacts(
            pb.ListContactsRequest(company_id=w.company_id), metadata=md
        ),
        "GetContact": lambda md: contacts.GetContact(
            pb.GetContactRequest(contact_id=w.contact_id), metadata=md
        ),
        "CreateContact": lambda md: contacts.CreateContact(
            pb.CreateContactRequest(first_name="A", email="a@b.co"), metadata=md
        ),
        "UpdateContact": lambda md: contacts.UpdateContact(
            pb.UpdateContactRequest(contact_id=w.contact_id, designation="CEO"), metadata=md
        ),
        "DeleteContact": lambda md: contacts.DeleteContact(
            pb.DeleteContactRequest(contact_id=w.contact_id), metadata=md
        ),
        "CreateCompany": lambda md: companies.CreateCompany(
            pb.CreateCompanyRequest(name="Initech"), metadata=md
        ),
        "GetCompany": lambda md: companies.GetCompany(
            pb.GetCompanyRequest(company_id=w.company_id), metadata=md
        ),
        "ListCompanies": lambda md: companies.ListCompanies(pb.ListCompaniesRequest(), metadata=md),
    }
    return requests[endpoint]


def grpc_code(call: Callable[..., Any], metadata: Any) -> grpc.StatusCode:
    try:
        call(metadata)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("endpoint", MATRIX)
@pytest.mark.parametrize("who", CALLERS)
def test_grpc_matrix(channel: grpc.Channel, world: World, endpoint: str, who: str) -> None:
    token = getattr(world, who) if who != "none" else None
    expected = GRPC_CODES[MATRIX[endpoint][3][CALLERS.index(who)]]
    call = grpc_call(channel, world, endpoint)
    assert grpc_code(call, bearer(token) if token else ()) == expected


@pytest.mark.parametrize("endpoint", MATRIX)
def test_grpc_refuses_every_bad_token(
    channel: grpc.Channel, world: World, settings: Any, endpoint: str
) -> None:
    call = grpc_call(channel, world, endpoint)
    for kind, authorization in bad_tokens(settings.jwt_secret).items():
        code = grpc_code(call, (("authorization", authorization),))
        assert code == grpc.StatusCode.UNAUTHENTICATED, kind


def test_every_rpc_of_ours_declares_its_access() -> None:
    contract = Contract()
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert method.GetOptions().HasExtension(options_pb2.policy), method.full_name
    assert contract.rule("/contacts.v1.ContactsService/GetContact").access is Access.PUBLIC
    assert contract.rule("/contacts.v1.ContactsService/DeleteContact").access is Access.REQUIRED


def test_an_rpc_without_the_option_fails_closed() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool

    proto = descriptor_pb2.FileDescriptorProto(name="probe.proto", package="probe.v1")
    proto.message_type.add(name="Empty")
    service = proto.service.add(name="ProbeService")
    service.method.add(
        name="Undeclared", input_type=".probe.v1.Empty", output_type=".probe.v1.Empty"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    file = pool.FindFileByName("probe.proto")
    contract = Contract(files=(file,))
    assert contract.rule("/probe.v1.ProbeService/Undeclared").access is Access.REQUIRED
    # and an RPC of a service the contract does not know at all:
    assert contract.rule("/elsewhere.Unknown/Method").access is Access.REQUIRED
    assert contract.rule("/grpc.health.v1.Health/Check").access is Access.PUBLIC


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = Tokens("s" * 32)
    token = tokens.issue("dora", lifetime=60)
    assert tokens.verify(f"Bearer {token}") == Caller("dora")
    assert tokens.verify(f"Bearer {token}") == Caller("dora")  # from memory
    later = time.time() + 60 + LEEWAY_SECONDS + 1
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: later))
    with pytest.raises(InvalidToken):
        tokens.verify(f"Bearer {token}")
