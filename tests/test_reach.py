"""Every client can reach it: browsers (CORS, gRPC-Web, Connect), compression,
Location, reflection v1, and no internal header in what any client receives.

Each test talks to the real Envoy (one with CONTACTS_CORS_ORIGINS set, beside
the suite's own without) in front of the suite's server, as the clients do:
raw HTTP for the browser protocols, grpcio and `buf curl` for gRPC.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import requests
from google.rpc import status_pb2
from grpc_reflection.v1alpha import reflection_pb2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.data.store import Store
from server.process import stack
from server.rpc.app import App
from server.rpc.validation import CLEARABLE
from server.settings import PROJECT_ROOT, Settings, SettingsError
from tests.conftest import Rest
from tests.harness import Envoy
from tests.test_openapi import limited_stack

ORIGIN = "http://app.example.test"
OTHER_ORIGIN = "http://evil.example.test"
BUF = PROJECT_ROOT / "node_modules" / ".bin" / "buf"

# CONTRACT.md, "Every client can reach it".
ALLOWED_HEADERS = {
    "authorization",
    "content-type",
    "idempotency-key",
    "if-match",
    "x-request-id",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
}
EXPOSED_HEADERS = {
    "etag",
    "location",
    "x-request-id",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
}

LOCAL = requests.Session()
LOCAL.trust_env = False


@pytest.fixture(scope="module")
def browsers_envoy(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    """An Envoy whose CONTACTS_CORS_ORIGINS lists ORIGIN."""
    proxy = Envoy(app.proxy_port, tmp_path_factory.mktemp("cors"), cors_origins=(ORIGIN,))
    proxy.wait_upstream()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def web(browsers_envoy: Envoy) -> Rest:
    return Rest(browsers_envoy.url)


def listed(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


def upstream_calls(envoy: Envoy) -> int:
    stats = LOCAL.get(f"{envoy.admin}/stats?filter=contacts_grpc.upstream_rq_total$", timeout=5)
    return int(stats.text.split(":")[1])


def new_contact(rest: Rest, **fields: str) -> dict[str, Any]:
    sent = {"first_name": "Ann", "email": f"{uuid.uuid4().hex[:8]}@example.com", **fields}
    r = rest.post("/contacts", json=sent)
    assert r.status_code == 201, r.text
    return dict(r.json())


# --- CORS ---------------------------------------------------------------------------


def test_a_listed_origins_preflight_is_answered_by_envoy(web: Rest, browsers_envoy: Envoy) -> None:
    before = upstream_calls(browsers_envoy)
    # GET /contacts needs a token: a preflight never carries one.
    for path, method in (("/contacts", "GET"), (f"/contacts/{uuid.uuid4()}", "PATCH")):
        r = web.request(
            "OPTIONS",
            path,
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization,if-match,content-type",
            },
        )
        assert r.status_code in (200, 204), r.text
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert listed(r.headers["access-control-allow-methods"]) == {
            "get",
            "post",
            "patch",
            "delete",
        }
        assert listed(r.headers["access-control-allow-headers"]) >= ALLOWED_HEADERS
    # Neither reached a server: no token asked for, nothing counted.
    assert upstream_calls(browsers_envoy) == before


def test_every_reply_to_a_listed_origin_may_be_read(web: Rest) -> None:
    contact = new_contact(web)
    r = web.get(f"/contacts/{contact['id']}", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = listed(r.headers["access-control-expose-headers"])
    assert exposed >= EXPOSED_HEADERS
    assert "trailer-etag" in exposed  # a Connect page reads its trailers
    r = web.get(f"/contacts/{uuid.uuid4()}", headers={"Origin": ORIGIN})  # errors too
    assert (r.status_code, r.headers["access-control-allow-origin"]) == (404, ORIGIN)


def test_another_origin_gets_no_cors_headers(web: Rest) -> None:
    r = web.request(
        "OPTIONS",
        "/contacts",
        headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code == 404
    r = web.get(f"/contacts/{uuid.uuid4()}", headers={"Origin": OTHER_ORIGIN})
    assert not [name for name in r.headers if name.lower().startswith("access-control-")]


def test_without_origins_there_is_no_cors_at_all(rest: Rest) -> None:
    r = rest.request(
        "OPTIONS", "/contacts", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code == 404
    r = rest.get(f"/contacts/{uuid.uuid4()}", headers={"Origin": ORIGIN})
    assert not [name for name in r.headers if name.lower().startswith("access-control-")]


# --- gRPC-Web and Connect on Envoy's port ---------------------------------------------


def grpc_web_call(
    envoy: Envoy, method: str, message: Any, headers: dict[str, str] | None = None
) -> tuple[requests.Response, list[bytes], dict[str, str]]:
    """One gRPC-Web (binary) call: the reply, its messages and its trailers."""
    data = message.SerializeToString()
    r = LOCAL.post(
        f"{envoy.url}/{method}",
        data=b"\x00" + len(data).to_bytes(4, "big") + data,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "accept-encoding": "gzip",
            **(headers or {}),
        },
        timeout=10,
    )
    messages, trailers, body = [], {}, r.content
    while body:
        flag, size = body[0], int.from_bytes(body[1:5], "big")
        frame, body = body[5 : 5 + size], body[5 + size :]
        if flag & 0x80:
            for line in frame.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(frame)
    if not r.content:  # a trailers-only reply carries them as headers
        trailers.update((name.lower(), value) for name, value in r.headers.items())
    return r, messages, trailers


def test_grpc_web_reaches_every_rpc_with_auth_and_errors(
    browsers_envoy: Envoy, web: Rest, user: tuple[str, str]
) -> None:
    contact = new_contact(web)
    get = "contacts.v1.ContactsService/GetContact"
    r, messages, trailers = grpc_web_call(
        browsers_envoy, get, pb.GetContactRequest(contact_id=contact["id"]), {"Origin": ORIGIN}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/grpc-web")
    assert "content-encoding" not in r.headers  # protobuf: never compressed by Envoy
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert trailers["grpc-status"] == "0"
    assert pb.Contact.FromString(messages[0]).id == contact["id"]
    assert trailers["etag"] == '"1"'

    _, _, trailers = grpc_web_call(
        browsers_envoy, get, pb.GetContactRequest(contact_id=str(uuid.uuid4()))
    )
    assert trailers["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    assert trailers["grpc-message"] == "Contact not found"
    assert trailers["grpc-status-details-bin"]  # google.rpc details, as over gRPC

    listing = "contacts.v1.CompaniesService/ListCompanies"
    _, _, trailers = grpc_web_call(browsers_envoy, listing, pb.ListCompaniesRequest())
    assert trailers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    _, _, trailers = grpc_web_call(
        browsers_envoy,
        listing,
        pb.ListCompaniesRequest(),
        {"authorization": f"Bearer {user[1]}"},
    )
    assert trailers["grpc-status"] == "0"


def test_grpc_web_draws_on_the_same_rate_limit(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    with limited_stack(settings, store, tmp_path, limit=1) as limited:
        request = pb.GetContactRequest(contact_id=str(uuid.uuid4()))
        get = "contacts.v1.ContactsService/GetContact"
        _, _, first = grpc_web_call(limited, get, request)
        assert first["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
        _, _, refused = grpc_web_call(limited, get, request)
        assert refused["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert refused["grpc-message"] == "Rate limit exceeded"
        assert int(refused["retry-after"]) >= 1
        status = status_pb2.Status.FromString(
            base64.b64decode(refused["grpc-status-details-bin"] + "==")
        )
        assert any(d.type_url.endswith("google.rpc.RetryInfo") for d in status.details)


def test_grpc_web_text_too(browsers_envoy: Envoy, web: Rest) -> None:
    contact = new_contact(web)
    data = pb.GetContactRequest(contact_id=contact["id"]).SerializeToString()
    r = LOCAL.post(
        f"{browsers_envoy.url}/contacts.v1.ContactsService/GetContact",
        data=base64.b64encode(b"\x00" + len(data).to_bytes(4, "big") + data),
        headers={
            "content-type": "application/grpc-web-text",
            "accept": "application/grpc-web-text",
            "x-grpc-web": "1",
        },
        timeout=10,
    )
    assert r.status_code == 200
    # Each write is base64 of its own, padded: the reply is their concatenation.
    body = b"".join(base64.b64decode(part) for part in re.findall(rb"[^=]+=*", r.content))
    assert pb.Contact.FromString(body[5 : 5 + int.from_bytes(body[1:5], "big")]).id == contact["id"]
    assert b"grpc-status:0" in body


def test_connect_unary_binary(browsers_envoy: Envoy, web: Rest) -> None:
    contact = new_contact(web)
    url = f"{browsers_envoy.url}/contacts.v1.ContactsService/GetContact"
    headers = {"content-type": "application/proto", "connect-protocol-version": "1"}
    r = LOCAL.post(
        url,
        data=pb.GetContactRequest(contact_id=contact["id"]).SerializeToString(),
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 200, r.content
    assert r.headers["content-type"] == "application/proto"
    assert pb.Contact.FromString(r.content).email == contact["email"]
    assert r.headers["trailer-etag"] == '"1"'  # the call's trailing metadata
    r = LOCAL.post(
        url,
        data=pb.GetContactRequest(contact_id=str(uuid.uuid4())).SerializeToString(),
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    assert r.json()["message"] == "Contact not found"
    # Envoy 1.40's bridge passes the google.rpc details on, too.
    assert "google.rpc.ErrorInfo" in {d["type"].rsplit("/")[-1] for d in r.json()["details"]}


# --- What every HTTP client expects ---------------------------------------------------


def test_a_201_says_where_the_new_resource_is(rest: Rest, user: tuple[str, str]) -> None:
    r = rest.post("/companies", token=user[1], json={"name": "Acme"})
    assert r.status_code == 201
    assert r.headers["location"] == f"/companies/{r.json()['id']}"
    assert rest.get(r.headers["location"], token=user[1]).json() == r.json()
    r = rest.post("/contacts", json={"first_name": "Bo", "email": "bo@example.com"})
    assert r.status_code == 201
    assert r.headers["location"] == f"/contacts/{r.json()['id']}"
    assert rest.get(r.headers["location"]).json() == r.json()


def raw_get(url: str, encoding: str | None, **headers: str) -> requests.Response:
    """A GET whose body is left as the wire carried it."""
    sent = {"Accept-Encoding": encoding or "identity", **headers}
    return LOCAL.get(url, headers=sent, timeout=10, stream=True)


def test_replies_of_a_kib_or_more_are_compressed(
    rest: Rest, user: tuple[str, str], company: dict[str, Any]
) -> None:
    for i in range(12):
        new_contact(rest, company_id=company["id"], last_name=f"Doe {i}")
    url = f"{rest.base_url}/contacts?company_id={company['id']}"
    auth = {"Authorization": f"Bearer {user[1]}"}
    plain = raw_get(url, None, **auth)
    assert "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) >= 1024
    packed = raw_get(url, "gzip", **auth)
    assert packed.headers["content-encoding"] == "gzip"
    wire = packed.raw.read()
    assert len(wire) < len(plain.content) / 2
    assert json.loads(gzip.decompress(wire)) == plain.json()

    openapi = raw_get(f"{rest.base_url}/openapi.json", "gzip")
    assert openapi.headers["content-encoding"] == "gzip"


def test_a_small_reply_is_sent_as_it_is(rest: Rest) -> None:
    contact = new_contact(rest)
    r = raw_get(f"{rest.base_url}/contacts/{contact['id']}", "gzip")
    assert "content-encoding" not in r.headers
    assert int(r.headers["content-length"]) < 1024
    assert r.headers["etag"] == '"1"'


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_compressed_reply_keeps_its_strong_etag(rest: Rest, coding: str) -> None:
    long = "\U0001f600" * 100  # 400 bytes of UTF-8 in 100 characters
    contact = new_contact(rest, first_name=long, last_name=long, designation=long)
    url = f"{rest.base_url}/contacts/{contact['id']}"
    r = raw_get(url, coding)
    assert r.headers["content-encoding"] == coding
    assert r.headers["etag"] == '"1"'  # strong: not W/"1"
    assert not [name for name in r.headers if name.lower().startswith("x-contacts-")]
    r = LOCAL.patch(
        url,
        json={"phone": "+1 555 0100"},
        headers={"If-Match": r.headers["etag"], "Accept-Encoding": coding},
        timeout=10,
        stream=True,
    )
    assert r.status_code == 200
    assert (r.headers["content-encoding"], r.headers["etag"]) == (coding, '"2"')


def test_a_browser_that_accepts_every_coding_gets_gzip(rest: Rest) -> None:
    r = raw_get(f"{rest.base_url}/openapi.json", "gzip, deflate, br, zstd")
    assert r.headers["content-encoding"] == "gzip"
    r = raw_get(f"{rest.base_url}/openapi.json", "gzip;q=0.5, br")
    assert r.headers["content-encoding"] == "br"


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_a_204_leaves_the_connection_clean(rest: Rest, superuser_token: str, encoding: str) -> None:
    """The next reply on a kept-alive connection after a 204 is read intact."""
    made = rest.post("/contacts", json={"first_name": "Z", "email": "z@example.com"}).json()
    address = urlsplit(rest.base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    headers = {"Accept-Encoding": encoding, "Authorization": f"Bearer {superuser_token}"}
    connection.request("DELETE", f"/contacts/{made['id']}", headers=headers)
    deleted = connection.getresponse()
    assert (deleted.status, deleted.read()) == (204, b"")
    assert deleted.getheader("content-encoding") is None
    connection.request("GET", f"/contacts/{made['id']}", headers={"Accept-Encoding": encoding})
    missing = connection.getresponse()
    assert (missing.status, json.loads(missing.read())) == (404, {"detail": "Contact not found"})
    connection.close()


# --- gRPC: reflection v1, and no internal metadata ------------------------------------


@pytest.fixture(scope="module", params=["direct", "through-envoy"])
def grpc_port(request: pytest.FixtureRequest, app: App, envoy: Envoy) -> int:
    return app.port if request.param == "direct" else envoy.port


def reflect(port: int, service: str, request: reflection_pb2.ServerReflectionRequest) -> Any:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        # v1 and v1alpha are the same messages under two names.
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return next(iter(call(iter([request]), timeout=10)))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_both_versions(grpc_port: int, version: str) -> None:
    service = f"grpc.reflection.{version}.ServerReflection"
    reply = reflect(grpc_port, service, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "contacts.v1.ContactsService",
        "contacts.v1.CompaniesService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    for symbol in ("contacts.v1.ContactsService", "grpc.reflection.v1.ServerReflection"):
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        reply = reflect(grpc_port, service, request)
        assert reply.file_descriptor_response.file_descriptor_proto, symbol


def test_no_internal_metadata_reaches_grpc_clients(grpc_port: int, rest: Rest) -> None:
    contact = new_contact(rest)
    with grpc.insecure_channel(
        f"127.0.0.1:{grpc_port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        # A client's own x-contacts-* metadata changes nothing either.
        forged = (("x-contacts-rest-path", "/contacts"), ("x-contacts-fields", "phone"))
        _, call = stub.CreateContact.with_call(
            pb.CreateContactRequest(first_name="Cy", email="cy@example.com"),
            metadata=forged,
            timeout=10,
        )
        received = [*call.initial_metadata(), *call.trailing_metadata()]
        _, call = stub.GetContact.with_call(
            pb.GetContactRequest(contact_id=contact["id"]), timeout=10
        )
        received += [*call.initial_metadata(), *call.trailing_metadata()]
        for request in (
            pb.GetContactRequest(contact_id=str(uuid.uuid4())),
            pb.GetContactRequest(contact_id="not-a-uuid"),
        ):
            with pytest.raises(grpc.RpcError) as failed:
                stub.GetContact(request, metadata=forged, timeout=10)
            error: Any = failed.value
            received += [*error.initial_metadata(), *error.trailing_metadata()]
    names = {name for name, _ in received}
    assert "x-request-id" in names
    assert not [name for name in names if name.startswith("x-contacts-")], names


# --- buf curl: a gRPC tool nobody here wrote, by reflection ---------------------------


@pytest.mark.parametrize("protocol", ["grpc", "grpcweb", "connect"])
def test_buf_curl_speaks_every_protocol_through_envoy(
    protocol: str, browsers_envoy: Envoy, web: Rest, tmp_path: Path
) -> None:
    contact = new_contact(web)

    def curl(contact_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(BUF),
                "curl",
                "--protocol",
                protocol,
                "--http2-prior-knowledge",
                "--data",
                json.dumps({"contact_id": contact_id}),
                f"{browsers_envoy.url}/contacts.v1.ContactsService/GetContact",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_PROXY": "*"},
        )

    found = curl(contact["id"])
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["email"] == contact["email"]
    missing = curl(str(uuid.uuid4()))
    assert missing.returncode != 0
    error = json.loads(missing.stdout or missing.stderr)
    assert (error["code"], error["message"]) == ("not_found", "Contact not found")


# --- The OpenAPI document tells the whole truth ---------------------------------------


@pytest.fixture(scope="module")
def openapi(rest: Rest) -> dict[str, Any]:
    return dict(rest.get("/openapi.json").json())


def test_what_null_clears_is_nullable_and_nothing_else(openapi: dict[str, Any]) -> None:
    body = openapi["paths"]["/contacts/{contact_id}"]["patch"]["requestBody"]
    properties = body["content"]["application/json"]["schema"]["properties"]
    nullable = {name for name, schema in properties.items() if "null" in schema.get("type", [])}
    assert nullable == set(CLEARABLE) == {"company_id", "last_name", "phone", "designation"}
    for other in ("POST /contacts", "POST /companies"):
        verb, path = other.split()
        schema = openapi["paths"][path][verb.lower()]["requestBody"]["content"]
        fields = schema["application/json"]["schema"]["properties"].values()
        assert not [s for s in fields if "null" in s.get("type", [])], other


def test_null_clears_as_documented(rest: Rest, openapi: dict[str, Any]) -> None:
    contact = new_contact(rest, last_name="Doe", phone="+1 555", designation="CEO")
    r = rest.patch(
        f"/contacts/{contact['id']}",
        json={"last_name": None, "phone": None, "designation": None},
    )
    assert r.status_code == 200
    assert not {"last_name", "phone", "designation"} & set(r.json())
    r = rest.patch(f"/contacts/{contact['id']}", json={"email": None})
    assert r.status_code == 400


@pytest.mark.parametrize("path", ["/contacts", "/companies"])
def test_paging_bounds_are_the_real_ones(
    rest: Rest, openapi: dict[str, Any], user: tuple[str, str], company: dict[str, Any], path: str
) -> None:
    parameters = {p["name"]: p["schema"] for p in openapi["paths"][path]["get"]["parameters"]}
    query = {"company_id": company["id"]} if path == "/contacts" else {}
    for name in ("skip", "limit"):
        low, high = parameters[name]["minimum"], parameters[name]["maximum"]
        for value, accepted in ((low, True), (high, True), (low - 1, False)):
            r = rest.get(path, token=user[1], params={**query, name: value})
            assert (r.status_code == 200) == accepted, (name, value, r.text)
    r = rest.get(path, token=user[1], params={**query, "limit": parameters["limit"]["maximum"] + 1})
    assert r.status_code == 400


def test_reply_headers_are_modelled(openapi: dict[str, Any]) -> None:
    operations = [op for item in openapi["paths"].values() for op in item.values()]
    for operation in operations:
        for status, response in operation["responses"].items():
            assert "x-request-id" in response["headers"], (operation["operationId"], status)
            if status == "201":
                assert "Location" in response["headers"]
            if status == "429":
                assert "Retry-After" in response["headers"]
            if status < "400":
                assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
                    response["headers"]
                )
    get = openapi["paths"]["/contacts/{contact_id}"]["get"]["responses"]["200"]
    assert "ETag" in get["headers"]


# --- CONTACTS_CORS_ORIGINS ------------------------------------------------------------


def test_cors_origins_are_read_as_origins() -> None:
    read = Settings.from_env({"CONTACTS_JWT_SECRET": "s" * 40, "CONTACTS_CORS_ORIGINS": ""})
    assert read.cors_origins == ()
    env = {"CONTACTS_JWT_SECRET": "s" * 40, "CONTACTS_CORS_ORIGINS": f" {ORIGIN}, http://a:8080"}
    assert Settings.from_env(env).cors_origins == (ORIGIN, "http://a:8080")
    for wrong in ("app.example.com", "https://app.example.com/", "ftp://x", "https://a/b"):
        with pytest.raises(SettingsError):
            Settings.from_env({**env, "CONTACTS_CORS_ORIGINS": wrong})


@pytest.mark.parametrize("origins", [(), ("*",), (ORIGIN, OTHER_ORIGIN)])
def test_envoy_takes_every_form_of_cors_origins(origins: tuple[str, ...], tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(stack.render_envoy_config((("127.0.0.1", 1),), 0, 0, cors_origins=origins))
    stack.validate_envoy_config(config)
