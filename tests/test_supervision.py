"""The supervisor and its workers: signals, drain, back-off, and no orphans.

(Under load: tests/test_operations.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc
from server.process.supervisor import Supervisor
from server.rpc.app import LIVENESS
from server.settings import PROJECT_ROOT, Settings
from tests.harness import SERVE, Server, Stack, free_port, spawn, wait_for
from tests.test_operations import gone, port_free
from tests.test_stack import stop_cleanly


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {
        "CONTACTS_DATABASE_URL": settings.database_url,
        "CONTACTS_JWT_SECRET": settings.jwt_secret,
        "CONTACTS_RATE_LIMIT_CREATE": "0",
        "CONTACTS_RATE_LIMIT_DEFAULT": "0",
    }


def test_a_burst_of_signals_still_stops_everything(env: dict[str, str], tmp_path: Path) -> None:
    # A handler that took a lock (threading.Event.set) could deadlock when a
    # second signal landed in it: the server then never stopped.
    server = Server({**env, "CONTACTS_DRAIN_SECONDS": "1"}, tmp_path, workers=2)
    everyone = [p.pid for p in server.processes()]
    for n in range(60):
        for pid in everyone:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, (signal.SIGTERM, signal.SIGINT)[n % 2])
    assert server.process.wait(timeout=60) == 0
    wait_for(lambda: all(gone(pid) for pid in everyone), 30, "every worker to exit")
    assert "Traceback" not in server.log.read_text()


def test_sigterm_drains_then_stops(env: dict[str, str], tmp_path: Path) -> None:
    drain = 10  # long enough to look during it, on a slow machine too
    server = Server({**env, "CONTACTS_DRAIN_SECONDS": str(drain)}, tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        contacts = contacts_pb2_grpc.ContactsServiceStub(channel)
        server.process.send_signal(signal.SIGTERM)

        def status(service: str = "") -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return int(health.Check(request, timeout=5).status)

        # Within the drain: health says NOT_SERVING, and calls are still answered;
        # a liveness probe (Kubernetes') is still answered SERVING.
        wait_for(
            lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING,
            drain,
            "NOT_SERVING",
        )
        assert status(LIVENESS) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as answered:
            contacts.GetContact(pb.GetContactRequest(contact_id=str(uuid.uuid4())), timeout=5)
        assert answered.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert server.process.wait(timeout=60) == 0
    wait_for(lambda: port_free(server.port), 30, "the port")
    log = server.log.read_text()
    assert f"NOT_SERVING, draining for {drain} s" in log and "stopped" in log


def test_a_worker_that_keeps_dying_at_start_is_restarted_ever_later(
    env: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "a-file"
    broken.write_text("")  # a database "in" a file: it can never be opened
    ports = {"CONTACTS_GRPC_PORT": str(free_port()), "CONTACTS_PROXY_PORT": str(free_port())}
    environment = {
        **os.environ,
        **env,
        **ports,
        "CONTACTS_DATABASE_URL": f"sqlite:///{broken}/contacts.db",
    }
    log = tmp_path / "supervisor.log"
    process = spawn(list(SERVE), log, environment)
    try:
        for delay in ("1 s", "2 s"):
            said = f"keeps dying soon after it starts: another in {delay}"
            wait_for(
                lambda said=said: said in log.read_text(),  # type: ignore[misc]
                60,
                f"a restart {delay} later",
                process,
            )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_port_in_use_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [*SERVE],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env, "CONTACTS_GRPC_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert refused.returncode == 2
    assert f"port {port} is in use" in refused.stderr


def test_sigkill_of_a_one_worker_stack_takes_envoy_along(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Envoy used to live on alone (in its own session), answering 503 and
    # holding the ports, so that the next `make run` failed.
    stack = Stack(env, tmp_path)
    everyone = [p.pid for p in stack.processes()]
    assert len(everyone) == 3  # the supervisor, a worker, Envoy
    assert any("envoy" in p.name() for p in stack.processes())
    stack.process.send_signal(signal.SIGKILL)
    stack.process.wait()
    wait_for(lambda: all(gone(pid) for pid in everyone), 30, "every process to go")
    wait_for(lambda: all(port_free(port) for port in stack.ports()), 30, "the ports")


def drains(door: str) -> bool:
    """Whether the server at this door (a Unix socket) answers health with NOT_SERVING."""
    with grpc.insecure_channel(f"unix:{door}", options=[("grpc.enable_http_proxy", 0)]) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)


def test_envoy_sends_only_to_workers_that_serve_and_do_not_drain(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Under `run` each worker has a door of its own, and the supervisor tells
    # Envoy which: a worker leaves Envoy's list before it is told to drain (it
    # still answers meanwhile), a new one joins once it serves, a dead one goes.
    stack = Stack({**env, "CONTACTS_DRAIN_SECONDS": "5"}, tmp_path, workers=2)
    try:

        def listed_are_the_workers() -> dict[int, str]:
            doors = stack.doors()
            return doors if len(doors) == 2 and stack.endpoints() == set(doors.values()) else {}

        first = wait_for(listed_are_the_workers, 30, "Envoy to list both workers")
        old = dict(first)

        def unlisted() -> list[int]:
            return [pid for pid, door in old.items() if door not in stack.endpoints()]

        os.kill(stack.process.pid, signal.SIGHUP)
        while old:  # one at a time
            for pid in wait_for(unlisted, 30, "an old worker to leave Envoy's list"):
                # Out of the list, and still answering on its door.
                door = old.pop(pid)
                wait_for(partial(drains, door), 5, "the unlisted worker to say it drains")
        replaced = wait_for(listed_are_the_workers, 60, "Envoy to list the new workers")
        assert not set(replaced) & set(first)

        victim = next(iter(replaced))
        os.kill(victim, signal.SIGKILL)
        after = wait_for(
            lambda: victim not in (doors := listed_are_the_workers()) and doors,
            60,
            "a replacement in Envoy's list",
        )
        assert replaced[victim] not in stack.endpoints() and len(after) == 2
    finally:
        stop_cleanly(stack)
    log = stack.log.read_text()
    assert "Envoy sends to" in log and "Traceback" not in log


def test_a_child_whose_supervisor_died_first_does_not_run() -> None:
    # The race the lifeline closes: the supervisor dies before the child has
    # asked to die with it. The child then has another parent than the one
    # it was started by, and must not go on.
    not_my_parent = "1"
    ran = subprocess.run(
        [sys.executable, "-m", "server.process.lifeline", not_my_parent, "/bin/sleep", "60"],
        cwd=PROJECT_ROOT,
        timeout=30,
    )
    assert ran.returncode == -signal.SIGTERM


def test_an_endpoints_file_that_cannot_be_written_stops_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk, say: the supervisor says so and tries again; it does not fall
    over (its `finally` would take every worker and Envoy down with it)."""
    supervisor = Supervisor(settings, 1, None, endpoints=Path("/dev/null/endpoints.json"))
    supervisor._list_serving()
    supervisor._list_serving()
    assert supervisor.unlisted and supervisor.listed is None
    assert caplog.text.count("cannot write Envoy's endpoints") == 1  # said once, not each second


def test_the_supervisor_process_loads_none_of_the_serving_code() -> None:
    """`run` and `serve` start in a process that only supervises: grpc, peewee and the
    database drivers are loaded by its workers alone."""
    probe = (
        "import sys, server.__main__, server.process.stack, server.process.supervisor;"
        "print(sorted(m for m in ('grpc', 'peewee', 'asyncpg', 'psycopg2', 'redis', 'uvloop')"
        " if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stderr
