"""Buckets shared through Redis: exact across threads and processes, failing open."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.auth.tokens import Tokens
from server.limits.buckets import SKIP_AFTER_FAILURE, RedisBuckets
from server.settings import Settings
from tests.conftest import bearer
from tests.harness import Server, free_port, wait_for
from tests.test_rate_limits import Clock


def test_concurrent_calls_get_exactly_one_shared_bucket(redis_url: str) -> None:
    key = f"test:{uuid.uuid4()}"

    async def scenario() -> None:
        buckets = RedisBuckets(redis_url)
        verdicts = await asyncio.gather(*(buckets.take(key, 60) for _ in range(320)))
        assert sum(verdict.allowed for verdict in verdicts) == 60
        refused = await buckets.take(key, 60)
        assert not refused.allowed
        assert dict(refused.headers())["retry-after"] == "1"
        await buckets.close()

    asyncio.run(scenario())


def test_two_server_processes_share_one_allowance(
    redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    env = {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": settings.jwt_secret,
        "CONTACTS_REDIS_URL": redis_url,
        "CONTACTS_RATE_LIMIT_CREATE": "60",
    }
    servers = [Server(env, tmp_path) for _ in range(2)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}") for server in servers]
    try:
        stubs = [contacts_pb2_grpc.ContactsServiceStub(ch) for ch in channels]
        md = bearer(Tokens(settings.jwt_secret).issue(f"two-{uuid.uuid4()}"))
        passed = 0
        for i in range(80):
            try:
                stubs[i % 2].CreateContact(
                    pb.CreateContactRequest(first_name="T", email="t@x.io"), metadata=md
                )
                passed += 1
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert passed == 60
    finally:
        for ch in channels:
            ch.close()
        for server in servers:
            server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Redis of the test's own, which the test may stop and start."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    yield binary, port
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)


def start_redis(binary: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: redis.Redis(port=port, socket_connect_timeout=0.2).ping(), what="redis")
    return process


async def takes(buckets: RedisBuckets, n: int) -> list[bool]:
    return [(await buckets.take("k", 2)).allowed for _ in range(n)]


def test_redis_down_fails_open_and_recovers(
    private_redis: tuple[str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    binary, port = private_redis
    clock = Clock()

    async def scenario() -> None:
        buckets = RedisBuckets(f"redis://127.0.0.1:{port}/0", complain_every=3600, clock=clock)
        with caplog.at_level(logging.ERROR, logger="server.limits.buckets"):
            # Down: every call passes, and the outage is logged once.
            assert all(await takes(buckets, 5))
        assert len([r for r in caplog.records if "Redis" in r.getMessage()]) == 1
        # Back: limits hold again, with no restart, once the breaker lets a call ask.
        server = start_redis(binary, port, tmp_path)
        try:
            clock.advance(SKIP_AFTER_FAILURE)
            assert await takes(buckets, 3) == [True, True, False]
            server.terminate()
            server.wait(timeout=10)
            assert await takes(buckets, 1) == [True]  # down again: open
        finally:
            if server.poll() is None:
                server.kill()
            await buckets.close()

    asyncio.run(scenario())


class SilentRedis:
    """A Redis that never answers (a hung server, a dropped route): it only counts the
    connections made to it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.connections.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def test_after_a_failure_redis_is_skipped_for_a_while(caplog: pytest.LogCaptureFixture) -> None:
    silent = SilentRedis()
    clock = Clock()

    async def scenario() -> None:
        buckets = RedisBuckets(f"redis://127.0.0.1:{silent.port}/0", clock=clock)
        try:
            with caplog.at_level(logging.ERROR, logger="server.limits.buckets"):
                assert await takes(buckets, 1) == [True]  # waited out the timeout: open
            wait_for(lambda: len(silent.connections) == 1, what="the first connection")
            # Open: no call asks Redis, so none waits for it.
            assert all(await takes(buckets, 50))
            clock.advance(SKIP_AFTER_FAILURE)
            assert await takes(buckets, 1) == [True]  # asked again, and still no answer
            wait_for(lambda: len(silent.connections) >= 2, what="the second connection")
            assert len(silent.connections) == 2
        finally:
            await buckets.close()

    try:
        asyncio.run(scenario())
    finally:
        silent.close()
    said = [r.getMessage() for r in caplog.records if r.name == "server.limits.buckets"]
    assert len(said) == 1
    assert f"not asking it for {SKIP_AFTER_FAILURE:g} s" in said[0]


def test_secrets_are_not_in_server_logs(redis_url: str, settings: Settings, tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(48)
    env = {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": secret,
        "CONTACTS_REDIS_URL": redis_url,
    }
    server = Server(env, tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            token = Tokens(secret).issue("logged")
            stub = contacts_pb2_grpc.ContactsServiceStub(ch)
            with pytest.raises(grpc.RpcError):
                stub.GetContact(pb.GetContactRequest(contact_id="bad"), metadata=bearer(token))
    finally:
        server.stop()
    text = server.log.read_text()
    assert "serving gRPC" in text
    assert secret not in text and token not in text
