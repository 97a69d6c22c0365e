"""The database connection: URLs read by libpq, a full pool, a probe that never dies."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import grpc
import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.data.database import open_database, postgres_parameters
from server.data.offload import Offload
from server.data.queries import PostgresReads
from server.data.store import Store
from server.errors import StoreUnavailable
from server.rpc.app import App
from server.settings import Settings
from tests.conftest import BACKEND
from tests.harness import wait_for
from tests.test_faults import PrivatePostgres, server_binaries

PASSWORD = "p@ss:w/rd?#%& é"

postgres_only = pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL only")


def test_a_postgresql_url_is_read_by_libpq() -> None:
    url = f"postgresql://us%40er:{quote(PASSWORD, safe='')}@db.internal:6543/crm?sslmode=require"
    assert postgres_parameters(url) == {
        "user": "us@er",
        "password": PASSWORD,
        "host": "db.internal",
        "port": "6543",
        "dbname": "crm",
        "sslmode": "require",
        "connect_timeout": "3",
    }
    # A socket directory in the query, and a timeout of the URL's own.
    assert postgres_parameters("postgresql:///crm?host=/run/postgresql&connect_timeout=9") == {
        "dbname": "crm",
        "host": "/run/postgresql",
        "connect_timeout": "9",
    }


@pytest.fixture(scope="module")
def guarded_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL whose superuser has a password full of URL delimiters."""
    pg = PrivatePostgres(server_binaries(), password=PASSWORD)
    pg.start()
    yield pg
    pg.remove()


def with_password(pg: PrivatePostgres, password: str, query: str = "") -> str:
    return f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{pg.port}/postgres{query}"


@postgres_only
def test_a_percent_encoded_password_works_on_both_drivers(
    guarded_postgres: PrivatePostgres,
) -> None:
    url = with_password(guarded_postgres, PASSWORD)
    db = open_database(url, max_connections=1)
    with db.connection_context():
        assert db.execute_sql("SELECT 1").fetchone() == (1,)

    async def read() -> None:
        reads = await PostgresReads.connect(url, 1)
        try:
            await reads.ping()
            assert await reads._pool.fetchval("SELECT 1") == 1
        finally:
            await reads.close()

    asyncio.run(read())
    with pytest.raises(Exception, match="password authentication failed"):
        open_database(with_password(guarded_postgres, "wrong"), 1).connect()


@postgres_only
def test_sslmode_in_the_url_is_obeyed(guarded_postgres: PrivatePostgres) -> None:
    # This server has no TLS: a client that requires it must refuse to go on.
    url = with_password(guarded_postgres, PASSWORD, "?sslmode=require")
    with pytest.raises(peewee.OperationalError, match="SSL"):
        open_database(url, max_connections=1).connect()

    async def read() -> None:
        reads = await PostgresReads.connect(url, 1)
        try:
            with pytest.raises(StoreUnavailable) as refused:
                await reads.contact(uuid.uuid4())
            assert "SSL" in str(refused.value.__cause__)
        finally:
            await reads.close()

    asyncio.run(read())


@postgres_only
def test_a_full_pool_waits_then_is_unavailable(store: Store) -> None:
    size = store.db._max_connections  # type: ignore[attr-defined]
    holding, release = threading.Barrier(size + 1), threading.Event()

    def hold() -> None:
        with store.db.connection_context():
            store.db.execute_sql("SELECT 1")
            holding.wait()
            release.wait()

    holders = [threading.Thread(target=hold) for _ in range(size)]
    for thread in holders:
        thread.start()
    try:
        holding.wait()
        with pytest.raises(StoreUnavailable):
            store.create_company("Full", owner_id="pool")
    finally:
        release.set()
        for thread in holders:
            thread.join()
    assert store.create_company("Free again", owner_id="pool").name == "Free again"


@postgres_only
def test_a_full_read_pool_waits_then_is_unavailable_and_the_probe_still_answers(
    settings: Settings,
) -> None:
    async def scenario() -> None:
        reads = await PostgresReads.connect(settings.database_url, 1)
        try:
            async with reads._pool.acquire():
                with pytest.raises(StoreUnavailable):
                    await reads.contact(uuid.uuid4())
                await reads.ping()  # a connection of its own: the pool's state is no outage
            assert await reads.contact(uuid.uuid4()) is None
        finally:
            await reads.close()

    asyncio.run(scenario())


def test_the_health_probe_survives_any_error(
    settings: Settings,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ping, failures = Offload.ping, [ValueError("an error nobody foresaw")] * 3

    async def flaky(self: Offload) -> Any:
        if failures:
            raise failures.pop()
        return await ping(self)

    monkeypatch.setattr(Offload, "ping", flaky)
    app = App(settings, store, host="127.0.0.1", probe_interval=0.05)
    with caplog.at_level(logging.ERROR, logger="server.rpc.app"):
        app.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                def status() -> int:
                    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)

                # Down while the probe fails, and back once it works: it lived on.
                wait_for(lambda: not failures, what="the failing probes")
                wait_for(
                    lambda: status() == health_pb2.HealthCheckResponse.SERVING,
                    what="health to follow the probe again",
                )
        finally:
            app.stop(grace=0)
    assert any("the database probe failed" in r.getMessage() for r in caplog.records)
