"""Tokens from an identity provider (CONTRACT.md, "Production identity and TLS"): a real
OpenID Connect provider's, and the ones made here that no provider would issue, through
Envoy (REST) and on the gRPC port directly."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from contacts.v1 import contacts_pb2, contacts_pb2_grpc
from server.data.store import Store
from server.rpc.app import create_app
from server.settings import PROJECT_ROOT, Settings
from tests.conftest import Rest, bearer
from tests.harness import Envoy, free_port
from tests.identity import AUDIENCE, Issuer, Key, Provider, provider

REFUSED = "Could not validate credentials"
UNAVAILABLE = "Identity provider unavailable"


@dataclasses.dataclass
class Door:
    """One OIDC-mode server: REST through its Envoy (when it has one), and gRPC."""

    rest: Rest | None
    companies: contacts_pb2_grpc.CompaniesServiceStub

    def grpc(self, token: str | None) -> tuple[grpc.StatusCode, str]:
        try:
            self.companies.ListCompanies(
                contacts_pb2.ListCompaniesRequest(),
                metadata=bearer(token) if token is not None else None,
                timeout=20,
            )
        except grpc.RpcError as error:
            return error.code(), error.details()
        return grpc.StatusCode.OK, ""

    def status(self, token: str) -> int:
        """REST's status for a call that needs a token."""
        assert self.rest is not None
        return self.rest.get("/companies", token=token).status_code


@contextmanager
def serving(
    settings: Settings, store: Store, workdir: Path, issuer: str, envoy: bool = True, **more: Any
) -> Iterator[Door]:
    oidc = dataclasses.replace(
        settings,
        oidc_issuer=issuer,
        oidc_audience=AUDIENCE,
        jwt_secret="",
        page_token_secret="page-tokens-" + "x" * 32,
        **more,
    )
    app = create_app(oidc, store, host="127.0.0.1")
    app.start()
    proxy = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            if envoy:
                proxy = Envoy(app.proxy_port, workdir)
                proxy.wait_upstream()
            rest = Rest(proxy.url) if proxy is not None else None
            yield Door(rest, contacts_pb2_grpc.CompaniesServiceStub(channel))
    finally:
        if proxy is not None:
            proxy.stop()
        app.stop(grace=1)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {name: Key.make(name) for name in ("RS256", "ES256", "EdDSA")}


@pytest.fixture(scope="module")
def issuer(keys: dict[str, Key]) -> Iterator[Issuer]:
    running = Issuer(list(keys.values()))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def door(
    settings: Settings, store: Store, issuer: Issuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Door]:
    with serving(settings, store, tmp_path_factory.mktemp("oidc"), issuer.url) as serving_door:
        yield serving_door


@pytest.fixture(scope="module")
def real_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    """The real provider, shared by the module (its last test stops it)."""
    with provider(tmp_path_factory.mktemp("provider")) as running:
        yield running


@pytest.fixture(scope="module")
def provider_door(
    settings: Settings,
    store: Store,
    real_provider: Provider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Door]:
    workdir = tmp_path_factory.mktemp("provider-door")
    with serving(settings, store, workdir, real_provider.url) as serving_door:
        yield serving_door


def assert_refused(door: Door, token: str, why: str) -> None:
    assert door.rest is not None
    r = door.rest.get("/companies", token=token)
    assert r.status_code == 401, (why, r.status_code, r.text)
    assert r.json() == {"detail": REFUSED}, why
    assert r.headers["www-authenticate"].startswith("Bearer"), why
    assert door.grpc(token) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED), why


def test_a_real_providers_token_is_accepted_through_envoy_and_grpc(
    provider_door: Door, real_provider: Provider
) -> None:
    # The provider's ID token has no kid: its key set holds exactly one key.
    token = real_provider.token(f"ada-{uuid.uuid4().hex[:6]}")
    assert "kid" not in jwt.get_unverified_header(token)
    assert provider_door.rest is not None
    made = provider_door.rest.post("/companies", token=token, json={"name": "Acme"})
    assert made.status_code == 201, made.text
    assert provider_door.grpc(token) == (grpc.StatusCode.OK, "")
    # Another user's company: refused, unless the provider grants contacts.admin.
    other = real_provider.token(f"bob-{uuid.uuid4().hex[:6]}")
    assert provider_door.rest.get(f"/companies/{made.json()['id']}", token=other).status_code == 403
    admin = real_provider.token(f"root-{uuid.uuid4().hex[:6]}", scope="openid contacts.admin")
    got = provider_door.rest.get(f"/companies/{made.json()['id']}", token=admin)
    assert got.status_code == 200, got.text


