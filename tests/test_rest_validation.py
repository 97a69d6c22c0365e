"""Bad input of every kind the seed lets a client send: a 400 naming the field, data untouched."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Rest, body

VALID = {"first_name": "John", "email": "john@acme.com"}


def count(rest: Rest, company: dict[str, Any], token: str) -> int:
    return len(body(rest.get(f"/contacts?company_id={company['id']}&limit=1000", token=token)))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "john@acme.com"}, "first_name"),
        ({"first_name": "", "email": "john@acme.com"}, "first_name"),
        ({"first_name": "   ", "email": "john@acme.com"}, "first_name"),
        ({"first_name": "John"}, "email"),
        ({"first_name": "John", "email": "not-an-email"}, "email"),
        ({"first_name": "John", "email": "a@b"}, "email"),
        ({"first_name": "John", "email": "a b@c.com"}, "email"),
        ({"first_name": "x" * 101, "email": "john@acme.com"}, "first_name"),
        ({**VALID, "last_name": "x" * 101}, "last_name"),
        ({**VALID, "phone": "1" * 51}, "phone"),
        ({**VALID, "designation": "x" * 101}, "designation"),
        ({**VALID, "first_name": "Jo\x00hn"}, "first_name"),
        ({**VALID, "company_id": "not-a-uuid"}, "company_id"),
        ({**VALID, "company_id": ""}, "company_id"),
        ({**VALID, "first_name": 5}, "first_name"),
        ({**VALID, "is_primary": "maybe"}, "is_primary"),
        ({**VALID, "is_primary": 1}, "is_primary"),
        ({**VALID, "email": ["a@b.co"]}, ""),
    ],
)
def test_bad_create_is_400_naming_the_field(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], payload: dict[str, Any], field: str
) -> None:
    before = count(rest, company, user[1])
    payload = {"company_id": company["id"], **payload}
    r = rest.post("/contacts", json=payload)
    assert r.status_code == 400, r.text
    detail = body(r)["detail"]
    assert isinstance(detail, str)
    assert field in detail
    assert count(rest, company, user[1]) == before


@pytest.mark.parametrize(
    "raw", [b'{"first_name":', b"not json", b"[1,2]", b'"a string"', b"{,}", b"\xff\xfe"]
)
def test_malformed_json_is_400(rest: Rest, raw: bytes) -> None:
    r = rest.post("/contacts", data=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert isinstance(body(r)["detail"], str)


def test_messages_say_what_is_wrong(rest: Rest) -> None:
    r = rest.post("/contacts", json={**VALID, "company_id": ""})
    assert body(r) == {"detail": "company_id: must be a UUID"}
    r = rest.post("/contacts", json={"email": "a@b.co"})
    assert body(r) == {"detail": "first_name: is required"}
    r = rest.post("/contacts", json={**VALID, "email": "nope"})
    assert body(r) == {"detail": "email: must be a valid email address"}


def test_unknown_fields_are_ignored(rest: Rest) -> None:
    r = rest.post("/contacts", json={**VALID, "nickname": "Johnny", "id": "forged"})
    assert r.status_code == 201
    contact = body(r)
    assert "nickname" not in contact
    assert contact["id"] != "forged"


def test_null_optional_fields_count_as_unset(rest: Rest) -> None:
    r = rest.post("/contacts", json={**VALID, "phone": None, "company_id": None})
    assert r.status_code == 201
    assert "phone" not in body(r)
    assert "company_id" not in body(r)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"first_name": ""}, "first_name"),
        ({"email": "nope"}, "email"),
        ({"company_id": "nope"}, "company_id"),
        ({"phone": "9" * 51}, "phone"),
        ({"is_primary": "perhaps"}, "is_primary"),
    ],
)
def test_bad_patch_is_400_and_changes_nothing(
    rest: Rest, payload: dict[str, Any], field: str
) -> None:
    created = body(rest.post("/contacts", json={**VALID, "last_name": "Doe"}))
    r = rest.patch(f"/contacts/{created['id']}", json={"last_name": "Changed", **payload})
    assert r.status_code == 400, r.text
    assert field in body(r)["detail"]
    assert body(rest.get(f"/contacts/{created['id']}")) == created


@pytest.mark.parametrize("bad", ["nope", "123", str(uuid.uuid4())[:-1], f"{{{uuid.uuid4()}}}"])
def test_malformed_contact_id_is_400(rest: Rest, user: tuple[str, str], bad: str) -> None:
    for r in (
        rest.get(f"/contacts/{bad}"),
        rest.patch(f"/contacts/{bad}", json={}),
        rest.delete(f"/contacts/{bad}", token=user[1]),
    ):
        assert r.status_code == 400, r.text
        assert body(r) == {"detail": "contact_id: must be a UUID"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "company_id"),
        ("company_id=nope", "company_id"),
        ("company_id={company}&skip=-1", "skip"),
        ("company_id={company}&limit=-1", "limit"),
        ("company_id={company}&limit=1001", "limit"),
        ("company_id={company}&limit=abc", "limit"),
        ("company_id={company}&skip=1.5", "skip"),
        ("company_id={company}&limit=99999999999", "limit"),
    ],
)
def test_bad_list_query_is_400(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], query: str, field: str
) -> None:
    r = rest.get("/contacts?" + query.format(company=company["id"]), token=user[1])
    assert r.status_code == 400, r.text
    assert field in body(r)["detail"]


def test_oversized_body_is_refused_without_5xx(rest: Rest) -> None:
    r = rest.post("/contacts", json={**VALID, "designation": "x" * 2_000_000})
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize("raw", [b"[1,2]", b"null", b'"text"'])
def test_a_body_that_is_not_an_object_is_named_as_the_body(rest: Rest, raw: bytes) -> None:
    r = rest.post("/contacts", data=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert body(r)["detail"].startswith("body: ")
