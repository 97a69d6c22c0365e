"""Buckets shared through Redis: exact across threads and processes, failing open."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.auth import Tokens
from server.limits import RedisBuckets
from server.settings import Settings
from tests.conftest import bearer
from tests.harness import Server, free_port, wait_for

REDIS_URL = os.environ.get("CONTACTS_TEST_REDIS", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="module")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}")
        pytest.skip(f"no Redis at {REDIS_URL}: {error}")
    return REDIS_URL


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


def test_redis_down_fails_open_and_recovers(
    private_redis: tuple[str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    binary, port = private_redis

    async def takes(buckets: RedisBuckets, n: int) -> list[bool]:
        return [(await buckets.take("k", 2)).allowed for _ in range(n)]

    async def scenario() -> None:
        buckets = RedisBuckets(f"redis://127.0.0.1:{port}/0", complain_every=3600)
        with caplog.at_level(logging.ERROR, logger="server.limits"):
            # Down: every call passes, and the outage is logged once.
            assert all(await takes(buckets, 5))
        assert len([r for r in caplog.records if "Redis" in r.getMessage()]) == 1
        # Back: limits hold again, with no restart.
        server = start_redis(binary, port, tmp_path)
        try:
            assert await takes(buckets, 3) == [True, True, False]
            server.terminate()
            server.wait(timeout=10)
            assert await takes(buckets, 1) == [True]  # down again: open
        finally:
            if server.poll() is None:
                server.kill()
            await buckets.close()

    asyncio.run(scenario())


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
