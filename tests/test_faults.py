"""Database outages: clients get UNAVAILABLE/503 at once, health says NOT_SERVING,
and the service recovers by itself. Uses a private PostgreSQL that the test
starts and stops (never the shared one)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.rpc.app import LIVENESS
from tests.harness import Envoy, Server, free_port, wait_for

UNAVAILABLE = {"detail": "The database is unavailable, try again shortly"}


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PrivatePostgres:
    """A throwaway PostgreSQL server in a temporary folder, on a free port."""

    def __init__(self, binaries: Path, password: str | None = None) -> None:
        self.bin = binaries
        self.dir = Path(tempfile.mkdtemp(prefix="contacts-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres", "postgres")
        auth = ["-A", "trust"]
        if password is not None:  # then the superuser needs it
            pwfile = self.dir / "password"
            pwfile.write_text(password)
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            auth = ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", *auth)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        # "immediate" is the closest pg_ctl comes to pulling the plug.
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def server_binaries() -> Path:
    binaries = postgres_bin()
    if binaries is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL server binaries (pg_ctl, initdb) are missing")
        pytest.skip("PostgreSQL server binaries (pg_ctl, initdb) are not installed")
    return binaries


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(server_binaries())
    pg.start()
    yield pg
    pg.remove()


@pytest.fixture
def server_on(private_postgres: PrivatePostgres, tmp_path: Path) -> Iterator[Server]:
    env = {
        "CONTACTS_DATABASE_URL": private_postgres.url,
        "CONTACTS_JWT_SECRET": secrets.token_urlsafe(48),
    }
    server = Server(env, tmp_path)
    yield server
    server.stop()


def health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
    return int(reply.status)


def test_outage_is_503_at_once_and_recovers_without_restart(
    private_postgres: PrivatePostgres, server_on: Server, tmp_path: Path
) -> None:
    envoy = Envoy(server_on.proxy_port, tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{server_on.port}")
    stub = contacts_pb2_grpc.ContactsServiceStub(channel)
    rest = requests.Session()
    base = envoy.url
    try:
        wait_for(
            lambda: rest.get(f"{base}/contacts/{uuid.uuid4()}", timeout=5).status_code == 404,
            what="the stack",
        )
        created = rest.post(
            f"{base}/contacts", json={"first_name": "F", "email": "f@x.io"}, timeout=5
        ).json()

        private_postgres.stop()

        # Every call is refused promptly (a hang would trip the client timeout).
        r = rest.get(f"{base}/contacts/{created['id']}", timeout=10)
        assert r.status_code == 503
        assert r.json() == UNAVAILABLE
        r = rest.post(f"{base}/contacts", json={"first_name": "G", "email": "g@x.io"}, timeout=10)
        assert r.status_code == 503
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetContact(pb.GetContactRequest(contact_id=created["id"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        wait_for(
            lambda: health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING,
            what="health to say NOT_SERVING",
        )
        # A liveness probe (Kubernetes') must not restart a server for an outage.
        assert health(channel, LIVENESS) == health_pb2.HealthCheckResponse.SERVING

        # The log names the cause, once for the outage and on each failed call's line
        # (written by the log's own thread, a moment after).
        def outage_logged() -> str:
            text = server_on.log.read_text()
            return text if " database unreachable" in text else ""

        log = wait_for(outage_logged, what="the outage's line in the log")
        assert log.count("ERROR server.rpc.app database unreachable: ") == 1
        assert "Connection refused" in log.split("database unreachable: ")[1].splitlines()[0]
        failed = [line for line in log.splitlines() if "code=UNAVAILABLE" in line]
        # (Envoy sends a read again on UNAVAILABLE: each failed GET is one line or more.)
        assert len(failed) >= 3 and all(" WARNING " in ln and " cause=" in ln for ln in failed)
        assert "Traceback" not in log
        metrics = server_on.metrics()
        assert metrics[("contacts_database_errors_total", ())] >= 4  # the calls and a probe
        assert metrics[("contacts_health_serving", ())] == 0

        private_postgres.start()

        wait_for(
            lambda: rest.get(f"{base}/contacts/{created['id']}", timeout=5).status_code == 200,
            what="recovery",
        )
        assert rest.get(f"{base}/contacts/{created['id']}", timeout=5).json() == created
        r = rest.post(f"{base}/contacts", json={"first_name": "H", "email": "h@x.io"}, timeout=5)
        assert r.status_code == 201
        wait_for(
            lambda: health(channel) == health_pb2.HealthCheckResponse.SERVING,
            what="health to say SERVING",
        )
    finally:
        channel.close()
        rest.close()
        envoy.stop()
