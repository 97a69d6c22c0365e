"""The service's TLS certificate, from the PEM files an operator gives it (cert-manager's
`tls.crt` and `tls.key`): read, checked as a pair, and read again when renewed.

Renewals arrive in every way files can change: written over in place (the key
first, then the certificate, or the other way round), renamed over, or, in a
Kubernetes secret volume, swapped behind a symlink. So the files are looked at
(a stat of each, following links) at most every CHECK_EVERY seconds, and a pair
is taken only once the certificate and key match: a half-written renewal is
skipped and looked at again, and the pair in use stays until then.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server.settings import SettingsError

log = logging.getLogger(__name__)

# Seconds between looks at the files: a renewal is served within this (CONTRACT.md: 60).
CHECK_EVERY = 5.0


class CertificateError(SettingsError):
    """The files do not hold a certificate and the private key of its public key."""


@dataclass(frozen=True)
class Pair:
    """A certificate chain and its private key, as PEM."""

    chain: bytes
    key: bytes = b""

    def serial(self) -> int:
        return x509.load_pem_x509_certificates(self.chain)[0].serial_number


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def read_pair(chain_path: str, key_path: str) -> Pair:
    """The pair in these files; CertificateError unless the key is the certificate's."""
    with open(chain_path, "rb") as chain_file, open(key_path, "rb") as key_file:
        chain, key = chain_file.read(), key_file.read()
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise CertificateError(f"{chain_path}, {key_path}: {error}") from None
    if _public(leaf.public_key()) != _public(private.public_key()):
        raise CertificateError(f"{key_path} is not the key of the certificate in {chain_path}")
    return Pair(chain, key)


class CertificateFiles:
    """The pair in two files, as it is now: `current`, and `renewed()` for a change."""

    def __init__(self, chain_path: str, key_path: str, check_every: float = CHECK_EVERY) -> None:
        self._paths = (chain_path, key_path)
        self._check_every = check_every
        self._lock = threading.Lock()  # gRPC asks from its own threads
        self._seen = self._signature()
        self.current = read_pair(chain_path, key_path)  # at start, unusable files are fatal
        self._checked = time.monotonic()

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        found = []
        for path in self._paths:
            st = os.stat(path)  # through a symlink to the file it names now
            found.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(found)

    def renewed(self) -> Pair | None:
        """The new pair if the files changed into one since the last look, else None
        (cheap: a clock read, and at most every CHECK_EVERY seconds two stats)."""
        if time.monotonic() - self._checked < self._check_every:
            return None
        with self._lock:
            self._checked = time.monotonic()
            try:
                signature = self._signature()
                if signature == self._seen:
                    return None
                pair = read_pair(*self._paths)
            except (OSError, CertificateError) as error:
                # Half-written, or being swapped: looked at again next time.
                log.warning("TLS certificate not (yet) usable, the one in use kept: %s", error)
                return None
            self._seen = signature
            if pair == self.current:
                return None
            self.current = pair
        log.info("TLS certificate renewed: serial %x", pair.serial())
        return pair
