"""Envoy's certificate as a secret in a file of its own (SDS), rewritten when the
service's certificate files are renewed; Envoy watches the file's directory and
serves the new certificate to new connections, with no restart.

The file holds the pair itself, not the operator's paths: Envoy then reloads
exactly the pair that was checked (server/certificates.py), whatever way the
operator's files were changed, and never a half-written one. It lives in the
data folder, which is the service's user's alone, and is written 0600.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from server.certificates import CHECK_EVERY, CertificateFiles, Pair

# The secrets Envoy reads, each in its own file: its listener's certificate, and the
# one it presents to servers on other hosts (`python -m server envoy`).
LISTENER = "contacts_tls"
UPSTREAM = "contacts_proxy_tls"


def path_of(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def write(folder: Path, name: str, pair: Pair) -> Path:
    """The SDS file of secret `name` holding `pair`, replaced in one rename (the move
    Envoy watches for)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    document = {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": name,
                "tls_certificate": {
                    "certificate_chain": {"inline_string": pair.chain.decode()},
                    "private_key": {"inline_string": pair.key.decode()},
                },
            }
        ]
    }
    path, draft = path_of(folder, name), folder / f".{name}.draft"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out)
    os.replace(draft, path)
    return path


class Keeper:
    """A thread that rewrites each secret's SDS file whenever its files are renewed."""

    def __init__(self, folder: Path, secrets: dict[str, CertificateFiles]) -> None:
        self._folder = folder
        self._secrets = secrets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="tls-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._stop.wait(CHECK_EVERY):
            for name, files in self._secrets.items():
                renewed = files.renewed()
                if renewed is not None:
                    write(self._folder, name, renewed)
