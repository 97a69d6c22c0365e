"""Small clients of the service, for seeding it and for checking that the measured calls succeed.

h2load and wrk only count HTTP status codes, and a failed gRPC call is still
HTTP 200 (the grpc-status trailer says it failed), so every measured call is
first sent once by these clients and its reply checked.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import grpc

from bench.workload import CONTACT_FIELDS, Call
from contacts.v1 import contacts_pb2 as pb


class CheckFailed(RuntimeError):
    """A measured call does not succeed, so measuring it would be meaningless."""


class Rest:
    """HTTP/1.1 keep-alive client of the REST API, with a bearer token on every request."""

    def __init__(self, port: int, token: str) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self._token = token

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self._token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            self._conn.request(method, path, body=body, headers=headers)
            reply = self._conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The connection sat idle through a load run and was closed: once more, anew.
            self._conn.close()
            self._conn.request(method, path, body=body, headers=headers)
            reply = self._conn.getresponse()
        return reply.status, reply.read()

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded reply of a call that must succeed (2xx)."""
        status, data = self.request(method, path, json.dumps(body).encode() if body else None)
        if not 200 <= status < 300:
            raise CheckFailed(f"{method} {path}: HTTP {status} {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        self._conn.close()


class Grpc:
    """Sends pre-serialized requests, the very bytes h2load sends, and returns the reply bytes."""

    def __init__(self, port: int, token: str) -> None:
        # Loopback only: an http_proxy in the environment must not catch these calls.
        self._channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)]
        )
        self._metadata = (("authorization", f"Bearer {token}"),)

    def call(self, path: str, request: bytes) -> bytes:
        # No serializers: bytes in, bytes out.
        method = self._channel.unary_unary(path)
        try:
            reply: bytes = method(request, metadata=self._metadata, timeout=10)
        except grpc.RpcError as error:
            raise CheckFailed(f"{path}: {error.code()} {error.details()}") from None
        return reply

    def close(self) -> None:
        self._channel.close()


def seed(rest: Rest, contacts: int) -> tuple[str, list[str]]:
    """A company named Bench and `contacts` contacts in it; returns their ids."""
    company = rest.json("POST", "/companies", {"name": "Bench"})["id"]
    ids = [
        rest.json("POST", "/contacts", {**CONTACT_FIELDS, "company_id": company})["id"]
        for _ in range(contacts)
    ]
    return company, ids


def check_grpc(client: Grpc, call: Call) -> None:
    """The call succeeds over gRPC and its reply holds the contacts it should."""
    reply = client.call(call.grpc_path, call.grpc_request)
    if call.expect_contacts == 1:
        got = 1 if pb.Contact.FromString(reply).id else 0
    else:
        got = len(pb.ListContactsResponse.FromString(reply).contacts)
    if got != call.expect_contacts:
        raise CheckFailed(f"gRPC {call.rpc}: {got} contacts, expected {call.expect_contacts}")


def check_rest(client: Rest, call: Call) -> None:
    """The call succeeds over REST and its reply holds the contacts it should."""
    status, data = client.request(call.rest_method, call.rest_path, call.rest_body)
    if not 200 <= status < 300:
        raise CheckFailed(f"REST {call.rpc}: HTTP {status} {data[:300]!r}")
    reply = json.loads(data)
    got = len(reply) if isinstance(reply, list) else int("id" in reply)
    if got != call.expect_contacts:
        raise CheckFailed(f"REST {call.rpc}: {got} contacts, expected {call.expect_contacts}")


def count_contacts(rest: Rest, company_id: str) -> int:
    """How many contacts a company has, paging through ListContacts."""
    total, page = 0, 1000
    while True:
        got = len(rest.json("GET", f"/contacts?company_id={company_id}&skip={total}&limit={page}"))
        total += got
        if got < page:
            return total
