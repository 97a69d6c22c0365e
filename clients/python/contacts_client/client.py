"""`Client`: the Contacts API's RPCs as typed Python methods over one gRPC channel."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

# Only a call that never reached the service, or one that is safe to send
# twice anyway, is sent again: UNAVAILABLE means the service (or the way to
# it) was not there. Reads are safe to repeat, and so are creates, because
# each create carries one Idempotency-Key for all its attempts.
RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE})
PAGE_SIZE = 100  # the service's default page; it allows up to 1000


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A contact with its ETag: send `etag` as `if_match` to change only what you read."""

    value: T
    etag: str


class Client:
    """The Contacts API at `target` (host:port: the gRPC port, or Envoy's).

    `token` is a bearer token, or a function returning a fresh one for each call.
    `tls` (or `credentials`, for custom roots or a client certificate) speaks TLS;
    without, plaintext. Each call must finish within `timeout` seconds, retries
    included; `retries` more attempts are made of what is safe to send again.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | Callable[[], str] | None = None,
        tls: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if credentials is None and tls:
            credentials = grpc.ssl_channel_credentials()
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._token = token
        self.timeout = timeout
        self.retries = retries
        # The generated stubs (no .pyi for them from protoc): the raw RPCs.
        self.contacts: Any = contacts_pb2_grpc.ContactsServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.companies: Any = contacts_pb2_grpc.CompaniesServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- contacts ---------------------------------------------------------------------

    def create_contact(
        self,
        *,
        first_name: str,
        email: str,
        company_id: str | None = None,
        last_name: str | None = None,
        phone: str | None = None,
        designation: str | None = None,
        is_primary: bool = False,
        idempotency_key: str | None = None,
    ) -> Versioned[pb.Contact]:
        """Makes a contact, once however often the call is retried (an Idempotency-Key,
        a new one unless given, goes with every attempt)."""
        request = pb.CreateContactRequest(
            first_name=first_name,
            email=email,
            is_primary=is_primary,
            **_set(
                company_id=company_id, last_name=last_name, phone=phone, designation=designation
            ),
        )
        key = (("idempotency-key", idempotency_key or str(uuid.uuid4())),)
        return self._versioned(self.contacts.CreateContact, request, key, retry=True)

    def get_contact(self, contact_id: str) -> Versioned[pb.Contact]:
        request = pb.GetContactRequest(contact_id=contact_id)
        return self._versioned(self.contacts.GetContact, request, (), retry=True)

    def update_contact(
        self,
        contact_id: str,
        *,
        if_match: str | None = None,
        clear: Sequence[str] = (),
        **changes: Any,
    ) -> Versioned[pb.Contact]:
        """Changes the fields given (`company_id` moves the contact) and clears those
        named in `clear` (last_name, phone, designation, company_id). With `if_match`
        (an ETag), only if the contact is still as it was then."""
        request = pb.UpdateContactRequest(contact_id=contact_id, **changes)
        if clear:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=[*changes, *clear]))
        extra = (("if-match", if_match),) if if_match else ()
        return self._versioned(self.contacts.UpdateContact, request, extra, retry=False)

    def delete_contact(self, contact_id: str, *, if_match: str | None = None) -> None:
        extra = (("if-match", if_match),) if if_match else ()
        request = pb.DeleteContactRequest(contact_id=contact_id)
        self._call(self.contacts.DeleteContact, request, extra, retry=False)

    def list_contacts(self, company_id: str, *, page_size: int = PAGE_SIZE) -> Iterator[pb.Contact]:
        """Every contact of the company, oldest first, a page at a time: by page tokens,
        so contacts created or deleted during the walk shift no page (each contact that
        exists throughout is seen exactly once)."""
        token = ""
        while True:
            request = pb.ListContactsRequest(
                company_id=company_id, page_size=page_size, page_token=token
            )
            reply, _ = self._call(self.contacts.ListContacts, request, (), retry=True)
            yield from reply.contacts
            token = reply.next_page_token
            if not token:
                return

    # --- companies --------------------------------------------------------------------

    def create_company(self, name: str, *, idempotency_key: str | None = None) -> pb.Company:
        """Makes a company the caller owns, once however often the call is retried."""
        key = (("idempotency-key", idempotency_key or str(uuid.uuid4())),)
        request = pb.CreateCompanyRequest(name=name)
        reply: pb.Company = self._call(self.companies.CreateCompany, request, key, retry=True)[0]
        return reply

    def get_company(self, company_id: str) -> pb.Company:
        request = pb.GetCompanyRequest(company_id=company_id)
        reply: pb.Company = self._call(self.companies.GetCompany, request, (), retry=True)[0]
        return reply

    def list_companies(self, *, page_size: int = PAGE_SIZE) -> Iterator[pb.Company]:
        """Every company the caller owns (all of them, for a superuser), oldest first."""

        def page(skip: int) -> Sequence[pb.Company]:
            request = pb.ListCompaniesRequest(skip=skip, limit=page_size)
            reply, _ = self._call(self.companies.ListCompanies, request, (), retry=True)
            return list(reply.companies)

        return _pages(page, page_size)

    # --- one call ---------------------------------------------------------------------

    def _versioned(
        self, method: Any, request: Any, extra: Metadata, retry: bool
    ) -> Versioned[pb.Contact]:
        reply, call = self._call(method, request, extra, retry)
        etag = next((str(v) for k, v in call.trailing_metadata() or () if k == "etag"), "")
        return Versioned(reply, etag)

    def _call(self, method: Any, request: Any, extra: Metadata, retry: bool) -> tuple[Any, Any]:
        """One RPC within self.timeout, sent again (with a growing, jittered pause)
        while it fails UNAVAILABLE, if `retry` says it is safe to."""
        deadline = time.monotonic() + self.timeout
        attempts = 1 + (self.retries if retry else 0)
        pause = 0.1
        for attempt in range(attempts):
            metadata = extra
            if self._token is not None:
                token = self._token() if callable(self._token) else self._token
                metadata = (("authorization", f"Bearer {token}"), *extra)
            left = deadline - time.monotonic()
            try:
                return method.with_call(request, metadata=metadata, timeout=max(left, 0.001))  # type: ignore[no-any-return]
            except grpc.RpcError as error:
                last = attempt == attempts - 1
                code = error.code() if isinstance(error, grpc.Call) else None
                if last or code not in RETRIED or time.monotonic() + pause >= deadline:
                    raise
            time.sleep(pause * random.uniform(0.5, 1.0))
            pause *= 2
        raise AssertionError("unreachable")  # pragma: no cover


def _set(**fields: str | None) -> dict[str, str]:
    """The optional fields that were given (None: left unset)."""
    return {name: value for name, value in fields.items() if value is not None}


def _pages(page: Callable[[int], Sequence[T]], size: int) -> Iterator[T]:
    """Every item of a list read `size` at a time, until a page comes back short."""
    skip = 0
    while True:
        items = page(skip)
        yield from items
        if len(items) < size:
            return
        skip += len(items)
