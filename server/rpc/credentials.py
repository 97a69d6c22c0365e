"""The server's TLS: the service's certificate, renewed without a restart; on the gRPC
port with CONTACTS_TLS_CLIENT_CA, and on Envoy's door (`serve`) always, a client
certificate required of every caller (mutual TLS), and the names it carries."""

from __future__ import annotations

import logging

import grpc

from server.certificates import CertificateFiles, Pair
from server.settings import Settings

log = logging.getLogger(__name__)


def server_credentials(settings: Settings, client_ca_path: str) -> grpc.ServerCredentials | None:
    """None without a certificate (the port speaks plaintext); with client_ca_path, a
    client certificate that CA signed is required."""
    if not settings.tls:
        return None
    files = CertificateFiles(settings.tls_cert, settings.tls_key)
    client_ca = None
    if client_ca_path:
        with open(client_ca_path, "rb") as ca:
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


def peer_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The names in the caller's verified client certificate (its DNS names and common
    name); none without one."""
    known = context.auth_context()
    names = [*known.get("x509_subject_alternative_name", ()), *known.get("x509_common_name", ())]
    return [name.decode(errors="replace") for name in names]