def test_every_allowed_algorithm_is_accepted(
    door: Door, issuer: Issuer, keys: dict[str, Key]
) -> None:
    for name, key in keys.items():
        assert door.status(issuer.token(key)) == 200, name
        assert door.grpc(issuer.token(key)) == (grpc.StatusCode.OK, ""), name


def test_issuer_slash_audience_list_and_clock_skew_are_forgiven(
    door: Door, issuer: Issuer, keys: dict[str, Key]
) -> None:
    key, now = keys["RS256"], int(time.time())
    forgiven: dict[str, dict[str, Any]] = {
        "iss with a trailing slash": {"iss": issuer.url + "/"},
        "aud a list holding ours": {"aud": ["other-app", AUDIENCE]},
        "exp 10 s ago": {"exp": now - 10},
        "iat 10 s ahead": {"iat": now + 10},
        "nbf 10 s ahead": {"nbf": now + 10},
    }
    for why, claims in forgiven.items():
        token = key.sign({**issuer.claims(), **claims})
        assert door.status(token) == 200, why


def hs256_with_public_key(key: Key, claims: dict[str, Any]) -> str:
    """The old confusion attack: the public key's PEM bytes used as an HMAC secret."""
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    encode = lambda part: base64.urlsafe_b64encode(part).rstrip(b"=")  # noqa: E731
    signing_input = encode(json.dumps(header).encode()) + b"." + encode(json.dumps(claims).encode())
    signature = hmac.new(pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + encode(signature)).decode()


def test_tokens_a_provider_would_not_issue_are_refused(
    door: Door, issuer: Issuer, keys: dict[str, Key]
) -> None:
    key, now = keys["RS256"], int(time.time())
    claims = issuer.claims()
    never_published = Key.make("RS256", kid=key.kid)  # the same kid, another key
    without = lambda name: {k: v for k, v in claims.items() if k != name}  # noqa: E731
    refused = {
        "another audience": key.sign({**claims, "aud": "other-app"}),
        "another issuer": key.sign({**claims, "iss": "http://127.0.0.1:1/realms/other"}),
        "expired past the skew": key.sign({**claims, "exp": now - 60}),
        "not before, past the skew": key.sign({**claims, "nbf": now + 120}),
        "issued in the future, past the skew": key.sign({**claims, "iat": now + 120}),
        "unsigned (alg none)": jwt.encode(claims, "", algorithm="none", headers={"kid": key.kid}),
        "HS256 keyed with the public key": hs256_with_public_key(key, claims),
        "signed by a key never published": never_published.sign(claims),
        "no kid, several keys published": Key(None, "RS256", key.private).sign(claims),
        "no aud": key.sign(without("aud")),
        "no iss": key.sign(without("iss")),
        "no sub": key.sign(without("sub")),
        "no exp": key.sign(without("exp")),
        "RS256 header on an EC key": Key(keys["ES256"].kid, "RS256", key.private).sign(claims),
        "garbage": "not.a.jwt",
    }
    for why, token in refused.items():
        assert_refused(door, token, why)


def test_the_superuser_scope_holds_in_the_local_mode_too(rest: Rest, settings: Settings) -> None:
    def token(sub: str, **claims: Any) -> str:
        claims = {"sub": sub, "exp": int(time.time()) + 600, **claims}
        return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")

    made = rest.post("/companies", token=token(f"o-{uuid.uuid4().hex[:6]}"), json={"name": "A"})
    assert made.status_code == 201, made.text
    path = f"/companies/{made.json()['id']}"
    assert rest.get(path, token=token("someone")).status_code == 403
    assert rest.get(path, token=token("admin", scope="openid contacts.admin")).status_code == 200
    assert rest.get(path, token=token("admin", scp=["contacts.admin"])).status_code == 200


