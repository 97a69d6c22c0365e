"""Starting the real things on free ports, for the tests and the bench alike.

A server (`python -m server serve`), Envoy in front of a gRPC port, an empty
database; waiting until each answers; stopping each with everything it
started. Every process runs in a session of its own and is stopped by its
process group, then any descendant it left behind (psutil finds them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg2
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from server.process import stack
from server.settings import PROJECT_ROOT, Settings

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"

# Loopback only: a proxy named in the environment must not catch these requests.
_local = requests.Session()
_local.trust_env = False


def free_port() -> int:
    """A TCP port free on every address right now (the server binds the wildcard)."""
    for family, wildcard in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        with suppress(OSError), socket.socket(family) as s:  # no IPv6 here: IPv4 then
            s.bind((wildcard, 0))
            return int(s.getsockname()[1])
    raise OSError("no free TCP port")


def tool(name: str) -> str:
    """A command-line tool the checks run (kubectl, promtool, hadolint ...), from the
    PATH or the virtualenv: required in CI, else its checks are skipped."""
    import pytest  # the bench shares this module, not pytest

    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing, and CI must run this check")
        pytest.skip(f"{name} is not installed")
    return found


def wait_for(
    check: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "condition",
    process: subprocess.Popen[bytes] | None = None,
) -> Any:
    """Polls `check` until it returns something true; fails early if `process` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} while waiting for {what}")
        try:
            result = check()
            if result:
                return result
        except Exception as error:
            last = error
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}: {last!r}")


