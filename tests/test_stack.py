"""`make run` as a person uses it: the whole stack up, answering, and gone after Ctrl-C.
(Started by tests/harness.py, on free ports.)"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from server.auth.tokens import Tokens
from server.settings import PROJECT_ROOT, Settings, SettingsError, local_secret
from tests.harness import Stack, free_port


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_cleanly(stack: Stack, signum: int = signal.SIGTERM) -> None:
    """Signals the stack, which must exit 0 leaving none of its ports open."""
    try:
        stack.process.send_signal(signum)
        assert stack.process.wait(timeout=60) == 0
    finally:
        stack.stop()
    for port in stack.ports():
        assert not listening(port), port


def stack_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "CONTACTS_DATABASE_URL": f"sqlite:///{tmp_path / 'contacts.db'}",
        "CONTACTS_JWT_SECRET": secrets.token_urlsafe(48),
        **extra,
    }


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_serves_rest_and_grpc_then_stops_cleanly(tmp_path: Path, signum: int) -> None:
    stack = Stack(stack_env(tmp_path), tmp_path)
    created = requests.post(
        f"{stack.url}/contacts", json={"first_name": "R", "email": "r@x.io"}, timeout=5
    )
    assert created.status_code == 201
    assert listening(stack.port)
    assert listening(stack.admin_port)
    stop_cleanly(stack, signum)


def test_local_secret_is_made_once_and_private(tmp_path: Path) -> None:
    first = local_secret(tmp_path)
    assert len(first.encode()) >= 32
    assert local_secret(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "jwt-secret").stat().st_mode) == 0o600


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        Settings.from_env({"CONTACTS_JWT_SECRET": "too-short"})


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CONTACTS_JWT_SECRET": "s" * 32,
            "CONTACTS_GRPC_PORT": "6000",
            "CONTACTS_RATE_LIMIT_CREATE": "0",
            "CONTACTS_TRUSTED_PROXIES": "10.0.0.0/8",
        }
    )
    assert settings.grpc_port == 6000
    assert settings.rate_limit_create == 0
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8"]
    with pytest.raises(SettingsError, match="CONTACTS_HTTP_PORT"):
        Settings.from_env({"CONTACTS_JWT_SECRET": "s" * 32, "CONTACTS_HTTP_PORT": "eighty"})


def test_several_workers_need_shared_buckets(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--workers", "2"],
        cwd=PROJECT_ROOT,
        env={**os.environ, **stack_env(tmp_path, CONTACTS_GRPC_PORT=str(free_port()))},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "CONTACTS_REDIS_URL" in refused.stderr
    assert "CONTACTS_RATE_LIMIT_CREATE=0" in refused.stderr


def test_two_workers_share_one_port_and_one_allowance(tmp_path: Path, redis_url: str) -> None:
    env = stack_env(tmp_path, CONTACTS_REDIS_URL=redis_url)
    stack = Stack(env, tmp_path, workers=2)
    token = Tokens(env["CONTACTS_JWT_SECRET"]).issue(f"workers-{uuid.uuid4()}")
    try:
        codes = []
        for _ in range(70):
            # A fresh connection each time, so the kernel spreads them over both workers.
            with requests.Session() as fresh:
                codes.append(
                    fresh.post(
                        f"{stack.url}/contacts",
                        json={"first_name": "W", "email": "w@x.io"},
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=5,
                    ).status_code
                )
        assert codes == [201] * 60 + [429] * 10
    finally:
        stop_cleanly(stack)


def test_upstreams_are_host_port_pairs() -> None:
    secret = {"CONTACTS_JWT_SECRET": "s" * 32}
    settings = Settings.from_env(
        {**secret, "CONTACTS_UPSTREAMS": "10.0.0.5:50052, contacts.svc:7000,[fd00::1]:50052"}
    )
    assert settings.upstreams == (("10.0.0.5", 50052), ("contacts.svc", 7000), ("fd00::1", 50052))
    assert Settings.from_env(secret).upstreams == ()  # Envoy then goes to this host's server
    for bad in ("no-port", "host:http", "host:99999", "user@host:1"):
        with pytest.raises(SettingsError, match="CONTACTS_UPSTREAMS"):
            Settings.from_env({**secret, "CONTACTS_UPSTREAMS": bad})