def test_an_issuer_configured_with_a_trailing_slash(
    settings: Settings, store: Store, issuer: Issuer, keys: dict[str, Key], tmp_path: Path
) -> None:
    with serving(settings, store, tmp_path, issuer.url + "/", envoy=False) as door:
        assert door.grpc(issuer.token(keys["RS256"])) == (grpc.StatusCode.OK, "")


def test_a_key_the_issuer_adds_is_accepted_within_15_s(door: Door, issuer: Issuer) -> None:
    rotated = Key.make("RS256")
    token = issuer.token(rotated)
    issuer.keys.append(rotated)
    started = time.monotonic()
    while door.status(token) != 200:
        assert time.monotonic() - started < 15, "the new key was not accepted within 15 s"
        time.sleep(0.5)
    assert door.grpc(token) == (grpc.StatusCode.OK, "")


def test_kids_naming_no_key_are_refused_without_hammering_the_issuer(
    door: Door, issuer: Issuer
) -> None:
    stranger = Key.make("RS256")
    before = issuer.fetches
    for kid in ("../../../etc/passwd", "https://evil.example/jwks?x=1#y", "%2e%2e/%00", "k" * 300):
        token = Key(kid, "RS256", stranger.private).sign(issuer.claims())
        assert_refused(door, token, kid)
    for _ in range(20):
        assert door.status(Key.make("ES256").sign(issuer.claims())) == 401
    # One refetch for all of them (CONTRACT.md: at most one each 10 s).
    assert issuer.fetches - before <= 1


def test_superuser_by_scope_or_scp(door: Door, issuer: Issuer, keys: dict[str, Key]) -> None:
    key = keys["ES256"]
    owner = issuer.token(key, sub=f"owner-{uuid.uuid4().hex[:6]}")
    assert door.rest is not None
    made = door.rest.post("/companies", token=owner, json={"name": "Acme"})
    assert made.status_code == 201, made.text
    path = f"/companies/{made.json()['id']}"
    grants: dict[str, tuple[dict[str, Any], int]] = {
        "scope": ({"scope": "openid contacts.admin"}, 200),
        "scp array": ({"scp": ["email", "contacts.admin"]}, 200),
        "is_superuser": ({"is_superuser": True}, 200),
        "a longer scope": ({"scope": "contacts.admin.read"}, 403),
        "is_superuser not true": ({"is_superuser": "true"}, 403),
    }
    for why, (claims, status) in grants.items():
        token = issuer.token(key, sub=f"someone-{uuid.uuid4().hex[:6]}", **claims)
        assert door.rest.get(path, token=token).status_code == status, why


def test_cached_keys_keep_working_while_the_issuer_is_down(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    key = Key.make("EdDSA")
    issuer = Issuer([key])
    try:
        with serving(settings, store, tmp_path, issuer.url) as door:
            assert door.status(issuer.token(key)) == 200
            issuer.stop()
            assert door.status(issuer.token(key, sub="new-while-down")) == 200
            # A key not cached cannot be checked now: 503, never 401 or 500.
            unseen = Key.make("RS256").sign(issuer.claims())
            assert door.rest is not None
            r = door.rest.get("/companies", token=unseen)
            assert (r.status_code, r.json()) == (503, {"detail": UNAVAILABLE})
            assert "www-authenticate" not in r.headers
            assert door.grpc(unseen) == (grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)
            # Public routes still serve callers without a token.
            assert door.rest.get(f"/contacts/{uuid.uuid4()}").status_code == 404
    finally:
        issuer.stop()


@pytest.mark.parametrize(
    "answer",
    ["not JSON", "huge", "no keys list", "another issuer", "http jwks elsewhere"],
)
def test_an_unusable_answer_publishes_no_key(
    answer: str, settings: Settings, store: Store, tmp_path: Path
) -> None:
    key = Key.make("RS256")
    issuer = Issuer([key])
    if answer == "not JSON":
        issuer.jwks_body = b"<html>maintenance</html>"
    elif answer == "huge":
        issuer.jwks_body = b'{"keys": [' + b" " * (2 << 20) + b"]}"
    elif answer == "no keys list":
        issuer.jwks_body = b'{"keys": {"a": 1}}'
    elif answer == "another issuer":
        issuer.discovery_issuer = "https://id.example.com"
    elif answer == "http jwks elsewhere":  # plain http is for loopback alone
        issuer.jwks_uri = "http://id.example.com/jwks"
    try:
        with serving(settings, store, tmp_path, issuer.url, envoy=False) as door:
            # The issuer was heard and published nothing usable: 401, not 500 nor 503.
            assert door.grpc(issuer.token(key)) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED)
    finally:
        issuer.stop()


