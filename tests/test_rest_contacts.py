"""The seed's contact endpoints through Envoy: shapes, codes and texts, byte for byte."""

from __future__ import annotations

import re
import uuid
from typing import Any

from server.auth.tokens import Tokens
from tests.conftest import Rest, body

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SEED_FIELDS = {
    "id",
    "company_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "designation",
    "is_primary",
    "created_at",
    "updated_at",
}
JOHN = {
    "first_name": "John",
    "last_name": "Doe",
    "email": "john@acme.com",
    "phone": "+91-9876543210",
    "designation": "Sales Manager",
    "is_primary": False,
}


def create(rest: Rest, **fields: Any) -> dict[str, Any]:
    r = rest.post("/contacts", json=fields)
    assert r.status_code == 201, r.text
    return dict(body(r))


def test_create_answers_201_with_the_seed_shape(rest: Rest, company: dict[str, Any]) -> None:
    r = rest.post("/contacts", json={"company_id": company["id"], **JOHN})
    assert r.status_code == 201
    contact = body(r)
    assert set(contact) == SEED_FIELDS
    assert uuid.UUID(contact["id"]).version == 7
    assert contact["company_id"] == company["id"]
    assert {k: contact[k] for k in JOHN} == JOHN
    assert contact["is_primary"] is False  # false is printed, not left out
    assert TIMESTAMP.fullmatch(contact["created_at"])
    assert contact["updated_at"] == contact["created_at"]


def test_unset_optional_fields_are_left_out(rest: Rest) -> None:
    contact = create(rest, first_name="Ann", email="ann@example.com")
    assert set(contact) == SEED_FIELDS - {"company_id", "last_name", "phone", "designation"}
    assert contact["is_primary"] is False


def test_empty_strings_are_printed(rest: Rest) -> None:
    contact = create(rest, first_name="Ann", email="ann@example.com", phone="", last_name="")
    assert contact["phone"] == ""
    assert contact["last_name"] == ""


def test_get_returns_what_create_returned(rest: Rest, company: dict[str, Any]) -> None:
    created = create(rest, company_id=company["id"], **JOHN)
    r = rest.get(f"/contacts/{created['id']}")
    assert r.status_code == 200
    assert body(r) == created


def test_get_unknown_contact_is_404(rest: Rest) -> None:
    r = rest.get(f"/contacts/{uuid.uuid4()}")
    assert r.status_code == 404
    assert body(r) == {"detail": "Contact not found"}
    assert r.content == b'{"detail":"Contact not found"}'


def test_create_with_unknown_company_is_400(rest: Rest) -> None:
    r = rest.post("/contacts", json={"company_id": str(uuid.uuid4()), **JOHN})
    assert r.status_code == 400
    assert body(r) == {"detail": "Company not found"}


def test_patch_changes_only_the_fields_sent(rest: Rest, company: dict[str, Any]) -> None:
    created = create(rest, company_id=company["id"], **JOHN)
    r = rest.patch(
        f"/contacts/{created['id']}", json={"designation": "Head of Sales", "is_primary": True}
    )
    assert r.status_code == 200
    updated = body(r)
    assert updated == {
        **created,
        "designation": "Head of Sales",
        "is_primary": True,
        "updated_at": updated["updated_at"],
    }
    assert updated["updated_at"] >= created["updated_at"]
    assert body(rest.get(f"/contacts/{created['id']}")) == updated


def test_patch_with_empty_body_changes_nothing(rest: Rest) -> None:
    created = create(rest, **JOHN)
    r = rest.patch(f"/contacts/{created['id']}", json={})
    assert r.status_code == 200
    assert {k: v for k, v in body(r).items() if k != "updated_at"} == {
        k: v for k, v in created.items() if k != "updated_at"
    }


def test_moving_a_contact_takes_owning_both_companies(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], tokens: Tokens
) -> None:
    other = body(rest.post("/companies", token=user[1], json={"name": "Other"}))
    created = create(rest, company_id=company["id"], **JOHN)
    move = {"company_id": other["id"]}
    path = f"/contacts/{created['id']}"
    assert rest.patch(path, json=move).status_code == 401
    stranger = tokens.issue(f"stranger-{uuid.uuid4()}")
    assert rest.patch(path, token=stranger, json=move).status_code == 403
    strangers_company = body(rest.post("/companies", token=stranger, json={"name": "S"}))
    r = rest.patch(path, token=user[1], json={"company_id": strangers_company["id"]})
    assert r.status_code == 403
    assert body(rest.get(path))["company_id"] == company["id"]
    r = rest.patch(path, token=user[1], json=move)
    assert r.status_code == 200
    assert body(r)["company_id"] == other["id"]


def test_a_contact_without_company_is_moved_by_superusers_only(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], superuser_token: str
) -> None:
    orphan = create(rest, **JOHN)
    path = f"/contacts/{orphan['id']}"
    assert rest.patch(path, token=user[1], json={"company_id": company["id"]}).status_code == 403
    r = rest.patch(path, token=superuser_token, json={"company_id": company["id"]})
    assert r.status_code == 200


