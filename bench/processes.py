"""The processes a benchmark runs against: a gRPC server (the service or the baseline) and Envoy.

Every port is picked by the kernel (port 0) and read back: the server's from
the "serving gRPC on :PORT" line it logs, Envoy's from its admin API. A
server with several workers must be told its port in advance: the kernel
picks a free one just before it starts. Nothing here uses a fixed port, so a
benchmark can run beside `make run` or the tests.

Each process runs in a session of its own and is stopped by its process
group id; the workers of a multi-process server (sessions of their own too)
are remembered by pid and stopped if their parent leaves them behind.
`Stack` stops everything it started, even when a step fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import procfs
from server import stack as server_stack
from server.settings import PROJECT_ROOT

T = TypeVar("T")
SERVING = re.compile(r"serving gRPC on :(\d+)")
# Loopback only: an http_proxy in the environment must not catch these requests.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StartError(RuntimeError):
    """A process did not come up; the message carries the end of its log."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one gRPC server: the command and the environment it adds.

    The command must log "serving gRPC on :PORT" and listen on the port given
    by CONTACTS_GRPC_PORT (or its own flag); `python -m server serve` and
    `python -m bench.baseline` both do.
    """

    name: str
    command: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    # What REST GET /contacts/<random id> answers once the server is reachable
    # through Envoy: 404 from the service, 200 from the baseline (any id).
    ready_status: int = 404
    # More than 1: the command starts this many worker processes that share
    # one port, given to it in CONTACTS_GRPC_PORT (`serve --workers N`).
    workers: int = 1


@dataclass
class Process:
    """A child process in its own session, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    # Its descendants as last seen: they may live in sessions of their own,
    # out of reach of the group signal, and outlive it if it is killed.
    descendants: set[procfs.Identity] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def remember_descendants(self) -> None:
        if self.alive():
            identities = (procfs.Identity.of(pid) for pid in procfs.tree(self.pid)[1:])
            self.descendants.update(i for i in identities if i is not None)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group (the session we gave it), SIGKILL if it lingers;
        then any descendant it left behind, by pid."""
        self.remember_descendants()
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is not None:
                break
            with suppress(ProcessLookupError):  # it exited meanwhile
                os.killpg(self.popen.pid, signum)
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        # A server stops its own workers on SIGTERM; these are only the ones
        # it could not (it was killed, or died): normally there are none.
        for descendant in self.descendants:
            descendant.kill()


def spawn(name: str, command: list[str], env: Mapping[str, str], log: Path) -> Process:
    with log.open("wb") as out:
        # A session of its own: a Ctrl-C in the terminal reaches only us, and
        # we stop the children in order, by their group id.
        popen = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(name, popen, log)


def wait_for(
    check: Callable[[], T | None], process: Process, what: str, timeout: float = 30.0
) -> T:
    """Polls `check` until it returns a value; fails early if `process` dies."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not process.alive():
            raise StartError(
                f"{process.name} exited with {process.popen.returncode} while waiting for "
                f"{what}; its log:\n{process.log_tail()}"
            )
        try:
            result = check()
            if result is not None:
                return result
        except (OSError, ValueError, KeyError, IndexError) as error:
            last = error
        time.sleep(0.05)
    raise StartError(f"timed out waiting for {what} ({last!r}); log:\n{process.log_tail()}")


