"""What one anonymous client must not be able to do to the others, or to the service:
each test makes the attack first, then checks what its victims and the operator see."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from typing import Any

import grpc
import pytest
import requests

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.rpc.app import App
from tests.conftest import Rest, bearer, body

NEW = {"first_name": "V", "email": "v@x.io"}


def made(rest: Rest, token: str, **fields: Any) -> dict[str, Any]:
    r = rest.post("/contacts", token=token, json={**NEW, **fields})
    assert r.status_code == 201, r.text
    return dict(body(r))


def test_a_huge_update_mask_is_refused_briefly_and_breaks_no_one_elses_write(
    rest: Rest, envoy: Any, superuser_token: str
) -> None:
    """A 130 KB update_mask echoed into the error once overflowed the reply's trailers:
    Envoy dropped its connection to the server, and the PATCHes in flight on it failed.
    (Envoy now takes REST bodies of up to 32 KiB: the most of a mask that gets through.)"""
    victims = [made(rest, superuser_token) for _ in range(6)]
    mask = ",".join(f"notAField{n}" for n in range(1_500))  # ~19 KB
    failures: list[str] = []
    stop = threading.Event()

    def victim(contact: dict[str, Any]) -> None:
        session = Rest(envoy.url)
        n = 0
        while not stop.is_set():
            n += 1
            r = session.patch(
                f"/contacts/{contact['id']}", token=superuser_token, json={"designation": f"d{n}"}
            )
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=victim, args=(c,)) for c in victims]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):
            r = rest.patch(
                f"/contacts/{victims[0]['id']}",
                token=superuser_token,
                json={"update_mask": mask, "designation": "x"},
            )
            assert r.status_code == 400, r.text[:200]
            detail = body(r)["detail"]
            assert detail.startswith("update_mask: names no updatable field: ")
            assert len(detail) < 200, detail
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []


def test_a_path_that_does_not_match_its_template_exactly_is_404(
    rest: Rest, superuser_token: str
) -> None:
    """`/contacts/X1/?contact_id=X2` once deleted X2, and a PATCH of `/contacts/X1/` with
    X2 in its body changed X2, while logs and path rules named X1."""
    x1, x2 = made(rest, superuser_token), made(rest, superuser_token)
    r = rest.delete(f"/contacts/{x1['id']}/?contact_id={x2['id']}", token=superuser_token)
    assert (r.status_code, body(r)) == (404, {"detail": "Not Found"})
    r = rest.patch(
        f"/contacts/{x1['id']}/", json={"contact_id": x2["id"], "designation": "changed"}
    )
    assert r.status_code == 404
    for path in (f"/contacts/{x1['id']}/", "/contacts/", "/companies/"):
        assert rest.get(path, token=superuser_token).status_code == 404, path
    assert "designation" not in body(rest.get(f"/contacts/{x2['id']}"))
    assert rest.get(f"/contacts/{x1['id']}").status_code == 200
    assert rest.get(f"/contacts/{x2['id']}").status_code == 200


@pytest.mark.parametrize("if_match", ['"99999999999999999999"', '"2147483648"', '"0x1", "+1"'])
def test_an_if_match_that_is_not_a_version_we_issue_is_412(
    rest: Rest, superuser_token: str, if_match: str
) -> None:
    """20 digits overflowed SQLite's integer: 500."""
    contact = made(rest, superuser_token)
    r = rest.patch(
        f"/contacts/{contact['id']}",
        token=superuser_token,
        json={"designation": "x"},
        headers={"If-Match": if_match},
    )
    assert r.status_code == 412, r.text
    assert body(r)["detail"].startswith("The contact has changed since its ETag was read")
    r = rest.delete(
        f"/contacts/{contact['id']}", token=superuser_token, headers={"If-Match": if_match}
    )
    assert r.status_code == 412, r.text