def test_patch_unknown_contact_is_404(rest: Rest) -> None:
    r = rest.patch(f"/contacts/{uuid.uuid4()}", json={"designation": "CEO"})
    assert r.status_code == 404
    assert body(r) == {"detail": "Contact not found"}


def test_patch_to_unknown_company_changes_nothing(
    rest: Rest, superuser_token: str, user: tuple[str, str], company: dict[str, Any]
) -> None:
    created = create(rest, company_id=company["id"], **JOHN)
    move = {"company_id": str(uuid.uuid4()), "first_name": "X"}
    # An owner cannot probe for company ids: 403, as for a foreign company.
    assert rest.patch(f"/contacts/{created['id']}", token=user[1], json=move).status_code == 403
    r = rest.patch(f"/contacts/{created['id']}", token=superuser_token, json=move)
    assert r.status_code == 400
    assert body(r) == {"detail": "Company not found"}
    assert body(rest.get(f"/contacts/{created['id']}")) == created


def test_delete_answers_204_with_no_body(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    created = create(rest, company_id=company["id"], **JOHN)
    r = rest.delete(f"/contacts/{created['id']}", token=user[1])
    assert r.status_code == 204
    assert r.content == b""
    assert "content-type" not in r.headers
    assert rest.get(f"/contacts/{created['id']}").status_code == 404
    # The kept-alive connection still answers correctly after a 204.
    assert rest.get(f"/contacts/{uuid.uuid4()}").status_code == 404


def test_delete_unknown_contact_is_404(rest: Rest, user: tuple[str, str]) -> None:
    r = rest.delete(f"/contacts/{uuid.uuid4()}", token=user[1])
    assert r.status_code == 404
    assert body(r) == {"detail": "Contact not found"}


def test_list_is_a_bare_array_in_creation_order(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    made = [
        create(rest, company_id=company["id"], first_name=f"P{i}", email=f"p{i}@x.io")
        for i in range(5)
    ]
    r = rest.get(f"/contacts?company_id={company['id']}", token=user[1])
    assert r.status_code == 200
    assert r.content.startswith(b"[") and r.content.endswith(b"]")
    listed = body(r)
    assert listed == made
    assert listed == sorted(listed, key=lambda c: (c["created_at"], c["id"]))


def test_list_of_a_company_without_contacts_is_an_empty_array(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    r = rest.get(f"/contacts?company_id={company['id']}", token=user[1])
    assert r.status_code == 200
    assert r.content == b"[]"


def test_list_pages_with_skip_and_limit(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    made = [
        create(rest, company_id=company["id"], first_name=f"P{i}", email=f"p{i}@x.io")
        for i in range(7)
    ]
    path = f"/contacts?company_id={company['id']}"
    assert body(rest.get(f"{path}&skip=2&limit=3", token=user[1])) == made[2:5]
    assert body(rest.get(f"{path}&skip=5", token=user[1])) == made[5:]
    assert body(rest.get(f"{path}&skip=50", token=user[1])) == []
    assert body(rest.get(f"{path}&limit=0", token=user[1])) == made  # 0 means 100
    assert body(rest.get(f"{path}&limit=1000", token=user[1])) == made


def test_list_default_limit_is_100(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    for i in range(101):
        create(rest, company_id=company["id"], first_name=f"P{i}", email=f"p{i}@x.io")
    listed = body(rest.get(f"/contacts?company_id={company['id']}", token=user[1]))
    assert len(listed) == 100
    assert listed[0]["first_name"] == "P0"


def test_list_ignores_unknown_query_parameters(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    r = rest.get(f"/contacts?company_id={company['id']}&sort=desc", token=user[1])
    assert r.status_code == 200
    assert body(r) == []


def test_a_new_primary_demotes_the_previous_one(rest: Rest, company: dict[str, Any]) -> None:
    first = create(rest, company_id=company["id"], **{**JOHN, "is_primary": True})
    second = create(rest, company_id=company["id"], **{**JOHN, "is_primary": True})
    assert body(rest.get(f"/contacts/{first['id']}"))["is_primary"] is False
    assert body(rest.get(f"/contacts/{second['id']}"))["is_primary"] is True
    rest.patch(f"/contacts/{first['id']}", json={"is_primary": True})
    assert body(rest.get(f"/contacts/{first['id']}"))["is_primary"] is True
    assert body(rest.get(f"/contacts/{second['id']}"))["is_primary"] is False


def test_unmapped_paths_and_methods_are_404(rest: Rest) -> None:
    for method, path in [
        ("POST", "/"),
        ("GET", "/nope"),
        ("PUT", "/contacts"),
        ("PUT", f"/contacts/{uuid.uuid4()}"),
        ("POST", f"/contacts/{uuid.uuid4()}"),
        ("DELETE", "/contacts"),
        ("GET", "/contacts.v1.ContactsService/GetContact"),
    ]:
        r = rest.request(method, path)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert body(r) == {"detail": "Not Found"}


def test_rest_replies_carry_no_grpc_headers(rest: Rest) -> None:
    created = create(rest, **JOHN)
    for r in (rest.get(f"/contacts/{created['id']}"), rest.get(f"/contacts/{uuid.uuid4()}")):
        assert not [h for h in r.headers if h.lower().startswith("grpc-")], r.headers
