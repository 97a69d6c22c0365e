"""Fixtures that start the real things: the gRPC server, Envoy, a database.

The backend comes from CONTACTS_TEST_BACKEND (sqlite, the default, or
postgresql); `make test` runs the suite once for each.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg2
import pytest
import requests

from contacts.v1 import contacts_pb2_grpc
from server import stack
from server.app import App, create_app
from server.auth import Tokens
from server.settings import Settings
from server.store import Store

BACKEND = os.environ.get("CONTACTS_TEST_BACKEND", "sqlite")
POSTGRES_ADMIN_DSN = os.environ.get(
    "CONTACTS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:
            last = error
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}: {last!r}")


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


@contextmanager
def empty_database(folder: Path) -> Iterator[str]:
    """The URL of a new, empty database of the suite's backend, dropped afterwards.

    On PostgreSQL each gets a database of its own, so concurrent runs never meet.
    """
    if BACKEND == "sqlite":
        yield f"sqlite:///{folder / f'contacts-{secrets.token_hex(4)}.db'}"
        return
    if BACKEND != "postgresql":
        raise pytest.UsageError(f"CONTACTS_TEST_BACKEND={BACKEND!r}: use sqlite or postgresql")
    name = f"contacts_test_{secrets.token_hex(6)}"
    admin = psycopg2.connect(POSTGRES_ADMIN_DSN, connect_timeout=3)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        yield f"{POSTGRES_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with empty_database(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        grpc_port=0,
        http_port=0,
        envoy_admin_port=0,
        database_url=database_url,
        jwt_secret=secrets.token_urlsafe(48),
        rate_limit_create=0,
        rate_limit_default=0,
    )


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[Store]:
    opened = Store(settings.database_url)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def app(settings: Settings, store: Store) -> Iterator[App]:
    running = create_app(settings, store, host="127.0.0.1")
    running.start()
    yield running
    running.stop(grace=1)


class Envoy:
    """A real Envoy in front of a gRPC port; its ports are picked by the kernel."""

    def __init__(self, grpc_port: int, workdir: Path) -> None:
        config = workdir / "envoy.yaml"
        config.write_text(stack.render_envoy_config(grpc_port, 0, 0, http_address="127.0.0.1"))
        admin_file = workdir / "admin-address"
        self.log = (workdir / "envoy.log").open("wb")
        self.process = subprocess.Popen(
            stack.envoy_command(config, admin_address_path=admin_file),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.admin = "http://" + wait_for(
            lambda: admin_file.exists() and admin_file.read_text().strip(), what="envoy admin"
        )
        self.port = wait_for(self._listener_port, what="envoy listener")
        self.url = f"http://127.0.0.1:{self.port}"

    def _listener_port(self) -> int:
        listeners = requests.get(f"{self.admin}/listeners?format=json", timeout=2).json()
        status = listeners["listener_statuses"][0]
        return int(status["local_address"]["socket_address"]["port_value"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def envoy(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    proxy = Envoy(app.port, tmp_path_factory.mktemp("envoy"))
    # Ready once a request makes the round trip to the server and back.
    wait_for(
        lambda: requests.get(f"{proxy.url}/contacts/{uuid.uuid4()}", timeout=2).status_code == 404,
        what="envoy to reach the server",
    )
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