@pytest.mark.parametrize("tag", ["\u00b2", "\u0663", "\uff11"])  # ², Arabic-Indic 3, full-width 1
def test_an_if_match_of_digits_other_than_ascii_matches_nothing(
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub, superuser_token: str, tag: str
) -> None:
    """'²' is a digit to str.isdigit, and int('²') raised: a 500 with a traceback."""
    from server.rpc.etags import expected_versions

    assert expected_versions([f'"{tag}"']) == frozenset()
    assert expected_versions(['"7"', f'"{tag}"']) == frozenset({7})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_name", "a\u0085b"),  # NEL, a C1 control
        ("first_name", "a\u009b31mb"),  # CSI: starts a terminal escape
        ("last_name", "evil\u202etxt.exe"),  # right-to-left override
        ("designation", "x\u2066y\u2069"),  # isolates
        ("first_name", "a\u2028ERROR forged"),  # line separator
        ("email", "a\u200b@x.io"),  # zero-width space
        ("email", "a\u2060b@x.io"),  # word joiner
        ("email", "a\uff20x.io"),  # full-width commercial at
    ],
)
def test_text_that_would_hide_or_forge_what_it_shows_is_400_naming_the_field(
    rest: Rest, superuser_token: str, field: str, value: str
) -> None:
    r = rest.post("/contacts", token=superuser_token, json={**NEW, field: value})
    assert r.status_code == 400, r.text
    assert body(r)["detail"].startswith(f"{field}: ")


def test_names_keep_the_zero_width_joiners_their_scripts_need(
    rest: Rest, superuser_token: str
) -> None:
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # with a ZWNJ
    devanagari = "\u0915\u094d\u200d\u0937"  # with a ZWJ
    contact = made(rest, superuser_token, first_name=persian, last_name=devanagari)
    assert (contact["first_name"], contact["last_name"]) == (persian, devanagari)


def test_ipv6_clients_are_told_apart(app: App, settings: Any, tokens: Any, store: Any) -> None:
    """grpc names an IPv6 peer "ipv6:%5B::1%5D:port"; the address was read as "", so
    every anonymous IPv6 client shared one bucket and one idempotency-key space."""
    from server.rpc.interceptors.limits import peer_address

    assert peer_address("ipv6:%5B::1%5D:40000") == "::1"
    assert peer_address("ipv6:[2001:db8::7]:443") == "2001:db8::7"
    assert peer_address("ipv4:127.0.0.1:5000") == "127.0.0.1"
    # And over a real IPv6 connection: an anonymous caller's limit is its own address's.
    import dataclasses

    from server.rpc.app import create_app

    limited = dataclasses.replace(settings, rate_limit_default=2)
    server = create_app(limited, store, host="[::1]")
    try:
        server.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with grpc.insecure_channel(f"[::1]:{server.port}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            request = pb.GetContactRequest(contact_id=str(uuid.uuid4()))
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.GetContact(request)
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as limited_call:
                stub.GetContact.with_call(request)
            error: Any = limited_call.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Another user, by token, still has a bucket of its own.
            token = tokens.issue(f"u-{uuid.uuid4().hex[:6]}")
            with pytest.raises(grpc.RpcError) as other:
                stub.GetContact(request, metadata=bearer(token))
            assert other.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    finally:
        server.stop(grace=1)


def test_undecodable_requests_draw_from_the_clients_bucket(settings: Any, store: Any) -> None:
    """A call whose bytes are not a message skipped the rate limiter: unlimited calls."""
    import dataclasses

    from server.rpc.app import create_app

    limited = dataclasses.replace(settings, rate_limit_default=3)
    server = create_app(limited, store, host="127.0.0.1")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            raw = channel.unary_unary("/contacts.v1.ContactsService/GetContact")
            codes = []
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as refused:
                    raw(b"\x0a\x02\xff\xfe")
                codes.append(refused.value.code())  # type: ignore[attr-defined]
        assert codes[:3] == [grpc.StatusCode.INVALID_ARGUMENT] * 3
        assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    finally:
        server.stop(grace=1)


def test_files_the_service_creates_are_its_users_alone(tmp_path: Any) -> None:
    """The SQLite database and its -wal/-shm were 0644: any local user could read them."""
    import subprocess
    import sys

    from server.settings import PROJECT_ROOT

    url = f"sqlite:///{tmp_path}/data/contacts.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTS_")}
    subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=PROJECT_ROOT,
        env=env | {"CONTACTS_DATABASE_URL": url},
        check=True,
        capture_output=True,
    )
    made_files = [p for p in (tmp_path / "data").iterdir()]
    assert made_files
    for path in made_files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path.name, oct(mode))


