"""Identity providers for the tests: the real one from PyPI (`oidc-provider-mock`, as a
process on a free port), and a small issuer of our own that publishes keys made here
and answers what a real provider never would (a rotated or withdrawn key, a key set
that is not JSON or is huge, another issuer's discovery document)."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.harness import free_port, spawn, stop, wait_for

AUDIENCE = "contacts-api"

_local = requests.Session()
_local.trust_env = False  # loopback only


@dataclass
class Key:
    """A signing key made here, and how the issuer publishes it."""

    kid: str | None
    algorithm: str
    private: Any = field(repr=False)

    @classmethod
    def make(cls, algorithm: str = "RS256", kid: str | None = None) -> Key:
        private: Any
        if algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(algorithm)
        return cls(
            f"{algorithm}-{uuid.uuid4().hex[:8]}" if kid is None else kid, algorithm, private
        )

    def jwk(self) -> dict[str, Any]:
        to_jwk: dict[str, Any] = {
            "RS256": RSAAlgorithm.to_jwk,
            "ES256": ECAlgorithm.to_jwk,
            "EdDSA": OKPAlgorithm.to_jwk,
        }
        published = dict(to_jwk[self.algorithm](self.private.public_key(), as_dict=True))
        if self.kid is not None:
            published["kid"] = self.kid
        published["use"] = "sig"
        return published

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, **header} if self.kid is not None else header
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers or None)


class Issuer:
    """An OpenID Connect issuer on a loopback port: discovery and a key set, both
    changeable while it runs; it can be stopped and started again on the same port."""

    def __init__(self, keys: list[Key] | None = None) -> None:
        self.keys: list[Key] = list(keys or [])
        self.extra_keys: list[Any] = []  # published as they are
        self.jwks_body: bytes | None = None  # sent instead of the key set
        self.discovery_issuer: str | None = None  # named instead of the issuer
        self.jwks_uri: str | None = None  # named instead of its own key set
        self.trickle = False  # the key set sent a byte a second
        self.fetches = 0  # key-set requests answered
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def claims(self, sub: str = "alice", lifetime: int = 600, **more: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + lifetime,
            **more,
        }

    def token(self, key: Key, sub: str = "alice", **more: Any) -> str:
        return key.sign(self.claims(sub, **more))

    def start(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    named = issuer.discovery_issuer or issuer.url
                    jwks_uri = issuer.jwks_uri or f"{issuer.url}/jwks"
                    body = json.dumps({"issuer": named, "jwks_uri": jwks_uri})
                    self._send(body.encode())
                elif self.path == "/jwks":
                    issuer.fetches += 1
                    keys = [key.jwk() for key in issuer.keys] + issuer.extra_keys
                    self._send(issuer.jwks_body or json.dumps({"keys": keys}).encode())
                else:
                    self.send_error(404)

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not (issuer.trickle and self.path == "/jwks"):
                    self.wfile.write(body)
                    return
                for byte in body[:30]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: connections to its port are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Provider:
    """oidc-provider-mock on a free port: a real OpenID Connect provider, whose ID tokens
    (RS256, audience: the client id) are got by its authorization-code flow."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "oidc_provider_mock", "--port", str(self.port)]
        self.process = spawn(command, workdir / f"provider-{self.port}.log")
        try:
            wait_for(
                lambda: _local.get(self.url + "/jwks", timeout=1).ok,
                30,
                "the identity provider",
                self.process,
            )
        except BaseException:
            self.stop()
            raise

    def token(self, sub: str, **claims: Any) -> str:
        """An ID token for `sub`, carrying `claims` as well, for the client AUDIENCE."""
        _local.put(f"{self.url}/users/{sub}", json=claims, timeout=5).raise_for_status()
        redirect = "http://127.0.0.1/callback"
        authorized = _local.post(
            f"{self.url}/oauth2/authorize",
            params={
                "client_id": AUDIENCE,
                "redirect_uri": redirect,
                "response_type": "code",
                "scope": "openid",
            },
            data={"sub": sub},
            allow_redirects=False,
            timeout=5,
        )
        code = parse_qs(urlsplit(authorized.headers["location"]).query)["code"][0]
        issued = _local.post(
            f"{self.url}/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "client_id": AUDIENCE,
                "client_secret": "unused",
            },
            timeout=5,
        )
        issued.raise_for_status()
        return str(issued.json()["id_token"])

    def stop(self) -> None:
        stop(self.process)


@contextmanager
def provider(workdir: Path) -> Iterator[Provider]:
    running = Provider(workdir)
    try:
        yield running
    finally:
        running.stop()