def spawn(
    command: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A child in a session of its own (a terminal's Ctrl-C reaches only us), output to `log`."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM to its process group, SIGKILL if it lingers; then any descendant left behind
    (a server's workers live in sessions of their own)."""
    descendants: list[psutil.Process] = []
    with suppress(psutil.NoSuchProcess):
        descendants = psutil.Process(process.pid).children(recursive=True)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    for child in descendants:
        with suppress(psutil.NoSuchProcess):
            child.kill()


def health_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


SERVE = (sys.executable, "-m", "server", "serve")


class Server:
    """`python -m server serve [--workers N]` on free ports (gRPC's, and Envoy's door,
    `proxy_port`), with `env` (CONTACTS_*) added to a clean environment; ready once
    every worker listens and health says SERVING. Workers drain for no time, and
    metrics are on another free port (`metrics_url`), unless `env` says otherwise.
    `command` starts another server that takes its port from CONTACTS_GRPC_PORT;
    `proxy_port`, if given, is its door for Envoy."""

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        workers: int = 1,
        command: tuple[str, ...] = SERVE,
        proxy_port: int | None = None,
    ) -> None:
        self.port = free_port()
        self.metrics_port = int(env.get("CONTACTS_METRICS_PORT", free_port()))
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        # Given: one an Envoy already sends to (a host that comes up later).
        self.proxy_port = proxy_port or free_port()
        # Readiness is asked in plaintext: of the health port, when there is one (TLS).
        self.health_port = int(env.get("CONTACTS_HEALTH_PORT") or self.port)
        argv = [*command, *(["--workers", str(workers)] if workers > 1 else [])]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTS_")}
        environment = {
            **clean,
            "CONTACTS_METRICS_PORT": str(self.metrics_port),
            "CONTACTS_DRAIN_SECONDS": "0",
            **env,
            "CONTACTS_GRPC_PORT": str(self.port),
            "CONTACTS_PROXY_PORT": str(self.proxy_port),
        }
        self.log = workdir / f"server-{self.port}.log"
        self.process = spawn(argv, self.log, environment)
        try:
            wait_for(lambda: self.listeners() >= workers, 60, "the server to listen", self.process)
            self._wait_ready()
        except BaseException as error:
            self.stop()
            raise RuntimeError(f"{error}; the server's log:\n{self.log_tail()}") from None

    def _wait_ready(self) -> None:
        wait_for(lambda: health_serving(self.health_port), 30, "health", self.process)

    def ports(self) -> list[int]:
        return [self.port, self.proxy_port, self.metrics_port]

    def processes(self) -> list[psutil.Process]:
        """The server process (the supervisor) and all its descendants."""
        top = psutil.Process(self.process.pid)
        return [top, *top.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        """The processes that listen on its port now."""
        found = []
        for each in self.processes():
            with suppress(psutil.Error):
                if any(
                    c.status == psutil.CONN_LISTEN and c.laddr.port == self.port
                    for c in each.net_connections("tcp")
                ):
                    found.append(each)
        return found

    def listeners(self) -> int:
        """How many of its processes listen on its port."""
        return len(self.workers())

    def rss(self) -> int:
        """Resident memory (VmRSS) in bytes, summed over its processes (shared pages
        counted once per process: an upper bound)."""
        total = 0
        for each in self.processes():
            with suppress(psutil.Error):
                total += each.memory_info().rss
        return total

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Its /metrics now: value by (sample name, sorted labels)."""
        text = _local.get(self.metrics_url, timeout=5).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        stop(self.process)


RUN = (sys.executable, "-m", "server", "run")
ENVOY_ALONE = (sys.executable, "-m", "server", "envoy")


class Stack(Server):
    """`python -m server run [--workers N]` (the servers and Envoy), or with ENVOY_ALONE
    and no workers, `python -m server envoy` (Envoy alone, in front of
    CONTACTS_UPSTREAMS from `env`), on free ports; ready once REST answers."""

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        workers: int = 1,
        command: tuple[str, ...] = RUN,
        ca: Path | None = None,
    ) -> None:
        self.http_port, self.admin_port = free_port(), free_port()
        # With a CA (its certificate's), Envoy's port is spoken to in TLS only.
        self.verify: str | bool = str(ca) if ca is not None else True
        scheme = "https" if ca is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.http_port}"
        ports = {
            "CONTACTS_HTTP_PORT": str(self.http_port),
            "CONTACTS_ENVOY_ADMIN_PORT": str(self.admin_port),
        }
        super().__init__({**env, **ports}, workdir, workers, command)

    def _wait_ready(self) -> None:
        def answers() -> bool:
            url = f"{self.url}/contacts/{uuid.uuid4()}"
            return _local.get(url, timeout=2, verify=self.verify).status_code == 404

        wait_for(answers, 30, "the stack to answer", self.process)

    def ports(self) -> list[int]:
        return [*super().ports(), self.http_port, self.admin_port]

    def doors(self) -> dict[int, str]:
        """Each worker's door for Envoy (under `run`, a Unix socket of its own), by pid."""
        found = {}
        for worker in self.workers():
            with suppress(psutil.Error):
                for c in worker.net_connections("unix"):
                    if c.laddr and str(c.laddr).endswith(".sock"):
                        found[worker.pid] = str(c.laddr)
        return found

    def endpoints(self) -> set[str]:
        """The sockets Envoy sends calls to now, as its admin page lists them."""
        url = f"http://127.0.0.1:{self.admin_port}/clusters?format=json"
        return {
            host["address"]["pipe"]["path"]
            for cluster in _local.get(url, timeout=2).json()["cluster_statuses"]
            if cluster["name"] == "contacts_grpc"
            for host in cluster.get("host_statuses", [])
        }


class Envoy:
    """A real Envoy in front of servers: a port on this host (a server's proxy port), or
    host:port pairs. Its own ports are picked by the kernel."""

    def __init__(
        self,
        upstreams: int | Sequence[tuple[str, int]],
        workdir: Path,
        log_format: str = "text",
        cors_origins: tuple[str, ...] = (),
        settings: Settings | None = None,
    ) -> None:
        if isinstance(upstreams, int):
            upstreams = [("127.0.0.1", upstreams)]
        name = f"envoy-{upstreams[0][1]}"
        config = workdir / f"{name}.yaml"
        config.write_text(
            stack.render_envoy_config(
                tuple(upstreams),
                0,
                0,
                http_address="127.0.0.1",
                log_format=log_format,
                cors_origins=cors_origins,
                settings=settings,  # its tracing, if any
            )
        )
        admin_file = workdir / f"{name}-admin-address"
        command = stack.envoy_command(config, admin_address_path=admin_file)
        self.log = workdir / f"{name}.log"
        self.process = spawn(command, self.log)
        try:
            self.admin = "http://" + wait_for(
                lambda: admin_file.exists() and admin_file.read_text().strip(),
                what="envoy admin",
                process=self.process,
            )
            self.port = wait_for(self._listener_port, what="envoy listener", process=self.process)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def _listener_port(self) -> int:
        listeners = _local.get(f"{self.admin}/listeners?format=json", timeout=2).json()
        status = listeners["listener_statuses"][0]
        return int(status["local_address"]["socket_address"]["port_value"])

    def wait_upstream(self) -> None:
        """Until a REST request makes the round trip to the server and back (Envoy says
        503 while it has no healthy upstream; the service 404, the baseline 200)."""

        def answered() -> bool:
            url = f"{self.url}/contacts/{uuid.uuid4()}"
            return _local.get(url, timeout=2).status_code in (200, 404)

        wait_for(answered, what="envoy to reach the server", process=self.process)

    def stop(self) -> None:
        stop(self.process)


def postgres_reachable(dsn: str = POSTGRES_DSN) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
    except psycopg2.OperationalError:
        return False
    return True


@contextmanager
def empty_database(
    folder: Path, backend: str = "sqlite", postgres: str = POSTGRES_DSN
) -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards: a file in `folder`, or on
    PostgreSQL (server at `postgres`) a database of its own, so concurrent runs never meet."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / f'contacts-{secrets.token_hex(4)}.db'}"
        return
    if backend != "postgresql":
        raise ValueError(f"backend {backend!r}: use sqlite or postgresql")
    name = f"contacts_test_{secrets.token_hex(6)}"
    admin = psycopg2.connect(postgres, connect_timeout=3)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        yield f"{postgres.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
