"""Clients nobody here wrote, generated from the live service's /openapi.json, run the
seed's flow, clearing a field with null: openapi-python-client's (its models and
our use of them pass mypy --strict), and openapi-fetch typed by openapi-typescript
(under tsc --strict); and @grpc/grpc-js, from the protos in protos/ alone,
decoding the google.rpc details of its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.rpc.app import App
from server.settings import PROJECT_ROOT
from tests.conftest import Rest, database_independent
from tests.harness import Envoy

pytestmark = database_independent

HERE = Path(__file__).with_name("generated")
BIN = Path(sys.executable).parent
GENERATE = ("--meta", "none", "--output-path", "contacts_api")
CHECKED = ("python_flow.py", "contacts_api")
NODE_MODULES = PROJECT_ROOT / "node_modules"
NODE_BIN = NODE_MODULES / ".bin"
TSC = ("--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext")


def test_openapi_python_client_runs_the_flow_under_mypy_strict(
    rest: Rest, user: tuple[str, str], tmp_path: Path
) -> None:
    # Without .venv/bin on the PATH: the generator's post-hook would run our ruff,
    # whose fixes (not the generator) break its code's types. Its output as made.
    env = {**os.environ, "PATH": "/usr/bin:/bin", "NO_PROXY": "*"}
    url = f"{rest.base_url}/openapi.json"
    generated = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--url", url, *GENERATE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    # Every route and schema made it into the client.
    assert "Warning" not in generated.stdout.replace("Warning(s) encountered while generating", "")
    shutil.copy(HERE / "python_flow.py", tmp_path / "python_flow.py")
    typed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *CHECKED],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert typed.returncode == 0, typed.stdout
    flow = subprocess.run(
        [sys.executable, "python_flow.py", rest.base_url, user[1]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert flow.returncode == 0, flow.stderr
    seen = json.loads(flow.stdout)
    assert seen["created"][0] == 201 and seen["created"][1].startswith("/contacts/")
    assert seen["changed"] == ["Head of Sales", True]  # phone cleared with None
    assert seen["stale"].startswith("The contact has changed")
    assert seen["listed"] == ["John"]
    assert (seen["deleted"], seen["missing"]) == (204, "Contact not found")


def test_openapi_typescript_and_fetch_run_the_flow_under_tsc_strict(
    rest: Rest, user: tuple[str, str], tmp_path: Path
) -> None:
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    shutil.copy(HERE / "ts_flow.mts", tmp_path / "ts_flow.mts")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NO_PROXY": "*"}

    def run(*command: str, timeout: float = 120) -> str:
        done = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run(str(NODE_BIN / "openapi-typescript"), f"{rest.base_url}/openapi.json", "-o", "schema.d.ts")
    # TypeScript 5 (openapi-typescript does not run on 7), strict, the schema included.
    assert run(str(NODE_BIN / "tsc"), "--version").startswith("Version 5.")
    run(str(NODE_BIN / "tsc"), *TSC, "ts_flow.mts")
    seen = json.loads(run("node", "ts_flow.mjs", rest.base_url, user[1]))
    assert seen["created"][0] == 201 and seen["created"][1].startswith("/contacts/")
    assert seen["changed"] == ["Head of Sales", True]  # phone: null cleared it
    assert seen["stale"][0] == 412
    assert seen["refused"] == 400  # what the types refuse, the service refuses too
    assert seen["listed"] == ["John"]
    assert (seen["deleted"], seen["missing"]) == (204, [404, "Contact not found"])


@pytest.mark.parametrize("door", ["grpc-port", "envoy"])
def test_grpc_js_decodes_error_details_with_the_shipped_protos(
    app: App, envoy: Envoy, tmp_path: Path, door: str
) -> None:
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    shutil.copy(HERE / "grpc_js_flow.mjs", tmp_path / "grpc_js_flow.mjs")
    port = app.port if door == "grpc-port" else envoy.port
    done = subprocess.run(
        ["node", "grpc_js_flow.mjs", f"127.0.0.1:{port}", str(PROJECT_ROOT / "protos")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "no_grpc_proxy": "*"},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    missing, invalid = seen["missing"]["error"], seen["invalid"]["error"]
    assert (missing["code"], missing["message"]) == (5, "Contact not found")
    assert missing["details"] == [
        {"type": "google.rpc.ErrorInfo", "reason": "CONTACT_NOT_FOUND", "domain": "contacts.v1"}
    ]
    assert invalid["code"] == 3
    assert {
        "type": "google.rpc.BadRequest",
        "fieldViolations": [{"field": "contact_id", "description": "must be a UUID"}],
    } in invalid["details"]
    for value in seen.values():
        assert not [key for key in value["keys"] if key.startswith("x-contacts-")]