def test_a_detail_never_repeats_more_than_a_short_piece_of_what_was_sent(
    rest: Rest, superuser_token: str
) -> None:
    long_key = "k" * 5000
    r = rest.post(
        "/contacts",
        token=superuser_token,
        json=NEW,
        headers={"Idempotency-Key": long_key},
    )
    assert r.status_code == 400
    assert len(body(r)["detail"]) < 200
    r = requests.get(f"{rest.base_url}/contacts/{'x' * 1500}", timeout=10)
    assert r.status_code == 400 and len(body(r)["detail"]) < 200


@pytest.mark.parametrize("door", ["gRPC", "REST"])
def test_a_call_its_client_cancels_is_logged_cancelled(
    settings: Any,
    rest: Rest,
    contacts_stub: contacts_pb2_grpc.ContactsServiceStub,
    superuser_token: str,
    caplog: pytest.LogCaptureFixture,
    door: str,
) -> None:
    """Any client can cancel: such a call is the client's doing, not a server fault
    (it was logged code=UNKNOWN at WARNING and counted as grpc_code="UNKNOWN")."""
    import logging
    import sqlite3
    import time

    from tests.harness import wait_for

    if not settings.database_url.startswith("sqlite:"):
        pytest.skip("holds SQLite's write lock to keep a call waiting")
    locker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), timeout=0)
    locker.execute("BEGIN IMMEDIATE")  # the create below waits for this lock
    try:
        with caplog.at_level(logging.INFO, logger="server.calls"):
            if door == "gRPC":
                waiting = contacts_stub.CreateContact.future(
                    pb.CreateContactRequest(first_name="C", email="c@x.io"),
                    metadata=bearer(superuser_token),
                )
                time.sleep(0.5)
                assert waiting.cancel()
            else:  # the client gives up and closes its connection; Envoy resets the call
                with pytest.raises(requests.Timeout):
                    requests.post(
                        f"{rest.base_url}/contacts",
                        json=NEW,
                        headers={"Authorization": f"Bearer {superuser_token}"},
                        timeout=0.5,
                    )

            def line() -> Any:
                return next(
                    (
                        r
                        for r in caplog.records
                        if getattr(r, "fields", {}).get("method", "").endswith("/CreateContact")
                    ),
                    None,
                )

            record = wait_for(line, timeout=5, what="the cancelled call's line")
    finally:
        locker.rollback()
        locker.close()
    assert record.fields["code"] == "CANCELLED"
    assert record.levelno == logging.INFO


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_lines_escape_what_is_not_printable(log_format: str) -> None:
    """A line separator, a terminal escape or a right-to-left override in anything
    logged (a cause, a client's key) would end a line, forge another or hide text."""
    import json
    import logging

    from server.observability.logs import LineFormatter

    record = logging.makeLogRecord(
        {"msg": "cause: a\u2028ERROR forged \x1b[31m\x85", "name": "server.x", "levelname": "INFO"}
    )
    record.fields = {"client": "sub:\u202eabc", "name": "Zoë"}
    line = LineFormatter(log_format).format(record)
    assert line.isprintable(), line
    assert "\\u2028" in line and "\\u202e" in line and "Zoë" in line
    if log_format == "json":
        assert json.loads(line)["message"] == "cause: a\u2028ERROR forged \x1b[31m\x85"
