"""ListContacts' page tokens (AIP-158) and filters, through Envoy and over gRPC.

A walk by tokens sees every contact that existed throughout exactly once, in
order, however many are created and deleted meanwhile; each filter returns
what a brute-force reading of every contact says it should; bad input is a 400
naming the field.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from contacts.v1 import contacts_pb2 as pb
from server.data.folding import fold
from server.data.store import Store
from tests.conftest import Rest, bearer, body

LINK = re.compile(r'<(/contacts\?[^>]*)>; rel="next"')


def listed(rest: Rest, token: str, query: str) -> tuple[list[dict[str, Any]], str | None]:
    """One REST page, and the URL of the next (its Link header), if any."""
    r = rest.get(f"/contacts?{query}", token=token)
    assert r.status_code == 200, r.text
    page = body(r)
    assert isinstance(page, list)  # the seed's bare array, token or not
    link = r.headers.get("link")
    if link is None:
        return page, None
    found = LINK.fullmatch(link)
    assert found, link
    return page, found.group(1)


def walk(
    rest: Rest, token: str, query: str, between: Callable[[], None] = lambda: None
) -> list[dict[str, Any]]:
    """Every page of a query, following Link headers; `between` runs between pages."""
    seen: list[dict[str, Any]] = []
    url: str | None = f"/contacts?{query}"
    while url is not None:
        page, url = listed(rest, token, url.removeprefix("/contacts?"))
        seen += page
        between()
    return seen


def make(rest: Rest, company_id: str, **fields: Any) -> dict[str, Any]:
    r = rest.post("/contacts", json={"company_id": company_id, **fields})
    assert r.status_code == 201, r.text
    return dict(body(r))


def test_a_walk_by_tokens_sees_every_lasting_contact_once_in_order(
    rest: Rest, store: Store, company: dict[str, Any], user: tuple[str, str]
) -> None:
    store.seed_contacts(uuid.UUID(company["id"]), 2500)
    first = walk(rest, user[1], f"company_id={company['id']}&page_size=1000")
    assert len(first) == 2500
    lasting = {c["id"] for c in first[::2]}
    churn = [c["id"] for c in first[1::2]]  # deleted during the walk
    stop = threading.Event()
    done = [0]  # creates and deletes so far

    def write() -> None:
        while not stop.is_set():
            n = done[0]
            make(rest, company["id"], first_name=f"New {n}", email=f"new{n}@example.com")
            if churn:
                # From both ends: behind the walk and ahead of it.
                r = rest.delete(f"/contacts/{churn.pop(-(n % 2))}", token=user[1])
                assert r.status_code == 204, r.text
            done[0] += 1

    def some_writes() -> None:
        """Lets a few writes land between two pages."""
        target = done[0] + 5
        deadline = time.monotonic() + 10
        while done[0] < target and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = walk(rest, user[1], f"company_id={company['id']}&page_size=97", some_writes)
    finally:
        stop.set()
        writer.join()
    assert done[0] >= 100
    ids = [c["id"] for c in seen]
    assert len(ids) == len(set(ids)), "a contact was listed twice"
    assert lasting <= set(ids), "a contact that existed throughout was missed"
    keys = [(c["created_at"], c["id"]) for c in seen]
    assert keys == sorted(keys)


def test_the_last_page_has_no_link_and_skip_limit_is_unchanged(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    made = [
        make(rest, company["id"], first_name=f"P{n}", email=f"p{n}@example.com") for n in range(5)
    ]
    page, url = listed(rest, user[1], f"company_id={company['id']}&page_size=2")
    assert [c["id"] for c in page] == [c["id"] for c in made[:2]]
    assert url is not None and "page_size=2" in url and f"company_id={company['id']}" in url
    page, url = listed(rest, user[1], url.removeprefix("/contacts?"))
    assert [c["id"] for c in page] == [c["id"] for c in made[2:4]]
    assert url is not None
    page, url = listed(rest, user[1], url.removeprefix("/contacts?"))
    assert [c["id"] for c in page] == [made[4]["id"]] and url is None
    # A page that ends exactly at the last contact has no next page either.
    page, url = listed(rest, user[1], f"company_id={company['id']}&page_size=5")
    assert len(page) == 5 and url is None
    # The seed's skip and limit, as they were; the next page's link starts after them.
    page, url = listed(rest, user[1], f"company_id={company['id']}&skip=1&limit=3")
    assert [c["id"] for c in page] == [c["id"] for c in made[1:4]]
    assert url is not None and "skip" not in url
    page, url = listed(rest, user[1], url.removeprefix("/contacts?"))
    assert [c["id"] for c in page] == [made[4]["id"]] and url is None


def test_grpc_clients_get_next_page_token(
    contacts_stub: Any, rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    made = [
        make(rest, company["id"], first_name=f"G{n}", email=f"g{n}@example.com") for n in range(3)
    ]
    request = pb.ListContactsRequest(company_id=company["id"], page_size=2)
    reply = contacts_stub.ListContacts(request, metadata=bearer(user[1]))
    assert [c.id for c in reply.contacts] == [c["id"] for c in made[:2]]
    token = reply.next_page_token
    assert token and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    request.page_token = token
    reply = contacts_stub.ListContacts(request, metadata=bearer(user[1]))
    assert [c.id for c in reply.contacts] == [made[2]["id"]]
    assert reply.next_page_token == ""


# Names in several scripts, and text that LIKE would take for wildcards.
PEOPLE = [
    ("Straße", "Müller", "Strasse@Example.com"),
    ("STRASSER", None, "s.strasser@example.com"),
    ("Ärger", "Østergaard", "aerger@example.com"),
    ("ärmel", "Ñandú", "AERMEL@EXAMPLE.COM"),
    ("Σίσυφος", "Οδυσσέας", "sisyphos@example.gr"),
    ("ΣΊΣΥΦΟΣ", None, "SISYPHOS2@example.gr"),
    ("50%", "Off", "percent@example.com"),
    ("5000", "Off_er", "five@example.com"),
    ("a_b", "x", "a_b@example.com"),
    ("axb", "y", "axb@example.com"),
    ("Zoë", "Ünal", "zoe@example.com"),
    ("zoe", "unal", "ZOE@example.com"),
]
QUERIES = [
    "stra",
    "STRASSE",
    "straß",
    "är",
    "ÄR",
    "ö",
    "øster",
    "σίσ",
    "ΣΊΣ",
    "5",
    "50%",
    "%",
    "a_",
    "_",
    "a_b@",
    "zo",
    "zoë",
    "ü",
    "ün",
    "s",
    "example",
    "x",
    "nobody",
]


@pytest.fixture
def people(rest: Rest, company: dict[str, Any]) -> list[dict[str, Any]]:
    made = []
    for first, last, email in PEOPLE:
        fields = {"first_name": first, "email": email}
        if last is not None:
            fields["last_name"] = last
        made.append(make(rest, company["id"], **fields))
    return made


def _ids(contacts: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in contacts]


def test_q_matches_a_prefix_of_names_or_email_case_insensitively(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], people: list[dict[str, Any]]
) -> None:
    for q in QUERIES:
        expected = [
            c
            for c in people
            if any(
                fold(c.get(name) or "").startswith(fold(q))
                for name in ("first_name", "last_name", "email")
            )
        ]
        query = f"company_id={company['id']}&page_size=2&q={_quote(q)}"
        assert _ids(walk(rest, user[1], query)) == _ids(expected), q
    # By hand, what the brute force above takes on trust.
    assert len(walk(rest, user[1], f"company_id={company['id']}&q=STRASSE")) == 2
    assert _ids(walk(rest, user[1], f"company_id={company['id']}&q=%25")) == []
    assert len(walk(rest, user[1], f"company_id={company['id']}&q=a_")) == 1


def test_email_matches_exactly_case_insensitively(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], people: list[dict[str, Any]]
) -> None:
    for _, _, email in PEOPLE:
        for sent in (email, email.upper(), email.lower()):
            expected = [c for c in people if fold(c["email"]) == fold(sent)]
            found = walk(rest, user[1], f"company_id={company['id']}&email={_quote(sent)}")
            assert _ids(found) == _ids(expected), sent
    assert walk(rest, user[1], f"company_id={company['id']}&email=strasse@example.co") == []


def test_updated_since_and_filters_combine(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], people: list[dict[str, Any]]
) -> None:
    changed = people[3:6]
    # updated_at holds whole seconds: wait for the next one, then change some.
    time.sleep(1.05 - time.time() % 1)
    since = datetime.now(UTC).replace(microsecond=0)
    for c in changed:
        r = rest.patch(f"/contacts/{c['id']}", json={"designation": "changed"})
        assert r.status_code == 200, r.text
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    everyone = walk(rest, user[1], f"company_id={company['id']}")
    expected = [c for c in everyone if c["updated_at"] >= stamp]
    assert _ids(expected) == _ids(changed)
    found = walk(rest, user[1], f"company_id={company['id']}&updated_since={stamp}&page_size=1")
    assert _ids(found) == _ids(expected)
    offset = since.astimezone().isoformat()  # the same instant with a UTC offset
    found = walk(rest, user[1], f"company_id={company['id']}&updated_since={_quote(offset)}")
    assert _ids(found) == _ids(expected)
    found = walk(rest, user[1], f"company_id={company['id']}&updated_since={stamp}&q=%C3%A4r")
    assert _ids(found) == [people[3]["id"]]


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _token(rest: Rest, user: tuple[str, str], query: str) -> str:
    _, url = listed(rest, user[1], query)
    assert url is not None
    found = re.search(r"page_token=([A-Za-z0-9_-]+)", url)
    assert found
    return found.group(1)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page_size=1001", "page_size"),
        ("page_size=-1", "page_size"),
        ("q=" + "a" * 255, "q"),
        ("email=not-an-address", "email"),
        ("page_token=bm90IGEgdG9rZW4", "page_token"),
        ("page_token=%25%25%25", "page_token"),
        ("updated_since=yesterday", "updated_since"),
        ("updated_since=2024-13-01T00:00:00Z", "updated_since"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], query: str, field: str
) -> None:
    r = rest.get(f"/contacts?company_id={company['id']}&{query}", token=user[1])
    assert r.status_code == 400, r.text
    assert body(r)["detail"].startswith(f"{field}:"), r.text


def test_a_token_is_bound_to_its_company_and_filters_and_tamper_evident(
    rest: Rest, company: dict[str, Any], user: tuple[str, str]
) -> None:
    for n in range(3):
        make(rest, company["id"], first_name=f"T{n}", email=f"t{n}@example.com")
    base = f"company_id={company['id']}&page_size=1"
    token = _token(rest, user, base)
    other = rest.post("/companies", token=user[1], json={"name": "Other"}).json()["id"]
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[10] ^= 1
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for query in (
        f"company_id={other}&page_size=1&page_token={token}",
        f"{base}&q=t&page_token={token}",
        f"{base}&email=t1@example.com&page_token={token}",
        f"{base}&updated_since=2020-01-01T00:00:00Z&page_token={token}",
        f"{base}&page_token={altered}",
    ):
        r = rest.get(f"/contacts?{query}", token=user[1])
        assert r.status_code == 400, (query, r.text)
        assert body(r)["detail"].startswith("page_token:"), r.text
    r = rest.get(f"/contacts?{base}&skip=1&page_token={token}", token=user[1])
    assert r.status_code == 400 and body(r)["detail"].startswith("skip:"), r.text
    # Another page size is the same query: the token still serves.
    r = rest.get(
        f"/contacts?company_id={company['id']}&page_size=5&page_token={token}", token=user[1]
    )
    assert r.status_code == 200 and len(body(r)) == 2


def test_grpc_bad_input_is_invalid_argument(
    contacts_stub: Any, company: dict[str, Any], user: tuple[str, str]
) -> None:
    for request, field in (
        (pb.ListContactsRequest(company_id=company["id"], page_size=1001), "page_size"),
        (pb.ListContactsRequest(company_id=company["id"], q="\x00"), "q"),
        (pb.ListContactsRequest(company_id=company["id"], page_token="x"), "page_token"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            contacts_stub.ListContacts(request, metadata=bearer(user[1]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(f"{field}:")
    request = pb.ListContactsRequest(company_id=company["id"])
    request.updated_since.seconds = -5
    with pytest.raises(grpc.RpcError) as caught:
        contacts_stub.ListContacts(request, metadata=bearer(user[1]))
    assert caught.value.details().startswith("updated_since:")


class _Clock:
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset


def test_a_token_lasts_an_hour_and_more_but_not_for_ever(
    rest: Rest, company: dict[str, Any], user: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens issued (by the in-process server's clock) an hour ago, and a day and more ago."""
    from server.rpc import paging

    for n in range(2):
        make(rest, company["id"], first_name=f"H{n}", email=f"h{n}@example.com")
    base = f"company_id={company['id']}&page_size=1"
    issued = {}
    for name, offset in (("an hour ago", -3660), ("over a day ago", -paging.TOKEN_SECONDS - 60)):
        with monkeypatch.context() as patched:
            patched.setattr(paging, "time", _Clock(offset))
            issued[name] = _token(rest, user, base)
    r = rest.get(f"/contacts?{base}&page_token={issued['an hour ago']}", token=user[1])
    assert r.status_code == 200 and len(body(r)) == 1, r.text
    r = rest.get(f"/contacts?{base}&page_token={issued['over a day ago']}", token=user[1])
    assert r.status_code == 400 and body(r)["detail"].startswith("page_token: has expired"), r.text
