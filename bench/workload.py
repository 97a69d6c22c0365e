"""What the benchmark sends: the contact the seed writes, and each measured call in both forms.

A `Call` is one RPC as the two transports carry it: the serialized protobuf
request for gRPC (h2load) and the method, path and JSON body for REST (wrk).
The baseline returns a contact built from the same fields, so that both
servers answer GetContact with a message of the same size.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from google.protobuf import timestamp_pb2

from contacts.v1 import contacts_pb2 as pb

SERVICE = "/contacts.v1.ContactsService"
PAGE_SIZE = 100

# Realistic lengths: what a CRM contact looks like, not the smallest message.
CONTACT_FIELDS: dict[str, Any] = {
    "first_name": "Benchmark",
    "last_name": "Contact",
    "email": "benchmark.contact@example.com",
    "phone": "+91-9876543210",
    "designation": "Sales Manager",
    "is_primary": False,
}


@dataclass(frozen=True)
class Call:
    """One RPC, as gRPC and as REST send it."""

    rpc: str
    grpc_request: bytes  # the serialized request message, without the gRPC frame
    rest_method: str
    rest_path: str  # path and query string
    rest_body: bytes | None = None
    # The reply must hold this many contacts (1 for a single-contact reply).
    expect_contacts: int = 1
    # The company that gains one contact per successful call, if any: counting
    # its contacts after a run tells how many gRPC calls really succeeded.
    creates_in: str | None = None
    # The name of its rows when it is not the RPC's (two calls of one RPC).
    label: str = ""
    # What the rows should say about the call's arguments, if anything.
    note: str = ""

    @property
    def name(self) -> str:
        return self.label or self.rpc

    @property
    def grpc_path(self) -> str:
        return f"{SERVICE}/{self.rpc}"


def grpc_frame(message: bytes) -> bytes:
    """A unary gRPC request body: compressed-flag 0, 4-byte big-endian length, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def get_contact(contact_id: str) -> Call:
    request = pb.GetContactRequest(contact_id=contact_id)
    return Call("GetContact", request.SerializeToString(), "GET", f"/contacts/{contact_id}")


def list_contacts(company_id: str, skip: int = 0, label: str = "") -> Call:
    """One full page (PAGE_SIZE contacts) from `skip` on: the company must have that many."""
    request = pb.ListContactsRequest(company_id=company_id, skip=skip, limit=PAGE_SIZE)
    query = urlencode({"company_id": company_id, "skip": skip, "limit": PAGE_SIZE})
    return Call(
        "ListContacts",
        request.SerializeToString(),
        "GET",
        f"/contacts?{query}",
        expect_contacts=PAGE_SIZE,
        label=label,
        note=f"skip={skip:,} limit={PAGE_SIZE}",
    )


def create_contact(company_id: str) -> Call:
    # A fixed body: every call creates one more contact in the company.
    fields = {**CONTACT_FIELDS, "company_id": company_id}
    request = pb.CreateContactRequest(**fields)
    return Call(
        "CreateContact",
        request.SerializeToString(),
        "POST",
        "/contacts",
        json.dumps(fields).encode(),
        creates_in=company_id,
    )


def baseline_contact(contact_id: str) -> pb.Contact:
    """The contact the baseline serves: the seed's fields, ids and timestamps of the same size."""
    stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    return pb.Contact(
        id=contact_id,
        company_id=contact_id,
        created_at=stamp,
        updated_at=stamp,
        **CONTACT_FIELDS,
    )
