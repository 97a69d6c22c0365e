"""The gRPC port's TLS: the service's certificate, renewed without a restart, and with
CONTACTS_TLS_CLIENT_CA, a client certificate required of every caller (mutual TLS)."""

from __future__ import annotations

import logging

import grpc

from server.certificates import CertificateFiles, Pair
from server.settings import Settings

log = logging.getLogger(__name__)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None without a certificate (the port speaks plaintext)."""
    if not settings.tls:
        return None
    files = CertificateFiles(settings.tls_cert, settings.tls_key)
    client_ca = None
    if settings.tls_client_ca:
        with open(settings.tls_client_ca, "rb") as ca:
            client_ca = ca.read()

    def configuration(pair: Pair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(pair.key, pair.chain)], client_ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # gRPC asks before every handshake: a renewed pair, or None to keep the one in use.
        try:
            renewed = files.renewed()
        except Exception:  # never let a look at the files fail a handshake
            log.exception("looking for a renewed TLS certificate failed")
            return None
        return None if renewed is None else configuration(renewed)

    return grpc.dynamic_ssl_server_credentials(
        configuration(files.current), fetch, require_client_authentication=client_ca is not None
    )
