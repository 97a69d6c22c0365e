"""What the bench sends and how it checks the replies: each measured call in both forms
(protobuf bytes for gRPC, method, path and JSON for REST), seeding, the per-row cost.

h2load and wrk count HTTP statuses only, and a failed gRPC call is still HTTP 200,
so every measured call is first sent here and its reply checked.
"""

from __future__ import annotations

import json
import statistics
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import grpc
import requests
from google.protobuf import timestamp_pb2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc as pb_grpc

PAGE = 100
# A CRM contact of realistic lengths, not the smallest message: seeded,
# created, and served by the baseline.
FIELDS: dict[str, Any] = {
    "first_name": "Benchmark",
    "last_name": "Contact",
    "email": "benchmark.contact@example.com",
    "phone": "+91-9876543210",
    "designation": "Sales Manager",
    "is_primary": False,
}


class CheckFailed(RuntimeError):
    """A measured call does not succeed, so measuring it would mean nothing."""


@dataclass(frozen=True)
class Call:
    """One RPC as both doors carry it, and what a right reply holds."""

    rpc: str
    request: bytes  # the serialized request message, unframed
    method: str
    path: str  # REST path and query
    body: bytes | None = None
    contacts: int = 1  # contacts in a right reply
    expect: tuple[tuple[str, Any], ...] = ()  # fields each of them has
    creates_in: str | None = None  # the company that gains a contact per call

    @property
    def grpc_path(self) -> str:
        return f"/contacts.v1.ContactsService/{self.rpc}"

    def framed(self) -> bytes:
        """The unary gRPC request body h2load sends: flag 0, 4-byte length, message."""
        return b"\x00" + struct.pack(">I", len(self.request)) + self.request

    def check(self, door: str, contacts: list[dict[str, Any]]) -> None:
        """The reply holds the contacts it should, each with the fields it should."""
        if len(contacts) != self.contacts:
            raise CheckFailed(f"{door} {self.rpc}: {len(contacts)} contacts, not {self.contacts}")
        for contact in contacts:
            wrong = {k: contact.get(k) for k, v in self.expect if contact.get(k) != v}
            if wrong:
                raise CheckFailed(f"{door} {self.rpc}: a contact with {wrong}, not {self.expect}")


# Every measured contact was made from FIELDS.
SAME = tuple((k, v) for k, v in FIELDS.items() if isinstance(v, str))


def get_contact(contact_id: str, echoed: bool = True) -> Call:
    """`echoed`: the reply's id is the one asked for (the baseline's is not)."""
    request = pb.GetContactRequest(contact_id=contact_id).SerializeToString()
    expect = (("id", contact_id), *SAME) if echoed else SAME
    return Call("GetContact", request, "GET", f"/contacts/{contact_id}", expect=expect)


def list_contacts(company_id: str, limit: int = PAGE, skip: int = 0) -> Call:
    request = pb.ListContactsRequest(company_id=company_id, skip=skip, limit=limit)
    path = "/contacts?" + urlencode({"company_id": company_id, "skip": skip, "limit": limit})
    expect = (("company_id", company_id), *SAME)
    request_bytes = request.SerializeToString()
    return Call("ListContacts", request_bytes, "GET", path, contacts=limit, expect=expect)


def create_contact(company_id: str) -> Call:
    fields = {**FIELDS, "company_id": company_id}
    request = pb.CreateContactRequest(**fields).SerializeToString()
    body = json.dumps(fields).encode()
    expect = (("company_id", company_id), *SAME)
    return Call(
        "CreateContact", request, "POST", "/contacts", body, expect=expect, creates_in=company_id
    )


def baseline_contact(contact_id: str) -> pb.Contact:
    """What the baseline serves: the same fields, ids and timestamps of the same size."""
    stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    return pb.Contact(
        id=contact_id, company_id=contact_id, created_at=stamp, updated_at=stamp, **FIELDS
    )


class Client:
    """The service over both doors with one bearer token: seeds it and checks calls."""

    def __init__(self, grpc_port: int, http_url: str, token: str) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=[("grpc.enable_http_proxy", 0)]
        )
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.http_url = http_url
        self.http = requests.Session()
        self.http.trust_env = False  # loopback: no proxy
        self.http.headers["Authorization"] = f"Bearer {token}"

    def raw(self, path: str, request: bytes) -> bytes:
        """Bytes in, bytes out: the very bytes h2load sends."""
        try:
            reply: bytes = self.channel.unary_unary(path)(
                request, metadata=self.metadata, timeout=30
            )
        except grpc.RpcError as error:
            raise CheckFailed(f"{path}: {error.code()} {error.details()}") from None
        return reply

    def seed(self, contacts: int) -> tuple[str, list[str]]:
        """A company with `contacts` contacts, made through the API: its id and theirs."""
        companies = pb_grpc.CompaniesServiceStub(self.channel)
        company = companies.CreateCompany(
            pb.CreateCompanyRequest(name="Bench"), metadata=self.metadata
        ).id
        stub = pb_grpc.ContactsServiceStub(self.channel)
        request = pb.CreateContactRequest(company_id=company, **FIELDS)
        ids = [stub.CreateContact(request, metadata=self.metadata).id for _ in range(contacts)]
        return company, ids

    def count(self, company_id: str) -> int:
        """How many contacts a company has, a thousand a page."""
        total = 0
        while True:
            page = list_contacts(company_id, 1000, skip=total)
            got = len(
                pb.ListContactsResponse.FromString(self.raw(page.grpc_path, page.request)).contacts
            )
            total += got
            if got < 1000:
                return total

    def check_grpc(self, call: Call) -> None:
        reply = self.raw(call.grpc_path, call.request)
        if call.rpc == "ListContacts":
            contacts = list(pb.ListContactsResponse.FromString(reply).contacts)
        else:
            contacts = [pb.Contact.FromString(reply)]
        call.check("gRPC", [{k: getattr(c, k) for k, _ in call.expect} for c in contacts])

    def check_rest(self, call: Call) -> None:
        headers = {"Content-Type": "application/json"} if call.body else {}
        reply = self.http.request(
            call.method, self.http_url + call.path, data=call.body, headers=headers, timeout=30
        )
        if not reply.ok:
            raise CheckFailed(f"REST {call.rpc}: HTTP {reply.status_code} {reply.text[:300]}")
        data = reply.json()
        call.check("REST", data if isinstance(data, list) else [data])

    def rest_bytes(self, call: Call, accept_encoding: str) -> int:
        """The bytes of `call`'s REST reply body on the wire, as the client accepts it."""
        reply = self.http.request(
            call.method,
            self.http_url + call.path,
            headers={"Accept-Encoding": accept_encoding},
            timeout=30,
            stream=True,
        )
        if not reply.ok:
            raise CheckFailed(f"REST {call.rpc}: HTTP {reply.status_code}")
        return len(reply.raw.read(decode_content=False))

    def row_cost_us(self, company_id: str, calls: int = 200) -> float:
        """Single-threaded cost of one more listed row, black-box: the median time of a
        page of 100 minus that of a page of 1, over 99, one call in flight."""

        def median_seconds(call: Call) -> float:
            times = []
            for _ in range(calls + 20):  # the first 20 warm up
                started = time.perf_counter()
                self.raw(call.grpc_path, call.request)
                times.append(time.perf_counter() - started)
            return statistics.median(times[20:])

        full, one = (
            median_seconds(list_contacts(company_id)),
            median_seconds(list_contacts(company_id, 1)),
        )
        return (full - one) / (PAGE - 1) * 1e6

    def close(self) -> None:
        self.channel.close()
        self.http.close()