def test_a_key_set_sent_a_byte_at_a_time_is_given_up_on(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    key = Key.make("RS256")
    issuer = Issuer([key])
    issuer.trickle = True
    try:
        with serving(settings, store, tmp_path, issuer.url, envoy=False) as door:
            started = time.monotonic()
            assert door.grpc(issuer.token(key)) == (grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)
            assert time.monotonic() - started < 10
    finally:
        issuer.stop()


def test_keys_of_unknown_types_are_skipped(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    good = Key.make("ES256")
    issuer = Issuer([good])
    issuer.extra_keys = [
        {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(b"s" * 32).decode()},
        {"kty": "XYZ", "kid": "future"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not an object",
    ]
    try:
        with serving(settings, store, tmp_path, issuer.url, envoy=False) as door:
            assert door.grpc(issuer.token(good)) == (grpc.StatusCode.OK, "")
            secret = jwt.encode(
                issuer.claims(), b"s" * 32, algorithm="HS256", headers={"kid": "shared"}
            )
            assert door.grpc(secret) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED)
    finally:
        issuer.stop()


def test_the_service_starts_while_the_issuer_is_down(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with serving(settings, store, tmp_path, nowhere, envoy=False) as door:
        assert door.grpc(None) == (grpc.StatusCode.UNAUTHENTICATED, "Not authenticated")
        token = Key.make("RS256").sign({"iss": nowhere, "aud": AUDIENCE, "sub": "a", "exp": 2**31})
        assert door.grpc(token) == (grpc.StatusCode.UNAVAILABLE, UNAVAILABLE)


def test_a_key_the_issuer_withdrew_stops_working(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    """Even a token remembered as verified: the key set is fetched again on a timer."""
    key, kept = Key.make("RS256"), Key.make("ES256")
    issuer = Issuer([key, kept])
    try:
        with serving(
            settings, store, tmp_path, issuer.url, envoy=False, oidc_refresh_seconds=1
        ) as door:
            token = issuer.token(key)
            assert door.grpc(token) == (grpc.StatusCode.OK, "")
            issuer.keys.remove(key)
            started = time.monotonic()
            while door.grpc(token)[0] is grpc.StatusCode.OK:
                assert time.monotonic() - started < 10
                time.sleep(0.2)
            assert door.grpc(token) == (grpc.StatusCode.UNAUTHENTICATED, REFUSED)
            assert door.grpc(issuer.token(kept)) == (grpc.StatusCode.OK, "")
    finally:
        issuer.stop()


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"CONTACTS_OIDC_ISSUER": "https://id.example.com"}, "CONTACTS_OIDC_AUDIENCE"),
        (
            {"CONTACTS_OIDC_ISSUER": "http://id.example.com", "CONTACTS_OIDC_AUDIENCE": "a"},
            "https://",
        ),
    ],
)
def test_the_service_refuses_to_start_without_a_safe_issuer(
    env: dict[str, str], complaint: str, tmp_path: Path
) -> None:
    environment = {
        "PATH": "/usr/bin:/bin",
        "CONTACTS_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
        "CONTACTS_GRPC_PORT": str(free_port()),
        "CONTACTS_PROXY_PORT": str(free_port()),
        "CONTACTS_METRICS_PORT": "0",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert complaint in done.stderr


def test_the_real_providers_cached_key_works_after_it_stops(
    provider_door: Door, real_provider: Provider
) -> None:
    """Last: it stops the module's provider."""
    used = real_provider.token(f"late-{uuid.uuid4().hex[:6]}")
    unused = real_provider.token(f"later-{uuid.uuid4().hex[:6]}")
    assert provider_door.status(used) == 200
    real_provider.stop()
    assert provider_door.status(used) == 200
    # A token never seen before: checked with the key cached before the provider stopped.
    assert provider_door.status(unused) == 200
    assert provider_door.grpc(unused) == (grpc.StatusCode.OK, "")
