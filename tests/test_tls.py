"""TLS on every port (CONTRACT.md, "Production identity and TLS"): the gRPC port with
the service's certificate, renewed by rewriting its files, mutual TLS with
CONTACTS_TLS_CLIENT_CA, plaintext health for probes; Envoy's port with ALPN h2 and
http/1.1. Certificates from trustme; clients are grpcio, grpcurl, curl and Python's ssl."""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contacts.v1 import contacts_pb2, contacts_pb2_grpc
from server.data.store import Store
from server.rpc.app import App, create_app
from server.settings import PROJECT_ROOT, Settings
from tests.certificates import Certificates, make_certificates, served_serial
from tests.harness import Stack, free_port, health_serving

GRPCURL = str(PROJECT_ROOT / ".venv" / "bin" / "grpcurl")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_app(settings: Settings, store: Store, certificates: Certificates) -> Iterator[App]:
    """A server whose gRPC port requires a client certificate (mutual TLS), with a
    plaintext health port beside it."""
    secured = dataclasses.replace(
        settings,
        tls_cert=str(certificates.cert),
        tls_key=str(certificates.key),
        tls_client_ca=str(certificates.ca_file),
        health_port=free_port(),
    )
    app = create_app(secured, store, host="127.0.0.1")
    app.start()
    yield app
    app.stop(grace=1)


def secure_channel(
    app: App, certificates: Certificates, client: tuple[Path, Path] | None
) -> grpc.Channel:
    cert, key = client or (None, None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca_file.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{app.port}", credentials)


def check(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_grpc_with_a_client_certificate_is_served(tls_app: App, certificates: Certificates) -> None:
    with secure_channel(tls_app, certificates, certificates.client()) as channel:
        assert check(channel) is grpc.StatusCode.OK
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetContact(contacts_pb2.GetContactRequest(contact_id=str(uuid.uuid4())), timeout=5)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def test_tokens_are_still_required_over_mutual_tls(
    tls_app: App, certificates: Certificates
) -> None:
    with secure_channel(tls_app, certificates, certificates.client()) as channel:
        stub = contacts_pb2_grpc.CompaniesServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListCompanies(contacts_pb2.ListCompaniesRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_grpc_without_a_trusted_client_certificate_is_refused(
    tls_app: App, certificates: Certificates
) -> None:
    stranger = certificates.client("stranger", ca=trustme.CA())
    for client in (None, stranger):
        with secure_channel(tls_app, certificates, client) as channel:
            assert check(channel) is grpc.StatusCode.UNAVAILABLE


def test_plaintext_to_the_tls_port_fails_at_once(tls_app: App) -> None:
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{tls_app.port}") as channel:
        assert check(channel) is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5


def test_grpcurl_with_cacert_cert_and_key(tls_app: App, certificates: Certificates) -> None:
    cert, key = certificates.client("grpcurl")
    base = [GRPCURL, "-cacert", str(certificates.ca_file)]
    done = subprocess.run(
        [*base, "-cert", str(cert), "-key", str(key), f"127.0.0.1:{tls_app.port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "contacts.v1.ContactsService" in done.stdout
    refused = subprocess.run(
        [*base, "-connect-timeout", "2", f"127.0.0.1:{tls_app.port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0


def test_health_alone_is_served_in_plaintext_on_the_health_port(tls_app: App) -> None:
    port = tls_app.settings.health_port
    assert health_serving(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = contacts_pb2_grpc.ContactsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as other:
            stub.GetContact(contacts_pb2.GetContactRequest(contact_id=str(uuid.uuid4())), timeout=5)
        assert other.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_a_renewed_certificate_is_served_on_the_grpc_port(
    tls_app: App, certificates: Certificates
) -> None:
    before, _ = served_serial(tls_app.port)
    renewed = certificates.renew()
    assert renewed != before
    started = time.monotonic()
    while served_serial(tls_app.port)[0] != renewed:
        assert time.monotonic() - started < 60, "the renewed certificate was not served"
        time.sleep(0.5)
    with secure_channel(tls_app, certificates, certificates.client()) as channel:
        assert check(channel) is grpc.StatusCode.OK


def test_a_key_and_certificate_that_do_not_match_are_refused_at_start(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    mine, theirs = make_certificates(tmp_path / "a"), make_certificates(tmp_path / "b")
    wrong = dataclasses.replace(settings, tls_cert=str(mine.cert), tls_key=str(theirs.key))
    with pytest.raises(ValueError, match="not the key"):
        create_app(wrong, store, host="127.0.0.1").start()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def health_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def tls_stack(
    settings: Settings,
    certificates: Certificates,
    health_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """`python -m server run` with a certificate: Envoy's port and the gRPC port in TLS."""
    env = {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": settings.jwt_secret,
        "CONTACTS_TLS_CERT": str(certificates.cert),
        "CONTACTS_TLS_KEY": str(certificates.key),
        "CONTACTS_HEALTH_PORT": str(health_port),
    }
    running = Stack(env, tmp_path_factory.mktemp("tls-stack"), ca=certificates.ca_file)
    yield running
    running.stop()


def test_rest_over_tls_with_curl_on_h2_and_http1(
    tls_stack: Stack, certificates: Certificates
) -> None:
    url = f"{tls_stack.url}/contacts/{uuid.uuid4()}"
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        done = curl(
            "--cacert", str(certificates.ca_file), flag, "-w", "\n%{http_version} %{http_code}", url
        )
        assert done.returncode == 0, done.stderr
        reply, status = done.stdout.rsplit("\n", 1)
        assert status == f"{version} 404"
        assert reply == '{"detail":"Contact not found"}'
    docs = curl(
        "--cacert",
        str(certificates.ca_file),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"{tls_stack.url}/docs",
    )
    assert docs.stdout == "200"


def test_envoys_port_offers_h2_and_http1_by_alpn(tls_stack: Stack) -> None:
    assert served_serial(tls_stack.http_port, ["h2", "http/1.1"])[1] == "h2"
    assert served_serial(tls_stack.http_port, ["http/1.1"])[1] == "http/1.1"


def test_grpc_over_tls_through_envoy_and_directly(
    tls_stack: Stack, certificates: Certificates
) -> None:
    credentials = grpc.ssl_channel_credentials(certificates.ca_file.read_bytes())
    for port in (tls_stack.http_port, tls_stack.port):
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetContact(
                    contacts_pb2.GetContactRequest(contact_id=str(uuid.uuid4())), timeout=10
                )
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND, port
    listed = subprocess.run(
        [GRPCURL, "-cacert", str(certificates.ca_file), f"127.0.0.1:{tls_stack.port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "contacts.v1.ContactsService" in listed.stdout, listed.stderr


def test_plaintext_to_envoys_tls_port_fails_cleanly(tls_stack: Stack, health_port: int) -> None:
    started = time.monotonic()
    done = curl(
        "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{tls_stack.http_port}/docs"
    )
    assert done.returncode != 0  # the connection is closed: no status at all, never a 5xx
    assert done.stdout == "000"
    assert time.monotonic() - started < 5
    assert health_serving(health_port)


def test_a_renewed_certificate_is_served_on_envoys_port(
    tls_stack: Stack, certificates: Certificates
) -> None:
    renewed = certificates.renew()
    started = time.monotonic()
    while served_serial(tls_stack.http_port)[0] != renewed:
        assert time.monotonic() - started < 60, "Envoy did not serve the renewed certificate"
        time.sleep(0.5)
    r = requests.get(
        f"{tls_stack.url}/contacts/{uuid.uuid4()}", verify=str(certificates.ca_file), timeout=10
    )
    assert r.status_code == 404
