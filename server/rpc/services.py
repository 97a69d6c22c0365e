"""The gRPC servicers: each method parses, authorises, delegates to the store and converts.

Store calls go through `Offload`, which runs each where it cannot block the
event loop; rows arrive in message form (see queries.py), so converting one
is a constructor call.
"""

from __future__ import annotations

import uuid

import grpc
from google.protobuf import empty_pb2

from contacts.v1 import contacts_pb2 as pb
from contacts.v1 import contacts_pb2_grpc as pb_grpc
from server import call as calls
from server.auth.tokens import Caller, require_owner, require_superuser
from server.data.offload import Offload
from server.data.queries import CompanyRow, ContactRow
from server.data.store import Store
from server.data.units import ATTEMPTS
from server.errors import CompanyForbidden, CompanyNotFound, Conflict, ContactNotFound, EtagMismatch
from server.rest import FIELDS_HEADER
from server.rpc import etags
from server.rpc.interceptors.auth import authenticated
from server.rpc.paging import PageTokens, contact_query
from server.rpc.validation import contact_fields, page, parse_uuid, text, update_changes


def contact_message(row: ContactRow, into: pb.Contact | None = None) -> pb.Contact:
    # Field by field into a message in place: the fastest way protobuf offers,
    # and for lists no finished message is copied into the repeated field.
    message = pb.Contact() if into is None else into
    message.id = row.id
    if row.company_id is not None:
        message.company_id = row.company_id
    message.first_name = row.first_name
    if row.last_name is not None:
        message.last_name = row.last_name
    message.email = row.email
    if row.phone is not None:
        message.phone = row.phone
    if row.designation is not None:
        message.designation = row.designation
    message.is_primary = row.is_primary
    message.created_at.seconds = row.created_at
    message.updated_at.seconds = row.updated_at
    return message


def one_contact(row: ContactRow) -> pb.Contact:
    """A reply of one contact: the message, with its ETag in the reply metadata."""
    call = calls.current()
    if call is not None:
        call.reply_with((etags.HEADER, etags.etag(row.version)))
    return contact_message(row)


def if_match(context: grpc.aio.ServicerContext) -> frozenset[int] | None:
    """The contact versions the call's If-Match accepts (None: any)."""
    sent = [str(v) for k, v in context.invocation_metadata() or () if k == etags.IF_MATCH]
    return etags.expected_versions(sent)


def sent_fields(context: grpc.aio.ServicerContext) -> list[str] | None:
    """The top-level members a REST body sent, nulls included (envoy/rest.lua)."""
    sent = [str(v) for k, v in context.invocation_metadata() or () if k == FIELDS_HEADER]
    return sent[0].split(",") if len(sent) == 1 and sent[0] else None


def company_message(row: CompanyRow, into: pb.Company | None = None) -> pb.Company:
    message = pb.Company() if into is None else into
    message.id, message.name, message.owner_id = row.id, row.name, row.owner_id
    message.created_at.seconds = row.created_at
    message.updated_at.seconds = row.updated_at
    return message


def _company_key(row: ContactRow) -> uuid.UUID | None:
    return None if row.company_id is None else uuid.UUID(row.company_id)


