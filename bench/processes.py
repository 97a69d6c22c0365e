"""The processes a benchmark runs against: a gRPC server (the service or the baseline) and Envoy.

Every port is picked by the kernel (port 0) and read back: the server's from
the "serving gRPC on :PORT" line it logs, Envoy's from its admin API. Nothing
here uses a fixed port, so a benchmark can run beside `make run` or the tests.
Each process runs in a session of its own and is stopped by its process
group id; `Stack` stops everything it started, even when a step fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
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


@dataclass
class Process:
    """A child process in its own session, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group (the session we gave it), SIGKILL if it lingers."""
        if self.popen.poll() is not None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with suppress(ProcessLookupError):  # it exited meanwhile
                os.killpg(self.popen.pid, signum)
            try:
                self.popen.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue


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


def start_server(spec: ServerSpec, workdir: Path) -> tuple[Process, int]:
    """Starts a gRPC server and returns it with the port it logged."""
    env = {**clean_env(), "PYTHONUNBUFFERED": "1", **spec.env}
    process = spawn(spec.name, spec.command, env, workdir / f"{spec.name}.log")

    def port() -> int | None:
        found = SERVING.search(process.log.read_text(errors="replace"))
        return int(found[1]) if found else None

    return process, _or_stop(process, lambda: wait_for(port, process, f"{spec.name} to listen"))


def start_envoy(grpc_port: int, workdir: Path) -> tuple[Process, int]:
    """Envoy in front of a gRPC port, on loopback; returns it with its HTTP port."""
    config = workdir / "envoy.yaml"
    config.write_text(server_stack.render_envoy_config(grpc_port, 0, 0, http_address="127.0.0.1"))
    admin_file = workdir / "envoy-admin-address"
    command = [
        server_stack.envoy_binary(),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "--admin-address-path",
        str(admin_file),
    ]
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


def rss_kb(pid: int) -> int | None:
    """The resident set size of a process (VmRSS, kB), None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found[1]) if found else None


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
