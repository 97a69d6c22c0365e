"""Envoy in front of servers on other hosts (`python -m server envoy`) over mutual TLS
(CONTRACT.md, "Production identity and TLS"): each side checks the other's certificate,
and a server believes the client address Envoy writes only from a certificate naming
CONTACTS_TLS_PROXY_NAME. Here the hosts are loopback addresses, and clients connect
from 127.0.0.2 and on, so that the address Envoy saw differs from Envoy's own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.settings import PROJECT_ROOT, Settings
from tests.certificates import Certificates, make_certificates
from tests.harness import ENVOY_ALONE, Server, Stack, free_port

LIMIT = 20  # calls a minute per client, so that a client's bucket runs out quickly


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("hosts-tls"))


@pytest.fixture(scope="module")
def server(
    settings: Settings, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`serve` with TLS: its proxy port takes Envoy's calls over mutual TLS."""
    env = {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": settings.jwt_secret,
        "CONTACTS_TLS_CERT": str(certificates.cert),
        "CONTACTS_TLS_KEY": str(certificates.key),
        "CONTACTS_TLS_CA": str(certificates.ca_file),
        "CONTACTS_HEALTH_PORT": str(free_port()),
        "CONTACTS_RATE_LIMIT_DEFAULT": str(LIMIT),
    }
    running = Server(env, tmp_path_factory.mktemp("hosts-server"))
    yield running
    running.stop()


def envoy_alone(server: Server, certificates: Certificates, name: str, workdir: Path) -> Stack:
    cert, key = certificates.client(name)
    env = {
        "CONTACTS_UPSTREAMS": f"127.0.0.1:{server.proxy_port}",
        "CONTACTS_TLS_CERT": str(certificates.cert),
        "CONTACTS_TLS_KEY": str(certificates.key),
        "CONTACTS_TLS_CA": str(certificates.ca_file),
        "CONTACTS_TLS_PROXY_CERT": str(cert),
        "CONTACTS_TLS_PROXY_KEY": str(key),
    }
    return Stack(env, workdir, workers=0, command=ENVOY_ALONE, ca=certificates.ca_file)


@pytest.fixture(scope="module")
def envoy(
    server: Server, certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """An Envoy whose certificate names it `contacts-envoy` (the default name)."""
    running = envoy_alone(server, certificates, "contacts-envoy", tmp_path_factory.mktemp("e1"))
    yield running
    running.stop()


def statuses(stack: Stack, certificates: Certificates, source: str, count: int) -> list[str]:
    """The REST statuses of `count` reads sent from the loopback address `source`."""
    url = f"{stack.url}/contacts/{uuid.uuid4()}"
    done = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--max-time", "10", "--interface", source]
        + ["--cacert", str(certificates.ca_file), "-w", "%{http_code}\\n"]
        + ["-o", "/dev/null", url] * count,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_envoy_reaches_a_server_over_mutual_tls_and_is_believed(
    envoy: Stack, certificates: Certificates
) -> None:
    # Each client address has a bucket of its own: the server believed Envoy's header.
    first = statuses(envoy, certificates, "127.0.0.2", LIMIT + 1)
    assert first[:LIMIT] == ["404"] * LIMIT
    assert first[LIMIT] == "429"
    assert statuses(envoy, certificates, "127.0.0.3", 1) == ["404"]


def test_an_envoy_not_named_contacts_envoy_is_not_believed(
    server: Server,
    certificates: Certificates,
    envoy: Stack,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    other = envoy_alone(server, certificates, "some-proxy", tmp_path_factory.mktemp("e2"))
    try:
        # Its calls are served (its certificate is the CA's), but all of them count
        # against one bucket, the proxy's own address, whatever address it names.
        sent = statuses(other, certificates, "127.0.0.4", 2 * LIMIT)
        assert "404" in sent and sent[-1] == "429"
        assert statuses(other, certificates, "127.0.0.5", 1) == ["429"]
    finally:
        other.stop()


def test_the_proxy_port_refuses_callers_without_the_cas_certificate(
    server: Server, certificates: Certificates
) -> None:
    def check(client: tuple[Path, Path] | None) -> grpc.StatusCode:
        cert, key = client or (None, None)
        credentials = grpc.ssl_channel_credentials(
            certificates.ca_file.read_bytes(),
            key.read_bytes() if key else None,
            cert.read_bytes() if cert else None,
        )
        with grpc.secure_channel(f"127.0.0.1:{server.proxy_port}", credentials) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    assert check(None) is grpc.StatusCode.UNAVAILABLE
    assert check(certificates.client("stranger", ca=trustme.CA())) is grpc.StatusCode.UNAVAILABLE
    assert check(certificates.client("a-service")) is grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("command", "missing"),
    [("serve", "CONTACTS_TLS_CA"), ("envoy", "CONTACTS_TLS_CA")],
)
def test_tls_without_a_ca_to_check_the_other_side_stops_the_start(
    command: str, missing: str, certificates: Certificates, tmp_path: Path
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "CONTACTS_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
        "CONTACTS_JWT_SECRET": "s" * 48,
        "CONTACTS_TLS_CERT": str(certificates.cert),
        "CONTACTS_TLS_KEY": str(certificates.key),
        "CONTACTS_GRPC_PORT": str(free_port()),
        "CONTACTS_PROXY_PORT": str(free_port()),
        "CONTACTS_HTTP_PORT": str(free_port()),
        "CONTACTS_ENVOY_ADMIN_PORT": str(free_port()),
        "CONTACTS_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "server", command],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert missing in done.stderr
