"""The OpenAPI document (gen/openapi.json) and the /docs page: valid, served by
Envoy without token or rate limit, true of the live service, rendered offline."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import schemathesis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openapi_spec_validator import validate

from server.auth.tokens import Tokens
from server.data.store import Store
from server.process.stack import OPENAPI
from server.rpc.app import create_app
from server.settings import Settings
from tests.browser import Browser, Refuser, chromium_binary
from tests.conftest import Rest, body
from tests.harness import Envoy, wait_for

DOCUMENT = json.loads(OPENAPI.read_text())
# (METHOD, path, summary) of every operation, as the docs page should list them.
OPERATIONS = sorted(
    (method.upper(), path, operation["summary"])
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
)
DOCS_FILES = {
    "/openapi.json": "application/json",
    "/docs": "text/html; charset=utf-8",
    "/docs/docs.js": "text/javascript; charset=utf-8",
    "/docs/swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "/docs/swagger-ui.css": "text/css; charset=utf-8",
    "/docs/favicon-32x32.png": "image/png",
}


@contextmanager
def limited_stack(settings: Settings, store: Store, workdir: Path, limit: int) -> Iterator[Envoy]:
    """A server with rate limits on (`limit` calls a minute, both classes) behind Envoy."""
    limits_on = dataclasses.replace(settings, rate_limit_create=limit, rate_limit_default=limit)
    app = create_app(limits_on, store, host="127.0.0.1")
    app.start()
    proxy = Envoy(app.proxy_port, workdir)
    try:
        # Ready once a health check (never limited) makes the round trip.
        with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            wait_for(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ),
                what="envoy to reach the server",
            )
        yield proxy
    finally:
        proxy.stop()
        app.stop(grace=1)


@pytest.fixture(scope="module")
def generous(
    settings: Settings, store: Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Envoy]:
    """Limits on but never reached: every reply carries the RateLimit-* headers."""
    with limited_stack(settings, store, tmp_path_factory.mktemp("envoy-generous"), 10**6) as proxy:
        yield proxy


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    validate(DOCUMENT)


def test_the_document_says_what_the_proto_says() -> None:
    contacts = DOCUMENT["paths"]["/contacts"]
    assert contacts["get"]["security"] == [{"bearer": []}]  # AUTH_REQUIRED
    assert contacts["post"]["security"] == [{}, {"bearer": []}]  # AUTH_PUBLIC: token optional
    assert next(iter(contacts["post"]["responses"])) == "201"
    assert contacts["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Contact"},
    }
    delete = DOCUMENT["paths"]["/contacts/{contact_id}"]["delete"]
    assert "content" not in delete["responses"]["204"]
    statuses = {"204", "400", "401", "403", "404", "408", "409", "412", "413", "414", "429"}
    statuses |= {"431", "503"}
    assert set(delete["responses"]) == statuses
    assert "Retry-After" in delete["responses"]["429"]["headers"]
    assert delete["parameters"][0]["schema"] == {"type": "string", "format": "uuid"}
    body_schema = contacts["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["required"] == ["first_name", "email"]  # google.api.field_behavior
    contact = DOCUMENT["components"]["schemas"]["Contact"]
    assert contact["properties"]["created_at"]["format"] == "date-time"
    assert contact["properties"]["id"]["readOnly"] is True  # OUTPUT_ONLY
    assert "last_name" not in contact["required"]  # proto3 optional: absent when unset
    assert contacts["get"]["summary"] == "Lists a company's contacts, oldest first."  # a comment


def test_envoy_serves_the_docs_without_token_or_rate_limit(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    with limited_stack(settings, store, tmp_path, limit=1) as proxy:
        api = Rest(proxy.url)
        for _ in range(3):
            for path, content_type in DOCS_FILES.items():
                # Not even a refused token matters: the request never reaches the server.
                r = api.get(path, token="not-a-token")
                assert r.status_code == 200, path
                assert r.headers["content-type"] == content_type
                assert "ratelimit-limit" not in r.headers
        assert api.get("/openapi.json").content == OPENAPI.read_bytes()
        # The client's one call a minute is still there after all that.
        first = api.get(f"/contacts/{uuid.uuid4()}")
        assert first.status_code == 404
        assert first.headers["ratelimit-remaining"] == "0"
        # And the refusal is what the document says, headers included.
        refused = api.get(f"/contacts/{uuid.uuid4()}")
        assert refused.status_code == 429
        assert body(refused) == {"detail": "Rate limit exceeded"}
        schema = schemathesis.openapi.from_dict(DOCUMENT)
        operation = schema["/contacts/{contact_id}"]["GET"]
        case = operation.Case(path_parameters={"contact_id": str(uuid.uuid4())})
        case.validate_response(refused)


def test_the_docs_are_not_served_to_grpc_or_other_methods(rest: Rest, envoy: Envoy) -> None:
    # Native gRPC to the same path on the same port goes to the server, which has no such method.
    with grpc.insecure_channel(f"127.0.0.1:{envoy.port}") as channel:
        call = channel.unary_unary("/openapi.json")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    for method in ("POST", "PUT", "DELETE"):
        r = rest.request(method, "/openapi.json")
        assert r.status_code == 404
        assert body(r) == {"detail": "Not Found"}


# What schemathesis checks of every reply. Left out: negative_data_rejection
# and positive_data_acceptance (the document gives types, not the server's
# rules on text, lengths and email form, and the transcoder also takes "true"
# for true, so the schema's idea of valid input differs from the server's in
# both directions, and a 400 is always documented), and unsupported_method
# (CONTRACT.md: an unmapped method is 404, not 405); and
# ensure_resource_availability, which takes every 201 for a new resource:
# schemathesis reuses the short Idempotency-Key values it generates, and a
# create sent again under a key answers its first response (the draft's rule),
# whose contact a DELETE in between may have removed.
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "use_after_free",
        "ignored_auth",
    )
)
MAX_EXAMPLES = 40  # per operation and phase: ~15 s a client on this machine
SEED = 20261130  # the same cases every run; a failure prints how to replay it


@pytest.mark.parametrize("client", ["anonymous", "token holder"])
def test_schemathesis_finds_no_disagreement_with_the_live_service(
    generous: Envoy,
    tokens: Tokens,
    client: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{generous.url}/openapi.json",
        "--url",
        generous.url,
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    if client == "token holder":
        command += [
            "--header",
            f"Authorization: Bearer {tokens.issue(f'st-{uuid.uuid4().hex[:8]}')}",
        ]
    run = subprocess.run(
        command,
        cwd=tmp_path,  # its caches and reports stay out of the project
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    cases: dict[str, Any] = json.loads(report.read_text())["test_cases"]
    assert cases["generated"] > 0 and cases["with_failures"] == 0, cases
    with capsys.disabled():
        print(f"\nschemathesis, {client}: {cases['generated']} cases, no disagreement")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Browser, Refuser]]:
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    outside = Refuser()
    opened = Browser(binary, tmp_path_factory.mktemp("chromium"), outside.port)
    yield opened, outside
    opened.close()
    outside.close()


def test_a_browser_renders_every_operation_on_the_docs_page_from_this_machine_alone(
    browser: tuple[Browser, Refuser], envoy: Envoy, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium, outside = browser
    page = chromium.open(f"{envoy.url}/docs")
    page.wait_for(f"document.querySelectorAll('.opblock').length >= {len(OPERATIONS)}")
    shown = page.evaluate(
        """[...document.querySelectorAll('.opblock-summary')].map(s => [
             s.querySelector('.opblock-summary-method').textContent,
             s.querySelector('.opblock-summary-path').dataset.path,
             s.querySelector('.opblock-summary-description').textContent])"""
    )
    assert sorted(tuple(operation) for operation in shown) == OPERATIONS
    title = page.evaluate("document.querySelector('.info .title').textContent")
    assert title.startswith(DOCUMENT["info"]["title"])
    requested = page.requested()
    assert f"{envoy.url}/openapi.json" in requested
    assert [url for url in requested if not url.startswith((f"{envoy.url}/", "data:"))] == []
    # The trap works: a page that does reach out is seen, and refused, here.
    canary = chromium.open('data:text/html,<img src="http://canary.invalid/x.png">')
    canary.wait_for("document.images[0].complete")
    assert "http://canary.invalid/x.png" in canary.requested()
    assert "GET http://canary.invalid/x.png HTTP/1.1" in outside.seen
    with capsys.disabled():
        print(f"\nthe docs page, rendered by chromium, lists: {[s[:2] for s in shown]}")


def test_the_introduction_speaks_to_callers() -> None:
    introduction = DOCUMENT["info"]["description"]
    written = Path(__file__).parent.parent / "openapi" / "introduction.md"
    assert introduction == written.read_text().strip()
    assert "This file is the contract" not in introduction  # the proto's note to maintainers
    words = " ".join(introduction.split())
    assert "*Try it out*, then *Execute*" in words and "*Authorize*" in words


# Each route's request example, as the docs page offers it.
EXAMPLES = {
    (method.upper(), path): operation["requestBody"]["content"]["application/json"]["example"]
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
    if "requestBody" in operation
}


def test_every_request_example_is_accepted_as_it_is(rest: Rest, user: tuple[str, str]) -> None:
    assert set(EXAMPLES) == {
        ("POST", "/contacts"),
        ("PATCH", "/contacts/{contact_id}"),
        ("POST", "/companies"),
    }
    made: dict[str, str] = {}
    # Creates first: a path's id is one the service just made.
    for (method, path), example in sorted(EXAMPLES.items(), key=lambda e: e[0][0] != "POST"):
        operation = DOCUMENT["paths"][path][method.lower()]
        token = None if {} in operation["security"] else user[1]
        url = path.format(contact_id=made.get("/contacts", ""))
        r = rest.request(method, url, token=token, json=example)
        success = next(iter(operation["responses"]))
        assert r.status_code == int(success), (method, path, r.status_code, r.text)
        reply = body(r)
        # What was sent is what is there (null: cleared, so left out).
        assert {k: reply.get(k) for k in example} == example
        if method == "POST":
            made[path] = reply["id"]


def test_get_root_points_to_the_docs(rest: Rest) -> None:
    r = rest.get("/", allow_redirects=False)
    assert r.status_code == 302
    assert r.headers["location"].endswith("/docs")
    followed = rest.get("/")
    assert followed.status_code == 200
    assert followed.headers["content-type"] == DOCS_FILES["/docs"]
    # Only GET: any other method on / is still an unmapped route.
    r = rest.post("/")
    assert r.status_code == 404
    assert body(r) == {"detail": "Not Found"}


def test_try_it_out_then_execute_creates_a_contact_on_the_first_click(
    browser: tuple[Browser, Refuser], envoy: Envoy, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium, _ = browser
    page = chromium.open(f"{envoy.url}/")  # the redirect, as a person would come
    operation = "document.getElementById('operations-ContactsService-CreateContact')"
    page.wait_for(f"!!{operation}")
    assert page.evaluate("location.pathname") == "/docs"
    description = page.evaluate("document.querySelector('.info .description').textContent")
    assert "Try it first" in description
    page.evaluate(f"{operation}.querySelector('.opblock-summary-control').click()")
    page.wait_for(f"!!{operation}.querySelector('.try-out__btn')")
    page.evaluate(f"{operation}.querySelector('.try-out__btn').click()")
    page.wait_for(f"!!{operation}.querySelector('button.execute')")
    sent = page.evaluate(f"{operation}.querySelector('textarea.body-param__text').value")
    assert json.loads(sent) == EXAMPLES[("POST", "/contacts")]
    page.evaluate(f"{operation}.querySelector('button.execute').click()")
    status = page.wait_for(
        f"{operation}.querySelector('.live-responses-table tbody .response-col_status')"
        "?.textContent"
    )
    assert status.strip() == "201", status
    reply = page.evaluate(
        f"{operation}.querySelector('.live-responses-table tbody .highlight-code pre').textContent"
    )
    created = json.loads(reply)
    with capsys.disabled():
        print(f"\nthe docs page's first click on POST /contacts: {status}, id {created['id']}")