class Contacts(pb_grpc.ContactsServiceServicer):
    def __init__(self, store: Store, offload: Offload, page_tokens: PageTokens) -> None:
        self.store = store
        self.db = offload
        self.page_tokens = page_tokens

    async def ListContacts(
        self, request: pb.ListContactsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListContactsResponse:
        company_id = parse_uuid(request.company_id, "company_id")
        query = contact_query(request, company_id, self.page_tokens)
        company = await self.db.company(company_id)
        require_owner(authenticated(), company)
        response = pb.ListContactsResponse()
        rows = await self.db.contacts(query.page)
        limit = query.page.limit
        for row in rows[:limit]:
            contact_message(row, into=response.contacts.add())
        if len(rows) > limit:  # one row more than the page: there is a next page
            last = rows[limit - 1]
            response.next_page_token = self.page_tokens.issue(
                query.scope, last.created_at, uuid.UUID(last.id)
            )
        return response

    async def GetContact(
        self, request: pb.GetContactRequest, context: grpc.aio.ServicerContext
    ) -> pb.Contact:
        contact_id = parse_uuid(request.contact_id, "contact_id")
        return one_contact(await self._contact(contact_id))

    async def CreateContact(
        self, request: pb.CreateContactRequest, context: grpc.aio.ServicerContext
    ) -> pb.Contact:
        fields = contact_fields(request, partial=False)
        return one_contact(await self.db.write(self.store.create_contact, fields))

    async def UpdateContact(
        self, request: pb.UpdateContactRequest, context: grpc.aio.ServicerContext
    ) -> pb.Contact:
        contact_id = parse_uuid(request.contact_id, "contact_id")
        mask = list(request.update_mask.paths) if request.HasField("update_mask") else None
        changes = update_changes(request, mask, sent_fields(context))
        versions = if_match(context)
        if "company" not in changes:
            return one_contact(
                await self.db.write(self.store.update_contact, contact_id, changes, versions)
            )
        # Updating is public, but moving a contact between companies would
        # hand it to another owner: that takes owning both ends.
        who = authenticated()
        for _ in range(ATTEMPTS):
            contact = await self._contact(contact_id)
            await self._require_contact_owner(who, contact)
            if not who.is_superuser and changes["company"] is not None:
                target = await self.db.company(changes["company"])
                require_owner(who, target)
            # Moved only if it is still where the check above found it.
            moved = await self.db.write(
                self.store.move_contact, contact_id, changes, _company_key(contact), versions
            )
            if moved is not None:
                return one_contact(moved)
        raise Conflict()

    async def DeleteContact(
        self, request: pb.DeleteContactRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        contact_id = parse_uuid(request.contact_id, "contact_id")
        who = authenticated()
        versions = if_match(context)
        for _ in range(ATTEMPTS):
            contact = await self._contact(contact_id)
            await self._require_contact_owner(who, contact)
            if versions is not None and contact.version not in versions:
                raise EtagMismatch()
            # Deleted only if it did not move (or change, with If-Match) since
            # the checks above; if it did, they are made again.
            company_id = _company_key(contact)
            if await self.db.write(self.store.delete_contact, contact_id, company_id, versions):
                return empty_pb2.Empty()
        raise Conflict()

    async def _contact(self, contact_id: uuid.UUID) -> ContactRow:
        found = await self.db.contact(contact_id)
        if found is None:
            raise ContactNotFound()
        return found

    async def _require_contact_owner(self, who: Caller, contact: ContactRow) -> None:
        """A contact is its company's owner's; one with no company, superusers' only."""
        company_id = _company_key(contact)
        if company_id is None:
            require_superuser(who)
        else:
            company = await self.db.company(company_id)
            require_owner(who, company)


class Companies(pb_grpc.CompaniesServiceServicer):
    def __init__(self, store: Store, offload: Offload) -> None:
        self.store = store
        self.db = offload

    async def CreateCompany(
        self, request: pb.CreateCompanyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Company:
        name = text(request.name, "name")
        owner = authenticated().sub
        return company_message(await self.db.write(self.store.create_company, name, owner))

    async def GetCompany(
        self, request: pb.GetCompanyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Company:
        company_id = parse_uuid(request.company_id, "company_id")
        who = authenticated()
        company = await self.db.company(company_id)
        if who.is_superuser:
            if company is None:
                raise CompanyNotFound()
        elif company is None or company.owner_id != who.sub:
            raise CompanyForbidden()
        return company_message(company)

    async def ListCompanies(
        self, request: pb.ListCompaniesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCompaniesResponse:
        skip, limit = page(request.skip, request.limit)
        who = authenticated()
        owner = None if who.is_superuser else who.sub
        response = pb.ListCompaniesResponse()
        for row in await self.db.companies(owner, skip, limit):
            company_message(row, into=response.companies.add())
        return response
