"""What a careless or hostile client may send: never a 5xx, never someone else's row."""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any

import grpc
import jwt
import pytest

from tests.conftest import Rest, body
from tests.harness import Envoy

NEW = {"first_name": "H", "email": "h@x.io"}


def contact(rest: Rest, **fields: Any) -> dict[str, Any]:
    r = rest.post("/contacts", json={**NEW, **fields})
    assert r.status_code == 201, r.text
    return dict(body(r))


def test_query_and_body_fields_cannot_override_the_path(rest: Rest, superuser_token: str) -> None:
    a, b = contact(rest, first_name="A"), contact(rest, first_name="B")
    assert body(rest.get(f"/contacts/{a['id']}?contact_id={b['id']}"))["first_name"] == "A"
    r = rest.patch(f"/contacts/{a['id']}", json={"contact_id": b["id"], "designation": "X"})
    assert body(r)["id"] == a["id"]
    assert "designation" not in body(rest.get(f"/contacts/{b['id']}"))
    missing = uuid.uuid4()
    r = rest.delete(f"/contacts/{missing}?contact_id={b['id']}", token=superuser_token)
    assert r.status_code == 404
    assert rest.get(f"/contacts/{b['id']}").status_code == 200


@pytest.mark.parametrize(
    "path", ["/contacts/%FF%FE", "/contacts?company_id=%FF", "/companies/%C3%28"]
)
def test_ids_that_are_not_utf8_are_400(rest: Rest, superuser_token: str, path: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        if method != "GET" and "?" in path:
            continue
        r = rest.request(method, path, token=superuser_token, json={})
        assert 400 <= r.status_code < 500, (method, r.status_code, r.text)
        assert isinstance(body(r)["detail"], str)


def test_undecodable_grpc_bytes_are_invalid_argument(envoy: Envoy, app: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        raw = channel.unary_unary("/contacts.v1.ContactsService/GetContact")
        with pytest.raises(grpc.RpcError) as refused:
            raw(b"\x0a\x02\xff\xfe")  # field 1, a string that is not UTF-8
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "header", [{"grpc-timeout": "1n"}, {"grpc-encoding": "bogus"}, {"grpc-status": "13"}]
)
def test_grpc_control_headers_on_rest_are_ignored(rest: Rest, header: dict[str, str]) -> None:
    r = rest.post("/contacts", json=NEW, headers=header)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("name", ["e$y", "n%v+tfw.!x", "'#ht_6ma^z", "UPPER~case"])
def test_headers_that_grpc_metadata_cannot_carry_are_dropped(rest: Rest, name: str) -> None:
    # Legal in HTTP, illegal as gRPC metadata keys (0-9 a-z _ - .): passed on,
    # the server refused the whole call with a 500 (schemathesis found it).
    r = rest.post("/contacts", json=NEW, headers={name: "x"})
    assert r.status_code == 201, r.text
    assert rest.get(f"/contacts/{uuid.uuid4()}", headers={name: "x"}).status_code == 404


def test_grpc_web_content_type_is_answered_as_rest(rest: Rest) -> None:
    r = rest.post("/contacts", json=NEW, headers={"content-type": "application/grpc-web+json"})
    assert r.status_code in (201, 400, 404, 415), r.text
    assert not [h for h in r.headers if h.lower().startswith("grpc-")]


def test_a_full_page_of_long_contacts_is_served(rest: Rest, user: tuple[str, str]) -> None:
    company = body(rest.post("/companies", token=user[1], json={"name": "Big"}))
    long = {
        "first_name": "é" * 100,
        "last_name": "ü" * 100,
        "designation": "ß" * 100,
        "phone": "9" * 50,
        "email": f"{'x' * 240}@big.io",
    }
    for _ in range(1000):
        rest.post("/contacts", json={"company_id": company["id"], **long})
    r = rest.get(f"/contacts?company_id={company['id']}&limit=1000", token=user[1])
    assert r.status_code == 200
    assert len(body(r)) == 1000
    assert len(r.content) > 1_048_576


def test_oversized_bodies_and_headers_are_4xx_not_429(rest: Rest) -> None:
    r = rest.post("/contacts", json={**NEW, "padding": "x" * 5_000_000})
    assert r.status_code == 413
    r = rest.get(f"/contacts/{uuid.uuid4()}?q={'x' * 20_000}")
    assert r.status_code == 431


def test_a_token_expired_a_moment_ago_is_refused(rest: Rest, settings: Any) -> None:
    token = jwt.encode(
        {"sub": "late", "exp": int(time.time()) - 2}, settings.jwt_secret, algorithm="HS256"
    )
    assert rest.get("/companies", token=token).status_code == 401


@pytest.mark.parametrize("claims", [{"sub": "s" * 256}, {"sub": "ok", "exp": "9999999999"}])
def test_odd_claims_are_refused(rest: Rest, settings: Any, claims: dict[str, Any]) -> None:
    token = jwt.encode(
        {"exp": int(time.time()) + 60, **claims}, settings.jwt_secret, algorithm="HS256"
    )
    assert rest.post("/companies", token=token, json={"name": "C"}).status_code == 401


@pytest.mark.parametrize(
    "bad", ["0123456789abcdef0123456789abcdef----", "{12345678-1234-1234-1234-123456789012}"]
)
def test_only_canonical_uuids_are_ids(rest: Rest, bad: str) -> None:
    r = rest.get(f"/contacts/{bad}")
    assert r.status_code == 400
    assert body(r) == {"detail": "contact_id: must be a UUID"}


@pytest.mark.parametrize(
    "sub", ["nul\x00byte", "lone\ud800surrogate", "bell\x07", "line\nbreak", "c1\x85control"]
)
def test_a_sub_with_control_characters_or_a_lone_surrogate_is_401(
    rest: Rest, settings: Any, sub: str
) -> None:
    # Before: NUL and the surrogate were a 500 (the database refused the
    # text), the others were stored as a company's owner.
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, settings.jwt_secret, "HS256")
    r = rest.post("/companies", token=token, json={"name": "C"})
    assert r.status_code == 401
    assert body(r) == {"detail": "Could not validate credentials"}
    assert rest.get("/companies", token=token).status_code == 401