def clean_env() -> dict[str, str]:
    """This environment without any CONTACTS_* variable, so that none leaks into a server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTACTS_")}


def free_port() -> int:
    """A TCP port that is free on every address right now, picked by the kernel.

    Bound on the wildcard address, as the server binds it (`[::]`), so that a
    port taken on any address is never picked. Another process could take it
    before the server does: the server then fails to start and says so.
    """
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((host, 0))
                return int(probe.getsockname()[1])
        except OSError:  # no IPv6 here: the IPv4 wildcard then
            continue
    raise StartError("cannot find a free TCP port")


def start_server(spec: ServerSpec, workdir: Path) -> tuple[Process, int]:
    """Starts a gRPC server and returns it once it answers a health check, with its port."""
    env = {**clean_env(), "PYTHONUNBUFFERED": "1", **spec.env}
    if spec.workers > 1:
        env["CONTACTS_GRPC_PORT"] = str(free_port())
    process = spawn(spec.name, spec.command, env, workdir / f"{spec.name}.log")

    def port() -> int | None:
        found = SERVING.search(process.log.read_text(errors="replace"))
        return int(found[1]) if found else None

    def ready() -> int:
        bound = wait_for(port, process, f"{spec.name} to listen")
        if spec.workers > 1:
            # The parent logs its line as soon as it has spawned the workers,
            # before they have migrated the database and bound the port.
            wait_for(
                lambda: workers_listening(process, bound, spec.workers),
                process,
                f"{spec.workers} workers of {spec.name} to listen on :{bound}",
            )
            process.remember_descendants()
        wait_for(lambda: grpc_serving(bound), process, f"{spec.name} to answer a health check")
        return bound

    return process, _or_stop(process, ready)


def workers_listening(server: Process, port: int, count: int) -> list[int] | None:
    """The server's child processes that listen on `port`, once there are `count` of them.

    Fails when a socket not theirs listens there too: with SO_REUSEPORT the
    kernel would hand part of the connections to that stranger.
    """
    listening = procfs.listening_inodes(port)
    sockets = {pid: procfs.socket_inodes(pid) for pid in procfs.children(server.pid)}
    workers = [pid for pid, inodes in sockets.items() if inodes & listening]
    if len(workers) < count:
        return None
    strangers = listening - set().union(*sockets.values())
    if strangers:
        raise StartError(f"another process listens on :{port} too (socket {strangers})")
    return workers


def grpc_serving(port: int) -> bool | None:
    """True once grpc.health.v1 on 127.0.0.1:`port` answers SERVING."""
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
    ) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return None
    return True if reply.status == health_pb2.HealthCheckResponse.SERVING else None


def start_envoy(grpc_port: int, workdir: Path) -> tuple[Process, int]:
    """Envoy in front of a gRPC port, on loopback; returns it with its HTTP port."""
    config = workdir / "envoy.yaml"
    config.write_text(server_stack.render_envoy_config(grpc_port, 0, 0, http_address="127.0.0.1"))
    admin_file = workdir / "envoy-admin-address"
    command = server_stack.envoy_command(config, admin_address_path=admin_file)
    process = spawn("envoy", command, clean_env(), workdir / "envoy.log")

    def admin_address() -> str | None:
        # Envoy writes the file once its admin listener is bound.
        return admin_file.read_text().strip() or None if admin_file.exists() else None

    def listener_port() -> int:
        admin = wait_for(admin_address, process, "Envoy's admin address")
        with _direct.open(f"http://{admin}/listeners?format=json", timeout=2) as r:
            statuses = json.load(r)["listener_statuses"]
        return int(statuses[0]["local_address"]["socket_address"]["port_value"])

    return process, _or_stop(process, lambda: wait_for(listener_port, process, "Envoy's listener"))


def _or_stop(process: Process, wait: Callable[[], T]) -> T:
    """The result of `wait`; a process that never got ready is stopped before the error leaves."""
    try:
        return wait()
    except BaseException:
        process.stop()
        raise


def wait_ready(http_port: int, status: int, processes: list[Process]) -> None:
    """Ready once a REST request makes the round trip through Envoy to the server and back
    with `status` (Envoy answers 503 while it has no healthy upstream)."""

    def answered() -> bool | None:
        url = f"http://127.0.0.1:{http_port}/contacts/{uuid.uuid4()}"
        try:
            with _direct.open(url, timeout=2) as reply:
                code = reply.status
        except urllib.error.HTTPError as error:
            code = error.code
        return True if code == status else None

    for process in processes:
        if not process.alive():
            raise StartError(f"{process.name} exited; its log:\n{process.log_tail()}")
    wait_for(answered, processes[-1], f"an HTTP {status} through Envoy")


class Stack:
    """A gRPC server with Envoy in front, both on free ports; a context manager
    that stops both (Envoy first, then the server) however the block ends."""

    def __init__(self, spec: ServerSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self._exit = ExitStack()
        self.server: Process
        self.grpc_port = 0
        self.envoy: Process
        self.http_port = 0

    def __enter__(self) -> Stack:
        try:
            self.server, self.grpc_port = self._started(start_server(self.spec, self.workdir))
            self.envoy, self.http_port = self._started(start_envoy(self.grpc_port, self.workdir))
            wait_ready(self.http_port, self.spec.ready_status, [self.server, self.envoy])
        except BaseException:
            self._exit.close()
            raise
        return self

    def _started(self, started: tuple[Process, int]) -> tuple[Process, int]:
        # Registered at once: stopped in reverse order of starting.
        self._exit.callback(started[0].stop)
        return started

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def check_alive(self) -> None:
        for process in (self.server, self.envoy):
            if not process.alive():
                raise StartError(f"{process.name} died; its log:\n{process.log_tail()}")
