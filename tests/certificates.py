"""Certificates for the tests, from trustme, in the files an operator gives the service,
and what a port serves, as a client reads it."""

from __future__ import annotations

import dataclasses
import socket
import ssl
from pathlib import Path

import trustme
from cryptography import x509


@dataclasses.dataclass
class Certificates:
    """A CA, the service's certificate in files (tls.crt, tls.key, ca.crt: cert-manager's
    Secret layout), and a client certificate the CA signed."""

    folder: Path
    ca: trustme.CA

    @property
    def cert(self) -> Path:
        return self.folder / "tls.crt"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    def renew(self) -> int:
        """Writes a new certificate over the same files, in place; its serial."""
        issued = self.ca.issue_cert("127.0.0.1", "localhost", "contacts.example.com")
        self.key.write_bytes(issued.private_key_pem.bytes())
        self.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number

    def client(self, name: str = "a-service", ca: trustme.CA | None = None) -> tuple[Path, Path]:
        """A client certificate (by this CA, or another) in files: (cert, key)."""
        issued = (ca or self.ca).issue_cert(name)
        cert, key = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    made = Certificates(folder, trustme.CA())
    made.ca.cert_pem.write_to_path(str(made.ca_file))
    made.renew()
    return made


def served_serial(port: int, alpn: list[str] | None = None) -> tuple[int, str | None]:
    """The serial of the certificate a port serves to a new connection, and the ALPN
    protocol agreed (no certificate checks: the serial is what is looked at)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number, tls.selected_alpn_protocol()