@pytest.mark.parametrize("exp", [1e300, 2**53, time.time() + 400 * 24 * 3600])
def test_a_token_that_would_never_expire_is_401(rest: Rest, settings: Any, exp: float) -> None:
    token = jwt.encode({"sub": "forever", "exp": exp}, settings.jwt_secret, "HS256")
    assert rest.get("/companies", token=token).status_code == 401


@pytest.mark.parametrize("length", [2100, 4096, 6144, 7900])
def test_an_over_long_path_is_414_at_envoy(rest: Rest, length: int) -> None:
    # 4-8 KiB paths used to overflow gRPC's metadata limit (copied into two
    # headers) and came back as 429s naming internal headers.
    path = "/contacts?company_id=" + "a" * (length - len("/contacts?company_id="))
    r = rest.get(path)
    assert r.status_code == 414
    assert body(r) == {"detail": "URI Too Long"}


def test_the_largest_request_envoy_takes_reaches_the_server(rest: Rest) -> None:
    # The longest path allowed, and headers filling most of Envoy's 8 KiB:
    # what Envoy adds on top must still fit the server's metadata limit.
    path = f"/contacts/{uuid.uuid4()}?pad="
    path += "p" * (2048 - len(path))
    r = rest.get(path, headers={"x-pad": "h" * 5800})
    assert r.status_code == 404, r.text
    assert body(r) == {"detail": "Contact not found"}


def test_a_transfer_encoding_envoy_refuses_is_501_saying_so(envoy: Envoy) -> None:
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as s:
        s.sendall(
            b"POST /contacts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n"
            b"Content-Type: application/json\r\n\r\n0\r\n\r\n"
        )
        head, _, rest_of_it = s.recv(65536).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501 ")
    assert json.loads(rest_of_it) == {"detail": "Not Implemented"}
