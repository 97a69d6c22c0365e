"""Fixtures that start the real things: the gRPC server, Envoy, a database
(how each is started is tests/harness.py, shared with the bench).

The backend comes from CONTACTS_TEST_BACKEND (sqlite, the default, or
postgresql); `make test` runs the suite once for each.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import redis
import requests

from contacts.v1 import contacts_pb2_grpc
from server.auth.tokens import Tokens
from server.data.store import Store
from server.rpc.app import App, create_app
from server.settings import Settings
from tests import harness
from tests.harness import Envoy, empty_database

BACKEND = os.environ.get("CONTACTS_TEST_BACKEND", "sqlite")
# What no database changes (clients nobody here wrote, manifests, alert rules) runs
# once, in the SQLite half: the PostgreSQL half pays only for what it varies.
database_independent = pytest.mark.skipif(
    BACKEND == "postgresql", reason="database-independent: run once, in the SQLite half"
)
POSTGRES_DSN = os.environ.get("CONTACTS_TEST_POSTGRES", harness.POSTGRES_DSN)


def in_threads(n: int, call: Callable[[Any], Any], requests: Iterable[Any]) -> list[Any]:
    """call(request) for every request, on n threads all released at the same moment."""
    start = threading.Event()

    def run(request: Any) -> Any:
        start.wait()
        return call(request)

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(run, request) for request in requests]
        start.set()
        return [future.result() for future in futures]


REDIS_URL = os.environ.get("CONTACTS_TEST_REDIS", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis for the tests that share rate-limit buckets: required in CI, else skipped."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}")
        pytest.skip(f"no Redis at {REDIS_URL}: {error}")
    return REDIS_URL


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if BACKEND not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"CONTACTS_TEST_BACKEND={BACKEND!r}: use sqlite or postgresql")
    with empty_database(tmp_path_factory.mktemp("db"), BACKEND, POSTGRES_DSN) as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        grpc_port=0,
        proxy_port=0,
        http_port=0,
        envoy_admin_port=0,
        database_url=database_url,
        jwt_secret=secrets.token_urlsafe(48),
        rate_limit_create=0,
        rate_limit_default=0,
    )


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[Store]:
    opened = Store.open(settings.database_url)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def app(settings: Settings, store: Store) -> Iterator[App]:
    running = create_app(settings, store, host="127.0.0.1")
    running.start()
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def envoy(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    proxy = Envoy(app.proxy_port, tmp_path_factory.mktemp("envoy"))
    proxy.wait_upstream()
    yield proxy
    proxy.stop()


class Rest:
    """A REST client of the service, as the seed's users are."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()

    def request(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(
            method, self.base_url + path, headers=headers, timeout=10, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture(scope="session")
def rest(envoy: Envoy) -> Rest:
    return Rest(envoy.url)


@pytest.fixture(scope="session")
def tokens(settings: Settings) -> Tokens:
    return Tokens(settings.jwt_secret)


@pytest.fixture
def user(tokens: Tokens) -> tuple[str, str]:
    """A fresh user: (sub, token)."""
    sub = f"user-{uuid.uuid4().hex[:8]}"
    return sub, tokens.issue(sub)


@pytest.fixture(scope="session")
def superuser_token(tokens: Tokens) -> str:
    return tokens.issue("root", superuser=True)


@pytest.fixture
def company(rest: Rest, user: tuple[str, str]) -> dict[str, Any]:
    """A company owned by `user`."""
    r = rest.post("/companies", token=user[1], json={"name": "Acme"})
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture(scope="session")
def channel(app: App) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def contacts_stub(channel: grpc.Channel) -> contacts_pb2_grpc.ContactsServiceStub:
    return contacts_pb2_grpc.ContactsServiceStub(channel)


@pytest.fixture(scope="session")
def companies_stub(channel: grpc.Channel) -> contacts_pb2_grpc.CompaniesServiceStub:
    return contacts_pb2_grpc.CompaniesServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str]]:
    """gRPC metadata carrying a token."""
    return (("authorization", f"Bearer {token}"),)


def body(response: requests.Response) -> Any:
    assert response.headers["content-type"] == "application/json", response.headers
    return json.loads(response.content)
