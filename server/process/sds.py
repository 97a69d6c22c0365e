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

SECRET_NAME = "contacts_tls"
FILE_NAME = "sds.json"


def write(folder: Path, pair: Pair) -> Path:
    """The SDS file for `pair` in folder, replaced in one rename (the move Envoy watches)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    document = {
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": SECRET_NAME,
                "tls_certificate": {
                    "certificate_chain": {"inline_string": pair.chain.decode()},
                    "private_key": {"inline_string": pair.key.decode()},
                },
            }
        ]
    }
    path, draft = folder / FILE_NAME, folder / f".{FILE_NAME}.draft"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out)
    os.replace(draft, path)
    return path


class Keeper:
    """A thread that rewrites the SDS file whenever the certificate files are renewed."""

    def __init__(self, files: CertificateFiles, folder: Path) -> None:
        self._files = files
        self._folder = folder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="tls-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._stop.wait(CHECK_EVERY):
            renewed = self._files.renewed()
            if renewed is not None:
                write(self._folder, renewed)
